"""Example notebooks, run headless with nbclient on the real kernels against the simulated cluster."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from labrig.kernels.install import install_kernelspecs
from labrig.simulators.world import world_control
from labrig.supervisor.cluster import start_cluster, stop_cluster
from labrig.supervisor.runner.runner import SHOT_MIMETYPE
from labrig.supervisor.state import read_state
from labrig.supervisor.store import ShotStore
from support import clear_startup_trips

# whole clusters: the process-heavy modules run one at a time (scripts/test)
pytestmark = pytest.mark.processes

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "ishtar"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, ishtar_path):
    state = tmp_path_factory.mktemp("cluster")
    prefix = tmp_path_factory.mktemp("jupyter")
    install_kernelspecs(ishtar_path, prefix=str(prefix), state=state, sim=True)
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = str(prefix / "share" / "jupyter")
    try:
        start_cluster(str(ishtar_path), sim=True, directory=state, timeout=90)
        clear_startup_trips(state)
        yield state
    finally:
        stop_cluster(state)
        if old is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = old


@pytest.fixture(autouse=True)
def _nothing_latched(cluster):
    """Each notebook starts on a rig with no trip latched (a loaded machine can trip the guard on stale reads)."""
    clear_startup_trips(cluster)


def run_notebook(path: Path, state: Path, tmp_path: Path, timeout: float = 120, **parameters):
    """Execute a notebook on the supervisor kernel; `parameters` go in a cell after the one tagged
    'parameters', as papermill would put them."""
    nb = nbformat.read(path, as_version=4)
    if parameters:
        tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
        assert tagged, f"{path.name} has no cell tagged 'parameters'"
        code = "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
        nb.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(code, metadata={"tags": ["injected-parameters"]}))
    NotebookClient(nb, timeout=timeout, kernel_name="labrig-supervisor",
                   resources={"metadata": {"path": str(tmp_path)}}, allow_errors=False).execute()
    nbformat.write(nb, tmp_path / path.name)  # the executed copy, for a person to look at when a check fails
    return nb


def outputs_of(nb, kind: str) -> list:
    """Every output's data of one mimetype, in cell order."""
    return [o["data"][kind] for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if kind in o.get("data", {})]


def text_of(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream":
            parts.append(output["text"])
        elif "data" in output:
            parts.append(output["data"].get("text/plain", ""))
    return "".join(parts)


@pytest.mark.allow_thread_leak
def test_cluster_notebook_reads_every_signal_and_matches_the_simulators(cluster, tmp_path, ishtar):
    nb = run_notebook(EXAMPLES / "cluster.ipynb", cluster, tmp_path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    world = world_control(read_state("sim", cluster)["world"]["endpoints"]["control"], {"op": "snapshot"})["state"]

    status = text_of(code[1])
    for node in ishtar.nodes:
        assert re.search(rf"{node}\s+\S+\s+online\s+online", status), status

    printed = {}
    for line in text_of(code[2]).splitlines():
        name, value = line.split()[:2]
        printed[name] = float(value)
    assert set(printed) == set(ishtar.signals)  # every rig signal, by name
    # what the notebook printed is what the simulated hardware holds
    assert printed["cooling_flow"] == pytest.approx(world["cooling_flow"], abs=0.02)
    for name in ("cooling_ok", "cooling_relay", "door_switch", "door_closed", "vacuum_ok"):
        assert printed[name] == 1.0, name
    assert printed["probe_bias"] == pytest.approx(world["probe_bias"], abs=0.6)
    assert printed["coil_current_set"] == pytest.approx(world["coil_current_cmd"], abs=0.01)
    assert printed["gauge_setpoint"] == 5.0

    readback = float(re.search(r"gas_flow readback ([0-9.]+) sccm", text_of(code[3])).group(1))
    assert readback == pytest.approx(12.0, abs=0.01)
    physics = text_of(code[4])
    assert "B field" in physics and "mean reflected power over 10 reads on the board" in physics
    # %safe drove every output safe, the gas valve included
    assert "FAILED" not in text_of(code[5]) and "UNREACHABLE" not in text_of(code[5])
    after = world_control(read_state("sim", cluster)["world"]["endpoints"]["control"], {"op": "snapshot"})["state"]
    assert after["gas_valve"] == 0.0


def _shots_of(nb) -> list[dict]:
    return outputs_of(nb, SHOT_MIMETYPE)


@pytest.mark.timeout(300)
@pytest.mark.allow_thread_leak
def test_discharge_notebook_records_a_shot_with_its_plots_and_catalog_row(cluster, tmp_path):
    store = ShotStore(tmp_path / "store")
    nb = run_notebook(EXAMPLES / "discharge.ipynb", cluster, tmp_path, power=735.0, b_field=0.08, flat_top=0.3,
                      store_path=str(store.root))
    [shot] = _shots_of(nb)
    assert shot["status"] == "success", shot
    assert Path(shot["path"]).is_file() and Path(shot["path"]) == store.path_of(shot["shot"])
    assert len(outputs_of(nb, "image/png")) == 2  # the dry run's timeline and the shot's overview
    with store.shot(shot["shot"]) as recorded:
        assert recorded.metadata("parameters")["power"] == 735.0
        _, phase = recorded.read("interferometer_phase")
        assert phase.max() > 1.0  # helicon mode at 735 W and 0.08 T (about 1.4 rad)
    text = "".join(text_of(c) for c in nb.cells if c.cell_type == "code")
    assert re.search(r"peak line-averaged density \d\.\d+e\+18 m\^-3", text), text
    row = store.query("interferometer_phase.max", shots=[shot["shot"]])
    assert row.loc[shot["shot"], "interferometer_phase.max"] == pytest.approx(phase.max())


@pytest.mark.timeout(300)
@pytest.mark.allow_thread_leak
def test_scan_notebook_shows_the_helicon_jump_between_its_shots(cluster, tmp_path):
    store = ShotStore(tmp_path / "store")
    nb = run_notebook(EXAMPLES / "scan.ipynb", cluster, tmp_path, powers=[400.0, 800.0], flat_top=0.2,
                      store_path=str(store.root))
    table = store.query("interferometer_phase.max", "params.power", sequence="discharge")
    assert list(table["params.power"]) == [400.0, 800.0] and set(table["status"]) == {"success"}
    low, high = table["interferometer_phase.max"]
    assert high > 2.5 * low  # 400 W stays inductive at 0.08 T; 800 W jumps into the helicon mode
    assert len(outputs_of(nb, "image/png")) == 1 and len(outputs_of(nb, "text/html")) == 1  # the plot, the table


@pytest.mark.timeout(1200)
@pytest.mark.allow_thread_leak
def test_optimise_notebook_reaches_95_percent_of_the_grid_best_within_its_budget(cluster, tmp_path):
    store = ShotStore(tmp_path / "store")
    nb = run_notebook(EXAMPLES / "optimise.ipynb", cluster, tmp_path, timeout=900, grid_points=5, budget=12,
                      stop_at_95=True, seed=0, flat_top=0.1, store_path=str(store.root))
    text = "".join(text_of(c) for c in nb.cells if c.cell_type == "code")
    found = re.search(r"optimiser: best [0-9.]+ rad = ([0-9.]+)% of the grid best, 95 % reached at shot (\d+) of (\d+)",
                      text)
    assert found, text
    assert float(found.group(1)) >= 95.0 and int(found.group(2)) <= 12
    shots = store.query("interferometer_phase.max", "params.power", "params.b_field", sequence="discharge")
    assert len(shots) == 25 + int(found.group(3)) and set(shots["status"]) == {"success"}
    grid_best = shots.iloc[:25]["interferometer_phase.max"].max()
    assert shots.iloc[25:]["interferometer_phase.max"].max() >= 0.95 * grid_best
    # every proposal stayed inside the space (and so inside the parameters' ranges and the rig's limits)
    ours = shots.iloc[25:]
    assert ours["params.power"].between(300, 1200).all() and ours["params.b_field"].between(0.02, 0.12).all()
    assert all((store.root / p).is_file() for p in store.query("path", sequence="discharge")["path"])  # relative
    assert len(outputs_of(nb, "image/png")) == 1


@pytest.mark.timeout(600)
@pytest.mark.allow_thread_leak
def test_batch_runs_a_notebook_per_point_with_papermill_and_keeps_a_report_per_shot(cluster, tmp_path):
    store = tmp_path / "store"
    reports = tmp_path / "reports"
    env = {**os.environ, "LABRIG_STATE_DIR": str(cluster)}
    done = subprocess.run([sys.executable, "-m", "labrig.supervisor.cli", "batch", str(EXAMPLES / "discharge.ipynb"),
                           "--grid", "power=500,900", "-p", "flat_top=0.1", "-p", f"store_path={json.dumps(str(store))}",
                           "--reports", str(reports)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    numbers = ShotStore(store).numbers()
    assert len(numbers) == 2
    for number, power in zip(numbers, (500, 900)):
        report = nbformat.read(reports / f"shot-{number:06d}.ipynb", as_version=4)
        assert _shots_of(report)[0]["shot"] == number and _shots_of(report)[0]["status"] == "success"
        assert report.metadata["papermill"]["parameters"]["power"] == power
        assert len(outputs_of(report, "image/png")) == 2
        assert f"shot-{number:06d}.ipynb" in done.stdout.replace("\n", "")
    # a point that cannot run is reported, kept with its error, and fails the batch
    bad = subprocess.run([sys.executable, "-m", "labrig.supervisor.cli", "batch", str(EXAMPLES / "discharge.ipynb"),
                          "-p", "power=5000", "-p", f"store_path={json.dumps(str(store))}", "--reports", str(reports)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1
    assert "power = 5000 W is outside its range [0, 1200] W" in bad.stdout.replace("\n", "")
    assert len(list(reports.glob("failed-*-discharge.ipynb"))) == 1
    assert ShotStore(store).numbers() == numbers  # nothing ran

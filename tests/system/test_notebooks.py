"""Example notebooks, run headless with nbclient on the real kernels against the simulated cluster."""
from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from labrig.kernels.install import install_kernelspecs
from labrig.simulators.world import world_control
from labrig.supervisor.cluster import start_cluster, stop_cluster
from labrig.supervisor.state import read_state

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
        start_cluster(str(ishtar_path), sim=True, directory=state)
        yield state
    finally:
        stop_cluster(state)
        if old is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = old


def run_notebook(path: Path, state: Path, tmp_path: Path):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="labrig-supervisor", resources={"metadata": {"path": str(tmp_path)}},
                   allow_errors=False).execute()
    nbformat.write(nb, tmp_path / path.name)  # the executed copy, for a person to look at when a check fails
    return nb


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

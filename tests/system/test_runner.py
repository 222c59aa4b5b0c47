"""The sequence runner on a simulated cluster: a discharge recorded as a shot, an abort, a killed
runner, a node clock too far off. Judged from the shots and from the simulated world itself.

One cluster for the module (runtimes, guard, simulators; no kernels, no broker). The clock
offset is injected with the step executor's test-only `sequence_clock(skew=)`, enabled by
LABRIG_TEST_CLOCK_SKEW=1 in the runtimes' environment (supervisor/runtime/steps.py).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from labrig.drivers.errors import LabrigError, RangeError, Refused
from labrig.kernels.rig_object import Machine
from labrig.sequences.library import discharge
from labrig.simulators.world import world_control
from labrig.supervisor.cluster import start_cluster, stop_cluster
from labrig.supervisor.devices import density_from_ion_saturation, density_from_phase
from labrig.supervisor.processes import stop_pid
from labrig.supervisor.rig import Rig
from labrig.supervisor.runner import ClockOffsetError, Runner, run
from labrig.supervisor.runtime import RuntimeClient
from labrig.supervisor.runtime.locate import runtime_record
from labrig.supervisor.state import read_state
from labrig.supervisor.store import ShotStore
from support import rest_nodes, wait_for

pytestmark = pytest.mark.processes

ROOT = Path(__file__).resolve().parents[2]
RIG = ROOT / "examples" / "ishtar" / "rig.toml"
RATE = 50.0  # Hz: the acquisitions of these shots (the simulated RedPitaya reads in2 over SCPI: ~3 ms each)
SHOT = dict(power=600.0, b_field=0.05, flat_top=0.5, rate=RATE)  # helicon (~1.2e18 m^-3), short ramps and flat top
OUTPUTS_SAFE = {"rf_drive": 0.0, "coil_current_cmd": 0.0, "gas_valve": 0.0, "probe_bias": 0.0}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    directory = tmp_path_factory.mktemp("runner") / "state"
    directory.mkdir()
    old = os.environ.get("LABRIG_TEST_CLOCK_SKEW")
    os.environ["LABRIG_TEST_CLOCK_SKEW"] = "1"  # inherited by the runtimes: the skew test's option
    try:
        start_cluster(RIG, sim=True, directory=directory, broker="none", kernels=False, timeout=120)
        yield directory
    finally:
        if old is None:
            os.environ.pop("LABRIG_TEST_CLOCK_SKEW", None)
        else:
            os.environ["LABRIG_TEST_CLOCK_SKEW"] = old
        stop_cluster(directory)
        left = [p for p in psutil.process_iter(["pid", "cmdline", "status"])
                if str(directory) in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE]
        for p in left:
            stop_pid(p.pid, marker=str(directory))
        assert not left, "left running: " + "; ".join(" ".join(p.info["cmdline"])[:160] for p in left)


def client(directory: Path, node: str) -> RuntimeClient:
    return RuntimeClient(runtime_record(node, directory)["endpoint"], node=node, client="test-runner")


def world(directory: Path) -> dict:
    return world_control(read_state("sim", directory)["world"]["endpoints"]["control"], {"op": "snapshot"})["state"]


def set_world(directory: Path, name: str, value: float) -> None:
    world_control(read_state("sim", directory)["world"]["endpoints"]["control"], {"op": "set", "name": name,
                                                                                  "value": value})


def until_world(directory: Path, predicate, bound: float, what: str) -> dict:
    deadline = time.monotonic() + bound
    while True:
        state = world(directory)
        if predicate(state):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {bound:g} s; world: "
                                 f"{ {k: round(state[k], 3) for k in OUTPUTS_SAFE} }")
        time.sleep(0.01)


def _outcome(fn):
    try:
        return fn()
    except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
        return exc


def is_safe(state: dict) -> bool:
    return all(abs(state[k] - v) < 0.6 for k, v in OUTPUTS_SAFE.items())


@pytest.fixture
def rig(cluster):
    """The cluster as every test finds it: no trip latched, every output safe."""
    rig = Rig.load(RIG)
    set_world(cluster, "door_closed", 1.0)  # a test that opened it closes it here, pass or fail
    rest_nodes(cluster, rig.nodes, guard=True, client="test-runner")  # refused until the guard sees the door shut
    until_world(cluster, lambda s: is_safe(s) and s["coil_current"] < 20, 10, "the rig at rest")
    yield rig


def test_a_node_clock_off_by_more_than_the_tolerance_is_refused(cluster, rig, tmp_path):
    store = ShotStore(tmp_path / "store")
    with client(cluster, "rp1") as rp:
        rp.call("sequence_clock", skew=0.5)
        try:
            with pytest.raises(ClockOffsetError, match=r"tolerance of 20 ms: rp1 \+(499|50\d)\.\d ms"):
                run(rig, discharge(**SHOT).compile(rig), directory=cluster, store=store)
        finally:
            rp.call("sequence_clock", skew=0.0)
        assert not any(h.startswith("runner") for h in rp.call("leases"))  # given back
    assert store.numbers() == []  # refused before anything moved: no shot


def test_a_discharge_is_recorded_as_a_complete_shot(cluster, rig, tmp_path, capsys):
    store = ShotStore(tmp_path / "store")
    plan = discharge(**SHOT).compile(rig)
    machine = Machine(rig, cluster)  # the supervisor kernel's `rig`
    try:
        result = machine.run(plan, store=store)
    finally:
        machine.close()
    assert result.status == "success", result.reason
    assert f"shot {result.number}: success" in capsys.readouterr().out  # the text progress ends with it
    with result.shot() as shot:
        assert shot.status == "success"
        assert shot.attrs["sequence_hash"] == plan.hash
        window = plan.tables["rp1"]["acquisitions"][0]["window"]
        for name in ("langmuir_I", "interferometer_phase"):
            t, v = shot.read(name)
            assert len(t) >= 0.5 * RATE * window, (name, len(t))
            assert abs(np.median(np.diff(t)) - 1 / RATE) < 0.2 / RATE, (name, np.median(np.diff(t)))
            assert shot.info(name)["unit"] == rig.signals[name].unit
        _, phase = shot.read("interferometer_phase")
        n_phase = density_from_phase(np.percentile(phase, 90), wavelength_m=2e-3, path_m=0.1)
        _, i_mA = shot.read("langmuir_I")
        n_probe = density_from_ion_saturation(np.percentile(np.abs(i_mA), 90) / 1000, te_eV=4.0, area_m2=1e-5,
                                              ion_mass_amu=39.95)
        assert n_phase > 1e17 and n_probe > 1e17, (n_phase, n_probe)
        ops = {(e["node"], e["op"]) for e in shot.events("audit")}
        assert ("rp1", "sequence_start") in ops and ("plc1", "sequence_step") in ops
        assert ("rp1", "sequence_exit") not in ops
    until_world(cluster, is_safe, 2.0, "every output off at the end of the plan")


def _long_run_in_thread(cluster, rig, tmp_path):
    """A runner of a 5 s flat top, running on a thread: (runner, thread, [its outcome once it ends])."""
    store = ShotStore(tmp_path / "store")
    runner = Runner(rig, discharge(**{**SHOT, "flat_top": 5.0}).compile(rig), directory=cluster, store=store)
    results: list = []
    thread = threading.Thread(target=lambda: results.append(_outcome(runner.run)), name="runner")
    thread.start()
    return runner, thread, results


def test_pause_resume_then_an_abort_runs_the_safe_exit_and_closes_abort(cluster, rig, tmp_path):
    runner, thread, results = _long_run_in_thread(cluster, rig, tmp_path)
    try:
        until_world(cluster, lambda s: s["rf_drive"] > 0.5, 20, "RF ramping up")
        runner.pause()  # the RF ramp (to 0.632 V: 600 W) holds where it is, on the node
        with client(cluster, "rp1") as rp:
            wait_for(lambda: rp.call("sequence_state", run=runner.id)["state"] == "paused", 5, "rp1 paused")
            held = world(cluster)["rf_drive"]
            time.sleep(0.3)
            assert world(cluster)["rf_drive"] == pytest.approx(held, abs=0.01) and held < 0.62
        runner.resume()
        until_world(cluster, lambda s: s["rf_drive"] > 0.625, 5, "the RF ramp going on after the resume")
        runner.abort("the test aborts")
    finally:
        runner.abort("the test ended")
        thread.join(30)
    assert not thread.is_alive() and results
    result = results[0]
    assert not isinstance(result, BaseException), repr(result)
    assert result.status == "abort" and result.reason == "the test aborts"
    until_world(cluster, is_safe, 2.0, "every output off after the safe exit")
    with result.shot() as shot:
        assert shot.status == "abort"
        assert [e["kind"] for e in shot.events() if e["kind"] in ("pause", "resume")] == ["pause", "resume"]
        exits = [e for e in shot.events("audit") if e["op"] == "sequence_exit"]
        assert {e["node"] for e in exits} >= {"rp1", "plc1", "pi1", "ard1"}
        assert len(shot.read("langmuir_I")[0]) > 0
    # a ramp-down, not a step: rf_power came down through the RF ramp of the safe exit
    with client(cluster, "rp1") as rp:
        ramps = [r for r in rp.ramps() if r["signal"] == "rf_power" and r["client"].startswith("safe exit")]
        assert ramps and ramps[-1]["state"] == "done" and ramps[-1]["rate"] == 400.0


def test_a_killed_runner_leaves_the_nodes_ramped_down_and_a_partial_shot(cluster, rig, tmp_path):
    store_dir = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-m", "labrig.supervisor.runner", str(RIG), "discharge",
                             *(f"{k}={v}" for k, v in {**SHOT, "flat_top": 5.0}.items()),
                             "--state-dir", str(cluster), "--store", str(store_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        try:
            until_world(cluster, lambda s: s["rf_drive"] > 0.5, 25, "RF on the flat top")
        except AssertionError as exc:
            proc.kill()
            raise AssertionError(f"{exc}; the runner said: {proc.communicate(timeout=5)[0].decode()[-2000:]}") from None
        time.sleep(0.3)  # some samples fetched into the journal
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    lease = rig.spec.watchdogs.lease
    exit_time = discharge(**SHOT).compile(rig).exit_duration
    until_world(cluster, is_safe, lease + exit_time + 3.0, "the nodes ramped down after the runner died")
    journal = [json.loads(line) for line in (cluster / "audit" / "rp1.jsonl").read_text().splitlines()]
    exits = [e for e in journal if e["op"] == "sequence_exit"]
    assert exits and "lease" in exits[-1]["detail"], exits[-1:]
    for node in rig.nodes:  # each node latches the lease trip once its safe exit is over
        with client(cluster, node) as c:
            wait_for(lambda: "lease_lost" in {t["interlock"] for t in c.trips()}, 10, f"the lease trip on {node}")
    with client(cluster, "rp1") as rp:
        ramps = [r for r in rp.ramps() if r["signal"] == "rf_power" and r["client"].startswith("safe exit")]
        assert ramps and ramps[-1]["state"] == "done"
    store = ShotStore(store_dir)
    numbers = store.recover()
    assert len(numbers) == 1
    with store.shot(numbers[0]) as shot:
        assert shot.status == "partial"
        assert len(shot.read("langmuir_I")[0]) > 0 and len(shot.read("interferometer_phase")[0]) > 0


def test_a_trip_mid_run_stops_every_table_and_closes_fail(cluster, rig, tmp_path):
    runner, thread, results = _long_run_in_thread(cluster, rig, tmp_path)
    try:
        until_world(cluster, lambda s: s["rf_drive"] > 0.5, 20, "RF on the flat top")
        set_world(cluster, "door_closed", 0.0)  # the door opens mid-shot: interlocks on plc1 and the guard trip
    finally:
        thread.join(30)
    assert not thread.is_alive() and results
    result = results[0]
    assert not isinstance(result, BaseException), repr(result)
    assert result.status == "fail" and "tripped" in result.reason, result.reason
    until_world(cluster, is_safe, 2.0, "every output off after the trip")
    with result.shot() as shot:
        assert shot.status == "fail"
        door = {"coil_needs_door_closed", "rf_enable_needs_vacuum_and_door", "rf_needs_vacuum_door_cooling"}
        assert {e["interlock"] for e in shot.events("trip")} & door  # whichever layer saw the open door first
        exits = {e["node"] for e in shot.events("audit") if e["op"] == "sequence_exit"}
        assert {"ard1", "pi1"} <= exits  # the nodes that did not trip ran their safe exit too


def test_a_table_is_checked_again_by_the_node(cluster, rig):
    table = discharge(**SHOT).compile(rig).tables["rp1"]
    bad = {**table, "steps": [dict(table["steps"][0], to=5000.0)]}
    with client(cluster, "rp1") as rp:
        with pytest.raises(Refused, match="holds no lease"):
            rp.call("sequence_load", run="r1", holder="nobody", table=table, waits=[])
        rp.call("lease", holder="test-runner", ttl=5.0)
        try:
            with pytest.raises(RangeError, match=r"step 9 \(ramp rf_power\): rf_power = 5000 W is outside its limits"):
                rp.call("sequence_load", run="r1", holder="test-runner", table=bad, waits=[])
            fast = {**table, "steps": [dict(table["steps"][0], rate=4000.0)]}
            with pytest.raises(RangeError, match="exceeds its max slew 400 W/s"):
                rp.call("sequence_load", run="r1", holder="test-runner", table=fast, waits=[])
        finally:
            rp.call("release", holder="test-runner")


def test_a_runner_needs_a_running_cluster(tmp_path):
    rig = Rig.load(RIG)
    with pytest.raises(LabrigError, match="no runtime running"):
        run(rig, discharge(**SHOT).compile(rig), directory=tmp_path / "nothing", store=ShotStore(tmp_path / "s"))

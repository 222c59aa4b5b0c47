"""tl.step_scan on a simulated cluster, through the runner and the Pi's step executor (pigpio protocol):
every point's set and reads are in the shot, the values were reached on the device, a missed deadline
is recorded (shot, audit, the run's reason) or stops the shot, and the runtime's safe state stops a
scan. One cluster for the module (runtimes, guard, simulators; no kernels, no broker)."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import psutil
import pytest

from labrig.sequences import Timeline
from labrig.simulators.world import world_control
from labrig.supervisor.cluster import start_cluster, stop_cluster
from labrig.supervisor.processes import stop_pid
from labrig.supervisor.rig import Rig
from labrig.supervisor.runner import Runner
from labrig.supervisor.runtime import RuntimeClient
from labrig.supervisor.runtime.locate import runtime_record
from labrig.supervisor.state import read_state
from labrig.supervisor.store import ShotStore
from support import rest_nodes, wait_for

pytestmark = pytest.mark.processes

ROOT = Path(__file__).resolve().parents[2]
RIG = ROOT / "examples" / "ishtar" / "rig.toml"
POINTS = [round(1.0 + 0.01 * i, 2) for i in range(50)]  # sccm of gas flow: 1.00 .. 1.49
DUTY_STEP = 50.0 / 10000  # sccm: gpiozero runs pigpio's PWM with a range of 10000; 50 sccm full scale


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    directory = tmp_path_factory.mktemp("scan") / "state"
    directory.mkdir()
    try:
        start_cluster(RIG, sim=True, directory=directory, broker="none", kernels=False, timeout=120)
        yield directory
    finally:
        stop_cluster(directory)
        left = [p for p in psutil.process_iter(["pid", "cmdline", "status"])
                if str(directory) in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE]
        for p in left:
            stop_pid(p.pid, marker=str(directory))
        assert not left, "left running: " + "; ".join(" ".join(p.info["cmdline"])[:160] for p in left)


def world(directory: Path) -> dict:
    return world_control(read_state("sim", directory)["world"]["endpoints"]["control"], {"op": "snapshot"})["state"]


@pytest.fixture
def rig(cluster):
    """Nothing latched on pi1 (whose outputs no cross-node interlock drives), its outputs safe, the door
    closed (door_switch reads 1)."""
    rig = Rig.load(RIG)
    world_control(read_state("sim", cluster)["world"]["endpoints"]["control"],
                  {"op": "set", "name": "door_closed", "value": 1.0})
    rest_nodes(cluster, ["pi1"], guard=False, timeout=20, client="test-scan")
    wait_for(lambda: world(cluster)["gas_valve"] == 0.0, 5, "the gas valve closed")
    yield rig


def pi1(directory: Path) -> RuntimeClient:
    return RuntimeClient(runtime_record("pi1", directory)["endpoint"], node="pi1", client="test-scan")


def scan_plan(rig, points=POINTS, rate=200.0, **options):
    tl = Timeline("scan")
    tl.step_scan("gas_flow", points, read=("door_switch", "gas_flow"), rate=rate, **options)
    tl.ramp("gas_flow", 0)
    return tl.compile(rig)


def audit(shot, op: str, run: str) -> list[dict]:
    """pi1's audit entries `op` of this run (the shot keeps the nodes' entries of its window, a second
    before it included: the previous test's end may be there)."""
    return [e for e in shot.events("audit") if e["node"] == "pi1" and e["op"] == op and f"run {run}:" in e["detail"]]


def test_every_point_is_in_the_shot_and_every_value_reached_the_device(cluster, rig, tmp_path):
    result = Runner(rig, scan_plan(rig), directory=cluster, store=ShotStore(tmp_path / "store")).run()
    assert result.status == "success", result.reason
    with result.shot() as shot:
        late = shot.read("gas_flow:late")[1] if "gas_flow:late" in shot.names() else []
        assert (result.reason == "") == (len(late) == 0), result.reason  # late points, if any, are told
        t_set, set_values = shot.read("gas_flow:set")
        t_door, door = shot.read("door_switch")
        t_back, back = shot.read("gas_flow")
        assert set_values.tolist() == POINTS  # every point, in order
        assert door.tolist() == [1.0] * len(POINTS)  # the door is closed: every read is there
        # reached, read back from the Pi: to its PWM resolution (gpiozero truncates a duty to the step below)
        assert np.all(np.abs(back - set_values) <= DUTY_STEP + 1e-9), back - set_values
        assert shot.info("gas_flow:set")["unit"] == "sccm" and shot.info("door_switch")["unit"] == ""
        # each point: set (acknowledged), then the reads, then the next point, never before its time
        assert np.all(t_set <= t_door) and np.all(t_door <= t_back) and np.all(t_back[:-1] <= t_set[1:])
        assert np.all(t_set >= np.arange(len(POINTS)) / 200.0)  # point i is due i / rate after the shot start
        summary, = audit(shot, "sequence_scan", result.run)
        assert "done: 50 of 50 points" in summary["detail"]
    wait_for(lambda: world(cluster)["gas_valve"] == 0.0, 5, "the ramp down at the end of the plan")


def test_a_missed_deadline_is_recorded_in_the_shot_the_audit_and_the_reason(cluster, rig, tmp_path):
    points = POINTS[:20]
    plan = scan_plan(rig, points, rate=100.0, deadline=1e-6)  # 1 us: no round trip to the Pi is that fast
    result = Runner(rig, plan, directory=cluster, store=ShotStore(tmp_path / "store")).run()
    assert result.status == "success", result.reason
    assert "step scan 'step_scan gas_flow' on pi1: 20 of 20 points missed their 0.001 ms deadline" in result.reason
    with result.shot() as shot:
        assert shot.reason == result.reason
        t_late, late = shot.read("gas_flow:late")
        assert len(late) == 20 and np.all(late > 0) and shot.info("gas_flow:late")["unit"] == "s"
        assert shot.read("gas_flow:set")[1].tolist() == points  # recorded, and the scan went on
        event, = shot.events("deadline")
        assert (event["late"], event["points"], event["first_late"], event["node"]) == (20, 20, 1, "pi1")
        first, = audit(shot, "sequence_deadline", result.run)
        assert "point 1 of 20 missed its deadline" in first["detail"]
        assert "20 missed their deadline" in audit(shot, "sequence_scan", result.run)[0]["detail"]


def test_on_late_fail_stops_the_shot_at_the_first_late_point(cluster, rig, tmp_path):
    plan = scan_plan(rig, POINTS[:20], rate=100.0, deadline=1e-6, on_late="fail")
    result = Runner(rig, plan, directory=cluster, store=ShotStore(tmp_path / "store")).run()
    assert result.status == "fail" and "point 1 of 20 missed its deadline" in result.reason, result.reason
    with result.shot() as shot:
        assert shot.read("gas_flow:set")[1].tolist() == POINTS[:1]
        assert audit(shot, "sequence_exit", result.run)  # the safe exit ran on the node
    wait_for(lambda: world(cluster)["gas_valve"] == 0.0, 5, "the gas valve closed by the safe exit")


def test_the_runtimes_safe_state_stops_a_running_scan(cluster, rig, tmp_path):
    points = [round(0.01 * i, 2) for i in range(1, 401)]  # 8 s at 50 points/s
    runner = Runner(rig, scan_plan(rig, points, rate=50.0), directory=cluster, store=ShotStore(tmp_path / "store"))
    results: list = []
    thread = threading.Thread(target=lambda: results.append(runner.run()), name="runner")
    thread.start()
    try:
        wait_for(lambda: world(cluster)["gas_valve"] > 0.02 / 50, 20, "the scan under way")
        with pi1(cluster) as pi:
            pi.safe()
        thread.join(30)
    finally:
        runner.abort("the test ended")
        thread.join(30)
    result, = results
    assert result.status == "fail", result.reason
    assert "stopped: the runtime's safe state was asked for" in result.reason
    with result.shot() as shot:
        assert 0 < len(shot.read("gas_flow:set")[1]) < len(points)
    assert world(cluster)["gas_valve"] == 0.0


def test_pi1_runs_real_time_and_its_scan_readings_stand_for_its_telemetry(cluster, rig, tmp_path):
    """The example rig's `realtime = 20` on pi1: its runtime and its simulator run under SCHED_FIFO.
    A point that reads two levels is one exchange with the daemon (set, then the reads); those
    readings are also the telemetry samples of their signals while the scan runs."""
    sim_pid = read_state("sim", cluster)["simulators"]["pi1"]["pid"]
    assert (os.sched_getscheduler(sim_pid), os.sched_getparam(sim_pid).sched_priority) == (os.SCHED_FIFO, 20)
    with pi1(cluster) as pi:
        before = pi.status()
    assert before["scheduling"] == {"policy": "SCHED_FIFO", "priority": 20}
    points = [round(0.01 * i, 2) for i in range(1, 201)]  # 0.5 s at 400 points/s
    tl = Timeline("scan")
    tl.step_scan("gas_flow", points, read=("door_switch", "cooling_relay"), rate=400.0)
    tl.ramp("gas_flow", 0)
    result = Runner(rig, tl.compile(rig), directory=cluster, store=ShotStore(tmp_path / "store")).run()
    assert result.status == "success", result.reason
    with result.shot() as shot:
        assert shot.read("gas_flow:set")[1].tolist() == points
        assert shot.read("door_switch")[1].tolist() == [1.0] * len(points)  # the door is closed
        assert not np.isnan(shot.read("cooling_relay")[1]).any()
    with pi1(cluster) as pi:
        after = pi.status()
    # door_switch and cooling_relay at 10 Hz for 0.5 s: samples the scan's readings stood for
    assert after["telemetry"]["offered"] - before["telemetry"]["offered"] >= 4
    wait_for(lambda: world(cluster)["gas_valve"] == 0.0, 5, "the ramp down at the end of the plan")

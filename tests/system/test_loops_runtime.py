"""PID loops in a real node runtime process, regulating the simulated coil through the simulated PLC."""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import pytest

from labrig.drivers.errors import ConfigError, RangeError, Refused
from labrig.kernels.loops import LoopMap
from labrig.simulators.world import world_control
from labrig.supervisor.processes import spawn, stop_pid
from labrig.supervisor.runtime import RuntimeClient
from labrig.supervisor.runtime.audit import read_journal
from labrig.supervisor.runtime.main import serve_node
from labrig.supervisor.state import read_state
from support import eventually, wait_for

# runs simulator and runtime processes: with the other process-heavy modules, one at a time
pytestmark = pytest.mark.processes

# The example rig, plus a coil current loop on the PLC node (coil_current lags coil_current_set
# with L/R = 0.2 s) and a node-level interlock on the loop's actuator.
LOOP = """
[loops.coil]
node = "plc1"
measure = "coil_current"
actuate = "coil_current_set"
kp = 0.5
ki = 5.0
rate = 100
output_limits = [0.0, 600.0]

[interlocks.coil_setpoint_needs_door_closed]
require = "door_closed == 1"
outputs = ["coil_current_set"]
description = "test: a node-level interlock on the loop's actuator"
"""


@pytest.fixture(scope="module")
def rig_file(tmp_path_factory, ishtar_path):
    path = tmp_path_factory.mktemp("rig") / "rig.toml"
    path.write_text(ishtar_path.read_text() + LOOP)
    return path


@pytest.fixture
def plc(testbed, rig_file):
    """The plc1 runtime as its own process (`labrig node serve`), and a client of it."""
    directory = Path(testbed["state_dir"])
    proc = spawn(["-m", "labrig.supervisor.cli", "node", "serve", str(rig_file), "plc1", "--sim",
                  "--broker", "none", "--state-dir", str(directory)],
                 name="node-plc1-loops", log_dir=directory / "logs")
    client = None
    try:
        record = wait_for(lambda: (r := read_state("node-plc1", directory)) and r["pid"] == proc.pid and r, 20,
                          "the plc1 runtime")
        client = RuntimeClient(record["endpoint"], node="plc1", client="notebook-3")
        client.write("coil_enable", 1)
        yield client
    finally:
        if client is not None:
            client.close()
        stop_pid(proc.pid)
        proc.wait(5)


def world(testbed, name):
    return world_control(testbed["world"]["endpoints"]["control"], {"op": "snapshot"})["state"][name]


@contextlib.contextmanager
def fault(testbed, **request):
    control = testbed["world"]["endpoints"]["control"]
    world_control(control, {"op": "fault", **request})
    try:
        yield
    finally:
        world_control(control, {"op": "fault", "kind": request["kind"], "name": request["name"], "mode": "clear"})


def regulated(plc, target, tolerance=1.0):
    return eventually(lambda: abs(plc.read("coil_current") - target) < tolerance, timeout=6)


# one run again after a failure: on a shared 2-core CI machine the scheduler has stalled a process
# here for 100+ ms (seen in fresh clones); a real regression fails both runs
@pytest.mark.flaky(reruns=1)
def test_a_loop_regulates_the_coil_current_and_is_tuned_live(plc, testbed):
    loops = LoopMap(["coil"], lambda: plc, node="plc1")  # what `node.loops` is in the plc1 kernel
    coil = loops["coil"]
    assert coil.mode == "manual" and coil.kp == 0.5
    coil.setpoint = 50.0
    coil.auto()
    assert regulated(plc, 50.0), coil.state()
    assert abs(world(testbed, "coil_current") - 50.0) < 1.5
    # the loop owns its actuator while in auto
    with pytest.raises(Refused, match=r"coil_current_set is driven by loop coil \(auto\); switch it to manual first"):
        plc.write("coil_current_set", 40.0)
    with pytest.raises(Refused, match="driven by loop coil"):
        plc.ramp("coil_current_set", 40.0, 100.0)
    # live tuning, checked by the runtime
    coil.kp, coil.ki = 1.0, 8.0
    assert (coil.kp, coil.ki) == (1.0, 8.0)
    coil.setpoint = 80.0
    assert regulated(plc, 80.0), coil.state()
    with pytest.raises(RangeError, match="ki = -1 is negative"):
        coil.ki = -1
    with pytest.raises(ConfigError, match=r"no setting 'kpp'; did you mean kp\? \(allowed: kp, ki, kd, setpoint"):
        plc.call("loop", name="coil", set={"kpp": 1})
    with pytest.raises(ConfigError, match="no loop 'coli'; did you mean coil"):
        plc.call("loop", name="coli", set={"kp": 1})
    with pytest.raises(KeyError, match="no loop 'coli'; did you mean coil"):
        loops["coli"]
    with pytest.raises(AttributeError, match="did you mean kp"):
        coil.Kp = 1.0
    with pytest.raises(Refused, match="in auto"):
        coil.output = 10.0
    state = coil.state()
    assert state["timing"]["ticks"] > 20 and state["timing"]["lateness_us"]["p99"] > 0
    assert "coil (plc1): auto, coil_current" in repr(coil) and "<table>" in loops._repr_html_()
    # back to manual, bumpless, at an output of the operator's; the actuator is theirs again
    coil.manual(output=state["output"] - 5.0)
    assert coil.mode == "manual"
    assert plc.write("coil_current_set", state["output"] - 10.0) == state["output"] - 10.0
    audit = [(e["op"], e["signal"], e["value"], e["outcome"]) for e in plc.audit(50)]
    assert ("loop", "coil", {"kp": 1.0}, "ok") in audit and ("loop", "coil", {"ki": -1}, "refused") in audit
    plc.safe()


def test_auto_starts_from_the_output_as_it_is_and_a_safe_state_stops_the_loop(plc, testbed):
    plc.call("loop", name="coil", set={"mode": "manual", "output": 10.0})  # the operator's output
    assert regulated(plc, 10.0)
    state = plc.call("loop", name="coil", set={"setpoint": 10.0, "mode": "auto"})
    outputs = [state["output"]]
    for _ in range(20):
        outputs.append(plc.call("loops")["coil"]["output"])
    assert all(abs(out - 10.0) < 1.0 for out in outputs), outputs  # bumpless: no jump at the transfer
    plc.safe()
    state = plc.call("loops")["coil"]
    assert state["mode"] == "manual" and "safe state requested" in state["error"]
    assert plc.read("coil_current_set") == 0.0


def test_a_nan_sensor_drives_the_actuator_safe_and_latches_a_trip(plc, testbed):
    plc.call("loop", name="coil", set={"setpoint": 30.0, "mode": "auto"})
    assert regulated(plc, 30.0)
    with fault(testbed, kind="sensor", name="coil_current", mode="nan"):
        trips = wait_for(lambda: {t["interlock"]: t for t in plc.trips()}.get("loop:coil"), 3, "the loop trip")
        assert trips["layer"] == "loop" and trips["outputs"] == ["coil_current_set"]
        assert trips["safe"]["coil_current_set"] == {"ok": True, "value": 0.0}
        assert "coil_current is not a number" in trips["reason"]
        state = plc.call("loops")["coil"]
        assert state["mode"] == "manual" and state["error"].startswith("tripped")
        assert plc.read("coil_current_set") == 0.0
        assert eventually(lambda: world(testbed, "coil_current_cmd") == 0.0, timeout=3)
        with pytest.raises(Refused, match="loop:coil tripped"):
            plc.write("coil_current_set", 5.0)
        with pytest.raises(Refused, match="held safe by loop:coil.*re-arm it first"):
            plc.call("loop", name="coil", set={"mode": "auto"})
        with pytest.raises(Refused, match="cannot re-arm loop:coil: coil_current is not a number"):
            plc.rearm("loop:coil")
    assert eventually(lambda: plc.read("coil_current") is not None, timeout=3)  # back (NaN travels as null)
    assert plc.rearm("loop:coil")["rearmed"] is True
    on_disk = read_journal(Path(testbed["state_dir"]) / "audit" / "plc1.jsonl")
    trip = [e for e in on_disk if e["op"] == "trip" and e["signal"] == "coil_current_set"][-1]
    assert trip["outcome"] == "ok" and "loop coil" in trip["detail"]
    plc.safe()


def test_an_interlock_on_the_actuator_puts_the_loop_in_manual(plc, testbed):
    plc.call("loop", name="coil", set={"setpoint": 30.0, "mode": "auto"})
    assert regulated(plc, 30.0)
    control = testbed["world"]["endpoints"]["control"]
    world_control(control, {"op": "set", "name": "door_closed", "value": 0})
    try:
        state = wait_for(lambda: (s := plc.call("loops")["coil"])["mode"] == "manual" and s, 3, "manual on the trip")
        assert "switched to manual" in state["error"] and "coil_setpoint_needs_door_closed" in state["error"]
        assert plc.read("coil_current_set") == 0.0
    finally:
        world_control(control, {"op": "set", "name": "door_closed", "value": 1})
    assert eventually(lambda: plc.read("door_closed") == 1.0, timeout=3)
    for name in ("coil_setpoint_needs_door_closed", "coil_needs_door_closed"):
        plc.rearm(name)
    plc.safe()


def test_a_node_without_loops_has_no_loop_thread(testbed, rig_file):
    directory = Path(testbed["state_dir"])
    ready, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=serve_node, args=(str(rig_file), "gauge1"), name="runtime-gauge1",
                              kwargs=dict(sim=True, directory=directory, broker="none", ready=ready, stop=stop))
    thread.start()
    try:
        assert ready.wait(15)
        assert not [t for t in threading.enumerate() if t.name.startswith("loops-")]
        with RuntimeClient(read_state("node-gauge1", directory)["endpoint"], node="gauge1") as gauge:
            assert gauge.call("loops") == {}
            with pytest.raises(ConfigError, match="node 'gauge1' has no loop 'coil'; loops here: none"):
                gauge.call("loop", name="coil", set={"kp": 1})
    finally:
        stop.set()
        thread.join(10)

"""The FPGA fast path through a real rp1 runtime (the `fpga` op) and the kernel's `node.fpga`,
on the simulated testbed (processes): configuration, the rig's limits on the fast path,
the journal, and a safe state or a trip taking out1 back from a running module."""
from __future__ import annotations

import inspect
import threading
from pathlib import Path

import pytest

from labrig.drivers.errors import ConfigError, RangeError, Refused
from labrig.kernels.node_object import Node
from labrig.simulators.world import world_control
from labrig.supervisor.processes import stop_pid
from labrig.supervisor.rig import Rig
from labrig.supervisor.runtime import RuntimeClient
from labrig.supervisor.runtime.locate import ensure_runtime
from labrig.supervisor.runtime.main import serve_node
from labrig.supervisor.state import read_state
from support import eventually

pytestmark = pytest.mark.processes

HOLD = {"input": "in2", "output": "out1", "p": 0.0, "i": 0.0, "ival": 0.3}  # a PID that outputs 0.3 V


def _serve(testbed, ishtar_path, node):
    directory = Path(testbed["state_dir"])
    ready, stop, errors = threading.Event(), threading.Event(), []

    def run():
        try:
            serve_node(str(ishtar_path), node, sim=True, directory=directory, broker="none", ready=ready, stop=stop)
        except Exception as exc:  # surfaced by the fixture
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=run, name=f"runtime-{node}")
    thread.start()
    assert ready.wait(15) and not errors, errors
    return read_state(f"node-{node}", directory), stop, thread


@pytest.fixture
def rp1(testbed, ishtar_path):
    record, stop, thread = _serve(testbed, ishtar_path, "rp1")
    client = RuntimeClient(record["endpoint"], node="rp1", timeout=5.0)
    try:
        yield client
    finally:
        client.close()
        stop.set()
        thread.join(10)
        assert not thread.is_alive()


def world(testbed, name):
    return world_control(testbed["world"]["endpoints"]["control"], {"op": "snapshot"})["state"][name]


def fpga(client, module, action, **params):
    return client.call("fpga", module=module, action=action, params=params)


def test_configure_reads_back_drives_out1_and_is_journaled(rp1, testbed):
    state = fpga(rp1, "pid0", "configure", **HOLD, setpoint=0.2)
    assert state["input"] == "in2" and state["output"] == "out1" and state["ival"] == pytest.approx(0.3, abs=1e-4)
    # rf_power is limited to [0, 1200] W = 1500 W * V**2: the PID's limits were set to [0, 0.894] V.
    assert (state["min_voltage"], state["max_voltage"]) == (0.0, pytest.approx((1200 / 1500) ** 0.5, abs=2e-4))
    assert eventually(lambda: world(testbed, "rf_drive") == pytest.approx(0.3, abs=1e-3))
    assert fpga(rp1, "pid0", "state")["setpoint"] == pytest.approx(0.2, abs=1e-4)
    entry = [e for e in rp1.audit(20) if e["op"] == "fpga"][0]
    assert entry["signal"] == "fpga.pid0" and entry["outcome"] == "ok"
    assert entry["value"]["action"] == "configure" and entry["value"]["ival"] == 0.3
    assert fpga(rp1, "pid0", "reset")["ival"] == 0.0
    assert eventually(lambda: world(testbed, "rf_drive") == 0.0)
    fpga(rp1, "pid0", "configure", output="off")


def test_the_rig_limits_hold_on_the_fast_path(rp1):
    with pytest.raises(RangeError, match=r"pid0 -> out1, which carries rf_power \(limits \[0, 1200\] W = "
                                         r"\[0, 0.8944\] V\): max_voltage = 0.95 V is outside"):
        fpga(rp1, "pid0", "configure", **HOLD, max_voltage=0.95)
    with pytest.raises(RangeError, match=r"amplitude \+ \|offset\| = 1 V is above 0.8944 V"):
        fpga(rp1, "asg0", "configure", waveform="sin", amplitude=1.0, output="out1")
    with pytest.raises(Refused, match="an IQ output has no clamp"):
        fpga(rp1, "iq0", "configure", output="out1")
    fpga(rp1, "pid1", "configure", **HOLD)
    try:
        with pytest.raises(Refused, match="pid1 already drives it"):
            fpga(rp1, "asg0", "configure", waveform="sin", amplitude=0.5, output="out1")
        assert fpga(rp1, "asg0", "configure", waveform="sin", amplitude=0.5, output="out2")["output"] == "out2"
    finally:
        fpga(rp1, "pid1", "configure", output="off")
        fpga(rp1, "asg0", "configure", output="off")
    with pytest.raises(ConfigError, match=r"no FPGA module 'pid7'; allowed: pid0"):
        fpga(rp1, "pid7", "state")
    with pytest.raises(ConfigError, match=r"pid0.input = 'in3'; allowed: in1, in2"):
        fpga(rp1, "pid0", "configure", input="in3")
    with pytest.raises(ConfigError, match=r"fpga action 'start'; allowed: configure, state, reset"):
        fpga(rp1, "pid0", "start")
    refused = [e for e in rp1.audit(20) if e["op"] == "fpga" and e["outcome"] == "refused"]
    assert len(refused) >= 6


def test_safe_state_and_a_trip_take_out1_back(rp1, testbed):
    control = testbed["world"]["endpoints"]["control"]
    fpga(rp1, "pid0", "configure", **HOLD)
    assert eventually(lambda: world(testbed, "rf_drive") == pytest.approx(0.3, abs=1e-3))
    rp1.safe()
    assert fpga(rp1, "pid0", "state")["output"] == "off"
    assert eventually(lambda: world(testbed, "rf_drive") == 0.0)
    fpga(rp1, "pid0", "configure", output="out1")
    assert eventually(lambda: world(testbed, "rf_drive") == pytest.approx(0.3, abs=1e-3))
    # 400 W reflected: rf_reflected_limit (< 300 W) trips, rf_power goes to 0, the FPGA lets go.
    world_control(control, {"op": "fault", "kind": "sensor", "name": "rf_reflected", "mode": "offset", "value": 400})
    try:
        assert eventually(lambda: [t["interlock"] for t in rp1.trips()] == ["rf_reflected_limit"], timeout=5)
        assert eventually(lambda: world(testbed, "rf_drive") == 0.0)
        assert fpga(rp1, "pid0", "state")["output"] == "off"
        with pytest.raises(Refused, match="rf_reflected_limit tripped"):
            fpga(rp1, "pid0", "configure", output="out1")  # latched: the fast path cannot route around it
    finally:
        world_control(control, {"op": "fault", "kind": "sensor", "name": "rf_reflected", "mode": "clear"})


@pytest.fixture
def rp1_process(testbed, ishtar_path):
    """rp1's runtime as its own process, started as a node kernel starts it (found by its state file)."""
    record = ensure_runtime(ishtar_path, "rp1", Path(testbed["state_dir"]), sim=True)
    try:
        yield record
    finally:
        stop_pid(record["pid"])


def test_node_fpga_in_the_kernel_namespace(rp1_process, testbed, ishtar_path):
    rig, directory = Rig.load(ishtar_path), Path(testbed["state_dir"])
    node = Node(rig, "rp1", directory, client="test-kernel")
    ard = Node(rig, "ard1", directory, client="test-kernel")
    try:
        assert node.fpga.modules == ["pid0", "pid1", "pid2", "iq0", "iq1", "iq2", "asg0", "asg1"]
        assert "pid0 pid1 pid2 (PI controllers)" in repr(node.fpga)
        assert {"pid0", "iq2", "asg1"} <= set(dir(node.fpga))
        assert "setpoint=None" in str(inspect.signature(node.fpga.pid0.configure))  # for tab completion
        state = node.fpga.pid2.configure(input="in1", output="off", setpoint=0.1, p=-0.5, i=-10, max_voltage=None)
        assert state["setpoint"] == pytest.approx(0.1, abs=1e-4) and state["p"] == -0.5
        again = node.fpga.pid2.state()
        assert again == {**state, "ival": again["ival"]}  # the integrator runs (in1 - 0.1 V, at -10 Hz)
        node.fpga.pid2.configure(i=0.0)
        assert node.fpga.pid2.reset()["ival"] == 0.0
        with pytest.raises(ConfigError, match=r"node 'ard1' \(arduino\) has no FPGA; .* on RedPitaya nodes \(rp1\)"):
            ard.fpga.pid0
        assert "no FPGA" in repr(ard.fpga)
    finally:
        node.close()
        ard.close()

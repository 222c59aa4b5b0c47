"""The control panel in a real supervisor kernel, driven as a browser drives it (issue 6).

One simulated cluster (real Mosquitto, simulators, runtimes, guard, kernels) for the module;
`p = rig.panel()` runs in its supervisor kernel, and the tests then speak the widget comm
protocol to that kernel: a comm_msg "update" (a slider moved, a toggle pressed) or "custom"
click (a button) on the widget model's comm, and read the kernel's own comm_msg updates on
IOPub, as the browser would. The simulated devices' state (the world process) judges what
reached the hardware. The tests run in file order.
"""
from __future__ import annotations

import json
import os
import queue
import time
from collections import defaultdict
from pathlib import Path

import psutil
import pytest
from jupyter_client.blocking import BlockingKernelClient

from labrig.drivers.errors import LabrigError
from labrig.simulators.world import world_control
from labrig.supervisor.broker import mosquitto_binary
from labrig.supervisor.cluster import start_cluster, stop_cluster
from labrig.supervisor.processes import stop_pid
from labrig.supervisor.runtime import RuntimeClient
from labrig.supervisor.safety import all_trips, rearm
from labrig.supervisor.runtime.locate import runtime_record
from labrig.supervisor.state import read_state
from support import wait_for

ROOT = Path(__file__).resolve().parents[2]
RIG = ROOT / "examples" / "ishtar" / "rig.toml"
PWM_STEP = 150 / 255  # V: one step of the Arduino PWM that makes probe_bias

pytestmark = [pytest.mark.processes,
              pytest.mark.skipif(not mosquitto_binary() and not os.environ.get("CI"),
                                 reason="needs Mosquitto (apt install mosquitto)")]


class Browser:
    """What a browser does with the supervisor kernel's widgets: comm messages on shell, updates from IOPub."""

    def __init__(self, kc: BlockingKernelClient):
        self.kc = kc
        self.updates: dict[str, list[dict]] = defaultdict(list)  # comm id -> states the kernel sent

    def _read(self, timeout: float) -> dict | None:
        try:
            msg = self.kc.get_iopub_msg(timeout=timeout)
        except queue.Empty:
            return None
        if msg["msg_type"] == "comm_msg":
            data = msg["content"]["data"]
            if data.get("method") == "update":
                self.updates[msg["content"]["comm_id"]].append(data.get("state", {}))
        return msg

    def _until_idle(self, msg_id: str, timeout: float, collect=None) -> None:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"the kernel did not finish request {msg_id} within {timeout} s"
            msg = self._read(left)
            if msg is None or msg["parent_header"].get("msg_id") != msg_id:
                continue
            if collect is not None:
                collect(msg)
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return

    def run(self, code: str, timeout: float = 30.0) -> str:
        """Execute code; its printed text. Fails on an error in the kernel."""
        out, errors = [], []

        def collect(msg):
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                errors.append(f"{msg['content']['ename']}: {msg['content']['evalue']}")
        self._until_idle(self.kc.execute(code, store_history=False), timeout, collect)
        assert not errors, errors
        return "".join(out)

    def value(self, expr: str):
        return json.loads(self.run(f"import json as _j; print(_j.dumps({expr}))"))

    def _comm(self, comm_id: str, data: dict, timeout: float = 30.0) -> None:
        msg = self.kc.session.msg("comm_msg", {"comm_id": comm_id, "data": data})
        self.kc.shell_channel.send(msg)
        self._until_idle(msg["header"]["msg_id"], timeout)  # the kernel handled it (and answered on IOPub)

    def set(self, comm_id: str, **state) -> None:
        """The user moved a slider or pressed a toggle: the widget model's new state, as the browser sends it."""
        self._comm(comm_id, {"method": "update", "state": state, "buffer_paths": []})

    def click(self, comm_id: str) -> None:
        self._comm(comm_id, {"method": "custom", "content": {"event": "click"}})

    def wait_update(self, comm_id: str, check, timeout: float, what: str) -> dict:
        """Until the kernel sends this widget a state for which check(state) holds (pushed by any thread)."""
        deadline = time.monotonic() + timeout
        while True:
            for state in self.updates[comm_id]:
                if check(state):
                    return state
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{what}: not within {timeout} s (updates: {self.updates[comm_id][-5:]})")
            self._read(min(left, 0.2))

    def forget(self, comm_id: str) -> None:
        self.updates[comm_id].clear()


class Rig:
    """The running cluster's devices, as the world process and the runtimes see them."""

    def __init__(self, directory: Path):
        self.dir = directory

    def world(self) -> dict:
        return world_control(read_state("sim", self.dir)["world"]["endpoints"]["control"], {"op": "snapshot"})["state"]

    def set_world(self, name: str, value: float) -> None:
        world_control(read_state("sim", self.dir)["world"]["endpoints"]["control"],
                      {"op": "set", "name": name, "value": value})

    def runtime(self, node: str) -> RuntimeClient:
        record = runtime_record(node, self.dir)
        assert record, f"no runtime of {node} runs"
        return RuntimeClient(record["endpoint"], node=node, timeout=2.0, client="test-widgets")

    def journal(self, node: str) -> list[dict]:
        path = self.dir / "audit" / f"{node}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    directory = tmp_path_factory.mktemp("widgets") / "state"
    try:
        start_cluster(RIG, sim=True, directory=directory, timeout=90)
        _clear_startup_trips(directory)
        yield Rig(directory)
    finally:
        stop_cluster(directory)
        left = [p for p in psutil.process_iter(["pid", "cmdline", "status"])
                if str(directory) in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE]
        for p in left:
            stop_pid(p.pid, marker=str(directory))
        assert not left, "stop_cluster left running: " + "; ".join(" ".join(p.info["cmdline"])[:160] for p in left)


def _clear_startup_trips(directory: Path) -> None:
    """A loaded machine can start with a latched trip (the guard read a node before it answered): re-arm it,
    so every test starts from a rig with nothing latched."""
    def clear() -> bool:
        found = all_trips(directory)
        for trips in found.values():
            for trip in trips if isinstance(trips, list) else ():
                try:
                    rearm(trip["interlock"], directory)
                except LabrigError:  # refused while its condition fails: ask again
                    pass
        return not any(isinstance(trips, list) and trips for trips in found.values())
    wait_for(clear, 10, "no latched trip after the cluster started")


@pytest.fixture(scope="module")
def browser(cluster):
    kc = BlockingKernelClient()
    kc.load_connection_file(str(cluster.dir / "kernels" / "supervisor.json"))
    kc.start_channels(hb=False, stdin=False, control=False)
    try:
        yield Browser(kc)
    finally:
        kc.stop_channels()


@pytest.fixture(scope="module")
def ids(browser):
    """`p = rig.panel()` in the supervisor kernel; the comm ids of its widgets (what the browser renders)."""
    browser.run("p = rig.panel()")
    try:
        yield browser.value(
            "{'knobs': {n: k.control.model_id for n, k in p.knobs.items()},"
            " 'arms': {n: k.arm.model_id for n, k in p.knobs.items() if k.arm},"
            " 'rearm': {n: r.button.model_id for n, r in p.interlocks.rows.items()},"
            " 'readouts': {n: r.value.model_id for n, r in p.readouts.items()},"
            " 'estop': p.estop.button.model_id}")
    finally:
        browser.run("p.close()")


def test_the_panel_shows_live_telemetry_pushed_from_mqtt(browser, ids):
    assert set(ids["arms"]) == {"rf_power", "coil_current_set"}  # the rig file's `arm = true` outputs
    state = browser.value("p.feed.state")
    assert state.startswith("telemetry on"), state
    # langmuir_I (100 Hz) keeps changing: its readout is pushed to the browser with no request from it
    browser.wait_update(ids["readouts"]["langmuir_I"], lambda s: "mA" in s.get("value", ""), 5,
                        "langmuir_I's value pushed to the browser")
    pushed = browser.updates[ids["readouts"]["langmuir_I"]]
    before = len(pushed)
    wait_for(lambda: browser._read(0.2) is not None and len(pushed) >= before + 3, 5, "more langmuir_I updates")
    cooling = browser.value("p.readouts['cooling_flow'].value.value")
    assert cooling.endswith("L/min") and float(cooling.split()[0]) == pytest.approx(6.0, abs=0.05)
    wait_for(lambda: set(browser.value("p.watchdogs.states").values()) == {"online"}, 5,
             "every node and the guard online on the watchdog lights")


def test_a_knob_change_is_a_ramp_in_the_runtime(browser, ids, cluster):
    browser.set(ids["knobs"]["probe_bias"], value=-40.0)
    wait_for(lambda: abs(cluster.world()["probe_bias"] + 40) < PWM_STEP, 3, "probe_bias at -40 V on the Arduino")
    with cluster.runtime("ard1") as ard1:
        ramps = [r for r in ard1.ramps() if r["signal"] == "probe_bias" and r["target"] == -40.0]
    assert ramps and ramps[-1]["rate"] == 500.0, ramps  # a ramp at the rig file's max slew, not a jump
    wait_for(lambda: "-40 V" in browser.value("p.knobs['probe_bias'].readback_label.value"), 3,
             "the readback beside the setpoint, from telemetry")
    assert browser.value("p.knobs['probe_bias'].setpoint_label.value") == "set -40 V"


def test_an_unarmed_dangerous_knob_refuses_and_an_armed_one_ramps(browser, ids, cluster):
    slider = ids["knobs"]["rf_power"]
    browser.forget(slider)
    browser.set(slider, value=300.0)  # the slider is greyed out, but a stale page could still send this
    assert "arm it first" in browser.value("p.knobs['rf_power'].message.value")
    browser.wait_update(slider, lambda s: s.get("value") == 0.0, 2, "the rf_power slider sent back to 0 W")
    browser.set(ids["arms"]["rf_power"], value=True)
    assert browser.value("p.knobs['rf_power'].armed"), browser.value("p.knobs['rf_power'].message.value")
    browser.wait_update(slider, lambda s: s.get("disabled") is False, 2, "the armed rf_power slider enabled")
    browser.set(slider, value=100.0)
    wait_for(lambda: abs(cluster.world()["rf_drive"] - (100 / 1500) ** 0.5) < 0.01, 3,
             "rf_drive for 100 W on the RedPitaya")
    browser.wait_update(ids["arms"]["rf_power"], lambda s: s.get("value") is False, 2, "the arm released")
    targets = [e["value"] for e in cluster.journal("rp1") if e["op"] in ("ramp", "write") and e["signal"] == "rf_power"]
    assert 100.0 in targets and 300.0 not in targets, targets  # the refused change never reached the runtime


def test_a_trip_holds_its_knobs_and_the_rearm_button_rearms(browser, ids, cluster):
    enable = ids["knobs"]["coil_enable"]  # an on/off output (no arm): disabled only by a trip
    browser.forget(enable)
    cluster.set_world("cooling_flow", 1.0)  # the coils need cooling water: the guard trips coil_needs_cooling
    try:
        browser.wait_update(enable, lambda s: s.get("disabled") is True, 5, "coil_enable's toggle disabled")
        held = browser.value("p.knobs['coil_current_set'].message.value")
        assert "held by" in held and "coil_needs_cooling" in held, held
        assert browser.value("p.knobs['coil_current_set'].arm.disabled") is True
        # re-arm while the water is still off: refused, and the panel says why
        browser.click(ids["rearm"]["coil_needs_cooling"])
        message = browser.value("p.interlocks.message.value")
        assert "refused" in message and "cooling_flow" in message, message
    finally:
        cluster.set_world("cooling_flow", 6.0)

    def rearmed():  # the guard needs a poll or two to read the water back
        browser.click(ids["rearm"]["coil_needs_cooling"])
        return "re-armed" in browser.value("p.interlocks.message.value")
    wait_for(rearmed, 5, "coil_needs_cooling re-armed from its button")
    browser.wait_update(enable, lambda s: s.get("disabled") is False, 5, "coil_enable's toggle enabled again")
    # the RF interlock tripped too (cooling_ok fell); re-arm it the same way
    wait_for(lambda: browser.click(ids["rearm"]["rf_needs_vacuum_door_cooling"]) or
             not browser.value("p.knobs['rf_power'].held"), 5, "rf_power released")


def test_the_emergency_stop_drives_every_output_safe(browser, ids, cluster):
    browser.set(ids["knobs"]["beacon"], value=True)
    browser.set(ids["knobs"]["gas_flow"], value=20.0)
    browser.set(ids["knobs"]["probe_bias"], value=-60.0)
    browser.set(ids["arms"]["rf_power"], value=True)
    browser.set(ids["knobs"]["rf_power"], value=200.0)
    wait_for(lambda: (lambda s: s["beacon"] == 1 and abs(s["gas_valve"] - 0.4) < 0.01
                      and abs(s["probe_bias"] + 60) < PWM_STEP and s["rf_drive"] > 0.3)(cluster.world()), 3,
             "beacon on, gas valve 40 %, probe bias -60 V, RF drive up")

    browser.click(ids["estop"])
    wait_for(lambda: (lambda s: s["beacon"] == 0 and s["gas_valve"] == 0 and abs(s["probe_bias"]) < PWM_STEP
                      and s["rf_drive"] == 0 and s["coil_current_cmd"] == 0 and s["trigger"] == 0)(cluster.world()),
             3, "every output of the world at its safe value")
    shown = browser.value("p.estop.output.value")
    for node in ("ard1", "rp1", "plc1", "pi1", "gauge1"):
        assert node in shown
    assert "FAILED" not in shown and "UNREACHABLE" not in shown, shown
    # the knobs follow: their sliders sit at the safe values
    assert browser.value("{n: p.knobs[n].control.value for n in ('probe_bias', 'gas_flow', 'rf_power', 'beacon')}") \
        == {"probe_bias": 0.0, "gas_flow": 0.0, "rf_power": 0.0, "beacon": False}

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

from labrig.simulators.world import world_control
from labrig.supervisor.broker import mosquitto_binary
from labrig.supervisor.cluster import start_cluster, stop_cluster
from labrig.supervisor.mqtt import MqttSubscriber
from labrig.supervisor.processes import stop_pid
from labrig.supervisor.runtime import RuntimeClient
from labrig.supervisor.runtime.locate import runtime_record
from labrig.supervisor.state import read_state
from support import clear_startup_trips, wait_for

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
        clear_startup_trips(directory)
        yield Rig(directory)
    finally:
        stop_cluster(directory)
        left = [p for p in psutil.process_iter(["pid", "cmdline", "status"])
                if str(directory) in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE]
        for p in left:
            stop_pid(p.pid, marker=str(directory))
        assert not left, "stop_cluster left running: " + "; ".join(" ".join(p.info["cmdline"])[:160] for p in left)


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


# -- the run panel and the run monitor (issues 5 and 6): a sequence run from the panel, through the comm ------
RUN = {"power": 600.0, "b_field": 0.05, "flat_top": 0.2, "rate": 100.0}  # a short helicon discharge: 6-10 s


class RunStates:
    """A test's own subscription to the runner's retained state topic (labrig/ishtar/runner/state)."""

    def __init__(self, directory: Path):
        self.states: list[dict] = []
        self.sub = MqttSubscriber(read_state("broker", directory)["url"], ["labrig/ishtar/runner/state"],
                                  lambda _, payload: self.states.append(json.loads(payload)),
                                  client_id=f"test-run-states-{os.getpid()}")
        assert self.sub.wait_connected(5), "the test's MQTT subscriber did not connect"

    def wait(self, check, timeout: float, what: str) -> dict:
        wait_for(lambda: any(check(s) for s in list(self.states)), timeout, what)
        return next(s for s in list(self.states) if check(s))

    def close(self) -> None:
        self.sub.close()


@pytest.fixture(scope="module")
def run_ids(browser, ids):
    """The comm ids of the run panel's and the run monitor's widgets (in the panel `p` of the `ids` fixture)."""
    return browser.value(
        "{'fields': {n: f.control.model_id for n, f in p.run_panel.form.fields.items()},"
        " 'errors': {n: f.error.model_id for n, f in p.run_panel.form.fields.items()},"
        " 'dry': p.run_panel.dry_button.model_id, 'run': p.run_panel.run_button.model_id,"
        " 'pause': p.run_panel.pause_button.model_id, 'abort': p.run_panel.abort_button.model_id,"
        " 'message': p.run_panel.message.model_id, 'summary': p.run_panel.summary.model_id,"
        " 'plot': p.run_panel.plot.model_id, 'bar': p.run_panel.view.bar.model_id,"
        " 'live': p.run_panel.view.live.image.model_id, 'outcome': p.run_panel.view.outcome.model_id,"
        " 'overview': p.run_panel.view.overview.model_id, 'running': p.monitor.running.model_id,"
        " 'last': p.monitor.shot.model_id, 'last_overview': p.monitor.overview.model_id}")


@pytest.fixture
def run_states(cluster):
    states = RunStates(cluster.dir)
    try:
        yield states
    finally:
        states.close()


def _fill(browser, run_ids, **values) -> None:
    for name, value in values.items():
        browser.set(run_ids["fields"][name], value=value)


def test_the_run_panel_shows_the_parameters_own_error_and_refuses_to_run(browser, run_ids):
    assert browser.value("p.run_panel.chooser.value") == "discharge"
    assert set(run_ids["fields"]) == {"power", "b_field", "puff_ms", "puff_sccm", "fill_sccm", "fill_pressure",
                                      "flat_top", "probe_bias", "rate"}
    browser.set(run_ids["fields"]["power"], value=2000.0)
    expected = "discharge: parameter power = 2000 W is outside its range [0, 1200] W"
    browser.wait_update(run_ids["errors"]["power"], lambda s: expected in s.get("value", ""), 5,
                        "the parameter's own error beside the power field")
    browser.click(run_ids["run"])
    message = browser.value("p.run_panel.message.value")
    assert "refused" in message and expected in message and "Traceback" not in message, message
    assert browser.value("p.run_panel.running") is False
    _fill(browser, run_ids, **RUN)
    assert browser.value("p.run_panel.form.errors()") == {}


def test_a_dry_run_shows_the_plan_summary_and_its_timeline(browser, run_ids):
    browser.forget(run_ids["plot"])
    browser.click(run_ids["dry"])
    summary = browser.wait_update(run_ids["summary"], lambda s: "discharge(" in s.get("value", ""), 30,
                                  "the plan's summary pushed to the browser")["value"]
    assert "power=600 W" in summary and "wait_until pressure &gt;= 0.3" in summary and "safe exit" in summary
    wait_for(lambda: browser._read(0.2) is not None and browser.updates[run_ids["plot"]], 10,
             "the timeline plot (a PNG) sent to the browser")
    assert browser.value("bytes(p.run_panel.plot.value[:4]) == b'\\x89PNG'")
    assert "nothing moved" in browser.value("p.run_panel.message.value")


def test_a_run_from_the_panel_shows_progress_a_live_plot_and_the_last_shot(browser, run_ids, cluster, run_states):
    clear_startup_trips(cluster.dir)
    for key in ("bar", "live", "outcome", "overview", "running", "last", "last_overview"):
        browser.forget(run_ids[key])
    browser.click(run_ids["run"])
    started = run_states.wait(lambda s: s["state"] == "running" and s["parameters"].get("power") == 600.0
                              and s["parameters"].get("flat_top") == 0.2, 15, "the runner's state 'running' on MQTT")
    shot = started["shot"]
    assert started["sequence"] == "discharge" and started["duration"] > 1
    # a second run while this one goes on is refused, naming it
    browser.click(run_ids["run"])
    assert "refused: a run is under way" in browser.value("p.run_panel.message.value")
    # progress reaches the browser, and the live plot is redrawn while the run goes on
    browser.wait_update(run_ids["bar"], lambda s: s.get("value", 0) > 0, 15, "the progress bar moving")

    def live_while_running():
        running, renders, samples = browser.value(
            "[p.run_panel.running, p.run_panel.view.live.renders, sum(p.run_panel.view.live.counts().values())]")
        assert running or renders >= 3, "the run ended before its live plot was drawn 3 times"
        return running and renders >= 3 and samples > 0
    wait_for(live_while_running, 20, "the live plot drawn 3 times with samples, during the run")
    assert len(browser.updates[run_ids["live"]]) >= 2 or wait_for(
        lambda: browser._read(0.2) is not None and len(browser.updates[run_ids["live"]]) >= 2, 5,
        "live plot images sent to the browser")
    # the monitor (from the same MQTT state) shows the run under way
    browser.wait_update(run_ids["running"], lambda s: "running" in s.get("value", "") and
                        f"shot {shot}" in s.get("value", ""), 10, "the monitor showing the running discharge")
    # the end: the shot's number, status and overview, in the panel and in the monitor
    ended = run_states.wait(lambda s: s["state"] == "ended" and s["shot"] == shot, 40, "the runner's state 'ended'")
    assert ended["status"] == "success", ended
    assert ended["path"] and Path(ended["path"]).is_file()
    assert any(s["state"] == "running" and s["shot"] == shot and 0 < s["t"] < ended["t"] for s in run_states.states)
    browser.wait_update(run_ids["outcome"], lambda s: f"shot {shot}: success" in s.get("value", ""), 20,
                        "the panel's outcome line")
    wait_for(lambda: browser._read(0.2) is not None and browser.updates[run_ids["overview"]], 20,
             "the shot's overview plot sent to the browser")
    browser.wait_update(run_ids["last"], lambda s: f"shot {shot}: success" in s.get("value", ""), 10,
                        "the monitor's last shot")
    wait_for(lambda: browser.value("p.monitor.drawn") == ended["path"], 30, "the monitor's overview of that shot")
    wait_for(lambda: browser.value("p.run_panel.running") is False, 30, "the panel's run thread done")
    assert browser.value("[p.run_panel.result.number, p.run_panel.result.status]") == [shot, "success"]


def test_a_run_paused_then_aborted_from_its_buttons_ramps_every_node_down(browser, run_ids, cluster, run_states):
    clear_startup_trips(cluster.dir)
    browser.set(run_ids["fields"]["flat_top"], value=3.0)  # long enough to pause and abort on the flat top
    try:
        browser.click(run_ids["run"])
        running = run_states.wait(lambda s: s["state"] == "running" and s["parameters"].get("flat_top") == 3.0,
                                  15, "the runner's state 'running'")
        shot = running["shot"]
        wait_for(lambda: cluster.world()["rf_drive"] > 0.2, 20, "RF up on the RedPitaya (the flat top)")
        browser.click(run_ids["pause"])
        run_states.wait(lambda s: s["state"] == "paused" and s["shot"] == shot, 5, "the runner's state 'paused'")
        browser.wait_update(run_ids["running"], lambda s: "paused" in s.get("value", ""), 5, "the monitor: paused")
        browser.click(run_ids["pause"])  # now "resume"
        run_states.wait(lambda s: s["state"] == "running" and s["shot"] == shot and
                        any(p["state"] == "paused" for p in run_states.states), 5, "running again after the resume")
        browser.click(run_ids["abort"])
        ended = run_states.wait(lambda s: s["state"] == "ended" and s["shot"] == shot, 30, "the runner's state 'ended'")
        assert ended["status"] == "abort" and "aborted from the run panel" in ended["reason"], ended
        # every node ran its safe exit: the world's outputs are down
        wait_for(lambda: (lambda s: s["rf_drive"] == 0 and s["coil_current_cmd"] == 0 and s["gas_valve"] == 0
                          and abs(s["probe_bias"]) < PWM_STEP)(cluster.world()), 10,
                 "RF, coil, gas and probe bias ramped down on the simulated devices")
        browser.wait_update(run_ids["outcome"], lambda s: f"shot {shot}: abort" in s.get("value", ""), 20,
                            "the panel's outcome line")
        browser.wait_update(run_ids["last"], lambda s: f"shot {shot}: abort" in s.get("value", ""), 10,
                            "the monitor's last shot")
        wait_for(lambda: browser.value("p.run_panel.running") is False, 30, "the panel's run thread done")
        assert browser.value("p.run_panel.result.status") == "abort"
    finally:
        browser.run("p.run_panel.running and p.run_panel.abort('the test ended'); p.run_panel.wait(30)", timeout=60)
        browser.set(run_ids["fields"]["flat_top"], value=0.2)


def test_rig_run_in_the_kernel_shows_progress_and_a_live_plot_and_returns_the_shot(browser, run_ids, cluster,
                                                                                   run_states):
    clear_startup_trips(cluster.dir)
    browser.forget(run_ids["last"])
    shown, updated, printed, errors = [], [], [], []

    def collect(msg):
        kind, content = msg["msg_type"], msg["content"]
        if kind == "display_data":
            shown.append(content["data"])
        elif kind == "update_display_data":
            updated.append(content["data"])
        elif kind == "stream":
            printed.append(content["text"])
        elif kind == "error":
            errors.append(f"{content['ename']}: {content['evalue']}")
    code = ("from labrig.sequences.library import discharge\n"
            "r = rig.run(discharge, power=600.0, b_field=0.05, flat_top=0.2, rate=100.0)\n"
            "print('returned', r.number, r.status)")
    browser._until_idle(browser.kc.execute(code, store_history=False), 90, collect)
    assert not errors, errors
    number, status = "".join(printed).split("returned ")[1].split()
    assert status == "success"
    # one view shown as the run began: a widget, with a line of text for a client without widgets (nbclient)
    [data] = shown
    view = data["application/vnd.jupyter.widget-view+json"]["model_id"]
    assert data["text/plain"].startswith("discharge(power=600 W")
    assert updated and updated[-1]["text/plain"] == f"shot {number}: success"
    assert updated[-1]["application/vnd.jupyter.widget-view+json"]["model_id"] == view
    # its parts (RunView: title, bar and time, states, live plot, outcome, overview) were pushed during the run
    bar, live, outcome, overview = browser.value(
        f"(lambda v: [v.children[1].children[0].model_id, v.children[3].children[0].model_id, v.children[4].model_id,"
        f" v.children[5].model_id])(__import__('ipywidgets').widgets.widget._instances[{view!r}])")
    assert any(s.get("value", 0) > 0 for s in browser.updates[bar]), browser.updates[bar][-3:]
    assert len(browser.updates[live]) >= 3  # the empty panels, at least one while samples came, the last
    assert any(f"shot {number}: success" in s.get("value", "") for s in browser.updates[outcome])
    assert browser.updates[overview], "the shot's overview image"
    # whoever runs it, the runner says so on MQTT, and the panel's monitor shows it
    run_states.wait(lambda s: s["state"] == "running" and s["shot"] == int(number), 5, "'running' on MQTT")
    run_states.wait(lambda s: s["state"] == "ended" and s["shot"] == int(number) and s["status"] == "success", 5,
                    "'ended' on MQTT")
    browser.wait_update(run_ids["last"], lambda s: f"shot {number}: success" in s.get("value", ""), 10,
                        "the panel's monitor showing the shot rig.run made")

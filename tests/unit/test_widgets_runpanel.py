"""The run panel's parts without a cluster: the form generated from a sequence's signature and its checks,
the dry run, a run's thread and buttons (around a stand-in Runner that writes a real shot file), the
live plot's bounded drawing, the run monitor fed as its MQTT subscription would feed it, and the
runner's state announcements (throttled; published only with a broker)."""
from __future__ import annotations

import json
import threading
import time
from typing import Annotated

import numpy as np
import pytest

from labrig.drivers.errors import ConfigError, RangeError
from labrig.kernels.widgets.liveplot import LivePlot
from labrig.kernels.widgets.paramform import ParamForm
from labrig.kernels.widgets.runmonitor import RunMonitor
from labrig.kernels.widgets.runpanel import RunPanel
from labrig.kernels.widgets.telemetry import TelemetryFeed
from labrig.sequences import Param, sequence
from labrig.sequences.library import conditioning, discharge, step_scan
from labrig.supervisor.runner import RunResult
from labrig.supervisor.runner.announce import RunAnnouncer
from labrig.supervisor.store import ShotStore
from support import wait_for

PNG = b"\x89PNG"


def is_png(value) -> bool:
    """An Image widget's value (a memoryview) holds a PNG."""
    return bytes(value[:4]) == PNG


@sequence
def bias_sweep(tl, top: Annotated[float, Param("V", (0, 40), "how far the bias goes")],
               label: Annotated[str, Param(doc="a name for the log")] = "sweep", verbose: bool = False):
    """Sweep the probe bias up to `top`."""
    tl.ramp("probe_bias", -top)
    tl.ramp("probe_bias", 0)


def test_the_form_has_a_field_per_parameter_with_unit_range_default_and_doc():
    form = ParamForm(discharge)
    assert list(form.fields) == list(discharge.params)
    power = form.fields["power"]
    assert type(power.control).__name__ == "FloatText" and power.control.value == 735.0
    assert "W in [0, 1200]" in power.unit.value
    assert "RF power on the flat top" in power.control.tooltip and "default 735.0" in power.control.tooltip
    assert "A helicon discharge" in form.doc.value
    scan = ParamForm(step_scan)
    kinds = {n: type(f.control).__name__ for n, f in scan.fields.items()}
    assert kinds["steps"] == "IntText" and kinds["signal"] == "Text" and kinds["signals"] == "Text"
    signals = scan.fields["signals"]
    assert signals.control.value == "langmuir_I" and "comma-separated" in signals.unit.value
    scan.fields["signals"].control.value = "langmuir_I, interferometer_phase"
    assert scan.values()["signals"] == ("langmuir_I", "interferometer_phase")
    assert type(ParamForm(conditioning).fields["pulses"].control).__name__ == "IntText"
    # the form's values are the sequence's own check of them: what a call would run with
    assert ParamForm(conditioning).values() == conditioning.check()


def test_out_of_range_and_wrong_input_show_the_parameters_own_message():
    form = ParamForm(discharge)
    form.fields["power"].control.value = 2000.0
    expected = "discharge: parameter power = 2000 W is outside its range [0, 1200] W"
    assert expected in form.fields["power"].error.value  # beside the field, at once
    form.fields["rate"].control.value = 0.5
    assert set(form.errors()) == {"power", "rate"}
    with pytest.raises(RangeError, match="power = 2000 W is outside"):
        form.values()
    form.fields["power"].control.value = 800.0
    form.fields["rate"].control.value = 100.0
    assert form.errors() == {} and form.fields["power"].error.value == ""
    assert form.values()["power"] == 800.0

    sweep = ParamForm(bias_sweep)  # a parameter with no default is a text field: empty means "not given"
    top = sweep.fields["top"]
    assert type(top.control).__name__ == "Text" and top.control.placeholder == "required"
    with pytest.raises(ConfigError, match="parameter top is required"):
        sweep.values()
    top.control.value = "abc"
    assert "bias_sweep: parameter top = 'abc' is not a number with a unit" in top.error.value
    top.control.value = "20 kV"
    assert "outside its range [0, 40] V" in top.error.value  # 20 kV is 20000 V
    top.control.value = "500 mV"
    assert sweep.values() == {"top": 0.5, "label": "sweep", "verbose": False}
    assert type(sweep.fields["verbose"].control).__name__ == "Checkbox"



def test_a_dry_run_shows_the_summary_and_the_timeline_and_a_refusal_shows_its_reason(lone_machine):
    panel = RunPanel(lone_machine)
    try:
        assert list(panel.sequences) == ["discharge", "step_scan", "conditioning"]
        panel.form.fields["flat_top"].control.value = 0.2
        panel.dry_button.click()
        assert panel.plan is not None and "discharge(" in panel.summary.value and "safe exit" in panel.summary.value
        assert is_png(panel.plot.value) and panel.dry_box.layout.display is None
        assert "nothing moved" in panel.message.value
        # the compiler's own refusal, naming the step
        panel.chooser.value = "step_scan"
        assert "signal" in panel.form.fields
        panel.form.fields["signal"].control.value = "langmuir_I"
        panel.dry_button.click()
        assert "langmuir_I is an input of node ard1" in panel.message.value
        assert "Traceback" not in panel.message.value and panel.dry_box.layout.display == "none"
        panel.form.fields["steps"].control.value = 0
        panel.run_button.click()  # refused before anything runs: the parameter's message
        assert "step_scan: parameter steps = 0" in panel.message.value and "outside its range [1, 500]" in \
            panel.message.value
        assert not panel.running
    finally:
        panel.close()


def test_a_run_with_no_cluster_fails_with_its_reason(lone_machine, tmp_path):
    panel = RunPanel(lone_machine, store=ShotStore(tmp_path / "store", fsync="never"))
    try:
        panel.form.fields["flat_top"].control.value = 0.2
        assert panel.run()
        panel.wait(30)
        assert not panel.running and panel.result is None
        assert "has no runtime running" in panel.view.outcome.value and "start the cluster" in panel.message.value
        assert "Traceback" not in panel.view.outcome.value
        assert not panel.run_button.disabled and panel.abort_button.disabled
    finally:
        panel.close()


class StandInRunner:
    """Stands in for labrig.supervisor.runner.Runner: reports progress with samples, waits for the test to
    end it (or for an abort), then writes a real shot file."""
    made: list = []

    def __init__(self, rig, plan, *, directory, store, progress):
        self.rig, self.plan, self.store, self.progress = rig, plan, store, progress
        self.calls: list = []
        self.finish = threading.Event()
        self.reported = threading.Event()
        self.reason = ""
        StandInRunner.made.append(self)

    def pause(self):
        self.calls.append("pause")

    def resume(self):
        self.calls.append("resume")

    def abort(self, reason="aborted by the operator"):
        self.calls.append("abort")
        self.reason = reason
        self.finish.set()

    def run(self):
        t = np.arange(0, 1.0, 0.01)
        for i in range(5):
            part = t[i * 20:(i + 1) * 20]
            self.progress({"t": float(part[-1]), "duration": self.plan.duration, "shot": 1, "paused": False,
                           "states": {"ard1": {"state": "running"}, "rp1": {"state": "running"}},
                           "samples": {"langmuir_I": (part, np.sin(part)), "interferometer_phase": (part, part)}})
            time.sleep(0.21)  # past the view's UI period: every report reaches the bar
        self.reported.set()
        self.finish.wait(20)
        status = "abort" if self.reason else "success"
        writer = self.store.open_shot(sequence=self.plan.name, parameters=self.plan.params, rig=self.rig)
        writer.signal("langmuir_I", t, np.sin(t), unit="mA")
        path = writer.close(status, self.reason)
        return RunResult(writer.number, path, status, self.reason, "stand-in", {}, {"ard1": {"state": "done"}},
                         self.store)


def test_one_run_at_a_time_its_buttons_and_the_last_shots_overview(lone_machine, tmp_path, monkeypatch):
    import labrig.supervisor.runner as runner_package
    monkeypatch.setattr(runner_package, "Runner", StandInRunner)
    StandInRunner.made.clear()
    panel = RunPanel(lone_machine, store=ShotStore(tmp_path / "store", fsync="never"), period=0.05)
    try:
        panel.form.fields["flat_top"].control.value = 0.2
        panel.run_button.click()
        runner = StandInRunner.made[-1]
        assert panel.running and panel.run_button.disabled and not panel.abort_button.disabled
        panel.run_button.click()  # a second run is refused, naming the one under way
        assert "refused: a run is under way" in panel.message.value and "discharge(" in panel.message.value
        assert len(StandInRunner.made) == 1
        panel.pause_button.click()
        assert panel.pause_button.description == "resume" and "paused" in panel.message.value
        panel.pause_button.click()
        assert runner.calls == ["pause", "resume"] and panel.pause_button.description == "pause"
        assert runner.reported.wait(20)
        wait_for(lambda: panel.view.live.renders >= 1, 10, "the live plot drawn")
        assert panel.view.live.counts() == {"langmuir_I": 100, "interferometer_phase": 100}
        assert "shot 1:" in panel.view.time.value and panel.view.bar.value == pytest.approx(0.99)
        assert "ard1: running" in panel.view.states.value
        runner.finish.set()
        panel.wait(20)
        assert not panel.running and panel.result.status == "success"
        assert "shot 1: success" in panel.view.outcome.value and "shot 1: success" in panel.message.value
        assert is_png(panel.view.overview.value) and panel.view.live_box.layout.display == "none"
        # the next run: aborted from its button; the shot says so
        panel.run_button.click()
        runner = StandInRunner.made[-1]
        assert runner.reported.wait(20)
        panel.abort_button.click()
        panel.wait(20)
        assert runner.calls == ["abort"] and panel.result.status == "abort"
        assert "shot 2: abort" in panel.view.outcome.value and "aborted from the run panel" in panel.view.outcome.value
    finally:
        panel.close()


def test_closing_the_panel_aborts_its_run(lone_machine, tmp_path, monkeypatch):
    import labrig.supervisor.runner as runner_package
    monkeypatch.setattr(runner_package, "Runner", StandInRunner)
    panel = RunPanel(lone_machine, store=ShotStore(tmp_path / "store", fsync="never"))
    panel.run_button.click()
    runner = StandInRunner.made[-1]
    panel.close()
    assert runner.calls == ["abort"] and runner.reason == "the run panel was closed" and not panel.running


def test_the_live_plot_draws_at_a_bounded_rate_and_only_when_samples_came():
    live = LivePlot(units={"langmuir_I": "mA"}, period=0.2)
    live.start(["langmuir_I"], duration=2.0)
    try:
        wait_for(lambda: live.renders == 1, 5, "the empty panels drawn once")
        time.sleep(0.5)
        assert live.renders == 1  # nothing new, no new picture
        started = time.monotonic()
        for i in range(100):  # samples every 10 ms for ~1 s
            live.add({"langmuir_I": (np.array([i / 100]), np.array([float(i)]))})
            time.sleep(0.01)
        elapsed = time.monotonic() - started
        live.stop()
        assert is_png(live.image.value)
        assert 2 <= live.renders <= 1 + elapsed / 0.2 + 2, (live.renders, elapsed)  # a picture a period at most
        assert live.counts() == {"langmuir_I": 100}
    finally:
        live.close()


def test_the_run_monitor_shows_the_running_sequence_and_the_last_shot(tmp_path):
    store = ShotStore(tmp_path / "store", fsync="never")
    writer = store.open_shot(sequence="discharge", parameters={"power": 600.0})
    t = np.linspace(0, 1, 50)
    writer.signal("langmuir_I", t, t ** 2, unit="mA")
    path = writer.close("fail", "node rp1 tripped: rf_reflected_limit")
    feed = TelemetryFeed("ishtar", None)
    monitor = RunMonitor(feed=feed)
    try:
        state = {"run": "discharge-1", "sequence": "discharge", "parameters": {"power": 600.0, "rate": 100.0},
                 "shot": writer.number, "duration": 8.0, "status": "", "reason": "", "path": None, "time": time.time()}
        feed._on_message("labrig/ishtar/runner/state", json.dumps({**state, "state": "running", "t": 2.0}).encode())
        assert "running" in monitor.running.value and "discharge(power=600, rate=100)" in monitor.running.value
        assert monitor.bar.value == 2.0 and monitor.bar.max == 8.0 and monitor.shot.value == "none yet"
        feed._on_message("labrig/ishtar/runner/state", json.dumps({**state, "state": "paused", "t": 3.0}).encode())
        assert "paused" in monitor.running.value and monitor.bar.bar_style == "warning"
        feed._on_message("labrig/other/runner/state", json.dumps({**state, "state": "ended"}).encode())  # not ours
        assert monitor.last is None
        feed._on_message("labrig/ishtar/runner/state", json.dumps(
            {**state, "state": "ended", "t": 3.5, "status": "fail", "reason": "node rp1 tripped: rf_reflected_limit",
             "path": str(path)}).encode())
        assert "idle" in monitor.running.value and f"shot {writer.number}: fail" in monitor.shot.value
        assert "rf_reflected_limit" in monitor.shot.value and monitor.bar.bar_style == "danger"
        wait_for(lambda: monitor.drawn == str(path), 20, "the last shot's overview drawn")
        assert is_png(monitor.overview.value)
        feed._on_message("labrig/ishtar/runner/state", json.dumps(
            {**state, "state": "ended", "shot": 99, "status": "success", "path": str(tmp_path / "gone.h5")}).encode())
        wait_for(lambda: "overview not available" in monitor.shot.value, 20, "a missing shot file said")
    finally:
        monitor.close()


class Published(list):
    def publish(self, topic, payload, *, qos=0, retain=False):
        self.append((topic, payload["state"], payload["t"], qos, retain))

    def close(self, timeout=None):
        self.append("closed")


def test_the_runner_announces_at_start_on_pause_at_a_bounded_rate_and_at_the_end(ishtar, tmp_path):
    now = [0.0]
    announcer = RunAnnouncer(ishtar, tmp_path / "state", run="r", sequence="discharge", parameters={"power": 1.0},
                             shot=3, duration=8.0, clock=lambda: now[0])
    assert announcer.publisher is None  # no broker anywhere: nothing is published, nothing fails
    announcer.publisher = sent = Published()
    announcer.start()
    for t in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7):
        now[0] = t
        announcer.progress({"t": t})
    now[0] = 0.75
    announcer.progress({"t": 0.75, "paused": True})  # at once, whatever the rate
    now[0] = 0.8
    announcer.progress({"t": 0.75, "paused": True})
    announcer.end("abort", "aborted by the operator", tmp_path / "shot.h5")
    topic = "labrig/ishtar/runner/state"
    assert sent == [(topic, "running", 0.0, 1, True), (topic, "running", 0.5, 1, True),
                    (topic, "paused", 0.75, 1, True), (topic, "ended", 0.75, 1, True), "closed"]

"""Displays (kernels/widgets): the telemetry feed's filing and throttling, lights, the e-stop, and a
panel without a broker. MQTT messages are handed to the feed as its subscriber would; the rig's
runtimes are absent (an empty state directory), so every button meets the real "not running" answer.
"""
from __future__ import annotations

import json


from labrig.kernels.widgets.estop import EmergencyStop
from labrig.kernels.widgets.lights import InterlockLights, WatchdogLights
from labrig.kernels.widgets.readouts import sparkline_svg
from labrig.kernels.widgets.telemetry import TelemetryFeed


def batch(node, **signals):
    """A telemetry message as a node runtime publishes it: {name: [(t, v), ...]}."""
    return json.dumps({"node": node, "t0": 0.0, "signals": {
        name: {"seq": list(range(1, len(samples) + 1)), "t": [t for t, _ in samples], "v": [v for _, v in samples]}
        for name, samples in signals.items()}}).encode()


def test_the_feed_files_on_the_mqtt_thread_and_pushes_at_the_ticks_only():
    feed = TelemetryFeed("ishtar", None, track=["langmuir_I"], history=1.0)
    pushed, trips = [], []
    feed.on_values(pushed.append)
    feed.on_trips(trips.append)
    for i in range(20):  # a burst of batches between two ticks...
        feed._on_message("labrig/ishtar/ard1/telemetry", batch("ard1", langmuir_I=[(i / 10, float(i))],
                                                               cooling_flow=[(i / 10, 6.0)]))
    assert pushed == []  # ...reaches no widget from the MQTT thread
    feed.flush()
    assert pushed == [{"langmuir_I": (1.9, 19.0), "cooling_flow": (1.9, 6.0)}]  # one push, the latest values
    feed.flush()
    assert len(pushed) == 1  # nothing new, nothing sent
    # the last second of a tracked signal is kept (for its sparkline), no more; untracked ones are not
    assert [v for _, v in feed.history("langmuir_I")] == [float(i) for i in range(9, 20)]
    assert feed.history("cooling_flow") == []
    # trips go at once (a knob must not wait for a tick to be held); other rigs and bad JSON are ignored
    feed._on_message("labrig/ishtar/guard/trips", json.dumps({"node": "guard", "trips": [{"interlock": "x"}]}).encode())
    feed._on_message("labrig/other/guard/trips", json.dumps({"trips": [{"interlock": "y"}]}).encode())
    feed._on_message("labrig/ishtar/rp1/trips", b"{not json")
    assert trips == [{"guard": [{"interlock": "x"}]}]
    assert feed.state.startswith("telemetry off: this rig has no MQTT broker")


def test_a_failed_read_is_shown_as_failed_and_a_sparkline_has_gaps_not_zeros():
    svg = sparkline_svg([(0.0, 1.0), (1.0, None), (2.0, 3.0)], window=10.0)
    assert "<polyline" in svg and svg.count(",") == 2  # two points: the None is skipped
    assert "1 .. 3 over 10 s" in svg
    assert "<polyline" not in sparkline_svg([(0.0, None)], window=10.0)


def test_interlock_lights_show_reasons_and_a_refused_rearm(ishtar):
    asked = []

    def rearm(name, where):
        asked.append((name, where))
        if name == "coil_needs_cooling":
            raise RuntimeError("cannot re-arm coil_needs_cooling: it still requires cooling_flow > 2")
        return {"interlock": name, "rearmed": True}

    lights = InterlockLights(ishtar.spec.interlocks, rearm)
    trip = {"interlock": "coil_needs_cooling", "outputs": ["coil_current_set"], "time": 0, "layer": "supervisor",
            "reason": "coil_needs_cooling: requires cooling_flow > 2 (The coils need cooling water)"}
    lights.show({"plc1": [{**trip, "layer": "supervisor"}], "guard": [trip],
                 "ard1": [{"interlock": "lease_lost", "outputs": ["probe_bias"], "time": 0, "layer": "lease",
                           "reason": "the lease of guard was not renewed"}]})
    row = lights.rows["coil_needs_cooling"]
    assert "#c00" in row.light.value and "requires cooling_flow" in row.reason.value and not row.button.disabled
    assert lights.tripped["coil_needs_cooling"]["where"] == "guard"  # the guard's copy, not the node's
    assert "lease_lost" in lights.rows and "lease trip on ard1" in lights.rows["lease_lost"].what
    assert lights.rows["rf_reflected_limit"].button.disabled
    row.button.click()
    assert asked == [("coil_needs_cooling", "guard")]
    assert "refused" in lights.message.value and "still requires cooling_flow" in lights.message.value
    lights.rows["lease_lost"].button.click()
    assert asked[-1] == ("lease_lost", "ard1") and "re-armed" in lights.message.value


def test_watchdog_lights_from_heartbeats():
    now = [1000.0]
    lights = WatchdogLights(["ard1", "rp1", "plc1", "guard"], 2.0, clock=lambda: now[0])
    lights.from_heartbeats({"ard1": {"t": 999.5, "pid": 7}, "rp1": {"t": 990.0}, "guard": {"t": 999.9}},
                           {"guard": "offline"})
    assert lights.states == {"ard1": "online", "rp1": "late", "plc1": "unknown", "guard": "offline"}
    assert "no heartbeat for 10 s" in lights.lights["rp1"].value and "last will" in lights.lights["guard"].value


def test_the_emergency_stop_shows_every_node():
    results = {"ard1": {"probe_bias": {"ok": True, "value": 0.0, "error": ""},
                        "beacon": {"ok": False, "value": None, "error": "LinkTimeout: no answer"}},
               "rp1": {"error": "NodeUnavailable: node 'rp1' has no runtime running"}}
    seen = []
    stop = EmergencyStop(lambda: results, after=seen.append)
    stop.button.click()
    assert seen == [results] and stop.results == results
    html = stop.output.value
    assert "1 output safe (probe_bias=0)" in html and "FAILED" in html and "LinkTimeout" in html
    assert "UNREACHABLE" in html and "rp1" in html



def test_a_panel_without_a_broker_says_telemetry_is_off_and_still_shows_what_it_is_told(lone_machine):
    panel = lone_machine.panel()
    try:
        assert "telemetry off" in panel.telemetry.value and "no MQTT broker" in panel.telemetry.value
        rig = lone_machine.spec
        assert set(panel.knobs) == {n for n, s in rig.signals.items() if s.direction == "out"}
        assert set(panel.readouts) == {n for n, s in rig.signals.items() if s.direction == "in"}
        assert {n for n, r in panel.readouts.items() if r.spark is not None} == \
            {"langmuir_I", "interferometer_phase", "coil_current", "pressure"}
        assert "unreachable" in panel.knobs["rf_power"].message.value
        assert panel.watchdogs.states["ard1"] == "offline"
        # a change meets the real answer: no runtime runs
        probe = panel.knobs["probe_bias"]
        probe.control.set_state({"value": -20.0})
        assert "NodeUnavailable" in probe.message.value and probe.control.value == 0.0  # back where it was
        # what a broker would deliver drives the same widgets
        feed = panel.feed
        feed._on_message("labrig/ishtar/ard1/telemetry", batch("ard1", langmuir_I=[(1.0, 1.5), (1.01, 1.25)],
                                                               probe_bias=[(1.0, -20.0)]))
        feed.flush()
        assert panel.readouts["langmuir_I"].value.value == "1.25 mA" and "<polyline" in panel.readouts[
            "langmuir_I"].spark.value
        assert panel.knobs["probe_bias"].readback_label.value == "read -20 V"
        trip = {"interlock": "coil_needs_cooling", "outputs": ["coil_current_set", "coil_enable"], "time": 5.0,
                "layer": "supervisor", "reason": "coil_needs_cooling: requires cooling_flow > 2",
                "safe": {"coil_current_set": {"ok": True, "value": 0.0}}}
        feed._on_message("labrig/ishtar/guard/trips", json.dumps({"node": "guard", "trips": [trip]}).encode())
        coil = panel.knobs["coil_current_set"]
        assert coil.held and coil.control.disabled and "coil_needs_cooling" in coil.message.value
        assert panel.knobs["coil_enable"].held and not panel.knobs["rf_power"].held
        assert coil.setpoint == 0.0  # the trip drove it safe
        panel.interlocks.rows["coil_needs_cooling"].button.click()
        assert "refused" in panel.interlocks.message.value and "guard" in panel.interlocks.message.value
        # without a broker the panel looked again after the button: no runtime holds that trip
        assert not coil.held
        panel.estop.button.click()
        assert panel.estop.output.value.count("UNREACHABLE") == len(rig.nodes)
    finally:
        panel.close()

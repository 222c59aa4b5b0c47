"""Knob logic (kernels/widgets/knobs.py) over a fake runtime layer: what a change asks for, arming, holding.

Changes come in through `set_state`, the path a browser's comm "update" message takes in
the kernel (tests/system/test_widgets_kernel.py sends the real messages to a real kernel).
"""
from __future__ import annotations

import pytest

from labrig.drivers.errors import Refused
from labrig.kernels.widgets.knobs import Knob, is_switch


class FakeSignal:
    """The runtime layer as a Knob sees it: rig[name].ramp / .write, recorded."""

    def __init__(self, name, spec, *, refuse: Exception | None = None):
        self.name, self.spec = name, spec
        self.calls: list[tuple] = []
        self.refuse = refuse

    def ramp(self, target, rate=None):
        self.calls.append(("ramp", target, rate))
        if self.refuse:
            raise self.refuse
        return {"signal": self.name, "start": 0.0, "target": target, "rate": self.spec.max_slew, "state": "running"}

    def write(self, value):
        self.calls.append(("write", value))
        if self.refuse:
            raise self.refuse
        return value


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def knob(ishtar, name, **options):
    signal = FakeSignal(name, ishtar.signal(name), refuse=options.pop("refuse", None))
    return Knob(signal, **options), signal


def browser_sets(widget, value):
    """What a comm "update" from the browser does to the kernel's widget."""
    widget.set_state({"value": value})


def test_a_change_asks_the_runtime_for_a_ramp_at_the_allowed_slew(ishtar):
    k, signal = knob(ishtar, "probe_bias", setpoint=0.0)
    assert (k.control.min, k.control.max) == (-100.0, 50.0) and k.unit_label.value == "V"
    assert not k.control.disabled and k.arm is None
    browser_sets(k.control, -40.0)
    assert signal.calls == [("ramp", -40.0, None)]  # rate None: the signal's max slew (500 V/s)
    assert k.setpoint == -40.0 and "-40 V" in k.setpoint_label.value
    assert "ramping" in k.message.value and "500 V/s" in k.message.value
    k.show_setpoint(0.0, why="the emergency stop")  # the e-stop ended the ramp: the knob says so
    assert k.setpoint == 0.0 and k.control.value == 0.0
    assert "ramping" not in k.message.value and "set to 0 V by the emergency stop" in k.message.value
    k.show_setpoint(-5.0)  # a setpoint seen in passing (the panel's refresh) leaves the message
    assert k.setpoint == -5.0 and "emergency stop" in k.message.value


def test_outputs_without_slew_are_written_and_switches_are_toggles(ishtar):
    k, signal = knob(ishtar, "gauge_setpoint", setpoint=5.0)
    browser_sets(k.control, 2.5)
    assert signal.calls == [("write", 2.5)] and k.setpoint == 2.5
    assert is_switch(ishtar.signal("beacon")) and not is_switch(ishtar.signal("rf_power"))
    k, signal = knob(ishtar, "beacon", setpoint=0.0)
    assert type(k.control).__name__ == "ToggleButton" and k.control.value is False
    browser_sets(k.control, True)
    browser_sets(k.control, False)
    assert signal.calls == [("write", 1.0), ("write", 0.0)] and "off" in k.setpoint_label.value


def test_a_dangerous_knob_refuses_a_change_until_armed_and_an_arm_covers_one_change(ishtar):
    k, signal = knob(ishtar, "rf_power", setpoint=0.0)
    assert k.needs_arm and k.control.disabled  # greyed out in the browser until armed...
    browser_sets(k.control, 300.0)  # ...and refused here when a change arrives anyway
    assert signal.calls == [] and k.control.value == 0.0 and k.setpoint == 0.0
    assert "arm it first" in k.message.value
    browser_sets(k.arm, True)
    assert k.armed and not k.control.disabled
    browser_sets(k.control, 300.0)
    assert signal.calls == [("ramp", 300.0, None)] and k.setpoint == 300.0
    assert not k.armed and k.arm.value is False and k.control.disabled  # one change per arm
    browser_sets(k.control, 600.0)
    assert len(signal.calls) == 1 and k.control.value == 300.0


def test_an_arm_lapses_after_its_timeout(ishtar):
    clock = Clock()
    k, signal = knob(ishtar, "coil_current_set", setpoint=0.0, arm_timeout=5.0, clock=clock)
    browser_sets(k.arm, True)
    clock.now += 5.5
    assert not k.armed  # lapsed, even before the ticker shows it
    browser_sets(k.control, 100.0)
    assert signal.calls == [] and "lapsed" in k.message.value and k.control.value == 0.0
    browser_sets(k.arm, True)
    clock.now += 6
    k.tick()  # the panel's ticker
    assert k.arm.value is False and k.control.disabled and "lapsed" in k.message.value


def test_a_trip_holds_the_knob_with_the_interlocks_name_until_released(ishtar):
    k, signal = knob(ishtar, "coil_current_set", setpoint=200.0)
    browser_sets(k.arm, True)
    k.hold({"coil_needs_cooling": "coil_needs_cooling: requires cooling_flow > 2"})
    assert k.control.disabled and k.arm.disabled and not k.armed
    assert "coil_needs_cooling" in k.message.value and "requires cooling_flow" in k.message.value  # (tooltip)
    browser_sets(k.arm, True)
    assert k.arm.value is False and "held by interlock coil_needs_cooling" in k.message.value
    browser_sets(k.control, 100.0)
    assert signal.calls == [] and k.control.value == 200.0
    k.show_setpoint(0.0)  # the trip drove it safe
    assert k.control.value == 0.0 and "set 0 A" in k.setpoint_label.value and signal.calls == []
    k.hold({})
    assert k.control.disabled and not k.arm.disabled and "released" in k.message.value  # still needs its arm
    browser_sets(k.arm, True)
    browser_sets(k.control, 100.0)
    assert signal.calls == [("ramp", 100.0, None)]


def test_a_runtime_refusal_is_shown_and_the_knob_goes_back(ishtar):
    why = Refused("rf_power: interlock rf_reflected_limit tripped at 12:00:00; re-arm it first")
    k, signal = knob(ishtar, "rf_power", setpoint=100.0, refuse=why)
    browser_sets(k.arm, True)
    browser_sets(k.control, 500.0)
    assert signal.calls == [("ramp", 500.0, None)]
    assert k.control.value == 100.0 and k.setpoint == 100.0 and not k.armed
    assert "Refused" in k.message.value and "rf_reflected_limit" in k.message.value


def test_readback_sits_beside_the_setpoint(ishtar):
    k, _ = knob(ishtar, "gas_flow", setpoint=10.0)
    k.show_reading(9.87654)
    assert k.readback_label.value == "read 9.877 sccm" and k.setpoint_label.value == "set 10 sccm"
    k.show_reading(None)
    assert "failed" in k.readback_label.value


def test_an_input_has_no_knob(ishtar):
    with pytest.raises(Exception, match="input"):
        knob(ishtar, "pressure")

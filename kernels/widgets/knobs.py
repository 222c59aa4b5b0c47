"""A knob per output of the rig: the control, its setpoint and readback side by side.

    knob = Knob(rig["probe_bias"])       a slider within the signal's limits, with its unit
    knob.widget                          what the notebook shows

A change asks the node's runtime for a ramp at the signal's max slew (a write for
outputs without one; on/off outputs are toggle buttons and are written): the
runtime's envelope decides, the knob only asks, and says what it was told.
Outputs the rig file marks `arm = true` (RF power, coil current) take two steps:
arm, then change; the arm covers one change and lapses after `arm_timeout` s. A
latched trip that names the output holds the knob: disabled, with the interlock's
name, until it is re-armed. A change that arrives anyway (a second browser, a
stale page) is refused here too, not only greyed out there.
"""
from __future__ import annotations

import contextlib
import html
import math
import threading
import time
from typing import Any, Callable

import ipywidgets as w

from labrig.drivers.errors import ConfigError

ARM_TIMEOUT = 10.0  # s an arm stays valid: long enough to reach the slider, short enough not to be forgotten
DESCRIPTION_WIDTH = "150px"


def is_switch(spec) -> bool:
    """An on/off output: no unit, no limits, no slew (a digital pin, a PLC bit)."""
    return spec.limits is None and not spec.unit and spec.max_slew is None


def number(value: Any, unit: str = "") -> str:
    if value is None:
        return "?"
    try:
        text = f"{float(value):.4g}"
    except (TypeError, ValueError):
        return html.escape(str(value))
    return f"{text} {html.escape(unit)}".rstrip()


def _step(limits) -> float:
    """A round slider step near a thousandth of the range (1, 2 or 5 times a power of ten)."""
    raw = (limits[1] - limits[0]) / 1000
    power = 10.0 ** math.floor(math.log10(raw))
    return next(round(nice * power, 12) for nice in (1, 2, 5, 10) if raw <= nice * power * (1 + 1e-9))


class Knob:
    """One output. `signal`: has .name, .spec (SignalSpec), .ramp(target), .write(value) (a rig Signal)."""

    def __init__(self, signal, *, setpoint: float | None = None, arm_timeout: float = ARM_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic):
        spec = signal.spec
        if spec.direction != "out":
            raise ConfigError(f"{signal.name} is an input: a knob drives an output")
        if arm_timeout <= 0:
            raise ConfigError(f"arm_timeout={arm_timeout!r}: give a time in seconds > 0")
        self.signal, self.name, self.spec, self.unit = signal, signal.name, spec, spec.unit
        self.needs_arm = bool(spec.arm)
        self.switch = is_switch(spec)
        self.arm_timeout = arm_timeout
        self._clock = clock
        self.setpoint = setpoint  # the last value the runtime accepted (or reported)
        self.held: dict[str, str] = {}  # interlock -> reason, while a latched trip names this output
        self._armed_at: float | None = None
        self._lock = threading.RLock()  # the MQTT thread (trips), the ticker and the kernel's shell all come here
        self._local = threading.local()  # "quiet": a change made here, not by the user

        tip = spec.description or f"{self.name} ({spec.node} {spec.channel})"
        if self.switch:
            self.control = w.ToggleButton(value=bool(setpoint), description=self.name, tooltip=tip,
                                          layout=w.Layout(width="304px"))
        elif spec.limits is not None:
            lo, hi = spec.limits
            start = min(max(_start(setpoint, spec), lo), hi)
            self.control = w.FloatSlider(value=start, min=lo, max=hi, step=_step(spec.limits),
                                         description=self.name, tooltip=tip, continuous_update=False,
                                         readout_format=".4g", style={"description_width": DESCRIPTION_WIDTH},
                                         layout=w.Layout(width="420px"))
        else:
            self.control = w.FloatText(value=_start(setpoint, spec), description=self.name, tooltip=tip,
                                       style={"description_width": DESCRIPTION_WIDTH}, layout=w.Layout(width="420px"))
        self.slider = self.control  # the name the notebook (and tests) reach for
        self.unit_label = w.Label(self.unit, layout=w.Layout(width="50px"))
        self.arm = None
        if self.needs_arm:
            self.arm = w.ToggleButton(value=False, description="arm", icon="unlock", button_style="warning",
                                      tooltip=f"{self.name} is dangerous: arm, then change it within "
                                              f"{arm_timeout:g} s (one change per arm)",
                                      layout=w.Layout(width="70px"))
            self.arm.observe(self._on_arm, names="value")
        self.setpoint_label = w.HTML(layout=w.Layout(width="130px"))
        self.readback_label = w.HTML("read ?", layout=w.Layout(width="130px"))
        self.message = w.HTML(layout=w.Layout(width="auto"))
        parts = [self.control, self.unit_label, self.setpoint_label, self.readback_label]
        self.widget = w.HBox(([self.arm] if self.arm else [w.Box(layout=w.Layout(width="70px"))]) + parts
                             + [self.message])
        self.control.observe(self._on_change, names="value")
        self._refresh()

    # -- state ----------------------------------------------------------------
    @property
    def armed(self) -> bool:
        """Armed and the arm still fresh (an arm past its timeout is no arm, even before the UI shows it)."""
        return self._armed_at is not None and self._clock() - self._armed_at <= self.arm_timeout

    def _refusal(self) -> str:
        if self.held:
            names = ", ".join(self.held)
            return f"{self.name} is held by interlock {names}; re-arm it first"
        if self.needs_arm and not self.armed:
            if self._armed_at is not None:
                return f"the arm of {self.name} lapsed after {self.arm_timeout:g} s; arm it again"
            return f"{self.name} is dangerous: arm it first, then change it"
        return ""

    # -- the user's side (the kernel's shell thread, from a comm message) -------
    def _on_arm(self, change) -> None:
        if self._is_quiet():
            return
        with self._lock:
            if change["new"] and self.held:
                self._set(self.arm, False)
                self.say(f"refused: {html.escape(self._refusal())}", bad=True)
            elif change["new"]:
                self._armed_at = self._clock()
                self.say(f"armed: the next change of {self.name} goes to the runtime "
                         f"(within {self.arm_timeout:g} s)")
            else:
                self._armed_at = None
                self.say("")
            self._refresh()

    def _on_change(self, change) -> None:
        if self._is_quiet():
            return
        target = change["new"]
        with self._lock:
            why = self._refusal()
            if why:
                self._revert(change["old"])
                self.say(f"refused: {html.escape(why)}", bad=True)
                return
        try:
            told = self._request(target)
        except Exception as exc:  # the runtime refused (envelope, interlock) or could not be reached: say so
            with self._lock:
                self._revert(change["old"])
                self.say(f"refused by the runtime: {html.escape(f'{type(exc).__name__}: {exc}')}", bad=True)
        else:
            with self._lock:
                self.setpoint = float(target)
                self.say(told)
                self._refresh()
        finally:
            if self.needs_arm:  # one change per arm, whatever became of it
                self.disarm()

    def _request(self, target) -> str:
        if self.switch:
            self.signal.write(1.0 if target else 0.0)
            return f"{self.name} switched {'on' if target else 'off'}"
        target = float(target)
        if self.spec.max_slew:
            ramp = self.signal.ramp(target)  # at the signal's max slew: the runtime ramps, the knob never jumps
            return (f"ramping {number(ramp.get('start'))} &rarr; {number(ramp.get('target', target), self.unit)} "
                    f"at {number(ramp.get('rate'), self.unit)}/s")
        self.signal.write(target)
        return f"set to {number(target, self.unit)}"

    # -- what others tell the knob (any thread) ----------------------------------
    def disarm(self, why: str = "") -> None:
        with self._lock:
            if self.arm is None:
                return
            self._armed_at = None
            self._set(self.arm, False)
            if why:
                self.say(html.escape(why))
            self._refresh()

    def tick(self) -> None:
        """Called now and then (the panel's ticker): a lapsed arm shows as disarmed."""
        with self._lock:
            if self._armed_at is not None and not self.armed:
                self.disarm(f"the arm lapsed after {self.arm_timeout:g} s")

    def hold(self, holders: dict[str, str]) -> None:
        """The latched trips that name this output ({interlock: reason}); {} releases the knob."""
        with self._lock:
            if holders == self.held:
                return
            self.held = dict(holders)
            if holders:
                self.disarm()
                reasons = "; ".join(f"{k}: {v}" for k, v in holders.items())
                self.say(f"held by {html.escape(', '.join(holders))}", bad=True, tip=reasons)
            else:
                self.say("released: its interlock was re-armed")
            self._refresh()

    def show_setpoint(self, value: float | None, why: str = "") -> None:
        """The runtime's setpoint changed without this knob (a trip, the emergency stop, a sequence).
        With `why`, the knob's message says who set it, in place of what it last said (a "ramping
        ..." that the emergency stop ended); a held knob keeps saying which interlock holds it."""
        if value is None:
            return
        with self._lock:
            self.setpoint = float(value)
            self._set(self.control, bool(value) if self.switch else float(value))
            if why and not self.held:
                shown = ("on" if value else "off") if self.switch else number(value, self.unit)
                self.say(f"set to {shown} by {html.escape(why)}")
            self._refresh()

    def show_reading(self, value: float | None) -> None:
        self.readback_label.value = (f"read {number(value, self.unit)}" if value is not None
                                     else "read <span style='color:#b00'>failed</span>")

    # -- helpers ----------------------------------------------------------------
    def _refresh(self) -> None:
        self.control.disabled = bool(self.held) or (self.needs_arm and not self.armed)
        if self.arm is not None:
            self.arm.disabled = bool(self.held)
        if self.setpoint is None:
            self.setpoint_label.value = "set ?"
        elif self.switch:
            self.setpoint_label.value = f"set {'on' if self.setpoint else 'off'}"
        else:
            self.setpoint_label.value = f"set {number(self.setpoint, self.unit)}"

    def _revert(self, old) -> None:
        back = self.setpoint if self.setpoint is not None else old
        self._set(self.control, bool(back) if self.switch else back)

    def _set(self, widget, value) -> None:
        with self._quiet():
            widget.value = value

    @contextlib.contextmanager
    def _quiet(self):
        self._local.quiet = True
        try:
            yield
        finally:
            self._local.quiet = False

    def _is_quiet(self) -> bool:
        return getattr(self._local, "quiet", False)

    def say(self, text: str, *, bad: bool = False, tip: str = "") -> None:
        """The line beside the knob: what became of the last change, or why it is held."""
        color = "#b00" if bad else "#555"
        title = f" title='{html.escape(tip, quote=True)}'" if tip else ""
        self.message.value = f"<span style='color:{color}'{title}>{text}</span>" if text else ""

    def close(self) -> None:
        for widget in (self.widget, *self.widget.children):
            widget.close()

    def __repr__(self):
        state = "held" if self.held else "armed" if self.armed else "ready"
        return f"<Knob {self.name} set {self.setpoint} {self.unit} ({state})>"


def _start(setpoint, spec) -> float:
    for value in (setpoint, spec.safe, spec.limits[0] if spec.limits else None):
        if value is not None:
            return float(value)
    return 0.0

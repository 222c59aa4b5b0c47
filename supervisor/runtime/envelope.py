"""The safety envelope a node runtime checks before any write reaches the hardware.

Whoever asks (a cell, the supervisor, a sequence, a widget), a write or a ramp is
checked here first; a refusal says what was asked and what is allowed.
"""
from __future__ import annotations

import difflib
import math
from typing import Mapping

from labrig.drivers.errors import ConfigError, RangeError

from ..rig.schema import SignalSpec


STEP_TIME = 0.05  # s: a direct write may move an output as far as a full-slew ramp does in this time


class Envelope:
    def __init__(self, node: str, signals: Mapping[str, SignalSpec]):
        self.node = node
        self.signals = dict(signals)

    def signal(self, name: str) -> SignalSpec:
        try:
            return self.signals[name]
        except KeyError:
            close = difflib.get_close_matches(str(name), list(self.signals), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; this node has: {', '.join(self.signals)}"
            raise ConfigError(f"node {self.node!r} has no signal {name!r}{hint}") from None

    def output(self, name: str) -> SignalSpec:
        sig = self.signal(name)
        if sig.direction != "out":
            raise ConfigError(f"{name} is an input of node {self.node!r}; it cannot be written "
                              f"(outputs: {', '.join(n for n, s in self.signals.items() if s.direction == 'out')})")
        return sig

    def check_value(self, name: str, value) -> float:
        sig = self.output(name)
        if value is None:  # NaN travels as null in JSON
            raise RangeError(f"{name}: a finite number is required (got NaN or nothing)")
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise RangeError(f"{name}: {value!r} is not a number") from None
        if not math.isfinite(value):
            raise RangeError(f"{name}: {value} is not a finite number")
        if sig.limits is not None and not sig.limits[0] <= value <= sig.limits[1]:
            raise RangeError(f"{name} = {value:g} {sig.unit} is outside its limits "
                             f"[{sig.limits[0]:g}, {sig.limits[1]:g}] {sig.unit}".rstrip())
        return value

    def check_step(self, name: str, value: float, current: float | None) -> None:
        """A direct write is a step: with a max slew, it may move the output by at most
        max_slew x STEP_TIME from its present setpoint; larger changes are ramps. Going to the
        safe value is never refused."""
        sig = self.signals[name]
        if sig.max_slew is None or current is None or not math.isfinite(current) or value == sig.safe:
            return
        largest = sig.max_slew * STEP_TIME
        if abs(value - current) > largest * (1 + 1e-9):
            raise RangeError(f"{name}: a direct write from {current:g} to {value:g} {sig.unit} is a step of "
                             f"{abs(value - current):g} {sig.unit}; its max slew {sig.max_slew:g} {sig.unit}/s allows "
                             f"steps of {largest:g} {sig.unit} ({STEP_TIME * 1000:g} ms at full slew). "
                             f"Ramp it instead: ramp({name!r}, {value:g}, rate<={sig.max_slew:g})")

    def check_ramp(self, name: str, target, rate) -> tuple[float, float]:
        target = self.check_value(name, target)
        sig = self.signals[name]
        try:
            rate = float(rate)
        except (TypeError, ValueError):
            raise RangeError(f"{name}: ramp rate {rate!r} is not a number") from None
        if not (math.isfinite(rate) and rate > 0):
            raise RangeError(f"{name}: ramp rate must be a positive number of {sig.unit or 'units'}/s (got {rate})")
        if sig.max_slew is not None and rate > sig.max_slew * (1 + 1e-9):
            raise RangeError(f"{name}: ramp rate {rate:g} {sig.unit}/s exceeds its max slew "
                             f"{sig.max_slew:g} {sig.unit}/s")
        return target, rate

"""Typed, documented sequence parameters: a unit, a range and a line of doc.

    @sequence
    def discharge(tl, power: Annotated[float, Param("W", (0, 1200), "RF power on the flat top")] = 735): ...

    RF_POWER = Param("W", (0, 1200), "RF power")      # or declared once, used as the annotation:
    def conditioning(tl, power: RF_POWER = 100): ...  # (a bare Param(...) call works too, but linters
                                                       #  read its strings as forward references)

A value is a number in the parameter's unit, or a string with its unit ("0.8 kW",
"50 ms"), converted by SI prefix only: the rig's units are free text ("sccm",
"L/min"), so anything but a prefix of the same unit is refused, never guessed.
"""
from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import Any

from labrig.drivers.errors import ConfigError, RangeError

PREFIXES = {"p": 1e-12, "n": 1e-9, "u": 1e-6, "µ": 1e-6, "m": 1e-3, "c": 1e-2, "k": 1e3, "M": 1e6, "G": 1e9}
_QUANTITY = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(\S.*?)?\s*$")


@dataclass(frozen=True)
class Param:
    """What a sequence parameter accepts. `range` is inclusive, in `unit`."""

    unit: str = ""
    range: tuple[float, float] | None = None
    doc: str = ""
    type: type = float

    def describe(self) -> str:
        parts = [self.type.__name__]
        if self.range is not None:
            parts.append(f"[{self.range[0]:g}, {self.range[1]:g}]" + (f" {self.unit}" if self.unit else ""))
        elif self.unit:
            parts.append(self.unit)
        return ", ".join(parts)

    def check(self, name: str, value: Any, *, owner: str = "") -> Any:
        """The value converted to this parameter's type and unit; or a ConfigError/RangeError naming it."""
        where = f"{owner}: parameter {name}" if owner else f"parameter {name}"
        if self.type in (float, int):
            value = self._number(where, value)
            if self.range is not None and not self.range[0] <= value <= self.range[1]:
                raise RangeError(f"{where} = {value:g}{' ' + self.unit if self.unit else ''} is outside its range "
                                 f"[{self.range[0]:g}, {self.range[1]:g}] {self.unit}".rstrip())
            return value
        if self.type is bool:
            if isinstance(value, (bool, numbers.Integral)) and value in (0, 1):
                return bool(value)
        elif self.type in (tuple, list):
            if isinstance(value, (tuple, list)):
                return tuple(value)
        elif isinstance(value, self.type):
            return value
        raise ConfigError(f"{where} = {value!r} is not a {self.type.__name__} ({self.describe()})")

    def _number(self, where: str, value: Any) -> float | int:
        if isinstance(value, str):
            value = self._parse(where, value)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(f"{where} = {value!r} is not a number ({self.describe()})")
        value = float(value)
        if not math.isfinite(value):
            raise RangeError(f"{where} = {value} is not a finite number ({self.describe()})")
        if self.type is int:
            if not value.is_integer():
                raise ConfigError(f"{where} = {value:g} is not an integer ({self.describe()})")
            return int(value)
        return value

    def _parse(self, where: str, text: str) -> float:
        match = _QUANTITY.match(text)
        if not match:
            raise ConfigError(f"{where} = {text!r} is not a number with a unit ({self.describe()})")
        number, unit = float(match.group(1)), match.group(2) or self.unit
        factor = unit_factor(unit, self.unit)
        if factor is None:
            raise ConfigError(f"{where} = {text!r}: {unit!r} is not a unit of {self.unit or 'this dimensionless parameter'}"
                              f" ({self.describe()})")
        return number * factor


def unit_factor(unit: str, target: str) -> float | None:
    """How many `target` one `unit` is, when they differ by an SI prefix only (ms -> s: 1e-3)."""
    for f1, base1 in _readings(unit):
        for f2, base2 in _readings(target):
            if base1 == base2:
                return f1 / f2
    return None


def _readings(unit: str) -> list[tuple[float, str]]:
    out = [(1.0, unit)]
    if len(unit) > 1 and unit[0] in PREFIXES:
        out.append((PREFIXES[unit[0]], unit[1:]))
    return out

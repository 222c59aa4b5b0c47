"""Calibrations: raw device units <-> physical units, both ways.

A calibration is declared in the rig file as one of
    {kind = "linear", gain = G, offset = O}            physical = G*raw + O
    {kind = "poly", coefficients = [c0, c1, c2, ...]}  physical = c0 + c1*raw + ...
    {kind = "table", raw = [...], physical = [...]}    piecewise linear, monotonic
Outputs need the inverse (physical setpoint -> raw), so every calibration is
monotonic over the channel's raw range and inverts numerically when needed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ConfigError


@dataclass(frozen=True)
class Calibration:
    kind: str = "linear"
    gain: float = 1.0
    offset: float = 0.0
    coefficients: tuple[float, ...] = ()
    raw: tuple[float, ...] = ()
    physical: tuple[float, ...] = ()
    version: str = ""  # set by the rig model / calibration store; recorded with data

    def __post_init__(self):
        if self.kind == "linear":
            if self.gain == 0:
                raise ConfigError("linear calibration: gain must not be 0")
        elif self.kind == "poly":
            if len(self.coefficients) < 2:
                raise ConfigError("poly calibration: needs at least 2 coefficients [c0, c1, ...]")
        elif self.kind == "table":
            if len(self.raw) != len(self.physical) or len(self.raw) < 2:
                raise ConfigError("table calibration: 'raw' and 'physical' need the same length, at least 2")
            r = np.diff(self.raw)
            p = np.diff(self.physical)
            if not (np.all(r > 0) and (np.all(p > 0) or np.all(p < 0))):
                raise ConfigError("table calibration: 'raw' must increase and 'physical' be strictly monotonic")
        else:
            raise ConfigError(f"unknown calibration kind {self.kind!r}; allowed: linear, poly, table")

    @classmethod
    def identity(cls) -> "Calibration":
        return cls()

    @classmethod
    def from_dict(cls, data: dict | None) -> "Calibration":
        if not data:
            return cls()
        data = dict(data)
        for key in ("coefficients", "raw", "physical"):
            if key in data:
                data[key] = tuple(float(x) for x in data[key])
        return cls(**data)

    def to_physical(self, raw: float) -> float:
        if self.kind == "linear":
            return self.gain * raw + self.offset
        if self.kind == "poly":
            return float(np.polynomial.polynomial.polyval(raw, self.coefficients))
        return _interp(raw, self.raw, self.physical)

    def to_raw(self, physical: float, raw_range: tuple[float, float] | None = None) -> float:
        if self.kind == "linear":
            return (physical - self.offset) / self.gain
        if self.kind == "table":
            if self.physical[0] < self.physical[-1]:
                return _interp(physical, self.physical, self.raw)
            return _interp(physical, self.physical[::-1], self.raw[::-1])
        # poly: bisection over the raw range, where the polynomial is monotonic
        lo, hi = raw_range if raw_range else (-1e9, 1e9)
        f_lo, f_hi = self.to_physical(lo) - physical, self.to_physical(hi) - physical
        if f_lo == 0:
            return lo
        if f_hi == 0:
            return hi
        if f_lo * f_hi > 0:
            # outside the calibrated span: return the nearer end so the range check names it
            return lo if abs(f_lo) < abs(f_hi) else hi
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            f_mid = self.to_physical(mid) - physical
            if f_mid == 0:
                return mid
            if (f_mid < 0) == (f_lo < 0):
                lo, f_lo = mid, f_mid
            else:
                hi = mid
        return 0.5 * (lo + hi)


def _interp(x: float, xs, ys) -> float:
    """Piecewise-linear interpolation that extrapolates the end segments."""
    xs = np.asarray(xs, dtype=float)
    ys = np.asarray(ys, dtype=float)
    if x <= xs[0]:
        i = 0
    elif x >= xs[-1]:
        i = len(xs) - 2
    else:
        i = int(np.searchsorted(xs, x) - 1)
    x0, x1, y0, y1 = xs[i], xs[i + 1], ys[i], ys[i + 1]
    return float(y0 + (y1 - y0) * (x - x0) / (x1 - x0))

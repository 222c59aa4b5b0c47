"""Signals as notebook objects: `rig["langmuir_I"].read()`, `node["probe_bias"].ramp(-80, rate=100)`.

A Signal knows its rig declaration (unit, limits, where it is wired) and reaches
the node runtime that owns it; every write goes through that runtime's envelope.
Each operation has an awaitable twin (`aread`, `awrite`, `aramp`) for async code.
"""
from __future__ import annotations

import difflib
import time
from typing import Any, Callable, Mapping

from labrig.drivers.errors import ConfigError, LinkTimeout
from labrig.supervisor.rig.schema import SignalSpec
from labrig.supervisor.runtime import AsyncRuntimeClient, RuntimeClient


class RampInfo(dict):
    """A ramp's state as the runtime reports it (a dict), shown in one line."""

    def __repr__(self):
        unit = self.get("unit", "")
        return (f"<Ramp {self['signal']} {self['start']:g} -> {self['target']:g}{unit} at {self['rate']:g}/s: "
                f"{self['state']}{' (' + self['error'] + ')' if self.get('error') else ''}>")


class Signal:
    def __init__(self, name: str, spec: SignalSpec, client: Callable[[], RuntimeClient],
                 aclient: Callable[[], AsyncRuntimeClient]):
        self.name = name
        self.spec = spec
        self._client = client
        self._aclient = aclient

    unit = property(lambda self: self.spec.unit)
    node = property(lambda self: self.spec.node)
    limits = property(lambda self: tuple(self.spec.limits) if self.spec.limits else None)
    is_output = property(lambda self: self.spec.direction == "out")

    def read(self) -> float:
        return self._client().read(self.name)

    @property
    def value(self) -> float:
        return self.read()

    def write(self, value: float) -> float:
        return self._client().write(self.name, value)

    def ramp(self, target: float, rate: float | None = None, *, wait: bool = False) -> dict:
        """Ramp to target at `rate` unit/s (default: the signal's max slew). The ramp runs in the
        node's runtime; `wait=True` returns once it has ended (done, stopped or failed)."""
        client = self._client()
        ramp = client.ramp(self.name, target, self._rate(rate))
        if wait:
            duration = abs(ramp["target"] - ramp["start"]) / ramp["rate"]
            deadline = time.monotonic() + duration + 5.0  # bounded: a stalled ramp is reported, not waited out
            while ramp["state"] == "running":
                if time.monotonic() > deadline:
                    raise LinkTimeout(f"ramp of {self.name} still running {duration + 5:.1f} s after it started "
                                      f"(expected {duration:.1f} s)")
                time.sleep(min(0.05, max(0.005, duration / 20)))
                ramp = next((r for r in reversed(client.ramps()) if r["signal"] == self.name), ramp)
        return RampInfo(ramp, unit=f" {self.unit}".rstrip())

    def stop_ramp(self):
        return self._client().stop_ramp(self.name)

    async def aread(self) -> float:
        return await self._aclient().read(self.name)

    async def awrite(self, value: float) -> float:
        return await self._aclient().write(self.name, value)

    async def aramp(self, target: float, rate: float | None = None) -> dict:
        return RampInfo(await self._aclient().ramp(self.name, target, self._rate(rate)), unit=f" {self.unit}".rstrip())

    def _rate(self, rate):
        if rate is None:
            if self.spec.max_slew is None:
                raise ConfigError(f"{self.name} declares no max_slew: give ramp(target, rate=...)")
            return self.spec.max_slew
        return rate

    def __repr__(self):
        try:
            value = f"{self.read():g}"
        except Exception as exc:  # a repr must not raise; it says why there is no value
            value = f"? ({type(exc).__name__})"
        return f"<Signal {self.name} = {value} {self.unit} ({self.spec.node} {self.spec.channel}, {self.spec.direction})>"


class SignalMap(Mapping[str, Signal]):
    """Signals by name; an unknown name gets the closest names."""

    def __init__(self, signals: dict[str, Signal], *, where: str):
        self._signals = signals
        self._where = where

    def __getitem__(self, name: str) -> Signal:
        try:
            return self._signals[name]
        except KeyError:
            close = difflib.get_close_matches(str(name), list(self._signals), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise KeyError(f"{self._where} has no signal {name!r}{hint}") from None

    def __iter__(self):
        return iter(self._signals)

    def __len__(self):
        return len(self._signals)

    def __repr__(self):
        return f"<{len(self)} signals of {self._where}: {', '.join(self._signals)}>"


class SignalsAndDevices:
    """Signals by name (`x["langmuir_I"]`) and devices as attributes (`x.langmuir.density()`).

    The base of `node` (one board) and `rig` (the whole machine): subclasses set
    `signals` (a SignalMap), `devices` (name -> device) and `what` (for messages).
    """

    signals: SignalMap
    devices: dict
    what: str = ""

    def __getitem__(self, name: str) -> Signal:
        return self.signals[name]

    def __getattr__(self, name: str):
        devices = self.__dict__.get("devices", {})
        if name in devices:
            return devices[name]
        raise AttributeError(f"{self.__dict__.get('what', type(self).__name__)} has no attribute or device {name!r}"
                             + (f"; devices: {', '.join(devices)}" if devices else ""))

    def __dir__(self):
        return list(super().__dir__()) + list(self.devices)

    def read(self, name: str) -> float:
        return self.signals[name].read()

    def write(self, name: str, value: float) -> float:
        return self.signals[name].write(value)

    def ramp(self, name: str, target: float, rate: float | None = None) -> dict:
        return self.signals[name].ramp(target, rate)


def status_table_html(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "".join(f"<th>{c}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def status_table_text(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_cell(v) for v in value) + "]"
    return str(value)


class Table:
    """A result that shows as a table in a notebook and in a terminal, and keeps its data."""

    def __init__(self, rows: list[dict[str, Any]], columns: list[str], *, title: str = "", data: Any = None):
        self.rows, self.columns, self.title, self.data = rows, columns, title, data

    def _repr_html_(self):
        return (f"<b>{self.title}</b>" if self.title else "") + status_table_html(self.rows, self.columns)

    def __repr__(self):
        return (self.title + "\n" if self.title else "") + status_table_text(self.rows, self.columns)

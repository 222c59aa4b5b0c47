"""Interlocks a node runtime enforces on its own signals (the node layer of three).

An interlock whose condition and forced outputs all live on this node is watched
here, next to the hardware: on a violation its outputs go to their safe values at
once, the trip latches until an explicit re-arm (refused while the condition still
fails), and writes to those outputs are refused meanwhile. Interlocks that span
nodes are the supervisor's guard process's: it latches them here with `latch`
(layer "supervisor"), as does a lost lease ("lease") or an output that could not be
driven safe ("link"); those re-arm through their own check. The PLC holds the last layer.
"""
from __future__ import annotations

import contextlib
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from labrig.drivers.errors import ConfigError, LinkTimeout, Refused

from ..rig.model import Interlock
from .overrides import Overrides


@dataclass
class Trip:
    interlock: str
    reason: str
    values: dict[str, float | None]
    outputs: tuple[str, ...]
    time: float = field(default_factory=time.time)
    safe: dict = field(default_factory=dict)
    layer: str = "node"  # node, supervisor (cross-node, latched by the guard), lease, link, loop
    nodes: dict = field(default_factory=dict)  # the guard's own record: node -> {"delivered", "safe", "error"}

    def as_dict(self) -> dict:
        return asdict(self)


class InterlockWatch:
    """Evaluates the node's own interlocks every `period` s; `trip(trip)` drives the outputs safe."""

    def __init__(self, interlocks: dict[str, Interlock], read: Callable[[str], float],
                 on_trip: Callable[[Trip], None], *, period: float = 0.01,
                 urgent: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                 on_override_end: Callable[[dict], None] = lambda entry: None):
        self.interlocks = interlocks
        self._read = read
        self._urgent = urgent  # the checks' reads and the trip's writes go before queued I/O
        self._on_trip = on_trip
        self.period = period
        self.tripped: dict[str, Trip] = {}
        self._signals = tuple(dict.fromkeys(n for lock in interlocks.values() for n in lock.require.signals))
        self._rearm_checks: dict[str, Callable[[], tuple[bool, str]]] = {}
        self.overrides = Overrides(lambda name: name in self.interlocks, on_end=on_override_end)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        if interlocks:
            self._thread = threading.Thread(target=self._run, name="interlocks", daemon=True)
            self._thread.start()

    def values(self, lock: Interlock) -> dict[str, float | None]:
        return self._values(lock)[0]

    def _values(self, lock: Interlock | None = None) -> tuple[dict[str, float], bool]:
        """(values, whether a read failed quickly: a closed link, a garbled frame). Every signal of
        every interlock is read once when no interlock is given."""
        names = lock.require.signals if lock is not None else self._signals
        out, quick_failure = {}, False
        for name in names:
            try:
                out[name] = self._read(name)
            except LinkTimeout:  # it already waited its timeout: unreadable, never satisfies
                out[name] = math.nan
            except Exception:  # an unreadable signal never satisfies a requirement
                out[name], quick_failure = math.nan, True
        return out, quick_failure

    def holds(self, lock: Interlock) -> tuple[bool, dict]:
        values = self.values(lock)
        return lock.require(values), values

    def _run(self) -> None:
        failing: set[str] = set()
        next_at = time.monotonic()
        while True:
            # absolute deadlines: the reads' own time does not stretch the period
            next_at += self.period
            delay = next_at - time.monotonic()
            if delay < 0:
                next_at, delay = time.monotonic(), 0.0
            if self._stop.wait(delay):
                return
            self.overrides.expire()  # an override ends on time even with nothing to check
            if len(self.tripped) >= len(self.interlocks):
                continue
            with self._urgent():
                self._check(failing)

    def _check(self, failing: set[str]) -> None:
        everything, quick_failure = self._values()  # each signal read once per check
        for name, lock in self.interlocks.items():
            if name in self.tripped or self.overrides.active(name):
                continue
            values = {n: everything[n] for n in lock.require.signals}
            if lock.require(values):
                failing.discard(name)
            elif quick_failure and name not in failing:
                failing.add(name)  # one garbled frame is not a trip; the same at the next check is
            else:
                failing.discard(name)
                self._trip(lock, values)

    def _trip(self, lock: Interlock, values: dict) -> Trip:
        reason = f"{lock.name}: requires {lock.require.source}" + (f" ({lock.description})" if lock.description else "")
        trip = Trip(lock.name, reason, {k: (None if isinstance(v, float) and math.isnan(v) else v)
                                        for k, v in values.items()}, lock.outputs)
        with self._lock:
            if lock.name in self.tripped:
                return self.tripped[lock.name]
            self.tripped[lock.name] = trip
        self._on_trip(trip)
        return trip

    def latch(self, trip: Trip, rearm_check: Callable[[], tuple[bool, str]] | None = None) -> Trip:
        """Latch a trip raised outside this watch (the guard, a lost lease, an unreachable output):
        its outputs go safe through `on_trip`. `rearm_check() -> (ok, why)` gates its re-arm."""
        with self._lock:
            if trip.interlock in self.tripped:
                return self.tripped[trip.interlock]
            self.tripped[trip.interlock] = trip
            if rearm_check is not None:
                self._rearm_checks[trip.interlock] = rearm_check
        self._on_trip(trip)
        return trip

    def check_write(self, signal: str, value: float, safe: float | None) -> None:
        """Refuse a write that a tripped or failing interlock forbids (writing the safe value is always allowed)."""
        if safe is not None and value == safe:
            return
        for trip in list(self.tripped.values()):
            if signal in trip.outputs:
                raise Refused(f"{signal}: interlock {trip.interlock} tripped at "
                              f"{time.strftime('%H:%M:%S', time.localtime(trip.time))} "
                              f"({trip.reason}; values {trip.values}); re-arm it first")
        for name, lock in self.interlocks.items():
            if signal not in lock.outputs or self.overrides.active(name):
                continue
            ok, values = self.holds(lock)
            if not ok:
                self._trip(lock, values)
                raise Refused(f"{signal}: interlock {name} requires {lock.require.source}; now {values}")

    def rearm(self, name: str, *, by_guard: bool = False) -> dict:
        trip = self.tripped.get(name)
        if name not in self.interlocks and trip is None:
            known = sorted(set(self.interlocks) | set(self.tripped))
            raise ConfigError(f"no interlock {name!r} on this node; here: {', '.join(known) or 'none'}")
        if trip is None:
            return {"interlock": name, "rearmed": False, "detail": "was not tripped"}
        values: dict = {}
        if trip.layer == "supervisor" and not by_guard:
            raise Refused(f"{name} spans nodes: the supervisor's guard latched it and re-arms it once its "
                          f"condition holds again; use rig.rearm({name!r}) or `labrig rearm {name}`")
        if name in self.interlocks and not self.overrides.active(name):
            ok, values = self.holds(self.interlocks[name])
            if not ok:
                raise Refused(f"cannot re-arm {name}: it still requires {self.interlocks[name].require.source}; "
                              f"now {values}")
        elif name in self._rearm_checks:
            ok, why = self._rearm_checks[name]()
            if not ok:
                raise Refused(f"cannot re-arm {name}: {why}")
        with self._lock:
            self.tripped.pop(name, None)
            self._rearm_checks.pop(name, None)
        return {"interlock": name, "rearmed": True, "values": values}

    def trips(self) -> list[dict]:
        return [t.as_dict() for t in self.tripped.values()]

    def close(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(2)

"""Interlocks a node runtime enforces on its own signals (the node layer of three).

An interlock whose condition and forced outputs all live on this node is watched
here, next to the hardware: on a violation its outputs go to their safe values at
once, the trip latches until an explicit re-arm (refused while the condition still
fails), and writes to those outputs are refused meanwhile. Interlocks that span
nodes are the supervisor's; the PLC holds the last layer.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from labrig.drivers.errors import ConfigError, Refused

from ..rig.model import Interlock


@dataclass
class Trip:
    interlock: str
    reason: str
    values: dict[str, float | None]
    outputs: tuple[str, ...]
    time: float = field(default_factory=time.time)
    safe: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


class InterlockWatch:
    """Evaluates the node's own interlocks every `period` s; `trip(trip)` drives the outputs safe."""

    def __init__(self, interlocks: dict[str, Interlock], read: Callable[[str], float],
                 on_trip: Callable[[Trip], None], *, period: float = 0.01):
        self.interlocks = interlocks
        self._read = read
        self._on_trip = on_trip
        self.period = period
        self.tripped: dict[str, Trip] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        if interlocks:
            self._thread = threading.Thread(target=self._run, name="interlocks", daemon=True)
            self._thread.start()

    def values(self, lock: Interlock) -> dict[str, float | None]:
        out = {}
        for name in lock.require.signals:
            try:
                out[name] = self._read(name)
            except Exception:  # an unreadable signal never satisfies a requirement
                out[name] = math.nan
        return out

    def holds(self, lock: Interlock) -> tuple[bool, dict]:
        values = self.values(lock)
        return lock.require(values), values

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            for name, lock in self.interlocks.items():
                if name in self.tripped:
                    continue
                ok, values = self.holds(lock)
                if not ok:
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

    def check_write(self, signal: str, value: float, safe: float | None) -> None:
        """Refuse a write that a tripped or failing interlock forbids (writing the safe value is always allowed)."""
        if safe is not None and value == safe:
            return
        for name, lock in self.interlocks.items():
            if signal not in lock.outputs:
                continue
            trip = self.tripped.get(name)
            if trip:
                raise Refused(f"{signal}: interlock {name} tripped at {time.strftime('%H:%M:%S', time.localtime(trip.time))} "
                              f"({trip.reason}; values {trip.values}); re-arm it first")
            ok, values = self.holds(lock)
            if not ok:
                self._trip(lock, values)
                raise Refused(f"{signal}: interlock {name} requires {lock.require.source}; now {values}")

    def rearm(self, name: str) -> dict:
        if name not in self.interlocks:
            raise ConfigError(f"no interlock {name!r} on this node; here: {', '.join(self.interlocks) or 'none'}")
        if name not in self.tripped:
            return {"interlock": name, "rearmed": False, "detail": "was not tripped"}
        ok, values = self.holds(self.interlocks[name])
        if not ok:
            raise Refused(f"cannot re-arm {name}: it still requires {self.interlocks[name].require.source}; "
                          f"now {values}")
        with self._lock:
            del self.tripped[name]
        return {"interlock": name, "rearmed": True, "values": values}

    def trips(self) -> list[dict]:
        return [t.as_dict() for t in self.tripped.values()]

    def close(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(2)

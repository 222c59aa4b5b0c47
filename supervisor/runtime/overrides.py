"""Overrides: time-limited, audited bypasses of an interlock.

Commissioning sometimes needs an interlock out of the way (the coil on a test current
with the vessel open). An override names the interlock, a reason and a duration of at
most MAX_SECONDS; while it lasts, the interlock is not evaluated and its condition does
not refuse writes (a trip already latched still needs its re-arm, which the override
lets through). It ends by itself: nobody can forget one. Every start and end is
journaled and published with the trips.
"""
from __future__ import annotations

import math
import threading
import time
from typing import Callable

from labrig.drivers.errors import ConfigError, RangeError

MAX_SECONDS = 600.0


class Overrides:
    def __init__(self, known: Callable[[str], bool], *, on_end: Callable[[dict], None] = lambda entry: None):
        self._known = known
        self._on_end = on_end
        self._active: dict[str, dict] = {}  # interlock -> {"reason", "by", "until", "deadline"}
        self._lock = threading.Lock()

    def set(self, interlock: str, seconds, reason: str, by: str) -> dict:
        """Override `interlock` for `seconds` (0 ends an override now)."""
        if not self._known(interlock):
            raise ConfigError(f"no interlock {interlock!r} to override here")
        try:
            seconds = float(seconds)
        except (TypeError, ValueError):
            raise RangeError(f"override of {interlock}: seconds {seconds!r} is not a number") from None
        if not (math.isfinite(seconds) and 0 <= seconds <= MAX_SECONDS):
            raise RangeError(f"override of {interlock}: seconds must be in [0, {MAX_SECONDS:g}] (got {seconds:g}); "
                             "an override always ends by itself")
        if seconds == 0:
            with self._lock:
                entry = self._active.pop(interlock, None)
            if entry:
                self._on_end({**self._public(interlock, entry), "ended": "cancelled by " + by})
            return {"interlock": interlock, "overridden": False}
        if not str(reason or "").strip():
            raise ConfigError(f"override of {interlock}: give the reason (it is journaled and published)")
        entry = {"reason": str(reason), "by": by, "until": time.time() + seconds,
                 "deadline": time.monotonic() + seconds}
        with self._lock:
            self._active[interlock] = entry
        return {**self._public(interlock, entry), "overridden": True}

    def active(self, interlock: str) -> bool:
        with self._lock:
            entry = self._active.get(interlock)
            if entry is None:
                return False
            if time.monotonic() < entry["deadline"]:
                return True
            del self._active[interlock]
        self._on_end({**self._public(interlock, entry), "ended": "expired"})
        return False

    def expire(self) -> None:
        """End every override whose time is up (called from a periodic loop)."""
        for name in list(self._active):
            self.active(name)

    def states(self) -> list[dict]:
        self.expire()
        with self._lock:
            return [self._public(name, entry) for name, entry in self._active.items()]

    @staticmethod
    def _public(name: str, entry: dict) -> dict:
        return {"interlock": name, "reason": entry["reason"], "by": entry["by"], "until": entry["until"],
                "left": max(0.0, entry["deadline"] - time.monotonic())}

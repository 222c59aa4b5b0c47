"""Leases: a supervisor holds a node by renewing a lease; a node whose lease runs out goes safe.

This is the application heartbeat between the supervisor's guard and a node: it is
answered by the runtime's socket loop (not ZeroMQ's own heartbeat, which a stalled
process would still answer), and the runtime checks the deadlines in that same loop.
A node that no one holds is never forced safe: a bench board without a supervisor
keeps working. A holder that leaves cleanly releases its lease.
"""
from __future__ import annotations

import math
import threading
import time

from labrig.drivers.errors import RangeError

MAX_TTL = 600.0


class Leases:
    def __init__(self, node: str):
        self.node = node
        self._deadlines: dict[str, tuple[float, float]] = {}  # holder -> (monotonic deadline, ttl)
        self._lock = threading.Lock()

    def renew(self, holder: str, ttl) -> dict:
        try:
            ttl = float(ttl)
        except (TypeError, ValueError):
            raise RangeError(f"lease ttl {ttl!r} is not a number of seconds") from None
        if not (math.isfinite(ttl) and 0 < ttl <= MAX_TTL):
            raise RangeError(f"lease ttl must be in (0, {MAX_TTL:g}] s (got {ttl})")
        with self._lock:
            new = str(holder) not in self._deadlines
            self._deadlines[str(holder)] = (time.monotonic() + ttl, ttl)
        return {"node": self.node, "holder": holder, "ttl": ttl, "new": new}

    def release(self, holder: str) -> dict:
        with self._lock:
            held = self._deadlines.pop(str(holder), None) is not None
        return {"node": self.node, "holder": holder, "released": held}

    def expired(self, now: float) -> list[tuple[str, float]]:
        """Holders whose lease ran out (each reported once: the lease is dropped)."""
        with self._lock:
            gone = [(h, now - d) for h, (d, _) in self._deadlines.items() if now > d]
            for holder, _ in gone:
                del self._deadlines[holder]
        return gone

    def next_deadline(self) -> float | None:
        with self._lock:
            return min((d for d, _ in self._deadlines.values()), default=None)

    def holders(self) -> list[str]:
        with self._lock:
            return list(self._deadlines)

    def states(self) -> dict[str, dict]:
        now = time.monotonic()
        with self._lock:
            return {h: {"ttl": ttl, "left": d - now} for h, (d, ttl) in self._deadlines.items()}

"""The lock that serialises a link's transactions, with safety first.

A node runtime shares one driver between threads: telemetry, ramps, the guard's reads,
its interlock checks and the writes a trip makes. With a plain lock, a trip waits
behind every transaction queued before it; here a thread inside `urgent()` waits only
for the transaction in flight, then goes before every ordinary waiter.

Strict priority would starve: interlock checks read every few ms, and on a slow link
(an S7 round trip of several ms, a loaded host) they can keep an urgent waiter queued
all the time, so a ramp's write or the guard's read would wait until its timeout. So an
ordinary waiter that has waited `starve_after` gets the next turn, one transaction,
before the urgent ones go on: an urgent waiter then waits at most two transactions.
"""
from __future__ import annotations

import contextlib
import threading
import time


class LinkLock:
    """A re-entrant lock (the `threading.RLock` API) whose urgent waiters go first."""

    def __init__(self, *, starve_after: float = 0.1):
        self._cond = threading.Condition(threading.Lock())
        self._owner: int | None = None
        self._depth = 0
        self._urgent_waiting = 0
        self._ordinary_waiting: dict[int, float] = {}  # thread -> since when it waits
        self._ordinary_turn = False  # one ordinary waiter waited too long: the next transaction is its
        self.starve_after = starve_after
        self._local = threading.local()

    @contextlib.contextmanager
    def urgent(self):
        """Within this block, this thread's acquisitions jump the queue."""
        before = getattr(self._local, "urgent", False)
        self._local.urgent = True
        try:
            yield
        finally:
            self._local.urgent = before

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        me = threading.get_ident()
        urgent = getattr(self._local, "urgent", False)
        with self._cond:
            if self._owner == me:
                self._depth += 1
                return True

            def busy() -> bool:
                if self._owner is not None:
                    return True
                if urgent:
                    return self._ordinary_turn
                return self._urgent_waiting > 0 and not self._ordinary_turn
            if not blocking and busy():
                return False
            deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
            if urgent:
                self._urgent_waiting += 1
            else:
                self._ordinary_waiting[me] = time.monotonic()
            try:
                while busy():
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._cond.wait(left)
                self._owner, self._depth = me, 1
                if not urgent:
                    self._ordinary_turn = False
                return True
            finally:
                if urgent:
                    self._urgent_waiting -= 1
                else:
                    del self._ordinary_waiting[me]
                    if not self._ordinary_waiting:
                        self._ordinary_turn = False  # it gave up waiting: the turn goes back
                self._cond.notify_all()  # ordinary waiters may go again once no urgent one waits

    def release(self) -> None:
        with self._cond:
            if self._owner != threading.get_ident():
                raise RuntimeError("release of a link lock this thread does not hold")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                if self._urgent_waiting and self._ordinary_waiting and not self._ordinary_turn:
                    oldest = min(self._ordinary_waiting.values())
                    self._ordinary_turn = time.monotonic() - oldest >= self.starve_after
                self._cond.notify_all()

    def __enter__(self) -> "LinkLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

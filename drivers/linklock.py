"""The lock that serialises a link's transactions, with safety first.

A node runtime shares one driver between threads: telemetry, ramps, the guard's reads,
its interlock checks and the writes a trip makes. With a plain lock, a trip waits
behind every transaction queued before it; here a thread inside `urgent()` waits only
for the transaction in flight, then goes before every ordinary waiter.
"""
from __future__ import annotations

import contextlib
import threading
import time


class LinkLock:
    """A re-entrant lock (the `threading.RLock` API) whose urgent waiters go first."""

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._owner: int | None = None
        self._depth = 0
        self._urgent_waiting = 0
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
                return self._owner is not None or (not urgent and self._urgent_waiting > 0)
            if not blocking and busy():
                return False
            deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
            if urgent:
                self._urgent_waiting += 1
            try:
                while busy():
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._cond.wait(left)
                self._owner, self._depth = me, 1
                return True
            finally:
                if urgent:
                    self._urgent_waiting -= 1
                    self._cond.notify_all()  # ordinary waiters may go again once no urgent one waits

    def release(self) -> None:
        with self._cond:
            if self._owner != threading.get_ident():
                raise RuntimeError("release of a link lock this thread does not hold")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._cond.notify_all()

    def __enter__(self) -> "LinkLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

"""One node as the guard sees it: its lease, kept alive, and the signals the guard's interlocks read.

Two threads per node, so that a slow read (a dead link behind a live runtime) never
delays the lease renewal that keeps the node from going safe on its own.
"""
from __future__ import annotations

import math
import threading
import time
from typing import Callable

from labrig.drivers.errors import LabrigError, NodeUnavailable

from ..runtime.locate import RuntimeLink


class NodeWatch:
    def __init__(self, node: str, directory, *, signals: list[str], poll: float, lease_ttl: float,
                 online_timeout: float, holder: str, on_update: Callable[[str], None],
                 on_new_lease: Callable[[str], None]):
        self.node = node
        self.signals = signals
        self.poll = poll
        self.lease_ttl = lease_ttl
        self.online_timeout = online_timeout
        self.holder = holder
        self._on_update = on_update
        self._on_new_lease = on_new_lease
        io_timeout = max(0.05, min(poll * 4, online_timeout / 2))
        self._lease_link = RuntimeLink(node, directory, client=holder, timeout=io_timeout)
        self._read_link = RuntimeLink(node, directory, client=f"{holder}-reads", timeout=max(io_timeout, 1.5))
        self.last_answer: float | None = None  # monotonic time of the last reply of the runtime
        self.values: dict[str, float] = {}
        self.values_at: float | None = None
        self.error = ""
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._lease_loop, name=f"guard-lease-{node}", daemon=True)]
        if signals:
            self._threads.append(threading.Thread(target=self._read_loop, name=f"guard-read-{node}", daemon=True))
        for thread in self._threads:
            thread.start()

    def online(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return self.last_answer is not None and now - self.last_answer < self.online_timeout

    def current(self, now: float | None = None) -> dict[str, float]:
        """The latest values; NaN for a lost node or an unreadable signal (never satisfies a condition)."""
        now = time.monotonic() if now is None else now
        if self.values_at is None or now - self.values_at > self.online_timeout:
            return {name: math.nan for name in self.signals}
        return dict(self.values)

    def _lease_loop(self) -> None:
        period = min(self.lease_ttl, self.online_timeout) / 4  # a few renewals per timeout: one loss is no loss
        while not self._stop.wait(period):
            try:
                result = self._lease_link.client.call("lease", holder=self.holder, ttl=self.lease_ttl)
            except LabrigError as exc:
                self.error = str(exc)
            else:
                self.last_answer = time.monotonic()
                if result.get("new"):  # a restarted runtime, or one whose lease ran out: latch our trips again
                    self._on_new_lease(self.node)
            self._on_update(self.node)

    def _read_loop(self) -> None:
        failures = 0
        while not self._stop.wait(self.poll):
            try:
                values = self._read_link.client.read_many(self.signals)
            except NodeUnavailable as exc:  # no answer: the values age out (online_timeout)
                self.error = str(exc)
            except LabrigError as exc:  # the runtime answered, its link did not
                self.error = str(exc)
                self.last_answer = time.monotonic()
                failures += 1
                if failures >= 2:  # one failed read (a garbled frame, a link still connecting) is no verdict
                    self.values, self.values_at = {n: math.nan for n in self.signals}, self.last_answer
            else:
                self.values = {n: (math.nan if values.get(n) is None else float(values[n])) for n in self.signals}
                self.values_at = self.last_answer = time.monotonic()
                self.error, failures = "", 0
            self._on_update(self.node)

    def close(self, *, release: bool = True) -> None:
        """Stop watching; leaving cleanly gives the lease back, so the node is not forced safe by our absence."""
        self._stop.set()
        for thread in self._threads:
            thread.join(3)
        if release:
            try:
                self._lease_link.client.call("release", holder=self.holder, timeout=1.0)
            except LabrigError:
                pass
        self._lease_link.close()
        self._read_link.close()

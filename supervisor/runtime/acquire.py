"""A step table's acquisitions: the node samples its own signals at the table's rates, on its own
thread, into a bounded buffer the runner drains by cursor (`sequence_fetch`).

Each sample keeps the time it was read (shot seconds on this node's clock), so a link
slower than the asked rate shows as fewer samples, never as wrong times.
"""
from __future__ import annotations

import threading
from typing import Callable

MAX_SAMPLES = 400_000  # ~10 MB of floats: minutes at 1 kHz; past it the oldest unfetched samples go
MAX_FETCH = 20_000  # samples per reply: keeps one answer small


class SampleBuffer:
    """Appended by the sampler, read by cursor; `dropped` counts what fell off the bound unfetched."""

    def __init__(self, limit: int = MAX_SAMPLES):
        self.limit = limit
        self._items: list[tuple[str, float, float]] = []
        self._base = 0  # index of _items[0] in the run's sample count
        self._lock = threading.Lock()

    def append(self, name: str, t: float, value: float) -> None:
        with self._lock:
            self._items.append((name, t, value))
            if len(self._items) > self.limit:
                cut = len(self._items) - self.limit // 2
                del self._items[:cut]
                self._base += cut

    @property
    def count(self) -> int:
        with self._lock:
            return self._base + len(self._items)

    def fetch(self, cursor: int, limit: int = MAX_FETCH) -> dict:
        with self._lock:
            dropped = max(0, self._base - cursor)
            start = max(cursor, self._base) - self._base
            chunk = self._items[start:start + limit]
            end = self._base + start + len(chunk)
        signals: dict[str, dict] = {}
        for name, t, value in chunk:
            entry = signals.setdefault(name, {"t": [], "v": []})
            entry["t"].append(t)
            entry["v"].append(value)
        return {"cursor": end, "dropped": dropped, "signals": signals, "more": end < self.count}


class Sampler:
    """Samples the acquisitions of one run on a thread: each from its start to its end (shot times,
    given by `window(acq) -> (start, end)`, None while a gate is unknown), at its rate."""

    def __init__(self, acquisitions: list[dict], read: Callable[[str], float], now: Callable[[], float],
                 window: Callable[[dict], tuple], buffer: SampleBuffer, *, name: str = "sampler"):
        self.acquisitions = acquisitions
        self._read, self._now, self._window = read, now, window
        self.buffer = buffer
        self.errors = 0
        self.missed = 0
        self.finished = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        if not self.acquisitions:
            self.finished.set()
            return
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        due = [None] * len(self.acquisitions)  # each acquisition's next sample time
        done = [False] * len(self.acquisitions)
        try:
            while not self._stop.is_set() and not all(done):
                now = self._now()
                wake = now + 0.01  # an unknown gate is looked at again soon
                for i, acq in enumerate(self.acquisitions):
                    if done[i]:
                        continue
                    start, end = self._window(acq)
                    if due[i] is None and (start is None or now < start):  # (a pause later moves only its end)
                        wake = min(wake, start if start is not None else wake)
                        continue
                    if end is not None and now >= end:
                        done[i] = True
                        continue
                    period = 1.0 / acq["rate"]
                    if due[i] is None:
                        due[i] = start
                    if now >= due[i]:
                        for name in acq["signals"]:
                            t = self._now()
                            try:
                                self.buffer.append(name, t, float(self._read(name)))
                            except Exception:  # noqa: BLE001 - an unreadable sample is counted, not fatal
                                self.errors += 1
                        due[i] += period
                        behind = int((self._now() - due[i]) / period)
                        if behind > 0:  # the link is slower than the rate: skip, keep the grid
                            self.missed += behind
                            due[i] += behind * period
                    wake = min(wake, due[i])
                delay = wake - self._now()
                if delay > 0:
                    self._stop.wait(min(delay, 0.01))
        finally:
            self.finished.set()

    def join(self, timeout: float = 2.0) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

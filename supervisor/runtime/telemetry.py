"""Telemetry: every signal sampled at its rate, samples batched into messages.

Each signal has its own sequence number, incremented per sample, so a consumer
sees exactly which samples it did not get. A failed read is a sample too (value
None, with the error counted), so gaps mean loss in transport, nothing else.
A reading offered by a step scan stands for the sample when it is fresh (offer).
"""
from __future__ import annotations

import threading
import time
from typing import Callable


class TelemetrySampler:
    def __init__(self, read: Callable[[str], float], rates: dict[str, float],
                 publish: Callable[[dict], None], *, node: str, batch_period: float = 0.1):
        self._read = read
        self._publish = publish
        self.node = node
        self.batch_period = batch_period
        self._lock = threading.Lock()
        self.rates: dict[str, float] = {}
        self._due: dict[str, float] = {}
        self.seq: dict[str, int] = {}
        self.latest: dict[str, tuple[float, float | None]] = {}  # signal -> (time, value)
        self.stats = {"samples": 0, "read_errors": 0, "batches": 0, "late": 0, "offered": 0}
        self._batch: dict[str, dict[str, list]] = {}
        self._offered: dict[str, tuple[float, float, float]] = {}  # signal -> (monotonic, time, value)
        self.configure(rates)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"telemetry-{node}", daemon=True)
        self._thread.start()

    def configure(self, rates: dict[str, float]) -> dict[str, float]:
        """Set rates (Hz) per signal; 0 stops a signal's telemetry."""
        now = time.monotonic()
        with self._lock:
            for name, rate in rates.items():
                if rate and rate > 0:
                    self.rates[name] = float(rate)
                    self._due.setdefault(name, now)
                    self.seq.setdefault(name, 0)
                else:
                    self.rates.pop(name, None)
                    self._due.pop(name, None)
            return dict(self.rates)

    def offer(self, name: str, t: float, value: float) -> None:
        """A reading someone else just made on the link (a step scan's point): the signal's next
        sample takes it, if it is still within the signal's period then, instead of reading again.
        During a fast scan this keeps telemetry off the link the scan is timing."""
        self._offered[name] = (time.monotonic(), t, value)

    def _sample(self, name: str, now: float) -> tuple[float, float | None]:
        offered = self._offered.get(name)
        if offered is not None and offered[0] >= now - 1.0 / self.rates.get(name, 1.0):
            self.stats["offered"] += 1
            return offered[1], offered[2]
        t = time.time()
        try:
            return t, float(self._read(name))
        except Exception:  # counted; the sample goes out as None
            self.stats["read_errors"] += 1
            return t, None

    def _run(self) -> None:
        next_batch = time.monotonic() + self.batch_period
        while not self._stop.is_set():
            now = time.monotonic()
            with self._lock:
                due = [n for n, t in self._due.items() if t <= now]
            for name in due:
                t, value = self._sample(name, now)
                with self._lock:
                    if name not in self.rates:
                        continue
                    self.seq[name] += 1
                    self.latest[name] = (t, value)
                    entry = self._batch.setdefault(name, {"seq": [], "t": [], "v": []})
                    entry["seq"].append(self.seq[name])
                    entry["t"].append(round(t, 6))
                    entry["v"].append(value)
                    period = 1.0 / self.rates[name]
                    self._due[name] += period
                    if self._due[name] < now - period:  # fell behind: skip ahead, never burst
                        self._due[name] = now + period
                        self.stats["late"] += 1
                self.stats["samples"] += 1
            now = time.monotonic()
            if now >= next_batch:
                self._flush()
                next_batch = now + self.batch_period
            with self._lock:
                wake = min([next_batch, *self._due.values()])
            self._stop.wait(max(0.0, wake - time.monotonic()))

    def _flush(self) -> None:
        with self._lock:
            batch, self._batch = self._batch, {}
        if batch:
            self.stats["batches"] += 1
            self._publish({"node": self.node, "t0": time.time(), "signals": batch})

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._flush()

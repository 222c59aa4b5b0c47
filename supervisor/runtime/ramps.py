"""Ramps run in the node runtime, next to the hardware, on one timing thread.

A ramp moves an output from where it is to a target at a rate. The engine
writes the setpoint every `period` seconds along the line, so a ramp keeps its
trajectory whatever happens to the kernels and clients that asked for it.
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable


@dataclass
class Ramp:
    signal: str
    start: float
    target: float
    rate: float
    started: float = field(default_factory=time.time)
    client: str = ""
    value: float = 0.0
    state: str = "running"  # running | done | stopped | failed
    error: str = ""
    finished: float | None = None

    def setpoint(self, now: float) -> float:
        span = self.target - self.start
        travelled = self.rate * max(0.0, now - self.started)
        if travelled >= abs(span):
            return self.target
        return self.start + travelled * (1 if span > 0 else -1)

    @property
    def duration(self) -> float:
        return abs(self.target - self.start) / self.rate

    def as_dict(self) -> dict:
        return asdict(self)


class RampEngine:
    """Drives every running ramp; `write(signal, value)` reaches the driver."""

    def __init__(self, write: Callable[[str, float], object], *, period: float = 0.02, keep: int = 20):
        self._write = write
        self.period = period
        self._keep = keep
        self._lock = threading.Lock()
        # held across one ramp write: a stop waits for the write on the wire, so the safe value a caller
        # writes next is never followed by a ramp step that was already under way
        self._writing = threading.Lock()
        self._running: dict[str, Ramp] = {}
        self._finished: list[Ramp] = []
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ramp-engine", daemon=True)
        self._thread.start()

    def start(self, ramp: Ramp) -> Ramp:
        """Start a ramp; one already running on the same output is replaced (stopped where it is)."""
        with self._lock:
            old = self._running.pop(ramp.signal, None)
            if old:
                self._end(old, "stopped", "replaced by a new ramp")
            ramp.value = ramp.start
            self._running[ramp.signal] = ramp
        self._wake.set()
        return ramp

    def stop(self, signal: str, reason: str = "stopped on request") -> Ramp | None:
        """Stop a ramp where it is; returns once no step of it can reach the output any more."""
        with self._lock:
            ramp = self._running.pop(signal, None)
            if ramp:
                self._end(ramp, "stopped", reason)
        if ramp:
            with self._writing:  # a step already on the wire lands before we return
                pass
        return ramp

    def stop_all(self, reason: str) -> None:
        """Stop every ramp; returns once no ramp step can reach an output any more."""
        with self._lock:
            for ramp in self._running.values():
                self._end(ramp, "stopped", reason)
            self._running.clear()
        with self._writing:
            pass

    def running(self, signal: str) -> Ramp | None:
        with self._lock:
            return self._running.get(signal)

    def states(self) -> list[dict]:
        with self._lock:
            return [r.as_dict() for r in list(self._running.values()) + self._finished]

    def _end(self, ramp: Ramp, state: str, error: str = "") -> None:
        ramp.state, ramp.error, ramp.finished = state, error, time.time()
        self._finished = (self._finished + [ramp])[-self._keep:]

    def _run(self) -> None:
        next_tick = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                ramps = list(self._running.values())
            if not ramps:
                self._wake.wait(1.0)
                self._wake.clear()
                next_tick = time.monotonic()
                continue
            now = time.time()
            for ramp in ramps:
                with self._writing:
                    with self._lock:
                        if self._running.get(ramp.signal) is not ramp:
                            continue  # stopped or replaced since the look above: not one more step
                    value = ramp.setpoint(now)
                    try:
                        self._write(ramp.signal, value)
                    except Exception as exc:  # a dead link ends the ramp; the runtime reports it
                        with self._lock:
                            if self._running.get(ramp.signal) is ramp:
                                del self._running[ramp.signal]
                                self._end(ramp, "failed", f"{type(exc).__name__}: {exc}")
                        continue
                ramp.value = value
                if value == ramp.target:
                    with self._lock:
                        if self._running.get(ramp.signal) is ramp:
                            del self._running[ramp.signal]
                            self._end(ramp, "done")
            next_tick += self.period
            delay = next_tick - time.monotonic()
            if delay < 0:
                next_tick = time.monotonic()
                delay = 0
            self._stop.wait(delay)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(2)

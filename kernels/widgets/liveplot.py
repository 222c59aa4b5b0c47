"""A live plot of a run's acquired signals: samples in as the runner fetches them, a PNG out at a bounded rate.

    live = LivePlot(units={"langmuir_I": "mA"})
    live.start(["langmuir_I", "interferometer_phase"], duration=8.0)   # one panel per signal, empty
    live.add({"langmuir_I": (t, v)})   # any thread, cheap (the runner's progress callback)
    live.stop()                        # one last picture with everything; the drawing thread ends
    live.image                         # an ipywidgets Image (PNG)

A PNG in an Image widget shows the same in JupyterLab, Voila and a notebook run by nbclient
(no ipympl, no front-end extension). Drawn with matplotlib's object API (one Figure, its lines
updated in place; never pyplot) on a thread of its own, so neither the runner's watch loop nor
the kernel waits for a picture: at most one per `period` s, and only when samples came in.
"""
from __future__ import annotations

import io
import logging
import threading
import time
from typing import Iterable, Mapping

import ipywidgets as w
import numpy as np

log = logging.getLogger("labrig.widgets")

PERIOD = 0.25  # s between pictures at most (<= 4 Hz: the eye sees it move, the kernel hardly notices)
MAX_POINTS = 2000  # points drawn per signal (a longer record is thinned for the picture, never in the shot)
DPI = 72


def set_picture(image, data: bytes) -> None:
    """Show a PNG in an Image widget, or hide the widget when there is none (browsers draw an empty
    Image as a broken picture)."""
    image.value = data
    image.layout.display = None if data else "none"


def png(fig, dpi: int = DPI) -> bytes:
    """A matplotlib Figure as PNG bytes (the Agg renderer; no pyplot, no GUI)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


class LivePlot:
    def __init__(self, *, units: Mapping[str, str] | None = None, period: float = PERIOD,
                 max_points: int = MAX_POINTS, width: float = 7.0, dpi: int = DPI):
        self.units = dict(units or {})
        self.period, self.max_points, self.width, self.dpi = period, max_points, width, dpi
        self.image = w.Image(format="png", layout=w.Layout(max_width="100%"))
        self.renders = 0  # pictures sent to the image (tests and the curious look here)
        self.names: list[str] = []
        self._data: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        self._dirty = False
        self._lock = threading.Lock()
        self._draw_lock = threading.Lock()  # one picture at a time (the thread's, and the last one of stop())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fig = self._axes = self._lines = None
        self._duration = 0.0

    # -- feeding (any thread) ---------------------------------------------------
    def start(self, names: Iterable[str], *, duration: float = 0.0, title: str = "") -> None:
        """Empty panels for `names`, then draw as samples come (a running plot is stopped first)."""
        self.stop()
        from matplotlib.figure import Figure
        self.names = list(names)
        with self._lock:
            self._data = {name: [] for name in self.names}
            self._dirty = True
        self._duration = float(duration)
        fig = Figure(figsize=(self.width, 0.8 + 1.3 * max(1, len(self.names))), layout="constrained")
        axes = np.atleast_1d(fig.subplots(max(1, len(self.names)), 1, sharex=True))
        self._lines = {}
        for ax, name in zip(axes, self.names):
            self._lines[name] = ax.plot([], [], lw=0.8)[0]
            ax.set_ylabel(f"{name}\n{self.units.get(name, '')}".rstrip(), fontsize=7)
            ax.tick_params(labelsize=7)
            ax.grid(True, alpha=0.3)
        axes[-1].set_xlabel("t (s from the shot start)", fontsize=7)
        axes[-1].set_xlim(0.0, max(self._duration, 1.0) * 1.02)
        fig.suptitle(title or "live: waiting for the first samples", fontsize=8)
        self._fig, self._axes, self._title = fig, axes, title
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="liveplot", daemon=True)
        self._thread.start()

    def add(self, samples: Mapping[str, tuple]) -> None:
        """New samples {name: (times, values)}: filed now, drawn at the next tick."""
        if not samples:
            return
        with self._lock:
            for name, (t, v) in samples.items():
                if len(t):
                    self._data.setdefault(name, []).append((np.asarray(t, float), np.asarray(v, float)))
                    self._dirty = True

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {name: sum(len(t) for t, _ in parts) for name, parts in self._data.items()}

    def stop(self, timeout: float = 5.0) -> None:
        """End the drawing thread after one last picture of everything received."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        if thread is not threading.current_thread():
            thread.join(timeout)
        self.draw()

    def close(self) -> None:
        self.stop()
        self.image.close()

    # -- drawing (its own thread) -----------------------------------------------
    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self.draw()

    def draw(self) -> None:
        """One picture, if anything came in since the last. Never raises (a display never stops a run)."""
        with self._draw_lock:
            with self._lock:
                if not self._dirty or self._fig is None:
                    return
                self._dirty = False
                data = {name: parts[:] for name, parts in self._data.items()}
            try:
                total, end = 0, 0.0
                for ax, name in zip(self._axes, self.names):
                    parts = data.get(name) or []
                    if not parts:
                        continue
                    t = np.concatenate([p[0] for p in parts])
                    v = np.concatenate([p[1] for p in parts])
                    total += len(t)
                    end = max(end, float(t[-1]))
                    step = max(1, len(t) // self.max_points)
                    self._lines[name].set_data(t[::step], v[::step])
                    ax.relim()
                    ax.autoscale_view(scalex=False)
                if end > self._duration:
                    self._axes[-1].set_xlim(0.0, end * 1.02)
                if total:
                    self._fig.suptitle(f"{self._title + ': ' if self._title else ''}live, {total} samples, "
                                       f"t = {end:.1f} s", fontsize=8)
                started = time.monotonic()
                self.image.value = png(self._fig, self.dpi)
                self.renders += 1
                log.debug("live plot: %d samples drawn in %.0f ms", total, 1000 * (time.monotonic() - started))
            except Exception:  # noqa: BLE001
                log.exception("live plot: drawing failed")

"""The running sequence and the last shot, live, whoever runs them (a panel, `rig.run` in any kernel, a script).

    monitor = RunMonitor(machine)            # its own MQTT subscription; or RunMonitor(feed=panel.feed)
    monitor.widget; monitor.state; monitor.last; monitor.close()

It shows what the runner publishes, retained, on `labrig/<rig>/runner/state`
(supervisor/runner/announce.py): the sequence, its parameters and its progress while it runs;
then the last shot's number, status and reason, and its overview plot, read from the shot
file at the published path. Retained: a monitor opened between shots shows the last one at
once. The picture is drawn on a thread of its own, never on the MQTT thread (which carries
the panel's telemetry too).
"""
from __future__ import annotations

import html
import threading
import time

import ipywidgets as w

from ..rig_object import rig_broker
from .lights import AMBER, RED
from .liveplot import set_picture
from .paramform import error_text
from .runview import outcome_html, overview_png
from .telemetry import CONNECT_TIMEOUT, TelemetryFeed


def call_text(state: dict) -> str:
    params = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v!r}"
                       for k, v in (state.get("parameters") or {}).items())
    return f"{state.get('sequence', '?')}({params})"


class RunMonitor:
    def __init__(self, machine=None, *, feed: TelemetryFeed | None = None, connect_timeout: float = CONNECT_TIMEOUT):
        if feed is None and machine is None:
            raise TypeError("RunMonitor: give the machine (rig) or a TelemetryFeed to listen to")
        self._own_feed = feed is None
        self.feed = feed if feed is not None else TelemetryFeed(
            machine.spec.name, rig_broker(machine.spec, machine.directory), client="labrig-run-monitor")
        self.state: dict | None = None  # the runner's last message
        self.last: dict | None = None  # the last ended (or lost) run's message
        self.drawn: str | None = None  # the shot file whose overview is shown
        self.title = w.HTML("<b>Running sequence</b>")
        self.running = w.HTML("no run seen yet")
        self.bar = w.FloatProgress(value=0.0, min=0.0, max=1.0, bar_style="info", layout=w.Layout(width="420px"))
        self.shot_title = w.HTML("<b>Last shot</b>")
        self.shot = w.HTML("none yet")
        self.overview = w.Image(format="png", layout=w.Layout(max_width="100%", display="none"))
        self.widget = w.VBox([self.title, self.running, self.bar, self.shot_title, self.shot, self.overview])
        self._lock = threading.Lock()
        self._wanted: str | None = None  # the shot file to draw next
        self._drawer: threading.Thread | None = None
        self._closed = False
        self.feed.on_run(self.show)
        if self._own_feed:
            self.feed.start(connect_timeout)
            if self.feed.error or not self.feed.live:
                self.running.value = f"<span style='color:{RED}'>{html.escape(self.feed.state)}</span>"
        if self.feed.run_state is not None and self.state is None:  # retained, already in
            self.show(self.feed.run_state)

    # -- what the runner said (the MQTT thread) ------------------------------------
    def show(self, state: dict) -> None:
        with self._lock:
            self.state = state
            kind = state.get("state")
            shot = state.get("shot")
            t, duration = state.get("t") or 0.0, state.get("duration") or 0.0
            what = f"{html.escape(call_text(state))}, shot {shot}"
            if kind in ("running", "paused"):
                self.bar.max = max(float(duration), 1e-3)
                self.bar.value = min(max(0.0, float(t)), self.bar.max)
                self.bar.bar_style = "warning" if kind == "paused" else "info"
                self.running.value = (f"<b>{kind}</b>: {what} &mdash; {float(t):.1f} / {float(duration):.1f} s"
                                      + (f" <span style='color:{AMBER}'>(paused)</span>" if kind == "paused" else ""))
                return
            when = time.strftime("%H:%M:%S", time.localtime(state["time"])) if state.get("time") else "?"
            if kind == "lost":
                self.bar.bar_style = "danger"
                self.running.value = (f"<span style='color:{RED}'><b>lost</b>: {what}: "
                                      f"{html.escape(state.get('reason', ''))}</span>")
                self.last = state
                self.shot.value = outcome_html(shot, "lost", state.get("reason", ""))
                return
            if kind != "ended":
                return
            self.last = state
            self.bar.bar_style = {"success": "success", "abort": "warning"}.get(state.get("status"), "danger")
            self.bar.max = max(float(duration), 1e-3)
            self.bar.value = self.bar.max if state.get("status") == "success" else min(float(t), self.bar.max)
            self.running.value = f"idle; the last run ({what}) ended at {when}"
            where = html.escape(str(state.get("path")))
            self.shot.value = (outcome_html(shot, state.get("status", "?"), state.get("reason", ""))
                               + f"<br><span style='color:#555'>{what}; file {where}</span>")
            path = state.get("path")
            if path and path != self.drawn:
                self._draw(path)

    # -- the overview (its own thread; the latest shot wins) --------------------------
    def _draw(self, path: str) -> None:
        """(Under the lock.) Draw `path` next; start the drawing thread unless it runs (it takes the latest)."""
        self._wanted = path
        if self._closed or self._drawer is not None:
            return
        self._drawer = threading.Thread(target=self._draw_loop, name="run-monitor-overview", daemon=True)
        self._drawer.start()

    def _draw_loop(self) -> None:
        while True:
            with self._lock:
                path, self._wanted = self._wanted, None
                if path is None or self._closed:
                    self._drawer = None  # under the lock: a path wanted after this starts a new thread
                    return
            try:
                picture = overview_png(path)
            except Exception as exc:  # noqa: BLE001 - say why there is no picture (a file on another host...)
                with self._lock:
                    self.shot.value += (f"<br><span style='color:{RED}'>overview not available: "
                                        f"{html.escape(error_text(exc))}</span>")
                continue
            with self._lock:
                set_picture(self.overview, picture)
                self.drawn = path

    def close(self) -> None:
        self._closed = True
        if self._own_feed:
            self.feed.close()
        with self._lock:
            drawer = self._drawer
        if drawer is not None and drawer is not threading.current_thread():
            drawer.join(10)
        for widget in (*self.widget.children, self.widget):
            widget.close()

"""One run as a notebook sees it: a progress bar, the nodes' states, a live plot, then the shot's overview.

    view = RunView(units)                 # units of the rig's signals, for the plots' labels
    callback = view.begin(plan)           # the Runner's progress callback (any thread)
    ...; view.end(result)                 # the shot: number, status, reason, overview plot
    view.failed(exc)                      # a run that did not start, or a runner that raised

The run panel (runpanel.py) and `rig.run(...)` in the supervisor kernel share it:
`run_with_progress(machine, sequence, **params)` is what `rig.run` does: in a kernel, this
view (with a text/plain twin that ends as "shot N: status", which is what a notebook run by
nbclient keeps); elsewhere, or with progress="text", the text bar of runner.session.
"""
from __future__ import annotations

import html
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Mapping

import ipywidgets as w

from .liveplot import LivePlot, png, set_picture
from .lights import AMBER, GREEN, RED
from .paramform import error_text

log = logging.getLogger("labrig.widgets")

UI_PERIOD = 0.2  # s between updates of the bar and the states (the runner calls ~20 times a second)
STATUS_COLOURS = {"success": GREEN, "abort": AMBER, "fail": RED}


def acquired(plan) -> list[str]:
    """The signals a plan records, in the order of its nodes' tables: acquisitions, then each step
    scan's set values and reads."""
    names: list[str] = []
    for table in plan.tables.values():
        for acq in table["acquisitions"]:
            names += [n for n in acq["signals"] if n not in names]
        for scan in table.get("scans", ()):
            names += [n for n in (f"{scan['signal']}:set", *scan["read"]) if n not in names]
    return names


def overview_png(path: str | Path, dpi: int = 72) -> bytes:
    """The overview plot (every signal against shot time, titled with the status) of the shot file at `path`."""
    from labrig.supervisor.store import Shot
    with Shot(Path(path)) as shot:
        return png(shot.overview(), dpi)


def outcome_html(number, status: str, reason: str) -> str:
    colour = STATUS_COLOURS.get(status, RED)
    text = f"shot {number}: {status}" if number is not None else status
    return (f"<b style='color:{colour}'>{html.escape(text)}</b>"
            + (f" &mdash; {html.escape(reason)}" if reason else ""))


class RunView:
    def __init__(self, units: Mapping[str, str] | None = None, *, period: float | None = None):
        self.title = w.HTML("")
        self.bar = w.FloatProgress(value=0.0, min=0.0, max=1.0, bar_style="info", layout=w.Layout(width="420px"))
        self.time = w.HTML("", layout=w.Layout(width="auto"))
        self.states = w.HTML("")
        self.live = LivePlot(units=units, **({"period": period} if period else {}))
        self.outcome = w.HTML("")
        self.overview = w.Image(format="png", layout=w.Layout(max_width="100%", display="none"))
        self.live_box = w.VBox([self.live.image])
        self.widget = w.VBox([self.title, w.HBox([self.bar, self.time]), self.states, self.live_box,
                              self.outcome, self.overview])
        self.plan = None
        self.result = None
        self.shot: int | None = None
        self.updates = 0  # progress shown (tests look here)
        self._last_ui = -float("inf")
        self._lock = threading.Lock()

    # -- the run ------------------------------------------------------------------
    def begin(self, plan):
        """A new run of `plan`: clear the last one; returns the progress callback for the Runner."""
        self.plan, self.result, self.shot = plan, None, None
        self.title.value = f"<b>{html.escape(plan.call)}</b>"
        self.bar.max = max(plan.duration, 1e-3)
        self.bar.value, self.bar.bar_style = 0.0, "info"
        self.time.value = f"starting (~{plan.duration:.1f} s)"
        self.states.value = self.outcome.value = ""
        set_picture(self.overview, b"")
        self.live_box.layout.display = None
        self.live.start(acquired(plan), duration=plan.duration, title=plan.name)
        self._last_ui = -float("inf")
        return self.progress

    def progress(self, p: dict) -> None:
        """The Runner's progress (its thread): samples to the live plot at once, the bar at most every UI_PERIOD."""
        self.live.add(p.get("samples") or {})
        now = time.monotonic()
        if now - self._last_ui < UI_PERIOD:
            return
        self._last_ui = now
        with self._lock:
            self.shot = p.get("shot", self.shot)
            t = max(0.0, float(p.get("t", 0.0)))
            self.bar.value = min(t, self.bar.max)
            self.bar.bar_style = "warning" if p.get("paused") else "info"
            shot = f"shot {self.shot}: " if self.shot is not None else ""
            self.time.value = (f"{shot}{t:5.1f} / {p.get('duration', self.bar.max):.1f} s"
                               + (" &mdash; <b>paused</b>" if p.get("paused") else ""))
            self.states.value = states_html(p.get("states") or {})
            self.updates += 1

    def end(self, result) -> None:
        """The shot: number, status, reason, and its overview plot (read back from the shot file)."""
        self.live.stop()
        self.result, self.shot = result, result.number
        self.bar.bar_style = {"success": "success", "abort": "warning"}.get(result.status, "danger")
        if result.status == "success":
            self.bar.value = self.bar.max
        self.time.value = f"shot {result.number}: ended"
        self.states.value = states_html(result.nodes or {})
        self.outcome.value = outcome_html(result.number, result.status, result.reason)
        if result.path:
            try:
                set_picture(self.overview, overview_png(result.path))
            except Exception as exc:  # noqa: BLE001 - the shot is on disk whatever its picture does
                self.outcome.value += f"<br><span style='color:{RED}'>overview not drawn: " \
                                      f"{html.escape(error_text(exc))}</span>"
            self.live_box.layout.display = "none"  # the overview says it all now

    def failed(self, exc: BaseException | str) -> None:
        """A run that did not start (refused before its shot), or a runner that raised: its reason, no traceback."""
        self.live.stop()
        self.bar.bar_style = "danger"
        text = exc if isinstance(exc, str) else error_text(exc) if str(exc) else type(exc).__name__
        self.outcome.value = f"<b style='color:{RED}'>run failed</b>: {html.escape(text)}"
        self.time.value = "not run" if self.shot is None else f"shot {self.shot}: failed"

    def text(self) -> str:
        """The view in one line (what a notebook without widgets keeps)."""
        r = self.result
        if r is not None:
            return f"shot {r.number}: {r.status}" + (f" ({r.reason})" if r.reason else "")
        if self.plan is None:
            return "no run yet"
        return f"{self.plan.call}: " + (html_to_text(self.outcome.value) or "running")

    def close(self) -> None:
        self.live.close()
        for widget in (*self.widget.children, self.live_box, self.widget):
            for child in getattr(widget, "children", ()):
                child.close()
            widget.close()


def states_html(states: Mapping[str, dict]) -> str:
    colours = {"done": GREEN, "running": "#1f77b4", "paused": AMBER, "aborted": AMBER, "failed": RED,
               "tripped": RED}
    return " ".join(f"<span style='color:{colours.get(s.get('state'), '#555')}'>{html.escape(n)}: "
                    f"{html.escape(str(s.get('state', '?')))}</span>" for n, s in sorted(states.items()))


def html_to_text(text: str) -> str:
    import re
    return html.unescape(re.sub(r"<[^>]+>", "", text))


# -- rig.run ------------------------------------------------------------------------------
def in_kernel() -> bool:
    """Running in a Jupyter kernel (which can show widgets), not plain Python or a terminal IPython."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and getattr(shell, "kernel", None) is not None


def run_with_progress(machine, sequence, *, store=None, progress=True, **params):
    """What `rig.run` does: in a kernel, a RunView shown in the cell's output while the shot runs (the
    kernel is busy with the run meanwhile: stop it with the kernel's interrupt); else the text bar."""
    from labrig.supervisor.runner.session import run_sequence
    if progress is not True or not in_kernel():
        return run_sequence(machine.spec, machine.directory, sequence, store=store,
                            progress=bool(progress), **params)
    from IPython.display import display
    view = RunView({n: s.unit for n, s in machine.spec.signals.items()})
    shown = {}

    def bundle() -> dict:
        data = view.widget._repr_mimebundle_()
        data["text/plain"] = view.text()
        return data

    def begin(plan):  # after the compile: a refused plan raises as before, with no empty view left behind
        callback = view.begin(plan)
        shown["handle"] = display(bundle(), raw=True, display_id=True)
        return callback

    try:
        result = run_sequence(machine.spec, machine.directory, sequence, store=store, progress=begin, **params)
    except BaseException as exc:
        if "handle" in shown:
            view.failed(exc if not isinstance(exc, KeyboardInterrupt) else "interrupted")
            shown["handle"].update(bundle(), raw=True)
        raise
    view.end(result)
    shown["handle"].update(bundle(), raw=True)
    return result

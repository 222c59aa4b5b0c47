"""The emergency stop: one button, every node's outputs to their safe values at once, and what each node said.

No arming, no confirmation: it only ever makes things safer. It calls the same code
as `rig.safe()` and `labrig safe`, which never raises: a node it cannot reach is
shown as such (its device's own watchdog is the next layer).
"""
from __future__ import annotations

import html
from typing import Callable

import ipywidgets as w

from .lights import GREEN, RED


def results_html(results: dict[str, dict]) -> str:
    rows = []
    for node, outputs in sorted(results.items()):
        if isinstance(outputs.get("error"), str):
            rows.append((node, RED, f"UNREACHABLE: {outputs['error']}"))
            continue
        bad = {name: r.get("error") for name, r in outputs.items() if not r.get("ok")}
        good = [f"{name}={r.get('value'):g}" if isinstance(r.get("value"), (int, float)) else name
                for name, r in outputs.items() if r.get("ok")]
        text = f"{len(good)} output{'s' if len(good) != 1 else ''} safe" + (f" ({', '.join(good)})" if good else "")
        if bad:
            text += f"; FAILED: {bad}"
        rows.append((node, RED if bad else GREEN, text))
    body = "".join(f"<tr><td><b>{html.escape(n)}</b></td><td style='color:{c}'>{html.escape(t)}</td></tr>"
                   for n, c, t in rows)
    return f"<table>{body}</table>"


class EmergencyStop:
    """`safe() -> {node: {output: {"ok", "value", "error"}} or {"error": why}}`; `after(results)` runs after it."""

    def __init__(self, safe: Callable[[], dict], *, after: Callable[[dict], None] | None = None):
        self._safe = safe
        self._after = after
        self.results: dict | None = None
        self.button = w.Button(description="EMERGENCY STOP", button_style="danger", icon="stop",
                               tooltip="every output of every node to its safe value, now",
                               layout=w.Layout(width="220px", height="48px"))
        self.button.style.font_weight = "bold"
        self.button.on_click(lambda _: self.stop())
        self.output = w.HTML("")
        self.widget = w.VBox([self.button, self.output])

    def stop(self) -> dict:
        self.output.value = "driving every node safe..."
        try:
            self.results = self._safe()
        except Exception as exc:  # rig.safe() reports per node and does not raise; if it did, say so loudly
            self.results = {}
            self.output.value = (f"<span style='color:{RED}'>EMERGENCY STOP FAILED: "
                                 f"{html.escape(f'{type(exc).__name__}: {exc}')}</span>")
            return self.results
        self.output.value = results_html(self.results)
        if self._after is not None:
            self._after(self.results)
        return self.results

"""A live value per input, and a sparkline for the signals worth watching move.

Values come from the panel's telemetry feed (MQTT), never from asking a kernel. A
sparkline is a small inline SVG: no plotting library and no image per update, so
ten updates a second stay cheap for the browser.
"""
from __future__ import annotations

import html
import math
from typing import Sequence

import ipywidgets as w

from .knobs import DESCRIPTION_WIDTH, number

SPARK_WIDTH, SPARK_HEIGHT = 180, 28  # px
SPARK_POINTS = 120  # at most this many points drawn (the rest is averaged away)


def sparkline_svg(samples: Sequence[tuple[float, float | None]], *, window: float,
                  width: int = SPARK_WIDTH, height: int = SPARK_HEIGHT) -> str:
    """An SVG polyline of (t, value) over the last `window` s; failed reads (None) leave gaps."""
    if not samples:
        return f"<svg width='{width}' height='{height}'></svg>"
    end = samples[-1][0]
    shown = [(t, v) for t, v in samples if t >= end - window]
    values = [v for _, v in shown if v is not None and math.isfinite(v)]
    if not values:
        return f"<svg width='{width}' height='{height}'></svg>"
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    bins: dict[int, list[float]] = {}
    for t, v in shown:
        if v is not None and math.isfinite(v):
            bins.setdefault(min(SPARK_POINTS - 1, int((t - (end - window)) / window * SPARK_POINTS)), []).append(v)
    points = " ".join(f"{i * width / (SPARK_POINTS - 1):.1f},"
                      f"{height - 2 - (sum(vs) / len(vs) - lo) / span * (height - 4):.1f}"
                      for i, vs in sorted(bins.items()))
    return (f"<svg width='{width}' height='{height}'><title>{lo:.4g} .. {hi:.4g} over {window:g} s</title>"
            f"<polyline fill='none' stroke='#1f77b4' stroke-width='1.5' points='{points}'/></svg>")


class Readout:
    """An input's latest value (with its unit), and optionally its sparkline."""

    def __init__(self, name: str, spec, *, sparkline: bool = False, window: float = 30.0):
        self.name, self.spec, self.unit, self.window = name, spec, spec.unit, window
        self.label = w.HTML(f"<b>{html.escape(name)}</b>",
                            layout=w.Layout(width=DESCRIPTION_WIDTH),
                            tooltip=spec.description or f"{name} ({spec.node} {spec.channel})")
        self.value = w.HTML("?", layout=w.Layout(width="110px"))
        self.spark = w.HTML(sparkline_svg([], window=window)) if sparkline else None
        self.widget = w.HBox([self.label, self.value] + ([self.spark] if self.spark else []))

    def show(self, value: float | None, history: Sequence[tuple[float, float | None]] = ()) -> None:
        self.value.value = number(value, self.unit) if value is not None else "<span style='color:#b00'>failed</span>"
        if self.spark is not None and history:
            self.spark.value = sparkline_svg(history, window=self.window)

    def close(self) -> None:
        for widget in (self.widget, *self.widget.children):
            widget.close()

"""A shot's overview plot: every signal against shot time, one panel each, titled with its exit status.

    with store.shot(7) as shot:
        overview(shot, "shot-7.png")       # or overview(shot) for the Figure (a notebook shows it)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def overview(shot, path: str | Path | None = None, *, names: list[str] | None = None, dpi: int = 80):
    """The Figure (when `path` is None) or the path of the PNG written. Matplotlib's object API only,
    so it never touches pyplot's global state (safe in a kernel thread and on a headless machine)."""
    from matplotlib.figure import Figure

    names = shot.names() if names is None else list(names)
    fig = Figure(figsize=(8, 1.2 + 1.4 * max(1, len(names))), layout="constrained")
    axes = np.atleast_1d(fig.subplots(max(1, len(names)), 1, sharex=True))
    t0 = None
    for ax, name in zip(axes, names):
        t, v = shot.read(name)
        if t0 is None and len(t):
            t0 = float(t[0])
        ax.plot(t - (t0 or 0.0), v, lw=0.8)
        ax.set_ylabel(f"{name}\n{shot.info(name).get('unit', '')}", fontsize=7)
        ax.tick_params(labelsize=7)
    axes[-1].set_xlabel("t (s)")
    title = f"shot {shot.number}: {shot.status}"
    if shot.reason:
        title += f" ({shot.reason})"
    fig.suptitle(title, fontsize=9)
    if path is None:
        return fig
    fig.savefig(path, dpi=dpi)
    return Path(path)

"""The dry run's picture: a plan's timeline, one row per signal, one colour per node.

Outputs show their planned setpoint; acquired signals a bar over each window,
labelled with its rate; waits a dashed line where they are expected to end and a
hatched span up to their timeout. Drawn on a bare matplotlib Figure (no pyplot,
so no GUI backend and no global state): it renders headless, in tests and in
notebooks alike, where a returned Figure displays inline.
"""
from __future__ import annotations

import io
import sys
import textwrap
from pathlib import Path

from matplotlib.figure import Figure

PALETTE = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]


def plot_plan(plan, path: str | Path | None = None, *, width: float = 10.0) -> Figure:
    rows = sorted(plan.trajectories, key=lambda n: (plan.trajectories[n][0][0], n))  # in the order they move
    acquired: dict[str, list] = {}
    for node, table in plan.tables.items():
        for acq in table["acquisitions"]:
            for name in acq["signals"]:
                acquired.setdefault(name, []).append((node, acq))
                if name not in rows:
                    rows.append(name)
    node_of = {name: node for node, t in plan.tables.items() for name in
               [*t["start"], *(n for a in t["acquisitions"] for n in a["signals"])]}
    colours = {node: PALETTE[i % len(PALETTE)] for i, node in enumerate(plan.tables)}
    end = max(plan.duration, 1e-3)

    fig = Figure(figsize=(width, 1.0 + 0.75 * max(1, len(rows))), layout="constrained")
    axes = fig.subplots(max(1, len(rows)), 1, sharex=True, squeeze=False)[:, 0]
    for ax, name in zip(axes, rows):
        colour = colours.get(node_of.get(name), "grey")
        if name in plan.trajectories:
            knots = plan.trajectories[name]
            ts = [0.0] + [t for t, _ in knots] + [end]
            vs = [knots[0][1]] + [v for _, v in knots] + [knots[-1][1]]
            ax.plot(ts, vs, color=colour, lw=1.8)
            ax.fill_between(ts, vs, min(vs), color=colour, alpha=0.12)
        for node, acq in acquired.get(name, []):
            lo, hi = ax.get_ylim() if name in plan.trajectories else (0.0, 1.0)
            ax.broken_barh([(acq["t_start"], acq["window"])], (lo, hi - lo), color=colours[node], alpha=0.25)
            ax.text(acq["t_start"], lo + 0.5 * (hi - lo), f" {acq['rate']:g} Hz", va="center", fontsize=7)
            if name not in plan.trajectories:
                ax.set_yticks([])
        ax.set_ylabel(f"{name}\n[{node_of.get(name, '?')}]", rotation=0, ha="right", va="center", fontsize=8,
                      color=colour)
        for wait in plan.waits:
            t = wait["t_start"] + wait["expect"]
            ax.axvline(t, color="black", ls="--", lw=0.8)
            ax.axvspan(t, wait["t_start"] + wait["timeout"], color="grey", alpha=0.08, hatch="//", lw=0)
        ax.grid(True, axis="x", alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0].set_xlim(0.0, end * 1.02)
    axes[-1].set_xlabel("time from the shot start, s (waits as expected; hatched: up to their timeout)")
    for wait in plan.waits:
        axes[0].annotate(wait["condition"], (wait["t_start"] + wait["expect"], 1.0), xycoords=("data", "axes fraction"),
                         fontsize=7, rotation=20, va="bottom")
    handles = [axes[0].plot([], [], color=c, lw=4)[0] for c in colours.values()]
    fig.legend(handles, [f"node {n}" for n in colours], loc="outside lower center", ncols=len(colours), fontsize=8,
               frameon=False)
    fig.suptitle(textwrap.fill(f"{plan.call}   ~{plan.duration:.1f} s, hash {plan.hash[:12]}", 150), fontsize=9,
                 x=0.01, ha="left")
    if path is not None:
        fig.savefig(path, dpi=110)
    _show_inline()
    return fig


def _show_inline() -> None:
    """In a notebook, a returned Figure displays as a PNG even if pyplot (which registers that) was never imported."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or not hasattr(shell, "display_formatter"):
        return
    png = shell.display_formatter.formatters["image/png"]
    if Figure not in png.type_printers:
        png.for_type(Figure, _png)


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()

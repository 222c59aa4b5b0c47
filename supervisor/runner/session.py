"""What `rig.run(...)` and `rig.scan(...)` do in the supervisor kernel: compile, run, show progress.

    rig.run(discharge, power=800, b_field=0.08)          # one shot; returns its RunResult
    rig.scan(discharge, grid={"power": [600, 800], "b_field": [0.06, 0.08]})   # one shot per point
    rig.scan(discharge, points=[{"power": 600}, {"power": 800}], flat_top=1.0)
"""
from __future__ import annotations

import itertools
import sys

from .runner import Runner


def text_progress(plan, stream=None):
    """A one-line progress bar (no tqdm): shot time against the plan's nominal duration, node states."""
    stream = stream or sys.stdout

    def show(p: dict) -> None:
        frac = min(1.0, max(0.0, p["t"] / plan.duration)) if plan.duration else 1.0
        bar = "#" * int(frac * 30)
        states = " ".join(f"{n}:{s.get('state', '?')}" for n, s in sorted(p["states"].items()))
        stream.write(f"\r{plan.name} [{bar:<30}] {max(0.0, p['t']):5.1f}/{plan.duration:.1f} s  {states}   ")
        stream.flush()
    return show


def run_sequence(rig, directory, sequence, *, store=None, progress=True, **params):
    """Compile `sequence` with `params` (or take a compiled Plan as it is) and run it as one shot.

    progress: True (a text bar, then the outcome line), False, or a callable `progress(plan)` that
    returns the runner's progress callback (a display of its own: kernels/widgets/runview.py)."""
    plan = sequence if hasattr(sequence, "tables") else sequence(**params).compile(rig)
    if store is None:
        from ..store import ShotStore
        store = ShotStore()
    text = bool(progress) and not callable(progress)
    callback = progress(plan) if callable(progress) else text_progress(plan) if text else None
    result = Runner(rig, plan, directory=directory, store=store, progress=callback).run()
    if text:
        print(f"\rshot {result.number}: {result.status}" + (f" ({result.reason})" if result.reason else "") + " " * 40)
    return result


def scan(rig, directory, sequence, *, grid: dict | None = None, points: list | None = None, store=None,
         progress=True, stop_on_fail: bool = True, **fixed):
    """One shot per point: `grid` (every combination of its lists) or `points` (a list of dicts);
    `fixed` parameters go to every point. Stops at the first shot that does not succeed
    (stop_on_fail). Returns the RunResults in order."""
    if (grid is None) == (points is None):
        raise ValueError("give either grid={name: [values]} or points=[{name: value}, ...]")
    if grid is not None:
        names = list(grid)
        points = [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]
    results = []
    for point in points:
        result = run_sequence(rig, directory, sequence, store=store, progress=progress, **{**fixed, **point})
        results.append(result)
        if stop_on_fail and result.status != "success":
            break
    return results

"""Batch jobs: a parametrised notebook run headless with papermill, one report notebook per shot.

    labrig batch examples/ishtar/discharge.ipynb --grid power=600,800 -p b_field=0.1
    run_batch("discharge.ipynb", [{"power": 600}, {"power": 800}], reports=store.root / "reports")

Each point runs the notebook once (papermill injects the parameters after the cell tagged
"parameters") in the labrig supervisor kernel. The shots a run made are found in its outputs
(a RunResult shows itself with SHOT_MIMETYPE), and the executed notebook is kept as the
report of its shot: `shot-000042.ipynb` (a notebook that made several shots is named after
the first and lists all). A point whose notebook fails keeps its executed copy, with the
error in it, as `failed-<n>-<notebook>.ipynb`; the batch goes on with the next point.
"""
from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labrig.drivers.errors import ConfigError

from .runner.runner import SHOT_MIMETYPE

KERNEL = "labrig-supervisor"


@dataclass
class BatchReport:
    parameters: dict[str, Any]
    report: Path
    shots: list[dict] = field(default_factory=list)  # {shot, status, reason, path} of every run in the notebook
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and bool(self.shots) and all(s["status"] == "success" for s in self.shots)


def grid_points(grid: dict[str, list] | None = None, fixed: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every combination of `grid`'s lists, each with `fixed` added (one point of `fixed` alone without a grid)."""
    fixed = dict(fixed or {})
    if not grid:
        return [fixed]
    names = list(grid)
    return [{**fixed, **dict(zip(names, values))} for values in itertools.product(*(grid[n] for n in names))]


def parse_assignment(text: str) -> tuple[str, Any]:
    """`name=value` with the value read as JSON when it is JSON (numbers, lists, true), else as text."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ConfigError(f"{text!r}: write NAME=VALUE (e.g. power=800)")
    try:
        return name.strip(), json.loads(value)
    except ValueError:
        return name.strip(), value


def run_batch(notebook: str | Path, points: list[dict[str, Any]], *, reports: str | Path, kernel: str = KERNEL,
              cell_timeout: float = 900.0, cwd: str | Path | None = None) -> list[BatchReport]:
    """Run `notebook` once per point; the executed notebooks land in `reports`, named after their shots."""
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    notebook = Path(notebook)
    if not notebook.is_file():
        raise ConfigError(f"notebook {notebook}: no such file")
    book = nbformat.read(notebook, as_version=4)
    if not any("parameters" in c.metadata.get("tags", []) for c in book.cells):
        raise ConfigError(f"notebook {notebook}: no cell tagged 'parameters' (papermill injects the point after it)")
    reports = Path(reports)
    reports.mkdir(parents=True, exist_ok=True)
    done = []
    for n, point in enumerate(points, 1):
        scratch = reports / f".running-{n}-{notebook.name}"
        error = ""
        try:
            papermill.execute_notebook(str(notebook), str(scratch), parameters=point, kernel_name=kernel,
                                       cwd=str(cwd or notebook.parent), progress_bar=False, log_output=False,
                                       execution_timeout=cell_timeout, report_mode=False)
        except PapermillExecutionError as exc:
            error = f"{exc.ename}: {exc.evalue}"
        shots = shots_in(nbformat.read(scratch, as_version=4)) if scratch.exists() else []
        if error or not shots:
            error = error or "the notebook made no shot"
            report = reports / f"failed-{time.strftime('%Y%m%d-%H%M%S')}-{n}-{notebook.name}"
        else:
            report = reports / f"shot-{shots[0]['shot']:06d}.ipynb"
        if scratch.exists():
            scratch.replace(report)
        done.append(BatchReport(point, report, shots, error))
    return done


def shots_in(book) -> list[dict]:
    """The shots a notebook's runs made, in order, from their SHOT_MIMETYPE outputs."""
    seen, out = set(), []
    for cell in book.cells:
        for output in cell.get("outputs", []):
            shot = output.get("data", {}).get(SHOT_MIMETYPE)
            if isinstance(shot, dict) and shot.get("shot") is not None and shot["shot"] not in seen:
                seen.add(shot["shot"])
                out.append(shot)
    return out

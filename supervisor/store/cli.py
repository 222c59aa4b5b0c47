"""`labrig store ...`: list, show, reindex, recover, export. Registered in supervisor/cli.py.

Heavy imports (h5py, pandas) happen inside the commands, so `labrig --help` stays quick.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ..clitools import friendly

store_app = typer.Typer(help="The shot store: numbered shot files, their catalog, recovery and export.",
                        no_args_is_help=True)
out = Console(highlight=False, soft_wrap=True)  # long paths stay on one line (greppable)
StoreOpt = typer.Option(None, "--store", envvar="LABRIG_STORE",
                        help="The store's folder (default: STATE_DIR/store).")
CatalogOpt = typer.Option(None, "--catalog", envvar="LABRIG_CATALOG", show_envvar=True,
                          help="The catalog: a PostgreSQL URL (postgresql://USER@HOST/DATABASE, shared by several "
                               "stores, each in its own schema) or a SQLite file (default: STORE/catalog.sqlite).")


def _open(root: Optional[Path], catalog: Optional[str] = None):
    from . import ShotStore
    return ShotStore(root, catalog=catalog)


def _when(t) -> str:
    return "-" if t is None or t != t else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


@store_app.command("list")
@friendly
def store_list(day: Optional[str] = typer.Option(None, help="Only shots of this day (YYYY-MM-DD, local time)."),
               status: Optional[str] = typer.Option(None, help="Only shots with this status."),
               limit: int = typer.Option(50, help="Show the last N shots (0: all)."),
               as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
               root: Optional[Path] = StoreOpt, catalog: Optional[str] = CatalogOpt):
    """List shots from the catalog (built from the files if missing)."""
    frame = _open(root, catalog).query("reason", "n_trips", "expired_calibrations", day=day, status=status)
    if limit:
        frame = frame.tail(limit)
    if as_json:
        print(frame.drop(columns="time").reset_index().to_json(orient="records"))
        return
    table = Table(title=f"{len(frame)} shots", title_justify="left")
    for col in ("shot", "start", "status", "sequence", "user", "trips", "expired cal.", "reason"):
        table.add_column(col)
    for number, row in frame.iterrows():
        style = {"success": "", "partial": "yellow"}.get(row["status"], "red")
        table.add_row(str(number), _when(row["t_start"]), f"[{style}]{row['status']}[/]" if style else row["status"],
                      row["sequence"] or "", row["user"] or "", str(row["n_trips"]), row["expired_calibrations"] or "",
                      (row["reason"] or "")[:60])
    out.print(table)


@store_app.command("show")
@friendly
def store_show(number: int = typer.Argument(..., help="The shot number."), root: Optional[Path] = StoreOpt):
    """Show one shot: its context, signals (with summaries), events and calibrations."""
    store = _open(root)
    with store.shot(number) as shot:
        a = shot.attrs
        out.print(f"[bold]shot {number}[/]: {a['status']}" + (f" ({a['reason']})" if a["reason"] else ""))
        out.print(f"file: {shot.path}", markup=False)
        out.print(f"time: {_when(a['t_start'])} .. {_when(a['t_end'])}; user {a['user']} on {a['host']}", markup=False)
        out.print(f"sequence: {a['sequence'] or '-'} (sha256 {a['sequence_hash'][:12] or '-'}); rig: {a['rig'] or '-'}",
                  markup=False)
        out.print(f"parameters: {json.dumps(shot.metadata('parameters'))}", markup=False)
        out.print(f"versions: {json.dumps(shot.metadata('versions'))}; "
                  f"firmware: {json.dumps(shot.metadata('firmware'))}", markup=False)
        table = Table(title="signals", title_justify="left")
        for col in ("group", "signal", "unit", "samples", "min", "max", "mean"):
            table.add_column(col)
        for group in ("signals", "telemetry"):
            for name in shot.names(group):
                i = shot.info(name, group)
                table.add_row(group, name, i["unit"], str(i["n"]), f"{i['min']:.6g}", f"{i['max']:.6g}",
                              f"{i['mean']:.6g}")
        out.print(table)
        kinds: dict[str, int] = {}
        for e in shot.events():
            kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
        out.print("events: " + (", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "none"), markup=False)
        cals = [c for c in shot.calibrations() if c["source"] == "registry"]
        out.print("calibrations: " + (", ".join(f"{c['name']} v{c['version']}" + (" [red](EXPIRED)[/]" if c["expired"]
                                                                                   else "") for c in cals) or "none"))
    derived = sorted((store.derived_dir / f"shot-{number:06d}").glob("*.h5"))
    if derived:
        out.print("derived: " + ", ".join(p.name for p in derived), markup=False)


@store_app.command("reindex")
@friendly
def store_reindex(root: Optional[Path] = StoreOpt, catalog: Optional[str] = CatalogOpt):
    """Rebuild the catalog from the shot files alone."""
    store = _open(root, catalog)
    t0 = time.monotonic()
    count = store.reindex()
    out.print(f"catalog {store.catalog}: {count} shots indexed in {time.monotonic() - t0:.1f} s", markup=False)


@store_app.command("recover")
@friendly
def store_recover(root: Optional[Path] = StoreOpt, catalog: Optional[str] = CatalogOpt):
    """Build the shots left as journals by a killed writer or a full disk (marked partial)."""
    store = _open(root, catalog)
    numbers = store.recover()
    if not numbers:
        out.print("nothing to recover")
    for number in numbers:
        with store.shot(number) as shot:
            out.print(f"shot {number}: {shot.status} ({shot.reason})", markup=False)


@store_app.command("export")
@friendly
def store_export(number: int = typer.Argument(..., help="The shot number."),
                 fmt: str = typer.Option("mat", "--format", help="mat (MATLAB) or csv (a folder of CSV files)."),
                 output: Optional[Path] = typer.Option(None, "--output", "-o", help="Where to write (default: "
                                                       "shot-NNNNNN.mat or shot-NNNNNN-csv/ here)."),
                 root: Optional[Path] = StoreOpt):
    """Export a shot to MATLAB .mat or CSV."""
    path = _open(root).export(number, fmt, output)
    out.print(f"wrote {path}", markup=False)

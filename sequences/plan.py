"""A compiled plan: per-node step tables, the waits, the safe exit, the dry run.

`plan.tables` maps each node to the table its step-table executor runs
(JSON-serialisable; `plan.to_dict()` / `plan.to_json()` hold everything):

    {"node": "rp1", "start": {"rf_power": 0.0},
     "steps": [{"step": 7, "name": "ramp rf_power", "kind": "ramp", "signal": "rf_power",
                "from": 0.0, "to": 735.0, "rate": 400.0, "duration": 1.84, "t_start": 3.1,
                "at": {"w2": 0.0}}, ...],
     "acquisitions": [{"step": 8, "signals": [...], "rate": 1000.0, "window": 2.0,
                       "t_start": ..., "at": {...}, "until": {...}}],
     "scans": [{"step": 9, "signal": "gas_flow", "values": [...], "read": ["door_switch"],
                "rate": 1000.0, "deadline": 0.001, "on_late": "record", "from": 0.0,
                "t_start": ..., "at": {...}, "duration": ...}],   # step scans the node runs itself
     "safe_exit": [{"kind": "ramp", "signal": "rf_power", "to": 0.0, "rate": 400.0,
                    "t_start": 0.0, "duration_max": 3.0, ...}],
     "gates": ["w2"],          # the waits whose ends its steps start from
     "waits": []}              # the waits this node evaluates itself (on its own signals)

A step starts at max over its `at` of (end of that gate + offset): gate "shot" is
the common start time, "wN" the end of wait N (`plan.waits`: condition, timeout,
which node evaluates it, or "supervisor" when it spans nodes). Kinds are only
"set" (write once) and "ramp" (from -> to at rate): pulses arrive as their edges.
`start` is what the plan assumes the outputs are at when the shot starts (their
safe values unless compile(start=...) said otherwise): the runner must check it.
The safe exit's t_start counts from the abort.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .tables import _r, node_tables, runtime_notes, step_rows


class Text(str):
    """A str that a notebook shows as text, not as a quoted repr."""

    def __repr__(self) -> str:
        return str(self)


@dataclass
class Plan:
    name: str
    params: dict
    units: dict
    hash: str
    rig: dict
    duration: float
    duration_max: float
    exit_duration: float
    tables: dict
    waits: list
    steps: list
    notes: list
    trajectories: dict = field(repr=False, default_factory=dict)
    source: str = field(repr=False, default="")

    def __repr__(self) -> str:
        return (f"<Plan {self.call}: {len(self.steps)} steps on {', '.join(self.tables)}; ~{self.duration:.1f} s; "
                f"hash {self.hash[:12]}; .summary() .plot()>")

    @property
    def call(self) -> str:
        args = ", ".join(f"{k}={_fmt(v)}{' ' + self.units[k] if k in self.units else ''}" for k, v in self.params.items())
        return f"{self.name}({args})"

    @property
    def nodes(self) -> list[str]:
        return list(self.tables)

    @property
    def safe_exit(self) -> list[dict]:
        """Every node's safe-exit entries (with their node), in time from the abort."""
        entries = [dict(e, node=node) for node, t in self.tables.items() for e in t["safe_exit"]]
        return sorted(entries, key=lambda e: (e["t_start"], e["node"]))

    def to_dict(self) -> dict:
        return {"sequence": self.name, "params": self.params, "units": self.units, "hash": self.hash, "rig": self.rig,
                "duration": {"nominal": self.duration, "max": self.duration_max, "safe_exit": self.exit_duration},
                "waits": self.waits, "nodes": self.tables, "steps": self.steps, "notes": self.notes,
                "source": self.source}

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def summary(self) -> Text:
        """The plan as a text table: every step with its time and node, the waits, the safe exit, the notes."""
        lines = [f"{self.call}   hash {self.hash[:12]}   rig {self.rig['name']}",
                 f"duration ~{self.duration:.2f} s" + (f" (at most {self.duration_max:.2f} s if every wait runs to "
                                                        f"its timeout)" if self.duration_max > self.duration + 1e-9 else ""),
                 "", f"{'#':>3}  {'t s':>7}  {'node':<12} {'step':<34} detail", "-" * 100]
        for row in self.steps:
            lines.append(f"{row['step']:>3}  {row['t_start']:7.3f}  {','.join(row['nodes']) or '-':<12} "
                         f"{_cut(row['name'], 34):<34} {row['detail']}")
        lines += ["", f"safe exit (on abort or trip, run by each node; at most {self.exit_duration:.2f} s):"]
        for e in self.safe_exit:
            how = f"ramp at {e['rate']:g}/s" if e["kind"] == "ramp" else "set"
            lines.append(f"     +{e['t_start']:6.3f}  {e['node']:<12} {e['signal']} -> {e['to']:g} ({how})")
        if self.notes:
            lines += ["", "notes:"] + [f"  - {n}" for n in self.notes]
        return Text("\n".join(lines))

    def plot(self, path: str | Path | None = None, **kwargs):
        """The timeline as a matplotlib Figure (one row per signal, a colour per node); saved to `path` if given."""
        from .plot import plot_plan
        return plot_plan(self, path, **kwargs)

    def dry_run(self, path: str | Path | None = None):
        print(self.summary())
        return self.plot(path)

    # ---------------------------------------------------------------- built by the compiler
    @classmethod
    def build(cls, c, duration: float, duration_max: float, exit_steps: list, exit_notes: list) -> "Plan":
        tables = node_tables(c, exit_steps)
        waits = [{"id": wid, "step": w["step"].index, "name": w["step"].name, "condition": w["condition"].source,
                  "signals": list(w["condition"].signals), "evaluated_by": w["evaluated_by"],
                  "timeout": w["step"].timeout, "expect": w["step"].expect, "t_start": _r(c.time(w["at"])),
                  "at": _r(w["at"])} for wid, w in c.waits.items()]
        exit_duration = max((e["t_start"] + e["duration_max"] for e in exit_steps), default=0.0)
        trajectories = {name: [[t, v] for t, v, _ in tr.knots] or [[0.0, tr.start]]
                        for name, tr in c.trajectories("nominal").items() if name in c.start}
        return cls(c.tl.name, dict(c.tl.params), dict(c.tl.units), c.hash(),
                   {"name": c.rig.name, "digest": c.rig.digest}, duration, duration_max, exit_duration, tables,
                   waits, step_rows(c), runtime_notes(c) + exit_notes, trajectories, c.tl.source)


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else repr(value)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"

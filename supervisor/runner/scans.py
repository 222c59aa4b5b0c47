"""What the runner tells of a plan's step scans: the units of their records in the shot, and the
points that missed their deadline (a run that succeeded says so in its reason)."""
from __future__ import annotations


def scan_units(plan, rig) -> dict[str, str]:
    """Units of the records a step scan adds to the shot: SIGNAL:set (the output's unit), SIGNAL:late (s)."""
    units = {}
    for table in plan.tables.values():
        for scan in table.get("scans", []):
            units[f"{scan['signal']}:set"] = rig.signals[scan["signal"]].unit
            units[f"{scan['signal']}:late"] = "s"
    return units


def late_scans(states: dict) -> list[dict]:
    """Every step scan with points past their deadline: {node, step, name, signal, late, points, ...}."""
    return [{"node": node, **scan} for node, s in states.items() for scan in s.get("scans") or [] if scan.get("late")]


def late_reason(states: dict) -> str:
    """'' when every point of every scan met its deadline; else which scans and how late."""
    parts = [f"step scan {s['name']!r} on {s['node']}: {s['late']} of {s['points']} points missed their "
             f"{s['deadline'] * 1e3:.3g} ms deadline (worst {s['worst_late'] * 1e3:.3f} ms late, first at point "
             f"{s['first_late']}; see {s['signal']}:late)" for s in late_scans(states)]
    return "; ".join(parts)

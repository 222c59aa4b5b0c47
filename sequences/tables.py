"""From the compiler's placed steps to what the plan holds: per-node tables, summary rows, notes."""
from __future__ import annotations

from .scans import scan_detail, scan_entry


def node_tables(c, exit_steps: list) -> dict:
    rig, tables = c.rig, {}

    def table(node: str) -> dict:
        return tables.setdefault(node, {"node": node, "start": {}, "steps": [], "acquisitions": [], "scans": [],
                                        "safe_exit": [], "gates": [], "waits": []})

    for placed in c.placed:
        step = placed.step
        if step.kind == "step_scan":  # one entry: the node runs every point itself
            node = rig.signals[step.signal].node
            table(node)["start"].setdefault(step.signal, c.start[step.signal])
            table(node)["scans"].append(scan_entry(c, placed))
            continue
        for seg in placed.segments:
            node = rig.signals[seg.signal].node
            table(node)["start"].setdefault(seg.signal, c.start[seg.signal])
            table(node)["steps"].append({"step": step.index, "name": step.name, "kind": seg.kind,
                                         "signal": seg.signal, "from": seg.v0, "to": seg.v1, "rate": seg.rate,
                                         "duration": _r(seg.duration), "t_start": _r(c.time(seg.at)), "at": _r(seg.at)})
        if step.kind == "acquire":
            by_node: dict[str, list] = {}
            for name in step.signals:
                by_node.setdefault(rig.signals[name].node, []).append(name)
            until = placed.until if placed.until is not None else placed.end
            for node, names in by_node.items():
                table(node)["acquisitions"].append({"step": step.index, "name": step.name, "signals": names,
                                                    "rate": step.sample_rate, "window": _r(placed.duration),
                                                    "t_start": _r(c.time(placed.at)), "at": _r(placed.at),
                                                    "until": _r(until)})
    for wid, wait in c.waits.items():
        if wait["evaluated_by"] != "supervisor":  # a node evaluates its own waits and reports when they hold
            table(wait["evaluated_by"])["waits"].append(wid)
    for entry in exit_steps:
        table(entry["node"])["safe_exit"].append({k: _r(v) for k, v in entry.items() if k != "node"})
    for t in tables.values():
        t["steps"].sort(key=lambda s: (s["t_start"], s["step"]))
        gates = {g for s in t["steps"] + t["acquisitions"] + t["scans"] for g in (*s["at"], *s.get("until", {}))}
        t["gates"] = sorted(gates - {"shot"}, key=lambda g: int(g[1:]))
    return dict(sorted(tables.items()))


def _r(value):
    """Times to the nanosecond: 5.675 rather than 5.675000000000001 in a table meant to be read."""
    if isinstance(value, dict):
        return {k: _r(v) for k, v in value.items()}
    return round(value, 9) if isinstance(value, float) else value


def step_rows(c) -> list[dict]:
    rows = []
    for placed in sorted(c.placed, key=lambda p: (c.time(p.at), p.step.index)):
        step = placed.step
        signals = [step.signal] if step.signal else list(step.signals)
        if step.kind == "step_scan":
            signals += list(step.signals)
        if step.kind == "wait_until":
            signals = list(c.waits[next(iter(placed.end))]["condition"].signals)
        nodes = sorted({c.rig.node_of(s) for s in signals})
        rows.append({"step": step.index, "name": step.name, "kind": step.kind, "where": step.where,
                     "t_start": c.time(placed.at), "t_end": c.time(placed.at) + placed.duration,
                     "nodes": nodes, "signals": signals, "detail": _detail(c, placed)})
    return rows


def _detail(c, placed) -> str:
    step, segs = placed.step, placed.segments
    unit = c.rig.signals[step.signal].unit if step.signal else ""
    if step.kind == "set":
        return f"{segs[0].v0:g} -> {segs[0].v1:g} {unit}".rstrip()
    if step.kind == "ramp":
        rate = f" at {segs[0].rate:g} {unit}/s" if segs[0].rate else ""
        return f"{segs[0].v0:g} -> {segs[0].v1:g} {unit}{rate} ({placed.duration:.3g} s)"
    if step.kind == "pulse":
        edges = f", edges at {segs[0].rate:g} {unit}/s" if segs[0].rate else ""
        return f"{segs[0].v0:g} -> {segs[0].v1:g} {unit} for {step.width * 1000:g} ms and back{edges}"
    if step.kind == "hold":
        return f"{step.duration:g} s" + (f", keeps {', '.join(step.signals)}" if step.signals else "")
    if step.kind == "step_scan":
        return scan_detail(c, placed)
    if step.kind == "wait_until":
        wait = c.waits[next(iter(placed.end))]
        return (f"until {step.condition} (timeout {step.timeout:g} s, expect {step.expect:g} s; "
                f"evaluated by {wait['evaluated_by']})")
    return f"{step.sample_rate:g} Hz for {placed.duration:.3g} s"


def runtime_notes(c) -> list[str]:
    """What the compiler could not prove: interlocks on outputs the plan moves whose condition reads inputs."""
    rig = c.rig
    moved = {seg.signal for p in c.placed for seg in p.segments if seg.v1 != rig.signals[seg.signal].safe}
    local = {name for node in rig.nodes for name in rig.local_interlocks(node)}
    notes = []
    for name, lock in rig.interlocks.items():
        inputs = [s for s in lock.require.signals if s.endswith(".online") or rig.signals[s].direction != "out"]
        if not inputs or not moved & set(lock.outputs):
            continue
        who = f"node {rig.node_of(lock.outputs[0])}'s runtime" if name in local else "the supervisor's guard"
        notes.append(f"interlock {name} ({lock.require.source}) reads {', '.join(inputs)}: not provable before the "
                     f"run; {who} checks it while the plan drives {', '.join(sorted(moved & set(lock.outputs)))}")
    return notes

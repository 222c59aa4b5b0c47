"""The safe exit: what each node runs on its own when the shot is aborted or an interlock trips.

An abort can come at any moment, so the exit starts from wherever the outputs
are: each ramp is a rate (never a duration), checked against the max slew, and
timed for the worst case, the farthest value the plan ever gives that output.
Declared steps (`with tl.safe_exit():`) keep their order across nodes through those
worst-case start times; every output the plan moves and the declaration leaves
away from its safe value then ramps to it at its max slew (a set where no slew
is declared: writing a safe value is never refused), after the outputs that an
interlock reading it protects (RF off before the field goes).
"""
from __future__ import annotations

from labrig.drivers.errors import ConfigError

from .timeline import MAX, Step


def compile_exit(c) -> tuple[list[dict], list[str]]:
    """(exit entries with t_start from the abort, notes); `c` is the compiler after placement."""
    rig, entries, notes = c.rig, [], []
    moved = list(dict.fromkeys(seg.signal for p in c.placed for seg in p.segments))

    def span(step, name: str) -> tuple[float, float]:
        values = [v for p in c.placed for seg in p.segments if seg.signal == name for v in (seg.v0, seg.v1)]
        known = c.start.get(name, c.start_given.get(name, rig.signals[name].safe))
        values += [known] if known is not None else []
        if not values and rig.signals[name].limits is None:
            raise ConfigError(f"{step}: {name} has no safe value, no limits and no planned value: "
                              "the safe exit cannot know where it starts from")
        return (min(values), max(values)) if values else tuple(rig.signals[name].limits)

    def add(step, kind: str, name: str, to: float, rate: float | None, t: float) -> float:
        lo, hi = span(step, name)
        duration = max(abs(lo - to), abs(hi - to)) / rate if rate else 0.0
        for other in (e for e in entries if e["signal"] == name):
            if t < other["t_start"] + other["duration_max"] - 1e-9 and other["t_start"] < t + duration:
                raise ConfigError(f"{step}: the safe exit drives {name} twice at once (with {other['name']!r})")
        entries.append({"step": step.index if isinstance(step, Step) else None, "name": step if isinstance(step, str)
                        else step.name, "kind": kind, "signal": name, "node": rig.signals[name].node, "to": to,
                        "rate": rate, "duration_max": duration, "t_start": t})
        return t + duration

    def item(it, t: float) -> float:
        if isinstance(it, Step):
            if it.kind == "hold":
                return t + it.duration
            spec = c.output(it, it.signal)
            to = c.check_limits(it, it.signal, it.value)
            if it.kind == "set":
                c.check_jump(it, it.signal, max(span(it, it.signal), key=lambda base: abs(base - to)), to)
                return add(it, "set", it.signal, to, None, t)
            if it.duration is not None:
                raise ConfigError(f"{it}: a safe-exit ramp starts from wherever the abort finds {it.signal}: "
                                  "give it a rate=, not a duration=")
            rate = c.check_rate(it, spec, spec.max_slew if it.rate in (None, MAX) else it.rate)
            return add(it, "ramp", it.signal, to, rate, t)
        if it.kind == "serial":
            for child in it.children:
                t = item(child, t + child.delay)
            return t
        return max([item(child, t + child.delay) for child in it.children], default=t)

    item(c.tl.exit, 0.0)
    ends: dict[str, float] = {}
    for name in _protected_first(rig, moved):
        spec = rig.signals[name]
        if spec.safe is None:
            notes.append(f"{name} declares no safe value: the safe exit leaves it where the abort finds it")
            continue
        declared = [e for e in entries if e["signal"] == name]
        last = max(declared, key=lambda e: e["t_start"] + e["duration_max"], default=None)
        if last is not None and last["to"] == spec.safe:
            ends[name] = last["t_start"] + last["duration_max"]
            continue
        t = last["t_start"] + last["duration_max"] if last is not None else 0.0
        # an output that an interlock reads to protect another waits until that one is safe (the field
        # stays until the RF is off): the undeclared ramp-downs never trip an interlock among themselves
        t = max([t] + [ends[o] for o in _guarding(rig, name) if o in ends])
        ends[name] = add(f"{name} to its safe value", "ramp" if spec.max_slew else "set", name, float(spec.safe),
                         spec.max_slew, t)
    return sorted(entries, key=lambda e: e["t_start"]), notes


def _guarding(rig, name: str) -> list[str]:
    """The outputs that interlocks reading `name` protect (they must reach safe before `name` leaves)."""
    return [o for lock in rig.interlocks.values() if name in lock.require.signals for o in lock.outputs if o != name]


def _protected_first(rig, moved: list[str]) -> list[str]:
    """`moved` ordered so that what an interlock protects comes before what it reads (cycles keep plan order)."""
    order, visiting = [], set()

    def visit(name: str) -> None:
        if name in order or name in visiting:
            return
        visiting.add(name)
        for first in _guarding(rig, name):
            if first in moved:
                visit(first)
        visiting.discard(name)
        order.append(name)

    for name in moved:
        visit(name)
    return order


"""The interlock envelope of a plan: what can be proven before it runs, and what cannot.

Proven at compile time (refused with the step, the signal and the condition):
- an interlock that fails along the planned output trajectories, whatever the
  inputs do: a condition on outputs only, or one whose output terms alone make
  it fail. The trajectories are piecewise linear (sets jump, ramps are lines);
  the condition is evaluated on both sides of every breakpoint, at every
  midpoint and wherever a ramp crosses a number the condition names, so a
  condition of `signal op number` terms joined by and/or/not is checked exactly;
  arithmetic between signals is sampled at those points.
- an interlock that reads inputs, when the plan itself waits for them: at the
  instant a wait_until ends its condition holds, so its `signal op number`
  terms bound those inputs; if the interlock then provably fails and the plan
  has, or drives until the next wait, one of its outputs off its safe value,
  the plan is refused (it waits for a state that trips the interlock).
Both run for two timings: every wait met as expected, and every wait running
to its timeout.
- the safe exit (check_safe_exit): started at any instant of the plan (every
  breakpoint, both sides, and every midpoint), from the outputs' values there,
  its declared ramp-downs must not make an interlock fail on the way: a trip in
  the middle of an exit would throw outputs to their safe values at once, which
  is what a declared ramp-down exists to avoid (the coil before the RF, say).
Not provable here (left to the runtime and the guard while the plan runs, and
listed in the plan's notes): anything else that depends on inputs or on
`NODE.online`; inputs between waits drift.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from labrig.drivers.errors import Refused

from .proofs import constants, facts, holds

EPS = 1e-9


@dataclass
class Trajectory:
    """One output's planned value: knots (t, value, step) in time order; sets are two knots at one t."""

    start: float
    knots: list = field(default_factory=list)
    _times: list | None = field(default=None, repr=False)

    def add(self, t: float, value: float, step) -> None:
        self.knots.append((t, value, step))
        self._times = None

    @property
    def times(self) -> list[float]:
        if self._times is None:
            self._times = [k[0] for k in self.knots]
        return self._times

    def value(self, t: float, side: str = "right") -> float:
        times = self.times
        i = (bisect.bisect_right if side == "right" else bisect.bisect_left)(times, t) - 1
        if i < 0:
            return self.start
        t1, v1, _ = self.knots[i]
        if i + 1 == len(self.knots):
            return v1
        t2, v2, _ = self.knots[i + 1]
        return v1 if t2 == t1 else v1 + (v2 - v1) * (t - t1) / (t2 - t1)

    def step_at(self, t: float):
        """The step that last moved this output at or before t."""
        return self.last_change(t)[2]

    def last_change(self, t: float) -> tuple[bool, float, object]:
        """(moving at t, since when, which step): a ramp under way is the one to blame at t."""
        i = bisect.bisect_right(self.times, t) - 1
        if i < 0:
            return (False, -1.0, None)
        if i + 1 < len(self.knots) and self.knots[i + 1][1] != self.knots[i][1]:
            return (True, self.knots[i][0], self.knots[i + 1][2])
        if i > 0 and self.knots[i][0] == t and self.knots[i - 1][1] != self.knots[i][1]:
            return (True, self.knots[i - 1][0], self.knots[i][2])  # a ramp that ends right at t
        return (False, self.knots[i][0], self.knots[i][2])

    def crossings(self, level: float) -> list[float]:
        out = []
        for (t1, v1, _), (t2, v2, _) in zip(self.knots, self.knots[1:]):
            if t2 > t1 and min(v1, v2) < level < max(v1, v2):
                out.append(t1 + (level - v1) * (t2 - t1) / (v2 - v1))
        return out


@dataclass
class Scenario:
    label: str  # "" or " (when every wait runs to its timeout)"
    trajectories: dict  # output -> Trajectory (every output of the rig with a known value)
    waits: list  # (t_end, step, condition source), in time order
    end: float


def check_interlocks(rig, scenario: Scenario) -> None:
    outputs = {n for n, s in rig.signals.items() if s.direction == "out"}
    for name, lock in rig.interlocks.items():
        source = lock.require.source
        mine = [s for s in lock.require.signals if s in scenario.trajectories]
        if mine:
            _along_trajectories(name, lock, mine, scenario)
        if any(s not in outputs for s in lock.require.signals):
            _after_waits(rig, name, lock, source, scenario)


class ExitStep:
    """The safe-exit entry a refusal blames."""

    def __init__(self, entry: dict):
        self.entry = entry

    def __str__(self) -> str:
        e = self.entry
        how = f"ramp at {e['rate']:g}/s" if e["rate"] else "set"
        return f"safe exit step {e['name']!r} ({e['signal']} -> {e['to']:g}, {how})"


def check_safe_exit(rig, scenario: Scenario, entries: list[dict]) -> None:
    """Refuse a plan whose safe exit, run from some instant of `scenario`, provably fails an interlock."""
    locks = [(name, lock, [s for s in lock.require.signals if s in scenario.trajectories])
             for name, lock in rig.interlocks.items()]
    locks = [(name, lock, mine) for name, lock, mine in locks if mine]
    if not locks or not entries:
        return
    trs = scenario.trajectories
    ordered = sorted({0.0, scenario.end} | {k[0] for tr in trs.values() for k in tr.knots})
    instants = sorted(set(ordered) | {(a + b) / 2 for a, b in zip(ordered, ordered[1:])})
    entries = sorted(entries, key=lambda e: e["t_start"])
    seen = set()
    for t_abort in instants:
        for side in ("left", "right"):
            start = {name: tr.value(t_abort, side) for name, tr in trs.items()}
            key = tuple(sorted(start.items()))
            if key in seen:  # the exit depends only on where the outputs are
                continue
            seen.add(key)
            exit_trs, current = {name: Trajectory(v) for name, v in start.items()}, dict(start)
            end = 0.0
            for e in entries:
                if e["signal"] not in exit_trs:
                    continue
                v0, blame = current[e["signal"]], ExitStep(e)
                t1 = e["t_start"] + (abs(v0 - e["to"]) / e["rate"] if e["rate"] else 0.0)
                exit_trs[e["signal"]].add(e["t_start"], v0, blame)
                exit_trs[e["signal"]].add(t1, e["to"], blame)
                current[e["signal"]], end = e["to"], max(end, t1)
            for tr in exit_trs.values():
                tr.knots.sort(key=lambda k: k[0])
            during = Scenario(f" in the safe exit after an abort at t = {t_abort:.3f} s (times from the abort)",
                              exit_trs, [], end)
            for name, lock, mine in locks:
                _along_trajectories(name, lock, mine, during)


def _known(scenario: Scenario, t: float, side: str) -> dict:
    return {n: (v, v) for n, tr in scenario.trajectories.items() for v in [tr.value(t, side)]}


def _along_trajectories(name, lock, mine, scenario: Scenario) -> None:
    trs = [scenario.trajectories[s] for s in mine]
    times = {0.0, scenario.end} | {k[0] for tr in trs for k in tr.knots}
    for level in constants(lock.require.source):
        times |= {t for tr in trs for t in tr.crossings(level)}
    ordered = sorted(times)  # between two of these, every `signal op number` term keeps its truth
    times |= {(a + b) / 2 for a, b in zip(ordered, ordered[1:])}
    for t in sorted(times):
        for side in ("left", "right"):
            if t == 0.0 and side == "left":
                continue
            known = _known(scenario, t, side)
            if holds(lock.require.source, known) is False:
                blame = max((tr.last_change(t) for tr in trs), key=lambda change: change[:2])[2]
                values = ", ".join(f"{s} = {known[s][0]:g}" for s in mine)
                who = f"{blame} at t = {t:.3f} s" if blame else "the plan's start state"
                raise Refused(f"{who}: interlock {name} requires {lock.require.source}"
                              f"{_described(lock)}; the plan has {values} there{scenario.label}; "
                              f"the runtime would trip it and drive {', '.join(lock.outputs)} safe")


def _after_waits(rig, name, lock, source, scenario: Scenario) -> None:
    for i, (t_end, wait, condition) in enumerate(scenario.waits):
        known = _known(scenario, t_end, "right")
        pinned = facts(condition)
        known.update({k: v for k, v in pinned.items() if k not in scenario.trajectories})
        if not set(pinned) & set(lock.require.signals) or holds(source, known) is not False:
            continue
        until = scenario.waits[i + 1][0] if i + 1 < len(scenario.waits) else scenario.end + EPS
        driven = _driven(rig, lock, scenario, t_end, until)
        if driven:
            raise Refused(f"{driven}: interlock {name} requires {source}{_described(lock)}, which cannot hold once "
                          f"{wait} has seen {condition}{scenario.label}; the plan drives {driven.signal} "
                          f"regardless: the runtime would trip it and drive {', '.join(lock.outputs)} safe")


def _driven(rig, lock, scenario: Scenario, t0: float, t1: float):
    """The first step that has one of the interlock's outputs off its safe value within [t0, t1)."""
    for out in lock.outputs:
        tr, safe = scenario.trajectories.get(out), rig.signals[out].safe
        if tr is None or safe is None:
            continue
        if tr.value(t0) != safe and tr.step_at(t0) is not None:
            return tr.step_at(t0)
        for t, value, step in tr.knots:
            if t0 <= t < t1 and value != safe:
                return step
    return None


def _described(lock) -> str:
    return f" ({lock.description})" if lock.description else ""


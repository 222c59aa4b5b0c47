"""The compiler: a Timeline checked against a rig, placed in time, split into per-node step tables.

Every step is checked before anything runs (nothing runs half-checked): each
signal against the rig (with close matches), each value against the signal's
limits, each write against its slew (a direct write may move an output by at most
max_slew x 50 ms, as the node runtime allows; larger moves are ramps at up to
max_slew), the interlock envelope (checks.py), and steps on one signal may not
overlap. The first problem raises ConfigError (names, structure), RangeError
(limits, slew) or Refused (interlocks), naming the step, the signal and the limit.

Times. A wait_until ends when its condition holds, so a step's start is written
`at = {gate: offset}`: it starts at the latest of (that gate's end + offset) over
its gates, "shot" being the common start time t = 0 and "w1", "w2"... the waits.
Nominal times (`t_start`) take every wait as its `expect`; the plan is also checked
with every wait running to its timeout.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from labrig.drivers.errors import ConfigError, RangeError
from labrig.supervisor.rig import Rig, compile_condition

from .checks import EPS, Scenario, Trajectory, check_interlocks, check_safe_exit
from .exits import compile_exit
from .plan import Plan
from .scans import place_scan
from .sequence import source_hash
from .timeline import MAX, Step, Timeline

STEP_TIME = 0.05  # s: as supervisor/runtime/envelope.py STEP_TIME (a test keeps them equal)
MAX_ACQUIRE_RATE = 10_000.0  # Hz: the rig schema's highest telemetry rate
NOMINAL, LATE = "nominal", "late"


@dataclass
class Segment:
    """A primitive setpoint move a node executes: a set or a ramp, from a start `at` gates."""
    step: Step
    kind: str
    signal: str
    at: dict
    v0: float
    v1: float
    duration: float = 0.0
    rate: float | None = None


@dataclass
class Placed:
    step: Step
    at: dict
    end: dict
    segments: list = field(default_factory=list)
    busy: tuple = ()  # outputs this step owns while it runs
    duration: float = 0.0
    until: dict | None = None  # acquire without a window: the end of its block


def compile_timeline(tl: Timeline, rig: Rig | str | Path, *, start: dict | None = None) -> Plan:
    if not isinstance(rig, Rig):
        rig = Rig.load(rig)
    return _Compiler(tl, rig, start or {}).run()


class _Compiler:
    def __init__(self, tl: Timeline, rig: Rig, start: dict):
        self.tl, self.rig, self.start_given = tl, rig, dict(start)
        for name in start:
            rig_output(rig, name, "start=")
        self.start: dict[str, float] = {}
        self.level: dict[str, float] = {}  # each output's planned value after its latest step
        self.busy: dict[str, list[Placed]] = {}
        self.placed: list[Placed] = []
        self.ends: dict[int, dict] = {}
        self.waits: dict[str, dict] = {}
        self.gate_ends = {NOMINAL: {"shot": 0.0}, LATE: {"shot": 0.0}}

    # ---------------------------------------------------------------- time algebra
    def time(self, at: dict, scenario: str = NOMINAL) -> float:
        return max(self.gate_ends[scenario][gate] + offset for gate, offset in at.items())

    def _lower(self, gate: str, other: str) -> float:
        """A lower bound of end(gate) - end(other)."""
        if gate == other:
            return 0.0
        if gate == "shot":
            return -math.inf
        return max(offset + self._lower(g, other) for g, offset in self.waits[gate]["at"].items())

    def prune(self, at: dict) -> dict:
        """Drop gates another gate of the same start always follows."""
        return {g: o for g, o in at.items()
                if not any(h != g and at[h] + self._lower(h, g) >= o for h in at)} or at

    # ---------------------------------------------------------------- placement
    def run(self) -> Plan:
        end = self.item(self.tl.root, {"shot": 0.0})
        self.check_late_order()
        duration, duration_max = self.time(end), self.time(end, LATE)
        for scenario, label in ((NOMINAL, ""), (LATE, " (when every wait runs to its timeout)")):
            check_interlocks(self.rig, Scenario(label, self.trajectories(scenario), self.wait_ends(scenario),
                                                self.time(end, scenario)))
        exit_steps, exit_notes = compile_exit(self)
        check_safe_exit(self.rig, Scenario("", self.trajectories(NOMINAL), [], duration), exit_steps)
        return Plan.build(self, duration, duration_max, exit_steps, exit_notes)

    def item(self, item, at: dict) -> dict:
        if isinstance(item, Step):
            end = self.place(item, at)
        elif item.kind == "serial":
            cursor, branches = at, []
            for child in item.children:
                child_end = self.item(child, self.start_of(child, cursor))
                if child.anchor:
                    branches.append(child_end)
                else:
                    cursor = child_end
            end = join(cursor, *branches)
        else:
            open_ended = [c for c in item.children if isinstance(c, Step) and c.kind == "acquire" and c.window is None]
            end = join(at, *(self.item(c, self.start_of(c, at)) for c in item.children if c not in open_ended))
            for child in open_ended:
                self.ends[id(child)] = self.place(child, self.start_of(child, at), until=end)
        end = self.prune(end)
        self.ends[id(item)] = end
        return end

    def start_of(self, child, cursor: dict) -> dict:
        base = cursor
        if child.anchor and child.anchor[0] == "at":
            base = {"shot": child.anchor[1]}
        elif child.anchor:
            target = child.anchor[1]
            if id(target) not in self.ends:
                raise ConfigError(f"{child}: after={target} is not possible: it has not ended where {child} "
                                  "is declared (it encloses it, or belongs to another timeline)")
            base = self.ends[id(target)]
        return self.prune(shift(base, child.delay))

    def place(self, step: Step, at: dict, *, until: dict | None = None) -> dict:
        placed = Placed(step, at, at)
        kind = step.kind
        if kind == "wait_until":
            self.wait(step, placed)
        elif kind == "acquire":
            self.acquire(step, placed, until)
        elif kind == "step_scan":
            place_scan(self, step, placed)
        elif kind == "hold":
            for name in step.signals:
                rig_output(self.rig, name, step)
                self.check_free(name, placed)
            placed.busy, placed.duration = step.signals, step.duration
        else:
            self.write(step, placed)
        if kind != "wait_until":
            placed.end = self.prune(until if until is not None else shift(at, placed.duration))
        for signal in placed.busy:
            self.value_before(step, signal)
            self.busy.setdefault(signal, []).append(placed)
        self.placed.append(placed)
        return placed.end

    def write(self, step: Step, placed: Placed) -> None:
        """set, ramp, pulse: the segments they write, each checked against limits and slew."""
        spec = rig_output(self.rig, step.signal, step)
        name, target = step.signal, self.check_limits(step, step.signal, step.value)
        self.check_free(name, placed)
        base = self.value_before(step, name)
        if step.kind == "set":
            self.check_jump(step, name, base, target)
            placed.segments = [Segment(step, "set", name, placed.at, base, target)]
        elif step.kind == "ramp":
            rate, duration = self.ramp_rate(step, base, target)
            placed.segments = [Segment(step, "ramp", name, placed.at, base, target, duration, rate)]
            placed.duration = duration
        else:  # pulse: up, hold `width`, back to where it was
            if step.rate is None:
                self.check_jump(step, name, base, target)
                self.check_jump(step, name, target, base)
                rise, rate = 0.0, None
            else:
                rate = self.check_rate(step, spec, spec.max_slew if step.rate == MAX else step.rate)
                rise = abs(target - base) / rate
            kind = "set" if rate is None else "ramp"
            placed.segments = [Segment(step, kind, name, placed.at, base, target, rise, rate),
                               Segment(step, kind, name, shift(placed.at, rise + step.width), target, base, rise, rate)]
            placed.duration = 2 * rise + step.width
        placed.busy = (name,)
        self.level[name] = placed.segments[-1].v1

    def ramp_rate(self, step: Step, base: float, target: float) -> tuple[float | None, float]:
        spec = self.rig.signals[step.signal]
        if step.duration is not None:
            rate = abs(target - base) / step.duration
            if spec.max_slew is not None and rate > spec.max_slew * (1 + EPS):
                raise RangeError(f"{step}: ramping {step.signal} from {base:g} to {target:g} {spec.unit} in "
                                 f"{step.duration:g} s needs {rate:g} {spec.unit}/s, above its max slew "
                                 f"{spec.max_slew:g} {spec.unit}/s; it takes at least "
                                 f"{abs(target - base) / spec.max_slew:g} s")
            return (rate or None), step.duration
        rate = spec.max_slew if step.rate in (None, MAX) else step.rate
        if rate is None:
            raise ConfigError(f"{step}: {step.signal} declares no max slew; give the ramp a rate= or duration=")
        rate = self.check_rate(step, spec, rate)
        return rate, abs(target - base) / rate

    def check_rate(self, step: Step, spec, rate: float | None) -> float:
        if rate is None:
            raise ConfigError(f"{step}: {step.signal} declares no max slew; give a numeric rate=")
        if spec.max_slew is not None and rate > spec.max_slew * (1 + EPS):
            raise RangeError(f"{step}: {step.signal} ramp rate {rate:g} {spec.unit}/s exceeds its max slew "
                             f"{spec.max_slew:g} {spec.unit}/s")
        return rate

    def check_limits(self, step, name: str, value: float) -> float:
        spec = self.rig.signals[name]
        if spec.limits is not None and not spec.limits[0] <= value <= spec.limits[1]:
            raise RangeError(f"{step}: {name} = {value:g} {spec.unit} is outside its limits "
                             f"[{spec.limits[0]:g}, {spec.limits[1]:g}] {spec.unit}".rstrip())
        return value

    def check_jump(self, step, name: str, base: float, target: float) -> None:
        """A direct write moves an output by at most max_slew x STEP_TIME, unless to its safe value."""
        spec = self.rig.signals[name]
        if spec.max_slew is None or target == spec.safe:
            return
        largest = spec.max_slew * STEP_TIME
        if abs(target - base) > largest * (1 + EPS):
            raise RangeError(f"{step}: {name} would jump from {base:g} to {target:g} {spec.unit}, a step of "
                             f"{abs(target - base):g} {spec.unit}; its max slew {spec.max_slew:g} {spec.unit}/s allows "
                             f"direct steps of {largest:g} {spec.unit} ({STEP_TIME * 1000:g} ms at full slew). "
                             f"Ramp it instead: tl.ramp({name!r}, {target:g}, rate<={spec.max_slew:g})"
                             + (" (or pulse(..., rate='max'))" if step.kind == "pulse" else ""))

    def value_before(self, step: Step, name: str) -> float:
        if name not in self.level:
            if name in self.start_given:
                value = float(self.start_given[name])
            elif self.rig.signals[name].safe is not None:
                value = float(self.rig.signals[name].safe)
            else:
                raise ConfigError(f"{step}: {name} declares no safe value to start from; give its present value: "
                                  f"compile(rig, start={{{name!r}: ...}})")
            self.start[name] = self.level[name] = value
        return self.level[name]

    def check_free(self, signal: str, placed: Placed) -> None:
        """Steps on one output run one at a time, declared in time order (their start values chain)."""
        a = self.time(placed.at)
        for other in self.busy.get(signal, [])[-1:]:  # in order and apart, so the last one decides
            c = self.time(other.at)
            d = c + other.duration
            if a < c - EPS:
                raise ConfigError(f"{placed.step} starts at {a:g} s, before {other.step} (at {c:g} s) on {signal}, "
                                  "which is declared earlier: declare the steps on one signal in time order")
            if a < d - EPS:  # two instantaneous writes at one time run in the order declared
                raise ConfigError(f"{placed.step} and {other.step} both drive {signal} at {a:g} s "
                                  f"({other.step.name!r} runs until {d:g} s): one output takes one step at a time")

    def check_late_order(self) -> None:
        for signal, entries in self.busy.items():
            for first, second in zip(entries, entries[1:]):
                if self.time(second.at, LATE) < self.time(first.at, LATE) + first.duration - EPS:
                    raise ConfigError(f"{second.step} and {first.step} both drive {signal} when the waits run to "
                                      f"their timeouts: start {second.step.name!r} after the wait, or after= the "
                                      "other step")

    def wait(self, step: Step, placed: Placed) -> None:
        try:
            condition = compile_condition(step.condition)
            nodes = {self.rig.node_of(s) for s in condition.signals}
        except ConfigError as exc:
            raise ConfigError(f"{step}: {exc}") from None
        wid = f"w{len(self.waits) + 1}"
        local = len(nodes) == 1 and not any(s.endswith(".online") for s in condition.signals)
        self.waits[wid] = {"id": wid, "step": step, "at": placed.at, "condition": condition,
                           "evaluated_by": next(iter(nodes)) if local else "supervisor"}
        self.gate_ends[NOMINAL][wid] = self.time(placed.at) + step.expect
        self.gate_ends[LATE][wid] = self.time(placed.at, LATE) + step.timeout
        placed.end, placed.duration = {wid: 0.0}, step.expect

    def acquire(self, step: Step, placed: Placed, until: dict | None) -> None:
        for name in step.signals:
            rig_signal(self.rig, name, step)
        if step.sample_rate > MAX_ACQUIRE_RATE:
            raise RangeError(f"{step}: rate {step.sample_rate:g} Hz for {', '.join(step.signals)} exceeds "
                             f"{MAX_ACQUIRE_RATE:g} Hz, the highest rate a rig signal may declare")
        if step.window is None and until is None:
            raise ConfigError(f"{step}: an acquisition without a window= lasts as long as the parallel block it is "
                              "in; it must be a direct child of tl.parallel()")
        placed.duration = step.window if until is None else self.time(until) - self.time(placed.at)
        placed.until = until

    def output(self, step, name: str):
        return rig_output(self.rig, name, step)

    # ---------------------------------------------------------------- results
    def trajectories(self, scenario: str) -> dict[str, Trajectory]:
        """Every output with a known value: the ones the plan moves, the others at their start value."""
        out = {}
        for name, spec in self.rig.signals.items():
            if spec.direction != "out":
                continue
            value = self.start.get(name, self.start_given.get(name, spec.safe))
            if value is None:
                continue
            out[name] = Trajectory(float(value))
        for placed in sorted(self.placed, key=lambda p: self.time(p.at, scenario)):
            for seg in placed.segments:
                t = self.time(seg.at, scenario)
                out[seg.signal].add(t, seg.v0, placed.step)
                out[seg.signal].add(t + seg.duration, seg.v1, placed.step)
        for tr in out.values():
            tr.knots.sort(key=lambda k: k[0])  # stable: a set's two knots keep their order
        return out

    def wait_ends(self, scenario: str) -> list:
        ends = [(self.gate_ends[scenario][wid], w["step"], w["condition"].source) for wid, w in self.waits.items()]
        return sorted(ends, key=lambda e: e[0])

    def hash(self) -> str:
        steps = "" if self.tl.source else repr([(s.kind, s.name, s.signal, s.value, s.rate, s.duration, s.width,
                                                  s.signals, s.condition, s.timeout, s.sample_rate, s.window,
                                                  s.delay) + ((s.points, s.deadline, s.on_late) if s.points else ())
                                                 for s in self.tl.steps])
        return source_hash(self.tl.name, self.tl.source, self.tl.params, steps)


def rig_signal(rig: Rig, name: str, step):
    try:
        return rig.signal(name)
    except ConfigError as exc:
        raise ConfigError(f"{step}: {exc}") from None


def rig_output(rig: Rig, name: str, step):
    spec = rig_signal(rig, name, step)
    if spec.direction != "out":
        outputs = [n for n, s in rig.signals.items() if s.direction == "out"]
        raise ConfigError(f"{step}: {name} is an input of node {spec.node}; only outputs are written or held "
                          f"(outputs: {', '.join(outputs)})")
    return spec


def shift(at: dict, dt: float) -> dict:
    return {gate: offset + dt for gate, offset in at.items()}


def join(*ats: dict) -> dict:
    out: dict = {}
    for at in ats:
        for gate, offset in at.items():
            out[gate] = max(out.get(gate, -math.inf), offset)
    return out

"""The timeline a sequence describes: steps on signals, placed in time.

    tl = Timeline("warm-up")
    tl.set("rf_enable", 1)
    tl.ramp("gas_flow", 20)                      # at the signal's max slew
    tl.wait_until("pressure > 0.3", timeout=3)
    with tl.parallel():
        tl.acquire(["langmuir_I"], rate=1000)    # for as long as the rest of the block
        tl.ramp("rf_power", 600, rate=200)
        tl.pulse("gas_flow", 25, width=0.05, delay=1.0)
    tl.step_scan("gas_flow", [20, 20.1, 20.2], read=("door_switch",), rate=1000)  # set, acked, read, next
    with tl.safe_exit():
        tl.ramp("rf_power", 0)

Placement: steps run one after the other (the cursor moves to each step's end);
the children of `parallel()` all start together and the block ends with the
last; anything anchored with `at=t` (seconds from the shot start, t = 0) or
`after=step` (its end), as a step option or a `with tl.at(t)` / `with
tl.after(step)` block, is a branch: it runs beside the main line and does not move
its cursor. `delay=` shifts any step or block. Values are checked here only for
being numbers; signals, limits and slew are the compiler's (compile.py), which
knows the rig.
"""
from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence as Seq

from labrig.drivers.errors import ConfigError, RangeError

MAX = "max"  # rate="max": the signal's declared max slew


@dataclass(eq=False)
class Step:
    index: int
    kind: str  # set | ramp | pulse | hold | wait_until | acquire | step_scan
    name: str
    where: str = ""  # file:line of the call, so a refusal points at the notebook line
    signal: str = ""  # set, ramp, pulse
    value: float | None = None  # the target of set, ramp and pulse
    rate: float | str | None = None  # ramp and pulse edges, unit/s or MAX
    duration: float | None = None  # ramp (instead of a rate), hold
    width: float | None = None  # pulse
    signals: tuple[str, ...] = ()  # hold (outputs kept), acquire (signals read)
    condition: str = ""  # wait_until
    timeout: float | None = None
    expect: float = 0.0  # wait_until: how long it usually takes (for the duration estimate)
    sample_rate: float | None = None  # acquire, Hz
    window: float | None = None  # acquire, s; None: as long as its parallel block
    anchor: tuple | None = None  # ("at", t) or ("after", step or block)
    delay: float = 0.0
    points: tuple[float, ...] = ()  # step_scan: the values set, one per point (sample_rate: points/s)
    deadline: float | None = None  # step_scan: s from a point's due time to its last read; None: 1/rate
    on_late: str = "record"  # step_scan: "record" a point past its deadline, or "fail" the shot there

    def __str__(self) -> str:
        return f"step {self.index} '{self.name}'" + (f" ({self.where})" if self.where else "")


@dataclass(eq=False)
class Block:
    kind: str  # serial | parallel
    name: str = ""
    children: list = field(default_factory=list)
    anchor: tuple | None = None
    delay: float = 0.0

    def __str__(self) -> str:
        return f"{self.kind} block{f' {self.name!r}' if self.name else ''}"


class Timeline:
    """A sequence's steps; `compile(rig)` checks them against the rig and returns a Plan."""

    def __init__(self, name: str = "timeline", *, params: dict | None = None, source: str = "",
                 units: dict | None = None):
        self.name = name
        self.params = dict(params or {})
        self.units = dict(units or {})
        self.source = source
        self.root = Block("serial", name)
        self.exit = Block("serial", "safe exit")
        self.steps: list[Step] = []
        self._stack = [self.root]

    def __repr__(self) -> str:
        return f"<Timeline {self.name}: {len(self.steps)} steps; .compile(rig) checks it>"

    @property
    def in_exit(self) -> bool:
        return self._stack[0] is self.exit

    # ---------------------------------------------------------------- steps
    def set(self, signal: str, value: float, *, at=None, after=None, delay: float = 0.0, name: str = "") -> Step:
        """Write `value` at once. Limited by the rig to a max_slew x 50 ms step: larger moves are ramps."""
        return self._add("set", name or f"set {signal}", at, after, delay, signal=signal,
                         value=_number(value, "value", signal))

    def ramp(self, signal: str, to: float, *, rate: float | str | None = None, duration: float | None = None,
             at=None, after=None, delay: float = 0.0, name: str = "") -> Step:
        """Move to `to` at `rate` (unit/s; default the signal's max slew) or over `duration` s."""
        if rate is not None and duration is not None:
            raise ConfigError(f"ramp {signal}: give rate= or duration=, not both")
        return self._add("ramp", name or f"ramp {signal}", at, after, delay, signal=signal,
                         value=_number(to, "target", signal), rate=_rate(rate, signal),
                         duration=_positive(duration, "duration", signal))

    def pulse(self, signal: str, value: float, width: float, *, rate: float | str | None = None,
              at=None, after=None, delay: float = 0.0, name: str = "") -> Step:
        """Go to `value`, stay `width` s, come back. Edges are steps, or ramps at `rate` (MAX: max slew)."""
        return self._add("pulse", name or f"pulse {signal}", at, after, delay, signal=signal,
                         value=_number(value, "value", signal), width=_positive(width, "width", signal),
                         rate=_rate(rate, signal))

    def hold(self, duration: float, *signals: str, at=None, after=None, delay: float = 0.0, name: str = "") -> Step:
        """Wait `duration` s; named outputs are kept: no other step may move them meanwhile."""
        return self._add("hold", name or (f"hold {', '.join(signals)}" if signals else "hold"), at, after, delay,
                         duration=_positive(duration, "duration", "hold"), signals=tuple(signals))

    def wait_until(self, condition: str, *, timeout: float, expect: float = 0.0, at=None, after=None,
                   delay: float = 0.0, name: str = "") -> Step:
        """Wait for a condition on signals (the rig's condition language); no hold after `timeout` s aborts
        the shot. Later steps start when it holds. `expect`: the usual wait, for the duration estimate."""
        if not isinstance(condition, str) or not condition.strip():
            raise ConfigError(f"wait_until: the condition must be a non-empty string (got {condition!r})")
        timeout = _positive(timeout, "timeout", "wait_until")
        if timeout is None:
            raise ConfigError(f"wait_until {condition!r}: a timeout is required")
        expect = _number(expect, "expect", "wait_until")
        if not 0 <= expect <= timeout:
            raise RangeError(f"wait_until {condition!r}: expect={expect:g} s must be within [0, timeout={timeout:g}] s")
        return self._add("wait_until", name or f"wait_until {condition.strip()}", at, after, delay,
                         condition=condition.strip(), timeout=timeout, expect=expect)

    def acquire(self, signals: str | Seq[str], *, rate: float, window: float | None = None, at=None, after=None,
                delay: float = 0.0, name: str = "") -> Step:
        """Record `signals` at `rate` Hz for `window` s; without a window, for as long as the rest of the
        parallel block it is in."""
        signals = (signals,) if isinstance(signals, str) else tuple(signals)
        if not signals:
            raise ConfigError("acquire: name at least one signal")
        return self._add("acquire", name or f"acquire {', '.join(signals)}", at, after, delay, signals=signals,
                         sample_rate=_positive(rate, "rate", "acquire"), window=_positive(window, "window", "acquire"))

    def step_scan(self, signal: str, values: Seq[float], *, read: str | Seq[str], rate: float,
                  deadline: float | None = None, on_late: str = "record", at=None, after=None, delay: float = 0.0,
                  name: str = "") -> Step:
        """For each value, at `rate` points/s: set `signal`, wait for the device to acknowledge it, read
        the `read` signals once, record the point. The node runs the whole scan itself (its output and
        reads on that one node). Point i is due at i/rate s from the step's start and must have its
        reads by `deadline` s later (default: 1/rate); a point past it is recorded in the shot and
        the node's audit ("record") or stops the shot there ("fail"). Points are never skipped.

        The shot gets each read signal's values (t: when read), `SIGNAL:set` (t: when the set was
        acknowledged) and, for late points only, `SIGNAL:late` (s past the deadline)."""
        points = tuple(_number(v, "value", f"step_scan {signal}") for v in values)
        if not points:
            raise ConfigError(f"step_scan {signal}: give at least one value")
        read = (read,) if isinstance(read, str) else tuple(read)
        if not read or not all(isinstance(r, str) and r for r in read):
            raise ConfigError(f"step_scan {signal}: read= names the signals read at each point (got {read!r})")
        if len(set(read)) != len(read):
            raise ConfigError(f"step_scan {signal}: read= names {read!r}; each signal once")
        if on_late not in ("record", "fail"):
            raise ConfigError(f"step_scan {signal}: on_late={on_late!r}; allowed: 'record' (go on, recorded) or "
                              "'fail' (stop the shot at the first late point)")
        rate = _positive(rate, "rate", f"step_scan {signal}")
        if rate is None:
            raise ConfigError(f"step_scan {signal}: rate= (points per second) is required")
        return self._add("step_scan", name or f"step_scan {signal}", at, after, delay, signal=signal,
                         value=points[-1], points=points, signals=read, sample_rate=rate,
                         duration=len(points) / rate, deadline=_positive(deadline, "deadline", f"step_scan {signal}"),
                         on_late=on_late)

    # ---------------------------------------------------------------- composition
    @contextlib.contextmanager
    def parallel(self, *, at=None, after=None, delay: float = 0.0, name: str = "") -> Iterator[Block]:
        """Every step (or serial block) inside starts together; the block ends with the last."""
        with self._block("parallel", at, after, delay, name) as block:
            yield block

    @contextlib.contextmanager
    def serial(self, *, at=None, after=None, delay: float = 0.0, name: str = "") -> Iterator[Block]:
        """Steps inside run one after another (a branch of a parallel block, usually)."""
        with self._block("serial", at, after, delay, name) as block:
            yield block

    def at(self, t: float, *, name: str = ""):
        """A branch starting `t` s after the shot start; it does not move the main line."""
        return self.serial(at=t, name=name)

    def after(self, target, *, delay: float = 0.0, name: str = ""):
        """A branch starting when `target` (a step or block) ends, plus `delay`."""
        return self.serial(after=target, delay=delay, name=name)

    @contextlib.contextmanager
    def safe_exit(self) -> Iterator[Block]:
        """Declare the ramp-downs that an abort or a trip runs, on the nodes themselves, from wherever the
        outputs are then. Outputs the sequence moves and this leaves out ramp to their safe value at max slew."""
        if len(self._stack) != 1 or self.in_exit:
            raise ConfigError("safe_exit(): declare it at the top level of the sequence, not inside a block")
        saved, self._stack = self._stack, [self.exit]
        try:
            yield self.exit
        finally:
            self._stack = saved

    # ---------------------------------------------------------------- checking
    def compile(self, rig, *, start: dict | None = None):
        """Check every step against the rig; a Plan, or an error naming the step, the signal and the limit."""
        from .compile import compile_timeline
        return compile_timeline(self, rig, start=start)

    def dry_run(self, rig, *, start: dict | None = None, path: str | Path | None = None):
        """Compile, print the plan, draw the timeline (saved to `path` if given); nothing touches hardware."""
        plan = self.compile(rig, start=start)
        print(plan.summary())
        return plan.plot(path)

    # ---------------------------------------------------------------- internals
    @contextlib.contextmanager
    def _block(self, kind, at, after, delay, name):
        block = Block(kind, name, anchor=self._anchor(at, after, kind), delay=_number(delay, "delay", kind))
        if block.delay < 0:
            raise RangeError(f"{kind} block: delay={block.delay:g} s must not be negative")
        if self.in_exit and block.anchor:
            raise ConfigError(f"safe exit: {kind} blocks there run from the abort; at=/after= do not apply")
        self._stack[-1].children.append(block)
        self._stack.append(block)
        try:
            yield block
        finally:
            self._stack.pop()

    def _add(self, kind, name, at, after, delay, **fields) -> Step:
        if self.in_exit and kind not in ("set", "ramp", "hold"):
            raise ConfigError(f"safe exit: only set, ramp and hold run there (not {kind}): it must run without "
                              "the supervisor")
        if self.in_exit and (at is not None or after is not None):
            raise ConfigError(f"safe exit: {name} runs from the abort; at=/after= do not apply")
        delay = _number(delay, "delay", name)
        if delay < 0:
            raise RangeError(f"{name}: delay={delay:g} s must not be negative")
        step = Step(len(self.steps) + 1, kind, name, _caller(), anchor=self._anchor(at, after, name),
                    delay=delay, **fields)
        self.steps.append(step)
        self._stack[-1].children.append(step)
        return step

    def _anchor(self, at, after, what) -> tuple | None:
        if at is not None and after is not None:
            raise ConfigError(f"{what}: give at= or after=, not both")
        if at is not None:
            at = _number(at, "at", what)
            if at < 0:
                raise RangeError(f"{what}: at={at:g} s is before the shot start (t = 0)")
            return ("at", at)
        if after is not None:
            if not isinstance(after, (Step, Block)):
                raise ConfigError(f"{what}: after= takes a step or a block of this timeline (got {after!r})")
            return ("after", after)
        return None


def _number(value: Any, what: str, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise RangeError(f"{owner}: {what} {value!r} is not a number")
    value = float(value)
    if not math.isfinite(value):
        raise RangeError(f"{owner}: {what} {value} is not a finite number")
    return value


def _positive(value, what: str, owner: str) -> float | None:
    if value is None:
        return None
    value = _number(value, what, owner)
    if value <= 0:
        raise RangeError(f"{owner}: {what} must be positive (got {value:g})")
    return value


def _rate(rate, owner: str) -> float | str | None:
    return rate if rate is None or rate == MAX else _positive(rate, "rate", owner)


def _caller() -> str:
    """file:line of the code that declared the step (the first frame outside this module and contextlib)."""
    frame = sys._getframe(1)
    while frame and frame.f_code.co_filename in (__file__, contextlib.__file__):
        frame = frame.f_back
    return f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno}" if frame else ""

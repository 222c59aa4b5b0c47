"""Software PID control loops, run by the node runtime next to the hardware.

`Pid` is the controller alone: arithmetic, no I/O, no clock, so it is tested on its own.
`LoopEngine` runs every loop of the node (`[loops.NAME]` in the rig file) on ONE timing
thread of the runtime process. A kernel is another process (DESIGN decision 1), so a busy
cell cannot delay a tick; inside the runtime the other threads only do short bursts of
Python between I/O waits, and the engine lowers the GIL switch interval so that none of
them can hold the loop off for longer than a fraction of its period.

Each tick reads `measure` and writes `actuate` through the runtime's driver, after the
same checks as any write (envelope limits and step, interlocks). In manual mode a loop
does no I/O at all: the actuator is the operator's (writes, ramps). In auto mode the
actuator is the loop's: writes and ramps to it are refused.

A reading that fails, is not a number, or lies beyond its signal's limits (by more than
LIMIT_MARGIN of their span: a detector at its rail) is not used: the output holds. After
STALE_TICKS such ticks in a row the loop switches to manual, drives its actuator to its
safe value and latches a trip "loop:NAME" (layer "loop") through the runtime's trip path;
it re-arms once the input reads valid again. A stuck sensor is caught when the loop
declares `stale_after`: a reading that has not moved at all for that long (real
detectors and ADCs always show some noise) counts as unusable too, and the re-arm then
wants a different reading. Without `stale_after`, a value stuck at a plausible level
cannot be told from a steady process, and is not detected.
"""
from __future__ import annotations

import ctypes
import difflib
import math
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from labrig.drivers.errors import ConfigError, LabrigError, RangeError, Refused

from .envelope import STEP_TIME
from .interlocks import Trip

if TYPE_CHECKING:
    from ..rig.schema import LoopSpec, SignalSpec

MODES = ("manual", "auto")
STALE_TICKS = 3       # consecutive unusable inputs (or failed writes) before a loop trips
LIMIT_MARGIN = 0.05   # of the measure's limit span: readings further out are a railed detector
MAX_DT_PERIODS = 5    # a late tick integrates at most this many periods
KEEP = 16384          # ticks of timing kept per loop (16 s at 1 kHz)
SETTINGS = ("kp", "ki", "kd", "setpoint", "mode", "output")


def _clamp(value: float, lo: float, hi: float) -> float:
    return min(max(value, lo), hi)


class Pid:
    """A PID controller: `output = pid.update(measurement, dt)`.

    Positional form with the integral kept in output units, so gains can change live
    without a bump. Derivative on the measurement (a setpoint step gives no kick).
    Anti-windup by conditional integration: while the error pushes the output past a limit,
    the integral grows only as far as that limit needs, never beyond.
    `output_rate` (unit/s) and `max_step` (unit per update) bound how fast the output
    moves; `setpoint_rate` (unit/s) how fast the working setpoint follows `setpoint`.
    A NaN measurement holds the output and counts in `invalid` (consecutive ones).
    Manual -> auto is bumpless: the first auto update returns the output as it was and
    sets the integral so that the next ones continue from it.
    """

    def __init__(self, kp: float = 0.0, ki: float = 0.0, kd: float = 0.0, *, setpoint: float = 0.0,
                 output_limits: tuple[float, float] | None = None, setpoint_rate: float | None = None,
                 output_rate: float | None = None, max_step: float | None = None, output: float = 0.0,
                 mode: str = "manual"):
        self.kp = self.ki = self.kd = 0.0
        self.mode, self._transfer = "manual", False
        self.last_error: float | None = None
        self.set_gains(kp=kp, ki=ki, kd=kd)
        self.lo, self.hi = output_limits if output_limits is not None else (-math.inf, math.inf)
        if not self.lo < self.hi:
            raise RangeError(f"output limits must be [low, high] with low < high (got {list(output_limits)})")
        self.setpoint = float(setpoint)  # what was asked
        self.working = float(setpoint)   # what is regulated to now (follows setpoint at setpoint_rate)
        self.setpoint_rate = setpoint_rate
        self.output_rate = output_rate
        self.max_step = max_step
        self.output = float(output)
        self.integral = 0.0
        self.last_measurement: float | None = None
        self.invalid = 0
        if mode == "auto":
            self.auto()
        elif mode != "manual":
            raise ConfigError(f"mode {mode!r}; allowed: {', '.join(MODES)}")

    def set_gains(self, *, kp: float | None = None, ki: float | None = None, kd: float | None = None) -> None:
        new = {"kp": self.kp if kp is None else kp, "ki": self.ki if ki is None else ki,
               "kd": self.kd if kd is None else kd}
        for name, value in new.items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise RangeError(f"{name} = {value!r}: gains are finite numbers >= 0")
        if self.mode == "auto" and self.last_error is not None:
            # keep the output continuous: the integral takes up the change of the P term
            self.integral += (self.kp - new["kp"]) * self.last_error
        self.kp, self.ki, self.kd = (float(new[k]) for k in ("kp", "ki", "kd"))

    def manual(self, output: float | None = None) -> None:
        self.mode = "manual"
        if output is not None:
            self.output = float(output)

    def auto(self) -> None:
        if self.mode != "auto":
            self.mode = "auto"
            self._transfer = True

    def update(self, measurement: float | None, dt: float) -> float:
        if measurement is None or not math.isfinite(measurement):
            self.invalid += 1
            return self.output  # hold: nothing is learnt from a value that is not one
        self.invalid = 0
        if self.mode != "auto":
            self.last_measurement = measurement
            return self.output
        if self._transfer:
            self._transfer = False
            # a rate-limited setpoint starts from where the process is; the integral from the output
            self.working = measurement if self.setpoint_rate else self.setpoint
            self.last_error = self.working - measurement
            self.integral = self.output - self.kp * self.last_error
            self.last_measurement = measurement
            return self.output
        if self.setpoint_rate and dt > 0:
            step = self.setpoint_rate * dt
            self.working += _clamp(self.setpoint - self.working, -step, step)
        else:
            self.working = self.setpoint
        error = self.working - measurement
        p = self.kp * error
        d = 0.0
        if dt > 0 and self.last_measurement is not None:
            d = -self.kd * (measurement - self.last_measurement) / dt
        lo, hi = self.lo, self.hi
        step = min(self.output_rate * dt if self.output_rate else math.inf, self.max_step or math.inf)
        lo, hi = max(lo, self.output - step), min(hi, self.output + step)
        integral = self.integral + self.ki * error * dt
        if p + integral + d > hi and error > 0:  # up to the limit, not past it: past it is wind-up
            integral = max(self.integral, hi - p - d)
        elif p + integral + d < lo and error < 0:
            integral = min(self.integral, lo - p - d)
        self.integral = integral
        self.output = _clamp(p + self.integral + d, lo, hi)
        self.last_measurement, self.last_error = measurement, error
        return self.output


# -- timing -------------------------------------------------------------------------
def tighten_timer_slack(ns: int = 1000) -> None:
    """Linux wakes a sleeping thread up to its timer slack late (50 us by default) to batch
    wake-ups; a timing thread asks for 1 us. Per thread; a no-op elsewhere."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(29, ns, 0, 0, 0)  # PR_SET_TIMERSLACK
    except (OSError, AttributeError):
        pass


def realtime_priority(priority: int = 10) -> bool:
    """Ask for SCHED_FIFO for the calling thread, so that no ordinary process (a busy cell's
    kernel, a simulator) can hold a tick off. Needs root or CAP_SYS_NICE (the systemd unit of
    a node grants it); elsewhere the loop runs at normal priority and says so in its state.
    The thread sleeps between ticks, and Linux keeps 5% of each second for everyone else."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))  # 0: this thread
        return True
    except (AttributeError, OSError):
        return False


def sleep_until(deadline: float, wake: threading.Event | None = None, *, coarse: float = 0.002) -> bool:
    """Sleep until `deadline` (time.monotonic()); False if `wake` was set first.

    Long waits wait on `wake` until `coarse` s before the deadline; the last stretch is one
    time.sleep, an absolute clock_nanosleep on Linux, which wakes on time."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return True
        if wake is not None and left > 2 * coarse:
            if wake.wait(left - coarse):
                return False
            continue
        time.sleep(left)
        return True


def next_deadline(deadline: float, period: float, now: float) -> tuple[float, bool, int]:
    """(next deadline, overran, periods skipped) after a tick due at `deadline` ended at `now`.

    Deadlines stay on the grid deadline + k*period (no drift); a tick that ended past the
    next deadline is an overrun, and whole periods already gone are skipped, not caught up
    in a burst."""
    nxt = deadline + period
    if now <= nxt:
        return nxt, False, 0
    skipped = int((now - nxt) // period)
    return nxt + skipped * period, True, skipped


class Timing:
    """How late each period was served (lateness: tick start - deadline) over the last `keep`
    periods; the period (start - previous start) and busy time of the last `keep` ticks;
    counts of overruns and skipped periods.

    A period skipped after an overrun is served by the next tick, later by the periods in
    between: a missed update counts as a late one, it is not left out of the statistics."""

    def __init__(self, period: float, keep: int = KEEP):
        self.period = period
        self._late = np.full(keep, np.nan)
        self._ticks = np.full((2, keep), np.nan)
        self._reset = False
        self.reset()

    def reset(self) -> None:
        self._late[:] = np.nan
        self._ticks[:] = np.nan
        self.ticks = self.periods = self.overruns = self.skipped = 0
        self.since = time.time()

    def request_reset(self) -> None:
        self._reset = True  # applied by the timing thread at its next tick: no torn counts

    def record(self, lateness: float, period: float | None, busy: float, overran: bool, skipped: int = 0) -> None:
        """One tick, `lateness` s after its deadline; it also serves the `skipped` periods before it."""
        if self._reset:
            self._reset = False
            self.reset()
        keep = self._late.size
        if skipped:
            late = lateness + self.period * np.arange(min(skipped, keep - 1), -1, -1)
            self._late[(self.periods + np.arange(late.size)) % keep] = late
        else:
            self._late[self.periods % keep] = lateness
        self.periods += skipped + 1
        i = self.ticks % keep
        self._ticks[0, i], self._ticks[1, i] = math.nan if period is None else period, busy
        self.ticks += 1
        self.overruns += overran
        self.skipped += skipped

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ticks": self.ticks, "periods": self.periods, "overruns": self.overruns,
                               "skipped": self.skipped, "since": self.since, "period_target_us": self.period * 1e6}
        for values, key in ((self._late, "lateness_us"), (self._ticks[0], "period_us"), (self._ticks[1], "busy_us")):
            values = values[~np.isnan(values)] * 1e6
            if values.size:
                p50, p99 = np.percentile(values, [50, 99])
                out[key] = {"p50": float(p50), "p99": float(p99), "max": float(values.max())}
            else:
                out[key] = None
        return out


# -- the engine ---------------------------------------------------------------------
class Loop:
    """One loop of the node: its spec, its controller, its schedule and what it last saw."""

    def __init__(self, name: str, spec: LoopSpec, measure: SignalSpec, actuate: SignalSpec):
        self.name, self.spec, self.measure, self.actuate = name, spec, measure, actuate
        self.period = 1.0 / spec.rate
        limits = spec.output_limits or actuate.limits
        self.pid = Pid(spec.kp, spec.ki, spec.kd, setpoint=spec.setpoint, setpoint_rate=spec.setpoint_rate,
                       output_limits=tuple(limits) if limits else None, output_rate=actuate.max_slew,
                       max_step=actuate.max_slew * STEP_TIME if actuate.max_slew else None)
        self.timing = Timing(self.period)
        self.deadline = 0.0
        self.skipped = 0  # periods skipped before the next tick (after an overrun)
        self.last_start: float | None = None
        self.measurement: float | None = None
        self.measured_at: float | None = None
        self.bad = 0       # consecutive ticks with an unusable input or a failed write
        self.error = ""    # why the last tick did not write, or why the loop left auto
        self.same_since: tuple[float, float] | None = None  # (value, monotonic time it was first read)
        self.stuck_at: float | None = None  # the value a stuck sensor tripped the loop at

    def stuck(self, value: float, now: float) -> str:
        """'' unless the reading has not moved at all for the loop's stale_after (a stuck sensor)."""
        if self.spec.stale_after is None:
            return ""
        if self.same_since is None or self.same_since[0] != value:
            self.same_since = (value, now)
            return ""
        if now - self.same_since[1] > self.spec.stale_after:
            return (f"{self.spec.measure} has stayed at exactly {value:g} {self.measure.unit} for "
                    f"{now - self.same_since[1]:.2f} s (stale_after {self.spec.stale_after:g} s): a stuck sensor?")
        return ""

    def usable(self, value: float) -> str:
        """'' if a reading can be used, else why not."""
        if not math.isfinite(value):
            return f"{self.spec.measure} is not a number"
        if self.measure.limits:
            lo, hi = self.measure.limits
            margin = LIMIT_MARGIN * (hi - lo)
            if not lo - margin <= value <= hi + margin:
                return (f"{self.spec.measure} = {value:g} {self.measure.unit} is beyond its limits "
                        f"[{lo:g}, {hi:g}] (a detector at its rail?)")
        return ""

    def state(self) -> dict[str, Any]:
        pid = self.pid
        return {"name": self.name, "node": self.spec.node, "measure": self.spec.measure,
                "actuate": self.spec.actuate, "unit": self.measure.unit, "output_unit": self.actuate.unit,
                "mode": pid.mode, "setpoint": pid.setpoint, "working_setpoint": pid.working,
                "kp": pid.kp, "ki": pid.ki, "kd": pid.kd, "rate": self.spec.rate,
                "output_limits": [pid.lo, pid.hi] if math.isfinite(pid.hi - pid.lo) else None,
                "setpoint_rate": pid.setpoint_rate, "output": pid.output, "measurement": self.measurement,
                "measured_at": self.measured_at, "bad_ticks": self.bad, "error": self.error,
                "timing": self.timing.stats()}


class LoopEngine:
    """The node's loops on one timing thread (only when the node has loops).

    Registers the runtime ops `loops` (states; `reset=True` restarts the timing statistics)
    and `loop` (`name`, `set`: {kp, ki, kd, setpoint, mode, output}), audited.
    """

    def __init__(self, runtime, *, stale_ticks: int = STALE_TICKS):
        self.runtime = runtime
        self.stale_ticks = stale_ticks
        env = runtime.envelope
        self.loops = {name: Loop(name, spec, env.signals[spec.measure], env.signals[spec.actuate])
                      for name, spec in runtime.rig.spec.loops.items() if spec.node == runtime.node}
        # One lock for every loop: a trip, an op and a tick never interleave, whatever thread
        # they come from; re-entrant, because a tick's own write may trip an interlock.
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = None
        self.realtime = False  # SCHED_FIFO granted to the timing thread
        runtime.socket_ops["loops"] = self._op_loops
        runtime.io_ops["loop"] = self._op_loop
        runtime.audited.add("loop")
        if not self.loops:
            return
        # A thread that holds the GIL keeps a woken loop waiting up to the switch interval
        # (5 ms by default, five periods at 1 kHz): a fifth of the fastest period bounds that.
        fastest = min(loop.period for loop in self.loops.values())
        sys.setswitchinterval(min(sys.getswitchinterval(), max(fastest / 5, 1e-4)))
        for loop in self.loops.values():
            if loop.spec.enabled:
                try:
                    self._to_auto(loop)
                except Refused as exc:  # a trip latched already: the loop waits in manual
                    loop.error = str(exc)
        self._thread = threading.Thread(target=self._run, name=f"loops-{runtime.node}", daemon=True)
        self._thread.start()

    # -- what the runtime asks --------------------------------------------------
    def guard(self, signal: str) -> None:
        """Refuse a write or ramp to an output that a loop in auto drives."""
        for loop in self.loops.values():
            if loop.spec.actuate == signal and loop.pid.mode == "auto":
                raise Refused(f"{signal} is driven by loop {loop.name} (auto); switch it to manual first")

    def on_trip(self, trip: Trip) -> None:
        """A trip forces outputs safe: loops driving them go to manual (they must not fight it)."""
        with self._lock:
            for loop in self.loops.values():
                if loop.spec.actuate in trip.outputs and loop.pid.mode == "auto":
                    loop.pid.manual(output=loop.actuate.safe)  # where the trip drives the actuator
                    loop.error = f"switched to manual: {trip.interlock} tripped ({trip.reason})"

    def stop_all(self, reason: str) -> None:
        with self._lock:
            for loop in self.loops.values():
                if loop.pid.mode == "auto":
                    loop.pid.manual(output=loop.actuate.safe)  # the safe state drives it there
                    loop.error = f"switched to manual: {reason}"

    def close(self) -> None:
        self.stop_all("runtime stopping")
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(3)

    # -- ops ----------------------------------------------------------------------
    def _op_loops(self, args: dict, client: str) -> dict[str, dict]:
        states = {name: {**loop.state(), "realtime": self.realtime} for name, loop in self.loops.items()}
        if args.get("reset"):
            for loop in self.loops.values():
                loop.timing.request_reset()
        return states

    def _loop(self, name) -> Loop:
        if name in self.loops:
            return self.loops[name]
        close = difflib.get_close_matches(str(name), list(self.loops), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; loops here: {', '.join(self.loops) or 'none'}"
        raise ConfigError(f"node {self.runtime.node!r} has no loop {name!r}{hint}")

    def _op_loop(self, args: dict, client: str) -> dict:
        loop = self._loop(args.get("name"))
        changes = args.get("set")
        if not isinstance(changes, dict) or not changes:
            raise ConfigError(f"loop {loop.name}: `set` takes a dict of changes among {', '.join(SETTINGS)}")
        for key in changes:
            if key not in SETTINGS:
                close = difflib.get_close_matches(str(key).lower(), SETTINGS, n=1)
                raise ConfigError(f"loop {loop.name} has no setting {key!r}"
                                  f"{'; did you mean ' + close[0] + '?' if close else ''} "
                                  f"(allowed: {', '.join(SETTINGS)})")
        numbers = {k: _number(loop, k, v) for k, v in changes.items() if k != "mode"}
        mode = changes.get("mode")
        if mode is not None and mode not in MODES:
            raise ConfigError(f"loop {loop.name}: mode {mode!r}; allowed: {', '.join(MODES)}")
        for key in ("kp", "ki", "kd"):
            if key in numbers and numbers[key] < 0:
                raise RangeError(f"loop {loop.name}: {key} = {numbers[key]:g} is negative; gains are >= 0")
        if "setpoint" in numbers and loop.measure.limits:
            lo, hi = loop.measure.limits
            if not lo <= numbers["setpoint"] <= hi:
                raise RangeError(f"loop {loop.name}: setpoint {numbers['setpoint']:g} {loop.measure.unit} is outside "
                                 f"the limits of {loop.spec.measure} [{lo:g}, {hi:g}]")
        with self._lock:
            if "output" in numbers and (mode or loop.pid.mode) == "auto":
                raise Refused(f"loop {loop.name} is in auto: it sets {loop.spec.actuate} itself; give "
                              "mode='manual' with the output")
            output = self._check_write(loop, numbers["output"]) if "output" in numbers else None
            if mode == "auto":
                self._check_auto(loop)  # before anything changes: a refused request changes nothing
            loop.pid.set_gains(**{k: numbers[k] for k in ("kp", "ki", "kd") if k in numbers})
            if "setpoint" in numbers:
                loop.pid.setpoint = numbers["setpoint"]
            if mode == "manual" and loop.pid.mode == "auto":
                loop.pid.manual()
                loop.error = f"switched to manual by {client or 'a client'}"
            if output is not None:
                self.runtime.ramps.stop(loop.spec.actuate)
                self.runtime._write_output(loop.spec.actuate, output)
                loop.pid.manual(output)
            if mode == "auto":
                self._to_auto(loop)
            return loop.state()

    def _check_auto(self, loop: Loop) -> None:
        for trip in list(self.runtime.watch.tripped.values()):
            if loop.spec.actuate in trip.outputs:
                raise Refused(f"loop {loop.name}: {loop.spec.actuate} is held safe by {trip.interlock} "
                              f"({trip.reason}); re-arm it first")

    def _to_auto(self, loop: Loop) -> None:
        if loop.pid.mode == "auto":
            return
        self._check_auto(loop)
        name = loop.spec.actuate
        self.runtime.ramps.stop(name)  # the loop takes the output over from where a ramp left it
        loop.pid.manual(self.runtime.setpoints.get(name, loop.actuate.safe or 0.0))
        loop.pid.auto()
        loop.bad, loop.error, loop.last_start, loop.skipped = 0, "", None, 0
        loop.deadline = time.monotonic()
        self._wake.set()

    # -- the timing thread -------------------------------------------------------
    def _run(self) -> None:
        tighten_timer_slack()
        self.realtime = realtime_priority()
        while not self._stop.is_set():
            self._wake.clear()
            active = [loop for loop in self.loops.values() if loop.pid.mode == "auto"]
            if not active:
                self._wake.wait()
                continue
            loop = min(active, key=lambda item: item.deadline)
            if not sleep_until(loop.deadline, self._wake):
                continue  # a mode changed, or closing: plan again
            start = time.monotonic()
            dt = min(start - loop.last_start, MAX_DT_PERIODS * loop.period) if loop.last_start else loop.period
            self._tick(loop, dt)
            end = time.monotonic()
            nxt, overran, skipped = next_deadline(loop.deadline, loop.period, end)
            loop.timing.record(start - loop.deadline, start - loop.last_start if loop.last_start else None,
                               end - start, overran, loop.skipped)
            loop.deadline, loop.last_start, loop.skipped = nxt, start, skipped

    def _tick(self, loop: Loop, dt: float) -> None:
        try:
            value = self.runtime.driver.read(loop.spec.measure)
            why = loop.usable(value) or loop.stuck(value, time.monotonic())
        except (LabrigError, OSError) as exc:
            value, why = None, f"reading {loop.spec.measure} failed: {type(exc).__name__}: {exc}"
        with self._lock:
            if loop.pid.mode != "auto":
                return  # switched while reading
            loop.measurement, loop.measured_at = value, time.time()
            output = loop.pid.update(math.nan if why else value, dt)
            if not why:
                try:
                    self.runtime._write_output(loop.spec.actuate, self._check_write(loop, output))
                    loop.bad, loop.error = 0, ""
                    return
                except Refused as exc:  # an interlock: its trip put the loop in manual already
                    if loop.pid.mode == "auto":
                        loop.pid.manual()
                        loop.error = f"switched to manual: {exc}"
                    return
                except (LabrigError, OSError) as exc:
                    why = f"writing {loop.spec.actuate} failed: {type(exc).__name__}: {exc}"
            loop.bad += 1
            loop.error = why
            if loop.bad >= self.stale_ticks:
                self._trip(loop, value)

    def _check_write(self, loop: Loop, value: float) -> float:
        """The checks of a direct write: envelope limits and step, interlocks."""
        name, env = loop.spec.actuate, self.runtime.envelope
        value = env.check_value(name, value)
        self.runtime.watch.check_write(name, value, loop.actuate.safe)
        env.check_step(name, value, self.runtime.setpoints.get(name))
        return value

    def _trip(self, loop: Loop, value: float | None) -> None:
        loop.pid.manual(output=loop.actuate.safe)
        reason = (f"loop {loop.name}: {loop.bad} ticks in a row without a usable {loop.spec.measure} or a "
                  f"write ({loop.error}); {loop.spec.actuate} to its safe value")
        loop.error = f"tripped: {reason}"
        value = value if value is not None and math.isfinite(value) else None
        loop.stuck_at, loop.same_since = (value if "stuck sensor" in reason else None), None
        self.runtime.watch.latch(Trip(f"loop:{loop.name}", reason, {loop.spec.measure: value},
                                      (loop.spec.actuate,), layer="loop"),
                                 rearm_check=lambda: self._input_ok(loop))

    def _input_ok(self, loop: Loop) -> tuple[bool, str]:
        try:
            value = self.runtime.driver.read(loop.spec.measure)
            why = loop.usable(value)
            if not why and loop.stuck_at is not None and value == loop.stuck_at:
                why = f"{loop.spec.measure} still reads exactly {value:g} {loop.measure.unit}, where it was stuck"
        except (LabrigError, OSError) as exc:
            why = f"reading {loop.spec.measure} fails: {type(exc).__name__}: {exc}"
        if not why:
            loop.stuck_at = None
        return not why, why


def _number(loop: Loop, key: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RangeError(f"loop {loop.name}: {key} must be a finite number (got {value!r})")
    return float(value)

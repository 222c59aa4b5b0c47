"""The step-table executor: a node runs its part of a compiled sequence by itself, on its own clock.

Ops (all socket ops: none touches the hardware on the socket thread; the work runs on the
executor's own threads, through the runtime's write paths):

    sequence_clock  ()                                -> {"time": this node's clock}
    sequence_load   (run, holder, table, waits)       validated again here (limits, slew, signals)
    sequence_arm    (run)                             refused if an output is not where the table
                                                      starts, a trip is latched or a loop drives it
    sequence_start  (run, start)                      start: the common start time on this node's clock
    sequence_gate   (run, gate, t)                    another node's (or the supervisor's) wait ended at t
    sequence_state  (run)                             state, shot time, own gates, steps done, trips
    sequence_fetch  (run, cursor)                     acquired samples since cursor (acquire.py)
    sequence_abort  (run, reason)                     the table's safe exit, at once
    sequence_pause  (run, at)                         hold: no new step, running ramps stop where they are
    sequence_resume (run, at)                         go on: the timeline shifts by the pause, ramps go on

Times in a table are shot seconds: a step starts at max over its `at` of (gate end + offset).
A wait this node evaluates reads its own signals every tick; its end becomes a gate, which the
runner relays to the nodes that need it. A pause freezes the timeline (steps, waits and their
timeouts; acquisitions keep sampling and end later by the pause's length); `at` (shot seconds,
given by the runner to every node) keeps the shift the same on every node.

Step scans (a table's `scans`: set, acknowledged, read, at a rate, with a deadline per point) run
on threads of their own (scan.py); a later step on the scanned output waits for the scan's end.

Safety. Sets go through the same checks as the `write` op (envelope, interlocks, loops); ramps
are checked as the `ramp` op and run on the runtime's RampEngine; a step scan's points are sets,
checked each, no faster on average than the max slew (|step| x rate), and the scan stops when
the runtime's safe state is asked for (as the `safe` op stops ramps: the table fails). Any new
trip on this node, a failed ramp or a refused step stops the table and runs its safe exit (the
declared ramp-downs).
A lost lease while a table runs (the runner died) runs the safe exit too, then latches the
lease trip as the runtime always does: the outputs come down at the declared rates rather than
in one step, and the node still refuses writes until re-armed. If the exit does not finish in
its declared time (+ EXIT_MARGIN), the runtime's abrupt safe state follows.

Test-only: with LABRIG_TEST_CLOCK_SKEW=1 in the runtime's environment, `sequence_clock(skew=s)`
shifts this node's sequence clock by s seconds (a node whose clock is off).
"""
from __future__ import annotations

import math
import os
import threading
import time

from labrig.drivers.errors import ConfigError, RangeError, Refused

from ..rig.conditions import compile_condition
from .steprun import FINAL, TableRun

MAX_RATE = 10_000.0  # Hz: acquisitions, and step scans' points per second
MAX_POINTS = 1_000_000  # points of one step scan


class StepExecutor:
    def __init__(self, runtime):
        self.rt = runtime
        self.skew = 0.0
        self.run: TableRun | None = None
        self._lock = threading.Lock()
        ops = {"sequence_clock": self._clock_op, "sequence_load": self._load, "sequence_arm": self._arm,
               "sequence_start": self._start, "sequence_gate": self._gate, "sequence_state": self._state,
               "sequence_fetch": self._fetch, "sequence_abort": self._abort, "sequence_pause": self._pause,
               "sequence_resume": self._resume}
        runtime.socket_ops.update(ops)
        runtime.audited.update({"sequence_load", "sequence_arm", "sequence_abort", "sequence_pause", "sequence_resume"})  # the start is journaled by the run
        self._lease_lost = runtime.lease_lost_handler
        runtime.lease_lost_handler = self._on_lease_lost  # a running table ramps down before the latch
        self._safe_state = runtime._safe_state
        runtime._safe_state = self._on_safe_state  # a step scan stops before the outputs go safe

    def clock(self) -> float:
        return time.time() + self.skew

    # -- ops ---------------------------------------------------------------
    def _clock_op(self, args, client):
        if "skew" in args:
            if os.environ.get("LABRIG_TEST_CLOCK_SKEW") != "1":
                raise Refused("a clock skew is a test option: the runtime needs LABRIG_TEST_CLOCK_SKEW=1")
            self.skew = float(args["skew"])
        return {"time": self.clock(), "node": self.rt.node}

    def _current(self, args) -> "TableRun":
        run = self.run
        if run is None or run.id != args.get("run"):
            raise ConfigError(f"node {self.rt.node!r} has no sequence run {args.get('run')!r}"
                              + (f" (it holds run {run.id!r}, {run.state})" if run else ""))
        return run

    def _load(self, args, client):
        run_id, holder, table = str(args.get("run") or ""), str(args.get("holder") or ""), args.get("table")
        args.setdefault("signal", "sequence")
        args.setdefault("value", run_id)
        with self._lock:
            if self.run is not None and self.run.state not in FINAL:
                raise Refused(f"node {self.rt.node!r} runs sequence {self.run.id!r} ({self.run.state}); "
                              "abort it first")
            if not run_id or not isinstance(table, dict):
                raise ConfigError("sequence_load needs run, holder and table")
            if holder not in self.rt.leases.holders():
                raise Refused(f"sequence_load: {holder!r} holds no lease on node {self.rt.node!r}; a runner "
                              "takes the lease first, so that the node ramps down if the runner dies")
            if table.get("node") != self.rt.node:
                raise ConfigError(f"a table of node {table.get('node')!r} was sent to node {self.rt.node!r}")
            waits = {w["id"]: w for w in args.get("waits") or []}
            self._validate(table, waits)
            self.run = TableRun(self, run_id, holder, table, waits)
        return {"run": run_id, "state": "loaded", "outputs": sorted(self.run.outputs)}

    def _validate(self, table: dict, waits: dict) -> None:
        env, level = self.rt.envelope, dict(table.get("start") or {})
        for name, value in level.items():
            env.check_value(name, value)
        for step in table.get("steps", []):
            name = step.get("signal")
            where = f"step {step.get('step')} ({step.get('name')})"
            try:
                env.check_value(name, step.get("from"))
                if step.get("kind") == "ramp":
                    env.check_ramp(name, step.get("to"), step.get("rate"))
                elif step.get("kind") == "set":
                    env.check_value(name, step.get("to"))
                    env.check_step(name, float(step["to"]), float(step["from"]))
                else:
                    raise ConfigError(f"kind {step.get('kind')!r}: a table holds only set and ramp")
                _check_at(step.get("at"))
            except (ConfigError, RangeError) as exc:
                raise type(exc)(f"{where}: {exc}") from None
        for entry in table.get("safe_exit", []):
            name = entry.get("signal")
            if entry.get("kind") == "ramp":
                env.check_ramp(name, entry.get("to"), entry.get("rate"))
            else:
                env.check_value(name, entry.get("to"))
        for acq in table.get("acquisitions", []):
            for name in acq.get("signals", []):
                env.signal(name)
            rate = acq.get("rate")
            if not (isinstance(rate, (int, float)) and 0 < rate <= MAX_RATE):
                raise RangeError(f"acquisition {acq.get('name')!r}: rate {rate!r} must be in (0, {MAX_RATE:g}] Hz")
            _check_at(acq.get("at"))
            _check_at(acq.get("until") or {"shot": 0.0})
        for scan in table.get("scans", []):
            try:
                _check_scan(env, scan)
                _check_at(scan.get("at"))
            except (ConfigError, RangeError) as exc:
                raise type(exc)(f"step {scan.get('step')} ({scan.get('name')}): {exc}") from None
        for wid in table.get("waits", []):
            if wid not in waits:
                raise ConfigError(f"wait {wid!r} is this node's to evaluate, but its condition was not sent")
            cond = compile_condition(waits[wid]["condition"])
            for name in cond.signals:
                env.signal(name)
            _check_at(waits[wid].get("at"))

    def _arm(self, args, client):
        run = self._current(args)
        if run.state != "loaded":
            raise Refused(f"run {run.id!r} is {run.state}, not loaded")
        for name, value in (run.table.get("start") or {}).items():
            now = self.rt.setpoints.get(name)
            sig = self.rt.envelope.signals[name]
            tol = 1e-6 + (0.005 * (sig.limits[1] - sig.limits[0]) if sig.limits else 1e-6)
            if now is None or abs(now - value) > tol:
                raise Refused(f"{name} is at {now!r} {sig.unit}, but the plan starts it at {value:g} {sig.unit}".rstrip()
                              + ": bring it there (or compile with start=) first")
        for trip in self.rt.watch.trips():
            if set(trip["outputs"]) & run.outputs:
                raise Refused(f"interlock {trip['interlock']} is tripped on node {self.rt.node!r} "
                              f"({trip['reason']}); re-arm it first")
        for name in run.outputs:
            self.rt.loops.guard(name)
        run.state = "armed"
        return {"run": run.id, "state": run.state}

    def _start(self, args, client):
        run = self._current(args)
        args.setdefault("signal", "sequence")
        args.setdefault("value", run.id)
        if run.state != "armed":
            raise Refused(f"run {run.id!r} is {run.state}, not armed")
        start = float(args.get("start"))
        if start < self.clock() - 1.0:
            raise Refused(f"start time {start:.3f} passed {self.clock() - start:.2f} s ago on node {self.rt.node!r}")
        run.begin(start)
        return {"run": run.id, "state": run.state, "start": start}

    def _gate(self, args, client):
        run = self._current(args)
        run.gates.setdefault(str(args["gate"]), float(args["t"]))
        return {"gates": dict(run.gates)}

    def _state(self, args, client):
        return self._current(args).as_dict()

    def _fetch(self, args, client):
        run = self._current(args)
        return run.buffer.fetch(int(args.get("cursor") or 0))

    def _abort(self, args, client):
        run = self._current(args)
        args.setdefault("signal", "sequence")
        args.setdefault("value", run.id)
        run.request_exit("aborted", str(args.get("reason") or f"aborted by {client}"))
        return run.as_dict()

    def _pause(self, args, client):
        run = self._current(args)
        args.setdefault("signal", "sequence")
        args.setdefault("value", run.id)
        return run.pause(args.get("at"))

    def _resume(self, args, client):
        run = self._current(args)
        args.setdefault("signal", "sequence")
        args.setdefault("value", run.id)
        return run.resume(args.get("at"))

    def _on_safe_state(self):
        run = self.run
        if run is not None and run.state not in FINAL:
            # no point of a scan lands after the safe values; a scan stopped short fails the table
            run.stop_scans(self.rt.driver.timeout + 0.5, "stopped: the runtime's safe state was asked for")
        return self._safe_state()

    def _on_lease_lost(self, holder: str, overdue: float) -> None:
        run = self.run
        if run is None or run.state in FINAL or run.state == "loaded":
            return self._lease_lost(holder, overdue)
        run.request_exit("failed", f"the lease of {holder} was not renewed ({overdue:.2f} s overdue): "
                         "the safe exit runs on the node", then=lambda: self._lease_lost(holder, overdue))


def _check_scan(env, scan: dict) -> None:
    """A step scan as the node runs it: every point a direct write the envelope allows, and no
    faster on average than the max slew (a move to the safe value excepted, as in every write)."""
    name = scan.get("signal")
    sig = env.output(name)
    rate, deadline, values = scan.get("rate"), scan.get("deadline"), scan.get("values")
    if not (isinstance(rate, (int, float)) and 0 < rate <= MAX_RATE):
        raise RangeError(f"step scan of {name}: rate {rate!r} must be in (0, {MAX_RATE:g}] points/s")
    if not (isinstance(deadline, (int, float)) and 0 < deadline < math.inf):
        raise RangeError(f"step scan of {name}: deadline {deadline!r} must be a positive number of seconds")
    if scan.get("on_late") not in ("record", "fail"):
        raise ConfigError(f"step scan of {name}: on_late {scan.get('on_late')!r}; allowed: record, fail")
    if not isinstance(values, list) or not 0 < len(values) <= MAX_POINTS:
        raise ConfigError(f"step scan of {name}: values must be a list of 1..{MAX_POINTS} numbers")
    reads = scan.get("read")
    if not isinstance(reads, list) or not reads:
        raise ConfigError(f"step scan of {name}: read must name the signals read at each point")
    for r in reads:
        env.signal(r)
    previous = env.check_value(name, scan.get("from"))
    for i, value in enumerate(values):
        value = env.check_value(name, value)
        env.check_step(name, value, previous)
        if i and sig.max_slew is not None and value != sig.safe and \
                abs(value - previous) * rate > sig.max_slew * (1 + 1e-9):
            raise RangeError(f"step scan of {name}: point {i + 1} moves it {abs(value - previous):g} {sig.unit} in "
                             f"1/{rate:g} s, faster than its max slew {sig.max_slew:g} {sig.unit}/s")
        previous = value


def _check_at(at) -> None:
    if not isinstance(at, dict) or not at:
        raise ConfigError(f"`at` {at!r}: a mapping of gate -> offset (s) is required")
    for gate, offset in at.items():
        if not (gate == "shot" or (isinstance(gate, str) and gate.startswith("w"))) or not math.isfinite(offset):
            raise ConfigError(f"`at` {at!r}: gates are 'shot' or 'wN' with finite offsets")

"""One step table running on a node: its timeline, waits, steps, pause and safe exit (steps.py
has the ops that drive it and the rules it follows)."""
from __future__ import annotations

import math
import threading
import time

from labrig.drivers.errors import Refused

from ..rig.conditions import compile_condition
from .acquire import SampleBuffer, Sampler
from .ramps import Ramp
from .scan import StepScan

TICK = 0.005  # s: the executor's period
EXIT_MARGIN = 1.0  # s beyond the safe exit's declared duration before the abrupt safe state
FINAL = ("done", "aborted", "failed", "tripped")


class TableRun:
    """One loaded table and its execution on this node; `ex` is its StepExecutor (the clock, the runtime)."""

    def __init__(self, ex, run_id: str, holder: str, table: dict, waits: dict):
        self.ex, self.rt = ex, ex.rt
        self.id, self.holder, self.table = run_id, holder, table
        self.waits = {wid: dict(waits[wid], cond=compile_condition(waits[wid]["condition"]))
                      for wid in table.get("waits", [])}
        self.outputs = ({s["signal"] for s in table.get("steps", []) + table.get("scans", [])}
                        | {e["signal"] for e in table.get("safe_exit", [])})
        self.state, self.reason = "loaded", ""
        self.start: float | None = None
        self.gates: dict[str, float] = {"shot": 0.0}
        self.scans = [StepScan(self, entry) for entry in table.get("scans", [])]  # scan.py: each on its thread
        scans = [dict(entry, kind="scan", scan=scan) for entry, scan in zip(table.get("scans", []), self.scans)]
        self.pending = sorted(table.get("steps", []) + scans, key=lambda s: (s["t_start"], s["step"]))
        self.done_steps = 0
        self.ramps: list[Ramp] = []
        self.buffer = SampleBuffer()
        self.sampler: Sampler | None = None
        self._exit: tuple[str, str] | None = None
        self._thens: list = []  # what runs once the exit is over (a lost lease's latch)
        self._exit_lock = threading.Lock()
        self._trips_before: set[str] = set()
        self.trips: list[dict] = []
        self.exit_started: float | None = None
        self.finished: float | None = None
        self.paused_total = 0.0
        self.paused_at: float | None = None  # real shot time of the pause under way
        self.held: list[tuple[str, float, float]] = []  # ramps a pause stopped: (signal, target, rate)
        self._step_lock = threading.Lock()  # steps and a pause never interleave

    # -- time ------------------------------------------------------------------
    def real(self) -> float:
        """Shot seconds on the wall (this node's clock): what samples are stamped with."""
        return self.ex.clock() - self.start

    def now(self) -> float:
        """Timeline seconds: the real shot time less every pause (frozen while paused)."""
        return (self.paused_at if self.paused_at is not None else self.real()) - self.paused_total

    def shift(self) -> float:
        return self.paused_total + (self.real() - self.paused_at if self.paused_at is not None else 0.0)

    def when(self, at: dict) -> float | None:
        """Shot time of `at`, None while one of its gates has not ended."""
        if any(g not in self.gates for g in at):
            return None
        return max(self.gates[g] + off for g, off in at.items())

    def window(self, acq: dict) -> tuple:
        """An acquisition's start and end in real shot time (the sampler's clock)."""
        start, end = self.when(acq["at"]), self.when(acq["until"]) if acq.get("until") else None
        shift = self.shift()
        return (None if start is None else start + shift), (None if end is None else end + shift)

    # -- control ---------------------------------------------------------------
    def begin(self, start: float) -> None:
        self.start = start
        self.state = "running"
        self._trips_before = {t["interlock"] for t in self.rt.watch.trips()}
        self.sampler = Sampler(self.table.get("acquisitions", []), self.rt.driver.read, self.real, self.window,
                               self.buffer, name=f"acquire-{self.rt.node}")
        self.sampler.start()
        self._record("sequence_start", f"run {self.id}: {len(self.pending)} steps, start {start:.3f}")
        threading.Thread(target=self._run, name=f"steps-{self.rt.node}", daemon=True).start()

    def request_exit(self, status: str, reason: str, then=None) -> None:
        with self._exit_lock:
            if self.state in ("loaded", "armed"):  # nothing moved yet
                self.state, self.reason, self.finished = status, reason, time.time()
            if self.state in FINAL:
                if then:
                    then()
                return
            if then:
                self._thens.append(then)
            if self._exit is None:
                self._exit = (status, reason)

    def pause(self, at=None) -> dict:
        with self._step_lock:
            if self.state != "running":
                raise Refused(f"run {self.id!r} is {self.state}: only a running table pauses")
            self.paused_at = float(at) if at is not None else self.real()
            self.state = "paused"
            running = [r for r in self.ramps if r.state == "running"]
            self.ramps = [r for r in self.ramps if r not in running]
            for ramp in running:
                self.held.append((ramp.signal, ramp.target, ramp.rate))
                self.rt.ramps.stop(ramp.signal)
        self._record("sequence_pause", f"run {self.id}: paused at t={self.now():.3f} s, holding "
                                       f"{', '.join(s for s, _, _ in self.held) or 'no ramp'}")
        return self.as_dict()

    def resume(self, at=None) -> dict:
        with self._step_lock:
            if self.state != "paused":
                raise Refused(f"run {self.id!r} is {self.state}, not paused")
            self.paused_total += (float(at) if at is not None else self.real()) - self.paused_at
            self.paused_at = None
            self.state = "running"
            held, self.held = self.held, []
            try:
                for name, target, rate in held:  # on from where they stopped, checked as any ramp
                    self.rt.watch.check_write(name, target, self.rt.envelope.signals[name].safe)
                    self.ramps.append(self.rt.ramps.start(Ramp(name, self.rt.setpoints.get(name, 0.0), target,
                                                               rate, client=f"sequence {self.id}")))
            except Exception as exc:  # noqa: BLE001 - refused: the safe exit
                self.request_exit("failed", f"resume: {type(exc).__name__}: {exc}")
        self._record("sequence_resume", f"run {self.id}: resumed after {self.paused_total:.3f} s paused in all")
        return self.as_dict()

    def as_dict(self) -> dict:
        own = {w: self.gates[w] for w in self.waits if w in self.gates}
        return {"run": self.id, "node": self.rt.node, "state": self.state, "reason": self.reason,
                "t": self.now() if self.start is not None else None, "gates": own,
                "steps": {"done": self.done_steps, "total": len(self.table.get("steps", []))},
                "samples": self.buffer.count, "missed": self.sampler.missed if self.sampler else 0,
                "read_errors": self.sampler.errors if self.sampler else 0, "trips": self.trips,
                "scans": [scan.as_dict() for scan in self.scans],
                "paused": self.paused_total + (self.real() - self.paused_at if self.paused_at is not None else 0.0)}

    # -- the executor thread -------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                if self._exit is not None:
                    return self._safe_exit(*self._exit)
                problem = self._problem()
                if problem:
                    self.request_exit(*problem)
                    continue
                if self.state == "paused":
                    time.sleep(TICK)
                    continue
                now = self.now()
                try:
                    with self._step_lock:
                        if self.state == "running":
                            self._waits(now)
                            self._steps(now)
                except Exception as exc:  # a refused or failed step: the table stops here
                    self.request_exit("failed", f"{type(exc).__name__}: {exc}")
                    continue
                if self._complete(now):
                    self.sampler.join()
                    self.state, self.finished = "done", time.time()
                    self._record("sequence_end", f"run {self.id}: done")
                    return
                time.sleep(TICK)
        except Exception as exc:  # noqa: BLE001 - the last resort: the runtime's own safe state
            self.reason = f"executor crashed: {type(exc).__name__}: {exc}"
            self.state = "failed"
            self.rt._safe_state()

    def _problem(self) -> tuple[str, str] | None:
        for trip in self.rt.watch.trips():
            if trip["interlock"] not in self._trips_before:
                self.trips.append({k: trip[k] for k in ("interlock", "reason", "values", "outputs", "time", "layer")})
                return "tripped", f"interlock {trip['interlock']} tripped on node {self.rt.node}: {trip['reason']}"
        with self._step_lock:  # (a pause stops ramps on purpose)
            for ramp in self.ramps:
                if ramp.state == "stopped" and ramp.error.startswith("interlock ") and ramp.error.endswith(" tripped"):
                    # stopped by a trip a moment before the trip itself is latched here
                    return "tripped", f"{ramp.error} on node {self.rt.node} (the ramp of {ramp.signal} stopped)"
                if ramp.state in ("failed", "stopped"):
                    return "failed", f"the ramp of {ramp.signal} {ramp.state}: {ramp.error}"
        for scan in self.scans:
            if scan.state == "failed":
                return "failed", f"step scan {scan.entry['name']!r}: {scan.error}"
        return None

    def _waits(self, now: float) -> None:
        for wid, wait in self.waits.items():
            if wid in self.gates:
                continue
            begin = self.when(wait["at"])
            if begin is None or now < begin:
                continue
            values = {}
            for name in wait["cond"].signals:
                try:
                    values[name] = self.rt.driver.read(name)
                except Exception:  # noqa: BLE001 - an unreadable signal never satisfies a wait
                    values[name] = math.nan
            if wait["cond"](values):
                self.gates[wid] = self.now()
                self._record("sequence_wait", f"run {self.id}: {wid} ({wait['condition']}) held at "
                                              f"t={self.gates[wid]:.3f} s", value=values)
            elif now - begin > wait["timeout"]:
                raise Refused(f"wait {wid} ({wait['condition']}) timed out after {wait['timeout']:g} s; "
                              f"last values {values}")

    def _steps(self, now: float) -> None:
        """Run every due step; a step never jumps an earlier pending step on the same output."""
        blocked: set[str] = {scan.signal for scan in self.scans if scan.running}  # a scan is never cut short
        for step in list(self.pending):
            due = self.when(step["at"])
            early = step["kind"] == "scan" and due is not None  # its thread waits for point 1 to the dot
            if step["signal"] in blocked or due is None or (due > now and not early):
                blocked.add(step["signal"])
                continue
            self.pending.remove(step)
            if step["kind"] == "scan":
                self.ramps = [r for r in self.ramps if r.signal != step["signal"]]  # (the scan ends its ramp)
                step["scan"].start(due)
                blocked.add(step["signal"])
                continue
            self._execute(step)
            self.done_steps += 1

    def _execute(self, step: dict) -> None:
        rt, name, to = self.rt, step["signal"], float(step["to"])
        safe = rt.envelope.signals[name].safe
        self.ramps = [r for r in self.ramps if r.signal != name]  # a new step on it ends its ramp: not a fault
        if step["kind"] == "set":
            value = rt.envelope.check_value(name, to)
            rt.watch.check_write(name, value, safe)
            rt.envelope.check_step(name, value, rt.setpoints.get(name))
            rt.loops.guard(name)
            rt.ramps.stop(name)
            rt._write_output(name, value)
        else:
            target, rate = rt.envelope.check_ramp(name, to, step["rate"])
            rt.watch.check_write(name, target, safe)
            rt.loops.guard(name)
            self.ramps.append(rt.ramps.start(Ramp(name, rt.setpoints.get(name, 0.0), target, rate,
                                                  client=f"sequence {self.id}")))
        self._record("sequence_step", f"run {self.id}: step {step['step']} {step['kind']} ({step['name']})",
                     signal=name, value=to)

    def _complete(self, now: float) -> bool:
        if self.pending or any(r.state == "running" for r in self.ramps) or any(s.running for s in self.scans):
            return False
        if any(w not in self.gates for w in self.waits):
            return False
        for acq in self.table.get("acquisitions", []):
            end = self.when(acq["until"]) if acq.get("until") else None
            if end is None or now < end:
                return False
        return True

    # -- the safe exit ---------------------------------------------------------
    def _safe_exit(self, status: str, reason: str) -> None:
        rt = self.rt
        self.state, self.reason, self.exit_started = "exiting", reason, time.time()
        self.pending = []
        self.stop_scans(rt.driver.timeout + 0.5)  # their last point ends before the exit writes
        for ramp in self.ramps:
            if ramp.state == "running":
                rt.ramps.stop(ramp.signal)
        self._record("sequence_exit", f"run {self.id}: safe exit ({status}: {reason})")
        entries = sorted(self.table.get("safe_exit", []), key=lambda e: e["t_start"])
        limit = max((e["t_start"] + e["duration_max"] for e in entries), default=0.0) + EXIT_MARGIN
        t0, mine, failed = time.monotonic(), [], []
        while entries or any(r.state == "running" for r in mine):
            elapsed = time.monotonic() - t0
            if elapsed > limit:
                failed.append(f"not finished within {limit:g} s")
                break
            while entries and entries[0]["t_start"] <= elapsed:
                entry = entries.pop(0)
                name, to = entry["signal"], float(entry["to"])
                try:
                    current = rt.setpoints.get(name)
                    if entry["kind"] == "ramp" and current is not None and current != to:
                        mine.append(rt.ramps.start(Ramp(name, current, to, float(entry["rate"]),
                                                        client=f"safe exit {self.id}")))
                    elif current != to:
                        rt.ramps.stop(name)
                        rt._write_output(name, to)
                except Exception as exc:  # noqa: BLE001 - the abrupt safe state below covers it
                    failed.append(f"{name}: {type(exc).__name__}: {exc}")
            time.sleep(TICK)
        failed += [f"{r.signal}: ramp {r.state} ({r.error})" for r in mine if r.state not in ("done", "running")]
        if failed:  # the declared exit did not complete: the runtime's abrupt safe state
            rt._safe_state()
            self.reason += f"; safe exit incomplete ({'; '.join(failed)}): outputs driven safe at once"
        if self.sampler:
            self.sampler.stop()
            self.sampler.join()
        with self._exit_lock:
            self.state, self.finished = status, time.time()
            thens, self._thens = self._thens, []
        self._record("sequence_end", f"run {self.id}: {status} after the safe exit ({self.reason})")
        for then in thens:
            then()

    def stop_scans(self, timeout: float, reason: str = "") -> None:
        """Stop every scan after its present point and wait for it (at most `timeout` s); with a
        `reason`, a scan stopped short fails the table."""
        for scan in self.scans:
            scan.stop(reason)
        for scan in self.scans:
            scan.join(timeout)

    def _record(self, op: str, detail: str, *, signal: str | None = "sequence", value=None) -> None:
        self.rt.audit.record(op, outcome="ok", client=self.holder, user="", signal=signal,
                             value=self.id if value is None else value, detail=detail)

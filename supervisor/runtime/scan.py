"""A step scan of a table, run by the node on a thread of its own (sequences: tl.step_scan).

Point i is due at the scan's start + i / rate (on the run's timeline: a pause shifts what is
left). At each: the set goes through the checks of the `write` op (envelope step, interlocks,
loops) and to the device; once the device has acknowledged it, every read signal is read once
(driver.write_read_many: on the Pi, the duty and the level reads go in one exchange, which
pigpiod runs in order, and the duty's acknowledgment is checked before the levels count); then
the point is recorded: `SIGNAL:set` and each read signal, stamped when the exchange returned,
in the run's sample buffer (what the runner fetches into the shot); the readings also stand for
those signals' telemetry samples (TelemetrySampler.offer), so telemetry does not read them again
on the link the scan is timing. A point whose last read comes later than its due time +
`deadline` is late: it is recorded in `SIGNAL:late` (seconds past the deadline, stamped with its
due time) and in the node's audit (the first one at once, a summary at the end); with
on_late="fail", the first late point stops the table (its safe exit runs). Points are never
skipped: a late point is followed by the next one at once.

Reads that fail record NaN (and count as read errors), so every signal keeps one value per
point. A set that fails or is refused stops the scan and the table. The scan stops after its
current point when the table exits or the runtime's safe state is asked for; a trip that latches
while a set is on the wire is followed by the safe value again, so the trip's write is the last.
"""
from __future__ import annotations

import math
import sys
import threading
import time

from labrig.drivers.errors import Refused

PAUSE_POLL = 0.002  # s between looks at a paused run
SWITCH_INTERVAL = 0.0005  # s: while a scan runs, how long another thread may hold the GIL before handing over
_switching = {"scans": 0, "saved": None}
_switching_lock = threading.Lock()


def _fast_switching(on: bool) -> None:
    """While any scan runs, the runtime's threads hand the GIL over every 0.5 ms instead of Python's
    5 ms, so the scan's thread gets it back soon after each reply from the device, even while
    another thread encodes a reply or samples telemetry."""
    with _switching_lock:
        if on:
            _switching["scans"] += 1
            if _switching["scans"] == 1:
                _switching["saved"] = sys.getswitchinterval()
                sys.setswitchinterval(min(_switching["saved"], SWITCH_INTERVAL))
        else:
            _switching["scans"] -= 1
            if _switching["scans"] == 0 and _switching["saved"] is not None:
                sys.setswitchinterval(_switching["saved"])


class StepScan:
    def __init__(self, run, entry: dict):
        self.run, self.rt, self.entry = run, run.rt, entry
        self.signal = entry["signal"]
        self.values = [float(v) for v in entry["values"]]
        self.read = list(entry["read"])
        self.period = 1.0 / float(entry["rate"])
        self.deadline = float(entry["deadline"])
        self.fail_late = entry.get("on_late") == "fail"
        self.state, self.error = "pending", ""
        self.done = 0
        self.late, self.worst, self.first_late = 0, 0.0, None  # late points, the worst lateness (s), the first
        self.read_errors = 0
        self.t_first = self.t_last = None  # real shot times of the first set and the last read
        self._stop = threading.Event()
        self._why = ""  # why it was stopped, when that fails the table
        self._thread: threading.Thread | None = None

    # -- control ------------------------------------------------------------------
    def start(self, at: float) -> None:
        """Run from timeline time `at` (when its gates say it starts): the thread starts now and waits
        for point 1 itself, so the table's tick does not delay it."""
        self.state = "running"
        self._thread = threading.Thread(target=self._run, args=(at,), name=f"scan-{self.signal}", daemon=True)
        self._thread.start()

    def stop(self, reason: str = "") -> None:
        """End after the present point: quietly (the table's own exit), or as a failure with `reason`."""
        if reason and not self._stop.is_set():
            self._why = reason
        self._stop.set()

    def join(self, timeout: float) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self.state == "running"

    def as_dict(self) -> dict:
        return {"step": self.entry["step"], "name": self.entry["name"], "signal": self.signal, "state": self.state,
                "error": self.error, "points": len(self.values), "done": self.done, "late": self.late,
                "worst_late": self.worst, "first_late": self.first_late, "deadline": self.deadline,
                "read_errors": self.read_errors, "rate": 1.0 / self.period,
                "achieved_rate": (self.done - 1) / (self.t_last - self.t_first)
                if self.done > 1 and self.t_last > self.t_first else None}

    # -- the points -------------------------------------------------------------------
    def _run(self, at: float) -> None:
        run, rt, name = self.run, self.rt, self.signal
        sig = rt.envelope.signals[name]
        point, append, clock, offer = rt._write_then_read, run.buffer.append, run.real, rt.telemetry.offer
        set_name, late_name = f"{name}:set", f"{name}:late"
        _fast_switching(True)
        try:
            for i, value in enumerate(self.values):
                while run.state == "paused" and not self._stop.is_set():
                    time.sleep(PAUSE_POLL)
                if self._stop.is_set():
                    break
                due = at + i * self.period + run.shift()  # real shot time
                delay = due - clock()
                if delay > 0 and self._stop.wait(delay):  # (a stop ends even a long wait at once)
                    break
                if i == 0:  # the scan owns its output from now (a ramp before it ends here, as a step ends it)
                    rt.ramps.stop(name)
                rt.watch.check_write(name, value, sig.safe)  # a latched trip, a failing interlock: refused
                rt.envelope.check_step(name, value, rt.setpoints.get(name))
                rt.loops.guard(name)
                got = point(name, value, self.read)  # the set, acknowledged, then the reads
                end = clock()
                if self._tripped(name):  # a trip latched while the set was on the wire: its safe value last
                    rt._write_output(name, sig.safe)
                    raise Refused(f"{name}: an interlock tripped during point {i + 1} of the step scan")
                if isinstance(got, Exception):  # recorded as NaN: one value per point, always
                    got = {}
                    self.read_errors += len(self.read)
                append(set_name, end, value)
                now = time.time()
                for r in self.read:
                    append(r, end, got.get(r, math.nan))
                    if r in got:
                        offer(r, now, got[r])
                self.done += 1
                if self.t_first is None:
                    self.t_first = end
                self.t_last = end
                late = end - (due + self.deadline)
                if late > 0:
                    self._late(i, due, late, late_name)
        except Exception as exc:  # noqa: BLE001 - the table stops (steprun._problem) and runs its safe exit
            self.error = f"{type(exc).__name__}: {exc}"
            self.state = "failed"
            return
        finally:
            _fast_switching(False)
            if self.state != "failed":
                self.state = "done" if self.done == len(self.values) else "failed" if self._why else "stopped"
                self.error = self.error or self._why
            self._summary()

    def _tripped(self, name: str) -> bool:
        return any(name in trip.outputs for trip in list(self.rt.watch.tripped.values()))

    def _late(self, i: int, due: float, late: float, late_name: str) -> None:
        self.run.buffer.append(late_name, due, late)
        self.late += 1
        self.worst = max(self.worst, late)
        if self.first_late is None:
            self.first_late = i + 1
            self.run._record("sequence_deadline", f"run {self.run.id}: step scan {self.entry['name']!r}: point {i + 1} "
                             f"of {len(self.values)} missed its deadline by {late * 1e3:.3f} ms "
                             f"(deadline {self.deadline * 1e3:.3g} ms)", signal=self.signal, value=late)
        if self.fail_late:
            raise Refused(f"point {i + 1} of {len(self.values)} missed its deadline of {self.deadline * 1e3:.3g} ms "
                          f"by {late * 1e3:.3f} ms (on_late='fail')")

    def _summary(self) -> None:
        late = (f"{self.late} missed their deadline of {self.deadline * 1e3:.3g} ms (worst {self.worst * 1e3:.3f} ms "
                f"late, first at point {self.first_late})" if self.late else "none missed its deadline")
        self.run._record("sequence_scan", f"run {self.run.id}: step scan {self.entry['name']!r} {self.state}: "
                         f"{self.done} of {len(self.values)} points; {late}"
                         + (f"; {self.read_errors} reads failed (NaN)" if self.read_errors else "")
                         + (f"; {self.error}" if self.error else ""), signal=self.signal, value=self.late)

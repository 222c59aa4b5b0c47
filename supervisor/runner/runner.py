"""The sequence runner: a compiled plan run on the cluster and recorded as one shot.

    result = run("examples/ishtar/rig.toml", plan, directory=state_dir, store=ShotStore())
    result.status, result.reason, result.number          # success | abort | fail, why, the shot

Before anything moves (a refusal raises, and no shot is made): every node of the plan is
leased (holder `runner-<pid>`, distinct from the guard's), its clock offset measured
(ClockOffsetError above `clock_tolerance`), its table loaded (checked again by the node's
envelope) and armed (outputs where the plan starts them, no trip latched). Then the shot
opens, every node starts on one common start time (each on its own clock, corrected by its
offset), and the runner watches: it relays the waits' ends between nodes, evaluates the
waits that span nodes, pulls the acquired samples into the shot, and stops everything (each
node runs its safe exit) on an abort, a trip, a failed step, a node that stops answering or
the overall timeout (duration_max + safe exit + margin). The shot always closes, with its
status and reason, whatever happens (bluesky's discipline: `finally`).

`progress(p)` is called at every look at the nodes (~20 Hz) with {"t": shot time, "duration", "shot",
"states": {node: state}, "paused", "samples": {name: (times, values)} fetched since the last
call}: a display gets the acquired samples as they reach the shot, with no second read of the
nodes. The run's state is also published on MQTT, retained (announce.py), when the rig has a
broker.
"""
from __future__ import annotations

import math
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from labrig.drivers.errors import LabrigError

from ..rig import Rig, compile_condition
from ..runtime import RuntimeClient
from ..runtime.locate import client_options, runtime_record
from ..state import state_dir
from .announce import RunAnnouncer
from .clocks import check_offsets, measure_offset
from .leases import LeaseHolder
from .scans import late_reason, late_scans, scan_units

FINAL = ("done", "aborted", "failed", "tripped")
POLL = 0.05  # s between looks at the nodes
LEAD = 0.3  # s from the start order to the common start time (plus the slowest round trip x 4)
MARGIN = 5.0  # s beyond duration_max + the safe exit before the run counts as hung


@dataclass
class RunResult:
    """What a run left: its shot (number, path), how it ended and why."""
    number: int | None
    path: Path | None
    status: str
    reason: str
    run: str
    offsets: dict = field(default_factory=dict)
    nodes: dict = field(default_factory=dict)
    store: object = field(default=None, repr=False)

    def shot(self):
        """The shot file, open read-only (use it in a `with`)."""
        return self.store.shot(self.number)

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        """A notebook shows the shot in words; batch jobs (supervisor/batch.py) find it in SHOT_MIMETYPE."""
        text = f"shot {self.number}: {self.status}" + (f" ({self.reason})" if self.reason else "") + \
            (f", file {self.path}" if self.path else "")
        return {"text/plain": text, SHOT_MIMETYPE: {"shot": self.number, "status": self.status,
                                                     "reason": self.reason, "path": str(self.path or "")}}


SHOT_MIMETYPE = "application/vnd.labrig.shot+json"  # a run's shot, machine-readable in a notebook's outputs


class Runner:
    def __init__(self, rig: Rig | str | Path, plan, *, directory: str | Path | None = None, store=None,
                 clock_tolerance: float = 0.02, holder: str | None = None,
                 progress: Callable[[dict], None] | None = None, timeout_margin: float = MARGIN,
                 announce: bool = True):
        self.rig = rig if isinstance(rig, Rig) else Rig.load(rig)
        if plan.rig.get("digest") and plan.rig["digest"] != self.rig.digest:
            raise LabrigError(f"the plan was compiled for rig {plan.rig['name']!r} ({plan.rig['digest'][:12]}), "
                              f"not this rig file ({self.rig.digest[:12]}): compile it again")
        self.plan = plan
        self.directory = state_dir(directory)
        if store is None:
            from ..store import ShotStore
            store = ShotStore()
        self.store = store
        self.clock_tolerance = clock_tolerance
        self.holder = holder or f"runner-{os.getpid()}"
        self.progress = progress
        self.timeout_margin = timeout_margin
        self.announce = announce  # publish the run's state on MQTT (when the rig has a broker)
        self.id = f"{plan.name}-{uuid.uuid4().hex[:8]}"
        self.nodes = list(plan.tables)
        self._abort = threading.Event()
        self._abort_reason = ""
        self._pause_wanted = False
        self.offsets: dict[str, dict] = {}
        self.states: dict[str, dict] = {}

    def pause(self) -> None:
        """Hold the run on every node (no new step; ramps stop where they are; sampling goes on)."""
        self._pause_wanted = True

    def resume(self) -> None:
        self._pause_wanted = False

    def abort(self, reason: str = "aborted by the operator") -> None:
        """Stop the run from any thread: every node runs its safe exit; the shot closes 'abort'."""
        if not self._abort.is_set():  # the first reason stands
            self._abort_reason = reason
        self._abort.set()

    # ---------------------------------------------------------------- the run
    def run(self) -> RunResult:
        clients, leases, armed = {}, None, False
        try:
            records = {}
            for node in self.nodes:
                record = runtime_record(node, self.directory)
                if record is None:
                    raise LabrigError(f"node {node!r} has no runtime running (state in {self.directory}): "
                                      "start the cluster (`labrig up`) first")
                records[node] = record
                clients[node] = RuntimeClient(record["endpoint"], node=node, client=self.holder, timeout=2.0,
                                              **client_options(record))
            leases = LeaseHolder(records, self.holder, self.rig.spec.watchdogs.lease)
            leases.take()
            self.offsets = {node: measure_offset(c) for node, c in clients.items()}
            check_offsets(self.offsets, self.clock_tolerance)
            for node, c in clients.items():
                c.call("sequence_load", run=self.id, holder=self.holder, table=self.plan.tables[node],
                       waits=[w for w in self.plan.waits if w["evaluated_by"] == node])
            for c in clients.values():
                c.call("sequence_arm", run=self.id)
            armed = True
        except BaseException:
            for c in clients.values():  # a refused preflight leaves nothing loaded or armed
                try:
                    c.call("sequence_abort", run=self.id, reason="the run did not start", timeout=1.0)
                except LabrigError:
                    pass
            raise
        finally:
            if not armed:
                self._release(leases, clients)
        try:
            return self._record(clients)
        finally:
            self._release(leases, clients)

    @staticmethod
    def _release(leases, clients) -> None:
        if leases is not None:
            leases.release()
        for c in clients.values():
            c.close()

    def _record(self, clients: dict) -> RunResult:
        plan = self.plan
        writer = self.store.open_shot(sequence=plan.name, source=plan.source, sequence_hash=plan.hash,
                                      parameters=plan.params, rig=self.rig,
                                      metadata={"run": self.id, "holder": self.holder, "plan": plan.to_dict()})
        status, reason = "fail", "the runner stopped unexpectedly"
        path = None
        announcer = None
        if self.announce:
            announcer = RunAnnouncer(self.rig, self.directory, run=self.id, sequence=plan.name,
                                     parameters=plan.params, shot=writer.number, duration=plan.duration)
            announcer.start()
        watch = _Watch(self, clients, writer, announcer)
        try:
            status, reason = watch.run()
        except KeyboardInterrupt:
            status, reason = "abort", "interrupted"
            raise
        except BaseException as exc:
            status, reason = "fail", f"{type(exc).__name__}: {exc}"
            raise
        finally:
            try:
                watch.finish(status, reason)
            finally:
                try:
                    path = writer.close(status, reason)
                finally:
                    if announcer is not None:
                        announcer.end(status, reason, path)
        return RunResult(writer.number, path, status, reason, self.id, self.offsets, self.states, self.store)


class _Watch:
    """The run from its start to the end of every node's table or safe exit."""

    def __init__(self, runner: Runner, clients: dict, writer, announcer: RunAnnouncer | None = None):
        self.r, self.clients, self.writer, self.announcer = runner, clients, writer, announcer
        self.fresh: dict[str, list] = {}  # samples fetched since the last progress call: name -> [(t, v), ...]
        self.plan = runner.plan
        self.t_open = time.time()
        self.t0: float | None = None
        self.ended: dict[str, float] = {"shot": 0.0}
        self.sent: dict[str, set] = {n: {"shot"} for n in clients}
        self.cursors = {n: 0 for n in clients}
        self.trips_seen: set = set()
        self.sup_waits = {w["id"]: dict(w, cond=compile_condition(w["condition"]))
                          for w in self.plan.waits if w["evaluated_by"] == "supervisor"}
        self.units = {n: s.unit for n, s in runner.rig.signals.items()} | scan_units(self.plan, runner.rig)
        self.started = False
        self.paused_at: float | None = None  # real shot time of the pause under way
        self.paused_total = 0.0

    def run(self) -> tuple[str, str]:
        r = self.r
        lead = LEAD + 4 * max(o["rtt"] for o in r.offsets.values())
        self.t0 = time.time() + lead
        for node, c in self.clients.items():
            c.call("sequence_start", run=r.id, start=self.t0 + r.offsets[node]["offset"])
        self.started = True
        self.writer.event("start", t=self.t0, run=r.id, offsets=r.offsets, holder=r.holder)
        deadline = self.t0 + self.plan.duration_max + self.plan.exit_duration + r.timeout_margin
        while True:
            now = time.time()
            states = self.poll()
            failed = {n: s for n, s in states.items() if s["state"] in ("failed", "tripped")}
            if failed:
                node, s = next(iter(failed.items()))
                return "fail", f"node {node} {s['state']}: {s['reason']}"
            aborted = {n: s for n, s in states.items() if s["state"] == "aborted"}
            if aborted:
                node, s = next(iter(aborted.items()))
                return "abort", f"node {node} aborted: {s['reason']}"
            if all(s["state"] == "done" for s in states.values()):
                return "success", late_reason(states)  # a step scan's late points are told, not hidden
            if r._abort.is_set():
                return "abort", r._abort_reason
            if now > deadline and self.paused_at is None:
                return "fail", f"the run did not finish within {deadline - self.t0:.1f} s (duration_max + exit + margin)"
            lost = [n for n, s in states.items() if s.get("lost")]
            if lost:
                return "fail", f"node {lost[0]} stopped answering: {states[lost[0]]['reason']}"
            deadline += self.pause_or_resume(now - self.t0)
            if self.paused_at is None:
                problem = self.supervise(now - self.t0 - self.paused_total)
                if problem:
                    return "fail", problem
            progress = {"t": now - self.t0 - self.paused_total, "duration": self.plan.duration,
                        "shot": self.writer.number, "states": states, "paused": self.paused_at is not None}
            if self.announcer is not None:
                self.announcer.progress(progress)
            if r.progress:
                try:
                    r.progress({**progress, "samples": self.take_fresh()})
                except Exception:  # noqa: BLE001 - a broken display never stops a shot
                    r.progress = None
            time.sleep(POLL)

    def pause_or_resume(self, t: float) -> float:
        """Act on the runner's pause wish at shot time t (the same `at` for every node, so every
        timeline shifts alike); returns how much later the run may now end."""
        wanted = self.r._pause_wanted
        if wanted == (self.paused_at is not None):
            return 0.0
        op = "sequence_pause" if wanted else "sequence_resume"
        for node, c in self.clients.items():
            try:
                c.call(op, run=self.r.id, at=t)
            except LabrigError as exc:  # a node done with its table has nothing to hold
                self.writer.event("note", text=f"{op} on {node}: {exc}")
        self.writer.event("pause" if wanted else "resume", t_shot=t)
        if wanted:
            self.paused_at = t
            return 0.0
        length, self.paused_at = t - self.paused_at, None
        self.paused_total += length
        return length

    def poll(self) -> dict[str, dict]:
        states = {}
        for node, c in self.clients.items():
            try:
                s = c.call("sequence_state", run=self.r.id)
            except LabrigError as exc:
                prev = self.r.states.get(node, {})
                since = prev.get("unanswered_since") or time.time()
                lost = time.time() - since > self.r.rig.spec.watchdogs.heartbeat_timeout
                states[node] = {**prev, "unanswered_since": since, "lost": lost, "reason": str(exc),
                                "state": prev.get("state", "running")}
                continue
            states[node] = s
            try:
                self.fetch(node)
            except LabrigError as exc:  # again at the next poll; the cursor did not move
                self.writer.event("note", text=f"fetch from {node} failed: {exc}")
            for gate, t in s.get("gates", {}).items():
                self.ended.setdefault(gate, t)
            for trip in s.get("trips", []):
                key = (node, trip["interlock"], trip["time"])
                if key not in self.trips_seen:
                    self.trips_seen.add(key)
                    self.writer.event("trip", t=trip["time"], node=node, **trip)
        self.r.states.update(states)
        self.relay()
        return states

    def relay(self) -> None:
        """Each node learns the end of every wait its steps start from."""
        for node, c in self.clients.items():
            for gate in self.plan.tables[node]["gates"]:
                if gate in self.ended and gate not in self.sent[node]:
                    try:
                        c.call("sequence_gate", run=self.r.id, gate=gate, t=self.ended[gate])
                        self.sent[node].add(gate)
                    except LabrigError:
                        pass  # again at the next poll

    def supervise(self, now: float) -> str | None:
        """Waits over several nodes' signals: read them, end the wait when it holds."""
        for wid, w in self.sup_waits.items():
            if wid in self.ended or any(g not in self.ended for g in w["at"]):
                continue
            begin = max(self.ended[g] + off for g, off in w["at"].items())
            if now < begin:
                continue
            values = {}
            for name in w["cond"].signals:
                try:
                    values[name] = self.clients[self.r.rig.node_of(name)].read(name)
                except LabrigError:
                    values[name] = math.nan
            if w["cond"](values):
                self.ended[wid] = time.time() - self.t0 - self.paused_total
                self.writer.event("wait", wid=wid, condition=w["condition"], values=values, t_shot=self.ended[wid])
            elif now - begin > w["timeout"]:
                return f"wait {wid} ({w['condition']}) timed out after {w['timeout']:g} s; last values {values}"
        return None

    def fetch(self, node: str) -> None:
        if not (self.plan.tables[node]["acquisitions"] or self.plan.tables[node].get("scans")):
            return
        while True:
            reply = self.clients[node].call("sequence_fetch", run=self.r.id, cursor=self.cursors[node])
            self.cursors[node] = reply["cursor"]
            if reply["dropped"]:
                self.writer.event("dropped", node=node, samples=reply["dropped"])
            for name, data in reply["signals"].items():  # node shot times: its start was offset-corrected
                t, v = np.asarray(data["t"], dtype=float), np.asarray(data["v"], dtype=float)
                self.writer.signal(name, t, v, unit=self.units.get(name, ""))
                if self.r.progress:  # kept for the display only while there is one
                    self.fresh.setdefault(name, []).append((t, v))
            if not reply["more"]:
                return

    def take_fresh(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The samples fetched since the last call, {name: (times, values)}."""
        fresh, self.fresh = self.fresh, {}
        return {name: (np.concatenate([t for t, _ in parts]), np.concatenate([v for _, v in parts]))
                for name, parts in fresh.items()}

    def finish(self, status: str, reason: str) -> None:
        """Every node out of its table (the safe exit where it was not done), the last samples and the
        nodes' journal entries of the window into the shot. Never raises."""
        r = self.r
        if self.started:
            if status != "success":
                for c in self.clients.values():
                    try:
                        c.call("sequence_abort", run=r.id, reason=f"{status}: {reason}")
                    except LabrigError:
                        pass
            limit = time.time() + self.plan.exit_duration + 3.0
            while time.time() < limit:
                try:
                    states = self.poll()
                except Exception:  # noqa: BLE001 - the shot closes anyway
                    break
                if all(s["state"] in FINAL or s.get("lost") for s in states.values()):
                    break
                time.sleep(POLL)
        t_end = time.time()
        for node, c in self.clients.items():
            try:
                for entry in c.call("audit", count=1000):
                    if self.t_open - 1.0 <= entry["t"] <= t_end:
                        self.writer.audit(entry)
            except LabrigError as exc:
                self.writer.event("note", text=f"audit of node {node} not collected: {exc}")
        for scan in late_scans(r.states):
            self.writer.event("deadline", **scan)
        self.writer.event("end", status=status, reason=reason,
                          nodes={n: {k: s.get(k) for k in ("state", "reason", "samples", "missed", "read_errors")}
                                 for n, s in r.states.items()})


def run(rig, plan, *, directory=None, store=None, **options) -> RunResult:
    """Run a compiled plan on the cluster of `directory`; returns the shot's record (see Runner)."""
    return Runner(rig, plan, directory=directory, store=store, **options).run()

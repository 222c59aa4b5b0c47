"""The guard's cross-node interlocks: evaluated on every new reading, tripped on the nodes that own the outputs.

A trip is latched in the guard and on each node that owns a forced output (layer
"supervisor": the node refuses writes to those outputs and leaves the re-arm to the
guard). A node the guard cannot reach when it trips gets the trip as soon as it
answers again; a restarted runtime gets it latched again on its first lease.
"""
from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import zmq

from labrig.drivers.errors import ConfigError, LabrigError, Refused

from ..rig import Rig
from ..rig.model import Interlock
from ..runtime import protocol
from ..runtime.audit import AuditJournal
from ..runtime.interlocks import Trip
from ..runtime.locate import RuntimeLink
from ..runtime.overrides import Overrides
from .nodewatch import NodeWatch

HOLDER = "guard"


class Guard:
    def __init__(self, rig: Rig, directory: Path, *, bind: str = "127.0.0.1",
                 publish: Callable[[str, Any, bool], None] | None = None, audit_path: Path | None = None):
        self.rig = rig
        self.directory = Path(directory)
        self.interlocks: dict[str, Interlock] = rig.guarded_interlocks()
        self.poll = rig.spec.watchdogs.guard_poll
        self.online_timeout = rig.spec.watchdogs.heartbeat_timeout
        self.started = time.monotonic()
        self._publish = publish or (lambda topic, payload, retain: None)
        self.audit = AuditJournal(audit_path, node="guard", publish=lambda e: self._publish("audit", e, False))
        self.tripped: dict[str, Trip] = {}
        self.overrides = Overrides(lambda name: name in self.interlocks, on_end=self._override_ended)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._deliveries: list[threading.Thread] = []
        self._trip_links = {node: RuntimeLink(node, self.directory, client=f"{HOLDER}-trips", timeout=1.0)
                            for node in rig.nodes}
        self._was_online: dict[str, bool] = {}
        needed: dict[str, set[str]] = {node: set() for node in rig.nodes}
        for lock in self.interlocks.values():
            for name in lock.require.signals:
                if not name.endswith(".online"):
                    needed[rig.node_of(name)].add(name)
        self.watches = {node: NodeWatch(node, self.directory, signals=sorted(needed[node]), poll=self.poll,
                                        lease_ttl=rig.spec.watchdogs.lease, online_timeout=self.online_timeout,
                                        holder=HOLDER, on_update=self._evaluate_node, on_new_lease=self._relatch)
                        for node in rig.nodes}
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        port = self.router.bind_to_random_port(f"tcp://{bind}")
        self.endpoint = f"tcp://{bind}:{port}"

    # -- evaluation ------------------------------------------------------
    def values(self, lock: Interlock, now: float | None = None) -> dict[str, float]:
        now = time.monotonic() if now is None else now
        out = {}
        for name in lock.require.signals:
            node = self.rig.node_of(name)
            if name.endswith(".online"):
                out[name] = 1.0 if self.watches[node].online(now) else 0.0
            else:
                out[name] = self.watches[node].current(now).get(name, math.nan)
        return out

    def _ready(self, lock: Interlock, now: float) -> bool:
        """Judge an interlock once every node it reads has answered, or once they had time to."""
        if now - self.started >= self.online_timeout:
            return True
        for name in lock.require.signals:
            watch = self.watches[self.rig.node_of(name)]
            if (watch.last_answer if name.endswith(".online") else watch.values_at) is None:
                return False
        return True

    def _evaluate_node(self, node: str) -> None:
        self.evaluate({node})

    def evaluate(self, nodes: set[str] | None = None) -> None:
        now = time.monotonic()
        with self._lock:
            for name, lock in self.interlocks.items():
                if name in self.tripped or self._stop.is_set() or self.overrides.active(name):
                    continue
                if nodes is not None and not nodes & {self.rig.node_of(s) for s in lock.require.signals}:
                    continue
                if not self._ready(lock, now):
                    continue
                values = self.values(lock, now)
                if not lock.require(values):
                    self._trip(lock, values)
            self._note_node_changes(now)

    def _note_node_changes(self, now: float) -> None:
        for node, watch in self.watches.items():
            online = watch.online(now)
            if self._was_online.get(node) != online:
                if node in self._was_online or not online and now - self.started >= self.online_timeout:
                    self.audit.record("node_online" if online else "node_lost", outcome="ok", client=HOLDER,
                                      user="", signal=None, value=None,
                                      detail="" if online else f"no answer for {self.online_timeout:g} s: {watch.error}")
                if node in self._was_online or online or now - self.started >= self.online_timeout:
                    self._was_online[node] = online

    def _trip(self, lock: Interlock, values: dict[str, float]) -> Trip:
        reason = f"{lock.name}: requires {lock.require.source}" + (f" ({lock.description})" if lock.description else "")
        lost = [n.rsplit(".", 1)[0] for n, v in values.items() if n.endswith(".online") and v == 0.0]
        lost += sorted({self.rig.node_of(n) for n, v in values.items() if not n.endswith(".online")
                        and math.isnan(v) and not self.watches[self.rig.node_of(n)].online()})
        if lost:
            reason += f"; node{'s' if len(set(lost)) > 1 else ''} lost: {', '.join(sorted(set(lost)))}"
        now = time.monotonic()
        for node in sorted({self.rig.node_of(n) for n, v in values.items() if not n.endswith(".online")
                            and math.isnan(v) and self.watches[self.rig.node_of(n)].online()}):
            watch = self.watches[node]  # it answers, but its readings are unusable: say why
            age = f" for {now - watch.values_at:.1f} s" if watch.values_at is not None else ""
            reason += f"; no usable reading from {node}{age}" + (f" ({watch.error})" if watch.error else "")
        trip = Trip(lock.name, reason, {k: (None if math.isnan(v) else v) for k, v in values.items()},
                    lock.outputs, layer="supervisor")
        self.tripped[lock.name] = trip
        self.audit.record("trip", outcome="ok", client=HOLDER, user="", signal=",".join(lock.outputs),
                          value=trip.values, detail=reason)
        self._publish_trips()
        for node in sorted({self.rig.node_of(o) for o in lock.outputs}):
            self._deliver(trip, node)
        return trip

    # -- delivery to the nodes ------------------------------------------
    def _deliver(self, trip: Trip, node: str) -> None:
        outputs = [o for o in trip.outputs if self.rig.node_of(o) == node]
        trip.nodes[node] = {"delivered": False, "safe": {}, "error": "", "outputs": outputs}
        thread = threading.Thread(target=self._send_trip, args=(trip, node, outputs), daemon=True,
                                  name=f"guard-trip-{trip.interlock}-{node}")
        self._deliveries = [t for t in self._deliveries if t.is_alive()] + [thread]
        thread.start()

    def _send_trip(self, trip: Trip, node: str, outputs: list[str]) -> None:
        """Until the node has it (or the trip is re-armed, or the guard stops): a lost node gets it on return."""
        while not self._stop.is_set() and self.tripped.get(trip.interlock) is trip:
            try:
                result = self._trip_links[node].client.call(
                    "trip", interlock=trip.interlock, outputs=outputs, reason=trip.reason, values=trip.values,
                    layer="supervisor")
            except LabrigError as exc:
                trip.nodes[node]["error"] = f"{type(exc).__name__}: {exc}"
                self._stop.wait(min(0.2, self.poll * 4))
                continue
            trip.nodes[node].update(delivered=True, safe=result.get("safe", {}), error="")
            self._publish_trips()
            return

    def _relatch(self, node: str) -> None:
        with self._lock:
            for trip in self.tripped.values():
                if node in {self.rig.node_of(o) for o in trip.outputs}:
                    self._deliver(trip, node)

    # -- operations -------------------------------------------------------
    def rearm(self, name: str, client: str = "") -> dict:
        if name not in self.interlocks:
            raise ConfigError(f"the guard has no interlock {name!r}; it holds the cross-node ones: "
                              f"{', '.join(self.interlocks) or 'none'}")
        with self._lock:
            trip = self.tripped.get(name)
            if trip is None:
                return {"interlock": name, "rearmed": False, "detail": "was not tripped"}
            lock = self.interlocks[name]
            values = self.values(lock)
            if not lock.require(values) and not self.overrides.active(name):
                self.audit.record("rearm", outcome="refused", client=client, user="", signal=name, value=values,
                                  detail=f"still requires {lock.require.source}")
                raise Refused(f"cannot re-arm {name}: it still requires {lock.require.source}; now "
                              f"{ {k: (None if math.isnan(v) else v) for k, v in values.items()} }")
            del self.tripped[name]
        failed = {}
        for node in sorted({self.rig.node_of(o) for o in lock.outputs}):
            try:
                self._trip_links[node].client.call("rearm", interlock=name, by_guard=True)
            except LabrigError as exc:  # the node keeps its latch: re-arm again once it answers
                failed[node] = f"{type(exc).__name__}: {exc}"
        self.audit.record("rearm", outcome="failed" if failed else "ok", client=client, user="", signal=name,
                          value=values, detail=f"not re-armed on {failed}" if failed else "")
        self._publish_trips()
        if failed:
            raise LabrigError(f"{name} is re-armed in the guard but not on {', '.join(failed)}: {failed}")
        return {"interlock": name, "rearmed": True, "values": values}

    def override(self, name: str, seconds, reason: str, client: str) -> dict:
        try:
            result = self.overrides.set(name, seconds, reason, by=client)
        except LabrigError as exc:
            self.audit.record("override", outcome="refused", client=client, user="", signal=name, value=seconds,
                              detail=f"{reason}; {type(exc).__name__}: {exc}")
            raise
        self.audit.record("override", outcome="ok", client=client, user="", signal=name, value=seconds, detail=reason)
        self._publish_trips()
        return result

    def _override_ended(self, entry: dict) -> None:
        self.audit.record("override_end", outcome="ok", client=HOLDER, user="", signal=entry["interlock"], value=None,
                          detail=f"{entry['ended']}; was: {entry['reason']} (by {entry['by']})")
        self._publish_trips()

    def trips(self) -> list[dict]:
        with self._lock:
            return [t.as_dict() for t in self.tripped.values()]

    def status(self) -> dict:
        now = time.monotonic()
        nodes = {node: {"online": w.online(now), "answered_ago": None if w.last_answer is None else now - w.last_answer,
                        "signals": w.signals, "error": w.error} for node, w in self.watches.items()}
        with self._lock:
            interlocks = {name: {"requires": lock.require.source, "outputs": list(lock.outputs),
                                 "tripped": name in self.tripped, "values": self.values(lock, now)}
                          for name, lock in self.interlocks.items()}
        return {"guard": True, "rig": self.rig.name, "endpoint": self.endpoint, "nodes": nodes,
                "interlocks": interlocks, "trips": self.trips(), "overrides": self.overrides.states(),
                "poll": self.poll,
                "lease": self.rig.spec.watchdogs.lease, "online_timeout": self.online_timeout}

    def _publish_trips(self) -> None:
        self._publish("trips", {"node": "guard", "time": time.time(), "trips": self.trips(),
                                "overrides": self.overrides.states()}, True)

    # -- the socket loop -------------------------------------------------
    def _handle(self, request: dict) -> Any:
        op, args = request.get("op"), request.get("args") or {}
        if op == "ping":
            return {"node": "guard", "pid": os.getpid(), "time": time.time(), "uptime": time.monotonic() - self.started}
        if op == "status":
            return self.status()
        if op == "trips":
            return self.trips()
        if op == "rearm":
            return self.rearm(str(args.get("interlock")), str(request.get("client", "")))
        if op == "audit":
            return self.audit.recent(int(args.get("count", 50)))
        if op == "override":
            return self.override(str(args.get("interlock")), args.get("seconds"), str(args.get("reason", "")),
                                 str(request.get("client", "")))
        if op == "overrides":
            return self.overrides.states()
        raise ConfigError(f"unknown operation {op!r} for the guard; allowed: ping, status, trips, rearm, audit, "
                          "override, overrides")

    def serve(self, heartbeat: float = 0.5) -> None:
        self._publish("status", "online", True)
        self._publish_trips()
        next_beat = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_beat:
                self._publish("heartbeat", {"node": "guard", "t": time.time(), "trips": list(self.tripped),
                                            "online": {n: w.online(now) for n, w in self.watches.items()}}, True)
                next_beat = now + heartbeat
            self.overrides.expire()
            self.evaluate()  # ages values out even when no reading comes
            if not self.router.poll(int(self.poll * 1000)):
                continue
            for identity, frame in protocol.pending_requests(self.router):
                request: dict = {}
                try:
                    request = protocol.decode(frame)
                    reply = {"id": request.get("id"), "ok": True, "result": self._handle(request)}
                except Exception as exc:  # every failure is answered, typed
                    reply = protocol.error_reply(request.get("id"), exc)
                self.router.send_multipart([identity, protocol.encode(reply)])

    def stop(self) -> None:
        self._stop.set()

    def close(self, *, release: bool = True) -> None:
        """Stop watching; give the leases back (a guard stopped on purpose does not force nodes safe)."""
        self._stop.set()
        for watch in self.watches.values():
            watch.close(release=release)
        for thread in self._deliveries:
            thread.join(2)
        for link in self._trip_links.values():
            link.close()
        self._publish("status", "offline", True)
        self.audit.close()
        self.router.close(0)
        self.ctx.term()

"""The node runtime: one process per board that owns its drivers and outlives kernels.

It serves structured requests on a ZeroMQ ROUTER socket (see protocol.py). The
socket loop only routes: anything that touches the hardware runs, in arrival
order, on one I/O thread, so a slow or dead link never stops `ping`, `status`
of the runtime itself, heartbeats or an emergency `safe`, which jumps the queue.
Ramps run on their own timing thread, telemetry on another; MQTT publishing
never blocks any of them.
"""
from __future__ import annotations

import ipaddress
import itertools
import os
import queue
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

import zmq

from labrig.drivers.contract import Driver
from labrig.drivers.errors import ConfigError, LabrigError, RangeError, Refused

from ..realtime import scheduling
from ..rig import Rig
from . import fpga_ops, protocol
from .audit import AuditJournal
from .envelope import Envelope
from .interlocks import InterlockWatch, Trip
from .leases import Leases
from .loops import LoopEngine
from .ramps import Ramp, RampEngine
from .steps import StepExecutor
from .telemetry import TelemetrySampler

URGENT, NORMAL = 0, 1


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
        except OSError:
            return False


class NodeRuntime:
    def __init__(self, rig: Rig, node: str, driver: Driver, *, bind: str = "127.0.0.1", port: int = 0,
                 curve_secret_key: bytes | None = None, curve_public_key: bytes | None = None,
                 publish: Callable[[str, Any, bool], None] | None = None, audit_path: Path | None = None):
        if not is_loopback(bind) and not curve_secret_key:
            raise ConfigError(f"refusing to bind node {node!r} to {bind}: another interface than loopback needs "
                              "CurveZMQ keys (labrig keys generate DIR, then --curve-keys DIR), so that no one "
                              "on the network can drive the hardware")
        self.rig = rig
        self.node = node
        self.spec = rig.node(node)
        self.driver = driver
        self.envelope = Envelope(node, rig.signals_of(node))
        self.started = time.time()
        self._publish = publish or (lambda topic, payload, retain: None)
        self.audit = AuditJournal(audit_path, node=node, publish=lambda entry: self._publish("audit", entry, False))
        self.clients: dict[str, float] = {}
        self.setpoints: dict[str, float] = {}
        self._init_setpoints()

        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        if curve_secret_key:
            self.router.curve_server = True
            self.router.curve_secretkey = curve_secret_key
            self.router.curve_publickey = curve_public_key
        host = "*" if bind in ("0.0.0.0", "*") else bind
        if port:
            self.router.bind(f"tcp://{host}:{port}")
        else:
            port = self.router.bind_to_random_port(f"tcp://{host}")
        self.endpoint = f"tcp://{'127.0.0.1' if host == '*' else bind}:{port}"
        self.replies = self.ctx.socket(zmq.PULL)
        self.replies.bind(f"inproc://replies-{id(self)}")

        self._work: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        self._stop = threading.Event()
        self.ramps = RampEngine(self._write_output)
        self.watch = InterlockWatch(rig.local_interlocks(node), self.driver.read, self._on_trip,
                                    period=self.spec.interlock_period, urgent=self.driver.urgent,
                                    on_override_end=self._override_ended)
        rates = {name: sig.rate or self.spec.telemetry_rate for name, sig in self.envelope.signals.items()}
        self.telemetry = TelemetrySampler(self.driver.read, rates, lambda batch: self._publish("telemetry", batch, False),
                                          node=node)
        # Operations other parts of the runtime add (control loops, the FPGA): op -> fn(args, client).
        # io_ops touch the hardware and run on the I/O thread, in order; socket_ops are answered at once.
        self.io_ops: dict[str, Callable[[dict, str], Any]] = {}
        self.socket_ops: dict[str, Callable[[dict, str], Any]] = {}
        self.audited = set(self.AUDITED)
        self.leases = Leases(node)
        self.socket_ops["lease"] = self._renew_lease
        self.socket_ops["release"] = lambda args, client: self.leases.release(args.get("holder") or client)
        self.socket_ops["leases"] = lambda args, client: self.leases.states()
        self.socket_ops["override"] = self._override
        self.socket_ops["overrides"] = lambda args, client: self.watch.overrides.states()
        self.loops = LoopEngine(self)  # PID loops: ops `loops`, `loop`; a timing thread if the node has loops
        fpga_ops.install(self)  # a RedPitaya's FPGA modules: op `fpga` (journaled)
        # what a lost lease does: outputs safe at once, latched; a running step table ramps down first
        self.lease_lost_handler: Callable[[str, float], None] = self._lease_lost
        self.steps = StepExecutor(self)  # step tables of a sequence run: ops `sequence_*` (steps.py)
        self._worker = threading.Thread(target=self._io_worker, name=f"io-{node}", daemon=True)
        self._worker.start()
        self._heartbeat_seq = 0
        self.realtime_refused: str | None = None  # why Linux refused the rig's `realtime` (serve_node sets it)

    # -- hardware access (I/O thread, ramp thread) -------------------------
    def _init_setpoints(self) -> None:
        for name, sig in self.envelope.signals.items():
            if sig.direction == "out":
                try:
                    self.setpoints[name] = self.driver.read(name)
                except (LabrigError, OSError):
                    self.setpoints[name] = sig.safe if sig.safe is not None else 0.0

    def _write_output(self, name: str, value: float) -> float:
        self.driver.write(name, value)
        self.setpoints[name] = value
        return value

    def _write_then_read(self, name: str, value: float, reads: list[str]) -> dict[str, float] | Exception:
        """A step scan's point: set an output, then read `reads` once the device acknowledged the set
        (driver.write_read_many); the readings, or what the reads raised. A failed set raises."""
        _, got = self.driver.write_read_many(name, value, reads)
        self.setpoints[name] = value
        return got

    def _handle_io(self, op: str, args: dict[str, Any], client: str) -> Any:
        if op == "read":
            self.envelope.signal(args.get("signal"))
            return self.driver.read(args["signal"])
        if op == "read_many":
            names = args.get("signals") or list(self.envelope.signals)
            for name in names:
                self.envelope.signal(name)
            return {name: self.driver.read(name) for name in names}
        if op == "write":
            name = args.get("signal")
            value = self.envelope.check_value(name, args.get("value"))
            self.watch.check_write(name, value, self.envelope.signals[name].safe)
            self.envelope.check_step(name, value, self.setpoints.get(name))
            self.loops.guard(name)  # a loop in auto owns its actuator
            self.ramps.stop(name)  # a direct write ends a ramp on the same output
            return self._write_output(name, value)
        if op == "ramp":
            name = args.get("signal")
            target, rate = self.envelope.check_ramp(name, args.get("target"), args.get("rate"))
            self.watch.check_write(name, target, self.envelope.signals[name].safe)
            self.loops.guard(name)
            start = self.setpoints.get(name, 0.0)
            return self.ramps.start(Ramp(name, start, target, rate, client=client)).as_dict()
        if op == "safe":
            return self._safe_state()
        if op == "trip":
            return self._remote_trip(args, client)
        if op == "rearm":
            result = self.watch.rearm(args.get("interlock"), by_guard=bool(args.get("by_guard")))
            self._publish_trips()
            return result
        if op == "status":
            return self._status()
        if op in self.io_ops:
            return self.io_ops[op](args, client)
        raise self._unknown(op)

    def _unknown(self, op) -> ConfigError:
        allowed = [*protocol.OPS, *self.io_ops, *self.socket_ops]
        return ConfigError(f"unknown operation {op!r}; allowed: {', '.join(allowed)}")

    def _safe_state(self) -> dict[str, Any]:
        """Every output to its safe value; never raises. An output it cannot reach latches a trip."""
        self.loops.stop_all("safe state requested")
        self.ramps.stop_all("safe state requested")
        with self.driver.urgent():
            results = self.driver.safe_state()
        for name, result in results.items():
            if result.ok:
                self.setpoints[name] = result.value
        failed = tuple(name for name, r in results.items() if not r.ok)
        if failed:
            errors = {name: results[name].error for name in failed}
            self.watch.latch(Trip("outputs_unreachable", f"could not drive {', '.join(failed)} safe: {errors}",
                                  {}, failed, layer="link"), rearm_check=lambda: self._reachable(failed))
        return {name: {"ok": r.ok, "value": r.value, "error": r.error} for name, r in results.items()}

    def _reachable(self, outputs: tuple[str, ...]) -> tuple[bool, str]:
        for name in outputs:
            try:
                self.driver.read(name)
            except (LabrigError, OSError) as exc:
                return False, f"{name} is still unreachable ({type(exc).__name__}: {exc})"
        return True, ""

    def _remote_trip(self, args: dict, client: str) -> dict:
        """The guard latches a cross-node interlock here: its outputs on this node go safe."""
        name = str(args.get("interlock") or "")
        outputs = tuple(args.get("outputs") or ())
        if not name or not outputs:
            raise ConfigError("a trip needs an interlock name and the outputs it forces safe")
        for output in outputs:
            self.envelope.output(output)
        trip = self.watch.latch(Trip(name, str(args.get("reason", "")), dict(args.get("values") or {}), outputs,
                                     layer=str(args.get("layer", "supervisor"))))
        return trip.as_dict()

    def _override(self, args: dict, client: str) -> dict:
        result = self.watch.overrides.set(str(args.get("interlock")), args.get("seconds"), args.get("reason", ""),
                                          by=client)
        self._publish_trips()
        return result

    def _override_ended(self, entry: dict) -> None:
        self.audit.record("override_end", outcome="ok", client="runtime", user="", signal=entry["interlock"],
                          value=None, detail=f"{entry['ended']}; was: {entry['reason']} (by {entry['by']})")
        self._publish_trips()

    def _publish_trips(self) -> None:
        self._publish("trips", {"node": self.node, "time": time.time(), "trips": self.watch.trips(),
                                "overrides": self.watch.overrides.states()}, True)

    def _renew_lease(self, args: dict, client: str) -> dict:
        holder = str(args.get("holder") or client)
        result = self.leases.renew(holder, args.get("ttl"))
        if result["new"]:  # renewals are not journaled, taking hold is
            self.audit.record("lease", outcome="ok", client=client, user="", signal=None, value=result["ttl"],
                              detail=f"{holder} holds node {self.node}")
        return result

    def _lease_lost(self, holder: str, overdue: float) -> None:
        """A supervisor that held this node stopped renewing its lease: every output goes safe, latched."""
        outputs = tuple(n for n, s in self.envelope.signals.items() if s.direction == "out" and s.safe is not None)
        if outputs:
            self.watch.latch(Trip("lease_lost", f"the lease of {holder} was not renewed ({overdue:.2f} s overdue): "
                                  "no supervisor watches this node", {}, outputs, layer="lease"))

    def _status(self) -> dict[str, Any]:
        signals = {}
        for name, sig in self.envelope.signals.items():
            entry = {"unit": sig.unit, "direction": sig.direction, "channel": sig.channel,
                     "limits": list(sig.limits) if sig.limits else None, "safe": sig.safe,
                     "max_slew": sig.max_slew}
            try:
                entry["value"] = self.driver.read(name)
            except (LabrigError, OSError) as exc:
                entry["value"], entry["error"] = None, f"{type(exc).__name__}: {exc}"
            if sig.direction == "out":
                entry["setpoint"] = self.setpoints.get(name)
            signals[name] = entry
        return {**self._identity(), "kind": self.spec.kind, "url": self.driver.url, "signals": signals,
                "ramps": self.ramps.states(), "trips": self.watch.trips(), "clients": dict(self.clients),
                "leases": self.leases.states(), "overrides": self.watch.overrides.states(),
                "telemetry": {"rates": dict(self.telemetry.rates), **self.telemetry.stats},
                "scheduling": {**scheduling(), **({"refused": self.realtime_refused} if self.realtime_refused else {})}}

    def _identity(self) -> dict[str, Any]:
        return {"node": self.node, "rig": self.rig.name, "pid": os.getpid(), "endpoint": self.endpoint,
                "time": time.time(), "uptime": time.time() - self.started}

    def _io_worker(self) -> None:
        out = self.ctx.socket(zmq.PUSH)
        out.setsockopt(zmq.LINGER, 0)
        out.connect(f"inproc://replies-{id(self)}")
        try:
            while True:
                _, _, item = self._work.get()
                if item is None:
                    return
                identity, request = item
                if identity is None:  # a job of the runtime itself (a lost lease)
                    try:
                        request()
                    except Exception:  # noqa: BLE001 - the trip path reports its own failures
                        pass
                    continue
                op, args = request["op"], request.get("args") or {}
                try:
                    result = self._handle_io(op, args, request.get("client", ""))
                    reply = {"id": request.get("id"), "ok": True, "result": result}
                    self._audit(request, "ok", result)
                except Exception as exc:  # every failure is answered, typed
                    reply = protocol.error_reply(request.get("id"), exc)
                    self._audit(request, "refused" if isinstance(exc, (ConfigError, RangeError, Refused)) else "failed",
                                None, f"{type(exc).__name__}: {exc}")
                out.send_multipart([identity, protocol.encode(reply)])
        finally:
            out.close(0)

    def _on_trip(self, trip: Trip) -> None:
        """A local interlock failed: its outputs safe now, latched, audited, published (retained)."""
        if hasattr(self, "loops"):  # (a trip while __init__ runs comes before the loops exist)
            self.loops.on_trip(trip)  # loops driving these outputs go to manual: they must not fight the trip
        for name in trip.outputs:
            self.ramps.stop(name, f"interlock {trip.interlock} tripped")
        with self.driver.urgent():  # before any queued telemetry or ordinary request
            for name in trip.outputs:
                safe = self.envelope.signals[name].safe
                try:
                    self._write_output(name, safe)
                    trip.safe[name] = {"ok": True, "value": safe}
                except Exception as exc:  # reported with the trip; the device's own watchdog is the next layer
                    trip.safe[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        failed = [n for n, r in trip.safe.items() if not r["ok"]]
        self.audit.record("trip", outcome="failed" if failed else "ok", client="runtime", user="",
                          signal=",".join(trip.outputs), value=trip.values, detail=trip.reason)
        self._publish_trips()

    AUDITED = ("write", "ramp", "stop_ramp", "safe", "rearm", "trip", "release", "override")

    def _audit(self, request: dict, outcome: str, result: Any, detail: str = "") -> None:
        op = request.get("op")
        if op not in self.audited:
            return
        args = request.get("args") or {}
        value = args.get("value", args.get("target", args.get("interlock", args.get("set"))))
        if op == "safe" and isinstance(result, dict):
            failed = {k: v["error"] for k, v in result.items() if not v["ok"]}
            outcome, detail = ("failed", f"not reached: {failed}") if failed else (outcome, detail)
            value = {k: v["value"] for k, v in result.items()}
        elif op == "ramp" and outcome == "ok":
            detail = f"rate {args.get('rate')}"
        elif op == "override":
            value = args.get("seconds")
            detail = f"{args.get('reason', '')}" + (f"; {detail}" if detail else "")
        signal = args.get("signal", args.get("name", args.get("interlock") if op == "override" else None))
        self.audit.record(op, outcome=outcome, client=str(request.get("client", "")),
                          user=str(request.get("user", "")), signal=signal, value=value, detail=detail)

    # -- the socket loop ---------------------------------------------------
    def _answer(self, identity: bytes, reply: dict) -> None:
        self.router.send_multipart([identity, protocol.encode(reply)])

    def _dispatch(self, identity: bytes, frame: bytes) -> None:
        try:
            request = protocol.decode(frame)
        except (ValueError, UnicodeDecodeError) as exc:
            self._answer(identity, protocol.error_reply(None, ConfigError(f"malformed request: {exc}")))
            return
        op, args = request.get("op"), request.get("args") or {}
        self.clients[str(request.get("client", "?"))] = time.time()
        try:
            if op == "ping":
                result = self._identity()
            elif op == "ramps":
                result = self.ramps.states()
            elif op == "stop_ramp":
                self.envelope.output(args.get("signal"))
                ramp = self.ramps.stop(args["signal"])
                result = ramp.as_dict() if ramp else None
                self._audit(request, "ok", result)
            elif op == "audit":
                result = self.audit.recent(int(args.get("count", 50)))
            elif op == "configure":
                rates = args.get("telemetry") or {}
                for name in rates:
                    self.envelope.signal(name)
                result = {"telemetry": self.telemetry.configure(rates)}
            elif op == "trips":
                result = self.watch.trips()
            elif op in self.socket_ops:
                result = self.socket_ops[op](args, str(request.get("client", "")))
                self._audit(request, "ok", result)
            elif op in ("read", "read_many", "write", "ramp", "status", "safe", "rearm", "trip") or op in self.io_ops:
                if op == "safe":
                    self.ramps.stop_all("safe state requested")  # at once, before the queue
                elif op == "trip":
                    for output in args.get("outputs") or ():
                        self.ramps.stop(output, f"interlock {args.get('interlock')} tripped")
                self._work.put((URGENT if op in ("safe", "trip") else NORMAL, next(self._order),
                                (identity, request)))
                return
            else:
                raise self._unknown(op)
            self._answer(identity, {"id": request.get("id"), "ok": True, "result": result})
        except Exception as exc:
            if op in self.socket_ops:  # a refused override, lease or loop query is journaled too
                self._audit(request, "refused", None, f"{type(exc).__name__}: {exc}")
            self._answer(identity, protocol.error_reply(request.get("id"), exc))

    def heartbeat(self) -> None:
        self._heartbeat_seq += 1
        self._publish("heartbeat", {**self._identity(), "t": time.time(), "seq": self._heartbeat_seq,
                                    "trips": [t["interlock"] for t in self.watch.trips()],
                                    "held_by": sorted(self.leases.holders()),
                                    "overrides": [o["interlock"] for o in self.watch.overrides.states()]}, True)

    def serve(self) -> None:
        """Serve until stop(); publishes a heartbeat every `heartbeat` seconds."""
        self._publish("status", "online", True)
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.replies, zmq.POLLIN)
        period = self.spec.heartbeat
        next_beat = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_beat:
                self.heartbeat()
                next_beat = now + period
            for holder, overdue in self.leases.expired(now):
                self._work.put((URGENT, next(self._order),
                                (None, lambda h=holder, o=overdue: self.lease_lost_handler(h, o))))
            wake = min(next_beat, self.leases.next_deadline() or next_beat)
            events = dict(poller.poll(max(1, int((wake - now) * 1000) + 1) if not self._stop.is_set() else 0))
            if self.router in events:
                for identity, frame in protocol.pending_requests(self.router):
                    self._dispatch(identity, frame)
            if self.replies in events:
                while True:
                    try:
                        self.router.send_multipart(self.replies.recv_multipart(zmq.NOBLOCK))
                    except zmq.Again:
                        break

    def stop(self) -> None:
        self._stop.set()

    def close(self, *, safe: bool = True) -> None:
        """Stop ramps and telemetry, drive outputs safe (a stopped runtime leaves the board safe), close."""
        self.loops.close()
        self.watch.close()
        self.ramps.close()
        self.telemetry.close()
        if safe:
            try:
                self._safe_state()
            except Exception:  # closing must finish; the device's own watchdog is the next layer
                pass
        self._work.put((URGENT, -1, None))
        self._worker.join(3)
        self._publish("status", "offline", True)
        self.audit.close()
        self.driver.close()
        self.router.close(0)
        self.replies.close(0)
        self.ctx.term()

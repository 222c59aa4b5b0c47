"""The one simulated world that every device simulator is coupled to.

The plasma model runs in one process (`python -m labrig.simulators world`) at
wall-clock time. It publishes its whole state on a ZeroMQ PUB socket (a JSON
dict, ~200 times a second) and takes actuator changes on a PULL socket; a REP
socket answers control requests (snapshot, set, faults) from tests and the CLI.

Device simulators hold a `WorldLink`: the latest published state, cached by a
background thread (so a protocol request never waits for the world), and
`set(name, value)` for actuators. Unit tests use `LocalWorld`, the same
interface running the model on a thread in-process.

Faults live here too, so one control point injects them into every simulator:
  sensor faults   {"kind": "sensor", "name": QUANTITY, "mode": "stuck"|"nan"|"offset"|"clear", "value": x}
  link faults     {"kind": "link", "name": NODE, "mode": "mute"|"garble"|"slow"|"clear", "value": seconds}
A stuck sensor keeps the value it had; a muted link makes that node's simulator
stop answering; a garbled one corrupts its replies; a slow one delays them.
"""
from __future__ import annotations

import json
import math
import threading
import time
from typing import Any

import zmq

from .plasma import HeliconPlasma

PUBLISH_PERIOD = 0.005  # s between state messages
STEP_PERIOD = 0.001  # s of model time per integration step at most


class Faults:
    """Sensor and link faults, applied to published state."""

    SENSOR_MODES = ("stuck", "nan", "offset", "clear")
    LINK_MODES = ("mute", "garble", "slow", "clear")

    def __init__(self):
        self.sensor: dict[str, dict[str, Any]] = {}
        self.link: dict[str, dict[str, Any]] = {}

    def apply(self, request: dict[str, Any], state: dict[str, float]) -> None:
        kind, name, mode = request.get("kind"), request.get("name"), request.get("mode")
        if kind == "sensor":
            if name not in state:
                raise ValueError(f"unknown quantity {name!r}; known: {', '.join(sorted(state))}")
            if mode not in self.SENSOR_MODES:
                raise ValueError(f"sensor fault mode {mode!r}; allowed: {', '.join(self.SENSOR_MODES)}")
            if mode == "clear":
                self.sensor.pop(name, None)
            else:
                self.sensor[name] = {"mode": mode, "value": float(request.get("value", 0.0)),
                                     "held": state[name]}
        elif kind == "link":
            if not name:
                raise ValueError("link fault needs the node name")
            if mode not in self.LINK_MODES:
                raise ValueError(f"link fault mode {mode!r}; allowed: {', '.join(self.LINK_MODES)}")
            if mode == "clear":
                self.link.pop(name, None)
            else:
                self.link[name] = {"mode": mode, "value": float(request.get("value", 0.0))}
        else:
            raise ValueError(f"fault kind {kind!r}; allowed: sensor, link")

    def filter(self, state: dict[str, float]) -> dict[str, float]:
        if not self.sensor:
            return state
        out = dict(state)
        for name, fault in self.sensor.items():
            if fault["mode"] == "stuck":
                out[name] = fault["held"]
            elif fault["mode"] == "nan":
                out[name] = math.nan
            elif fault["mode"] == "offset":
                out[name] = state[name] + fault["value"]
        return out

    def snapshot(self) -> dict[str, Any]:
        return {"sensor": {k: dict(v) for k, v in self.sensor.items()},
                "link": {k: dict(v) for k, v in self.link.items()}}


class WorldBase:
    """What a device simulator sees of the world."""

    def get(self, name: str) -> float:
        return self.state()[name]

    def state(self) -> dict[str, float]:  # pragma: no cover - interface
        raise NotImplementedError

    def set(self, name: str, value: float) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def link_fault(self, node: str) -> dict[str, Any] | None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LocalWorld(WorldBase):
    """The model on a background thread in this process (unit tests, benchmarks)."""

    def __init__(self, model: HeliconPlasma | None = None, *, seed: int = 0, realtime: bool = True):
        self.model = model or HeliconPlasma(seed=seed)
        self.faults = Faults()
        self._lock = threading.Lock()
        self._state = self.model.state()
        self._stop = threading.Event()
        self._thread = None
        if realtime:
            self._thread = threading.Thread(target=self._run, name="local-world", daemon=True)
            self._thread.start()

    def _run(self):
        last = time.monotonic()
        while not self._stop.wait(PUBLISH_PERIOD):
            now = time.monotonic()
            self.advance(now - last)
            last = now

    def advance(self, dt: float) -> None:
        with self._lock:
            self.model.step(dt)
            self._state = self.model.state()

    def state(self) -> dict[str, float]:
        with self._lock:
            return self.faults.filter(self._state)

    def set(self, name: str, value: float) -> None:
        with self._lock:
            self.model.set_input(name, value)

    def fault(self, **request) -> None:
        with self._lock:
            self.faults.apply(request, self._state)

    def link_fault(self, node: str) -> dict[str, Any] | None:
        return self.faults.link.get(node)

    def close(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(2)


class WorldServer:
    """The world process: model at wall-clock time, PUB state, PULL actuators, REP control."""

    def __init__(self, *, seed: int = 0, host: str = "127.0.0.1"):
        self.model = HeliconPlasma(seed=seed)
        self.faults = Faults()
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pull = self.ctx.socket(zmq.PULL)
        self.rep = self.ctx.socket(zmq.REP)
        for sock in (self.pub, self.pull, self.rep):
            sock.setsockopt(zmq.LINGER, 0)
        self.endpoints = {
            "state": self._bind(self.pub, host),
            "actuators": self._bind(self.pull, host),
            "control": self._bind(self.rep, host),
        }
        self._stop = threading.Event()
        # input -> [value, when it last changed (time.monotonic(): one clock for every process
        # of this host)], so benchmarks time a trip by the devices, not by who asked for it
        self.changed: dict[str, list[float]] = {}

    def _set_input(self, name: str, value: float) -> float:
        now = time.monotonic()
        self.model.set_input(name, value)
        last = self.changed.get(name)
        if last is None or last[0] != value:
            self.changed[name] = [value, now]
        return now

    @staticmethod
    def _bind(sock, host):
        port = sock.bind_to_random_port(f"tcp://{host}")
        return f"tcp://{host}:{port}"

    def _message(self) -> bytes:
        state = self.faults.filter(self.model.state())
        return json.dumps({"t": time.time(), "state": state,
                           "faults": self.faults.snapshot()}).encode()

    def _control(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "snapshot":
            return {"ok": True, "state": self.faults.filter(self.model.state()),
                    "inputs": dict(self.model.inputs), "faults": self.faults.snapshot(),
                    "changed": {k: {"value": v, "at": t} for k, (v, t) in self.changed.items()},
                    "now": time.monotonic()}
        if op == "set":
            return {"ok": True, "at": self._set_input(request["name"], request["value"])}
        if op == "fault":
            self.faults.apply(request, self.model.state())
            return {"ok": True, "faults": self.faults.snapshot(), "at": time.monotonic()}
        if op == "ping":
            return {"ok": True}
        raise ValueError(f"unknown op {op!r}; allowed: snapshot, set, fault, ping")

    def serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.pull, zmq.POLLIN)
        poller.register(self.rep, zmq.POLLIN)
        last = time.monotonic()
        next_pub = last
        while not self._stop.is_set():
            # whole milliseconds, rounded up: zmq truncates a fraction to 0 and the loop would spin
            timeout_ms = max(0, math.ceil((next_pub - time.monotonic()) * 1000))
            for sock, _ in poller.poll(timeout_ms):
                if sock is self.pull:
                    while True:
                        try:
                            msg = json.loads(self.pull.recv(zmq.NOBLOCK))
                        except zmq.Again:
                            break
                        try:
                            self._set_input(msg["name"], msg["value"])
                        except (KeyError, ValueError):
                            pass  # a device simulator's bug must not stop the world
                elif sock is self.rep:
                    try:
                        reply = self._control(json.loads(self.rep.recv()))
                    except Exception as exc:
                        reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                    self.rep.send(json.dumps(reply).encode())
            now = time.monotonic()
            if now >= next_pub:
                self.model.step(now - last)
                last = now
                self.pub.send(self._message())
                next_pub = now + PUBLISH_PERIOD

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        for sock in (self.pub, self.pull, self.rep):
            sock.close(0)
        self.ctx.term()


class WorldLink(WorldBase):
    """A device simulator's connection to the world process."""

    def __init__(self, state_endpoint: str, actuator_endpoint: str, *, timeout: float = 5.0):
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.setsockopt(zmq.RCVTIMEO, 200)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.connect(state_endpoint)
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.setsockopt(zmq.LINGER, 0)
        self.push.setsockopt(zmq.SNDTIMEO, 1000)
        self.push.connect(actuator_endpoint)
        self._push_lock = threading.Lock()
        self._state: dict[str, float] = {}
        self._faults: dict[str, Any] = {"sensor": {}, "link": {}}
        self._first = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="world-link", daemon=True)
        self._thread.start()
        if not self._first.wait(timeout):
            self.close()
            raise TimeoutError(f"no state from the world at {state_endpoint} within {timeout} s")

    def _receive(self):
        while not self._stop.is_set():
            try:
                msg = json.loads(self.sub.recv())
            except zmq.Again:
                continue
            except zmq.ZMQError:
                return
            self._state = msg["state"]
            self._faults = msg["faults"]
            self._first.set()

    def state(self) -> dict[str, float]:
        return self._state

    def set(self, name: str, value: float) -> None:
        with self._push_lock:
            self.push.send(json.dumps({"name": name, "value": float(value)}).encode())
        # Reflect our own actuator at once, so a readback right after a write is consistent.
        if name in self._state:
            self._state = {**self._state, name: float(value)}

    def link_fault(self, node: str) -> dict[str, Any] | None:
        return self._faults.get("link", {}).get(node)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1)
        self.sub.close(0)
        self.push.close(0)
        self.ctx.term()


def world_control(endpoint: str, request: dict[str, Any], *, timeout: float = 2.0) -> dict[str, Any]:
    """One control request to the world process (tests, `labrig sim fault`)."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
    sock.setsockopt(zmq.SNDTIMEO, int(timeout * 1000))
    try:
        sock.connect(endpoint)
        sock.send(json.dumps(request).encode())
        try:
            reply = json.loads(sock.recv())
        except zmq.Again:
            raise TimeoutError(f"the world at {endpoint} did not answer within {timeout} s") from None
    finally:
        sock.close(0)
    if not reply.get("ok"):
        raise ValueError(reply.get("error", "world refused the request"))
    return reply

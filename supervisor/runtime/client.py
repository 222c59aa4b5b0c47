"""Clients of a node runtime: sync (kernels, CLI, tests) and async (the supervisor's loops).

    with RuntimeClient("tcp://127.0.0.1:5555", node="ard1") as ard:
        ard.read("langmuir_I")
        ard.ramp("probe_bias", -80, rate=100)

Every request has a timeout (default 2 s). A runtime that does not answer raises
NodeUnavailable naming the node, its endpoint and when it last answered; a late
reply is recognised by its id and dropped, never taken for another request's.
"""
from __future__ import annotations

import getpass
import itertools
import os
import threading
import time
from typing import Any, Callable

import zmq
import zmq.asyncio

from labrig.drivers.errors import LinkClosed, NodeUnavailable

from . import protocol


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return str(os.getuid())


class _Base:
    def __init__(self, endpoint: str, *, node: str = "", timeout: float = 2.0, client: str = "",
                 server_public_key: bytes | None = None, client_keys: tuple[bytes, bytes] | None = None,
                 last_heartbeat: Callable[[], float | None] | None = None):
        self.endpoint = endpoint
        self.node = node or endpoint
        self.timeout = timeout
        self.client = client or f"{os.path.basename(os.sys.argv[0] or 'python')}-{os.getpid()}"
        self.user = _user()
        self.last_answer: float | None = None  # wall-clock time of the last reply
        self._last_heartbeat = last_heartbeat
        self._ids = itertools.count(1)
        self._server_public_key = server_public_key
        self._client_keys = client_keys

    def _configure(self, sock) -> None:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # queue nothing for a runtime that is not connected
        if self._server_public_key:
            public, secret = self._client_keys or zmq.curve_keypair()
            sock.curve_serverkey = self._server_public_key
            sock.curve_publickey = public
            sock.curve_secretkey = secret
        sock.connect(self.endpoint)

    def _request(self, op: str, args: dict[str, Any]) -> tuple[int, bytes]:
        request_id = next(self._ids)
        return request_id, protocol.encode({"id": request_id, "op": op, "args": args,
                                            "client": self.client, "user": self.user})

    def _unavailable(self, op: str) -> NodeUnavailable:
        now = time.time()
        parts = [f"node {self.node!r} did not answer {op!r} within {self.timeout:g} s (runtime at {self.endpoint}"]
        heartbeat = self._last_heartbeat() if self._last_heartbeat else None
        if heartbeat:
            parts.append(f"; last heartbeat {now - heartbeat:.1f} s ago")
        elif self._last_heartbeat:
            parts.append("; no heartbeat seen")
        if self.last_answer:
            parts.append(f"; last answer {now - self.last_answer:.1f} s ago")
        return NodeUnavailable("".join(parts) + ")")

    def _result(self, reply: dict[str, Any]):
        self.last_answer = time.time()
        if not reply.get("ok"):
            protocol.raise_error(reply.get("error", {}))
        return reply.get("result")

    # -- the operations, named ------------------------------------------
    def _ops(call):  # noqa: N805 - builds the named methods for both flavours
        def ping(self):
            return call(self, "ping")

        def read(self, signal: str):
            return call(self, "read", signal=signal)

        def read_many(self, signals: list[str] | None = None):
            return call(self, "read_many", signals=signals)

        def write(self, signal: str, value: float):
            return call(self, "write", signal=signal, value=value)

        def ramp(self, signal: str, target: float, rate: float):
            return call(self, "ramp", signal=signal, target=target, rate=rate)

        def ramps(self):
            return call(self, "ramps")

        def stop_ramp(self, signal: str):
            return call(self, "stop_ramp", signal=signal)

        def safe(self):
            return call(self, "safe")

        def status(self):
            return call(self, "status")

        def configure(self, **args):
            return call(self, "configure", **args)

        def audit(self, count: int = 50):
            return call(self, "audit", count=count)

        def trips(self):
            return call(self, "trips")

        def rearm(self, interlock: str):
            return call(self, "rearm", interlock=interlock)
        return ping, read, read_many, write, ramp, ramps, stop_ramp, safe, status, configure, audit, trips, rearm


class RuntimeClient(_Base):
    """A blocking client, safe to share between threads."""

    def __init__(self, endpoint: str, **options):
        super().__init__(endpoint, **options)
        self._ctx = zmq.Context.instance()
        self._lock = threading.Lock()
        self._sock = None
        self._closed = False

    def _socket(self):
        if self._sock is None:
            self._sock = self._ctx.socket(zmq.DEALER)
            self._configure(self._sock)
        return self._sock

    def call(self, op: str, *, timeout: float | None = None, **args):
        """Send one request and wait (bounded) for its reply."""
        if self._closed:
            raise LinkClosed(f"client of node {self.node!r} is closed")
        timeout = self.timeout if timeout is None else timeout
        request_id, frame = self._request(op, args)
        deadline = time.monotonic() + timeout
        with self._lock:
            sock = self._socket()
            while True:  # IMMEDIATE: a send waits (bounded) for a live connection
                try:
                    sock.send(frame, zmq.NOBLOCK)
                    break
                except zmq.Again:
                    if time.monotonic() >= deadline:
                        self._reset()
                        raise self._unavailable(op) from None
                    sock.poll(10, zmq.POLLOUT)
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not sock.poll(int(left * 1000) + 1, zmq.POLLIN):
                    # drop the socket: a late reply must not surprise the next request
                    self._reset()
                    raise self._unavailable(op)
                reply = protocol.decode(sock.recv())
                if reply.get("id") == request_id:
                    return self._result(reply)

    def _reset(self):
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    (ping, read, read_many, write, ramp, ramps, stop_ramp, safe, status, configure, audit, trips,
     rearm) = _Base._ops(
        lambda self, op, **args: self.call(op, **args))

    def close(self):
        with self._lock:
            self._closed = True
            self._reset()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AsyncRuntimeClient(_Base):
    """The same requests for asyncio code: `await client.read("langmuir_I")`.

    One request at a time per client (an asyncio lock); use several clients for
    concurrent requests to one node.
    """

    def __init__(self, endpoint: str, **options):
        super().__init__(endpoint, **options)
        self._ctx = zmq.asyncio.Context.instance()
        self._sock = None
        self._lock = None

    async def call(self, op: str, *, timeout: float | None = None, **args):
        import asyncio
        if self._lock is None:
            self._lock = asyncio.Lock()
        timeout = self.timeout if timeout is None else timeout
        request_id, frame = self._request(op, args)
        async with self._lock:
            if self._sock is None:
                self._sock = self._ctx.socket(zmq.DEALER)
                self._configure(self._sock)
            try:
                async with asyncio.timeout(timeout):
                    await self._sock.send(frame)
                    while True:
                        reply = protocol.decode(await self._sock.recv())
                        if reply.get("id") == request_id:
                            return self._result(reply)
            except TimeoutError:
                self._sock.close(0)
                self._sock = None
                raise self._unavailable(op) from None

    (ping, read, read_many, write, ramp, ramps, stop_ramp, safe, status, configure, audit, trips,
     rearm) = _Base._ops(
        lambda self, op, **args: self.call(op, **args))

    def close(self):
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

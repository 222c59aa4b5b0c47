"""The node runtime's request protocol: structured JSON over ZeroMQ, never code strings.

A client (DEALER) sends one frame, a JSON object:

    {"id": 7, "op": "write", "args": {"signal": "probe_bias", "value": -40.0},
     "client": "kernel-ard1", "user": "alice"}

and the runtime (ROUTER) answers with the same id:

    {"id": 7, "ok": true, "result": -40.0}
    {"id": 7, "ok": false, "error": {"type": "RangeError", "message": "probe_bias = 70 V ..."}}

Operations (args):
    ping        ()                        -> {"node", "pid", "time", "uptime"}
    read        (signal)                  -> value, physical units
    read_many   (signals: list | None)    -> {signal: value}; None: every signal of the node
    write       (signal, value)           -> the value written
    ramp        (signal, target, rate)    -> the ramp's state; rate in unit/s
    ramps       ()                        -> [ramp state, ...] (running and recently finished)
    stop_ramp   (signal)                  -> the ramp's state
    safe        ()                        -> {output: {"ok", "value", "error"}}
    status      ()                        -> node, signals (value, unit, limits, ...), ramps, telemetry
    configure   (telemetry: {signal: rate_hz})  -> the telemetry rates now in force
    audit       (count=50)                -> the latest audit entries (see audit.py)
    trips       ()                        -> the latched trips of this node's own interlocks
    rearm       (interlock)               -> re-arm a tripped interlock; refused while its condition fails

Every write, ramp, stop_ramp and safe is recorded in the runtime's audit journal,
with its client, user and outcome, refusals included.

Errors travel by type name and are raised again on the client side as the same
class from labrig.drivers.errors.
"""
from __future__ import annotations

import json
import math
from typing import Any, Iterator

import zmq

from labrig.drivers import errors

OPS = ("ping", "read", "read_many", "write", "ramp", "ramps", "stop_ramp", "safe", "status", "configure", "audit", "trips",
       "rearm")

_ERROR_TYPES = {name: getattr(errors, name) for name in dir(errors)
                if isinstance(getattr(errors, name), type) and issubclass(getattr(errors, name), Exception)}


def _clean(value):
    """JSON has no NaN: send it as None (a stale or failed reading)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(_clean(message), separators=(",", ":")).encode()


def decode(frame: bytes) -> dict[str, Any]:
    message = json.loads(frame)
    if not isinstance(message, dict):
        raise ValueError("a request is a JSON object")
    return message


def error_reply(request_id: Any, exc: BaseException) -> dict[str, Any]:
    kind = type(exc).__name__ if type(exc).__name__ in _ERROR_TYPES else "LabrigError"
    return {"id": request_id, "ok": False, "error": {"type": kind, "message": str(exc)}}


def raise_error(error: dict[str, Any]) -> None:
    cls = _ERROR_TYPES.get(error.get("type", ""), errors.LabrigError)
    raise cls(error.get("message", ""))


def pending_requests(router: zmq.Socket) -> Iterator[tuple[bytes, bytes]]:
    """(identity, frame) of every request waiting on a ROUTER socket, without blocking.
    A frame without an identity cannot be answered, and is skipped."""
    while True:
        try:
            identity, frame = router.recv_multipart(zmq.NOBLOCK)[:2]
        except zmq.Again:
            return
        except ValueError:
            continue
        yield identity, frame

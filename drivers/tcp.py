"""A bounded TCP connect for drivers that speak their protocol on a raw socket."""
from __future__ import annotations

import socket
import time

from .errors import LinkClosed, LinkTimeout


def connect(host: str, port: int, deadline: float, *, device: str, limit: float) -> socket.socket:
    """Connect before `deadline` (time.monotonic()); LinkTimeout or LinkClosed naming `device` otherwise.

    `limit` is the timeout the caller was given, for the message. TCP_NODELAY is set: request/reply
    protocols send tiny frames, and Nagle plus delayed ACK would add ~40 ms to each.
    """
    try:
        sock = socket.create_connection((host, port), timeout=max(deadline - time.monotonic(), 1e-3))
    except socket.timeout:
        raise LinkTimeout(f"no connection to {host}:{port} within {limit:.3g} s", device=device) from None
    except OSError as exc:
        raise LinkClosed(f"cannot connect to {host}:{port}: {exc.strerror or exc}", device=device) from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock

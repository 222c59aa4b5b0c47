"""A line client of the Red Pitaya SCPI server (TCP 5000).

Commands and replies are ASCII lines; the server ends replies with "\\r\\n".
Only queries (ending in "?") are answered, so a plain command is confirmed with
"*OPC?" in the same round trip: the server runs commands in order, and "1"
comes back only after the command ran. Some server versions (and labrig's
simulator) answer a command they cannot run with "ERR!".

    scpi = SCPIClient("rp-f0a1b2.local", 5000, timeout=1.0)
    scpi.query("*IDN?")                       # 'REDPITAYA,INSTR2020,...'
    scpi.command("SOUR1:VOLT 0.3")            # sent, then confirmed by *OPC?
    scpi.query_values("ACQ:SOUR1:DATA?")      # [0.0123, 0.0119, ...]

Failures: no reply in time -> LinkTimeout; connection refused or closed ->
LinkClosed; "ERR!", an undecodable or unexpected reply -> FrameError. After any
failure a late or partial reply may still be on its way, so the connection is
dropped and the next call reconnects: a reply is never matched to the wrong query.
"""
from __future__ import annotations

import re
import socket
import threading
import time

from ..errors import FrameError, LinkClosed, LinkTimeout
from ..tcp import connect

DEFAULT_PORT = 5000
TERMINATOR = b"\r\n"
MAX_REPLY = 4 * 1024 * 1024  # bytes; a full 16k-sample ASCII buffer is ~200 kB
ERROR_REPLY = "ERR!"
# What a number list may contain: anything else (a flipped bit, "nan", "1_0") is a garbled reply.
_NUMBER_CHARS = re.compile(r"[0-9eE+\-.,]*")


class SCPIClient:
    """One connection to a SCPI server; thread-safe."""

    def __init__(self, host: str, port: int = DEFAULT_PORT, *, timeout: float = 1.0, name: str = ""):
        self.host = host
        self.port = int(port)
        self.timeout = float(timeout)
        self.name = name or f"scpi://{host}:{port}"
        self._sock: socket.socket | None = None
        self._buffer = bytearray()
        self._lock = threading.RLock()
        self._closed = False
        self._limit = self.timeout  # the present transaction's time limit, for messages

    # -- public API ---------------------------------------------------------
    def query(self, message: str, *, timeout: float | None = None) -> str:
        """Send a query, return its reply line (without the terminator)."""
        with self._lock:
            self._limit = self.timeout if timeout is None else timeout
            deadline = time.monotonic() + self._limit
            try:
                self._send_lines([message], deadline)
                return self._reply(message, deadline)
            except BaseException:
                self._drop()
                raise

    def command(self, *messages: str, timeout: float | None = None) -> None:
        """Send commands and wait until the server has run them (one *OPC? round trip)."""
        with self._lock:
            self._limit = self.timeout if timeout is None else timeout
            deadline = time.monotonic() + self._limit
            try:
                self._send_lines([*messages, "*OPC?"], deadline)
                reply = self._reply("; ".join(messages), deadline)
                if reply.strip() != "1":
                    raise FrameError(f"{'; '.join(messages)!r}: expected '1' from *OPC?, got {reply[:40]!r}",
                                     device=self.name)
            except BaseException:
                self._drop()
                raise

    def query_float(self, message: str, *, timeout: float | None = None) -> float:
        reply = self.query(message, timeout=timeout).strip()
        try:
            if not reply or "," in reply or not _NUMBER_CHARS.fullmatch(reply):
                raise ValueError(reply)
            return float(reply)
        except ValueError:
            self._drop()
            raise FrameError(f"{message!r}: reply {reply[:40]!r} is not a number", device=self.name) from None

    def query_values(self, message: str, *, timeout: float | None = None) -> list[float]:
        """A query whose reply is a SCPI list '{v1,v2,...}' (the braces are optional)."""
        reply = self.query(message, timeout=timeout).strip()
        try:
            return parse_values(reply)
        except ValueError as exc:
            self._drop()
            raise FrameError(f"{message!r}: {exc}", device=self.name) from None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop()

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- transport ----------------------------------------------------------
    def _socket(self, deadline: float) -> socket.socket:
        if self._closed:
            raise LinkClosed("SCPI client is closed", device=self.name)
        if self._sock is None:
            self._sock = connect(self.host, self.port, deadline, device=self.name, limit=self._limit)
            self._buffer.clear()
        return self._sock

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        self._buffer.clear()
        if sock is not None:
            sock.close()

    def _send_lines(self, messages: list[str], deadline: float) -> None:
        sock = self._socket(deadline)
        data = b"".join(m.encode("ascii") + TERMINATOR for m in messages)
        try:
            sock.settimeout(max(deadline - time.monotonic(), 1e-3))
            sock.sendall(data)
        except socket.timeout:
            raise LinkTimeout(f"{messages[0]!r} not accepted within {self._limit:.3g} s", device=self.name) from None
        except OSError as exc:
            raise LinkClosed(f"link lost sending {messages[0]!r}: {exc.strerror or exc}", device=self.name) from None

    def _reply(self, message: str, deadline: float) -> str:
        line = self._readline(message, deadline)
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            raise FrameError(f"{message!r}: reply is not ASCII: {bytes(line[:40])!r}", device=self.name) from None
        if text.strip() == ERROR_REPLY:
            raise FrameError(f"{message!r}: the server answered {ERROR_REPLY}", device=self.name)
        return text

    def _readline(self, message: str, deadline: float) -> bytes:
        sock = self._sock
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[:end + 1]
                return line[:-1] if line.endswith(b"\r") else line
            if len(self._buffer) > MAX_REPLY:
                raise FrameError(f"{message!r}: no line end in {MAX_REPLY} bytes", device=self.name)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LinkTimeout(f"no reply to {message!r} within {self._limit:.3g} s", device=self.name)
            try:
                sock.settimeout(remaining)
                chunk = sock.recv(65536)
            except socket.timeout:
                continue  # the loop reports it
            except OSError as exc:
                raise LinkClosed(f"link lost waiting for {message!r}: {exc.strerror or exc}",
                                 device=self.name) from None
            if not chunk:
                raise LinkClosed(f"server closed the connection before answering {message!r}", device=self.name)
            self._buffer += chunk


def parse_values(reply: str) -> list[float]:
    """'{0.1,-0.2,3e-3}' -> [0.1, -0.2, 0.003]; raises ValueError on anything else."""
    body = reply.strip()
    if body.startswith("{") != body.endswith("}"):
        raise ValueError(f"unbalanced braces in {body[:40]!r}")
    body = body.strip("{}")
    if not body:
        return []
    if not _NUMBER_CHARS.fullmatch(body):
        raise ValueError(f"reply is not a list of numbers: {body[:40]!r}...")
    try:
        return [float(v) for v in body.split(",")]
    except ValueError:
        raise ValueError(f"reply is not a list of numbers: {body[:40]!r}...") from None

"""labrig's client of pyrpl's monitor server: raw FPGA register access over TCP.

The monitor server (pyrpl/monitor_server/monitor_server.c, TCP 2222 by default)
maps the FPGA's bus into a socket. Every request starts with an 8-byte header:

    byte 0     b"r" read, b"w" write, b"c" close
    byte 1     reserved (0)
    bytes 2-3  uint16 little-endian: number of 32-bit words, 1..65535
    bytes 4-7  uint32 little-endian: start address

A read is answered with the header echoed, then the words. A write sends the
words right after the header and is acknowledged, once written, by the header
echoed alone. A close gets no answer. A count of 0 is silently ignored by the
server, so this client never sends one. Words are little-endian uint32.

    regs = MonitorClient("rp-f0a1b2.local", 2222, timeout=1.0)
    regs.write_word(0x40300104, 2048)       # pid0 setpoint = 0.25 V
    regs.read_word(0x40300104)              # -> 2048
    regs.read(0x40110000, 16384)            # a whole scope buffer, numpy uint32

Every transaction has a deadline of `timeout` seconds. After any failure the
stream is out of step, so the socket is dropped and the next call reconnects.
"""
from __future__ import annotations

import socket
import struct
import threading
import time

import numpy as np

from ..errors import FrameError, LinkClosed, LinkTimeout, RangeError
from ..tcp import connect
from . import registers as R

HEADER = struct.Struct("<cBHI")  # op, reserved, count, address
MAX_WORDS = 0xFFFF
DEFAULT_PORT = 2222


def header(op: bytes, address: int, count: int) -> bytes:
    return HEADER.pack(op, 0, count, address)


class MonitorClient:
    """One connection to a monitor server; thread-safe, reconnects after a failure."""

    def __init__(self, host: str, port: int = DEFAULT_PORT, *, timeout: float = 1.0, name: str = "",
                 connect: bool = False):
        self.host = host
        self.port = int(port)
        self.timeout = float(timeout)
        self.name = name or f"monitor://{host}:{port}"
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._closed = False
        if connect:
            with self._lock:
                self._connect(time.monotonic() + self.timeout)

    # -- public API ---------------------------------------------------------
    def read(self, address: int, count: int = 1) -> np.ndarray:
        """`count` consecutive words from `address`, as a uint32 array."""
        self._check(address, count)
        request = header(b"r", address, count)
        with self._lock:
            deadline = time.monotonic() + self.timeout
            sock = self._connected(deadline)
            try:
                self._send(sock, request, deadline)
                echo = self._recv(sock, HEADER.size, deadline)
                if echo != request:
                    raise FrameError(f"read of {count} word(s) at {address:#010x}: header echo "
                                     f"{echo.hex()} != {request.hex()}", device=self.name)
                data = self._recv(sock, 4 * count, deadline)
            except BaseException:
                self._drop()
                raise
        return np.frombuffer(data, dtype="<u4").astype(np.uint32)

    def write(self, address: int, values) -> None:
        """Write consecutive words from `address`; returns once the server acknowledged."""
        words = np.asarray(values, dtype=np.int64).ravel()
        if words.size and (words.min() < 0 or words.max() > 0xFFFFFFFF):
            raise RangeError(f"{self.name}: register words must be in 0..0xFFFFFFFF")
        self._check(address, int(words.size))
        request = header(b"w", address, int(words.size))
        with self._lock:
            deadline = time.monotonic() + self.timeout
            sock = self._connected(deadline)
            try:
                self._send(sock, request + words.astype("<u4").tobytes(), deadline)
                echo = self._recv(sock, HEADER.size, deadline)
            except BaseException:
                self._drop()
                raise
            if echo != request:
                self._drop()
                raise FrameError(f"write of {words.size} word(s) at {address:#010x}: acknowledgement "
                                 f"{echo.hex()} != {request.hex()}", device=self.name)

    def read_word(self, address: int) -> int:
        return int(self.read(address, 1)[0])

    def write_word(self, address: int, value: int) -> None:
        self.write(address, [value])

    def close(self) -> None:
        """Tell the server we are done (b"c"), then close. Idempotent; never raises."""
        with self._lock:
            self._closed = True
            sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            sock.settimeout(0.2)
            sock.sendall(header(b"c", 0, 0))
        except OSError:
            pass
        sock.close()

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<MonitorClient {self.host}:{self.port}{' closed' if self._closed else ''}>"

    # -- transport ----------------------------------------------------------
    def _check(self, address: int, count: int) -> None:
        if self._closed:
            raise LinkClosed("monitor client is closed", device=self.name)
        if not 1 <= count <= MAX_WORDS:
            raise RangeError(f"{self.name}: {count} words per request; allowed 1..{MAX_WORDS}")
        end = address + 4 * count
        if address % 4 or not (R.HK_BASE <= address and end <= R.HK_BASE + R.FPGA_SPAN):
            raise RangeError(f"{self.name}: address {address:#x} (+{count} words) is not a word-aligned "
                             f"address in the FPGA window {R.HK_BASE:#x}..{R.HK_BASE + R.FPGA_SPAN - 1:#x}")

    def _connected(self, deadline: float) -> socket.socket:
        if self._sock is None:
            self._connect(deadline)
        return self._sock

    def _connect(self, deadline: float) -> None:
        self._sock = connect(self.host, self.port, deadline, device=self.name, limit=self.timeout)

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _send(self, sock: socket.socket, data: bytes, deadline: float) -> None:
        try:
            sock.settimeout(max(deadline - time.monotonic(), 1e-3))
            sock.sendall(data)
        except socket.timeout:
            raise LinkTimeout(f"send not accepted within {self.timeout:g} s", device=self.name) from None
        except OSError as exc:
            raise LinkClosed(f"link lost while sending: {exc.strerror or exc}", device=self.name) from None

    def _recv(self, sock: socket.socket, size: int, deadline: float) -> bytes:
        buf = bytearray()
        while len(buf) < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LinkTimeout(f"no complete reply within {self.timeout:g} s "
                                  f"({len(buf)} of {size} bytes)", device=self.name)
            try:
                sock.settimeout(remaining)
                chunk = sock.recv(min(size - len(buf), 1 << 20))
            except socket.timeout:
                continue  # the loop reports the timeout with the byte count
            except OSError as exc:
                raise LinkClosed(f"link lost while reading: {exc.strerror or exc}", device=self.name) from None
            if not chunk:
                raise LinkClosed(f"server closed the connection ({len(buf)} of {size} bytes received)",
                                 device=self.name)
            buf += chunk
        return bytes(buf)

"""Siemens Simatic S7 PLC over ISO-on-TCP, with python-snap7's client.

    channels = [ChannelSpec("coil_I_set", "DB1.DBD0", "out", "A", safe_value=0),
                ChannelSpec("coil_I", "DB1.DBD4", "in", "A"),
                ChannelSpec("rf_permit", "DB1.DBX12.2")]
    with SimaticDriver("s7://192.168.0.10:102?rack=0&slot=1", channels) as plc:
        plc.write("coil_I_set", 200.0)
        plc.read("coil_I")

While open, the driver feeds the PLC's watchdog word (`watchdog_tag`, default
DB1.DBW14) every `watchdog_period` seconds by incrementing it; the PLC logic
drops its outputs when the word stops changing, so a dead host makes the PLC
go safe on its own. `watchdog_tag=None` turns the feed off.

snap7 waits up to 5 s on its socket whatever its parameters say, so every call
runs on the link's worker thread and the caller waits only until its deadline
(the driver timeout); then the socket is shut down, the call raises
LinkTimeout, and the next call reconnects.
"""
from __future__ import annotations

import queue
import re
import socket
import threading
import time
from concurrent.futures import Future, TimeoutError as FutureTimeout
from typing import Any, Callable

from snap7.client import Client
from snap7.error import S7ConnectionError, S7ProtocolError, S7TimeoutError

from ..contract import ChannelSpec, Driver, Keepalive
from ..errors import (ConfigError, DeviceError, FrameError, LabrigError, LinkClosed, LinkError,
                      LinkTimeout)
from ..urls import parse_url
from .tags import S7Tag, parse_tag

DEFAULT_PORT = 102  # ISO-on-TCP

# How a healthy PLC refuses a request (not a link problem): an item return code
# (0x03 access denied, 0x05 address out of range, 0x06 type not supported,
# 0x07 type inconsistent, 0x0a object does not exist), or a header error class
# 0x81..0x87 (e.g. 0x8404 on a write to a DB that does not exist). Bit flips on a
# garbled link almost never forge these exact values; S7 itself has no checksum.
_ITEM_REFUSAL = re.compile(r"operation failed: .*\(0x0[3567a]\)$")
_HEADER_REFUSAL = range(0x81, 0x88)


class SimaticDriver(Driver):
    bus = "simatic"

    def __init__(self, url: str, channels: list[ChannelSpec] | tuple[ChannelSpec, ...] = (), *,
                 timeout: float = 1.0, name: str = "", watchdog_tag: str | None = "DB1.DBW14",
                 watchdog_period: float = 0.2):
        where = parse_url(url, schemes=("s7",))
        self.host = where.host
        self.port = where.port or DEFAULT_PORT
        self.rack = where.option("rack", 0, int)
        self.slot = where.option("slot", 1, int)
        if not (0 <= self.rack <= 7 and 0 <= self.slot <= 31):
            raise ConfigError(f"{url}: rack must be 0..7 and slot 0..31 (got rack={self.rack}, slot={self.slot})")
        self.watchdog_tag: S7Tag | None = parse_tag(watchdog_tag, channel="watchdog_tag") if watchdog_tag else None
        self.watchdog_period = float(watchdog_period)
        if self.watchdog_tag and (self.watchdog_tag.type not in ("INT", "WORD", "UINT", "DINT", "BYTE")):
            raise ConfigError(f"watchdog_tag {watchdog_tag!r} must be an integer word (e.g. DB1.DBW14), "
                              f"not {self.watchdog_tag.type}")
        if not self.watchdog_period > 0:
            raise ConfigError(f"watchdog_period must be > 0 s, got {watchdog_period!r}")
        self._link: _Link | None = None
        self._keepalive: Keepalive | None = None
        self._watchdog_count = 0
        super().__init__(url, channels, timeout=timeout, name=name)

    # -- the Driver hooks ----------------------------------------------------
    def _parse_address(self, spec: ChannelSpec) -> S7Tag:
        return parse_tag(spec.address, channel=spec.name)

    def _default_raw_range(self, spec: ChannelSpec, address: S7Tag) -> tuple[float, float]:
        return address.range

    def _open(self) -> None:
        try:
            if self.watchdog_tag is not None:
                # Start from the PLC's own value, so even our first feed is a change.
                self._watchdog_count = int(self._read_tag(self.watchdog_tag, "watchdog read"))
                self._keepalive = Keepalive(self._feed_watchdog, self.watchdog_period,
                                            name=f"s7-watchdog {self.name}")
            else:
                self._transact("connect", lambda client: None)
        except BaseException:
            self._drop_link()
            raise

    def _read_raw(self, spec: ChannelSpec, address: S7Tag) -> float:
        return self._read_tag(address, f"read {spec.name} ({spec.address})")

    def _write_raw(self, spec: ChannelSpec, address: S7Tag, raw: float) -> None:
        self._write_tag(address, raw, f"write {spec.name} ({spec.address})")

    def _close(self) -> None:
        if self._keepalive is not None:
            self._keepalive.stop(timeout=2 * self.timeout + 0.5)
            self._keepalive = None
        # Wait for a call in flight (bounded by its deadline), then close politely.
        got = self._io_lock.acquire(timeout=self.timeout)
        try:
            link, self._link = self._link, None
            if link is not None:
                link.close(wait=self.timeout)
        finally:
            if got:
                self._io_lock.release()

    # -- tags ------------------------------------------------------------------
    def _read_tag(self, tag: S7Tag, what: str) -> float:
        data = self._transact(what, lambda client: client.db_read(tag.db, tag.offset, tag.size))
        try:
            return tag.decode(bytes(data))
        except ValueError as exc:
            raise FrameError(f"{what}: {exc}", device=self.name) from None

    def _write_tag(self, tag: S7Tag, value: float, what: str) -> None:
        if tag.type == "BOOL":
            # Read-modify-write of the byte, in one transaction on the worker, under the io
            # lock, so neither our keepalive nor another thread of ours can interleave.
            def job(client):
                current = bytes(client.db_read(tag.db, tag.offset, 1))
                client.db_write(tag.db, tag.offset, bytearray(tag.encode(value, current)))
        else:
            data = bytearray(tag.encode(value))

            def job(client):
                client.db_write(tag.db, tag.offset, data)
        self._transact(what, job)

    def _feed_watchdog(self) -> None:
        tag = self.watchdog_tag
        lo, hi = tag.range
        count = self._watchdog_count + 1
        if count > hi:
            count = lo  # wrap: any change feeds the PLC's watchdog
        self._write_tag(tag, count, f"watchdog feed ({tag.address})")
        self._watchdog_count = count

    # -- the link -------------------------------------------------------------
    def _transact(self, what: str, job: Callable[[Client], Any]) -> Any:
        """Run `job(client)` on the link within one driver timeout, reconnecting if needed."""
        deadline = time.monotonic() + self.timeout
        if not self._io_lock.acquire(timeout=self.timeout):
            raise LinkTimeout(f"{what}: the link stayed busy for {self.timeout:g} s", device=self.name)
        try:
            self._check_open()
            link = self._link
            if link is None or not link.alive:
                self._drop_link()
                link = self._link = _Link(self.name)
                link.run(self._connect_job, deadline, f"{what}: connect to {self.host}:{self.port}",
                         self.timeout, connecting=True)
            return link.run(job, deadline, what, self.timeout)
        except LinkError:
            self._drop_link()
            raise
        finally:
            self._io_lock.release()

    def _connect_job(self, client: Client) -> None:
        client.connect(self.host, self.rack, self.slot, self.port)
        # snap7 fixes its socket timeout at 5 s; bound every receive by ours instead.
        conn = client.connection
        conn.timeout = self.timeout
        if conn.socket is not None:
            conn.socket.settimeout(self.timeout)

    def _drop_link(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.kill()


class _Link:
    """One S7 connection and the worker thread that makes its blocking calls."""

    def __init__(self, device: str):
        self.device = device
        self.client = Client()
        self.alive = True
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=f"s7-link {device}", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                break
            future, job = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job(self.client))
            except BaseException as exc:  # handed to the caller, who maps it
                future.set_exception(exc)
        try:
            self.client.disconnect()
        except Exception:
            pass

    def run(self, job: Callable[[Client], Any], deadline: float, what: str, timeout: float, *,
            connecting: bool = False) -> Any:
        if not self.alive:
            raise LinkClosed(f"{what}: link was dropped", device=self.device)
        future: Future = Future()
        self._jobs.put((future, job))
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            future.cancel()  # if still queued, the worker skips it
            self.kill()
            raise LinkTimeout(f"{what}: no answer within {timeout:g} s", device=self.device) from None
        except LabrigError:
            raise
        except Exception as exc:
            error = _map_error(exc, what, self.device, refusal_possible=not connecting)
            if not isinstance(error, DeviceError):
                self.kill()  # the byte stream may be out of step: start afresh
            raise error from exc

    def kill(self) -> None:
        """Abandon the link now: a worker blocked in recv returns at once, then exits."""
        self.alive = False
        conn = self.client.connection
        sock = getattr(conn, "socket", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._jobs.put(None)

    def close(self, wait: float) -> None:
        """Say goodbye (COTP disconnect) if the link is healthy, and stop the worker."""
        if self.alive:
            self.alive = False
            self._jobs.put(None)
            self._thread.join(wait)
            if not self._thread.is_alive():
                return
        self.kill()
        self._thread.join(wait)


def _map_error(exc: BaseException, what: str, device: str, *, refusal_possible: bool) -> LabrigError:
    """snap7's exception -> ours. A refusal only answers a request: not the connect handshake."""
    text = f"{what}: {exc}"
    if isinstance(exc, (S7TimeoutError, TimeoutError)):
        return LinkTimeout(text, device=device)
    if isinstance(exc, S7ProtocolError):
        header_class = (getattr(exc, "error_code", None) or 0) >> 8
        if refusal_possible and (_ITEM_REFUSAL.search(str(exc)) or header_class in _HEADER_REFUSAL):
            return DeviceError(text, device=device)
        return FrameError(text, device=device)
    if isinstance(exc, S7ConnectionError):
        if "Invalid" in str(exc) or "Expected" in str(exc):  # a TPKT/COTP header that makes no sense
            return FrameError(text, device=device)
        return LinkClosed(text, device=device)
    if isinstance(exc, OSError):
        return LinkClosed(text, device=device)
    # struct.error, IndexError, ValueError...: snap7 choked on a reply it could not parse
    return FrameError(text, device=device)

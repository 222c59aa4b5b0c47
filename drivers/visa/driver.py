"""SCPI instruments through pyvisa and its pure-Python backend, pyvisa-py.

    channels = [ChannelSpec("pressure", "MEAS:PRES", unit="Pa"),
                ChannelSpec("vac_setpoint", "SP1:THR", direction="out", unit="Pa")]
    with VisaDriver("visa://TCPIP0::127.0.0.1::5025::SOCKET", channels) as gauge:
        gauge.identity                 # the instrument's *IDN? reply
        gauge.read("pressure")         # query "MEAS:PRES?"
        gauge.write("vac_setpoint", 2) # "SP1:THR 2.0", then "SYST:ERR?" (check_errors)
        gauge.read("vac_setpoint")     # readback, query "SP1:THR?"

A channel address is an SCPI header. Replies must be numbers (SCPI NR1/NR2/NR3;
9.91E+37, SCPI's not-a-number, reads as NaN). After every write the error queue
is read, and an instrument error raises DeviceError with the instrument's text.

Errors: no reply within `timeout` -> LinkTimeout; a refused, reset or closed
connection -> LinkClosed; a reply that is not a number -> FrameError. After a
link error the connection is dropped (a late reply would otherwise answer the
next query) and the next I/O reconnects.
"""
from __future__ import annotations

import math
import re
import socket
import threading
from typing import Any

import pyvisa
from pyvisa import constants, rname
from pyvisa.errors import VisaIOError

from ..contract import ChannelSpec, Driver
from ..errors import ConfigError, DeviceError, FrameError, LinkClosed, LinkError, LinkTimeout
from ..urls import parse_url

# "MEAS:PRES", ":SOURce1:VOLTage:LEVel": mnemonics of letters then optional digits, no '?', no arguments
_HEADER = re.compile(r":?[A-Za-z][A-Za-z_]*[0-9]*(?::[A-Za-z][A-Za-z_]*[0-9]*)*")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_ERROR = re.compile(r'([+-]?\d+)\s*,\s*"(.*)"')
SCPI_NAN = 9.91e37
_MAX_ERRORS = 32  # bound on draining an error queue, so a broken instrument cannot loop us
ALLOWED = "an SCPI header such as 'MEAS:PRES' or 'SP1:THR' (mnemonics joined by ':', no '?', no arguments)"

# pyvisa keeps one ResourceManager per backend per process, shared by every driver
# (and by any other pyvisa user in the process): close it only when the last driver
# using it closes and nothing else has a resource open on it.
_rm_lock = threading.Lock()
_rm_users: dict[str, int] = {}  # backend -> open drivers


def _flag(value: Any) -> bool:
    """Options from a rig file may arrive as strings."""
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off", "")
    return bool(value)


def _is_timeout(exc: Exception) -> bool:
    return isinstance(exc, VisaIOError) and exc.error_code == constants.StatusCode.error_timeout


class VisaDriver(Driver):
    bus = "visa"

    def __init__(self, url: str, channels=(), *, timeout: float = 1.0, name: str = "",
                 check_errors: bool | str = True, backend: str = "@py"):
        self.check_errors = _flag(check_errors)
        self.backend = backend
        self.identity = ""  # *IDN? reply, recorded at open
        self.resource_name = ""
        self._rm: pyvisa.ResourceManager | None = None
        self._res = None
        super().__init__(url, channels, timeout=timeout, name=name)

    # -- contract hooks --------------------------------------------------
    def _parse_address(self, spec: ChannelSpec) -> str:
        address = spec.address.strip() if isinstance(spec.address, str) else ""
        if not _HEADER.fullmatch(address):
            raise ConfigError(f"{self.name}: channel {spec.name!r}: address {spec.address!r} is not valid; "
                              f"expected {ALLOWED}")
        return address

    def _default_raw_range(self, spec: ChannelSpec, address: str) -> tuple[float, float]:
        # An SCPI instrument checks its own ranges (-222 -> DeviceError); a rig file
        # narrows this with raw_range when it knows the instrument.
        return (-math.inf, math.inf)

    def _open(self) -> None:
        url = parse_url(self.url)
        if url.scheme != "visa":
            raise ConfigError(f"{self.name}: a VISA driver needs a visa://RESOURCE URL, "
                              f"e.g. visa://TCPIP0::10.0.0.5::5025::SOCKET; got {self.url!r}")
        self.resource_name = url.path
        try:
            parsed = rname.parse_resource_name(url.path)
        except ValueError as exc:
            raise ConfigError(f"{self.name}: {url.path!r} is not a VISA resource name ({exc}); "
                              "e.g. TCPIP0::10.0.0.5::5025::SOCKET or ASRL/dev/ttyUSB0::INSTR") from None
        if parsed.resource_class not in ("INSTR", "SOCKET"):
            raise ConfigError(f"{self.name}: {url.path!r} is a {parsed.resource_class} resource; "
                              "SCPI needs an ::INSTR or ::SOCKET one")
        with _rm_lock:
            try:
                self._rm = pyvisa.ResourceManager(self.backend)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{self.name}: VISA backend {self.backend!r} is not available: {exc}") from exc
            _rm_users[self.backend] = _rm_users.get(self.backend, 0) + 1
        try:
            with self._io_lock:
                self.identity = self._query("*IDN?")
        except BaseException:
            self._close()
            raise

    def _read_raw(self, spec: ChannelSpec, header: str) -> float:
        with self._io_lock:
            return self._number(f"{header}?", self._query(f"{header}?"))

    def _write_raw(self, spec: ChannelSpec, header: str, raw: float) -> None:
        # repr() keeps every digit of a float and is valid SCPI NRf ("2.5", "1e-05").
        command = f"{header} {float(raw)!r}"
        with self._io_lock:
            self._send(command)
            if self.check_errors:
                self._raise_instrument_errors(command)

    def _close(self) -> None:
        self._drop()
        with _rm_lock:
            rm, self._rm = self._rm, None
            if rm is None:
                return
            _rm_users[self.backend] -= 1
            if _rm_users[self.backend] == 0:
                try:
                    if not rm.list_opened_resources():
                        rm.close()
                except Exception:  # close must not raise; a closed RM is what we wanted
                    pass

    # -- public extras ----------------------------------------------------
    def query(self, command: str) -> str:
        """One raw SCPI query (e.g. "*IDN?"), for diagnostics; returns the reply line."""
        self._check_open()
        with self._io_lock:
            return self._query(command)

    # -- transport ---------------------------------------------------------
    def _resource(self):
        """The open session, reconnecting after a dropped one."""
        if self._res is None:
            if self._rm is None:
                raise LinkClosed("driver is closed", device=self.name)
            try:
                self._res = self._rm.open_resource(
                    self.resource_name, read_termination="\n", write_termination="\n",
                    timeout=self._ms(self.timeout), open_timeout=self._ms(self.timeout))
            except VisaIOError as exc:
                raise self._link_error(exc, "open") from exc
            except Exception as exc:  # pyvisa-py raises bare Exception("could not connect: ...")
                raise LinkClosed(f"cannot connect to {self.resource_name}: {exc}", device=self.name) from exc
        gone = self._peer_closed()
        if gone:  # a dead socket: fail now rather than spin until the timeout
            self._drop()
            raise LinkClosed(f"{self.resource_name} {gone} the connection", device=self.name)
        return self._res

    def _send(self, command: str) -> None:
        res = self._resource()
        try:
            res.write(command)
        except Exception as exc:
            raise self._link_error(exc, command) from exc

    def _receive(self, command: str, timeout: float | None = None) -> str:
        """The reply line. Raises the backend's own exception on link failure."""
        res = self._res
        if timeout is not None:
            res.timeout = self._ms(timeout)
        try:
            data = res.read_raw()
        finally:
            if timeout is not None and self._res is res:
                res.timeout = self._ms(self.timeout)
        try:
            return data.decode("ascii").strip()
        except UnicodeDecodeError:
            self._drop()
            raise FrameError(f"reply to {command!r} is not ASCII: {data[:40]!r}", device=self.name) from None

    def _query(self, command: str) -> str:
        self._send(command)
        try:
            return self._receive(command)
        except FrameError:
            raise
        except Exception as exc:
            if (self.check_errors and command != "SYST:ERR?" and _is_timeout(exc)
                    and not self._peer_closed()):
                # An SCPI instrument does not answer a query it cannot parse; it queues
                # an error instead. Ask once, briefly, on the same connection.
                self._explain_silence(command)
            raise self._link_error(exc, command) from exc

    def _explain_silence(self, command: str) -> None:
        try:
            self._res.write("SYST:ERR?")
            reply = self._receive("SYST:ERR?", timeout=self.timeout / 4)  # a live instrument answers at once
        except Exception:
            return  # silent to this too: a plain timeout
        match = _ERROR.fullmatch(reply)
        if match and int(match.group(1)) != 0:
            self._drop()  # whatever comes late must not answer the next query
            raise DeviceError(f"{command!r} got no reply; the instrument says {reply}", device=self.name)

    def _raise_instrument_errors(self, command: str) -> None:
        found = []
        for _ in range(_MAX_ERRORS):
            reply = self._query("SYST:ERR?")
            match = _ERROR.fullmatch(reply)
            if not match:
                self._drop()
                raise FrameError(f"SYST:ERR? after {command!r}: {reply!r} is not '<code>,\"<message>\"'",
                                 device=self.name)
            if int(match.group(1)) == 0:
                break
            found.append(reply)
        if found:
            raise DeviceError(f"{command!r} failed: {'; '.join(found)}", device=self.name)

    def _number(self, command: str, reply: str) -> float:
        if not _NUMBER.fullmatch(reply):
            self._drop()  # the stream can no longer be trusted to be in step
            raise FrameError(f"reply to {command!r} is not a number: {reply[:40]!r}", device=self.name)
        value = float(reply)
        return math.nan if value == SCPI_NAN else value

    def _link_error(self, exc: Exception, command: str) -> LinkError:
        """Map a pyvisa or socket failure; the connection is dropped either way."""
        closed = self._peer_closed()
        self._drop()
        if _is_timeout(exc):
            if closed:  # pyvisa-py reports a closed peer as a timeout
                return LinkClosed(f"{self.resource_name} {closed} the connection ({command!r})", device=self.name)
            return LinkTimeout(f"no reply to {command!r} within {self.timeout:g} s", device=self.name)
        if isinstance(exc, ConnectionRefusedError):
            return LinkClosed(f"{self.resource_name} refused the connection", device=self.name)
        if isinstance(exc, (ConnectionError, EOFError)) or closed:
            return LinkClosed(f"{self.resource_name}: {exc} ({command!r})", device=self.name)
        if isinstance(exc, VisaIOError) and exc.error_code == constants.StatusCode.error_connection_lost:
            return LinkClosed(f"{self.resource_name}: connection lost ({command!r})", device=self.name)
        return LinkError(f"{self.resource_name}: {type(exc).__name__}: {exc} ({command!r})", device=self.name)

    def _socket(self) -> socket.socket | None:
        # pyvisa-py's TCPIP socket session keeps its socket as `.interface`; other
        # backends or session types have none, and then we simply cannot peek.
        if self._res is None or self._rm is None:
            return None
        try:
            session = self._rm.visalib.sessions[self._res.session]
        except Exception:
            return None
        sock = getattr(session, "interface", None)
        return sock if isinstance(sock, socket.socket) else None

    def _peer_closed(self) -> str:
        """Why the peer is gone ("closed", "refused", "reset"), or "" while it is there."""
        sock = self._socket()
        if sock is None:
            return ""
        try:
            return "closed" if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"" else ""
        except BlockingIOError:
            return ""
        except ConnectionRefusedError:
            return "refused"
        except OSError:
            return "reset"

    def _drop(self) -> None:
        res, self._res = self._res, None
        if res is not None:
            try:
                res.close()
            except Exception:  # already dead; nothing left to release
                pass

    @staticmethod
    def _ms(seconds: float) -> int:
        return max(1, int(round(seconds * 1000)))

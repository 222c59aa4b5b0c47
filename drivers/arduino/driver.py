"""ArduinoDriver: labrig's Arduino firmware (PROTOCOL.md) over a serial port.

    channels = [ChannelSpec("langmuir_I", "A0", unit="A", calibration=...),
                ChannelSpec("probe_bias", "PWM9", "out", "V", calibration=..., safe_value=0.0)]
    with ArduinoDriver("serial:///dev/ttyACM0", channels, watchdog_ms=500) as ard:
        ard.read("langmuir_I")
        ard.write("probe_bias", -80.0)

On open it identifies the firmware, uploads each output's safe value, sets the
firmware watchdog and starts a heartbeat at a quarter of its period: if this
process dies or the link breaks, the board drives its outputs safe by itself.
Options (keyword or URL query): watchdog_ms (default 500), baud (115200),
boot_wait (s to wait after opening, for boards that reset on open; default 0).
"""
from __future__ import annotations

import re
import struct
import time
from collections import deque
from dataclasses import dataclass

import serial

from ..contract import ChannelSpec, Driver, Keepalive
from ..errors import ConfigError, DeviceError, FrameError, LinkClosed, LinkTimeout, RangeError
from ..urls import parse_url
from . import protocol as p
from .protocol import Cmd, NakCode, PinMode

ADDRESS_FORMS = "A0..A5 (analog in), D2..D13 (digital in/out), PWM3, PWM5, PWM6, PWM9, PWM10, PWM11 (out, duty 0..255)"
_ADDRESS = re.compile(r"^(A|D|PWM)(\d{1,2})$")
POLL = 0.02  # s per serial read, so a deadline is kept to within this


@dataclass(frozen=True)
class Address:
    kind: str  # "A", "D" or "PWM"
    pin: int  # analog channel for "A", digital pin number otherwise


@dataclass(frozen=True)
class Sample:
    """One stream frame, calibrated."""

    stream_seq: int
    t_ms: int  # firmware millis() at sampling
    values: dict[str, float]
    raw: dict[str, int]


def _cmd_name(cmd: int) -> str:
    return Cmd(cmd).name if cmd in Cmd._value2member_map_ else f"command 0x{cmd:02x}"


class _Corrupt(Exception):
    """A reply was garbled (or the board saw our request garbled): worth one retry."""


class ArduinoDriver(Driver):
    bus = "arduino"

    def __init__(self, url: str, channels: list[ChannelSpec] | tuple[ChannelSpec, ...] = (), *,
                 timeout: float = 1.0, name: str = "", watchdog_ms: int | None = None,
                 baud: int | None = None, boot_wait: float | None = None):
        self._options = {"watchdog_ms": watchdog_ms, "baud": baud, "boot_wait": boot_wait}
        self._serial: serial.Serial | None = None
        self._decoder = p.Decoder()
        self._inbox: deque = deque()  # decoded frames not yet handled
        self._seq = 0
        self._keepalive: Keepalive | None = None
        self.firmware = ""
        self.status: p.Status | None = None  # from the latest heartbeat
        self.stale_replies = 0  # late replies to requests that had timed out
        # streaming
        self._stream: dict[int, str] = {}  # analog channel -> channel name
        self._samples: deque[Sample] = deque(maxlen=100_000)
        self._stream_next_seq: int | None = None
        self.stream_lost = 0  # stream frames missed (gaps in stream_seq, garbled frames)
        super().__init__(url, channels, timeout=timeout, name=name)

    # -- addresses -------------------------------------------------------
    def _parse_address(self, spec: ChannelSpec) -> Address:
        m = _ADDRESS.match(spec.address.strip().upper())
        bad = f"{self.name}: channel {spec.name!r}: address {spec.address!r}"
        if not m:
            raise ConfigError(f"{bad} is not an Arduino pin; allowed: {ADDRESS_FORMS}")
        kind, pin = m.group(1), int(m.group(2))
        if kind == "A":
            if pin not in p.ANALOG_CHANNELS:
                raise ConfigError(f"{bad}: no such analog input; allowed: A0..A5")
            if spec.direction != "in":
                raise ConfigError(f"{bad}: analog pins are inputs; outputs are D2..D13 or PWM pins")
        elif kind == "D":
            if pin in (0, 1):
                raise ConfigError(f"{bad}: D0/D1 carry the serial link; allowed: D2..D13")
            if pin not in p.DIGITAL_PINS:
                raise ConfigError(f"{bad}: no such digital pin; allowed: D2..D13")
        else:
            if pin not in p.PWM_PINS:
                raise ConfigError(f"{bad}: pin {pin} has no PWM; allowed: "
                                  + ", ".join(f"PWM{x}" for x in p.PWM_PINS))
            if spec.direction != "out":
                raise ConfigError(f"{bad}: PWM channels are outputs; read a pin as D{pin} instead")
        return Address(kind, pin)

    def _default_raw_range(self, spec: ChannelSpec, address: Address) -> tuple[float, float]:
        return {"A": (0.0, 1023.0), "D": (0.0, 1.0), "PWM": (0.0, 255.0)}[address.kind]

    # -- link ------------------------------------------------------------
    def _open(self) -> None:
        # serial://PATH?baud=..; anything else goes to pyserial as is (/dev/ttyACM0, socket://, rfc2217://)
        port, query = self.url, None
        if self.url.lower().startswith("serial:"):
            query = parse_url(self.url)
            port = query.path

        def option(key, default, cast):
            if self._options[key] is not None:
                return cast(self._options[key])
            return query.option(key, default, cast) if query else default
        self.watchdog_ms = option("watchdog_ms", 500, int)
        baud = option("baud", p.BAUD, int)
        boot_wait = option("boot_wait", 0.0, float)
        lo, hi = p.WATCHDOG_RANGE
        if not lo <= self.watchdog_ms <= hi:
            raise ConfigError(f"{self.name}: watchdog_ms={self.watchdog_ms}; allowed {lo}..{hi}")
        safe = self._safe_values()  # bad safe values fail before the port is touched

        try:
            self._serial = serial.serial_for_url(port, baudrate=baud, timeout=min(POLL, self.timeout),
                                                 write_timeout=self.timeout)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise LinkClosed(f"cannot open serial port {port}: {exc}", device=self.name) from None
        try:
            if boot_wait:
                time.sleep(boot_wait)  # an Uno resets when the port opens; its bootloader listens first
            self._serial.reset_input_buffer()  # stale bytes from an earlier session
            reply = self._transact(Cmd.IDENTIFY)
            if not reply or reply[0] != p.PROTOCOL_VERSION:
                raise DeviceError(f"firmware speaks protocol {reply[:1].hex() or '?'}; "
                                  f"this driver speaks {p.PROTOCOL_VERSION}", device=self.name)
            self.firmware = reply[1:].decode("ascii", "replace")
            for pin, mode, value in safe:
                self._expect_echo(Cmd.SET_SAFE, bytes((pin, mode, value)))
            self._expect_echo(Cmd.SET_WATCHDOG, struct.pack("<H", self.watchdog_ms))
            self.heartbeat()
        except BaseException:
            self._serial.close()
            raise
        self._keepalive = Keepalive(self._feed, self.watchdog_ms / 4000, name=f"heartbeat-{self.name}")

    def _safe_values(self) -> list[tuple[int, int, int]]:
        out = []
        for name, spec in self.channels.items():
            if spec.direction != "out" or spec.safe_value is None:
                continue
            addr = self._addresses[name]
            lo, hi = self.raw_range(name)
            raw = round(spec.calibration.to_raw(float(spec.safe_value), (lo, hi)))
            if not lo <= raw <= hi:
                raise ConfigError(f"{self.name}: {name}: safe value {spec.safe_value:g} {spec.unit} is raw "
                                  f"{raw}, outside [{lo:g}, {hi:g}]".replace("  ", " "))
            out.append((addr.pin, PinMode.PWM if addr.kind == "PWM" else PinMode.DIGITAL, int(raw)))
        return out

    def _close(self) -> None:
        if self._keepalive:
            self._keepalive.stop()
        # Let a transaction in flight finish (bounded), then drop the port. The heartbeat has
        # stopped, so the firmware watchdog takes the outputs safe on its own.
        locked = self._io_lock.acquire(timeout=2 * self.timeout)
        try:
            if self._serial is not None:
                self._serial.close()
        except Exception:
            pass
        finally:
            if locked:
                self._io_lock.release()

    # -- transactions ----------------------------------------------------
    def _transact(self, cmd: int, payload: bytes = b"") -> bytes:
        """Send one request, return the reply payload. Bounded by 2x the timeout in all cases."""
        start = time.monotonic()
        hard = start + 1.5 * self.timeout  # lock wait + retry included; 2x is the contract
        what = _cmd_name(cmd)
        if not self._io_lock.acquire(timeout=self.timeout):
            raise LinkTimeout(f"{what}: link busy for {self.timeout:g} s", device=self.name)
        try:
            if self._serial is None or not self._serial.is_open:
                raise LinkClosed("serial port is closed", device=self.name)
            try:
                return self._attempt(cmd, payload, min(time.monotonic() + self.timeout, hard))
            except _Corrupt as exc:
                now = time.monotonic()
                if now - start >= self.timeout:  # a retry would not fit within 2x the timeout
                    raise FrameError(f"{what}: {exc}", device=self.name) from None
                self._decoder.reset()
                self._inbox.clear()
            try:
                return self._attempt(cmd, payload, min(time.monotonic() + self.timeout, hard))
            except _Corrupt as exc:
                raise FrameError(f"{what}: {exc} (after one retry)", device=self.name) from None
        finally:
            self._io_lock.release()

    def _attempt(self, cmd: int, payload: bytes, deadline: float) -> bytes:
        self._seq = self._seq % 255 + 1  # 1..255; 0 is for unsolicited frames
        seq = self._seq
        what = _cmd_name(cmd)
        self._send(p.encode(seq, cmd, payload))
        garbage0 = self._decoder.discarded
        while True:
            self._read_items()
            while self._inbox:
                item = self._inbox.popleft()
                if isinstance(item, p.BadFrame):
                    if self._stream and item.seq == p.STREAM_SEQ and item.cmd == Cmd.STREAM_DATA:
                        self.stream_lost += 1
                        continue
                    raise _Corrupt("reply with a bad checksum")
                if item.seq == p.STREAM_SEQ:
                    self._on_unsolicited(item)
                elif item.seq != seq:
                    self.stale_replies += 1
                elif item.cmd == p.NAK:
                    code = item.payload[1] if len(item.payload) == 2 else 0
                    if code == NakCode.BAD_CHECKSUM:
                        raise _Corrupt("the board received our request garbled")
                    reason = NakCode(code).name if code in NakCode._value2member_map_ else f"code {code}"
                    raise DeviceError(f"{what} {payload.hex(' ')} refused: {reason}", device=self.name)
                elif item.cmd == cmd | p.REPLY:
                    return item.payload
                else:
                    raise FrameError(f"{what}: unexpected reply command 0x{item.cmd:02x}", device=self.name)
            if time.monotonic() >= deadline:
                if self._decoder.discarded > garbage0 or self._decoder.pending:
                    raise _Corrupt(f"garbled or truncated reply within {self.timeout:g} s")
                raise LinkTimeout(f"{what}: no reply within {self.timeout:g} s", device=self.name)

    def _send(self, data: bytes) -> None:
        try:
            self._serial.write(data)
        except serial.SerialTimeoutException:
            raise LinkTimeout(f"write blocked for {self.timeout:g} s", device=self.name) from None
        except (serial.SerialException, OSError) as exc:
            raise LinkClosed(f"serial port gone: {exc}", device=self.name) from None

    def _read_items(self) -> None:
        """Decode whatever arrives within one poll interval into the inbox."""
        ser = self._serial
        try:
            data = ser.read(max(1, ser.in_waiting))
        except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
            # pyserial raises SerialException on EOF (port unplugged, pty closed); TypeError and
            # AttributeError when another thread closed the port under it.
            raise LinkClosed(f"serial port gone: {exc}", device=self.name) from None
        if data:
            # An inbox, not a return value: one read can hold a reply and the stream frame after it.
            self._inbox.extend(self._decoder.feed(data))

    def _expect_echo(self, cmd: int, payload: bytes) -> None:
        reply = self._transact(cmd, payload)
        if reply != payload:
            raise FrameError(f"{_cmd_name(cmd)}: board echoed {reply.hex(' ')}, sent {payload.hex(' ')}",
                             device=self.name)

    # -- channels --------------------------------------------------------
    def _read_raw(self, spec: ChannelSpec, address: Address) -> float:
        if address.kind == "A":
            reply = self._transact(Cmd.ANALOG_READ, bytes((address.pin,)))
            channel, counts = self._unpack("<BH", reply, Cmd.ANALOG_READ)
        elif spec.direction == "in":
            channel, counts = self._unpack("<BB", self._transact(Cmd.DIGITAL_READ, bytes((address.pin,))),
                                           Cmd.DIGITAL_READ)
        else:  # outputs read back what the board drives (it may have gone safe on its own)
            channel, _mode, counts = self._unpack("<BBB", self._transact(Cmd.PIN_STATE, bytes((address.pin,))),
                                                  Cmd.PIN_STATE)
        if channel != address.pin:
            raise FrameError(f"asked for {spec.address}, the board answered for pin {channel}", device=self.name)
        return float(counts)

    def _write_raw(self, spec: ChannelSpec, address: Address, raw: float) -> None:
        value = int(round(raw))
        cmd = Cmd.PWM_WRITE if address.kind == "PWM" else Cmd.DIGITAL_WRITE
        self._expect_echo(cmd, bytes((address.pin, value)))

    def _unpack(self, fmt: str, reply: bytes, cmd: int) -> tuple:
        if len(reply) != struct.calcsize(fmt):
            raise FrameError(f"{Cmd(cmd).name}: reply of {len(reply)} bytes, expected {struct.calcsize(fmt)}",
                             device=self.name)
        return struct.unpack(fmt, reply)

    # -- watchdog --------------------------------------------------------
    def heartbeat(self) -> p.Status:
        """Feed the firmware watchdog; returns (and keeps in `status`) the board's status."""
        self.status = p.Status.unpack(self._transact(Cmd.HEARTBEAT))
        return self.status

    def _feed(self) -> None:
        if not self._closed:
            self.heartbeat()

    # -- streaming -------------------------------------------------------
    def start_stream(self, names: list[str], rate_hz: int) -> None:
        """Have the board sample these analog channels at `rate_hz` and send every sample."""
        self._check_open()
        chans: dict[int, str] = {}
        for name in names:
            addr = self._addresses[self._spec(name).name]
            if addr.kind != "A":
                raise ConfigError(f"{self.name}: {name} ({self.channels[name].address}) cannot stream; "
                                  "only analog inputs A0..A5 can")
            chans[addr.pin] = name
        if not chans:
            raise ConfigError(f"{self.name}: start_stream needs at least one analog channel")
        mask = sum(1 << ch for ch in chans)
        lo, hi = p.RATE_RANGE
        budget = p.STREAM_BUDGET // p.stream_frame_size(len(chans))
        if not lo <= rate_hz <= min(hi, budget):
            raise RangeError(f"{self.name}: stream rate {rate_hz:g} Hz for {len(chans)} channel(s); "
                             f"allowed {lo}..{min(hi, budget)} Hz at 115200 baud")
        with self._io_lock:
            self._samples.clear()
            self._stream_next_seq = None
            self._stream = dict(sorted(chans.items()))
            try:
                self._expect_echo(Cmd.STREAM_START, struct.pack("<BH", mask, int(rate_hz)))
            except BaseException:
                self._stream = {}
                raise
        self._rate = rate_hz

    def stop_stream(self) -> None:
        with self._io_lock:
            try:
                self._transact(Cmd.STREAM_STOP)
            finally:
                self._stream = {}  # late frames of this stream are dropped from now on

    def samples(self, count: int, *, timeout: float | None = None) -> list[Sample]:
        """The next `count` stream samples (oldest first), reading the link as needed.

        Raises LinkTimeout if they do not arrive within `timeout` (default: the time
        they take at the stream's rate, plus the driver timeout).
        """
        if not self._stream:
            raise ConfigError(f"{self.name}: no stream running; call start_stream() first")
        if timeout is None:
            timeout = count / self._rate + self.timeout
        deadline = time.monotonic() + timeout
        while len(self._samples) < count:
            if time.monotonic() >= deadline:
                raise LinkTimeout(f"{len(self._samples)} of {count} stream samples within {timeout:g} s",
                                  device=self.name)
            # Short turns on the link, so the heartbeat and other callers get theirs.
            if self._io_lock.acquire(timeout=self.timeout):
                try:
                    self._check_open()
                    self._read_items()
                    while self._inbox:
                        item = self._inbox.popleft()
                        if isinstance(item, p.BadFrame):
                            self.stream_lost += 1
                        elif item.seq == p.STREAM_SEQ:
                            self._on_unsolicited(item)
                        else:
                            self.stale_replies += 1
                finally:
                    self._io_lock.release()
        return [self._samples.popleft() for _ in range(count)]

    def _on_unsolicited(self, frame: p.Frame) -> None:
        if frame.cmd != Cmd.STREAM_DATA or not self._stream:
            return  # a stream from an earlier session, or a frame this driver does not know
        try:
            s = p.StreamSample.unpack(frame.payload)
        except FrameError:
            self.stream_lost += 1
            return
        if s.channels != tuple(self._stream):
            return
        if self._stream_next_seq is not None and s.stream_seq != self._stream_next_seq:
            self.stream_lost += (s.stream_seq - self._stream_next_seq) & 0xFFFF
        self._stream_next_seq = (s.stream_seq + 1) & 0xFFFF
        raw = {self._stream[ch]: c for ch, c in zip(s.channels, s.counts)}
        values = {name: self.channels[name].calibration.to_physical(c) for name, c in raw.items()}
        self._samples.append(Sample(s.stream_seq, s.t_ms, values, raw))


"""labrig's Arduino serial protocol (PROTOCOL.md): constants, framing, payloads.

Pure functions and one streaming decoder, shared by the driver and the simulator:

    wire = encode(7, Cmd.ANALOG_READ, bytes([0]))
    dec = Decoder()
    for item in dec.feed(wire):   # Frame, or BadFrame when the CRC fails
        ...

The CRC is CRC-16/CCITT-FALSE, which the standard library computes
(binascii.crc_hqx with init 0xFFFF) and avr-libc too (_crc_xmodem_update).
"""
from __future__ import annotations

import binascii
import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from ..errors import FrameError

BAUD = 115200
PROTOCOL_VERSION = 1
START = 0xA5
MAX_PAYLOAD = 32
HEADER = 4  # START, LEN, SEQ, CMD
OVERHEAD = HEADER + 2  # + CRC16
REPLY = 0x80  # reply CMD = request CMD | REPLY
NAK = 0xFF
STREAM_SEQ = 0  # SEQ of unsolicited frames; requests use 1..255
INTERBYTE_TIMEOUT = 0.020  # s: the firmware drops a frame whose bytes stop for this long
STREAM_BUDGET = 10_000  # bytes/s the firmware lets a stream use (115200 baud = 11520 B/s)

ANALOG_CHANNELS = range(6)  # A0..A5 (Uno)
DIGITAL_PINS = range(2, 14)  # D0/D1 carry the serial link itself
PWM_PINS = (3, 5, 6, 9, 10, 11)
WATCHDOG_RANGE = (10, 65535)  # ms
RATE_RANGE = (1, 500)  # Hz


class Cmd(IntEnum):
    IDENTIFY = 0x01
    HEARTBEAT = 0x03
    DIGITAL_READ = 0x10
    DIGITAL_WRITE = 0x11
    ANALOG_READ = 0x12
    PWM_WRITE = 0x13
    PIN_STATE = 0x14
    SET_SAFE = 0x20
    SET_WATCHDOG = 0x21
    STREAM_START = 0x30
    STREAM_STOP = 0x31
    STREAM_DATA = 0x40  # device -> host only, SEQ 0


class NakCode(IntEnum):
    UNKNOWN_COMMAND = 0x01
    BAD_CHECKSUM = 0x02
    BAD_PIN = 0x03
    BAD_VALUE = 0x04
    BAD_LENGTH = 0x05


class Flag(IntFlag):
    SAFE = 0x01  # outputs at their safe values (reset or watchdog) until the host writes
    STREAMING = 0x02
    TRIPPED = 0x04  # SAFE was entered by the watchdog, not by a reset


class PinMode(IntEnum):
    INPUT = 0
    DIGITAL = 1
    PWM = 2


@dataclass(frozen=True)
class Frame:
    seq: int
    cmd: int
    payload: bytes = b""


@dataclass(frozen=True)
class BadFrame:
    """A frame-shaped run of bytes whose CRC failed; seq/cmd are as received (untrusted)."""

    seq: int
    cmd: int
    raw: bytes


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, no final xor."""
    return binascii.crc_hqx(data, 0xFFFF)


def encode(seq: int, cmd: int, payload: bytes = b"") -> bytes:
    if not 0 <= seq <= 255 or not 0 <= cmd <= 255:
        raise ValueError(f"seq {seq} and cmd {cmd} must be bytes (0..255)")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes; at most {MAX_PAYLOAD}")
    body = bytes((len(payload), seq, cmd)) + bytes(payload)
    return bytes((START,)) + body + struct.pack("<H", crc16(body))


def decode(data: bytes) -> Frame:
    """Exactly one frame, or FrameError saying what is wrong with it."""
    if len(data) < OVERHEAD or data[0] != START:
        raise FrameError(f"not a frame: {bytes(data[:8]).hex(' ')}")
    n = data[1]
    if n > MAX_PAYLOAD or len(data) != OVERHEAD + n:
        raise FrameError(f"frame length {len(data)} does not match LEN={n}")
    body = bytes(data[1:HEADER + n])
    (crc,) = struct.unpack_from("<H", data, HEADER + n)
    if crc != crc16(body):
        raise FrameError(f"bad checksum 0x{crc:04x}, expected 0x{crc16(body):04x}")
    return Frame(data[2], data[3], body[3:])


class Decoder:
    """Turns a byte stream into frames; skips garbage and resynchronises on the next START.

    After a CRC failure only the START byte is dropped, because a corrupted LEN may
    have swallowed the start of the next good frame.
    """

    def __init__(self):
        self._buf = bytearray()
        self.discarded = 0  # bytes skipped as garbage (including failed frames' START bytes)
        self.bad_frames = 0

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the rest of a frame."""
        return len(self._buf)

    def reset(self) -> None:
        self.discarded += len(self._buf)
        self._buf.clear()

    def feed(self, data: bytes) -> list[Frame | BadFrame]:
        self._buf += data
        out: list[Frame | BadFrame] = []
        buf = self._buf
        while buf:
            if buf[0] != START:
                i = buf.find(START)
                skip = len(buf) if i < 0 else i
                del buf[:skip]
                self.discarded += skip
                continue
            if len(buf) < 2:
                break
            n = buf[1]
            if n > MAX_PAYLOAD:  # cannot be a frame start
                del buf[:1]
                self.discarded += 1
                continue
            if len(buf) < OVERHEAD + n:
                break
            body = bytes(buf[1:HEADER + n])
            (crc,) = struct.unpack_from("<H", buf, HEADER + n)
            if crc == crc16(body):
                out.append(Frame(body[1], body[2], body[3:]))
                del buf[:OVERHEAD + n]
            else:
                out.append(BadFrame(body[1], body[2], bytes(buf[:OVERHEAD + n])))
                self.bad_frames += 1
                self.discarded += 1
                del buf[:1]
        return out


# -- payloads --------------------------------------------------------------
@dataclass(frozen=True)
class Status:
    flags: Flag
    watchdog_ms: int
    uptime_ms: int
    trips: int

    FORMAT = "<BHIH"

    def pack(self) -> bytes:
        return struct.pack(self.FORMAT, int(self.flags), self.watchdog_ms,
                           self.uptime_ms & 0xFFFFFFFF, self.trips & 0xFFFF)

    @classmethod
    def unpack(cls, payload: bytes) -> "Status":
        flags, wd, up, trips = _unpack(cls.FORMAT, payload, "status")
        return cls(Flag(flags), wd, up, trips)


@dataclass(frozen=True)
class StreamSample:
    mask: int  # bit i = analog channel Ai
    stream_seq: int  # u16, +1 per sample, wraps
    t_ms: int  # firmware millis() when sampled, u32
    counts: tuple[int, ...]  # one per set bit, ascending channel

    @property
    def channels(self) -> tuple[int, ...]:
        return mask_channels(self.mask)

    def pack(self) -> bytes:
        return struct.pack(f"<BHI{len(self.counts)}H", self.mask, self.stream_seq & 0xFFFF,
                           self.t_ms & 0xFFFFFFFF, *self.counts)

    @classmethod
    def unpack(cls, payload: bytes) -> "StreamSample":
        if len(payload) < 7:
            raise FrameError(f"stream frame of {len(payload)} bytes; at least 7")
        n = len(mask_channels(payload[0]))
        mask, seq, t_ms, *counts = _unpack(f"<BHI{n}H", payload, "stream")
        return cls(mask, seq, t_ms, tuple(counts))


def mask_channels(mask: int) -> tuple[int, ...]:
    return tuple(i for i in ANALOG_CHANNELS if mask >> i & 1)


def stream_frame_size(n_channels: int) -> int:
    return OVERHEAD + 7 + 2 * n_channels


def _unpack(fmt: str, payload: bytes, what: str) -> tuple:
    if len(payload) != struct.calcsize(fmt):
        raise FrameError(f"{what} payload of {len(payload)} bytes; expected {struct.calcsize(fmt)}")
    return struct.unpack(fmt, payload)

"""S7 tag addresses in a data block, and their big-endian values.

    DB1.DBX12.0        BOOL, bit 0 of byte 12
    DB1.DBB3           BYTE (or DB1.DBB3:SINT)
    DB1.DBW14          INT (or :WORD, :UINT)
    DB1.DBD0           REAL (or :DINT, :DWORD, :UDINT)

    tag = parse_tag("DB1.DBD0:DINT")   # S7Tag(db=1, offset=0, bit=0, type='DINT', size=4)
    tag.encode(-5)                     # b'\\xff\\xff\\xff\\xfb'
    tag.get(db_image), tag.put(db_image, value)   # on a whole DB image (the simulator's)

S7 stores every multi-byte value big-endian; REAL is an IEEE 754 single.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from ..errors import ConfigError, RangeError

# size letter -> (bytes, default type, {type: struct format})
_WIDTHS = {
    "X": (1, "BOOL", {"BOOL": ""}),
    "B": (1, "BYTE", {"BYTE": ">B", "SINT": ">b"}),
    "W": (2, "INT", {"INT": ">h", "WORD": ">H", "UINT": ">H"}),
    "D": (4, "REAL", {"REAL": ">f", "DINT": ">i", "DWORD": ">I", "UDINT": ">I"}),
}

_SIGNED = {"SINT", "INT", "DINT"}

ALLOWED_FORMS = ("DB<n>.DBX<byte>.<bit> (BOOL), DB<n>.DBB<byte> (BYTE, or :SINT), "
                 "DB<n>.DBW<byte> (INT, or :WORD/:UINT), DB<n>.DBD<byte> (REAL, or :DINT/:DWORD/:UDINT); "
                 "e.g. DB1.DBD0, DB1.DBD0:DINT, DB1.DBW14, DB1.DBX12.0")

_TAG = re.compile(r"^DB(?P<db>\d+)\.DB(?P<w>[XBWD])(?P<offset>\d+)(?:\.(?P<bit>\d+))?(?::(?P<type>[A-Z]+))?$")


@dataclass(frozen=True)
class S7Tag:
    db: int
    offset: int  # byte offset in the DB
    bit: int  # 0..7 for BOOL, else 0
    type: str  # BOOL, BYTE, SINT, INT, WORD, UINT, REAL, DINT, DWORD, UDINT
    size: int  # bytes on the wire (a BOOL is read and written as its whole byte)

    @property
    def address(self) -> str:
        bit = f".{self.bit}" if self.type == "BOOL" else ""
        return f"DB{self.db}.DB{_letter(self)}{self.offset}{bit}:{self.type}"

    @property
    def range(self) -> tuple[float, float]:
        """What the type can hold (a REAL: the finite single-precision span)."""
        if self.type == "BOOL":
            return (0.0, 1.0)
        if self.type == "REAL":
            return (-3.4028234663852886e38, 3.4028234663852886e38)
        bits = 8 * self.size
        if self.type in _SIGNED:
            return (float(-(1 << (bits - 1))), float((1 << (bits - 1)) - 1))
        return (0.0, float((1 << bits) - 1))

    # -- values on the wire ------------------------------------------------
    def decode(self, data: bytes) -> float:
        """The tag's value from the `size` bytes read at its offset."""
        if len(data) != self.size:
            raise ValueError(f"{self.address}: expected {self.size} bytes, got {len(data)}")
        if self.type == "BOOL":
            return float((data[0] >> self.bit) & 1)
        return float(struct.unpack(_format(self), bytes(data))[0])

    def encode(self, value: float, current: bytes | None = None) -> bytes:
        """The `size` bytes to write for `value`. A BOOL needs the byte it lives in (`current`)."""
        if self.type == "BOOL":
            if current is None or len(current) != 1:
                raise ValueError(f"{self.address}: a BOOL write needs the current byte")
            mask = 1 << self.bit
            return bytes([(current[0] | mask) if value >= 0.5 else (current[0] & ~mask & 0xFF)])
        if self.type == "REAL":
            return struct.pack(">f", float(value))
        lo, hi = self.range
        number = int(round(float(value)))
        if not lo <= number <= hi:
            raise RangeError(f"{self.address}: {value:g} does not fit a {self.type} [{lo:g}, {hi:g}]")
        return struct.pack(_format(self), number)

    # -- values in a whole DB image (the simulated PLC's memory) ---------
    def get(self, image: bytes | bytearray) -> float:
        return self.decode(bytes(image[self.offset:self.offset + self.size]))

    def put(self, image: bytearray, value: float) -> None:
        current = bytes(image[self.offset:self.offset + 1]) if self.type == "BOOL" else None
        image[self.offset:self.offset + self.size] = self.encode(value, current)


def _letter(tag: S7Tag) -> str:
    return "X" if tag.type == "BOOL" else {1: "B", 2: "W", 4: "D"}[tag.size]


def _format(tag: S7Tag) -> str:
    return _WIDTHS[_letter(tag)][2][tag.type]


def parse_tag(address: str, *, channel: str = "") -> S7Tag:
    """Parse an S7 DB address; ConfigError names the channel and the allowed forms."""
    where = f"channel {channel!r}: " if channel else ""
    text = address.strip().upper() if isinstance(address, str) else ""
    m = _TAG.match(text)
    if not m:
        raise ConfigError(f"{where}S7 address {address!r} is not valid; allowed: {ALLOWED_FORMS}")
    letter = m["w"]
    size, default, types = _WIDTHS[letter]
    db, offset = int(m["db"]), int(m["offset"])
    type_ = m["type"] or default
    if type_ not in types:
        raise ConfigError(f"{where}S7 address {address!r}: type {type_} does not fit DB{letter}; "
                          f"allowed: {', '.join(types)}")
    if not 1 <= db <= 65535:
        raise ConfigError(f"{where}S7 address {address!r}: DB number must be 1..65535")
    if offset > 65535:
        raise ConfigError(f"{where}S7 address {address!r}: byte offset must be 0..65535")
    if letter == "X":
        if m["bit"] is None or not 0 <= int(m["bit"]) <= 7:
            raise ConfigError(f"{where}S7 address {address!r}: a DBX address needs a bit 0..7, "
                              "e.g. DB1.DBX12.0")
        bit = int(m["bit"])
    else:
        if m["bit"] is not None:
            raise ConfigError(f"{where}S7 address {address!r}: only DBX addresses take a bit number; "
                              f"allowed: {ALLOWED_FORMS}")
        bit = 0
    return S7Tag(db=db, offset=offset, bit=bit, type=type_, size=size)

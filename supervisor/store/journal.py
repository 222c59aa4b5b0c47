"""The append-only journal of a running shot: what survives a killed writer or a full disk.

The file starts with MAGIC, then records. Each record is

    24 bytes, little-endian: b"LJ", kind (b"M" metadata, b"S" signal chunk, b"E" event,
    b"C" close), one pad byte, header length u32, payload length u64, crc32 of the payload
    u32, crc32 of the first 20 bytes and the header u32
    the header: UTF-8 JSON
    the payload: raw bytes (a signal chunk: its times as float64 if it has any, then its values)

A signal record is one `signal()` call: g(roup), s(ignal), u(nit), d(type), n (values), t ([t0, dt]
of a uniformly sampled call, or None: times in the payload). A compressing writer adds p (the
position of its first value in the signal), c (the signal's HDF5 chunk length), z (the HDF5
chunks this call completed, [[k, bytes of times, bytes of values], ...]: shuffled and deflated,
ready for the shot file, see codec.py), r (how many of its last values follow raw: the start of
a chunk not complete yet, which a later record's z holds again once it is), st ([min, max, sum,
count] of its values) and tt ([first, last] time of a timed call). Its payload is then the z
chunks (times, then values, each) and the raw part (times, then values). A record without these
is all raw, at the position where the previous one of its signal ended.

A record goes out with one writev; if the write fails part way (a full disk), the file is cut
back to where the record began, so the journal always ends on a whole record and nothing
appended before is touched. A reader keeps every record up to the first incomplete or
corrupt one (a writer killed mid-record, or what a disk kept after a power cut).

Fsync policy: every record reaches the OS before `append` returns (os.writev, no user-space
buffer), so a killed writer loses nothing it has appended. "interval" (the default) also
fsyncs after the metadata, at most every FSYNC_INTERVAL s while data flow, and at close, so a
power cut loses at most about a second; "always" fsyncs every record; "never" leaves it to
the OS (synthetic shots, benchmark set-up).
"""
from __future__ import annotations

import fcntl
import json
import os
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

MAGIC = b"LABRIG-JOURNAL-1\n"
FIXED = struct.Struct("<2sccIQII")  # b"LJ", kind, pad, header length, payload length, payload crc, crc
META, SIGNAL, EVENT, CLOSE = b"M", b"S", b"E", b"C"
FSYNC_POLICIES = ("interval", "always", "never")
FSYNC_INTERVAL = 1.0  # s


@dataclass
class Chunk:
    """One signal record in the journal (one `signal()` call): where its bytes are and how to read them."""
    group: str
    name: str
    unit: str
    dtype: str
    n: int
    offset: int  # of the payload in the journal
    t0: float | None = None  # uniformly sampled: first time and step; else times are in the payload
    dt: float | None = None
    p: int = 0  # position of its first value in the signal
    length: int | None = None  # the signal's HDF5 chunk length, when its writer compressed
    packed: list = field(default_factory=list)  # HDF5 chunks it holds: (k, offset, bytes of times, bytes of values)
    raw: int = -1  # how many of its last values are raw in the payload (-1: all of them)
    raw_offset: int = -1  # where they start (-1: the payload's start)
    stats: list | None = None  # [min, max, sum, count] of its values
    span: list | None = None  # [first, last] time of a timed call

    def __post_init__(self) -> None:
        if self.raw < 0:
            self.raw = self.n
        if self.raw_offset < 0:
            self.raw_offset = self.offset

    @property
    def sampled(self) -> bool:
        return self.dt is not None


@dataclass
class JournalIndex:
    """What a journal holds: built by the writer as it appends, or by `read_journal` after a crash."""
    meta: dict[str, Any] | None = None
    chunks: list[Chunk] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    end: dict[str, Any] | None = None
    size: int = len(MAGIC)  # bytes of whole records (and the magic)
    dropped: int = 0  # bytes after the last whole record (a torn or corrupt tail)
    _ends: dict = field(default_factory=dict, repr=False)  # (group, name) -> values so far

    def add(self, kind: bytes, header: dict[str, Any], offset: int) -> None:
        if kind == META:
            self.meta = header
        elif kind == SIGNAL:
            t = header["t"]
            key = (header["g"], header["s"])
            p = header.get("p", self._ends.get(key, 0))
            self._ends[key] = p + header["n"]
            packed, at = [], offset
            for k, lt, lv in header.get("z", ()):
                packed.append((k, at, lt, lv))
                at += lt + lv
            self.chunks.append(Chunk(header["g"], header["s"], header["u"], header["d"], header["n"], offset,
                                     *(t if t is not None else (None, None)), p=p, length=header.get("c"),
                                     packed=packed, raw=header.get("r", header["n"]), raw_offset=at,
                                     stats=header.get("st"), span=header.get("tt")))
        elif kind == EVENT:
            self.events.append(header)
        elif kind == CLOSE:
            self.end = header

    def signals(self) -> dict[tuple[str, str], list[Chunk]]:
        """(group, name) -> its chunks in order."""
        out: dict[tuple[str, str], list[Chunk]] = {}
        for c in self.chunks:
            out.setdefault((c.group, c.name), []).append(c)
        return out


def chunk_arrays(fd: int, chunk: Chunk) -> tuple[np.ndarray | None, np.ndarray]:
    """(times or None, values) of a record's raw part (all of an uncompressed record), read with
    pread (no file position shared)."""
    dtype, n = np.dtype(chunk.dtype), chunk.raw
    nt = 0 if chunk.sampled else 8 * n
    raw = os.pread(fd, nt + dtype.itemsize * n, chunk.raw_offset)
    times = None if chunk.sampled else np.frombuffer(raw, "<f8", n)
    return times, np.frombuffer(raw, dtype, n, offset=nt)


class JournalWriter:
    """Appends records to a new journal file, which it keeps locked (flock) while it lives:
    a locked journal belongs to a running shot, an unlocked one to a writer that died."""

    def __init__(self, path: Path, *, fsync: str = "interval"):
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync policy {fsync!r}: use one of {', '.join(FSYNC_POLICIES)}")
        self.path = Path(path)
        self.fsync = fsync
        self.index = JournalIndex()
        # O_EXCL: a journal is never reopened for writing; O_APPEND: after a cut, writes go to the new end
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _write_all(self.fd, [MAGIC])
        except BaseException:
            os.close(self.fd)
            self.path.unlink(missing_ok=True)
            raise
        self._synced = time.monotonic()

    def append(self, kind: bytes, header: dict[str, Any], payload: Iterable[Any] = ()) -> None:
        """Append one record (payload: buffers such as contiguous numpy arrays); on an OSError the
        journal is cut back to its last whole record and the error propagates."""
        body = json.dumps(header, separators=(",", ":"), default=str).encode()
        views = [_bytes_of(b) for b in payload]
        plen = sum(v.nbytes for v in views)
        pcrc = 0
        for v in views:
            pcrc = zlib.crc32(v, pcrc)
        fixed = FIXED.pack(b"LJ", kind, b"\0", len(body), plen, pcrc, 0)[:20]
        head = fixed + struct.pack("<I", zlib.crc32(body, zlib.crc32(fixed))) + body
        start = self.index.size
        try:
            _write_all(self.fd, [head, *views])
        except OSError:
            os.ftruncate(self.fd, start)  # frees what the torn record took; earlier records untouched
            raise
        self.index.size = start + len(head) + plen
        self.index.add(kind, header, start + len(head))
        now = time.monotonic()
        if self.fsync == "always" or kind in (META, CLOSE) and self.fsync != "never" or \
                self.fsync == "interval" and now - self._synced >= FSYNC_INTERVAL:
            self.sync()

    def sync(self) -> None:
        if self.fsync != "never":
            os.fsync(self.fd)
        self._synced = time.monotonic()

    def close(self) -> None:
        """Close (releasing the lock); the file stays until the shot file is built."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _bytes_of(buffer) -> memoryview:
    """A flat byte view without a copy (a numpy array of any byte order included)."""
    if isinstance(buffer, np.ndarray):
        return memoryview(np.ascontiguousarray(buffer).reshape(-1).view(np.uint8))
    return memoryview(buffer).cast("B")


def _write_all(fd: int, views: list) -> None:
    """writev until everything is out (a regular file may take less than asked, e.g. near a full disk)."""
    views = [memoryview(v).cast("B") for v in views if len(v)]
    while views:
        n = os.writev(fd, views)
        while views and n >= views[0].nbytes:
            n -= views[0].nbytes
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]


def read_journal(path: Path) -> JournalIndex:
    """Index a journal left behind: every whole, intact record; `dropped` counts the bytes after them."""
    index = JournalIndex()
    with open(path, "rb") as fh:
        total = os.fstat(fh.fileno()).st_size
        if fh.read(len(MAGIC)) != MAGIC:
            index.size, index.dropped = 0, total
            return index
        pos = len(MAGIC)
        while pos + FIXED.size <= total:
            fh.seek(pos)
            fixed = fh.read(FIXED.size)
            tag, kind, _, hlen, plen, pcrc, crc = FIXED.unpack(fixed)
            end = pos + FIXED.size + hlen + plen
            if tag != b"LJ" or end > total:
                break
            body = fh.read(hlen)
            if zlib.crc32(body, zlib.crc32(fixed[:20])) != crc or _payload_crc(fh, plen) != pcrc:
                break
            index.add(kind, json.loads(body), pos + FIXED.size + hlen)
            pos = end
        index.size, index.dropped = pos, total - pos
    return index


def _payload_crc(fh, length: int, block: int = 1 << 22) -> int:
    crc = 0
    while length > 0:
        data = fh.read(min(block, length))
        if not data:
            return -1
        crc = zlib.crc32(data, crc)
        length -= len(data)
    return crc

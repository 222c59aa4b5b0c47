"""One shot, one HDF5 file: built from a journal, read by slices, described for the catalog.

Layout (every reader of HDF5 opens it: h5py, MATLAB's h5read/h5info, HDFView):

    /                      attrs: format "labrig-shot", format_version, shot, status (success,
                           abort, fail, partial), reason, user, host, rig, rig_digest, sequence,
                           sequence_hash, t_start, t_end (unix s), expired_calibrations, built_by
    /metadata/parameters, versions, firmware, extra   JSON text (scalar string datasets)
    /sequence/source       the sequence's source text
    /rig/text              the rig file as it was
    /calibrations/NAME     attrs: version, source, set_by, set_at, valid_from, valid_until,
                           expired, params (JSON)
    /signals/NAME/values   chunked (256 KiB), shuffle + deflate; attrs: unit, n, min, max, mean, t_first, t_last
    /signals/NAME/t        times (s), when the chunks came with times, else
    /signals/NAME/segments rows of (first index, t0, dt): uniformly sampled stretches
    /telemetry/NAME/...    the same, for telemetry of the shot's window
    /events/t, kind, data  trips, audit entries and other events (data: JSON text)

Gzip (deflate) because it is the one compression filter every HDF5 build has (MATLAB
included); a slice of a signal reads only the chunks it covers. The chunks are compressed by
the writer as the shot runs (codec.py) and copied in here as they are.
"""
from __future__ import annotations

import errno
import json
import math
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import codec
from .errors import StoreError, StoreFull
from .journal import Chunk, JournalIndex, chunk_arrays

FORMAT, FORMAT_VERSION = "labrig-shot", 1
GROUPS = ("signals", "telemetry")
JSON_FIELDS = ("parameters", "versions", "firmware", "extra")
TEXT = h5py.string_dtype()


def build_shot(index: JournalIndex, journal: Path, dest: Path, *, number: int, status: str, reason: str,
               built_by: str, compression: str | None = "gzip", durable: bool = True) -> Path:
    """Write the shot file at a temporary name, flush, fsync, make it read-only, rename it to `dest`.
    A crash at any point leaves either no file at `dest` or a whole one."""
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    meta = index.meta or {}
    ensure_space(dest.parent, int(index.size * 1.05) + (8 << 10) * len(index.signals()) + (256 << 10), dest.name)
    try:
        fd = os.open(journal, os.O_RDONLY)
        try:
            with h5py.File(tmp, "w") as f, codec.Pool() as pool:
                _write_meta(f, meta, number=number, status=status, reason=reason, built_by=built_by, index=index)
                for (group, name), chunks in index.signals().items():
                    _write_signal(f.require_group(group), name, chunks, fd, compression, pool)
                _write_events(f, index.events)
        finally:
            os.close(fd)
        if durable:
            _fsync(tmp)
        os.chmod(tmp, 0o444)  # complete: never modified again
        os.rename(tmp, dest)
        if durable:
            _fsync(dest.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def ensure_space(folder: Path, need: int, what: str) -> None:
    """Claim `need` bytes (fallocate on a scratch file) and give them back just before HDF5 writes.
    HDF5 must not meet a full disk: after an ENOSPC it can crash the whole process when its objects
    are freed (a segfault, seen here with HDF5 1.14.6 and 2.0.0), so a full disk is found here instead."""
    scratch = folder / f".reserve-{os.getpid()}-{threading.get_ident()}"
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.posix_fallocate(fd, 0, need)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        free = shutil.disk_usage(folder).free
        raise StoreFull(f"no space to build {what}: it needs up to {need} bytes, {free} are free in {folder}") from None
    finally:
        os.close(fd)
        scratch.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_meta(f: h5py.File, meta: dict, *, number: int, status: str, reason: str, built_by: str,
                index: JournalIndex) -> None:
    end = index.end or {}
    cals = meta.get("calibrations", [])
    attrs = {"format": FORMAT, "format_version": FORMAT_VERSION, "shot": number, "status": status,
             "reason": reason, "user": meta.get("user", ""), "host": meta.get("host", ""),
             "rig": meta.get("rig", ""), "rig_digest": meta.get("rig_digest", ""),
             "sequence": meta.get("sequence", ""), "sequence_hash": meta.get("sequence_hash", ""),
             "t_start": float(meta.get("t_start", math.nan)),
             "t_end": float(end.get("t_end", _last_time(index))),
             "expired_calibrations": ",".join(c["name"] for c in cals if c.get("expired")),
             "built_by": built_by}
    f.attrs.update(attrs)
    for name in JSON_FIELDS:
        f.create_dataset(f"metadata/{name}", data=json.dumps(meta.get(name, {}), default=str), dtype=TEXT)
    f.create_dataset("sequence/source", data=meta.get("source", ""), dtype=TEXT)
    f.create_dataset("rig/text", data=meta.get("rig_text", ""), dtype=TEXT)
    group = f.create_group("calibrations")
    for cal in cals:
        g = group.create_group(f"{cal['name']}@{cal['source']}" if cal["source"] != "registry" else cal["name"])
        for key in ("name", "source", "set_by", "note"):
            g.attrs[key] = str(cal.get(key) or "")
        g.attrs["version"] = str(cal.get("version", ""))
        for key in ("set_at", "valid_from", "valid_until"):
            g.attrs[key] = math.nan if cal.get(key) is None else float(cal[key])
        g.attrs["expired"] = np.int8(bool(cal.get("expired")))
        g.attrs["params"] = json.dumps(cal.get("params", {}), default=str)


def _last_time(index: JournalIndex) -> float:
    """A shot that never closed ends at its last journaled time."""
    times = [e["t"] for e in index.events]
    for c in index.chunks:
        if c.sampled:
            times.append(c.t0 + c.dt * max(c.n - 1, 0))
    return max(times, default=(index.meta or {}).get("t_start", math.nan))


def _write_signal(parent: h5py.Group, name: str, chunks: list[Chunk], fd: int, compression: str | None,
                  pool: codec.Pool) -> None:
    dtype = np.dtype(chunks[0].dtype)
    sampled = chunks[0].sampled
    n = max(c.p + c.n for c in chunks)
    g = parent.create_group(name)
    packed = any(c.packed for c in chunks)
    full = next((c.length for c in chunks if c.length), codec.chunk_length(dtype))
    length = full if n >= full else max(1, n)
    kw: dict[str, Any] = {"chunks": (length,)} if n else {}
    deflate = n and (compression or packed)
    if deflate:  # what the chunks were (or are here) made with: codec.py
        kw.update(compression="gzip", compression_opts=codec.LEVEL, shuffle=True)
    values = g.create_dataset("values", shape=(n,), dtype=dtype, **kw)
    times = None if sampled else g.create_dataset("t", shape=(n,), dtype="<f8", **kw)
    if deflate:
        _write_chunks(values, times, chunks, fd, length, n, pool)
    else:
        for c in chunks:
            t, v = chunk_arrays(fd, c)
            values[c.p:c.p + c.n] = v
            if times is not None:
                times[c.p:c.p + c.n] = t
    parts, segments = [], []
    t_first = t_last = math.nan
    for c in sorted(chunks, key=lambda c: c.p):
        if not c.n:
            continue
        if c.stats is None or (not sampled and c.span is None):  # a record of an older writer: all raw
            t, v = chunk_arrays(fd, c)
            parts.append(c.stats or codec.stats(v))
            span = (float(t[0]), float(t[-1])) if t is not None else None
        else:
            parts.append(c.stats)
            span = c.span
        first, last = (c.t0, c.t0 + c.dt * (c.n - 1)) if sampled else span
        t_first = first if math.isnan(t_first) else t_first
        t_last = last
        if sampled:
            segments.append((c.p, c.t0, c.dt))
    if sampled:
        g.create_dataset("segments", data=np.array(segments, "<f8").reshape(-1, 3))
    g.attrs.update({"unit": chunks[0].unit, "n": n, "time": "segments" if sampled else "t",
                    "t_first": t_first, "t_last": t_last, **codec.merge_stats(parts)})


def _write_chunks(values: h5py.Dataset, times: h5py.Dataset | None, chunks: list[Chunk], fd: int, length: int,
                  n: int, pool: codec.Pool) -> None:
    """Every HDF5 chunk as stored bytes: the ones the writer compressed as they are; the others (a
    chunk it had not completed, or a journal without compression) compressed here from the raw parts."""
    ready = {k: (offset, lt, lv) for c in chunks for k, offset, lt, lv in c.packed}
    for k in sorted(ready):
        offset, lt, lv = ready[k]
        data = os.pread(fd, lt + lv, offset)
        if len(data) != lt + lv:
            raise StoreError(f"{values.name}: chunk {k} is cut short in the journal")
        values.id.write_direct_chunk((k * length,), data[lt:])
        if times is not None:
            times.id.write_direct_chunk((k * length,), data[:lt])
    pieces: dict[int, list] = {}  # chunk -> raw parts (position, record) that fall in it
    for c in chunks:
        start = c.p + c.n - c.raw
        for k in range(start // length, (start + c.raw - 1) // length + 1 if c.raw else start // length):
            if k not in ready:
                pieces.setdefault(k, []).append((start, c))
    missing = sorted(pieces)

    def build(k: int) -> tuple[bytes, bytes | None]:
        lo, hi = k * length, min(n, (k + 1) * length)
        v = np.zeros(hi - lo, np.dtype(values.dtype))
        t = None if times is None else np.zeros(hi - lo, "<f8")
        covered = 0
        for start, c in pieces[k]:
            rt, rv = chunk_arrays(fd, c)
            a, b = max(lo, start), min(hi, start + c.raw)
            v[a - lo:b - lo] = rv[a - start:b - start]
            if t is not None:
                t[a - lo:b - lo] = rt[a - start:b - start]
            covered += b - a
        if covered != hi - lo:
            raise StoreError(f"{values.name}: the journal holds {covered} of the {hi - lo} values of chunk {k}")
        return codec.encode(v, length), None if t is None else codec.encode(t, length)

    for k, (zv, zt) in zip(missing, pool.map(build, missing)):
        values.id.write_direct_chunk((k * length,), zv)
        if times is not None:
            times.id.write_direct_chunk((k * length,), zt)


def _write_events(f: h5py.File, events: list[dict]) -> None:
    g = f.create_group("events")
    g.create_dataset("t", data=np.array([e["t"] for e in events], "<f8"))
    g.create_dataset("kind", data=[e["k"] for e in events], dtype=TEXT, shape=(len(events),))
    g.create_dataset("data", data=[json.dumps(e["d"], default=str) for e in events], dtype=TEXT,
                     shape=(len(events),))


class Shot:
    """A complete shot file, open read-only. Signals are read by slices: nothing loads the whole shot.

        with store.shot(42) as shot:
            t, v = shot.read("density", 1000, 2000)
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as exc:
            raise StoreError(f"{self.path}: not a readable HDF5 file ({exc})") from None
        if self.file.attrs.get("format") != FORMAT:
            self.file.close()
            raise StoreError(f"{self.path} is not a labrig shot file (format attribute "
                             f"{self.file.attrs.get('format')!r})")

    def __enter__(self) -> "Shot":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.file.close()

    @property
    def attrs(self) -> dict[str, Any]:
        return {k: _plain(v) for k, v in self.file.attrs.items()}

    number = property(lambda self: int(self.file.attrs["shot"]))
    status = property(lambda self: str(self.file.attrs["status"]))
    reason = property(lambda self: str(self.file.attrs["reason"]))
    source = property(lambda self: _text(self.file["sequence/source"]))
    rig_text = property(lambda self: _text(self.file["rig/text"]))

    def metadata(self, name: str) -> Any:
        """parameters, versions, firmware or extra, as Python objects."""
        return json.loads(_text(self.file[f"metadata/{name}"]))

    def names(self, group: str = "signals") -> list[str]:
        return list(self.file[group]) if group in self.file else []

    def info(self, name: str, group: str = "signals") -> dict[str, Any]:
        return {k: _plain(v) for k, v in self._group(name, group).attrs.items()}

    def read(self, name: str, start: int | None = None, stop: int | None = None, *,
             group: str = "signals") -> tuple[np.ndarray, np.ndarray]:
        """(times, values) of samples [start, stop) of a signal: only the chunks they cover are read."""
        g = self._group(name, group)
        values = g["values"][start:stop]
        if "t" in g:
            return g["t"][start:stop], values
        first, last, _ = slice(start, stop).indices(g["values"].shape[0])
        return _segment_times(g["segments"][()], first, last), values

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        g = self.file["events"]
        out = [{"t": float(t), "kind": _text(k), **json.loads(_text(d))}
               for t, k, d in zip(g["t"][()], g["kind"][()], g["data"][()])]
        return [e for e in out if kind is None or e["kind"] == kind]

    def overview(self, path: str | Path | None = None, **options):
        """Every signal against shot time (supervisor/store/overview.py): a Figure, or the PNG written to `path`."""
        from .overview import overview
        return overview(self, path, **options)

    def calibrations(self) -> list[dict[str, Any]]:
        out = []
        for g in self.file["calibrations"].values():
            cal = {k: _plain(v) for k, v in g.attrs.items()}
            cal["params"] = json.loads(cal["params"])
            cal["expired"] = bool(cal["expired"])
            out.append(cal)
        return out

    def _group(self, name: str, group: str) -> h5py.Group:
        if group not in GROUPS:
            raise StoreError(f"group {group!r}: a shot has {', '.join(GROUPS)}")
        known = self.names(group)
        if name not in known:
            raise StoreError(f"shot {self.number} has no {group[:-1]} {name!r}; it has: {', '.join(known) or 'none'}")
        return self.file[group][name]


def _segment_times(segments: np.ndarray, first: int, last: int) -> np.ndarray:
    """Times of samples [first, last) from rows of (first index, t0, dt)."""
    idx = np.arange(first, last)
    if not len(segments) or not idx.size:
        return np.zeros(idx.size)
    row = np.searchsorted(segments[:, 0], idx, side="right") - 1
    seg = segments[row]
    return seg[:, 1] + (idx - seg[:, 0]) * seg[:, 2]


def _text(value) -> str:
    if isinstance(value, h5py.Dataset):
        value = value[()]
    return value.decode() if isinstance(value, bytes) else str(value)


def _plain(value):
    """HDF5 attribute values as plain Python (numpy scalars and bytes out)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def describe(path: Path, root: Path) -> dict[str, Any]:
    """What the catalog keeps of a shot file (its path relative to the store's `root`): its root
    attributes, each signal's summary, its calibrations; read from attributes only (no signal data)."""
    with Shot(path) as shot:
        f = shot.file
        row = shot.attrs
        row["parameters"] = _text(f["metadata/parameters"])
        row["versions"] = _text(f["metadata/versions"])
        kinds = [_text(k) for k in f["events/kind"][()]]
        row["n_events"], row["n_trips"] = len(kinds), kinds.count("trip")
        signals = [{"group": group, "name": name, **shot.info(name, group)}
                   for group in GROUPS for name in shot.names(group)]
        cals = [{k: c[k] for k in ("name", "source", "version", "expired")} for c in shot.calibrations()]
    row["size"] = Path(path).stat().st_size
    row["path"] = str(Path(path).relative_to(root))
    return {"shot": row, "signals": signals, "calibrations": cals}

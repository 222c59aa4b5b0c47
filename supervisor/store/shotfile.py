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
    /signals/NAME/values   chunked, gzip + shuffle; attrs: unit, n, min, max, mean, t_first, t_last
    /signals/NAME/t        times (s), when the chunks came with times, else
    /signals/NAME/segments rows of (first index, t0, dt): uniformly sampled stretches
    /telemetry/NAME/...    the same, for telemetry of the shot's window
    /events/t, kind, data  trips, audit entries and other events (data: JSON text)

Gzip (deflate) because it is the one compression filter every HDF5 build has (MATLAB
included); a slice of a signal reads only the chunks it covers.
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

from .errors import StoreError, StoreFull
from .journal import Chunk, JournalIndex, chunk_arrays

FORMAT, FORMAT_VERSION = "labrig-shot", 1
GROUPS = ("signals", "telemetry")
CHUNK_BYTES = 1 << 18  # 256 KiB of values per HDF5 chunk: small slices stay cheap, gzip still works well
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
            with h5py.File(tmp, "w") as f:
                _write_meta(f, meta, number=number, status=status, reason=reason, built_by=built_by, index=index)
                for (group, name), chunks in index.signals().items():
                    _write_signal(f.require_group(group), name, chunks, fd, compression)
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


def _write_signal(parent: h5py.Group, name: str, chunks: list[Chunk], fd: int, compression: str | None) -> None:
    dtype = np.dtype(chunks[0].dtype)
    n = sum(c.n for c in chunks)
    g = parent.create_group(name)
    kw: dict[str, Any] = {}
    if n:
        kw["chunks"] = (max(1, min(n, CHUNK_BYTES // dtype.itemsize)),)
        if compression:
            kw.update(compression=compression, compression_opts=1 if compression == "gzip" else None, shuffle=True)
    values = g.create_dataset("values", shape=(n,), dtype=dtype, **kw)
    sampled = chunks[0].sampled
    times = None if sampled else g.create_dataset("t", shape=(n,), dtype="<f8", **kw)
    segments, stats, pos = [], _Stats(), 0
    t_first = t_last = math.nan
    for c in chunks:
        t, v = chunk_arrays(fd, c)
        values[pos:pos + c.n] = v
        if times is not None:
            times[pos:pos + c.n] = t
        if c.n:
            first, last = (c.t0, c.t0 + c.dt * (c.n - 1)) if sampled else (float(t[0]), float(t[-1]))
            t_first = first if math.isnan(t_first) else t_first
            t_last = last
            if sampled:
                segments.append((pos, c.t0, c.dt))
        stats.add(v)
        pos += c.n
    if sampled:
        g.create_dataset("segments", data=np.array(segments, "<f8").reshape(-1, 3))
    g.attrs.update({"unit": chunks[0].unit, "n": n, "time": "segments" if sampled else "t",
                    "t_first": t_first, "t_last": t_last, **stats.result()})


class _Stats:
    """min, max and mean of a signal, chunk by chunk, ignoring NaN."""

    def __init__(self):
        self.lo = self.hi = math.nan
        self.total, self.count = 0.0, 0

    def add(self, v: np.ndarray) -> None:
        if not v.size:
            return
        if v.dtype.kind == "f":
            finite = v[~np.isnan(v)] if np.isnan(v.min()) else v  # the copy only when there is a NaN
        else:
            finite = v
        if not finite.size:
            return
        lo, hi = float(finite.min()), float(finite.max())
        self.lo = lo if math.isnan(self.lo) else min(self.lo, lo)
        self.hi = hi if math.isnan(self.hi) else max(self.hi, hi)
        self.total += float(finite.sum(dtype="f8"))
        self.count += finite.size

    def result(self) -> dict[str, float]:
        return {"min": self.lo, "max": self.hi, "mean": self.total / self.count if self.count else math.nan}


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

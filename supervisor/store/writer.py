"""ShotWriter: one running shot. Every call goes to the journal before it returns; close() builds
the shot file from it. A run always closes with an exit status (success, abort, fail), as in
bluesky: leaving the `with` block does it, whatever happened inside.

With compression (the store's default), each signal's values are cut into the shot file's HDF5
chunks as they arrive: every chunk a call completes is compressed there and then, on a few
threads (codec.py), and journaled in that form, so close() only copies finished chunks into
the file. The start of a chunk not complete yet is journaled raw and kept in memory until a
later call completes it. So the journal still holds every value before `signal()` returns,
and the data are compressed once and never written raw in bulk.
"""
from __future__ import annotations

import errno
import re
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from labrig.drivers.errors import ConfigError

from . import codec
from .errors import StoreError, StoreFull
from .journal import CLOSE, EVENT, SIGNAL, JournalWriter
from .shotfile import GROUPS

if TYPE_CHECKING:
    from .store import ShotStore

STATUSES = ("success", "abort", "fail")
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]*$")
FULL = (errno.ENOSPC, errno.EDQUOT)


class ShotWriter:
    """Made by `ShotStore.open_shot(...)`; use it as a context manager:

        with store.open_shot(sequence="discharge", parameters={"rf": 0.4}) as shot:
            shot.signal("density", t, values, unit="m^-3")   # times array, or t0 with dt=
            shot.event("trip", interlock="door", reason="door opened")
        # closed: shot.path is the complete, read-only file
    """

    def __init__(self, store: "ShotStore", number: int, journal: JournalWriter):
        self.store = store
        self.number = number
        self.journal = journal
        self.path: Path = store.path_of(number)
        self.fault: str | None = None  # why journaling stopped (a full disk), if it did
        self.closed = False
        self._lock = threading.Lock()  # collectors on several threads may feed one shot
        self._kinds: dict[tuple[str, str], tuple[np.dtype, str, bool]] = {}
        self._packers: dict[tuple[str, str], _Packer] = {}
        self._pool = codec.Pool() if store.compression else None

    def __enter__(self) -> "ShotWriter":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if self.closed:
            return
        if kind is None:
            self.close("success")
        elif issubclass(kind, (KeyboardInterrupt, GeneratorExit)):
            self.close("abort", reason="interrupted")
        else:
            self.close("fail", reason=f"{kind.__name__}: {exc}")

    def signal(self, name: str, t, values, *, unit: str = "", dt: float | None = None,
               group: str = "signals") -> None:
        """Append samples of a signal. `t`: an array of times (s) as long as `values`, or, with
        `dt` (s), the time of the first sample of a uniformly sampled chunk. A signal keeps the
        dtype, unit and kind of time of its first chunk."""
        values = np.ascontiguousarray(values)
        if values.ndim != 1:
            raise ConfigError(f"signal {name!r}: values must be 1-D, got shape {values.shape}")
        if values.dtype.kind not in "biuf":
            raise ConfigError(f"signal {name!r}: values must be numbers or booleans, got dtype {values.dtype}")
        if group not in GROUPS:
            raise ConfigError(f"signal {name!r}: group {group!r} is not one of {', '.join(GROUPS)}")
        with self._lock:
            self._check_open()
            dtype, unit, sampled = self._kind(group, name, values.dtype, unit, dt is not None)
            values = values.astype(dtype, copy=False)
            if sampled:
                if not dt > 0:
                    raise ConfigError(f"signal {name!r}: dt = {dt} must be > 0 s")
                times, stamps = [float(t), float(dt)], None
            else:
                stamps = np.ascontiguousarray(t, "<f8")
                if stamps.shape != values.shape:
                    raise ConfigError(f"signal {name!r}: {stamps.size} times for {values.size} values; give one "
                                      "time per value, or the first time and dt=")
                times = None
            header = {"g": group, "s": name, "u": unit, "d": dtype.str, "n": int(values.size), "t": times}
            if self._pool is None:
                self._append(SIGNAL, header, [values] if stamps is None else [stamps, values])
                return
            packer = self._packers.setdefault((group, name), _Packer(codec.chunk_length(dtype)))
            extra, payload = packer.pack(values, stamps, self._pool)
            self._append(SIGNAL, {**header, **extra}, payload)
            packer.commit(values, stamps, extra)

    def telemetry(self, name: str, t, values, *, unit: str = "", dt: float | None = None) -> None:
        """Telemetry of the shot's window (kept apart from the acquired signals)."""
        self.signal(name, t, values, unit=unit, dt=dt, group="telemetry")

    def event(self, kind: str, *, t: float | None = None, **data: Any) -> None:
        """A trip, an audit entry, a note: kind, time (default now) and JSON-able fields."""
        if not kind or not isinstance(kind, str):
            raise ConfigError(f"event kind {kind!r}: give a short name such as 'trip' or 'audit'")
        with self._lock:
            self._check_open()
            self._append(EVENT, {"k": kind, "t": time.time() if t is None else float(t), "d": data})

    def audit(self, entry: dict[str, Any]) -> None:
        """A node runtime's audit entry (supervisor/runtime/audit.py), kept whole."""
        self.event("audit", **{k: v for k, v in entry.items() if k != "t"}, t=entry.get("t"))

    def close(self, status: str = "success", reason: str = "") -> Path:
        """End the shot: build its file (written at a temporary name, fsynced, renamed, read-only),
        drop the journal, index it. A shot whose journaling stopped on a fault becomes 'partial'."""
        if status not in STATUSES:
            raise ConfigError(f"status {status!r}: a shot closes with one of {', '.join(STATUSES)}")
        with self._lock:
            if self.closed:
                return self.path
            self.closed = True
            if self.fault:
                status, reason = "partial", "; ".join(filter(None, [self.fault, reason]))
            if self._pool is not None:
                self._pool.close()
            try:
                self.journal.append(CLOSE, {"status": status, "reason": reason, "t_end": time.time()})
            except OSError:
                pass  # a full disk: the shot is still built from what the journal has
            return self.store._finish(self, status, reason)

    def _kind(self, group: str, name: str, dtype: np.dtype, unit: str, sampled: bool):
        key = (group, name)
        if key not in self._kinds:
            if not NAME.match(name):
                raise ConfigError(f"signal name {name!r}: use letters, digits, '_', '.', ':' or '-', "
                                  "starting with a letter or '_'")
            self._kinds[key] = (dtype.newbyteorder("<") if dtype.itemsize > 1 else dtype, unit, sampled)
        first, first_unit, first_sampled = self._kinds[key]
        if unit and unit != first_unit:
            raise ConfigError(f"signal {name!r}: unit {unit!r}, but its first chunk had {first_unit!r}")
        if sampled != first_sampled:
            raise ConfigError(f"signal {name!r}: its first chunk was " +
                              ("uniformly sampled (t0 and dt=); keep giving dt" if first_sampled
                               else "given an array of times; keep giving one (no dt=)"))
        if not np.can_cast(dtype, first, "same_kind"):
            raise ConfigError(f"signal {name!r}: values of dtype {dtype} cannot join its {first} values")
        return first, first_unit, first_sampled

    def _check_open(self) -> None:
        if self.closed:
            raise StoreError(f"shot {self.number} is closed; open a new shot")
        if self.fault:
            raise StoreFull(f"shot {self.number} stopped recording: {self.fault}; close it (it is kept as a "
                            "partial shot)")

    def _append(self, kind: bytes, header: dict, payload=()) -> None:
        try:
            self.journal.append(kind, header, payload)
        except OSError as exc:
            kept = self.journal.index.size
            if exc.errno in FULL:
                self.fault = f"disk full at {time.strftime('%H:%M:%S')} ({exc.strerror})"
                raise StoreFull(f"shot {self.number}: the disk of {self.journal.path} is full; the {kept} bytes "
                                "journaled before are kept and this chunk is not; the shot stops recording here. "
                                "Close it (it becomes a partial shot) or, if this process is gone, free space and "
                                "run `labrig store recover`") from None
            self.fault = f"journal write failed ({exc})"
            raise StoreError(f"shot {self.number}: cannot write {self.journal.path}: {exc}; the {kept} bytes "
                             "journaled before are kept") from exc


class _Packer:
    """One signal's cut into HDF5 chunks of `length` values: where it is, and the chunk begun."""

    def __init__(self, length: int):
        self.length = length
        self.pos = 0  # values journaled so far
        self.tail: list[np.ndarray] = []  # the values of the chunk begun (journaled raw already)
        self.tail_t: list[np.ndarray] = []

    def pack(self, values: np.ndarray, stamps: np.ndarray | None, pool: codec.Pool) -> tuple[dict, list]:
        """The record's extra header fields and payload for one call (nothing changes until commit)."""
        n, c, begun = values.size, self.length, self.pos % self.length
        extra = {"p": self.pos, "c": c}
        if stamps is not None and n:
            extra["tt"] = [float(stamps[0]), float(stamps[-1])]
        full = (begun + n) // c  # chunks this call completes
        if not full:
            extra.update(r=n, st=codec.stats(values), z=[])
            return extra, [values] if stamps is None else [stamps, values]
        first = c - begun  # this call's values in the first chunk it completes
        cuts = [(0, first)] + [(first + i * c, first + (i + 1) * c) for i in range(full - 1)]
        rest = first + (full - 1) * c

        def work(i: int):
            a, b = cuts[i]
            v = values[a:b] if i or not begun else np.concatenate(self.tail + [values[:b]])
            zv = codec.encode(v, c)
            zt = b""
            if stamps is not None:
                t = stamps[a:b] if i or not begun else np.concatenate(self.tail_t + [stamps[:b]])
                zt = codec.encode(t, c)
            return zt, zv, codec.stats(values[a:b])

        done = pool.map(work, list(range(full)))
        k0 = self.pos // c
        parts = [s for _, _, s in done] + [codec.stats(values[rest:])]
        merged = codec.merge_stats(parts)
        count = sum(p[3] for p in parts)
        extra.update(z=[[k0 + i, len(zt), len(zv)] for i, (zt, zv, _) in enumerate(done)], r=n - rest,
                     st=[None if count == 0 else merged["min"], None if count == 0 else merged["max"],
                         sum(p[2] for p in parts), count])
        payload = [b for zt, zv, _ in done for b in (zt, zv)]
        if rest < n:
            payload += [values[rest:]] if stamps is None else [stamps[rest:], values[rest:]]
        return extra, payload

    def commit(self, values: np.ndarray, stamps: np.ndarray | None, extra: dict) -> None:
        """The record is in the journal: move on."""
        n, rest = values.size, values.size - extra["r"]
        if extra["z"]:
            self.tail, self.tail_t = [], []
        if rest < n:
            self.tail.append(values[rest:].copy())
            if stamps is not None:
                self.tail_t.append(stamps[rest:].copy())
        self.pos += n

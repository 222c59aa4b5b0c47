"""Versioned calibrations with validity windows: who set each version, when, and until when it holds.

One JSON object per line in `calibrations.jsonl` in the store's folder, appended under a
lock and never rewritten, so the history of every calibration stays:

    {"name": "langmuir_I", "version": 3, "params": {"gain": 0.01, "offset": -0.025},
     "set_by": "alice", "set_at": 1795300000.0, "valid_from": 1795300000.0,
     "valid_until": 1797900000.0, "note": "after the probe tip change"}

The version in force at a time is the newest whose window has begun; once its `valid_until`
has passed it is still the one in force (nothing replaced it) but it is *expired*, and a shot
taken with it says so.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import getpass
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from labrig.drivers.errors import ConfigError


@dataclass(frozen=True)
class CalibrationVersion:
    name: str
    version: int
    params: dict[str, Any] = field(default_factory=dict)
    set_by: str = ""
    set_at: float = 0.0
    valid_from: float = 0.0
    valid_until: float | None = None
    note: str = ""

    def expired_at(self, t: float) -> bool:
        return self.valid_until is not None and t > self.valid_until

    def record(self, at: float) -> dict[str, Any]:
        """What a shot keeps of it: every field, its source, and whether it had expired at `at`."""
        return {**asdict(self), "source": "registry", "expired": self.expired_at(at)}


def as_time(value: float | str | dt.datetime | None, what: str) -> float | None:
    """Unix seconds from a number, an ISO 8601 string or a datetime (naive: local time)."""
    if value is None or isinstance(value, (int, float)):
        return None if value is None else float(value)
    try:
        when = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
        return when.timestamp()
    except (TypeError, ValueError):
        raise ConfigError(f"{what} = {value!r}: give unix seconds, an ISO 8601 time such as "
                          "'2025-05-01T09:00', or a datetime") from None


class CalibrationRegistry:
    def __init__(self, path: Path):
        self.path = Path(path)

    def set(self, name: str, params: dict[str, Any], *, by: str | None = None, valid_from=None,
            valid_until=None, note: str = "") -> CalibrationVersion:
        """Add a new version of calibration `name` (the number is the next free one)."""
        if not name or "/" in name:
            raise ConfigError(f"calibration name {name!r}: give a non-empty name without '/'")
        now = time.time()
        start = as_time(valid_from, "valid_from") or now
        until = as_time(valid_until, "valid_until")
        if until is not None and until <= start:
            raise ConfigError(f"calibration {name}: valid_until ({until}) must be after valid_from ({start})")
        json.dumps(params)  # must be storable as it is; fails here, not in a shot
        with self._locked() as fh:
            version = 1 + max((v.version for v in self._read(fh) if v.name == name), default=0)
            cal = CalibrationVersion(name, version, dict(params), by or getpass.getuser(), now, start, until, note)
            fh.seek(0, os.SEEK_END)
            fh.write(json.dumps(asdict(cal)) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return cal

    def history(self, name: str | None = None) -> list[CalibrationVersion]:
        if not self.path.exists():
            return []
        with open(self.path) as fh:
            return [v for v in self._read(fh) if name is None or v.name == name]

    def in_force(self, at: float | None = None) -> dict[str, CalibrationVersion]:
        """name -> the version in force at `at` (default now); expired ones included (check expired_at)."""
        at = time.time() if at is None else at
        out: dict[str, CalibrationVersion] = {}
        for v in self.history():
            if v.valid_from <= at and (v.name not in out or v.version > out[v.name].version):
                out[v.name] = v
        return out

    @contextlib.contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes
            fh.seek(0)
            yield fh

    def _read(self, fh) -> list[CalibrationVersion]:
        out = []
        for number, line in enumerate(fh, 1):
            if not line.strip() or not line.endswith("\n"):
                continue  # an empty line, or a last line cut short by a crash: never a version
            try:
                out.append(CalibrationVersion(**json.loads(line)))
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{self.path}:{number}: not a calibration record ({exc})") from None
        return out

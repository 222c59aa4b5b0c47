"""The node runtime's audit journal: every write, ramp, safe state, trip and re-arm, whoever asked.

One JSON object per line, appended and flushed before the request is answered, so
a killed runtime loses nothing it has confirmed (the OS keeps what was flushed):

    {"t": 1795300000.12, "node": "rp1", "op": "write", "signal": "rf_power", "value": 500.0,
     "client": "supervisor", "user": "alice", "outcome": "refused", "detail": "rf_power = 5000 W is outside ..."}

Each entry is also published (labrig/<rig>/<node>/audit) for the supervisor and the shot store.
"""
from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

OUTCOMES = ("ok", "refused", "failed")


class AuditJournal:
    def __init__(self, path: Path | None, *, node: str, publish: Callable[[dict], None] | None = None,
                 keep: int = 1000):
        self.node = node
        self.path = Path(path) if path else None
        self._publish = publish or (lambda entry: None)
        self._recent: deque[dict] = deque(maxlen=keep)
        self._lock = threading.Lock()
        self._file = None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._file = os.fdopen(fd, "a", buffering=1)  # line-buffered: each entry reaches the OS whole

    def record(self, op: str, *, outcome: str, client: str = "", user: str = "", signal: str | None = None,
               value: Any = None, detail: str = "") -> dict:
        entry = {"t": time.time(), "node": self.node, "op": op, "signal": signal, "value": value,
                 "client": client, "user": user, "outcome": outcome, "detail": detail}
        line = json.dumps(entry, default=str)
        with self._lock:
            if self._file:
                self._file.write(line + "\n")
            self._recent.append(entry)
        self._publish(entry)
        return entry

    def recent(self, count: int = 50) -> list[dict]:
        with self._lock:
            return list(self._recent)[-count:]

    def close(self) -> None:
        with self._lock:
            if self._file:
                self._file.close()
                self._file = None


def read_journal(path: Path) -> list[dict]:
    """Every entry of a journal file; a torn last line (a crash mid-write) is skipped, never fatal."""
    entries = []
    try:
        with open(path) as fh:
            for line in fh:
                try:
                    entries.append(json.loads(line))
                except ValueError:
                    continue
    except FileNotFoundError:
        pass
    return entries

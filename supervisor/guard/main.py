"""`labrig guard RIG`: run the rig's guard in this process until SIGTERM.

Writes `guard.json` (pid, endpoint) into the state directory once it listens, so
the supervisor kernel, `labrig status` and `labrig rearm` find it.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

from ..processes import is_ours
from ..rig import Rig
from ..runtime.main import broker_url, open_publisher
from ..state import read_state, remove_state, state_dir, write_state
from .guard import Guard

GUARD_STATE = "guard"
log = logging.getLogger("labrig.guard")


def guard_record(directory: Path) -> dict | None:
    """The running guard's record, if its process still runs."""
    record = read_state(GUARD_STATE, directory)
    return record if record and is_ours(record["pid"]) else None


def serve_guard(rig_path: str, *, directory: Path | None = None, broker: str | None = None,
                ready: threading.Event | None = None, stop: threading.Event | None = None) -> int:
    directory = directory or state_dir()
    rig = Rig.load(rig_path)
    url = broker_url(rig, directory, broker)
    publisher, publish = open_publisher(rig, "guard", url)
    try:
        guard = Guard(rig, directory, publish=publish, audit_path=directory / "audit" / "guard.jsonl")
    except Exception:
        if publisher:
            publisher.close()
        raise
    write_state(GUARD_STATE, {"pid": os.getpid(), "endpoint": guard.endpoint, "rig": str(rig.path),
                              "rig_name": rig.name, "broker": url, "started": time.time(),
                              "interlocks": list(guard.interlocks)}, directory)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: guard.stop())
        signal.signal(signal.SIGINT, lambda *_: guard.stop())
    threading.Thread(target=lambda: (stop.wait(), guard.stop()), daemon=True, name="stop-watch").start()
    log.info("guard of rig %s on %s: %s", rig.name, guard.endpoint, ", ".join(guard.interlocks) or "no interlocks")
    if ready:
        ready.set()
    try:
        guard.serve()
    finally:
        stop.set()
        guard.close()
        if publisher:
            publisher.close()
        record = read_state(GUARD_STATE, directory)
        if record and record.get("pid") == os.getpid():
            remove_state(GUARD_STATE, directory)
    return 0

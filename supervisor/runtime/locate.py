"""Find a node's runtime from the state directory, or start one.

A node kernel or the supervisor never owns a runtime: a started runtime runs in
its own session and outlives whoever started it.
"""
from __future__ import annotations

import time
from pathlib import Path

from labrig.drivers.errors import LabrigError

from ..processes import ProcessError, is_ours, log_tail, spawn
from ..state import read_state
from .client import RuntimeClient
from .main import node_state_name


def runtime_record(node: str, directory: Path) -> dict | None:
    """The recorded runtime of a node if its process still runs."""
    record = read_state(node_state_name(node), directory)
    if record and is_ours(record["pid"]):
        return record
    return None


def ensure_runtime(rig_path: str | Path, node: str, directory: Path, *, sim: bool = False,
                   timeout: float = 20.0) -> dict:
    record = runtime_record(node, directory)
    if record:
        try:
            with RuntimeClient(record["endpoint"], node=node, timeout=1.0) as client:
                client.ping()
            return record
        except LabrigError:
            # a second runtime beside a hung one would fight it for the hardware: report instead
            raise ProcessError(f"the runtime of node {node!r} (pid {record['pid']}) runs but does not answer; "
                               f"see `labrig logs {node}`") from None
    args = ["-m", "labrig.supervisor.cli", "node", "serve", str(rig_path), node, "--state-dir", str(directory)]
    if sim:
        args.append("--sim")
    proc = spawn(args, name=f"node-{node}", log_dir=directory / "logs")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = read_state(node_state_name(node), directory)
        if record and record.get("pid") == proc.pid:
            return record
        if proc.poll() is not None:
            raise ProcessError(f"the runtime of node {node!r} exited with code {proc.returncode}:\n"
                               + log_tail(directory / "logs" / f"node-{node}.log"))
        time.sleep(0.05)
    raise ProcessError(f"the runtime of node {node!r} did not start within {timeout:g} s:\n"
                       + log_tail(directory / "logs" / f"node-{node}.log"))

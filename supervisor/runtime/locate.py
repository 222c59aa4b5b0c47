"""Find a node's runtime from the state directory, or start one.

A node kernel or the supervisor never owns a runtime: a started runtime runs in
its own session and outlives whoever started it.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from labrig.drivers.errors import LabrigError, NodeUnavailable

from ..processes import ProcessError, is_ours, log_tail, spawn
from ..state import read_state
from .client import AsyncRuntimeClient, RuntimeClient
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
            with RuntimeClient(record["endpoint"], node=node, timeout=1.0, **client_options(record)) as client:
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


def client_options(record: dict) -> dict:
    """What a client needs beyond the endpoint: the runtime's CurveZMQ public key, when it has one."""
    key = record.get("public_key")
    return {"server_public_key": key.encode()} if key else {}


class RuntimeLink:
    """A node's current runtime, as recorded in the state directory, with clients for it.

    Follows a restarted runtime (systemd, a node kernel, `labrig up`) to its new
    endpoint: the state file is rewritten atomically on start, so one stat per
    request tells whether to look again.
    """

    def __init__(self, node: str, directory: Path, *, client: str = "", timeout: float = 2.0,
                 last_heartbeat=None):
        self.node = node
        self.directory = Path(directory)
        self.client_name = client
        self.timeout = timeout
        self._last_heartbeat = last_heartbeat
        self._lock = threading.Lock()
        self._seen = None
        self._record: dict | None = None
        self._client: RuntimeClient | None = None
        self._aclient: AsyncRuntimeClient | None = None

    def record(self) -> dict:
        """The running runtime's record; NodeUnavailable (naming the last heartbeat) when none runs."""
        path = self.directory / f"{node_state_name(self.node)}.json"
        try:
            st = os.stat(path)
            seen = (st.st_ino, st.st_mtime_ns)
        except FileNotFoundError:
            seen = None
        with self._lock:
            if seen != self._seen or self._record is None:
                self._seen = seen
                record = runtime_record(self.node, self.directory)
                if record is None or self._record is None or record["endpoint"] != self._record["endpoint"]:
                    self._reset()
                self._record = record
            if self._record is None:
                seen_at = self._last_heartbeat() if self._last_heartbeat else None
                when = f"; last heartbeat {time.time() - seen_at:.1f} s ago" if seen_at else "; no heartbeat seen"
                raise NodeUnavailable(f"node {self.node!r} has no runtime running (state in {self.directory}{when}); "
                                      f"start it with `labrig up` or see `labrig logs {self.node}`")
            return self._record

    @property
    def client(self) -> RuntimeClient:
        record = self.record()
        with self._lock:
            if self._client is None:
                self._client = RuntimeClient(record["endpoint"], node=self.node, client=self.client_name,
                                             timeout=self.timeout, last_heartbeat=self._last_heartbeat,
                                             **client_options(record))
            return self._client

    def aclient(self) -> AsyncRuntimeClient:
        record = self.record()
        with self._lock:
            if self._aclient is None:
                self._aclient = AsyncRuntimeClient(record["endpoint"], node=self.node, client=self.client_name,
                                                   timeout=self.timeout, **client_options(record))
            return self._aclient

    @property
    def endpoint(self) -> str:
        return self.record()["endpoint"]

    def _reset(self) -> None:
        for c in (self._client, self._aclient):
            if c is not None:
                c.close()
        self._client = self._aclient = None

    def close(self) -> None:
        with self._lock:
            self._reset()

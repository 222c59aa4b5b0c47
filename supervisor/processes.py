"""Start labrig's background processes by module name, wait until ready, stop them.

A background process writes a JSON "ready file" once it listens; the starter
waits for that file (bounded), so endpoints bound on port 0 are known without
races. Processes run in their own session, so that no process's death (or a
Ctrl-C in the terminal that started them) takes the others with it.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from labrig.drivers.errors import LabrigError


class ProcessError(LabrigError):
    """A background process failed to start or to stop."""


def spawn(args: list[str], *, name: str, log_dir: Path, env: dict[str, str] | None = None,
          nice: int = 0) -> subprocess.Popen:
    """Start `python -m ARGS...` detached, logging to log_dir/NAME.log, `nice` steps below us in priority."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / f"{name}.log", "ab")
    try:
        return subprocess.Popen([sys.executable, *args], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})},
                                preexec_fn=(lambda: os.nice(nice)) if nice else None)
    finally:
        log.close()


def wait_ready(proc: subprocess.Popen, ready: Path, *, name: str, timeout: float, log_dir: Path) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready.exists():
            return json.loads(ready.read_text())
        if proc.poll() is not None:
            raise ProcessError(f"{name} exited with code {proc.returncode} before it was ready:\n"
                               + log_tail(log_dir / f"{name}.log"))
        time.sleep(0.02)
    raise ProcessError(f"{name} was not ready within {timeout:g} s:\n" + log_tail(log_dir / f"{name}.log"))


def wait_listening(proc: subprocess.Popen, host: str, port: int, *, name: str, timeout: float,
                   describe, interval: float = 0.05) -> None:
    """Until `proc` accepts TCP connections on host:port; a ProcessError with `describe()` (its log) when
    it exits first or the time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise ProcessError(f"{name} exited with code {proc.returncode} before it listened on "
                               f"{host}:{port}:\n{describe()}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise ProcessError(f"{name} did not listen on {host}:{port} within {timeout:g} s:\n{describe()}")
        time.sleep(interval)


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def is_ours(pid: int, marker: str = "labrig") -> bool:
    """True if pid runs and its command line mentions marker (a reused pid is not ours)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    if marker not in cmdline:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def stop_pid(pid: int, *, marker: str = "labrig", timeout: float = 3.0) -> bool:
    """SIGTERM, then SIGKILL after `timeout`. Returns True if the process was ours and is gone."""
    if not is_ours(pid, marker):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_ours(pid, marker):
            _reap(pid)
            return True
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and is_ours(pid, marker):
        time.sleep(0.02)
    _reap(pid)
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass

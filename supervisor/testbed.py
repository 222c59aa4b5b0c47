"""The simulated testbed: one world process and one device simulator per node.

    bed = start_testbed(rig, seed=0)   # what `labrig sim up RIG` does
    bed["simulators"]["ard1"]["url"]   # serial:///dev/pts/7
    stop_testbed()                     # what `labrig sim down` does

The record (pids, endpoints, URLs) is kept in the state directory as sim.json,
which is also where `sim:` connections and `--sim` find their endpoints.
Simulators are started by module name (`python -m labrig.simulators`), never
imported here.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from labrig.drivers.errors import LabrigError

from .processes import ProcessError, is_ours, spawn, stop_pid, wait_ready
from .rig import Rig
from .state import read_state, remove_state, state_dir, write_state

STATE_NAME = "sim"
MARKER = "labrig.simulators"
RIG_AWARE = {"simatic", "rpi"}  # simulators that take their program / pins from the rig file (option rig=PATH)


class TestbedError(LabrigError):
    """The simulated testbed could not start, or is not running."""


def running_testbed(directory: Path | None = None) -> dict[str, Any] | None:
    """The record of the running testbed, or None when none runs (stale records are ignored)."""
    record = read_state(STATE_NAME, directory)
    if record and is_ours(record["world"]["pid"], MARKER):
        return record
    return None


def start_testbed(rig: Rig, *, seed: int = 0, directory: Path | None = None, host: str = "127.0.0.1",
                  timeout: float = 20.0) -> dict[str, Any]:
    directory = directory or state_dir()
    if running_testbed(directory):
        raise TestbedError(f"a simulated testbed already runs (state in {directory}); "
                           "stop it with `labrig sim down`")
    remove_state(STATE_NAME, directory)
    log_dir = directory / "logs"
    started: list[int] = []
    ready_dir = Path(tempfile.mkdtemp(prefix="ready-", dir=directory))
    try:
        ready = ready_dir / "world.json"
        proc = spawn(["-m", "labrig.simulators", "world", "--ready", str(ready), "--seed", str(seed),
                      "--host", host], name="sim-world", log_dir=log_dir)
        started.append(proc.pid)
        world = wait_ready(proc, ready, name="sim-world", timeout=timeout, log_dir=log_dir)
        procs = {}
        for node, spec in rig.nodes.items():
            ready = ready_dir / f"{node}.json"
            options = ["--option", f"rig={rig.path}"] if rig.path and spec.kind in RIG_AWARE else []
            if spec.realtime:
                options += ["--realtime", str(spec.realtime)]
            procs[node] = (spawn(["-m", "labrig.simulators", spec.kind, "--node", node,
                                  "--world-state", world["endpoints"]["state"],
                                  "--world-actuators", world["endpoints"]["actuators"],
                                  "--ready", str(ready), "--host", host, *options],
                                 name=f"sim-{node}", log_dir=log_dir), ready)
            started.append(procs[node][0].pid)
        simulators = {node: wait_ready(p, r, name=f"sim-{node}", timeout=timeout, log_dir=log_dir)
                      for node, (p, r) in procs.items()}
    except (ProcessError, OSError) as exc:
        for pid in reversed(started):
            stop_pid(pid, marker=MARKER)
        raise TestbedError(f"the simulated testbed did not start: {exc}") from None
    finally:
        for f in ready_dir.iterdir():
            f.unlink()
        ready_dir.rmdir()
    record = {"rig": str(rig.path or ""), "rig_name": rig.name, "started": time.time(), "seed": seed,
              "world": world, "simulators": simulators, "logs": str(log_dir)}
    write_state(STATE_NAME, record, directory)
    return record


def stop_testbed(directory: Path | None = None) -> list[str]:
    """Stop every simulator of the recorded testbed; returns the names stopped."""
    directory = directory or state_dir()
    record = read_state(STATE_NAME, directory)
    if not record:
        return []
    stopped = []
    for node, info in record.get("simulators", {}).items():
        if stop_pid(info["pid"], marker=MARKER):
            stopped.append(node)
    if stop_pid(record["world"]["pid"], marker=MARKER):
        stopped.append("world")
    remove_state(STATE_NAME, directory)
    return stopped


def testbed_status(directory: Path | None = None) -> dict[str, Any]:
    record = read_state(STATE_NAME, directory) or {}
    out: dict[str, Any] = {}
    if record:
        out["world"] = {**record["world"], "alive": is_ours(record["world"]["pid"], MARKER)}
        for node, info in record.get("simulators", {}).items():
            out[node] = {**info, "alive": is_ours(info["pid"], MARKER)}
    return out

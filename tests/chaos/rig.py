"""The chaos rig: the whole simulated cluster (real Mosquitto, simulators, runtimes, guard,
kernels) with short watchdogs, and the PLC reached through a cuttable TCP proxy process.

One cluster for the whole chaos suite; each test injects its fault for real, judges by
the simulated devices' own state (the world process), then puts the rig back.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path

import pytest

from labrig.drivers.errors import LabrigError, Refused
from labrig.simulators.faults import proxy_control
from labrig.simulators.world import world_control
from labrig.supervisor.broker import mosquitto_binary
from labrig.supervisor.guard import guard_record
from labrig.supervisor.rig import Rig
from labrig.supervisor.runtime import RuntimeClient
from labrig.supervisor.runtime.locate import ensure_runtime, runtime_record
from labrig.supervisor.state import read_state

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "ishtar" / "rig.toml"

# the watchdogs of the chaos rig (the example rig's are longer)
LEASE = 0.5  # s: a node held by the guard goes safe when the lease is not renewed
ONLINE_TIMEOUT = 0.5  # s: the guard counts a node lost after this long without an answer
GUARD_POLL = 0.02  # s: the guard reads cross-node signals this often
ARDUINO_WATCHDOG = 0.3  # s: the Arduino firmware's own watchdog
PLC_WATCHDOG = 1.0  # s: the simulated PLC's watchdog on the host's watchdog word (its default)
PLC_SCAN = 0.01  # s: the simulated PLC's scan period (its default)
MARGIN = 0.1  # s: the allowance beyond watchdog + one scan
LOOP_RATE = 50.0  # Hz: the chaos rig's coil current loop
LOOP_STALE_AFTER = 0.3  # s: a coil current reading that has not moved for this long is a stuck sensor

# Each module of the suite marks itself `processes` (run one at a time, scripts/test) and
# skips without Mosquitto on a laptop, never in CI (the test command installs it there).
needs_cluster = [pytest.mark.processes,
                 pytest.mark.skipif(not mosquitto_binary() and not os.environ.get("CI"),
                                    reason="needs Mosquitto (apt install mosquitto)")]


def chaos_rig_text(plc_url: str) -> str:
    """The example rig with short watchdogs; every node on its simulator, the PLC through the proxy."""
    text = EXAMPLE.read_text()
    text = re.sub(r"(?m)^lease = .*$", f"lease = {LEASE}", text)
    text = re.sub(r"(?m)^heartbeat_timeout = .*$", f"heartbeat_timeout = {ONLINE_TIMEOUT}\nguard_poll = {GUARD_POLL}",
                  text)
    text = text.replace("watchdog_ms = 500", f"watchdog_ms = {int(ARDUINO_WATCHDOG * 1000)}")
    out, section = [], ""
    for line in text.splitlines():
        header = re.match(r"^\[nodes\.(\w+)\]", line)
        if line.startswith("["):
            section = header.group(1) if header else ""
        if section and line.startswith("connection = "):
            line = f'connection = "{plc_url}"' if section == "plc1" else 'connection = "sim:"'
        out.append(line)
    return "\n".join(out) + "\n" + COIL_LOOP


# a coil current loop on the PLC node, off until a test switches it to auto
COIL_LOOP = f"""
[loops.coil]
node = "plc1"
measure = "coil_current"
actuate = "coil_current_set"
setpoint = 50.0
kp = 0.5
ki = 5.0
rate = {LOOP_RATE}
output_limits = [0.0, 300.0]
setpoint_rate = 200.0
stale_after = {LOOP_STALE_AFTER}
"""


class _Watched(dict):
    """A world state that remembers which quantities a predicate looked at."""

    def __init__(self, state: dict):
        super().__init__(state)
        self.used: set[str] = set()

    def __getitem__(self, key):
        self.used.add(key)
        return super().__getitem__(key)


class Chaos:
    """The running chaos rig, and what the tests do to it."""

    def __init__(self, directory: Path, rig_path: Path, proxy_endpoint: str):
        self.dir = directory
        self.rig_path = rig_path
        self.rig = Rig.load(rig_path)
        self.proxy_endpoint = proxy_endpoint
        self._clients: dict[str, RuntimeClient] = {}

    # -- looking -------------------------------------------------------
    @property
    def record(self) -> dict:
        return read_state("cluster", self.dir)

    def world(self) -> dict:
        endpoint = read_state("sim", self.dir)["world"]["endpoints"]["control"]
        return world_control(endpoint, {"op": "snapshot"})["state"]

    def world_control(self, request: dict) -> dict:
        return world_control(read_state("sim", self.dir)["world"]["endpoints"]["control"], request)

    def set_world(self, name: str, value: float) -> float:
        """Set a world input; returns when the world applied it (its monotonic clock)."""
        return self.world_control({"op": "set", "name": name, "value": value})["at"]

    def client(self, node: str, *, timeout: float = 2.0, name: str = "chaos") -> RuntimeClient:
        record = runtime_record(node, self.dir)
        assert record, f"no runtime of {node} runs"
        key = f"{node}/{name}/{record['endpoint']}/{timeout}"
        if key not in self._clients:
            self._clients[key] = RuntimeClient(record["endpoint"], node=node, timeout=timeout, client=name)
        return self._clients[key]

    def guard(self) -> RuntimeClient:
        record = guard_record(self.dir)
        assert record, "the guard does not run"
        return self.client_at(record["endpoint"], "guard")

    def client_at(self, endpoint: str, node: str) -> RuntimeClient:
        key = f"{node}@{endpoint}"
        if key not in self._clients:
            self._clients[key] = RuntimeClient(endpoint, node=node, timeout=2.0, client="chaos")
        return self._clients[key]

    def guard_trips(self) -> dict[str, dict]:
        return {t["interlock"]: t for t in self.guard().trips()}

    def node_trips(self, node: str) -> dict[str, dict]:
        return {t["interlock"]: t for t in self.client(node).trips()}

    def journal(self, node: str) -> list[dict]:
        """The audit journal on disk (what survives the process)."""
        path = self.dir / "audit" / f"{node}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def proxy(self, command: str) -> str:
        return proxy_control(self.proxy_endpoint, command)

    # -- timing from the devices' side ----------------------------------
    def until_world(self, predicate, bound: float, what: str, *, since: float) -> float:
        """Poll the world until `predicate(state)`; how long after `since` the devices got there.

        Timed by the world itself: it records when each actuator last changed (one monotonic
        clock for every process of the host), so the time this check takes to look is not
        held against the rig. Quantities that are not actuators are timed by observation.
        Fails naming `what` if it did not happen within `bound` (plus a second to look)."""
        while True:
            reply = self.world_control({"op": "snapshot"})
            state, changed = _Watched(reply["state"]), reply["changed"]
            now = time.monotonic()
            if predicate(state):
                times = [changed[k]["at"] for k in state.used if k in changed and changed[k]["at"] >= since]
                observed = [k for k in state.used if k not in changed]
                return (now if observed or not times else max(times)) - since
            if now - since > bound + 1.0:
                raise AssertionError(f"{what}: not within {bound:.3f} s (world now: "
                                     f"{ {k: state.get(k) for k in ('rf_drive', 'rf_permit', 'coil_current_cmd', 'probe_bias', 'beacon', 'gas_valve')} })")
            time.sleep(0.002)

    # -- putting the rig back --------------------------------------------
    def restart_runtime(self, node: str) -> dict:
        record = ensure_runtime(self.rig_path, node, self.dir, timeout=30)
        return record

    def recover(self) -> None:
        """World back to normal, links restored, every runtime running, every trip re-armed, all safe."""
        self.proxy("restore")
        for node in self.rig.nodes:
            self.world_control({"op": "fault", "kind": "link", "name": node, "mode": "clear"})
        for name in ("door_closed", "cooling_flow"):
            self.set_world(name, {"door_closed": 1.0, "cooling_flow": 6.0}[name])
        for node in self.rig.nodes:
            if runtime_record(node, self.dir) is None:
                self.restart_runtime(node)
        deadline = time.monotonic() + 15
        while True:
            try:
                status = self.guard().status()
                if all(n["online"] for n in status["nodes"].values()):
                    for name in list(self.guard_trips()):
                        self.guard().rearm(name)
                    for node in self.rig.nodes:
                        for name in list(self.node_trips(node)):
                            self.client(node).rearm(name)
                    if not self.guard_trips() and not any(self.node_trips(n) for n in self.rig.nodes):
                        break
            except (Refused, LabrigError, AssertionError) as exc:
                if time.monotonic() > deadline:
                    raise AssertionError(f"the chaos rig did not recover: {exc}") from exc
            if time.monotonic() > deadline:
                raise AssertionError("the chaos rig did not recover: trips remain "
                                     f"{self.guard_trips()} {[self.node_trips(n) for n in self.rig.nodes]}")
            time.sleep(0.1)
        for node in self.rig.nodes:
            self.client(node).safe()

    def close(self) -> None:
        for c in self._clients.values():
            c.close()


def nan_or(value, default):
    return default if value is None or (isinstance(value, float) and math.isnan(value)) else value

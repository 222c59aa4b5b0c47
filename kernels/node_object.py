"""`node`: one board, as its node kernel shows it. Signals by name, devices, status, safe."""
from __future__ import annotations

import os
import threading
from pathlib import Path

from labrig.supervisor.devices import make_device
from labrig.supervisor.rig import Rig
from labrig.supervisor.runtime import AsyncRuntimeClient, RuntimeClient
from labrig.supervisor.runtime.locate import runtime_record
from labrig.supervisor.runtime.main import node_state_name

from .signals import Signal, SignalMap, Table

STATUS_COLUMNS = ["signal", "value", "unit", "dir", "setpoint", "limits", "safe", "channel", "error"]


def status_rows(status: dict) -> list[dict]:
    return [{"signal": name, "value": s.get("value"), "unit": s["unit"], "dir": s["direction"],
             "setpoint": s.get("setpoint"), "limits": s.get("limits"), "safe": s.get("safe"),
             "channel": s.get("channel"), "error": s.get("error", "")}
            for name, s in status["signals"].items()]


class Node:
    """One board: `node["probe_bias"].ramp(-80)`, `node.langmuir.density()`, `node.status()`, `node.safe()`."""

    def __init__(self, rig: Rig, name: str, endpoint: str, *, client: str = "", directory: Path | None = None):
        self.rig = rig
        self.name = name
        self.kind = rig.node(name).kind
        self.endpoint = endpoint
        self._directory = directory  # given: follow a restarted runtime (systemd, a kernel) to its new endpoint
        self._lock = threading.Lock()
        self._seen = None  # the runtime state file last looked at
        self._client = RuntimeClient(endpoint, node=name, client=client or f"kernel-{name}")
        self._aclient = None
        specs = rig.signals_of(name)
        self.signals = SignalMap({n: Signal(n, spec, lambda: self.client, self._async_client)
                                  for n, spec in specs.items()}, where=f"node {name!r}")
        self.devices = {}
        for dev_name, dev in rig.spec.devices.items():
            if all(s in specs for s in dev.signals.values()):
                self.devices[dev_name] = make_device(dev_name, dev.class_, dev.signals, dev.params,
                                                     self.read, self.write)

    @property
    def client(self) -> RuntimeClient:
        """The client of this node's runtime, wherever the runtime recorded in the state directory listens."""
        if self._directory is not None:
            # a (re)started runtime rewrites its state file (atomically: a new inode); a stat is cheap
            try:
                st = os.stat(self._directory / f"{node_state_name(self.name)}.json")
                seen = (st.st_ino, st.st_mtime_ns)
            except FileNotFoundError:
                seen = None
            if seen and seen != self._seen:
                record = runtime_record(self.name, self._directory)
                with self._lock:
                    self._seen = seen
                    if record and record["endpoint"] != self.endpoint:
                        old, self.endpoint = self._client, record["endpoint"]
                        self._client = RuntimeClient(self.endpoint, node=self.name, client=old.client)
                        old.close()
        return self._client

    def _async_client(self) -> AsyncRuntimeClient:
        endpoint = self.client.endpoint
        if self._aclient is not None and self._aclient.endpoint != endpoint:
            self._aclient.close()
            self._aclient = None
        if self._aclient is None:
            self._aclient = AsyncRuntimeClient(self.endpoint, node=self.name, client=self.client.client)
        return self._aclient

    def __getitem__(self, name: str) -> Signal:
        return self.signals[name]

    def __getattr__(self, name: str):
        devices = self.__dict__.get("devices", {})
        if name in devices:
            return devices[name]
        raise AttributeError(f"node {self.__dict__.get('name')!r} has no attribute or device {name!r}"
                             + (f"; devices: {', '.join(devices)}" if devices else ""))

    def __dir__(self):
        return list(super().__dir__()) + list(self.devices)

    def read(self, name: str) -> float:
        return self.client.read(name)

    def write(self, name: str, value: float) -> float:
        return self.client.write(name, value)

    def ramp(self, name: str, target: float, rate: float | None = None) -> dict:
        return self.signals[name].ramp(target, rate)

    def ramps(self) -> list[dict]:
        return self.client.ramps()

    def status(self) -> Table:
        status = self.client.status()
        return Table(status_rows(status), STATUS_COLUMNS, title=f"node {self.name} ({self.kind}, {status['url']})",
                     data=status)

    def safe(self) -> dict:
        """Drive this node's outputs to their safe values now; returns what happened per output."""
        return self.client.safe()

    def close(self):
        self.client.close()
        if self._aclient:
            self._aclient.close()

    def __repr__(self):
        return f"<Node {self.name} ({self.kind}) at {self.endpoint}: {len(self.signals)} signals>"

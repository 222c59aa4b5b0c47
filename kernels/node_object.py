"""`node`: one board, as its node kernel shows it. Signals by name, devices, status, safe."""
from __future__ import annotations

import time
from pathlib import Path

from labrig.drivers.errors import LabrigError
from labrig.supervisor.devices import make_device
from labrig.supervisor.rig import Rig
from labrig.supervisor.runtime import RuntimeClient
from labrig.supervisor.runtime.locate import RuntimeLink

from .fpga import Fpga
from .loops import LoopMap
from .signals import Signal, SignalMap, SignalsAndDevices, Table

STATUS_COLUMNS = ["signal", "value", "unit", "dir", "setpoint", "limits", "safe", "channel", "error"]


def status_rows(status: dict) -> list[dict]:
    return [{"signal": name, "value": s.get("value"), "unit": s["unit"], "dir": s["direction"],
             "setpoint": s.get("setpoint"), "limits": s.get("limits"), "safe": s.get("safe"),
             "channel": s.get("channel"), "error": s.get("error", "")}
            for name, s in status["signals"].items()]


class Node(SignalsAndDevices):
    """One board: `node["probe_bias"].ramp(-80)`, `node.langmuir.density()`, `node.status()`, `node.safe()`.

    It reaches the node's runtime wherever the state directory says it listens now, so a
    runtime restarted by systemd or by hand is followed without restarting the kernel.
    """

    def __init__(self, rig: Rig, name: str, directory: Path, *, client: str = ""):
        self.rig = rig
        self.name = name
        self.kind = rig.node(name).kind
        self.what = f"node {name!r}"
        self.link = RuntimeLink(name, directory, client=client or f"kernel-{name}")
        specs = rig.signals_of(name)
        self.signals = SignalMap({n: Signal(n, spec, lambda: self.link.client, self.link.aclient)
                                  for n, spec in specs.items()}, where=f"node {name!r}")
        self.loops = LoopMap([n for n, spec in rig.spec.loops.items() if spec.node == name], lambda: self.link.client,
                             node=name)  # node.loops["coil"].kp = 0.3: tuned live, run by the runtime
        self.fpga = Fpga(self)  # node.fpga.pid0.configure(...): a RedPitaya's FPGA modules, via the runtime
        self.devices = {}
        for dev_name, dev in rig.spec.devices.items():
            if all(s in specs for s in dev.signals.values()):
                self.devices[dev_name] = make_device(dev_name, dev.class_, dev.signals, dev.params,
                                                     self.read, self.write)

    @property
    def client(self) -> RuntimeClient:
        return self.link.client

    @property
    def endpoint(self) -> str:
        return self.link.endpoint

    def ramps(self) -> list[dict]:
        return self.client.ramps()

    def status(self) -> Table:
        status = self.client.status()
        return Table(status_rows(status), STATUS_COLUMNS, title=f"node {self.name} ({self.kind}, {status['url']})",
                     data=status)

    def audit(self, count: int = 20) -> Table:
        """The latest writes, ramps and safe states on this board: who, what, and whether it was done."""
        entries = self.client.audit(count)
        rows = [{**e, "time": time.strftime("%H:%M:%S", time.localtime(e["t"]))} for e in entries]
        return Table(rows, ["time", "op", "signal", "value", "outcome", "client", "user", "detail"],
                     title=f"audit of node {self.name}", data=entries)

    def trips(self) -> list[dict]:
        """This board's latched trips: which interlock, why, the values, what was driven safe."""
        return self.client.trips()

    def rearm(self, interlock: str) -> dict:
        """Re-arm a tripped interlock; refused while its condition still fails."""
        return self.client.rearm(interlock)

    def safe(self) -> dict:
        """Drive this node's outputs to their safe values now; returns what happened per output."""
        return self.client.safe()

    def close(self):
        self.link.close()

    def __repr__(self):
        try:
            where = f"at {self.endpoint}"
        except LabrigError:
            where = "(no runtime running)"
        return f"<Node {self.name} ({self.kind}) {where}: {len(self.signals)} signals>"

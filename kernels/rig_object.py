"""`rig`: the whole machine, as the supervisor kernel shows it.

    rig["langmuir_I"].read()        a signal by name, wherever it is wired today
    rig.langmuir.density()          physics from a device class
    rig.status()                    every node: runtime and kernel up or down, heartbeat age
    rig.safe()                      every node safe at once
    rig.trips(), rig.rearm(name)    latched trips, wherever they are; re-arm one
    rig.nodes["rp1"].execute(code)  run code on that board's kernel, get its result back
    rig.panel()                     knobs, live values, interlock lights, the emergency stop (ipywidgets)
"""
from __future__ import annotations

import ast
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import zmq

from labrig.drivers.errors import LabrigError, NodeUnavailable
from labrig.supervisor.devices import make_device
from labrig.supervisor.rig import Rig
from labrig.supervisor.heartbeats import HeartbeatMonitor, monitor_or_none
from labrig.supervisor.guard import guard_record
from labrig.supervisor.safety import all_trips, drive_safe
from labrig.supervisor.runtime import AsyncRuntimeClient, RuntimeClient
from labrig.supervisor.runtime.locate import RuntimeLink, runtime_record
from labrig.supervisor.state import read_state

from .signals import Signal, SignalMap, SignalsAndDevices, Table


class RemoteError(LabrigError):
    """Code run on a node kernel raised; the message carries its traceback."""


class NodeLink:
    """The supervisor's line to one node: its runtime (hardware requests) and its kernel (code)."""

    def __init__(self, rig: Rig, name: str, directory: Path, heartbeats: HeartbeatMonitor | None, *,
                 timeout: float = 2.0):
        self.rig = rig
        self.name = name
        self.kind = rig.node(name).kind
        self.directory = directory
        self.timeout = timeout
        self._heartbeats = heartbeats
        self.link = RuntimeLink(name, directory, client="supervisor", timeout=timeout,
                                last_heartbeat=lambda: heartbeats.last(name) if heartbeats else None)

    # -- the runtime -------------------------------------------------------
    @property
    def runtime(self) -> RuntimeClient:
        """A client of the node's runtime; follows a restarted runtime to its new endpoint."""
        return self.link.client

    def aruntime(self) -> AsyncRuntimeClient:
        return self.link.aclient()

    # -- the kernel ----------------------------------------------------------
    @property
    def connection_file(self) -> Path:
        return self.directory / "kernels" / f"{self.name}.json"

    def kernel_alive(self, timeout: float = 0.5) -> bool:
        """The node kernel's own heartbeat channel echoes (the process may be busy in a cell; this still answers)."""
        try:
            info = json.loads(self.connection_file.read_text())
        except (OSError, ValueError):
            return False
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(f"{info['transport']}://{info['ip']}:{info['hb_port']}")
            sock.send(b"ping")
            return bool(sock.poll(int(timeout * 1000)))
        finally:
            sock.close(0)

    def execute(self, code: str, *, timeout: float = 30.0) -> Any:
        """Run code on this node's kernel; returns the value of its last expression (None if none).

        Output the code prints appears here too. An exception on the node raises RemoteError.
        """
        from jupyter_client import BlockingKernelClient
        if not self.connection_file.exists():
            raise NodeUnavailable(f"node {self.name!r} has no kernel running (no {self.connection_file})")
        kc = BlockingKernelClient(connection_file=str(self.connection_file))
        kc.load_connection_file()
        kc.start_channels()
        try:
            msg_id = kc.execute(code, store_history=False)
            result, error = None, None
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise NodeUnavailable(f"node {self.name!r}: the kernel did not finish within {timeout:g} s")
                try:
                    msg = kc.get_iopub_msg(timeout=left)
                except Exception:  # queue.Empty
                    continue
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                kind, content = msg["msg_type"], msg["content"]
                if kind == "stream":
                    print(content["text"], end="")
                elif kind == "execute_result":
                    result = _value(content["data"])
                elif kind == "error":
                    error = content
                elif kind == "status" and content["execution_state"] == "idle":
                    break
            if error:
                raise RemoteError(f"on node {self.name}: {error['ename']}: {error['evalue']}\n"
                                  + "\n".join(error.get("traceback", [])))
            return result
        finally:
            kc.stop_channels()

    # -- health ----------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """Runtime up or down from its application heartbeats (when the cluster has a broker), else a ping."""
        record = runtime_record(self.name, self.directory)
        beats = self._heartbeats
        seen = beats.last(self.name) if beats else None
        age = round(time.time() - seen, 2) if seen else None
        if beats is not None:
            timeout = self.rig.spec.watchdogs.heartbeat_timeout
            online = age is not None and age <= timeout and beats.status.get(self.name) != "offline"
            trips = beats.trips(self.name)
        else:
            online, trips = False, []
            if record:
                try:
                    self.runtime.call("ping", timeout=0.5)
                    online = True
                    trips = [t["interlock"] for t in self.runtime.call("trips", timeout=0.5)]
                except LabrigError:
                    pass
        return {"node": self.name, "kind": self.kind, "runtime": "online" if online else "offline",
                "kernel": "online" if self.kernel_alive() else "offline", "heartbeat_age": age,
                "trips": ", ".join(trips),
                "pid": record["pid"] if record else None, "endpoint": record["endpoint"] if record else None}

    def status(self) -> dict:
        return self.runtime.status()

    def safe(self) -> dict:
        return self.runtime.safe()

    def close(self):
        self.link.close()

    def __repr__(self):
        return f"<NodeLink {self.name} ({self.kind})>"


def _value(data: dict) -> Any:
    from .base import VALUE_MIME
    if VALUE_MIME in data:
        return data[VALUE_MIME]
    text = data.get("text/plain", "")
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def rig_broker(rig: Rig, directory: Path) -> dict | None:
    """The rig's MQTT broker ({"url", ...}): its own, the cluster's, or None when there is none."""
    from labrig.supervisor.broker import broker_alive
    if rig.spec.broker.url:
        return rig.spec.broker.model_dump()
    own = read_state("broker", directory)
    return own if own and broker_alive(own) else (read_state("cluster", directory) or {}).get("broker")


def heartbeat_monitor(rig: Rig, directory: Path) -> HeartbeatMonitor | None:
    """The rig's heartbeats, from its own broker, the cluster's, or None when there is no broker."""
    broker = rig_broker(rig, directory)
    monitor = monitor_or_none(rig.name, broker, client=f"labrig-supervisor-{rig.name}")
    if monitor is not None:
        monitor.wait_for(rig.nodes, 1.5)  # retained: a first status is right at once
    return monitor


class Machine(SignalsAndDevices):
    """The whole machine (`rig` in the supervisor kernel)."""

    def __init__(self, rig: Rig, directory: Path, *, timeout: float = 2.0):
        self._guard: RuntimeClient | None = None  # first: close() must work whatever fails below
        self.spec = rig
        self.name = rig.name
        self.what = f"rig {rig.name!r}"
        self.directory = Path(directory)
        self.heartbeats = heartbeat_monitor(rig, self.directory)
        self.nodes = {name: NodeLink(rig, name, self.directory, self.heartbeats, timeout=timeout)
                      for name in rig.nodes}
        self.signals = SignalMap({n: Signal(n, spec, self._client_for(spec.node), self._aclient_for(spec.node))
                                  for n, spec in rig.signals.items()}, where=f"rig {rig.name!r}")
        self.devices = {name: make_device(name, d.class_, d.signals, d.params, self.read, self.write)
                        for name, d in rig.spec.devices.items()}

    def _client_for(self, node):
        return lambda: self.nodes[node].runtime

    def _aclient_for(self, node):
        return lambda: self.nodes[node].aruntime()

    def status(self) -> Table:
        """Every node: runtime and kernel online or offline, heartbeat age, trips."""
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            rows = list(pool.map(lambda link: link.health(), self.nodes.values()))
        return Table(rows, ["node", "kind", "runtime", "kernel", "heartbeat_age", "trips", "endpoint"],
                     title=f"rig {self.name}", data={r["node"]: r for r in rows})

    def rearm(self, interlock: str) -> dict:
        """Re-arm a tripped interlock where it is latched (the guard for a cross-node one, else its node);
        refused while its condition fails."""
        return self._enforcer(interlock).rearm(interlock)

    def override(self, interlock: str, seconds: float, reason: str) -> dict:
        """Bypass an interlock for `seconds` (at most 600; 0 ends it) with a reason: journaled, published,
        and it ends by itself."""
        return self._enforcer(interlock).call("override", interlock=interlock, seconds=seconds, reason=reason)

    def _enforcer(self, interlock: str) -> RuntimeClient:
        """Who enforces an interlock: the guard for one that spans nodes, else the node of its outputs."""
        if interlock not in self.spec.interlocks:
            raise KeyError(f"rig {self.name!r} has no interlock {interlock!r}; "
                           f"known: {', '.join(self.spec.interlocks)}")
        if interlock in self.spec.guarded_interlocks():
            return self.guard()
        return self.nodes[self.spec.node_of(self.spec.interlocks[interlock].outputs[0])].runtime

    def guard(self) -> RuntimeClient:
        """A client of the rig's guard (leases, cross-node interlocks): .status(), .trips(), .rearm(name)."""
        record = guard_record(self.directory)
        if record is None:
            raise NodeUnavailable(f"the guard of rig {self.name!r} is not running (state in {self.directory}); "
                                  "it starts with `labrig up`, or alone with `labrig guard RIG`")
        if self._guard is None or self._guard.endpoint != record["endpoint"]:
            if self._guard is not None:
                self._guard.close()
            self._guard = RuntimeClient(record["endpoint"], node="guard", client="supervisor-kernel", timeout=2.0)
        return self._guard

    def trips(self) -> Table:
        """Every latched trip: the guard's (cross-node) and each node's own."""
        rows = []
        for where, entries in all_trips(self.directory).items():
            if isinstance(entries, str):
                rows.append({"where": where, "interlock": "-", "layer": "-", "time": "-", "reason": entries})
                continue
            for t in entries:
                rows.append({"where": where, "interlock": t["interlock"], "layer": t.get("layer", "node"),
                             "time": time.strftime("%H:%M:%S", time.localtime(t["time"])), "reason": t["reason"]})
        return Table(rows, ["where", "interlock", "layer", "time", "reason"], title=f"trips of rig {self.name}",
                     data=rows)

    def safe(self) -> dict[str, Any]:
        """Drive every node safe at once. Never raises: an unreachable node is reported, not skipped silently."""
        return drive_safe({name: link.link for name, link in self.nodes.items()})

    def run(self, sequence, *, store=None, progress: bool = True, **params):
        """Run a sequence (or a compiled plan) as one shot; returns its RunResult (.status, .reason, .number,
        .shot()). Progress: in a kernel, a progress bar and a live plot of the acquired signals, then the
        shot's overview (kernels/widgets/runview.py); outside one, or with progress="text", a text bar.
        See labrig.supervisor.runner."""
        from .widgets.runview import run_with_progress
        return run_with_progress(self, sequence, store=store, progress=progress, **params)

    def scan(self, sequence, *, grid: dict | None = None, points: list | None = None, **options):
        """One shot per point of `grid` ({name: [values]}, every combination) or `points` ([{...}])."""
        from labrig.supervisor.runner.session import scan
        return scan(self.spec, self.directory, sequence, grid=grid, points=points, **options)

    def optimise(self, sequence, *, space: dict, objective, budget: int, fixed: dict | None = None, goal: str = "max",
                 target: float | None = None, seed: int | None = None, since_shot: int | None = None, store=None,
                 progress: bool = True):
        """Closed loop: propose each next shot from every comparable shot in the catalog, run it, until
        `budget` shots ran (or `target` is reached). Returns an OptimisationResult (.best, .best_value,
        .history, .shots). See labrig.sequences.optimise.Optimiser.

            rig.optimise(discharge, space={"power": (300, 1200), "b_field": (0.02, 0.12)},
                         objective="interferometer_phase.max", fixed={"flat_top": 0.5}, budget=20)
        """
        from labrig.sequences.optimise import Optimiser
        from labrig.supervisor.store import ShotStore

        store = store if store is not None else ShotStore()
        optimiser = Optimiser(sequence, self.spec, store, space=space, objective=objective, fixed=fixed, goal=goal,
                              seed=seed, since_shot=since_shot)

        def report(params, result):
            if progress:
                shown = ", ".join(f"{k}={params[k]:.4g}" for k in optimiser.space)
                print(f"  {shown}: shot {result.number} {result.status}" +
                      (f" ({result.reason})" if result.reason else ""), flush=True)

        return optimiser.run(lambda params: self.run(sequence, store=store, progress=False, **params),
                             budget=budget, target=target, on_shot=report)

    def panel(self, **options):
        """The control panel (ipywidgets): a knob per output, live values from MQTT telemetry, interlock and
        watchdog lights with re-arm, the emergency stop, the run panel (sequences=[...]: its choice) and the run
        monitor. See labrig.kernels.widgets.panel.Panel for options."""
        from .widgets.panel import Panel
        return Panel(self, **options)

    def close(self):
        for link in self.nodes.values():
            link.close()
        if self._guard is not None:
            self._guard.close()
        if self.heartbeats:
            self.heartbeats.close()

    def __repr__(self):
        return (f"<rig {self.name}: {len(self.nodes)} nodes ({', '.join(self.nodes)}), {len(self.signals)} signals, "
                f"devices {', '.join(self.devices)}>")


def connect(rig_path: str | Path, directory: Path) -> Machine:
    return Machine(Rig.load(rig_path), directory)

"""The control panel of a whole rig: `p = rig.panel()` in the supervisor kernel.

    p                       shows it (in JupyterLab, a notebook, Voila)
    p.knobs["rf_power"]     one output's knob (p.knobs[...].control is its slider or toggle)
    p.readouts["pressure"]  one input's live value (and sparkline)
    p.interlocks            interlock lights with re-arm buttons; p.watchdogs: one light per node
    p.estop                 the emergency stop
    p.run_panel             run a sequence: its form, dry run, run, pause, abort, progress (runpanel.py)
    p.monitor               the running sequence and the last shot, whoever runs them (runmonitor.py)
    p.close()               unsubscribe, stop the ticker, abort the panel's run, close the widgets

Everything it shows comes from the rig file (which outputs, their units, limits,
slew, which are armed) and from what the nodes publish over MQTT (telemetry, trips,
heartbeats); it asks the runtimes only when built, when a button is pressed, and
when there is no broker ("refresh"), never to poll.
"""
from __future__ import annotations

import html
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

import ipywidgets as w

from labrig.drivers.errors import ConfigError
from labrig.supervisor.safety import all_trips

from ..rig_object import rig_broker
from .estop import EmergencyStop
from .knobs import ARM_TIMEOUT, Knob
from .lights import InterlockLights, WatchdogLights
from .readouts import Readout
from .runmonitor import RunMonitor
from .runpanel import RunPanel
from .telemetry import CONNECT_TIMEOUT, HISTORY, PERIOD, TelemetryFeed


class Panel:
    def __init__(self, machine, *, plots: Iterable[str] | None = None, arm_timeout: float = ARM_TIMEOUT,
                 history: float = HISTORY, period: float = PERIOD, connect_timeout: float = CONNECT_TIMEOUT,
                 sequences: Iterable | None = None, store=None):
        """`plots`: the inputs that get a sparkline (default: those the rig file gives a telemetry rate).
        `sequences`: those the run panel offers (default: the library's discharge, step_scan, conditioning);
        `store`: the ShotStore its shots go to (default: the kernel's)."""
        self.machine = machine
        rig = machine.spec
        signals = rig.signals
        outputs = [n for n, s in signals.items() if s.direction == "out"]
        inputs = [n for n, s in signals.items() if s.direction != "out"]
        plots = [n for n in inputs if signals[n].rate] if plots is None else list(plots)
        for name in plots:
            if machine[name].is_output:  # (an unknown name raises KeyError with close matches)
                raise ConfigError(f"plots: {name} is an output; its knob shows its readback")
        self._lock = threading.RLock()
        self._seen_trips: set[tuple] = set()
        self.feed = TelemetryFeed(rig.name, rig_broker(rig, machine.directory), track=plots, period=period,
                                  history=history)
        snapshot = self._snapshot()
        self.knobs = {n: Knob(machine[n], setpoint=_setpoint(snapshot, signals[n].node, n), arm_timeout=arm_timeout)
                      for n in outputs}
        self.readouts = {n: Readout(n, signals[n], sparkline=n in plots, window=history) for n in inputs}
        self.interlocks = InterlockLights(rig.spec.interlocks, self._rearm, after=self._after_action)
        self.watchdogs = WatchdogLights([*rig.nodes, "guard"], rig.spec.watchdogs.heartbeat_timeout)
        self.estop = EmergencyStop(machine.safe, after=self._after_estop)
        self.telemetry = w.HTML("")
        self.refresh_button = w.Button(description="look now", icon="eye",
                                       tooltip="ask every runtime once for its values and trips "
                                               "(what telemetry does continuously when it is on)")
        self.refresh_button.on_click(lambda _: self.refresh())
        self._show_snapshot(snapshot)
        self.run_panel = RunPanel(machine, sequences=sequences, store=store)
        self.monitor = RunMonitor(feed=self.feed)  # listens before the feed starts: the retained state comes first

        self.feed.on_trips(self._on_trips)
        self.feed.on_values(self._on_values)
        self.feed.on_tick(self._on_tick)
        self.feed.start(connect_timeout)
        if not self.feed.live:
            self.refresh(snapshot)  # no retained trips will come: ask once
        self._on_tick()

        title = w.HTML(f"<h3 style='margin:0'>{rig.name}</h3>")
        self.widget = w.VBox([
            w.HBox([title, self.telemetry, self.refresh_button]),
            w.HBox([self.estop.widget, self.watchdogs.widget]),
            w.HTML("<b>Outputs</b>"), w.VBox([k.widget for k in self.knobs.values()]),
            w.HTML("<b>Inputs</b>"), w.VBox([r.widget for r in self.readouts.values()]),
            self.interlocks.widget,
            w.HTML("<b>Run a sequence</b>"), self.run_panel.widget,
            self.monitor.widget,
        ])

    # -- asking the runtimes (at build, on a button, without a broker) ------------
    def _snapshot(self) -> dict[str, dict | str]:
        """{node: its runtime's status, or why it could not be asked}; all nodes at once, each bounded."""
        def one(item):
            name, link = item
            try:
                return name, link.status()
            except Exception as exc:
                return name, f"{type(exc).__name__}: {exc}"
        nodes = self.machine.nodes
        with ThreadPoolExecutor(max(1, len(nodes)), thread_name_prefix="panel") as pool:
            return dict(pool.map(one, nodes.items()))

    def _show_snapshot(self, snapshot: dict) -> None:
        for node, status in snapshot.items():
            if isinstance(status, str):
                for knob in self.knobs.values():
                    if knob.spec.node == node:
                        knob.say(f"node {node} unreachable: {html.escape(status)}", bad=True)
                if not self.feed.live:
                    self.watchdogs.show(node, "offline", status)
                continue
            if not self.feed.live:
                self.watchdogs.show(node, "online", "its runtime answered just now (no telemetry: not watched)")
            for name, entry in status.get("signals", {}).items():
                value = entry.get("value")
                if name in self.knobs:
                    self.knobs[name].show_reading(value)
                elif name in self.readouts:
                    self.readouts[name].show(value)

    def refresh(self, snapshot: dict | None = None) -> None:
        """Ask every runtime (and the guard) once: values, setpoints, trips."""
        snapshot = snapshot if snapshot is not None else self._snapshot()
        self._show_snapshot(snapshot)
        for node, status in snapshot.items():
            if isinstance(status, dict):
                for name, entry in status.get("signals", {}).items():
                    if name in self.knobs and not self.knobs[name].armed:
                        self.knobs[name].show_setpoint(entry.get("setpoint"))
        found = all_trips(self.machine.directory)
        self._on_trips({where: trips for where, trips in found.items() if isinstance(trips, list)})

    # -- what the feed pushes --------------------------------------------------------
    def _on_trips(self, trips_by_where: dict[str, list]) -> None:
        with self._lock:
            holders: dict[str, dict[str, str]] = {}
            for where, trips in trips_by_where.items():
                for trip in trips:
                    for output in trip.get("outputs", ()):
                        holders.setdefault(output, {})[trip["interlock"]] = trip.get("reason", "")
                    key = (where, trip.get("interlock"), trip.get("time"))
                    if key not in self._seen_trips:  # a new trip drove its outputs safe: the knobs show it
                        self._seen_trips.add(key)
                        for output, result in (trip.get("safe") or {}).items():
                            if output in self.knobs and isinstance(result, dict) and result.get("ok"):
                                self.knobs[output].show_setpoint(result.get("value"))  # hold() says why
            for name, knob in self.knobs.items():
                knob.hold(holders.get(name, {}))
            self.interlocks.show(trips_by_where)

    def _on_values(self, changed: dict[str, tuple[float, float | None]]) -> None:
        for name, (_, value) in changed.items():
            if name in self.knobs:
                self.knobs[name].show_reading(value)
            elif name in self.readouts:
                readout = self.readouts[name]
                readout.show(value, self.feed.history(name) if readout.spark is not None else ())

    def _on_tick(self) -> None:
        for knob in self.knobs.values():
            knob.tick()
        self.telemetry.value = self.feed.state if self.feed.live else \
            f"<span style='color:#c00'>{self.feed.state}</span>"
        if self.feed.live:
            self.watchdogs.from_heartbeats(self.feed.beats, self.feed.status)

    # -- buttons ---------------------------------------------------------------------
    def _rearm(self, interlock: str, where: str) -> dict:
        if interlock in self.machine.spec.interlocks:
            return self.machine.rearm(interlock)
        if where in self.machine.nodes:  # a trip of the runtime's own (a lost lease, an unreachable output)
            return self.machine.nodes[where].runtime.rearm(interlock)
        raise ConfigError(f"{interlock} is latched on {where or 'no known node'}: re-arm it there")

    def _after_action(self) -> None:
        if not self.feed.live:  # no retained trips will tell us: look
            self.refresh()

    def _after_estop(self, results: dict) -> None:
        for node, outputs in results.items():
            for name, result in outputs.items():
                if name in self.knobs and isinstance(result, dict) and result.get("ok"):
                    self.knobs[name].show_setpoint(result.get("value"), why="the emergency stop")
        self._after_action()

    # -- display and end -------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs):
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = repr(self)
        return bundle

    def close(self) -> None:
        """Unsubscribe, stop the ticker, abort the panel's run (if one is under way), and close every widget
        (their comms) of the panel."""
        self.feed.close()
        self.monitor.close()
        self.run_panel.close()
        _close_tree(self.widget)

    def __repr__(self):
        held = [n for n, k in self.knobs.items() if k.held]
        return (f"<panel of rig {self.machine.name}: {len(self.knobs)} knobs, {len(self.readouts)} readouts; "
                f"{self.feed.state}" + (f"; held: {', '.join(held)}" if held else "") + ">")


def _setpoint(snapshot: dict, node: str, name: str) -> float | None:
    status = snapshot.get(node)
    if not isinstance(status, dict):
        return None
    entry = status.get("signals", {}).get(name, {})
    return entry.get("setpoint") if entry.get("setpoint") is not None else entry.get("value")


def _close_tree(widget) -> None:
    for child in getattr(widget, "children", ()):
        _close_tree(child)
    widget.close()

"""What the dashboard shows: a machine-state banner over the rig's panel (`rig.panel()`).

    Dashboard(rig)      in the dashboard notebook (a supervisor kernel): displays itself

The banner sums up what the panel shows piece by piece (watchdog lights, interlock
lights), so a person across the room sees at once whether the machine is whole and
untripped; it is refreshed on the panel's own ticker, from the panel's own state.
Every part a person (or a browser test) looks for gets a stable CSS class,
`labrig-...`, added here by walking the panel's widgets; the widgets stay as they are.
"""
from __future__ import annotations

import html
import threading

import ipywidgets as w

from labrig.kernels.widgets.lights import GREEN, GREY, RED

BANNER_STYLE = ("padding:6px 12px;border-radius:4px;color:white;font-size:1.2em;font-weight:bold;"
                "background:{color}")


class Dashboard:
    """`panel`: a built Panel (default: `machine.panel(**options)`)."""

    def __init__(self, machine, *, panel=None, **options):
        self.machine = machine
        self.panel = panel if panel is not None else machine.panel(**options)
        # the banner: the rig's name and its state in one line; the panel below has the detail
        self.state = w.HTML("", tooltip=machine.spec.spec.description or None)
        self.state.add_class("labrig-machine-state")
        self.widget = w.VBox([self.state, self.panel.widget])
        self.widget.add_class("labrig-dashboard")
        self._lock = threading.Lock()
        self._tagged: set[int] = set()
        self.tag()
        self.update()
        self.panel.feed.on_tick(self.update)  # after the panel's own tick: its lights are fresh

    # -- the banner -------------------------------------------------------------
    def summary(self) -> tuple[str, str]:
        """(color, text) of the machine state: nodes online, latched trips, live or not."""
        states = dict(self.panel.watchdogs.states)
        nodes = [n for n in states if n != "guard"]
        online = [n for n in nodes if states[n] == "online"]
        down = [f"{n} {states[n]}" for n in states if states[n] != "online"]
        tripped = sorted(self.panel.interlocks.tripped)
        parts = [self.machine.name, f"{len(online)} of {len(nodes)} nodes online",
                 "guard online" if states.get("guard") == "online" else f"guard {states.get('guard', 'unknown')}"]
        parts.append(f"TRIPPED: {', '.join(tripped)}" if tripped else "no latched trips")
        if not self.panel.feed.live:
            return GREY, " &middot; ".join(html.escape(p) for p in parts) + " &middot; not live"
        color = RED if tripped or down else GREEN
        return color, " &middot; ".join(html.escape(p) for p in parts)

    def update(self) -> None:
        color, text = self.summary()
        value = (f"<div style='{BANNER_STYLE.format(color=color)}' data-state="
                 f"'{'ok' if color == GREEN else 'alarm' if color == RED else 'unknown'}'>{text}</div>")
        with self._lock:
            if self.state.value != value:  # only changes reach the browser
                self.state.value = value
            self.tag()  # a trip of another kind (a lost lease) adds a row to the interlock lights

    # -- stable hooks -----------------------------------------------------------
    def tag(self) -> None:
        """Add labrig-... CSS classes to the panel's parts (once per widget)."""
        p = self.panel
        self._add(p.widget, "labrig-panel")
        for name, knob in p.knobs.items():
            self._add(knob.widget, "labrig-knob", f"labrig-knob-{name}")
            self._add(knob.control, "labrig-control")
            if knob.arm is not None:
                self._add(knob.arm, "labrig-arm")
            self._add(knob.setpoint_label, "labrig-setpoint")
            self._add(knob.readback_label, "labrig-readback")
            self._add(knob.message, "labrig-message")
        for name, readout in p.readouts.items():
            self._add(readout.widget, "labrig-readout", f"labrig-readout-{name}")
            self._add(readout.value, "labrig-value")
        for name, row in list(p.interlocks.rows.items()):
            self._add(row.widget, "labrig-interlock", f"labrig-interlock-{name}")
            self._add(row.light, "labrig-light")
            self._add(row.button, "labrig-rearm")
            self._add(row.reason, "labrig-reason")
        self._add(p.interlocks.message, "labrig-rearm-message")
        for name, lamp in p.watchdogs.lights.items():
            self._add(lamp, "labrig-watchdog", f"labrig-watchdog-{name}")
        self._add(p.estop.button, "labrig-estop")
        self._add(p.estop.output, "labrig-estop-result")
        self._add(p.telemetry, "labrig-telemetry")

    def _add(self, widget, *classes: str) -> None:
        if id(widget) in self._tagged:
            return
        for name in classes:
            widget.add_class(name)
        self._tagged.add(id(widget))

    # -- display and end ------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs):
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = repr(self)
        return bundle

    def close(self) -> None:
        self.panel.close()
        self.state.close()
        self.widget.close()

    def __repr__(self):
        return f"<dashboard of rig {self.machine.name}: {self.summary()[1]}>"

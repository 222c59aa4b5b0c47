"""Interlock lights (with their reasons and a re-arm button) and watchdog lights (one per node).

Both show what the nodes and the guard publish, retained, over MQTT: their latched
trips and their heartbeats. A re-arm asks where the trip is latched and shows the
answer, a refusal included ("it still requires cooling_flow > 2; now ...").
"""
from __future__ import annotations

import html
import time
from typing import Callable, Mapping

import ipywidgets as w

GREEN, RED, GREY, AMBER = "#2a2", "#c00", "#999", "#e90"


def light(color: str, text: str, tip: str = "") -> str:
    title = f" title='{html.escape(tip, quote=True)}'" if tip else ""
    return (f"<span{title}><span style='color:{color};font-size:1.3em'>&#9679;</span> "
            f"{html.escape(text)}</span>")


class _InterlockRow:
    def __init__(self, name: str, what: str, on_rearm: Callable[[str], None]):
        self.name, self.what = name, what
        self.light = w.HTML(light(GREY, name, what), layout=w.Layout(width="320px"))
        self.reason = w.HTML("", layout=w.Layout(width="auto"))
        self.button = w.Button(description="re-arm", disabled=True, icon="refresh",
                               tooltip=f"re-arm {name} (refused while its condition fails)",
                               layout=w.Layout(width="110px"))
        self.button.on_click(lambda _: on_rearm(name))
        self.widget = w.HBox([self.light, self.button, self.reason])
        self.trip: dict | None = None

    def show(self, trip: dict | None) -> None:
        self.trip = trip
        if trip is None:
            self.light.value = light(GREEN, self.name, self.what)
            self.reason.value = ""
            self.button.disabled = True
            return
        when = time.strftime("%H:%M:%S", time.localtime(trip.get("time", 0)))
        where = trip.get("where", "?")
        reason = trip.get("reason", "")
        self.light.value = light(RED, self.name, reason)
        values = html.escape(f"values then: {trip.get('values', '')}", quote=True)
        self.reason.value = (f"<span style='color:{RED}' title='{values}'>"
                             f"tripped {when} on {html.escape(where)} ({html.escape(trip.get('layer', ''))}): "
                             f"{html.escape(reason)}</span>")
        self.button.disabled = False


class InterlockLights:
    """One light per interlock of the rig (and per trip of another kind: a lost lease, an unreachable output).

    `rearm(name, where) -> dict` re-arms (raises when refused); `after()` runs after each attempt."""

    def __init__(self, interlocks: Mapping, rearm: Callable[[str, str], dict], *,
                 after: Callable[[], None] | None = None):
        self._rearm = rearm
        self._after = after
        self.rows: dict[str, _InterlockRow] = {}
        self.tripped: dict[str, dict] = {}
        for name, spec in interlocks.items():
            self.rows[name] = _InterlockRow(name, spec.description or f"requires {spec.require}", self.rearm)
        self.box = w.VBox([r.widget for r in self.rows.values()])
        self.message = w.HTML("")
        self.widget = w.VBox([w.HTML("<b>Interlocks</b>"), self.box, self.message])
        self.show({})

    def show(self, trips_by_where: Mapping[str, list]) -> None:
        """Every latched trip, by where it is latched ("guard" or a node); the guard's copy wins."""
        tripped: dict[str, dict] = {}
        for where, trips in trips_by_where.items():
            if not isinstance(trips, list):
                continue
            for trip in trips:
                name = trip.get("interlock")
                if name and (name not in tripped or where == "guard"):
                    tripped[name] = {**trip, "where": where}
        added = [n for n in tripped if n not in self.rows]
        for name in added:
            trip = tripped[name]
            self.rows[name] = _InterlockRow(name, f"{trip.get('layer', '')} trip on {trip['where']}", self.rearm)
        if added:
            self.box.children = tuple(r.widget for r in self.rows.values())
        for name, row in self.rows.items():
            row.show(tripped.get(name))
        self.tripped = tripped

    def rearm(self, name: str) -> None:
        """What the row's button does: re-arm where it is latched; say what came of it."""
        where = (self.tripped.get(name) or {}).get("where", "")
        try:
            result = self._rearm(name, where)
        except Exception as exc:  # refused (the condition still fails) or unreachable: the message is the point
            self.message.value = (f"<span style='color:{RED}'>re-arm of {html.escape(name)} refused: "
                                  f"{html.escape(f'{type(exc).__name__}: {exc}')}</span>")
        else:
            done = result.get("rearmed") if isinstance(result, dict) else bool(result)
            detail = result.get("detail", "") if isinstance(result, dict) else ""
            self.message.value = (f"<span style='color:{GREEN}'>{html.escape(name)} re-armed</span>" if done else
                                  f"{html.escape(name)}: {html.escape(detail or 'not re-armed')}")
        if self._after is not None:
            self._after()


class WatchdogLights:
    """One light per node (and the guard): online, late, offline, from their heartbeats."""

    def __init__(self, names, timeout: float, *, clock: Callable[[], float] = time.time):
        self.timeout, self._clock = timeout, clock
        self.lights = {name: w.HTML(light(GREY, name, "no heartbeat yet"), layout=w.Layout(width="auto"))
                       for name in names}
        self.states: dict[str, str] = {name: "unknown" for name in names}
        self.widget = w.VBox([w.HTML("<b>Watchdogs</b>"), w.HBox(list(self.lights.values()))])

    def show(self, name: str, state: str, tip: str) -> None:
        """state: "online", "late", "offline" or "unknown"."""
        if name not in self.lights:
            return
        self.states[name] = state
        color = {"online": GREEN, "late": RED, "offline": RED}.get(state, GREY)
        self.lights[name].value = light(color, name if state == "online" else f"{name}: {state}", tip)

    def from_heartbeats(self, beats: Mapping[str, dict], status: Mapping[str, str]) -> None:
        now = self._clock()
        for name in self.lights:
            beat = beats.get(name) or {}
            t = beat.get("t", beat.get("time"))
            age = now - t if isinstance(t, (int, float)) else None
            if status.get(name) == "offline":
                self.show(name, "offline", "stopped, or gone: the broker published its last will")
            elif age is None:
                self.show(name, "unknown", "no heartbeat yet")
            elif age > self.timeout:
                self.show(name, "late", f"no heartbeat for {age:.0f} s (timeout {self.timeout:g} s)")
            else:
                self.show(name, "online", f"heartbeat within {self.timeout:g} s; pid {beat.get('pid', '?')}")

    def unknown(self, why: str) -> None:
        for name in self.lights:
            self.show(name, "unknown", why)

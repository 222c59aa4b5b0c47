"""`node.loops["rf_leveling"]`: a control loop of the board, run by its runtime, tuned from a notebook.

    loop = node.loops["rf_leveling"]
    loop.setpoint = 300          # each assignment is one request to the runtime, checked there
    loop.kp, loop.ki = 0.3, 2.5
    loop.auto()                  # bumpless: starts from the output as it is
    loop.manual(output=0)        # the operator's output again
    loop                         # its state: mode, setpoint, measurement, output, gains, timing

Reading a property asks the runtime (the loop may have left auto on a trip since).
"""
from __future__ import annotations

import difflib
import time
from typing import Any, Callable, Mapping

from labrig.supervisor.runtime import RuntimeClient

from .signals import status_table_html, status_table_text

SETTINGS = ("kp", "ki", "kd", "setpoint", "mode", "output")


def _setting(key: str) -> property:
    return property(lambda self: self.state()[key], lambda self, value: self.set(**{key: value}),
                    doc=f"the loop's {key}, as its runtime has it now")


class Loop:
    kp, ki, kd, setpoint, mode, output = (_setting(k) for k in SETTINGS)

    def __init__(self, name: str, client: Callable[[], RuntimeClient]):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "_client", client)

    def __setattr__(self, key, value):
        # `loop.Kp = 1` would otherwise set an attribute nobody reads, silently
        if key not in SETTINGS:
            close = difflib.get_close_matches(key.lower(), SETTINGS, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise AttributeError(f"loop {self.name} has no setting {key!r}{hint} (settings: {', '.join(SETTINGS)})")
        object.__setattr__(self, key, value)

    def state(self) -> dict[str, Any]:
        return self._client().call("loops")[self.name]

    def set(self, **changes) -> dict[str, Any]:
        """Several settings in one request, applied together: `loop.set(kp=0.3, ki=2, setpoint=100)`."""
        return self._client().call("loop", name=self.name, set=changes)

    def auto(self) -> dict[str, Any]:
        return self.set(mode="auto")

    def manual(self, output: float | None = None) -> dict[str, Any]:
        """Stop regulating; with `output`, also set the actuator there (the loop stays its owner)."""
        return self.set(mode="manual", **({} if output is None else {"output": output}))

    def rearm(self) -> dict:
        """Re-arm the loop's own trip (its input failed); refused while the input is still unusable."""
        return self._client().rearm(f"loop:{self.name}")

    def _repr_html_(self):
        try:
            return state_table(self.state()).join_html()
        except Exception as exc:  # a repr must not raise; it says why there is no state
            return f"<b>loop {self.name}</b>: no state ({type(exc).__name__}: {exc})"

    def __repr__(self):
        try:
            return one_line(self.state())
        except Exception as exc:  # a repr must not raise
            return f"<Loop {self.name}: no state ({type(exc).__name__}: {exc})>"


def one_line(s: dict) -> str:
    timing = s["timing"].get("lateness_us") or {}
    late = f"; late p99 {timing['p99']:.0f} us" if timing else ""
    value = "?" if s["measurement"] is None else f"{s['measurement']:.4g}"
    return (f"<Loop {s['name']} ({s['node']}): {s['mode']}, {s['measure']} {value} -> {s['setpoint']:g} {s['unit']}, "
            f"{s['actuate']} {s['output']:.4g} {s['output_unit']}; kp {s['kp']:g} ki {s['ki']:g} kd {s['kd']:g}"
            f"{late}{'; ' + s['error'] if s['error'] else ''}>")


COLUMNS = ["loop", "mode", "measure", "value", "setpoint", "actuate", "output", "kp", "ki", "kd", "rate",
           "late p99 us", "overruns", "error"]


def _row(s: dict) -> dict:
    late = (s["timing"].get("lateness_us") or {}).get("p99")
    return {"loop": s["name"], "mode": s["mode"], "measure": s["measure"], "value": s["measurement"],
            "setpoint": s["setpoint"], "actuate": s["actuate"], "output": s["output"], "kp": s["kp"], "ki": s["ki"],
            "kd": s["kd"], "rate": s["rate"], "late p99 us": late, "overruns": s["timing"]["overruns"],
            "error": s["error"]}


class _Table:
    def __init__(self, rows: list[dict], title: str):
        self.rows, self.title = rows, title

    def join_html(self) -> str:
        return f"<b>{self.title}</b>" + status_table_html(self.rows, COLUMNS)

    _repr_html_ = join_html

    def __repr__(self):
        return self.title + "\n" + status_table_text(self.rows, COLUMNS)


def state_table(s: dict) -> _Table:
    return _Table([_row(s)], f"loop {s['name']} on {s['node']} at {time.strftime('%H:%M:%S')}")


class LoopMap(Mapping[str, Loop]):
    """The node's loops by name; an unknown name gets the closest names."""

    def __init__(self, names, client: Callable[[], RuntimeClient], *, node: str):
        self._client = client
        self._node = node
        self._loops = {name: Loop(name, client) for name in names}

    def __getitem__(self, name: str) -> Loop:
        try:
            return self._loops[name]
        except KeyError:
            close = difflib.get_close_matches(str(name), list(self._loops), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; loops: {', '.join(self._loops) or 'none'}"
            raise KeyError(f"node {self._node!r} has no loop {name!r}{hint}") from None

    def __iter__(self):
        return iter(self._loops)

    def __len__(self):
        return len(self._loops)

    def states(self) -> dict[str, dict]:
        return self._client().call("loops") if self._loops else {}

    def table(self) -> _Table:
        return _Table([_row(s) for s in self.states().values()], f"loops of node {self._node}")

    def _repr_html_(self):
        try:
            return self.table().join_html()
        except Exception as exc:  # a repr must not raise
            return f"<b>loops of node {self._node}</b>: no state ({type(exc).__name__}: {exc})"

    def __repr__(self):
        return f"<{len(self)} loops of node {self._node!r}: {', '.join(self._loops) or 'none'}>"

"""`node.fpga`: a RedPitaya's FPGA modules, from its node kernel, run by the node's runtime.

    node.fpga.pid0.configure(input="in2", output="out1", setpoint=0.2, p=-0.3, i=-20)
    node.fpga.pid0.state()      # the settings read back from the board
    node.fpga.pid0.reset()      # integrator back to 0 V
    node.fpga.modules           # ['pid0', 'pid1', 'pid2', 'iq0', 'iq1', 'iq2', 'asg0', 'asg1']

Each call is one `fpga` request to the runtime (supervisor/runtime/fpga_ops.py): names
and ranges are checked there, the rig's limits apply to outputs a module drives, and
the change is journaled. The PID's error is input - setpoint, as in the FPGA: a plant
whose input rises with the output is regulated with negative p and i.
"""
from __future__ import annotations

import inspect
from typing import Any

from labrig.drivers.errors import ConfigError
from labrig.drivers.redpitaya.fpga import MODULES, PARAMS

WHAT = {"pid": "PI controller", "iq": "IQ demodulator", "asg": "signal generator"}


class FpgaModule:
    """One module of the board's FPGA: configure(...), state(), reset()."""

    kind = ""

    def __init__(self, node, name: str):
        self._node = node
        self.name = name

    def configure(self, **settings) -> dict[str, Any]:
        # replaced per kind below, with the module's settings in its signature
        return self._call("configure", {k: v for k, v in settings.items() if v is not None})

    def state(self) -> dict[str, Any]:
        """The module's settings as the board has them now."""
        return self._call("state")

    def reset(self) -> dict[str, Any]:
        """pid: integrator to 0 V; iq: oscillator and filters restarted; asg: waveform restarted."""
        return self._call("reset")

    def _call(self, action: str, params: dict | None = None) -> dict[str, Any]:
        return self._node.client.call("fpga", module=self.name, action=action, params=params or {})

    def __repr__(self):
        names = ", ".join(p.name for p in PARAMS[self.kind])
        return (f"<{self._node.name}.fpga.{self.name}: {WHAT[self.kind]}; configure({names}), "
                f"state(), reset()>")


def _module_class(kind: str) -> type:
    params = PARAMS[kind]

    def configure(self, **settings) -> dict[str, Any]:
        return FpgaModule.configure(self, **settings)

    keyword = inspect.Parameter.KEYWORD_ONLY
    configure.__signature__ = inspect.Signature(
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [inspect.Parameter(p.name, keyword, default=None) for p in params])
    lines = []
    for p in params:
        allowed = (", ".join(p.choices) if p.choices else "True/False" if p.kind == "flag"
                   else f"{p.lo:g}..{p.hi:g}" if p.lo > -1e300 else "any number")
        lines.append(f"    {p.name}: {p.doc}; {allowed}")
    sign = ("\n\nThe error is input - setpoint (as in the FPGA): a plant whose input rises with the "
            "output needs negative p and i." if kind == "pid" else "")
    configure.__doc__ = (f"Set this {WHAT[kind]}'s settings (None or left out: unchanged); returns its "
                         f"state read back.\n\n" + "\n".join(lines) + sign)
    return type(f"Fpga{kind.capitalize()}", (FpgaModule,), {"kind": kind, "configure": configure})


MODULE_CLASSES = {kind: _module_class(kind) for kind in set(MODULES.values())}


class Fpga:
    """The FPGA of a RedPitaya node: pid0..pid2, iq0..iq2, asg0, asg1."""

    def __init__(self, node):
        self._node = node
        if node.kind == "redpitaya":
            for name, kind in MODULES.items():
                setattr(self, name, MODULE_CLASSES[kind](node, name))

    @property
    def modules(self) -> list[str]:
        self._check()
        return list(MODULES)

    def state(self) -> dict[str, dict[str, Any]]:
        """Every module's settings, read back from the board."""
        self._check()
        return {name: getattr(self, name).state() for name in MODULES}

    def _check(self) -> None:
        if self._node.kind != "redpitaya":
            boards = [n for n, spec in self._node.rig.nodes.items() if spec.kind == "redpitaya"]
            raise ConfigError(f"node {self._node.name!r} ({self._node.kind}) has no FPGA; the FPGA fast path "
                              f"is on RedPitaya nodes ({', '.join(boards) or 'none in this rig'})")

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        if name in MODULES:  # only reached when the node has no FPGA
            self._check()
        raise AttributeError(f"node.fpga has no attribute {name!r}; modules: {', '.join(MODULES)}")

    def __dir__(self):
        return [*super().__dir__(), *(MODULES if self._node.kind == "redpitaya" else ())]

    def __repr__(self):
        if self._node.kind != "redpitaya":
            return f"<no FPGA: node {self._node.name} is a {self._node.kind} board, not a redpitaya>"
        groups = {}
        for name, kind in MODULES.items():
            groups.setdefault(kind, []).append(name)
        body = ", ".join(f"{' '.join(names)} ({WHAT[kind]}s)" for kind, names in groups.items())
        return f"<FPGA of node {self._node.name}: {body}>"

"""The rig model: a validated rig file, with what the rest of labrig asks of it."""
from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from labrig.drivers.calibration import Calibration
from labrig.drivers.contract import ChannelSpec, Driver, open_driver
from labrig.drivers.errors import ConfigError

from .conditions import Condition, compile_condition
from .loader import load_rig_spec, parse_rig
from .schema import NodeSpec, RigSpec, SignalSpec


@dataclass(frozen=True)
class Interlock:
    name: str
    require: Condition
    outputs: tuple[str, ...]
    description: str
    latch: bool


class Rig:
    """A rig file, loaded and checked. `Rig.load("examples/ishtar/rig.toml")`."""

    def __init__(self, spec: RigSpec, *, text: str = "", path: Path | None = None):
        self.spec = spec
        self.text = text
        self.path = path
        self.interlocks = {name: Interlock(name, compile_condition(i.require), tuple(i.outputs),
                                           i.description, i.latch)
                           for name, i in spec.interlocks.items()}

    @classmethod
    def load(cls, path: str | Path) -> "Rig":
        spec, text = load_rig_spec(path)
        return cls(spec, text=text, path=Path(path).resolve())

    @classmethod
    def from_text(cls, text: str, *, source: str = "<rig>") -> "Rig":
        return cls(parse_rig(text, source=source), text=text)

    # -- names -----------------------------------------------------------
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def nodes(self) -> Mapping[str, NodeSpec]:
        return self.spec.nodes

    @property
    def signals(self) -> Mapping[str, SignalSpec]:
        return self.spec.signals

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def node(self, name: str) -> NodeSpec:
        try:
            return self.spec.nodes[name]
        except KeyError:
            raise ConfigError(f"rig {self.name!r} has no node {name!r}{_hint(name, self.spec.nodes)}") from None

    def signal(self, name: str) -> SignalSpec:
        try:
            return self.spec.signals[name]
        except KeyError:
            raise ConfigError(f"rig {self.name!r} has no signal {name!r}{_hint(name, self.spec.signals)}") from None

    def node_of(self, name: str) -> str:
        """The node a condition's name lives on: a signal's node, or NODE for `NODE.online`."""
        if name.endswith(".online") and name.rsplit(".", 1)[0] in self.spec.nodes:
            return name.rsplit(".", 1)[0]
        return self.signal(name).node

    def local_interlocks(self, node: str) -> dict[str, Interlock]:
        """Interlocks a node's runtime enforces alone: condition and outputs all on that node."""
        return {name: lock for name, lock in self.interlocks.items()
                if {self.node_of(s) for s in (*lock.require.signals, *lock.outputs)} == {node}
                and not any(s.endswith(".online") for s in lock.require.signals)}

    def guarded_interlocks(self) -> dict[str, Interlock]:
        """Interlocks only the supervisor's guard can evaluate: they span nodes or need a node alive."""
        local = {name for node in self.spec.nodes for name in self.local_interlocks(node)}
        return {name: lock for name, lock in self.interlocks.items() if name not in local}

    def signals_of(self, node: str) -> dict[str, SignalSpec]:
        self.node(node)
        return {n: s for n, s in self.spec.signals.items() if s.node == node}

    # -- what drivers need ---------------------------------------------
    def channel_specs(self, node: str) -> list[ChannelSpec]:
        return [
            ChannelSpec(name=name, address=sig.channel, direction=sig.direction, unit=sig.unit,
                        calibration=Calibration.from_dict(sig.calibration.model_dump()),
                        raw_range=tuple(sig.raw_range) if sig.raw_range else None,
                        safe_value=sig.safe)
            for name, sig in self.signals_of(node).items()
        ]

    def connection(self, node: str, *, sim: bool = False, sim_state: Mapping[str, Any] | None = None) -> str:
        """The concrete URL of a node: `sim:` (or `sim=True`) means its simulator's endpoint."""
        spec = self.node(node)
        if not (sim or spec.connection.strip().lower().startswith("sim:")):
            return spec.connection
        sims = (sim_state or {}).get("simulators", {})
        if node not in sims:
            raise ConfigError(f"node {node!r} wants its simulator, but no simulated testbed runs for it; "
                              f"start one with `labrig sim up {self.path or 'RIG'}`")
        return sims[node]["url"]

    def open_driver(self, node: str, *, sim: bool = False, sim_state: Mapping[str, Any] | None = None) -> Driver:
        spec = self.node(node)
        return open_driver(spec.kind, self.connection(node, sim=sim, sim_state=sim_state),
                           self.channel_specs(node), timeout=spec.timeout, name=node, **spec.options)


def _hint(name: str, known) -> str:
    matches = difflib.get_close_matches(name, list(known), n=3)
    if matches:
        return f"; did you mean {', '.join(matches)}?"
    return f"; known: {', '.join(sorted(known))}"

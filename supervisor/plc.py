"""What the real PLC program must implement: its tags and the interlocks it can evaluate itself.

The PLC is the last safety layer: an interlock whose condition and forced outputs are
all tags of a PLC node belongs in its scan cycle too, so it holds even when every
computer is down. Interlocks that need signals of other nodes cannot run there unless
those signals are wired to the PLC as well: they are listed apart, with what is missing.
"""
from __future__ import annotations

from typing import Any

from labrig.drivers.simatic.tags import parse_tag

from .rig import Rig

WATCHDOG_TAG = "DB1.DBW14"  # the word the host's driver increments (labrig.drivers.simatic.driver)


def plc_program(rig: Rig) -> dict[str, Any]:
    """{"plcs": {node: {"connection", "tags": [...], "watchdog": {...}}}, "interlocks": [...], "elsewhere": [...]}."""
    plcs: dict[str, Any] = {}
    for node, spec in rig.nodes.items():
        if spec.kind != "simatic":
            continue
        tags = []
        for name, sig in rig.signals_of(node).items():
            tag = parse_tag(sig.channel, channel=name)
            tags.append({"signal": name, "address": tag.address, "type": tag.type, "direction": sig.direction,
                         "unit": sig.unit, "limits": list(sig.limits) if sig.limits else None, "safe": sig.safe})
        watchdog = spec.options.get("watchdog_tag", WATCHDOG_TAG)
        plcs[node] = {"connection": spec.connection, "tags": tags,
                      "watchdog": {"address": watchdog, "type": parse_tag(watchdog).type,
                                   "rule": "the host increments it; when it has not changed for the PLC's "
                                           "watchdog time, drive every output to its safe value"}}
    on_plc, elsewhere = [], []
    for name, lock in rig.interlocks.items():
        signals = set(lock.require.signals) | set(lock.outputs)
        nodes = {rig.signal(s).node for s in signals}
        entry = {"interlock": name, "requires": lock.require.source, "forces_safe": list(lock.outputs),
                 "description": lock.description}
        if len(nodes) == 1 and next(iter(nodes)) in plcs:
            on_plc.append({**entry, "plc": next(iter(nodes))})
        else:
            missing = sorted(s for s in signals if rig.signal(s).node not in plcs)
            elsewhere.append({**entry, "not_on_a_plc": {s: rig.signal(s).node for s in missing}})
    return {"rig": rig.name, "plcs": plcs, "interlocks": on_plc, "elsewhere": elsewhere}

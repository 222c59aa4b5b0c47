"""What the real PLC program must implement: its tags and the interlocks it can evaluate itself.

The PLC is the last safety layer: an interlock whose condition and forced outputs are
all tags of a PLC node belongs in its scan cycle too, so it holds even when every
computer is down. Interlocks that need signals of other nodes cannot run there unless
those signals are wired to the PLC as well: they are listed apart, with what is missing.
"""
from __future__ import annotations

from typing import Any

from labrig.drivers.simatic.tags import parse_tag

from .model import Rig

WATCHDOG_TAG = "DB1.DBW14"  # the word the host's driver increments (labrig.drivers.simatic.driver)
TRIP_TAG = "DB1.DBW18"  # status word: bit i set while the PLC's i-th interlock holds its outputs safe
TRIP_BITS = 16  # an INT has 16 bits: interlocks beyond the 16th are enforced but not reported there
RESTART_RULE = ("every scan: an output forced by a failing interlock goes to its safe value; a latching "
                "interlock keeps it there until its condition holds again AND a scan has seen the host's "
                "value of that output at its safe value (a restart interlock: nothing comes back on by itself)")


def plc_program(rig: Rig) -> dict[str, Any]:
    """{"plcs": {node: {"connection", "tags", "watchdog", "trips", "interlock_rule"}}, "interlocks": [...],
    "elsewhere": [...]}. The simulated PLC (labrig.simulators.simatic) runs exactly this program."""
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
                                           "watchdog time, drive every output to its safe value"},
                      "trips": {"address": TRIP_TAG, "type": parse_tag(TRIP_TAG).type,
                                "rule": "bit i (the interlock's 'bit') is set while that interlock is latched"},
                      "interlock_rule": RESTART_RULE}
    on_plc, elsewhere = [], []
    bits: dict[str, int] = {}
    for name, lock in rig.interlocks.items():
        signals = set(lock.require.signals) | set(lock.outputs)
        nodes = {rig.node_of(s) for s in signals}
        entry = {"interlock": name, "requires": lock.require.source, "forces_safe": list(lock.outputs),
                 "description": lock.description}
        online = [s for s in signals if s.endswith(".online")]  # the guard's knowledge, not a PLC tag
        if len(nodes) == 1 and next(iter(nodes)) in plcs and not online:
            plc = next(iter(nodes))
            bit = bits[plc] = bits.get(plc, -1) + 1
            on_plc.append({**entry, "plc": plc, "latch": lock.latch, "bit": bit if bit < TRIP_BITS else None})
        else:
            missing = sorted(s for s in signals if rig.node_of(s) not in plcs or s in online)
            elsewhere.append({**entry, "not_on_a_plc": {s: rig.node_of(s) for s in missing}})
    return {"rig": rig.name, "plcs": plcs, "interlocks": on_plc, "elsewhere": elsewhere}

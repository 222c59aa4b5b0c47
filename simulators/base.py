"""What every device simulator shares: lifecycle, the world it is coupled to, link faults.

A device simulator serves one node's real protocol on a real transport:

    with ArduinoSimulator(LocalWorld(), node="ard1") as sim:   # in-process, for tests
        driver = ArduinoDriver(sim.url, channels)

or as its own process: `python -m labrig.simulators arduino --node ard1 ...`.
"""
from __future__ import annotations

import random
import time
from typing import Any, ClassVar

from .world import WorldBase


class DeviceSimulator:
    kind: ClassVar[str] = ""

    def __init__(self, world: WorldBase, *, node: str, host: str = "127.0.0.1",
                 options: dict[str, Any] | None = None):
        self.world = world
        self.node = node
        self.host = host
        self.options = dict(options or {})
        self.endpoints: dict[str, str] = {}
        self.url = ""  # the connection URL a driver uses to reach this simulator
        self._rng = random.Random(hash(node) & 0xFFFF)

    # -- lifecycle -------------------------------------------------------
    def start(self) -> "DeviceSimulator":
        """Bind, start serving on background threads, fill `endpoints` and `url`."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        if not self.url:
            self.start()
        return self

    def __exit__(self, *exc):
        self.close()

    # -- link faults, applied by the protocol servers --------------------
    def link_fault(self) -> dict[str, Any] | None:
        return self.world.link_fault(self.node)

    def muted(self) -> bool:
        fault = self.link_fault()
        return bool(fault and fault["mode"] == "mute")

    def before_reply(self) -> None:
        """Delay a reply when the link is slowed."""
        fault = self.link_fault()
        if fault and fault["mode"] == "slow":
            time.sleep(fault["value"])

    def garble(self, data: bytes) -> bytes:
        """Corrupt a reply when the link is garbled: flip distinct bits (never one twice), keep the length."""
        fault = self.link_fault()
        if not (fault and fault["mode"] == "garble") or not data:
            return data
        out = bytearray(data)
        for bit in self._rng.sample(range(8 * len(out)), max(1, len(out) // 4)):
            out[bit // 8] ^= 1 << (bit % 8)
        return bytes(out)

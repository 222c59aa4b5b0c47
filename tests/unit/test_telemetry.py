"""The node runtime's telemetry sampler (supervisor/runtime/telemetry.py), on its own thread."""
from __future__ import annotations

import threading
import time

from labrig.supervisor.runtime.telemetry import TelemetrySampler

from support import eventually


class Link:
    """The reads the sampler makes, counted per signal."""

    def __init__(self):
        self.reads: dict[str, int] = {}
        self.lock = threading.Lock()

    def read(self, name: str) -> float:
        with self.lock:
            self.reads[name] = self.reads.get(name, 0) + 1
        return -1.0


def test_offered_readings_stand_for_samples_and_the_link_is_read_again_once_they_stop():
    link, batches = Link(), []
    sampler = TelemetrySampler(link.read, {"door": 50.0, "trigger": 50.0}, batches.append, node="pi1",
                               batch_period=0.05)
    stop = threading.Event()

    def scan():  # a step scan reading door at 1 kHz
        value = 0.0
        while not stop.is_set():
            value += 1.0
            sampler.offer("door", time.time(), value)
            time.sleep(0.001)
    thread = threading.Thread(target=scan)
    try:
        thread.start()
        time.sleep(0.5)
        stop.set()
        thread.join(2)
        with link.lock:
            door_reads, trigger_reads = link.reads.get("door", 0), link.reads.get("trigger", 0)
        assert door_reads <= 1  # (one, if the sampler looked before the first offer)
        assert trigger_reads >= 15  # 50 Hz for 0.5 s: the signal the scan does not read is still read
        door = [v for b in batches for v in b["signals"].get("door", {}).get("v", [])]
        assert len(door) >= 15 and all(v >= 1.0 for v in door[1:])  # offered values, none from the link
        assert sampler.stats["offered"] >= 15
        # a stale offer (older than the signal's period) does not stand for a sample
        assert eventually(lambda: link.reads.get("door", 0) >= door_reads + 5, timeout=2.0)
    finally:
        stop.set()
        sampler.close()

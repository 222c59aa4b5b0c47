"""The nodes' clock offsets, measured by round trips before a run starts.

Each node answers `sequence_clock` with its own time; the offset is that time minus the
midpoint of the round trip, from the fastest of a few round trips (the least queueing),
and its uncertainty half that round trip. A node whose offset is above the tolerance
cannot start on a common start time: the run is refused before anything moves.
"""
from __future__ import annotations

import time

from labrig.drivers.errors import RangeError

ROUNDS = 7


class ClockOffsetError(RangeError):
    """A node's clock is further from the supervisor's than the run allows."""


def measure_offset(client, rounds: int = ROUNDS) -> dict:
    """{"offset": node - supervisor (s), "rtt": the fastest round trip (s)}."""
    best = None
    for _ in range(rounds):
        t0 = time.time()
        reply = client.call("sequence_clock")
        t1 = time.time()
        sample = (t1 - t0, reply["time"] - (t0 + t1) / 2)
        if best is None or sample[0] < best[0]:
            best = sample
    return {"offset": best[1], "rtt": best[0]}


def check_offsets(offsets: dict[str, dict], tolerance: float) -> None:
    bad = {n: o for n, o in offsets.items() if abs(o["offset"]) > tolerance}
    if bad:
        detail = ", ".join(f"{n} {o['offset'] * 1000:+.1f} ms (round trip {o['rtt'] * 1000:.1f} ms)"
                           for n, o in sorted(bad.items()))
        raise ClockOffsetError(f"refusing to start: node clock offsets above the tolerance of "
                               f"{tolerance * 1000:g} ms: {detail}; synchronise the nodes' clocks (NTP/PTP) "
                               "or raise clock_tolerance=")

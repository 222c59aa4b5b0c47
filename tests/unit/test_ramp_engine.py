"""The runtime's ramp engine (supervisor/runtime/ramps.py) against a slow link: a stop waits for the
step already on the wire, so the safe value written after it is the last word."""
from __future__ import annotations

import threading
import time

from labrig.supervisor.runtime.ramps import Ramp, RampEngine


class SlowLink:
    """Each write takes `delay` s on the wire and is recorded when it lands."""

    def __init__(self, delay: float):
        self.delay = delay
        self.landed: list[tuple[str, float]] = []
        self.on_wire = threading.Event()
        self.lock = threading.Lock()

    def write(self, name: str, value: float) -> float:
        self.on_wire.set()
        time.sleep(self.delay)
        with self.lock:
            self.landed.append((name, value))
        return value


def test_the_safe_value_written_after_stop_all_is_never_followed_by_a_ramp_step():
    for _ in range(5):  # the stop lands at a different point of the write each time
        link = SlowLink(delay=0.05)
        engine = RampEngine(link.write, period=0.01)
        try:
            engine.start(Ramp("rf_power", 0.0, 1000.0, 500.0))
            engine.start(Ramp("coil_current_set", 0.0, 100.0, 50.0))
            link.on_wire.clear()
            assert link.on_wire.wait(2)  # a step is on the wire now
            engine.stop_all("safe state requested")
            for name in ("rf_power", "coil_current_set"):  # what the runtime does next: the safe values
                link.write(name, 0.0)
            time.sleep(0.2)  # long enough for any step the engine still had in hand to land
            with link.lock:
                last = {name: value for name, value in link.landed}
            assert last == {"rf_power": 0.0, "coil_current_set": 0.0}, link.landed[-6:]
            assert all(r["state"] == "stopped" for r in engine.states())
        finally:
            engine.close()


def test_a_stopped_ramp_takes_no_further_step_and_the_others_go_on():
    link = SlowLink(delay=0.001)
    engine = RampEngine(link.write, period=0.005)
    try:
        engine.start(Ramp("a", 0.0, 10.0, 1.0))
        engine.start(Ramp("b", 0.0, 10.0, 1.0))
        time.sleep(0.05)
        engine.stop("a")
        with link.lock:
            count_a = sum(1 for name, _ in link.landed if name == "a")
            count_b = sum(1 for name, _ in link.landed if name == "b")
        time.sleep(0.1)
        with link.lock:
            assert sum(1 for name, _ in link.landed if name == "a") == count_a  # not one more step of a
            assert sum(1 for name, _ in link.landed if name == "b") > count_b + 5  # b goes on
    finally:
        engine.close()

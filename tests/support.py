"""Helpers shared by the tests (importable as `support`: pytest's pythonpath holds tests/)."""
from __future__ import annotations

import time


def eventually(check, timeout: float = 3.0, interval: float = 0.005):
    """Poll `check()` until it is truthy or `timeout` s pass; returns its last value.

    The simulated world refreshes its state every few ms, so effects of a write
    show up after a short, bounded delay.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def wait_for(check, timeout: float, what: str):
    """Like eventually(), but fail the test naming `what` when the time runs out."""
    value = eventually(check, timeout, interval=0.02)
    if not value:
        raise AssertionError(f"{what}: not within {timeout} s")
    return value


def clear_startup_trips(directory) -> None:
    """A loaded machine can start a cluster with a latched trip (the guard judged a node before it answered):
    re-arm it, so a test starts from a rig with nothing latched. Fails if a trip cannot be re-armed in 10 s."""
    from labrig.drivers.errors import LabrigError
    from labrig.supervisor.safety import all_trips, rearm

    def clear() -> bool:
        found = all_trips(directory)
        for trips in found.values():
            for trip in trips if isinstance(trips, list) else ():
                try:
                    rearm(trip["interlock"], directory)
                except LabrigError:  # refused while its condition fails: ask again
                    pass
        return not any(isinstance(trips, list) and trips for trips in found.values())
    wait_for(clear, 10, "no latched trip after the cluster started")


def rest_nodes(directory, nodes, *, guard: bool, timeout: float = 10.0, client: str = "test") -> None:
    """Put a cluster's `nodes` at rest as a test starts: every latched trip re-armed (the guard's first,
    when `guard`), every output safe. A re-arm is refused while its condition still fails (the world
    catching up with a test that opened the door): asked again until `timeout` s, then fails."""
    from labrig.drivers.errors import Refused
    from labrig.supervisor.guard import guard_record
    from labrig.supervisor.runtime import RuntimeClient
    from labrig.supervisor.runtime.locate import runtime_record

    def connect(record: dict, name: str) -> RuntimeClient:
        return RuntimeClient(record["endpoint"], node=name, client=client)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if guard:
                with connect(guard_record(directory), "guard") as g:
                    for trip in g.trips():
                        g.rearm(trip["interlock"])
            for node in nodes:
                with connect(runtime_record(node, directory), node) as c:
                    for trip in c.trips():
                        c.rearm(trip["interlock"])
                    c.safe()
            return
        except Refused:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)

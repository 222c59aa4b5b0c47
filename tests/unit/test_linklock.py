"""The link lock: one transaction at a time, safety first."""
import threading
import time

import pytest

from labrig.drivers.linklock import LinkLock


def test_it_is_reentrant_and_bounded():
    lock = LinkLock()
    with lock:
        with lock:
            pass
        got = []
        t = threading.Thread(target=lambda: got.append(lock.acquire(timeout=0.05)))
        t.start()
        t.join(2)
        assert got == [False]  # held elsewhere: the wait is bounded
    assert lock.acquire(blocking=False)
    lock.release()
    with pytest.raises(RuntimeError):
        lock.release()


def test_an_urgent_waiter_goes_before_ordinary_ones_queued_earlier():
    lock = LinkLock(starve_after=10.0)  # none of the ordinary waiters here counts as starved
    order = []

    def ordinary(i):
        with lock:
            order.append(f"ordinary{i}")

    def urgent():
        with lock.urgent(), lock:
            order.append("urgent")

    lock.acquire()  # a transaction in flight
    waiters = [threading.Thread(target=ordinary, args=(i,)) for i in range(3)]
    for t in waiters:
        t.start()
    time.sleep(0.05)  # the ordinary ones queue first
    trip = threading.Thread(target=urgent)
    trip.start()
    time.sleep(0.05)
    lock.release()
    for t in [*waiters, trip]:
        t.join(2)
    assert order[0] == "urgent" and sorted(order[1:]) == ["ordinary0", "ordinary1", "ordinary2"]


def test_urgent_traffic_that_never_stops_does_not_starve_an_ordinary_transaction():
    # interlock checks on a slow link: an urgent waiter is queued at every release
    lock = LinkLock(starve_after=0.1)
    stop = threading.Event()
    urgent_turns = []

    def checks():
        with lock.urgent():
            while not stop.is_set():
                with lock:
                    urgent_turns.append(time.monotonic())
                    time.sleep(0.005)  # one read's round trip

    hogs = [threading.Thread(target=checks) for _ in range(2)]  # two: one is always waiting
    for t in hogs:
        t.start()
    try:
        time.sleep(0.05)
        t0 = time.monotonic()
        got = lock.acquire(timeout=2.0)  # a ramp's write
        waited = time.monotonic() - t0
        assert got, "an ordinary transaction starved behind urgent ones"
        lock.release()
        # it waited about starve_after, not its whole timeout
        assert waited < 1.0, waited
    finally:
        stop.set()
        for t in hogs:
            t.join(2)
    assert len(urgent_turns) > 20  # the urgent traffic went on around it

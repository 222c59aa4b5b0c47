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
    lock = LinkLock()
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

"""Leases as a node runtime keeps them (the runtime checks the deadlines in its socket loop)."""
import time

import pytest

from labrig.drivers.errors import RangeError
from labrig.supervisor.runtime.leases import Leases


def test_a_lease_runs_out_once_and_is_dropped():
    leases = Leases("ard1")
    assert leases.renew("guard", 0.05)["new"] is True
    assert leases.renew("guard", 0.05)["new"] is False
    now = time.monotonic()
    assert leases.expired(now) == []
    assert 0 < leases.next_deadline() - now <= 0.05
    gone = leases.expired(now + 0.06)
    assert [h for h, _ in gone] == ["guard"] and gone[0][1] > 0
    assert leases.expired(now + 1) == [] and leases.holders() == [] and leases.next_deadline() is None


def test_a_released_lease_never_runs_out():
    leases = Leases("ard1")
    leases.renew("guard", 0.05)
    assert leases.release("guard")["released"] is True
    assert leases.expired(time.monotonic() + 1) == []
    assert leases.release("guard")["released"] is False


@pytest.mark.parametrize("ttl", [0, -1, "soon", float("nan"), 601])
def test_a_lease_needs_a_sane_ttl(ttl):
    with pytest.raises(RangeError, match="ttl"):
        Leases("ard1").renew("guard", ttl)

"""Chaos: interlock conditions crossed during ramps, re-arms while they still fail, two clients at once."""
from __future__ import annotations

import time

import pytest

from labrig.drivers.errors import RangeError, Refused
from support import eventually

from chaos.rig import GUARD_POLL, MARGIN, PLC_SCAN, needs_cluster

pytestmark = needs_cluster


@pytest.mark.flaky(reruns=1)  # a loaded 2-core host has stalled the guard's poll past the bound once; bound unchanged
def test_a_cross_node_condition_crossed_during_a_ramp_stops_it_safe_and_latches(chaos):
    plc = chaos.client("plc1")
    plc.write("coil_enable", 1)
    ramp = plc.ramp("coil_current_set", 300.0, 100)  # 3 s
    chaos.until_world(lambda w: w["coil_current_cmd"] > 50, 2, "coil ramp under way", since=time.monotonic())
    crossed = chaos.set_world("cooling_flow", 1.0)  # the cooling water fails (read on ard1; the coil is on plc1)
    bound = GUARD_POLL + PLC_SCAN + MARGIN
    took = chaos.until_world(lambda w: w["coil_current_cmd"] == 0.0, bound, "the coil current", since=crossed)
    assert took <= bound, took
    ramps = {r["signal"]: r for r in plc.ramps()}
    assert ramp["state"] == "running" and ramps["coil_current_set"]["state"] != "running", ramps
    trip = eventually(lambda: chaos.node_trips("plc1").get("coil_needs_cooling"), timeout=2)
    assert trip["layer"] == "supervisor" and trip["values"]["cooling_flow"] < 2, trip
    with pytest.raises(Refused, match="coil_needs_cooling tripped"):
        plc.write("coil_enable", 1)
    with pytest.raises(Refused, match="spans nodes"):  # the node leaves this re-arm to the guard
        plc.rearm("coil_needs_cooling")
    # re-arming while the condition still fails: refused, saying why, and journaled; the latch holds
    with pytest.raises(Refused, match=r"cannot re-arm coil_needs_cooling: it still requires cooling_flow > 2"):
        chaos.guard().rearm("coil_needs_cooling")
    assert "coil_needs_cooling" in chaos.guard_trips() and "coil_needs_cooling" in chaos.node_trips("plc1")
    refused = [e for e in chaos.journal("guard") if e["op"] == "rearm" and e["outcome"] == "refused"]
    assert refused and refused[-1]["signal"] == "coil_needs_cooling"
    chaos.set_world("cooling_flow", 6.0)
    assert eventually(lambda: _rearm(chaos, "coil_needs_cooling"), timeout=3)
    assert "coil_needs_cooling" not in chaos.node_trips("plc1")
    assert plc.write("coil_enable", 1) == 1.0


def _rearm(chaos, name):
    try:
        return chaos.guard().rearm(name)["rearmed"]
    except Refused:
        return False


# one run again after a failure: on a shared 2-core CI machine the scheduler has stalled a process
# here for 100+ ms (seen in fresh clones); a real regression fails both runs
@pytest.mark.flaky(reruns=1)
def test_a_node_condition_crossed_during_a_ramp_trips_at_the_node_and_the_plc(chaos):
    plc, rp = chaos.client("plc1"), chaos.client("rp1")
    plc.write("rf_enable", 1)
    rp.ramp("rf_power", 200.0, 100)  # 2 s
    chaos.until_world(lambda w: w["rf_drive"] > 0.1 and w["rf_permit"] == 1.0, 2, "RF ramp under way",
                      since=time.monotonic())
    opened = chaos.set_world("door_closed", 0.0)
    bound = PLC_SCAN + MARGIN
    took = chaos.until_world(lambda w: w["rf_permit"] == 0.0, bound, "the PLC's RF permit", since=opened)
    assert took <= bound, took
    took = chaos.until_world(lambda w: w["rf_drive"] == 0.0, GUARD_POLL + MARGIN, "the RF drive (guard)",
                             since=opened)
    assert took <= GUARD_POLL + MARGIN + 0.05, took
    assert "rf_enable_needs_vacuum_and_door" in chaos.node_trips("plc1")  # the node layer, on the PLC's tags
    assert "rf_needs_vacuum_door_cooling" in chaos.guard_trips()
    chaos.set_world("door_closed", 1.0)


def test_two_clients_writing_one_output_both_pass_the_envelope_and_the_journal_names_each(chaos):
    alice = chaos.client("pi1", name="alice")
    bob = chaos.client("pi1", name="bob")
    ramp = alice.ramp("gas_flow", 20.0, 20)  # 1 s
    time.sleep(0.3)
    assert bob.write("gas_flow", 5.0) == 5.0  # a write ends the other client's ramp on that output
    ramps = {r["signal"]: r for r in alice.ramps()}
    assert ramp["state"] == "running" and ramps["gas_flow"]["state"] == "stopped", ramps
    with pytest.raises(RangeError, match="outside its limits"):
        alice.write("gas_flow", 45.0)
    with pytest.raises(RangeError, match="step of"):
        alice.write("gas_flow", 30.0)  # beyond the slew allowance from bob's 5 sccm
    assert alice.write("gas_flow", 8.0) == 8.0
    assert eventually(lambda: abs(chaos.world()["gas_valve"] - 8.0 / 50) < 0.01, timeout=2)
    entries = [e for e in chaos.journal("pi1") if e["signal"] == "gas_flow"][-5:]
    assert [(e["client"], e["op"], e["outcome"]) for e in entries] == [
        ("alice", "ramp", "ok"), ("bob", "write", "ok"), ("alice", "write", "refused"),
        ("alice", "write", "refused"), ("alice", "write", "ok")], entries


def test_a_guard_override_holds_off_a_cross_node_trip_until_it_expires(chaos):
    plc = chaos.client("plc1")
    plc.write("coil_enable", 1)
    plc.write("coil_current_set", 10.0)
    result = chaos.guard().call("override", interlock="coil_needs_cooling", seconds=1.0, reason="flow meter swap")
    assert result["overridden"]
    chaos.set_world("cooling_flow", 1.0)
    time.sleep(0.5)  # well past the guard's poll: overridden, nothing trips
    assert "coil_needs_cooling" not in chaos.guard_trips() and chaos.world()["coil_current_cmd"] == 10.0
    took = chaos.until_world(lambda w: w["coil_current_cmd"] == 0.0, 0.5 + GUARD_POLL + PLC_SCAN + MARGIN,
                             "the coil once the override expired", since=time.monotonic())
    assert took >= 0.3  # not before the override ended
    entries = [(e["op"], e["signal"]) for e in chaos.journal("guard")[-6:]]
    assert ("override", "coil_needs_cooling") in entries and ("override_end", "coil_needs_cooling") in entries

"""Chaos: a NaN and a stuck sensor feeding a PID loop in a node runtime. The devices judge."""
from __future__ import annotations


import pytest

from labrig.drivers.errors import Refused
from labrig.supervisor.runtime.loops import STALE_TICKS
from support import eventually

from chaos.rig import LOOP_RATE, LOOP_STALE_AFTER, MARGIN, PLC_SCAN, needs_cluster

pytestmark = needs_cluster


def _regulating(chaos):
    plc = chaos.client("plc1")
    plc.write("coil_enable", 1)
    plc.call("loop", name="coil", set={"setpoint": 50.0, "mode": "auto"})
    assert eventually(lambda: abs(chaos.world()["coil_current"] - 50) < 3, timeout=10), chaos.world()["coil_current"]
    return plc


@pytest.mark.parametrize("fault, allowance", [("nan", 0.0), ("stuck", LOOP_STALE_AFTER)])
def test_a_dead_sensor_under_a_pid_drives_its_actuator_safe_and_trips(chaos, fault, allowance):
    plc = _regulating(chaos)
    injected = chaos.world_control({"op": "fault", "kind": "sensor", "name": "coil_current", "mode": fault})["at"]
    try:
        bound = allowance + STALE_TICKS / LOOP_RATE + PLC_SCAN + MARGIN
        took = chaos.until_world(lambda w: w["coil_current_cmd"] == 0.0, bound, f"the coil after a {fault} sensor",
                                 since=injected)
        assert took <= bound, took
        trip = eventually(lambda: chaos.node_trips("plc1").get("loop:coil"), timeout=2)
        assert trip["layer"] == "loop" and trip["outputs"] == ["coil_current_set"], trip
        assert ("stuck sensor" in trip["reason"]) == (fault == "stuck"), trip["reason"]
        state = plc.call("loops")["coil"]
        assert state["mode"] == "manual" and state["output"] == 0.0, state
        with pytest.raises(Refused, match="cannot re-arm loop:coil"):  # the sensor is still dead
            plc.rearm("loop:coil")
        journal = [e for e in chaos.journal("plc1") if e["op"] == "trip"]
        assert journal and journal[-1]["signal"] == "coil_current_set" and "loop coil" in journal[-1]["detail"]
    finally:
        chaos.world_control({"op": "fault", "kind": "sensor", "name": "coil_current", "mode": "clear"})
    assert eventually(lambda: _rearmed(plc), timeout=3)


def _rearmed(plc) -> bool:
    try:
        return plc.rearm("loop:coil")["rearmed"]
    except Refused:
        return False

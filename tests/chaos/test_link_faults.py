"""Chaos: links cut, silently dropped or muted, and the broker stopped. The devices judge."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

from labrig.drivers.errors import LinkError, LinkTimeout
from labrig.supervisor.broker import start_broker
from labrig.supervisor.mqtt import MqttSubscriber
from labrig.supervisor.state import read_state, write_state
from support import eventually

from chaos.rig import (ARDUINO_WATCHDOG, GUARD_POLL, MARGIN, ONLINE_TIMEOUT, PLC_SCAN, PLC_WATCHDOG,
                       needs_cluster)

pytestmark = needs_cluster


def _coil_and_rf_permit_on(chaos) -> None:
    plc = chaos.client("plc1")
    plc.write("coil_enable", 1)
    plc.write("rf_enable", 1)
    plc.ramp("coil_current_set", 60.0, 300)
    chaos.until_world(lambda w: w["coil_current_cmd"] == 60.0 and w["rf_permit"] == 1.0, 3,
                      "coil current and RF permit on", since=time.monotonic())


def _read_fails_within(client, signal_name: str, bound: float, error=LinkError) -> float:
    """Time until a read of the node raises `error` (it may answer from before the fault at first)."""
    start = time.monotonic()
    while True:
        try:
            client.read(signal_name)
        except error:
            return time.monotonic() - start
        assert time.monotonic() - start < bound + 1, f"reads of {signal_name} still answer"
        time.sleep(0.01)


@pytest.mark.parametrize("how", ["cut", "blackhole"])
def test_the_plc_link_cut_or_silently_dropped_ends_safe_through_the_plc_watchdog(chaos, how):
    _coil_and_rf_permit_on(chaos)
    plc = chaos.client("plc1", timeout=5.0)
    timeout = chaos.rig.node("plc1").timeout
    chaos.proxy(how)  # cut: FIN on every connection; blackhole: nothing moves, no FIN, ever
    faulted = time.monotonic()
    try:
        # the runtime's own deadline names the dead link (snap7 alone would wait 5 s, or forever)
        took = _read_fails_within(plc, "coil_current", 2 * timeout, LinkTimeout if how == "blackhole" else LinkError)
        assert took <= 2 * timeout + 0.2, took
        # no one feeds the PLC's watchdog word: the PLC drops the coil and the RF permit on its own
        took = chaos.until_world(lambda w: w["coil_current_cmd"] == 0.0 and w["rf_permit"] == 0.0,
                                 PLC_WATCHDOG + PLC_SCAN + MARGIN, "the PLC's outputs safe", since=faulted)
        assert took <= PLC_WATCHDOG + PLC_SCAN + MARGIN, took
        # the guard cannot read the door any more: the RF drive on the RedPitaya is tripped too
        trips = eventually(chaos.guard_trips, timeout=ONLINE_TIMEOUT + 2)
        assert "rf_needs_vacuum_door_cooling" in trips, trips
        assert trips["rf_needs_vacuum_door_cooling"]["values"]["door_closed"] is None
    finally:
        chaos.proxy("restore")
    # the link back: the driver reconnects by itself, the runtime reads again
    assert eventually(lambda: _reads(plc, "door_closed") == 1.0, timeout=10)


def _reads(client, name):
    try:
        return client.read(name)
    except LinkError:
        return None


def test_a_serial_link_that_stops_answering_ends_safe_through_the_firmware_watchdog(chaos):
    ard = chaos.client("ard1", timeout=5.0)
    plc = chaos.client("plc1")
    ard.write("beacon", 1)
    ard.write("probe_bias", -20.0)
    plc.write("coil_enable", 1)
    plc.ramp("coil_current_set", 60.0, 300)
    chaos.until_world(lambda w: w["beacon"] == 1.0 and w["coil_current_cmd"] == 60.0, 3, "outputs on",
                      since=time.monotonic())
    muted = chaos.world_control({"op": "fault", "kind": "link", "name": "ard1", "mode": "mute"})["at"]  # pty quiet
    try:
        took = chaos.until_world(lambda w: w["beacon"] == 0.0 and abs(w["probe_bias"]) < 0.6,
                                 ARDUINO_WATCHDOG + MARGIN, "the Arduino's outputs safe", since=muted)
        assert took <= ARDUINO_WATCHDOG + MARGIN, took
        took = _read_fails_within(ard, "cooling_flow", 2 * chaos.rig.node("ard1").timeout, LinkTimeout)
        # the guard reads nothing from ard1 (its runtime answers, its link does not): the coil goes safe
        took = chaos.until_world(lambda w: w["coil_current_cmd"] == 0.0,
                                 2 * chaos.rig.node("ard1").timeout + GUARD_POLL + PLC_SCAN + MARGIN,
                                 "the coil current, through the guard", since=muted)
        trips = chaos.guard_trips()
        assert "coil_needs_cooling" in trips and trips["coil_needs_cooling"]["values"]["cooling_flow"] is None
    finally:
        chaos.world_control({"op": "fault", "kind": "link", "name": "ard1", "mode": "clear"})


def test_with_the_broker_stopped_safety_goes_on_and_the_trips_are_published_when_it_returns(chaos):
    broker = read_state("broker", chaos.dir)
    port = int(broker["url"].rsplit(":", 1)[1])
    _coil_and_rf_permit_on(chaos)
    os.kill(broker["pid"], signal.SIGKILL)  # the broker dies; nothing of labrig's safety goes through it
    time.sleep(2 * 0.5)
    assert not chaos.guard_trips() and not chaos.node_trips("plc1")  # no false trip, no lost lease
    opened = chaos.set_world("door_closed", 0.0)  # someone opens the door
    try:
        # the PLC layer drops the RF permit in its next scan; the plc1 runtime and the guard trip
        took = chaos.until_world(lambda w: w["rf_permit"] == 0.0 and w["coil_current_cmd"] == 0.0,
                                 PLC_SCAN + MARGIN + 0.05, "the RF permit and the coil", since=opened)
        assert took <= PLC_SCAN + MARGIN + 0.05, took
        assert eventually(lambda: "rf_needs_vacuum_door_cooling" in chaos.guard_trips(), timeout=2)
        assert eventually(lambda: "coil_needs_door_closed" in chaos.node_trips("plc1"), timeout=2)
        journal = chaos.journal("plc1")  # on disk, whatever the broker does
        assert any(e["op"] == "trip" and "coil_enable" in (e["signal"] or "") for e in journal[-10:])
        # the broker comes back on its port: the trips reach it (queued by the publishers), retained
        restarted = start_broker(chaos.dir / "broker", port=port)
        write_state("broker", {**broker, "pid": restarted["pid"]}, chaos.dir)
        record = chaos.record
        record["broker"]["pid"] = restarted["pid"]
        write_state("cluster", record, chaos.dir)
        seen: dict[str, list] = {}

        def on_message(topic, payload):
            seen[topic.split("/")[2]] = [t["interlock"] for t in json.loads(payload)["trips"]]
        with MqttSubscriber(restarted["url"], [f"labrig/{chaos.rig.name}/+/trips"], on_message,
                            client_id="chaos-trips") as subscriber:
            assert subscriber.wait_connected(5)
            assert eventually(lambda: "coil_needs_door_closed" in seen.get("plc1", [])
                              and "rf_needs_vacuum_door_cooling" in seen.get("guard", []), timeout=10), seen
    finally:
        chaos.set_world("door_closed", 1.0)

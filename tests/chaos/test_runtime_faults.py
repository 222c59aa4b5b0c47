"""Chaos: a killed runtime, a killed kernel, a runaway cell. The devices judge."""
from __future__ import annotations

import os
import signal
import time

from jupyter_client.blocking import BlockingKernelClient

from support import eventually

from chaos.rig import ARDUINO_WATCHDOG, GUARD_POLL, LEASE, MARGIN, ONLINE_TIMEOUT, PLC_SCAN, PLC_WATCHDOG, needs_cluster

pytestmark = needs_cluster


def test_sigkill_of_a_runtime_during_a_ramp_ends_safe_through_the_firmware_and_the_guard(chaos):
    ard = chaos.client("ard1")
    plc = chaos.client("plc1")
    plc.write("coil_enable", 1)
    plc.ramp("coil_current_set", 60.0, 300)
    ard.write("beacon", 1)
    ramp = ard.ramp("probe_bias", -100.0, 20.0)  # 5 s: it is running when the runtime dies
    chaos.until_world(lambda w: w["probe_bias"] < -5 and w["coil_current_cmd"] == 60.0, 3, "ramp under way",
                      since=time.monotonic())
    pid = chaos.client("ard1").ping()["pid"]
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    # the last line of defence outside the runtime: the Arduino firmware's own watchdog
    took = chaos.until_world(lambda w: abs(w["probe_bias"]) < 0.6 and w["beacon"] == 0.0,
                             ARDUINO_WATCHDOG + MARGIN, "the Arduino's outputs at their safe values", since=killed)
    assert took <= ARDUINO_WATCHDOG + MARGIN, took
    # the guard lost ard1: the interlocks reading its signals trip, and the coil goes safe on the PLC
    took = chaos.until_world(lambda w: w["coil_current_cmd"] == 0.0, ONLINE_TIMEOUT + GUARD_POLL + PLC_SCAN + MARGIN,
                             "the coil current, through the guard", since=killed)
    assert took <= ONLINE_TIMEOUT + GUARD_POLL + PLC_SCAN + MARGIN, took
    trips = chaos.guard_trips()
    assert "coil_needs_cooling" in trips and "node lost: ard1" in trips["coil_needs_cooling"]["reason"], trips
    assert eventually(lambda: chaos.guard_trips()["coil_needs_cooling"]["nodes"]["plc1"]["delivered"], timeout=2)
    # everything up to the fault is on disk: the ramp the runtime accepted, the writes before it
    journal = chaos.journal("ard1")
    assert any(e["op"] == "ramp" and e["outcome"] == "ok" and e["value"] == -100.0 for e in journal[-5:]), journal[-5:]
    assert ramp["state"] == "running"
    guard_journal = chaos.journal("guard")
    assert any(e["op"] == "trip" and e["signal"] == "coil_current_set,coil_enable" for e in guard_journal[-10:])


def test_sigkill_of_a_node_kernel_during_a_ramp_leaves_the_ramp_running(chaos):
    record = chaos.record["nodes"]["ard1"]
    kc = BlockingKernelClient()
    kc.load_connection_file(record["connection_file"])
    kc.start_channels(hb=False, stdin=False, control=False)
    try:
        kc.execute_interactive('node["probe_bias"].ramp(-40, rate=40)', timeout=30)
    finally:
        kc.stop_channels()
    started = time.monotonic()
    os.kill(record["kernel_pid"], signal.SIGKILL)
    took = chaos.until_world(lambda w: abs(w["probe_bias"] + 40) < 0.6, 1.0 + MARGIN + 0.5,
                             "the ramp finished by the runtime", since=started)
    assert took > 0.5  # it was a ramp (1 s at 40 V/s), not a step
    assert eventually(lambda: chaos.client("ard1").ramps()[-1]["state"] == "done", timeout=2)
    assert not chaos.guard_trips() and not chaos.node_trips("ard1")  # nothing tripped: the runtime held on


def test_a_runaway_cell_in_a_node_kernel_delays_no_ramp_no_lease_and_no_trip(chaos):
    record = chaos.record["nodes"]["plc1"]
    kc = BlockingKernelClient()
    kc.load_connection_file(record["connection_file"])
    kc.start_channels(hb=False, stdin=False, control=False)
    try:
        kc.execute("while True:\n    pass")  # never answers until interrupted
        time.sleep(0.3)
        plc = chaos.client("plc1")
        plc.write("coil_enable", 1)
        ramp = plc.ramp("coil_current_set", 150.0, 300)  # 0.5 s, run by the runtime
        took = chaos.until_world(lambda w: w["coil_current_cmd"] == 150.0, 0.5 + 0.3, "the ramp", since=time.monotonic())
        assert ramp["state"] == "running" and took >= 0.4
        time.sleep(3 * LEASE)  # several lease periods: the guard's lease holds, nothing trips
        assert not chaos.node_trips("plc1") and chaos.world()["coil_current_cmd"] == 150.0
        crossed = chaos.set_world("cooling_flow", 1.0)  # an interlock condition crosses while the cell spins
        took = chaos.until_world(lambda w: w["coil_current_cmd"] == 0.0, GUARD_POLL + PLC_SCAN + MARGIN,
                                 "the coil current after the cooling failed", since=crossed)
        assert took <= GUARD_POLL + PLC_SCAN + MARGIN + 0.05, took
        os.kill(record["kernel_pid"], signal.SIGINT)  # what the notebook's interrupt button does
        reply = kc.get_shell_msg(timeout=10)
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
    finally:
        kc.stop_channels()


def test_the_loss_of_the_redpitaya_runtime_drops_the_rf_permit_through_the_guard_and_the_plc(chaos):
    plc, rp = chaos.client("plc1"), chaos.client("rp1")
    plc.write("rf_enable", 1)
    rp.ramp("rf_power", 100.0, 400)
    chaos.until_world(lambda w: w["rf_permit"] == 1.0 and w["rf_drive"] > 0.2, 3, "RF on", since=time.monotonic())
    os.kill(rp.ping()["pid"], signal.SIGKILL)  # the RedPitaya has no watchdog: its drive stays where it was
    killed = time.monotonic()
    bound = ONLINE_TIMEOUT + GUARD_POLL + PLC_SCAN + MARGIN
    took = chaos.until_world(lambda w: w["rf_permit"] == 0.0 and w["rf_forward"] < 1.0, bound,
                             "the RF permit, through the guard and the PLC", since=killed)
    assert took <= bound, took
    assert chaos.world()["rf_drive"] > 0.2  # the drive itself is untouched: the permit is what stopped it
    trip = eventually(lambda: chaos.guard_trips()["rf_permit_needs_rf_drive_runtime"], timeout=2)
    assert trip["values"] == {"rp1.online": 0.0}, trip
    assert eventually(lambda: chaos.guard_trips()["rf_permit_needs_rf_drive_runtime"]["nodes"]["plc1"]["delivered"],
                      timeout=2)
    assert "rf_permit_needs_rf_drive_runtime" in chaos.node_trips("plc1")
    chaos.restart_runtime("rp1")
    chaos.recover()  # re-armed once rp1 answers again, then every node safe
    assert chaos.world()["rf_drive"] == 0.0


def test_sigkill_of_the_plc_runtime_ends_safe_through_the_plc_watchdog(chaos):
    plc = chaos.client("plc1")
    plc.write("coil_enable", 1)
    plc.write("rf_enable", 1)
    plc.ramp("coil_current_set", 60.0, 300)
    chaos.until_world(lambda w: w["coil_current_cmd"] == 60.0 and w["rf_permit"] == 1.0, 3, "coil and RF permit on",
                      since=time.monotonic())
    os.kill(plc.ping()["pid"], signal.SIGKILL)  # nobody feeds the PLC's watchdog word any more
    killed = time.monotonic()
    bound = PLC_WATCHDOG + PLC_SCAN + MARGIN
    took = chaos.until_world(lambda w: w["coil_current_cmd"] == 0.0 and w["rf_permit"] == 0.0, bound,
                             "the PLC's outputs, by its own watchdog", since=killed)
    assert took <= bound, took
    chaos.restart_runtime("plc1")


def test_sigkill_of_the_guard_lets_every_held_node_go_safe_when_its_lease_runs_out(chaos):
    from labrig.supervisor.cluster import guard_command
    from labrig.supervisor.processes import spawn
    from labrig.supervisor.state import write_state
    ard, pi = chaos.client("ard1"), chaos.client("pi1")
    ard.write("beacon", 1)
    pi.write("gas_flow", 4.0)
    chaos.until_world(lambda w: w["beacon"] == 1.0 and w["gas_valve"] > 0.05, 3, "outputs on", since=time.monotonic())
    os.kill(chaos.guard().ping()["pid"], signal.SIGKILL)
    killed = time.monotonic()
    try:
        bound = LEASE + MARGIN  # each node checks its lease deadline in its own socket loop
        took = chaos.until_world(lambda w: w["beacon"] == 0.0 and w["gas_valve"] == 0.0, bound,
                                 "the outputs of the nodes the guard held", since=killed)
        assert took <= bound, took
        for node in chaos.rig.nodes:  # each lease ran out on its own node's clock, a renewal apart
            assert eventually(lambda: "lease_lost" in chaos.node_trips(node), timeout=2), node
    finally:
        # a new guard takes the leases again; the operator re-arms (recover does) once it holds them
        record = chaos.record
        proc = spawn(guard_command(str(chaos.rig_path), chaos.dir, broker=None), name="guard",
                     log_dir=chaos.dir / "logs")
        record["guard"]["pid"] = proc.pid
        write_state("cluster", record, chaos.dir)
        assert eventually(lambda: _guard_answers(chaos), timeout=15)


def _guard_answers(chaos) -> bool:
    from labrig.drivers.errors import LabrigError
    from labrig.supervisor.guard import guard_record
    record = guard_record(chaos.dir)
    if record is None:
        return False
    try:
        return all(n["online"] for n in chaos.client_at(record["endpoint"], "guard").status()["nodes"].values())
    except LabrigError:
        return False

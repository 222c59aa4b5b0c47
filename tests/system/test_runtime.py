"""The node runtime against the simulated testbed, reached through its ZeroMQ client."""
from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import pytest

from labrig.drivers.errors import ConfigError, NodeUnavailable, RangeError
from labrig.simulators.world import world_control
from labrig.supervisor.runtime import AsyncRuntimeClient, RuntimeClient
from labrig.supervisor.runtime.main import serve_node
from labrig.supervisor.state import read_state
from support import eventually

# runs simulator processes: with the other process-heavy modules, one at a time (scripts/test)
pytestmark = pytest.mark.processes


@pytest.fixture
def runtime(testbed, ishtar_path):
    """The ard1 runtime, in a thread of this process, on the module's testbed."""
    directory = Path(testbed["state_dir"])
    ready, stop = threading.Event(), threading.Event()
    errors = []

    def run():
        try:
            serve_node(str(ishtar_path), "ard1", sim=True, directory=directory, broker="none", ready=ready, stop=stop)
        except Exception as exc:  # surfaced by the fixture
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=run, name="runtime-ard1")
    thread.start()
    assert ready.wait(15) and not errors, errors
    record = read_state("node-ard1", directory)
    try:
        yield record
    finally:
        stop.set()
        thread.join(10)
        assert not thread.is_alive()


def world(testbed, name):
    return world_control(testbed["world"]["endpoints"]["control"], {"op": "snapshot"})["state"][name]


def test_read_write_ramp_status(runtime, testbed):
    with RuntimeClient(runtime["endpoint"], node="ard1") as ard:
        assert ard.ping()["node"] == "ard1"
        assert isinstance(ard.read("langmuir_I"), float)
        values = ard.read_many()
        assert set(values) == {"langmuir_I", "cooling_flow", "cooling_ok", "probe_bias", "beacon"}
        assert ard.write("probe_bias", -20.0) == -20.0
        assert eventually(lambda: abs(world(testbed, "probe_bias") + 20.0) < 0.6)
        ramp = ard.ramp("probe_bias", -60.0, rate=100.0)
        assert ramp["state"] == "running" and ramp["start"] == -20.0
        assert eventually(lambda: ard.ramps()[-1]["state"] == "done", timeout=3)
        assert abs(world(testbed, "probe_bias") + 60.0) < 0.6
        status = ard.status()
        assert status["signals"]["probe_bias"]["setpoint"] == -60.0
        assert status["signals"]["probe_bias"]["limits"] == [-100.0, 50.0]
        safe = ard.safe()
        assert safe["probe_bias"]["ok"] and safe["probe_bias"]["value"] == 0.0


def test_refusals_name_what_is_allowed(runtime):
    with RuntimeClient(runtime["endpoint"], node="ard1") as ard:
        with pytest.raises(ConfigError, match=r"no signal 'langmuir_i'.*langmuir_I"):
            ard.read("langmuir_i")
        with pytest.raises(ConfigError, match="is an input"):
            ard.write("langmuir_I", 1.0)
        with pytest.raises(RangeError, match=r"outside its limits \[-100, 50\] V"):
            ard.write("probe_bias", 70.0)
        with pytest.raises(RangeError, match="exceeds its max slew 500 V/s"):
            ard.ramp("probe_bias", -10.0, rate=1000.0)
        with pytest.raises(RangeError, match="finite number is required"):
            ard.write("probe_bias", float("nan"))
        with pytest.raises(ConfigError, match="unknown operation"):
            ard.call("format_disk")


def test_async_client(runtime):
    import asyncio

    async def main():
        client = AsyncRuntimeClient(runtime["endpoint"], node="ard1")
        try:
            return await client.read("cooling_flow")
        finally:
            client.close()
    assert asyncio.run(main()) == pytest.approx(6.0, abs=0.05)


def test_a_dead_runtime_fails_in_bounded_time_naming_the_node():
    import zmq
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.ROUTER)
    port = sock.bind_to_random_port("tcp://127.0.0.1")  # a peer that never answers
    try:
        client = RuntimeClient(f"tcp://127.0.0.1:{port}", node="rp1", timeout=0.5, last_heartbeat=lambda: time.time() - 7)
        start = time.monotonic()
        with pytest.raises(NodeUnavailable, match=r"node 'rp1' did not answer 'read' within 0.5 s.*last heartbeat 7"):
            client.read("rf_forward")
        assert time.monotonic() - start < 1.0
        client.close()
    finally:
        sock.close(0)
    nobody = RuntimeClient("tcp://127.0.0.1:9", node="ard1", timeout=0.3)
    with pytest.raises(NodeUnavailable, match="ard1"):
        nobody.ping()
    nobody.close()


def test_binding_another_interface_without_curve_is_refused(testbed, ishtar_path):
    with pytest.raises(ConfigError, match="needs CurveZMQ keys"):
        serve_node(str(ishtar_path), "gauge1", sim=True, directory=Path(testbed["state_dir"]), broker="none",
                   bind="0.0.0.0")


def test_curve_keys_encrypt_and_a_client_without_the_server_key_gets_nothing(testbed, ishtar_path, tmp_path):
    from typer.testing import CliRunner
    from labrig.supervisor.cli import app
    from labrig.supervisor.processes import spawn, stop_pid
    from labrig.supervisor.runtime.locate import RuntimeLink
    keys = tmp_path / "keys"
    assert CliRunner().invoke(app, ["keys", "generate", str(keys)]).exit_code == 0
    assert (keys / "server.key_secret").stat().st_mode & 0o077 == 0
    directory = Path(testbed["state_dir"])
    proc = spawn(["-m", "labrig.supervisor.cli", "node", "serve", str(ishtar_path), "gauge1", "--sim",
                  "--broker", "none", "--curve-keys", str(keys), "--state-dir", str(directory)],
                 name="node-gauge1", log_dir=directory / "logs")
    try:
        record = eventually(lambda: (r := read_state("node-gauge1", directory)) and r["pid"] == proc.pid and r,
                            timeout=15)
        assert record and record["public_key"]
        link = RuntimeLink("gauge1", directory, timeout=1.0)  # takes the server key from the state record
        assert link.client.read("gauge_setpoint") == pytest.approx(5.0)
        link.close()
        with RuntimeClient(record["endpoint"], node="gauge1", timeout=0.5) as plain:  # no server key: no answer
            with pytest.raises(NodeUnavailable):
                plain.ping()
    finally:
        stop_pid(proc.pid)
        proc.wait(5)


def test_node_install_writes_a_systemd_unit(ishtar_path, tmp_path):
    from typer.testing import CliRunner
    from labrig.supervisor.cli import app
    result = CliRunner().invoke(app, ["node", "install", str(ishtar_path), "plc1", "--output", str(tmp_path),
                                      "--port", "5601"])
    assert result.exit_code == 0, result.output
    unit = (tmp_path / "labrig-node-plc1.service").read_text()
    assert "ExecStart=" in unit and "node serve" in unit and " plc1 " in unit and "--port 5601" in unit
    assert "Restart=on-failure" in unit and "Nice=-5" in unit
    bad = CliRunner().invoke(app, ["node", "install", str(ishtar_path), "plc9", "--output", str(tmp_path)])
    assert bad.exit_code == 2 and "did you mean plc1" in bad.output


def test_every_write_ramp_refusal_and_safe_state_is_in_the_audit_journal(runtime, testbed):
    from labrig.supervisor.runtime.audit import read_journal
    with RuntimeClient(runtime["endpoint"], node="ard1", client="notebook-7") as ard:
        ard.write("probe_bias", -10.0)
        ard.ramp("probe_bias", -12.0, rate=50.0)
        with pytest.raises(RangeError):
            ard.write("probe_bias", 99.0)
        ard.safe()
        entries = ard.audit(count=10)
    ops = [(e["op"], e["signal"], e["value"], e["outcome"]) for e in entries]
    assert ("write", "probe_bias", -10.0, "ok") in ops
    assert ("ramp", "probe_bias", -12.0, "ok") in ops
    assert ("write", "probe_bias", 99.0, "refused") in ops
    assert any(op == "safe" and outcome == "ok" for op, _, _, outcome in ops)
    refused = next(e for e in entries if e["outcome"] == "refused")
    assert "outside its limits [-100, 50]" in refused["detail"]
    assert all(e["client"] == "notebook-7" and e["user"] and e["node"] == "ard1" for e in entries)
    # on disk, in order, whatever happens to the runtime next
    on_disk = read_journal(Path(testbed["state_dir"]) / "audit" / "ard1.jsonl")
    assert [e["t"] for e in on_disk] == sorted(e["t"] for e in on_disk)
    assert [(e["op"], e["value"]) for e in on_disk[-4:]] == [(e["op"], e["value"]) for e in entries[-4:]]


@contextlib.contextmanager
def runtime_in_thread(node, testbed, ishtar_path):
    """A node's runtime in a thread of this process, on the module's testbed; its state record."""
    directory = Path(testbed["state_dir"])
    ready, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=serve_node, args=(str(ishtar_path), node), name=f"runtime-{node}",
                              kwargs=dict(sim=True, directory=directory, broker="none", ready=ready, stop=stop))
    thread.start()
    try:
        assert ready.wait(15)
        yield read_state(f"node-{node}", directory)
    finally:
        stop.set()
        thread.join(10)


@pytest.fixture
def rp1(testbed, ishtar_path):
    with runtime_in_thread("rp1", testbed, ishtar_path) as record:
        yield record


def test_a_local_interlock_trips_latches_refuses_and_rearms_only_when_it_holds(rp1, testbed, ishtar):
    from labrig.drivers.errors import Refused
    control = testbed["world"]["endpoints"]["control"]
    # the PLC grants the RF permit on the host's request (rf_enable), only while a host feeds its
    # watchdog word: its driver does
    with ishtar.open_driver("plc1", sim=True, sim_state=testbed) as plc, \
            RuntimeClient(rp1["endpoint"], node="rp1", client="operator") as rp:
        plc.write("rf_enable", 1)
        assert eventually(lambda: plc.read("rf_permit") == 1, timeout=3)
        assert rp.trips() == []
        # RF into an empty vessel: nothing absorbs it, the matching network reflects most of it
        assert world(testbed, "gas_valve") == 0.0
        rp.ramp("rf_power", 400.0, 400)
        # listed as soon as it latches (writes are refused from then on); `safe` fills as outputs go safe
        trips = eventually(lambda: [t for t in rp.trips() if t["safe"].get("rf_power")], timeout=3)
        assert trips and trips[0]["interlock"] == "rf_reflected_limit", trips
        assert trips[0]["values"]["rf_reflected"] >= 300 and trips[0]["safe"]["rf_power"]["ok"]
        assert eventually(lambda: world(testbed, "rf_drive") == 0.0, timeout=2)  # the RF drive went to 0
        with pytest.raises(Refused, match="interlock rf_reflected_limit tripped.*re-arm it first"):
            rp.write("rf_power", 100.0)
        assert rp.write("rf_power", 0.0) == 0.0  # the safe value is always allowed
        # the condition still fails (a reflected-power reading stuck high): re-arm is refused, saying why
        world_control(control, {"op": "fault", "kind": "sensor", "name": "rf_reflected", "mode": "offset",
                                "value": 400.0})
        try:
            assert eventually(lambda: rp.read("rf_reflected") >= 300, timeout=3)  # the runtime sees it too
            with pytest.raises(Refused, match="cannot re-arm rf_reflected_limit: it still requires rf_reflected < 300"):
                rp.rearm("rf_reflected_limit")
        finally:
            world_control(control, {"op": "fault", "kind": "sensor", "name": "rf_reflected", "mode": "clear"})
        assert eventually(lambda: rp.read("rf_reflected") < 300, timeout=3)
        assert rp.rearm("rf_reflected_limit")["rearmed"] is True
        assert rp.trips() == []
        assert rp.write("rf_power", 20.0) == 20.0  # little enough to stay under the limit
        rp.safe()
        ops = [(e["op"], e["outcome"]) for e in rp.audit(20)]
        assert ("trip", "ok") in ops and ("rearm", "refused") in ops and ("rearm", "ok") in ops
        assert ops.count(("write", "refused")) >= 1
    with pytest.raises(ConfigError, match="no interlock 'nope'"):
        RuntimeClient(rp1["endpoint"], node="rp1").rearm("nope")


def test_the_plc_node_trips_the_coil_when_the_door_opens(testbed, ishtar_path):
    from labrig.drivers.errors import Refused
    control = testbed["world"]["endpoints"]["control"]
    with runtime_in_thread("plc1", testbed, ishtar_path) as record, \
            RuntimeClient(record["endpoint"], node="plc1", client="operator") as plc:
        plc.write("coil_enable", 1)
        plc.ramp("coil_current_set", 50.0, 300)
        assert eventually(lambda: world(testbed, "coil_current_cmd") == 50.0, timeout=3)
        world_control(control, {"op": "set", "name": "door_closed", "value": 0})  # someone opens the door
        try:
            assert eventually(lambda: "coil_needs_door_closed" in {t["interlock"] for t in plc.trips()}, timeout=3)
            assert plc.read("coil_enable") == 0.0
            assert eventually(lambda: world(testbed, "coil_current_cmd") == 0.0, timeout=3)  # no coil current
            with pytest.raises(Refused, match="coil_needs_door_closed"):
                plc.write("coil_enable", 1)
            with pytest.raises(Refused, match="still requires door_closed == 1"):
                plc.rearm("coil_needs_door_closed")
        finally:
            world_control(control, {"op": "set", "name": "door_closed", "value": 1})
        assert eventually(lambda: plc.read("door_closed") == 1.0, timeout=3)
        assert plc.rearm("coil_needs_door_closed")["rearmed"] is True
        plc.safe()


def test_a_direct_write_may_only_step_as_far_as_the_slew_allows(runtime, testbed):
    with RuntimeClient(runtime["endpoint"], node="ard1", client="operator") as ard:
        assert ard.write("probe_bias", -20.0) == -20.0  # 20 V: within 500 V/s x 50 ms
        with pytest.raises(RangeError, match=r"probe_bias: a direct write from -20 to -80 V is a step of 60 V.*"
                                             r"allows steps of 25 V.*ramp\('probe_bias', -80, rate<=500\)"):
            ard.write("probe_bias", -80.0)
        assert ard.status()["signals"]["probe_bias"]["setpoint"] == -20.0  # nothing reached the board
        assert ard.write("probe_bias", 0.0) == 0.0  # back to safe: never refused, whatever the step
        assert ("write", "refused") in [(e["op"], e["outcome"]) for e in ard.audit(5)]


def test_a_node_whose_lease_runs_out_goes_safe_and_latches(runtime, testbed):
    from labrig.drivers.errors import Refused
    with RuntimeClient(runtime["endpoint"], node="ard1", client="operator") as ard, \
            RuntimeClient(runtime["endpoint"], node="ard1", client="guard-test") as guard:
        ard.write("beacon", 1)
        ard.write("probe_bias", -20.0)
        assert guard.call("lease", holder="guard-test", ttl=0.3)["new"] is True
        for _ in range(5):  # held: renewed in time, nothing happens
            time.sleep(0.1)
            guard.call("lease", holder="guard-test", ttl=0.3)
        assert ard.trips() == [] and ard.read("beacon") == 1.0
        lost = time.monotonic()  # the holder stops renewing: the node goes safe on its own
        trips = eventually(ard.trips, timeout=3)
        took = time.monotonic() - lost
        assert trips[0]["interlock"] == "lease_lost" and trips[0]["layer"] == "lease", trips
        assert "guard-test" in trips[0]["reason"] and took < 0.3 + 0.5
        assert ard.read("beacon") == 0.0 and abs(world(testbed, "probe_bias")) < 0.6
        with pytest.raises(Refused, match="lease_lost"):
            ard.write("beacon", 1)
        assert ard.call("leases") == {}  # a lost lease is dropped: no one holds the node now
        assert ard.rearm("lease_lost")["rearmed"] is True
        assert ard.write("beacon", 1) == 1.0
        # a holder that leaves cleanly releases its lease: the node is not forced safe
        guard.call("lease", holder="guard-test", ttl=0.3)
        assert guard.call("release", holder="guard-test")["released"] is True
        time.sleep(0.6)
        assert ard.trips() == [] and ard.read("beacon") == 1.0
        ops = [e["op"] for e in ard.audit(20)]
        assert "lease" in ops and "trip" in ops and "release" in ops
        ard.safe()


def test_a_trip_from_the_guard_latches_until_the_guard_rearms_it(runtime, testbed):
    from labrig.drivers.errors import Refused
    with RuntimeClient(runtime["endpoint"], node="ard1", client="operator") as ard:
        ard.write("beacon", 1)
        trip = ard.call("trip", interlock="beacon_needs_coil", outputs=["beacon"], reason="coil current lost",
                        values={"coil_current": 0.0})
        assert trip["layer"] == "supervisor" and trip["safe"]["beacon"]["ok"]
        assert ard.read("beacon") == 0.0
        with pytest.raises(Refused, match="beacon_needs_coil tripped"):
            ard.write("beacon", 1)
        with pytest.raises(Refused, match="spans nodes.*rig.rearm"):
            ard.rearm("beacon_needs_coil")
        with pytest.raises(ConfigError, match="node 'ard1' has no signal 'rf_power'"):
            ard.call("trip", interlock="x", outputs=["rf_power"])
        assert ard.call("rearm", interlock="beacon_needs_coil", by_guard=True)["rearmed"] is True
        assert ard.write("beacon", 1) == 1.0
        ard.safe()


def test_an_override_suspends_an_interlock_for_a_while_journaled_and_then_ends_by_itself(testbed, ishtar_path):
    from labrig.drivers.errors import Refused
    control = testbed["world"]["endpoints"]["control"]
    with runtime_in_thread("plc1", testbed, ishtar_path) as record, \
            RuntimeClient(record["endpoint"], node="plc1", client="commissioning") as plc:
        with pytest.raises(ConfigError, match="give the reason"):
            plc.call("override", interlock="coil_needs_door_closed", seconds=1)
        with pytest.raises(RangeError, match=r"in \[0, 600\]"):
            plc.call("override", interlock="coil_needs_door_closed", seconds=3600, reason="all day")
        with pytest.raises(ConfigError, match="no interlock 'coil_needs_cooling' to override here"):
            plc.call("override", interlock="coil_needs_cooling", seconds=1, reason="x")
        world_control(control, {"op": "set", "name": "door_closed", "value": 0})
        try:
            assert eventually(lambda: "coil_needs_door_closed" in {t["interlock"] for t in plc.trips()}, timeout=3)
            result = plc.call("override", interlock="coil_needs_door_closed", seconds=1.0, reason="coil test, door open")
            assert result["overridden"] and 0.5 < result["left"] <= 1.0
            assert plc.rearm("coil_needs_door_closed")["rearmed"]  # the override lets the re-arm through
            assert plc.write("coil_enable", 1) == 1.0  # the door is open: only the override allows this
            assert plc.status()["overrides"][0]["reason"] == "coil test, door open"
            # it ends by itself: the interlock is judged again and trips on the open door
            assert eventually(lambda: "coil_needs_door_closed" in {t["interlock"] for t in plc.trips()}, timeout=3)
            assert plc.call("overrides") == []
            with pytest.raises(Refused):
                plc.write("coil_enable", 1)
        finally:
            world_control(control, {"op": "set", "name": "door_closed", "value": 1})
        assert eventually(lambda: plc.read("door_closed") == 1.0, timeout=3)
        for trip in plc.trips():
            plc.rearm(trip["interlock"])
        ops = [(e["op"], e["outcome"]) for e in plc.audit(30)]
        assert ("override", "refused") in ops and ("override", "ok") in ops and ("override_end", "ok") in ops
        plc.safe()

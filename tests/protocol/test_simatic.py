"""The Simatic S7 bus end to end: tags, the snap7 driver, the simulated PLC and its link faults."""
from __future__ import annotations

import threading
import time

import pytest

from labrig.drivers.contract import ChannelSpec, open_driver
from labrig.drivers.errors import ConfigError, DeviceError, LinkClosed, LinkError, LinkTimeout, RangeError
from labrig.drivers.simatic.driver import SimaticDriver
from labrig.drivers.simatic.tags import parse_tag
from labrig.simulators.simatic import DEFAULT_RIG, PlcProgram, SimaticSimulator, Watchdog, plant
from labrig.supervisor.rig.plc import plc_program
from labrig.supervisor.rig import Rig
from support import wait_for

TIMEOUT = 0.5  # s, the driver timeout in these tests
SNAP7_TIMEOUT = 5.0  # s, what snap7 alone would wait on a dead socket

CHANNELS = [
    ChannelSpec("coil_I_set", "DB1.DBD0", "out", "A", raw_range=(0.0, 600.0), safe_value=0.0),
    ChannelSpec("coil_I", "DB1.DBD4", "in", "A"),
    ChannelSpec("pressure", "DB1.DBD8", "in", "Pa"),
    ChannelSpec("door_closed", "DB1.DBX12.0"),
    ChannelSpec("vacuum_ok", "DB1.DBX12.1"),
    ChannelSpec("rf_permit", "DB1.DBX12.2"),
    ChannelSpec("watchdog_ok", "DB1.DBX12.3"),
    ChannelSpec("watchdog_word", "DB1.DBW14", "out"),
    ChannelSpec("coil_enable", "DB1.DBX16.0", "out", safe_value=0.0),
    ChannelSpec("rf_enable", "DB1.DBX16.1", "out", safe_value=0.0),
    ChannelSpec("plc_trips", "DB1.DBW18"),
]



def s7_threads():
    return [t for t in threading.enumerate() if t.name.startswith(("s7-", "plc-scan"))]




@pytest.fixture
def plc(world):
    sim = SimaticSimulator(world, node="plc", options={"watchdog_timeout": "0.5"}).start()
    try:
        yield sim
    finally:
        sim.close()
        # every thread we started (scan, relay, link workers, keepalives) is gone
        wait_for(lambda: not s7_threads(), 2.0, f"threads left: {s7_threads()}")


@pytest.fixture
def drivers(plc):
    opened = []

    def make(**options):
        options.setdefault("timeout", TIMEOUT)
        options.setdefault("name", "plc")
        drv = SimaticDriver(plc.url, CHANNELS, **options)
        opened.append(drv)
        return drv

    try:
        yield make
    finally:
        for drv in opened:
            drv.close()


# -- tags ------------------------------------------------------------------------
@pytest.mark.parametrize("address, expected", [
    ("DB1.DBD0", (1, 0, 0, "REAL", 4)),
    ("DB1.DBD0:DINT", (1, 0, 0, "DINT", 4)),
    ("db1.dbd4:real", (1, 4, 0, "REAL", 4)),
    ("DB1.DBW14", (1, 14, 0, "INT", 2)),
    ("DB2.DBW6:WORD", (2, 6, 0, "WORD", 2)),
    ("DB1.DBX12.0", (1, 12, 0, "BOOL", 1)),
    ("DB1.DBX16.7", (1, 16, 7, "BOOL", 1)),
    ("DB1.DBB3", (1, 3, 0, "BYTE", 1)),
])
def test_tag_parsing(address, expected):
    tag = parse_tag(address)
    assert (tag.db, tag.offset, tag.bit, tag.type, tag.size) == expected


@pytest.mark.parametrize("address, hint", [
    ("M0.0", "allowed"), ("DB1.DBX12", "bit 0..7"), ("DB1.DBX12.8", "bit 0..7"),
    ("DB0.DBD0", "1..65535"), ("DB1.DBW14:REAL", "INT, WORD, UINT"), ("DB1.DBD0.1", "only DBX"),
    ("DB1.DBD0:FLOAT", "REAL, DINT"), ("", "allowed"),
])
def test_bad_tag_names_channel_and_allowed_forms(address, hint):
    with pytest.raises(ConfigError, match=hint) as err:
        parse_tag(address, channel="coil_I")
    assert "coil_I" in str(err.value)


def test_tag_encoding_is_big_endian_s7():
    real, dint, word = parse_tag("DB1.DBD0"), parse_tag("DB1.DBD0:DINT"), parse_tag("DB1.DBW14")
    assert real.encode(200.0) == b"\x43\x48\x00\x00"
    assert real.decode(b"\x43\x48\x00\x00") == 200.0
    assert dint.encode(-5) == b"\xff\xff\xff\xfb" and dint.decode(b"\xff\xff\xff\xfb") == -5
    assert word.encode(258) == b"\x01\x02" and word.decode(b"\xff\xfe") == -2
    with pytest.raises(RangeError, match="INT"):
        word.encode(40000)
    flag = parse_tag("DB1.DBX12.3")
    assert flag.encode(1, b"\x01") == b"\x09"  # sets bit 3, keeps bit 0
    assert flag.encode(0, b"\xff") == b"\xf7"
    assert flag.decode(b"\x08") == 1.0 and flag.decode(b"\xf7") == 0.0
    image = bytearray(32)
    real.put(image, 12.5)
    flag.put(image, True)
    assert real.get(image) == 12.5 and flag.get(image) == 1.0 and image[12] == 0x08


def scan(program, db, *, watchdog_ok=True, **inputs):
    """Put inputs (by signal name) into a DB image, run one scan; (rf_permit, coil_cmd) to the plant."""
    for name, value in inputs.items():
        program.tags[name][0].put(db, value)
    effective = program.run(db, watchdog_ok=watchdog_ok)
    return plant(effective, db, watchdog_ok)


def test_plc_program_latches_until_the_host_asks_for_safe():
    program = PlcProgram(Rig.from_text(DEFAULT_RIG), "plc")
    db = bytearray(32)
    ok = dict(plc_pressure=0.4, door_closed=1, coil_current_set=200.0, coil_enable=1, rf_enable=1)
    assert scan(program, db, **ok) == (1.0, 200.0)
    assert scan(program, db, coil_current_set=9999.0) == (1.0, 600.0)  # clamped to the supply's span
    assert scan(program, db, coil_current_set=float("nan")) == (1.0, 0.0)
    assert scan(program, db, watchdog_ok=False, **ok) == (0.0, 0.0)  # stale watchdog: all safe, not latched
    assert program.latched == frozenset() and scan(program, db, **ok) == (1.0, 200.0)
    # the door opens: both PLC interlocks force their outputs safe and latch
    assert scan(program, db, door_closed=0) == (0.0, 0.0)
    assert program.latched == {"rf_enable_needs_vacuum_and_door", "coil_needs_door_closed"}
    assert program.trip_word() == 0b11  # bits as `labrig plc tags` numbers them
    assert scan(program, db, door_closed=1) == (0.0, 0.0)  # closing it again is not enough ...
    assert scan(program, db, rf_enable=0) == (0.0, 0.0)  # ... the host must write the safe value
    assert program.latched == {"coil_needs_door_closed"} and program.trip_word() == 0b10
    assert scan(program, db, rf_enable=1) == (1.0, 0.0)  # then RF may come back; the coil is still latched
    assert scan(program, db, coil_enable=0) == (1.0, 0.0) and program.latched == frozenset()
    assert scan(program, db, coil_enable=1) == (1.0, 200.0)
    # a safe request while the condition fails does not clear the latch
    assert scan(program, db, plc_pressure=float("nan")) == (0.0, 200.0)  # NaN is not a vacuum
    assert scan(program, db, rf_enable=0) == (0.0, 200.0)
    assert program.latched == {"rf_enable_needs_vacuum_and_door"}
    assert scan(program, db, plc_pressure=0.4) == (0.0, 200.0) and program.latched == frozenset()


def test_the_default_program_is_the_example_rigs(ishtar):
    def essentials(program):
        tags = [(t["signal"], t["address"], t["direction"], t["safe"]) for t in program["plcs"]["plc1"]["tags"]]
        locks = [(i["interlock"], i["requires"], i["forces_safe"], i["latch"], i["bit"]) for i in program["interlocks"]]
        return tags, locks, program["plcs"]["plc1"]["watchdog"]["address"]
    default = Rig.from_text(DEFAULT_RIG.replace('"plc"', '"plc1"').replace("[nodes.plc]", "[nodes.plc1]"))
    assert essentials(plc_program(default)) == essentials(plc_program(ishtar))


def test_a_bad_rig_for_the_plc_is_refused(ishtar, ishtar_path):
    with pytest.raises(ConfigError, match="coil_enable.*outside the simulated PLC's DB1 of 16 bytes"):
        PlcProgram(ishtar, "plc1", db_size=16)
    with pytest.raises(ConfigError, match="no simatic node 'pi1'"):
        SimaticSimulator(None, node="pi1", options={"rig": str(ishtar_path)})


def test_watchdog():
    dog = Watchdog(timeout=1.0)
    assert not dog.update(0, now=0.0)  # not OK until the host changes the word
    assert not dog.update(0, now=0.5)
    assert dog.update(1, now=0.6) and dog.update(1, now=1.5)
    assert not dog.update(1, now=1.6)  # unchanged for the timeout
    assert dog.update(2, now=1.7)  # recovers when the word changes again


def test_bad_addresses_and_urls_raise_config_error():
    bad = [ChannelSpec("coil_I", "DB1.DBD4.2")]
    with pytest.raises(ConfigError, match="coil_I.*allowed"):
        SimaticDriver("s7://127.0.0.1:1?rack=0&slot=1", bad)  # fails before any connection
    with pytest.raises(ConfigError, match="unknown scheme"):
        SimaticDriver("tcp://127.0.0.1:102", [])
    with pytest.raises(ConfigError, match="rack"):
        SimaticDriver("s7://127.0.0.1:102?rack=9&slot=1", [])
    with pytest.raises(ConfigError, match="watchdog_tag"):
        SimaticDriver("s7://127.0.0.1:102", [], watchdog_tag="DB1.DBD0")


# -- driver vs the simulated PLC ---------------------------------------------------
def test_coil_setpoint_reaches_the_coil(plc, world):
    drv = open_driver("simatic", plc.url, CHANNELS, timeout=TIMEOUT, name="plc")
    try:
        assert isinstance(drv, SimaticDriver)
        drv.write("coil_I_set", 200.0)
        drv.write("coil_enable", 1)
        assert drv.read("coil_I_set") == 200.0 and drv.read("coil_enable") == 1.0
        wait_for(lambda: abs(drv.read("coil_I") - 200.0) < 4.0, 2.0, "DBD4 within 2% of 200 A")
        assert drv.read("watchdog_ok") == 1.0
        assert world.get("coil_current_cmd") == 200.0
        assert abs(world.get("coil_current") - drv.read("coil_I")) < 10.0
        # two noisy samples (the PLC's last scan, the world now): at the 1e-3 Pa base their difference has
        # sigma ~2e-5 Pa (plasma.NOISE), so 1e-4 Pa is ~5 sigma
        assert drv.read("pressure") == pytest.approx(world.get("pressure"), rel=0.05, abs=1e-4)
        # the keepalive keeps changing DBW14, whatever else writes it
        drv.write_raw("watchdog_word", 7)
        word = wait_for(lambda: drv.read("watchdog_word") != 7 and drv.read("watchdog_word"), 1.0,
                        "the keepalive changes DBW14")
        assert word != 7
    finally:
        drv.close()


def test_bool_write_keeps_other_bits_of_its_byte(plc, drivers):
    drv = drivers(watchdog_tag=None)
    extra = SimaticDriver(plc.url, [ChannelSpec("b16_5", "DB1.DBX16.5", "out"),
                                    ChannelSpec("byte16", "DB1.DBB16")], timeout=TIMEOUT, watchdog_tag=None)
    try:
        extra.write("b16_5", 1)
        drv.write("coil_enable", 1)
        assert extra.read("byte16") == 0b00100001
        drv.write("coil_enable", 0)
        assert extra.read("byte16") == 0b00100000
    finally:
        extra.close()


def test_rf_permit_needs_the_hosts_request_and_latches_on_the_door(plc, drivers, world):
    drv = drivers()
    wait_for(lambda: drv.read("watchdog_ok") == 1.0, 1.0, "the host feeds the watchdog")
    assert drv.read("rf_permit") == 0.0 and world.get("rf_permit") == 0.0  # nobody asked for RF
    drv.write("rf_enable", 1)
    wait_for(lambda: drv.read("rf_permit") == 1.0, 0.5, "rf_permit on the host's request, with vacuum and door")
    assert world.get("rf_permit") == 1.0 and drv.read("door_closed") == 1.0

    world.set("door_closed", 0)
    # the PLC drops the permit in the scan that sees the door: DBX12.2 and the world together
    wait_for(lambda: drv.read("door_closed") == 0.0, 0.5, "the PLC sees the door open")
    assert drv.read("rf_permit") == 0.0 and world.get("rf_permit") == 0.0
    assert "rf_enable_needs_vacuum_and_door" in plc.plc_trips and int(drv.read("plc_trips")) & 0b01
    world.set("door_closed", 1)
    wait_for(lambda: drv.read("door_closed") == 1.0, 0.5, "the PLC sees the door closed")
    time.sleep(0.1)  # ten scans: the latch holds although the condition is back and rf_enable is still 1
    assert drv.read("rf_permit") == 0.0 and world.get("rf_permit") == 0.0 and drv.read("rf_enable") == 1.0
    assert "rf_enable_needs_vacuum_and_door" in plc.plc_trips
    drv.write("rf_enable", 0)  # the restart: the host asks for the safe value first ...
    wait_for(lambda: plc.plc_trips == [], 0.5, "the latch clears once the host wrote rf_enable = 0")
    assert int(drv.read("plc_trips")) == 0 and drv.read("rf_permit") == 0.0
    drv.write("rf_enable", 1)  # ... then may enable again
    wait_for(lambda: world.get("rf_permit") == 1.0, 0.5, "RF permitted again after the restart")

    world.fault(kind="sensor", name="pressure", mode="offset", value=10.0)  # the gauge reads > 5 Pa
    wait_for(lambda: drv.read("vacuum_ok") == 0.0, 0.5, "vacuum_ok drops above 5 Pa")
    assert drv.read("rf_permit") == 0.0 and drv.read("pressure") > 5.0
    wait_for(lambda: world.get("rf_permit") == 0.0, 0.5, "world rf_permit off without vacuum")


def test_the_door_latches_the_coil_off(plc, drivers, world):
    drv = drivers()
    drv.write("coil_I_set", 120.0)
    drv.write("coil_enable", 1)
    wait_for(lambda: world.get("coil_current_cmd") == 120.0, 1.0, "coil commanded")
    world.set("door_closed", 0)
    wait_for(lambda: world.get("coil_current_cmd") == 0.0, 0.5, "coil off with the door open")
    world.set("door_closed", 1)
    wait_for(lambda: drv.read("door_closed") == 1.0, 0.5, "the PLC sees the door closed")
    time.sleep(0.1)
    assert world.get("coil_current_cmd") == 0.0 and plc.plc_trips == ["coil_needs_door_closed"]
    drv.write("coil_enable", 0)  # a scan must see the safe request before the latch clears
    wait_for(lambda: plc.plc_trips == [], 0.5, "the latch clears once the host wrote coil_enable = 0")
    drv.write("coil_enable", 1)
    wait_for(lambda: world.get("coil_current_cmd") == 120.0, 0.5, "coil back after the restart")


def test_watchdog_stops_the_coil_when_the_host_stops_feeding(plc, drivers, world):
    host = drivers(watchdog_period=0.1)
    host.write("coil_I_set", 150.0)
    host.write("coil_enable", 1)
    wait_for(lambda: world.get("coil_current_cmd") == 150.0, 1.0, "coil commanded while fed")
    observer = drivers(watchdog_tag=None)  # reads only; never feeds
    host.close()  # the host dies: nobody changes DBW14 any more
    wait_for(lambda: observer.read("watchdog_ok") == 0.0, 1.5, "watchdog_ok false after 0.5 s unfed")
    wait_for(lambda: world.get("coil_current_cmd") == 0.0, 0.5, "coil command 0 in the world")
    assert observer.read("rf_permit") == 0.0 and observer.read("coil_I_set") == 150.0
    # it recovers as soon as the word changes again
    observer.write_raw("watchdog_word", observer.read("watchdog_word") + 1)
    wait_for(lambda: world.get("coil_current_cmd") == 150.0, 0.5, "coil back once the word changes")


def test_unfed_plc_never_drives_the_coil(plc, drivers, world):
    drv = drivers(watchdog_tag=None)
    drv.write("coil_I_set", 100.0)
    drv.write("coil_enable", 1)
    time.sleep(0.2)  # twenty scans
    assert drv.read("watchdog_ok") == 0.0 and world.get("coil_current_cmd") == 0.0


def test_plc_refusal_is_a_device_error_and_keeps_the_link(plc):
    far = [ChannelSpec("beyond_db1", "DB1.DBD100"), ChannelSpec("no_db2", "DB2.DBW0", "out"),
           ChannelSpec("coil_I", "DB1.DBD4")]
    with SimaticDriver(plc.url, far, timeout=TIMEOUT, name="plc", watchdog_tag=None) as drv:
        with pytest.raises(DeviceError, match="beyond_db1"):
            drv.read("beyond_db1")
        with pytest.raises(DeviceError, match="no_db2"):
            drv.write("no_db2", 1)
        link = drv._link
        assert drv.read("coil_I") is not None and drv._link is link  # no reconnect needed


# -- link faults ----------------------------------------------------------------------
def timed(call):
    start = time.monotonic()
    try:
        call()
    except Exception as exc:
        return exc, time.monotonic() - start
    return None, time.monotonic() - start


def test_muted_link_times_out_naming_the_device(plc, drivers, world):
    drv = drivers()
    assert drv.read("coil_I") is not None
    world.fault(kind="link", name="plc", mode="mute")
    for _ in range(2):  # the established link, then a reconnect that gets no answer
        exc, took = timed(lambda: drv.read("coil_I"))
        assert isinstance(exc, LinkTimeout), exc
        assert "plc" in str(exc) and exc.device == "plc"
        assert took < 2 * TIMEOUT
    world.fault(kind="link", name="plc", mode="clear")
    wait_for(lambda: timed(lambda: drv.read("coil_I"))[0] is None, 2 * TIMEOUT, "link back after mute")


def test_silently_dropped_link_raises_within_twice_the_timeout(plc, drivers, capsys):
    drv = drivers()  # the keepalive is feeding the watchdog meanwhile
    drv.read("coil_I")
    plc.cut(silent=True)  # nothing moves, nothing is closed: no FIN, no RST
    exc, took = timed(lambda: drv.read("coil_I"))
    with capsys.disabled():
        print(f"\n  dead S7 link (no FIN) raised {type(exc).__name__} after {took:.3f} s "
              f"(timeout {TIMEOUT} s)")
    assert isinstance(exc, LinkError) and exc.device == "plc"
    assert took < 2 * TIMEOUT < SNAP7_TIMEOUT
    plc.restore()
    wait_for(lambda: timed(lambda: drv.read("coil_I"))[0] is None, 2 * TIMEOUT, "link back after the cut")


def test_closed_link_raises_link_closed_then_reconnects(plc, drivers):
    drv = drivers(watchdog_tag=None)  # no keepalive: this call is the first to meet the cut
    drv.read("coil_I")
    plc.cut(silent=False)
    exc, took = timed(lambda: drv.read("coil_I"))
    assert isinstance(exc, LinkClosed) and exc.device == "plc" and took < TIMEOUT
    assert drv.read("coil_I") is not None  # the next call reconnects


def test_plc_gone_raises_link_closed(plc, drivers):
    drv = drivers()
    plc.close()
    exc, took = timed(lambda: drv.read("coil_I"))
    assert isinstance(exc, LinkClosed) and took < 2 * TIMEOUT
    with pytest.raises(LinkError):
        SimaticDriver(plc.url, CHANNELS, timeout=TIMEOUT)  # nothing listens any more


def test_garbled_link_raises_link_errors_never_hangs(plc, drivers, world):
    drv = drivers(watchdog_tag=None)
    drv.read("coil_I")
    world.fault(kind="link", name="plc", mode="garble")
    errors = []
    for _ in range(5):
        exc, took = timed(lambda: drv.read("coil_I"))
        assert took < 2 * TIMEOUT
        if exc is not None:
            assert isinstance(exc, LinkError), repr(exc)
            errors.append(exc)
    assert errors  # S7 has no checksum, but flipped headers do not parse
    world.fault(kind="link", name="plc", mode="clear")
    wait_for(lambda: timed(lambda: drv.read("coil_I"))[0] is None, 2 * TIMEOUT, "link back after garble")


def test_slow_link_beyond_the_timeout_times_out(plc, drivers, world):
    drv = drivers(watchdog_tag=None)
    world.fault(kind="link", name="plc", mode="slow", value=0.05)
    assert drv.read("coil_I") is not None  # slower, within the timeout: fine
    world.fault(kind="link", name="plc", mode="slow", value=3 * TIMEOUT)
    exc, took = timed(lambda: drv.read("coil_I"))
    assert isinstance(exc, LinkTimeout) and took < 2 * TIMEOUT
    world.fault(kind="link", name="plc", mode="clear")
    wait_for(lambda: timed(lambda: drv.read("coil_I"))[0] is None, 4 * TIMEOUT, "link back after slow")


def test_safe_state_and_close(plc, drivers, world):
    drv = drivers()
    drv.write("coil_I_set", 120.0)
    drv.write("coil_enable", 1)
    results = drv.safe_state()
    assert results["coil_I_set"].ok and results["coil_enable"].ok
    assert drv.read("coil_I_set") == 0.0 and drv.read("coil_enable") == 0.0
    drv.close()
    drv.close()  # idempotent
    with pytest.raises(LinkClosed):
        drv.read("coil_I")
    wait_for(lambda: not [t for t in threading.enumerate() if t.name.endswith(" plc")
                          and t.name.startswith(("s7-link", "s7-watchdog"))],
             2.0, "driver threads gone after close")


def test_the_testbeds_plc_runs_the_rigs_interlocks(ishtar, ishtar_path):
    sim = SimaticSimulator(None, node="plc1", options={"rig": str(ishtar_path)})  # as supervisor.testbed starts it
    assert [lock.name for lock in sim.program.interlocks] == [
        lock["interlock"] for lock in plc_program(ishtar)["interlocks"] if lock["plc"] == "plc1"]

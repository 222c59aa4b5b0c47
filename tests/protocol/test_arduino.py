"""The Arduino bus end to end: framing (PROTOCOL.md), the simulated firmware on a pty,
and the production driver against it (in-process and as separate processes)."""
from __future__ import annotations

import re
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest
import serial

from labrig.drivers.arduino import protocol as p
from labrig.drivers.arduino.driver import ArduinoDriver
from labrig.drivers.arduino.protocol import Cmd, Flag, NakCode, PinMode
from labrig.drivers.calibration import Calibration
from labrig.drivers.contract import ChannelSpec, open_driver
from labrig.drivers.errors import (ConfigError, DeviceError, FrameError, LinkClosed, LinkError,
                                   LinkTimeout, RangeError)
from labrig.simulators.arduino import ArduinoSimulator
from support import eventually

TIMEOUT = 0.4
NODE = "ard1"
LSB_I = 5.0 / 1023 / 100  # A per count of the transimpedance input
LSB_FLOW = 10.0 / 1023
LSB_BIAS = 150.0 / 255

# The example rig's calibrations: exact inverses of the simulated wiring.
CHANNELS = [
    ChannelSpec("langmuir_I", "A0", unit="A", calibration=Calibration(gain=LSB_I, offset=-0.025)),
    ChannelSpec("cooling_flow", "A1", unit="L/min", calibration=Calibration(gain=LSB_FLOW)),
    ChannelSpec("cooling_ok", "D2"),
    ChannelSpec("probe_bias", "PWM9", "out", "V", Calibration(gain=LSB_BIAS, offset=-100.0), safe_value=0.0),
    ChannelSpec("beacon", "D13", "out", safe_value=0.0),
]





@pytest.fixture
def sim(world):
    s = ArduinoSimulator(world, node=NODE).start()
    try:
        yield s
    finally:
        s.close()
        assert not s._thread.is_alive()


@pytest.fixture
def driver(sim):
    d = ArduinoDriver(sim.url, CHANNELS, timeout=TIMEOUT, name=NODE)
    try:
        yield d
    finally:
        d.close()
        assert not d._keepalive._thread.is_alive()


# -- framing ------------------------------------------------------------------
def test_crc_is_ccitt_false():
    assert p.crc16(b"123456789") == 0x29B1


def test_worked_examples_in_protocol_md():
    doc = (Path(p.__file__).parent / "PROTOCOL.md").read_text()
    example = doc[doc.index("Worked example"):]
    request_hex, reply_hex = re.findall(r"`(A5(?: [0-9A-F]{2})+)`", example)[:2]
    assert p.encode(1, Cmd.ANALOG_READ, bytes([0])) == bytes.fromhex(request_hex)
    assert p.decode(bytes.fromhex(reply_hex)) == p.Frame(1, Cmd.ANALOG_READ | p.REPLY, struct.pack("<BH", 0, 511))
    assert "CRC 0xA055" in example and p.crc16(bytes.fromhex(request_hex)[1:5]) == 0xA055


@pytest.mark.parametrize("seq, cmd, payload", [
    (1, Cmd.IDENTIFY, b""),
    (255, Cmd.SET_WATCHDOG, struct.pack("<H", 500)),
    (0, Cmd.STREAM_DATA, p.StreamSample(0b11, 65535, 2**32 - 1, (0, 1023)).pack()),
    (7, p.NAK, bytes([0x13, NakCode.BAD_PIN])),
    (9, 0x42, bytes(range(p.MAX_PAYLOAD))),  # START bytes inside a payload are fine
    (3, Cmd.PWM_WRITE, bytes([9, p.START])),
])
def test_frame_round_trip(seq, cmd, payload):
    wire = p.encode(seq, cmd, payload)
    assert len(wire) == p.OVERHEAD + len(payload) and wire[0] == p.START
    assert p.decode(wire) == p.Frame(seq, cmd, payload)
    assert p.Decoder().feed(wire) == [p.Frame(seq, cmd, payload)]


def test_encode_and_decode_refuse_bad_input():
    with pytest.raises(ValueError, match="at most 32"):
        p.encode(1, Cmd.IDENTIFY, bytes(33))
    wire = bytearray(p.encode(1, Cmd.HEARTBEAT))
    wire[-1] ^= 0x01
    with pytest.raises(FrameError, match="checksum"):
        p.decode(bytes(wire))
    with pytest.raises(FrameError):
        p.decode(p.encode(1, Cmd.DIGITAL_READ, b"\x02")[:-1])


def test_payload_round_trips():
    st = p.Status(Flag.SAFE | Flag.TRIPPED, 500, 123456, 2)
    assert p.Status.unpack(st.pack()) == st
    sample = p.StreamSample(0b100011, 12, 3456, (1, 2, 3))
    assert p.StreamSample.unpack(sample.pack()) == sample and sample.channels == (0, 1, 5)
    assert len(p.encode(0, Cmd.STREAM_DATA, sample.pack())) == p.stream_frame_size(3)
    with pytest.raises(FrameError):
        p.StreamSample.unpack(sample.pack()[:-1])


def test_decoder_resynchronises_after_garbage():
    a = p.encode(1, Cmd.HEARTBEAT)
    b = p.encode(2, Cmd.ANALOG_READ | p.REPLY, struct.pack("<BH", 1, 614))
    # noise, a fake START with an impossible LEN, a fake START with a plausible LEN, split delivery
    stream = b"\x00\xff\x13" + bytes([p.START, 200]) + a + bytes([p.START, 2, 9]) + b + b"\x42"
    dec = p.Decoder()
    frames = []
    for i in range(len(stream)):  # one byte at a time, as a UART delivers them
        frames += dec.feed(stream[i:i + 1])
    good = [f for f in frames if isinstance(f, p.Frame)]
    assert good == [p.decode(a), p.decode(b)]
    assert dec.discarded >= 5 and dec.pending == 0


def test_decoder_recovers_a_frame_swallowed_by_a_corrupted_length():
    bad = bytearray(p.encode(5, Cmd.DIGITAL_READ | p.REPLY, bytes([2, 1])))
    bad[1] = 20  # LEN corrupted upwards: the decoder first waits for bytes of the next frames
    good = [p.encode(6 + i, Cmd.HEARTBEAT | p.REPLY, p.Status(Flag.SAFE, 500, i, 0).pack()) for i in range(3)]
    dec = p.Decoder()
    items = dec.feed(bytes(bad) + b"".join(good))
    assert isinstance(items[0], p.BadFrame) and dec.bad_frames == 1
    assert [f.seq for f in items[1:]] == [6, 7, 8]


# -- the simulated firmware, spoken to raw over its pty ----------------------
def test_firmware_naks_over_the_pty(sim):
    with serial.serial_for_url(sim.endpoints["serial"], baudrate=p.BAUD, timeout=TIMEOUT) as port:
        dec = p.Decoder()

        def ask(wire):
            port.write(wire)
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                items = dec.feed(port.read(max(1, port.in_waiting)))
                if items:
                    return items[0]
            raise AssertionError("no reply")

        assert ask(p.encode(1, Cmd.IDENTIFY)).payload[0] == p.PROTOCOL_VERSION
        corrupt = bytearray(p.encode(2, Cmd.HEARTBEAT))
        corrupt[-2] ^= 0xFF
        assert ask(bytes(corrupt)) == p.Frame(2, p.NAK, bytes([Cmd.HEARTBEAT, NakCode.BAD_CHECKSUM]))
        assert ask(p.encode(3, 0x7E)) == p.Frame(3, p.NAK, bytes([0x7E, NakCode.UNKNOWN_COMMAND]))
        assert ask(p.encode(4, Cmd.ANALOG_READ, b"\x06")).payload == bytes([Cmd.ANALOG_READ, NakCode.BAD_PIN])
        assert ask(p.encode(5, Cmd.PWM_WRITE, bytes([4, 10]))).payload == bytes([Cmd.PWM_WRITE, NakCode.BAD_PIN])
        assert ask(p.encode(6, Cmd.DIGITAL_READ, b"")).payload == bytes([Cmd.DIGITAL_READ, NakCode.BAD_LENGTH])
        assert ask(p.encode(7, Cmd.SET_WATCHDOG, struct.pack("<H", 0))).payload[1] == NakCode.BAD_VALUE
        # a stream that would not fit the baud rate is refused
        assert ask(p.encode(8, Cmd.STREAM_START, struct.pack("<BH", 0b111111, 500))).payload[1] == NakCode.BAD_VALUE
        status = p.Status.unpack(ask(p.encode(9, Cmd.HEARTBEAT)).payload)
        assert status.flags == Flag.SAFE and status.watchdog_ms == 1000 and status.trips == 0


# -- the driver against the simulator ------------------------------------------
def test_open_identifies_and_uploads_safe_values(sim, driver):
    assert driver.firmware.startswith("labrig-sim-arduino")
    assert sim.safe[9] == (PinMode.PWM, 170) and sim.safe[13] == (PinMode.DIGITAL, 0)
    assert sim.watchdog_ms == 500
    assert driver.status.flags & Flag.SAFE  # untouched since reset
    assert driver._keepalive.period == pytest.approx(0.125)


def test_reads_follow_the_world(world, driver):
    assert driver.read("cooling_flow") == pytest.approx(world.get("cooling_flow"), abs=LSB_FLOW)
    assert driver.read("langmuir_I") == pytest.approx(world.get("langmuir_current"), abs=1.5 * LSB_I)
    assert driver.read("cooling_ok") == 1
    world.set("cooling_flow", 1.0)
    assert eventually(lambda: driver.read("cooling_ok") == 0)
    assert driver.read("cooling_flow") == pytest.approx(1.0, abs=LSB_FLOW)


def test_writes_move_the_world(world, driver):
    assert driver.write("probe_bias", -40.0) == pytest.approx(102)
    assert eventually(lambda: abs(world.get("probe_bias") + 40.0) <= LSB_BIAS)
    assert driver.read("probe_bias") == pytest.approx(-40.0, abs=LSB_BIAS)  # readback from the board
    driver.write("beacon", 1)
    assert eventually(lambda: world.get("beacon") == 1.0)
    assert driver.read("beacon") == 1
    assert not driver.heartbeat().flags & Flag.SAFE  # the host has written: no longer safe
    with pytest.raises(RangeError, match=r"\[-100, 50\] V"):
        driver.write("probe_bias", 80.0)
    with pytest.raises(ConfigError, match="input"):
        driver.write("cooling_ok", 1)


def test_open_driver_by_kind_with_options(sim):
    with open_driver("arduino", sim.url, CHANNELS, timeout=TIMEOUT, name=NODE, watchdog_ms=300) as drv:
        assert isinstance(drv, ArduinoDriver) and drv.heartbeat().watchdog_ms == 300


@pytest.mark.parametrize("address, direction, hint", [
    ("A9", "in", "A0..A5"), ("B3", "in", "allowed"), ("PWM4", "out", "PWM3, PWM5"),
    ("D0", "in", "serial link"), ("D14", "out", "D2..D13"), ("A0", "out", "inputs"), ("PWM9", "in", "outputs"),
])
def test_bad_address_is_a_config_error(sim, address, direction, hint):
    with pytest.raises(ConfigError) as err:
        ArduinoDriver(sim.url, [ChannelSpec("bad_chan", address, direction)], timeout=TIMEOUT)
    assert "bad_chan" in str(err.value) and hint in str(err.value)


def test_safe_value_outside_the_hard_range_is_a_config_error(sim):
    spec = ChannelSpec("probe_bias", "PWM9", "out", "V", Calibration(gain=LSB_BIAS, offset=-100.0), safe_value=90.0)
    with pytest.raises(ConfigError, match="safe value 90"):
        ArduinoDriver(sim.url, [spec], timeout=TIMEOUT)


def test_board_refusal_is_a_device_error(driver):
    with pytest.raises(DeviceError, match="BAD_PIN"):
        driver._transact(Cmd.ANALOG_READ, b"\x07")
    with pytest.raises(DeviceError, match="UNKNOWN_COMMAND"):
        driver._transact(0x7E)


def test_missing_port_is_a_link_error():
    with pytest.raises(LinkClosed, match="cannot open"):
        ArduinoDriver("serial:///dev/does-not-exist", CHANNELS, timeout=TIMEOUT)


def test_muted_link_times_out_then_recovers(world, driver):
    world.fault(kind="link", name=NODE, mode="mute")
    t0 = time.monotonic()
    with pytest.raises(LinkTimeout) as err:
        driver.read("langmuir_I")
    assert time.monotonic() - t0 < 2 * TIMEOUT
    assert NODE in str(err.value)
    world.fault(kind="link", name=NODE, mode="clear")
    # the clear reaches the simulator with the world's next state: a read just before it may still time out
    assert eventually(lambda: _read_or_none(driver, "cooling_ok") == 1)


def test_garbled_link_is_a_frame_error(world, driver):
    world.fault(kind="link", name=NODE, mode="garble")
    for _ in range(5):  # bit flips land anywhere: every outcome must be typed and bounded
        t0 = time.monotonic()
        with pytest.raises((FrameError, LinkTimeout)):
            driver.read("cooling_flow")
        assert time.monotonic() - t0 < 2 * TIMEOUT
    world.fault(kind="link", name=NODE, mode="clear")
    # the clear reaches the simulator with the world's next state (a few ms): a reply garbled before
    # it may still arrive, and fails that one read alone
    assert eventually(lambda: _read_or_none(driver, "cooling_flow") == pytest.approx(6.0, abs=LSB_FLOW))


def _read_or_none(driver, name):
    try:
        return driver.read(name)
    except (FrameError, LinkTimeout):
        return None


def test_slow_link_within_the_timeout_still_works(world, driver):
    world.fault(kind="link", name=NODE, mode="slow", value=TIMEOUT / 4)
    assert driver.read("cooling_ok") == 1


def test_port_gone_is_link_closed(sim, driver):
    sim.close()
    with pytest.raises(LinkClosed):
        driver.read("langmuir_I")


def test_concurrent_callers_share_the_link(driver):
    errors = []

    def worker(name):
        try:
            for _ in range(30):
                driver.read(name)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("langmuir_I", "cooling_flow", "beacon")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors and driver.stale_replies == 0


def test_firmware_watchdog_takes_outputs_safe_when_the_host_stops(world, sim):
    drv = ArduinoDriver(sim.url, CHANNELS, timeout=TIMEOUT, name=NODE, watchdog_ms=200)
    try:
        drv.write("probe_bias", -80.0)
        drv.write("beacon", 1)
        assert eventually(lambda: abs(world.get("probe_bias") + 80.0) <= LSB_BIAS)
        time.sleep(0.6)  # three watchdog periods: the heartbeat must keep it fed
        assert abs(world.get("probe_bias") + 80.0) <= LSB_BIAS and world.get("beacon") == 1.0
        assert drv.heartbeat().trips == 0
    finally:
        drv.close()  # stops the heartbeat, as a crashed runtime would
    assert eventually(lambda: world.get("probe_bias") == pytest.approx(0.0, abs=1e-9) and world.get("beacon") == 0)
    with ArduinoDriver(sim.url, CHANNELS, timeout=TIMEOUT, name=NODE) as again:
        status = again.heartbeat()
        assert status.flags & Flag.SAFE and status.flags & Flag.TRIPPED and status.trips == 1
        assert again.read("probe_bias") == pytest.approx(0.0)
        again.write("probe_bias", -10.0)  # the host takes control again: the flags clear
        assert not again.heartbeat().flags & (Flag.SAFE | Flag.TRIPPED)


def test_streaming(world, driver):
    driver.start_stream(["langmuir_I", "cooling_flow"], 200)
    samples = driver.samples(25)
    driver.stop_stream()
    seqs = [s.stream_seq for s in samples]
    assert seqs == list(range(seqs[0], seqs[0] + 25)) and driver.stream_lost == 0
    times = [s.t_ms for s in samples]
    assert times == sorted(times) and times[-1] > times[0]
    assert all(s.values["cooling_flow"] == pytest.approx(6.0, abs=LSB_FLOW) for s in samples)
    assert not driver.heartbeat().flags & Flag.STREAMING
    with pytest.raises(RangeError, match="allowed 1..500 Hz"):
        driver.start_stream(["langmuir_I", "cooling_flow"], 600)
    with pytest.raises(ConfigError, match="analog"):
        driver.start_stream(["cooling_ok"], 10)


# -- as separate processes, the way the rig runs them --------------------------
def test_simulator_as_its_own_process(tmp_path):
    from labrig.simulators.world import world_control
    from labrig.supervisor.processes import spawn, wait_ready
    logs = tmp_path / "logs"
    procs: list[subprocess.Popen] = []

    def start(name, *args):
        ready = tmp_path / f"{name}.json"
        proc = spawn(["-m", "labrig.simulators", *args, "--ready", str(ready)], name=name, log_dir=logs)
        procs.append(proc)
        return wait_ready(proc, ready, name=name, timeout=20, log_dir=logs)

    try:
        eps = start("world", "world")["endpoints"]
        assert set(eps) >= {"state", "actuators", "control"}
        info = start("ard", "arduino", "--node", NODE, "--world-state", eps["state"],
                     "--world-actuators", eps["actuators"])
        assert info["url"] == "serial://" + info["endpoints"]["serial"]

        with ArduinoDriver(info["url"], CHANNELS, timeout=1.0, name=NODE) as drv:
            assert drv.read("cooling_ok") == 1
            drv.write("probe_bias", -60.0)
            assert eventually(lambda: abs(world_control(eps["control"], {"op": "snapshot"})["state"]["probe_bias"]
                                          + 60.0) <= LSB_BIAS, timeout=5)
            world_control(eps["control"], {"op": "fault", "kind": "link", "name": NODE, "mode": "mute"})
            # the fault reaches the simulator with the next published state (a few ms)
            assert eventually(lambda: _times_out(drv), timeout=5)
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    assert [proc.returncode for proc in procs] == [0, 0]


def _times_out(drv) -> bool:
    try:
        drv.read("cooling_ok")
    except LinkError:
        return True
    return False

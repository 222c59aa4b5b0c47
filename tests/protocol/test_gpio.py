"""The Raspberry Pi GPIO bus end to end: the pigpio daemon simulator against the
unmodified pigpio client, GPIODriver on gpiozero's MockFactory, and GPIODriver
(gpiozero's PiGPIOFactory) against the simulator coupled to a LocalWorld."""
from __future__ import annotations

import math
import socket
import struct
import threading
import time

import pigpio
import pytest

from labrig.drivers.contract import ChannelSpec, open_driver
from labrig.drivers.errors import ConfigError, FrameError, LinkClosed, LinkTimeout
from labrig.drivers.gpio.driver import GPIODriver
from labrig.simulators.pigpio_server import HW_REVISION, PI_UNKNOWN_COMMAND, PigpioSimulator
from support import eventually

# A pigpio reader thread dying of an exception, or a gpiozero device failing in
# __del__, is a bug in how the driver hangs up: fail on it.
pytestmark = [pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning"),
              pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")]

NODE = "pi1"
CHANNELS = [
    ChannelSpec("door", "GPIO17"),
    ChannelSpec("cooling_ok", "GPIO27"),
    ChannelSpec("gas_valve", "PWM18", "out", safe_value=0.0),
    ChannelSpec("trigger", "GPIO23", "out", safe_value=0.0),
]






@pytest.fixture
def sim(world):
    # the daemon protocol, without the charge-pump relay (tests/protocol/test_charge_pump.py has it)
    s = PigpioSimulator(world, node=NODE, options={"heartbeat_pin": "none"}).start()
    try:
        yield s
    finally:
        s.close()


def port_of(sim) -> int:
    return int(sim.url.rsplit(":", 1)[1])


@pytest.fixture
def pi(sim):
    """The raw pigpio client (no timeouts: only for tests without link faults)."""
    client = pigpio.pi("127.0.0.1", port_of(sim), show_errors=False)
    assert client.connected
    reader = client._notify
    try:
        yield client
    finally:
        client.stop()
        reader.join(2)


@pytest.fixture
def driver(sim):
    drv = GPIODriver(sim.url, CHANNELS, timeout=0.5, name=NODE)
    try:
        yield drv
    finally:
        drv.close()


# -- the daemon protocol, with pigpio's own client ------------------------------
def test_urls_and_hardware_revision(sim, pi):
    assert sim.url == f"pigpio://127.0.0.1:{port_of(sim)}"
    assert sim.endpoints == {"pigpio": f"tcp://127.0.0.1:{port_of(sim)}"}
    assert pi.get_hardware_revision() == HW_REVISION == 0xA02082
    assert pi.get_pigpio_version() > 0
    t1 = pi.get_current_tick()
    time.sleep(0.01)
    assert pigpio.tickDiff(t1, pi.get_current_tick()) >= 10_000  # ticks are microseconds


def test_mode_write_read_drive_the_trigger(world, pi):
    assert pi.get_mode(23) == pigpio.INPUT
    pi.set_mode(23, pigpio.OUTPUT)
    assert pi.get_mode(23) == pigpio.OUTPUT
    pi.write(23, 1)
    assert pi.read(23) == 1
    assert eventually(lambda: world.get("trigger") == 1.0)
    pi.write(23, 0)
    assert pi.read(23) == 0
    assert eventually(lambda: world.get("trigger") == 0.0)


def test_pull_sets_the_level_of_an_undriven_input(pi):
    pi.set_pull_up_down(5, pigpio.PUD_UP)
    assert pi.read(5) == 1
    pi.set_pull_up_down(5, pigpio.PUD_DOWN)
    assert pi.read(5) == 0


def test_pwm_duty_sets_the_gas_valve(world, pi):
    assert pi.set_PWM_frequency(18, 100) == 100
    assert pi.set_PWM_frequency(18, 123456) == 8000  # the closest available, as pigpiod does
    pi.set_PWM_range(18, 255)
    pi.set_PWM_dutycycle(18, 102)
    assert pi.get_PWM_dutycycle(18) == 102
    assert pi.get_PWM_range(18) == 255
    assert eventually(lambda: math.isclose(world.get("gas_valve"), 0.4))
    pi.write(18, 0)  # a write stops PWM on the pin
    with pytest.raises(pigpio.error, match="not in use for PWM"):
        pi.get_PWM_dutycycle(18)
    assert eventually(lambda: world.get("gas_valve") == 0.0)


def test_bad_arguments_get_pigpio_error_codes(pi):
    with pytest.raises(pigpio.error, match="GPIO not 0-53"):
        pi.set_mode(60, pigpio.OUTPUT)
    with pytest.raises(pigpio.error, match="level not 0-1"):
        pi.write(23, 2)
    with pytest.raises(pigpio.error, match="dutycycle"):
        pi.set_PWM_dutycycle(18, 100000)


def test_wire_format_and_unknown_command(sim):
    with socket.create_connection(("127.0.0.1", port_of(sim)), timeout=2) as sock:
        sock.sendall(struct.pack("<IIII", 17, 0, 0, 0))  # HWVER
        assert struct.unpack("<IIIi", sock.recv(16)) == (17, 0, 0, HW_REVISION)
        sock.sendall(struct.pack("<IIII", 200, 7, 9, 0))
        assert struct.unpack("<IIIi", sock.recv(16)) == (200, 7, 9, PI_UNKNOWN_COMMAND)
        # an unknown command with an extension: the extension is consumed, the stream stays in step
        sock.sendall(struct.pack("<IIII", 201, 0, 0, 3) + b"abc" + struct.pack("<IIII", 3, 17, 0, 0))
        assert struct.unpack("<IIIi", sock.recv(16))[3] == PI_UNKNOWN_COMMAND
        assert struct.unpack("<IIIi", sock.recv(16)) == (3, 17, 0, 1)  # READ 17: door closed


def test_world_driven_input_sends_edge_reports(world, pi):
    assert pi.read(17) == 1 and pi.read(27) == 1
    edges = []
    cb = pi.callback(17, pigpio.EITHER_EDGE, lambda gpio, level, tick: edges.append((gpio, level, tick)))
    try:
        world.set("door_closed", 0)
        assert eventually(lambda: edges)
        assert edges[0][:2] == (17, 0)
        assert pi.read(17) == 0
        world.set("door_closed", 1)
        assert eventually(lambda: len(edges) >= 2)
        assert edges[1][:2] == (17, 1)
        assert pigpio.tickDiff(edges[0][2], edges[1][2]) > 0
        world.set("cooling_flow", 1.0)  # GPIO27 is not monitored by this callback
        assert eventually(lambda: pi.read(27) == 0)
        assert len(edges) == 2
    finally:
        cb.cancel()


def test_two_clients_share_one_pi(sim, pi):
    other = pigpio.pi("127.0.0.1", port_of(sim), show_errors=False)
    reader = other._notify
    try:
        pi.write(24, 1)
        assert other.read(24) == 1 and other.get_mode(24) == pigpio.OUTPUT
    finally:
        other.stop()
        reader.join(2)


def test_simulator_close_is_idempotent_and_frees_the_port(world):
    sim = PigpioSimulator(world, node=NODE).start()
    port = port_of(sim)
    client = socket.create_connection(("127.0.0.1", port), timeout=2)
    client.sendall(struct.pack("<IIII", 17, 0, 0, 0))
    assert len(client.recv(16)) == 16  # accepted and served
    sim.close()
    sim.close()
    assert client.recv(16) == b""  # our connection was closed, not left hanging
    client.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


# -- GPIODriver on gpiozero's MockFactory (the GPIO layer alone) ---------------
def test_mock_driver_writes_reads_and_keeps_history():
    with GPIODriver("mock://", CHANNELS) as drv:
        drv.write("gas_valve", 0.4)
        drv.write("trigger", 1)
        drv.write("trigger", 0)
        pins = drv.factory
        assert pins.pin(18).state == pytest.approx(0.4)
        assert [bool(s.state) for s in pins.pin(23).states] == [False, True, False]
        pins.pin(17).drive_high()
        assert drv.read("door") == 1.0
        pins.pin(17).drive_low()
        assert drv.read("door") == 0.0
        assert drv.read("gas_valve") == pytest.approx(0.4)
        assert drv.safe_state()["gas_valve"].ok
        assert pins.pin(18).state == 0


@pytest.mark.parametrize("address, direction", [("A0", "in"), ("GPIO40", "in"), ("PWM18", "in"),
                                                ("gpio", "out"), ("", "in")])
def test_bad_address_is_a_config_error(address, direction):
    with pytest.raises(ConfigError, match="GPIO<n>|direction 'out'"):
        GPIODriver("mock://", [ChannelSpec("x", address, direction)])


def test_one_pin_two_channels_is_a_config_error():
    with pytest.raises(ConfigError, match="already used by channel 'door'"):
        GPIODriver("mock://", [ChannelSpec("door", "GPIO17"), ChannelSpec("door2", "gpio17")])


def test_bad_url_is_a_config_error():
    with pytest.raises(ConfigError, match="pigpio"):
        GPIODriver("tcp://127.0.0.1:8888", CHANNELS)


# -- GPIODriver (PiGPIOFactory) against the simulated Pi -------------------------
def test_driver_moves_the_world(world, driver):
    driver.write("gas_valve", 0.4)
    assert eventually(lambda: math.isclose(world.get("gas_valve"), 0.4))
    assert driver.read("gas_valve") == pytest.approx(0.4)
    driver.write("trigger", 1)
    assert eventually(lambda: world.get("trigger") == 1.0)
    assert driver.read("trigger") == 1.0
    driver.safe_state()
    assert eventually(lambda: world.get("gas_valve") == 0.0 and world.get("trigger") == 0.0)


def test_driver_reads_world_inputs(world, driver):
    assert driver.read("door") == 1.0 and driver.read("cooling_ok") == 1.0
    world.set("door_closed", 0)
    assert eventually(lambda: driver.read("door") == 0.0)
    world.set("cooling_flow", 1.0)
    assert eventually(lambda: driver.read("cooling_ok") == 0.0)


def test_open_driver_by_kind_and_close_releases_pins(world, sim):
    with open_driver("rpi", sim.url, CHANNELS, timeout=0.5, name=NODE) as drv:
        assert isinstance(drv, GPIODriver)
        drv.write("trigger", 1)
        assert eventually(lambda: world.get("trigger") == 1.0)
    # gpiozero hands released pins back as inputs: the trigger line drops
    assert eventually(lambda: world.get("trigger") == 0.0)
    with pytest.raises(LinkClosed):
        drv.read("door")


def test_no_daemon_is_link_closed():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    with pytest.raises(LinkClosed, match=f"127.0.0.1:{port}"):
        GPIODriver(f"pigpio://127.0.0.1:{port}", CHANNELS, timeout=0.5)


def test_muted_pi_at_connect_is_a_timeout(world, sim):
    world.fault(kind="link", name=NODE, mode="mute")
    start = time.monotonic()
    with pytest.raises(LinkTimeout):
        GPIODriver(sim.url, CHANNELS, timeout=0.5, name=NODE)
    assert time.monotonic() - start < 2 * 0.5


def test_muted_link_times_out_then_recovers(world, driver):
    world.fault(kind="link", name=NODE, mode="mute")
    for call in (lambda: driver.read("door"), lambda: driver.write("gas_valve", 0.2)):
        start = time.monotonic()
        with pytest.raises(LinkTimeout, match=NODE):
            call()
        assert time.monotonic() - start < 2 * driver.timeout
    world.fault(kind="link", name=NODE, mode="clear")
    assert driver.read("door") == 1.0


def test_garbled_link_is_detected_then_recovers(world, driver):
    world.fault(kind="link", name=NODE, mode="garble")
    for _ in range(5):
        start = time.monotonic()
        with pytest.raises((FrameError, LinkTimeout)):
            driver.read("door")
        assert time.monotonic() - start < 2 * driver.timeout
    world.fault(kind="link", name=NODE, mode="clear")
    assert driver.read("door") == 1.0


def test_slow_link_late_replies_do_not_desynchronise(world, driver):
    world.fault(kind="link", name=NODE, mode="slow", value=0.7)
    with pytest.raises(LinkTimeout):
        driver.read("door")  # its reply comes 0.7 s later, after the 0.5 s timeout
    world.fault(kind="link", name=NODE, mode="clear")
    time.sleep(0.3)  # let the late reply arrive: it must be dropped, not taken for the next one
    driver.write("trigger", 1)
    assert driver.read("trigger") == 1.0
    assert driver.read("door") == 1.0


def test_close_on_a_muted_link_is_bounded_and_leaves_no_threads(world, sim):
    before = set(threading.enumerate())
    drv = GPIODriver(sim.url, CHANNELS, timeout=0.5, name=NODE)
    assert set(threading.enumerate()) - before  # pigpio's notification reader runs
    world.fault(kind="link", name=NODE, mode="mute")
    start = time.monotonic()
    drv.close()
    assert time.monotonic() - start < 2 * drv.timeout
    assert eventually(lambda: not (set(threading.enumerate()) - before))


def test_pi_going_away_is_link_closed(world):
    sim = PigpioSimulator(world, node=NODE).start()
    try:
        drv = GPIODriver(sim.url, CHANNELS, timeout=0.5, name=NODE)
    finally:
        sim.close()
    try:
        with pytest.raises(LinkClosed):
            drv.read("door")
    finally:
        drv.close()


def test_ticks_past_the_sign_bit_are_not_errors(world):
    # pigpio ticks are uint32 microseconds: after 35.8 min of uptime they have bit 31 set
    with PigpioSimulator(world, node=NODE, options={"tick_start": "0x80000000"}) as sim, \
            GPIODriver(sim.url, CHANNELS, timeout=0.5, name=NODE) as drv:
        first = drv.factory.ticks()
        assert first >= 0x80000000
        assert drv.factory.ticks_diff(drv.factory.ticks(), first) >= 0
        assert drv.read("door") == 1.0


def test_a_pwm_write_is_one_acknowledged_duty_command(world, driver, sim):
    driver.write("gas_valve", 0.12345)  # the first write also asks the pin's range (gpiozero's 10000), once
    sent = []
    command = sim._command
    sim._command = lambda client, cmd, p1, p2: sent.append(cmd) or command(client, cmd, p1, p2)
    try:
        driver.write("gas_valve", 0.5)
    finally:
        sim._command = command
    assert sent == [5]  # PWM only: no range or duty read first
    assert driver.read("gas_valve") == 0.5
    driver.write("gas_valve", 0.12345)
    assert driver.read("gas_valve") == 0.1234  # the nearest duty step of the 10000
    assert eventually(lambda: world.get("gas_valve") == pytest.approx(0.1234))


def test_read_many_pipelines_the_level_reads_and_checks_each_reply(world, driver):
    driver.write("trigger", 1)
    assert driver.read_many(["door", "cooling_ok", "trigger"]) == {"door": 1.0, "cooling_ok": 1.0, "trigger": 1.0}
    world.set("door_closed", 0)
    assert eventually(lambda: driver.read_many(["door", "trigger"]) == {"door": 0.0, "trigger": 1.0})
    assert driver.read_many(["gas_valve", "door"]) == {"gas_valve": 0.0, "door": 0.0}  # a duty: one by one
    world.fault(kind="link", name=NODE, mode="garble")
    for _ in range(5):
        with pytest.raises((FrameError, LinkTimeout)):
            driver.read_many(["door", "cooling_ok"])
    world.fault(kind="link", name=NODE, mode="clear")
    assert driver.read_many(["door", "cooling_ok"]) == {"door": 0.0, "cooling_ok": 1.0}


def _sends(driver, monkeypatch) -> list[int]:
    """The sizes of what the driver sends on its pigpio command socket, from now on."""
    sizes: list[int] = []
    send = driver._wire.sendall
    monkeypatch.setattr(driver._wire, "sendall", lambda data: (sizes.append(len(data)), send(data))[1])
    return sizes


def test_write_read_many_sets_the_duty_and_reads_the_levels_in_one_exchange(world, driver, monkeypatch):
    driver.write("gas_valve", 0.25)  # the pin's duty range is known from the first write on
    sizes = _sends(driver, monkeypatch)
    raw, got = driver.write_read_many("gas_valve", 0.5, ["door", "cooling_ok"])
    assert (raw, got) == (0.5, {"door": 1.0, "cooling_ok": 1.0})
    assert sizes == [48]  # PWM, READ, READ: one send, three replies checked in order
    assert driver.read("gas_valve") == 0.5
    assert eventually(lambda: world.get("gas_valve") == pytest.approx(0.5))
    world.set("door_closed", 0)
    assert eventually(lambda: driver.write_read_many("gas_valve", 0.1, ["door"])[1] == {"door": 0.0})


def test_write_read_many_without_a_known_duty_range_is_a_write_then_a_read(world, driver, monkeypatch):
    sizes = _sends(driver, monkeypatch)
    assert driver.write_read_many("gas_valve", 0.5, ["door", "cooling_ok"]) == \
        (0.5, {"door": 1.0, "cooling_ok": 1.0})
    assert len(sizes) >= 2 and sizes[-1] == 32  # the range and duty first, then the two READs together
    assert driver.write_read_many("trigger", 1, ["door"]) == (1.0, {"door": 1.0})  # a digital output: as write


def test_write_read_many_raises_when_the_set_is_not_acknowledged(world, driver):
    driver.write("gas_valve", 0.25)
    world.fault(kind="link", name=NODE, mode="garble")
    for _ in range(3):  # a garbled acknowledgement is no acknowledgement: no readings come back
        with pytest.raises((FrameError, LinkTimeout)):
            driver.write_read_many("gas_valve", 0.5, ["door", "cooling_ok"])
    world.fault(kind="link", name=NODE, mode="mute")
    t = time.monotonic()
    with pytest.raises(LinkTimeout):
        driver.write_read_many("gas_valve", 0.5, ["door"])
    assert time.monotonic() - t < 0.5 + 0.3
    world.fault(kind="link", name=NODE, mode="clear")
    assert eventually(lambda: _settles(driver))


def _settles(driver) -> bool:
    try:
        return driver.write_read_many("gas_valve", 0.0, ["door", "cooling_ok"]) == (0.0, {"door": 1.0, "cooling_ok": 1.0})
    except (FrameError, LinkTimeout):
        return False

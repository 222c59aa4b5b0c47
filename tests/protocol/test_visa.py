"""The VISA bus end to end: the SCPI gauge simulator on a raw socket, then VisaDriver over pyvisa-py."""
from __future__ import annotations

import math
import os
import re
import select
import socket
import threading
import time

import pytest

from labrig.drivers.contract import ChannelSpec, open_driver
from labrig.drivers.errors import (ConfigError, DeviceError, FrameError, LinkClosed, LinkError,
                                   LinkTimeout)
from labrig.drivers.visa.driver import VisaDriver
from labrig.simulators.visa_instrument import THRESHOLD_DEFAULT, VisaSimulator

NODE = "gauge"
TIMEOUT = 0.3  # s, the driver's I/O timeout in these tests
NR3 = re.compile(r"[+-]?\d\.\d{6}E[+-]\d{2}")
CHANNELS = [
    ChannelSpec("pressure", "MEAS:PRES", unit="Pa"),
    ChannelSpec("vac_setpoint", "SP1:THR", direction="out", unit="Pa", safe_value=THRESHOLD_DEFAULT),
    ChannelSpec("vac_relay", "SP1:STAT"),
]


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _no_fd_leak(before: int) -> bool:
    # The simulator's end of a dropped connection closes on its own thread: give it a moment.
    deadline = time.monotonic() + 2
    while _fds() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    return _fds() <= before




@pytest.fixture
def sim(world):
    threads = set(threading.enumerate())
    with VisaSimulator(world, node=NODE) as s:
        yield s
    leaked = [t for t in set(threading.enumerate()) - threads if t.is_alive()]
    assert not leaked, f"simulator left threads behind: {leaked}"


class Scpi:
    """A bare SCPI client on a socket: what a terminal user would type."""

    def __init__(self, endpoint: str, timeout: float = 2.0):
        host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.file = self.sock.makefile("rb")

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\n")

    def ask(self, line: str) -> str:
        self.send(line)
        return self.file.readline().decode().rstrip("\n")

    def close(self):
        self.file.close()
        self.sock.close()


@pytest.fixture
def scpi(sim):
    clients = []

    def connect():
        clients.append(Scpi(sim.endpoints["scpi"]))
        return clients[-1]
    yield connect
    for c in clients:
        c.close()


@pytest.fixture
def gauge(sim):
    fds = _fds()
    drv = VisaDriver(sim.url, CHANNELS, timeout=TIMEOUT, name=NODE)
    try:
        yield drv
    finally:
        drv.close()
    assert _no_fd_leak(fds), "the driver left file descriptors open"


def _near(value: float, world_value: float) -> bool:
    # the model's sensor noise: 0.5 % plus 1e-5 Pa per sigma; allow 6 sigma
    return abs(value - world_value) <= 6 * (0.005 * abs(world_value) + 1e-5)


# -- the protocol on a raw socket ---------------------------------------------
def test_endpoints_and_url(sim):
    port = int(sim.endpoints["scpi"].rsplit(":", 1)[1])
    assert sim.endpoints["scpi"] == f"tcp://127.0.0.1:{port}"
    assert sim.url == f"visa://TCPIP0::127.0.0.1::{port}::SOCKET"


def test_identify_and_measure(scpi, world):
    c = scpi()
    assert c.ask("*IDN?").startswith("Labrig,VGC-1,")
    reply = c.ask("MEAS:PRES?")
    assert NR3.fullmatch(reply), reply
    assert _near(float(reply), world.get("pressure"))
    # long form, lower case, leading colon: all the same header
    assert NR3.fullmatch(c.ask(":measure:pressure?"))


def test_threshold_status_and_errors(scpi, world):
    c = scpi()
    assert c.ask("SYST:ERR?") == '0,"No error"'
    c.send("SP1:THR 2.5")
    assert float(c.ask("SP1:THR?")) == 2.5
    assert c.ask("SYST:ERR?") == '0,"No error"'
    assert world.get("pressure") < 1.0 and c.ask("SP1:STAT?") == "1"
    # a pressure sensor fault applied by the world shows on the gauge and its relay
    world.fault(kind="sensor", name="pressure", mode="offset", value=10.0)
    assert float(c.ask("MEAS:PRES?")) > 9.0
    assert c.ask("SP1:STAT?") == "0"

    c.send("SP1:THR 1e6")  # out of the relay's range: no effect, -222 queued
    c.send("FOO:BAR 1")  # unknown header: -113 queued
    assert float(c.ask("SP1:THR?")) == 2.5
    assert c.ask("SYST:ERR?") == '-222,"Data out of range"'
    assert c.ask("SYST:ERR?") == '-113,"Undefined header"'
    assert c.ask("SYST:ERR?") == '0,"No error"'

    c.send("*RST")
    assert float(c.ask("SP1:THR?")) == THRESHOLD_DEFAULT


def test_unknown_query_gets_no_reply_but_an_error(scpi):
    c = scpi()
    c.send("FOO:BAR?")
    readable, _, _ = select.select([c.sock], [], [], 0.2)
    assert not readable, "an unknown query must get no reply"
    assert c.ask("SYST:ERR?") == '-113,"Undefined header"'


def test_clients_share_the_gauge_but_not_their_error_queues(scpi):
    a, b = scpi(), scpi()
    a.send("SP1:THR 3")
    b.send("NOPE")
    assert a.ask("SYST:ERR?") == '0,"No error"'  # also: a's command has run
    assert float(b.ask("SP1:THR?")) == 3.0
    assert b.ask("SYST:ERR?") == '-113,"Undefined header"'


def test_close_with_a_client_connected(world):
    threads = set(threading.enumerate())
    sim = VisaSimulator(world, node=NODE).start()
    c = Scpi(sim.endpoints["scpi"])
    try:
        assert c.ask("*IDN?")
        sim.close()
        sim.close()  # idempotent
        assert c.file.readline() == b""  # the client sees the connection end
        with pytest.raises(ConnectionRefusedError):
            Scpi(sim.endpoints["scpi"])
    finally:
        c.close()
    assert not [t for t in set(threading.enumerate()) - threads if t.is_alive()]


# -- the driver through pyvisa-py ---------------------------------------------
def test_read_pressure(gauge, world):
    assert gauge.identity.startswith("Labrig,VGC-1,")
    world.set("gas_valve", 0.5)  # a pressure worth measuring
    time.sleep(0.05)
    before = world.get("pressure")
    value = gauge.read("pressure")
    after = world.get("pressure")
    assert _near(value, before) or _near(value, after), (value, before, after)


def test_write_threshold_and_read_back(gauge):
    assert gauge.write("vac_setpoint", 2.5) == 2.5
    assert gauge.read("vac_setpoint") == 2.5
    assert gauge.read("vac_relay") == 1.0  # base pressure is far below 2.5 Pa
    assert gauge.safe_state()["vac_setpoint"].ok
    assert gauge.read("vac_setpoint") == THRESHOLD_DEFAULT


def test_out_of_range_threshold_is_a_device_error(gauge):
    gauge.write("vac_setpoint", 2.0)
    with pytest.raises(DeviceError, match=r'-222,"Data out of range"') as info:
        gauge.write("vac_setpoint", 1e6)
    assert info.value.device == NODE
    assert gauge.read("vac_setpoint") == 2.0  # unchanged, and the link still in step
    gauge.write("vac_setpoint", 3.0)  # the error queue was drained: no stale error


def test_without_error_checks_a_bad_write_passes_silently(sim):
    with VisaDriver(sim.url, CHANNELS, timeout=TIMEOUT, check_errors="false") as drv:
        drv.write("vac_setpoint", 1e6)
        assert drv.query("SYST:ERR?") == '-222,"Data out of range"'


@pytest.mark.parametrize("address", ["MEAS:PRES?", "SP1:THR 2", "", "*IDN", "MEAS::PRES", "1ABC"])
def test_bad_header_is_a_config_error(sim, address):
    fds = _fds()
    with pytest.raises(ConfigError, match=r"address .* is not valid; expected an SCPI header") as info:
        VisaDriver(sim.url, [ChannelSpec("p", address)], timeout=TIMEOUT)
    assert "'p'" in str(info.value)
    assert _no_fd_leak(fds)


def test_bad_url_is_a_config_error(sim):
    with pytest.raises(ConfigError, match="visa://"):
        VisaDriver(sim.endpoints["scpi"], CHANNELS)
    with pytest.raises(ConfigError, match="not a VISA resource name"):
        VisaDriver("visa://NOTABUS0::x", CHANNELS)


def test_undefined_header_is_a_device_error(gauge):
    gauge_bad = [ChannelSpec("leak_rate", "MEAS:LEAK")]
    with VisaDriver(gauge.url, gauge_bad, timeout=TIMEOUT) as drv:
        with pytest.raises(DeviceError, match=r'-113,"Undefined header"'):
            drv.read("leak_rate")


def test_muted_link_times_out_then_recovers(gauge, world):
    world.fault(kind="link", name=NODE, mode="mute")
    t0 = time.monotonic()
    with pytest.raises(LinkTimeout) as info:
        gauge.read("pressure")
    assert time.monotonic() - t0 < 2 * TIMEOUT
    assert info.value.device == NODE and "MEAS:PRES?" in str(info.value)
    world.fault(kind="link", name=NODE, mode="clear")
    assert gauge.read("pressure") >= 0.0  # reconnected, in step again


def test_slow_link_within_timeout_still_answers(gauge, world):
    world.fault(kind="link", name=NODE, mode="slow", value=TIMEOUT / 3)
    assert gauge.read("vac_setpoint") == THRESHOLD_DEFAULT


def test_garbled_replies_are_frame_errors(gauge, world):
    world.fault(kind="link", name=NODE, mode="garble")
    outcomes = []
    for _ in range(20):
        try:
            outcomes.append(gauge.read("pressure"))
        except FrameError as exc:
            outcomes.append(exc)
    # A flipped bit can still spell a number (SCPI has no checksum), so only most
    # garbled replies are detectable; any other exception type fails the test.
    assert sum(isinstance(o, FrameError) for o in outcomes) >= 10
    world.fault(kind="link", name=NODE, mode="clear")
    assert _near(gauge.read("pressure"), world.get("pressure"))


def test_instrument_gone_is_link_closed(world):
    sim = VisaSimulator(world, node=NODE).start()
    drv = VisaDriver(sim.url, CHANNELS, timeout=TIMEOUT, name=NODE)
    try:
        sim.close()
        t0 = time.monotonic()
        with pytest.raises(LinkClosed):
            drv.read("pressure")
        with pytest.raises(LinkClosed):  # reconnecting is refused
            drv.read("pressure")
        assert time.monotonic() - t0 < 2 * TIMEOUT
    finally:
        drv.close()
        sim.close()


def test_refused_at_open_is_a_link_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(LinkClosed, match="refused"):
        VisaDriver(f"visa://TCPIP0::127.0.0.1::{port}::SOCKET", CHANNELS, timeout=TIMEOUT)


def test_closed_driver_and_open_driver(sim):
    drv = open_driver("visa", sim.url, CHANNELS, timeout=TIMEOUT, name=NODE)
    assert isinstance(drv, VisaDriver)
    drv.close()
    drv.close()
    with pytest.raises(LinkClosed):
        drv.read("pressure")


def test_two_drivers_share_pyvisas_resource_manager(sim):
    a = VisaDriver(sim.url, CHANNELS, timeout=TIMEOUT)
    b = VisaDriver(sim.url, CHANNELS, timeout=TIMEOUT)
    try:
        a.close()  # must not close b's session with the shared manager
        assert not math.isnan(b.read("pressure"))
    finally:
        a.close()
        b.close()


def test_nan_pressure_reads_as_nan(gauge, world):
    world.fault(kind="sensor", name="pressure", mode="nan")
    assert math.isnan(gauge.read("pressure"))
    assert gauge.read("vac_relay") == 0.0  # a dead sensor opens the relay


def test_link_errors_name_the_device(gauge, world):
    world.fault(kind="link", name=NODE, mode="mute")
    with pytest.raises(LinkError, match=f"^{NODE}: "):
        gauge.write("vac_setpoint", 2.0)  # the SYST:ERR? check finds the silence

"""The RedPitaya bus end to end: SCPI and monitor-protocol servers on real sockets,
labrig's monitor client, then RedPitayaDriver against the in-process simulator."""
from __future__ import annotations

import math
import socket
import struct
import threading
import time

import numpy as np
import pytest

from labrig.drivers.contract import ChannelSpec, open_driver
from labrig.drivers.errors import ConfigError, FrameError, LinkClosed, LinkTimeout, RangeError
from labrig.drivers.redpitaya import registers as R
from labrig.drivers.redpitaya.driver import RedPitayaDriver
from labrig.drivers.redpitaya.monitor import MonitorClient
from labrig.drivers.redpitaya.scpi import SCPIClient, parse_values
from labrig.simulators.redpitaya import RedPitayaSimulator
from support import eventually

NODE = "rp1"
TIMEOUT = 0.3  # s, the I/O timeout of clients under test
CHANNELS = [
    ChannelSpec("rf_drive", "out1", direction="out", unit="V", safe_value=0.0),
    ChannelSpec("interferometer", "in1", unit="V"),
    ChannelSpec("forward_detector", "in2", unit="V"),
    ChannelSpec("reflected_detector", "ain0", unit="V"),
    ChannelSpec("aux_dac", "aout1", direction="out", unit="V", safe_value=0.0),
    ChannelSpec("shutter", "dio2_p", direction="out", safe_value=0),
    ChannelSpec("door_sense", "dio3_n"),
]


def _hostport(endpoint: str) -> tuple[str, int]:
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    return host, int(port)





@pytest.fixture
def sim(world):
    threads = set(threading.enumerate())
    with RedPitayaSimulator(world, node=NODE) as s:
        yield s
    leaked = [t for t in set(threading.enumerate()) - threads if t.is_alive()]
    assert not leaked, f"simulator left threads behind: {leaked}"


@pytest.fixture
def scpi(sim):
    client = SCPIClient(*_hostport(sim.endpoints["scpi"]), timeout=TIMEOUT, name=NODE)
    yield client
    client.close()


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"connection closed after {len(data)} of {n} bytes"
        data += chunk
    return data


class Raw:
    """A bare socket to one of the simulator's servers."""

    def __init__(self, endpoint: str):
        self.sock = socket.create_connection(_hostport(endpoint), timeout=2.0)

    def recv_exactly(self, n: int) -> bytes:
        return _recv_exactly(self.sock, n)

    def readline(self) -> bytes:
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = self.sock.recv(1)
            assert chunk, "connection closed mid-line"
            data += chunk
        return data

    def close(self):
        self.sock.close()


@pytest.fixture
def raw(sim):
    opened = []

    def connect(which: str) -> Raw:
        opened.append(Raw(sim.endpoints[which]))
        return opened[-1]

    yield connect
    for r in opened:
        r.close()


# -- SCPI server -------------------------------------------------------------------
def test_urls_and_endpoints(sim):
    scpi_port = _hostport(sim.endpoints["scpi"])[1]
    monitor_port = _hostport(sim.endpoints["monitor"])[1]
    assert sim.url == f"tcp://127.0.0.1:{scpi_port}?monitor_port={monitor_port}"
    assert scpi_port != monitor_port


def test_scpi_lines_are_crlf_terminated_and_unknown_commands_get_err(raw):
    r = raw("scpi")
    r.sock.sendall(b"*IDN?\r\n")
    assert r.readline() == f"REDPITAYA,INSTR2020,SIM-{NODE},labrig-sim-1.0\r\n".encode()
    r.sock.sendall(b"FOO:BAR 3\r\n")
    assert r.readline() == b"ERR!\r\n"
    r.sock.sendall(b"SOUR1:VOLT 1.5\r\n")  # amplitude outside 0..1 V
    assert r.readline() == b"ERR!\r\n"
    r.sock.sendall(b"SOUR1:VOLT 0.5\n*OPC?\n")  # a command has no reply; "\n" alone also ends a line
    assert r.readline() == b"1\r\n"


def test_scpi_generator_drives_the_rf_amplifier(scpi, world):
    scpi.command("SOUR1:FUNC SINE", "SOUR1:FREQ:FIX 13560000", "SOUR1:VOLT 0.4", "SOUR1:VOLT:OFFS 0")
    assert scpi.query("SOUR1:FUNC?") == "SINE"
    assert scpi.query_float("SOUR1:FREQ:FIX?") == pytest.approx(13.56e6)
    assert scpi.query_float("SOUR1:VOLT?") == pytest.approx(0.4)
    assert scpi.query("OUTPUT1:STATE?") == "OFF"
    assert world.get("rf_drive") == 0.0  # amplitude set, output still off
    scpi.command("OUTPUT1:STATE ON")
    assert scpi.query("output1:state?") == "ON"  # case-insensitive
    assert eventually(lambda: world.get("rf_drive") == pytest.approx(0.4))
    scpi.command("SOUR1:VOLT 0.25")
    assert eventually(lambda: world.get("rf_drive") == pytest.approx(0.25))
    scpi.command("SOUR2:VOLT 0.9", "OUTPUT2:STATE ON")  # out2 is not wired to the amplifier
    scpi.command("OUTPUT1:STATE OFF")
    assert eventually(lambda: world.get("rf_drive") == 0.0)
    with pytest.raises(FrameError, match="ERR!"):
        scpi.command("SOUR3:VOLT 0.1")  # no third generator


def test_scpi_acquisition(scpi, world):
    world.fault(kind="sensor", name="interferometer_phase", mode="offset", value=1.2)
    assert scpi.query("ACQ:BUF:SIZE?") == "16384"
    scpi.command("ACQ:RST", "ACQ:DEC 1", "ACQ:DATA:UNITS VOLTS", "ACQ:START")
    assert scpi.query("ACQ:TRIG:STAT?") == "WAIT"
    scpi.command("ACQ:TRIG NOW")
    assert scpi.query("ACQ:TRIG:STAT?") == "TD"
    assert scpi.query("ACQ:TR:STAT?") == "TD"  # short form of TRig
    reply = scpi.query("ACQ:SOUR1:DATA?")
    assert reply.startswith("{") and reply.endswith("}")
    values = parse_values(reply)
    assert len(values) == 16384
    expected = world.get("interferometer_phase") / math.pi
    assert np.mean(values) == pytest.approx(expected, abs=0.01)
    assert 0.0005 < np.std(values) < 0.01  # small noise around the present value
    part = scpi.query_values("ACQ:SOUR1:DATA:STA:N? 100,10")
    assert part == values[100:110]
    assert scpi.query_values("ACQ:SOUR1:DATA:START:N? 16380,8")[:4] == values[16380:]  # wraps
    assert len(scpi.query_values("ACQ:SOUR2:DATA:OLD:N? 5")) == 5
    scpi.command("ACQ:DATA:UNITS RAW")
    raw_counts = scpi.query_values("ACQ:SOUR1:DATA:STA:N? 0,4")
    assert all(c == int(c) and abs(c - v * 8192) <= 1 for c, v in zip(raw_counts, values[:4]))
    with pytest.raises(FrameError):
        scpi.command("ACQ:DEC 3")  # 1, 2, 4, 8, 16 or 17..65536


def test_scpi_pins_share_the_housekeeping_registers(scpi, sim):
    scpi.command("DIG:PIN:DIR OUT,DIO2_P", "DIG:PIN DIO2_P,1")
    assert scpi.query("DIG:PIN:DIR? DIO2_P") == "OUT"
    assert scpi.query("DIG:PIN? DIO2_P") == "1"
    assert sim.fpga.read_word(R.hk(R.HK_EXP_P_DIR)) == 1 << 2
    assert sim.fpga.read_word(R.hk(R.HK_EXP_P_OUT)) == 1 << 2
    # An input pin reads what the outside world drives, not the output latch.
    scpi.command("DIG:PIN:DIR IN,DIO3_N")
    assert scpi.query("DIG:PIN? DIO3_N") == "0"
    sim.set_input_pin("DIO3_N", 1)
    assert scpi.query("DIG:PIN? DIO3_N") == "1"
    scpi.command("DIG:PIN LED4,1")
    assert sim.fpga.read_word(R.hk(R.HK_LED)) == 1 << 4
    with pytest.raises(FrameError):
        scpi.command("DIG:PIN DIO9_P,1")  # DIO0..7 only


def test_scpi_analog_pins(scpi, sim, world):
    world.fault(kind="sensor", name="rf_reflected", mode="offset", value=100.0)
    scpi.command("ANALOG:PIN AOUT2,1.25")
    assert scpi.query_float("ANALOG:PIN? AOUT2") == pytest.approx(1.25, abs=0.01)
    assert R.pwm_volts(sim.fpga.read_word(R.AMS_BASE + R.AMS_DAC[2])) == pytest.approx(1.25, abs=0.01)
    ain0 = scpi.query_float("ANALOG:PIN? AIN0")
    # The world's reflected-power noise (0.5 W rms) is 3.3 mV here, per sample.
    assert ain0 == pytest.approx(3.3 * world.get("rf_reflected") / 500, abs=0.03)
    assert ain0 > 0.6
    with pytest.raises(FrameError):
        scpi.command("ANALOG:PIN AOUT0,2.5")  # 0..1.8 V
    with pytest.raises(FrameError):
        scpi.command("ANALOG:PIN AIN0,1")  # an input


def test_scpi_clients_share_one_board(sim, world):
    a = SCPIClient(*_hostport(sim.endpoints["scpi"]), timeout=TIMEOUT)
    b = SCPIClient(*_hostport(sim.endpoints["scpi"]), timeout=TIMEOUT)
    try:
        a.command("SOUR1:VOLT 0.3", "OUTPUT1:STATE ON")
        assert b.query_float("SOUR1:VOLT?") == pytest.approx(0.3)
        assert b.query("OUTPUT1:STATE?") == "ON"
    finally:
        a.close()
        b.close()


# -- monitor protocol ------------------------------------------------------------------
def _header(op: bytes, address: int, count: int) -> bytes:
    return op + b"\x00" + struct.pack("<HI", count, address)


def test_monitor_framing(raw, sim):
    r = raw("monitor")
    setpoint = R.pid(0) + R.PID_SETPOINT
    write = _header(b"w", setpoint, 2)
    r.sock.sendall(write + struct.pack("<II", 0xFFFF_F800, 0x1234))  # setpoint -0.25 V, then p
    assert r.recv_exactly(8) == write  # the acknowledgement is the header, echoed
    read = _header(b"r", setpoint, 2)
    r.sock.sendall(read)
    assert r.recv_exactly(8) == read
    words = struct.unpack("<II", r.recv_exactly(8))
    assert words == (0x3800, 0x1234)  # the setpoint register keeps 14 bits, as in the Verilog
    assert R.word_to_volts(words[0]) == -0.25
    # A zero-length request is ignored without an answer; the stream stays in step.
    r.sock.sendall(_header(b"r", setpoint, 0) + read)
    assert r.recv_exactly(8) == read
    r.recv_exactly(8)
    # Synthesis constants are read-only.
    r.sock.sendall(_header(b"w", R.pid(0) + R.FILTER_STAGES, 1) + struct.pack("<I", 9))
    r.recv_exactly(8)
    r.sock.sendall(_header(b"r", R.pid(0) + R.FILTER_STAGES, 1))
    assert struct.unpack("<I", r.recv_exactly(12)[8:]) == (4,)
    # "c" ends the session: the server closes the connection.
    r.sock.sendall(_header(b"c", 0, 0))
    assert r.sock.recv(1) == b""


def test_monitor_client_round_trip(sim):
    host, port = _hostport(sim.endpoints["monitor"])
    with MonitorClient(host, port, timeout=TIMEOUT) as regs:
        regs.write_word(R.pid(1) + R.PID_P, R.pid_p_word(-2.5))
        assert R.pid_p_gain(regs.read_word(R.pid(1) + R.PID_P)) == -2.5
        table = (np.sin(np.linspace(0, 2 * np.pi, R.BUFFER_SAMPLES, endpoint=False)) * 8191).astype(int) & 0x3FFF
        regs.write(R.ASG1.table, table)
        back = regs.read(R.ASG1.table, R.BUFFER_SAMPLES)
        assert back.dtype == np.uint32 and np.array_equal(back, table)
        assert regs.read_word(R.hk(R.HK_ID)) == 1
        with pytest.raises(RangeError, match="word-aligned"):
            regs.read(R.pid(0) + 2)
        with pytest.raises(RangeError, match="1..65535"):
            regs.read(R.pid(0), 0)
        with pytest.raises(RangeError, match="FPGA window"):
            regs.read(0x1000)
    with pytest.raises(LinkClosed):
        regs.read_word(R.hk(R.HK_ID))


def test_monitor_client_faults(sim, world):
    host, port = _hostport(sim.endpoints["monitor"])
    with MonitorClient(host, port, timeout=TIMEOUT) as regs:
        regs.write_word(R.pid(0) + R.PID_SETPOINT, 100)
        world.fault(kind="link", name=NODE, mode="mute")
        start = time.monotonic()
        with pytest.raises(LinkTimeout):
            regs.read_word(R.pid(0) + R.PID_SETPOINT)
        assert time.monotonic() - start < 2 * TIMEOUT
        world.fault(kind="link", name=NODE, mode="garble")
        with pytest.raises(FrameError):
            # An acknowledgement is 8 bytes with 2 bit flips, which cancel 1 time in 64.
            for _ in range(5):
                regs.write_word(R.pid(0) + R.PID_SETPOINT, 100)
        world.fault(kind="link", name=NODE, mode="clear")
        assert regs.read_word(R.pid(0) + R.PID_SETPOINT) == 100  # reconnected, in step again


def test_monitor_refused_and_closed_links():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(LinkClosed, match="cannot connect"):
        MonitorClient("127.0.0.1", port, timeout=TIMEOUT).read_word(R.HK_BASE)
    with socket.create_server(("127.0.0.1", 0)) as server:  # accepts, then hangs up
        client = MonitorClient("127.0.0.1", server.getsockname()[1], timeout=TIMEOUT)
        done = threading.Event()

        def hang_up():
            conn, _ = server.accept()
            conn.recv(8)
            conn.close()
            done.set()

        thread = threading.Thread(target=hang_up)
        thread.start()
        with pytest.raises(LinkClosed, match="closed the connection"):
            client.read_word(R.HK_BASE)
        thread.join(2)
        client.close()


# -- the driver ------------------------------------------------------------------------
@pytest.fixture
def driver(sim):
    with RedPitayaDriver(sim.url, CHANNELS, timeout=TIMEOUT, name=NODE) as d:
        yield d


def test_open_driver_names_the_class(sim):
    with open_driver("redpitaya", sim.url, CHANNELS[:2], timeout=TIMEOUT) as d:
        assert isinstance(d, RedPitayaDriver)
        assert d.monitor_port == _hostport(sim.endpoints["monitor"])[1]
        assert d.idn.startswith("REDPITAYA")


def test_write_out1_drives_the_world(driver, world):
    assert driver.write("rf_drive", 0.4) == pytest.approx(0.4)
    assert eventually(lambda: world.get("rf_drive") == pytest.approx(0.4))
    assert driver.read("rf_drive") == pytest.approx(0.4)
    driver.write("rf_drive", 0.0)  # zero amplitude also switches the output off
    assert eventually(lambda: world.get("rf_drive") == 0.0)
    assert driver.scpi.query("OUTPUT1:STATE?") == "OFF"
    with pytest.raises(RangeError, match=r"\[0, 1\]"):
        driver.write("rf_drive", 1.2)


def test_read_fast_and_slow_inputs(driver, world):
    # Offsets move the quantities away from zero, so the wiring scale is really checked.
    world.fault(kind="sensor", name="interferometer_phase", mode="offset", value=1.5)
    world.fault(kind="sensor", name="rf_forward", mode="offset", value=600.0)
    world.fault(kind="sensor", name="rf_reflected", mode="offset", value=100.0)
    in1 = driver.read("interferometer")
    assert in1 == pytest.approx(world.get("interferometer_phase") / math.pi, abs=0.01)
    assert in1 > 0.4
    in2 = driver.read("forward_detector")
    assert in2 == pytest.approx(world.get("rf_forward") / 2000, abs=0.01)
    assert in2 > 0.25
    ain0 = driver.read("reflected_detector")
    assert ain0 == pytest.approx(3.3 * world.get("rf_reflected") / 500, abs=0.03)  # 3.3 mV rms noise
    assert ain0 > 0.6


def test_slow_outputs_and_pins(driver, sim):
    driver.write("aux_dac", 0.9)
    assert driver.read("aux_dac") == pytest.approx(0.9, abs=0.01)
    driver.write("shutter", 1)
    assert driver.read("shutter") == 1.0
    assert sim.fpga.read_word(R.hk(R.HK_EXP_P_DIR)) & (1 << 2)  # set to output at open
    assert driver.read("door_sense") == 0.0
    sim.set_input_pin("DIO3_N", 1)
    assert driver.read("door_sense") == 1.0
    with pytest.raises(ConfigError, match="input"):
        driver.write("door_sense", 1)


def test_safe_state(driver, world):
    driver.write("rf_drive", 0.6)
    driver.write("shutter", 1)
    assert eventually(lambda: world.get("rf_drive") == pytest.approx(0.6))
    results = driver.safe_state()
    assert all(r.ok for r in results.values()), results
    assert set(results) == {"rf_drive", "aux_dac", "shutter"}
    assert eventually(lambda: world.get("rf_drive") == 0.0)
    assert driver.read("shutter") == 0.0


@pytest.mark.parametrize("address, direction, message", [
    ("in3", "in", "allowed: in1, in2"),
    ("dio8_p", "out", "allowed"),
    ("A0", "in", "allowed"),
    ("ain0", "out", "must have direction in"),
    ("out1", "in", "must have direction out"),
])
def test_bad_address_is_a_config_error(sim, address, direction, message):
    with pytest.raises(ConfigError, match=message) as info:
        RedPitayaDriver(sim.url, [ChannelSpec("x", address, direction=direction)], timeout=TIMEOUT)
    assert "'x'" in str(info.value)


def test_bad_options_are_config_errors(sim):
    with pytest.raises(ConfigError, match="samples"):
        RedPitayaDriver(sim.url + "&samples=0", CHANNELS, timeout=TIMEOUT)
    with pytest.raises(ConfigError, match="monitor_port"):
        RedPitayaDriver(sim.url.split("?")[0] + "?monitor_port=abc", CHANNELS, timeout=TIMEOUT)


def test_muted_link_times_out_then_recovers(driver, world):
    world.fault(kind="link", name=NODE, mode="mute")
    for action in (lambda: driver.read("interferometer"), lambda: driver.read("reflected_detector"),
                   lambda: driver.write("rf_drive", 0.2)):
        start = time.monotonic()
        with pytest.raises(LinkTimeout) as info:
            action()
        assert time.monotonic() - start < 2 * TIMEOUT
        assert NODE in str(info.value)
    world.fault(kind="link", name=NODE, mode="clear")
    driver.write("rf_drive", 0.2)
    assert driver.read("rf_drive") == pytest.approx(0.2)


def test_garbled_link_is_a_frame_error(driver, world):
    world.fault(kind="link", name=NODE, mode="garble")
    with pytest.raises(FrameError):
        driver.write("rf_drive", 0.3)  # the one-byte *OPC? reply is always corrupted
    with pytest.raises(FrameError):
        driver.read("interferometer")
    world.fault(kind="link", name=NODE, mode="clear")
    assert -1.0 <= driver.read("interferometer") <= 1.0


def test_refused_and_closed(sim):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(LinkClosed, match="cannot connect"):
        RedPitayaDriver(f"tcp://127.0.0.1:{port}", CHANNELS, timeout=TIMEOUT)
    d = RedPitayaDriver(sim.url, CHANNELS, timeout=TIMEOUT)
    d.close()
    with pytest.raises(LinkClosed):
        d.read("interferometer")
    d.close()  # idempotent


def test_driver_registers_reach_the_fpga(driver, sim):
    assert isinstance(driver.registers, MonitorClient)
    driver.registers.write_word(R.pid(2) + R.PID_SETPOINT, R.volts_to_word(0.125))
    assert sim.fpga.read_word(R.pid(2) + R.PID_SETPOINT) == 1024
    assert R.word_to_volts(driver.registers.read_word(R.pid(2) + R.PID_SETPOINT)) == 0.125


def test_simulator_close_frees_ports(world):
    sim = RedPitayaSimulator(world, node=NODE).start()
    scpi_ep, monitor_ep = sim.endpoints["scpi"], sim.endpoints["monitor"]
    clients = [socket.create_connection(_hostport(ep), timeout=1) for ep in (scpi_ep, monitor_ep)]
    # One round trip each, so both connections are being served when the simulator closes.
    clients[0].sendall(b"*OPC?\r\n")
    assert clients[0].recv(3) == b"1\r\n"
    clients[1].sendall(_header(b"r", R.HK_BASE, 1))
    assert len(_recv_exactly(clients[1], 12)) == 12
    sim.close()
    sim.close()  # idempotent
    for c in clients:
        assert c.recv(1) == b""  # the server hung up on its clients
        c.close()
    for ep in (scpi_ep, monitor_ep):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(_hostport(ep), timeout=1).close()

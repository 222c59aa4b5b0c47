"""The FPGA fast path: RedPitayaDriver.fpga against the in-process simulator, whose
FPGA executes the configured PIDs on the simulated world (in2 = forward power / 2000 W,
out1 = RF drive, forward power = 1500 W * drive**2 with the RF permit)."""
from __future__ import annotations

import time

import numpy as np
import pytest

from labrig.drivers.contract import ChannelSpec
from labrig.drivers.errors import ConfigError, LinkTimeout, RangeError
from labrig.drivers.redpitaya import registers as R
from labrig.drivers.redpitaya.driver import RedPitayaDriver
from labrig.drivers.redpitaya.fpga import Fpga
from labrig.drivers.redpitaya.monitor import MonitorClient
from labrig.simulators.redpitaya import RedPitayaSimulator
from support import eventually

NODE = "rp-fast"
TIMEOUT = 0.5
CHANNELS = [ChannelSpec("rf_drive", "out1", direction="out", safe_value=0.0),
            ChannelSpec("forward", "in2", unit="V")]
LOOP = dict(input="in2", output="out1", setpoint=0.2, p=-0.3, i=-20.0, min_voltage=0.0, max_voltage=0.9)


@pytest.fixture
def sim(world):
    world.set("rf_permit", 1)  # the PLC's permit: no forward power without it
    with RedPitayaSimulator(world, node=NODE) as s:
        yield s


@pytest.fixture
def driver(sim):
    with RedPitayaDriver(sim.url + "&samples=64", CHANNELS, timeout=TIMEOUT, name=NODE) as d:
        yield d


@pytest.fixture
def fpga(driver) -> Fpga:
    return driver.fpga


def settled(read, target: float, tol: float, *, within: float, hold: int = 15):
    """(seconds until `hold` reads in a row stayed within tol of target, the reads) or (None, reads)."""
    start, reads, streak = time.monotonic(), [], 0
    while time.monotonic() - start < within:
        value = read()
        reads.append(value)
        streak = streak + 1 if abs(value - target) <= tol else 0
        if streak >= hold:
            return time.monotonic() - start, reads
    return None, reads


def test_modules_and_their_names(fpga):
    assert fpga.modules == ["pid0", "pid1", "pid2", "iq0", "iq1", "iq2", "asg0", "asg1"]
    assert "configure(input, output, setpoint, p, i" in repr(fpga.pid0)
    with pytest.raises(ConfigError, match=r"no FPGA module 'pid3'; allowed: pid0.*did you mean"):
        fpga.module("pid3")


def test_pid_configure_reads_back_and_reaches_the_registers(fpga, sim):
    state = fpga.pid1.configure(input="in1", output="out2", setpoint=0.25, p=1.5, i=100.0,
                                min_voltage=-0.5, max_voltage=0.75, ival=0.0)
    assert state["input"] == "in1" and state["output"] == "out2"
    assert state["setpoint"] == 0.25 and state["p"] == 1.5
    assert state["i"] == pytest.approx(100.0, rel=1e-4)
    assert (state["min_voltage"], state["max_voltage"]) == (-0.5, 0.75)
    base = R.pid(1)
    regs = sim.fpga
    assert regs.read_word(base + R.PID_P) == R.pid_p_word(1.5)
    assert regs.read_word(base + R.PID_I) == R.pid_i_word(100.0)
    assert regs.read_word(base + R.DSP_INPUT_SELECT) == R.DSP_MODULES["in1"]
    assert regs.read_word(base + R.DSP_OUTPUT_DIRECT) == R.OUTPUT_DIRECTS["out2"]
    assert fpga.pid1.configure(output="off")["output"] == "off"  # one setting at a time, the rest kept
    assert fpga.pid1.state()["p"] == 1.5


@pytest.mark.parametrize("module, settings, error, message", [
    ("pid0", {"input": "in3"}, ConfigError, r"pid0.input = 'in3'; allowed: in1, in2"),
    ("pid0", {"output": "out3"}, ConfigError, r"allowed: off, out1, out2, both"),
    ("pid0", {"p": 1e6}, RangeError, r"pid0.p = 1e\+06 is outside \[-2048, 2048\]"),
    ("pid0", {"i": 1e6}, RangeError, r"pid0.i = 1e\+06 is outside .* Hz"),
    ("pid0", {"setpoint": "high"}, RangeError, r"a finite number is required"),
    ("pid0", {"setpoint": float("nan")}, RangeError, r"a finite number is required"),
    ("pid0", {"d": 10.0}, ConfigError, r"no setting 'd': this FPGA image has no derivative"),
    ("pid0", {"kp": 1.0}, ConfigError, r"allowed: input, output, setpoint, p, i"),
    ("pid0", {"min_voltage": 0.5, "max_voltage": 0.2}, RangeError, r"min_voltage 0.5 V is above max_voltage"),
    ("iq0", {"bandwidth": [100, 200, 300]}, ConfigError, r"iq0 has 2 filter stages"),
    ("iq0", {"frequency": -5.0}, RangeError, r"iq0.frequency = -5 is outside \[0, 6.25e\+07\] Hz"),
    ("asg0", {"waveform": "triangle"}, ConfigError, r"allowed: sin, cos, ramp, halframp, square, dc"),
    ("asg1", {"amplitude": 1.5}, RangeError, r"asg1.amplitude = 1.5 is outside \[0, 1\] V"),
])
def test_bad_settings_are_refused_before_anything_is_written(fpga, sim, module, settings, error, message):
    before = sim.fpga.read_word(R.pid(0) + R.PID_SETPOINT)
    with pytest.raises(error, match=message):
        fpga.module(module).configure(**({"setpoint": 0.3, **settings} if module == "pid0" else settings))
    assert sim.fpga.read_word(R.pid(0) + R.PID_SETPOINT) == before  # the valid setpoint was not written


def test_iq_registers_as_pyrpl_writes_them(fpga, sim):
    state = fpga.iq1.configure(input="in1", output="off", frequency=1e6, bandwidth=[1000, 2000], phase=30,
                               gain=0.5, amplitude=0.25, quadrature_factor=10, acbandwidth=100,
                               output_signal="quadrature")
    assert state["frequency"] == pytest.approx(1e6, abs=0.03)
    assert state["phase"] == pytest.approx(30, abs=1e-6)
    assert [bw / want for bw, want in zip(state["bandwidth"], (1000, 2000))] == pytest.approx([1, 1], abs=0.45)
    assert state["bandwidth"][1] == pytest.approx(2 * state["bandwidth"][0], rel=1e-3)  # powers of two apart
    assert (state["gain"], state["amplitude"], state["quadrature_factor"]) == (0.5, 0.25, 10)
    assert state["output_signal"] == "quadrature" and state["on"] is True
    base = R.dsp("iq1")
    regs = sim.fpga
    assert regs.read_word(base + R.IQ_FREQUENCY) == round(1e6 / R.CLOCK_HZ * 2 ** 32)
    assert regs.read_word(base + R.IQ_PHASE) == round(-30 / 360 * 2 ** 32) % 2 ** 32  # pyrpl inverts it
    assert regs.read_word(base + R.IQ_G1) == regs.read_word(base + R.IQ_G4) == 0.5 * 2 ** 11
    assert regs.read_word(base + R.IQ_BANDWIDTH) & 0x8080 == 0x8080  # both stages on, low-pass
    assert regs.read_word(base + R.IQ_INPUTFILTER) & 0xC0 == 0xC0  # the AC coupling is a high-pass


def test_asg_drives_the_rf_and_reads_back_its_waveform(fpga, sim, world):
    state = fpga.asg0.configure(waveform="sin", frequency=1e6, amplitude=0.3, output="out1")
    assert state == {"waveform": "sin", "frequency": pytest.approx(1e6, rel=1e-6), "amplitude": pytest.approx(0.3, abs=2e-4),
                     "offset": 0.0, "output": "out1", "trigger": "immediately", "on": True}
    table = sim.fpga.asg_tables[0].astype(int)
    table = np.where(table >= 8192, table - 16384, table) / 8191
    assert table == pytest.approx(np.sin(np.linspace(0, 2 * np.pi, 16384, endpoint=False)), abs=2e-4)
    assert eventually(lambda: world.get("rf_drive") == pytest.approx(0.3, abs=2e-4))
    fpga.asg0.configure(on=False)
    assert eventually(lambda: world.get("rf_drive") == 0.0)


def test_closed_loop_step_response_settles(fpga, driver, world):
    """in2 (forward power detector) -> pid0 -> out1 (RF drive): the simulated FPGA regulates."""
    read = lambda: driver.read("forward")  # noqa: E731 - the measured PID input, through SCPI
    assert read() == pytest.approx(0.0, abs=0.01)  # no drive yet
    fpga.pid0.configure(**LOOP)
    t, reads = settled(read, 0.2, 0.01, within=3.0)
    assert t is not None, f"did not settle at 0.2 V: last reads {reads[-10:]}"
    drive = world.get("rf_drive")
    assert drive == pytest.approx((0.2 * 2000 / 1500) ** 0.5, abs=0.01)  # 400 W needs a drive of 0.516
    fpga.pid0.configure(setpoint=0.3)  # the step
    t, reads = settled(read, 0.3, 0.01, within=3.0)
    assert t is not None and t < 1.0, f"no settling within 1 s of the step: {reads[:40]}"
    # The integrator leaves no offset: the mean over ~20 of the world's noisy refreshes (0.5 % rms).
    assert np.mean([read() for _ in range(60)]) == pytest.approx(0.3, abs=0.004)
    assert world.get("rf_drive") == pytest.approx((0.3 * 2000 / 1500) ** 0.5, abs=0.01)
    assert world.get("rf_drive") > drive + 0.1


def test_output_limits_hold_and_the_integrator_resets(fpga, world):
    # 0.9 V (1800 W) is out of reach (1500 W at full drive): the integrator winds up to its
    # +4 V rail, and max_voltage holds the drive at 0.5.
    fpga.pid0.configure(**{**LOOP, "setpoint": 0.9, "p": 0.0, "i": -50.0, "max_voltage": 0.5})
    assert eventually(lambda: fpga.pid0.state()["ival"] > 3.9, timeout=3)
    for _ in range(20):
        assert world.get("rf_drive") == pytest.approx(0.5, abs=1e-3)
        time.sleep(0.005)
    # And the lower limit from the other side: -0.5 V is below anything in2 reads.
    fpga.pid0.configure(setpoint=-0.5, min_voltage=0.1)
    assert eventually(lambda: world.get("rf_drive") == pytest.approx(0.1, abs=1e-3), timeout=3)
    assert eventually(lambda: fpga.pid0.state()["ival"] < -3.9, timeout=3)
    fpga.pid0.configure(i=0.0, min_voltage=-1.0)  # integrator frozen at -4 V: the output sits at -1 V ...
    assert fpga.pid0.state()["ival"] < -3.9
    assert eventually(lambda: world.get("rf_drive") == 0.0)  # (the RF drive cannot go below 0)
    fpga.pid0.configure(ival=0.3)  # ... until it is set, here to 0.3 V ...
    assert eventually(lambda: world.get("rf_drive") == pytest.approx(0.3, abs=1e-3))
    fpga.pid0.reset()  # ... or reset
    assert fpga.pid0.state()["ival"] == 0.0
    assert eventually(lambda: world.get("rf_drive") == 0.0)


def test_a_channel_write_and_the_safe_state_take_out1_back(fpga, driver, world):
    fpga.pid0.configure(**LOOP)
    assert eventually(lambda: world.get("rf_drive") > 0.4)
    driver.write("rf_drive", 0.2)  # an explicit setpoint wins over the running loop
    assert fpga.pid0.state()["output"] == "off"
    time.sleep(0.05)  # a PID still on out1 would have moved the drive by now
    assert world.get("rf_drive") == pytest.approx(0.2)
    fpga.pid0.configure(output="out1")
    fpga.asg1.configure(waveform="dc", offset=0.1, output="both")
    assert fpga.routed() == {"pid0": "out1", "asg1": "both"}
    results = driver.safe_state()
    assert all(r.ok for r in results.values()) and "fpga" not in results
    assert fpga.routed() == {}  # both DACs, though no channel here is on out2
    assert eventually(lambda: world.get("rf_drive") == 0.0)


def test_muted_monitor_link_times_out_naming_the_board(fpga, world):
    world.fault(kind="link", name=NODE, mode="mute")
    start = time.monotonic()
    with pytest.raises(LinkTimeout, match=NODE):
        fpga.pid0.configure(setpoint=0.1)
    assert time.monotonic() - start < 2 * TIMEOUT
    world.fault(kind="link", name=NODE, mode="clear")
    assert fpga.pid0.configure(setpoint=0.1)["setpoint"] == pytest.approx(0.1, abs=1e-4)


def test_no_monitor_port_is_a_config_error(sim):
    with RedPitayaDriver(sim.url.split("?")[0], CHANNELS, timeout=TIMEOUT) as d:
        with pytest.raises(ConfigError, match="monitor_port"):
            d.fpga
        assert d.safe_state()["rf_drive"].ok  # and the safe state does not need it
    with pytest.raises(ConfigError, match="fpga_backend='verilog'; allowed: registers, pyrpl"):
        RedPitayaDriver(sim.url + "&fpga_backend=verilog", CHANNELS, timeout=TIMEOUT)


# -- the pyrpl backend: the same modules through pyrpl's objects ---------------------
@pytest.fixture
def pyrpl_env(tmp_path, monkeypatch):
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    monkeypatch.setenv("PYRPL_USER_DIR", str(tmp_path / "pyrpl"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))


def test_pyrpl_backend_writes_what_labrig_reads(pyrpl_env, sim, world):
    host, port = sim.endpoints["monitor"].removeprefix("tcp://").rsplit(":", 1)
    regs = MonitorClient(host, int(port), timeout=TIMEOUT)
    via_pyrpl, own = Fpga(regs, backend="pyrpl"), Fpga(regs)
    try:
        settings = {"pid2": dict(input="in2", output="out2", setpoint=0.125, p=-0.75, i=-40.0,
                                 min_voltage=-0.25, max_voltage=0.5),
                    "iq2": dict(input="in1", output="off", frequency=2.5e6, bandwidth=[500.0, 1000.0], phase=45.0,
                                gain=2.0, amplitude=0.125, quadrature_factor=8, acbandwidth=50.0,
                                output_signal="output_direct"),
                    "asg1": dict(waveform="halframp", frequency=1e4, amplitude=0.5, offset=-0.25, output="off")}
        for name, values in settings.items():
            state = via_pyrpl.module(name).configure(**values)
            mine = own.module(name).state()
            for key, value in mine.items():
                if key == "ival":
                    continue  # the running integrator moves between the two reads
                want = state[key]
                assert value == (pytest.approx(want, rel=1e-6, abs=1e-9) if not isinstance(want, str) else want), \
                    (name, key)
        assert own.pid2.state()["i"] == pytest.approx(-40.0, rel=1e-4)
        own.pid2.configure(i=0.0, ival=0.5)  # frozen, so the reset is all that moves it
        via_pyrpl.pid2.reset()
        assert own.pid2.state()["ival"] == 0.0
    finally:
        via_pyrpl.close()
        regs.close()

"""Unmodified pyrpl drives the simulated FPGA over the monitor protocol.

The one seam: pyrpl's RedPitaya always logs into the board over ssh (to upload
its FPGA image and start monitor_server) unless its hostname is one of its own
sentinels. We use hostname="_NONE_" (pyrpl's "no board" mode: no ssh, no
modules), point its parameters at the simulator's monitor port and call pyrpl's
own startclient(), which opens pyrpl's MonitorClient and builds every hardware
module exactly as after a real start. Nothing in pyrpl is patched.

pyrpl needs a Qt binding (offscreen here), writes a user directory (a temporary
one here) and is imported inside the fixture, never at collection time.
"""
from __future__ import annotations

import importlib
import math
import time
from collections import OrderedDict

import numpy as np
import pytest

from labrig.drivers.redpitaya import registers as R
from labrig.simulators.redpitaya import RedPitayaSimulator

NODE = "rp-fpga"


@pytest.fixture(scope="module")
def pyrpl_redpitaya_class(tmp_path_factory):
    """pyrpl's RedPitaya class, imported with a private user dir and an offscreen Qt."""
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("pyrpl")
    runtime = home / "xdg"
    runtime.mkdir(mode=0o700)
    mp.setenv("QT_QPA_PLATFORM", "offscreen")
    mp.setenv("PYRPL_USER_DIR", str(home / "user_dir"))
    mp.setenv("XDG_RUNTIME_DIR", str(runtime))
    try:
        importlib.import_module("pyrpl")  # the dev extra installs it: a missing pyrpl is a failure
        from pyrpl import redpitaya
        yield redpitaya
    finally:
        mp.undo()




@pytest.fixture
def sim(world):
    with RedPitayaSimulator(world, node=NODE) as s:
        yield s


@pytest.fixture
def rp(pyrpl_redpitaya_class, sim):
    module = pyrpl_redpitaya_class
    # RedPitaya() updates pyrpl's module-level defaults in place: restore them afterwards.
    saved = dict(module.defaultparameters)
    port = int(sim.endpoints["monitor"].rsplit(":", 1)[1])
    board = module.RedPitaya(hostname="_NONE_", gui=False, silence_env=True)
    try:
        board.parameters.update(hostname="127.0.0.1", port=port)
        board.modules = OrderedDict()  # "_NONE_" leaves a list here
        board.parent = board  # what a normal start sets last
        board.startclient()  # pyrpl's MonitorClient + every hardware module
        yield board
    finally:
        if board.client is not None:
            board.client.close()
        module.defaultparameters.clear()
        module.defaultparameters.update(saved)


def test_pyrpl_builds_every_module_on_the_simulator(rp, sim):
    assert type(rp.client).__module__ == "pyrpl.redpitaya_client"
    assert {"hk", "ams", "scope", "asg0", "asg1", "pid0", "pid1", "pid2", "iq0", "iir"} <= set(rp.modules)
    rp.hk.led = 0b1010_0101
    assert sim.fpga.read_word(R.hk(R.HK_LED)) == 0b1010_0101
    rp.ams.dac2 = 0.9  # slow DAC: the PWM word SCPI's AOUT2 reads too
    assert R.pwm_volts(sim.fpga.read_word(R.AMS_BASE + R.AMS_DAC[2])) == pytest.approx(0.9, abs=0.01)
    assert rp.pid0.inputfilter_options[len(rp.pid0.inputfilter_options) // 2] == 0  # from the FILTER* constants


def test_asg0_setup_reaches_the_registers_and_the_rf_drive(rp, sim, world):
    asg = rp.asg0
    asg.setup(waveform="sin", frequency=1e6, amplitude=0.4, offset=0.1,
              trigger_source="immediately", output_direct="out1")
    fpga = sim.fpga
    word = fpga.read_word(R.ASG0.amplitude_offset)
    assert R.asg_amplitude(word) == pytest.approx(0.4, abs=1e-4)
    assert R.asg_offset(word) == pytest.approx(0.1, abs=1e-3)
    assert word == R.asg_amplitude_offset(0.4, 0.1)  # labrig's register map agrees with pyrpl
    assert fpga.read_word(R.ASG0.counter_step) == R.hz_to_step(1e6)
    assert R.step_to_hz(fpga.read_word(R.ASG0.counter_step)) == pytest.approx(1e6, rel=1e-6)
    control = fpga.read_word(R.ASG0.control)
    assert control & R.ASG_TRIGGER_MASK == 1  # immediately
    assert not control & R.ASG_ZERO  # on
    assert fpga.read_word(R.ASG0.output_select) == R.OUTPUT_DIRECTS["out1"]
    table = fpga.asg_tables[0].astype(int)
    table = np.where(table >= 8192, table - 16384, table) / 8191
    assert table == pytest.approx(np.sin(np.linspace(0, 2 * np.pi, 16384, endpoint=False)), abs=2e-4)
    # pyrpl reads its own settings back from the simulated registers.
    assert (asg.frequency, asg.amplitude, asg.output_direct, asg.on) == (
        pytest.approx(1e6, rel=1e-6), pytest.approx(0.4, abs=1e-4), "out1", True)
    # The running ASG routed to out1 is the RF drive.
    deadline = time.monotonic() + 2
    while world.get("rf_drive") != pytest.approx(0.4, abs=1e-4) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert world.get("rf_drive") == pytest.approx(0.4, abs=1e-4)
    asg.output_direct = "off"
    deadline = time.monotonic() + 2
    while world.get("rf_drive") != 0.0 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert world.get("rf_drive") == 0.0


def test_pid0_registers(rp, sim):
    pid = rp.pid0
    pid.setup(input="in1", output_direct="out2", setpoint=0.25, p=1.5, i=100.0,
              min_voltage=-0.5, max_voltage=0.75)
    base = R.pid(0)
    fpga = sim.fpga
    assert R.word_to_volts(fpga.read_word(base + R.PID_SETPOINT)) == 0.25
    assert R.pid_p_gain(fpga.read_word(base + R.PID_P)) == 1.5
    assert R.pid_i_hz(fpga.read_word(base + R.PID_I)) == pytest.approx(100.0, rel=1e-4)
    assert fpga.read_word(base + R.PID_I) == R.pid_i_word(100.0)
    assert R.word_to_volts(fpga.read_word(base + R.PID_MIN_VOLTAGE)) == -0.5
    assert R.word_to_volts(fpga.read_word(base + R.PID_MAX_VOLTAGE)) == 0.75
    assert fpga.read_word(base + R.DSP_INPUT_SELECT) == R.DSP_MODULES["in1"]
    assert fpga.read_word(base + R.DSP_OUTPUT_DIRECT) == R.OUTPUT_DIRECTS["out2"]
    # Written from the simulator's side, read through pyrpl: one register map.
    fpga.write_word(base + R.PID_P, R.pid_p_word(-3.0))
    assert pid.p == -3.0
    pid.i = 0  # the simulated PID runs now: a frozen integrator keeps what is written
    pid.ival = 0.5
    assert pid.ival == 0.5


def test_scope_trace(rp, world):
    world.fault(kind="sensor", name="interferometer_phase", mode="offset", value=1.0)
    rp.asg1.setup(waveform="sin", frequency=1e5, amplitude=0.3, trigger_source="immediately",
                  output_direct="off")
    scope = rp.scope
    scope.input1 = "in1"
    scope.input2 = "asg1"
    scope.decimation = 64  # 8.4 ms per trace
    scope.trigger_source = "immediately"
    scope.rolling_mode = False
    scope.trace_average = 1
    ch1, ch2 = scope.single(timeout=5)
    assert ch1.shape == ch2.shape == (16384,)
    assert ch1.mean() == pytest.approx(world.get("interferometer_phase") / math.pi, abs=0.01)
    assert ch2.max() == pytest.approx(0.3, abs=2e-3) and ch2.min() == pytest.approx(-0.3, abs=2e-3)
    # 1e5 Hz sampled every 64 * 8 ns: 8.4 ms holds ~839 periods of the sine.
    crossings = np.count_nonzero(np.diff(np.sign(ch2)) > 0)
    assert 800 < crossings < 880
    assert scope.voltage_in1 == pytest.approx(world.get("interferometer_phase") / math.pi, abs=0.02)

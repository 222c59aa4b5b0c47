"""The Pi's charge-pump relay: outputs reach the world only while the driver toggles the heartbeat pin.

A real fault for the last test: the process that holds the driver is killed with SIGKILL,
so nothing in it gets to clean up; the relay alone takes the valve down.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pigpio
import pytest

from labrig.drivers.contract import ChannelSpec
from labrig.drivers.errors import ConfigError
from labrig.drivers.gpio.driver import GPIODriver
from labrig.simulators.pigpio_server import PigpioSimulator
from support import eventually

# the last test runs the driver in a process of its own (and kills it)
pytestmark = pytest.mark.processes

NODE = "pi1"
PUMP = 0.2  # s, the simulator's charge-pump time (its default)
MARGIN = 0.5  # s on top of it, for a busy machine: the bound is a safety bound, not a speed goal
CHANNELS = [
    ChannelSpec("door", "GPIO17"),
    ChannelSpec("gas_valve", "PWM18", "out", safe_value=0.0),
    ChannelSpec("trigger", "GPIO23", "out", safe_value=0.0),
]


@pytest.fixture
def sim(world):
    s = PigpioSimulator(world, node=NODE, options={"charge_pump": str(PUMP)}).start()
    try:
        yield s
    finally:
        s.close()


def dropped_within(world, bound: float) -> float:
    """Seconds until the world sees the valve and the trigger at 0; fails past `bound`."""
    start = time.monotonic()
    while not (world.get("gas_valve") == 0.0 and world.get("trigger") == 0.0):
        assert time.monotonic() - start < bound, f"outputs still live {bound:.2f} s after the heartbeat stopped"
        time.sleep(0.005)
    return time.monotonic() - start


def test_outputs_are_dead_until_the_heartbeat_toggles(world, sim):
    with GPIODriver(sim.url, CHANNELS, timeout=0.5, name=NODE) as drv:  # no heartbeat_pin: no toggling
        drv.write("gas_valve", 0.4)
        time.sleep(2 * PUMP)
        assert drv.read("gas_valve") == pytest.approx(0.4)  # the pin is driven ...
        assert world.get("gas_valve") == 0.0 and not sim.charge_pump_live  # ... the relay never picked up


def test_toggling_keeps_the_valve_open_and_stopping_it_drops_it(world, sim):
    with GPIODriver(sim.url, CHANNELS, timeout=0.5, name=NODE, heartbeat_pin=24) as drv:
        drv.write("gas_valve", 0.4)
        drv.write("trigger", 1)
        assert eventually(lambda: world.get("gas_valve") == pytest.approx(0.4) and world.get("trigger") == 1.0)
        levels, open_samples, samples = set(), 0, 0
        deadline = time.monotonic() + 3 * PUMP  # live all along, with the world's pin toggling
        while time.monotonic() < deadline:
            open_samples += sim.charge_pump_live and world.get("gas_valve") == pytest.approx(0.4)
            samples += 1
            levels.add(world.get("heartbeat_pin"))
            time.sleep(0.01)
        # all of them, bar a scheduler stall longer than the pump time on a loaded machine
        assert open_samples >= 0.9 * samples and levels == {0.0, 1.0}

        drv.heartbeat.stop()  # the pump stops: the relay drops on its own
        took = dropped_within(world, PUMP + MARGIN)
        print(f"\n  charge pump: outputs dropped {took:.3f} s after the last edge (pump {PUMP} s)")
        assert not sim.charge_pump_live
        assert drv.read("gas_valve") == pytest.approx(0.4)  # the host's value is kept on the pin

        drv.start_heartbeat()  # toggling resumes: the outputs come back at their present values
        assert eventually(lambda: world.get("gas_valve") == pytest.approx(0.4) and world.get("trigger") == 1.0)
        assert drv.heartbeat.last_error is None


def test_heartbeat_pin_options_are_checked():
    with pytest.raises(ConfigError, match="BCM 24 is the charge-pump heartbeat pin"):
        GPIODriver("mock://", [ChannelSpec("x", "GPIO24", "out")], heartbeat_pin=24)
    with pytest.raises(ConfigError, match="heartbeat_pin 40"):
        GPIODriver("mock://", CHANNELS, heartbeat_pin=40)
    with pytest.raises(ConfigError, match="heartbeat_period"):
        GPIODriver("mock://", CHANNELS, heartbeat_pin=24, heartbeat_period=0)


def test_mock_pin_records_the_heartbeat():
    with GPIODriver("mock://", CHANNELS, heartbeat_pin=24) as drv:
        pin = drv.factory.pin(24)
        assert eventually(lambda: len(pin.states) >= 6)
        levels = [s.state for s in pin.states[1:6]]
        assert all(a != b for a, b in zip(levels, levels[1:]))  # every feed is an edge


DRIVER_PROCESS = textwrap.dedent("""
    import sys, time
    from labrig.drivers.contract import ChannelSpec
    from labrig.drivers.gpio.driver import GPIODriver
    drv = GPIODriver(sys.argv[1], [ChannelSpec("gas_valve", "PWM18", "out", safe_value=0.0)],
                     timeout=0.5, name="pi1", heartbeat_pin=24)
    drv.write("gas_valve", 0.5)
    print("ready", flush=True)
    time.sleep(60)
""")


def test_a_killed_host_process_drops_the_valve(world, sim):
    proc = subprocess.Popen([sys.executable, "-c", DRIVER_PROCESS, sim.url], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert eventually(lambda: world.get("gas_valve") == pytest.approx(0.5), timeout=3)
        os.kill(proc.pid, signal.SIGKILL)  # no finally, no close(): the process just stops
        proc.wait(5)
        dropped_within(world, PUMP + MARGIN)
        # pigpiod kept the PWM running (the relay alone stopped the valve): a new pump brings it back
        pi = pigpio.pi("127.0.0.1", int(sim.url.rsplit(":", 1)[1]), show_errors=False)
        try:
            assert pi.get_PWM_dutycycle(18) > 0
            for level in (1, 0, 1, 0):
                pi.write(24, level)
                time.sleep(0.02)
            assert eventually(lambda: world.get("gas_valve") == pytest.approx(0.5), timeout=PUMP)
        finally:
            pi.stop()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        proc.stdout.close()


def test_the_rig_names_the_heartbeat_pin(ishtar_path, tmp_path):
    assert PigpioSimulator(None, node="pi1", options={"rig": str(ishtar_path)}).heartbeat_pin == 24
    bare = tmp_path / "rig.toml"  # a Pi without a charge-pump relay: its outputs are always live
    bare.write_text(ishtar_path.read_text().replace("options = { heartbeat_pin = 24 }", ""))
    sim = PigpioSimulator(None, node="pi1", options={"rig": str(bare)})
    assert sim.heartbeat_pin is None and sim.charge_pump_live

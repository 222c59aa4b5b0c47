"""The simulated testbed from the command line, driven with the production drivers only.

Done-when of the foundation: after `labrig sim up`, a short driver script ramps gas,
B field and RF power; within 5 s the Langmuir density and the interferometer phase
exceed their thresholds and the PLC's coil current is within 2% of its setpoint;
with the gas off, no plasma. `labrig sim down` leaves no process or port behind.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psutil
import pytest

from labrig.supervisor.devices import density_from_ion_saturation

# runs simulator processes: with the other process-heavy modules, one at a time (scripts/test)
pytestmark = pytest.mark.processes

DENSITY_THRESHOLD = 1e18  # m^-3: helicon (wave) mode
PHASE_THRESHOLD = 0.3  # rad
NO_PLASMA_DENSITY = 5e16  # m^-3: one ADC count of probe current is ~8e15
NO_PLASMA_PHASE = 0.05  # rad


def labrig(*args, env=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "labrig.supervisor.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def ramp(drv, name, start, target, rate, step=0.05):
    n = max(1, int(abs(target - start) / rate / step))
    for i in range(1, n + 1):
        drv.write(name, start + (target - start) * i / n)
        time.sleep(step)


def langmuir_density(ard):
    i_mA = ard.read("langmuir_I")
    return density_from_ion_saturation(i_mA * 1e-3, te_eV=4.0, area_m2=1e-5, ion_mass_amu=39.95) if i_mA < 0 else 0.0


@pytest.fixture
def cli_testbed(ishtar_path, tmp_path):
    env = {**os.environ, "LABRIG_STATE_DIR": str(tmp_path / "state")}
    up = labrig("sim", "up", str(ishtar_path), "--json", env=env)
    assert up.returncode == 0, up.stderr
    record = json.loads(up.stdout)
    try:
        yield record, env
    finally:
        labrig("sim", "down", env=env)


def test_sim_up_lights_the_plasma_through_the_drivers(cli_testbed, ishtar):
    record, env = cli_testbed
    assert set(record) == {"world", "ard1", "rp1", "plc1", "pi1", "gauge1"}
    for name, info in record.items():
        assert psutil.pid_exists(info["pid"]), name
        for endpoint in info["endpoints"].values():
            assert endpoint.startswith(("tcp://127.0.0.1:", "/dev/pts/")), endpoint
    state = {"simulators": record}
    drivers = {node: ishtar.open_driver(node, sim=True, sim_state=state) for node in ("ard1", "rp1", "plc1", "pi1")}
    ard, rp, plc, pi = drivers["ard1"], drivers["rp1"], drivers["plc1"], drivers["pi1"]
    try:
        ard.write("probe_bias", -80.0)
        plc.write("coil_enable", 1)
        plc.write("rf_enable", 1)  # the PLC's RF permit, on the host's request
        ramp(pi, "gas_flow", 0.0, 20.0, 100.0)
        ramp(plc, "coil_current_set", 0.0, 400.0, 300.0)
        ramp(rp, "rf_power", 0.0, 735.0, 400.0)
        deadline = time.monotonic() + 5.0
        while True:
            density, phase, coil = langmuir_density(ard), rp.read("interferometer_phase"), plc.read("coil_current")
            if density > DENSITY_THRESHOLD and phase > PHASE_THRESHOLD and abs(coil - 400.0) <= 8.0:
                break
            assert time.monotonic() < deadline, (
                f"within 5 s: density {density:.2e} (> {DENSITY_THRESHOLD:.0e}), phase {phase:.2f} "
                f"(> {PHASE_THRESHOLD}), coil {coil:.1f} A (400 +- 2%)")
            time.sleep(0.1)
        # the gas off puts the plasma out
        ramp(pi, "gas_flow", 20.0, 0.0, 100.0)
        deadline = time.monotonic() + 5.0
        while langmuir_density(ard) > NO_PLASMA_DENSITY or rp.read("interferometer_phase") > NO_PLASMA_PHASE:
            assert time.monotonic() < deadline, "the plasma did not go out within 5 s of the gas off"
            time.sleep(0.1)
    finally:
        for drv in drivers.values():
            drv.safe_state()
            drv.close()


def test_without_gas_no_plasma(cli_testbed, ishtar):
    record, env = cli_testbed
    state = {"simulators": record}
    with ishtar.open_driver("ard1", sim=True, sim_state=state) as ard, \
            ishtar.open_driver("rp1", sim=True, sim_state=state) as rp, \
            ishtar.open_driver("plc1", sim=True, sim_state=state) as plc:
        ard.write("probe_bias", -80.0)
        plc.write("coil_enable", 1)
        plc.write("rf_enable", 1)  # the PLC's RF permit, on the host's request
        ramp(plc, "coil_current_set", 0.0, 400.0, 300.0)
        ramp(rp, "rf_power", 0.0, 1000.0, 400.0)
        time.sleep(1.0)
        assert rp.read("rf_forward") > 500.0  # the RF is on ...
        assert langmuir_density(ard) < NO_PLASMA_DENSITY  # ... but there is nothing to ionise
        assert rp.read("interferometer_phase") < NO_PLASMA_PHASE
        for drv in (ard, rp, plc):
            drv.safe_state()


def test_status_then_down_leaves_nothing(ishtar_path, tmp_path):
    env = {**os.environ, "LABRIG_STATE_DIR": str(tmp_path / "state")}
    up = labrig("sim", "up", str(ishtar_path), "--json", env=env)
    assert up.returncode == 0, up.stderr
    record = json.loads(up.stdout)
    pids = [info["pid"] for info in record.values()]
    ports = {int(ep.rsplit(":", 1)[1]) for info in record.values() for ep in info["endpoints"].values()
             if ep.startswith("tcp://")}
    again = labrig("sim", "up", str(ishtar_path), env=env)
    assert again.returncode == 2 and "already runs" in again.stderr
    status = labrig("sim", "status", "--json", env=env)
    assert all(v["alive"] for v in json.loads(status.stdout).values())
    down = labrig("sim", "down", env=env)
    assert down.returncode == 0, down.stderr
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    listening = {c.laddr.port for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    assert not (ports & listening), f"ports still listening after sim down: {ports & listening}"
    assert "no simulated testbed" in labrig("sim", "status", env=env).stdout


def test_sim_fault_injects_a_nan_sensor_and_clears_it(cli_testbed, ishtar):
    import math
    record, env = cli_testbed
    with ishtar.open_driver("gauge1", sim=True, sim_state={"simulators": record}) as gauge:
        assert math.isfinite(gauge.read("pressure"))
        fault = labrig("sim", "fault", "sensor", "pressure", "nan", env=env)
        assert fault.returncode == 0, fault.stderr
        time.sleep(0.1)  # the world's next state message carries it
        assert math.isnan(gauge.read("pressure"))
        assert labrig("sim", "fault", "sensor", "pressure", "clear", env=env).returncode == 0
        time.sleep(0.1)
        assert math.isfinite(gauge.read("pressure"))
    bad = labrig("sim", "fault", "sensor", "pressure", "melted", env=env)
    assert bad.returncode == 2 and "allowed: stuck, nan, offset, clear" in bad.stderr
    unknown = labrig("sim", "fault", "sensor", "pressur", "nan", env=env)
    assert unknown.returncode == 2 and "unknown quantity 'pressur'" in unknown.stderr

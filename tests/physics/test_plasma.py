"""The helicon plasma model: modes, hysteresis, lags, noise, input validation.

Every test steps model time directly (much faster than real time).
"""
import json
import math

import pytest

from labrig.simulators.plasma import HeliconPlasma, P_MAX

# the reference operating point: 20 sccm -> 0.4 Pa, 400 A -> 0.08 T
GAS_REF = 0.4
COIL_REF = 400.0


def plasma(*, noise=False, seed=0, **inputs):
    model = HeliconPlasma(seed, noise=noise)
    model.set_input("rf_permit", 1)
    for name, value in inputs.items():
        model.set_input(name, value)
    return model


def drive_for(power):
    """rf_drive that gives this forward power (W)."""
    return math.sqrt(power / P_MAX)


def ramp_power(model, powers, dwell=0.02):
    """Step the forward power through `powers`; return (power, mode) after each dwell."""
    trace = []
    for power in powers:
        model.set_input("rf_drive", drive_for(power))
        model.step(dwell)
        trace.append((power, model.state()["mode"]))
    return trace


def first_power(trace, predicate):
    return next(power for power, mode in trace if predicate(mode))


def settle(model, seconds=2.0):
    model.step(seconds)
    return model.state()


@pytest.mark.parametrize("coil, drives, mode", [
    (COIL_REF, [0.6, 0.7, 0.8, 0.9, 1.0], 3),   # helicon
    (0.0, [0.45, 0.6, 0.75, 0.9, 1.0], 2),      # inductive: no helicon without B
    (COIL_REF, [0.12, 0.16, 0.2, 0.25, 0.3], 1),  # capacitive
])
def test_density_rises_with_power_within_a_mode(coil, drives, mode):
    model = plasma(gas_valve=GAS_REF, coil_current_cmd=coil)
    settle(model)
    densities = []
    for drive in drives:
        model.set_input("rf_drive", drive)
        state = settle(model, 0.3)  # 15 density time constants
        assert state["mode"] == mode, (drive, state)
        densities.append(state["density"])
    assert all(b > a for a, b in zip(densities, densities[1:])), densities


@pytest.mark.parametrize("upper_mode", [2, 3])
def test_jump_up_power_exceeds_drop_down_power(upper_mode):
    model = plasma(gas_valve=GAS_REF, coil_current_cmd=COIL_REF)
    settle(model)
    powers = [5.0 * k for k in range(1, 301)]  # 5 W .. 1500 W
    up = ramp_power(model, powers)
    down = ramp_power(model, powers[::-1])
    jump_up = first_power(up, lambda mode: mode >= upper_mode)
    drop_down = first_power(down, lambda mode: mode < upper_mode)
    assert jump_up >= 1.1 * drop_down, (jump_up, drop_down)
    # and the discharge ends where it started: off at 5 W
    assert down[-1][1] <= 1


def test_no_gas_no_plasma_at_full_power_and_field():
    model = plasma(gas_valve=0.0, coil_current_cmd=600.0, rf_drive=1.0, probe_bias=-80.0)
    state = settle(model, 3.0)
    assert state["pressure"] < 0.01
    assert state["rf_forward"] == pytest.approx(P_MAX)
    assert state["mode"] == 0
    assert state["density"] == 0.0
    assert state["langmuir_current"] == 0.0
    assert state["interferometer_phase"] == 0.0


def test_plasma_goes_out_when_the_gas_is_shut():
    model = plasma(gas_valve=GAS_REF, coil_current_cmd=COIL_REF, rf_drive=1.0)
    assert settle(model)["mode"] == 3
    model.set_input("gas_valve", 0.0)
    state = settle(model, 3.0)
    assert state["mode"] == 0 and state["density"] < 1e12


def test_rf_permit_gates_the_power():
    model = plasma(gas_valve=GAS_REF, coil_current_cmd=COIL_REF, rf_drive=1.0)
    assert settle(model)["density"] > 1e18
    model.set_input("rf_permit", 0)
    state = settle(model, 0.5)
    assert state["rf_forward"] == 0.0 and state["mode"] == 0 and state["density"] < 1e12


def run_trace(seed, steps=200):
    model = HeliconPlasma(seed)
    trace = []
    for k in range(steps):
        if k == 10:
            for name, value in dict(rf_permit=1, gas_valve=GAS_REF, coil_current_cmd=COIL_REF,
                                    probe_bias=-80).items():
                model.set_input(name, value)
        if k == 100:
            model.set_input("rf_drive", 0.8)
        model.step(0.01)
        trace.append(model.state())
    return trace


def test_same_seed_same_trace_other_seed_other_trace():
    a, b, c = run_trace(7), run_trace(7), run_trace(8)
    assert a == b
    assert a != c
    # the noise is on the sensors only: the plasma itself follows the same path
    assert [s["mode"] for s in a] == [s["mode"] for s in c]
    assert a[-1]["mode"] == 3


def test_noise_off_is_noiseless_and_state_is_plain_floats():
    model = plasma(gas_valve=GAS_REF, coil_current_cmd=COIL_REF, rf_drive=1.0)
    model.step(1.0)
    state = model.state()
    assert state["rf_forward"] == P_MAX
    assert state["b_field"] == pytest.approx(2e-4 * state["coil_current"])
    expected = set(HeliconPlasma.INPUTS) | set(HeliconPlasma.OUTPUTS) | {"time"}
    assert set(state) == expected
    assert all(type(v) is float for v in state.values())
    assert json.loads(json.dumps(state)) == state
    assert state["time"] == pytest.approx(1.0)


def test_noisy_sensors_stay_near_the_truth():
    clean = plasma(gas_valve=GAS_REF, coil_current_cmd=COIL_REF, rf_drive=1.0)
    noisy = plasma(noise=True, gas_valve=GAS_REF, coil_current_cmd=COIL_REF, rf_drive=1.0)
    clean.step(2.0)
    noisy.step(2.0)
    truth = clean.state()
    samples = []
    for _ in range(200):
        noisy.step(0.001)
        clean.step(0.001)
        samples.append(noisy.state())
    for name in ("rf_forward", "pressure", "langmuir_current", "interferometer_phase"):
        values = [s[name] for s in samples]
        mean = sum(values) / len(values)
        assert mean == pytest.approx(truth[name], rel=0.01), name
        assert len(set(values)) > 100, name  # it is noisy


def ramp_b_first():
    model = plasma(gas_valve=GAS_REF, coil_current_cmd=COIL_REF)
    settle(model)
    ramp_power(model, [50.0 * k for k in range(1, 31)], dwell=0.05)  # up to full power
    ramp_power(model, [1500.0 - 50.0 * k for k in range(1, 20)] + [P_MAX * 0.25], dwell=0.05)
    return settle(model, 1.0)


def ramp_power_first():
    model = plasma(gas_valve=GAS_REF, coil_current_cmd=0.0)
    settle(model)
    ramp_power(model, [50.0 * k for k in range(1, 31)], dwell=0.05)
    ramp_power(model, [1500.0 - 50.0 * k for k in range(1, 20)] + [P_MAX * 0.25], dwell=0.05)
    model.set_input("coil_current_cmd", COIL_REF)
    return settle(model, 2.0)


def test_ramp_order_matters():
    a, b = ramp_b_first(), ramp_power_first()
    inputs = [name for name in HeliconPlasma.INPUTS]
    assert {k: a[k] for k in inputs} == {k: b[k] for k in inputs}
    assert a["rf_drive"] == 0.5
    assert a["mode"] == 3 and a["density"] > 1e18
    assert b["mode"] == 2 and b["density"] < 1e18


def test_coil_current_follows_its_command_with_an_lr_lag():
    model = plasma(coil_current_cmd=500.0)
    model.step(0.2)  # one time constant
    assert model.state()["coil_current"] == pytest.approx(500 * (1 - math.exp(-1)), rel=0.01)
    model.step(0.8)
    state = model.state()
    assert abs(state["coil_current"] - 500.0) <= 0.02 * 500.0
    assert state["b_field"] == pytest.approx(0.1, rel=0.02)


def test_pressure_follows_the_gas_valve():
    model = plasma(gas_valve=GAS_REF)
    state = settle(model, 3.0)
    assert state["gas_flow"] == pytest.approx(20.0)
    assert state["pressure"] == pytest.approx(0.401, rel=0.01)


def test_one_long_step_equals_many_short_ones():
    long, short = (plasma(gas_valve=GAS_REF, coil_current_cmd=COIL_REF, rf_drive=0.7)
                   for _ in range(2))
    long.step(5.0)
    for _ in range(500):
        short.step(0.01)
    a, b = long.state(), short.state()
    for name in ("coil_current", "pressure", "density", "te", "mode", "time"):
        assert a[name] == pytest.approx(b[name], rel=1e-6), name


def test_probe_reads_ion_saturation_at_minus_80_v():
    model = plasma(gas_valve=GAS_REF, coil_current_cmd=COIL_REF, rf_drive=0.6, probe_bias=-80)
    state = settle(model)
    n, te = state["density"], state["te"]
    i_is = 0.61 * 1.602e-19 * n * 1e-5 * math.sqrt(1.602e-19 * te / 6.63e-26)
    assert state["langmuir_current"] == pytest.approx(-i_is, rel=0.01)
    assert -0.02 < state["langmuir_current"] < -1e-3  # some mA at ~1e18
    assert state["interferometer_phase"] == pytest.approx(0.564 * n / 1e18, rel=0.01)
    # sweeping up, the electron current grows monotonically and saturates above V_p
    currents = []
    for bias in range(-100, 51, 5):
        model.set_input("probe_bias", bias)
        currents.append(model.state()["langmuir_current"])
    assert all(b >= a for a, b in zip(currents, currents[1:]))
    assert currents[-1] > 0 > currents[0]


def test_set_input_rejects_bad_names_and_values():
    model = HeliconPlasma()
    with pytest.raises(ValueError, match=r"unknown plasma input 'rf_power'.*rf_drive"):
        model.set_input("rf_power", 0.5)
    with pytest.raises(ValueError, match=r"rf_drive.*\[0, 1\] V"):
        model.set_input("rf_drive", 1.5)
    with pytest.raises(ValueError, match=r"coil_current_cmd.*\[0, 600\] A"):
        model.set_input("coil_current_cmd", -1)
    with pytest.raises(ValueError, match="probe_bias"):
        model.set_input("probe_bias", math.nan)
    with pytest.raises(ValueError, match="gas_valve"):
        model.set_input("gas_valve", "open")
    with pytest.raises(ValueError, match="dt"):
        model.step(-0.1)
    assert model.inputs["rf_drive"] == 0.0 and model.inputs["door_closed"] == 1.0
    model.set_input("probe_bias", -100)
    assert model.inputs["probe_bias"] == -100.0

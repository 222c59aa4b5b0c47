"""The PID controller alone (no I/O, no clock), against plants simulated here."""
import math

import pytest

from labrig.drivers.errors import ConfigError, RangeError
from labrig.supervisor.runtime.loops import Pid, Timing, next_deadline

DT = 0.01


class FirstOrder:
    """y' = (gain * u - y) / tau: a coil current behind its L/R lag, a heater, a valve and a gauge."""

    def __init__(self, gain=1.0, tau=0.2, y=0.0):
        self.gain, self.tau, self.y = gain, tau, y

    def step(self, u, dt=DT):
        self.y += (self.gain * u - self.y) * dt / self.tau
        return self.y


def run(pid, plant, seconds, dt=DT):
    outputs, values = [], []
    for _ in range(int(round(seconds / dt))):
        u = pid.update(plant.y, dt)
        outputs.append(u)
        values.append(plant.step(u, dt))
    return outputs, values


def test_step_response_of_a_first_order_plant_settles_without_much_overshoot():
    plant = FirstOrder(gain=2.0, tau=0.2)
    pid = Pid(0.5, 5.0, 0.0, setpoint=50.0, output_limits=(0.0, 100.0), mode="auto")
    outputs, values = run(pid, plant, 3.0)
    assert values[-1] == pytest.approx(50.0, abs=0.5)
    assert max(values) < 50.0 * 1.1  # well damped
    assert next(i for i, v in enumerate(values) if v > 45.0) * DT < 1.0  # and not sluggish
    assert all(0.0 <= u <= 100.0 for u in outputs)
    assert outputs[-1] == pytest.approx(25.0, abs=0.5)  # the integral holds the steady output


def test_anti_windup_keeps_the_integral_inside_the_limits_and_recovers_at_once():
    plant = FirstOrder(gain=1.0, tau=0.2)
    pid = Pid(0.5, 5.0, 0.0, setpoint=200.0, output_limits=(0.0, 100.0), mode="auto")
    outputs, values = run(pid, plant, 5.0)  # unreachable: the output sits at its limit for seconds
    assert outputs[-1] == 100.0 and pid.integral <= 100.0
    pid.setpoint = 40.0  # reachable again: the output leaves the limit on the next updates
    outputs, values = run(pid, plant, 2.0)
    assert next(i for i, u in enumerate(outputs) if u < 100.0) <= 2
    assert values[-1] == pytest.approx(40.0, abs=0.5)
    # an integral clamped only at the output would have wound up to 5 s * 5 * 100 and stayed there for seconds


def test_output_limits_and_output_rate_bound_every_update():
    plant = FirstOrder(gain=1.0, tau=0.05)
    pid = Pid(10.0, 50.0, 0.0, setpoint=80.0, output_limits=(-20.0, 60.0), output_rate=200.0, mode="auto")
    outputs, _ = run(pid, plant, 1.0)
    steps = [b - a for a, b in zip([0.0] + outputs, outputs)]
    assert all(-20.0 <= u <= 60.0 for u in outputs)
    assert max(abs(s) for s in steps) <= 200.0 * DT + 1e-9
    assert outputs[-1] == 60.0
    capped = Pid(10.0, 0.0, 0.0, setpoint=80.0, max_step=0.5, mode="auto")
    capped.update(0.0, DT)  # the transfer
    capped.setpoint = 100.0
    assert capped.update(0.0, DT) == 0.5  # at most max_step per update, whatever dt


def test_setpoint_rate_limits_the_working_setpoint():
    pid = Pid(1.0, 0.0, 0.0, setpoint=0.0, setpoint_rate=10.0, mode="auto")
    pid.update(0.0, DT)  # the transfer update
    pid.setpoint = 5.0
    working = []
    for _ in range(100):
        pid.update(0.0, DT)
        working.append(pid.working)
    assert working[0] == pytest.approx(10.0 * DT)
    assert all(b - a <= 10.0 * DT + 1e-12 for a, b in zip(working, working[1:]))
    assert working[49] == pytest.approx(5.0) and working[-1] == 5.0  # 0.5 s for 5 units at 10 /s


def test_derivative_acts_on_the_measurement_not_on_setpoint_steps():
    pid = Pid(0.0, 0.0, 2.0, setpoint=0.0, mode="auto")
    pid.update(1.0, DT)
    assert pid.update(1.0, DT) == 0.0
    pid.setpoint = 100.0
    assert pid.update(1.0, DT) == 0.0  # no kick
    assert pid.update(1.1, DT) == pytest.approx(-2.0 * 0.1 / DT)  # opposes a rising measurement


@pytest.mark.parametrize("setpoint_rate", [None, 20.0])
def test_manual_to_auto_transfer_is_bumpless(setpoint_rate):
    plant = FirstOrder(gain=1.0, tau=0.2, y=10.0)
    pid = Pid(2.0, 4.0, 0.0, setpoint=50.0, setpoint_rate=setpoint_rate, output_limits=(0.0, 100.0))
    pid.manual(output=30.0)
    assert pid.update(plant.y, DT) == 30.0  # manual: the operator's output
    pid.auto()
    first = pid.update(plant.y, DT)
    second = pid.update(plant.y, DT)
    assert first == 30.0  # no jump at the transfer
    # and none after it: only the integral moves (ki * error * dt), plus the P of the setpoint ramp
    assert abs(second - first) <= 4.0 * 40.0 * DT + 2.0 * (setpoint_rate or 0) * DT + 1e-9
    outputs, values = run(pid, plant, 4.0)
    assert values[-1] == pytest.approx(50.0, abs=1.0)


def test_a_live_gain_change_does_not_bump_the_output():
    plant = FirstOrder(gain=1.0, tau=0.2)
    pid = Pid(0.5, 5.0, 0.0, setpoint=20.0, mode="auto")
    run(pid, plant, 0.3)  # still moving: the error is not zero
    before = pid.update(plant.y, DT)
    pid.set_gains(kp=3.0)
    after = pid.update(plant.y, DT)
    assert abs(after - before) < 5.0 * abs(pid.last_error) * DT * 2 + 1e-9


def test_nan_holds_the_output_and_counts():
    pid = Pid(1.0, 1.0, 0.0, setpoint=10.0, mode="auto")
    pid.update(0.0, DT)
    held = pid.update(0.0, DT)
    integral = pid.integral
    assert pid.update(math.nan, DT) == held and pid.update(None, DT) == held
    assert pid.update(math.inf, DT) == held
    assert pid.invalid == 3 and pid.integral == integral
    pid.update(1.0, DT)
    assert pid.invalid == 0


def test_bad_settings_are_refused():
    with pytest.raises(RangeError, match="kp = -1"):
        Pid(-1.0)
    with pytest.raises(RangeError, match="ki = nan"):
        Pid(1.0, math.nan)
    with pytest.raises(RangeError, match="low < high"):
        Pid(output_limits=(5.0, 1.0))
    with pytest.raises(ConfigError, match="allowed: manual, auto"):
        Pid(mode="automatic")


def test_deadlines_stay_on_their_grid_and_overruns_skip_whole_periods():
    assert next_deadline(10.0, 0.001, 10.0004) == (10.001, False, 0)
    nxt, overran, skipped = next_deadline(10.0, 0.001, 10.0035)  # the tick took 3.5 periods
    assert overran and skipped == 2 and nxt == pytest.approx(10.003)
    timing = Timing(0.001, keep=8)
    for i in range(6):
        timing.record(i * 1e-6, 0.001, 2e-4, i == 4, 2 if i == 5 else 0)
    stats = timing.stats()
    assert (stats["ticks"], stats["periods"], stats["overruns"], stats["skipped"]) == (6, 8, 1, 2)
    # the two periods skipped before the last tick count as served by it, one and two periods late
    assert stats["lateness_us"]["max"] == pytest.approx(2005.0)
    assert stats["busy_us"]["p99"] == pytest.approx(200.0)
    timing.request_reset()
    timing.record(0.0, None, 0.0, False)
    assert timing.stats()["ticks"] == 1 and timing.stats()["period_us"] is None

"""The interlock envelope at compile time: what a plan provably violates is refused, nothing else."""
import pytest

from labrig.drivers.errors import Refused
from labrig.sequences import Timeline
from labrig.sequences.proofs import constants, facts, holds
from labrig.supervisor.rig import Rig

RF_NEEDS_FIELD = """
[interlocks.rf_needs_field]
require = "rf_power < 100 or coil_current_set >= 200"
outputs = ["rf_power"]
description = "the helicon antenna must not see RF power without the field"
"""


@pytest.fixture
def field_rig(ishtar):
    """ISHTAR with an interlock on outputs only: the compiler can prove it along the plan."""
    return Rig.from_text(ishtar.text + RF_NEEDS_FIELD)


def test_proofs_are_three_valued_over_intervals():
    assert holds("a < 5 and b == 1", {"a": (1, 2), "b": (1, 1)}) is True
    assert holds("a < 5 and b == 1", {"a": (6, 9)}) is False
    assert holds("a < 5 and b == 1", {"a": (1, 2)}) is None  # b unknown
    assert holds("a < 5 or b == 1", {"a": (1, 2)}) is True
    assert holds("not a > 3", {"a": (4, 4)}) is False
    assert holds("0.05 <= p <= 2", {"p": (3, 4)}) is False
    assert holds("a * 2 + 1 < 5", {"a": (3, 3)}) is False
    assert holds("a / b < 1", {"a": (1, 1), "b": (-1, 1)}) is None
    assert holds("rp1.online == 1", {}) is None
    assert facts("pressure > 6 and 1 <= door_closed and x < y") == {"pressure": (6, float("inf")),
                                                                     "door_closed": (1, float("inf"))}
    assert facts("pressure > 6 or door_closed == 1") == {}
    assert -50.0 in constants("a <= -50 or b > 2.5") and 2.5 in constants("a <= -50 or b > 2.5")


def test_a_plan_that_crosses_an_output_interlock_is_refused_at_the_crossing(field_rig):
    tl = Timeline("t")
    tl.ramp("rf_power", 600)  # 1.5 s at 400 W/s, crossing 100 W at 0.25 s with no field
    tl.ramp("coil_current_set", 300)
    with pytest.raises(Refused) as info:
        tl.compile(field_rig)
    msg = str(info.value)
    assert msg.startswith("step 1 'ramp rf_power' (test_sequences_interlocks.py:")
    assert "at t = 0.250 s: interlock rf_needs_field requires rf_power < 100 or coil_current_set >= 200" in msg
    assert "without the field" in msg and "rf_power = 100, coil_current_set = 0" in msg


def test_the_same_steps_in_the_right_order_pass(field_rig):
    tl = Timeline("t")
    tl.ramp("coil_current_set", 300)
    tl.ramp("rf_power", 600)
    tl.ramp("rf_power", 0)
    tl.ramp("coil_current_set", 0)
    tl.compile(field_rig)


def test_ramping_the_field_down_under_rf_is_refused(field_rig):
    tl = Timeline("t")
    tl.ramp("coil_current_set", 300)
    tl.ramp("rf_power", 600)
    tl.ramp("coil_current_set", 0, name="field off too early")
    with pytest.raises(Refused, match=r"step 3 'field off too early' .* at t = 2\.833 s: interlock rf_needs_field"):
        tl.compile(field_rig)


def test_an_interlock_crossed_only_when_a_wait_runs_to_its_timeout_is_refused(field_rig):
    tl = Timeline("t")
    tl.ramp("coil_current_set", 300)  # 1 s
    tl.wait_until("coil_current > 280", timeout=4, expect=0.2)
    tl.pulse("rf_power", 200, width=0.5, rate="max")  # 1.2 to 2.7 s, or 5 to 6.5 s when the wait runs long
    tl.ramp("coil_current_set", 0, at=4.0)  # absolute: the field goes at 4 s whatever the wait did
    with pytest.raises(Refused) as info:
        tl.compile(field_rig)
    msg = str(info.value)
    assert msg.startswith("step 3 'pulse rf_power'") and "at t = 5.250 s: interlock rf_needs_field" in msg
    assert "rf_power = 100, coil_current_set = 0 there (when every wait runs to its timeout)" in msg


def test_waiting_for_a_state_that_fails_an_input_interlock_is_refused(ishtar):
    tl = Timeline("t")
    tl.wait_until("pressure > 6", timeout=2)
    tl.ramp("rf_power", 300)
    with pytest.raises(Refused) as info:
        tl.compile(ishtar)
    msg = str(info.value)
    assert msg.startswith("step 2 'ramp rf_power'")
    assert "interlock rf_needs_vacuum_door_cooling requires pressure < 5 and door_closed == 1" in msg
    assert "step 1 'wait_until pressure > 6'" in msg and "the plan drives rf_power" in msg


def test_input_interlocks_are_left_to_the_runtime_unless_the_plan_waits_for_them(ishtar):
    tl = Timeline("t")
    tl.wait_until("pressure > 6", timeout=2)
    tl.ramp("gas_flow", 10)  # the vent check is fine: nothing the interlock guards is driven
    tl.wait_until("pressure < 1", timeout=10)  # the vacuum is back before the RF
    tl.ramp("rf_power", 300)
    plan = tl.compile(ishtar)
    notes = "\n".join(plan.notes)
    assert "interlock rf_reflected_limit (rf_reflected < 300) reads rf_reflected: not provable" in notes
    assert "node rp1's runtime checks it" in notes
    assert "interlock rf_needs_vacuum_door_cooling" in notes and "the supervisor's guard checks it" in notes
    assert "coil_needs_cooling" not in notes  # the plan does not move the coil


def test_a_failure_between_two_crossings_is_found(ishtar):
    rig = Rig.from_text(ishtar.text + """
[interlocks.one_of_two]
require = "probe_bias <= -50 or gas_flow <= 10"
outputs = ["probe_bias"]
""")
    tl = Timeline("t")  # dyadic times and rates: every value below is exact in floating point
    tl.ramp("probe_bias", -80, rate=320)  # to 0.25 s
    tl.ramp("gas_flow", 20, rate=80)  # to 0.5 s
    with tl.parallel():
        tl.ramp("probe_bias", 0, rate=32, delay=0.25)  # 0.75 to 3.25 s: above -50 after 1.6875 s
        tl.ramp("gas_flow", 0, rate=8)  # 0.5 to 3 s: at most 10 from 1.75 s
    # it fails only between the two crossings, away from every breakpoint and their midpoints
    with pytest.raises(Refused, match=r"at t = 1\.719 s: interlock one_of_two requires probe_bias <= -50 or"):
        tl.compile(rig)


def _field_then_rf(tl):
    tl.ramp("coil_current_set", 300)
    tl.ramp("rf_power", 600)
    tl.hold(1.0, "rf_power", "coil_current_set")
    tl.ramp("rf_power", 0)
    tl.ramp("coil_current_set", 0)


def test_a_safe_exit_that_drops_the_field_under_rf_is_refused_naming_the_exit_step(field_rig):
    tl = Timeline("t")
    _field_then_rf(tl)
    with tl.safe_exit():
        tl.ramp("coil_current_set", 0)  # the field first: RF still above 100 W while the coil passes 200 A
        tl.ramp("rf_power", 0)
    with pytest.raises(Refused) as info:
        tl.compile(field_rig)
    msg = str(info.value)
    assert msg.startswith("safe exit step 'ramp coil_current_set' (coil_current_set -> 0, ramp at 300/s)"), msg
    assert "interlock rf_needs_field requires rf_power < 100 or coil_current_set >= 200" in msg
    assert "in the safe exit after an abort at t = " in msg


def test_the_same_exit_with_rf_first_passes_and_so_does_an_exit_left_to_the_compiler(field_rig):
    tl = Timeline("t")
    _field_then_rf(tl)
    with tl.safe_exit():
        tl.ramp("rf_power", 0)
        tl.ramp("coil_current_set", 0)
    plan = tl.compile(field_rig)
    assert [e["signal"] for e in plan.safe_exit] == ["rf_power", "coil_current_set"]
    # nothing declared: the compiler ramps what an interlock protects (the RF) before what it reads (the
    # field); in parallel the coil would pass 200 A while the RF is still above 100 W
    tl = Timeline("t")
    _field_then_rf(tl)
    exit_ = {e["signal"]: e for e in tl.compile(field_rig).safe_exit}
    assert exit_["rf_power"]["t_start"] == 0.0
    assert exit_["coil_current_set"]["t_start"] == pytest.approx(exit_["rf_power"]["duration_max"])  # 600 W: 1.5 s

"""The sequence language: typed parameters with units and ranges, the timeline builder, the hash."""
import inspect
from typing import Annotated

import pytest

from labrig.drivers.errors import ConfigError, RangeError
from labrig.sequences import MAX, Param, Timeline, sequence
from labrig.sequences.compile import STEP_TIME
from labrig.supervisor.runtime.envelope import STEP_TIME as RUNTIME_STEP_TIME


RF_POWER = Param("W", (0, 1200), "RF power")  # a Param declared once serves as the annotation


@sequence
def shot(tl,
         power: RF_POWER = 500.0,
         width: Annotated[float, Param("ms", (1, 1000), "pulse width")] = 100.0,
         repeats: Param(range=(1, 10), type=int) = 2,
         light: bool = True):
    """A test shot."""
    for _ in range(repeats):
        tl.pulse("rf_power", power, width=width / 1000, rate=MAX)


def test_parameters_are_checked_and_converted():
    tl = shot(power="0.8 kW", width="0.05 s", repeats=3.0)
    assert tl.params == {"power": 800.0, "width": 50.0, "repeats": 3, "light": True}
    assert isinstance(tl.params["repeats"], int)
    assert tl.units == {"power": "W", "width": "ms"}
    assert len(tl.steps) == 3 and tl.steps[0].width == pytest.approx(0.05)


@pytest.mark.parametrize("kwargs, error, words", [
    ({"power": 1500}, RangeError, ["power", "1500 W", "[0, 1200] W"]),
    ({"power": -1}, RangeError, ["power", "[0, 1200] W"]),
    ({"width": "2 s"}, RangeError, ["width", "2000 ms", "[1, 1000] ms"]),
    ({"power": "3 T"}, ConfigError, ["power", "'T' is not a unit of W", "[0, 1200] W"]),
    ({"power": "lots"}, ConfigError, ["power", "not a number", "W"]),
    ({"power": True}, ConfigError, ["power", "not a number"]),
    ({"repeats": 2.5}, ConfigError, ["repeats", "not an integer", "[1, 10]"]),
    ({"repeats": 11}, RangeError, ["repeats", "[1, 10]"]),
    ({"light": "yes"}, ConfigError, ["light", "not a bool"]),
    ({"powr": 3}, ConfigError, ["powr", "parameters: power, width, repeats, light"]),
])
def test_bad_parameters_are_refused_naming_parameter_unit_and_range(kwargs, error, words):
    with pytest.raises(error) as info:
        shot(**kwargs)
    for word in words:
        assert word in str(info.value)
    assert str(info.value).startswith("shot: ")


def test_required_parameter_and_documentation():
    @sequence
    def needs(tl, flow: Annotated[float, Param("sccm", (0, 40), "gas flow")]):
        tl.ramp("gas_flow", flow)

    with pytest.raises(ConfigError, match=r"flow is required \(float, \[0, 40\] sccm\)"):
        needs()
    assert "gas flow" in needs.__doc__ and "[0, 40] sccm" in needs.__doc__
    assert list(inspect.signature(shot).parameters) == ["power", "width", "repeats", "light"]
    assert "power = 500.0 W" in shot.describe() and "A test shot." in shot.describe()


def test_a_sequence_needs_the_timeline_first_and_named_parameters():
    with pytest.raises(ConfigError, match="first parameter receives the timeline"):
        sequence(lambda: None)
    with pytest.raises(ConfigError, match=r"\*rest is not allowed"):
        @sequence
        def loose(tl, *rest):
            pass


def test_steps_record_where_they_were_declared():
    tl = Timeline("t")
    step = tl.ramp("rf_power", 100)
    assert step.where.startswith("test_sequences_language.py:")
    assert str(step).startswith("step 1 'ramp rf_power' (test_sequences_language.py:")


@pytest.mark.parametrize("build, error, match", [
    (lambda tl: tl.ramp("rf_power", float("nan")), RangeError, "not a finite number"),
    (lambda tl: tl.ramp("rf_power", 1, rate=1, duration=1), ConfigError, "not both"),
    (lambda tl: tl.ramp("rf_power", 1, rate=-5), RangeError, "rate must be positive"),
    (lambda tl: tl.hold(0), RangeError, "duration must be positive"),
    (lambda tl: tl.pulse("gas_flow", 5, width=-1), RangeError, "width must be positive"),
    (lambda tl: tl.wait_until("pressure < 1", timeout=None), ConfigError, "timeout is required"),
    (lambda tl: tl.wait_until("pressure < 1", timeout=1, expect=2), RangeError, "expect=2 s"),
    (lambda tl: tl.acquire([], rate=10), ConfigError, "at least one signal"),
    (lambda tl: tl.set("rf_enable", 1, at=-1), RangeError, "before the shot start"),
    (lambda tl: tl.set("rf_enable", 1, after="step 1"), ConfigError, "after= takes a step"),
    (lambda tl: tl.set("rf_enable", 1, delay=-0.1), RangeError, "must not be negative"),
])
def test_the_builder_refuses_malformed_steps(build, error, match):
    with pytest.raises(error, match=match):
        build(Timeline("t"))


def test_the_safe_exit_holds_only_what_a_node_runs_alone():
    tl = Timeline("t")
    with tl.safe_exit():
        tl.ramp("rf_power", 0)
        with pytest.raises(ConfigError, match="only set, ramp and hold"):
            tl.wait_until("pressure < 1", timeout=1)
        with pytest.raises(ConfigError, match="at=/after= do not apply"):
            tl.set("rf_enable", 0, at=1)
    assert [s.name for s in tl.exit.children] == ["ramp rf_power"]
    assert tl.root.children == []


def test_the_hash_follows_source_and_parameters(ishtar):
    @sequence(name="same")
    def one(tl, power: RF_POWER = 100.0):
        tl.ramp("rf_power", power)

    @sequence(name="same")
    def other(tl, power: RF_POWER = 100.0):
        tl.ramp("rf_power", power, rate=200)

    base = one().compile(ishtar).hash
    assert one(power=100).compile(ishtar).hash == base
    assert one(power=200).compile(ishtar).hash != base
    assert other().compile(ishtar).hash != base
    assert len(base) == 64


def test_an_ad_hoc_timeline_hashes_its_steps(ishtar):
    def plan(target):
        tl = Timeline("adhoc")
        tl.ramp("rf_power", target)
        return tl.compile(ishtar)
    assert plan(100).hash == plan(100).hash != plan(200).hash


def test_the_direct_write_step_is_the_runtime_envelope_step():
    assert STEP_TIME == RUNTIME_STEP_TIME

import math

import pytest

from labrig.drivers.calibration import Calibration
from labrig.drivers.errors import ConfigError
from labrig.supervisor.rig import compile_condition


@pytest.mark.parametrize("cal, raw_range", [
    (Calibration(gain=0.5882352941176471, offset=-100.0), (0, 255)),
    (Calibration(kind="poly", coefficients=(0.0, 0.0, 1500.0)), (0.0, 1.0)),
    (Calibration(kind="table", raw=(0, 10, 20), physical=(0.0, 1.0, 4.0)), (0, 20)),
    (Calibration(kind="table", raw=(0, 10), physical=(5.0, 1.0)), (0, 10)),
])
def test_round_trip(cal, raw_range):
    lo, hi = raw_range
    for i in range(11):
        raw = lo + (hi - lo) * i / 10
        assert cal.to_raw(cal.to_physical(raw), raw_range) == pytest.approx(raw, abs=1e-6)


def test_poly_inverse_of_rf_power():
    cal = Calibration(kind="poly", coefficients=(0.0, 0.0, 1500.0))
    assert cal.to_raw(375.0, (0.0, 1.0)) == pytest.approx(0.5)


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": "linear", "gain": 0}, "gain must not be 0"),
    ({"kind": "poly", "coefficients": (1.0,)}, "at least 2"),
    ({"kind": "table", "raw": (0, 1), "physical": (0,)}, "same length"),
    ({"kind": "table", "raw": (0, 1, 2), "physical": (0, 2, 1)}, "monotonic"),
    ({"kind": "cubic"}, "allowed: linear, poly, table"),
])
def test_bad_calibrations(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Calibration(**kwargs)


def test_conditions():
    cond = compile_condition("0.05 <= pressure <= 2 and not door == 0 or override == 1")
    assert cond.signals == ("pressure", "door", "override")
    assert cond({"pressure": 1.0, "door": 1, "override": 0})
    assert not cond({"pressure": 3.0, "door": 1, "override": 0})
    assert cond({"pressure": 3.0, "door": 1, "override": 1})
    # NaN and missing values never satisfy a requirement
    assert not compile_condition("pressure < 5")({"pressure": math.nan})
    assert not compile_condition("pressure < 5")({})
    with pytest.raises(ConfigError, match="not allowed"):
        compile_condition("pressure.real < 5")
    with pytest.raises(ConfigError, match="not valid"):
        compile_condition("pressure <")

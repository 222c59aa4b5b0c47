"""[loops.NAME] in the rig file: a loop that cannot run safely is refused at load, located."""
import pytest

from labrig.supervisor.rig import Rig, RigError

RIG = """
schema_version = 1
name = "bench"
[nodes.plc1]
kind = "simatic"
connection = "s7://127.0.0.1:102"
[nodes.ard1]
kind = "arduino"
connection = "serial:///dev/ttyACM0"
[signals.coil_current]
node = "plc1"
channel = "DB1.DBD4"
unit = "A"
limits = [0, 620]
[signals.coil_current_set]
node = "plc1"
channel = "DB1.DBD0"
direction = "out"
unit = "A"
limits = [0, 600]
max_slew = 300
safe = 0
[signals.coil_enable]
node = "plc1"
channel = "DB1.DBX16.0"
direction = "out"
[signals.langmuir_I]
node = "ard1"
channel = "A0"
[loops.coil]
node = "plc1"
measure = "coil_current"
actuate = "coil_current_set"
kp = 0.5
ki = 5.0
rate = 100
output_limits = [0, 600]
setpoint = 50
"""


def problems(text):
    with pytest.raises(RigError) as info:
        Rig.from_text(text, source="bench.toml")
    return dict(info.value.problems)


def test_a_good_loop_loads_and_so_does_the_example(ishtar):
    loop = Rig.from_text(RIG).spec.loops["coil"]
    assert (loop.node, loop.measure, loop.actuate, loop.rate) == ("plc1", "coil_current", "coil_current_set", 100)
    rf = ishtar.spec.loops["rf_leveling"]
    assert rf.node == "rp1" and rf.enabled is False and tuple(rf.output_limits) == (0.0, 1200.0)


def test_unknown_signals_get_close_names():
    found = problems(RIG.replace('measure = "coil_current"', 'measure = "coil_curent"'))
    assert "unknown signal 'coil_curent'; did you mean 'coil_current'" in found["loops.coil.measure"]
    found = problems(RIG.replace('node = "plc1"\nmeasure', 'node = "plc2"\nmeasure'))
    assert "unknown node 'plc2'" in found["loops.coil.node"]


def test_a_loop_lives_on_one_node():
    found = problems(RIG.replace('measure = "coil_current"', 'measure = "langmuir_I"'))
    assert "'langmuir_I' is on node 'ard1'" in found["loops.coil.measure"]


def test_the_actuator_is_an_output_with_a_safe_value():
    found = problems(RIG.replace('actuate = "coil_current_set"', 'actuate = "coil_current"'))
    assert "is an input; a loop actuates an output" in found["loops.coil.actuate"]
    found = problems(RIG.replace('actuate = "coil_current_set"', 'actuate = "coil_enable"')
                     .replace("output_limits = [0, 600]\n", ""))
    assert "'coil_enable' has no safe value; declare signals.coil_enable.safe" in found["loops.coil.actuate"]


def test_output_limits_are_ordered_and_inside_the_actuators_limits():
    found = problems(RIG.replace("output_limits = [0, 600]", "output_limits = [0, 700]"))
    assert found["loops.coil.output_limits"] == "[0.0, 700.0] is outside the limits of 'coil_current_set' [0, 600]"
    found = problems(RIG.replace("output_limits = [0, 600]", "output_limits = [600, 0]"))
    assert "low < high" in found["loops.coil.output_limits"]


def test_gains_are_not_negative_and_the_setpoint_is_inside_the_measures_limits():
    found = problems(RIG.replace("ki = 5.0", "ki = -5.0"))
    assert found["loops.coil.ki"] == "gains are >= 0 (got -5)"
    found = problems(RIG.replace("setpoint = 50", "setpoint = 700"))
    assert found["loops.coil.setpoint"] == "700 is outside the limits of 'coil_current' [0, 620]"


def test_schema_bounds_of_a_loop():
    found = problems(RIG.replace("rate = 100", "rate = 20000"))
    assert "loops.coil.rate" in found
    found = problems(RIG.replace("kp = 0.5", "kp = 0.5\nki_max = 3"))
    assert found["loops.coil.ki_max"] == "unknown key (not part of the rig schema)"

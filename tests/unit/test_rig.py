"""The rig file: the example loads; every kind of bad file gets a clear, located error."""
import re

import pytest
from typer.testing import CliRunner

from labrig.drivers.errors import ConfigError
from labrig.supervisor.cli import app
from labrig.supervisor.rig import Rig, RigError

MINIMAL = """
schema_version = 1
name = "bench"
[nodes.ard1]
kind = "arduino"
connection = "serial:///dev/ttyACM0"
[signals.probe]
node = "ard1"
channel = "A0"
unit = "mA"
[signals.bias]
node = "ard1"
channel = "PWM9"
direction = "out"
limits = [-100, 50]
safe = 0
[interlocks.bias_needs_probe]
require = "probe < 20"
outputs = ["bias"]
"""


def problems(text):
    with pytest.raises(RigError) as info:
        Rig.from_text(text, source="bench.toml")
    err = info.value
    assert str(err).startswith("bench.toml: ")
    return dict(err.problems), str(err)


def test_example_rig_loads(ishtar):
    assert ishtar.name == "ishtar"
    assert set(ishtar.nodes) == {"ard1", "rp1", "plc1", "pi1", "gauge1"}
    kinds = {n.kind for n in ishtar.nodes.values()}
    assert kinds == {"arduino", "redpitaya", "simatic", "rpi", "visa"}
    specs = {c.name: c for c in ishtar.channel_specs("ard1")}
    assert specs["probe_bias"].safe_value == 0.0
    # the calibration inverts the simulated wiring: 0 V bias is PWM duty 170
    assert specs["probe_bias"].calibration.to_raw(0.0) == pytest.approx(170.0)
    assert ishtar.interlocks["coil_needs_cooling"].require({"cooling_flow": 3.0})
    assert not ishtar.interlocks["coil_needs_cooling"].require({"cooling_flow": 1.0})


def test_minimal_rig_loads():
    rig = Rig.from_text(MINIMAL)
    assert rig.signal("bias").safe == 0


def test_not_toml():
    found, text = problems("schema_version = [")
    assert "not valid TOML" in text


def test_unknown_node_kind_lists_allowed():
    found, _ = problems(MINIMAL.replace('kind = "arduino"', 'kind = "arduinoo"'))
    msg = found["nodes.ard1.kind"]
    for kind in ("rpi", "arduino", "redpitaya", "simatic", "visa"):
        assert kind in msg
    assert "arduinoo" in msg


def test_unknown_signal_in_interlock_suggests_close_names():
    found, _ = problems(MINIMAL.replace('require = "probe < 20"', 'require = "prob < 20"'))
    assert "unknown signal 'prob'" in found["interlocks.bias_needs_probe.require"]
    assert "'probe'" in found["interlocks.bias_needs_probe.require"]


def test_duplicate_channel():
    found, _ = problems(MINIMAL.replace('channel = "PWM9"', 'channel = "A0"'))
    assert "already used by signal 'probe'" in found["signals.bias.channel"]


def test_limits_out_of_order():
    found, _ = problems(MINIMAL.replace("limits = [-100, 50]", "limits = [50, -100]"))
    assert "low < high" in found["signals.bias.limits"]


def test_safe_outside_limits():
    found, _ = problems(MINIMAL.replace("safe = 0", "safe = 70"))
    assert "outside limits [-100, 50]" in found["signals.bias.safe"]


def test_unknown_key_and_missing_key_and_wrong_scheme():
    text = MINIMAL.replace('unit = "mA"', 'unit = "mA"\ncolour = "red"').replace(
        'channel = "A0"\n', '').replace("serial:///dev/ttyACM0", "tcp://10.0.0.1:5000")
    found, _ = problems(text)
    assert found["signals.probe.colour"] == "unknown key (not part of the rig schema)"
    assert found["signals.probe.channel"] == "required key is missing"


def test_wrong_scheme_for_kind():
    found, _ = problems(MINIMAL.replace("serial:///dev/ttyACM0", "s7://plc.lab:102"))
    assert "arduino nodes connect with serial://" in found["nodes.ard1.connection"]


def test_interlock_condition_refuses_code():
    found, _ = problems(MINIMAL.replace('require = "probe < 20"', 'require = "__import__(\'os\').system(\'x\')"'))
    assert "is not allowed" in found["interlocks.bias_needs_probe.require"]


def test_interlock_on_input_or_output_without_safe():
    text = MINIMAL.replace('outputs = ["bias"]', 'outputs = ["probe"]')
    found, _ = problems(text)
    assert "is an input" in found["interlocks.bias_needs_probe.outputs"]


def test_schema_version_checked():
    found, _ = problems(MINIMAL.replace("schema_version = 1", "schema_version = 7"))
    assert "not supported" in found["schema_version"]


def test_unknown_signal_lookup_names_close_matches(ishtar):
    with pytest.raises(ConfigError, match=r"no signal 'langmuir_i'.*langmuir_I"):
        ishtar.signal("langmuir_i")


def test_sim_connection_needs_a_running_testbed(ishtar):
    with pytest.raises(ConfigError, match="labrig sim up"):
        ishtar.connection("ard1", sim=True)
    record = {"simulators": {"ard1": {"url": "serial:///dev/pts/99"}}}
    assert ishtar.connection("ard1", sim=True, sim_state=record) == "serial:///dev/pts/99"
    assert ishtar.connection("ard1") == "serial:///dev/ttyACM0?baud=115200"


def test_cli_check_prints_topology(ishtar_path):
    result = CliRunner().invoke(app, ["check", str(ishtar_path)])
    assert result.exit_code == 0, result.output
    for word in ("ard1", "langmuir_I", "DB1.DBD0", "coil_needs_cooling", "rf_leveling"):
        assert word in result.output


def test_cli_check_bad_file_is_a_message_not_a_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(MINIMAL.replace('kind = "arduino"', 'kind = "plc"'))
    result = CliRunner().invoke(app, ["check", str(bad)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert re.search(r"nodes\.ard1\.kind: .*'arduino'", result.output)


def test_unknown_device_class_and_missing_role():
    text = MINIMAL + '\n[devices.probe1]\nclass = "LangmuirProbes"\nsignals = { bias = "bias" }\n'
    found, _ = problems(text)
    assert "did you mean 'LangmuirProbe'" in found["devices.probe1.class"]
    found, _ = problems(text.replace("LangmuirProbes", "LangmuirProbe"))
    assert "role 'current'" in found["devices.probe1.signals"]


def test_a_condition_may_name_a_node_online_and_nothing_else_of_it():
    rig = Rig.from_text(MINIMAL.replace('require = "probe < 20"', 'require = "ard1.online == 1 and probe < 20"'))
    lock = rig.interlocks["bias_needs_probe"]
    assert lock.require.signals == ("ard1.online", "probe")
    assert lock.require({"ard1.online": 1.0, "probe": 3.0}) and not lock.require({"ard1.online": 0.0, "probe": 3.0})
    assert rig.node_of("ard1.online") == "ard1"
    # a liveness condition is the guard's, never the node's own: a dead node cannot judge itself
    assert rig.local_interlocks("ard1") == {} and list(rig.guarded_interlocks()) == ["bias_needs_probe"]
    found, _ = problems(MINIMAL.replace('require = "probe < 20"', 'require = "ard2.online == 1"'))
    assert "'ard2.online': unknown node 'ard2'" in found["interlocks.bias_needs_probe.require"]
    assert "ard1" in found["interlocks.bias_needs_probe.require"]
    found, _ = problems(MINIMAL.replace('require = "probe < 20"', 'require = "ard1.alive == 1"'))
    assert "'ard1.alive' is not allowed" in found["interlocks.bias_needs_probe.require"]


def test_the_example_rig_splits_its_interlocks_between_nodes_and_the_guard(ishtar):
    local = {node: sorted(ishtar.local_interlocks(node)) for node in ishtar.nodes}
    assert local["rp1"] == ["rf_reflected_limit"]
    assert local["plc1"] == ["coil_needs_door_closed", "rf_enable_needs_vacuum_and_door"]
    assert sorted(ishtar.guarded_interlocks()) == ["coil_needs_cooling", "rf_needs_vacuum_door_cooling",
                                                   "rf_permit_needs_rf_drive_runtime"]


def test_arm_marks_dangerous_outputs_and_only_outputs(ishtar):
    # the example rig arms its RF power and coil current (the control panel asks twice), nothing else
    assert sorted(n for n, s in ishtar.signals.items() if s.arm) == ["coil_current_set", "rf_power"]
    assert Rig.from_text(MINIMAL.replace('safe = 0\n', 'safe = 0\narm = true\n')).signal("bias").arm
    found, _ = problems(MINIMAL.replace('unit = "mA"', 'unit = "mA"\narm = true'))
    assert "only outputs" in found["signals.probe.arm"]
    found, _ = problems(MINIMAL.replace('safe = 0\n', 'safe = 0\narm = "maybe"\n'))
    assert "signals.bias.arm" in found

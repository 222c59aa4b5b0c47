"""`labrig plc tags`: the PLC program's tags and the interlocks it must implement, from the rig file."""
import json

from typer.testing import CliRunner

from labrig.supervisor.cli import app
from labrig.supervisor.rig.plc import plc_program
from labrig.supervisor.rig import Rig


def test_plc_program_of_the_example_rig(ishtar):
    program = plc_program(ishtar)
    tags = {t["signal"]: t for t in program["plcs"]["plc1"]["tags"]}
    assert tags["coil_current_set"] == {"signal": "coil_current_set", "address": "DB1.DBD0:REAL", "type": "REAL",
                                        "direction": "out", "unit": "A", "limits": [0.0, 600.0], "safe": 0.0}
    assert tags["door_closed"]["type"] == "BOOL" and tags["door_closed"]["direction"] == "in"
    assert program["plcs"]["plc1"]["watchdog"]["address"] == "DB1.DBW14"
    # an interlock on PLC tags only is the PLC program's to implement
    on_plc = {lock["interlock"]: lock for lock in program["interlocks"]}
    assert on_plc["coil_needs_door_closed"] == {
        "interlock": "coil_needs_door_closed", "requires": "door_closed == 1", "forces_safe": ["coil_enable"],
        "description": on_plc["coil_needs_door_closed"]["description"], "plc": "plc1", "latch": True, "bit": 1}
    # the host's RF request: the PLC grants the permit only with vacuum and the door closed
    assert tags["rf_enable"]["address"] == "DB1.DBX16.1:BOOL" and tags["rf_enable"]["safe"] == 0.0
    assert on_plc["rf_enable_needs_vacuum_and_door"]["requires"] == "plc_pressure < 5 and door_closed == 1"
    assert on_plc["rf_enable_needs_vacuum_and_door"]["bit"] == 0
    assert program["plcs"]["plc1"]["trips"]["address"] == "DB1.DBW18"
    assert "restart" in program["plcs"]["plc1"]["interlock_rule"]
    # the others name what the PLC does not have
    elsewhere = {lock["interlock"]: lock for lock in program["elsewhere"]}
    assert elsewhere["coil_needs_cooling"]["not_on_a_plc"] == {"cooling_flow": "ard1"}
    assert elsewhere["rf_needs_vacuum_door_cooling"]["not_on_a_plc"] == {
        "cooling_ok": "ard1", "pressure": "gauge1", "rf_power": "rp1"}
    assert set(on_plc) | set(elsewhere) == set(ishtar.interlocks)


def test_cli_plc_tags(ishtar_path):
    runner = CliRunner()
    result = runner.invoke(app, ["plc", "tags", str(ishtar_path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["plcs"]["plc1"]["watchdog"]["type"] == "INT"
    table = runner.invoke(app, ["plc", "tags", str(ishtar_path)])
    assert table.exit_code == 0 and "DB1.DBX16.1" in table.output and "coil_needs_door_closed" in table.output
    assert "DB1.DBW18" in table.output and "(trip word)" in table.output


def test_a_rig_without_a_plc():
    rig = Rig.from_text('schema_version = 1\nname = "bench"\n[nodes.pi]\nkind = "rpi"\n'
                        'connection = "pigpio://pi.lab:8888"\n[signals.valve]\nnode = "pi"\nchannel = "PWM18"\n'
                        'direction = "out"\nsafe = 0\n')
    assert plc_program(rig) == {"rig": "bench", "plcs": {}, "interlocks": [], "elsewhere": []}

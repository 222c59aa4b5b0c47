"""The library sequences compile against the ISHTAR rig; the dry run prints and draws without hardware."""
import pytest

from labrig.drivers.errors import RangeError
from labrig.sequences.library import conditioning, discharge, step_scan


def test_discharge_lights_in_the_demo_order(ishtar):
    plan = discharge().compile(ishtar)
    first = {}
    for row in plan.steps:
        for signal in row["signals"]:
            first.setdefault(signal, row["t_start"])
    assert first["rf_enable"] == 0.0  # the PLC's permit is asked first
    assert first["gas_flow"] < first["coil_current_set"] < first["rf_power"]  # gas, field, then RF
    assert set(plan.tables) == {"plc1", "pi1", "rp1", "ard1", "gauge1"}
    assert plan.tables["gauge1"]["waits"] == ["w1"] and plan.tables["plc1"]["waits"] == ["w2"]  # each its own
    assert [a["signals"] for a in plan.tables["ard1"]["acquisitions"]] == [["langmuir_I"]]
    assert [a["signals"] for a in plan.tables["rp1"]["acquisitions"]] == [["interferometer_phase"]]
    rf = [s for s in plan.tables["rp1"]["steps"] if s["signal"] == "rf_power"]
    assert [(s["from"], s["to"]) for s in rf] == [(0.0, 735.0), (735.0, 0.0)]
    coil = plan.tables["plc1"]["steps"]
    assert max(s["to"] for s in coil if s["signal"] == "coil_current_set") == pytest.approx(400.0)  # 0.08 T
    puff = [s for s in plan.tables["pi1"]["steps"] if s["name"] == "gas puff"]
    assert [(s["from"], s["to"]) for s in puff] == [(20.0, 25.0), (25.0, 20.0)]
    assert 8 < plan.duration < plan.duration_max < 20
    assert plan.safe_exit[0]["signal"] == "rf_power" and plan.safe_exit[0]["t_start"] == 0.0
    assert all(e["to"] == 0.0 for e in plan.safe_exit)  # every moved output ends at its safe value


def test_discharge_parameters_reach_the_tables(ishtar):
    plan = discharge(power="1 kW", b_field=0.1, puff_ms=200, flat_top=1.0).compile(ishtar)
    assert max(s["to"] for s in plan.tables["rp1"]["steps"]) == 1000.0
    assert max(s["to"] for s in plan.tables["plc1"]["steps"]) == pytest.approx(500.0)
    up, down = [s for s in plan.tables["pi1"]["steps"] if s["name"] == "gas puff"]
    assert down["t_start"] - up["t_start"] == pytest.approx(0.05 + 0.2)  # the rise, then 200 ms
    assert plan.hash != discharge().compile(ishtar).hash


def test_discharge_refuses_bad_parameters(ishtar):
    with pytest.raises(RangeError, match=r"discharge: parameter b_field = 0.2 T is outside its range \[0, 0.12\] T"):
        discharge(b_field=0.2)
    with pytest.raises(RangeError, match=r"step \d+ 'gas puff' .*gas_flow = 45 sccm is outside its limits \[0, 40\]"):
        discharge(fill_sccm=30, puff_sccm=15).compile(ishtar)


def test_step_scan_acquires_at_each_value(ishtar):
    plan = step_scan(signal="coil_current_set", start=100, stop=500, steps=5, dwell=0.2,
                     signals=("langmuir_I", "coil_current")).compile(ishtar)
    coil = plan.tables["plc1"]
    assert [s["to"] for s in coil["steps"]] == [100.0, 200.0, 300.0, 400.0, 500.0, 0.0]
    assert len(coil["acquisitions"]) == 5 and len(plan.tables["ard1"]["acquisitions"]) == 5
    assert all(a["window"] == pytest.approx(0.2) for a in coil["acquisitions"])
    with pytest.raises(RangeError, match=r"coil_current_set = 700 A is outside its limits \[0, 600\] A"):
        step_scan(signal="coil_current_set", start=100, stop=700, steps=2).compile(ishtar)


def test_conditioning_pulses_rise_in_power(ishtar):
    plan = conditioning(pulses=4, start_power=100, stop_power=400).compile(ishtar)
    tops = [s["to"] for s in plan.tables["rp1"]["steps"] if s["from"] == 0.0]
    assert tops == [100.0, 200.0, 300.0, 400.0]
    assert all(s["kind"] == "ramp" and s["rate"] == 400.0 for s in plan.tables["rp1"]["steps"])
    (acq,) = plan.tables["rp1"]["acquisitions"]
    assert acq["signals"] == ["rf_forward", "rf_reflected"]
    assert acq["window"] == pytest.approx(sum(2 * p / 400 + 0.1 for p in tops) + 3 * 0.5)


def test_the_dry_run_prints_the_plan_and_draws_a_png(ishtar, tmp_path, capsys):
    path = tmp_path / "discharge.png"
    fig = discharge().dry_run(ishtar, path=path)
    out = capsys.readouterr().out
    assert out.startswith("discharge(power=735 W, b_field=0.08 T")
    assert "ramp rf_power" in out and "safe exit" in out and "wait_until pressure >= 0.3" in out
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert "rf_power\n[rp1]" in labels and "langmuir_I\n[ard1]" in labels
    assert fig.canvas.get_default_filetype() == "png"

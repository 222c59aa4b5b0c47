"""The compiler: every refusal names the step, the signal and the limit; per-node tables, timing, safe exits."""
import json

import pytest

from labrig.drivers.errors import ConfigError, RangeError
from labrig.sequences import Timeline


def refused(ishtar, build, error):
    tl = Timeline("t")
    build(tl)
    with pytest.raises(error) as info:
        tl.compile(ishtar)
    return str(info.value)


# ---------------------------------------------------------------- refusals
def test_a_large_direct_write_is_refused_with_a_ramp_suggested(ishtar):
    msg = refused(ishtar, lambda tl: tl.set("rf_power", 800), RangeError)
    assert msg.startswith("step 1 'set rf_power' (test_sequences_compile.py:")
    assert "jump from 0 to 800 W" in msg and "max slew 400 W/s allows direct steps of 20 W" in msg
    assert "tl.ramp('rf_power', 800, rate<=400)" in msg


def test_small_direct_writes_and_writes_to_the_safe_value_pass(ishtar):
    tl = Timeline("t")
    tl.set("rf_power", 20)  # max_slew x 50 ms
    tl.ramp("rf_power", 500)
    tl.set("rf_power", 0)  # the safe value is never refused
    assert [s["kind"] for s in tl.compile(ishtar).tables["rp1"]["steps"]] == ["set", "ramp", "set"]


def test_a_pulse_with_step_edges_is_a_direct_write(ishtar):
    msg = refused(ishtar, lambda tl: tl.pulse("gas_flow", 30, width=0.05), RangeError)
    assert "step 1 'pulse gas_flow'" in msg and "gas_flow would jump from 0 to 30 sccm" in msg
    assert "allows direct steps of 5 sccm" in msg and "rate='max'" in msg


@pytest.mark.parametrize("build, words", [
    (lambda tl: tl.ramp("rf_power", 800, rate=500), ["step 1 'ramp rf_power'", "rf_power ramp rate 500 W/s",
                                                      "max slew 400 W/s"]),
    (lambda tl: tl.ramp("rf_power", 800, duration=1.0), ["step 1 'ramp rf_power'", "needs 800 W/s",
                                                          "max slew 400 W/s", "at least 2 s"]),
    (lambda tl: tl.pulse("coil_current_set", 100, width=0.1, rate=400), ["step 1 'pulse coil_current_set'",
                                                                         "max slew 300 A/s"]),
])
def test_a_ramp_faster_than_the_max_slew_is_refused(ishtar, build, words):
    msg = refused(ishtar, build, RangeError)
    for word in words:
        assert word in msg


def test_a_value_outside_the_limits_is_refused(ishtar):
    def build(tl):
        tl.ramp("gas_flow", 20)
        tl.pulse("gas_flow", 45, width=0.1, rate="max", name="big puff")
    msg = refused(ishtar, build, RangeError)
    assert msg.startswith("step 2 'big puff'") and "gas_flow = 45 sccm is outside its limits [0, 40] sccm" in msg


@pytest.mark.parametrize("build, words", [
    (lambda tl: tl.ramp("rf_pwr", 100), ["step 1 'ramp rf_pwr'", "no signal 'rf_pwr'", "did you mean rf_power"]),
    (lambda tl: tl.set("rf_forward", 1), ["step 1 'set rf_forward'", "rf_forward is an input of node rp1",
                                          "outputs: probe_bias"]),
    (lambda tl: tl.wait_until("presure < 1", timeout=1), ["step 1 'wait_until presure < 1'", "no signal 'presure'",
                                                         "did you mean pressure"]),
    (lambda tl: tl.wait_until("pressure.max < 1", timeout=1), ["step 1", "is not allowed"]),
    (lambda tl: tl.acquire(["langmuir_i"], rate=10, window=1), ["step 1", "langmuir_i", "did you mean langmuir_I"]),
    (lambda tl: tl.hold(1.0, "pressure"), ["step 1 'hold pressure'", "pressure is an input"]),
])
def test_a_signal_not_in_the_rig_is_refused_with_close_matches(ishtar, build, words):
    msg = refused(ishtar, build, ConfigError)
    for word in words:
        assert word in msg


def test_an_acquisition_faster_than_any_rig_rate_is_refused(ishtar):
    msg = refused(ishtar, lambda tl: tl.acquire("langmuir_I", rate=50_000, window=1), RangeError)
    assert "step 1 'acquire langmuir_I'" in msg and "50000 Hz" in msg and "10000 Hz" in msg


def test_an_open_ended_acquisition_belongs_in_a_parallel_block(ishtar):
    msg = refused(ishtar, lambda tl: tl.acquire("langmuir_I", rate=100), ConfigError)
    assert "without a window" in msg and "tl.parallel()" in msg


def test_two_steps_on_one_output_at_once_are_refused(ishtar):
    def build(tl):
        with tl.parallel():
            tl.ramp("rf_power", 400)
            tl.pulse("rf_power", 20, width=0.1, delay=0.5)
    msg = refused(ishtar, build, ConfigError)
    assert "step 2 'pulse rf_power'" in msg and "step 1 'ramp rf_power'" in msg and "both drive rf_power" in msg


def test_steps_on_one_output_are_declared_in_time_order(ishtar):
    def build(tl):
        tl.ramp("gas_flow", 10, at=5.0)
        tl.ramp("gas_flow", 20)
    msg = refused(ishtar, build, ConfigError)
    assert msg.startswith("step 2 'ramp gas_flow' (") and "starts at 0 s, before step 1 'ramp gas_flow'" in msg
    assert "(at 5 s) on gas_flow" in msg and "in time order" in msg


def test_a_conflict_that_appears_only_when_a_wait_runs_long_is_refused(ishtar):
    def build(tl):
        tl.wait_until("pressure < 1", timeout=5)
        tl.ramp("gas_flow", 20)
        tl.ramp("gas_flow", 10, at=2.0)  # fine if the wait is quick, not if it takes its 5 s
    msg = refused(ishtar, build, ConfigError)
    assert "step 3 'ramp gas_flow'" in msg and "step 2 'ramp gas_flow'" in msg and "timeouts" in msg


def test_an_output_without_a_safe_value_needs_a_start(ishtar):
    from labrig.supervisor.rig import Rig
    rig = Rig.from_text(ishtar.text.replace('limits = [0.001, 10.0]\nsafe = 5.0', 'limits = [0.001, 10.0]'))
    tl = Timeline("t")
    tl.set("gauge_setpoint", 2.0)
    with pytest.raises(ConfigError, match=r"gauge_setpoint declares no safe value.*start=\{'gauge_setpoint'"):
        tl.compile(rig)
    plan = tl.compile(rig, start={"gauge_setpoint": 3.0})
    assert plan.tables["gauge1"]["start"] == {"gauge_setpoint": 3.0}
    assert any("gauge_setpoint declares no safe value" in n for n in plan.notes)
    with pytest.raises(ConfigError, match="no signal 'gauge'"):
        tl.compile(rig, start={"gauge": 1})


# ---------------------------------------------------------------- placement and tables
def test_steps_run_in_sequence_and_parallel_blocks_together(ishtar):
    tl = Timeline("t")
    tl.set("rf_enable", 1)
    tl.ramp("gas_flow", 20)  # 0.2 s at 100 sccm/s
    with tl.parallel():
        tl.ramp("coil_current_set", 300)  # 1 s
        tl.ramp("probe_bias", -50, delay=0.5)  # 0.1 s
    tl.ramp("rf_power", 400)  # 1 s
    plan = tl.compile(ishtar)
    starts = {row["name"]: row["t_start"] for row in plan.steps}
    assert starts["ramp gas_flow"] == 0.0
    assert starts["ramp coil_current_set"] == pytest.approx(0.2)
    assert starts["ramp probe_bias"] == pytest.approx(0.7)
    assert starts["ramp rf_power"] == pytest.approx(1.2)
    assert plan.duration == pytest.approx(2.2) == plan.duration_max


def test_at_and_after_branches_do_not_move_the_main_line(ishtar):
    tl = Timeline("t")
    gas = tl.ramp("gas_flow", 20)  # 0.2 s
    with tl.at(3.0):
        tl.ramp("probe_bias", -50)  # 0.1 s
    with tl.after(gas, delay=0.3):
        tl.ramp("coil_current_set", 30)  # 0.1 s
    tl.ramp("rf_power", 40)  # 0.1 s, right after the gas
    plan = tl.compile(ishtar)
    starts = {row["name"]: row["t_start"] for row in plan.steps}
    assert starts["ramp probe_bias"] == pytest.approx(3.0)
    assert starts["ramp coil_current_set"] == pytest.approx(0.5)
    assert starts["ramp rf_power"] == pytest.approx(0.2)
    assert plan.duration == pytest.approx(3.1)


def test_a_step_cannot_follow_the_block_that_encloses_it(ishtar):
    tl = Timeline("t")
    with tl.parallel() as block:
        tl.ramp("gas_flow", 20, after=block)
    with pytest.raises(ConfigError, match="has not ended"):
        tl.compile(ishtar)


def test_waits_gate_the_steps_after_them_and_set_the_duration_range(ishtar):
    tl = Timeline("t")
    before = tl.ramp("gas_flow", 20)  # 0.2 s
    tl.wait_until("pressure >= 0.3", timeout=5, expect=1.0)
    tl.ramp("coil_current_set", 300)  # 1 s
    tl.wait_until("coil_current > 280 and pressure < 2", timeout=2)  # both... on two nodes: the supervisor
    with tl.after(before, delay=0.1):
        tl.ramp("probe_bias", -50)
    tl.ramp("rf_power", 400)  # 1 s
    plan = tl.compile(ishtar)
    assert plan.duration == pytest.approx(0.2 + 1.0 + 1.0 + 0 + 1.0)
    assert plan.duration_max == pytest.approx(0.2 + 5.0 + 1.0 + 2.0 + 1.0)
    w1, w2 = plan.waits
    assert (w1["id"], w1["evaluated_by"], w1["at"], w1["timeout"]) == ("w1", "gauge1", {"shot": 0.2}, 5.0)
    assert (w2["evaluated_by"], w2["at"], w2["signals"]) == ("supervisor", {"w1": 1.0}, ["coil_current", "pressure"])
    coil = plan.tables["plc1"]["steps"][0]
    assert coil["at"] == {"w1": 0.0} and coil["t_start"] == pytest.approx(1.2)
    assert plan.tables["rp1"]["steps"][0]["at"] == {"w2": 0.0}
    assert plan.tables["rp1"]["gates"] == ["w2"]
    assert plan.tables["ard1"]["steps"][0]["at"] == {"shot": pytest.approx(0.3)}
    assert plan.tables["ard1"]["gates"] == []


def test_a_join_keeps_only_the_gates_that_matter(ishtar):
    tl = Timeline("t")
    first = tl.ramp("gas_flow", 20)  # ends at 0.2
    tl.wait_until("pressure >= 0.3", timeout=5)  # starts at 0.2: its end is always later
    with tl.parallel():
        tl.hold(0.1)
        tl.hold(0.1, after=first)
    tl.ramp("rf_power", 40)
    assert tl.compile(ishtar).tables["rp1"]["steps"][0]["at"] == {"w1": pytest.approx(0.1)}


def test_the_plan_splits_into_json_tables_per_node(ishtar):
    tl = Timeline("t")
    tl.set("rf_enable", 1)
    tl.ramp("gas_flow", 20)
    with tl.parallel():
        tl.acquire(["langmuir_I", "interferometer_phase", "pressure"], rate=500)
        tl.pulse("rf_power", 200, width=0.2, rate="max")
    plan = tl.compile(ishtar)
    assert set(plan.tables) == {"plc1", "pi1", "rp1", "ard1", "gauge1"}
    rp1 = plan.tables["rp1"]
    assert rp1["start"] == {"rf_power": 0.0}
    up, down = rp1["steps"]
    assert (up["kind"], up["from"], up["to"], up["rate"], up["duration"]) == ("ramp", 0.0, 200.0, 400.0, 0.5)
    assert (down["from"], down["to"]) == (200.0, 0.0) and down["t_start"] == pytest.approx(0.2 + 0.5 + 0.2)
    acq = {node: t["acquisitions"] for node, t in plan.tables.items() if t["acquisitions"]}
    assert {n: a[0]["signals"] for n, a in acq.items()} == {"ard1": ["langmuir_I"], "rp1": ["interferometer_phase"],
                                                           "gauge1": ["pressure"]}
    assert acq["ard1"][0]["window"] == pytest.approx(1.2) and acq["ard1"][0]["rate"] == 500
    assert acq["ard1"][0]["until"] == {"shot": pytest.approx(1.4)}
    assert plan.tables["pi1"]["steps"][0]["signal"] == "gas_flow"
    data = json.loads(plan.to_json())
    assert data["nodes"]["rp1"]["steps"][0]["to"] == 200.0 and data["hash"] == plan.hash
    assert data["rig"] == {"name": "ishtar", "digest": ishtar.digest}


# ---------------------------------------------------------------- safe exit
def test_the_default_safe_exit_ramps_every_moved_output_to_its_safe_value(ishtar):
    tl = Timeline("t")
    tl.set("rf_enable", 1)
    tl.ramp("coil_current_set", 300)
    tl.ramp("rf_power", 800)
    tl.ramp("rf_power", 200)
    plan = tl.compile(ishtar)
    exits = {(e["node"], e["signal"]): e for e in plan.safe_exit}
    assert set(exits) == {("plc1", "rf_enable"), ("plc1", "coil_current_set"), ("rp1", "rf_power")}
    rf = exits[("rp1", "rf_power")]
    assert (rf["kind"], rf["to"], rf["rate"], rf["t_start"]) == ("ramp", 0.0, 400.0, 0.0)
    assert rf["duration_max"] == pytest.approx(2.0)  # from the highest planned value, 800 W
    assert exits[("plc1", "rf_enable")]["kind"] == "set"
    assert plan.tables["rp1"]["safe_exit"] == [{k: v for k, v in rf.items() if k != "node"}]
    assert plan.exit_duration == pytest.approx(2.0)


def test_a_declared_safe_exit_keeps_its_order_across_nodes(ishtar):
    tl = Timeline("t")
    tl.ramp("gas_flow", 20)
    tl.ramp("coil_current_set", 300)
    tl.ramp("rf_power", 600)
    with tl.safe_exit():
        tl.ramp("rf_power", 0)  # up to 1.5 s from 600 W
        tl.ramp("coil_current_set", 150, rate=100)  # then part way, the rest by default
    plan = tl.compile(ishtar)
    exits = [(e["node"], e["signal"], e["to"], round(e["t_start"], 6)) for e in plan.safe_exit]
    assert exits == [("pi1", "gas_flow", 0.0, 0.0), ("rp1", "rf_power", 0.0, 0.0),
                     ("plc1", "coil_current_set", 150.0, 1.5), ("plc1", "coil_current_set", 0.0, 3.0)]


def test_a_safe_exit_ramp_needs_a_rate_and_respects_slew_and_limits(ishtar):
    def exit_with(build):
        tl = Timeline("t")
        tl.ramp("rf_power", 600)
        with tl.safe_exit():
            build(tl)
        return tl
    with pytest.raises(ConfigError, match="give it a rate="):
        exit_with(lambda tl: tl.ramp("rf_power", 0, duration=1)).compile(ishtar)
    with pytest.raises(RangeError, match="rf_power ramp rate 1000 W/s exceeds its max slew 400 W/s"):
        exit_with(lambda tl: tl.ramp("rf_power", 0, rate=1000)).compile(ishtar)
    with pytest.raises(RangeError, match="jump from 600 to 100 W"):
        exit_with(lambda tl: tl.set("rf_power", 100)).compile(ishtar)

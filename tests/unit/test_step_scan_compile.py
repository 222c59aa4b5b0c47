"""tl.step_scan: what the compiler checks and the one table entry a node gets; the node's own check of it."""
import pytest

from labrig.drivers.errors import ConfigError, RangeError
from labrig.sequences import Timeline
from labrig.supervisor.runtime.envelope import Envelope
from labrig.supervisor.runtime.steps import _check_scan

VALUES = [round(0.01 * i, 2) for i in range(100)]  # sccm: 0 .. 0.99


def scan_plan(ishtar, **options):
    tl = Timeline("t")
    tl.set("trigger", 1)
    scan = tl.step_scan("gas_flow", VALUES, read=("door_switch", "cooling_relay"), rate=2000, **options)
    tl.ramp("gas_flow", 0)
    return scan, tl.compile(ishtar)


def refused(ishtar, build, error):
    tl = Timeline("t")
    build(tl)
    with pytest.raises(error) as info:
        tl.compile(ishtar)
    return str(info.value)


def test_a_scan_is_one_entry_of_its_nodes_table(ishtar):
    _, plan = scan_plan(ishtar)
    table = plan.tables["pi1"]
    entry, = table["scans"]
    assert entry["signal"] == "gas_flow" and entry["values"] == VALUES
    assert entry["read"] == ["door_switch", "cooling_relay"]
    assert entry["rate"] == 2000 and entry["deadline"] == pytest.approx(1 / 2000) and entry["on_late"] == "record"
    assert entry["from"] == 0.0 and entry["t_start"] == 0.0 and entry["at"] == {"shot": 0.0}
    assert entry["duration"] == pytest.approx(100 / 2000)
    # no set per point in the steps: the trigger, then the ramp down once the scan is over
    assert [(s["kind"], s["signal"]) for s in table["steps"]] == [("set", "trigger"), ("ramp", "gas_flow")]
    assert table["steps"][1]["t_start"] == pytest.approx(0.05) and table["steps"][1]["from"] == 0.99
    assert table["start"]["gas_flow"] == 0.0
    row = next(r for r in plan.steps if r["name"] == "step_scan gas_flow")
    assert row["signals"] == ["gas_flow", "door_switch", "cooling_relay"] and row["nodes"] == ["pi1"]
    assert "100 points 0 .. 0.99 sccm at 2000/s" in row["detail"] and "deadline 0.5 ms" in row["detail"]
    assert any(e["signal"] == "gas_flow" and e["to"] == 0.0 for e in plan.safe_exit)  # the exit brings it back
    assert plan.trajectories["gas_flow"][-1][1] == 0.0  # the dry run draws every point, then the ramp


def test_options_and_the_hash_of_a_sourceless_timeline(ishtar):
    _, plan = scan_plan(ishtar, deadline=0.002, on_late="fail")
    entry, = plan.tables["pi1"]["scans"]
    assert (entry["deadline"], entry["on_late"]) == (0.002, "fail")
    assert "stops the shot" in plan.summary()
    tl = Timeline("t")
    tl.set("trigger", 1)
    tl.step_scan("gas_flow", VALUES[:-1] + [0.98], read=("door_switch", "cooling_relay"), rate=2000)
    tl.ramp("gas_flow", 0)
    assert tl.compile(ishtar).hash != scan_plan(ishtar)[1].hash  # other values, another plan


def test_a_later_step_on_the_output_waits_for_the_scan(ishtar):
    def build(tl):
        tl.step_scan("gas_flow", VALUES, read="door_switch", rate=1000)
        tl.set("gas_flow", 1.0, at=0.05)  # the scan runs until 0.1 s
    assert "both drive gas_flow" in refused(ishtar, build, ConfigError)


@pytest.mark.parametrize("build, error, words", [
    (lambda tl: tl.step_scan("gas_flow", VALUES, read="pressure", rate=100), ConfigError,
     ["pressure is on node gauge1, gas_flow on node pi1", "read signals of pi1"]),
    (lambda tl: tl.step_scan("door_switch", VALUES, read="cooling_relay", rate=100), ConfigError,
     ["door_switch is an input"]),
    (lambda tl: tl.step_scan("gas_flow", [0, 1, 41], read="door_switch", rate=10), RangeError,
     [", point 3 of 3: gas_flow = 41 sccm is outside its limits [0, 40] sccm"]),
    (lambda tl: tl.step_scan("gas_flow", [0, 6], read="door_switch", rate=1), RangeError,
     [", point 2 of 2: gas_flow would jump from 0 to 6 sccm", "direct steps of 5 sccm"]),
    (lambda tl: tl.step_scan("gas_flow", [0, 0.5, 1.0], read="door_switch", rate=1000), RangeError,
     [", point 2 of 3: it moves gas_flow by 0.5 sccm in 1/1000 s", "500 sccm/s, above its max slew 100 sccm/s",
      "a rate of at most 200 points/s"]),
    (lambda tl: tl.step_scan("gas_flow", [0.0], read="door_switch", rate=20_000), RangeError,
     ["rate 20000 points/s exceeds 10000 points/s"]),
    (lambda tl: tl.step_scan("gas_flow", [0.0], read="door_swich", rate=10), ConfigError, ["door_switch"]),
])
def test_refusals_name_the_step_the_point_and_the_limit(ishtar, build, error, words):
    msg = refused(ishtar, build, error)
    assert msg.startswith("step 1 'step_scan "), msg
    for word in words:
        assert word in msg, msg


def test_a_move_to_the_safe_value_is_never_refused(ishtar):
    tl = Timeline("t")
    tl.step_scan("gas_flow", [0.0, 5.0, 0.0], read="door_switch", rate=20)  # 5 sccm in 50 ms: the slew allows it
    tl.compile(ishtar)


@pytest.mark.parametrize("kwargs, words", [
    (dict(values=[], read="door_switch", rate=10), "at least one value"),
    (dict(values=[0.0], read=(), rate=10), "read= names the signals"),
    (dict(values=[0.0], read=("door_switch", "door_switch"), rate=10), "each signal once"),
    (dict(values=[0.0], read="door_switch", rate=0), "rate must be positive"),
    (dict(values=[0.0], read="door_switch", rate=10, on_late="skip"), "'record'"),
    (dict(values=[0.0, float("nan")], read="door_switch", rate=10), "not a finite number"),
    (dict(values=[0.0], read="door_switch", rate=10, deadline=-1), "deadline must be positive"),
])
def test_the_timeline_checks_its_arguments(kwargs, words):
    with pytest.raises((ConfigError, RangeError), match=words):
        Timeline("t").step_scan("gas_flow", **kwargs)


def test_a_scan_is_not_a_safe_exit_step():
    tl = Timeline("t")
    with pytest.raises(ConfigError, match="only set, ramp and hold"):
        with tl.safe_exit():
            tl.step_scan("gas_flow", [0.0], read="door_switch", rate=10)


def test_the_node_checks_the_entry_again(ishtar):
    env = Envelope("pi1", ishtar.signals_of("pi1"))
    _, plan = scan_plan(ishtar)
    entry, = plan.tables["pi1"]["scans"]
    _check_scan(env, entry)  # as compiled: accepted
    for change, words in [({"rate": 20_000}, "rate 20000 must be in (0, 10000]"),
                          ({"values": [0.0, 0.5]}, "point 2 moves it 0.5 sccm in 1/2000 s"),
                          ({"values": [0.0, 41.0]}, "outside its limits"),
                          ({"read": ["pressure"]}, "no signal 'pressure'"),
                          ({"deadline": 0}, "deadline 0 must be a positive"),
                          ({"on_late": "skip"}, "allowed: record, fail"),
                          ({"signal": "door_switch"}, "door_switch is an input")]:
        with pytest.raises((ConfigError, RangeError), match=words.replace("(", r"\(").replace("]", r"\]")):
            _check_scan(env, {**entry, **change})


def test_the_run_view_plots_a_scans_set_values_and_reads(ishtar):
    from labrig.kernels.widgets.runview import acquired
    tl = Timeline("t")
    tl.acquire(["pressure"], rate=10, window=0.2)
    tl.step_scan("gas_flow", VALUES, read=("door_switch", "cooling_relay"), rate=2000)
    assert acquired(tl.compile(ishtar)) == ["pressure", "gas_flow:set", "door_switch", "cooling_relay"]

"""The closed-loop optimiser (sequences/optimise.py) against the plasma model, through a real shot store.

Each "shot" here is the discharge sequence's physics played on the simulators' own helicon
model in-process (gas fill, coil ramp, RF ramp at the rig's slew through the mode jumps, flat
top), recorded in a real ShotStore so the optimiser learns from the real catalog. The cluster
version of the same campaign runs in examples/ishtar/optimise.ipynb (tests/system/test_notebooks.py).
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np
import pytest

from labrig.drivers.errors import ConfigError, RangeError
from labrig.sequences.library import discharge
from labrig.sequences.optimise import Optimiser
from labrig.simulators.plasma import HeliconPlasma
from labrig.supervisor.rig import Rig
from labrig.supervisor.store import ShotStore

SPACE = {"power": (300.0, 1200.0), "b_field": (0.02, 0.12)}
FIXED = {"flat_top": 0.2, "rate": 100.0}
RF_SLEW, COIL_SLEW = 400.0, 300.0  # W/s, A/s: the example rig's max_slew


def discharge_on_the_model(power: float, b_field: float, seed: int) -> np.ndarray:
    """The interferometer phase (rad, every 10 ms) of `discharge(power, b_field)` played on the model."""
    plasma = HeliconPlasma(seed)
    phases = []

    def run(seconds: float, **inputs):
        for name, value in inputs.items():
            plasma.set_input(name, value)
        for _ in range(max(1, round(seconds / 0.01))):
            plasma.step(0.01)
            phases.append(plasma.state()["interferometer_phase"])

    run(1.0, gas_valve=0.4, rf_permit=1)  # 20 sccm: 0.4 Pa
    coil = b_field / 2e-4
    for i in range(1, math.ceil(coil / COIL_SLEW / 0.01) + 1):
        run(0.01, coil_current_cmd=min(coil, i * 0.01 * COIL_SLEW))
    run(0.6)  # the coil's L/R lag
    for i in range(1, math.ceil(power / RF_SLEW / 0.01) + 1):
        run(0.01, rf_drive=math.sqrt(min(power, i * 0.01 * RF_SLEW) / 1500))
    run(FIXED["flat_top"])
    return np.array(phases)


class ModelRig:
    """Runs a point as a shot: the model's trace goes into the store with the sequence's parameters."""

    def __init__(self, store: ShotStore, seed: int = 0):
        self.store, self.seed, self.count = store, seed, 0

    def __call__(self, params: dict):
        values = discharge.check(**params)
        self.count += 1
        phase = discharge_on_the_model(values["power"], values["b_field"], self.seed + self.count)
        with self.store.open_shot(sequence=discharge, parameters=values) as shot:
            shot.signal("interferometer_phase", np.arange(len(phase)) * 0.01, phase, unit="rad")
        return type("Result", (), {"number": self.store.numbers()[-1], "status": "success", "reason": ""})()


@pytest.fixture
def rig(ishtar_path):
    return Rig.load(ishtar_path)


def grid_best(points: int) -> float:
    powers = np.linspace(*SPACE["power"], points)
    fields = np.linspace(*SPACE["b_field"], points)
    return max(discharge_on_the_model(p, b, 0).max() for p in powers for b in fields)


def test_it_reaches_95_percent_of_the_best_grid_density_in_20_shots_median_of_5_seeds(rig, tmp_path):
    best_of_grid = grid_best(7)  # 49 shots
    fractions = []
    for seed in range(5):
        store = ShotStore(tmp_path / f"seed{seed}")
        opt = Optimiser(discharge, rig, store, space=SPACE, objective="interferometer_phase.max", fixed=FIXED,
                        seed=seed)
        result = opt.run(ModelRig(store, seed * 1000), budget=20)
        assert len(result.shots) == 20 and result.stopped == "budget"
        fractions.append(result.best_value / best_of_grid)
    assert statistics.median(fractions) >= 0.95, fractions


def test_it_learns_from_the_shots_already_in_the_catalog_and_resumes(rig, tmp_path):
    store = ShotStore(tmp_path / "store")
    first = Optimiser(discharge, rig, store, space=SPACE, objective="interferometer_phase.max", fixed=FIXED, seed=1)
    first.run(ModelRig(store), budget=4)  # the initial design: 4 Latin hypercube points
    history = first.history()
    assert len(history) == 4 and set(history["status"]) == {"success"}
    # a new optimiser (a restarted kernel) sees the same four shots and goes on from the model, not from scratch
    again = Optimiser(discharge, rig, store, space=SPACE, objective="interferometer_phase.max", fixed=FIXED, seed=1)
    assert len(again.history()) == 4
    proposal = again.suggest()
    assert proposal["flat_top"] == 0.2 and proposal["rate"] == 100.0
    measured = history[["power", "b_field"]].to_numpy()
    assert not any(np.allclose([proposal["power"], proposal["b_field"]], m) for m in measured)
    # shots with other settings (a longer flat top) are a different experiment: not learnt from
    other = Optimiser(discharge, rig, store, space=SPACE, objective="interferometer_phase.max",
                      fixed={"flat_top": 1.0, "rate": 100.0}, seed=1)
    assert other.history().empty
    # since_shot: a new campaign in the same catalog
    assert Optimiser(discharge, rig, store, space=SPACE, objective="interferometer_phase.max", fixed=FIXED,
                     since_shot=store.numbers()[-1]).history().empty


def test_a_failed_shot_counts_as_the_worst_and_three_in_a_row_stop_the_campaign(rig, tmp_path):
    store = ShotStore(tmp_path / "store")
    model = ModelRig(store)

    def tripping(params):
        if params["power"] > 900:  # the rig trips above 900 W today (a reflected-power interlock, say)
            values = discharge.check(**params)
            shot = store.open_shot(sequence=discharge, parameters=values)
            shot.signal("interferometer_phase", [0.0], [0.0], unit="rad")
            shot.close("fail", "interlock rf_reflected_limit tripped")
            return type("Result", (), {"number": store.numbers()[-1], "status": "fail",
                                       "reason": "interlock rf_reflected_limit tripped"})()
        return model(params)

    opt = Optimiser(discharge, rig, store, space=SPACE, objective="interferometer_phase.max", fixed=FIXED, seed=3)
    result = opt.run(tripping, budget=12)
    failed = result.history[result.history["status"] != "success"]
    assert len(failed) >= 1
    assert result.best["power"] <= 900  # the best is among the shots that succeeded
    # what it did after a failure: proposals keep away from the failed points (none repeated)
    points = [(p["power"], p["b_field"]) for p in result.proposals]
    assert len(set(points)) == len(points)

    def always_failing(params):
        values = discharge.check(**params)
        store.open_shot(sequence=discharge, parameters=values).close("fail", "the gauge does not answer")
        return type("Result", (), {"number": store.numbers()[-1], "status": "fail",
                                   "reason": "the gauge does not answer"})()

    stopped = Optimiser(discharge, rig, store, space=SPACE, objective="interferometer_phase.max",
                        fixed={"flat_top": 0.3, "rate": 100.0}, seed=3).run(always_failing, budget=10)
    assert len(stopped.shots) == 3 and "3 shots in a row did not succeed" in stopped.stopped
    assert "gauge does not answer" in stopped.stopped


def test_it_never_proposes_what_the_compiler_refuses(tmp_path, ishtar_path):
    # the same machine with the RF amplifier limited to 700 W: proposals above it never leave the optimiser
    text = Path(ishtar_path).read_text().replace("limits = [0.0, 1200.0]\nmax_slew = 400.0",
                                                 "limits = [0.0, 700.0]\nmax_slew = 400.0")
    text = text.replace("output_limits = [0.0, 1200.0]", "output_limits = [0.0, 700.0]")  # its leveling loop    assert "limits = [0.0, 700.0]" in text
    rig_file = tmp_path / "rig.toml"
    rig_file.write_text(text)
    limited = Rig.load(rig_file)
    store = ShotStore(tmp_path / "store")
    opt = Optimiser(discharge, limited, store, space=SPACE, objective="interferometer_phase.max", fixed=FIXED, seed=0)
    result = opt.run(ModelRig(store), budget=8)
    assert all(p["power"] <= 700 for p in result.proposals)
    assert opt.refused > 0  # it did consider points above 700 W, and the compiler turned them down


@pytest.mark.parametrize("space, fixed, message", [
    ({"power": (300, 1500)}, {}, "space['power'] = (300, 1500) W leaves the parameter's range [0, 1200] W"),
    ({"powr": (300, 900)}, {}, "'powr' is not one of its parameters: power, b_field"),
    ({"power": (900, 300)}, {}, "low must be below high"),
    ({"power": (300, 900)}, {"power": 500}, "power is both searched (space) and fixed"),
    ({"power": (300, 900)}, {"flat_top": 100}, "flat_top = 100 s is outside its range [0.05, 30] s"),
    ({}, {}, "give a space"),
])
def test_bad_spaces_are_refused_naming_the_parameter_and_its_range(rig, tmp_path, space, fixed, message):
    with pytest.raises((ConfigError, RangeError)) as info:
        Optimiser(discharge, rig, ShotStore(tmp_path), space=space, objective="interferometer_phase.max", fixed=fixed)
    assert message in str(info.value)

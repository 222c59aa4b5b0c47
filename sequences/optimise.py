"""Closed loop: the next discharge proposed from every previous shot in the catalog.

    from labrig.sequences.library import discharge
    from labrig.sequences.optimise import Optimiser

    opt = Optimiser(discharge, rig.spec, store, space={"power": (300, 1200), "b_field": (0.02, 0.12)},
                    objective="interferometer_phase.max", fixed={"flat_top": 0.2, "rate": 100})
    opt.suggest()                       # {"power": ..., "b_field": ..., "flat_top": 0.2, "rate": 100}
    result = opt.run(lambda p: rig.run(discharge, **p), budget=20)    # or rig.optimise(...)

Bayesian optimisation with scikit-learn's Gaussian process (Matern 5/2 plus a white-noise
term, fitted on the unit cube of the search space) and expected improvement. What it
learns from is the catalog: every shot of the sequence whose fixed parameters match
(optionally only shots after `since_shot`), so a campaign resumes where it stopped and a
restarted kernel loses nothing. A shot that did not succeed (a trip, a failed wait) counts
as the worst value seen, so the model learns to stay away from where it happened.

Never outside the safety envelope: the space must lie inside every parameter's declared
range, and each proposal is compiled against the rig (limits, slew, provable interlock
crossings) before it is returned; a candidate the compiler refuses is never proposed.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from labrig.drivers.errors import ConfigError, LabrigError

from .sequence import Sequence

CANDIDATES = 4096  # random points the acquisition function is evaluated on, per proposal
TOO_CLOSE = 0.01  # a candidate this near (unit cube) to a measured point adds nothing
XI = 0.01  # expected improvement's exploration margin, in units of the objective's spread


@dataclass
class OptimisationResult:
    """What a closed-loop campaign did: the shots it ran, the best found, why it stopped."""
    shots: list[int]
    history: Any  # pandas DataFrame: shot, the space's parameters, objective, status
    best: dict[str, Any]
    best_value: float
    best_shot: int | None
    stopped: str
    proposals: list[dict] = field(default_factory=list)

    def __repr__(self) -> str:
        best = ", ".join(f"{k}={v:.4g}" for k, v in self.best.items())
        return (f"<optimisation: {len(self.shots)} shots, best {self.best_value:.4g} at {best} "
                f"(shot {self.best_shot}); stopped: {self.stopped}>")


class Optimiser:
    def __init__(self, sequence: Sequence, rig, store, *, space: dict[str, tuple[float, float]],
                 objective: str | Callable[[Any], float], fixed: dict[str, Any] | None = None, goal: str = "max",
                 seed: int | None = None, initial: int | None = None, since_shot: int | None = None):
        """`objective`: a catalog column ("interferometer_phase.max", see ShotStore.query) or a function of
        an open Shot. `goal`: "max" or "min". `initial`: shots from a Latin hypercube before the model leads
        (default 2 per dimension, at least 3). `since_shot`: learn only from shots numbered above it."""
        if not isinstance(sequence, Sequence):
            raise ConfigError(f"optimise: {sequence!r} is not a sequence (decorate it with @sequence)")
        if goal not in ("max", "min"):
            raise ConfigError(f"optimise: goal {goal!r}: use 'max' or 'min'")
        self.sequence, self.rig, self.store = sequence, rig, store
        self.space = _check_space(sequence, space)
        self.fixed = dict(fixed or {})
        clash = set(self.fixed) & set(self.space)
        if clash:
            raise ConfigError(f"optimise: {', '.join(sorted(clash))} is both searched (space) and fixed")
        # every parameter outside the space, as a run would use it: shots that differ in one are not comparable
        middle = sequence.check(**self._params(np.full(len(self.space), 0.5)))
        self.context = {k: v for k, v in middle.items() if k not in self.space}
        self.objective, self.goal, self.since_shot = objective, goal, since_shot
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.initial = initial if initial is not None else max(3, 2 * len(self.space))
        self._values: dict[int, float] = {}  # shot -> objective, for a function objective (files are immutable)
        self.refused = 0  # candidates the compiler refused, over this optimiser's life

    # -- what it learns from ------------------------------------------------------------------
    def history(self):
        """The shots it learns from (a DataFrame indexed by shot): the space's parameters, `objective`, `status`."""
        names = list(self.space) + list(self.context)
        column = self.objective if isinstance(self.objective, str) else None
        frame = self.store.query(*[f"params.{n}" for n in names], *([column] if column else []),
                                 sequence=self.sequence.name)
        if self.since_shot is not None:
            frame = frame[frame.index > self.since_shot]
        for name, value in self.context.items():
            frame = frame.loc[np.array([_same(v, value) for v in frame[f"params.{name}"]], dtype=bool)]
        out = frame[["status"]].copy()
        for name in self.space:
            out[name] = frame[f"params.{name}"].astype(float)
        out["objective"] = frame[column].astype(float) if column else [self._value_of(n) for n in frame.index]
        return out

    def _value_of(self, number: int) -> float:
        if number not in self._values:
            try:
                with self.store.shot(number) as shot:
                    self._values[number] = float(self.objective(shot))
            except LabrigError:
                self._values[number] = math.nan  # not readable (yet): it counts as not measured
        return self._values[number]

    # -- what it proposes ---------------------------------------------------------------------
    def suggest(self) -> dict[str, Any]:
        """The parameters of the next shot: compiled against the rig before they are returned."""
        history = self.history()
        x, y = self._observations(history)
        if len(x) < self.initial:
            ranked = self._initial_design(len(x))
        else:
            ranked = self._ranked_by_improvement(x, y)
        for unit in ranked:
            params = self._params(unit)
            try:
                self.sequence(**params).compile(self.rig)
            except LabrigError:
                self.refused += 1  # outside the envelope: never proposed
                continue
            return params
        raise ConfigError(f"optimise {self.sequence.name}: every candidate in {self._describe_space()} was refused by "
                          f"the compiler (limits, slew or interlocks): the space holds no safe discharge")

    def run(self, run_shot: Callable[[dict], Any], *, budget: int, target: float | None = None,
            max_failures: int = 3, on_shot: Callable[[dict, Any], None] | None = None) -> OptimisationResult:
        """Propose and run shots until `budget` shots ran, the objective reached `target`, or `max_failures`
        shots in a row did not succeed (something other than the parameters is wrong). `run_shot(params)`
        runs one shot and returns its RunResult (rig.run does)."""
        if budget < 1:
            raise ConfigError(f"optimise: budget {budget}: at least one shot")
        shots, proposals, failures, stopped = [], [], 0, "budget"
        for _ in range(budget):
            params = self.suggest()
            proposals.append(params)
            result = run_shot(params)
            if getattr(result, "number", None) is not None:
                shots.append(result.number)
            if on_shot is not None:
                on_shot(params, result)
            failures = 0 if getattr(result, "status", "success") == "success" else failures + 1
            if failures >= max_failures:
                stopped = f"{failures} shots in a row did not succeed (last: {getattr(result, 'reason', '')})"
                break
            if target is not None and self._reached(target):
                stopped = "target reached"
                break
        history = self.history()
        ours = history[history.index.isin(shots)]
        best, value, shot = self.best(ours)
        return OptimisationResult(shots, history, best, value, shot, stopped, proposals)

    def best(self, history=None) -> tuple[dict[str, float], float, int | None]:
        """(parameters, objective, shot) of the best successful shot in `history` (default: all it learns from)."""
        history = self.history() if history is None else history
        ok = history[(history["status"] == "success") & history["objective"].notna()]
        if ok.empty:
            return {}, math.nan, None
        number = ok["objective"].idxmax() if self.goal == "max" else ok["objective"].idxmin()
        row = ok.loc[number]
        return {n: float(row[n]) for n in self.space}, float(row["objective"]), int(number)

    # -- the model ----------------------------------------------------------------------------
    def _observations(self, history) -> tuple[np.ndarray, np.ndarray]:
        """Unit-cube inputs and objectives to maximise; a failed shot counts as the worst value seen."""
        known = history.dropna(subset=list(self.space))
        x = np.array([self._unit(row) for _, row in known.iterrows()]).reshape(-1, len(self.space))
        sign = 1.0 if self.goal == "max" else -1.0
        y = sign * known["objective"].to_numpy(dtype=float)
        ok = (known["status"].to_numpy() == "success") & np.isfinite(y)
        if ok.any():
            y = np.where(ok, y, y[ok].min())
        else:
            x, y = x[:0], y[:0]  # nothing measured yet: the initial design leads
        return x, y

    def _initial_design(self, done: int) -> list[np.ndarray]:
        from scipy.stats import qmc
        design = qmc.LatinHypercube(d=len(self.space), seed=self.seed).random(self.initial)
        first = design[done:] if done < len(design) else design[:0]
        return [*first, *self.rng.random((CANDIDATES, len(self.space)))]

    def _ranked_by_improvement(self, x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
        from scipy.stats import norm
        model = _fit(x, y, self.seed)
        candidates = self._candidates(x, y)
        mean, std = model.predict(candidates, return_std=True)
        spread = float(np.std(y)) or 1.0
        gain = mean - y.max() - XI * spread
        z = gain / np.maximum(std, 1e-12)
        improvement = np.where(std > 1e-12, gain * norm.cdf(z) + std * norm.pdf(z), 0.0)
        order = np.argsort(-improvement, kind="stable")
        return [candidates[i] for i in order]

    def _candidates(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Random points, the box's corners and edge midpoints (optima of lab knobs sit on limits often),
        and points near the best shots; without those next to a measured point."""
        d = len(self.space)
        corners = np.array(np.meshgrid(*[[0.0, 0.5, 1.0]] * d)).reshape(d, -1).T
        best = x[np.argsort(-y)[:3]]
        local = np.clip(np.repeat(best, 64, axis=0) + self.rng.normal(0, 0.05, (len(best) * 64, d)), 0, 1)
        points = np.vstack([corners, local, self.rng.random((CANDIDATES, d))])
        distance = np.min(np.linalg.norm(points[:, None, :] - x[None, :, :], axis=2), axis=1)
        keep = points[distance > TOO_CLOSE]
        return keep if len(keep) else points

    def _reached(self, target: float) -> bool:
        _, value, _ = self.best()
        return math.isfinite(value) and (value >= target if self.goal == "max" else value <= target)

    # -- the space ----------------------------------------------------------------------------
    def _unit(self, row) -> np.ndarray:
        return np.array([(row[n] - lo) / (hi - lo) for n, (lo, hi) in self.space.items()])

    def _params(self, unit: np.ndarray) -> dict[str, Any]:
        params = {}
        for u, (name, (lo, hi)) in zip(unit, self.space.items()):
            value = lo + float(np.clip(u, 0, 1)) * (hi - lo)
            step = 10 ** math.floor(math.log10((hi - lo) / 1e4))  # 4 digits across the span: readable, exact in JSON
            params[name] = min(hi, max(lo, round(round(value / step) * step, 12)))
            if self.sequence.params.get(name) and self.sequence.params[name].type is int:
                params[name] = int(round(params[name]))
        return {**params, **self.fixed}

    def _describe_space(self) -> str:
        return ", ".join(f"{n} in [{lo:g}, {hi:g}]" for n, (lo, hi) in self.space.items())


def _check_space(sequence: Sequence, space: dict) -> dict[str, tuple[float, float]]:
    if not space:
        raise ConfigError(f"optimise {sequence.name}: give a space, e.g. {{'power': (300, 1200)}}")
    out = {}
    for name, bounds in space.items():
        param = sequence.params.get(name, "unknown")
        if param == "unknown":
            raise ConfigError(f"optimise {sequence.name}: {name!r} is not one of its parameters: "
                              f"{', '.join(sequence.params)}")
        if param is None or param.type not in (float, int):
            raise ConfigError(f"optimise {sequence.name}: parameter {name} is not a number; only numbers are searched")
        try:
            lo, hi = (float(b) for b in bounds)
        except (TypeError, ValueError):
            raise ConfigError(f"optimise {sequence.name}: space[{name!r}] = {bounds!r}: give (low, high)") from None
        if not lo < hi:
            raise ConfigError(f"optimise {sequence.name}: space[{name!r}] = ({lo:g}, {hi:g}): low must be below high")
        if param.range is not None and (lo < param.range[0] or hi > param.range[1]):
            raise ConfigError(f"optimise {sequence.name}: space[{name!r}] = ({lo:g}, {hi:g}) {param.unit} leaves the "
                              f"parameter's range [{param.range[0]:g}, {param.range[1]:g}] {param.unit}".rstrip())
        out[name] = (lo, hi)
    return out


def _fit(x: np.ndarray, y: np.ndarray, seed: int | None):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    d = x.shape[1]
    kernel = (ConstantKernel(1.0, (1e-3, 1e3)) * Matern(length_scale=np.full(d, 0.3), length_scale_bounds=(0.03, 10),
                                                         nu=2.5)
              + WhiteKernel(1e-3, (1e-6, 1e-1)))
    model = GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=2, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a length scale at its bound is a fine answer here
        model.fit(x, y)
    return model


def _same(recorded, wanted) -> bool:
    if isinstance(wanted, (int, float)) and not isinstance(wanted, bool):
        try:
            return math.isclose(float(recorded), float(wanted), rel_tol=1e-9, abs_tol=1e-12)
        except (TypeError, ValueError):
            return False
    if isinstance(wanted, (tuple, list)) and isinstance(recorded, str):
        import json
        try:
            return list(json.loads(recorded)) == list(wanted)
        except ValueError:
            return False
    return recorded == wanted

"""The closed-loop optimiser against a brute-force grid, on the simulated cluster.

    python benchmarks/optimiser.py [--grid 7] [--budget 20] [--seeds 5] [--flat-top 0.1]

Starts the whole simulated cluster (Mosquitto or the embedded broker, simulators, node
runtimes, the guard), then runs real shots of `discharge` through the runner into a
temporary shot store: first a grid x grid scan over (RF power 300..1200 W, B 0.02..0.12 T),
then, for each seed, a fresh optimiser campaign (it learns only from its own shots) of
--budget shots. One line per figure:

    figure: optimiser_best_vs_grid MEDIAN fraction baseline 1 ratio MEDIAN
        the best peak interferometer phase (line-averaged density) a campaign found, as a
        fraction of the grid's best; median over the seeds. Goal: >= 0.95.
    figure: optimiser_shots_to_95 MEDIAN shots baseline GRID_SHOTS ratio R
        shots a campaign needed to first reach 95 % of the grid's best (budget + 1 when it
        never did), median over the seeds, against the grid's shot count.

Every shot lasts several seconds (the ramps run at the rig's max slew), so the default
run (49 + 5 x 20 shots) takes 20 to 30 minutes. Notes go to stderr.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RIG = ROOT / "examples" / "ishtar" / "rig.toml"
SPACE = {"power": (300.0, 1200.0), "b_field": (0.02, 0.12)}
OBJECTIVE = "interferometer_phase.max"


def figure(name, value, unit, baseline, ratio) -> None:
    print(f"figure: {name} {value:.4g} {unit} baseline {baseline:.4g} ratio {ratio:.3g}", flush=True)


def note(text: str) -> None:
    print(f"# {text}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=7, help="points per axis of the grid")
    parser.add_argument("--budget", type=int, default=20, help="shots per optimiser campaign")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--flat-top", type=float, default=0.1, help="s of RF flat top per discharge")
    args = parser.parse_args()

    from labrig.sequences.library import discharge
    from labrig.sequences.optimise import Optimiser
    from labrig.supervisor.cluster import start_cluster, stop_cluster
    from labrig.supervisor.rig import Rig
    from labrig.supervisor.runner.session import run_sequence, scan
    from labrig.supervisor.safety import all_trips, rearm
    from labrig.supervisor.store import ShotStore

    rig = Rig.load(RIG)
    fixed = {"flat_top": args.flat_top, "rate": 100.0}
    with tempfile.TemporaryDirectory(prefix="labrig-bench-opt-") as tmp:
        state, store = Path(tmp) / "state", ShotStore(Path(tmp) / "store")
        start_cluster(str(RIG), sim=True, directory=state, timeout=120)
        try:
            for trips in all_trips(state).values():  # a loaded machine can start with a latched trip
                for trip in trips if isinstance(trips, list) else ():
                    rearm(trip["interlock"], state)
            t0 = time.monotonic()
            grid = {n: [round(float(v), 4) for v in np.linspace(lo, hi, args.grid)] for n, (lo, hi) in SPACE.items()}
            results = scan(rig, state, discharge, grid=grid, store=store, progress=False, **fixed)
            failed = [(r.number, r.reason) for r in results if r.status != "success"]
            if failed:
                raise SystemExit(f"grid shots failed: {failed}")
            table = store.query(OBJECTIVE, shots=[r.number for r in results])
            grid_best = float(table[OBJECTIVE].max())
            note(f"grid: {len(results)} shots in {time.monotonic() - t0:.0f} s, best {grid_best:.3f} rad")
            fractions, needed = [], []
            for seed in range(args.seeds):
                since = store.numbers()[-1]
                opt = Optimiser(discharge, rig, store, space=SPACE, objective=OBJECTIVE, fixed=fixed, seed=seed,
                                since_shot=since)
                t0 = time.monotonic()
                campaign = opt.run(lambda p: run_sequence(rig, state, discharge, store=store, progress=False, **p),
                                   budget=args.budget)
                values = campaign.history.loc[campaign.shots, "objective"].fillna(-np.inf).to_numpy() / grid_best
                best = np.maximum.accumulate(values)
                first = int(np.argmax(best >= 0.95)) + 1 if (best >= 0.95).any() else args.budget + 1
                fractions.append(float(best[-1]))
                needed.append(first)
                note(f"seed {seed}: best {best[-1]:.3f} of the grid best, 95 % at shot {first}, "
                     f"{len(campaign.shots)} shots in {time.monotonic() - t0:.0f} s ({campaign.stopped}); "
                     f"best at {campaign.best}")
        finally:
            stop_cluster(state)
    median = statistics.median(fractions)
    figure("optimiser_best_vs_grid", median, "fraction", 1.0, median)
    shots = statistics.median(needed)
    figure("optimiser_shots_to_95", shots, "shots", args.grid ** 2, shots / args.grid ** 2)


if __name__ == "__main__":
    main()

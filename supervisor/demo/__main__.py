"""The main job on embedded defaults: what labrig does so far, end to end, on the simulated testbed.

    python -m labrig.supervisor.demo [--rig RIG] [--seed N]

1. the simulated testbed (one process per device, real protocols), driven
   through the production drivers: the plasma lights, and goes out with the gas;
2. the cluster on top of it (MQTT broker, node runtimes, the guard, node kernels,
   the supervisor kernel), driven from a real Jupyter client through `rig`; it ends
   with a discharge run as a sequence: a numbered shot in the shot store
   (--store, default $LABRIG_STORE or ~/.local/share/labrig/shots), which outlives the demo.
Everything else runs in a private state directory, so a testbed or cluster you run
yourself is left alone; everything is stopped at the end, whatever happens.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from labrig.drivers.errors import LabrigError

from ..cluster import start_cluster, stop_cluster
from ..rig import Rig
from ..testbed import start_testbed, stop_testbed
from . import cluster as cluster_stage
from . import drivers as drivers_stage

DEFAULT_RIG = Path(__file__).resolve().parents[2] / "examples" / "ishtar" / "rig.toml"


def banner(text: str) -> None:
    print(f"\n{'=' * 8} {text} {'=' * max(4, 100 - len(text))}\n", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labrig demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rig", default=str(DEFAULT_RIG), help="rig file (default: the ISHTAR example)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--store", default=os.environ.get("LABRIG_STORE")
                        or str(Path.home() / ".local" / "share" / "labrig" / "shots"),
                        help="where the demo's shot files go (they outlive the demo)")
    args = parser.parse_args(argv)
    os.environ["LABRIG_STORE"] = args.store  # the kernels started below inherit it
    try:
        rig = Rig.load(args.rig)
    except LabrigError as exc:
        print(f"labrig: {exc}", file=sys.stderr)
        return 2
    results = {}
    with tempfile.TemporaryDirectory(prefix="labrig-demo-") as tmp:
        state = Path(tmp)
        try:
            banner(f"1. the simulated {rig.name} testbed, through the drivers")
            record = start_testbed(rig, seed=args.seed, directory=state)
            for node, info in record["simulators"].items():
                print(f"  {node:7} {info['kind']:10} pid {info['pid']:<7} {info['url']}")
            print()
            results["drivers"] = drivers_stage.run(rig, record)

            banner(f"2. the {rig.name} cluster, through the supervisor kernel")
            started = time.monotonic()
            cluster = start_cluster(rig, sim=True, directory=state)
            broker = cluster["broker"]
            print(f"cluster up in {time.monotonic() - started:.1f} s: {broker['kind']} broker at {broker['url']}, "
                  f"{len(cluster['nodes'])} node runtimes and kernels, the supervisor kernel\n")
            results["cluster"] = cluster_stage.run(cluster)
        except LabrigError as exc:
            print(f"labrig: {exc}", file=sys.stderr)
            return 1
        finally:
            stopped = stop_cluster(state) + [f"sim-{name}" for name in stop_testbed(state)]
            print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
    banner("summary")
    for stage, ok in results.items():
        print(f"  {stage:10} {'ok' if ok else 'FAILED'}")
    return 0 if results and all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

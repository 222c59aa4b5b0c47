"""`python -m labrig.supervisor.runner RIG SEQUENCE [name=value ...] --state-dir DIR --store DIR`

Compiles SEQUENCE (a name of labrig.sequences.library, or module:attribute) with the
parameters against RIG, runs it on the cluster of DIR and prints the result as JSON.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys


def load_sequence(name: str):
    module, _, attr = name.rpartition(":") if ":" in name else ("labrig.sequences.library", "", name)
    return getattr(importlib.import_module(module), attr)


def main(argv: list[str] | None = None) -> int:
    from labrig.supervisor.rig import Rig
    from labrig.supervisor.store import ShotStore

    from .runner import run
    parser = argparse.ArgumentParser(prog="labrig-run")
    parser.add_argument("rig")
    parser.add_argument("sequence")
    parser.add_argument("params", nargs="*", help="name=value")
    parser.add_argument("--state-dir")
    parser.add_argument("--store")
    args = parser.parse_args(argv)
    params = {k: float(v) for k, v in (p.split("=", 1) for p in args.params)}
    rig = Rig.load(args.rig)
    plan = load_sequence(args.sequence)(**params).compile(rig)
    result = run(rig, plan, directory=args.state_dir, store=ShotStore(args.store) if args.store else None,
                 progress=lambda p: print(f"t={p['t']:.2f}", flush=True))
    print(json.dumps({"shot": result.number, "status": result.status, "reason": result.reason,
                      "run": result.run}), flush=True)
    return 0 if result.status == "success" else 1


if __name__ == "__main__":
    sys.exit(main())

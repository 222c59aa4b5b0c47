"""Run one simulator as its own process.

    python -m labrig.simulators world --ready FILE [--seed N]
    python -m labrig.simulators KIND --node NAME --world-state EP --world-actuators EP --ready FILE

KIND is a node kind of the rig file (arduino, redpitaya, simatic, rpi, visa).
When listening, the process writes {"kind", "node", "pid", "endpoints", "url"}
as JSON to the ready file (atomically), then serves until SIGTERM or SIGINT.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import threading

SIMULATORS = {
    "arduino": "labrig.simulators.arduino:ArduinoSimulator",
    "redpitaya": "labrig.simulators.redpitaya:RedPitayaSimulator",
    "simatic": "labrig.simulators.simatic:SimaticSimulator",
    "rpi": "labrig.simulators.pigpio_server:PigpioSimulator",
    "visa": "labrig.simulators.visa_instrument:VisaSimulator",
}


def simulator_class(kind: str):
    try:
        module, cls = SIMULATORS[kind].split(":")
    except KeyError:
        raise SystemExit(f"unknown simulator kind {kind!r}; allowed: world, {', '.join(SIMULATORS)}")
    return getattr(importlib.import_module(module), cls)


def write_ready(path: str, info: dict) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(info, fh)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labrig.simulators", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["world", *SIMULATORS])
    parser.add_argument("--node", default="")
    parser.add_argument("--world-state", default="")
    parser.add_argument("--world-actuators", default="")
    parser.add_argument("--ready", required=True, help="file to write endpoints to once listening")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--realtime", type=int, default=None, metavar="PRIORITY",
                        help="run under SCHED_FIFO at this priority (the node's `realtime` in the rig file)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="simulator-specific option (repeatable)")
    args = parser.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    if args.kind == "world":
        from .world import WorldServer
        server = WorldServer(seed=args.seed, host=args.host)
        thread = threading.Thread(target=server.serve, name="world", daemon=True)
        thread.start()
        write_ready(args.ready, {"kind": "world", "node": "", "pid": os.getpid(),
                                 "endpoints": server.endpoints, "url": server.endpoints["control"]})
        stop.wait()
        server.stop()
        thread.join(2)
        server.close()
        return 0

    if not (args.node and args.world_state and args.world_actuators):
        parser.error(f"{args.kind} needs --node, --world-state and --world-actuators")
    from labrig.supervisor.realtime import use_realtime

    from .world import WorldLink
    options = dict(opt.split("=", 1) for opt in args.option)
    # a board answers in its own time whatever the host does: the simulator standing in for a
    # real-time node runs real-time too (before its threads start; they inherit it)
    use_realtime(args.realtime, what=f"simulator {args.node}")
    world = WorldLink(args.world_state, args.world_actuators)
    sim = simulator_class(args.kind)(world, node=args.node, host=args.host, options=options)
    sim.start()
    write_ready(args.ready, {"kind": args.kind, "node": args.node, "pid": os.getpid(),
                             "endpoints": sim.endpoints, "url": sim.url})
    try:
        stop.wait()
    finally:
        sim.close()
        world.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

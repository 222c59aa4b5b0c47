"""How fast each safety layer drives outputs safe, timed by the simulated devices.

    python benchmarks/safety_trip.py [--trips 1000] [--leases 200] [--pid-seconds 10]

It starts its own simulated cluster (examples/ishtar/rig.toml, real Mosquitto when
installed, no kernels) in a temporary state directory and stops it at the end, SIGTERM
included. Every trip is timed by the world process, on the host's one monotonic clock:
from the moment the world applied the condition crossing (a sensor fault, a door opened,
the cooling water cut) to the moment a device simulator set its actuator to the safe
value. One line per figure:

    figure: node_trip_p99 MS ms baseline MS ratio R
        rf_reflected_limit, watched by the rp1 runtime (node layer): a reflected-power
        reading stuck at +400 W -> the RedPitaya's RF drive at 0. Baseline, from the very
        same crossings: a Bluesky RunEngine running a plan, with a SuspendCeil on an ophyd
        Signal polled from the same simulated RedPitaya over its own protocol at the node's
        interlock_period (the sensor path and rate labrig's check has) -> the plan paused
        (the suspender's pre-plan runs). Goal: ratio <= 1.
    figure: node_trip_vs_pushed_bluesky_p99 MS ms baseline MS ratio R
        the same, against a second RunEngine whose Signal is pushed straight from the world's
        state stream (an ideal monitor with no device in between): a bound, not a rival.
    figure: supervisor_trip_p99 MS ms baseline MS ratio R
        coil_needs_cooling, a cross-node interlock held by the guard: cooling flow (ard1)
        below 2 L/min -> coil current command 0 (plc1, through the PLC's scan). Baseline:
        the node layer's p99 above, for scale.
    figure: plc_trip_p99 MS ms baseline MS ratio R
        the PLC's own scan: door opened -> RF permit dropped. Baseline: the PLC's scan period.
    figure: lease_detect_p99 MS ms baseline MS ratio R
        a supervisor's lease left to run out on gauge1: from the last renewal the node answered
        to the trip it latched (the node's own clock). Baseline: the configured lease, so the
        ratio is the detection time over the timeout (1 is perfect, > 1 is late).
    figure: pid_jitter_p99 US us baseline US ratio R
        (benchmarks/pid_jitter.py) a 1 kHz PID loop in a runtime while a busy cell runs in
        that node's kernel; baseline: a bare thread loop in an idle process. Goal: ratio <= 2.

Notes go to stderr.
"""
from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RIG = ROOT / "examples" / "ishtar" / "rig.toml"
RF_W = 20.0  # W: RF power before each node-layer trip (a direct write may step this far)
COIL_A = 15.0  # A: coil current before each supervisor-layer trip
LEASE_S = 0.05  # s: the lease the benchmark takes and lets run out
SCAN_S = 0.01  # s: the simulated PLC's scan period (its default)


FIGURES = sys.stdout  # figures only: Bluesky prints its suspensions, and those go to stderr


def figure(name, value, unit, baseline, ratio) -> None:
    print(f"figure: {name} {value:.4g} {unit} baseline {baseline:.4g} ratio {ratio:.3g}", file=FIGURES, flush=True)


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]


class Rig:
    """The benchmark's cluster: world control, runtime clients, the guard."""

    def __init__(self, directory: Path):
        from labrig.supervisor.guard import guard_record
        from labrig.supervisor.runtime import RuntimeClient
        from labrig.supervisor.runtime.locate import runtime_record
        from labrig.supervisor.state import read_state
        self.dir = directory
        self.control = read_state("sim", directory)["world"]["endpoints"]["control"]
        self.state_endpoint = read_state("sim", directory)["world"]["endpoints"]["state"]
        self.nodes = {n: RuntimeClient(runtime_record(n, directory)["endpoint"], node=n, client="bench", timeout=3)
                      for n in ("rp1", "plc1", "ard1", "gauge1")}
        self.guard = RuntimeClient(guard_record(directory)["endpoint"], node="guard", client="bench", timeout=3)

    def world(self, request: dict) -> dict:
        from labrig.simulators.world import world_control
        return world_control(self.control, request)

    def set(self, name: str, value: float) -> float:
        return self.world({"op": "set", "name": name, "value": value})["at"]

    def fault(self, name: str, mode: str, value: float = 0.0) -> float:
        return self.world({"op": "fault", "kind": "sensor", "name": name, "mode": mode, "value": value})["at"]

    def safe_at(self, actuator: str, safe: float, since: float, timeout: float = 5.0) -> float:
        """When the world saw `actuator` reach `safe` after `since` (its own clock)."""
        deadline = time.monotonic() + timeout
        while True:
            snap = self.world({"op": "snapshot"})
            changed = snap["changed"].get(actuator)
            if changed and changed["value"] == safe and changed["at"] >= since:
                return changed["at"]
            if time.monotonic() > deadline:
                raise RuntimeError(f"{actuator} did not reach {safe} within {timeout} s of the crossing")
            time.sleep(0.001)

    def until(self, predicate, what: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: not within {timeout} s")
            time.sleep(0.005)

    def rearm(self, client, name: str, timeout: float = 5.0) -> None:
        from labrig.drivers.errors import Refused
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.rearm(name)
                return
            except Refused:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def rearm_all(self) -> None:
        """Re-arm every latched trip (the guard's first: it re-arms its own on the nodes)."""
        for name in [t["interlock"] for t in self.guard.trips()]:
            self.rearm(self.guard, name)
        for client in self.nodes.values():
            for name in [t["interlock"] for t in client.trips()]:
                self.rearm(client, name)

    def close(self) -> None:
        for client in [*self.nodes.values(), self.guard]:
            client.close()


# ---------------------------------------------------------------- Bluesky, the baseline

class BlueskyWatch:
    """A RunEngine running a plan with a SuspendCeil on an ophyd Signal for rf_reflected.

    feed "device": the signal is polled from the simulated RedPitaya over its own protocol
    (labrig's driver, a connection of its own) every `period`, the path and rate of the node
    layer's own check: what a Bluesky deployment on this hardware would have. feed "stream":
    the signal is pushed from the world's state stream, as an ideal monitor would (no device
    in between at all): a bound no polled device can reach.
    """

    def __init__(self, feed: str, ceiling: float, *, state_endpoint: str = "", open_driver=None,
                 period: float = 0.005):
        import zmq
        from bluesky import RunEngine
        from bluesky import plan_stubs as bps
        from bluesky.suspenders import SuspendCeil
        from bluesky.utils import Msg
        from ophyd import Signal

        self.paused: list[float] = []  # monotonic time the plan was paused, per suspension
        self.signal = Signal(name="rf_reflected", value=0.0)
        self._stop = threading.Event()
        self.RE = RunEngine({}, context_managers=[])  # not the main thread: no SIGINT handler

        async def mark(msg):
            self.paused.append(time.monotonic())
        self.RE.register_command("labrig_mark", mark)

        def pre_plan():
            yield Msg("labrig_mark")
        self.RE.install_suspender(SuspendCeil(self.signal, ceiling, resume_thresh=ceiling, pre_plan=pre_plan))

        def plan():
            while not self._stop.is_set():
                yield from bps.checkpoint()
                yield from bps.sleep(0.005)

        self._ctx = zmq.Context()
        self._sub = self._driver = None
        self.period = period
        if feed == "stream":
            self._sub = self._ctx.socket(zmq.SUB)
            self._sub.setsockopt(zmq.LINGER, 0)
            self._sub.setsockopt(zmq.SUBSCRIBE, b"")
            self._sub.connect(state_endpoint)
            target = self._feed
        else:
            self._driver = open_driver()
            target = self._poll
        self._feeder = threading.Thread(target=target, name=f"bluesky-{feed}", daemon=True)
        self._runner = threading.Thread(target=lambda: self.RE(plan()), name="bluesky-RE", daemon=True)
        self._feeder.start()
        self._runner.start()

    def _feed(self) -> None:
        while not self._stop.is_set():
            if self._sub.poll(50):
                state = json.loads(self._sub.recv())["state"]
                value = state.get("rf_reflected")
                if value is not None and value == value and value != self.signal.get():
                    self.signal.put(value)

    def _poll(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            next_at += self.period
            self._stop.wait(max(0.0, next_at - time.monotonic()))
            try:
                value = self._driver.read("rf_reflected")
            except Exception:  # noqa: BLE001 - a failed poll is a missed sample, as in an IOC
                continue
            if value != self.signal.get():
                self.signal.put(value)

    def paused_after(self, since: float, timeout: float = 5.0) -> float:
        deadline = time.monotonic() + timeout
        while True:
            later = [t for t in self.paused if t >= since]
            if later:
                return later[0]
            if time.monotonic() > deadline:
                raise RuntimeError("the Bluesky suspender did not pause the plan")
            time.sleep(0.001)

    def close(self) -> None:
        self._stop.set()
        self._feeder.join(2)
        self._runner.join(5)
        if self._sub is not None:
            self._sub.close(0)
        if self._driver is not None:
            self._driver.close()
        self._ctx.term()


# ---------------------------------------------------------------- the layers

def node_layer(rig: Rig, trips: int) -> tuple[list[float], list[float], list[float]]:
    """rf_reflected_limit on rp1, and two Bluesky suspenders on the same crossings (ms, ms, ms)."""
    from labrig.supervisor.rig import Rig as RigFile
    from labrig.supervisor.state import read_state
    rp, plc = rig.nodes["rp1"], rig.nodes["plc1"]
    ceiling = 300.0
    rig_file = RigFile.load(RIG)
    bluesky = BlueskyWatch("device", ceiling, period=rig_file.node("rp1").interlock_period,
                           open_driver=lambda: rig_file.open_driver("rp1", sim=True,
                                                                    sim_state=read_state("sim", rig.dir)))
    pushed = BlueskyWatch("stream", ceiling, state_endpoint=rig.state_endpoint)
    ours, theirs, ideal = [], [], []
    try:
        plc.write("rf_enable", 1)
        for i in range(trips):
            rp.write("rf_power", RF_W)
            rig.until(lambda: rig.world({"op": "snapshot"})["state"]["rf_drive"] > 0, "RF drive on")
            crossed = rig.fault("rf_reflected", "offset", 400.0)
            ours.append((rig.safe_at("rf_drive", 0.0, crossed) - crossed) * 1000)
            theirs.append((bluesky.paused_after(crossed) - crossed) * 1000)
            ideal.append((pushed.paused_after(crossed) - crossed) * 1000)
            rig.fault("rf_reflected", "clear")
            rig.until(lambda: rp.read("rf_reflected") < ceiling and bluesky.signal.get() < ceiling
                      and pushed.signal.get() < ceiling, "reflected back")
            rig.rearm(rp, "rf_reflected_limit")
            if i and i % 200 == 0:
                note(f"node layer: {i} trips")
    finally:
        bluesky.close()
        pushed.close()
    return ours, theirs, ideal


def supervisor_layer(rig: Rig, trips: int) -> list[float]:
    """coil_needs_cooling, held by the guard: cooling flow on ard1 -> coil current command on plc1 (ms)."""
    plc = rig.nodes["plc1"]
    out = []
    for i in range(trips):
        plc.write("coil_enable", 1)
        plc.write("coil_current_set", COIL_A)
        rig.until(lambda: rig.world({"op": "snapshot"})["inputs"]["coil_current_cmd"] == COIL_A, "coil on")
        crossed = rig.set("cooling_flow", 1.0)
        out.append((rig.safe_at("coil_current_cmd", 0.0, crossed) - crossed) * 1000)
        rig.set("cooling_flow", 6.0)
        time.sleep(0.05)  # cooling_ok (ard1) trips the RF interlock too, a little later
        rig.rearm_all()
        if i and i % 200 == 0:
            note(f"supervisor layer: {i} trips")
    return out


def plc_layer(rig: Rig, trips: int) -> list[float]:
    """The PLC's scan: door opened -> RF permit dropped (ms). The node and guard layers trip too; re-armed."""
    plc, rp = rig.nodes["plc1"], rig.nodes["rp1"]
    out = []
    for i in range(trips):
        plc.write("rf_enable", 0)  # the PLC's restart interlock: it must see the request low in a scan
        time.sleep(3 * SCAN_S)
        plc.write("rf_enable", 1)
        rig.until(lambda: rig.world({"op": "snapshot"})["inputs"]["rf_permit"] == 1.0, "RF permit")
        crossed = rig.set("door_closed", 0.0)
        out.append((rig.safe_at("rf_permit", 0.0, crossed) - crossed) * 1000)
        rig.set("door_closed", 1.0)
        time.sleep(0.05)  # the slower layers (node, guard) may still be tripping on that door
        rig.rearm_all()
        if i and i % 200 == 0:
            note(f"PLC layer: {i} trips")
    return out


def lease_detection(rig: Rig, count: int) -> list[float]:
    """A lease on gauge1 left to run out: last renewal -> the node's lease_lost trip (ms)."""
    gauge = rig.nodes["gauge1"]
    out = []
    for _ in range(count):
        gauge.call("lease", holder="bench", ttl=LEASE_S)
        renewed = time.time()  # the node's deadline starts when it answered; this is a little later
        deadline = time.monotonic() + 5
        while True:
            trips = {t["interlock"]: t for t in gauge.trips()}
            if "lease_lost" in trips:
                out.append((trips["lease_lost"]["time"] - renewed) * 1000)
                break
            if time.monotonic() > deadline:
                raise RuntimeError("gauge1 did not trip on its lost lease")
            time.sleep(0.005)
        gauge.rearm("lease_lost")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trips", type=int, default=1000, help="trips per layer")
    parser.add_argument("--leases", type=int, default=200, help="leases left to run out")
    parser.add_argument("--pid-seconds", type=float, default=10.0, help="PID jitter window, s (0: skip)")
    args = parser.parse_args(argv)
    # SIGTERM ends the run through its `finally` blocks, which stop the cluster it started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.stdout = sys.stderr
    from labrig.supervisor.cluster import start_cluster, stop_cluster
    with tempfile.TemporaryDirectory(prefix="labrig-bench-") as tmp:
        directory = Path(tmp) / "state"
        rig = None
        try:
            start_cluster(RIG, sim=True, directory=directory, kernels=False, timeout=120)
            rig = Rig(directory)
            scan = SCAN_S
            node, bluesky, pushed = node_layer(rig, args.trips)
            figure("node_trip_p99", p99(node), "ms", p99(bluesky), p99(node) / p99(bluesky))
            figure("node_trip_vs_pushed_bluesky_p99", p99(node), "ms", p99(pushed), p99(node) / p99(pushed))
            note(f"node layer p50 {statistics.median(node):.2f} ms, Bluesky (device-polled) p50 "
                 f"{statistics.median(bluesky):.2f} ms, Bluesky (stream-fed) p50 {statistics.median(pushed):.2f} ms")
            sup = supervisor_layer(rig, args.trips)
            figure("supervisor_trip_p99", p99(sup), "ms", p99(node), p99(sup) / p99(node))
            note(f"supervisor layer p50 {statistics.median(sup):.2f} ms")
            plc = plc_layer(rig, args.trips)
            figure("plc_trip_p99", p99(plc), "ms", scan * 1000, p99(plc) / (scan * 1000))
            note(f"PLC layer p50 {statistics.median(plc):.2f} ms")
            leases = lease_detection(rig, args.leases)
            figure("lease_detect_p99", p99(leases), "ms", LEASE_S * 1000, p99(leases) / (LEASE_S * 1000))
            note(f"lease detection p50 {statistics.median(leases):.2f} ms")
        finally:
            if rig is not None:
                rig.close()
            stop_cluster(directory)
    if args.pid_seconds > 0:
        # its own cluster and kernel: a busy cell must not share this run's cores with the trips above
        result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pid_jitter.py"),
                                 "--seconds", str(args.pid_seconds)], capture_output=True, text=True, timeout=600)
        sys.stderr.write(result.stderr)
        if result.returncode != 0:
            note(f"pid_jitter.py failed with code {result.returncode}")
            return result.returncode
        FIGURES.write(result.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

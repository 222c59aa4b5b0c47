"""Timing of a 1 kHz PID loop in a node runtime while a busy cell runs in that node's kernel.

    python benchmarks/pid_jitter.py [--seconds 10] [--rate 1000] [--node pi1|ard1]

Starts a one-node rig with one loop at --rate Hz, enabled at start, as `labrig up --sim`
does: simulator processes, the node runtime, the node kernel (started KERNEL_NICE steps
below the runtime, as the cluster does) and the supervisor kernel. A cell that spins the
CPU in pure Python runs in that node's kernel for the whole window.

The node: a 1 kHz loop needs a read + write round trip well under 1 ms. Measured here
(the first note): the Pi's pigpio link ~0.2 ms at the median, the Arduino's pty ~0.35 ms,
the PLC ~0.7 ms, the RedPitaya's SCPI ~1 ms, the VISA gauge ~44 ms. So pi1 by default:
a timing loop, door switch -> gas valve PWM (door closed: the measurement is the setpoint,
the valve stays shut, written every tick). `--node ard1` runs a physical one instead, a
constant-current Langmuir probe (langmuir_I -> probe_bias), whose slower link overruns
1 ms more often under load.

Lateness is how long after its deadline each period's tick starts (absolute deadlines, no
drift; a period skipped after an overrun counts as served by the next tick, a period or more
late), read from the runtime's own statistics (the `loops` op) over the window. The baseline,
measured in the same window on the same machine, is a bare thread loop at the same rate
in an idle separate process, scheduled by the same code (loops.sleep_until,
loops.next_deadline) with an empty body. One line:

    figure: pid_jitter_p99 US us baseline US ratio R      (goal: ratio <= 2)

Notes (p50, max, overruns, skipped periods, tick busy time, the bus round trip) go to stderr.
"""
from __future__ import annotations

import argparse
import json
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOOP = "bench"
BUSY_CELL = "import time\n_end = time.perf_counter() + {seconds}\nwhile time.perf_counter() < _end:\n    pass\n"
SETTLE = 1.0  # s between the busy cell starting and the window

# node -> (measure, actuate, the value the round trip writes, rig text of the node, its signals, the loop's extras)
NODES = {
    "pi1": ("door_switch", "gas_flow", 0.0, """
[nodes.pi1]
kind = "rpi"
connection = "sim:"

[signals.door_switch]
node = "pi1"
channel = "GPIO17"
limits = [0, 1]

[signals.gas_flow]
node = "pi1"
channel = "PWM18"
direction = "out"
unit = "sccm"
calibration = { kind = "linear", gain = 50.0 }
limits = [0.0, 40.0]
max_slew = 100.0
safe = 0.0
""", "setpoint = 1"),
    "ard1": ("langmuir_I", "probe_bias", 0.0, """
[nodes.ard1]
kind = "arduino"
connection = "sim:"
timeout = 0.5
options = { watchdog_ms = 500 }

[signals.langmuir_I]
node = "ard1"
channel = "A0"
unit = "mA"
calibration = { kind = "linear", gain = 0.04887585532746823, offset = -25.0 }
limits = [-25.0, 25.0]

[signals.probe_bias]
node = "ard1"
channel = "PWM9"
direction = "out"
unit = "V"
calibration = { kind = "linear", gain = 0.5882352941176471, offset = -100.0 }
limits = [-100.0, 50.0]
max_slew = 500.0
safe = 0.0
""", "setpoint = 0"),
}


def rig_text(node: str, rate: float) -> str:
    measure, actuate, _, signals, extra = NODES[node]
    return f"""schema_version = 1
name = "pidbench"
{signals}
[loops.{LOOP}]
node = "{node}"
measure = "{measure}"
actuate = "{actuate}"
kp = 0.5
ki = 5.0
rate = {rate}
{extra}
enabled = true
"""


def note(text: str) -> None:
    print(f"# {text}", file=sys.stderr, flush=True)


def bare_loop(rate: float, seconds: float) -> dict:
    """The baseline: the engine's scheduling with an empty body, on a thread of an idle process."""
    from labrig.supervisor.runtime.loops import Timing, next_deadline, sleep_until, tighten_timer_slack
    period = 1.0 / rate
    timing = Timing(period, keep=max(16, int(seconds * rate) + 16))

    def run():
        tighten_timer_slack()
        deadline = time.monotonic()
        last, end, skipped_before = None, deadline + seconds, 0
        while deadline < end:
            sleep_until(deadline)
            start = time.monotonic()
            done = time.monotonic()
            nxt, overran, skipped = next_deadline(deadline, period, done)
            timing.record(start - deadline, start - last if last else None, done - start, overran, skipped_before)
            deadline, last, skipped_before = nxt, start, skipped

    thread = threading.Thread(target=run, name="bare-loop")
    thread.start()
    thread.join()
    return timing.stats()


def round_trip(rig, node: str, record, n: int) -> tuple[float, float]:
    """p50 and p99 (us) of one read + one write over the simulated link, before the runtime owns it."""
    measure, actuate, value = NODES[node][:3]
    times = []
    with rig.open_driver(node, sim=True, sim_state=record) as drv:
        for i in range(n + 20):
            t = time.perf_counter()
            drv.read(measure)
            drv.write(actuate, value)
            if i >= 20:
                times.append((time.perf_counter() - t) * 1e6)
    times.sort()
    return times[len(times) // 2], times[min(len(times) - 1, int(0.99 * len(times)))]


def start_busy_cell(connection_file: str, seconds: float):
    from jupyter_client import BlockingKernelClient
    kc = BlockingKernelClient(connection_file=connection_file)
    kc.load_connection_file()
    kc.start_channels(stdin=False, hb=False, control=False)
    kc.wait_for_ready(timeout=30)
    msg_id = kc.execute(BUSY_CELL.format(seconds=seconds))
    deadline = time.monotonic() + 10
    while True:  # the kernel says it is busy with our cell
        msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        if (msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "status"
                and msg["content"]["execution_state"] == "busy"):
            return kc


def measure(args, state: Path) -> None:
    from labrig.supervisor.cluster import start_cluster
    from labrig.supervisor.rig import Rig
    from labrig.supervisor.runtime import RuntimeClient
    from labrig.supervisor.testbed import start_testbed

    rig_path = state / "rig.toml"
    rig_path.write_text(rig_text(args.node, args.rate))
    rig = Rig.load(rig_path)
    bed = start_testbed(rig, directory=state)
    p50, p99 = round_trip(rig, args.node, bed, args.n)
    note(f"{args.node} read + write round trip: p50 {p50:.0f} us, p99 {p99:.0f} us (period {1e6 / args.rate:.0f} us)")
    record = start_cluster(rig_path, sim=True, directory=state, broker="none", kernels=True, timeout=90)
    client = RuntimeClient(record["nodes"][args.node]["endpoint"], node=args.node, client="pid-bench", timeout=5)
    kc = None
    try:
        loop = client.call("loops")[LOOP]
        if loop["mode"] != "auto":
            raise RuntimeError(f"loop {LOOP} is not running: {loop}")
        # the baseline process imports first, then waits for the window to start
        baseline = subprocess.Popen([sys.executable, __file__, "--bare", str(args.seconds), "--rate", str(args.rate)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            if baseline.stdout.readline().strip() != "ready":
                raise RuntimeError("the baseline process did not start")
            busy = 0.0 if args.idle_kernel else SETTLE + args.seconds + 30.0
            kc = start_busy_cell(record["nodes"][args.node]["connection_file"], busy)
            time.sleep(SETTLE)
            baseline.stdin.write("go\n")
            baseline.stdin.flush()
            client.call("loops", reset=True)  # the window starts now, for both
            time.sleep(args.seconds)
            ours = client.call("loops")[LOOP]
            if not args.idle_kernel and not _still_busy(kc):
                raise RuntimeError("the busy cell ended before the window did")
            base = json.loads(baseline.communicate(timeout=30)[0])
        finally:
            if baseline.poll() is None:
                baseline.kill()
                baseline.wait()
        if ours["mode"] != "auto":
            raise RuntimeError(f"loop {LOOP} left auto during the window: {ours['error']}")
    finally:
        if kc is not None:
            kc.stop_channels()
        client.close()
    t, b = ours["timing"], base
    value, floor = t["lateness_us"]["p99"], b["lateness_us"]["p99"]
    print(f"figure: pid_jitter_p99 {value:.4g} us baseline {floor:.4g} ratio {value / floor:.3g}", flush=True)
    for name, s in (("loop", t), ("bare", b)):
        late = s["lateness_us"]
        note(f"{name}: {s['ticks']} ticks of {s['periods']} periods, lateness p50 {late['p50']:.0f} "
             f"p99 {late['p99']:.0f} max {late['max']:.0f} us; period p50 {s['period_us']['p50']:.0f} p99 "
             f"{s['period_us']['p99']:.0f} us; busy p99 {s['busy_us']['p99']:.0f} us; overruns {s['overruns']}, "
             f"skipped periods {s['skipped']}")


def _still_busy(kc) -> bool:
    """True while the busy cell runs: its execute reply has not come."""
    try:
        kc.get_shell_msg(timeout=0.01)
    except queue.Empty:
        return True
    return False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window, s (at most 16 s at 1 kHz)")
    parser.add_argument("--rate", type=float, default=1000.0, help="loop rate, Hz")
    parser.add_argument("--n", type=int, default=300, help="round trips timed before the run")
    parser.add_argument("--idle-kernel", action="store_true", help="no busy cell (for comparison)")
    parser.add_argument("--node", choices=sorted(NODES), default="pi1", help="the node whose loop is timed")
    parser.add_argument("--bare", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.bare is not None:
        import labrig.supervisor.runtime.loops  # noqa: F401 - imported before the window, not in it
        print("ready", flush=True)
        sys.stdin.readline()
        print(json.dumps(bare_loop(args.rate, args.bare)), flush=True)
        return 0
    # SIGTERM (a timeout, Ctrl-C from a supervisor) ends the run through its `finally` blocks,
    # which stop the cluster and simulators it started in their own sessions
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from labrig.supervisor.cluster import stop_cluster
    from labrig.supervisor.testbed import stop_testbed
    with tempfile.TemporaryDirectory(prefix="labrig-bench-") as tmp:
        state = Path(tmp)
        try:
            measure(args, state)
        finally:
            stop_cluster(state)
            stop_testbed(state)
    return 0


if __name__ == "__main__":
    sys.exit(main())

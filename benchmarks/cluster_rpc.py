"""The simulated cluster, measured: command round trips, telemetry, start time, memory.

    python benchmarks/cluster_rpc.py [--n 500] [--seconds 10] [--nodes 1,4,8]

Every baseline is measured in the same run, on the same loaded machine. One line per figure:

    figure: command_roundtrip MS ms baseline MS ratio R
        the supervisor reads one named signal (cooling_flow on ard1) through the production
        path: `Machine["cooling_flow"].read()` in this process, as the supervisor kernel does,
        over ZeroMQ to the ard1 runtime, driver I/O to the simulator included (median).
        Baseline: a raw jupyter_client execute of "1" on a plain ipykernel (execute, then the
        reply and the idle status), median. Goal: ratio <= 0.25.
    figure: comm_roundtrip MS ms baseline MS ratio R
        the same read as a comm message {"op": "read", "signal": ...} to the ard1 node kernel's
        "labrig.node" comm, from a jupyter_client client, until the answer arrives on iopub.
    figure: telemetry_n<N>_samples_per_s S samples/s baseline EXPECTED ratio R
        samples per second (all N nodes together) an MQTT subscriber receives from N simulated
        Arduino nodes, 3 inputs each at 100 Hz; the baseline is the configured rate sum.
    figure: telemetry_n<N>_gaps G gaps baseline 0 ratio G
        samples missing from the per-signal sequence numbers in the window. The baseline is 0,
        so the ratio printed is the value itself.
    figure: cluster_start S s baseline S ratio R
        `labrig up RIG --sim` of examples/ishtar/rig.toml (broker, 5 simulators, 5 runtimes,
        6 kernels) until it returns; baseline: one plain ipykernel started until it answers.
    figure: memory_runtime_mb / memory_node_kernel_mb MB MB baseline MB ratio R
        mean RSS of the 5 node runtimes / the 5 node kernels; baseline: the RSS of a bare
        `python -c "import time; time.sleep(30)"`.

The three round trips are interleaved (raw execute, supervisor read, comm read, again), so
a load change on the shared machine hits all three alike. Notes go to stderr.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RIG = ROOT / "examples" / "ishtar" / "rig.toml"
NODE, SIGNAL = "ard1", "cooling_flow"
COMM_TARGET = "labrig.node"
TELEMETRY_RATE = 100.0  # Hz per input
TELEMETRY_INPUTS = {"A0": "current", "A1": "flow", "D2": "ok"}  # channel -> signal name suffix


def figure(name, value, unit, baseline, ratio) -> None:
    print(f"figure: {name} {value:.4g} {unit} baseline {baseline:.4g} ratio {ratio:.3g}", flush=True)


def note(text: str) -> None:
    print(f"# {text}", file=sys.stderr, flush=True)


def _wait_iopub(kc, parent_id: str, msg_type: str, timeout: float = 10.0, state: str | None = None) -> dict:
    """The first iopub message of `msg_type` (and `state`, for status) answering `parent_id`."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no {msg_type} for {parent_id} within {timeout} s")
        msg = kc.get_iopub_msg(timeout=left)
        if msg["parent_header"].get("msg_id") != parent_id or msg["msg_type"] != msg_type:
            continue
        if state is None or msg["content"].get("execution_state") == state:
            return msg


# -- round trips ---------------------------------------------------------------
def raw_execute(kc) -> None:
    """A raw execute of "1": the shell reply and the idle status, as a frontend waits for both."""
    msg_id = kc.execute("1")
    while kc.get_shell_msg(timeout=10)["parent_header"].get("msg_id") != msg_id:
        pass
    _wait_iopub(kc, msg_id, "status", state="idle")


class CommReader:
    """A comm on the node kernel's "labrig.node" target, read over jupyter_client."""

    def __init__(self, connection_file: str):
        from jupyter_client import BlockingKernelClient
        self.kc = BlockingKernelClient(connection_file=connection_file)
        self.kc.load_connection_file()
        self.kc.start_channels(stdin=False, hb=False, control=False)
        self.kc.wait_for_ready(timeout=30)
        self.comm_id = uuid.uuid4().hex
        opened = self._send("comm_open", {"comm_id": self.comm_id, "target_name": COMM_TARGET, "data": {}})
        _wait_iopub(self.kc, opened, "status", state="idle")

    def _send(self, msg_type: str, content: dict) -> str:
        msg = self.kc.session.msg(msg_type, content)
        self.kc.shell_channel.send(msg)
        return msg["header"]["msg_id"]

    def request(self, data: dict) -> dict:
        msg_id = self._send("comm_msg", {"comm_id": self.comm_id, "data": data})
        return _wait_iopub(self.kc, msg_id, "comm_msg")["content"]["data"]

    def read(self, signal: str):
        data = self.request({"op": "read", "signal": signal})
        if "value" not in data:
            raise RuntimeError(f"comm read of {signal!r} failed: {data}")
        return data["value"]

    def close(self):
        try:
            self._send("comm_close", {"comm_id": self.comm_id, "data": {}})
        finally:
            self.kc.stop_channels()


def start_plain_kernel():
    """A plain ipykernel (the python3 kernelspec); returns (manager, client, seconds until it answered)."""
    from jupyter_client import KernelManager
    t = time.perf_counter()
    km = KernelManager(kernel_name="python3")
    km.start_kernel()
    kc = km.client()
    kc.start_channels(stdin=False, hb=False, control=False)
    try:
        kc.wait_for_ready(timeout=60)
    except BaseException:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        raise
    return km, kc, time.perf_counter() - t


def bare_python_rss_mb() -> float:
    import psutil
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(1.0)  # past interpreter start-up: it sleeps from here on
        return psutil.Process(proc.pid).memory_info().rss / 2**20
    finally:
        proc.kill()
        proc.wait()


def dump_logs(folder: Path, *names: str) -> None:
    """The tails of the named logs, on stderr: why a part failed."""
    from labrig.supervisor.processes import log_tail
    for name in names:
        note(f"--- {name}.log\n{log_tail(folder / f'{name}.log')}")


def labrig_cli(state: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labrig.supervisor.cli", *args], cwd=ROOT, timeout=timeout,
                          env={**os.environ, "LABRIG_STATE_DIR": str(state)}, capture_output=True, text=True)


def cluster_figures(n: int, tmp: Path) -> None:
    import psutil
    from labrig.kernels.rig_object import Machine
    from labrig.supervisor.rig import Rig

    km, kc, plain_start = start_plain_kernel()
    state = tmp / "cluster"
    try:
        t = time.perf_counter()
        up = labrig_cli(state, "up", str(RIG), "--sim")
        start = time.perf_counter() - t
        if up.returncode != 0:
            raise RuntimeError(f"labrig up failed:\n{up.stdout}\n{up.stderr}")
        record = json.loads((state / "cluster.json").read_text())
        with contextlib.ExitStack() as opened:
            machine = Machine(Rig.load(RIG), state)
            opened.callback(machine.close)
            comm = CommReader(record["nodes"][NODE]["connection_file"])
            opened.callback(comm.close)
            signal = machine[SIGNAL]
            ours_value, comm_value = signal.read(), comm.read(SIGNAL)
            if abs(ours_value - comm_value) > 0.5:  # the same flow meter, read twice: same value
                raise RuntimeError(f"{SIGNAL}: supervisor read {ours_value}, comm read {comm_value}")
            wrong = comm.request({"op": "read", "signal": SIGNAL[:-1]})
            if SIGNAL not in wrong.get("error", ""):  # a bad name is answered with the close matches
                raise RuntimeError(f"comm read of {SIGNAL[:-1]!r}: expected an error naming {SIGNAL!r}, got {wrong}")
            raw, ours, via_comm = [], [], []
            for i in range(min(20, n) + n):  # the first ones warm up
                for fn, out in ((lambda: raw_execute(kc), raw), (signal.read, ours),
                                (lambda: comm.read(SIGNAL), via_comm)):
                    t = time.perf_counter()
                    fn()
                    if i >= min(20, n):
                        out.append((time.perf_counter() - t) * 1e3)
        base = statistics.median(raw)
        for name, values in (("command_roundtrip", ours), ("comm_roundtrip", via_comm)):
            figure(name, statistics.median(values), "ms", base, statistics.median(values) / base)
        note(f"p99 ms: raw execute {sorted(raw)[int(0.99 * (len(raw) - 1))]:.3f}, "
             f"supervisor read {sorted(ours)[int(0.99 * (len(ours) - 1))]:.3f}, "
             f"comm read {sorted(via_comm)[int(0.99 * (len(via_comm) - 1))]:.3f}")
        figure("cluster_start", start, "s", plain_start, start / plain_start)

        mb = lambda pid: psutil.Process(pid).memory_info().rss / 2**20  # noqa: E731
        nodes = record["nodes"].values()
        runtime_mb = statistics.mean(mb(info["pid"]) for info in nodes)
        kernel_mb = statistics.mean(mb(info["kernel_pid"]) for info in nodes)
        bare = bare_python_rss_mb()
        figure("memory_runtime_mb", runtime_mb, "MB", bare, runtime_mb / bare)
        figure("memory_node_kernel_mb", kernel_mb, "MB", bare, kernel_mb / bare)
        note(f"plain ipykernel RSS {mb(km.provisioner.process.pid):.1f} MB")
    except BaseException:
        dump_logs(state / "logs", f"sim-{NODE}", f"node-{NODE}", f"kernel-{NODE}")
        raise
    finally:
        down = labrig_cli(state, "down")
        if down.returncode != 0:
            note(f"labrig down: {down.stdout} {down.stderr}")
        kc.stop_channels()
        km.shutdown_kernel(now=True)


# -- telemetry -----------------------------------------------------------------
def telemetry_rig(path: Path, nodes: int) -> Path:
    """A rig of `nodes` Arduino nodes, each with 3 inputs sampled at TELEMETRY_RATE."""
    lines = ["schema_version = 1", f'name = "bench{nodes}"', ""]
    for i in range(1, nodes + 1):
        lines += [f"[nodes.ard{i}]", 'kind = "arduino"', 'connection = "sim:"', "timeout = 0.5", ""]
        for channel, suffix in TELEMETRY_INPUTS.items():
            lines += [f"[signals.ard{i}_{suffix}]", f'node = "ard{i}"', f'channel = "{channel}"',
                      f"rate = {TELEMETRY_RATE}", ""]
    path.write_text("\n".join(lines))
    return path


class TelemetryCounter:
    """Keeps (seq, t, value) of every sample received, per (node, signal), from telemetry messages."""

    def __init__(self):
        self.lock = threading.Lock()
        self.streams: dict[tuple[str, str], list[tuple[int, float, float | None]]] = {}

    def __call__(self, topic: str, payload: bytes) -> None:
        batch = json.loads(payload)
        with self.lock:
            for name, entry in batch["signals"].items():
                self.streams.setdefault((batch["node"], name), []).extend(zip(entry["seq"], entry["t"], entry["v"]))

    def window(self, t0: float, t1: float) -> tuple[dict[str, int], int, int]:
        """Samples with a value per node, missing sequence numbers, failed reads: of samples taken in [t0, t1)."""
        per_node: dict[str, int] = {}
        gaps = failed = 0
        with self.lock:
            for (node, _), samples in self.streams.items():
                inside = [(seq, v) for seq, t, v in samples if t0 <= t < t1]
                per_node.setdefault(node, 0)
                if not inside:
                    continue
                seqs = {seq for seq, _ in inside}
                gaps += max(seqs) - min(seqs) + 1 - len(seqs)
                failed += sum(v is None for _, v in inside)  # a failed read travels as a sample without value
                per_node[node] = per_node.get(node, 0) + sum(v is not None for _, v in inside)
        return per_node, gaps, failed


def telemetry_figures(nodes: int, seconds: float, tmp: Path) -> None:
    from labrig.supervisor.cluster import start_cluster, stop_cluster
    from labrig.supervisor.mqtt import MqttSubscriber

    state = tmp / f"telemetry-n{nodes}"
    state.mkdir()
    rig = telemetry_rig(state / "rig.toml", nodes)
    streams = nodes * len(TELEMETRY_INPUTS)
    try:
        record = start_cluster(rig, sim=True, directory=state, kernels=False, timeout=60)
        counter = TelemetryCounter()
        sub = MqttSubscriber(record["broker"]["url"], [f"labrig/bench{nodes}/+/telemetry"], counter,
                             client_id=f"labrig-bench-{os.getpid()}-{nodes}")
        try:
            deadline = time.monotonic() + 15
            while len(counter.streams) < streams:  # every signal of every node heard from
                if time.monotonic() > deadline:
                    raise RuntimeError(f"telemetry of {streams - len(counter.streams)} of {streams} signals "
                                       "never arrived")
                time.sleep(0.05)
            # The window is in the runtimes' sample times (same host clock), so batching does not
            # blur its edges; the wait after it lets the last batches arrive.
            t0 = time.time() + 0.5
            time.sleep(0.5 + seconds + 1.0)
            per_node, gaps, failed = counter.window(t0, t0 + seconds)
        finally:
            sub.close()
    except BaseException:
        dump_logs(state / "logs", *[f"{kind}-ard{i}" for i in range(1, nodes + 1) for kind in ("sim", "node")])
        raise
    finally:
        stop_cluster(state)
    expected = streams * TELEMETRY_RATE
    rate = sum(per_node.values()) / seconds
    figure(f"telemetry_n{nodes}_samples_per_s", rate, "samples/s", expected, rate / expected)
    figure(f"telemetry_n{nodes}_gaps", gaps, "gaps", 0, gaps)  # zero baseline: the ratio is the value
    per = sorted(v / seconds for v in per_node.values()) or [0.0]
    note(f"n={nodes}: per node {per[0]:.0f}..{per[-1]:.0f} samples/s of {len(TELEMETRY_INPUTS) * TELEMETRY_RATE:g}; "
         f"failed reads {failed}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500, help="reads per round-trip figure")
    parser.add_argument("--seconds", type=float, default=10.0, help="telemetry window per node count, s")
    parser.add_argument("--nodes", default="1,4,8", help="node counts of the telemetry figures")
    args = parser.parse_args(argv)
    # SIGTERM (a timeout, Ctrl-C from a supervisor) ends the run through its `finally` blocks,
    # which stop the testbeds and clusters it started in their own sessions
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    counts = [int(x) for x in args.nodes.split(",") if x.strip()]
    with tempfile.TemporaryDirectory(prefix="labrig-bench-") as tmp:
        cluster_figures(args.n, Path(tmp))
        for nodes in counts:
            telemetry_figures(nodes, args.seconds, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Faults in the running simulated cluster (issue 3): a killed runtime, an abused kernel, forged messages.

One cluster (real Mosquitto, simulators, runtimes, kernels) for the module; the tests
run in file order. The simulated devices' own state (the world process) is the judge
of what reached the hardware, never what labrig says about itself.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import zmq
from jupyter_client.blocking import BlockingKernelClient
from jupyter_client.session import Session

from labrig.supervisor.broker import mosquitto_binary
from labrig.supervisor.cluster import cluster_status, kernel_command, start_cluster, stop_cluster
from labrig.supervisor.mqtt import MqttSubscriber
from labrig.supervisor.processes import is_ours, spawn, stop_pid
from labrig.supervisor.rig import Rig
from labrig.supervisor.runtime import RuntimeClient
from labrig.supervisor.runtime.locate import ensure_runtime, runtime_record
from labrig.supervisor.state import read_state, write_state
from labrig.simulators.world import world_control
from support import wait_for


ROOT = Path(__file__).resolve().parents[2]
RIG = ROOT / "examples" / "ishtar" / "rig.toml"
NODE = "ard1"
VALUE = "application/vnd.labrig.value+json"
PWM_STEP = 150 / 255  # V: one step of the Arduino's 8-bit PWM that makes probe_bias

# Whole clusters: the process-heavy modules run one at a time (scripts/test).
# Without Mosquitto they skip on a laptop, never in CI (the test command installs it there).
pytestmark = [pytest.mark.processes,
              pytest.mark.skipif(not mosquitto_binary() and not os.environ.get("CI"),
                                 reason="needs Mosquitto (apt install mosquitto)")]


# ---------------------------------------------------------------- the cluster

class Cluster:
    """The running cluster's records, and the processes the tests start in it."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.rig = Rig.load(RIG)
        self.popens = []  # kernels the tests started again (reaped at teardown)
        self.pids = set()  # runtimes the tests started again (reaped at teardown)

    @property
    def record(self) -> dict:
        return read_state("cluster", self.dir)

    def runtime(self) -> dict:
        record = runtime_record(NODE, self.dir)
        assert record, f"no runtime of {NODE} runs"
        return record

    def client(self, timeout: float = 2.0) -> RuntimeClient:
        return RuntimeClient(self.runtime()["endpoint"], node=NODE, timeout=timeout, client="test-faults")

    def world(self) -> dict:
        endpoint = read_state("sim", self.dir)["world"]["endpoints"]["control"]
        return world_control(endpoint, {"op": "snapshot"})["state"]

    def connection_file(self, name: str) -> Path:
        return self.dir / "kernels" / f"{name}.json"

    def start_node_kernel(self) -> int:
        """Start ard1's kernel again, as `labrig up` did (same command, connection file, log); record it."""
        record = self.record
        node = record["nodes"][NODE]
        args = kernel_command(node["connection_file"], record["rig"], self.dir, node=NODE, sim=True)
        assert " ".join(args) == node["kernel_cmd"]  # so `labrig down` knows it as its own
        proc = spawn(args, name=f"kernel-{NODE}", log_dir=self.dir / "logs", env={"LABRIG_STATE_DIR": str(self.dir)})
        self.popens.append(proc)
        node["kernel_pid"] = proc.pid
        write_state("cluster", record, self.dir)
        return proc.pid


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    directory = tmp_path_factory.mktemp("faults") / "state"
    c = Cluster(directory)
    try:
        start_cluster(RIG, sim=True, directory=directory, timeout=90)
        yield c
    finally:
        stopped = stop_cluster(directory)
        # every process of this cluster names the state directory in its command line
        left = [p for p in psutil.process_iter(["pid", "cmdline", "status"])
                if str(directory) in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE]
        for p in left:  # a finding: stop it anyway, then say so
            stop_pid(p.pid, marker=str(directory))
        for proc in c.popens:
            proc.wait(5)
        for pid in c.pids:  # reap the runtime started through ensure_runtime
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        assert not left, f"stop_cluster (which stopped {stopped}) left running: " + \
            "; ".join(" ".join(p.info["cmdline"])[:160] for p in left)


@pytest.fixture(scope="module")
def supervisor(cluster):
    """A Jupyter client of the cluster's supervisor kernel (shell and iopub; no threads)."""
    kc = BlockingKernelClient()
    kc.load_connection_file(str(cluster.connection_file("supervisor")))
    kc.start_channels(hb=False, stdin=False, control=False)
    try:
        yield kc
    finally:
        kc.stop_channels()


def run(kc, code: str, timeout: float = 10.0):
    """Execute code; returns (printed text, value of the last expression, error "Name: value" or None)."""
    msg_id = kc.execute(code, store_history=False)
    out, value, error = [], None, None
    deadline = time.monotonic() + timeout
    while True:
        msg = kc.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            out.append(content["text"])
        elif kind == "execute_result":
            value = content["data"].get(VALUE, content["data"].get("text/plain"))
        elif kind == "error":
            error = f"{content['ename']}: {content['evalue']}"
        elif kind == "status" and content["execution_state"] == "idle":
            return "".join(out), value, error


def gone(pid: int) -> bool:
    return not is_ours(pid)


# ---------------------------------------------------------------- 1. a killed runtime

def test_killed_runtime_goes_offline_its_board_goes_safe_and_a_restart_rejoins(cluster, supervisor):
    rig = cluster.rig
    timeout, period = rig.spec.watchdogs.heartbeat_timeout, rig.node(NODE).heartbeat
    watchdog = rig.node(NODE).options["watchdog_ms"] / 1000
    # outputs away from their safe values (0 V, 0), as the board's own state shows
    with cluster.client() as ard:
        ard.ramp("probe_bias", -50.0, 500)  # a step that large is a ramp (max slew 500 V/s)
        ard.write("beacon", 1)
    wait_for(lambda: abs(cluster.world()["probe_bias"] + 50) < PWM_STEP and cluster.world()["beacon"] == 1,
             3, "probe_bias -50 V and beacon 1 on the simulated Arduino")
    _, state, error = run(supervisor, f"rig.status().data[{NODE!r}]['runtime']")
    assert error is None and state == "online"
    pid = cluster.runtime()["pid"]

    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    offline_after = safe_after = None
    while time.monotonic() - killed < timeout + period + 1.0 and (offline_after is None or safe_after is None):
        world = cluster.world()
        if safe_after is None and abs(world["probe_bias"]) <= 0.6 and world["beacon"] == 0:
            safe_after = time.monotonic() - killed
        if offline_after is None:
            _, state, error = run(supervisor, f"rig.status().data[{NODE!r}]['runtime']")
            assert error is None, error
            if state == "offline":
                offline_after = time.monotonic() - killed
    print(f"\nard1 runtime killed: supervisor offline after {offline_after} s, board safe after {safe_after} s")
    # the audit journal on disk holds every write the runtime confirmed before it died
    from labrig.supervisor.runtime.audit import read_journal
    journal = read_journal(cluster.dir / "audit" / f"{NODE}.jsonl")
    confirmed = [(e["op"], e["signal"], e["value"], e["outcome"]) for e in journal]
    assert ("ramp", "probe_bias", -50.0, "ok") in confirmed and ("write", "beacon", 1, "ok") in confirmed, confirmed
    # (a) the supervisor sees it within the heartbeat timeout plus one heartbeat period
    assert offline_after is not None and offline_after <= timeout + period
    # (b) nothing in labrig runs for ard1 now: the firmware watchdog alone took the outputs safe
    assert safe_after is not None and safe_after <= 2.0, f"board not safe {safe_after} s after the kill"
    assert safe_after >= watchdog * 0.5  # it is the watchdog (~watchdog_ms of silence), not someone's write
    assert gone(pid)

    # (c) a request for one of its signals fails, bounded, naming the node and its last heartbeat
    asked = time.monotonic()
    _, value, error = run(supervisor, 'rig["langmuir_I"].read()')
    took = time.monotonic() - asked
    assert took < 3.0, f"the failed read took {took:.2f} s"
    assert error and error.startswith("NodeUnavailable:"), (value, error)
    assert "'ard1'" in error and "last heartbeat" in error and "s ago" in error, error

    # (d) a restarted runtime (as a node kernel or systemd would start it) rejoins
    restarted = time.monotonic()
    record = ensure_runtime(cluster.record["rig"], NODE, cluster.dir, sim=True)
    cluster.pids.add(record["pid"])
    assert record["pid"] != pid
    # `labrig status` (and so `labrig down`) follow the restarted runtime by its own state file
    live = cluster_status(cluster.dir)["nodes"][NODE]
    assert live["pid"] == record["pid"] and live["runtime"] == "online", live
    wait_for(lambda: run(supervisor, f"rig.status().data[{NODE!r}]['runtime']")[1] == "online", 10,
             "the supervisor sees the restarted ard1 runtime online")
    print(f"restarted runtime online for the supervisor after {time.monotonic() - restarted:.2f} s")
    _, values, error = run(supervisor, "{n: rig[n].read() for n in rig.signals if rig[n].node == 'ard1'}")
    assert error is None, error
    assert set(values) == {"langmuir_I", "cooling_flow", "cooling_ok", "probe_bias", "beacon"}
    # the board came back as the watchdog left it: safe, until someone writes
    assert values["probe_bias"] == pytest.approx(0.0, abs=0.6) and values["beacon"] == 0
    assert values["cooling_flow"] == pytest.approx(cluster.world()["cooling_flow"], abs=0.05)
    # the node kernel follows its restarted runtime too
    kc = _node_kernel_client(cluster)
    try:
        _, value, error = run(kc, 'node["cooling_flow"].read()')
        assert error is None, f"ard1's node kernel after its runtime restarted: {error}"
    finally:
        kc.stop_channels()



def _node_kernel_client(cluster: Cluster) -> BlockingKernelClient:
    kc = BlockingKernelClient()
    kc.load_connection_file(str(cluster.connection_file(NODE)))
    kc.start_channels(hb=False, stdin=False, control=False)
    return kc


# ---------------------------------------------------------------- 2. a ramp while its kernel is abused

class WorldRecorder:
    """probe_bias as the world publishes it (~200 Hz), with the world's own timestamps."""

    def __init__(self, endpoint: str):
        self.samples: list[tuple[float, float]] = []
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SUBSCRIBE, b"")
        self._sock.connect(endpoint)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="world-recorder", daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            if self._sock.poll(100):
                message = json.loads(self._sock.recv())
                self.samples.append((message["t"], message["state"]["probe_bias"]))

    def between(self, start: float, end: float) -> np.ndarray:
        data = np.array(self.samples)
        return data[(data[:, 0] >= start) & (data[:, 0] <= end)]

    def close(self):
        self._stop.set()
        self._thread.join(2)
        self._sock.close(0)
        self._ctx.term()


class Telemetry:
    """langmuir_I's telemetry samples (seq, t) as ard1 publishes them over MQTT."""

    def __init__(self, cluster: Cluster):
        self.seq: list[int] = []
        self.t: list[float] = []
        url = cluster.record["broker"]["url"]
        self._sub = MqttSubscriber(url, [f"labrig/{cluster.rig.name}/{NODE}/telemetry"], self._on_message,
                                   client_id=f"test-faults-{os.getpid()}")

    def _on_message(self, topic: str, payload: bytes) -> None:
        signal = json.loads(payload)["signals"].get("langmuir_I")
        if signal:
            self.seq += signal["seq"]
            self.t += signal["t"]

    def close(self):
        self._sub.close()


RAMP = {"start": -100.0, "target": 50.0, "rate": 20.0}  # V, V, V/s: 7.5 s
SPAN = RAMP["target"] - RAMP["start"]
DURATION = SPAN / RAMP["rate"]


def _ramp(ard: RuntimeClient, cluster: Cluster) -> dict:
    """Start probe_bias's ramp in the runtime, from where the world shows it at its start value."""
    ard.ramp("probe_bias", RAMP["start"], 500)
    wait_for(lambda: cluster.world()["probe_bias"] == RAMP["start"], 3, "probe_bias at -100 V before the ramp")
    # settle longer than the 0.2 s of history kept before the start: the world's snapshot can show the
    # new value a publish period before its state stream does, and both runs must start from -100 V
    time.sleep(0.3)
    ramp = ard.ramp("probe_bias", RAMP["target"], RAMP["rate"])
    assert ramp["start"] == RAMP["start"] and ramp["state"] == "running"
    return ramp


def _trajectory(ard: RuntimeClient, ramp: dict, world: WorldRecorder, until: float) -> np.ndarray:
    """Wait for the ramp's end and `until` (wall clock); the world's probe_bias, (s from the ramp's start, V)."""
    wait_for(lambda: time.time() > until, until - time.time() + 5, "the ramp's end")
    done = [r for r in ard.ramps() if r["started"] == ramp["started"] and r["signal"] == "probe_bias"]
    assert done and done[0]["state"] == "done", done  # it ran to its end: neither stopped nor failed
    data = world.between(ramp["started"] - 0.2, until)
    data[:, 0] -= ramp["started"]
    return data


def _off_ideal(data: np.ndarray) -> float:
    """Largest distance of a trajectory from the ramp's straight line (from its start on)."""
    after = data[data[:, 0] >= 0]
    ideal = np.clip(RAMP["start"] + RAMP["rate"] * after[:, 0], RAMP["start"], RAMP["target"])
    return float(np.max(np.abs(after[:, 1] - ideal)))


# one run again after a failure: on a shared 2-core CI machine the scheduler has stalled a process
# here for 100+ ms (seen in fresh clones); a real regression fails both runs
@pytest.mark.flaky(reruns=1)
def test_ramp_keeps_its_trajectory_while_its_node_kernel_is_abused(cluster):
    tolerance = 0.01 * SPAN
    world = WorldRecorder(read_state("sim", cluster.dir)["world"]["endpoints"]["state"])
    telemetry = Telemetry(cluster)
    try:
        runtime_pid = cluster.runtime()["pid"]
        with cluster.client() as ard:
            # the undisturbed reference. On a loaded shared machine the scheduler can stall the runtime
            # or its simulator ~100 ms (seen as a gap in its telemetry too); a stalled reference is not
            # an undisturbed run: then it runs again
            for attempt in (1, 2, 3):
                ramp = _ramp(ard, cluster)
                calm = _trajectory(ard, ramp, world, ramp["started"] + DURATION + 0.3)
                calm_error = _off_ideal(calm)
                if calm_error <= tolerance:
                    break
                print(f"\nreference ramp {attempt}: {calm_error:.2f} V off its line (machine load); again")
            assert calm_error <= tolerance, f"no undisturbed reference: {calm_error:.2f} V off the ramp's line"
            ramp = _ramp(ard, cluster)
            abuse = _abuse_node_kernel(cluster)
            # the output must also hold its target while the rest of the abuse goes on after the ramp
            rough = _trajectory(ard, ramp, world, max(ramp["started"] + DURATION, abuse["killed"]) + 0.3)
    finally:
        world.close()
        telemetry.close()
        # leave ard1's kernel running again, recorded, for the next test and for stop_cluster
        if not is_ours(cluster.record["nodes"][NODE]["kernel_pid"]):
            _wait_kernel(cluster, cluster.start_node_kernel())

    at = {phase: round(t - ramp["started"], 2) for phase, t in abuse.items()}
    print(f"\nabuse of ard1's kernel, s from the ramp's start: {at}")
    # busy cell, interrupt and restart all happened while the ramp ran (the kill too, unless the
    # restarted kernel took long to come up: then the output's hold at its target is compared)
    assert ramp["started"] < abuse["busy"] and abuse["restart"] < ramp["started"] + DURATION, at
    # the two trajectories, aligned on the ramp's start; after the reference ends, the target
    assert len(rough) > 100 * DURATION, f"only {len(rough)} world samples in {DURATION} s"
    rough = rough[rough[:, 0] >= 0]
    reference = np.where(rough[:, 0] <= calm[-1, 0], np.interp(rough[:, 0], calm[:, 0], calm[:, 1]),
                         RAMP["target"])
    deviation = np.abs(rough[:, 1] - reference)
    worst = deviation.argmax()
    print(f"max deviation of the disturbed ramp from the undisturbed one: {deviation[worst]:.3f} V at "
          f"{rough[worst, 0]:.3f} s (reference {calm_error:.3f} V and disturbed {_off_ideal(rough):.3f} V "
          "off the ideal line)")
    assert deviation[worst] <= tolerance, f"{deviation[worst]:.2f} V at {rough[worst, 0]:.2f} s > 1% of {SPAN:g} V"

    # telemetry kept its rate, with no gap in its sequence numbers
    seq, t = np.array(telemetry.seq), np.array(telemetry.t)
    assert len(seq) > 0, "no langmuir_I telemetry received"
    gaps = np.flatnonzero(np.diff(seq) != 1)
    assert not len(gaps), f"langmuir_I sequence gaps: {[(seq[i], seq[i + 1]) for i in gaps[:5]]}"
    rate = cluster.rig.signals["langmuir_I"].rate
    start, end = abuse["busy"], abuse["killed"]
    kept = np.count_nonzero((t >= start) & (t <= end)) / (end - start) / rate
    print(f"langmuir_I telemetry: {100 * kept:.1f}% of {rate:g} Hz over the {end - start:.2f} s of abuse, "
          f"{len(seq)} samples without a gap")
    assert kept >= 0.95
    # the runtime saw none of it
    assert cluster.runtime()["pid"] == runtime_pid


def _abuse_node_kernel(cluster: Cluster) -> dict[str, float]:
    """Busy 2 s, interrupt a long cell, restart, then kill ard1's kernel; when each began (wall clock)."""
    at = {}
    kc = _node_kernel_client(cluster)
    try:
        at["busy"] = time.time()
        _, _, error = run(kc, "import time\nt0 = time.monotonic()\nwhile time.monotonic() - t0 < 2.0:\n    pass")
        assert error is None, error
        assert time.time() - at["busy"] >= 2.0

        # a long cell, interrupted as interrupt_mode "signal" does: SIGINT to the kernel's process
        msg_id = kc.execute("while True:\n    pass", store_history=False)
        # execute_input comes once the kernel runs the cell, with SIGINT mapped to KeyboardInterrupt
        # (ipykernel ignores SIGINT outside a request: an earlier signal would be lost)
        wait_for(lambda: _running(kc, msg_id), 10, "the long cell running")
        at["interrupt"] = time.time()
        os.kill(cluster.record["nodes"][NODE]["kernel_pid"], signal.SIGINT)
        reply = _shell_reply(kc, msg_id, 10)
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
    finally:
        kc.stop_channels()

    # restart: the process goes, the same command starts again on the same connection file
    at["restart"] = time.time()
    _kill_node_kernel(cluster)
    _wait_kernel(cluster, cluster.start_node_kernel())
    at["restarted"] = time.time()
    # and kill the restarted one
    _kill_node_kernel(cluster)
    at["killed"] = time.time()
    return at


def _shell_reply(kc, msg_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        reply = kc.get_shell_msg(timeout=max(0.01, deadline - time.monotonic()))
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply


def _running(kc, msg_id) -> bool:
    try:
        msg = kc.get_iopub_msg(timeout=0.1)
    except Exception:  # queue.Empty
        return False
    return msg["msg_type"] == "execute_input" and msg["parent_header"].get("msg_id") == msg_id


def _kill_node_kernel(cluster: Cluster) -> None:
    pid = cluster.record["nodes"][NODE]["kernel_pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: gone(pid), 5, f"ard1's kernel (pid {pid}) gone")


def _wait_kernel(cluster: Cluster, pid: int, timeout: float = 30.0) -> None:
    """Until the kernel answers kernel_info on its shell channel (asking again now and then)."""
    kc = BlockingKernelClient()
    kc.load_connection_file(str(cluster.connection_file(NODE)))
    kc.start_channels(iopub=False, hb=False, stdin=False, control=False)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert is_ours(pid), f"ard1's restarted kernel died: see {cluster.dir / 'logs' / f'kernel-{NODE}.log'}"
            kc.kernel_info()
            try:
                if kc.get_shell_msg(timeout=1.0)["msg_type"] == "kernel_info_reply":
                    return
            except Exception:  # queue.Empty: not up yet
                pass
        raise AssertionError(f"ard1's restarted kernel did not answer within {timeout} s")
    finally:
        kc.stop_channels()


@pytest.fixture
def node_kernel_up(cluster):
    """ard1's kernel running and answering (started again the way `labrig up` did if it is not)."""
    pid = cluster.record["nodes"][NODE]["kernel_pid"]
    if not is_ours(pid):
        pid = cluster.start_node_kernel()
    _wait_kernel(cluster, pid)
    return pid


# ---------------------------------------------------------------- 3. forged and replayed kernel messages

def test_forged_or_replayed_kernel_messages_change_no_output(cluster, node_kernel_up):
    conn = json.loads(cluster.connection_file(NODE).read_text())
    key = conn["key"].encode()
    good = Session(key=key, signature_scheme=conn["signature_scheme"], username="test")
    forger = Session(key=bytes(reversed(key)), signature_scheme=conn["signature_scheme"], username="test")
    ctx = zmq.Context()
    shell = ctx.socket(zmq.DEALER)
    shell.setsockopt(zmq.LINGER, 0)
    shell.connect(f"tcp://127.0.0.1:{conn['shell_port']}")

    def execute(session: Session, code: str) -> list[bytes]:
        content = {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                   "allow_stdin": False, "stop_on_error": True}
        return session.serialize(session.msg("execute_request", content=content))

    def reply(timeout: float):
        """The kernel's next execute_reply on this socket, or None."""
        if not shell.poll(int(timeout * 1000)):
            return None
        _, frames = good.feed_identities(shell.recv_multipart())
        return good.deserialize(frames)

    def beacon():
        return cluster.world()["beacon"]

    try:
        with cluster.client() as ard:
            ard.write("beacon", 0)
        wait_for(lambda: beacon() == 0, 2, "beacon 0")

        # signed with a wrong key: dropped, no reply, no output
        shell.send_multipart(execute(forger, 'node["beacon"].write(1)'))
        assert reply(1.0) is None
        assert beacon() == 0

        # the same code, validly signed: runs (so the kernel was listening all along)
        valid = execute(good, 'node["beacon"].write(1)')
        shell.send_multipart(valid)
        answer = reply(10.0)
        assert answer and answer["content"]["status"] == "ok", answer and answer["content"]
        wait_for(lambda: beacon() == 1, 2, "beacon 1 after the valid message")

        with cluster.client() as ard:
            ard.write("beacon", 0)
        wait_for(lambda: beacon() == 0, 2, "beacon 0 again")

        # the valid frames again, byte for byte: ipykernel's digest history drops them
        shell.send_multipart(valid)
        assert reply(1.0) is None, "the kernel answered a replayed message"
        assert beacon() == 0, "a replayed message wrote an output"

        # and the kernel still listens: a fresh valid message runs
        shell.send_multipart(execute(good, "1 + 1"))
        answer = reply(10.0)
        assert answer and answer["content"]["status"] == "ok"
        assert beacon() == 0
    finally:
        shell.close(0)
        ctx.term()

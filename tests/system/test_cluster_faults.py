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
import pytest
import zmq
from jupyter_client.blocking import BlockingKernelClient
from jupyter_client.session import Session

from labrig.drivers.errors import LabrigError
from labrig.supervisor.broker import mosquitto_binary
from labrig.supervisor.cluster import kernel_command, start_cluster, stop_cluster
from labrig.supervisor.mqtt import MqttSubscriber
from labrig.supervisor.processes import is_ours, spawn, stop_pid
from labrig.supervisor.rig import Rig
from labrig.supervisor.runtime import RuntimeClient
from labrig.supervisor.runtime.locate import ensure_runtime, runtime_record
from labrig.supervisor.state import read_state, write_state
from labrig.simulators.world import world_control
from support import eventually, wait_for

ROOT = Path(__file__).resolve().parents[2]
RIG = ROOT / "examples" / "ishtar" / "rig.toml"
NODE = "ard1"
VALUE = "application/vnd.labrig.value+json"
PWM_STEP = 150 / 255  # V: one step of the Arduino's 8-bit PWM that makes probe_bias

pytestmark = pytest.mark.skipif(not mosquitto_binary(), reason="needs Mosquitto (apt install mosquitto)")


# ---------------------------------------------------------------- the cluster

class Cluster:
    """The running cluster's records, and the processes the tests start in it."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.rig = Rig.load(RIG)
        self.popens = []  # kernels the tests restarted (reaped at teardown)
        self.pids = set()  # every process the tests started, checked gone at teardown

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
        self.pids.add(proc.pid)
        node["kernel_pid"] = proc.pid
        write_state("cluster", record, self.dir)
        return proc.pid


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    directory = tmp_path_factory.mktemp("faults") / "state"
    c = Cluster(directory)
    try:
        record = start_cluster(RIG, sim=True, directory=directory, timeout=90)
        c.pids |= {record["supervisor"]["kernel_pid"], record["broker"]["pid"]}
        c.pids |= {info[k] for info in record["nodes"].values() for k in ("pid", "kernel_pid")}
        yield c
    finally:
        stopped = stop_cluster(directory)
        # what stop_cluster missed is a finding: stop it anyway, then say so
        left = [pid for pid in sorted(c.pids) if is_ours(pid) and stop_pid(pid)]
        for proc in c.popens:
            proc.wait(5)
        for pid in c.pids:  # reap what we started through ensure_runtime
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        assert not left, f"stop_cluster left running: pids {left} (it stopped {stopped})"


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
        ard.write("probe_bias", -50.0)
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
    _register_runtime(cluster, record)
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


def _register_runtime(cluster: Cluster, record: dict) -> None:
    """Name the restarted runtime in the cluster's record, so `labrig status` and `down` know it."""
    cl = cluster.record
    cl["nodes"][NODE]["pid"] = record["pid"]
    cl["nodes"][NODE]["endpoint"] = record["endpoint"]
    write_state("cluster", cl, cluster.dir)


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


def _ramp(ard: RuntimeClient, cluster: Cluster) -> dict:
    """Start probe_bias from -100 to +50 V at 20 V/s (7.5 s) in the runtime."""
    ard.write("probe_bias", -100.0)
    wait_for(lambda: cluster.world()["probe_bias"] == -100.0, 3, "probe_bias at -100 V before the ramp")
    ramp = ard.ramp("probe_bias", 50.0, 20.0)
    assert ramp["start"] == -100.0 and ramp["state"] == "running"
    return ramp


def _finish(ard: RuntimeClient, ramp: dict, world: WorldRecorder) -> np.ndarray:
    """Wait for the ramp's end; the world's probe_bias meanwhile, (t from the ramp's start, V)."""
    duration = (ramp["target"] - ramp["start"]) / ramp["rate"]
    wait_for(lambda: time.time() > ramp["started"] + duration + 0.3, duration + 5, "the ramp's end")
    done = [r for r in ard.ramps() if r["started"] == ramp["started"] and r["signal"] == "probe_bias"]
    assert done and done[0]["state"] == "done", done
    data = world.between(ramp["started"] - 0.2, ramp["started"] + duration + 0.3)
    data[:, 0] -= ramp["started"]
    return data


def test_ramp_keeps_its_trajectory_while_its_node_kernel_is_abused(cluster):
    world = WorldRecorder(read_state("sim", cluster.dir)["world"]["endpoints"]["state"])
    telemetry = Telemetry(cluster)
    try:
        runtime_pid = cluster.runtime()["pid"]
        with cluster.client() as ard:
            ramp = _ramp(ard, cluster)
            calm = _finish(ard, ramp, world)
            ramp = _ramp(ard, cluster)
            window = _abuse_node_kernel(cluster)
            rough = _finish(ard, ramp, world)
        duration = (ramp["target"] - ramp["start"]) / ramp["rate"]
    finally:
        world.close()
        telemetry.close()

    # the abuse happened while the ramp ran
    assert ramp["started"] < window[0] and window[1] < ramp["started"] + duration, (ramp["started"], window)
    # the two trajectories, aligned on the ramp's start
    span = ramp["target"] - ramp["start"]
    inside = rough[(rough[:, 0] >= 0) & (rough[:, 0] <= duration + 0.2)]
    assert len(inside) > 100 * duration, f"only {len(inside)} world samples in {duration} s"
    deviation = np.abs(inside[:, 1] - np.interp(inside[:, 0], calm[:, 0], calm[:, 1]))
    ideal = np.clip(ramp["start"] + ramp["rate"] * calm[:, 0], ramp["start"], ramp["target"])
    calm_error = np.max(np.abs(calm[calm[:, 0] >= 0, 1] - ideal[calm[:, 0] >= 0]))
    print(f"\nmax deviation of the disturbed ramp from the undisturbed one: {deviation.max():.3f} V "
          f"(at t = {inside[deviation.argmax(), 0]:.3f} s); undisturbed vs ideal: {calm_error:.3f} V")
    assert deviation.max() <= 0.01 * span, f"{deviation.max():.2f} V > 1% of {span:g} V"

    # telemetry kept its rate, with no gap in its sequence numbers
    seq, t = np.array(telemetry.seq), np.array(telemetry.t)
    assert len(seq) > 0, "no langmuir_I telemetry received"
    gaps = np.flatnonzero(np.diff(seq) != 1)
    assert not len(gaps), f"langmuir_I sequence gaps: {[(seq[i], seq[i + 1]) for i in gaps[:5]]}"
    rate = cluster.rig.signals["langmuir_I"].rate
    kept = np.count_nonzero((t >= window[0]) & (t <= window[1])) / (window[1] - window[0]) / rate
    print(f"langmuir_I telemetry kept {100 * kept:.1f}% of {rate:g} Hz over the {window[1] - window[0]:.2f} s "
          "of abuse")
    assert kept >= 0.95
    # the runtime saw none of it
    assert cluster.runtime()["pid"] == runtime_pid


def _abuse_node_kernel(cluster: Cluster) -> tuple[float, float]:
    """Busy 2 s, interrupt a long cell, restart, kill ard1's kernel, then start it again; the abuse's window."""
    kc = _node_kernel_client(cluster)
    try:
        start = time.time()
        _, _, error = run(kc, "import time\nt0 = time.monotonic()\nwhile time.monotonic() - t0 < 2.0:\n    pass")
        assert error is None, error
        busy = time.time() - start
        assert busy >= 2.0

        # a long cell, interrupted as interrupt_mode "signal" does: SIGINT to the kernel's process
        msg_id = kc.execute("while True:\n    pass", store_history=False)
        wait_for(lambda: _busy_with(kc, msg_id), 5, "the long cell running")
        os.kill(cluster.record["nodes"][NODE]["kernel_pid"], signal.SIGINT)
        reply = kc.get_shell_msg(timeout=5)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
    finally:
        kc.stop_channels()

    # restart: the process goes, the same command starts again on the same connection file
    _kill_node_kernel(cluster)
    _wait_kernel(cluster, cluster.start_node_kernel())
    restarted = time.time()
    # and kill the restarted one
    _kill_node_kernel(cluster)
    end = time.time()
    print(f"\nabuse of ard1's kernel: busy {busy:.2f} s, restart done {restarted - start:.2f} s, "
          f"killed {end - start:.2f} s after its start")
    return start, end


def _busy_with(kc, msg_id) -> bool:
    try:
        msg = kc.get_iopub_msg(timeout=0.1)
    except Exception:  # queue.Empty
        return False
    return (msg["msg_type"] == "status" and msg["parent_header"].get("msg_id") == msg_id
            and msg["content"]["execution_state"] == "busy")


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
    """ard1's kernel running (test 2 leaves it killed; start it again the way `labrig up` did)."""
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

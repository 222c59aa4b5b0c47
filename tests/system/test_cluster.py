"""`labrig up --sim`, `status`, `down` through the real command line, with a real Mosquitto.

One cluster for the module (starting one costs ~15 s of CPU); the tests run in file
order and the last two change it: a runtime is killed, then everything is stopped.
"""
from __future__ import annotations

import json
import os
import time
import signal
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest

from labrig.supervisor.broker import mosquitto_binary
from support import wait_for


ROOT = Path(__file__).resolve().parents[2]
RIG = ROOT / "examples" / "ishtar" / "rig.toml"
NODES = {"ard1", "rp1", "plc1", "pi1", "gauge1"}
HEARTBEAT_TIMEOUT = 2.0  # the rig's [watchdogs] heartbeat_timeout

# Whole clusters: the process-heavy modules run one at a time (scripts/test).
# Without Mosquitto they skip on a laptop, never in CI (the test command installs it there).
pytestmark = [pytest.mark.processes,
              pytest.mark.skipif(not mosquitto_binary() and not os.environ.get("CI"),
                                 reason="needs Mosquitto (apt install mosquitto)")]


def labrig(state: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labrig.supervisor.cli", *args], cwd=ROOT, timeout=timeout,
                          env={**os.environ, "LABRIG_STATE_DIR": str(state), "COLUMNS": "200"},
                          capture_output=True, text=True)


def status(state: Path) -> dict:
    # a status must come back within a few seconds whatever is down: the timeout bounds it
    result = labrig(state, "status", "--json", timeout=15)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _port(url: str) -> int | None:
    return urlsplit(url).port if "://" in url else None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("cluster") / "state"
    try:
        up = labrig(state, "up", str(RIG), "--sim")
        assert up.returncode == 0, up.stdout + up.stderr
        record = json.loads((state / "cluster.json").read_text())
        sim = json.loads((state / "sim.json").read_text())
        kernels = {name: json.loads(Path(info["connection_file"]).read_text())
                   for name, info in [*record["nodes"].items(), ("supervisor", record["supervisor"])]}
        pids = {record["broker"]["pid"], sim["world"]["pid"], record["supervisor"]["kernel_pid"]}
        pids |= {info["pid"] for info in sim["simulators"].values()}
        pids |= {info[key] for info in record["nodes"].values() for key in ("pid", "kernel_pid")}
        ports = {_port(record["broker"]["url"])} | {_port(n["endpoint"]) for n in record["nodes"].values()}
        ports |= {_port(ep) for info in [sim["world"], *sim["simulators"].values()] for ep in info["endpoints"].values()}
        ports |= {c[k] for c in kernels.values() for k in ("shell_port", "iopub_port", "stdin_port",
                                                             "control_port", "hb_port")}
        yield {"state": state, "record": record, "kernels": kernels, "pids": pids, "ports": ports - {None},
               "up": up.stdout}
    finally:
        labrig(state, "down")  # idempotent; the last test checks what it leaves


def test_up_starts_every_part_and_status_shows_it_online(cluster):
    assert "runtime ard1" in cluster["up"] and "kernel supervisor" in cluster["up"]
    st = status(cluster["state"])
    assert st["rig"] == "ishtar"
    assert st["broker"]["kind"] == "mosquitto" and st["broker"]["alive"]
    assert st["broker"]["url"].startswith("mqtt://127.0.0.1:")
    assert set(st["simulators"]) == NODES | {"world"} and all(s["alive"] for s in st["simulators"].values())
    assert set(st["nodes"]) == NODES
    for name, node in st["nodes"].items():
        assert node["runtime"] == "online" and node["kernel"] == "online", (name, node)
        assert node["pid"] == cluster["record"]["nodes"][name]["pid"]
        assert node["endpoint"].startswith("tcp://127.0.0.1:")
        # from the retained MQTT heartbeat: fresher than the rig's heartbeat timeout
        assert node["heartbeat_age"] is not None and node["heartbeat_age"] < HEARTBEAT_TIMEOUT, (name, node)
        assert node["trips"] == []
    assert st["supervisor"]["kernel"] == "online"
    table = labrig(cluster["state"], "status")
    assert table.returncode == 0 and all(name in table.stdout for name in NODES)
    assert "offline" not in table.stdout


def test_connection_files_are_private_loopback_with_fresh_keys(cluster):
    record = cluster["record"]
    files = {name: info["connection_file"] for name, info in record["nodes"].items()}
    files["supervisor"] = record["supervisor"]["connection_file"]
    keys = set()
    for name, conn in cluster["kernels"].items():
        path = Path(files[name])
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert conn["ip"] == "127.0.0.1" and conn["transport"] == "tcp"
        assert conn["signature_scheme"] == "hmac-sha256" and len(conn["key"]) >= 32
        keys.add(conn["key"])
    assert len(keys) == len(cluster["kernels"])  # one key per kernel
    assert stat.S_IMODE((cluster["state"] / "kernels").stat().st_mode) & 0o077 == 0
    # what actually listens: every kernel, runtime and the broker, on loopback only
    listeners = [record["broker"]["pid"], record["supervisor"]["kernel_pid"]]
    listeners += [n[k] for n in record["nodes"].values() for k in ("pid", "kernel_pid")]
    for pid in listeners:
        bound = [c.laddr for c in psutil.Process(pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        assert bound and all(addr.ip == "127.0.0.1" for addr in bound), (pid, bound)
    hb = {c.laddr.port for c in psutil.Process(record["nodes"]["rp1"]["kernel_pid"]).net_connections(kind="inet")}
    assert cluster["kernels"]["rp1"]["hb_port"] in hb


def test_second_up_is_refused_while_one_runs(cluster):
    again = labrig(cluster["state"], "up", str(RIG), "--sim")
    assert again.returncode == 2
    assert "already runs" in again.stderr and "labrig down" in again.stderr
    assert "Traceback" not in again.stderr
    assert json.loads((cluster["state"] / "cluster.json").read_text()) == cluster["record"]


def _world(cluster) -> dict:
    from labrig.simulators.world import world_control
    sim = json.loads((cluster["state"] / "sim.json").read_text())
    return world_control(sim["world"]["endpoints"]["control"], {"op": "snapshot"})["state"]


def test_labrig_safe_drives_every_node_safe_at_once(cluster):
    from labrig.supervisor.runtime import RuntimeClient
    nodes = cluster["record"]["nodes"]
    for node, name, value in (("ard1", "probe_bias", -50.0), ("pi1", "gas_flow", 4.0), ("plc1", "coil_enable", 1)):
        with RuntimeClient(nodes[node]["endpoint"], node=node) as client:
            client.ramp(name, value, 500) if name == "probe_bias" else client.write(name, value)
    wait_for(lambda: _world(cluster)["gas_valve"] == 0.08 and _world(cluster)["probe_bias"] < -49, 3, "outputs set")
    result = labrig(cluster["state"], "safe")
    assert result.returncode == 0, result.stdout + result.stderr
    for node in NODES:
        assert node in result.stdout
    world = _world(cluster)
    assert world["gas_valve"] == 0.0 and abs(world["probe_bias"]) < 0.6 and world["rf_drive"] == 0.0


def test_killed_runtime_shows_offline_the_rest_online(cluster):
    pid = cluster["record"]["nodes"]["ard1"]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
             5, "killed runtime gone")
    st = status(cluster["state"])
    assert st["nodes"]["ard1"]["runtime"] == "offline"
    # its kernel and every other process live on: no process's death takes another with it
    assert st["nodes"]["ard1"]["kernel"] == "online"
    for name in NODES - {"ard1"}:
        assert st["nodes"][name]["runtime"] == "online" and st["nodes"][name]["kernel"] == "online", name
    table = labrig(cluster["state"], "status")
    assert table.returncode == 0 and "offline" in table.stdout


def test_labrig_safe_names_a_node_it_cannot_reach_and_fails(cluster):
    # ard1's runtime was killed by the test before: the others go safe, ard1 is named, exit 1
    result = labrig(cluster["state"], "safe", "--timeout", "1")
    assert result.returncode == 1
    assert "NOT everything is safe" in result.stderr and "ard1" in result.stderr
    assert "no runtime running" in result.stderr
    assert "Traceback" not in result.stderr


def test_down_leaves_no_process_port_or_record(cluster):
    state = cluster["state"]
    down = labrig(state, "down")
    assert down.returncode == 0, down.stderr
    assert "broker (mosquitto)" in down.stdout

    def gone(pid):
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # exited, not yet reaped by init
        except psutil.NoSuchProcess:
            return True
    wait_for(lambda: all(gone(pid) for pid in cluster["pids"]), 5, "every recorded process gone")
    listening = {c.laddr.port for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    assert not listening & cluster["ports"]
    left = sorted(p.name for p in state.glob("*.json")) + sorted(p.name for p in (state / "kernels").glob("*"))
    assert left == []
    again = labrig(state, "down")
    assert again.returncode == 0 and "no cluster was running" in again.stdout
    st = status(state)
    assert st["nodes"] == {} and st["broker"] is None


TINY_RIG = """
schema_version = 1
name = "tiny"

[nodes.gauge1]
kind = "visa"
connection = "visa://TCPIP0::gauge.invalid::5025::SOCKET"

[signals.pressure]
node = "gauge1"
channel = "MEAS:PRES"
unit = "Pa"
"""


def test_a_part_that_fails_is_named_with_its_log_and_the_rest_is_stopped(tmp_path, monkeypatch):
    from labrig.supervisor import cluster as cl
    rig = tmp_path / "tiny.toml"
    rig.write_text(TINY_RIG)
    state = tmp_path / "state"
    # kernels that die at once, saying why, in place of the real ones
    monkeypatch.setattr(cl, "kernel_command", lambda *a, **k: ["-c", "print('no kernel today'); raise SystemExit(3)"])
    with pytest.raises(cl.ClusterError, match=r"(?s)kernel '\w+' exited with code 3.*no kernel today"):
        cl.start_cluster(rig, sim=True, directory=state, broker="none", timeout=30)
    # the world, the simulator and the runtime it had started are gone, and so are their records
    left = [p.pid for p in psutil.process_iter(["cmdline", "status"])
            if str(state) in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE]
    assert left == []
    assert sorted(p.name for p in state.glob("*.json")) == []
    assert cl.stop_cluster(state) == []


def _dying_kernel(tmp_path, message):
    from labrig.supervisor.processes import spawn
    code = f"import sys; print({message!r}, flush=True); sys.exit(1)"
    return spawn(["-c", code], name="kernel-k", log_dir=tmp_path / "logs")


def test_a_kernel_that_lost_its_port_is_started_again(tmp_path):
    """ipykernel binds and releases its heartbeat port before binding it for good: a race we cannot close."""
    from labrig.supervisor.cluster import _connection_files, _wait_kernels
    from labrig.supervisor.processes import spawn
    files = _connection_files(tmp_path / "kernels", ["k"])
    first = _dying_kernel(tmp_path, "zmq.error.ZMQError: Address already in use (addr='tcp://127.0.0.1:1')")
    started = []

    def restart(name):
        _connection_files(tmp_path / "kernels", [name])
        offset = (tmp_path / "logs" / "kernel-k.log").stat().st_size
        proc = spawn(["-m", "ipykernel_launcher", "-f", str(files[name])], name="kernel-k", log_dir=tmp_path / "logs")
        started.append(proc)
        return proc, offset
    try:
        _wait_kernels({"k": (first, files["k"], 0)}, tmp_path / "logs", time.monotonic() + 60, restart)
        assert len(started) == 1  # restarted once, and the new kernel answered
    finally:
        for proc in started:
            proc.kill()
            proc.wait(5)
        first.wait(5)


def test_a_kernel_that_fails_otherwise_is_reported_not_restarted(tmp_path):
    from labrig.supervisor.cluster import ClusterError, _connection_files, _wait_kernels
    files = _connection_files(tmp_path / "kernels", ["k"])
    first = _dying_kernel(tmp_path, "ImportError: no module named labrig.kernels.nope")
    restarted = []
    with pytest.raises(ClusterError, match="(?s)kernel 'k' exited with code 1.*ImportError"):
        _wait_kernels({"k": (first, files["k"], 0)}, tmp_path / "logs", time.monotonic() + 30, restarted.append)
    assert not restarted
    first.wait(5)

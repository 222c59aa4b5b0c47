"""The whole rig on one host, in the background: what `labrig up`, `status` and `down` do.

    record = start_cluster("examples/ishtar/rig.toml", sim=True, directory=state)
    cluster_status(state)["nodes"]["ard1"]["runtime"]     # "online"
    stop_cluster(state)                                   # nothing left running

`up` starts, in this order (each part waits for the one before it):
  1. the MQTT broker (Mosquitto if installed, else the embedded amqtt), unless the
     rig or `broker=` names one (or `broker="none"`: no MQTT at all);
  2. with `sim`, the simulated testbed (reused if one already runs for the state dir);
  3. one runtime per node (`labrig node serve`), ready once `node-NAME.json` names its pid;
  4. one node kernel per node and the supervisor kernel, each with its own connection
     file (loopback, a fresh HMAC key, mode 0600), ready once it answers kernel_info.
Every process runs in its own session, so no process's death takes another with it.
Everything is recorded in the state file `cluster.json`; `down` stops what `up`
started (and only that) in the reverse order: kernels (clients first, or a node
kernel might restart a runtime it sees go), runtimes (SIGTERM: they drive their
outputs safe and publish "offline" while the broker still runs), simulators, broker.
"""
from __future__ import annotations

import concurrent.futures
import fcntl
import json
import os
import secrets
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

from labrig.drivers.errors import ConfigError, LabrigError
from labrig.drivers.urls import parse_url

from .processes import ProcessError, is_ours, log_tail, spawn
from .rig import Rig
from .state import read_state, remove_state, state_dir, write_state

STATE_NAME = "cluster"
BROKER_STATE = "broker"  # where runtimes look for the cluster's broker (runtime.main.broker_url)
SUPERVISOR = "supervisor"

# Popen objects of what this process started, by pid, so stop_cluster in the same process
# can reap them (no zombies, no ResourceWarning); another process's `down` just signals.
_children: dict[int, subprocess.Popen] = {}


class ClusterError(LabrigError):
    """The cluster could not start (the message names the part and its log), or is in the way."""


# ---------------------------------------------------------------- commands of the parts

def runtime_command(rig_path: str, node: str, directory: Path, *, sim: bool, broker: str | None) -> list[str]:
    args = ["-m", "labrig.supervisor.cli", "node", "serve", rig_path, node, "--state-dir", str(directory)]
    if broker:
        args += ["--broker", broker]
    return args + (["--sim"] if sim else [])


def guard_command(rig_path: str, directory: Path, *, broker: str | None) -> list[str]:
    args = ["-m", "labrig.supervisor.cli", "guard", rig_path, "--state-dir", str(directory)]
    return args + (["--broker", broker] if broker else [])


def kernel_command(connection_file: Path | str, rig_path: str, directory: Path | None, *, node: str | None = None,
                   sim: bool = False) -> list[str]:
    """`python -m ...` arguments of a node kernel (node=NAME) or of the supervisor kernel.

    Kernelspecs use the same command with "{connection_file}" (see labrig.kernels.install).
    """
    module = "labrig.kernels.node" if node else "labrig.kernels.supervisor"
    args = ["-m", module, "-f", str(connection_file), "--rig", str(rig_path)]
    if node:
        args += ["--node", node]
    if directory:
        args += ["--state-dir", str(directory)]
    return args + (["--sim"] if sim else [])


def _marker(args: list[str]) -> str:
    # A process is ours if its command line holds exactly these arguments (a reused pid is not).
    return " ".join(args)


# ---------------------------------------------------------------- start

def start_cluster(rig: str | os.PathLike | Rig, *, sim: bool, directory: str | os.PathLike | None = None,
                  broker: str | None = None, kernels: bool = True, timeout: float = 30.0) -> dict[str, Any]:
    """Start broker, simulators (sim), runtimes and kernels; return the record once all answer.

    broker: None (the rig's [broker] url, else start one), a URL (use it), or "none" (no MQTT).
    Raises ClusterError naming the part that failed, with its log's tail, after
    stopping whatever it had started; or if a cluster already runs for `directory`.
    """
    directory = state_dir(directory)
    rig = rig if isinstance(rig, Rig) else Rig.load(rig)
    if rig.path is None:
        raise ConfigError("start_cluster needs a rig loaded from a file (its processes load it by path)")
    if SUPERVISOR in rig.nodes:
        raise ConfigError(f"rig {rig.name!r}: a node may not be called {SUPERVISOR!r} "
                          "(the supervisor kernel's name)")
    if broker is not None and broker != "none":
        parse_url(broker, schemes=("mqtt", "mqtts"))
    with _start_lock(directory):
        existing = read_state(STATE_NAME, directory)
        if existing:
            alive = _alive_parts(existing)
            if alive:
                raise ClusterError(
                    f"a cluster for rig {existing.get('rig_name')!r} already runs ({len(alive)} processes: "
                    f"{', '.join(alive[:3])}{', ...' if len(alive) > 3 else ''}; state in {directory}); "
                    "stop it with `labrig down` first")
            stop_cluster(directory, _locked=True)  # a stale record: clear what is left of it
        return _start(rig, directory, sim=sim, broker=broker, kernels=kernels, timeout=timeout)


def _start(rig: Rig, directory: Path, *, sim: bool, broker: str | None, kernels: bool,
           timeout: float) -> dict[str, Any]:
    log_dir = directory / "logs"
    deadline = time.monotonic() + timeout
    record: dict[str, Any] = {"rig": str(rig.path), "rig_name": rig.name, "sim": sim, "kernels": kernels,
                              "state_dir": str(directory), "started": time.time(), "up_pid": os.getpid(),
                              "broker": None, "started_testbed": False, "nodes": {}, "guard": None,
                              "supervisor": None}
    auth = {"username": rig.spec.broker.username, "password_env": rig.spec.broker.password_env,
            "tls": rig.spec.broker.tls}
    # The record is written after every step, so a `down` after a crashed `up` finds every process.
    write_state(STATE_NAME, record, directory)
    part = "the MQTT broker"
    try:
        runtime_broker = None
        if broker == "none":
            runtime_broker = "none"
        elif broker:
            record["broker"] = {"kind": "external", "pid": None, "url": broker, "started": False}
            runtime_broker = broker
        elif rig.spec.broker.url:
            record["broker"] = {"kind": "external", "pid": None, "url": rig.spec.broker.url, "started": False,
                                **auth}
        else:
            record["broker"] = _own_broker(directory)
        write_state(STATE_NAME, record, directory)

        if sim:
            part = "the simulated testbed"
            from .testbed import running_testbed, start_testbed
            if not running_testbed(directory):
                record["started_testbed"] = True
                write_state(STATE_NAME, record, directory)
                start_testbed(rig, directory=directory, timeout=_left(deadline))

        part = "the node runtimes"
        procs = {}
        for node in rig.nodes:
            args = runtime_command(str(rig.path), node, directory, sim=sim, broker=runtime_broker)
            proc = _spawn(args, name=f"node-{node}", log_dir=log_dir, directory=directory)
            procs[node] = proc
            record["nodes"][node] = {"pid": proc.pid, "cmd": _marker(args),
                                     "log": str(log_dir / f"node-{node}.log")}
        write_state(STATE_NAME, record, directory)
        for node, endpoint in _wait_runtimes(procs, directory, deadline).items():
            record["nodes"][node]["endpoint"] = endpoint
        write_state(STATE_NAME, record, directory)

        part = "the guard"  # leases on every node and the cross-node interlocks, before anyone drives them
        args = guard_command(str(rig.path), directory, broker=runtime_broker)
        proc = _spawn(args, name="guard", log_dir=log_dir, directory=directory)
        record["guard"] = {"pid": proc.pid, "cmd": _marker(args), "log": str(log_dir / "guard.log")}
        write_state(STATE_NAME, record, directory)
        record["guard"]["endpoint"] = _wait_guard(proc, directory, deadline)
        write_state(STATE_NAME, record, directory)

        if kernels:
            part = "the kernels"
            names = [*rig.nodes, SUPERVISOR]
            files = _connection_files(directory / "kernels", names)
            kprocs = {}
            offsets = {}

            def start_kernel(name: str) -> subprocess.Popen:
                node = None if name == SUPERVISOR else name
                args = kernel_command(files[name], str(rig.path), directory, node=node, sim=sim)
                offsets[name] = _log_size(log_dir / f"kernel-{name}.log")  # what this start writes comes after
                proc = _spawn(args, name=f"kernel-{name}", log_dir=log_dir, directory=directory, nice=KERNEL_NICE)
                kprocs[name] = proc
                entry = {"kernel_pid": proc.pid, "kernel_cmd": _marker(args), "connection_file": str(files[name]),
                         "kernel_log": str(log_dir / f"kernel-{name}.log")}
                if node:
                    record["nodes"][node].update(entry)
                else:
                    record["supervisor"] = entry
                write_state(STATE_NAME, record, directory)
                return proc

            def restart_kernel(name: str) -> subprocess.Popen:
                """ipykernel picks its heartbeat port by binding and releasing it: another process can
                take it before the kernel binds it again. Start that kernel afresh, with fresh ports."""
                old = kprocs[name]
                old.kill()
                old.wait(5)
                _connection_files(directory / "kernels", [name])
                return start_kernel(name), offsets[name]

            for name in names:
                start_kernel(name)
            _wait_kernels({n: (kprocs[n], files[n], offsets[n]) for n in names}, log_dir, deadline, restart_kernel)
    except BaseException as exc:  # Ctrl-C included: leave nothing half-started behind
        stop_cluster(directory, _locked=True)
        if isinstance(exc, ClusterError):
            raise
        if isinstance(exc, (LabrigError, OSError)):
            message = str(exc)
            raise ClusterError(message if message.startswith(part) else f"{part} did not start: {message}") from None
        raise
    record["ready"] = time.time()
    write_state(STATE_NAME, record, directory)
    return record


def _left(deadline: float) -> float:
    return max(1.0, deadline - time.monotonic())


# Kernels run below the runtimes in CPU priority: a runaway cell must not delay a ramp or a loop.
KERNEL_NICE = 5


def _spawn(args: list[str], *, name: str, log_dir: Path, directory: Path, nice: int = 0) -> subprocess.Popen:
    proc = spawn(args, name=name, log_dir=log_dir, env={"LABRIG_STATE_DIR": str(directory)}, nice=nice)
    _children[proc.pid] = proc
    return proc


def _own_broker(directory: Path) -> dict[str, Any]:
    """The broker this cluster starts (or one already recorded and running for this state dir)."""
    from .broker import broker_alive, start_broker
    recorded = read_state(BROKER_STATE, directory)
    if recorded and recorded.get("pid") and broker_alive(recorded):
        return {**recorded, "started": False}
    try:
        started = start_broker(directory / "broker", kind="auto")
    except ProcessError as exc:
        raise ClusterError(f"the MQTT broker did not start: {exc}") from None
    write_state(BROKER_STATE, {k: started[k] for k in ("kind", "pid", "url", "config", "log")}, directory)
    return {**started, "started": True}


class _start_lock:
    """One `up` (or `down`) at a time per state directory: an flock held while it works."""

    def __init__(self, directory: Path):
        self.path = directory / "cluster.lock"

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise ClusterError(f"another `labrig up` or `labrig down` (pid {holder}) is at work on {self.path.parent}; "
                               f"try again when it has finished") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # releases the lock


def _wait_runtimes(procs: dict[str, subprocess.Popen], directory: Path, deadline: float) -> dict[str, str]:
    """Wait (all at once, bounded) until each runtime's state file names its pid; their endpoints."""
    from .runtime.main import node_state_name
    endpoints: dict[str, str] = {}
    while True:
        for node, proc in procs.items():
            if node in endpoints:
                continue
            state = read_state(node_state_name(node), directory)
            if state and state.get("pid") == proc.pid:
                endpoints[node] = state["endpoint"]
            elif proc.poll() is not None:
                raise ClusterError(f"the runtime of node {node!r} exited with code {proc.returncode} before it "
                                   f"was ready (`labrig logs {node}`):\n"
                                   + log_tail(directory / "logs" / f"node-{node}.log"))
        if len(endpoints) == len(procs):
            return endpoints
        if time.monotonic() > deadline:
            late = [n for n in procs if n not in endpoints]
            raise ClusterError(f"the runtime of node {late[0]!r} was not ready in time "
                               f"(also late: {', '.join(late[1:]) or 'none'}):\n"
                               + log_tail(directory / "logs" / f"node-{late[0]}.log"))
        time.sleep(0.05)


def _wait_guard(proc: subprocess.Popen, directory: Path, deadline: float) -> str:
    from .guard import GUARD_STATE
    while True:
        state = read_state(GUARD_STATE, directory)
        if state and state.get("pid") == proc.pid:
            return state["endpoint"]
        if proc.poll() is not None or time.monotonic() > deadline:
            how = f"exited with code {proc.returncode}" if proc.poll() is not None else "was not ready in time"
            raise ClusterError(f"the guard {how} (`labrig logs guard`):\n" + log_tail(directory / "logs" / "guard.log"))
        time.sleep(0.05)


def _connection_files(folder: Path, names: list[str]) -> dict[str, Path]:
    """One kernel connection file per name: loopback TCP, a fresh random HMAC key, owner-only.

    The ports are 0: each kernel binds free ports itself and writes them back into its
    file, so no other process can take a port between choosing and binding it.
    (jupyter_client's write_connection_file would choose them here, by binding and
    releasing: exactly that race.)
    """
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    files = {}
    for name in names:
        path = folder / f"{name}.json"
        path.unlink(missing_ok=True)
        info = {"ip": "127.0.0.1", "transport": "tcp", "key": secrets.token_hex(32),
                "signature_scheme": "hmac-sha256", "kernel_name": f"labrig-{name}",
                "shell_port": 0, "iopub_port": 0, "stdin_port": 0, "control_port": 0, "hb_port": 0}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(info, fh, indent=1)
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:  # the key lets anyone who reads it run code as us
            raise ClusterError(f"kernel connection file {path} has mode {mode:o}; it must be 0600")
        files[name] = path
    return files


def _bound_ports(path: Path) -> bool:
    """True once the kernel has written the ports it bound into its connection file."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return all(info.get(k) for k in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"))


PORT_LOST = "Address already in use"
KERNEL_RESTARTS = 3


def _wait_kernels(kernels: dict[str, tuple[subprocess.Popen, Path, int]], log_dir: Path, deadline: float,
                  restart) -> None:
    """Wait (bounded) until every kernel answers a signed kernel_info request on its shell channel.

    `kernels` maps a name to (process, connection file, size of its log before it started).
    A kernel that lost a port to another process (its log says so) is started again by
    `restart(name) -> (process, log size)`, at most KERNEL_RESTARTS times; any other
    failure is reported.
    """
    import zmq
    from jupyter_client.blocking import BlockingKernelClient
    from queue import Empty
    ctx = zmq.Context.instance()
    clients: dict[str, BlockingKernelClient] = {}
    log_start = {name: offset for name, (_, _, offset) in kernels.items()}
    kernels = {name: (proc, path) for name, (proc, path, _) in kernels.items()}
    started = {name: time.monotonic() for name in kernels}
    restarts = dict.fromkeys(kernels, 0)
    try:
        asked: dict[str, float] = {}
        pending = set(kernels)
        while pending:
            for name in sorted(pending):
                proc, path = kernels[name]
                log = log_dir / f"kernel-{name}.log"
                stuck = proc.poll() is not None or time.monotonic() - started[name] > 5.0
                if stuck and restarts[name] < KERNEL_RESTARTS and PORT_LOST in _log_since(log, log_start[name]):
                    if name in clients:
                        clients.pop(name).stop_channels()
                    restarts[name] += 1
                    proc, log_start[name] = restart(name)
                    kernels[name] = (proc, path)
                    started[name] = time.monotonic()
                    asked.pop(name, None)
                    continue
                if name not in clients:
                    if not _bound_ports(path):
                        if proc.poll() is not None:
                            raise ClusterError(f"kernel {name!r} exited with code {proc.returncode} before it "
                                               f"bound its ports:\n" + log_tail(log_dir / f"kernel-{name}.log"))
                        if time.monotonic() > deadline:
                            raise ClusterError(f"kernel {name!r} did not bind its ports in time:\n"
                                               + log_tail(log_dir / f"kernel-{name}.log"))
                        time.sleep(0.02)
                        continue
                    kc = BlockingKernelClient(context=ctx)
                    kc.load_connection_file(str(path))
                    kc.start_channels(iopub=False, stdin=False, hb=False, control=False)
                    clients[name] = kc
                kc = clients[name]
                now = time.monotonic()
                if now - asked.get(name, -10.0) > 2.0:  # queued until the kernel binds; ask again now and then
                    kc.kernel_info()
                    asked[name] = now
                try:
                    reply = kc.get_shell_msg(timeout=0.05)
                except Empty:
                    reply = None
                if reply and reply["msg_type"] == "kernel_info_reply":
                    pending.discard(name)
                elif proc.poll() is not None:
                    raise ClusterError(f"kernel {name!r} exited with code {proc.returncode} before it answered "
                                       f"(`labrig logs kernel-{name}`):\n" + log_tail(log_dir / f"kernel-{name}.log"))
            if pending and time.monotonic() > deadline:
                name = sorted(pending)[0]
                raise ClusterError(f"kernel {name!r} did not answer kernel_info in time (also late: "
                                   f"{', '.join(sorted(pending - {name})) or 'none'}):\n"
                                   + log_tail(log_dir / f"kernel-{name}.log"))
    finally:
        for kc in clients.values():
            kc.stop_channels()


def _log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _log_since(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


# ---------------------------------------------------------------- stop

def _processes(record: dict[str, Any]) -> dict[str, list[tuple[str, int, str]]]:
    """(name, pid, marker) of what the record names, by stopping phase."""
    kernels, runtimes = [], []
    for node, info in record.get("nodes", {}).items():
        if info.get("kernel_pid"):
            kernels.append((f"kernel-{node}", info["kernel_pid"], info["kernel_cmd"]))
        if info.get("pid"):
            runtimes.append((f"node-{node}", info["pid"], info["cmd"]))
    sup = record.get("supervisor") or {}
    if sup.get("kernel_pid"):
        kernels.insert(0, (f"kernel-{SUPERVISOR}", sup["kernel_pid"], sup["kernel_cmd"]))
    guard = record.get("guard") or {}
    guards = [("guard", guard["pid"], guard["cmd"])] if guard.get("pid") else []
    return {"kernels": kernels, "guard": guards, "runtimes": runtimes}


def _alive_parts(record: dict[str, Any]) -> list[str]:
    from .broker import broker_alive
    from .testbed import running_testbed
    alive = [name for group in _processes(record).values() for name, pid, marker in group if is_ours(pid, marker)]
    directory = Path(record["state_dir"])
    if record.get("started_testbed") and running_testbed(directory):
        alive.append("simulators")
    broker = record.get("broker") or {}
    if broker.get("started") and broker_alive(broker):
        alive.append("broker")
    return alive


def _terminate(procs: list[tuple[str, int, str]], *, timeout: float = 5.0) -> list[str]:
    """SIGTERM all at once, wait (bounded), SIGKILL what is left. Names of those that were running."""
    live = [(name, pid, marker) for name, pid, marker in procs if is_ours(pid, marker)]
    for _, pid, _ in live:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for sig, wait in ((None, timeout), (signal.SIGKILL, 3.0)):
        if sig:
            for _, pid, marker in live:
                if is_ours(pid, marker):
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
        end = time.monotonic() + wait
        while time.monotonic() < end and any(_running(pid, marker) for _, pid, marker in live):
            time.sleep(0.02)
        if not any(_running(pid, marker) for _, pid, marker in live):
            break
    return [name for name, _, _ in live]


def _running(pid: int, marker: str) -> bool:
    proc = _children.get(pid)
    if proc is not None and proc.poll() is not None:  # ours and exited: reaped by poll()
        _children.pop(pid, None)
        return False
    return is_ours(pid, marker)


def stop_cluster(directory: str | os.PathLike | None = None, *, _locked: bool = False) -> list[str]:
    """Stop everything `start_cluster` started for `directory`; names of what was running.

    Idempotent: with nothing recorded it returns []. Parts it did not start (an external
    broker, a testbed that already ran) are left alone.
    """
    directory = state_dir(directory)
    if not _locked:
        with _start_lock(directory):
            return stop_cluster(directory, _locked=True)
    record = read_state(STATE_NAME, directory)
    if not record:
        return []
    from .broker import stop_broker
    from .runtime.main import node_state_name
    from .testbed import stop_testbed
    record["nodes"] = {node: _current_runtime(node, info, directory) for node, info in record.get("nodes", {}).items()}
    groups = _processes(record)
    stopped = _terminate(groups["kernels"])
    stopped += _terminate(groups["guard"])  # it gives its leases back
    stopped += _terminate(groups["runtimes"], timeout=8.0)  # they drive outputs safe first
    for node, info in record.get("nodes", {}).items():
        state = read_state(node_state_name(node), directory)
        if state and state.get("pid") == info.get("pid"):  # left behind by a killed runtime
            remove_state(node_state_name(node), directory)
        if info.get("connection_file"):
            Path(info["connection_file"]).unlink(missing_ok=True)
    if (record.get("supervisor") or {}).get("connection_file"):
        Path(record["supervisor"]["connection_file"]).unlink(missing_ok=True)
    if record.get("started_testbed"):
        stopped += [f"sim-{name}" for name in stop_testbed(directory)]
    broker = record.get("broker") or {}
    if broker.get("started"):
        if stop_broker(broker):
            stopped.append(f"broker ({broker['kind']})")
        recorded = read_state(BROKER_STATE, directory)
        if recorded and recorded.get("pid") == broker.get("pid"):
            remove_state(BROKER_STATE, directory)
    remove_state(STATE_NAME, directory)
    return stopped


# ---------------------------------------------------------------- status

def cluster_status(directory: str | os.PathLike | None = None, *, timeout: float = 1.0) -> dict[str, Any]:
    """What runs, asked of every part at once; returns within about `timeout` + 1 s, up or down.

    runtime online: it answered a ping within `timeout`. kernel online: its pid runs
    and its heartbeat channel echoes. heartbeat_age: from the retained MQTT heartbeat
    when the cluster has a broker, else from the ping's answer.
    """
    directory = state_dir(directory)
    record = read_state(STATE_NAME, directory)
    if not record:
        return {"rig": None, "rig_path": None, "broker": None, "simulators": {}, "nodes": {}, "supervisor": None}
    from .testbed import testbed_status
    nodes = {node: _current_runtime(node, info, directory) for node, info in record.get("nodes", {}).items()}
    broker = record.get("broker")
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(nodes) + 3, thread_name_prefix="status") as pool:
        pings = {node: pool.submit(_ping, node, info.get("endpoint"), timeout) for node, info in nodes.items()}
        kernels = pool.submit(_kernel_beats, record, timeout)
        beats = pool.submit(_mqtt_heartbeats, broker, record["rig_name"], list(nodes), timeout) if broker else None
        broker_up = pool.submit(_broker_alive, broker, timeout) if broker else None
        sims = testbed_status(directory)
        kernel_up = kernels.result()
        heard, trips = beats.result() if beats else ({}, {})
        now = time.time()
        out_nodes = {}
        for node, info in nodes.items():
            reply = pings[node].result()
            age = None
            if node in heard and isinstance(heard[node].get("t", heard[node].get("time")), (int, float)):
                age = max(0.0, now - heard[node].get("t", heard[node].get("time")))
            elif not broker and reply and isinstance(reply.get("time"), (int, float)):
                age = max(0.0, now - reply["time"])
            out_nodes[node] = {
                "runtime": "online" if reply is not None else "offline",
                "kernel": "online" if kernel_up.get(node) else "offline",
                "pid": info.get("pid"), "kernel_pid": info.get("kernel_pid"), "endpoint": info.get("endpoint"),
                "connection_file": info.get("connection_file"),
                "heartbeat_age": None if age is None else round(age, 3),
                "trips": trips.get(node, heard.get(node, {}).get("trips", [])) or [],
            }
        broker_out = None
        if broker:
            broker_out = {"kind": broker.get("kind"), "pid": broker.get("pid"), "url": broker.get("url"),
                          "alive": broker_up.result()}
    sup = record.get("supervisor")
    from .guard import guard_record
    guard_live = guard_record(directory)
    guard_out = None
    if record.get("guard"):
        guard_out = {"pid": guard_live["pid"] if guard_live else None, "online": False, "trips": [],
                     "endpoint": guard_live["endpoint"] if guard_live else None}
        if guard_live:
            from .runtime.client import RuntimeClient
            try:
                with RuntimeClient(guard_live["endpoint"], node="guard", timeout=timeout,
                                   client=f"labrig-status-{os.getpid()}") as client:
                    guard_out.update(online=True, trips=[t["interlock"] for t in client.trips()])
            except LabrigError:
                pass
    return {
        "rig": record.get("rig_name"), "rig_path": record.get("rig"), "sim": record.get("sim"),
        "started": record.get("started"),
        "broker": broker_out,
        "simulators": {name: {"pid": info.get("pid"), "alive": info.get("alive")} for name, info in sims.items()},
        "nodes": out_nodes,
        "guard": guard_out,
        "supervisor": None if not sup else {"kernel": "online" if kernel_up.get(SUPERVISOR) else "offline",
                                            "kernel_pid": sup.get("kernel_pid"),
                                            "connection_file": sup.get("connection_file")},
    }


def _current_runtime(node: str, info: dict[str, Any], directory: Path) -> dict[str, Any]:
    """The node's entry with the pid and endpoint of the runtime running now (it may have been restarted)."""
    from .runtime.locate import runtime_record
    live = runtime_record(node, directory)
    if live and live.get("pid") != info.get("pid"):
        # a runtime started by `labrig node serve` or a node kernel: both command lines hold this
        return {**info, "pid": live["pid"], "endpoint": live["endpoint"], "cmd": f"{node} --state-dir {directory}"}
    return info


def _ping(node: str, endpoint: str | None, timeout: float) -> dict | None:
    from .runtime.client import RuntimeClient
    if not endpoint:
        return None
    try:
        with RuntimeClient(endpoint, node=node, timeout=timeout, client=f"labrig-status-{os.getpid()}") as client:
            return client.ping()
    except LabrigError:
        return None


def _kernel_beats(record: dict[str, Any], timeout: float) -> dict[str, bool]:
    """Kernel name -> its pid runs and its heartbeat channel echoed within `timeout` (all at once)."""
    import zmq
    candidates = {node: info for node, info in record.get("nodes", {}).items() if info.get("kernel_pid")}
    if (record.get("supervisor") or {}).get("kernel_pid"):
        candidates[SUPERVISOR] = record["supervisor"]
    ctx = zmq.Context.instance()
    socks: dict[Any, str] = {}
    up = {name: False for name in candidates}
    poller = zmq.Poller()
    try:
        for name, info in candidates.items():
            if not is_ours(info["kernel_pid"], info["kernel_cmd"]):
                continue
            try:
                conn = json.loads(Path(info["connection_file"]).read_text())
            except (OSError, ValueError):
                continue
            sock = ctx.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(f"{conn['transport']}://{conn['ip']}:{conn['hb_port']}")
            sock.send(b"ping")
            socks[sock] = name
            poller.register(sock, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        waiting = set(socks)
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for sock, _ in poller.poll(int(left * 1000) + 1):
                if sock.recv() == b"ping":
                    up[socks[sock]] = True
                poller.unregister(sock)
                waiting.discard(sock)
    finally:
        for sock in socks:
            sock.close(0)
    return up


def _mqtt_heartbeats(broker: dict[str, Any], rig: str, nodes: list[str],
                     timeout: float) -> tuple[dict[str, dict], dict[str, Any]]:
    """The retained heartbeats (and trips) of the rig's nodes that arrive within `timeout`."""
    from .heartbeats import monitor_or_none
    monitor = monitor_or_none(rig, broker, client="labrig-status", timeout=max(timeout, 0.5))
    if monitor is None:
        return {}, {}
    try:
        if monitor.wait_for(nodes, timeout):
            time.sleep(0.05)  # retained trips come in the same burst
        return dict(monitor.beats), dict(monitor.published_trips)
    finally:
        monitor.close(timeout=1.0)


def _broker_alive(broker: dict[str, Any], timeout: float) -> bool:
    if broker.get("pid"):
        from .broker import broker_alive
        return broker_alive(broker)
    try:  # an external broker: does it accept a connection?
        url = parse_url(broker["url"], schemes=("mqtt", "mqtts"))
        port = url.port or (8883 if url.scheme == "mqtts" else 1883)
        with socket.create_connection((url.host, port), timeout=timeout):
            return True
    except (OSError, LabrigError):
        return False

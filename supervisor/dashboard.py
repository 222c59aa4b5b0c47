"""`labrig dashboard RIG`: the control-room view, the packaged notebook served by Voila.

    server = start_dashboard("examples/ishtar/rig.toml", directory=state)   # returns once Voila listens
    server.url                                                              # http://127.0.0.1:8866/
    server.stop()                                                           # Voila and its kernels, gone

Voila runs as its own process (`python -m voila`); every page it serves runs the
notebook `labrig.kernels.dashboard/dashboard.ipynb` in a fresh labrig-supervisor
kernel of this rig (where `rig` exists), whose kernelspec is installed under the
state dir and found through JUPYTER_PATH, so no user-wide kernelspec is touched.
The supervisor never imports the kernels package: the kernelspec is installed by
`labrig kernel install` as a process, and the notebook is a data file of the package.

It binds loopback by default. Any other interface needs a token: whoever opens the
page can press every knob and the emergency stop. The token goes to Voila in a
private config file, never on a command line that `ps` shows.
"""
from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import Callable

from labrig.drivers.errors import ConfigError

from .cluster import STATE_NAME, ClusterError, cluster_status
from .processes import ProcessError, log_tail, stop_pid, wait_listening
from .rig import Rig
from .state import read_state, state_dir

DEFAULT_PORT = 8866  # Voila's own default
NOTEBOOK = ("labrig.kernels.dashboard", "dashboard.ipynb")
START_TIMEOUT = 60.0  # s until Voila listens (it imports jupyter_server, nbconvert...: slow on a loaded host)
STOP_TIMEOUT = 20.0  # s Voila gets to shut its kernels down before it is killed
CELL_TIMEOUT = 60  # s a page's cell may run (a node that never answers fails the page, not forever)
IOPUB_TIMEOUT = 30  # s the page waits for the cell's output once the cell has run


def notebook_path() -> Path:
    """The dashboard notebook shipped in the package (package data, not code: nothing of it is imported here)."""
    path = Path(str(resources.files(NOTEBOOK[0]).joinpath(NOTEBOOK[1])))
    if not path.is_file():
        raise ConfigError(f"the dashboard notebook {NOTEBOOK[1]} is missing from {NOTEBOOK[0]}: reinstall labrig")
    return path


def bind_token(ip: str, token: str | None) -> str | None:
    """The token the page needs (None: no token), checking that only loopback goes without one.

    token "auto" generates one."""
    if ip != "localhost":
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            raise ConfigError(f"--ip {ip!r} is not an IP address; give 127.0.0.1 (the default), ::1, or the "
                              "address of one of this host's interfaces (with --token)") from None
    loopback = ip == "localhost" or address.is_loopback
    if token == "auto":
        return secrets.token_urlsafe(24)
    if token is not None and not token.strip():
        raise ConfigError("--token is empty; give a token, or --token auto to generate one")
    if token is None and not loopback:
        raise ConfigError(f"the dashboard would listen on {ip}, beyond this host: whoever opens it can turn every "
                          "knob, so it needs a token: --token TOKEN (or $LABRIG_DASHBOARD_TOKEN), or --token auto "
                          "to generate one (printed in the URL)")
    return token


def require_cluster(rig: Rig, directory: Path) -> dict:
    """The running cluster of this rig in `directory` (its record), or a ClusterError that says what to do."""
    record = read_state(STATE_NAME, directory)
    start = f"start it with `labrig up {rig.path or 'RIG'} --sim` (or without --sim on the real machine) first"
    if not record:
        raise ClusterError(f"no cluster runs for rig {rig.name!r} (state in {directory}): {start}")
    if record.get("rig_name") != rig.name:
        raise ClusterError(f"the cluster in {directory} runs rig {record.get('rig_name')!r}, not {rig.name!r}: "
                           f"give its rig file ({record.get('rig')}), or `labrig down` and {start}")
    status = cluster_status(directory, timeout=1.0)
    if not any(n["runtime"] == "online" for n in status["nodes"].values()):
        raise ClusterError(f"the cluster of rig {rig.name!r} in {directory} does not answer (no node runtime "
                           f"online): `labrig down`, then {start}")
    return record


def claim_port(ip: str, port: int) -> int:
    """`port` if nothing listens on it (0: a free one), else a ConfigError (another dashboard, perhaps)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Voila's server binds it
        try:
            sock.bind((ip if ip != "localhost" else "127.0.0.1", port))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {ip}:{port} ({exc.strerror}; another dashboard?): "
                              "give another --port, or --port 0 for any free one") from None
        return sock.getsockname()[1]


class DashboardServer:
    """A running Voila serving the dashboard; `stop()` ends it and every kernel it started."""

    def __init__(self, proc: subprocess.Popen, *, url: str, folder: Path, log: Path):
        self.proc, self.url, self.folder, self.log = proc, url, folder, log

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM (Voila shuts its kernels down), SIGKILL after `timeout`; then any kernel left is stopped."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        # kernels of a Voila that could not shut them down: their connection files live in our folder
        for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
            stop_pid(pid, marker=str(self.folder))  # only a process whose command line names the folder
        shutil.rmtree(self.folder, ignore_errors=True)  # the token's config file goes with it

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def start_dashboard(rig_path: str | os.PathLike, *, directory: str | os.PathLike | None = None,
                    ip: str = "127.0.0.1", port: int = DEFAULT_PORT, token: str | None = None,
                    timeout: float = START_TIMEOUT) -> DashboardServer:
    """Start Voila on the dashboard notebook for the running cluster of this rig; returns once it listens.

    port 0: any free port. token: see bind_token. Raises ConfigError (bad options), ClusterError (no cluster
    of this rig runs), ProcessError (Voila did not start: its log's tail)."""
    directory = state_dir(directory)
    rig = Rig.load(rig_path)
    token = bind_token(ip, token)
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: give a TCP port 1..65535, or 0 for any free one")
    notebook = notebook_path()
    record = require_cluster(rig, directory)
    port = claim_port(ip, port)

    base = directory / "dashboard"
    prefix = base / "jupyter"  # the kernelspecs (shared by this state dir's dashboards)
    _install_kernelspecs(Path(rig.path), prefix, directory, sim=bool(record.get("sim")))
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    # this server's own folder: its config (the token) and its kernels' connection files, whose paths mark
    # its kernels (stop() ends what names it, and only that)
    folder = Path(tempfile.mkdtemp(prefix=f"{port}-", dir=base))
    (folder / "config").mkdir(mode=0o700)
    (folder / "runtime").mkdir(mode=0o700)
    config = {"Voila": {"token": token}} if token else {}
    fd = os.open(folder / "config" / "voila.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(config, fh)

    log = directory / "logs" / "dashboard.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "voila", str(notebook), "--no-browser",
            f"--Voila.ip={ip}", f"--Voila.port={port}", "--Voila.port_retries=0",  # this port, or a clear failure
            f"--Voila.connection_dir_root={folder / 'runtime'}",
            "--VoilaConfiguration.strip_sources=True", "--VoilaConfiguration.show_tracebacks=False",
            f"--VoilaExecutor.timeout={CELL_TIMEOUT}",
            # nbclient waits only 4 s for a cell's output after its reply: on a loaded host the panel's display
            # message comes later, and the page would show nothing
            f"--VoilaExecutor.iopub_timeout={IOPUB_TIMEOUT}"]
    env = {**os.environ, "LABRIG_STATE_DIR": str(directory),
           "JUPYTER_PATH": os.pathsep.join(filter(None, [str(prefix / "share" / "jupyter"),
                                                         os.environ.get("JUPYTER_PATH")])),
           "JUPYTER_CONFIG_DIR": str(folder / "config"),  # our voila.json only, not the user's
           "JUPYTER_RUNTIME_DIR": str(folder / "runtime")}
    offset = log.stat().st_size if log.exists() else 0
    with open(log, "ab") as out:
        # its own session: a Ctrl-C reaches `labrig dashboard`, which then stops Voila in order
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                cwd=folder / "config", env=env, start_new_session=True)
    server = DashboardServer(proc, url=_url(ip, port, token), folder=folder, log=log)
    try:
        wait_listening(proc, {"0.0.0.0": "127.0.0.1", "::": "::1", "localhost": "127.0.0.1"}.get(ip, ip), port,
                       name="the dashboard's Voila", timeout=timeout, describe=lambda: _log_since(log, offset))
    except BaseException:
        server.stop()
        raise
    return server


def serve_dashboard(rig_path: str | os.PathLike, *, echo: Callable[[str], None] = print, **options) -> None:
    """What `labrig dashboard` does: start, print the URL, serve until Ctrl-C or SIGTERM, then stop everything."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)  # from the start: a SIGTERM while Voila starts stops it too
    try:
        server = start_dashboard(rig_path, **options)
        try:
            echo(f"dashboard: {server.url}")
            echo(f"(Voila, pid {server.proc.pid}; log {server.log}; Ctrl-C stops it)")
            code = server.proc.wait()
            raise ProcessError(f"the dashboard's Voila exited with code {code}:\n{log_tail(server.log)}")
        finally:
            # a second Ctrl-C or SIGTERM must not cut the stop short (it is bounded by itself)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            before = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                server.stop()
            finally:
                signal.signal(signal.SIGINT, before)
    except KeyboardInterrupt:
        pass  # asked to stop; whatever was started is stopped (start_dashboard cleans up after itself too)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _install_kernelspecs(rig_path: Path, prefix: Path, directory: Path, *, sim: bool) -> None:
    args = [sys.executable, "-m", "labrig.supervisor.cli", "kernel", "install", str(rig_path.resolve()),
            "--prefix", str(prefix), "--state-dir", str(directory)] + (["--sim"] if sim else [])
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise ProcessError("installing the dashboard's kernelspecs took over 60 s") from None
    if done.returncode != 0:
        raise ProcessError(f"installing the dashboard's kernelspecs failed: {done.stderr.strip() or done.stdout}")


def _url(ip: str, port: int, token: str | None) -> str:
    host = ip
    if ip in ("0.0.0.0", "::"):  # every interface: show the name others reach this host by
        host = socket.gethostname()
    elif ":" in ip:
        host = f"[{ip}]"
    return f"http://{host}:{port}/" + (f"?token={token}" if token else "")


def _log_since(log: Path, offset: int) -> str:
    try:
        with open(log, "rb") as fh:
            fh.seek(offset)
            lines = fh.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(lines[-15:]) or "(nothing logged)"

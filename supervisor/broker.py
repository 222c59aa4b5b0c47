"""The rig's MQTT broker, started in the background: Mosquitto, or the embedded amqtt.

    record = start_broker(directory)          # Mosquitto if installed, else amqtt
    record["url"]                             # "mqtt://127.0.0.1:PORT"
    stop_broker(record)

Mosquitto is configured for a control system, not a chat server:
`set_tcp_nodelay true` (QoS 0 p99 latency 22 ms -> 0.8 ms measured here) and
`max_queued_messages 0` (the default 1000 silently drops QoS 1/2 messages to a
slow subscriber). With `users`, a password file (hashed by mosquitto_passwd) and
no anonymous access; with `acl`, that text as its ACL file.

Started as root, Mosquitto drops privileges to the user `mosquitto` before it
opens its log, password and ACL files, and then cannot read them in a private
(0700) directory such as pytest's tmp dirs. So when we run as root the config
says `user <owner of the directory>`: the broker runs as whoever owns its files
(root for root's directories). As an ordinary user the option is ignored.

The amqtt fallback runs as its own process too:
`python -m labrig.supervisor.broker amqtt --host H --port P --ready FILE`.
It has no credentials or ACLs here: those need Mosquitto.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from labrig.drivers.errors import ConfigError
from labrig.supervisor.processes import ProcessError, is_ours, log_tail, spawn, stop_pid, wait_listening, wait_ready

KINDS = ("auto", "mosquitto", "amqtt")

# Popen objects of the brokers this process started, by pid: kept so that stop_broker
# can reap them (no zombies, no "still running" ResourceWarning when they are collected).
_children: dict[int, subprocess.Popen] = {}


def mosquitto_binary() -> str | None:
    """The Mosquitto executable, or None. /usr/sbin is not on an ordinary user's PATH."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS has just given us on `host` (bound, read, closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_broker(directory: Path, *, kind: str = "auto", host: str = "127.0.0.1", port: int = 0,
                 users: dict[str, str] | None = None, acl: str | None = None,
                 timeout: float = 10.0) -> dict:
    """Start a broker in its own session; return once it accepts connections.

    Returns {"kind": "mosquitto"|"amqtt", "pid", "url", "config", "log"}.
    Raises ConfigError for bad options, ProcessError (with the log's tail) if the
    broker exits or does not listen within `timeout` s.
    """
    if kind not in KINDS:
        raise ConfigError(f"broker kind {kind!r} is not known; allowed: {', '.join(KINDS)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    binary = mosquitto_binary()
    if kind == "auto":
        kind = "mosquitto" if binary else "amqtt"
    if kind == "mosquitto" and not binary:
        raise ConfigError("broker kind 'mosquitto': the mosquitto binary is not installed "
                          "(apt install mosquitto), or use kind 'amqtt'")
    if kind == "amqtt" and (users or acl):
        raise ConfigError("broker kind 'amqtt': users and acl need Mosquitto (apt install mosquitto)")
    port = port or free_port(host)
    # Clients on this host reach a broker bound to every interface through loopback.
    connect_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    if kind == "mosquitto":
        return _start_mosquitto(binary, directory, host, connect_host, port, users, acl, timeout)
    return _start_amqtt(directory, host, connect_host, port, timeout)


def _start_mosquitto(binary: str, directory: Path, host: str, connect_host: str, port: int,
                     users: dict[str, str] | None, acl: str | None, timeout: float) -> dict:
    config = directory / "mosquitto.conf"
    log = directory / "mosquitto.log"
    lines = [
        "# written by labrig.supervisor.broker",
        f"listener {port} {host}",
        "set_tcp_nodelay true",
        "max_queued_messages 0",  # 0 = no limit: never drop QoS>0 messages silently
        "persistence false",
        f"log_dest file {log}",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        f"allow_anonymous {'false' if users else 'true'}",
    ]
    if os.geteuid() == 0:
        lines.append(f"user {pwd.getpwuid(directory.stat().st_uid).pw_name}")
    if users:
        lines.append(f"password_file {_password_file(directory, users)}")
    if acl is not None:
        acl_path = directory / "mosquitto.acl"
        acl_path.write_text(acl if acl.endswith("\n") else acl + "\n")
        lines.append(f"acl_file {acl_path}")
    config.write_text("\n".join(lines) + "\n")
    # Errors before the log file opens (a bad config line) go to stderr.
    stderr_path = directory / "mosquitto.stderr"
    with open(stderr_path, "ab") as err:
        proc = subprocess.Popen([binary, "-c", str(config)], stdin=subprocess.DEVNULL,
                                stdout=err, stderr=subprocess.STDOUT, start_new_session=True)
    _children[proc.pid] = proc
    record = {"kind": "mosquitto", "pid": proc.pid, "url": f"mqtt://{connect_host}:{port}",
              "config": str(config), "log": str(log)}
    try:
        wait_listening(proc, connect_host, port, name="mosquitto", timeout=timeout, interval=0.02,
                       describe=lambda: "\n".join(log_tail(p) for p in (log, stderr_path)))
    except BaseException:
        stop_broker(record)
        raise
    return record


def _password_file(directory: Path, users: dict[str, str]) -> Path:
    """A Mosquitto password file: plain `user:password` lines, hashed in place (-U)."""
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    for name, password in users.items():
        if not name or ":" in name or "\n" in name + password:
            raise ConfigError(f"broker user {name!r}: a user name must be non-empty without ':' "
                              "and neither name nor password may hold a newline")
    path = directory / "mosquitto.passwd"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.writelines(f"{name}:{password}\n" for name, password in users.items())
    try:
        subprocess.run([tool, "-U", str(path)], check=True, capture_output=True, timeout=10)
    except FileNotFoundError:
        raise ConfigError("broker users: mosquitto_passwd is not installed (apt install mosquitto)") from None
    except subprocess.CalledProcessError as exc:
        raise ProcessError(f"mosquitto_passwd -U {path} failed: {exc.stderr.decode(errors='replace')}") from None
    return path


def _start_amqtt(directory: Path, host: str, connect_host: str, port: int, timeout: float) -> dict:
    ready = directory / "amqtt.ready.json"
    ready.unlink(missing_ok=True)
    proc = spawn(["-m", "labrig.supervisor.broker", "amqtt", "--host", host, "--port", str(port),
                  "--ready", str(ready)], name="amqtt", log_dir=directory)
    _children[proc.pid] = proc
    # The ready file also holds the effective amqtt configuration, so it is the record's "config".
    record = {"kind": "amqtt", "pid": proc.pid, "url": f"mqtt://{connect_host}:{port}",
              "config": str(ready), "log": str(directory / "amqtt.log")}
    try:
        # Written after broker.start() has bound the listener: it accepts connections from here on.
        wait_ready(proc, ready, name="amqtt", timeout=timeout, log_dir=directory)
    except BaseException:
        stop_broker(record)
        raise
    return record




def _marker(record: dict) -> str:
    # Unique to this broker's command line (its config or ready file path): a reused pid is not ours.
    return record["config"]


def broker_alive(record: dict) -> bool:
    """True while the broker process of `record` runs (a reused pid does not count)."""
    return is_ours(int(record["pid"]), _marker(record))


def stop_broker(record: dict, *, timeout: float = 3.0) -> bool:
    """SIGTERM the broker (SIGKILL after `timeout`), reap it. True if it was running."""
    pid = int(record["pid"])
    stopped = stop_pid(pid, marker=_marker(record), timeout=timeout)
    proc = _children.pop(pid, None)
    if proc is not None:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:  # not ours any more, yet alive: leave it, say so
            raise ProcessError(f"broker pid {pid} did not exit within {timeout:g} s") from None
    return stopped


# --- the embedded broker's process -------------------------------------------------------------

def amqtt_config(host: str, port: int) -> dict:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        # Only anonymous auth: the default $SYS and per-packet logging plugins cost throughput.
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


async def _serve_amqtt(host: str, port: int, ready: Path) -> None:
    from amqtt.broker import Broker

    config = amqtt_config(host, port)
    broker = Broker(config)
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tmp = ready.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"kind": "amqtt", "pid": os.getpid(), "url": f"mqtt://{host}:{port}",
                               "config": config}))
    tmp.replace(ready)  # atomic: the starter never reads half a file
    try:
        await stop.wait()
    finally:
        await asyncio.wait_for(broker.shutdown(), 5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labrig.supervisor.broker")
    sub = parser.add_subparsers(dest="kind", required=True)
    amqtt = sub.add_parser("amqtt", help="run the embedded amqtt broker")
    amqtt.add_argument("--host", default="127.0.0.1")
    amqtt.add_argument("--port", type=int, required=True)
    amqtt.add_argument("--ready", type=Path, required=True, help="JSON file written once listening")
    args = parser.parse_args(argv)
    asyncio.run(_serve_amqtt(args.host, args.port, args.ready))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`labrig node serve RIG NODE`: run one node's runtime in this process until SIGTERM.

Writes `node-NAME.json` (pid, endpoint) into the state directory once it
listens, so clients, `labrig status` and `labrig down` find it; removes it on exit.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

from labrig.drivers.errors import ConfigError

from ..realtime import use_realtime
from ..rig import Rig
from ..state import read_state, remove_state, state_dir, write_state
from .server import NodeRuntime

log = logging.getLogger("labrig.node")


def node_state_name(node: str) -> str:
    return f"node-{node}"


def topic(rig: str, node: str, suffix: str) -> str:
    return f"labrig/{rig}/{node}/{suffix}"


def broker_url(rig: Rig, directory: Path, override: str | None) -> str | None:
    """The broker a node publishes to: --broker, else the rig's [broker] url, else the cluster's own."""
    if override:
        return None if override == "none" else override
    if rig.spec.broker.url:
        return rig.spec.broker.url
    record = read_state("broker", directory)
    return record["url"] if record else None


def load_curve_keys(directory: str | None) -> tuple[bytes | None, bytes | None]:
    if not directory:
        return None, None
    import zmq.auth
    path = Path(directory) / "server.key_secret"
    if not path.exists():
        raise ConfigError(f"no CurveZMQ server key at {path}; make one with `labrig keys generate {directory}`")
    public, secret = zmq.auth.load_certificate(str(path))
    return secret, public


def open_publisher(rig: Rig, part: str, url: str | None):
    """(publisher or None, publish(suffix, payload, retain)) for `labrig/<rig>/<part>/<suffix>`; the
    broker's last will marks the part offline."""
    if not url:
        return None, lambda suffix, payload, retain: None
    from ..mqtt import MqttPublisher
    username = rig.spec.broker.username or None
    password = os.environ.get(rig.spec.broker.password_env) if rig.spec.broker.password_env else None
    publisher = MqttPublisher(url, client_id=f"labrig-{rig.name}-{part}-{os.getpid()}",
                              will=(topic(rig.name, part, "status"), b"offline", True),
                              username=username, password=password, tls=rig.spec.broker.tls)

    def publish(suffix, payload, retain):
        # retained state (status, heartbeat, trips) at QoS 1; telemetry batches at QoS 0
        publisher.publish(topic(rig.name, part, suffix), payload, retain=retain, qos=1 if retain else 0)
    return publisher, publish


def serve_node(rig_path: str, node: str, *, sim: bool = False, directory: Path | None = None,
               bind: str = "127.0.0.1", port: int = 0, broker: str | None = None,
               curve_keys: str | None = None, ready: threading.Event | None = None,
               stop: threading.Event | None = None) -> int:
    directory = directory or state_dir()
    rig = Rig.load(rig_path)
    spec = rig.node(node)
    sim_state = read_state("sim", directory)
    secret, public = load_curve_keys(curve_keys)
    url = broker_url(rig, directory, broker)
    publisher, publish = open_publisher(rig, node, url)

    driver = None
    # real-time scheduling is the process's: only a runtime that is its process's main thread asks
    embedded = threading.current_thread() is not threading.main_thread()
    scheduling = use_realtime(None if embedded else spec.realtime, what=f"node {node}")
    try:
        driver = rig.open_driver(node, sim=sim, sim_state=sim_state)
        runtime = NodeRuntime(rig, node, driver, bind=bind, port=port, curve_secret_key=secret,
                              curve_public_key=public, publish=publish,
                              audit_path=directory / "audit" / f"{node}.jsonl")
        runtime.realtime_refused = scheduling.get("refused")
    except Exception:
        if driver is not None:
            driver.close()
        if publisher:
            publisher.close()
        raise
    write_state(node_state_name(node), {"node": node, "kind": spec.kind, "pid": os.getpid(),
                                        "endpoint": runtime.endpoint, "rig": str(rig.path), "rig_name": rig.name,
                                        "url": driver.url, "broker": url, "started": time.time(),
                                        "public_key": public.decode() if public else None, "realtime": scheduling},
                directory)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: runtime.stop())
        signal.signal(signal.SIGINT, lambda *_: runtime.stop())
    threading.Thread(target=lambda: (stop.wait(), runtime.stop()), daemon=True, name="stop-watch").start()
    log.info("node %s serving on %s (driver %s, broker %s)", node, runtime.endpoint, driver.url, url)
    if ready:
        ready.set()
    try:
        runtime.serve()
    finally:
        stop.set()
        runtime.close()
        if publisher:
            publisher.close()
        record = read_state(node_state_name(node), directory)
        if record and record.get("pid") == os.getpid():
            remove_state(node_state_name(node), directory)
    return 0

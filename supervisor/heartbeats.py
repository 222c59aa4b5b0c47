"""What the nodes of a rig say about themselves over MQTT: heartbeats, status, trips.

One subscription to `labrig/<rig>/+/{heartbeat,status,trips}` (all retained), kept
current: the supervisor kernel holds one for its life, `labrig status` for a moment.
"""
from __future__ import annotations

import json
import os
import threading
import uuid
from typing import Any

from labrig.drivers.errors import LabrigError

from .mqtt import MqttSubscriber, topic


class HeartbeatMonitor:
    def __init__(self, rig: str, broker: dict[str, Any], *, client: str = "labrig", timeout: float = 5.0):
        """`broker`: {"url", and optionally "username", "password_env", "tls"}. Raises LabrigError if unreachable."""
        self.rig = rig
        self.beats: dict[str, dict] = {}  # node -> its last heartbeat message
        self.published_trips: dict[str, Any] = {}  # node -> its retained trips message
        self.status: dict[str, str] = {}  # node -> "online" | "offline" (clean exit or last will)
        self._changed = threading.Condition()
        password = os.environ.get(broker["password_env"]) if broker.get("password_env") else None
        self._subscriber = MqttSubscriber(
            broker["url"], [topic(rig, "+", kind) for kind in ("heartbeat", "status", "trips")], self._on_message,
            client_id=f"{client}-{os.getpid()}-{uuid.uuid4().hex[:8]}", username=broker.get("username") or None,
            password=password, tls=bool(broker.get("tls")), timeout=timeout)

    def _on_message(self, name: str, payload: bytes) -> None:
        parts = name.split("/")
        if len(parts) != 4:
            return
        node, kind = parts[2], parts[3]
        if kind == "status":
            self.status[node] = payload.decode(errors="replace")
            return
        try:
            data = json.loads(payload) if payload else None
        except ValueError:
            return
        with self._changed:
            if kind == "heartbeat" and isinstance(data, dict):
                self.beats[node] = data
            elif kind == "trips":
                self.published_trips[node] = data.get("trips", data) if isinstance(data, dict) else data
            self._changed.notify_all()

    def wait_for(self, nodes, timeout: float) -> bool:
        """Wait (bounded) until every node's retained heartbeat has arrived."""
        with self._changed:
            return self._changed.wait_for(lambda: all(n in self.beats for n in nodes), timeout)

    def last(self, node: str) -> float | None:
        """Wall-clock time of the node's last heartbeat."""
        beat = self.beats.get(node, {})
        t = beat.get("t", beat.get("time"))
        return float(t) if isinstance(t, (int, float)) else None

    def trips(self, node: str) -> list[str]:
        """The node's latched trips, as its last heartbeat said."""
        return list(self.beats.get(node, {}).get("trips", []))

    def close(self, timeout: float = 2.0) -> None:
        self._subscriber.close(timeout=timeout)


def monitor_or_none(rig: str, broker: dict[str, Any] | None, **options) -> HeartbeatMonitor | None:
    """A monitor when the broker answers, else None (the caller falls back to pings)."""
    if not broker or not broker.get("url"):
        return None
    try:
        return HeartbeatMonitor(rig, broker, **options)
    except LabrigError:
        return None

"""One MQTT subscription per panel: telemetry, trips, heartbeats, node status, the runner's state.

    feed = TelemetryFeed("ishtar", {"url": "mqtt://127.0.0.1:1883"}, track=["langmuir_I"])
    feed.on_values(fn)    fn({signal: (t, value)}) at most `period` s apart (the UI's ~10 Hz), on the ticker
    feed.on_trips(fn)     fn({"guard" or node: [trip, ...]}) at once, on the MQTT thread
    feed.on_tick(fn)      fn() every `period` s (watchdog ages, lapsed arms), on the ticker
    feed.on_run(fn)       fn(state) for each runner state message (supervisor/runner/announce.py), at once
    feed.start(); ...; feed.close()

Batches arrive from every node ten times a second; the MQTT thread only files them
(latest value, a short history for tracked signals), and the ticker pushes what
changed into the widgets, so a burst never floods the browser. Without a broker the
feed still ticks and says why it has no values (`feed.state`).
"""
from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
import uuid
from typing import Any, Callable, Iterable

from labrig.supervisor.mqtt import MqttSubscriber, topic

log = logging.getLogger("labrig.widgets")

PERIOD = 0.1  # s between UI updates (~10 Hz: smooth to the eye, light for the browser)
HISTORY = 30.0  # s of samples kept for the sparklines
CONNECT_TIMEOUT = 2.0  # s the panel waits for the broker before it shows itself without live values


class TelemetryFeed:
    def __init__(self, rig: str, broker: dict[str, Any] | None, *, track: Iterable[str] = (),
                 period: float = PERIOD, history: float = HISTORY, client: str = "labrig-panel",
                 clock: Callable[[], float] = time.time):
        self.rig, self.broker, self.period, self.history_window = rig, broker, period, history
        self._clock = clock
        self.latest: dict[str, tuple[float, float | None]] = {}
        self.trips: dict[str, list[dict]] = {}  # "guard" or node -> its latched trips (retained)
        self.beats: dict[str, dict] = {}  # node or "guard" -> its last heartbeat
        self.status: dict[str, str] = {}  # node or "guard" -> "online" / "offline" (its last will)
        self.received = 0  # telemetry batches filed
        self.run_state: dict | None = None  # the runner's last state (retained: the last shot's, when idle)
        self._history = {name: collections.deque(maxlen=20000) for name in track}
        self._pending: dict[str, tuple[float, float | None]] = {}
        self._lock = threading.Lock()
        self._value_listeners: list[Callable] = []
        self._trip_listeners: list[Callable] = []
        self._tick_listeners: list[Callable] = []
        self._run_listeners: list[Callable] = []
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._subscriber: MqttSubscriber | None = None
        self.error = "" if broker and broker.get("url") else \
            "this rig has no MQTT broker (none in the rig file, none started by `labrig up`)"

    # -- listening ----------------------------------------------------------
    def on_values(self, fn: Callable[[dict], None]) -> None:
        self._value_listeners.append(fn)

    def on_trips(self, fn: Callable[[dict], None]) -> None:
        self._trip_listeners.append(fn)

    def on_tick(self, fn: Callable[[], None]) -> None:
        self._tick_listeners.append(fn)

    def on_run(self, fn: Callable[[dict], None]) -> None:
        self._run_listeners.append(fn)

    def start(self, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        """Subscribe (when there is a broker; waits at most `connect_timeout` s for it) and start ticking."""
        if not self.error and self._subscriber is None:
            password = os.environ.get(self.broker["password_env"]) if self.broker.get("password_env") else None
            try:
                self._subscriber = MqttSubscriber(
                    self.broker["url"], [topic(self.rig, "+", kind) for kind in
                                         ("telemetry", "trips", "heartbeat", "status")]
                    + [topic(self.rig, "runner", "state")],
                    self._on_message, client_id=f"{self.rig}-panel-{os.getpid()}-{uuid.uuid4().hex[:6]}",
                    username=self.broker.get("username") or None, password=password,
                    tls=bool(self.broker.get("tls")), timeout=connect_timeout)
                self._subscriber.wait_connected(connect_timeout)  # retained trips arrive right after
            except Exception as exc:  # refused credentials, a bad URL: the panel works without live values
                self.error = f"the MQTT broker {self.broker['url']} refused us: {exc}"
                if self._subscriber is not None:
                    self._subscriber.close()
                    self._subscriber = None
        if self._ticker is None:
            self._ticker = threading.Thread(target=self._tick_loop, name=f"panel-ticker-{self.rig}", daemon=True)
            self._ticker.start()

    @property
    def live(self) -> bool:
        return self._subscriber is not None and self._subscriber.connected

    @property
    def state(self) -> str:
        """One line for the panel: whether values are live, and if not, why."""
        if self.error:
            return f"telemetry off: {self.error}; values below are not live"
        if self._subscriber is None:
            return "telemetry not started"
        if not self._subscriber.connected:
            return (f"telemetry off: the MQTT broker {self.broker['url']} does not answer (retrying); "
                    "values below are not live")
        return f"telemetry on ({self.broker['url']}, {self.received} batches)"

    def history(self, name: str) -> list[tuple[float, float | None]]:
        with self._lock:
            samples = list(self._history.get(name, ()))
        if samples:
            end = samples[-1][0]
            samples = [s for s in samples if s[0] >= end - self.history_window]
        return samples

    # -- the MQTT thread -----------------------------------------------------
    def _on_message(self, name: str, payload: bytes) -> None:
        parts = name.split("/")
        if len(parts) != 4 or parts[1] != self.rig:
            return
        where, kind = parts[2], parts[3]
        if kind == "status":
            self.status[where] = payload.decode(errors="replace")
            return
        try:
            data = json.loads(payload) if payload else None
        except ValueError:
            log.warning("panel: %s is not JSON", name)
            return
        if kind == "telemetry" and isinstance(data, dict):
            self._file(data.get("signals") or {})
        elif kind == "heartbeat" and isinstance(data, dict):
            self.beats[where] = data
        elif where == "runner" and kind == "state" and isinstance(data, dict):
            self.run_state = data
            for fn in self._run_listeners:  # at most ~2 a second: straight to the listeners
                _call(fn, data)
        elif kind == "trips":
            trips = data.get("trips", []) if isinstance(data, dict) else data or []
            with self._lock:
                self.trips[where] = list(trips)
                everything = {k: list(v) for k, v in self.trips.items()}
            for fn in self._trip_listeners:  # at once: a held knob must not wait for the next tick
                _call(fn, everything)

    def _file(self, signals: dict) -> None:
        with self._lock:
            self.received += 1
            for signal, batch in signals.items():
                times, values = batch.get("t") or [], batch.get("v") or []
                if not times or len(times) != len(values):
                    continue
                self.latest[signal] = self._pending[signal] = (times[-1], values[-1])
                kept = self._history.get(signal)
                if kept is not None:
                    kept.extend(zip(times, values))

    # -- the ticker ---------------------------------------------------------------
    def flush(self) -> None:
        """Push what changed since the last flush to the value listeners, then tick."""
        with self._lock:
            changed, self._pending = self._pending, {}
        if changed:
            for fn in self._value_listeners:
                _call(fn, changed)
        for fn in self._tick_listeners:
            _call(fn)

    def _tick_loop(self) -> None:
        while not self._stop.wait(self.period):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        if self._subscriber is not None:
            self._subscriber.close()
        if self._ticker is not None and self._ticker is not threading.current_thread():
            self._ticker.join(2)


def _call(fn, *args) -> None:
    try:
        fn(*args)
    except Exception:  # one broken widget must not stop the others' updates
        log.exception("panel: %r failed", fn)

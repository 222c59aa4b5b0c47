"""The runner's state on MQTT, retained, for whoever watches the rig (run monitors, dashboards).

    labrig/<rig>/runner/state   {"state": "running" | "paused" | "ended" | "lost", "sequence", "parameters",
                                 "shot", "t", "duration", "status", "reason", "path", "run", "time"}

Published when the shot opens, on a pause and a resume, at most every `period` s while it
runs, and at the end; retained (QoS 1), so a monitor that subscribes later sees the run
under way or the last shot at once. The broker publishes "lost" (this client's will) if the
runner's process vanishes without ending its run. With no broker (none in the rig file, none
started by `labrig up`) nothing is published and the run is the same.
"""
from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path
from typing import Callable

from ..mqtt import MqttPublisher, topic
from ..runtime.main import broker_url
from ..state import read_state

log = logging.getLogger("labrig.runner")

PERIOD = 0.5  # s between progress messages (<= 2 Hz: a monitor's bar moves, the broker hardly notices)
CLOSE_TIMEOUT = 1.0  # s the end of a run waits for its last message to leave (a dead broker must not hold it)


def runner_topic(rig_name: str) -> str:
    return topic(rig_name, "runner", "state")


def runner_broker(rig, directory: Path) -> str | None:
    """The broker the rig's processes publish to: the rig's, the cluster's own, or one `labrig up` was given."""
    url = broker_url(rig, directory, None)
    if url:
        return url
    cluster = read_state("cluster", directory) or {}
    return (cluster.get("broker") or {}).get("url")


class RunAnnouncer:
    """One run's state messages. Never raises: a broken broker link never stops a shot."""

    def __init__(self, rig, directory: Path, *, run: str, sequence: str, parameters: dict, shot: int | None,
                 duration: float, period: float = PERIOD, clock: Callable[[], float] = time.monotonic):
        self.topic = runner_topic(rig.name)
        self.period, self._clock = period, clock
        self.base = {"run": run, "sequence": sequence, "parameters": parameters, "shot": shot,
                     "duration": duration, "status": "", "reason": "", "path": None}
        self._last = -float("inf")
        self._paused = False
        self.t = 0.0
        self.publisher: MqttPublisher | None = None
        url = runner_broker(rig, directory)
        if not url:
            return
        broker = rig.spec.broker
        will = {**self.base, "state": "lost", "t": None, "time": None,
                "reason": "the runner's process ended without closing its run (killed, or its host lost)"}
        try:
            self.publisher = MqttPublisher(
                url, client_id=f"labrig-{rig.name}-runner-{os.getpid()}-{uuid.uuid4().hex[:6]}",
                will=(self.topic, will, True), username=broker.username or None,
                password=os.environ.get(broker.password_env) if broker.password_env else None,
                tls=broker.tls, timeout=2.0)
        except Exception as exc:  # noqa: BLE001 - a bad URL: the run goes on unannounced
            log.warning("runner state not published: %s", exc)

    def _send(self, state: str, **fields) -> None:
        if self.publisher is None:
            return
        try:
            self.publisher.publish(self.topic, {**self.base, "state": state, "t": self.t, "time": time.time(),
                                                **fields}, qos=1, retain=True)
        except Exception as exc:  # noqa: BLE001
            log.warning("runner state not published: %s", exc)
        self._last = self._clock()

    def start(self) -> None:
        self._send("running")

    def progress(self, p: dict) -> None:
        """The watch loop's progress ({"t", "paused", ...}): a pause or resume at once, else at most every period."""
        self.t = round(float(p.get("t", self.t)), 3)
        paused = bool(p.get("paused"))
        if paused != self._paused or self._clock() - self._last >= self.period:
            self._paused = paused
            self._send("paused" if paused else "running")

    def end(self, status: str, reason: str, path: Path | None) -> None:
        self._send("ended", status=status, reason=reason, path=str(path) if path else None)
        if self.publisher is not None:
            try:
                self.publisher.close(CLOSE_TIMEOUT)
            except Exception as exc:  # noqa: BLE001
                log.warning("runner state publisher did not close cleanly: %s", exc)

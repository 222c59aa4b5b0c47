"""MQTT for threads: a publisher and a subscriber on aiomqtt, each with its own asyncio loop.

Node runtimes are sync code with threads, so each object here runs one daemon
thread with an asyncio loop and an aiomqtt client; the caller never awaits.

    pub = MqttPublisher("mqtt://127.0.0.1:1883", client_id="ishtar-ard1",
                        will=(topic("ishtar", "ard1", "status"), b"offline", True))
    pub.publish(topic("ishtar", "ard1", "status"), "online", qos=1, retain=True)
    pub.publish(topic("ishtar", "ard1", "telemetry"), {"node": "ard1", ...})
    ...
    pub.publish(topic("ishtar", "ard1", "status"), "offline", qos=1, retain=True)
    pub.close()

The topic tree (`topic(rig, node, *parts)` builds the names):

    labrig/<rig>/<node>/status     retained "online" / "offline"; "offline" is also the
                                   runtime's last will, so a killed runtime shows offline
    labrig/<rig>/<node>/heartbeat  retained JSON {"t", "seq", "pid", "endpoint"}
    labrig/<rig>/<node>/telemetry  JSON batches {"node", "t0", "signals": {NAME: {"seq": [...],
                                   "t": [...], "v": [...]}}}; per-signal seq numbers show gaps
    labrig/<rig>/<node>/trips      retained: the latched trips and their reasons
    labrig/<rig>/<node>/audit      the audit journal, one message per entry

A clean `close()` sends DISCONNECT, and MQTT does not publish the will after a
clean disconnect: the node runtime publishes "offline" itself before closing.
The will covers the unclean ends (SIGKILL, crash, lost network: the broker sees
the socket close, or no packet within 1.5 x keepalive).

Delivery: `publish()` never blocks. Messages wait in a bounded queue while the
broker is away and go out after the reconnect; when the queue is full the oldest
message is dropped (the freshest state wins) and counted in `stats["dropped"]`,
as are messages still queued when `close()` gives up or the broker refuses us.
Nothing is lost without being counted, except what MQTT itself cannot know: a
QoS 0 message written to a socket whose broker then dies. Use QoS 1 for what
must arrive (status, trips).

A publish outside the client's ACL is not delivered, and Mosquitto then closes
the connection of an MQTT 3.1.1 client (the spec allows either that or a silent
ack): the publisher reconnects; a message that fails on 3 connections in a row
is dropped and counted.
"""
from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import ssl
import threading
import time
from typing import Any, Callable

import aiomqtt
from aiomqtt.exceptions import MqttCodeError

from labrig.drivers.errors import ConfigError, LinkClosed, LinkError
from labrig.drivers.urls import parse_url

log = logging.getLogger("labrig.mqtt")

ROOT = "labrig"
MIN_BACKOFF = 0.1  # s, first reconnect delay; doubles up to MAX_BACKOFF
MAX_BACKOFF = 2.0
BATCH = 256  # messages handed to the client per loop turn (one socket write for many)
MAX_ATTEMPTS = 3  # connections a message may fail on before it is dropped (and counted)
# CONNACK codes meaning "these credentials will not do": MQTT 3.1.1 (4, 5) and 5 (0x86, 0x87, 0x8C).
_REFUSED = {4, 5, 0x86, 0x87, 0x8C}


class BrokerRefused(LinkError):
    """The broker refused our connection (bad user name or password, not authorised)."""


def topic(rig: str, node: str, *parts: str) -> str:
    """`labrig/<rig>/<node>/<parts...>`. A level may be "+" or a final "#" (for subscriptions)."""
    levels = [rig, node, *parts]
    for i, level in enumerate(levels):
        ok = isinstance(level, str) and level and not any(c in level for c in "/+#\0")
        wildcard = level == "+" or (level == "#" and i == len(levels) - 1)
        if not (ok or wildcard):
            raise ConfigError(f"MQTT topic level {level!r} (in {'/'.join(map(str, levels))!r}): a level must be a "
                              "non-empty name without '/', '+', '#', or exactly '+' or a final '#'")
    return "/".join([ROOT, *levels])


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _encode(payload: bytes | bytearray | str | dict | list) -> bytes:
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode()
    if isinstance(payload, (dict, list)):
        return json.dumps(payload, separators=(",", ":"), default=_json_default).encode()
    raise TypeError(f"MQTT payload must be bytes, str or dict (JSON), not {type(payload).__name__}")


class _MqttThread:
    """One aiomqtt client on its own loop thread: connects, reconnects with backoff, closes."""

    _kind = "mqtt"

    def __init__(self, url: str, *, client_id: str, username: str | None, password: str | None,
                 tls: bool | ssl.SSLContext, keepalive: float, timeout: float, will: aiomqtt.Will | None):
        u = parse_url(url, schemes=("mqtt", "mqtts"))
        if not client_id:
            raise ConfigError(f"{url}: an MQTT client needs a client_id (unique per broker)")
        self.url = url
        self.client_id = client_id
        self._host = u.host
        self._tls = tls if isinstance(tls, ssl.SSLContext) else (
            ssl.create_default_context() if tls or u.scheme == "mqtts" else None)
        self._port = u.port or (8883 if self._tls else 1883)
        self._username, self._password = username, password
        self._keepalive = max(1, math.ceil(keepalive))
        self._timeout = timeout
        self._will = will
        self._connected = threading.Event()
        self._closing = False
        self._done = False  # the loop thread gave up (refused) or finished
        self.error: LinkError | None = None  # set when the broker refused us; no retries then
        self._counts = collections.Counter(connects=0)
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()  # set on the loop when close() is called
        self._main_task: asyncio.Task | None = None
        self._thread = threading.Thread(target=self._run, name=f"{self._kind}-{client_id}", daemon=True)
        self._thread.start()

    # --- caller side (any thread) ---

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float = 5.0) -> bool:
        """True once connected (subscribed, for a subscriber); False after `timeout` s.
        Raises BrokerRefused if the broker refused the credentials."""
        deadline = time.monotonic() + timeout
        while True:
            if self.error is not None:
                raise self.error
            if self._connected.is_set():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._done:
                return False
            self._connected.wait(min(remaining, 0.05))

    def _request_close(self, timeout: float) -> None:
        self._closing = True
        try:
            self._loop.call_soon_threadsafe(self._on_close_requested)
        except RuntimeError:  # loop already closed: the thread has ended
            pass
        self._thread.join(timeout)
        if self._thread.is_alive():  # stuck (a slow connect, a hung flush): cancel everything
            try:
                self._loop.call_soon_threadsafe(self._cancel_main)
            except RuntimeError:
                pass
            self._thread.join(max(2.0, self._timeout))
        if self._thread.is_alive():
            log.warning("%s %s: loop thread did not end", self._kind, self.client_id)

    # --- loop side ---

    def _on_close_requested(self) -> None:
        self._stop.set()

    def _cancel_main(self) -> None:
        if self._main_task is not None:
            self._main_task.cancel()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._main_task = self._loop.create_task(self._main())
            self._loop.run_until_complete(self._main_task)
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug, not a broker problem: say so, end quietly
            log.exception("%s %s: loop failed", self._kind, self.client_id)
        finally:
            self._connected.clear()
            self._done = True
            try:
                self._loop.run_until_complete(self._loop.shutdown_asyncgens())
                # aiomqtt connects from the default executor: join its thread (no leaks)
                self._loop.run_until_complete(self._loop.shutdown_default_executor())
            finally:
                self._loop.close()
                self._finished()

    def _finished(self) -> None:
        """Called on the loop thread as it ends."""

    def _client(self) -> aiomqtt.Client:
        client = aiomqtt.Client(self._host, self._port, identifier=self.client_id, username=self._username,
                              password=self._password, will=self._will, keepalive=self._keepalive,
                              timeout=self._timeout, tls_context=self._tls, clean_session=True,
                              logger=log.getChild(self.client_id))
        # We keep up to a batch of publish calls in flight on purpose: no warning for that.
        client.pending_calls_threshold = 2 * BATCH
        return client

    async def _main(self) -> None:
        backoff = MIN_BACKOFF
        while not self._closing:
            try:
                async with self._client() as client:
                    self._counts["connects"] += 1
                    backoff = MIN_BACKOFF
                    await self._session(client)
            except MqttCodeError as exc:
                if getattr(exc.rc, "value", exc.rc) in _REFUSED:
                    self.error = BrokerRefused(
                        f"broker refused client {self.client_id!r}"
                        f"{f' (user {self._username!r})' if self._username else ''}: not authorised ({exc})",
                        device=f"MQTT broker {self._host}:{self._port}")
                    log.error("%s", self.error)
                    return
                log.info("%s %s: %s", self._kind, self.client_id, exc)
            except aiomqtt.MqttError as exc:  # broker away, connection lost, operation timed out
                log.info("%s %s: %s", self._kind, self.client_id, exc)
            except Exception as exc:  # e.g. a TLS handshake failure: log it, keep trying
                log.warning("%s %s: %r", self._kind, self.client_id, exc)
            finally:
                self._connected.clear()
            if self._closing:
                break
            try:  # back off, but wake at once for close()
                await asyncio.wait_for(self._stop.wait(), backoff)
            except asyncio.TimeoutError:
                pass
            backoff = min(2 * backoff, MAX_BACKOFF)

    async def _session(self, client: aiomqtt.Client) -> None:
        raise NotImplementedError


class _Message(collections.namedtuple("_Message", "topic payload qos retain attempts", defaults=(0,))):
    __slots__ = ()


class MqttPublisher(_MqttThread):
    """Publishes from any thread without blocking; reconnects; counts what it could not send.

    `will`: (topic, payload, retain), published by the broker (QoS 1) if this client
    vanishes without a clean disconnect. `keepalive` (s): a silent peer is declared
    gone after 1.5 x keepalive. `timeout` (s): bound on each broker round trip.
    """

    _kind = "mqtt-pub"

    def __init__(self, url: str, *, client_id: str, will: tuple[str, bytes, bool] | None = None,
                 username: str | None = None, password: str | None = None,
                 tls: bool | ssl.SSLContext = False, queue_size: int = 10000,
                 keepalive: float = 10.0, timeout: float = 5.0):
        if queue_size < 1:
            raise ConfigError(f"MqttPublisher queue_size={queue_size}: must be >= 1")
        self._queue: collections.deque[_Message] = collections.deque()
        self._queue_size = queue_size
        self._lock = threading.Lock()
        self._idle = False  # the loop waits for _wake; a publish() must set it
        self._wake = asyncio.Event()
        self._flush_deadline = math.inf
        self._closed = False
        aio_will = None
        if will is not None:
            will_topic, will_payload, will_retain = will
            _check_topic(will_topic)
            aio_will = aiomqtt.Will(will_topic, _encode(will_payload), qos=1, retain=bool(will_retain))
        super().__init__(url, client_id=client_id, username=username, password=password, tls=tls,
                         keepalive=keepalive, timeout=timeout, will=aio_will)

    @property
    def stats(self) -> dict[str, int]:
        """{"queued", "sent", "dropped", "connects"}. sent: written to the socket (QoS 0) or
        acknowledged by the broker (QoS 1, 2)."""
        with self._lock:
            return {"queued": len(self._queue), "sent": self._counts["sent"],
                    "dropped": self._counts["dropped"], "connects": self._counts["connects"]}

    def publish(self, topic: str, payload: bytes | str | dict, *, qos: int = 0, retain: bool = False) -> None:
        """Queue one message (dict -> JSON). Never blocks; thread-safe."""
        if self._closed:
            raise LinkClosed(f"publisher {self.client_id!r} is closed", device=self.url)
        _check_topic(topic)
        if qos not in (0, 1, 2):
            raise ConfigError(f"MQTT qos={qos!r}: allowed 0, 1, 2")
        message = _Message(topic, _encode(payload), qos, bool(retain))
        wake = False
        with self._lock:
            if self._done:  # refused by the broker: nothing will ever be sent
                self._counts["dropped"] += 1
                return
            if len(self._queue) >= self._queue_size:
                self._queue.popleft()
                self._counts["dropped"] += 1
            self._queue.append(message)
            if self._idle:
                self._idle = False
                wake = True
        if wake:
            try:
                self._loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:  # the loop ended meanwhile (refused): count it
                with self._lock:
                    if self._queue:
                        self._queue.pop()
                        self._counts["dropped"] += 1

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued (for at most `timeout` s), then disconnect cleanly (no will).
        Whatever is still queued then is counted as dropped. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._flush_deadline = time.monotonic() + timeout
        self._request_close(timeout + self._timeout)

    def __enter__(self) -> "MqttPublisher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- loop side ---

    def _on_close_requested(self) -> None:
        super()._on_close_requested()
        self._wake.set()

    def _finished(self) -> None:
        with self._lock:
            self._counts["dropped"] += len(self._queue)
            self._queue.clear()

    def _take(self) -> list[_Message]:
        with self._lock:
            n = min(BATCH, len(self._queue))
            batch = [self._queue.popleft() for _ in range(n)]
            if not batch:
                self._wake.clear()
                self._idle = True
            return batch

    def _requeue(self, messages: list[_Message]) -> None:
        """Put unsent messages back at the front, oldest first; over the bound, drop the oldest.
        A message that failed on MAX_ATTEMPTS connections is dropped: a broker that closes the
        connection on it (Mosquitto does so for a publish its ACL denies) would loop forever."""
        again = [m._replace(attempts=m.attempts + 1) for m in messages if m.attempts + 1 < MAX_ATTEMPTS]
        if len(again) < len(messages):
            log.warning("%s %s: %d message(s) dropped after %d attempts (denied by the broker's ACL?)",
                        self._kind, self.client_id, len(messages) - len(again), MAX_ATTEMPTS)
        with self._lock:
            self._counts["dropped"] += len(messages) - len(again)
            messages = again
            room = self._queue_size - len(self._queue)
            if room < len(messages):
                self._counts["dropped"] += len(messages) - max(room, 0)
                messages = messages[len(messages) - max(room, 0):]
            self._queue.extendleft(reversed(messages))

    async def _session(self, client: aiomqtt.Client) -> None:
        self._connected.set()
        # No subscriptions, so the message iterator only ends, raising, when the connection drops:
        # that is how an idle publisher notices a lost broker.
        watcher = asyncio.ensure_future(_drain(client))
        try:
            while True:
                if self._closing and time.monotonic() > self._flush_deadline:
                    return  # flush time is up; _finished counts the rest as dropped
                batch = self._take()
                if batch:
                    await self._send(client, batch, watcher)
                    if watcher.done():
                        watcher.result()
                    continue
                if self._closing:
                    return  # all flushed
                waker = asyncio.ensure_future(self._wake.wait())
                done, _ = await asyncio.wait({waker, watcher}, return_when=asyncio.FIRST_COMPLETED)
                waker.cancel()
                if watcher in done:
                    watcher.result()
        finally:
            self._connected.clear()
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    async def _send(self, client: aiomqtt.Client, batch: list[_Message], watcher: asyncio.Future) -> None:
        # Concurrent publish calls let the client write the whole batch in one go (a
        # sequential await costs one loop turn per message). Tasks start in order, so
        # messages leave in order.
        tasks = [asyncio.ensure_future(client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain))
                 for m in batch]
        everything = asyncio.gather(*tasks, return_exceptions=True)
        # A lost connection does not wake a publish waiting for its PUBACK (only its
        # timeout would): stop waiting as soon as the connection is gone.
        await asyncio.wait({everything, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not everything.done():
            for task in tasks:
                task.cancel()
            await everything
        retry, sent, broken = [], 0, []
        for m, task in zip(batch, tasks):
            error = None if task.cancelled() else task.exception()
            if task.cancelled() or isinstance(error, aiomqtt.MqttError):
                retry.append(m)
            elif error is not None:
                broken.append(error)
            else:
                sent += 1
        with self._lock:
            self._counts["sent"] += sent
            self._counts["dropped"] += len(broken)
        if broken:
            log.error("%s %s: %d message(s) dropped: %r", self._kind, self.client_id, len(broken), broken[0])
        if retry:
            self._requeue(retry)
            if watcher.done():
                watcher.result()  # raises the disconnection
            raise aiomqtt.MqttError(f"{len(retry)} publish call(s) failed: "
                                    f"{next((t.exception() for t in tasks if not t.cancelled() and t.exception()), '')}")


async def _drain(client: aiomqtt.Client) -> None:
    async for _ in client.messages:
        pass


def _check_topic(name: str) -> None:
    if not isinstance(name, str) or not name or any(c in name for c in "+#\0"):
        raise ConfigError(f"MQTT topic {name!r}: a publish topic is a non-empty string without '+', '#'")


class MqttSubscriber(_MqttThread):
    """Calls `on_message(topic, payload)` on its own thread for every message on `topics`.

    Resubscribes after each reconnect (messages sent while disconnected are missed,
    except retained ones, which the broker sends again). A slow callback delays the
    next messages, not the publishers. Exceptions in the callback are logged and
    counted in `stats["callback_errors"]`.
    """

    _kind = "mqtt-sub"

    def __init__(self, url: str, topics: list[str], on_message: Callable[[str, bytes], None], *,
                 client_id: str, username: str | None = None, password: str | None = None,
                 tls: bool | ssl.SSLContext = False, qos: int = 0, keepalive: float = 10.0,
                 timeout: float = 5.0):
        if isinstance(topics, str) or not topics:
            raise ConfigError(f"MqttSubscriber topics={topics!r}: give a non-empty list of topic filters")
        if qos not in (0, 1, 2):
            raise ConfigError(f"MQTT qos={qos!r}: allowed 0, 1, 2")
        self._topics = list(topics)
        self._qos = qos
        self._on_message = on_message
        super().__init__(url, client_id=client_id, username=username, password=password, tls=tls,
                         keepalive=keepalive, timeout=timeout, will=None)

    @property
    def stats(self) -> dict[str, int]:
        return {"received": self._counts["received"], "callback_errors": self._counts["callback_errors"],
                "connects": self._counts["connects"]}

    def close(self, timeout: float = 2.0) -> None:
        """Unsubscribe by disconnecting cleanly; idempotent."""
        if self._closing:
            return
        self._request_close(timeout)

    def __enter__(self) -> "MqttSubscriber":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    async def _session(self, client: aiomqtt.Client) -> None:
        await client.subscribe([(t, self._qos) for t in self._topics])
        self._connected.set()
        receiver = asyncio.ensure_future(self._receive(client))
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({receiver, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._connected.clear()
            for task in (receiver, stop):
                task.cancel()
            results = await asyncio.gather(receiver, stop, return_exceptions=True)
        if isinstance(results[0], aiomqtt.MqttError):
            raise results[0]

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self._counts["received"] += 1
            try:
                self._on_message(message.topic.value, bytes(message.payload))
            except Exception:
                self._counts["callback_errors"] += 1
                log.exception("%s %s: on_message failed for %s", self._kind, self.client_id, message.topic)

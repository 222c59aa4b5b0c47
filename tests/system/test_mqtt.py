"""The MQTT layer against real brokers: Mosquitto (and the embedded amqtt in one test).

Loopback only, ports from the OS; every broker, client thread and subprocess is
stopped in `finally`, and a stopped broker's pid must be gone.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest

from labrig.drivers.errors import ConfigError, LinkClosed, LinkError
from labrig.supervisor.broker import broker_alive, free_port, mosquitto_binary, start_broker, stop_broker
from labrig.supervisor.mqtt import BrokerRefused, MqttPublisher, MqttSubscriber, topic
from support import eventually

needs_mosquitto = pytest.mark.skipif(mosquitto_binary() is None,
                                     reason="mosquitto is not installed (apt install mosquitto)")


class Inbox:
    """Collects (topic, payload) from a subscriber's thread; waits (bounded) for a condition."""

    def __init__(self):
        self.messages: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()

    def __call__(self, name: str, payload: bytes) -> None:
        with self._cond:
            self.messages.append((name, payload))
            self._cond.notify_all()

    def payloads(self, name: str | None = None) -> list[bytes]:
        with self._cond:
            return [p for t, p in self.messages if name is None or t == name]

    def wait(self, check, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        with self._cond:
            while not check():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{what}: not within {timeout} s; got {self.messages[-5:]!r}")
                self._cond.wait(remaining)


def assert_gone(record: dict) -> None:
    assert not broker_alive(record)
    assert not psutil.pid_exists(record["pid"]), f"broker pid {record['pid']} still exists"
    port = int(record["url"].rsplit(":", 1)[1])
    with socket.socket() as s:  # nobody listens there any more
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


@pytest.fixture
def mosquitto(tmp_path):
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (apt install mosquitto)")
    record = start_broker(tmp_path / "broker", kind="mosquitto")
    try:
        yield record
    finally:
        stop_broker(record)


@needs_mosquitto
def test_mosquitto_starts_configured_and_stops_leaving_nothing(tmp_path):
    record = start_broker(tmp_path / "broker", kind="auto")
    try:
        assert record["kind"] == "mosquitto"
        assert record["url"].startswith("mqtt://127.0.0.1:")
        assert broker_alive(record)
        config = open(record["config"]).read().splitlines()
        for line in ("set_tcp_nodelay true", "max_queued_messages 0", "persistence false",
                     "allow_anonymous true"):
            assert line in config
        with socket.create_connection(("127.0.0.1", int(record["url"].rsplit(":", 1)[1])), timeout=2):
            pass
    finally:
        assert stop_broker(record)
    assert_gone(record)
    assert "terminating" in open(record["log"]).read()


def test_amqtt_broker_round_trip_and_stop(tmp_path):
    record = start_broker(tmp_path / "broker", kind="amqtt")
    inbox = Inbox()
    sub = pub = None
    try:
        assert record["kind"] == "amqtt" and broker_alive(record)
        sub = MqttSubscriber(record["url"], [topic("ishtar", "+", "status")], inbox, client_id="t-sub")
        pub = MqttPublisher(record["url"], client_id="t-pub")
        assert sub.wait_connected(5) and pub.wait_connected(5)
        pub.publish(topic("ishtar", "rp1", "status"), "online", qos=1, retain=True)
        inbox.wait(lambda: inbox.messages, 5, "status via amqtt")
        assert inbox.messages == [("labrig/ishtar/rp1/status", b"online")]
    finally:
        for client in (pub, sub):
            if client is not None:
                client.close()
        stop_broker(record)
    assert_gone(record)


def test_publish_subscribe_round_trip(mosquitto):
    inbox = Inbox()
    with MqttSubscriber(mosquitto["url"], [topic("ishtar", "ard1", "#")], inbox, client_id="t-sub") as sub, \
            MqttPublisher(mosquitto["url"], client_id="t-pub") as pub:
        assert sub.wait_connected(5) and pub.wait_connected(5)
        assert pub.connected and sub.connected
        batch = {"node": "ard1", "t0": 1.5, "signals": {"langmuir_I": {"seq": [1, 2], "t": [0.0, 0.01],
                                                                      "v": [-1.2, -1.3]}}}
        pub.publish(topic("ishtar", "ard1", "telemetry"), batch)
        pub.publish(topic("ishtar", "ard1", "audit"), b"\x00raw bytes")
        pub.publish(topic("ishtar", "rp1", "audit"), "not subscribed")
        pub.publish(topic("ishtar", "ard1", "status"), "online", qos=1, retain=True)
        inbox.wait(lambda: len(inbox.messages) >= 3, 5, "three messages")
        assert [t for t, _ in inbox.messages] == ["labrig/ishtar/ard1/telemetry", "labrig/ishtar/ard1/audit",
                                                  "labrig/ishtar/ard1/status"]
        assert json.loads(inbox.messages[0][1]) == batch
        assert inbox.messages[1][1] == b"\x00raw bytes"
        assert pub.stats["dropped"] == 0

    # The retained status reaches a subscriber that comes later.
    late = Inbox()
    with MqttSubscriber(mosquitto["url"], [topic("ishtar", "+", "status")], late, client_id="t-late") as sub:
        late.wait(lambda: late.messages, 5, "retained status")
        assert late.messages == [("labrig/ishtar/ard1/status", b"online")]


DOOMED = """
import sys, time
from labrig.supervisor.mqtt import MqttPublisher
url, status = sys.argv[1], sys.argv[2]
pub = MqttPublisher(url, client_id="doomed", will=(status, b"offline", True), keepalive=2)
assert pub.wait_connected(5), "not connected"
pub.publish(status, "online", qos=1, retain=True)
time.sleep(60)
"""


def test_last_will_marks_a_killed_publisher_offline(mosquitto):
    status = topic("ishtar", "ard1", "status")
    inbox = Inbox()
    proc = subprocess.Popen([sys.executable, "-c", DOOMED, mosquitto["url"], status],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with MqttSubscriber(mosquitto["url"], [status], inbox, client_id="t-watch") as sub:
            assert sub.wait_connected(5)
            inbox.wait(lambda: b"online" in inbox.payloads(), 10, "the publisher's 'online'")
            killed = time.monotonic()
            os.kill(proc.pid, signal.SIGKILL)
            # The broker publishes the will at once when the socket closes, at the
            # latest after 1.5 x keepalive (3 s) of silence.
            inbox.wait(lambda: inbox.payloads()[-1] == b"offline", 3.0 + 2.0, "the last will")
            assert time.monotonic() - killed < 5.0
    finally:
        proc.kill()
        proc.wait(5)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    late = Inbox()  # the will was retained
    with MqttSubscriber(mosquitto["url"], [status], late, client_id="t-late"):
        late.wait(lambda: late.messages, 5, "retained will")
        assert late.payloads() == [b"offline"]


def test_clients_reconnect_after_a_broker_restart_on_the_same_port(tmp_path):
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed")
    directory = tmp_path / "broker"
    record = start_broker(directory, kind="mosquitto")
    port = int(record["url"].rsplit(":", 1)[1])
    inbox = Inbox()
    sub = MqttSubscriber(record["url"], [topic("ishtar", "pi1", "#")], inbox, client_id="t-sub")
    pub = MqttPublisher(record["url"], client_id="t-pub")
    try:
        assert sub.wait_connected(5) and pub.wait_connected(5)
        pub.publish(topic("ishtar", "pi1", "audit"), "before")
        inbox.wait(lambda: inbox.payloads() == [b"before"], 5, "message before the restart")

        stop_broker(record)
        assert_gone(record)
        deadline = time.monotonic() + 5
        while (pub.connected or sub.connected) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not pub.connected and not sub.connected
        # Queued while the broker is away, sent after the reconnect. Retained, so the
        # subscriber gets it whichever of the two reconnects first.
        pub.publish(topic("ishtar", "pi1", "status"), "while down", qos=1, retain=True)
        assert pub.stats["queued"] == 1

        record = start_broker(directory, kind="mosquitto", port=port)
        assert record["url"] == f"mqtt://127.0.0.1:{port}"
        assert pub.wait_connected(10) and sub.wait_connected(10)
        inbox.wait(lambda: b"while down" in inbox.payloads(), 5, "message queued during the outage")
        pub.publish(topic("ishtar", "pi1", "audit"), "after")
        inbox.wait(lambda: b"after" in inbox.payloads(), 5, "message after the restart")
        # the publisher counts a message once its own send returned, which can be after delivery
        assert eventually(lambda: pub.stats["sent"] == 3, timeout=2)
        assert pub.stats == {"queued": 0, "sent": 3, "dropped": 0, "connects": 2}
        assert sub.stats["connects"] == 2
    finally:
        pub.close()
        sub.close()
        stop_broker(record)
    assert_gone(record)


def test_5000_messages_published_as_fast_as_possible_all_arrive(mosquitto):
    n = 5000
    name = topic("ishtar", "rp1", "telemetry")
    inbox = Inbox()
    with MqttSubscriber(mosquitto["url"], [name], inbox, client_id="t-sub") as sub, \
            MqttPublisher(mosquitto["url"], client_id="t-pub") as pub:
        assert sub.wait_connected(5) and pub.wait_connected(5)
        started = time.perf_counter()
        for i in range(n):
            pub.publish(name, b"%d" % i)  # QoS 0
        calls = time.perf_counter() - started
        inbox.wait(lambda: len(inbox.messages) >= n, 30, f"{n} messages")
        elapsed = time.perf_counter() - started
        assert [int(p) for p in inbox.payloads()] == list(range(n))  # all, in order, once
        stats = pub.stats
        assert stats["sent"] == n and stats["dropped"] == 0
        print(f"\n{n} QoS 0 messages: publish() {n / calls:.0f} calls/s, "
              f"delivered {n / elapsed:.0f} messages/s end to end")


def test_publisher_without_a_broker_never_blocks_and_counts_what_it_drops():
    url = f"mqtt://127.0.0.1:{free_port()}"  # nobody listens there
    pub = MqttPublisher(url, client_id="t-lonely", queue_size=10)
    try:
        assert not pub.wait_connected(0.3)
        for i in range(15):
            pub.publish(topic("ishtar", "ard1", "audit"), {"i": i})
        assert pub.stats == {"queued": 10, "sent": 0, "dropped": 5, "connects": 0}  # the oldest 5
    finally:
        pub.close(timeout=0.5)
    assert pub.stats == {"queued": 0, "sent": 0, "dropped": 15, "connects": 0}
    with pytest.raises(LinkClosed):
        pub.publish(topic("ishtar", "ard1", "audit"), "late")
    with pytest.raises(ConfigError, match="level"):
        topic("ishtar", "ard1/x")
    with pytest.raises(ConfigError, match="'\\+', '#'"):
        MqttPublisher(url, client_id="t-will", will=(topic("ishtar", "+", "status"), b"offline", True))


@needs_mosquitto
def test_password_file_and_acl(tmp_path):
    users = {"ishtar": "s3cret", "intruder": "guess"}
    acl = ("user ishtar\n"
           "topic write labrig/ishtar/#\n"
           "topic read #\n")
    record = start_broker(tmp_path / "broker", kind="mosquitto", users=users, acl=acl)
    inbox = Inbox()
    clients = []
    try:
        config = open(record["config"]).read()
        assert "allow_anonymous false" in config and "acl_file" in config
        assert "s3cret" not in open(tmp_path / "broker" / "mosquitto.passwd").read()  # hashed

        for kwargs in ({"username": "ishtar", "password": "wrong"}, {}):  # wrong password; anonymous
            bad = MqttPublisher(record["url"], client_id="t-bad", **kwargs)
            clients.append(bad)
            with pytest.raises(BrokerRefused) as refused:
                bad.wait_connected(5)
            assert isinstance(refused.value, LinkError)
            assert "not authorised" in str(refused.value)
            assert f"127.0.0.1:{record['url'].rsplit(':', 1)[1]}" in str(refused.value)
            assert not bad.connected
            bad.publish(topic("ishtar", "ard1", "audit"), "never sent")
            assert bad.stats["dropped"] == 1  # counted, not silently lost

        sub = MqttSubscriber(record["url"], ["labrig/#"], inbox, client_id="t-sub",
                             username="ishtar", password="s3cret")
        pub = MqttPublisher(record["url"], client_id="t-pub", username="ishtar", password="s3cret")
        clients += [sub, pub]
        assert sub.wait_connected(5) and pub.wait_connected(5)
        # QoS 1 from one client to one subscriber keeps its order: once "inside" is here,
        # "outside" would have come before it had the broker delivered it. (Mosquitto also
        # drops the connection on the denied publish; the publisher reconnects and resends
        # "inside" if it went down with it.)
        pub.publish(topic("elsewhere", "ard1", "status"), "outside", qos=1)
        pub.publish(topic("ishtar", "ard1", "status"), "inside", qos=1)
        inbox.wait(lambda: inbox.messages, 5, "the allowed publish")
        assert inbox.messages == [("labrig/ishtar/ard1/status", b"inside")]
        assert pub.stats["dropped"] == 0
    finally:
        for client in clients:
            client.close()
        stop_broker(record)
    assert_gone(record)

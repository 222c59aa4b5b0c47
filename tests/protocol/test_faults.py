"""CuttableProxy: a TCP relay that cuts, blackholes, delays and garbles on command."""
from __future__ import annotations

import json
import os
import select
import socket
import socketserver
import subprocess
import sys
import threading
import time

import pytest

from labrig.drivers.contract import ChannelSpec
from labrig.drivers.errors import LinkClosed, LinkTimeout
from labrig.drivers.visa.driver import VisaDriver
from labrig.simulators.faults import CuttableProxy, proxy_control
from labrig.simulators.visa_instrument import VisaSimulator
from labrig.simulators.world import LocalWorld
from support import eventually

TIMEOUT = 0.3  # s, the driver's I/O timeout in these tests


class EchoServer(socketserver.ThreadingTCPServer):
    """Sends back whatever it gets; closes when the client does."""

    daemon_threads = False  # joined by server_close()
    block_on_close = True

    def __init__(self):
        self.conns: set[socket.socket] = set()

        class Echo(socketserver.BaseRequestHandler):
            def handle(self):
                self.server.conns.add(self.request)
                try:
                    while data := self.request.recv(65536):
                        self.request.sendall(data)
                except OSError:
                    pass
                finally:
                    self.server.conns.discard(self.request)
        super().__init__(("127.0.0.1", 0), Echo)
        self.endpoint = f"tcp://127.0.0.1:{self.server_address[1]}"
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self):
        self.shutdown()
        for conn in list(self.conns):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.server_close()
        self.thread.join(2)


@pytest.fixture
def no_leaks():
    threads = set(threading.enumerate())
    fds = len(os.listdir("/proc/self/fd"))
    yield
    deadline = time.monotonic() + 2  # peers close their ends on their own threads
    while time.monotonic() < deadline and (len(os.listdir("/proc/self/fd")) > fds or
                                           [t for t in threading.enumerate() if t not in threads]):
        time.sleep(0.01)
    assert not [t for t in threading.enumerate() if t not in threads], "threads left running"
    assert len(os.listdir("/proc/self/fd")) <= fds, "file descriptors left open"


@pytest.fixture
def echo(no_leaks):
    server = EchoServer()
    yield server
    server.stop()


@pytest.fixture
def proxy(echo):
    with CuttableProxy(echo.endpoint) as p:
        yield p


@pytest.fixture
def connect(proxy):
    socks = []

    def open_():
        socks.append(socket.create_connection(("127.0.0.1", proxy.port), timeout=2))
        return socks[-1]
    yield open_
    for s in socks:
        s.close()


def roundtrip(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def silent(sock: socket.socket, seconds: float) -> bool:
    """Nothing to read, not even a FIN, for `seconds`."""
    readable, _, _ = select.select([sock], [], [], seconds)
    return not readable


def test_relays_several_connections(proxy, connect):
    assert proxy.endpoint == f"tcp://127.0.0.1:{proxy.port}"
    a, b = connect(), connect()
    assert roundtrip(a, b"hello\n") == b"hello\n"
    assert roundtrip(b, b"x" * 200_000) == b"x" * 200_000
    assert proxy.connections == 2


def test_cut_closes_connections_and_refuses_new_ones(proxy, connect):
    a = connect()
    assert roundtrip(a, b"ping") == b"ping"
    proxy.cut()
    assert a.recv(10) == b""  # FIN
    assert proxy.connections == 0
    assert connect().recv(10) == b""  # accepted and closed at once
    proxy.restore()
    assert roundtrip(connect(), b"back") == b"back"


def test_cut_with_reset(proxy, connect):
    a = connect()
    assert roundtrip(a, b"ping") == b"ping"
    proxy.cut(reset=True)
    with pytest.raises(ConnectionResetError):
        a.recv(10)


def test_blackhole_drops_data_without_fin_then_restore(proxy, connect):
    a = connect()
    assert roundtrip(a, b"before") == b"before"
    proxy.blackhole()
    a.sendall(b"lost")
    assert silent(a, 0.3)  # no echo and no FIN: the link just went quiet
    b = connect()  # new connections are accepted, and as silent
    b.sendall(b"also lost")
    assert silent(b, 0.1)
    assert proxy.connections == 2 and proxy.stats["dropped"] >= len(b"lost")
    proxy.restore()
    assert roundtrip(a, b"after") == b"after"  # the same connection carries data again


def test_blackhole_holds_a_fin_until_restore(proxy, connect):
    a = connect()
    assert roundtrip(a, b"x") == b"x"
    proxy.blackhole()
    a.shutdown(socket.SHUT_WR)
    assert silent(a, 0.2)  # the echo server never hears the FIN, so never closes
    proxy.restore()
    assert a.recv(10) == b""  # FIN delivered, the server closed, and so do we
    deadline = time.monotonic() + 2
    while proxy.connections and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proxy.connections == 0


def test_delay_adds_latency_both_ways(proxy, connect):
    a = connect()
    proxy.delay(0.15)
    t0 = time.monotonic()
    assert roundtrip(a, b"slow") == b"slow"
    assert time.monotonic() - t0 >= 0.3  # 0.15 s there, 0.15 s back: a lower bound only
    with pytest.raises(ValueError, match=">= 0"):
        proxy.delay(-1)
    proxy.restore()
    assert proxy.latency == 0.0


def test_garble_flips_bits_then_restore(proxy, connect):
    a = connect()
    proxy.garble()
    data = b"MEAS:PRES?\n" * 4
    got = roundtrip(a, data)
    assert len(got) == len(data) and got != data
    proxy.restore()
    assert roundtrip(a, data) == data


def test_target_down_means_refused(no_leaks):
    with socket.socket() as s:
        # bound but not listening: connections are refused, and no other process can take the port meanwhile
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with CuttableProxy(f"tcp://127.0.0.1:{port}") as proxy:
            # the proxy resets the client: seen by recv, or by connect itself when the reset is quick
            with pytest.raises(ConnectionResetError):
                with socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as c:
                    c.recv(10)
            assert eventually(lambda: proxy.stats["refused"] == 1, timeout=2)


def test_bad_target():
    with pytest.raises(ValueError, match="tcp://HOST:PORT"):
        CuttableProxy("udp://127.0.0.1:1")


def test_close_with_open_connections_leaves_nothing(echo, no_leaks):
    proxy = CuttableProxy(echo.endpoint).start()
    c = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
    try:
        assert roundtrip(c, b"x") == b"x"
        proxy.close()
        proxy.close()  # idempotent
        assert c.recv(10) == b""
    finally:
        c.close()


# -- a VISA instrument behind the proxy -----------------------------------------
@pytest.fixture
def gauge_behind_proxy(no_leaks):
    with LocalWorld() as world, VisaSimulator(world, node="gauge") as sim, \
            CuttableProxy(sim.endpoints["scpi"]) as proxy:
        url = f"visa://TCPIP0::127.0.0.1::{proxy.port}::SOCKET"
        with VisaDriver(url, [ChannelSpec("pressure", "MEAS:PRES", unit="Pa")],
                        timeout=TIMEOUT, name="gauge") as drv:
            yield proxy, drv


def test_blackholed_visa_read_times_out(gauge_behind_proxy):
    proxy, drv = gauge_behind_proxy
    assert drv.read("pressure") >= 0.0
    proxy.blackhole()
    t0 = time.monotonic()
    with pytest.raises(LinkTimeout, match="^gauge: no reply to 'MEAS:PRES\\?'"):
        drv.read("pressure")
    assert time.monotonic() - t0 < 2 * TIMEOUT
    proxy.restore()
    assert drv.read("pressure") >= 0.0


def test_cut_visa_link_is_closed(gauge_behind_proxy):
    proxy, drv = gauge_behind_proxy
    assert drv.read("pressure") >= 0.0
    proxy.cut()
    with pytest.raises(LinkClosed):
        drv.read("pressure")
    with pytest.raises(LinkClosed):  # reconnecting meets the refusal
        drv.read("pressure")
    proxy.restore()
    assert drv.read("pressure") >= 0.0


# -- as its own process ----------------------------------------------------------
def test_proxy_process(echo, tmp_path):
    ready = tmp_path / "proxy.json"
    proc = subprocess.Popen([sys.executable, "-m", "labrig.simulators.faults", "proxy",
                             "--target", echo.endpoint, "--ready", str(ready)])
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert proc.poll() is None, "the proxy process exited"
            assert time.monotonic() < deadline, "the proxy process never became ready"
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        assert info["pid"] == proc.pid
        host, port = info["endpoints"]["proxy"].removeprefix("tcp://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=2) as c:
            assert roundtrip(c, b"through") == b"through"
            status = proxy_control(info["endpoints"]["control"], "cut")
            assert json.loads(status.split(" ", 1)[1])["mode"] == "cut"
            assert c.recv(10) == b""
        with pytest.raises(ValueError, match="unknown command"):
            proxy_control(info["endpoints"]["control"], "explode")
        proxy_control(info["endpoints"]["control"], "restore")
        with socket.create_connection((host, int(port)), timeout=2) as c:
            assert roundtrip(c, b"again") == b"again"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0

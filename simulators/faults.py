"""Fault injection on the wire: a TCP relay that tests can cut, stall, slow or garble.

    with CuttableProxy("tcp://127.0.0.1:5025") as proxy:
        driver = VisaDriver(f"visa://TCPIP0::127.0.0.1::{proxy.port}::SOCKET", ...)
        proxy.cut()          # close every connection (FIN; cut(reset=True): RST), refuse new ones
        proxy.blackhole()    # keep connections open, drop all data both ways, pass no FIN:
                             # the silently dropped link that only a timeout can detect
        proxy.delay(0.2)     # add 0.2 s latency to every chunk, both ways
        proxy.garble()       # flip bits in what passes (delimiters too: expect framing errors)
        proxy.restore()      # all of the above undone; held data flows again

"Refuse" means a new connection is accepted and closed at once (the listening
port stays ours, so restore() can never lose it to another process). Each control
call returns once the relay thread has applied it. One thread serves every
connection, so close() leaves nothing behind. Meant for test traffic, not bulk data.

As its own process (for chaos tests of a whole rig):

    python -m labrig.simulators.faults proxy --target tcp://127.0.0.1:P --ready FILE

writes {"pid", "endpoints": {"proxy": "tcp://127.0.0.1:Q", "control": "tcp://127.0.0.1:R"}}
to FILE, relays until SIGTERM, and takes one command per line on the control
port ("cut", "cut reset", "blackhole", "delay 0.2", "garble", "restore",
"status"), answering "ok ..." or "error ..."; `proxy_control(endpoint, "cut")` sends one.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import selectors
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
from collections import deque
from typing import Callable
from urllib.parse import urlsplit

_CHUNK = 65536


def _address(target: str | tuple[str, int]) -> tuple[str, int]:
    """"tcp://host:port", "host:port" or (host, port) -> (host, port)."""
    if isinstance(target, tuple):
        return target[0], int(target[1])
    parts = urlsplit(target if "://" in target else f"tcp://{target}")
    if parts.scheme != "tcp" or not parts.hostname or parts.port is None:
        raise ValueError(f"proxy target {target!r}: expected tcp://HOST:PORT")
    return parts.hostname, parts.port


def _abort(sock: socket.socket) -> None:
    """Close with RST rather than FIN (SO_LINGER on, zero timeout)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def _finish(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class _Pipe:
    """One direction of a relayed connection."""

    def __init__(self, src: socket.socket, dst: socket.socket):
        self.src, self.dst = src, dst
        self.pending: deque[tuple[float, bytes]] = deque()  # (due time, data), delayed chunks
        self.out = bytearray()  # due, not yet accepted by dst
        self.eof_seen = False  # src sent FIN (or reset)
        self.eof_queued = False  # ...and it is on its way to dst
        self.eof_sent = False


class _Link:
    def __init__(self, client: socket.socket, upstream: socket.socket):
        self.client, self.upstream = client, upstream
        self.up = _Pipe(client, upstream)
        self.down = _Pipe(upstream, client)
        self.masks = {client: 0, upstream: 0}


class CuttableProxy:
    """A TCP relay on `host` (port from the OS) in front of `target`."""

    def __init__(self, target: str | tuple[str, int], *, host: str = "127.0.0.1",
                 connect_timeout: float = 2.0, seed: int = 0):
        self.target = _address(target)
        self.host = host
        self.port = 0
        self.endpoint = ""
        self.connect_timeout = connect_timeout
        self.mode = "pass"  # pass | cut | blackhole | garble
        self.latency = 0.0
        self.garble_fraction = 0.25
        self._cut_reset = False  # how refused connections are closed while cut
        self.stats = {"accepted": 0, "refused": 0, "relayed": 0, "dropped": 0}
        self._rng = random.Random(seed)
        self._links: list[_Link] = []
        self._commands: deque[tuple[Callable[[], None], threading.Event]] = deque()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._listener: socket.socket | None = None
        self._sel: selectors.BaseSelector | None = None
        self._wake_r = self._wake_w = None

    # -- lifecycle -------------------------------------------------------
    def start(self) -> "CuttableProxy":
        self._listener = socket.create_server((self.host, 0))
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self.endpoint = f"tcp://{self.host}:{self.port}"
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, name=f"proxy-{self.port}", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop = True
        self._wake()
        thread.join(5)
        for link in self._links:
            _finish(link.client)
            _finish(link.upstream)
        self._links.clear()
        self._sel.close()
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()

    def __enter__(self):
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.close()

    # -- faults ----------------------------------------------------------
    def cut(self, *, reset: bool = False) -> None:
        """Close every connection (FIN, or RST with reset=True) and refuse new ones."""
        def apply():
            self.mode = "cut"
            self._cut_reset = reset
            for link in self._links:
                self._drop_link(link, reset=reset)
            self._links.clear()
        self._call(apply)

    def blackhole(self) -> None:
        """Keep connections open and accept new ones, but pass no byte and no FIN."""
        self._call(lambda: setattr(self, "mode", "blackhole"))

    def delay(self, seconds: float) -> None:
        """Add `seconds` of latency to every chunk in both directions (0: none)."""
        if not seconds >= 0:
            raise ValueError(f"delay must be >= 0 s, got {seconds!r}")
        self._call(lambda: setattr(self, "latency", float(seconds)))

    def garble(self, fraction: float = 0.25) -> None:
        """Flip one bit in about `fraction` of the bytes that pass (at least one per chunk)."""
        if not 0 < fraction <= 1:
            raise ValueError(f"garble fraction must be in (0, 1], got {fraction!r}")

        def apply():
            self.mode, self.garble_fraction = "garble", fraction
        self._call(apply)

    def restore(self) -> None:
        """Relay normally again: no cut, no blackhole, no delay, no garbling."""
        def apply():
            self.mode, self.latency = "pass", 0.0
        self._call(apply)

    @property
    def connections(self) -> int:
        return len(self._links)

    # -- relay thread ------------------------------------------------------
    def _call(self, fn: Callable[[], None]) -> None:
        if self._thread is None or threading.current_thread() is self._thread:
            fn()
            return
        done = threading.Event()
        self._commands.append((fn, done))
        self._wake()
        if not done.wait(5):
            raise TimeoutError("the proxy's relay thread did not apply the change within 5 s")

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"!")
        except (OSError, AttributeError):
            pass

    def _run(self) -> None:
        while not self._stop:
            while self._commands:
                fn, done = self._commands.popleft()
                try:
                    fn()
                finally:
                    done.set()
            self._pump()
            now = time.monotonic()
            dues = [p.pending[0][0] for link in self._links for p in (link.up, link.down) if p.pending]
            timeout = max(0.0, min(dues) - now) if dues else None
            for key, mask in self._sel.select(timeout):
                if key.fileobj is self._listener:
                    self._accept()
                elif key.fileobj is self._wake_r:
                    try:
                        self._wake_r.recv(4096)
                    except BlockingIOError:
                        pass
                else:
                    link: _Link = key.data
                    if link not in self._links:
                        continue  # dropped earlier in this round
                    if mask & selectors.EVENT_READ:
                        self._on_read(link, key.fileobj)
        while self._commands:  # never leave a caller waiting
            self._commands.popleft()[1].set()

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except OSError:
            return
        if self.mode == "cut":
            self.stats["refused"] += 1
            (_abort if self._cut_reset else _finish)(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=self.connect_timeout)
        except OSError:
            self.stats["refused"] += 1
            _abort(client)  # the target refused: so do we
            return
        for sock in (client, upstream):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # latency is what we control
        self.stats["accepted"] += 1
        self._links.append(_Link(client, upstream))

    def _on_read(self, link: _Link, sock: socket.socket) -> None:
        pipe = link.up if sock is link.client else link.down
        try:
            data = sock.recv(_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            if self.mode == "blackhole":
                data = b""  # a reset stays as silent as anything else
            else:
                self._drop_link(link, reset=True)  # mirror a reset with a reset
                self._links.remove(link)
                return
        if not data:
            pipe.eof_seen = True
            return
        if self.mode == "blackhole":
            self.stats["dropped"] += len(data)
            return
        if self.mode == "garble":
            data = self._flip(data)
        pipe.pending.append((time.monotonic() + self.latency, data))

    def _pump(self) -> None:
        """Deliver due data and FINs; update what each socket waits for."""
        now = time.monotonic()
        for link in list(self._links):
            try:
                for pipe in (link.up, link.down):
                    while pipe.pending and pipe.pending[0][0] <= now:
                        pipe.out += pipe.pending.popleft()[1]
                    if pipe.eof_seen and not pipe.eof_queued and self.mode != "blackhole":
                        pipe.eof_queued = True
                    if pipe.out:
                        try:
                            n = pipe.dst.send(pipe.out)
                        except BlockingIOError:
                            n = 0
                        self.stats["relayed"] += n
                        del pipe.out[:n]
                    if pipe.eof_queued and not pipe.pending and not pipe.out and not pipe.eof_sent:
                        pipe.eof_sent = True
                        pipe.dst.shutdown(socket.SHUT_WR)
            except OSError:
                self._drop_link(link, reset=True)
                self._links.remove(link)
                continue
            if link.up.eof_sent and link.down.eof_sent:
                self._drop_link(link, reset=False)
                self._links.remove(link)
                continue
            for sock, inbound, outbound in ((link.client, link.up, link.down),
                                            (link.upstream, link.down, link.up)):
                mask = (0 if inbound.eof_seen else selectors.EVENT_READ) | \
                       (selectors.EVENT_WRITE if outbound.out else 0)
                self._watch(link, sock, mask)

    def _watch(self, link: _Link, sock: socket.socket, mask: int) -> None:
        old = link.masks[sock]
        if mask == old:
            return
        if not old:
            self._sel.register(sock, mask, link)
        elif not mask:
            self._sel.unregister(sock)
        else:
            self._sel.modify(sock, mask, link)
        link.masks[sock] = mask

    def _drop_link(self, link: _Link, *, reset: bool) -> None:
        for sock in (link.client, link.upstream):
            if link.masks[sock]:
                self._sel.unregister(sock)
                link.masks[sock] = 0
            (_abort if reset else _finish)(sock)

    def _flip(self, data: bytes) -> bytes:
        """Flip distinct bits (never one twice, which would undo it), a fraction of the bytes' worth."""
        out = bytearray(data)
        count = min(8 * len(out), max(1, round(len(out) * self.garble_fraction)))
        for bit in self._rng.sample(range(8 * len(out)), count):
            out[bit // 8] ^= 1 << (bit % 8)
        return bytes(out)


# -- as its own process ----------------------------------------------------
def _control_server(proxy: CuttableProxy, host: str) -> socketserver.ThreadingTCPServer:
    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            for line in self.rfile:
                self.wfile.write((self._answer(line.decode(errors="replace").split()) + "\n").encode())

        @staticmethod
        def _answer(words: list[str]) -> str:
            try:
                if words == ["cut"]:
                    proxy.cut()
                elif words == ["cut", "reset"]:
                    proxy.cut(reset=True)
                elif words == ["blackhole"]:
                    proxy.blackhole()
                elif len(words) == 2 and words[0] == "delay":
                    proxy.delay(float(words[1]))
                elif words[:1] == ["garble"] and len(words) <= 2:
                    proxy.garble(*(float(w) for w in words[1:]))
                elif words == ["restore"]:
                    proxy.restore()
                elif words != ["status"]:
                    return "error unknown command; allowed: cut [reset], blackhole, delay S, garble [F], restore, status"
            except (ValueError, TimeoutError) as exc:
                return f"error {exc}"
            return "ok " + json.dumps({"mode": proxy.mode, "latency": proxy.latency,
                                       "connections": proxy.connections, **proxy.stats})

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    return Server((host, 0), Handler)


def proxy_control(endpoint: str, command: str, *, timeout: float = 2.0) -> str:
    """Send one command to a proxy process's control port; returns its answer line."""
    with socket.create_connection(_address(endpoint), timeout=timeout) as sock:
        sock.sendall(command.encode() + b"\n")
        reply = sock.makefile("rb").readline().decode().strip()
    if not reply.startswith("ok"):
        raise ValueError(f"proxy at {endpoint}: {command!r}: {reply or 'no answer'}")
    return reply


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labrig.simulators.faults",
                                     description="Fault-injecting TCP relay, run until SIGTERM.")
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("proxy", help="relay a TCP endpoint; control it on a second port")
    cmd.add_argument("--target", required=True, help="tcp://HOST:PORT to relay to")
    cmd.add_argument("--ready", required=True, help="file to write pid and endpoints to once listening")
    cmd.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)

    from .__main__ import write_ready

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with CuttableProxy(args.target, host=args.host) as proxy:
        control = _control_server(proxy, args.host)
        thread = threading.Thread(target=control.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        thread.start()
        try:
            write_ready(args.ready, {"pid": os.getpid(), "endpoints": {
                "proxy": proxy.endpoint, "control": f"tcp://{args.host}:{control.server_address[1]}"}})
            stop.wait()
        finally:
            control.shutdown()
            control.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

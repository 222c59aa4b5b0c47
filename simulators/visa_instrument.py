"""A vacuum gauge controller speaking SCPI over a raw TCP socket (VISA ``::SOCKET``).

    with VisaSimulator(LocalWorld(), node="gauge") as sim:
        sim.url        # "visa://TCPIP0::127.0.0.1::PORT::SOCKET"
        sim.endpoints  # {"scpi": "tcp://127.0.0.1:PORT"}

One message per line, "\\n" terminated, headers case-insensitive, long or short
form, optional leading ":":

    *IDN?            -> "Labrig,VGC-1,SIM-<node>,1.0"
    *RST             set-point threshold back to its default; error queue cleared
    *CLS             error queue cleared
    MEAS:PRES?       -> "4.000000E-01" (Pa, the world's pressure; NaN as 9.91E+37)
    SP1:THR <Pa>     set-point relay threshold, THRESHOLD_RANGE Pa, else -222
    SP1:THR?         -> "5.000000E+00"
    SP1:STAT?        -> "1" when pressure < threshold, else "0"
    SYST:ERR?        -> '0,"No error"', or the oldest queued error, e.g. '-113,"Undefined header"'

Like a real instrument, a command it cannot parse gets no reply; the error waits
in the queue for SYST:ERR?. The threshold is one per instrument; the error queue
is one per connection, so clients sharing the gauge never read each other's errors.
"""
from __future__ import annotations

import math
import socket
import socketserver
import threading

from .base import DeviceSimulator

THRESHOLD_DEFAULT = 5.0  # Pa, the PLC's vacuum_ok level
THRESHOLD_RANGE = (1e-3, 1e3)  # Pa, what the set-point relay accepts
SCPI_NAN = 9.91e37  # SCPI's representation of "not a number"
MAX_LINE = 4096  # bytes; a longer line is a client bug, not a command
QUEUE_DEPTH = 20  # SCPI error queues are finite; the newest error becomes -350 on overflow

# Long and short forms of every mnemonic we know, mapped to the short form.
_MNEMONICS = {
    "MEAS": "MEAS", "MEASURE": "MEAS",
    "PRES": "PRES", "PRESSURE": "PRES",
    "SP1": "SP1",
    "THR": "THR", "THRESHOLD": "THR",
    "STAT": "STAT", "STATE": "STAT",
    "SYST": "SYST", "SYSTEM": "SYST",
    "ERR": "ERR", "ERROR": "ERR",
}


def _canonical(header: str) -> str:
    """'measure:pressure?' -> 'MEAS:PRES?'; unknown mnemonics are kept upper-cased."""
    header = header.upper().lstrip(":")
    query = header.endswith("?")
    parts = header.rstrip("?").split(":")
    if not parts[0].startswith("*"):
        parts = [_MNEMONICS.get(p, p + "\0") for p in parts]  # "\0": never matches a command
    return ":".join(parts) + ("?" if query else "")


def _nr3(value: float) -> str:
    return f"{SCPI_NAN if math.isnan(value) else value:.6E}"


class _Session:
    """One client connection's SCPI state."""

    def __init__(self):
        self.errors: list[tuple[int, str]] = []

    def error(self, code: int, message: str) -> None:
        if len(self.errors) >= QUEUE_DEPTH:
            self.errors[-1] = (-350, "Queue overflow")
        else:
            self.errors.append((code, message))


class VisaSimulator(DeviceSimulator):
    kind = "visa"

    def __init__(self, world, *, node: str, host: str = "127.0.0.1", options=None):
        super().__init__(world, node=node, host=host, options=options)
        self.threshold = float(self.options.get("threshold", THRESHOLD_DEFAULT))
        self._lock = threading.Lock()
        self._server: socketserver.ThreadingTCPServer | None = None
        self._thread: threading.Thread | None = None
        self._clients: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []

    # -- lifecycle -------------------------------------------------------
    def start(self) -> "VisaSimulator":
        sim = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                try:
                    sim._serve(self.connection, self.rfile)
                finally:
                    with sim._lock:
                        sim._clients.discard(self.connection)

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True

            def process_request(self, request, client_address):
                # Our own thread bookkeeping (socketserver never joins daemon threads):
                # registered on the accept thread, so close() sees every client to wake and join.
                thread = threading.Thread(target=self.process_request_thread, args=(request, client_address),
                                          name=f"visa-sim-{sim.node}-client", daemon=True)
                with sim._lock:
                    sim._clients.add(request)
                    sim._threads = [t for t in sim._threads if t.is_alive()] + [thread]
                thread.start()
        self._server = Server((self.host, 0), Handler)
        port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"visa-sim-{self.node}", daemon=True)
        self._thread.start()
        self.endpoints = {"scpi": f"tcp://{self.host}:{port}"}
        self.url = f"visa://TCPIP0::{self.host}::{port}::SOCKET"
        return self

    def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()  # stops the accept loop
        with self._lock:
            clients, threads = list(self._clients), list(self._threads)
        for conn in clients:  # wakes the client threads blocked in readline
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        server.server_close()  # closes the listener
        for thread in threads:
            thread.join(2)
        if self._thread:
            self._thread.join(2)

    # -- protocol ----------------------------------------------------------
    def _serve(self, conn: socket.socket, rfile) -> None:
        session = _Session()
        while True:
            try:
                line = rfile.readline(MAX_LINE)
            except OSError:
                return
            if not line:
                return  # the client closed, or close() shut the socket
            if self.muted():
                continue  # a dead controller: the request is lost, nothing comes back
            try:
                text = line.decode("ascii").strip()
            except UnicodeDecodeError:
                session.error(-102, "Syntax error")
                continue
            if not text:
                continue
            reply = self.execute(text, session)
            if reply is None:
                continue
            self.before_reply()
            # Corrupt the payload but keep the terminator: TCP keeps the framing,
            # a lost line end would only look like the (separately tested) mute.
            data = self.garble(reply.encode("ascii")) + b"\n"
            try:
                conn.sendall(data)
            except OSError:
                return

    def execute(self, text: str, session: _Session) -> str | None:
        """Run one SCPI message; the reply line for a query, None otherwise."""
        header, _, argument = text.partition(" ")
        argument = argument.strip()
        command = _canonical(header)
        if command == "*IDN?":
            return f"Labrig,VGC-1,SIM-{self.node},1.0"
        if command == "*RST":
            with self._lock:
                self.threshold = float(self.options.get("threshold", THRESHOLD_DEFAULT))
            session.errors.clear()
            return None
        if command == "*CLS":
            session.errors.clear()
            return None
        if command == "MEAS:PRES?":
            return _nr3(self._pressure())
        if command == "SP1:THR?":
            return _nr3(self.threshold)
        if command == "SP1:STAT?":
            pressure = self._pressure()
            return "1" if pressure < self.threshold else "0"  # NaN: relay open, the safe side
        if command == "SYST:ERR?":
            if not session.errors:
                return '0,"No error"'
            code, message = session.errors.pop(0)
            return f'{code},"{message}"'
        if command == "SP1:THR":
            self._set_threshold(argument, session)
            return None
        session.error(-113, "Undefined header")
        return None

    def _set_threshold(self, argument: str, session: _Session) -> None:
        if not argument:
            session.error(-109, "Missing parameter")
            return
        try:
            value = float(argument)
        except ValueError:
            session.error(-104, "Data type error")
            return
        lo, hi = THRESHOLD_RANGE
        if not lo <= value <= hi:  # NaN fails too
            session.error(-222, "Data out of range")
            return
        with self._lock:
            self.threshold = value

    def _pressure(self) -> float:
        return float(self.world.get("pressure"))

"""A Siemens Simatic S7 PLC: python-snap7's server holding DB1, plus a PLC scan cycle.

    with SimaticSimulator(LocalWorld(), node="plc1", options={"rig": "examples/ishtar/rig.toml"}) as sim:
        sim.url        # "s7://127.0.0.1:PORT?rack=0&slot=1"
        sim.endpoints  # {"s7": "tcp://127.0.0.1:PORT"}
        sim.plc_trips  # the PLC interlocks latched now, e.g. ["rf_enable_needs_vacuum_and_door"]

DB1 (big-endian, as on a real S7), as the example rig names it:
    DBD0    REAL  coil current setpoint (A)          host -> PLC
    DBD4    REAL  coil current actual (A)            PLC <- world coil_current
    DBD8    REAL  pressure (Pa)                      PLC <- world pressure
    DBX12.0 BOOL  door_closed                        PLC <- world door_closed
    DBX12.1 BOOL  vacuum_ok (pressure < 5 Pa)        status
    DBX12.2 BOOL  rf_permit = effective rf_enable    PLC -> world rf_permit (the RF amplifier)
    DBX12.3 BOOL  watchdog_ok
    DBW14   INT   watchdog word the host keeps changing
    DBX16.0 BOOL  coil_enable                        host -> PLC
    DBX16.1 BOOL  rf_enable, the host's RF request   host -> PLC
    DBW18   INT   latched PLC interlocks, bit i = the program's interlock i (labrig plc tags)

The program is the rig's (option `rig`, this node's tags and interlocks, exactly as
labrig.supervisor.rig.plc.plc_program lists them for the real PLC); without one, the
built-in DEFAULT_RIG, the example rig's PLC. Every scan (10 ms) the PLC reads the
world into DB1, evaluates every PLC interlock over its tags, and computes the
effective value of every host output: the host's value, or its safe value while
the watchdog word is stale or an interlock forcing it fails (latched: it clears
once the condition holds AND the host has written the safe value, a restart
interlock). The plant wiring is fixed, by address: world rf_permit = effective
DBX16.1; world coil_current_cmd = effective DBD0 (clamped to 0..600 A) while the
effective DBX16.0 is set, else 0. An address the program does not declare as an
output drives the plant with the host's raw value, and 0 while the watchdog is stale.

Options (strings from the command line are accepted): rig (path of the rig file),
watchdog_timeout (s, default 1.0), db_size (bytes, default 32), scan_period (s,
default 0.01).

Link faults: snap7's server cannot garble or mute itself, so the URL points at a
small TCP relay in front of it (`FaultyLink`) that applies this node's link
faults to the byte stream: mute drops requests (the PLC never sees them, as
with a cut cable) and sends nothing back; garble flips bits in replies; slow
delays replies. `cut()` / `restore()` go further, for tests: a silently dead
link (nothing moves, no FIN) or one closed under the client.
"""
from __future__ import annotations

import math
import selectors
import socket
import threading
import time
from dataclasses import dataclass

from snap7.server import Server
from snap7.type import SrvArea

from labrig.drivers.calibration import Calibration
from labrig.drivers.errors import ConfigError
from labrig.drivers.simatic.tags import S7Tag, parse_tag
from labrig.supervisor.rig.plc import plc_program
from labrig.supervisor.rig import Condition, Rig

from .base import DeviceSimulator

DB_NUMBER = 1
# The simulated plant's wiring, by DB1 address.
COIL_SETPOINT = parse_tag("DB1.DBD0")
COIL_ACTUAL = parse_tag("DB1.DBD4")
PRESSURE = parse_tag("DB1.DBD8")
DOOR_CLOSED = parse_tag("DB1.DBX12.0")
VACUUM_OK = parse_tag("DB1.DBX12.1")
RF_PERMIT = parse_tag("DB1.DBX12.2")
WATCHDOG_OK = parse_tag("DB1.DBX12.3")
COIL_ENABLE = parse_tag("DB1.DBX16.0")
RF_ENABLE = parse_tag("DB1.DBX16.1")

VACUUM_OK_PA = 5.0  # Pa: below it the vacuum is good enough for RF
COIL_MAX_A = 600.0  # A: the coil supply's span; the PLC clamps its setpoint into it
RESEND_PERIOD = 0.5  # s: re-send actuators even when unchanged (a restarted world catches up)

# The PLC of examples/ishtar/rig.toml: what the simulated PLC runs when given no rig.
DEFAULT_RIG = """
schema_version = 1
name = "plc-default"
[nodes.plc]
kind = "simatic"
connection = "s7://127.0.0.1:102"
[signals.coil_current_set]
node = "plc"
channel = "DB1.DBD0"
direction = "out"
unit = "A"
safe = 0.0
[signals.coil_current]
node = "plc"
channel = "DB1.DBD4"
[signals.plc_pressure]
node = "plc"
channel = "DB1.DBD8"
[signals.door_closed]
node = "plc"
channel = "DB1.DBX12.0"
[signals.vacuum_ok]
node = "plc"
channel = "DB1.DBX12.1"
[signals.rf_permit]
node = "plc"
channel = "DB1.DBX12.2"
[signals.plc_watchdog_ok]
node = "plc"
channel = "DB1.DBX12.3"
[signals.coil_enable]
node = "plc"
channel = "DB1.DBX16.0"
direction = "out"
safe = 0.0
[signals.rf_enable]
node = "plc"
channel = "DB1.DBX16.1"
direction = "out"
safe = 0.0
[interlocks.rf_enable_needs_vacuum_and_door]
require = "plc_pressure < 5 and door_closed == 1"
outputs = ["rf_enable"]
[interlocks.coil_needs_door_closed]
require = "door_closed == 1"
outputs = ["coil_enable"]
"""


# -- the PLC program ---------------------------------------------------------
@dataclass(frozen=True)
class PlcInterlock:
    name: str
    condition: Condition
    outputs: tuple[str, ...]  # signal names
    latch: bool
    bit: int | None  # in the trip word


class PlcProgram:
    """One simatic node's program from a rig: `run(db, watchdog_ok=...)` is one scan of its logic.

    Reads tags by signal name out of the DB image (calibrated, as the rig's conditions
    are written in physical units) and returns the effective raw value of every host
    output, by tag address. Keeps the latches between scans.
    """

    def __init__(self, rig: Rig, node: str, *, db_size: int = 1 << 16):
        program = plc_program(rig)
        if node not in program["plcs"]:
            raise ConfigError(f"rig {rig.name!r} has no simatic node {node!r}; "
                              f"its PLCs: {', '.join(program['plcs']) or 'none'}")
        plc = program["plcs"][node]
        calibrations = {spec.name: spec.calibration for spec in rig.channel_specs(node)}
        self.tags: dict[str, tuple[S7Tag, Calibration]] = {}
        self.safe: dict[str, float] = {}  # output signal -> safe raw value (0, de-energised, if none declared)
        for t in plc["tags"]:
            tag = _in_db(t["address"], t["signal"], db_size)
            cal = calibrations[t["signal"]]
            self.tags[t["signal"]] = (tag, cal)
            if t["direction"] == "out":
                self.safe[t["signal"]] = 0.0 if t["safe"] is None else cal.to_raw(t["safe"], tag.range)
        self.watchdog_tag = _in_db(plc["watchdog"]["address"], "watchdog word", db_size)
        self.trip_tag = _in_db(plc["trips"]["address"], "trip word", db_size)
        self.interlocks = [PlcInterlock(lock["interlock"], rig.interlocks[lock["interlock"]].require,
                                        tuple(lock["forces_safe"]), lock["latch"], lock["bit"])
                           for lock in program["interlocks"] if lock["plc"] == node]
        self.latched: frozenset[str] = frozenset()  # replaced whole each scan: readers never see it half-done

    def run(self, db: bytearray, *, watchdog_ok: bool) -> dict[str, float]:
        values = {name: cal.to_physical(tag.get(db)) for name, (tag, cal) in self.tags.items()}
        host = {name: self.tags[name][0].get(db) for name in self.safe}
        forced: set[str] = set()
        latched = set(self.latched)
        for lock in self.interlocks:
            if not lock.condition(values):
                forced.update(lock.outputs)
                if lock.latch:
                    latched.add(lock.name)
            elif lock.name in latched:
                if all(_same(host[o], self.safe[o]) for o in lock.outputs):
                    latched.discard(lock.name)  # restart: the condition holds and the host asked for safe
                else:
                    forced.update(lock.outputs)
        self.latched = frozenset(latched)
        return {self.tags[name][0].address: safe if not watchdog_ok or name in forced else host[name]
                for name, safe in self.safe.items()}

    def trip_word(self) -> int:
        return sum(1 << lock.bit for lock in self.interlocks if lock.name in self.latched and lock.bit is not None)


def _in_db(address: str, what: str, db_size: int) -> S7Tag:
    tag = parse_tag(address, channel=what)
    if tag.db != DB_NUMBER or tag.offset + tag.size > db_size:
        raise ConfigError(f"PLC tag {what!r} ({tag.address}) is outside the simulated PLC's "
                          f"DB{DB_NUMBER} of {db_size} bytes; raise the db_size option or move the tag")
    return tag


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)  # a REAL is float32


def load_program(options: dict, node: str, db_size: int) -> PlcProgram:
    """The rig's program for this node (option `rig`), else the built-in default's."""
    if options.get("rig"):
        return PlcProgram(Rig.load(options["rig"]), node, db_size=db_size)
    return PlcProgram(Rig.from_text(DEFAULT_RIG, source="DEFAULT_RIG"), "plc", db_size=db_size)


def plant(effective: dict[str, float], db: bytearray, watchdog_ok: bool) -> tuple[float, float]:
    """The fixed wiring from the PLC's outputs to the plant: (rf_permit, coil_current_cmd).

    NaN fails safe: a NaN setpoint is 0 A.
    """
    def out(tag: S7Tag) -> float:
        return effective.get(tag.address, tag.get(db) if watchdog_ok else 0.0)
    setpoint = out(COIL_SETPOINT)
    coil = min(max(setpoint, 0.0), COIL_MAX_A) if out(COIL_ENABLE) >= 0.5 and not math.isnan(setpoint) else 0.0
    return (1.0 if out(RF_ENABLE) >= 0.5 else 0.0), coil


class Watchdog:
    """OK while the host's watchdog word keeps changing; not OK before its first change."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self._last: float | None = None
        self._changed_at: float | None = None

    def update(self, word: float, now: float) -> bool:
        if self._last is not None and word != self._last:
            self._changed_at = now
        self._last = word
        return self._changed_at is not None and now - self._changed_at < self.timeout


# -- the simulator -------------------------------------------------------------
class SimaticSimulator(DeviceSimulator):
    kind = "simatic"

    def __init__(self, world, *, node: str, host: str = "127.0.0.1", options=None):
        super().__init__(world, node=node, host=host, options=options)
        self.watchdog_timeout = float(self.options.get("watchdog_timeout", 1.0))
        self.scan_period = float(self.options.get("scan_period", 0.01))
        db_size = int(self.options.get("db_size", 32))
        if db_size < 32:
            raise ValueError(f"db_size {db_size} is too small; DB1 needs at least 32 bytes")
        self.db = bytearray(db_size)  # DB1 itself: snap7's server serves this very buffer
        self.program = load_program(self.options, node, db_size)
        self.effective: dict[str, float] = {}  # output tag address -> what the PLC drives, last scan
        self.watchdog = Watchdog(self.watchdog_timeout)
        self.scans = 0
        self.last_error: BaseException | None = None
        self.plc_port = 0  # the snap7 server's own port (behind the relay)
        self._server: Server | None = None
        self._relay: FaultyLink | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sent: dict[str, tuple[float, float]] = {}  # actuator -> (value, when sent)

    def start(self) -> "SimaticSimulator":
        server = Server(log=False)
        server.register_area(SrvArea.DB, DB_NUMBER, self.db)
        server.host = self.host
        server.start(tcp_port=0)  # snap7 binds the port it is given; 0: the OS picks one
        self._server = server
        self.plc_port = server.server_socket.getsockname()[1]
        try:
            self._scan()  # DB1 holds real values before the first client can read it
            self._relay = FaultyLink(self, self.host, self.plc_port)
        except BaseException:
            self.close()
            raise
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"plc-scan {self.node}", daemon=True)
        self._thread.start()
        port = self._relay.port
        self.endpoints = {"s7": f"tcp://{self.host}:{port}"}
        self.url = f"s7://{self.host}:{port}?rack=0&slot=1"
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
            self._thread = None
        relay, self._relay = self._relay, None
        if relay is not None:
            relay.close()  # closes the server's client sockets, so its handlers end now
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    # -- link faults beyond the world's (tests) ------------------------------
    def cut(self, *, silent: bool = True) -> None:
        """Cut the link: silent, nothing moves and nothing is closed (a pulled cable, a
        frozen PLC); not silent, every client connection is closed under its client."""
        self._relay.cut(silent=silent)

    def restore(self) -> None:
        self._relay.restore()

    # -- the scan cycle ------------------------------------------------------
    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self._scan()
            except Exception as exc:  # a PLC keeps scanning whatever the world does
                self.last_error = exc
            next_at += self.scan_period
            delay = next_at - time.monotonic()
            if delay < 0:
                next_at, delay = time.monotonic(), 0.0
            self._stop.wait(delay)

    def _scan(self) -> None:
        now = time.monotonic()
        state = self.world.state()
        pressure = float(state.get("pressure", math.nan))
        door = float(state.get("door_closed", 0.0)) >= 0.5  # NaN: open, the safe reading
        program = self.program
        self._server.lock_area(SrvArea.DB, DB_NUMBER)  # the server writes DB1 under the same lock
        try:
            db = self.db
            # inputs first, so the logic sees this scan's world
            COIL_ACTUAL.put(db, float(state.get("coil_current", math.nan)))
            PRESSURE.put(db, pressure)
            DOOR_CLOSED.put(db, door)
            VACUUM_OK.put(db, pressure < VACUUM_OK_PA)
            watchdog_ok = self.watchdog.update(program.watchdog_tag.get(db), now)
            WATCHDOG_OK.put(db, watchdog_ok)
            effective = program.run(db, watchdog_ok=watchdog_ok)
            rf_permit, coil = plant(effective, db, watchdog_ok)
            RF_PERMIT.put(db, rf_permit)
            program.trip_tag.put(db, program.trip_word())
            # the plant gets the outputs before any client can read them in DB1: both change together
            self.effective = effective
            self._actuate("coil_current_cmd", coil, now)
            self._actuate("rf_permit", rf_permit, now)
        finally:
            self._server.unlock_area(SrvArea.DB, DB_NUMBER)
        self.scans += 1

    @property
    def plc_trips(self) -> list[str]:
        """The PLC interlocks latched now (holding their outputs safe)."""
        return sorted(self.program.latched)

    def _actuate(self, name: str, value: float, now: float) -> None:
        sent = self._sent.get(name)
        if sent is None or sent[0] != value or now - sent[1] > RESEND_PERIOD:
            self.world.set(name, value)
            self._sent[name] = (value, now)


class FaultyLink:
    """A TCP relay in front of the snap7 server that applies the node's link faults.

    One thread, one selector: it accepts clients, opens one server connection for
    each, and copies bytes both ways, muting requests, garbling or delaying replies.
    """

    def __init__(self, sim: DeviceSimulator, host: str, upstream_port: int):
        self.sim = sim
        self.upstream = (host, upstream_port)
        self._listener = socket.create_server((host, 0))
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._peers: dict[socket.socket, socket.socket] = {}
        self._frozen = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # cut(silent=False) closes sockets from another thread
        self._thread = threading.Thread(target=self._run, name=f"s7-relay {sim.node}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._frozen.is_set():
                self._stop.wait(0.01)
                continue
            with self._lock:
                events = self._selector.select(0.02)
                for key, _ in events:
                    if self._stop.is_set() or self._frozen.is_set():
                        break
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj in self._peers:
                        self._pump(key.fileobj, is_request=key.data == "client")

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except OSError:
            return
        try:
            server = socket.create_connection(self.upstream, timeout=2.0)
        except OSError:
            client.close()  # the PLC is gone: so is the client's connection
            return
        for sock in (client, server):
            sock.settimeout(2.0)  # sendall of a reply never waits longer than this
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._peers[client], self._peers[server] = server, client
        self._selector.register(client, selectors.EVENT_READ, "client")
        self._selector.register(server, selectors.EVENT_READ, "server")

    def _pump(self, sock: socket.socket, *, is_request: bool) -> None:
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop(sock)
            return
        try:
            if is_request:
                if self.sim.muted():
                    return  # read the request, send nothing: the PLC never hears it
                self._peers[sock].sendall(data)
            else:
                self.sim.before_reply()
                self._peers[sock].sendall(self.sim.garble(data))
        except OSError:
            self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        peer = self._peers.pop(sock, None)
        for s in (sock, peer):
            if s is None:
                continue
            self._peers.pop(s, None)
            try:
                self._selector.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()

    def cut(self, *, silent: bool = True) -> None:
        if silent:
            self._frozen.set()
            return
        with self._lock:
            for sock in list(self._peers):
                self._drop(sock)

    def restore(self) -> None:
        self._frozen.clear()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        with self._lock:
            for sock in list(self._peers):
                self._drop(sock)
            self._selector.unregister(self._listener)
            self._listener.close()
            self._selector.close()

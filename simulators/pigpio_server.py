"""A Raspberry Pi as its pigpio daemon (pigpiod) shows it on the socket interface.

    with PigpioSimulator(LocalWorld(), node="pi1") as sim:
        sim.url        # "pigpio://127.0.0.1:PORT"
        sim.endpoints  # {"pigpio": "tcp://127.0.0.1:PORT"}

The wire format is pigpiod's (abyz.me.uk/rpi/pigpio/sif.html): a request is 16
bytes, little-endian uint32 cmd, p1, p2, p3, followed by p3 bytes of extension;
the reply echoes cmd, p1, p2 and puts the result (int32, negative = PI_ error
code) in the fourth word. NOIB turns a connection into a notification stream of
12-byte reports (uint16 seq, uint16 flags, uint32 tick, uint32 levels of GPIO
0-31), sent whenever a GPIO the stream monitors (NB bits) changes level. The
unmodified `pigpio` client and gpiozero's PiGPIOFactory drive it.

Wiring to the world (the example rig's calibrations invert exactly this):
    GPIO17 in   door switch, 1 = closed      <- door_closed >= 0.5
    GPIO27 in   cooling OK                   <- cooling_flow > 2 L/min
    GPIO18 out  gas valve, software PWM      -> gas_valve = duty / range (level when not PWM)
    GPIO23 out  shot trigger                 -> trigger
    GPIO24 out  charge-pump heartbeat        -> heartbeat_pin
An output that is not driven (input mode) reads as its pull and is sent to the
world as that level: an unpowered valve or trigger line is off.

Charge pump: the outputs reach the world through a safety relay that holds only
while the heartbeat pin (GPIO24) has changed level within the last `charge_pump`
seconds, as a real charge-pump relay does. Otherwise the world sees every output
at 0 (`charge_pump_live` is False); once the toggling resumes, the outputs come back
at the pins' present state (pigpiod keeps its pins when a client dies: the relay,
not the daemon, is what stops a dead host's valve). The world's heartbeat_pin
follows the pin itself, relay or not.

Options (strings from the command line are accepted): tick_start (int, default 0):
the first value of the microsecond tick; heartbeat_pin (BCM, default 24; "none":
no relay, outputs always live); charge_pump (s, default 0.2: 10 edges of the
driver's 20 ms heartbeat, slack for a busy machine); rig (a rig file: its node's
heartbeat_pin option, or no relay when the node has none).
"""
from __future__ import annotations

import math
import socket
import struct
import threading
import time
from dataclasses import dataclass

from .base import DeviceSimulator

HW_REVISION = 0xA02082  # HWVER: a Raspberry Pi 3 Model B; gpiozero looks the board up by it
PIGPIO_VERSION = 79  # PIGPV

REQUEST = struct.Struct("<IIII")  # cmd, p1, p2, p3 (request) / cmd, p1, p2, result (reply)
REPORT = struct.Struct("<HHII")  # seq, flags, tick, levels
MAX_EXTENSION = 65536  # pigpiod drops a client that announces more
RECV_SIZE = 65536  # bytes read from a client at once

# Command numbers of the socket interface (the subset gpiozero and pigpio.pi use).
MODES, MODEG, PUD, READ, WRITE, PWM, PRS, PFS = 0, 1, 2, 3, 4, 5, 6, 7
BR1, TICK, HWVER, NB, NC, PRG, PFG, PIGPV = 10, 16, 17, 19, 21, 22, 23, 26
GDC, FG, NOIB = 83, 97, 99

# Error codes, as pigpio.h numbers them.
PI_BAD_USER_GPIO = -2
PI_BAD_GPIO = -3
PI_BAD_MODE = -4
PI_BAD_LEVEL = -5
PI_BAD_PUD = -6
PI_BAD_DUTYCYCLE = -8
PI_BAD_DUTYRANGE = -21
PI_NO_HANDLE = -24
PI_BAD_HANDLE = -25
PI_UNKNOWN_COMMAND = -88
PI_NOT_PWM_GPIO = -92
PI_BAD_FILTER = -125

INPUT, OUTPUT = 0, 1
PUD_OFF, PUD_DOWN, PUD_UP = 0, 1, 2
MAX_GPIO = 53  # BCM GPIOs 0..53 exist; 0..31 are "user" GPIOs (PWM, notifications)
MAX_USER_GPIO = 31
NOTIFY_SLOTS = 32
# Software PWM frequencies at pigpiod's default 5 us sample rate; PFS picks the closest.
PWM_FREQUENCIES = (8000, 4000, 2000, 1600, 1000, 800, 500, 400, 320, 250, 200, 160,
                   100, 80, 50, 40, 20, 10)
POLL_PERIOD = 0.005  # s between looks at the world's inputs (the world publishes every 5 ms)
HEARTBEAT_PIN = 24  # the example rig's charge-pump pin
CHARGE_PUMP_S = 0.2


@dataclass
class _Pin:
    mode: int = INPUT
    pud: int = PUD_OFF
    level: int = 0  # last level written (outputs)
    pwm: bool = False
    duty: int = 0
    range: int = 255
    frequency: int = 800
    steady: int = 0  # glitch filter (us); accepted, not modelled


class _Client:
    """One accepted connection: a command socket, or a notification stream after NOIB."""

    def __init__(self, sock: socket.socket, address):
        self.sock = sock
        self.address = address
        self.send_lock = threading.Lock()
        self.thread: threading.Thread | None = None


@dataclass
class _Notifier:
    client: _Client
    bits: int = 0
    seq: int = 0


def _world_bool(test):
    """A world quantity -> input level; NaN (a failed sensor) reads as 0, the safe level."""
    def level(value: float) -> int:
        return int(not math.isnan(value) and test(value))
    return level


class PigpioSimulator(DeviceSimulator):
    kind = "rpi"

    # BCM GPIO -> (world quantity, level from its value): inputs the world drives
    WORLD_INPUTS = {
        17: ("door_closed", _world_bool(lambda v: v >= 0.5)),
        27: ("cooling_flow", _world_bool(lambda v: v > 2.0)),
    }
    # BCM GPIO -> world actuator the pin drives
    WORLD_OUTPUTS = {18: "gas_valve", 23: "trigger", 24: "heartbeat_pin"}

    def __init__(self, world, *, node: str, host: str = "127.0.0.1", options=None):
        super().__init__(world, node=node, host=host, options=options)
        self._pins = [_Pin() for _ in range(MAX_GPIO + 1)]
        self._lock = threading.RLock()  # pin state, notifiers, the last reported levels
        self._notifiers: dict[int, _Notifier] = {}
        self._clients: set[_Client] = set()
        self._reported = 0  # GPIO 0-31 levels as last reported to the streams
        self._pushed: dict[int, float] = {}  # what we last sent the world, per output GPIO
        self._t0 = time.monotonic()
        # Where the microsecond tick starts (a real Pi's counts from boot and wraps every
        # 71.6 min); option tick_start lets tests put the wrap, and the sign bit, in reach.
        self._tick0 = int(str(self.options.get("tick_start", 0)), 0) & 0xFFFFFFFF
        self.heartbeat_pin = self._heartbeat_option()
        self.charge_pump = float(self.options.get("charge_pump", CHARGE_PUMP_S))
        self.world_outputs = dict(self.WORLD_OUTPUTS)
        if self.heartbeat_pin not in (None, HEARTBEAT_PIN):  # the world's heartbeat_pin follows the pump
            if self.heartbeat_pin in self.world_outputs or self.heartbeat_pin in self.WORLD_INPUTS:
                raise ValueError(f"heartbeat_pin {self.heartbeat_pin} is wired to the plant; pick a free pin")
            del self.world_outputs[HEARTBEAT_PIN]
            self.world_outputs[self.heartbeat_pin] = "heartbeat_pin"
        self._beat_level = 0  # the heartbeat pin's level when last looked at
        self._beat_at: float | None = None  # when it last changed: never, so the relay starts open
        self._live = False  # the relay's state as last sent to the world
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._closed = False

    def _heartbeat_option(self) -> int | None:
        if self.options.get("rig"):
            from labrig.supervisor.rig import Rig  # only a rig-driven testbed needs the rig model
            pin = Rig.load(self.options["rig"]).node(self.node).options.get("heartbeat_pin")
        else:
            pin = self.options.get("heartbeat_pin", HEARTBEAT_PIN)
        if pin is None or str(pin).strip().lower() == "none":
            return None
        pin = int(str(pin), 0)
        if not 0 <= pin <= MAX_USER_GPIO:
            raise ValueError(f"heartbeat_pin {pin} is not a user GPIO 0..{MAX_USER_GPIO}")
        return pin

    @property
    def charge_pump_live(self) -> bool:
        """True while the relay holds: the heartbeat pin changed level within `charge_pump` s."""
        if self.heartbeat_pin is None:
            return True
        beat = self._beat_at
        return beat is not None and time.monotonic() - beat < self.charge_pump

    # -- lifecycle -------------------------------------------------------
    def start(self) -> "PigpioSimulator":
        listener = socket.create_server((self.host, 0))
        self._listener = listener
        port = listener.getsockname()[1]
        self.endpoints = {"pigpio": f"tcp://{self.host}:{port}"}
        self.url = f"pigpio://{self.host}:{port}"
        with self._lock:
            self._reported = self._bank()
            self._push_outputs(force=True)
        for target, name in ((self._accept, "accept"), (self._poll, "poll")):
            thread = threading.Thread(target=target, name=f"pigpio-{name}-{self.node}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._listener is not None:
            try:  # wakes accept() at once on Linux
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            self._drop(client)
        for thread in self._threads + [c.thread for c in clients if c.thread]:
            if thread is not threading.current_thread():
                thread.join(2)

    # -- serving ---------------------------------------------------------
    def _accept(self):
        while not self._stop.is_set():
            try:
                sock, address = self._listener.accept()
            except OSError:
                return  # listener closed
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client = _Client(sock, address)
            client.thread = threading.Thread(target=self._serve, args=(client,),
                                             name=f"pigpio-client-{self.node}", daemon=True)
            with self._lock:
                if self._stop.is_set():
                    sock.close()
                    return
                self._clients.add(client)
                client.thread.start()  # under the lock: close() never joins an unstarted thread

    def _serve(self, client: _Client):
        """Commands in the order they came, one reply each. Requests that arrive together (a client
        that pipelines them) are answered together, in one send, as a C daemon answers at once;
        on a faulty link (slow, garbled) each reply goes out on its own, after its own delay."""
        pending = b""
        try:
            while not self._stop.is_set():
                data = client.sock.recv(RECV_SIZE)
                if not data:
                    return
                pending += data
                replies, at = [], 0
                while len(pending) - at >= REQUEST.size:
                    cmd, p1, p2, p3 = REQUEST.unpack_from(pending, at)
                    if p3 > MAX_EXTENSION:
                        return  # like pigpiod: a client that sends nonsense lengths is dropped
                    if len(pending) - at < REQUEST.size + p3:
                        break  # the extension is still on its way
                    at += REQUEST.size + p3
                    fault = self.link_fault()
                    if fault and fault["mode"] == "mute":
                        continue  # the request is lost on a cut link: neither done nor answered
                    with self._lock:
                        result = self._command(client, cmd, p1, p2)
                    reply = REQUEST.pack(cmd, p1, p2, result & 0xFFFFFFFF)
                    if fault:
                        self._send(client, replies)
                        replies = []
                        self.before_reply()
                        self._send(client, [self.garble(reply)])
                    else:
                        replies.append(reply)
                pending = pending[at:]
                self._send(client, replies)
        except OSError:
            pass  # peer reset, or we are closing
        finally:
            self._drop(client)

    @staticmethod
    def _send(client: _Client, replies: list[bytes]) -> None:
        if replies:
            with client.send_lock:
                client.sock.sendall(b"".join(replies))

    def _drop(self, client: _Client) -> None:
        with self._lock:
            self._clients.discard(client)
            for handle in [h for h, n in self._notifiers.items() if n.client is client]:
                del self._notifiers[handle]  # pigpiod closes a gone client's notifications
        try:
            client.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        client.sock.close()

    # -- the commands ----------------------------------------------------
    def _command(self, client: _Client, cmd: int, p1: int, p2: int) -> int:
        """Run one command on the pin state (lock held); the int32 result."""
        if cmd in (MODES, MODEG, PUD, READ, WRITE) and p1 > MAX_GPIO:
            return PI_BAD_GPIO
        if cmd in (PWM, GDC, PRS, PRG, PFS, PFG, FG) and p1 > MAX_USER_GPIO:
            return PI_BAD_USER_GPIO
        pin = self._pins[p1] if p1 <= MAX_GPIO else None
        if cmd == MODES:
            if p2 > 7:
                return PI_BAD_MODE
            pin.mode = p2
            if p2 != OUTPUT:
                pin.pwm = False
            return self._changed()
        if cmd == MODEG:
            return pin.mode
        if cmd == PUD:
            if p2 > PUD_UP:
                return PI_BAD_PUD
            pin.pud = p2
            return self._changed()
        if cmd == READ:
            return self._level(p1, self._world_levels((p1,)))
        if cmd == WRITE:
            if p2 > 1:
                return PI_BAD_LEVEL
            pin.mode, pin.pwm, pin.level = OUTPUT, False, p2  # writing stops PWM on the pin
            return self._changed()
        if cmd == PWM:
            if p2 > pin.range:
                return PI_BAD_DUTYCYCLE
            pin.mode, pin.pwm, pin.duty = OUTPUT, True, p2
            return self._changed()
        if cmd == GDC:
            return pin.duty if pin.pwm else PI_NOT_PWM_GPIO
        if cmd == PRS:
            if not 25 <= p2 <= 40000:
                return PI_BAD_DUTYRANGE
            if pin.pwm:  # pigpiod rescales a running duty cycle to the new range
                pin.duty = round(pin.duty * p2 / pin.range)
            pin.range = p2
            self._changed()
            return 200000 // pin.frequency  # the real range at this frequency
        if cmd == PRG:
            return pin.range
        if cmd == PFS:
            pin.frequency = min(PWM_FREQUENCIES, key=lambda f: abs(f - p2))
            return pin.frequency
        if cmd == PFG:
            return pin.frequency
        if cmd == FG:
            if p2 > 300000:
                return PI_BAD_FILTER
            pin.steady = p2
            return 0
        if cmd == BR1:
            return self._bank()
        if cmd == TICK:
            return self._tick()
        if cmd == HWVER:
            return HW_REVISION
        if cmd == PIGPV:
            return PIGPIO_VERSION
        if cmd == NOIB:
            free = [h for h in range(NOTIFY_SLOTS) if h not in self._notifiers]
            if not free:
                return PI_NO_HANDLE
            self._notifiers[free[0]] = _Notifier(client)
            return free[0]
        if cmd == NB:
            if p1 not in self._notifiers:
                return PI_BAD_HANDLE
            self._notifiers[p1].bits = p2
            return 0
        if cmd == NC:
            # The reply to NC on the stream itself is what wakes the client's reader to quit.
            return 0 if self._notifiers.pop(p1, None) else PI_BAD_HANDLE
        return PI_UNKNOWN_COMMAND

    # -- pin levels and the world ----------------------------------------
    def _tick(self) -> int:
        return (self._tick0 + int((time.monotonic() - self._t0) * 1e6)) & 0xFFFFFFFF

    def _world_levels(self, gpios=None) -> dict[int, int]:
        """Levels the plant drives on its input pins (all, or those of `gpios` that it drives)."""
        state = self.world.state()
        wired = self.WORLD_INPUTS.items() if gpios is None else \
            [(g, self.WORLD_INPUTS[g]) for g in gpios if g in self.WORLD_INPUTS]
        return {gpio: level(float(state.get(name, math.nan))) for gpio, (name, level) in wired}

    def _level(self, gpio: int, world_levels: dict[int, int]) -> int:
        pin = self._pins[gpio]
        if pin.mode == OUTPUT:
            if pin.pwm:
                return int(pin.duty > 0 and 2 * pin.duty >= pin.range)
            return pin.level
        if pin.mode == INPUT:
            if gpio in world_levels:
                return world_levels[gpio]
            return int(pin.pud == PUD_UP)
        return 0  # an ALT function: the peripheral drives it; we model it idle low

    def _bank(self) -> int:
        world_levels = self._world_levels()
        return sum(self._level(g, world_levels) << g for g in range(MAX_USER_GPIO + 1))

    def _changed(self) -> int:
        """After a command changed pin state: drive the world, report edges. Returns 0 (OK)."""
        self._push_outputs()
        self._report()
        return 0

    def _push_outputs(self, force: bool = False) -> None:
        world_levels = {}
        if self.heartbeat_pin is not None:
            level = self._level(self.heartbeat_pin, world_levels)
            if level != self._beat_level:
                self._beat_level, self._beat_at = level, time.monotonic()
        self._live = live = self.charge_pump_live
        for gpio, name in self.world_outputs.items():
            pin = self._pins[gpio]
            if gpio != self.heartbeat_pin and not live:
                value = 0.0  # the relay has dropped: the plant sees nothing of this output
            elif pin.mode == OUTPUT and pin.pwm:
                value = pin.duty / pin.range
            else:
                value = float(self._level(gpio, world_levels))
            if force or self._pushed.get(gpio) != value:
                try:
                    self.world.set(name, value)
                    self._pushed[gpio] = value
                except Exception:  # a world that refuses must not take the Pi's socket down
                    pass

    def _report(self) -> None:
        """Send a report to every stream that monitors a GPIO whose level changed (lock held)."""
        levels = self._bank()
        changed = levels ^ self._reported
        if not changed:
            return
        self._reported = levels
        if self.muted():
            return  # the reports are lost with the link
        tick = self._tick()
        for handle, notifier in list(self._notifiers.items()):
            if not notifier.bits & changed:
                continue
            report = REPORT.pack(notifier.seq, 0, tick, levels)
            notifier.seq = (notifier.seq + 1) & 0xFFFF
            client = notifier.client
            # Never let a client that stopped reading stall the Pi: drop its stream instead.
            if not client.send_lock.acquire(timeout=0.1):
                continue
            try:
                sent = client.sock.send(self.garble(report), socket.MSG_DONTWAIT)
                if sent != len(report):
                    raise BlockingIOError
            except OSError:
                self._notifiers.pop(handle, None)
            finally:
                client.send_lock.release()

    def _poll(self):
        """Turn world-driven input changes into edge reports."""
        while not self._stop.wait(POLL_PERIOD):
            try:
                with self._lock:
                    self._report()
                    if self.charge_pump_live != self._live:
                        self._push_outputs()  # the relay dropped, or picked up again
            except Exception:  # a world hiccup (e.g. a half-built state) must not end the poller
                continue

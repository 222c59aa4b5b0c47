"""Raspberry Pi GPIO through gpiozero: remote over the pigpio daemon's socket, or mocked.

    channels = [ChannelSpec("door", "GPIO17"),
                ChannelSpec("gas_valve", "PWM18", "out", safe_value=0.0),
                ChannelSpec("trigger", "GPIO23", "out", safe_value=0.0)]
    with GPIODriver("pigpio://raspberrypi.local:8888", channels) as pi:
        pi.read("door")            # 1.0: the pin's level, asked of the Pi every time
        pi.write("gas_valve", 0.4) # PWM duty 0..1 (gpiozero's PWMOutputDevice.value)

    GPIODriver("mock://", channels)   # gpiozero's MockFactory, for unit tests of this layer:
                                      # drv.factory.pin(17).drive_low(); drv.factory.pin(23).states

Addresses: "GPIO<n>" (a digital input, or output when the channel's direction is
"out") and "PWM<n>" (an output; raw duty 0..1), n the BCM number 0..27.

gpiozero does the pin semantics; this driver bounds the link. The pigpio client
reads its sockets with no timeout, so a hung Pi would block a caller forever:
after connecting, its command socket is replaced by a _Wire that gives every
exchange the driver's timeout and checks pigpiod's echo of each request. Levels
are always read from the Pi, never inferred from edges (pigpio can lose the first
edge after a callback is set up).

Charge pump: with `heartbeat_pin=N` (the rig's node option), a Keepalive thread
toggles GPIO N every `heartbeat_period` (20 ms). The Pi's safety relay keeps the
outputs powered only while it sees that pin toggle, so when this process dies or
hangs (or the link does), the valve and the trigger drop on their own. Each toggle
waits at most one period for the link and holds it at most HEARTBEAT_IO_TIMEOUT,
so a dead link delays the driver's other calls by no more than that.
"""
from __future__ import annotations

import re
import socket
import struct
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import pigpio
from gpiozero import DigitalInputDevice, DigitalOutputDevice, PWMOutputDevice
from gpiozero.exc import GPIOZeroError
from gpiozero.pins.mock import MockFactory, MockPWMPin
from gpiozero.pins.pigpio import PiGPIOFactory

from ..contract import ChannelSpec, Driver, Keepalive
from ..errors import (ConfigError, DeviceError, FrameError, LabrigError, LinkClosed, LinkError, LinkTimeout)
from ..urls import parse_url

DEFAULT_PORT = 8888  # pigpiod's
MOCK_REVISION = "a02082"  # the board MockFactory pretends to be: a Pi 3 B, like the simulator
MAX_BCM = 27  # GPIO0..27 are on the 40-pin header
_HWVER = 17  # pigpio socket command: hardware revision (our connect probe)
_READ = 3  # pigpio socket command: a GPIO's level
_PWM = 5  # pigpio socket command: set a PWM duty cycle
_UNSIGNED = {10, 11, 16, 17, 26}  # BR1, BR2, TICK, HWVER, PIGPV: results are uint32, not status codes
# What pigpiod can answer (when not an error code) to the commands gpiozero sends; anything
# else is a reply corrupted on the way, even when its echo survived.
_PLAUSIBLE = {
    3: lambda r: r in (0, 1),  # READ: a level
    1: lambda r: r <= 7,  # MODEG: a mode
    83: lambda r: r <= 1_000_000,  # GDC: a duty cycle (1M for hardware PWM)
    22: lambda r: 25 <= r <= 40000,  # PRG: a PWM range
    **{cmd: (lambda r: r == 0) for cmd in (0, 2, 4, 5, 19, 21, 97)},  # MODES PUD WRITE PWM NB NC FG
}
HEARTBEAT_PERIOD = 0.02  # s between charge-pump edges: 50 Hz, well inside a relay's ~0.1-0.2 s hold time
HEARTBEAT_IO_TIMEOUT = 0.1  # s: a toggle gives up sooner than a call (and never after the driver's timeout)
HEARTBEAT_BACKOFF = 0.25  # s without toggling after a failed toggle: a dead link is not hammered
_ADDRESS = re.compile(r"(GPIO|PWM)(\d{1,2})")
_FORMS = "GPIO<n> (digital in, or out) or PWM<n> (out, duty 0..1), n = BCM 0..27, e.g. GPIO17, PWM18"


@dataclass(frozen=True)
class PinAddress:
    gpio: int  # BCM number
    pwm: bool = False


class _Wire:
    """pigpio's command socket (pi.sl.s), bounded and checked.

    pigpio.pi writes a 16-byte request and reads a 16-byte reply, with no timeout
    and no check. In its place this gives each exchange the driver's timeout and
    compares the cmd/p1/p2 that pigpiod echoes in every reply: a corrupted reply
    becomes a FrameError instead of a wrong level. Replies that a slow link
    delivers after their caller gave up are dropped, so the stream stays in step.

    After one failure, the rest of the same driver call fails at once (`failed`
    is cleared by the driver per call): gpiozero's clean-up after an error talks
    to the pin again, and must not wait out one timeout per command.
    """

    def __init__(self, sock: socket.socket, timeout: float, device: str):
        self.sock = sock
        self.timeout = timeout
        self.device = device
        self.failed: type[LinkError] | None = None
        self._echo: bytes | None = None  # cmd/p1/p2 of the request awaiting its reply
        self._cmd: int | None = None  # the command awaiting its reply
        self._deadline = 0.0
        self._late = False  # a reply we gave up on may still arrive
        self._dropped = False  # this exchange dropped late bytes

    def _fail(self, error: type[LinkError], message: str):
        self.failed = error
        raise error(message, device=self.device)

    def send(self, data) -> int:
        self.sendall(data)
        return len(data)

    def sendall(self, data) -> None:
        if self.failed:
            raise self.failed("link failed earlier in this call", device=self.device)
        data = bytes(data)
        self._dropped = self._drain()
        self._echo = data[:12] if len(data) >= 16 else None
        self._cmd = struct.unpack_from("<I", data)[0] if self._echo is not None else None
        self._deadline = time.monotonic() + self.timeout
        try:
            self.sock.settimeout(self.timeout)
            self.sock.sendall(data)
        except TimeoutError:
            self._fail(LinkTimeout, f"pigpio daemon took no request within {self.timeout:g} s")
        except OSError as exc:
            self._fail(LinkClosed, f"pigpio connection lost: {exc}")

    def recv(self, n: int) -> bytes:
        if self._echo is None or n != 16:
            return self._read(n)  # an extension after the reply (not used by gpiozero)
        echo, self._echo = self._echo, None
        data = self._read(16)
        while data[:12] != echo:
            if not self._late:
                self._fail(FrameError, f"garbled pigpio reply {data.hex()} "
                                       f"(request echo {echo.hex()} expected)")
            self._dropped = True  # the late reply to an earlier request: skip it
            data = self._read(16)
        if not self._dropped:
            self._late = False  # a clean exchange: the stream is in step again
        if self._cmd not in _UNSIGNED:
            result = pigpio.u2i(int.from_bytes(data[12:16], "little"))
            if result < 0:
                plausible = not pigpio.error_text(result).startswith("unknown error")
            else:
                plausible = _PLAUSIBLE.get(self._cmd, lambda r: True)(result)
            if not plausible:
                self._fail(FrameError, f"garbled pigpio reply: command {self._cmd} "
                                       f"cannot answer {result}")
        return data

    def pipeline(self, requests: list[tuple[int, int, int]]) -> list[int]:
        """Several commands sent at once, their replies read in order, each checked as `recv` checks
        one (echo, plausible result); pigpiod runs them in order. Results as pigpio returns them."""
        self.sendall(b"".join(struct.pack("<IIII", cmd, p1, p2, 0) for cmd, p1, p2 in requests))
        results = []
        try:
            for cmd, p1, p2 in requests:
                self._echo, self._cmd = struct.pack("<III", cmd, p1, p2), cmd
                results.append(pigpio.u2i(int.from_bytes(self.recv(16)[12:16], "little")))
        except LinkError as exc:
            self._late = True  # the replies after the bad one may still come: the next exchange skips them
            exc.replies = results  # those that came, checked: a caller may still use the first ones
            raise
        return results

    def _read(self, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            remaining = self._deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                self.sock.settimeout(remaining)
                chunk = self.sock.recv(n - len(data))
            except TimeoutError:
                self._late = True
                self._fail(LinkTimeout, f"pigpio daemon did not answer within {self.timeout:g} s")
            except OSError as exc:
                self._fail(LinkClosed, f"pigpio connection lost: {exc}")
            if not chunk:
                self._fail(LinkClosed, "pigpio daemon closed the connection")
            data += chunk
        return bytes(data)

    def _drain(self) -> bool:
        """Drop what a slow link delivered after its caller gave up; True if there was any."""
        dropped = False
        self.sock.settimeout(0.0)
        try:
            while True:
                if not self.sock.recv(4096):
                    self._fail(LinkClosed, "pigpio daemon closed the connection")
                dropped = True
        except (BlockingIOError, InterruptedError):
            return dropped
        except LinkError:
            raise
        except OSError as exc:
            self._fail(LinkClosed, f"pigpio connection lost: {exc}")

    def setsockopt(self, *args):
        self.sock.setsockopt(*args)

    def close(self) -> None:
        self.sock.close()


class _Stream:
    """pigpio's notification socket: ends the reader when the daemon goes away.

    pigpio's reader thread loops on recv() while its `go` flag is set; once the
    peer has closed, recv() returns b"" at once, forever, and the thread would
    spin at 100 % CPU until the driver closes.
    """

    def __init__(self, sock: socket.socket, reader):
        self.sock = sock
        self._reader = reader

    def recv(self, n: int) -> bytes:
        try:
            data = self.sock.recv(n)
        except OSError:
            data = b""
        if not data:
            self._reader.go = False
        return data

    def send(self, data) -> int:
        return self.sock.send(data)

    def shutdown(self, how) -> None:
        self.sock.shutdown(how)

    def close(self) -> None:
        self.sock.close()


def _probe(host: str, port: int, timeout: float, device: str) -> int:
    """One HWVER exchange on a socket of our own: a bounded proof that pigpiod answers.

    pigpio.pi() connects and talks with no timeout (and prints a banner when it
    cannot); asking first keeps a dead or mute Pi from hanging the connect.
    """
    try:
        sock = socket.create_connection((host, port), timeout)
    except TimeoutError:
        raise LinkTimeout(f"no pigpio daemon answered at {host}:{port} within {timeout:g} s",
                          device=device) from None
    except OSError as exc:
        raise LinkClosed(f"cannot connect to the pigpio daemon at {host}:{port}: {exc}",
                         device=device) from None
    with sock:
        wire = _Wire(sock, timeout, device)
        wire.sendall(struct.pack("<IIII", _HWVER, 0, 0, 0))
        return int.from_bytes(wire.recv(16)[12:], "little")


def _hang_up(pi: pigpio.pi, grace: float) -> None:
    """Stop a pigpio.pi and its notification reader, whatever state the link is in.

    The reader quits when pigpiod answers NC on the stream; give it `grace` seconds
    to, then cut the socket under it. (Not at once: Linux resets a socket shut for
    reading when data, here that answer, still arrives, and the reader would die
    of ECONNRESET instead of quitting.)
    """
    reader = getattr(pi, "_notify", None)
    try:
        pi.stop()  # sends NC on the stream, closes the command socket
    except Exception:
        pass  # a dead link: the socket work below still ends everything
    if pi.sl.s is not None:
        try:
            pi.sl.s.close()
        except OSError:
            pass
        pi.sl.s = None  # gpiozero's "connected" test: pins stop talking from here on
    if reader is None or reader is threading.current_thread():
        return
    reader.join(grace)
    if reader.is_alive():
        reader.go = False
        try:  # wakes the reader out of recv() when the Pi never answers NC
            reader.sl.s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        reader.join(2.0)  # it is woken; this only waits for a busy machine to schedule it


class GPIODriver(Driver):
    bus = "rpi"

    def __init__(self, url: str, channels=(), *, timeout: float = 1.0, name: str = "",
                 heartbeat_pin: int | None = None, heartbeat_period: float = HEARTBEAT_PERIOD):
        self.factory = None  # the gpiozero pin factory (MockFactory for mock://)
        self.devices: dict[str, object] = {}  # channel name -> gpiozero device
        self._pi: pigpio.pi | None = None
        self._wire: _Wire | None = None
        self._link_ok = True
        self._pwm_ranges: dict[int, int] = {}  # BCM -> the PWM range gpiozero set (pigpio's duty units)
        if heartbeat_pin is not None and not (isinstance(heartbeat_pin, int) and 0 <= heartbeat_pin <= MAX_BCM):
            raise ConfigError(f"{name or url}: heartbeat_pin {heartbeat_pin!r} is not a BCM pin 0..{MAX_BCM}")
        if not float(heartbeat_period) > 0:
            raise ConfigError(f"{name or url}: heartbeat_period must be > 0 s, got {heartbeat_period!r}")
        self.heartbeat_pin = heartbeat_pin
        self.heartbeat_period = float(heartbeat_period)
        self.heartbeat: Keepalive | None = None  # toggles the charge pump; stop() it to pull the relay
        self._beat = None  # the heartbeat pin's gpiozero device
        self._beat_level = False
        self._beat_retry_at = 0.0
        super().__init__(url, channels, timeout=timeout, name=name)

    # -- addresses ---------------------------------------------------------
    def _parse_address(self, spec: ChannelSpec) -> PinAddress:
        match = _ADDRESS.fullmatch(str(spec.address).strip().upper())
        if not match or int(match[2]) > MAX_BCM:
            raise ConfigError(f"{self.name}: channel {spec.name!r}: address {spec.address!r} is not "
                              f"a Pi pin; allowed: {_FORMS}")
        address = PinAddress(int(match[2]), pwm=match[1] == "PWM")
        if address.gpio == self.heartbeat_pin:
            raise ConfigError(f"{self.name}: channel {spec.name!r}: BCM {address.gpio} is the charge-pump "
                              "heartbeat pin (heartbeat_pin); wire the channel to another pin")
        if address.pwm and spec.direction != "out":
            raise ConfigError(f"{self.name}: channel {spec.name!r}: {spec.address} is a PWM output; "
                              "declare it with direction 'out', or use GPIO<n> for an input")
        for other, taken in self._addresses.items():
            if taken.gpio == address.gpio:
                raise ConfigError(f"{self.name}: channel {spec.name!r}: BCM {address.gpio} is already "
                                  f"used by channel {other!r}")
        return address

    def _default_raw_range(self, spec, address: PinAddress) -> tuple[float, float]:
        return (0.0, 1.0)  # a level, or a duty cycle

    # -- link --------------------------------------------------------------
    def _open(self) -> None:
        if self.url.strip().lower().startswith("mock://"):
            self.factory = MockFactory(revision=MOCK_REVISION, pin_class=MockPWMPin)
        else:
            try:
                url = parse_url(self.url, schemes=("pigpio",))
            except ConfigError as exc:
                raise ConfigError(f"{self.name}: {exc}; or mock:// (gpiozero's MockFactory)") from None
            self.factory = self._connect(url.host, url.port or DEFAULT_PORT)
        try:
            with self._link("set up the pins"):
                for name, spec in self.channels.items():
                    self.devices[name] = self._device(spec, self._addresses[name])
                if self.heartbeat_pin is not None:
                    self._beat = DigitalOutputDevice(self.heartbeat_pin, initial_value=False,
                                                     pin_factory=self.factory)
        except BaseException:
            self._close()
            raise
        self.start_heartbeat()

    # -- the charge pump -----------------------------------------------------
    def start_heartbeat(self) -> None:
        """(Re)start toggling the heartbeat pin on a Keepalive thread (open does; tests pull the relay
        with `heartbeat.stop()` and restore it with this)."""
        if self._beat is None or self._closed:
            return
        if self.heartbeat is not None:
            self.heartbeat.stop(timeout=2 * self.timeout + 0.5)
        self.heartbeat = Keepalive(self._toggle, self.heartbeat_period, name=f"pi-heartbeat {self.name}")

    def _toggle(self) -> None:
        """One charge-pump edge, bounded (see the module's doc)."""
        if time.monotonic() < self._beat_retry_at:
            return
        if not self._io_lock.acquire(timeout=self.heartbeat_period):
            return  # another call holds the link: skip one edge, the relay holds for several
        wire, saved = self._wire, None
        try:
            if self._closed:
                return
            if wire is not None:
                saved, wire.timeout = wire.timeout, min(wire.timeout, HEARTBEAT_IO_TIMEOUT)
            with self._link(f"toggle the heartbeat GPIO{self.heartbeat_pin}"):
                self._beat.value = not self._beat_level
            self._beat_level = not self._beat_level
        except LabrigError:
            self._beat_retry_at = time.monotonic() + HEARTBEAT_BACKOFF
            raise  # Keepalive keeps it as last_error
        finally:
            if wire is not None and saved is not None:
                wire.timeout = saved
            self._io_lock.release()

    def _connect(self, host: str, port: int) -> PiGPIOFactory:
        _probe(host, port, self.timeout, self.name)
        # pigpio.pi() itself still has no timeout: give it one on a helper thread. If it
        # overruns, the helper hangs up whatever it eventually gets.
        outcome: dict[str, object] = {}
        lock = threading.Lock()

        def connect():
            try:
                factory, error = PiGPIOFactory(host=host, port=port), None
            except Exception as exc:
                factory, error = None, exc
            with lock:
                if "abandoned" in outcome:
                    if factory is not None:
                        _hang_up(factory.connection, grace=0.0)
                        factory.close()
                else:
                    outcome.update(factory=factory, error=error)

        helper = threading.Thread(target=connect, name=f"pigpio-connect {self.name}", daemon=True)
        helper.start()
        helper.join(self.timeout)
        with lock:
            if "factory" not in outcome:
                outcome["abandoned"] = True
                raise LinkTimeout(f"pigpio client could not connect to {host}:{port} "
                                  f"within {self.timeout:g} s", device=self.name)
        helper.join()  # it has finished its work; reap it so no thread outlives open()
        if outcome["error"] is not None:
            raise LinkClosed(f"cannot connect to the pigpio daemon at {host}:{port}: "
                             f"{outcome['error']}", device=self.name) from outcome["error"]
        factory = outcome["factory"]
        pi = factory.connection
        self._pi = pi
        self._wire = pi.sl.s = _Wire(pi.sl.s, self.timeout, self.name)
        reader = getattr(pi, "_notify", None)
        if reader is not None:
            reader.sl.s = _Stream(reader.sl.s, reader)
        return factory

    def _device(self, spec: ChannelSpec, address: PinAddress):
        if address.pwm:
            return PWMOutputDevice(address.gpio, initial_value=0, pin_factory=self.factory)
        if spec.direction == "out":
            return DigitalOutputDevice(address.gpio, initial_value=False, pin_factory=self.factory)
        # Pulled down: a broken wire reads 0 (door open, cooling not OK), the safe reading.
        return DigitalInputDevice(address.gpio, pull_up=False, pin_factory=self.factory)

    @contextmanager
    def _link(self, doing: str):
        """One driver call on the link: map what pigpio/gpiozero raise to labrig's errors."""
        if self._wire is not None:
            self._wire.failed = None
        try:
            yield
        except (LinkTimeout, LinkClosed):
            self._link_ok = False
            raise
        except LinkError:
            raise
        except pigpio.error as exc:
            raise DeviceError(f"the pigpio daemon refused to {doing}: {exc}", device=self.name) from exc
        except struct.error as exc:
            raise FrameError(f"truncated pigpio reply while trying to {doing}", device=self.name) from exc
        except GPIOZeroError as exc:
            raise DeviceError(f"cannot {doing}: {exc}", device=self.name) from exc
        except OSError as exc:
            self._link_ok = False
            raise LinkClosed(f"pigpio link lost while trying to {doing}: {exc}", device=self.name) from exc
        else:
            self._link_ok = True

    # -- I/O ---------------------------------------------------------------
    def _read_raw(self, spec: ChannelSpec, address: PinAddress) -> float:
        with self._io_lock, self._link(f"read {spec.address}"):
            return float(self.devices[spec.name].value)

    def read_many(self, names) -> dict[str, float]:
        """Levels of several GPIO channels in one exchange: their READ commands pipelined (each reply
        checked as any); PWM duties, and the mock factory, channel by channel."""
        names = list(names)
        specs = [self._spec(name) for name in names]
        if self._pi is None or len(names) < 2 or any(self._addresses[s.name].pwm for s in specs):
            return super().read_many(names)
        self._check_open()
        with self._io_lock, self._link(f"read {', '.join(s.address for s in specs)}"), self._pi.sl.l:
            levels = self._wire.pipeline([(_READ, self._addresses[s.name].gpio, 0) for s in specs])
            for level in levels:
                if level < 0:
                    raise pigpio.error(pigpio.error_text(level))
        return {s.name: s.calibration.to_physical(float(level)) for s, level in zip(specs, levels)}

    def write_read_many(self, name: str, value: float, names) -> tuple[float, dict[str, float] | Exception]:
        """A PWM duty and level reads in one exchange: pigpiod runs a connection's commands in order,
        so it sets and acknowledges the duty before it reads the levels. The duty's reply is checked
        first: a refused or lost set raises as write does, and only then do the levels count. Other
        outputs, PWM reads and a duty range not yet known go as write, then read_many."""
        names = list(names)
        spec, address = self._spec(name), self._addresses.get(name)
        reads = [self._spec(n) for n in names]
        if (self._pi is None or address is None or not address.pwm or address.gpio not in self._pwm_ranges
                or not reads or any(self._addresses[s.name].pwm for s in reads)):
            return super().write_read_many(name, value, names)
        spec, raw, clamped = self._raw_to_write(name, value)
        self._check_open()
        duty = round(float(clamped) * self._pwm_ranges[address.gpio])
        requests = [(_PWM, address.gpio, duty)] + [(_READ, self._addresses[s.name].gpio, 0) for s in reads]
        failed: Exception | None = None
        with self._io_lock, self._link(f"write {spec.address}"), self._pi.sl.l:
            try:
                results = self._wire.pipeline(requests)
            except LinkError as exc:
                if not getattr(exc, "replies", None):
                    raise  # the set's own reply did not come (or nothing went out): as a failed write
                results, failed = exc.replies, exc
            if results[0] < 0:
                raise pigpio.error(pigpio.error_text(results[0]))
        if failed is not None:
            self._link_ok = not isinstance(failed, (LinkTimeout, LinkClosed))
            return raw, failed
        bad = [(s, level) for s, level in zip(reads, results[1:]) if level < 0]
        if bad:
            s, level = bad[0]
            return raw, DeviceError(f"the pigpio daemon refused to read {s.address}: "
                                    f"{pigpio.error_text(level)}", device=self.name)
        return raw, {s.name: s.calibration.to_physical(float(level)) for s, level in zip(reads, results[1:])}

    def _write_raw(self, spec: ChannelSpec, address: PinAddress, raw: float) -> None:
        device = self.devices[spec.name]
        with self._io_lock, self._link(f"write {spec.address}"):
            if address.pwm and self._pi is not None:
                # one command, acknowledged by pigpiod (gpiozero asks the pin's range and present duty
                # first: three round trips); the range is the one gpiozero gave the pin, read once
                if address.gpio not in self._pwm_ranges:
                    self._pwm_ranges[address.gpio] = self._pi.get_PWM_range(address.gpio)
                self._pi.set_PWM_dutycycle(address.gpio, round(float(raw) * self._pwm_ranges[address.gpio]))
            elif address.pwm:
                device.value = float(raw)
            else:
                device.value = raw >= 0.5

    def _close(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop(timeout=2 * self.timeout + 0.5)  # before the lock: a toggle may hold it
        if self._beat is not None:
            self.devices["(heartbeat)"] = self._beat  # released with the channels' devices
            self._beat = None
        with self._io_lock:
            if self._pi is None or self._link_ok:
                # A live link: let gpiozero release each pin (PWM off, back to input).
                try:
                    with self._link("release the pins"):
                        for name in list(self.devices):
                            self.devices[name].close()
                            del self.devices[name]  # only once released: a failed one goes below
                except Exception:
                    pass  # whatever is left is released without talking below
            if self._pi is not None:
                _hang_up(self._pi, grace=self.timeout if self._link_ok else 0.0)
            for device in self.devices.values():
                try:
                    device.close()  # the connection is gone: bookkeeping only
                except Exception:
                    pass
            self.devices.clear()
            if self.factory is not None:
                try:
                    self.factory.close()
                except Exception:
                    pass

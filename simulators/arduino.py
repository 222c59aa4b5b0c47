"""A simulated Arduino: the firmware of PROTOCOL.md behind a pty that pyserial opens.

    with ArduinoSimulator(LocalWorld(), node="ard1") as sim:
        sim.url   # "serial:///dev/pts/N"

Wiring (CONTEXT): A0 Langmuir current via a transimpedance amp, A1 cooling flow meter,
D2 cooling OK, PWM9 probe bias, D13 beacon lamp.
"""
from __future__ import annotations

import errno
import math
import os
import select
import struct
import threading
import time
import tty

from labrig.drivers.arduino import protocol as p
from labrig.drivers.arduino.protocol import Cmd, Flag, NakCode, PinMode

from .base import DeviceSimulator

FIRMWARE = "labrig-sim-arduino 1.0.0"
DEFAULT_SAFE = {9: (PinMode.PWM, 170), 13: (PinMode.DIGITAL, 0)}  # 170 -> 0 V probe bias


def _counts(volts: float) -> int:
    if math.isnan(volts):
        return 1023  # an open/saturated input reads at the rail
    return min(1023, max(0, round(volts / 5.0 * 1023)))


class ArduinoSimulator(DeviceSimulator):
    kind = "arduino"

    def __init__(self, world, *, node, host="127.0.0.1", options=None):
        super().__init__(world, node=node, host=host, options=options)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._fds: list[int] = []
        self._closed = False

    # -- lifecycle -------------------------------------------------------
    def start(self) -> "ArduinoSimulator":
        controller, follower = os.openpty()
        # Raw on the follower side too, so the line discipline never echoes or edits bytes
        # before pyserial configures its own copy of the port.
        tty.setraw(follower)
        os.set_blocking(controller, False)
        self._wake_r, self._wake_w = os.pipe()
        # Keep the follower open ourselves: the pty stays usable between driver sessions.
        self._controller, self._follower = controller, follower
        self._fds = [controller, follower, self._wake_r, self._wake_w]
        path = os.ttyname(follower)
        self.endpoints = {"serial": path}
        self.url = "serial://" + path
        self._reset()
        self._thread = threading.Thread(target=self._run, name=f"arduino-fw-{self.node}", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._fds:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
        if self._thread:
            self._thread.join(2)
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []

    # -- firmware state --------------------------------------------------
    def _reset(self) -> None:
        self._t0 = time.monotonic()
        self.pins: dict[int, tuple[PinMode, int]] = {}  # output pins: mode, level/duty
        self.safe: dict[int, tuple[PinMode, int]] = dict(DEFAULT_SAFE)
        self.watchdog_ms = int(self.options.get("watchdog_ms", 1000))
        self.flags = Flag.SAFE
        self.trips = 0
        self._last_valid = time.monotonic()
        self._tripped_this_silence = True  # armed by the first valid frame; outputs are safe already
        self._stream: dict | None = None
        self._decoder = p.Decoder()
        self._last_byte = 0.0
        for pin, (mode, value) in self.safe.items():
            self._drive(pin, mode, value)

    def millis(self) -> int:
        return int((time.monotonic() - self._t0) * 1000) & 0xFFFFFFFF

    def _drive(self, pin: int, mode: PinMode, value: int) -> None:
        """Set an output pin, and the world quantity it is wired to."""
        self.pins[pin] = (mode, value)
        duty = value if mode == PinMode.PWM else 255 * value
        if pin == 9:
            self.world.set("probe_bias", -100.0 + 150.0 * duty / 255)
        elif pin == 13:
            self.world.set("beacon", 1.0 if duty else 0.0)

    def _analog(self, channel: int) -> int:
        if channel == 0:
            amps = self.world.get("langmuir_current")
            return _counts(2.5 + 100.0 * amps)
        if channel == 1:
            return _counts(self.world.get("cooling_flow") / 10.0 * 5.0)
        return 0

    def _digital(self, pin: int) -> int:
        if pin in self.pins:
            _mode, value = self.pins[pin]
            return int(bool(value))
        if pin == 2:
            return int(self.world.get("cooling_flow") > 2.0)
        return 0

    # -- the firmware loop ---------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            wait = 0.05
            if self._stream:
                wait = min(wait, max(0.0, self._stream["next"] - now))
            if not self._tripped_this_silence:
                wait = min(wait, max(0.0, self._last_valid + self.watchdog_ms / 1000 - now))
            try:
                ready, _, _ = select.select([self._controller, self._wake_r], [], [], wait)
            except (OSError, ValueError):
                return
            if self._stop.is_set():
                return
            if self._controller in ready:
                try:
                    data = os.read(self._controller, 4096)
                except BlockingIOError:
                    data = b""
                except OSError as exc:
                    if exc.errno == errno.EIO:  # no follower open: nobody is connected
                        time.sleep(0.01)
                        continue
                    return
                if data and not self.muted():  # muted: the bytes are lost on the way in
                    self._receive(data)
            self._check_watchdog()
            self._stream_tick()

    def _receive(self, data: bytes) -> None:
        now = time.monotonic()
        if self._decoder.pending and now - self._last_byte > p.INTERBYTE_TIMEOUT:
            self._decoder.reset()  # a frame that stopped half-way
        self._last_byte = now
        for item in self._decoder.feed(data):
            if isinstance(item, p.BadFrame):
                self._reply(item.seq, p.NAK, bytes((item.cmd, NakCode.BAD_CHECKSUM)))
                continue
            self._last_valid = time.monotonic()
            self._tripped_this_silence = False
            reply = self._handle(item)
            if reply is not None:
                cmd, payload = reply
                self._reply(item.seq, cmd, payload)

    def _handle(self, frame: p.Frame) -> tuple[int, bytes]:
        cmd, data = frame.cmd, frame.payload

        def nak(code):
            return p.NAK, bytes((cmd, code))

        def ok(payload=b""):
            return cmd | p.REPLY, payload

        lengths = {Cmd.IDENTIFY: 0, Cmd.HEARTBEAT: 0, Cmd.DIGITAL_READ: 1, Cmd.DIGITAL_WRITE: 2,
                   Cmd.ANALOG_READ: 1, Cmd.PWM_WRITE: 2, Cmd.PIN_STATE: 1, Cmd.SET_SAFE: 3,
                   Cmd.SET_WATCHDOG: 2, Cmd.STREAM_START: 3, Cmd.STREAM_STOP: 0}
        if cmd not in lengths:
            return nak(NakCode.UNKNOWN_COMMAND)
        if len(data) != lengths[cmd]:
            return nak(NakCode.BAD_LENGTH)

        if cmd == Cmd.IDENTIFY:
            return ok(bytes((p.PROTOCOL_VERSION,)) + FIRMWARE.encode())
        if cmd == Cmd.HEARTBEAT:
            return ok(self._status().pack())
        if cmd == Cmd.ANALOG_READ:
            if data[0] not in p.ANALOG_CHANNELS:
                return nak(NakCode.BAD_PIN)
            return ok(struct.pack("<BH", data[0], self._analog(data[0])))
        if cmd == Cmd.SET_WATCHDOG:
            (ms,) = struct.unpack("<H", data)
            if ms < p.WATCHDOG_RANGE[0]:
                return nak(NakCode.BAD_VALUE)
            self.watchdog_ms = ms
            return ok(data)
        if cmd == Cmd.STREAM_START:
            mask, rate = struct.unpack("<BH", data)
            n = len(p.mask_channels(mask))
            if not n or mask >> len(p.ANALOG_CHANNELS):
                return nak(NakCode.BAD_PIN)
            if not p.RATE_RANGE[0] <= rate <= p.RATE_RANGE[1] or rate * p.stream_frame_size(n) > p.STREAM_BUDGET:
                return nak(NakCode.BAD_VALUE)
            self._stream = {"mask": mask, "period": 1.0 / rate, "seq": 0, "next": time.monotonic()}
            self.flags |= Flag.STREAMING
            return ok(data)
        if cmd == Cmd.STREAM_STOP:
            self._stop_stream()
            return ok()

        pin = data[0]  # every remaining command starts with a digital pin
        if pin not in p.DIGITAL_PINS:
            return nak(NakCode.BAD_PIN)
        if cmd == Cmd.DIGITAL_READ:
            return ok(bytes((pin, self._digital(pin))))
        if cmd == Cmd.PIN_STATE:
            mode, value = self.pins.get(pin, (PinMode.INPUT, self._digital(pin)))
            return ok(bytes((pin, mode, value)))
        if cmd == Cmd.DIGITAL_WRITE:
            if data[1] > 1:
                return nak(NakCode.BAD_VALUE)
            self._drive(pin, PinMode.DIGITAL, data[1])
            self.flags &= ~(Flag.SAFE | Flag.TRIPPED)
            return ok(data)
        if cmd == Cmd.PWM_WRITE:
            if pin not in p.PWM_PINS:
                return nak(NakCode.BAD_PIN)
            self._drive(pin, PinMode.PWM, data[1])
            self.flags &= ~(Flag.SAFE | Flag.TRIPPED)
            return ok(data)
        if cmd == Cmd.SET_SAFE:
            mode, value = data[1], data[2]
            if mode == PinMode.PWM and pin not in p.PWM_PINS:
                return nak(NakCode.BAD_PIN)
            if mode not in (PinMode.DIGITAL, PinMode.PWM) or (mode == PinMode.DIGITAL and value > 1):
                return nak(NakCode.BAD_VALUE)
            self.safe[pin] = (PinMode(mode), value)
            if self.flags & Flag.SAFE:
                self._drive(pin, PinMode(mode), value)
            return ok(data)
        return nak(NakCode.UNKNOWN_COMMAND)  # pragma: no cover - every command handled above

    def _status(self) -> p.Status:
        return p.Status(self.flags, self.watchdog_ms, self.millis(), self.trips)

    def _stop_stream(self) -> None:
        self._stream = None
        self.flags &= ~Flag.STREAMING

    def _check_watchdog(self) -> None:
        if self._tripped_this_silence:
            return
        if time.monotonic() - self._last_valid < self.watchdog_ms / 1000:
            return
        self._tripped_this_silence = True
        for pin, (mode, value) in self.safe.items():
            self._drive(pin, mode, value)
        self._stop_stream()
        self.flags |= Flag.SAFE | Flag.TRIPPED
        self.trips += 1

    def _stream_tick(self) -> None:
        s = self._stream
        now = time.monotonic()
        if not s or now < s["next"]:
            return
        counts = tuple(self._analog(ch) for ch in p.mask_channels(s["mask"]))
        sample = p.StreamSample(s["mask"], s["seq"], self.millis(), counts)
        s["seq"] = (s["seq"] + 1) & 0xFFFF
        # Fall behind rather than burst: a real sketch samples on a timer tick.
        s["next"] = max(s["next"] + s["period"], now)
        if not self.muted():
            self._send(self.garble(p.encode(p.STREAM_SEQ, Cmd.STREAM_DATA, sample.pack())))

    # -- output --------------------------------------------------------
    def _reply(self, seq: int, cmd: int, payload: bytes) -> None:
        if self.muted():
            return
        self.before_reply()
        self._send(self.garble(p.encode(seq, cmd, payload)))

    def _send(self, data: bytes) -> None:
        """Write a whole frame, or drop it if nobody drains the port (a UART never blocks)."""
        deadline = time.monotonic() + 0.1
        view = memoryview(data)
        while view and not self._stop.is_set():
            try:
                n = os.write(self._controller, view)
                view = view[n:]
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return
                select.select([], [self._controller], [], 0.01)
            except OSError:
                return

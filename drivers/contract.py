"""The device contract every bus driver implements (gpiozero-style layering).

A driver owns one link to one board and knows that board's channels. It does
calibration (raw <-> physical) and the channel's *hard* range (what the hardware
can physically do: ADC counts, a duty cycle, a DAC span). Physical limits, slew
rates and interlocks are the node runtime's job, not the driver's.

    with open_driver("arduino", "serial:///dev/pts/7", channels) as drv:
        drv.read("langmuir_I")         # physical units, calibrated
        drv.write("probe_bias", -40.0) # physical -> raw, hard range checked
        drv.safe_state()               # every output to its safe value; never raises

Every I/O has a timeout; a dead or garbled link raises a LinkError subclass
within 2x that timeout. Subclasses implement the `_` hooks only.
"""
from __future__ import annotations

import importlib
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal

from .calibration import Calibration
from .errors import ConfigError, LabrigError, LinkClosed, RangeError
from .linklock import LinkLock

Direction = Literal["in", "out"]


@dataclass(frozen=True)
class ChannelSpec:
    """One signal as a driver sees it."""

    name: str  # the signal's name in the rig, e.g. "langmuir_I"
    address: str  # bus-specific address, e.g. "A0", "GPIO17", "DB1.DBD4", "in1", "MEAS:PRES"
    direction: Direction = "in"
    unit: str = ""
    calibration: Calibration = field(default_factory=Calibration)
    raw_range: tuple[float, float] | None = None  # hard range in raw units; None: the bus default
    safe_value: float | None = None  # physical units; outputs only


@dataclass(frozen=True)
class SafeResult:
    """What safe_state() did to one output."""

    ok: bool
    value: float | None = None
    error: str = ""


class Driver(ABC):
    """Base of every bus driver. Open on construction, close() or `with`."""

    bus: ClassVar[str] = ""

    def __init__(self, url: str, channels: list[ChannelSpec] | tuple[ChannelSpec, ...] = (), *,
                 timeout: float = 1.0, name: str = ""):
        self.url = url
        self.timeout = float(timeout)
        self.name = name or url
        self.channels: dict[str, ChannelSpec] = {}
        self._addresses: dict[str, Any] = {}
        self._io_lock = LinkLock()  # one transaction on the link at a time; urgent() ones first
        self._closed = False
        for spec in channels:
            if spec.name in self.channels:
                raise ConfigError(f"{self.name}: channel {spec.name!r} declared twice")
            self._addresses[spec.name] = self._parse_address(spec)
            self.channels[spec.name] = spec
        self._open()

    # -- public API -------------------------------------------------------
    def urgent(self):
        """`with driver.urgent():` this thread's I/O goes before every queued ordinary
        transaction (interlock checks and the writes of a trip)."""
        return self._io_lock.urgent()

    def read(self, name: str) -> float:
        """The channel's value in physical units."""
        spec = self._spec(name)
        return spec.calibration.to_physical(self.read_raw(name))

    def read_many(self, names) -> dict[str, float]:
        """Several channels in physical units, read in this order; a bus that can put them in one
        exchange with the board does (the GPIO driver pipelines its level reads)."""
        return {name: self.read(name) for name in names}

    def read_raw(self, name: str) -> float:
        spec = self._spec(name)
        self._check_open()
        return float(self._read_raw(spec, self._addresses[name]))

    def write(self, name: str, value: float) -> float:
        """Set an output in physical units; returns the raw value written."""
        spec, raw, clamped = self._raw_to_write(name, value)
        self._check_open()
        self._write_raw(spec, self._addresses[name], clamped)
        return raw

    def write_read_many(self, name: str, value: float, names) -> tuple[float, dict[str, float] | Exception]:
        """Set an output, then read `names` once the board has acknowledged the set (a step scan's
        point): (the raw value written, the readings, or the error the reads raised). A set that
        fails raises, as write does. A bus that runs its commands in order may send all of them at
        once (the GPIO driver does: pigpiod acknowledges the set before it reads the levels); the
        readings count only after the set's acknowledgment has been checked."""
        raw = self.write(name, value)
        try:
            return raw, self.read_many(names)
        except (LabrigError, OSError) as exc:
            return raw, exc

    def _raw_to_write(self, name: str, value: float) -> tuple[ChannelSpec, float, float]:
        """(spec, raw, raw clamped to the hard range) for writing `value`; out of range raises."""
        spec = self._spec(name)
        if spec.direction != "out":
            raise ConfigError(f"{self.name}: {name!r} is an input; it cannot be written")
        raw = spec.calibration.to_raw(float(value), self.raw_range(name))
        lo, hi = self.raw_range(name)
        if not (lo - 1e-9 * max(1.0, abs(lo)) <= raw <= hi + 1e-9 * max(1.0, abs(hi))):
            p_lo, p_hi = sorted((spec.calibration.to_physical(lo), spec.calibration.to_physical(hi)))
            raise RangeError(f"{self.name}: {name} = {value:g} {spec.unit} is outside the channel's "
                             f"hard range [{p_lo:g}, {p_hi:g}] {spec.unit}".rstrip())
        return spec, raw, min(max(raw, lo), hi)

    def write_raw(self, name: str, raw: float) -> None:
        spec = self._spec(name)
        lo, hi = self.raw_range(name)
        if not lo <= raw <= hi:
            raise RangeError(f"{self.name}: raw {raw:g} for {name} outside [{lo:g}, {hi:g}]")
        self._check_open()
        self._write_raw(spec, self._addresses[name], raw)

    def safe_state(self) -> dict[str, SafeResult]:
        """Drive every output that declares a safe value to it. Idempotent; never raises."""
        results: dict[str, SafeResult] = {}
        for name, spec in self.channels.items():
            if spec.direction != "out" or spec.safe_value is None:
                continue
            try:
                self.write(name, spec.safe_value)
                results[name] = SafeResult(True, spec.safe_value)
            except Exception as exc:  # a safe-state pass must reach every output it can
                results[name] = SafeResult(False, None, f"{type(exc).__name__}: {exc}")
        return results

    def raw_range(self, name: str) -> tuple[float, float]:
        spec = self._spec(name)
        return spec.raw_range or self._default_raw_range(spec, self._addresses[name])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<{type(self).__name__} {self.name} {self.url} {'closed' if self._closed else 'open'}>"

    # -- helpers ----------------------------------------------------------
    def _spec(self, name: str) -> ChannelSpec:
        try:
            return self.channels[name]
        except KeyError:
            import difflib
            close = difflib.get_close_matches(name, list(self.channels), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(self.channels)}"
            raise ConfigError(f"{self.name}: no channel {name!r}{hint}") from None

    def _check_open(self) -> None:
        if self._closed:
            raise LinkClosed("driver is closed", device=self.name)

    # -- what a bus implements -------------------------------------------
    @abstractmethod
    def _parse_address(self, spec: ChannelSpec) -> Any:
        """Validate `spec.address` for this bus; raise ConfigError naming the allowed forms."""

    @abstractmethod
    def _default_raw_range(self, spec: ChannelSpec, address: Any) -> tuple[float, float]:
        """The channel's hard range in raw units."""

    @abstractmethod
    def _open(self) -> None:
        """Open the link (and start any keepalive). Raise LinkError if it cannot."""

    @abstractmethod
    def _read_raw(self, spec: ChannelSpec, address: Any) -> float: ...

    @abstractmethod
    def _write_raw(self, spec: ChannelSpec, address: Any, raw: float) -> None: ...

    @abstractmethod
    def _close(self) -> None:
        """Stop any keepalive and close the link. Must not raise."""


class Keepalive:
    """Calls `feed()` every `period` seconds on a daemon thread until stopped.

    Drivers use it to keep a device's own watchdog fed (the Arduino firmware
    heartbeat, the PLC watchdog word). When the process dies, the feed stops,
    and the device goes safe on its own: that is the point.
    """

    def __init__(self, feed: Callable[[], None], period: float, *, name: str = "keepalive"):
        self._feed = feed
        self.period = period
        self.last_error: BaseException | None = None
        self.feeds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self):
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self._feed()
                self.feeds += 1
                self.last_error = None
            except LabrigError as exc:
                self.last_error = exc
            except OSError as exc:
                self.last_error = exc
            next_at += self.period
            delay = next_at - time.monotonic()
            if delay < 0:
                next_at = time.monotonic()
                delay = 0
            self._stop.wait(delay)

    def stop(self, timeout: float = 2.0):
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)


# kind in the rig file -> "module:Class" of its driver
DRIVERS = {
    "arduino": "labrig.drivers.arduino.driver:ArduinoDriver",
    "redpitaya": "labrig.drivers.redpitaya.driver:RedPitayaDriver",
    "simatic": "labrig.drivers.simatic.driver:SimaticDriver",
    "rpi": "labrig.drivers.gpio.driver:GPIODriver",
    "visa": "labrig.drivers.visa.driver:VisaDriver",
}


def driver_class(kind: str) -> type[Driver]:
    try:
        target = DRIVERS[kind]
    except KeyError:
        raise ConfigError(f"unknown node kind {kind!r}; allowed: {', '.join(DRIVERS)}") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


def open_driver(kind: str, url: str, channels=(), *, timeout: float = 1.0, name: str = "", **options) -> Driver:
    """Open the driver for a node `kind` on a concrete `url`."""
    return driver_class(kind)(url, channels, timeout=timeout, name=name, **options)

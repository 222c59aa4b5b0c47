"""The Red Pitaya as a labrig bus: channels over the official SCPI server.

    url = "tcp://rp-f0a1b2.local:5000?monitor_port=2222"
    with RedPitayaDriver(url, channels, timeout=1.0) as rp:
        rp.write("rf_drive", 0.3)      # out1: a 0.3 V sine into the RF amplifier
        rp.read("interferometer")      # in1: mean of a short acquisition, volts
        rp.registers.read_word(...)    # raw FPGA registers (pyrpl's monitor server), if monitor_port
        rp.fpga.pid0.configure(...)    # the FPGA's PID/IQ/generator modules (fpga.py), if monitor_port

Channel addresses (case-insensitive):
    in1, in2            fast inputs, +-1 V: the mean of `samples` (default 1024) samples of a
                        decimation-1 acquisition (131 us of signal), triggered at once
    out1, out2          generator amplitude, 0..1 V: a fixed sine at `rf_frequency` (default
                        13.56 MHz, the ISM band RF amplifiers are built for); writing > 0 turns
                        the output on, writing 0 turns it off. Read back from the generator.
    ain0..ain3          slow inputs, 0..3.3 V
    aout0..aout3        slow outputs (PWM DACs), 0..1.8 V, read back
    dio0_p..dio7_p, dio0_n..dio7_n   digital pins, 0/1; the direction follows the channel's

Options (keyword or URL query): monitor_port, samples, rf_frequency, fpga_backend
(registers, the default, or pyrpl).

The FPGA fast path and the channels share the DACs. A write to out1/out2 first
disconnects every FPGA module routed to that output (once this driver has used the
FPGA), and safe_state() disconnects all of them, whoever configured them: an explicit
setpoint, a safe state or a trip always takes the output back from a running loop.
"""
from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass

from ..contract import ChannelSpec, Driver, SafeResult
from ..errors import ConfigError, FrameError, LinkTimeout
from ..urls import parse_url
from .fpga import Fpga
from .monitor import MonitorClient
from .scpi import SCPIClient

DEFAULT_SCPI_PORT = 5000
DEFAULT_SAMPLES = 1024
DEFAULT_RF_HZ = 13.56e6
BUFFER_SAMPLES = 16384
ADDRESS_FORMS = "in1, in2, out1, out2, ain0..ain3, aout0..aout3, dio0_p..dio7_p, dio0_n..dio7_n"
_ADDRESS = re.compile(r"(in|out)([12])|(ain|aout)([0-3])|dio([0-7])_([pn])")


@dataclass(frozen=True)
class Pin:
    kind: str  # "in", "out", "ain", "aout", "dio"
    index: int
    row: str = ""  # "P" or "N" for dio

    @property
    def scpi_name(self) -> str:
        if self.kind == "dio":
            return f"DIO{self.index}_{self.row}"
        return f"{self.kind.upper()}{self.index}"


RAW_RANGES = {"in": (-1.0, 1.0), "out": (0.0, 1.0), "ain": (0.0, 3.3), "aout": (0.0, 1.8), "dio": (0.0, 1.0)}
DIRECTIONS = {"in": ("in",), "ain": ("in",), "out": ("out",), "aout": ("out",), "dio": ("in", "out")}


class RedPitayaDriver(Driver):
    bus = "redpitaya"

    def __init__(self, url: str, channels=(), *, timeout: float = 1.0, name: str = "",
                 monitor_port: int | None = None, samples: int | None = None,
                 rf_frequency: float | None = None, fpga_backend: str | None = None):
        parsed = parse_url(url, schemes=("tcp",))
        self.host = parsed.host
        self.port = parsed.port or DEFAULT_SCPI_PORT
        self.monitor_port = monitor_port if monitor_port is not None else parsed.option("monitor_port", None, int)
        self.samples = int(samples if samples is not None else parsed.option("samples", DEFAULT_SAMPLES, int))
        if not 1 <= self.samples <= BUFFER_SAMPLES:
            raise ConfigError(f"{url}: samples={self.samples}; allowed 1..{BUFFER_SAMPLES}")
        self.rf_frequency = float(rf_frequency if rf_frequency is not None
                                  else parsed.option("rf_frequency", DEFAULT_RF_HZ, float))
        if not 0 < self.rf_frequency <= 50e6:
            raise ConfigError(f"{url}: rf_frequency={self.rf_frequency:g} Hz; allowed (0, 50e6]")
        self.fpga_backend = fpga_backend or parsed.option("fpga_backend", "registers", str)
        if self.fpga_backend not in ("registers", "pyrpl"):
            raise ConfigError(f"{url}: fpga_backend={self.fpga_backend!r}; allowed: registers, pyrpl")
        self.scpi: SCPIClient | None = None
        self.registers: MonitorClient | None = None
        self._fpga: Fpga | None = None
        self._fpga_used = False  # someone configured the fast path through this driver
        self._fpga_lock = threading.Lock()
        super().__init__(url, channels, timeout=timeout, name=name)

    # -- Driver hooks ------------------------------------------------------
    def _parse_address(self, spec: ChannelSpec) -> Pin:
        m = _ADDRESS.fullmatch(spec.address.strip().lower())
        if not m:
            raise ConfigError(f"{self.name}: channel {spec.name!r} has address {spec.address!r}; "
                              f"allowed: {ADDRESS_FORMS}")
        if m.group(1):
            pin = Pin(m.group(1), int(m.group(2)))
        elif m.group(3):
            pin = Pin(m.group(3), int(m.group(4)))
        else:
            pin = Pin("dio", int(m.group(5)), m.group(6).upper())
        if spec.direction not in DIRECTIONS[pin.kind]:
            raise ConfigError(f"{self.name}: channel {spec.name!r} at {spec.address} must have direction "
                              f"{' or '.join(DIRECTIONS[pin.kind])}, not {spec.direction!r}")
        return pin

    def _default_raw_range(self, spec: ChannelSpec, address: Pin) -> tuple[float, float]:
        return RAW_RANGES[address.kind]

    def _open(self) -> None:
        self.scpi = SCPIClient(self.host, self.port, timeout=self.timeout, name=self.name)
        try:
            idn = self.scpi.query("*IDN?")
            if not idn.strip():
                raise FrameError("empty reply to *IDN?", device=self.name)
            self.idn = idn.strip()
            setup = ["ACQ:DATA:FORMAT ASCII", "ACQ:DATA:UNITS VOLTS"]
            for spec in self.channels.values():
                pin = self._addresses[spec.name]
                if pin.kind == "dio":  # the pin's direction is the channel's, set once
                    setup.append(f"DIG:PIN:DIR {'OUT' if spec.direction == 'out' else 'IN'},{pin.scpi_name}")
            self.scpi.command(*setup)
        except BaseException:
            self.scpi.close()
            raise
        if self.monitor_port is not None:
            # Connects on first use: the real monitor server serves one client at a time,
            # so labrig holds the port only when someone actually touches a register.
            self.registers = MonitorClient(self.host, self.monitor_port, timeout=self.timeout,
                                           name=f"{self.name} (monitor)")

    def _read_raw(self, spec: ChannelSpec, pin: Pin) -> float:
        with self._io_lock:
            if pin.kind == "in":
                return self._acquire_mean(pin.index)
            if pin.kind == "out":
                on = self.scpi.query(f"OUTPUT{pin.index}:STATE?").strip().upper()
                if on not in ("ON", "OFF", "1", "0"):
                    raise FrameError(f"OUTPUT{pin.index}:STATE? answered {on[:20]!r}", device=self.name)
                amplitude = self.scpi.query_float(f"SOUR{pin.index}:VOLT?")
                return amplitude if on in ("ON", "1") else 0.0
            if pin.kind in ("ain", "aout"):
                return self.scpi.query_float(f"ANALOG:PIN? {pin.scpi_name}")
            state = self.scpi.query_float(f"DIG:PIN? {pin.scpi_name}")
            if state not in (0.0, 1.0):
                raise FrameError(f"DIG:PIN? {pin.scpi_name} answered {state:g}, not 0 or 1", device=self.name)
            return state

    def _write_raw(self, spec: ChannelSpec, pin: Pin, raw: float) -> None:
        with self._io_lock:
            if pin.kind == "out":
                released = self._release_fpga(f"out{pin.index}") if self._fpga_used else None
                # The whole waveform every time (one round trip): another client or a *RST
                # may have changed it, and the amplifier must only ever see our sine.
                n = pin.index
                self.scpi.command(f"SOUR{n}:FUNC SINE", f"SOUR{n}:FREQ:FIX {self.rf_frequency:.9g}",
                                  f"SOUR{n}:VOLT:OFFS 0", f"SOUR{n}:VOLT {raw:.6g}",
                                  f"OUTPUT{n}:STATE {'ON' if raw > 0 else 'OFF'}")
                if isinstance(released, Exception):  # the SCPI write went out; the FPGA may still drive
                    raise released
            elif pin.kind == "aout":
                self.scpi.command(f"ANALOG:PIN {pin.scpi_name},{raw:.6g}")
            elif pin.kind == "dio":
                self.scpi.command(f"DIG:PIN {pin.scpi_name},{1 if raw >= 0.5 else 0}")
            else:  # the base class only writes outputs
                raise ConfigError(f"{self.name}: {spec.name} ({spec.address}) is an input")

    def _close(self) -> None:
        if self._fpga is not None:
            self._fpga.close()
        if self.registers is not None:
            self.registers.close()
        if self.scpi is not None:
            self.scpi.close()

    # -- the FPGA fast path ---------------------------------------------------------
    @property
    def fpga(self) -> Fpga:
        """The FPGA's PID, IQ and generator modules, over the monitor port (opened on first use)."""
        fpga = self._fpga_modules()
        self._fpga_used = True
        return fpga

    def _fpga_modules(self) -> Fpga:
        self._check_open()
        if self.registers is None:
            raise ConfigError(f"{self.name}: the FPGA is reached through pyrpl's monitor server; add "
                              f"monitor_port=2222 (its port) to the URL {self.url}")
        with self._fpga_lock:
            if self._fpga is None:
                self._fpga = Fpga(self.registers, backend=self.fpga_backend, name=f"{self.name} (fpga)")
            return self._fpga

    def _release_fpga(self, output: str) -> list[str] | Exception:
        """Disconnect FPGA modules from `output`; a failure is returned, so the caller still acts."""
        try:
            return self._fpga_modules().release(output)
        except Exception as exc:  # reported after the channel write, never instead of it
            return exc

    def safe_state(self) -> dict[str, SafeResult]:
        """The FPGA lets go of both DACs first (when the board has a monitor port), then every
        output goes to its safe value. If the FPGA could not be reached, out1/out2 channels are
        reported not safe: a module may still drive them."""
        released = self._release_fpga("both") if self.registers is not None and not self.closed else []
        results = super().safe_state()
        if isinstance(released, Exception):
            for name, result in results.items():
                if self._addresses[name].kind == "out" and result.ok:
                    results[name] = SafeResult(False, result.value, f"written, but FPGA modules may still drive "
                                               f"{self.channels[name].address}: {type(released).__name__}: {released}")
        return results

    # -- fast inputs ------------------------------------------------------------
    def _acquire_mean(self, channel: int) -> float:
        """One decimation-1 acquisition, triggered now; the mean of its first `samples` samples."""
        deadline = time.monotonic() + self.timeout
        self.scpi.command("ACQ:RST", "ACQ:DEC 1", "ACQ:DATA:UNITS VOLTS", "ACQ:START",
                          timeout=self._left(deadline))
        # The *OPC? round trip above (>= tens of us) lets the pre-trigger half of the buffer
        # fill (65 us at decimation 1) before the trigger.
        self.scpi.command("ACQ:TRIG NOW", timeout=self._left(deadline))
        while True:  # the buffer is complete once the trigger has been seen
            state = self.scpi.query("ACQ:TRIG:STAT?", timeout=self._left(deadline)).strip().upper()
            if state == "TD":
                break
            if state != "WAIT":
                raise FrameError(f"ACQ:TRIG:STAT? answered {state[:20]!r}, not TD or WAIT", device=self.name)
            if time.monotonic() >= deadline:
                raise LinkTimeout(f"acquisition on in{channel} not triggered within {self.timeout:g} s",
                                  device=self.name)
            time.sleep(0.001)
        values = self.scpi.query_values(f"ACQ:SOUR{channel}:DATA:STA:N? 0,{self.samples}",
                                        timeout=max(self._left(deadline), self.timeout / 2))
        if len(values) != self.samples:
            raise FrameError(f"in{channel}: {len(values)} samples received, {self.samples} requested",
                             device=self.name)
        return sum(values) / len(values)

    @staticmethod
    def _left(deadline: float) -> float:
        return max(deadline - time.monotonic(), 1e-3)

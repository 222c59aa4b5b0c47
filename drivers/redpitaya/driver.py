"""The Red Pitaya as a labrig bus: channels over the official SCPI server.

    url = "tcp://rp-f0a1b2.local:5000?monitor_port=2222"
    with RedPitayaDriver(url, channels, timeout=1.0) as rp:
        rp.write("rf_drive", 0.3)      # out1: a 0.3 V sine into the RF amplifier
        rp.read("interferometer")      # in1: mean of a short acquisition, volts
        rp.registers.read_word(...)    # raw FPGA registers (pyrpl's monitor server), if monitor_port

Channel addresses (case-insensitive):
    in1, in2            fast inputs, +-1 V: the mean of `samples` (default 1024) samples of a
                        decimation-1 acquisition (131 us of signal), triggered at once
    out1, out2          generator amplitude, 0..1 V: a fixed sine at `rf_frequency` (default
                        13.56 MHz, the ISM band RF amplifiers are built for); writing > 0 turns
                        the output on, writing 0 turns it off. Read back from the generator.
    ain0..ain3          slow inputs, 0..3.3 V
    aout0..aout3        slow outputs (PWM DACs), 0..1.8 V, read back
    dio0_p..dio7_p, dio0_n..dio7_n   digital pins, 0/1; the direction follows the channel's

Options (keyword or URL query): monitor_port, samples, rf_frequency.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass

from ..contract import ChannelSpec, Driver
from ..errors import ConfigError, FrameError, LinkTimeout
from ..urls import parse_url
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
                 rf_frequency: float | None = None):
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
        self.scpi: SCPIClient | None = None
        self.registers: MonitorClient | None = None
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
                # The whole waveform every time (one round trip): another client or a *RST
                # may have changed it, and the amplifier must only ever see our sine.
                n = pin.index
                self.scpi.command(f"SOUR{n}:FUNC SINE", f"SOUR{n}:FREQ:FIX {self.rf_frequency:.9g}",
                                  f"SOUR{n}:VOLT:OFFS 0", f"SOUR{n}:VOLT {raw:.6g}",
                                  f"OUTPUT{n}:STATE {'ON' if raw > 0 else 'OFF'}")
            elif pin.kind == "aout":
                self.scpi.command(f"ANALOG:PIN {pin.scpi_name},{raw:.6g}")
            elif pin.kind == "dio":
                self.scpi.command(f"DIG:PIN {pin.scpi_name},{1 if raw >= 0.5 else 0}")
            else:  # the base class only writes outputs
                raise ConfigError(f"{self.name}: {spec.name} ({spec.address}) is an input")

    def _close(self) -> None:
        if self.registers is not None:
            self.registers.close()
        if self.scpi is not None:
            self.scpi.close()

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

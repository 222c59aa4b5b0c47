"""A simulated Red Pitaya: the official SCPI server and pyrpl's monitor server.

    with RedPitayaSimulator(LocalWorld(), node="rp1") as sim:
        sim.url        # "tcp://127.0.0.1:P1?monitor_port=P2"
        sim.endpoints  # {"scpi": "tcp://127.0.0.1:P1", "monitor": "tcp://127.0.0.1:P2"}

Two TCP servers on 127.0.0.1, port 0, any number of clients each:

* SCPI ("\\r\\n"-terminated lines, case-insensitive, short or long mnemonics), the
  subset of Red Pitaya's scpi-server that labrig uses: *IDN? *OPC? *RST *CLS
  SYST:ERR?; generator SOUR<n>:FUNC|FREQ:FIX|VOLT|VOLT:OFFS[?], OUTPUT<n>:STATE[?],
  GEN:RST; acquisition ACQ:START|STOP|RST, ACQ:DEC[?], ACQ:TRIG <src>,
  ACQ:TRIG:STAT?|FILL?, ACQ:TRIG:LEV|DLY[?], ACQ:DATA:UNITS|FORMAT[?],
  ACQ:SOUR<n>:DATA?, ACQ:SOUR<n>:DATA:STA:N?|OLD:N?|LAT:N?, ACQ:BUF:SIZE?;
  pins DIG:PIN[?], DIG:PIN:DIR[?], DIG:RST, ANALOG:PIN[?], ANALOG:RST.
  Queries are answered with one line; a command that is unknown or cannot run
  (bad parameter, value out of range) is answered "ERR!", as older Red Pitaya
  OS versions did. Numbers come back like "0.25"; lists like "{0.1,0.2}".
* pyrpl's monitor protocol (see labrig.drivers.redpitaya.monitor) on a register
  map of pyrpl's FPGA image (housekeeping, scope, both ASGs, the DSP modules with
  their synthesis constants, the slow DACs), so unmodified pyrpl configures and
  reads the simulated FPGA. Registers keep only the bits the Verilog keeps.

Wiring to the world (CONTEXT):
  out1 amplitude, with OUTPUT1:STATE ON  -> rf_drive (0 when off)
  in1 = interferometer_phase / pi volts, in2 = rf_forward / 2000 volts (+-1 V range)
  AIN0 = 3.3 * rf_reflected / 500 volts (0..3.3 V); AIN1..3 read 0 V
  DIO pins, LEDs and AOUT0..3 are kept here (no physics); the SCPI and register
  views share them (DIG:PIN is the housekeeping register, AOUT the AMS PWM word).

Simplifications, on purpose:
* On a real board the SCPI server runs the stock FPGA image and pyrpl its own;
  here both views run at once. The generator that reaches rf_drive is whichever
  was changed last: a SCPI SOUR1/OUTPUT1 command, or a register write that
  changes the FPGA's out1 amplitude (the amplitudes of running ASGs routed to out1).
* Acquisitions are instantaneous: every trigger source fires as soon as it is
  armed (the simulated signals are quasi-static, an edge might never come), and
  the trace is 16384 samples of the present value with `noise` V rms (option,
  default 2 mV). ASG channels seen by the scope replay their waveform tables.
* The three PIDs run (redpitaya_dsp.py: a 1 ms tick integrating the FPGA's PI over
  the elapsed cycles) on the DSP signals in1, in2, the ASGs and each other; their
  outputs are added to the DACs they are routed to. out1 is the RF drive level: the
  amplitudes of running ASGs routed there plus the PID outputs routed there (as if
  out1 fed the RF source's amplitude-control input), clipped to 0..1. So a loop
  in2 -> pid -> out1 really regulates the forward power. The IQ, IIR and trigger
  modules keep their registers but do not run: their outputs read 0 V.
"""
from __future__ import annotations

import math
import re
import socket
import socketserver
import threading
import time
from typing import Callable

import numpy as np

from labrig.drivers.redpitaya import registers as R

from .base import DeviceSimulator
from .redpitaya_dsp import IDLE, MAX_DT, TICK, PidBank

IDN = "REDPITAYA,INSTR2020,SIM-{node},labrig-sim-1.0"
MAX_LINE = 64 * 1024
BUFFER = R.BUFFER_SAMPLES
NOISE_V = 0.002
ERR = "ERR!"

WAVEFORMS = ("SINE", "SQUARE", "TRIANGLE", "SAWU", "SAWD", "DC", "DC_NEG", "PWM", "ARBITRARY")
TRIGGER_SOURCES = ("DISABLED", "NOW", "CH1_PE", "CH1_NE", "CH2_PE", "CH2_NE", "EXT_PE", "EXT_NE",
                   "AWG_PE", "AWG_NE")
DIO_PINS = {f"DIO{i}_{row}": (row, i) for row in "PN" for i in range(R.HK_DIO_PINS)}
LED_PINS = {f"LED{i}": i for i in range(8)}
AOUT_RANGE = (0.0, R.AMS_FULL_SCALE)
GEN_MAX_HZ = 62.5e6


def _clip(value: float, lo: float, hi: float) -> float:
    if math.isnan(value):
        return hi  # a broken detector floats to the rail
    return min(max(value, lo), hi)


def _num(value: float) -> str:
    return f"{value:.7g}"


# =============================================================================
# The FPGA image behind the monitor server
# =============================================================================
def _register_layout():
    """(masks, resets, read_only) by absolute address: what the Verilog keeps of a write."""
    masks: dict[int, int] = {}
    resets: dict[int, int] = {}
    hk = {R.HK_DIGITAL_LOOP: 0x1, R.HK_EXP_P_DIR: 0xFF, R.HK_EXP_N_DIR: 0xFF, R.HK_EXP_P_OUT: 0xFF,
          R.HK_EXP_N_OUT: 0xFF, R.HK_LED: 0xFF}
    masks.update({R.HK_BASE + a: m for a, m in hk.items()})
    scope = {R.SCOPE_THRESHOLD: 0x3FFF, R.SCOPE_TRIGGER_DELAY: 0xFFFFFFFF, R.SCOPE_DECIMATION: 0x1FFFF,
             R.SCOPE_HYSTERESIS: 0x3FFF, R.SCOPE_AVERAGE: 0x1, R.SCOPE_DEBOUNCE: 0xFFFFF}
    scope.update({a: 0x1FFFFFF for a in range(0x30, 0x50, 4)})  # equalizer coefficients
    masks.update({R.SCOPE_BASE + a: m for a, m in scope.items()})
    resets[R.SCOPE_BASE + R.SCOPE_DECIMATION] = 1
    for ch in (R.ASG0, R.ASG1):
        v = ch.value
        masks.update({R.ASG_BASE + 0x04 + v: 0x3FFF3FFF, R.ASG_BASE + 0x08 + v: 0x3FFFFFFF,
                      R.ASG_BASE + 0x0C + v: 0x3FFFFFFF, R.ASG_BASE + 0x10 + v: 0x3FFFFFFF,
                      R.ASG_BASE + 0x18 + v: 0xFFFFFFFF, R.ASG_BASE + 0x1C + v: 0xFFFF,
                      R.ASG_BASE + 0x20 + v: 0xFFFFFFFF,
                      R.ASG_BASE + 0x118 + v: 0xFFFFFFFF, R.ASG_BASE + 0x11C + v: 0xFFFFFFFF})
        resets[ch.counter_wrap] = R.ASG_DEFAULT_WRAP
    masks[R.ASG_BASE] = 0x1FF71FF7  # flags 12:4 and trigger source 2:0 of each channel
    resets[R.ASG_BASE] = R.ASG_ZERO | (R.ASG_ZERO << 16)  # outputs zeroed until configured
    for n in range(16):
        base = R.dsp(n)
        masks[base + R.DSP_INPUT_SELECT] = 0xF
        masks[base + R.DSP_OUTPUT_DIRECT] = 0x3
    for n, code in {0: 10, 1: 10, 2: 10, 3: 10, 4: 10, 5: 10, 6: 10, 7: 10, 8: 10, 9: 11, 10: 15, 11: 15}.items():
        resets[R.dsp(n) + R.DSP_INPUT_SELECT] = code
    for n in range(3):
        base = R.pid(n)
        masks.update({base + R.PID_IVAL: 0xFFFF, base + R.PID_SETPOINT: 0x3FFF, base + R.PID_P: 0xFFFFFF,
                      base + R.PID_I: 0xFFFFFF, base + R.PID_D: 0xFFFFFF, base + R.PID_INPUTFILTER: 0xFFFFFFFF,
                      base + R.PID_MIN_VOLTAGE: 0x3FFF, base + R.PID_MAX_VOLTAGE: 0x3FFF,
                      base + R.PID_PAUSE: 0xF})
        resets[base + R.PID_MIN_VOLTAGE] = 0x2000  # -1 V
        resets[base + R.PID_PAUSE] = 0x7  # every gain paused while the module's sync bit is low
        resets[base + R.PID_MAX_VOLTAGE] = 0x1FFF  # +1 V
    for a in R.AMS_DAC:
        masks[R.AMS_BASE + a] = 0xFFFFFF
    constants = {R.HK_BASE + R.HK_ID: 1, R.HK_BASE + R.HK_DNA_LO: 0x5EED_0001, R.HK_BASE + R.HK_DNA_HI: 0x1AB}
    for n, kind in R.SLOT_KIND.items():
        constants.update({R.dsp(n) + a: v for a, v in R.CONSTANTS[kind].items()})
    return masks, resets, constants


class SimulatedFPGA:
    """pyrpl's FPGA image as a register map. Thread-safe; addresses are absolute."""

    MASKS, RESETS, CONSTANTS = _register_layout()

    def __init__(self, inputs: Callable[[], tuple[float, float]], *, noise: float = NOISE_V,
                 on_out1: Callable[[float], None] | None = None, seed: int = 0):
        self._inputs = inputs  # -> (in1, in2) volts, right now
        self._on_out1 = on_out1
        self.noise = noise
        self._rng = np.random.default_rng(seed)
        self._lock = threading.RLock()
        self._t0 = time.monotonic()
        self.regs: dict[int, int] = dict(self.RESETS)
        self.sync = 0xFF
        self.asg_tables = [np.zeros(BUFFER, np.uint32), np.zeros(BUFFER, np.uint32)]
        self.scope_data = [np.zeros(BUFFER, np.uint32), np.zeros(BUFFER, np.uint32)]
        self.scope_armed = False
        self.scope_keep = False
        self.scope_source = 0
        self.scope_wp_trigger = 0
        self.scope_trigger_time = 0
        self.pin_levels = {"P": 0, "N": 0}  # levels driven onto input pins from outside
        self._out1 = 0.0
        self.pids = PidBank(self.regs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_tick = time.monotonic()

    # -- the DSP clock ----------------------------------------------------------
    def start(self, name: str = "rp-dsp") -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
            self._thread = None

    def _run(self) -> None:
        while True:
            with self._lock:
                active = self.pids.active()
            if self._stop.wait(TICK if active else IDLE):
                return
            if active:
                self.tick()
            else:
                self._last_tick = time.monotonic()

    def tick(self) -> None:
        """Run the PIDs over the time since the last tick (at most MAX_DT), then the DACs."""
        with self._lock:
            now = time.monotonic()
            dt, self._last_tick = min(now - self._last_tick, MAX_DT), now
            inputs: list = []

            def signal(code: int) -> float:
                if code in (10, 11):
                    if not inputs:
                        inputs.extend(self._inputs())  # one look at the world per tick
                    return inputs[code - 10]
                if code in (0, 1, 2):
                    return self.pids.output[code]  # last tick's: the FPGA's pipeline delay
                if code in (8, 9):
                    return self._asg_dc(code - 8)
                if code in (12, 13):
                    return self._dac(code - 12)
                return 0.0  # IQ, IIR, trigger: not executed

            self.pids.step(dt, signal, self.sync)
            self._update_out1()

    def _asg_dc(self, i: int) -> float:
        """What a ~1 kHz loop sees of a generator: the mean of its waveform (its level if stopped)."""
        ch = (R.ASG0, R.ASG1)[i]
        flags = (self.regs.get(R.ASG_BASE, 0) >> ch.bit) & 0xFFFF
        if flags & R.ASG_ZERO:
            return 0.0
        word = self.regs.get(ch.amplitude_offset, 0)
        table = self.asg_tables[i].astype(np.int64)
        table = np.where(table >= 8192, table - 16384, table) / R.FULL_SCALE_COUNTS
        running = (flags & R.ASG_TRIGGER_MASK) and not flags & R.ASG_RESET
        level = table.mean() if running else table[0]
        return min(max(R.asg_offset(word) + R.asg_amplitude(word) * float(level), -1.0), 1.0)

    def _dac(self, index: int) -> float:
        """The DC level on out1/out2: ASG offsets and PID outputs routed there."""
        total = self.pids.routed(index)
        for ch in (R.ASG0, R.ASG1):
            if self.regs.get(ch.output_select, 0) & (1 << index):
                total += R.asg_offset(self.regs.get(ch.amplitude_offset, 0))
        return min(max(total, -1.0), 1.0)

    # -- bus --------------------------------------------------------------
    def read(self, address: int, count: int) -> np.ndarray:
        with self._lock:
            for table, base in ((self.scope_data, R.SCOPE_BASE + R.SCOPE_CH1_DATA),
                                (self.asg_tables, R.ASG0.table)):
                for i, start in enumerate((base, base + 0x10000)):
                    first = (address - start) // 4
                    if address >= start and (address - start) % 4 == 0 and first + count <= BUFFER:
                        if table is self.scope_data and self.scope_armed:
                            self._capture()  # while armed the ring buffer follows the inputs
                        return table[i][first:first + count].copy()
            return np.array([self.read_word(address + 4 * k) for k in range(count)], dtype=np.uint32)

    def write(self, address: int, words) -> None:
        with self._lock:
            for i, start in enumerate((R.ASG0.table, R.ASG1.table)):  # waveform uploads: 16k words at once
                first = (address - start) // 4
                if address >= start and (address - start) % 4 == 0 and first + len(words) <= BUFFER:
                    self.asg_tables[i][first:first + len(words)] = np.asarray(words, dtype=np.uint32) & 0x3FFF
                    return
            for k, word in enumerate(words):
                self.write_word(address + 4 * k, int(word))
            self._update_out1()  # a generator or a PID may have been (re)routed to out1

    def read_word(self, address: int) -> int:
        with self._lock:
            return self._read_word(address) & 0xFFFFFFFF

    def _read_word(self, a: int) -> int:
        if a in self.CONSTANTS:
            return self.CONSTANTS[a]
        if R.SCOPE_BASE <= a < R.ASG_BASE:
            return self._read_scope(a - R.SCOPE_BASE)
        if R.ASG_BASE + 0x10000 <= a < R.ASG_BASE + 0x30000:
            i, j = divmod(a - R.ASG_BASE - 0x10000, 0x10000)
            return int(self.asg_tables[i][j // 4]) if j < 4 * BUFFER else 0
        if R.DSP_BASE <= a < R.AMS_BASE:
            offset = (a - R.DSP_BASE) % R.DSP_SLOT
            if offset == R.DSP_SYNC:
                return self.sync
            slot = (a - R.DSP_BASE) // R.DSP_SLOT
            if slot < 3 and offset == R.DSP_OUTPUT_SIGNAL:
                return R.volts_to_word(self.pids.output[slot])
            if slot < 3 and offset == R.PID_IVAL:
                return self.pids.read_ival(slot)
            if offset in (R.DSP_SATURATED, R.DSP_OUTPUT_SIGNAL):
                return 0  # nothing saturates; the IQ, IIR and trigger outputs are not modelled: 0 V
        if a == R.HK_BASE + R.HK_EXP_P_IN:
            return self._pin_levels("P")
        if a == R.HK_BASE + R.HK_EXP_N_IN:
            return self._pin_levels("N")
        return self.regs.get(a, 0)

    def write_word(self, a: int, word: int) -> None:
        with self._lock:
            word &= 0xFFFFFFFF
            if a in self.CONSTANTS:
                return
            if R.SCOPE_BASE <= a < R.ASG_BASE:
                self._write_scope(a - R.SCOPE_BASE, word)
            elif R.ASG_BASE + 0x10000 <= a < R.ASG_BASE + 0x30000:
                i, j = divmod(a - R.ASG_BASE - 0x10000, 0x10000)
                if j < 4 * BUFFER:
                    self.asg_tables[i][j // 4] = word & 0x3FFF
            elif R.DSP_BASE <= a < R.AMS_BASE and (a - R.DSP_BASE) % R.DSP_SLOT == R.DSP_SYNC:
                self.sync = word & 0xFF
            elif a in self.MASKS:
                self.regs[a] = word & self.MASKS[a]
                if R.DSP_BASE <= a < R.DSP_BASE + 3 * R.DSP_SLOT and a % R.DSP_SLOT == R.PID_IVAL:
                    self.pids.write_ival((a - R.DSP_BASE) // R.DSP_SLOT, word)
            elif R.DSP_BASE + 3 * R.DSP_SLOT <= a < R.DSP_BASE + 8 * R.DSP_SLOT:
                self.regs[a] = word  # trig, IIR and IQ registers: kept whole, not modelled
            # anything else is read-only or not decoded: the write is lost, as on the bus

    # -- scope --------------------------------------------------------------
    def cycles(self) -> int:
        return int((time.monotonic() - self._t0) * R.CLOCK_HZ)

    def _read_scope(self, offset: int) -> int:
        if offset == R.SCOPE_CONTROL:
            return (R.SCOPE_KEEP if self.scope_keep else 0) | (R.SCOPE_ARM if self.scope_armed else 0)
        if offset == R.SCOPE_TRIGGER_SOURCE:
            return self.scope_source
        if offset == R.SCOPE_WP_CURRENT:
            return (self.cycles() // self._decimation()) % BUFFER
        if offset == R.SCOPE_WP_TRIGGER:
            return self.scope_wp_trigger
        if offset == R.SCOPE_WE_COUNT:
            return BUFFER
        if offset in (R.SCOPE_ADC1, R.SCOPE_ADC2):
            return R.volts_to_word(self._inputs()[offset == R.SCOPE_ADC2])
        if offset in (R.SCOPE_TIMESTAMP, R.SCOPE_TIMESTAMP + 4):
            return self.cycles() >> (32 if offset != R.SCOPE_TIMESTAMP else 0)
        if offset in (R.SCOPE_TRIGGER_TIMESTAMP, R.SCOPE_TRIGGER_TIMESTAMP + 4):
            return self.scope_trigger_time >> (32 if offset != R.SCOPE_TRIGGER_TIMESTAMP else 0)
        if offset == R.SCOPE_PRETRIG_OK:
            return 1
        if R.SCOPE_CH1_DATA <= offset < R.SCOPE_CH2_DATA + 4 * BUFFER:
            i, j = divmod(offset - R.SCOPE_CH1_DATA, 0x10000)
            return int(self.scope_data[i][j // 4]) if j < 4 * BUFFER else 0
        return self.regs.get(R.SCOPE_BASE + offset, 0)

    def _write_scope(self, offset: int, word: int) -> None:
        if offset == R.SCOPE_CONTROL:
            self.scope_keep = bool(word & R.SCOPE_KEEP)
            if word & R.SCOPE_RESET:
                self.scope_armed, self.scope_source = False, 0
            if word & R.SCOPE_ARM:
                self.scope_armed = True
        elif offset == R.SCOPE_TRIGGER_SOURCE:
            self.scope_source = word & 0xF
            if self.scope_armed and self.scope_source:
                self._trigger()
        elif R.SCOPE_BASE + offset in self.MASKS:
            self.regs[R.SCOPE_BASE + offset] = word & self.MASKS[R.SCOPE_BASE + offset]

    def _decimation(self) -> int:
        return max(1, self.regs.get(R.SCOPE_BASE + R.SCOPE_DECIMATION, 1))

    def _trigger(self) -> None:
        """Every source fires at once (see the module docstring); the trace is then complete."""
        self.scope_wp_trigger = (self.cycles() // self._decimation()) % BUFFER
        self.scope_trigger_time = self.cycles()
        self._capture()
        self.scope_source = 0
        self.scope_armed = self.scope_keep

    def _capture(self) -> None:
        delay = self.regs.get(R.SCOPE_BASE + R.SCOPE_TRIGGER_DELAY, 0)
        # pyrpl reads the ring from index wp_trigger + delay + 1: put the oldest sample there.
        start = (self.scope_wp_trigger + delay + 1) % BUFFER
        for ch in (0, 1):
            code = self.regs.get(R.dsp(8 + ch) + R.DSP_INPUT_SELECT, 10 + ch)
            trace = self.signal_trace(code)
            words = np.clip(np.round(trace * R.FULL_SCALE_COUNTS), -8192, 8191).astype(np.int64) & 0x3FFF
            self.scope_data[ch] = np.roll(words.astype(np.uint32), start)

    def signal_trace(self, code: int, n: int = BUFFER) -> np.ndarray:
        """n samples (volts) of the DSP signal `code` at the scope's decimation."""
        if code in (10, 11):
            level = self._inputs()[code - 10]
            return np.clip(level + self._rng.normal(0.0, self.noise, n), -1.0, 1.0)
        if code in (8, 9):
            return self._asg_trace(code - 8, n)
        if code in (12, 13):
            out = np.zeros(n)
            for i, ch in enumerate((R.ASG0, R.ASG1)):
                if self.regs.get(ch.output_select, 0) & (1 << (code - 12)):
                    out += self._asg_trace(i, n)
            return np.clip(out + self.pids.routed(code - 12), -1.0, 1.0)
        if code in (0, 1, 2):
            return np.full(n, self.pids.output[code])
        return np.zeros(n)  # IQ/IIR outputs: not modelled

    def _asg_trace(self, i: int, n: int) -> np.ndarray:
        ch = (R.ASG0, R.ASG1)[i]
        flags = (self.regs.get(R.ASG_BASE, 0) >> ch.bit) & 0xFFFF
        if flags & R.ASG_ZERO:
            return np.zeros(n)
        word = self.regs.get(ch.amplitude_offset, 0)
        amp, offset = R.asg_amplitude(word), R.asg_offset(word)
        table = self.asg_tables[i].astype(np.int64)
        table = np.where(table >= 8192, table - 16384, table) / R.FULL_SCALE_COUNTS
        running = (flags & R.ASG_TRIGGER_MASK) and not flags & R.ASG_RESET
        if not running:
            return np.full(n, offset + amp * table[0])
        wrap = self.regs.get(ch.counter_wrap, R.ASG_DEFAULT_WRAP) + 1
        step = self.regs.get(ch.counter_step, 0)
        t0 = self.cycles()
        counter = (self.regs.get(ch.start_offset, 0)
                   + step * (t0 + np.arange(n, dtype=np.int64) * self._decimation())) % wrap
        return np.clip(offset + amp * table[(counter >> 16) % BUFFER], -1.0, 1.0)

    # -- out1 -> RF drive -----------------------------------------------------
    def out1_amplitude(self) -> float:
        """The RF drive level on out1: the running, un-zeroed ASGs' amplitudes and the PID
        outputs routed there."""
        total = self.pids.routed(0)
        for ch in (R.ASG0, R.ASG1):
            flags = (self.regs.get(R.ASG_BASE, 0) >> ch.bit) & 0xFFFF
            routed = self.regs.get(ch.output_select, 0) & 1
            running = (flags & R.ASG_TRIGGER_MASK) and not flags & (R.ASG_ZERO | R.ASG_RESET)
            if routed and running:
                total += R.asg_amplitude(self.regs.get(ch.amplitude_offset, 0))
        return min(max(total, 0.0), 1.0)

    def _update_out1(self) -> None:
        amplitude = self.out1_amplitude()
        if amplitude != self._out1:
            self._out1 = amplitude
            if self._on_out1:
                self._on_out1(amplitude)

    # -- pins shared with SCPI ---------------------------------------------------
    def _pin_levels(self, row: str) -> int:
        direction = self.regs.get(R.HK_BASE + (R.HK_EXP_P_DIR if row == "P" else R.HK_EXP_N_DIR), 0)
        driven = self.regs.get(R.HK_BASE + (R.HK_EXP_P_OUT if row == "P" else R.HK_EXP_N_OUT), 0)
        return (driven & direction) | (self.pin_levels[row] & ~direction & 0xFF)

    def set_bit(self, address: int, bit: int, value: bool) -> None:
        with self._lock:
            word = self.regs.get(address, 0)
            self.write_word(address, (word | (1 << bit)) if value else (word & ~(1 << bit)))


# =============================================================================
# SCPI
# =============================================================================
class _ScpiError(Exception):
    """A command the server cannot run: answered with ERR!."""


# Long and short forms of the mnemonics we serve, mapped to one canonical name.
_MNEMONICS = {
    "TR": "TRIG", "TRIG": "TRIG", "TRIGGER": "TRIG",
    "STA": "STA", "START": "START", "U": "UNITS", "UNITS": "UNITS",
    "LAT": "LAT", "LATEST": "LAT", "OLD": "OLD",
    "SOUR": "SOUR", "SOURCE": "SOUR", "SYST": "SYST", "SYSTEM": "SYST", "ERR": "ERR", "ERROR": "ERR",
}
_WORD = re.compile(r"([A-Z_*]+?)(\d*)")


def _canonical(header: str) -> tuple[str, int | None]:
    """'acq:sour2:data:start:n?' -> ('ACQ:SOUR#:DATA:STA:N?', 2)."""
    header = header.strip().upper().lstrip(":")
    query = header.endswith("?")
    suffix = None
    parts = []
    for word in header.rstrip("?").split(":"):
        m = _WORD.fullmatch(word)
        if not m:
            raise _ScpiError(f"bad header {header!r}")
        name, digits = m.groups()
        name = _MNEMONICS.get(name, name)
        if digits:
            if name.startswith("*"):
                raise _ScpiError(f"bad header {header!r}")
            suffix = int(digits)
            name += "#"
        parts.append(name)
    key = ":".join(parts)
    # ACQ:SOUR#:DATA:STA:N?: "STArt" abbreviates to STA; "START" only begins an acquisition.
    key = key.replace("DATA:START:", "DATA:STA:")
    return key + ("?" if query else ""), suffix


def _float(text: str, lo: float, hi: float, what: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise _ScpiError(f"{what}: {text!r} is not a number") from None
    if not lo <= value <= hi:
        raise _ScpiError(f"{what} {value} outside [{lo}, {hi}]")
    return value


def _int(text: str, lo: int, hi: int, what: str) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise _ScpiError(f"{what}: {text!r} is not an integer") from None
    if not lo <= value <= hi:
        raise _ScpiError(f"{what} {value} outside [{lo}, {hi}]")
    return value


def _args(argument: str, n: int) -> list[str]:
    args = [a.strip() for a in argument.split(",")] if argument.strip() else []
    if len(args) != n:
        raise _ScpiError(f"expected {n} parameter(s), got {len(args)}")
    return args


class _Generator:
    def __init__(self):
        self.func, self.freq, self.amp, self.offset, self.on = "SINE", 1000.0, 1.0, 0.0, False


class _Acquisition:
    def __init__(self):
        self.running = False
        self.triggered = False
        self.source = "DISABLED"
        self.decimation = 1
        self.level = 0.0
        self.delay = 0
        self.units = "VOLTS"
        self.format = "ASCII"
        self.data: list[np.ndarray] | None = None


# =============================================================================
# The simulator
# =============================================================================
class _Service:
    """One threaded TCP server on port 0; close() wakes and joins every client thread."""

    def __init__(self, host: str, serve: Callable[[socket.socket], None], name: str):
        service = self
        self._lock = threading.Lock()
        self._clients: dict[socket.socket, threading.Thread] = {}

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                try:
                    serve(self.request)
                except OSError:
                    pass  # the client vanished, or close() shut the socket
                finally:
                    with service._lock:
                        service._clients.pop(self.request, None)

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

            def process_request(self, request, client_address):
                request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                thread = threading.Thread(target=self.process_request_thread, args=(request, client_address),
                                          name=f"{name}-client", daemon=True)
                with service._lock:
                    service._clients[request] = thread
                thread.start()

        self.server = Server((host, 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=name, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        with self._lock:
            clients = dict(self._clients)
        for conn in clients:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in clients.values():
            thread.join(5)
        self.server.server_close()
        self._thread.join(2)


class RedPitayaSimulator(DeviceSimulator):
    kind = "redpitaya"

    def __init__(self, world, *, node: str, host: str = "127.0.0.1", options=None):
        super().__init__(world, node=node, host=host, options=options)
        self.noise = float(self.options.get("noise", NOISE_V))
        seed = sum(node.encode()) + 1
        self._np_rng = np.random.default_rng(seed)
        self._noise_pool: np.ndarray | None = None
        self._lock = threading.RLock()  # one SCPI command at a time, whatever the client
        self.fpga = SimulatedFPGA(self._fast_inputs, noise=self.noise, on_out1=self._drive_from_fpga, seed=seed)
        self.generators = {1: _Generator(), 2: _Generator()}
        self.acq = _Acquisition()
        self._services: list[_Service] = []

    # -- lifecycle -------------------------------------------------------
    def start(self) -> "RedPitayaSimulator":
        scpi = _Service(self.host, self._serve_scpi, f"rp-scpi-{self.node}")
        try:
            monitor = _Service(self.host, self._serve_monitor, f"rp-monitor-{self.node}")
        except BaseException:
            scpi.close()
            raise
        self._services = [scpi, monitor]
        self.fpga.start(f"rp-dsp-{self.node}")
        self.endpoints = {"scpi": f"tcp://{self.host}:{scpi.port}", "monitor": f"tcp://{self.host}:{monitor.port}"}
        self.url = f"tcp://{self.host}:{scpi.port}?monitor_port={monitor.port}"
        return self

    def close(self) -> None:
        services, self._services = self._services, []
        for service in services:
            service.close()
        self.fpga.close()

    # -- the world ---------------------------------------------------------
    def _fast_inputs(self) -> tuple[float, float]:
        state = self.world.state()
        in1 = _clip(state.get("interferometer_phase", 0.0) / math.pi, -1.0, 1.0)
        in2 = _clip(state.get("rf_forward", 0.0) / 2000.0, -1.0, 1.0)
        return in1, in2

    def _slow_input(self, index: int) -> float:
        if index == 0:
            return _clip(3.3 * self.world.state().get("rf_reflected", 0.0) / 500.0, 0.0, 3.3)
        return 0.0

    def _drive(self, amplitude: float) -> None:
        self.world.set("rf_drive", min(max(amplitude, 0.0), 1.0))

    def _drive_from_scpi(self) -> None:
        gen = self.generators[1]
        self._drive(gen.amp if gen.on else 0.0)

    def _drive_from_fpga(self, amplitude: float) -> None:
        self._drive(amplitude)

    def set_input_pin(self, pin: str, level: int) -> None:
        """Drive an expansion pin from outside (tests): what DIG:PIN? reads on an input."""
        row, bit = DIO_PINS[pin.upper()]
        with self.fpga._lock:
            mask = 1 << bit
            self.fpga.pin_levels[row] = (self.fpga.pin_levels[row] | mask) if level else (self.fpga.pin_levels[row] & ~mask)

    # -- monitor server ----------------------------------------------------------
    def _serve_monitor(self, conn: socket.socket) -> None:
        rfile = conn.makefile("rb")
        try:
            while True:
                head = rfile.read(8)
                if len(head) < 8:
                    return  # closed
                op, count, address = head[:1], int.from_bytes(head[2:4], "little"), int.from_bytes(head[4:8], "little")
                if op == b"c":
                    return
                if op not in (b"r", b"w"):
                    return  # out of step: the real server gives up on the connection too
                if count == 0:
                    continue  # ignored, no answer (monitor_server.c)
                payload = rfile.read(4 * count) if op == b"w" else b""
                if len(payload) < (4 * count if op == b"w" else 0):
                    return
                if self.muted():
                    continue  # a dead board: the request is lost
                if op == b"r":
                    reply = head + self._fpga_read(address, count)
                else:
                    self._fpga_write(address, np.frombuffer(payload, dtype="<u4"))
                    reply = head
                self.before_reply()
                conn.sendall(self.garble(reply))
        finally:
            rfile.close()

    def _fpga_read(self, address: int, count: int) -> bytes:
        if not (R.HK_BASE <= address and address + 4 * count <= R.HK_BASE + R.FPGA_SPAN):
            return bytes(4 * count)  # outside the FPGA window: nothing decodes, reads 0
        return self.fpga.read(address, count).astype("<u4").tobytes()

    def _fpga_write(self, address: int, words: np.ndarray) -> None:
        if R.HK_BASE <= address and address + 4 * len(words) <= R.HK_BASE + R.FPGA_SPAN:
            self.fpga.write(address, words)

    # -- SCPI server --------------------------------------------------------------
    def _serve_scpi(self, conn: socket.socket) -> None:
        rfile = conn.makefile("rb")
        try:
            while True:
                line = rfile.readline(MAX_LINE)
                if not line:
                    return
                if self.muted():
                    continue
                try:
                    text = line.decode("ascii").strip()
                except UnicodeDecodeError:
                    text = "\0"  # not a command
                if not text:
                    continue
                reply = self.execute(text)
                if reply is None:
                    continue
                self.before_reply()
                # Corrupt the payload, keep the terminator: TCP keeps the framing.
                conn.sendall(self.garble(reply.encode("ascii")) + b"\r\n")
        finally:
            rfile.close()

    def execute(self, text: str) -> str | None:
        """Run one SCPI line; the reply for a query or an error, None otherwise."""
        header, _, argument = text.partition(" ")
        try:
            key, n = _canonical(header)
            handler = self._COMMANDS.get(key)
            if handler is None:
                raise _ScpiError(f"unknown command {header!r}")
            with self._lock:
                return handler(self, n, argument.strip())
        except _ScpiError:
            return ERR

    # common
    def _idn(self, n, arg):
        return IDN.format(node=self.node)

    def _opc(self, n, arg):
        return "1"

    def _rst(self, n, arg):
        self._gen_rst(n, arg)
        self._acq_rst(n, arg)
        self._dig_rst(n, arg)
        self._analog_rst(n, arg)

    def _cls(self, n, arg):
        return None

    def _syst_err(self, n, arg):
        return '0,"No error"'

    # generator
    def _gen(self, n) -> _Generator:
        if n not in self.generators:
            raise _ScpiError("generator channel must be 1 or 2")
        return self.generators[n]

    def _gen_rst(self, n, arg):
        was_on = self.generators[1].on
        self.generators = {1: _Generator(), 2: _Generator()}
        if was_on:
            self._drive_from_scpi()

    def _func(self, n, arg):
        name = _args(arg, 1)[0].upper()
        if name not in WAVEFORMS:
            raise _ScpiError(f"waveform {name!r}")
        self._gen(n).func = name

    def _func_q(self, n, arg):
        return self._gen(n).func

    def _freq(self, n, arg):
        self._gen(n).freq = _float(_args(arg, 1)[0], 0.0, GEN_MAX_HZ, "frequency")

    def _freq_q(self, n, arg):
        return _num(self._gen(n).freq)

    def _volt(self, n, arg):
        gen = self._gen(n)
        gen.amp = _float(_args(arg, 1)[0], 0.0, 1.0, "amplitude")
        if n == 1:
            self._drive_from_scpi()

    def _volt_q(self, n, arg):
        return _num(self._gen(n).amp)

    def _offs(self, n, arg):
        self._gen(n).offset = _float(_args(arg, 1)[0], -1.0, 1.0, "offset")

    def _offs_q(self, n, arg):
        return _num(self._gen(n).offset)

    @staticmethod
    def _onoff(text: str) -> bool:
        value = text.strip().upper()
        if value in ("ON", "1"):
            return True
        if value in ("OFF", "0"):
            return False
        raise _ScpiError(f"state {text!r}")

    def _output(self, n, arg):
        self._gen(n).on = self._onoff(_args(arg, 1)[0])
        if n == 1:
            self._drive_from_scpi()

    def _output_both(self, n, arg):
        on = self._onoff(_args(arg, 1)[0])
        for gen in self.generators.values():
            gen.on = on
        self._drive_from_scpi()

    def _output_q(self, n, arg):
        return "ON" if self._gen(n).on else "OFF"

    # acquisition
    def _acq_start(self, n, arg):
        self.acq.running, self.acq.triggered, self.acq.source = True, False, "DISABLED"

    def _acq_stop(self, n, arg):
        self.acq.running = False

    def _acq_rst(self, n, arg):
        self.acq = _Acquisition()

    def _acq_dec(self, n, arg):
        value = _int(_args(arg, 1)[0], 1, 65536, "decimation")
        if value & (value - 1) and value < 17:  # 1, 2, 4, 8, 16, then any 17..65536
            raise _ScpiError("decimation must be 1, 2, 4, 8, 16 or 17..65536")
        self.acq.decimation = value

    def _acq_dec_q(self, n, arg):
        return str(self.acq.decimation)

    def _acq_trig(self, n, arg):
        source = _args(arg, 1)[0].upper()
        if source not in TRIGGER_SOURCES:
            raise _ScpiError(f"trigger source {source!r}")
        self.acq.source = source
        if self.acq.running and source != "DISABLED":
            self._acq_capture()  # every source fires at once: see the module docstring
            self.acq.triggered, self.acq.source = True, "DISABLED"

    def _acq_trig_q(self, n, arg):
        return self.acq.source

    def _acq_trig_stat(self, n, arg):
        return "TD" if self.acq.triggered else "WAIT"

    def _acq_trig_fill(self, n, arg):
        return "1" if self.acq.triggered else "0"

    def _acq_trig_lev(self, n, arg):
        self.acq.level = _float(_args(arg, 1)[0], -20.0, 20.0, "trigger level")

    def _acq_trig_lev_q(self, n, arg):
        return _num(self.acq.level)

    def _acq_trig_dly(self, n, arg):
        self.acq.delay = _int(_args(arg, 1)[0], -(2 ** 31), 2 ** 31 - 1, "trigger delay")

    def _acq_trig_dly_q(self, n, arg):
        return str(self.acq.delay)

    def _acq_units(self, n, arg):
        units = _args(arg, 1)[0].upper()
        if units not in ("VOLTS", "RAW"):
            raise _ScpiError(f"units {units!r}")
        self.acq.units = units

    def _acq_units_q(self, n, arg):
        return self.acq.units

    def _acq_format(self, n, arg):
        fmt = _args(arg, 1)[0].upper()
        if fmt != "ASCII":  # BIN is not served by this simulator
            raise _ScpiError(f"data format {fmt!r}")
        self.acq.format = fmt

    def _acq_format_q(self, n, arg):
        return self.acq.format

    def _acq_buf_size(self, n, arg):
        return str(BUFFER)

    def _acq_capture(self) -> None:
        # Noise from a pre-drawn pool at a random offset: drawing 2 x 16384 normals per
        # trigger cost a fifth of a core at telemetry rates, for no visible difference.
        in1, in2 = self._fast_inputs()
        if self._noise_pool is None:
            self._noise_pool = self._np_rng.normal(0.0, self.noise, 8 * BUFFER)
        traces = []
        for v in (in1, in2):
            start = int(self._np_rng.integers(0, len(self._noise_pool) - BUFFER))
            traces.append(np.clip(v + self._noise_pool[start:start + BUFFER], -1.0, 1.0))
        self.acq.data = traces

    def _acq_trace(self, n) -> np.ndarray:
        if n not in (1, 2):
            raise _ScpiError("acquisition channel must be 1 or 2")
        if self.acq.data is None:
            self._acq_capture()  # the buffer holds whatever the inputs were
        return self.acq.data[n - 1]

    def _acq_format_values(self, values: np.ndarray) -> str:
        if self.acq.units == "RAW":
            counts = np.clip(np.round(values * R.FULL_SCALE_COUNTS), -8192, 8191).astype(int)
            return "{" + ",".join(map(str, counts)) + "}"
        return "{" + ",".join(f"{v:.5f}" for v in values) + "}"

    def _acq_data(self, n, arg):
        if arg:
            raise _ScpiError("ACQ:SOUR<n>:DATA? takes no parameter")
        return self._acq_format_values(self._acq_trace(n))

    def _acq_data_start_n(self, n, arg):
        start_text, size_text = _args(arg, 2)
        start = _int(start_text, 0, BUFFER - 1, "start")
        size = _int(size_text, 1, BUFFER, "size")
        trace = self._acq_trace(n)
        return self._acq_format_values(np.take(trace, range(start, start + size), mode="wrap"))

    def _acq_data_old_n(self, n, arg):
        size = _int(_args(arg, 1)[0], 1, BUFFER, "size")
        return self._acq_format_values(self._acq_trace(n)[:size])

    def _acq_data_latest_n(self, n, arg):
        size = _int(_args(arg, 1)[0], 1, BUFFER, "size")
        return self._acq_format_values(self._acq_trace(n)[-size:])

    # digital pins: the housekeeping registers, as on the board
    @staticmethod
    def _pin(text: str):
        name = text.strip().upper()
        if name in DIO_PINS:
            return DIO_PINS[name]
        if name in LED_PINS:
            return ("LED", LED_PINS[name])
        raise _ScpiError(f"pin {text!r}")

    def _dig_pin(self, n, arg):
        pin_text, state_text = _args(arg, 2)
        row, bit = self._pin(pin_text)
        state = _int(state_text, 0, 1, "pin state")
        address = R.HK_BASE + {"P": R.HK_EXP_P_OUT, "N": R.HK_EXP_N_OUT, "LED": R.HK_LED}[row]
        self.fpga.set_bit(address, bit, bool(state))

    def _dig_pin_q(self, n, arg):
        row, bit = self._pin(_args(arg, 1)[0])
        if row == "LED":
            return str((self.fpga.read_word(R.HK_BASE + R.HK_LED) >> bit) & 1)
        word = self.fpga.read_word(R.HK_BASE + (R.HK_EXP_P_IN if row == "P" else R.HK_EXP_N_IN))
        return str((word >> bit) & 1)

    def _dig_pin_dir(self, n, arg):
        dir_text, pin_text = _args(arg, 2)
        direction = dir_text.strip().upper()
        if direction not in ("IN", "OUT"):
            raise _ScpiError(f"direction {dir_text!r}")
        row, bit = self._pin(pin_text)
        if row == "LED":
            raise _ScpiError("LEDs are outputs")
        address = R.HK_BASE + (R.HK_EXP_P_DIR if row == "P" else R.HK_EXP_N_DIR)
        self.fpga.set_bit(address, bit, direction == "OUT")

    def _dig_pin_dir_q(self, n, arg):
        row, bit = self._pin(_args(arg, 1)[0])
        if row == "LED":
            return "OUT"
        word = self.fpga.read_word(R.HK_BASE + (R.HK_EXP_P_DIR if row == "P" else R.HK_EXP_N_DIR))
        return "OUT" if (word >> bit) & 1 else "IN"

    def _dig_rst(self, n, arg):
        for offset in (R.HK_EXP_P_DIR, R.HK_EXP_N_DIR, R.HK_EXP_P_OUT, R.HK_EXP_N_OUT, R.HK_LED):
            self.fpga.write_word(R.HK_BASE + offset, 0)

    # analog pins: AOUT are the AMS PWM DACs, AIN the wiring above
    @staticmethod
    def _apin(text: str) -> tuple[str, int]:
        m = re.fullmatch(r"(AOUT|AIN)([0-3])", text.strip().upper())
        if not m:
            raise _ScpiError(f"analog pin {text!r}")
        return m.group(1), int(m.group(2))

    def _analog_pin(self, n, arg):
        pin_text, value_text = _args(arg, 2)
        kind, index = self._apin(pin_text)
        if kind != "AOUT":
            raise _ScpiError("AIN pins are inputs")
        volts = _float(value_text, *AOUT_RANGE, "AOUT voltage")
        self.fpga.write_word(R.AMS_BASE + R.AMS_DAC[index], R.pwm_word(volts))

    def _analog_pin_q(self, n, arg):
        kind, index = self._apin(_args(arg, 1)[0])
        if kind == "AIN":
            return _num(self._slow_input(index))
        return _num(R.pwm_volts(self.fpga.read_word(R.AMS_BASE + R.AMS_DAC[index])))

    def _analog_rst(self, n, arg):
        for a in R.AMS_DAC:
            self.fpga.write_word(R.AMS_BASE + a, 0)

    _COMMANDS = {
        "*IDN?": _idn, "*OPC?": _opc, "*RST": _rst, "*CLS": _cls, "SYST:ERR?": _syst_err,
        "SYST:ERR:NEXT?": _syst_err,
        "GEN:RST": _gen_rst,
        "SOUR#:FUNC": _func, "SOUR#:FUNC?": _func_q,
        "SOUR#:FREQ:FIX": _freq, "SOUR#:FREQ:FIX?": _freq_q,
        "SOUR#:VOLT": _volt, "SOUR#:VOLT?": _volt_q,
        "SOUR#:VOLT:OFFS": _offs, "SOUR#:VOLT:OFFS?": _offs_q,
        "OUTPUT#:STATE": _output, "OUTPUT#:STATE?": _output_q, "OUTPUT:STATE": _output_both,
        "ACQ:START": _acq_start, "ACQ:STOP": _acq_stop, "ACQ:RST": _acq_rst,
        "ACQ:DEC": _acq_dec, "ACQ:DEC?": _acq_dec_q,
        "ACQ:TRIG": _acq_trig, "ACQ:TRIG?": _acq_trig_q,
        "ACQ:TRIG:STAT?": _acq_trig_stat, "ACQ:TRIG:FILL?": _acq_trig_fill,
        "ACQ:TRIG:LEV": _acq_trig_lev, "ACQ:TRIG:LEV?": _acq_trig_lev_q,
        "ACQ:TRIG:DLY": _acq_trig_dly, "ACQ:TRIG:DLY?": _acq_trig_dly_q,
        "ACQ:DATA:UNITS": _acq_units, "ACQ:DATA:UNITS?": _acq_units_q,
        "ACQ:DATA:FORMAT": _acq_format, "ACQ:DATA:FORMAT?": _acq_format_q,
        "ACQ:BUF:SIZE?": _acq_buf_size,
        "ACQ:SOUR#:DATA?": _acq_data, "ACQ:SOUR#:DATA:STA:N?": _acq_data_start_n,
        "ACQ:SOUR#:DATA:OLD:N?": _acq_data_old_n, "ACQ:SOUR#:DATA:LAT:N?": _acq_data_latest_n,
        "DIG:PIN": _dig_pin, "DIG:PIN?": _dig_pin_q, "DIG:PIN:DIR": _dig_pin_dir,
        "DIG:PIN:DIR?": _dig_pin_dir_q, "DIG:RST": _dig_rst,
        "ANALOG:PIN": _analog_pin, "ANALOG:PIN?": _analog_pin_q, "ANALOG:RST": _analog_rst,
    }

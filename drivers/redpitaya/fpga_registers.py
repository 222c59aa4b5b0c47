"""The FPGA modules as registers, through labrig's MonitorClient (the default backend of fpga.Fpga).

Each setting is one or more words in the module's DSP slot, encoded the way pyrpl's
register descriptors do (hardware_modules/{pid,iq,asg}.py), so either can read what
the other wrote. Every access is one bounded monitor-protocol transaction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from . import registers as R

WAVEFORMS = ("sin", "cos", "ramp", "halframp", "square", "dc")
TRIGGERS = {"off": 0, "immediately": 1, "ext_positive_edge": 2, "ext_negative_edge": 3, "ext_raw": 4,
            "high": 5}
IQ_GAIN_NORM = 2 ** R.IQ_GAIN_SHIFT
IQ_STAGES = {"iq0": 2, "iq1": 2, "iq2": 4}  # quadrature filter stages (the 0x230 constants)
IQ_MINBW = R.CONSTANTS["iq"][R.IQ_BANDWIDTH_MINBW]
AC_MINBW = R.CONSTANTS["iq"][R.FILTER_MINBW]


@dataclass(frozen=True)
class Field:
    offsets: tuple[int, ...]  # in the module's slot; a value may span several registers
    encode: Callable[[Any, str], int]
    decode: Callable[[int, str], Any]


def _choice(table: dict[str, int]) -> tuple[Callable, Callable]:
    names = {v: k for k, v in table.items()}
    return (lambda v, m: table[v]), (lambda w, m: names.get(w, f"unknown({w})"))


def _signed(bits: int, norm: float) -> tuple[Callable, Callable]:
    return (lambda v, m: R.from_signed(round(v * norm), bits)), (lambda w, m: R.to_signed(w, bits) / norm)


_volts = (lambda v, m: R.volts_to_word(v)), (lambda w, m: R.word_to_volts(w))
_routing = {"input": Field((R.DSP_INPUT_SELECT,), *_choice(R.DSP_MODULES)),
            "output": Field((R.DSP_OUTPUT_DIRECT,), *_choice(R.OUTPUT_DIRECTS))}
FIELDS = {
    "pid": {**_routing,
            "setpoint": Field((R.PID_SETPOINT,), *_volts),
            "p": Field((R.PID_P,), lambda v, m: R.pid_p_word(v), lambda w, m: R.pid_p_gain(w)),
            "i": Field((R.PID_I,), lambda v, m: R.pid_i_word(v), lambda w, m: R.pid_i_hz(w)),
            "min_voltage": Field((R.PID_MIN_VOLTAGE,), *_volts),
            "max_voltage": Field((R.PID_MAX_VOLTAGE,), *_volts),
            "ival": Field((R.PID_IVAL,), *_signed(16, R.FULL_SCALE_COUNTS))},
    "iq": {**_routing,
           "frequency": Field((R.IQ_FREQUENCY,), lambda v, m: min(round(v / R.CLOCK_HZ * 2 ** 32), 2 ** 32 - 1),
                              lambda w, m: w * R.CLOCK_HZ / 2 ** 32),
           "bandwidth": Field((R.IQ_BANDWIDTH,), lambda v, m: R.filter_word(v, IQ_STAGES[m], IQ_MINBW),
                              lambda w, m: R.filter_from_word(w, IQ_STAGES[m], IQ_MINBW)),
           "acbandwidth": Field((R.IQ_INPUTFILTER,), lambda v, m: R.filter_word([-v], 1, AC_MINBW),
                                lambda w, m: abs(R.filter_from_word(w, 1, AC_MINBW)[0])),
           "phase": Field((R.IQ_PHASE,), lambda v, m: round(-v / 360 * 2 ** 32) % 2 ** 32,
                          lambda w, m: (-w / 2 ** 32 * 360) % 360),
           "gain": Field((R.IQ_G1, R.IQ_G4), *_signed(R.IQ_GAINBITS, IQ_GAIN_NORM)),
           "amplitude": Field((R.IQ_AMPLITUDE,), *_signed(R.IQ_GAINBITS, 2 ** (R.IQ_GAINBITS - 1))),
           "quadrature_factor": Field((R.IQ_QUADRATURE_FACTOR,), *_signed(R.IQ_GAINBITS, 1)),
           "output_signal": Field((R.IQ_OUTPUT_SIGNAL,), *_choice(R.IQ_OUTPUT_SIGNALS)),
           "on": Field((R.IQ_FLAGS,), lambda v, m: int(v), lambda w, m: bool(w & R.IQ_ON))},
}
_IQ_SYNC_BITS = sum(1 << R.DSP_MODULES[n] for n in ("iq0", "iq1", "iq2"))


def waveform_table(name: str) -> np.ndarray:
    """One period of a named waveform (16384 samples, -1..1), as pyrpl defines the names."""
    t = np.arange(R.BUFFER_SAMPLES) / R.BUFFER_SAMPLES
    return {"sin": lambda: np.sin(2 * np.pi * t), "cos": lambda: np.cos(2 * np.pi * t),
            "ramp": lambda: np.where(t < 0.5, -1 + 4 * t, 3 - 4 * t), "halframp": lambda: -1 + 2 * t,
            "square": lambda: np.where(t < 0.5, 1.0, -1.0), "dc": lambda: np.zeros_like(t)}[name]()


def table_words(samples: np.ndarray) -> np.ndarray:
    return (np.round((R.FULL_SCALE_COUNTS - 1) * samples).astype(np.int64) & 0x3FFF).astype(np.uint32)


class RegisterBackend:
    """Modules as register reads and writes through labrig's MonitorClient (bounded I/O)."""

    def __init__(self, registers):
        self.regs = registers
        self._tables = {name: table_words(waveform_table(name)) for name in WAVEFORMS}

    def configure(self, module, values: dict[str, Any]) -> None:
        if module.kind == "asg":
            return self._asg_configure(module, values)
        base = R.dsp(module.name)
        fields = FIELDS[module.kind]
        # Route last: a module reaches a DAC only once its gains and limits are in place
        # (and leaves it first when it is being switched off).
        order = sorted(values, key=lambda k: 1 if k != "output" else 0 if values[k] == "off" else 2)
        for key in order:
            if key == "on":
                continue
            field = fields[key]
            for offset in field.offsets:
                self.regs.write_word(base + offset, field.encode(values[key], module.name))
        if module.kind == "iq":
            flags = self.regs.read_word(base + R.IQ_FLAGS)
            on = values.get("on", True)
            self.regs.write_word(base + R.IQ_FLAGS, (flags | R.IQ_ON) if on else (flags & ~R.IQ_ON))
            self._sync_iqs()

    def state(self, module) -> dict[str, Any]:
        if module.kind == "asg":
            return self._asg_state(module)
        base = R.dsp(module.name)
        return {key: field.decode(self.regs.read_word(base + field.offsets[0]), module.name)
                for key, field in FIELDS[module.kind].items()}

    def reset(self, module) -> None:
        base = R.dsp(module.name)
        if module.kind == "pid":
            self.regs.write_word(base + R.PID_IVAL, 0)
        elif module.kind == "iq":
            flags = self.regs.read_word(base + R.IQ_FLAGS)
            self.regs.write_word(base + R.IQ_FLAGS, flags & ~R.IQ_ON)
            self.regs.write_word(base + R.IQ_FLAGS, flags)
        else:
            ch = _asg(module)
            control = self.regs.read_word(ch.control)
            self.regs.write_word(ch.control, control | (R.ASG_RESET << ch.bit))
            self.regs.write_word(ch.control, control)

    def get_output(self, module) -> str:
        word = self.regs.read_word(R.dsp(module.name) + R.DSP_OUTPUT_DIRECT) & 0x3
        return {v: k for k, v in R.OUTPUT_DIRECTS.items()}[word]

    def set_output(self, module, output: str) -> None:
        self.regs.write_word(R.dsp(module.name) + R.DSP_OUTPUT_DIRECT, R.OUTPUT_DIRECTS[output])

    def close(self) -> None:
        pass  # the register client belongs to the driver

    def _sync_iqs(self) -> None:
        """Restart the IQ oscillators together, as pyrpl does after an IQ setup (phases aligned)."""
        sync = self.regs.read_word(R.DSP_BASE + R.DSP_SYNC)
        self.regs.write_word(R.DSP_BASE + R.DSP_SYNC, sync & ~_IQ_SYNC_BITS)
        self.regs.write_word(R.DSP_BASE + R.DSP_SYNC, sync)

    # -- generators: one control word shared by both, amplitude and offset in one word
    def _asg_configure(self, module, values: dict[str, Any]) -> None:
        ch = _asg(module)
        current = self._asg_state(module, table=False)
        want = {**current, **values}
        if values.get("output") == "off":
            self.set_output(module, "off")
        # Held in reset with the output zeroed while it changes (pyrpl's setup order).
        field = (self.regs.read_word(ch.control) >> ch.bit) & 0xFFFF
        self._asg_control(ch, field | R.ASG_ZERO | R.ASG_RESET)
        if "waveform" in values:
            self.regs.write(ch.table, self._tables[values["waveform"]])
        self.regs.write_word(ch.counter_wrap, R.ASG_DEFAULT_WRAP)
        self.regs.write_word(ch.amplitude_offset, R.asg_amplitude_offset(want["amplitude"], want["offset"]))
        if "frequency" in values:
            self.regs.write_word(ch.counter_step, R.hz_to_step(values["frequency"]))
        field = (field & ~(R.ASG_TRIGGER_MASK | R.ASG_RESET | R.ASG_ZERO | R.ASG_ONCE)) | R.ASG_WRAP
        # configure() means "run like this": it starts at once unless trigger or on say otherwise
        field |= TRIGGERS[values.get("trigger", "immediately")] | (0 if values.get("on", True) else R.ASG_ZERO)
        self._asg_control(ch, field)
        if "output" in values and values["output"] != "off":
            self.set_output(module, values["output"])

    def _asg_control(self, ch: R.AsgChannel, field: int) -> None:
        word = self.regs.read_word(ch.control)
        self.regs.write_word(ch.control, (word & ~(0xFFFF << ch.bit)) | (field << ch.bit))

    def _asg_state(self, module, table: bool = True) -> dict[str, Any]:
        ch = _asg(module)
        field = (self.regs.read_word(ch.control) >> ch.bit) & 0xFFFF
        word = self.regs.read_word(ch.amplitude_offset)
        state = {"frequency": R.step_to_hz(self.regs.read_word(ch.counter_step)),
                 "amplitude": R.asg_amplitude(word), "offset": R.asg_offset(word),
                 "output": self.get_output(module),
                 "trigger": {v: k for k, v in TRIGGERS.items()}.get(field & R.ASG_TRIGGER_MASK, "unknown"),
                 "on": not field & R.ASG_ZERO}
        if table:
            words = self.regs.read(ch.table, R.BUFFER_SAMPLES) & 0x3FFF
            state = {"waveform": next((n for n, t in self._tables.items() if np.array_equal(t, words)),
                                      "arbitrary"), **state}
        return state


def _asg(module) -> R.AsgChannel:
    return R.ASG0 if module.name == "asg0" else R.ASG1

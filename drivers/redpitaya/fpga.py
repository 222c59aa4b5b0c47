"""The FPGA fast path of a Red Pitaya: pyrpl's PID, IQ and generator modules, by name.

    fpga = Fpga(MonitorClient("rp-f0a1b2.local", 2222))   # labrig's own register access
    fpga.pid0.configure(input="in2", output="out1", setpoint=0.2, p=-0.3, i=-20)
    fpga.pid0.state()     # {'input': 'in2', 'output': 'out1', 'setpoint': 0.2, 'p': -0.3, ...}
    fpga.pid0.reset()     # integrator back to 0 V
    Fpga(client, backend="pyrpl")   # the same, through pyrpl's own modules (see fpga_pyrpl.py)

Modules (pyrpl's FPGA image): pid0..pid2 PI controllers, iq0..iq2 IQ demodulators,
asg0/asg1 signal generators. configure() checks every name and range before
anything is written, then returns state(), read back from the board.

Signs follow the hardware: a PID's error is input - setpoint (red_pitaya_pid_block.v),
so a plant whose input rises with the output (more RF drive, more forward power) is
regulated with negative p and i. The image has no derivative stage (DERIVATIVE=0).
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, RangeError
from . import registers as R
from .fpga_registers import (AC_MINBW, IQ_GAIN_NORM, IQ_MINBW, IQ_STAGES, TRIGGERS, WAVEFORMS,
                             RegisterBackend)

MODULES = {"pid0": "pid", "pid1": "pid", "pid2": "pid", "iq0": "iq", "iq1": "iq", "iq2": "iq",
           "asg0": "asg", "asg1": "asg"}
# what a PID or IQ can listen to, the most used first
INPUTS = ("in1", "in2", "out1", "out2", "pid0", "pid1", "pid2", "iq0", "iq1", "iq2", "iq2_2", "asg0", "asg1",
          "trig", "iir", "off")
OUTPUTS = tuple(R.OUTPUT_DIRECTS)  # where a module's own output goes: off, out1, out2, both
LSB = 1 / R.FULL_SCALE_COUNTS


@dataclass(frozen=True)
class Param:
    """One setting of a module: a number in [lo, hi], a name out of `choices`, or a flag."""

    name: str
    doc: str
    lo: float = -math.inf
    hi: float = math.inf
    choices: tuple[str, ...] = ()
    kind: str = "number"  # number | choice | flag | bandwidths

    def check(self, module: str, value: Any) -> Any:
        what = f"{module}.{self.name}"
        if self.kind == "choice":
            if value not in self.choices:
                raise ConfigError(f"{what} = {value!r}; allowed: {', '.join(self.choices)}")
            return value
        if self.kind == "flag":
            if not isinstance(value, (bool, int)) or value not in (0, 1):
                raise ConfigError(f"{what} = {value!r}; allowed: True or False")
            return bool(value)
        if self.kind == "bandwidths":
            values = list(value) if isinstance(value, (list, tuple)) else [value]
            stages = IQ_STAGES[module]
            if not 1 <= len(values) <= stages:
                raise ConfigError(f"{what}: {len(values)} bandwidths; {module} has {stages} filter stages")
            return [self._number(what, v) for v in values]
        return self._number(what, value)

    def _number(self, what: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RangeError(f"{what} = {value!r}: a finite number is required")
        lo, hi = self.lo, self.hi
        bad = not lo <= abs(value) <= hi if self.kind == "bandwidths" and value != 0 else not lo <= value <= hi
        if bad:
            span = f"0 or +-[{lo:g}, {hi:g}]" if self.kind == "bandwidths" else f"[{lo:g}, {hi:g}]"
            raise RangeError(f"{what} = {value:g} is outside {span}{(' ' + self.unit) if self.unit else ''}")
        return float(value)

    @property
    def unit(self) -> str:
        return self.doc.rsplit("[", 1)[1].rstrip("]") if self.doc.endswith("]") else ""


_I_MAX = (2 ** (R.PID_GAINBITS - 1) - 1) / (2 ** R.PID_ISR * 2 * math.pi / R.CLOCK_HZ)
_BW = R.filter_bandwidths(IQ_MINBW)
_AC = R.filter_bandwidths(AC_MINBW)
PARAMS: dict[str, tuple[Param, ...]] = {
    "pid": (
        Param("input", "signal the PID regulates", choices=INPUTS, kind="choice"),
        Param("output", "DAC the PID output is added to", choices=OUTPUTS, kind="choice"),
        Param("setpoint", "target of the input [V]", -1.0, 1 - LSB),
        Param("p", "proportional gain (error = input - setpoint)", -2 ** 11, 2 ** 11 - 2 ** -R.PID_PSR),
        Param("i", "integral unity-gain frequency [Hz]", -_I_MAX, _I_MAX),
        Param("min_voltage", "lower output limit [V]", -1.0, 1 - LSB),
        Param("max_voltage", "upper output limit [V]", -1.0, 1 - LSB),
        Param("ival", "integrator value [V]", -4.0, 4 - LSB),
    ),
    "iq": (
        Param("input", "signal to demodulate", choices=INPUTS, kind="choice"),
        Param("output", "DAC the IQ output is added to", choices=OUTPUTS, kind="choice"),
        Param("frequency", "demodulation frequency [Hz]", 0.0, R.CLOCK_HZ / 2),
        Param("bandwidth", "quadrature low-pass bandwidths, one per stage; < 0: high-pass [Hz]",
              _BW[0], _BW[-1], kind="bandwidths"),
        Param("acbandwidth", "input high-pass corner, 0 = DC coupled [Hz]", 0.0, _AC[-1]),
        Param("phase", "demodulation phase [deg]"),
        Param("gain", "bandpass gain", -2 ** (R.IQ_GAINBITS - 1) / IQ_GAIN_NORM,
              (2 ** (R.IQ_GAINBITS - 1) - 1) / IQ_GAIN_NORM),
        Param("amplitude", "modulation amplitude on the output [V]", -1.0, 1 - 2 ** -(R.IQ_GAINBITS - 1)),
        Param("quadrature_factor", "gain of the demodulated quadrature",
              -2 ** (R.IQ_GAINBITS - 1), 2 ** (R.IQ_GAINBITS - 1) - 1),
        Param("output_signal", "what the IQ sends on", choices=tuple(R.IQ_OUTPUT_SIGNALS), kind="choice"),
        Param("on", "running", kind="flag"),
    ),
    "asg": (
        Param("waveform", "table shape", choices=WAVEFORMS, kind="choice"),
        Param("frequency", "repetition frequency [Hz]", 0.0, R.CLOCK_HZ / 2),
        Param("amplitude", "peak amplitude [V]", 0.0, 1.0),
        Param("offset", "DC offset [V]", -1.0, 1 - LSB),
        Param("output", "DAC the generator drives", choices=OUTPUTS, kind="choice"),
        Param("trigger", "when it starts", choices=tuple(TRIGGERS), kind="choice"),
        Param("on", "output enabled", kind="flag"),
    ),
}
NOT_IN_IMAGE = {"d": "this FPGA image has no derivative stage (pyrpl builds its PID with DERIVATIVE=0)"}


class Module:
    """One FPGA module: configure(**settings), state(), reset()."""

    def __init__(self, fpga: "Fpga", name: str):
        self.fpga = fpga
        self.name = name
        self.kind = MODULES[name]
        self.params = {p.name: p for p in PARAMS[self.kind]}

    def validate(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Every name and range checked; nothing is written."""
        values = {}
        for key, value in settings.items():
            if key not in self.params:
                raise ConfigError(f"{self.name} has no setting {key!r}"
                                  + (f": {NOT_IN_IMAGE[key]}" if key in NOT_IN_IMAGE else "")
                                  + f"; allowed: {', '.join(self.params)}" + _close(key, self.params))
            values[key] = self.params[key].check(self.name, value)
        return values

    def configure(self, **settings) -> dict[str, Any]:
        values = self.validate(settings)
        if self.kind == "pid" and ("min_voltage" in values or "max_voltage" in values):
            limits = {**self.state(), **values}
            if limits["min_voltage"] > limits["max_voltage"]:
                raise RangeError(f"{self.name}: min_voltage {limits['min_voltage']:g} V is above "
                                 f"max_voltage {limits['max_voltage']:g} V")
        if values:
            self.fpga.backend.configure(self, values)
        return self.state()

    def state(self) -> dict[str, Any]:
        return self.fpga.backend.state(self)

    def reset(self) -> None:
        """pid: integrator to 0 V; iq: oscillator and filters restarted; asg: waveform restarted."""
        self.fpga.backend.reset(self)

    def __repr__(self):
        return f"<{self.name} ({self.kind}): configure({', '.join(self.params)}), state(), reset()>"


class Fpga:
    """The modules of one board's FPGA, over a monitor-protocol register client."""

    def __init__(self, registers, *, backend: str = "registers", name: str = ""):
        self.registers = registers
        self.name = name or getattr(registers, "name", "fpga")
        # routed() and release() always use labrig's registers: bounded I/O for a safe state
        self._own = RegisterBackend(registers)
        if backend == "registers":
            self.backend = self._own
        elif backend == "pyrpl":
            from .fpga_pyrpl import PyrplBackend  # heavy (Qt): only when asked for
            self.backend = PyrplBackend(registers.host, registers.port, name=self.name)
        else:
            raise ConfigError(f"{self.name}: FPGA backend {backend!r}; allowed: registers, pyrpl")
        for module in MODULES:
            setattr(self, module, Module(self, module))

    @property
    def modules(self) -> list[str]:
        return list(MODULES)

    def module(self, name: str) -> Module:
        if name not in MODULES:
            raise ConfigError(f"{self.name}: no FPGA module {name!r}; allowed: {', '.join(MODULES)}"
                              + _close(str(name), MODULES))
        return getattr(self, name)

    def routed(self) -> dict[str, str]:
        """Which modules drive a DAC now: {module: out1|out2|both}."""
        outputs = {name: self._own.get_output(self.module(name)) for name in MODULES}
        return {name: out for name, out in outputs.items() if out != "off"}

    def release(self, output: str = "both") -> list[str]:
        """Disconnect every module from `output` (out1, out2 or both): a channel write, a safe
        state or a trip takes the DAC back from the fast path. Returns the modules released."""
        drop = {"out1": 1, "out2": 2, "both": 3}[output]
        released = []
        for name, out in self.routed().items():
            keep = R.OUTPUT_DIRECTS[out] & ~drop
            if keep != R.OUTPUT_DIRECTS[out]:
                self._own.set_output(self.module(name), {v: k for k, v in R.OUTPUT_DIRECTS.items()}[keep])
                released.append(name)
        return released

    def close(self) -> None:
        self.backend.close()

    def __repr__(self):
        return f"<Fpga {self.name}: {', '.join(MODULES)}>"


def _close(word: str, names) -> str:
    close = difflib.get_close_matches(word, list(names), n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""

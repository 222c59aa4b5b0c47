"""The three PID blocks of pyrpl's FPGA image, executed on the simulated world.

On the board each PID runs every 8 ns (red_pitaya_pid_block.v):

    error  = clip(input - setpoint, 14 bits)          # +-1 V
    P      = p * error                                 # 0 while paused (pause bit 1)
    I     += 2 pi f_i * error * 8 ns, clip +-4 V       # held while paused (the Verilog
                                                       # pauses the integrator with pause_p)
    output = clip(clip(P + I, +-1 V), min_voltage, max_voltage)

Python cannot tick at 125 MHz. Here a thread ticks every TICK (1 ms): the input is
held over the tick (a zero-order hold) and the per-cycle sums over the elapsed
cycles are integrated exactly: I gains 2 pi f_i * error * dt, P acts at once. That
is the continuous-time PI the FPGA approximates, sampled at ~1 kHz instead of
125 MHz, with the world's own refresh (~5 ms) as extra delay. So loops slower than
~20 Hz unity gain behave as on the board; faster ones that the FPGA would hold
oscillate here. A late tick integrates at most MAX_DT, so a starved simulator runs
its loops slowly rather than unstably. Not executed: input filters, differential
mode, the IQ and IIR modules (their outputs read 0 V as DSP inputs).
"""
from __future__ import annotations

import math

from labrig.drivers.redpitaya import registers as R

TICK = 0.001  # s between executions while any PID is active
IDLE = 0.02  # s between checks while none is
MAX_DT = 0.005  # s integrated per tick at most
V_MAX = 1 - 1 / R.FULL_SCALE_COUNTS  # the 14-bit positive full scale
I_MAX = 4 - 1 / R.FULL_SCALE_COUNTS  # the integrator keeps 16 bits: +-4 V


class PidBank:
    """pid0..pid2 over the SimulatedFPGA's registers; the FPGA's lock is held by the caller."""

    def __init__(self, regs: dict[int, int]):
        self.regs = regs
        self.integrator = [0.0, 0.0, 0.0]
        self.error = [0.0, 0.0, 0.0]  # of the last tick: an ival write recomputes the output with it
        self.output = [0.0, 0.0, 0.0]

    def _reg(self, n: int, offset: int, default: int = 0) -> int:
        return self.regs.get(R.pid(n) + offset, default)

    def active(self) -> bool:
        """Does any PID move, or reach a DAC? Otherwise nothing needs a tick."""
        return any(self._reg(n, R.DSP_OUTPUT_DIRECT) or self._reg(n, R.PID_P) or self._reg(n, R.PID_I)
                   for n in range(3))

    def routed(self, dac: int) -> float:
        """What the PIDs add to out1 (dac 0) or out2 (dac 1), volts."""
        return sum(self.output[n] for n in range(3) if self._reg(n, R.DSP_OUTPUT_DIRECT) & (1 << dac))

    # -- the integrator register, as pyrpl reads and writes it
    def write_ival(self, n: int, word: int) -> None:
        self.integrator[n] = R.to_signed(word, 16) / R.FULL_SCALE_COUNTS
        self._update_output(n, self.error[n])

    def read_ival(self, n: int) -> int:
        return R.from_signed(round(self.integrator[n] * R.FULL_SCALE_COUNTS), 16)

    # -- execution
    def step(self, dt: float, signal, sync: int) -> None:
        """Advance every PID by dt seconds; signal(code) gives a DSP bus signal in volts."""
        inputs = [signal(self._reg(n, R.DSP_INPUT_SELECT, R.DSP_MODULES["in1"])) for n in range(3)]
        for n in range(3):
            error = self._error(n, inputs[n])
            paused = (self._reg(n, R.PID_PAUSE, 0x7) & 0x2) and not (sync >> n) & 1
            if not paused:
                ki = 2 * math.pi * R.pid_i_hz(self._reg(n, R.PID_I))
                self.integrator[n] = min(max(self.integrator[n] + ki * error * dt, -4.0), I_MAX)
            self._update_output(n, error, paused)

    def _error(self, n: int, value: float) -> float:
        self.error[n] = min(max(value - R.word_to_volts(self._reg(n, R.PID_SETPOINT)), -1.0), V_MAX)
        return self.error[n]

    def _update_output(self, n: int, error: float, paused: bool = False) -> None:
        proportional = 0.0 if paused else R.pid_p_gain(self._reg(n, R.PID_P)) * error
        total = min(max(proportional + self.integrator[n], -1.0), V_MAX)
        lo = R.word_to_volts(self._reg(n, R.PID_MIN_VOLTAGE, 0x2000))
        hi = R.word_to_volts(self._reg(n, R.PID_MAX_VOLTAGE, 0x1FFF))
        # the Verilog compares with the upper limit first
        out = hi if total >= hi else lo if total <= lo else total
        self.output[n] = round(out * R.FULL_SCALE_COUNTS) / R.FULL_SCALE_COUNTS  # a 14-bit DAC code

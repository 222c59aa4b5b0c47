"""The register map of the FPGA image that pyrpl loads on a Red Pitaya.

Addresses are absolute bus addresses as the monitor server (and /dev/mem) sees
them; every register is one little-endian 32-bit word. Values are fixed point:
the helpers at the bottom convert them to volts, hertz and gains the way
pyrpl's register descriptors do, so labrig and pyrpl agree on every bit.

    from labrig.drivers.redpitaya import registers as R
    R.ASG0.amplitude_offset              # 0x40200004
    R.pid(0) + R.PID_SETPOINT            # 0x40300104
    R.volts_to_word(0.25)                # 2048 (14-bit two's complement)

Learned from pyrpl's Verilog (fpga/rtl/red_pitaya_{hk,scope,asg,dsp,pid_block,
iq_block,iir_block,trigger_block,ams}.v) and its hardware_modules/*.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

CLOCK_HZ = 125e6  # FPGA clock: every rate below is a fraction of it
ADC_BITS = 14  # fast ADCs and DACs are 14-bit two's complement, +-1 V full scale
FULL_SCALE_COUNTS = 2 ** (ADC_BITS - 1)  # 8192 counts = 1 V
BUFFER_SAMPLES = 2 ** 14  # scope and ASG tables hold 16384 samples

# -- module base addresses (the bus decodes bits 22:20) -----------------------
HK_BASE = 0x40000000  # housekeeping: ID, DNA, LEDs, expansion-connector DIO
SCOPE_BASE = 0x40100000  # two-channel oscilloscope
ASG_BASE = 0x40200000  # two arbitrary signal generators
DSP_BASE = 0x40300000  # PIDs, IQs, IIR, trigger, signal routing
AMS_BASE = 0x40400000  # slow analog outputs (PWM DACs)
FPGA_SPAN = 0x00800000  # the whole FPGA window the monitor server maps: 0x40000000..0x407FFFFF

# -- housekeeping ---------------------------------------------------------------
HK_ID = 0x00  # read-only: 0 prototype, 1 release
HK_DNA_LO = 0x04  # read-only: 57-bit device DNA
HK_DNA_HI = 0x08
HK_DIGITAL_LOOP = 0x0C
HK_EXP_P_DIR = 0x10  # expansion connector DIO<i>_P direction, bit i = 1: output
HK_EXP_N_DIR = 0x14
HK_EXP_P_OUT = 0x18  # levels driven on output pins
HK_EXP_N_OUT = 0x1C
HK_EXP_P_IN = 0x20  # read-only: levels seen on the pins
HK_EXP_N_IN = 0x24
HK_LED = 0x30  # 8 LEDs, bit i = LED i
HK_DIO_PINS = 8  # DIO0..DIO7 on each of the P and N rows

# -- scope -----------------------------------------------------------------------
SCOPE_CONTROL = 0x00  # write bit0 arm, bit1 reset, bit3 keep; read bit0 armed, bit2 delay running
SCOPE_ARM = 1 << 0
SCOPE_RESET = 1 << 1
SCOPE_DELAY_RUNNING = 1 << 2
SCOPE_KEEP = 1 << 3
SCOPE_TRIGGER_SOURCE = 0x04  # 4 bits; writing 1 is the software trigger; back to 0 once triggered
SCOPE_THRESHOLD = 0x08  # 14-bit signed, volts * 2**13
SCOPE_TRIGGER_DELAY = 0x10  # samples written after the trigger
SCOPE_DECIMATION = 0x14  # 17 bits, 1..65536
SCOPE_WP_CURRENT = 0x18  # read-only write pointer
SCOPE_WP_TRIGGER = 0x1C  # read-only write pointer at the trigger
SCOPE_HYSTERESIS = 0x20
SCOPE_AVERAGE = 0x28
SCOPE_WE_COUNT = 0x2C  # read-only: samples since arming
SCOPE_DEBOUNCE = 0x90  # 20 bits, cycles
SCOPE_ADC1 = 0x154  # read-only: present in1 / in2 sample
SCOPE_ADC2 = 0x158
SCOPE_TIMESTAMP = 0x15C  # read-only 64-bit cycle counter (low word first)
SCOPE_TRIGGER_TIMESTAMP = 0x164  # read-only 64-bit counter value at the last trigger
SCOPE_PRETRIG_OK = 0x16C  # read-only: enough samples for the pre-trigger part
SCOPE_CH1_DATA = 0x10000  # 16384 words, 14-bit signed samples
SCOPE_CH2_DATA = 0x20000
SCOPE_TRIGGER_SOURCES = {
    "off": 0, "immediately": 1, "ch1_positive_edge": 2, "ch1_negative_edge": 3,
    "ch2_positive_edge": 4, "ch2_negative_edge": 5, "ext_positive_edge": 6,
    "ext_negative_edge": 7, "asg0": 8, "asg1": 9, "dsp": 10,
}


# -- signal generators -----------------------------------------------------------
@dataclass(frozen=True)
class AsgChannel:
    """Where one ASG channel's registers are: both share the control word at ASG_BASE."""

    index: int
    bit: int  # this channel's field offset in the control word (0 or 16)
    value: int  # offset of this channel's value registers (0x00 or 0x20)
    data: int  # offset of its waveform table (0x10000 or 0x20000)

    @property
    def control(self) -> int:
        return ASG_BASE

    @property
    def amplitude_offset(self) -> int:  # bits 13:0 amplitude (unsigned), 29:16 offset (signed)
        return ASG_BASE + 0x04 + self.value

    @property
    def counter_wrap(self) -> int:  # phase counter wraps here (2**30 - 1 for the full table)
        return ASG_BASE + 0x08 + self.value

    @property
    def start_offset(self) -> int:
        return ASG_BASE + 0x0C + self.value

    @property
    def counter_step(self) -> int:  # phase step per clock: frequency
        return ASG_BASE + 0x10 + self.value

    @property
    def cycles_per_burst(self) -> int:
        return ASG_BASE + 0x18 + self.value

    @property
    def bursts(self) -> int:
        return ASG_BASE + 0x1C + self.value

    @property
    def burst_delay(self) -> int:
        return ASG_BASE + 0x20 + self.value

    @property
    def table(self) -> int:
        return ASG_BASE + self.data

    @property
    def output_select(self) -> int:  # where pyrpl routes this generator: off/out1/out2/both
        return dsp(8 + self.index) + DSP_OUTPUT_DIRECT


ASG0 = AsgChannel(0, bit=0, value=0x00, data=0x10000)
ASG1 = AsgChannel(1, bit=16, value=0x20, data=0x20000)
ASG_TRIGGER_MASK = 0x7  # bits 2:0 of a channel's field: 0 off, 1 immediately, 2/3 ext edges, ...
ASG_WRAP = 1 << 4  # wrap the phase pointer instead of restarting the table
ASG_ONCE = 1 << 5  # stop after one period
ASG_RESET = 1 << 6  # hold the state machine in reset
ASG_ZERO = 1 << 7  # output forced to zero: pyrpl's `on` is this bit inverted
ASG_RANDOM = 1 << 12  # pseudo-random phase (noise)
ASG_COUNTER_BITS = 30  # 14 table bits + 16 fractional bits
ASG_DEFAULT_WRAP = 2 ** 30 - 1


# -- DSP modules -------------------------------------------------------------------
# Each DSP module has a 0x10000 slot at DSP_BASE + number * 0x10000; the number is
# also the code other modules use to select it as their input.
DSP_MODULES = {
    "pid0": 0, "pid1": 1, "pid2": 2, "trig": 3, "iir": 4, "iq0": 5, "iq1": 6, "iq2": 7,
    "asg0": 8, "asg1": 9, "in1": 10, "in2": 11, "out1": 12, "out2": 13, "iq2_2": 14, "off": 15,
}
DSP_SLOT = 0x10000
DSP_INPUT_SELECT = 0x00  # 4 bits: DSP_MODULES code of the input (scope: slots 8, 9)
DSP_OUTPUT_DIRECT = 0x04  # 2 bits: OUTPUT_DIRECTS
DSP_SATURATED = 0x08  # read-only: bit0 out1, bit1 out2 saturated
DSP_SYNC = 0x0C  # one register shared by all modules: bit n = module n runs
DSP_OUTPUT_SIGNAL = 0x10  # read-only: present output sample (14-bit signed)
OUTPUT_DIRECTS = {"off": 0, "out1": 1, "out2": 2, "both": 3}

# PID (slots 0..2)
PID_IVAL = 0x100  # integrator, 16-bit signed on read, volts * 2**13
PID_SETPOINT = 0x104  # 14-bit signed, volts * 2**13
PID_P = 0x108  # 24-bit signed, gain * 2**PID_PSR
PID_I = 0x10C  # 24-bit signed, unity-gain frequency * 2**PID_ISR * 2*pi/CLOCK_HZ
PID_D = 0x110  # 24-bit (the derivative is not synthesized)
PID_INPUTFILTER = 0x120  # 4 stages of 8 bits: bit7 on, bit6 highpass, bits 4:0 shift
PID_MIN_VOLTAGE = 0x124  # 14-bit signed output limits
PID_MAX_VOLTAGE = 0x128
PID_PAUSE = 0x12C  # bits 2:0 gains frozen while paused, bit3 differential mode
PID_PSR, PID_ISR, PID_DSR, PID_GAINBITS = 12, 32, 10, 24
FILTER_STAGES = 0x220  # read-only constants of every filtered module
FILTER_SHIFTBITS = 0x224
FILTER_MINBW = 0x228

# IQ (slots 5..7): demodulate the input at `frequency`, low-pass both quadratures.
IQ_FLAGS = 0x100  # bit0 on, bit1 pfd on, bits 3:2 modulation at 2f, bits 5:4 demodulation at 2f
IQ_ON = 1 << 0
IQ_PHASE = 0x104  # 32-bit, -degrees/360 * 2**32 (pyrpl inverts it so the phase has the right sign)
IQ_FREQUENCY = 0x108  # 32-bit phase step per clock: hz / CLOCK_HZ * 2**32
IQ_OUTPUT_SIGNAL = 0x10C  # what the IQ sends to the DSP bus: IQ_OUTPUT_SIGNALS
IQ_G1 = 0x110  # 18-bit signed: gain * 2**11 (bandpass path, with IQ_G4)
IQ_AMPLITUDE = 0x114  # 18-bit signed: volts * 2**17, the coherent modulation on output_direct
IQ_QUADRATURE_FACTOR = 0x118  # 18-bit signed integer: gain of the demodulated quadrature
IQ_G4 = 0x11C
IQ_INPUTFILTER = PID_INPUTFILTER  # the AC-coupling high-pass of the input (one stage)
IQ_BANDWIDTH = 0x124  # quadrature low-pass filters (2 stages; iq2: 4)
IQ_BANDWIDTH_STAGES, IQ_BANDWIDTH_SHIFTBITS, IQ_BANDWIDTH_MINBW = 0x230, 0x234, 0x238
IQ_GAINBITS, IQ_GAIN_SHIFT, IQ_PHASEBITS = 18, 11, 32
IQ_OUTPUT_SIGNALS = {"quadrature": 0, "output_direct": 1, "pfd": 2, "off": 3, "quadrature_hf": 4}

# Read-only synthesis constants per module kind, at their offsets in the slot.
CONSTANTS = {
    "pid": {0x200: PID_PSR, 0x204: PID_ISR, 0x208: PID_DSR, 0x20C: PID_GAINBITS,
            FILTER_STAGES: 4, FILTER_SHIFTBITS: 5, FILTER_MINBW: 10},
    "trig": {FILTER_STAGES: 1, FILTER_SHIFTBITS: 5, FILTER_MINBW: 1},
    "iir": {0x200: 32, 0x204: 29, 0x208: 14,
            FILTER_STAGES: 1, FILTER_SHIFTBITS: 3, FILTER_MINBW: 1000},
    "iq": {0x200: 11, 0x204: 17, 0x208: 32, 0x20C: 18, 0x210: 14, 0x214: 24, 0x218: 8,
           FILTER_STAGES: 1, FILTER_SHIFTBITS: 5, FILTER_MINBW: 50,
           0x230: 2, 0x234: 5, 0x238: 10},
    "iq2": {0x200: 11, 0x204: 17, 0x208: 32, 0x20C: 18, 0x210: 14, 0x214: 24, 0x218: 8,
            FILTER_STAGES: 1, FILTER_SHIFTBITS: 5, FILTER_MINBW: 50,
            0x230: 4, 0x234: 5, 0x238: 10},
}
SLOT_KIND = {0: "pid", 1: "pid", 2: "pid", 3: "trig", 4: "iir", 5: "iq", 6: "iq", 7: "iq2"}

# -- slow analog outputs -------------------------------------------------------------
AMS_DAC = (0x20, 0x24, 0x28, 0x2C)  # AOUT0..3: 24-bit PWM words, 0..1.8 V
AMS_FULL_SCALE = 1.8  # V
AMS_PWM_BITS, AMS_CFG_BITS = 8, 24


def hk(offset: int) -> int:
    return HK_BASE + offset


def scope(offset: int) -> int:
    return SCOPE_BASE + offset


def dsp(number: int | str) -> int:
    """Base address of a DSP module's slot, by number or name ('pid0', 'asg0', ...)."""
    if isinstance(number, str):
        try:
            number = DSP_MODULES[number]
        except KeyError:
            raise ValueError(f"unknown DSP module {number!r}; known: {', '.join(DSP_MODULES)}") from None
    if not 0 <= number < 16:
        raise ValueError(f"DSP module number {number} outside 0..15")
    return DSP_BASE + number * DSP_SLOT


def pid(index: int) -> int:
    if index not in (0, 1, 2):
        raise ValueError(f"pid{index}: the image has pid0, pid1 and pid2")
    return dsp(index)


# -- fixed-point conversions -------------------------------------------------------
def to_signed(word: int, bits: int) -> int:
    """The low `bits` of `word` read as two's complement."""
    word &= (1 << bits) - 1
    return word - (1 << bits) if word >> (bits - 1) else word


def from_signed(value: int, bits: int) -> int:
    """A signed integer as a `bits`-wide two's complement word, saturated."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return min(max(int(value), lo), hi) & ((1 << bits) - 1)


def volts_to_word(volts: float, bits: int = ADC_BITS) -> int:
    """+-1 V full scale -> a 14-bit two's complement word (8192 counts per volt), saturated."""
    return from_signed(round(volts * FULL_SCALE_COUNTS), bits)


def word_to_volts(word: int, bits: int = ADC_BITS) -> float:
    return to_signed(word, bits) / FULL_SCALE_COUNTS


def asg_amplitude_offset(amplitude: float, offset: float = 0.0) -> int:
    """The ASG's combined word: unsigned 14-bit amplitude (0..2 V) | signed 14-bit offset << 16."""
    amp = min(max(round(abs(amplitude) * FULL_SCALE_COUNTS), 0), (1 << ADC_BITS) - 1)
    return amp | (volts_to_word(offset) << 16)


def asg_amplitude(word: int) -> float:
    return (word & 0x3FFF) / FULL_SCALE_COUNTS


def asg_offset(word: int) -> float:
    return word_to_volts(word >> 16)


def hz_to_step(hz: float, bits: int = ASG_COUNTER_BITS) -> int:
    """A generator frequency as the phase step added each clock cycle."""
    return int(round(abs(hz) / CLOCK_HZ * 2 ** bits))


def step_to_hz(step: int, bits: int = ASG_COUNTER_BITS) -> float:
    return CLOCK_HZ / 2 ** bits * step


def pid_p_word(gain: float) -> int:
    return from_signed(round(gain * 2 ** PID_PSR), PID_GAINBITS)


def pid_p_gain(word: int) -> float:
    return to_signed(word, PID_GAINBITS) / 2 ** PID_PSR


_I_NORM = 2 ** PID_ISR * 2 * math.pi / CLOCK_HZ  # integral register counts per Hz of unity gain


def pid_i_word(unity_gain_hz: float) -> int:
    return from_signed(round(unity_gain_hz * _I_NORM), PID_GAINBITS)


def pid_i_hz(word: int) -> float:
    return to_signed(word, PID_GAINBITS) / _I_NORM


def pwm_word(volts: float) -> int:
    """A slow-DAC voltage (0..1.8 V) as the AMS PWM word: 8-bit duty << 16 | 16-bit dither."""
    value = max(0.0, volts) / AMS_FULL_SCALE * 2 ** AMS_PWM_BITS
    high = min(math.floor(value), 2 ** AMS_PWM_BITS - 1)
    dither_bits = AMS_CFG_BITS - AMS_PWM_BITS
    low = round((value - high) * dither_bits)
    return (high << dither_bits) | ((1 << low) - 1)


def pwm_volts(word: int) -> float:
    dither_bits = AMS_CFG_BITS - AMS_PWM_BITS
    high = (word >> dither_bits) & (2 ** AMS_PWM_BITS - 1)
    low = bin(word & ((1 << dither_bits) - 1)).count("1") / dither_bits
    return AMS_FULL_SCALE * (high + low) / 2 ** AMS_PWM_BITS


# -- the cascaded first-order filters of PID/IQ inputs and IQ quadratures ------------
# Each stage is one byte of the word: bit7 on, bit6 high-pass, bits 4:0 a shift k giving
# y += alpha * (x - y) per clock with alpha = 2**k / 2**maxshift; maxshift follows from
# the slowest bandwidth the image was built for (minbw). pyrpl multiplies the widest
# settings (alpha >= 2**-9, above ~40 kHz) by empirical corrections; labrig reports
# the plain first-order bandwidth, so the two differ there by up to 1.65x.
def _filter_maxshift(minbw: float) -> int:
    return int(math.floor(math.log2(CLOCK_HZ / minbw))) + 1


def filter_bandwidths(minbw: float) -> list[float]:
    """The low-pass bandwidths (Hz) a stage can have, slowest first (high-passes: negated)."""
    top = _filter_maxshift(minbw)
    return [-math.log(1.0 - 2.0 ** (k - top)) * CLOCK_HZ / (2 * math.pi) for k in range(0, top - 2)]


def filter_word(bandwidths, stages: int, minbw: float) -> int:
    """Bandwidths (Hz; 0 off, > 0 low-pass, < 0 high-pass) -> the filter word, nearest setting
    of filter_bandwidths() (wider settings exist but stop being first-order filters)."""
    top = _filter_maxshift(minbw)
    word = 0
    for i, bw in enumerate(list(bandwidths)[:stages]):
        if bw == 0:
            continue
        alpha = 1.0 - math.exp(-abs(bw) * 2 * math.pi / CLOCK_HZ)
        shift = min(max(round(math.log2(alpha * 2 ** top)), 0), top - 3)
        word |= (0x80 | (0x40 if bw < 0 else 0) | shift) << (8 * i)
    return word


def filter_from_word(word: int, stages: int, minbw: float, shiftbits: int = 5) -> list[float]:
    top = _filter_maxshift(minbw)
    out = []
    for i in range(stages):
        stage = (word >> (8 * i)) & 0xFF
        if not stage & 0x80:
            out.append(0.0)
            continue
        alpha = 2.0 ** ((stage & (2 ** shiftbits - 1)) - top)
        bw = -math.log(1.0 - alpha) * CLOCK_HZ / (2 * math.pi) if alpha < 1 else CLOCK_HZ
        out.append(-bw if stage & 0x40 else bw)
    return out

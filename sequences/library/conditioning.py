"""RF conditioning: repeated short RF pulses at rising power, reflected power recorded throughout.

A new or vented antenna and matching network arc at first; pulses of rising
power clean them up. Each pulse ramps up at the RF's max slew (the rig allows no
faster edge), holds `width_ms`, and ramps down; `rest` seconds separate pulses.
A reflected power above the rig's limit trips the rf_reflected interlock, which
stops the shot and runs the safe exit.
"""
from __future__ import annotations

from typing import Annotated

from ..params import Param
from ..sequence import sequence
from .discharge import TESLA_PER_AMP


@sequence
def conditioning(
    tl,
    start_power: Annotated[float, Param("W", (0, 1200), "power of the first pulse")] = 100.0,
    stop_power: Annotated[float, Param("W", (0, 1200), "power of the last pulse")] = 600.0,
    pulses: Annotated[int, Param(range=(1, 200), doc="number of pulses")] = 6,
    width_ms: Annotated[float, Param("ms", (1, 10000), "flat top of each pulse")] = 100.0,
    rest: Annotated[float, Param("s", (0, 60), "pause between pulses")] = 0.5,
    gas_sccm: Annotated[float, Param("sccm", (0, 40), "gas flow during conditioning")] = 10.0,
    b_field: Annotated[float, Param("T", (0, 0.12), "magnetic field during conditioning")] = 0.04,
    rate: Annotated[float, Param("Hz", (1, 10000), "acquisition rate of forward and reflected power")] = 200.0,
):
    """`pulses` RF pulses from `start_power` to `stop_power`, `width_ms` each, `rest` s apart."""
    tl.set("rf_enable", 1)
    tl.set("coil_enable", 1)
    with tl.parallel():
        tl.ramp("gas_flow", gas_sccm)
        tl.ramp("coil_current_set", b_field / TESLA_PER_AMP)
    tl.wait_until("rf_permit == 1", timeout=2.0, expect=0.1)
    with tl.parallel(name="pulses"):
        tl.acquire(("rf_forward", "rf_reflected"), rate=rate)
        with tl.serial():
            for i in range(pulses):
                power = start_power + (stop_power - start_power) * i / max(1, pulses - 1)
                tl.pulse("rf_power", power, width=width_ms / 1000, rate="max", name=f"RF pulse {i + 1}: {power:g} W")
                if rest > 0 and i < pulses - 1:
                    tl.hold(rest, "rf_power")
    with tl.parallel():
        tl.ramp("coil_current_set", 0)
        tl.ramp("gas_flow", 0)
    tl.set("coil_enable", 0)
    tl.set("rf_enable", 0)

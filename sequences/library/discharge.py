"""One helicon discharge: permit, gas, field, RF, a gas puff on the flat top, ramp-down.

The order is the one that lights the helicon wave mode, as the demo does it
(supervisor/demo/): the RF permit is asked of the PLC first, then gas fills the
vessel, the coil field comes up, and only then the RF power ramps through the
capacitive and inductive modes into the wave mode; with RF before the field the
discharge stays in the inductive mode (mode hysteresis: the order of ramps
matters). The Langmuir probe (ion saturation) and the interferometer are
recorded from the start of the RF ramp to the end of its ramp-down.
"""
from __future__ import annotations

from typing import Annotated

from ..params import Param
from ..sequence import sequence

TESLA_PER_AMP = 2e-4  # the ISHTAR coil: b_field = 2e-4 T/A x coil current (rig.toml, devices.coil)
DIAGNOSTICS = ("langmuir_I", "interferometer_phase")


@sequence
def discharge(
    tl,
    power: Annotated[float, Param("W", (0, 1200), "RF power on the flat top")] = 735.0,
    b_field: Annotated[float, Param("T", (0, 0.12), "magnetic field on axis, 2e-4 T per coil ampere")] = 0.08,
    puff_ms: Annotated[float, Param("ms", (0, 1000), "length of the gas puff on the flat top")] = 50.0,
    puff_sccm: Annotated[float, Param("sccm", (0, 20), "extra gas flow during the puff")] = 5.0,
    fill_sccm: Annotated[float, Param("sccm", (0, 40), "gas flow that fills the vessel before breakdown")] = 20.0,
    fill_pressure: Annotated[float, Param("Pa", (0.01, 4), "pressure to reach before the field and RF come up")] = 0.3,
    flat_top: Annotated[float, Param("s", (0.05, 30), "how long RF holds at `power`")] = 2.0,
    probe_bias: Annotated[float, Param("V", (-100, 50), "Langmuir probe bias: -80 V draws ion saturation")] = -80.0,
    rate: Annotated[float, Param("Hz", (1, 10000), "acquisition rate of the probe and the interferometer")] = 1000.0,
):
    """A helicon discharge at `power` and `b_field`, with a gas puff of `puff_ms` on the flat top."""
    coil_a = b_field / TESLA_PER_AMP
    tl.set("rf_enable", 1)  # the PLC grants the RF permit only with vacuum and the door closed
    tl.set("coil_enable", 1)
    tl.ramp("probe_bias", probe_bias)
    tl.ramp("gas_flow", fill_sccm)
    tl.wait_until(f"pressure >= {fill_pressure:g}", timeout=5.0, expect=1.0)
    tl.ramp("coil_current_set", coil_a)
    # the coil lags its setpoint (L/R); RF goes on once the field is there and the permit granted
    tl.wait_until(f"coil_current >= {0.95 * coil_a:g} and rf_permit == 1", timeout=3.0, expect=0.6)
    with tl.parallel(name="RF"):
        tl.acquire(DIAGNOSTICS, rate=rate)
        with tl.serial():
            tl.ramp("rf_power", power)
            with tl.parallel(name="flat top"):
                tl.hold(flat_top, "rf_power", "coil_current_set")
                if puff_ms > 0 and puff_sccm > 0:
                    tl.pulse("gas_flow", fill_sccm + puff_sccm, width=puff_ms / 1000, rate="max",
                             delay=flat_top / 3, name="gas puff")
            tl.ramp("rf_power", 0)
    tl.ramp("coil_current_set", 0)
    with tl.parallel():
        tl.ramp("gas_flow", 0)
        tl.ramp("probe_bias", 0)
    tl.set("coil_enable", 0)
    tl.set("rf_enable", 0)
    with tl.safe_exit():
        tl.ramp("rf_power", 0)  # RF first: the plasma goes out before the field and gas go
        with tl.parallel():
            tl.ramp("coil_current_set", 0)
            tl.ramp("gas_flow", 0)
            tl.ramp("probe_bias", 0)
        tl.set("coil_enable", 0)
        tl.set("rf_enable", 0)

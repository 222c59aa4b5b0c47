"""Demo stage 1: the simulated testbed, driven through the production drivers alone.

Opens every node's driver on its simulator, then lights the plasma the way an
operator would: gas, then the magnetic field, then RF power, printing the
readings as they come; shows the plasma going out when the gas is shut, and
drives everything safe.
"""
from __future__ import annotations

import contextlib
import time

from ..devices import make_device
from ..rig import Rig

# Where the simulated helicon source runs in wave mode (see simulators/plasma.py).
GAS_SCCM = 20.0
COIL_A = 400.0
RF_W = 735.0
PROBE_BIAS_V = -80.0  # ion saturation

COLUMNS = [("t s", 5, "{:5.1f}"), ("step", 16, "{:<16}"), ("gas sccm", 8, "{:8.1f}"), ("p Pa", 7, "{:7.3f}"),
           ("coil A", 7, "{:7.1f}"), ("B T", 6, "{:6.3f}"), ("RF fwd W", 8, "{:8.0f}"), ("refl W", 6, "{:6.0f}"),
           ("probe mA", 8, "{:8.2f}"), ("n_e m^-3", 9, "{:9.2e}"), ("phase rad", 9, "{:9.2f}"), ("plasma", 8, "{:<8}")]


class Bench:
    """The five drivers of the rig, opened on their simulators, with the rig's devices on top."""

    def __init__(self, rig: Rig, record: dict):
        self.rig = rig
        self.drivers = {}
        self._where = {}
        for node in rig.nodes:
            self.drivers[node] = rig.open_driver(node, sim=True, sim_state=record)
            for name in rig.signals_of(node):
                self._where[name] = self.drivers[node]
        self.devices = {name: make_device(name, d.class_, d.signals, d.params, self.read, self.write)
                        for name, d in rig.spec.devices.items()}

    def read(self, name: str) -> float:
        return self._where[name].read(name)

    def write(self, name: str, value: float):
        return self._where[name].write(name, value)

    def ramp(self, name: str, target: float, *, step_s: float = 0.05, on_step=None):
        """Move an output to target at its declared max slew, from the host (a node runtime will do this)."""
        sig = self.rig.signal(name)
        start = self.read(name) if sig.direction == "out" else 0.0
        rate = sig.max_slew or float("inf")
        steps = max(1, int(abs(target - start) / rate / step_s + 0.999)) if rate != float("inf") else 1
        for i in range(1, steps + 1):
            self.write(name, start + (target - start) * i / steps)
            if on_step:
                on_step()
            time.sleep(step_s)

    def safe(self):
        results = {}
        for node, drv in self.drivers.items():
            results[node] = drv.safe_state()
        return results

    def close(self):
        for drv in self.drivers.values():
            drv.close()


def reading(bench: Bench) -> dict:
    density = bench.devices["langmuir"].density()
    return {
        "gas": bench.read("gas_flow"), "p": bench.read("pressure"), "coil": bench.read("coil_current"),
        "B": bench.devices["coil"].field(), "fwd": bench.read("rf_forward"), "refl": bench.read("rf_reflected"),
        "probe": bench.read("langmuir_I"), "n": density, "phase": bench.read("interferometer_phase"),
    }


# One ADC count of probe current is ~8e15 m^-3: below a few counts the probe cannot tell.
NO_PLASMA_DENSITY = 5e16  # m^-3
NO_PLASMA_PHASE = 0.05  # rad


def plasma_word(r: dict) -> str:
    if r["n"] > 1e18:
        return "HELICON"
    if r["n"] > 1e17:
        return "bright"
    if r["n"] > NO_PLASMA_DENSITY or r["phase"] > NO_PLASMA_PHASE:
        return "glow"
    return "-"


def run(rig: Rig, record: dict) -> bool:
    """Light the plasma through the drivers; True when it lit, went out with the gas, and all went safe."""
    header = "  ".join(f"{title:>{width}}" if title != "step" else f"{title:<{width}}" for title, width, _ in COLUMNS)
    t0 = time.monotonic()

    def row(step: str, r: dict):
        values = [time.monotonic() - t0, step, r["gas"], r["p"], r["coil"], r["B"], r["fwd"], r["refl"],
                  r["probe"], r["n"], r["phase"], plasma_word(r)]
        print("  ".join(fmt.format(v) for (_, _, fmt), v in zip(COLUMNS, values)), flush=True)

    bench = Bench(rig, record)
    try:
        print(f"opened {len(bench.drivers)} drivers; lighting the plasma: gas, then B field, then RF\n")
        print(header)
        print("-" * len(header))
        last = [0.0]

        def show(step):
            def tick():
                if time.monotonic() - last[0] >= 0.4:
                    last[0] = time.monotonic()
                    row(step, reading(bench))
            return tick

        bench.write("probe_bias", PROBE_BIAS_V)
        bench.write("coil_enable", 1)
        row("all off", reading(bench))
        bench.ramp("gas_flow", GAS_SCCM, on_step=show("gas on"))
        _hold(0.8, show("gas on"))
        bench.ramp("coil_current_set", COIL_A, on_step=show("B field ramp"))
        _hold(1.0, show("B field"))
        bench.devices["rf"].enable()  # ask the PLC for the RF permit: it grants it with vacuum and door closed
        _hold(0.1, show("RF permit"))
        if not bench.devices["rf"].permitted():
            print("the PLC did not grant the RF permit (vacuum? door?)")
            return False
        bench.ramp("rf_power", RF_W, on_step=show("RF ramp"))
        _hold(1.5, show("RF on"))
        on = reading(bench)
        row("PLASMA ON", on)
        bench.ramp("gas_flow", 0.0, on_step=show("gas off"))
        _hold(2.0, show("gas off"))
        off = reading(bench)
        row("gas shut", off)
        results = bench.safe()
        row("safe state", reading(bench))
        print()
        print(f"plasma on : n_e = {on['n']:.2e} m^-3 (Langmuir), interferometer {on['phase']:.2f} rad, "
              f"B = {on['B']:.3f} T, coil {on['coil']:.1f} A (setpoint {COIL_A:.0f} A)")
        print(f"gas shut  : n_e = {off['n']:.2e} m^-3, interferometer {off['phase']:.2f} rad")
        failed = {f"{n}.{o}": r.error for n, res in results.items() for o, r in res.items() if not r.ok}
        print(f"safe state: {sum(len(r) for r in results.values())} outputs driven safe"
              + (f"; FAILED: {failed}" if failed else ""))
        plasma_went_out = off["n"] < NO_PLASMA_DENSITY and off["phase"] < NO_PLASMA_PHASE
        return on["n"] > 1e18 and plasma_went_out and not failed
    finally:
        with contextlib.suppress(Exception):
            bench.safe()
        bench.close()


def _hold(seconds: float, tick):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        tick()
        time.sleep(0.05)

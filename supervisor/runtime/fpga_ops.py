"""The `fpga` op of a RedPitaya node's runtime: its FPGA's PID, IQ and generator modules.

    client.call("fpga", module="pid0", action="configure",
                params={"input": "in2", "output": "out1", "setpoint": 0.2, "p": -0.3, "i": -20})
    client.call("fpga", module="pid0", action="state")     # settings read back from the board
    client.call("fpga", module="pid0", action="reset")     # integrator to 0 V; returns the state

It runs on the I/O thread, in order with reads and writes, and is journaled. A module
routed to a DAC acts at 125 MHz, past the envelope that checks every write, so the
envelope is applied when it is routed. To every output signal on that DAC, as to a write:
  * a tripped or failing interlock on it refuses the route, as does a loop in auto
    driving it; a ramp on it stops.
To the outputs that carry a limited signal:
  * one FPGA module at a time may drive such an output (Refused otherwise, naming it);
  * a PID's output limits must lie within the signal's limits, mapped to volts through
    its calibration; limits not given are kept if inside, else set to that window;
  * a generator's peak (amplitude + |offset|) must lie within them;
  * an IQ has no output clamp: it is refused there (route it through a PID instead).
A signal's max_slew cannot be held at 125 MHz: a loop's own gains set its slew.
Writes to the output, a safe state and trips take it back (RedPitayaDriver).
"""
from __future__ import annotations

import math
from typing import Any

from labrig.drivers.errors import ConfigError, RangeError, Refused

ACTIONS = ("configure", "state", "reset")
DACS = {"off": (), "out1": ("out1",), "out2": ("out2",), "both": ("out1", "out2")}


def install(runtime) -> None:
    """Add the op when the node's driver has an FPGA (a RedPitaya); otherwise nothing."""
    if getattr(type(runtime.driver), "fpga", None) is None:
        return
    runtime.io_ops["fpga"] = lambda args, client: fpga_op(runtime, args)
    runtime.audited.add("fpga")


def fpga_op(runtime, args: dict[str, Any]) -> dict[str, Any]:
    module, action, params = args.get("module"), args.get("action", "state"), args.get("params") or {}
    # The journal takes "signal" and "value" from the request's args: say what was done.
    args.setdefault("signal", f"fpga.{module}")
    if action != "state":
        args.setdefault("value", {"action": action, **params} if isinstance(params, dict) else params)
    if action not in ACTIONS:
        raise ConfigError(f"fpga action {action!r}; allowed: {', '.join(ACTIONS)}")
    if not isinstance(params, dict):
        raise ConfigError(f"fpga params must be a mapping of settings, not {type(params).__name__}")
    mod = runtime.driver.fpga.module(module)
    if action == "configure":
        return mod.configure(**guard(runtime, mod, mod.validate(params)))
    if params:
        raise ConfigError(f"fpga {action} takes no params (got {', '.join(params)})")
    if action == "reset":
        mod.reset()
    return mod.state()


def guard(runtime, mod, params: dict[str, Any]) -> dict[str, Any]:
    """The envelope of the outputs `mod` will drive after this configure (see the docstring)."""
    state = mod.state()
    output = params.get("output", state.get("output", "off"))
    taken = [name for name, sig in runtime.envelope.signals.items()
             if sig.direction == "out" and sig.channel.lower() in DACS[output]]
    for name in taken:
        runtime.watch.check_write(name, math.nan, runtime.envelope.signals[name].safe)  # NaN: never the safe value
        runtime.loops.guard(name)
    for dac in DACS[output]:
        window = _window(runtime, dac)
        if window is None:
            continue
        lo, hi, text = window
        where = f"{mod.name} -> {dac}, which carries {text}"
        others = [m for m, out in runtime.driver.fpga.routed().items() if m != mod.name and dac in DACS[out]]
        if others:
            raise Refused(f"{where}: {', '.join(others)} already drives it; one FPGA module at a time "
                          f"may drive a limited output (route the other off first)")
        if mod.kind == "iq":
            raise Refused(f"{where}: an IQ output has no clamp; feed the IQ into a PID and route the PID, "
                          f"whose min_voltage/max_voltage hold the limits")
        if mod.kind == "pid":
            for key, edge in (("min_voltage", lo), ("max_voltage", hi)):
                if key not in params:  # keep what is set if it is inside, else the window's edge
                    params[key] = state[key] if lo <= state[key] <= hi else edge
                elif not lo - 1e-9 <= params[key] <= hi + 1e-9:
                    raise RangeError(f"{where}: {key} = {params[key]:g} V is outside [{lo:.4g}, {hi:.4g}] V")
        if mod.kind == "asg":
            want = {**state, **params}
            peak = want["amplitude"] + abs(want["offset"])
            if peak > hi + 1e-9:
                raise RangeError(f"{where}: amplitude + |offset| = {peak:g} V is above {hi:.4g} V")
    for name in taken:
        runtime.ramps.stop(name)  # the fast path takes the output over, as a write does
    return params


def _window(runtime, dac: str):
    """(lo, hi, description) of the volts allowed on a DAC (the narrowest signal's), or None."""
    driver = runtime.driver
    best = None
    for name, sig in runtime.envelope.signals.items():
        if sig.direction != "out" or sig.channel.lower() != dac or sig.limits is None or name not in driver.channels:
            continue
        cal, raw_range = driver.channels[name].calibration, driver.raw_range(name)
        raws = sorted(cal.to_raw(limit, raw_range) for limit in sig.limits)
        lo, hi = max(raws[0], raw_range[0]), min(raws[1], raw_range[1])
        unit = f" {sig.unit}" if sig.unit else ""
        text = f"{name} (limits [{sig.limits[0]:g}, {sig.limits[1]:g}]{unit} = [{lo:.4g}, {hi:.4g}] V)"
        if best is None or hi - lo < best[1] - best[0]:
            best = (lo, hi, text)
    return best

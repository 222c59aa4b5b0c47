"""A step scan: one output stepped through values, diagnostics acquired at each step."""
from __future__ import annotations

from typing import Annotated

from ..params import Param
from ..sequence import sequence


@sequence
def step_scan(
    tl,
    signal: Annotated[str, Param(doc="the output to step (a rig signal name)")] = "probe_bias",
    start: Annotated[float, Param(doc="first value, in the signal's unit")] = -80.0,
    stop: Annotated[float, Param(doc="last value, in the signal's unit")] = 20.0,
    steps: Annotated[int, Param(range=(1, 500), doc="number of values, start and stop included")] = 11,
    settle: Annotated[float, Param("s", (0, 60), "wait after each move before acquiring")] = 0.1,
    dwell: Annotated[float, Param("s", (0.001, 600), "acquisition window at each value")] = 0.5,
    signals: Annotated[tuple, Param(doc="the signals acquired at each value")] = ("langmuir_I",),
    rate: Annotated[float, Param("Hz", (1, 10000), "acquisition rate")] = 1000.0,
    rest: Annotated[float, Param(doc="where the output goes at the end, in its unit")] = 0.0,
):
    """Step `signal` from `start` to `stop` in `steps` values; at each, settle, then acquire `signals`."""
    values = [start + (stop - start) * i / max(1, steps - 1) for i in range(steps)]
    for i, value in enumerate(values, 1):
        tl.ramp(signal, value, name=f"{signal} step {i}/{steps}")
        if settle > 0:
            tl.hold(settle, signal)
        with tl.parallel(name=f"point {i}"):
            tl.acquire(signals, rate=rate, window=dwell, name=f"acquire at {signal} = {value:g}")
            tl.hold(dwell, signal)
    tl.ramp(signal, rest)

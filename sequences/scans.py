"""A step scan, checked and placed: one node sets an output through a list of values at a fixed
rate, reading signals of its own after each set is acknowledged (timeline.step_scan).

Checked here, before anything runs: the output and every read signal exist and live on one
node (the node runs the scan by itself: no round trip to the supervisor per point); every value
within the output's limits; every move a direct step the runtime allows (max_slew x 50 ms),
and, since the points follow each other at 1/rate, no move faster on average than the max
slew (|step| x rate <= max_slew; a move to the safe value is never refused, as in the runtime).
The node checks all of it again when the table is loaded.

Placed as one table entry (tables.py: a node's `scans`), and, for the interlock proofs, the
plot and the safe exit, as the sets it makes: one per point, at i / rate.
"""
from __future__ import annotations

from labrig.drivers.errors import ConfigError, RangeError

MAX_SCAN_RATE = 10_000.0  # points/s: as the node's MAX_RATE (supervisor/runtime/steps.py)
EPS = 1e-9


def place_scan(c, step, placed) -> None:
    """Fill `placed` (the compiler's Placed) for a step_scan `step`; `c` is the compiler."""
    from .compile import Segment, rig_output, rig_signal, shift
    name = step.signal
    spec = rig_output(c.rig, name, step)
    for read in step.signals:
        where = rig_signal(c.rig, read, step).node
        if where != spec.node:
            raise ConfigError(f"{step}: {read} is on node {where}, {name} on node {spec.node}: a step scan runs on "
                              f"one node, which sets and reads without a round trip per point; read signals of "
                              f"{spec.node}: {', '.join(c.rig.signals_of(spec.node))}")
    rate = step.sample_rate
    if rate > MAX_SCAN_RATE:
        raise RangeError(f"{step}: rate {rate:g} points/s exceeds {MAX_SCAN_RATE:g} points/s, the most a node "
                         "runs a step scan at")
    c.check_free(name, placed)
    previous = c.value_before(step, name)
    segments = []
    for i, value in enumerate(step.points):
        point = _Point(step, i + 1, len(step.points))
        c.check_limits(point, name, value)
        c.check_jump(point, name, previous, value)
        if i and spec.max_slew is not None and value != spec.safe and \
                abs(value - previous) * rate > spec.max_slew * (1 + EPS):
            raise RangeError(f"{point}: it moves {name} by "
                             f"{abs(value - previous):g} {spec.unit} in 1/{rate:g} s, "
                             f"{abs(value - previous) * rate:g} {spec.unit}/s, above its max slew {spec.max_slew:g} "
                             f"{spec.unit}/s: take smaller steps, or a rate of at most "
                             f"{spec.max_slew / abs(value - previous):g} points/s")
        segments.append(Segment(step, "set", name, shift(placed.at, i / rate), previous, value))
        previous = value
    placed.segments = segments
    placed.busy = (name,)
    placed.duration = len(step.points) / rate
    c.level[name] = step.points[-1]


class _Point:
    """Names one point of a scan in a refusal: "step 3 'step_scan gas_flow' (cell:12), point 7 of 100"."""

    def __init__(self, step, number: int, of: int):
        self.step, self.kind = step, step.kind
        self.label = f"{step}, point {number} of {of}"

    def __str__(self) -> str:
        return self.label


def scan_entry(c, placed) -> dict:
    """A node's table entry for a placed step scan (times to the nanosecond, as the table's others)."""
    step = placed.step
    return {"step": step.index, "name": step.name, "signal": step.signal, "from": placed.segments[0].v0,
            "values": list(step.points), "read": list(step.signals), "rate": step.sample_rate,
            "deadline": step.deadline if step.deadline is not None else 1.0 / step.sample_rate,
            "on_late": step.on_late, "duration": round(placed.duration, 9), "t_start": round(c.time(placed.at), 9),
            "at": {g: round(o, 9) for g, o in placed.at.items()}}


def scan_detail(c, placed) -> str:
    step = placed.step
    unit = c.rig.signals[step.signal].unit
    late = "stops the shot" if step.on_late == "fail" else "recorded"
    deadline = step.deadline if step.deadline is not None else 1.0 / step.sample_rate
    return (f"{len(step.points)} points {step.points[0]:g} .. {step.points[-1]:g} {unit} at {step.sample_rate:g}/s, "
            f"reads {', '.join(step.signals)}; deadline {deadline * 1e3:.3g} ms per point ({late} if missed)")

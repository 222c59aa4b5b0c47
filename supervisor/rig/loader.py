"""Load a rig file: TOML -> pydantic -> cross-checks -> Rig.

Every problem is reported with the file, the key path and what is allowed,
never as a traceback: all schema problems at once, then (once the schema holds)
all cross-reference problems at once.
"""
from __future__ import annotations

import difflib
import tomllib
from pathlib import Path

from pydantic import ValidationError

from labrig.drivers.calibration import Calibration
from labrig.drivers.errors import ConfigError
from labrig.drivers.urls import parse_url

from .conditions import compile_condition
from .schema import RigSpec

# which URL schemes each node kind accepts (besides sim:)
SCHEMES_BY_KIND = {
    "arduino": ("serial",),
    "redpitaya": ("tcp",),
    "simatic": ("s7",),
    "rpi": ("pigpio",),
    "visa": ("visa",),
}


class RigError(ConfigError):
    """A rig file is not valid. `problems` lists (key path, message)."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {len(problems)} problem{'s' if len(problems) != 1 else ''}"]
        lines += [f"  {path or '(top level)'}: {msg}" for path, msg in problems]
        super().__init__("\n".join(lines))


def _close(name: str, known) -> str:
    matches = difflib.get_close_matches(name, list(known), n=3)
    if matches:
        return f"; did you mean {', '.join(repr(m) for m in matches)}?"
    return f"; known: {', '.join(sorted(known)) or 'none'}"


def _pydantic_problems(exc: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not part of the rig schema)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif "input" in err and err["type"] not in ("missing",):
            msg = f"{msg} (got {err['input']!r})"
        problems.append((path, msg))
    return problems


def cross_check(spec: RigSpec) -> list[tuple[str, str]]:
    """Checks that span several tables: references, duplicates, ranges."""
    problems: list[tuple[str, str]] = []
    add = lambda path, msg: problems.append((path, msg))  # noqa: E731

    for name, node in spec.nodes.items():
        try:
            url = parse_url(node.connection)
        except ConfigError as exc:
            add(f"nodes.{name}.connection", str(exc))
            continue
        allowed = SCHEMES_BY_KIND[node.kind]
        if url.scheme != "sim" and url.scheme not in allowed:
            add(f"nodes.{name}.connection", f"{node.kind} nodes connect with "
                f"{' or '.join(s + '://' for s in allowed)} or sim: (got {node.connection!r})")

    seen_channels: dict[tuple[str, str], str] = {}
    for name, sig in spec.signals.items():
        base = f"signals.{name}"
        if sig.node not in spec.nodes:
            add(f"{base}.node", f"unknown node {sig.node!r}{_close(sig.node, spec.nodes)}")
        key = (sig.node, sig.channel)
        if key in seen_channels:
            add(f"{base}.channel", f"channel {sig.channel!r} of node {sig.node!r} is already "
                f"used by signal {seen_channels[key]!r}")
        else:
            seen_channels[key] = name
        try:
            Calibration.from_dict(sig.calibration.model_dump())
        except ConfigError as exc:
            add(f"{base}.calibration", str(exc))
        if sig.limits is not None and not sig.limits[0] < sig.limits[1]:
            add(f"{base}.limits", f"limits must be [low, high] with low < high (got {list(sig.limits)})")
        if sig.raw_range is not None and not sig.raw_range[0] < sig.raw_range[1]:
            add(f"{base}.raw_range", f"raw_range must be [low, high] with low < high (got {list(sig.raw_range)})")
        if sig.direction == "in":
            for key_name in ("safe", "max_slew"):
                if getattr(sig, key_name) is not None:
                    add(f"{base}.{key_name}", f"only outputs (direction = \"out\") have {key_name}")
            if sig.arm:
                add(f"{base}.arm", "only outputs (direction = \"out\") are armed before a change")
        elif sig.safe is not None and sig.limits is not None and sig.limits[0] < sig.limits[1] and not (sig.limits[0] <= sig.safe <= sig.limits[1]):
            add(f"{base}.safe", f"safe value {sig.safe:g} is outside limits [{sig.limits[0]:g}, {sig.limits[1]:g}]")

    from labrig.supervisor.devices import DEVICE_CLASSES
    for name, dev in spec.devices.items():
        cls = DEVICE_CLASSES.get(dev.class_)
        if cls is None:
            add(f"devices.{name}.class", f"unknown device class {dev.class_!r}{_close(dev.class_, DEVICE_CLASSES)}")
        else:
            for role in cls.roles:
                if role not in dev.signals:
                    add(f"devices.{name}.signals", f"{dev.class_} needs a signal for the role {role!r}")
        for role, sig_name in dev.signals.items():
            if sig_name not in spec.signals:
                add(f"devices.{name}.signals.{role}", f"unknown signal {sig_name!r}{_close(sig_name, spec.signals)}")

    for name, lock in spec.interlocks.items():
        base = f"interlocks.{name}"
        try:
            cond = compile_condition(lock.require)
        except ConfigError as exc:
            add(f"{base}.require", str(exc))
        else:
            for sig_name in cond.signals:
                if sig_name.endswith(".online"):
                    node = sig_name.rsplit(".", 1)[0]
                    if node not in spec.nodes:
                        add(f"{base}.require", f"{sig_name!r}: unknown node {node!r}{_close(node, spec.nodes)}")
                elif sig_name not in spec.signals:
                    add(f"{base}.require", f"unknown signal {sig_name!r}{_close(sig_name, spec.signals)}")
        if not lock.outputs:
            add(f"{base}.outputs", "an interlock must force at least one output")
        for out in lock.outputs:
            sig = spec.signals.get(out)
            if sig is None:
                add(f"{base}.outputs", f"unknown signal {out!r}{_close(out, spec.signals)}")
            elif sig.direction != "out":
                add(f"{base}.outputs", f"{out!r} is an input; an interlock forces outputs")
            elif sig.safe is None:
                add(f"{base}.outputs", f"{out!r} has no safe value; declare signals.{out}.safe")

    for name, loop in spec.loops.items():
        base = f"loops.{name}"
        if loop.node not in spec.nodes:
            add(f"{base}.node", f"unknown node {loop.node!r}{_close(loop.node, spec.nodes)}")
        for role in ("measure", "actuate"):
            sig_name = getattr(loop, role)
            sig = spec.signals.get(sig_name)
            if sig is None:
                add(f"{base}.{role}", f"unknown signal {sig_name!r}{_close(sig_name, spec.signals)}")
            elif sig.node != loop.node:
                add(f"{base}.{role}", f"{sig_name!r} is on node {sig.node!r}; a loop runs on one node ({loop.node!r})")
            elif role == "actuate" and sig.direction != "out":
                add(f"{base}.actuate", f"{sig_name!r} is an input; a loop actuates an output")
        if loop.output_limits is not None and not loop.output_limits[0] < loop.output_limits[1]:
            add(f"{base}.output_limits", f"must be [low, high] with low < high (got {list(loop.output_limits)})")
        act, meas = spec.signals.get(loop.actuate), spec.signals.get(loop.measure)
        if act is not None and act.direction == "out":
            if act.safe is None:  # where a loop leaves its actuator when its input fails
                add(f"{base}.actuate", f"{loop.actuate!r} has no safe value; declare signals.{loop.actuate}.safe")
            lims = loop.output_limits
            if (lims is not None and act.limits is not None and lims[0] < lims[1]
                    and not act.limits[0] <= lims[0] < lims[1] <= act.limits[1]):
                add(f"{base}.output_limits", f"{list(lims)} is outside the limits of {loop.actuate!r} "
                    f"[{act.limits[0]:g}, {act.limits[1]:g}]")
        for gain in ("kp", "ki", "kd"):
            if getattr(loop, gain) < 0:
                add(f"{base}.{gain}", f"gains are >= 0 (got {getattr(loop, gain):g})")
        if meas is not None and meas.limits is not None and not meas.limits[0] <= loop.setpoint <= meas.limits[1]:
            add(f"{base}.setpoint", f"{loop.setpoint:g} is outside the limits of {loop.measure!r} "
                f"[{meas.limits[0]:g}, {meas.limits[1]:g}]")
    return problems


def parse_rig(text: str, *, source: str = "<rig>") -> RigSpec:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RigError(source, [("", f"not valid TOML: {exc}")]) from None
    try:
        spec = RigSpec.model_validate(data)
    except ValidationError as exc:
        raise RigError(source, _pydantic_problems(exc)) from None
    problems = cross_check(spec)
    if problems:
        raise RigError(source, problems)
    return spec


def load_rig_spec(path: str | Path) -> tuple[RigSpec, str]:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RigError(str(path), [("", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RigError(str(path), [("", f"cannot read: {exc}")]) from None
    return parse_rig(text, source=str(path)), text

"""The rig file schema (TOML, validated with pydantic).

A rig file describes the real machine: nodes (boards and their connections),
signals (what is wired where, with calibration, limits, slew and safe values),
devices (signals grouped under a physics class), interlocks, watchdogs and
control loops. See examples/ishtar/rig.toml for a complete one.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION = 1
NodeKind = Literal["rpi", "arduino", "redpitaya", "simatic", "visa"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class CalibrationSpec(Strict):
    kind: Literal["linear", "poly", "table"] = "linear"
    gain: float = 1.0
    offset: float = 0.0
    coefficients: list[float] = Field(default_factory=list)
    raw: list[float] = Field(default_factory=list)
    physical: list[float] = Field(default_factory=list)
    version: str = ""


class NodeSpec(Strict):
    kind: NodeKind
    connection: str = Field(description="URL: serial://, tcp://, s7://, pigpio://, visa://, or sim:")
    description: str = ""
    timeout: float = Field(1.0, gt=0, le=30, description="I/O timeout of the driver, s")
    options: dict[str, Any] = Field(default_factory=dict, description="driver options")
    heartbeat: float = Field(0.5, gt=0, le=60, description="heartbeat period of the node runtime, s")
    telemetry_rate: float = Field(10.0, gt=0, le=10000, description="default telemetry rate, Hz")
    interlock_period: float = Field(0.01, ge=0.001, le=1, description="how often the runtime checks its "
                                    "own interlocks, s")
    realtime: int | None = Field(None, ge=1, le=99, description="SCHED_FIFO priority of the node's runtime and "
                                 "its simulator (supervisor/realtime.py): step scans and loops keep their "
                                 "timing on a loaded host; needs root or CAP_SYS_NICE, else normal priority")


class SignalSpec(Strict):
    node: str
    channel: str
    direction: Literal["in", "out"] = "in"
    unit: str = ""
    description: str = ""
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    raw_range: tuple[float, float] | None = None
    limits: tuple[float, float] | None = Field(None, description="physical limits [lo, hi]")
    max_slew: float | None = Field(None, gt=0, description="largest rate of change, unit/s (outputs)")
    safe: float | None = Field(None, description="safe value (outputs)")
    rate: float | None = Field(None, gt=0, le=10000, description="telemetry rate, Hz")
    arm: bool = Field(False, description="dangerous output (RF power, coil current): a control panel knob must be "
                      "armed before each change")


class DeviceSpec(Strict):
    class_: str = Field(alias="class")
    signals: dict[str, str]
    params: dict[str, Any] = Field(default_factory=dict)
    description: str = ""


class InterlockSpec(Strict):
    require: str = Field(description="condition over signals that must hold")
    outputs: list[str] = Field(description="outputs driven to their safe value when it does not")
    description: str = ""
    latch: bool = True


class WatchdogSpec(Strict):
    lease: float = Field(2.0, gt=0, le=600, description="supervisor lease timeout, s")
    heartbeat_timeout: float = Field(2.0, gt=0, le=600, description="node heartbeat timeout, s")
    guard_poll: float = Field(0.02, ge=0.005, le=5, description="how often the guard reads cross-node signals, s")


class LoopSpec(Strict):
    node: str
    measure: str
    actuate: str
    setpoint: float = 0.0
    kp: float = 0.0
    ki: float = 0.0
    kd: float = 0.0
    rate: float = Field(100.0, gt=0, le=10000, description="loop rate, Hz")
    output_limits: tuple[float, float] | None = None
    setpoint_rate: float | None = Field(None, gt=0, description="setpoint rate limit, unit/s")
    stale_after: float | None = Field(None, gt=0, le=600, description="a measurement that has not changed at "
                                      "all for this long is a stuck sensor, s (noise keeps a live one moving)")
    enabled: bool = False


class BrokerSpec(Strict):
    url: str = ""
    username: str = ""
    password_env: str = ""
    tls: bool = False


class RigSpec(Strict):
    schema_version: int
    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    description: str = ""
    broker: BrokerSpec = Field(default_factory=BrokerSpec)
    nodes: dict[str, NodeSpec]
    signals: dict[str, SignalSpec]
    devices: dict[str, DeviceSpec] = Field(default_factory=dict)
    interlocks: dict[str, InterlockSpec] = Field(default_factory=dict)
    watchdogs: WatchdogSpec = Field(default_factory=WatchdogSpec)
    loops: dict[str, LoopSpec] = Field(default_factory=dict)

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(f"schema_version {value} is not supported; this labrig reads version {SCHEMA_VERSION}")
        return value

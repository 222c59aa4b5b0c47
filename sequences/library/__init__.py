"""Sequences for the helicon testbed (examples/ishtar/rig.toml): a discharge, a step scan, RF conditioning."""
from .conditioning import conditioning
from .discharge import discharge
from .scan import step_scan

__all__ = ["discharge", "step_scan", "conditioning"]

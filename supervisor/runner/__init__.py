"""The sequence runner: a compiled plan run on the cluster, recorded as one shot (runner.py)."""
from .clocks import ClockOffsetError
from .runner import RunResult, Runner, run

__all__ = ["run", "Runner", "RunResult", "ClockOffsetError"]

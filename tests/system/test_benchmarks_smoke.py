"""Benchmarks run outside CI; here each runs once at a tiny size and must print well-formed figures."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIGURE = re.compile(r"^figure: (\S+) ([0-9.eE+-]+) (\S+) baseline ([0-9.eE+-]+) ratio ([0-9.eE+-]+)$")


def run_benchmark(name, *args):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    figures = {}
    for line in result.stdout.splitlines():
        match = FIGURE.match(line)
        assert match, f"not a figure line: {line!r}"
        figures[match.group(1)] = (float(match.group(2)), match.group(3), float(match.group(4)), float(match.group(5)))
    return figures


def test_drivers_roundtrip_smoke():
    figures = run_benchmark("drivers_roundtrip.py", "--n", "5")
    for bus in ("arduino", "redpitaya", "simatic", "rpi", "visa"):
        for q in ("p50", "p99"):
            value, unit, baseline, ratio = figures[f"drivers_{bus}_read_{q}"]
            assert unit == "ms" and value > 0 and baseline > 0
            assert abs(ratio - value / baseline) <= 0.05 + 0.01 * ratio

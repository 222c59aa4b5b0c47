"""Benchmarks run outside CI; here each runs once at a tiny size and must print well-formed figures."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# whole clusters: the process-heavy modules run one at a time (scripts/test)
pytestmark = pytest.mark.processes

ROOT = Path(__file__).resolve().parents[2]
FIGURE = re.compile(r"^figure: (\S+) ([0-9.eE+-]+) (\S+) baseline ([0-9.eE+-]+) ratio ([0-9.eE+-]+)$")


def run_benchmark(name, *args, timeout=120):
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / name), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # SIGTERM first: the benchmark then stops the clusters it started (SIGKILL would orphan them)
        proc.terminate()
        try:
            proc.communicate(timeout=60)
        finally:
            proc.kill()
            proc.wait()
        pytest.fail(f"{name} {' '.join(args)} did not finish within {timeout} s")
    assert proc.returncode == 0, stderr
    figures = {}
    for line in stdout.splitlines():
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


def test_cluster_rpc_smoke():
    # a whole simulated cluster and a one-node telemetry rig: slow on a loaded machine, hence the timeout
    figures = run_benchmark("cluster_rpc.py", "--n", "5", "--seconds", "1", "--nodes", "1", timeout=240)
    assert set(figures) == {"command_roundtrip", "comm_roundtrip", "cluster_start", "memory_runtime_mb",
                            "memory_node_kernel_mb", "telemetry_n1_samples_per_s", "telemetry_n1_gaps"}
    for name, unit in (("command_roundtrip", "ms"), ("comm_roundtrip", "ms"), ("cluster_start", "s"),
                       ("memory_runtime_mb", "MB"), ("memory_node_kernel_mb", "MB")):
        value, got_unit, baseline, ratio = figures[name]
        assert got_unit == unit and value > 0 and baseline > 0, name
        assert abs(ratio - value / baseline) <= 0.05 + 0.01 * ratio, name
    value, unit, baseline, ratio = figures["telemetry_n1_samples_per_s"]
    assert unit == "samples/s" and baseline == 300 and value > 0  # 3 inputs at 100 Hz; some arrived
    assert abs(ratio - value / baseline) <= 0.01
    value, unit, baseline, ratio = figures["telemetry_n1_gaps"]
    assert unit == "gaps" and baseline == 0 and value >= 0 and ratio == value  # zero baseline: ratio is the value


def test_pid_jitter_smoke():
    # a one-node cluster with its kernels, a 1 kHz loop and a busy cell for half a second
    figures = run_benchmark("pid_jitter.py", "--seconds", "0.5", "--n", "20")
    assert set(figures) == {"pid_jitter_p99"}
    value, unit, baseline, ratio = figures["pid_jitter_p99"]
    assert unit == "us" and value > 0 and baseline > 0
    assert abs(ratio - value / baseline) <= 0.05 + 0.01 * ratio


def test_safety_trip_smoke():
    figures = run_benchmark("safety_trip.py", "--trips", "5", "--leases", "5", "--pid-seconds", "0", timeout=240)
    assert set(figures) == {"node_trip_p99", "node_trip_vs_pushed_bluesky_p99", "supervisor_trip_p99", "plc_trip_p99",
                            "lease_detect_p99"}
    for name, (value, unit, baseline, ratio) in figures.items():
        assert unit == "ms" and value > 0 and baseline > 0, name
        assert abs(ratio - value / baseline) <= 0.05 + 0.01 * ratio, name
    # a lease is never detected before it runs out
    assert figures["lease_detect_p99"][0] >= figures["lease_detect_p99"][2] * 0.9


def test_shot_store_smoke():
    figures = run_benchmark("shot_store.py", "--small")
    assert set(figures) == {"shot_write", "shot_journal", "catalog_query"}
    for name, unit in (("shot_write", "MB/s"), ("shot_journal", "MB/s"), ("catalog_query", "ms")):
        value, got_unit, baseline, ratio = figures[name]
        assert got_unit == unit and value > 0 and baseline > 0, name
    for name in ("shot_write", "shot_journal"):  # throughput: the ratio is baseline time / our time
        value, _, baseline, ratio = figures[name]
        assert abs(ratio - value / baseline) <= 0.05 + 0.01 * ratio, name
    value, _, baseline, ratio = figures["catalog_query"]
    assert abs(ratio - value / baseline) <= 0.05 + 0.01 * ratio


def test_dashboard_latency_smoke():
    # a simulated cluster, the dashboard (Voila) and headless Chromium, three value changes
    missing = [p for p in ("/usr/bin/chromium", "/usr/bin/chromedriver") if not os.access(p, os.X_OK)]
    if missing and not os.environ.get("CI"):  # in CI it never skips: ./scripts/test installs them
        pytest.skip(f"needs {' and '.join(missing)} (apt-get install chromium chromium-driver)")
    figures = run_benchmark("dashboard_latency.py", "--n", "3", "--interval", "0.1", timeout=300)
    assert set(figures) == {"dashboard_update_p99"}
    value, unit, baseline, ratio = figures["dashboard_update_p99"]
    assert unit == "ms" and value > 0 and baseline > 0
    assert abs(ratio - value / baseline) <= 0.05 + 0.01 * ratio


def test_sequence_scan_smoke():
    # a cluster, a 100-point step scan at two rates, Bluesky's list_scan of the same 100 points
    figures = run_benchmark("sequence_scan.py", "--small", timeout=240)
    assert set(figures) == {"steps_per_s_vs_bluesky"}
    value, unit, baseline, ratio = figures["steps_per_s_vs_bluesky"]
    assert unit == "steps/s" and value >= 0 and baseline > 0  # 0: no rate held on a machine this loaded
    assert abs(ratio - value / baseline) <= 0.05 + 0.01 * ratio

"""The dashboard, measured: from a value changing in the simulated world to a browser showing it.

    python benchmarks/dashboard_latency.py [--n 200] [--interval 0.3]

One line:

    figure: dashboard_update_p99 MS ms baseline MS ratio R
        a simulated cluster of examples/ishtar/rig.toml, the dashboard served as `labrig dashboard`
        serves it (Voila, a supervisor kernel, rig.panel()), and headless Chromium (Debian's, through
        selenium) showing it. Each of --n times, the cooling water flow is set in the world process
        (alternately 4 and 5 L/min, stamped just before the request) and a MutationObserver in the
        page stamps the moment the cooling_flow readout shows the new value. The whole chain counts:
        the Arduino simulator, the node runtime's 10 Hz sampling and 100 ms batches, MQTT, the
        panel's 10 Hz ticker, the widget comm over Voila's websocket, the browser's rendering.
        Both stamps are this host's wall clock (the page's performance.timeOrigin + now(), its offset
        from Python's time.time() measured at the start). p99 (nearest rank).
        Baseline: MQTT publish-to-receive p99 on the same broker in the same run (one QoS 0 message
        per change, publisher and subscriber in this process, interleaved with the changes).

Notes (the median, the range) go to stderr.
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RIG = ROOT / "examples" / "ishtar" / "rig.toml"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
READOUT = ".labrig-readout-cooling_flow .labrig-value"
VALUES = (4.0, 5.0)  # L/min: well above the coil interlock's 2 L/min, two readouts apart
TOLERANCE = 0.05  # L/min: the Arduino's 10-bit ADC step is 0.01

# Every text change of the readout, stamped in the page.
OBSERVE_JS = """
window.labrigChanges = [];
const el = document.querySelector(arguments[0]);
new MutationObserver(() => window.labrigChanges.push(
    {t: performance.timeOrigin + performance.now(), text: el.textContent}))
  .observe(el, {subtree: true, childList: true, characterData: true});
"""


def figure(name, value, unit, baseline, ratio) -> None:
    print(f"figure: {name} {value:.4g} {unit} baseline {baseline:.4g} ratio {ratio:.3g}", flush=True)


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def browser(tmp: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    options = Options()
    options.binary_location = CHROMIUM  # Debian's chromium and chromedriver; selenium never downloads one
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
                "--disable-extensions", "--disable-background-networking", "--window-size=1400,1400",
                f"--user-data-dir={tmp / 'chromium'}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def clock_offset(driver) -> float:
    """Page wall clock minus Python's time.time(), s: from the tightest of 20 bracketed readings."""
    best = (math.inf, 0.0)
    for _ in range(20):
        before = time.time()
        page = driver.execute_script("return performance.timeOrigin + performance.now();") / 1000
        after = time.time()
        best = min(best, (after - before, page - (before + after) / 2))
    return best[1]


def until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout} s")
        time.sleep(0.02)


def measure(n: int, interval: float, tmp: Path) -> None:
    from labrig.simulators.world import world_control
    from labrig.supervisor.cluster import start_cluster, stop_cluster
    from labrig.supervisor.dashboard import start_dashboard
    from labrig.supervisor.mqtt import MqttPublisher, MqttSubscriber
    from labrig.supervisor.safety import all_trips, rearm
    from labrig.supervisor.state import read_state

    state = tmp / "state"
    t0 = time.monotonic()
    record = start_cluster(RIG, sim=True, directory=state, kernels=False, timeout=120)  # the page has its own kernel
    try:
        for where, trips in all_trips(state).items():  # one latched while the nodes started: clear it
            for trip in trips if isinstance(trips, list) else ():
                try:
                    rearm(trip["interlock"], state)
                except Exception as exc:
                    note(f"(could not re-arm {trip['interlock']} on {where}: {exc})")
        control = read_state("sim", state)["world"]["endpoints"]["control"]
        with start_dashboard(RIG, directory=state, port=0, timeout=120) as server:
            driver = browser(tmp)
            try:
                driver.set_page_load_timeout(180)
                driver.get(server.url)
                until(lambda: driver.execute_script("return !!document.querySelector(arguments[0]);", READOUT),
                      180, "the dashboard's cooling_flow readout")
                note(f"cluster, dashboard and page up in {time.monotonic() - t0:.1f} s")
                driver.execute_script(OBSERVE_JS, READOUT)
                offset = clock_offset(driver)
                latencies, baseline = run(driver, control, record["broker"]["url"], n, interval, offset,
                                          world_control, MqttPublisher, MqttSubscriber)
            finally:
                try:
                    driver.get("about:blank")  # the page's kernel shuts down with the page
                finally:
                    driver.quit()
            world_control(control, {"op": "set", "name": "cooling_flow", "value": 6.0})
    finally:
        stop_cluster(state)
    ms, base = p99(latencies) * 1000, p99(baseline) * 1000
    figure("dashboard_update_p99", ms, "ms", base, ms / base)
    ordered = sorted(latencies)
    note(f"dashboard update: median {ordered[len(ordered) // 2] * 1000:.0f} ms, "
         f"p90 {ordered[math.ceil(0.9 * len(ordered)) - 1] * 1000:.0f} ms, "
         f"range {ordered[0] * 1000:.0f}..{ordered[-1] * 1000:.0f} ms over {len(ordered)} changes; "
         f"MQTT publish-to-receive median {sorted(baseline)[len(baseline) // 2] * 1000:.2f} ms; "
         f"page clock offset {offset * 1000:+.1f} ms")


def run(driver, control, url, n, interval, offset, world_control, MqttPublisher, MqttSubscriber):
    """n changes of the world, each timed to the page; one MQTT message timed beside each."""
    name = f"labrig/bench/latency-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    received: dict[int, float] = {}
    got = threading.Condition()

    def on_message(topic, payload):
        with got:
            received[int(payload.split(b" ")[0])] = time.time()
            got.notify_all()

    sent: dict[int, float] = {}
    latencies = []
    with MqttSubscriber(url, [name], on_message, client_id=f"bench-sub-{uuid.uuid4().hex[:6]}") as sub, \
            MqttPublisher(url, client_id=f"bench-pub-{uuid.uuid4().hex[:6]}") as pub:
        if not (sub.wait_connected(10) and pub.wait_connected(10)):
            raise RuntimeError(f"the cluster's broker {url} did not accept the benchmark's clients")
        seen = 0
        for i in range(n):
            value = VALUES[i % 2]
            stamp = time.time()
            world_control(control, {"op": "set", "name": "cooling_flow", "value": value})

            def shown():
                changes = driver.execute_script("return window.labrigChanges.slice(arguments[0]);", seen)
                for k, change in enumerate(changes):
                    number = change["text"].split()[0] if change["text"] else ""
                    try:
                        if abs(float(number) - value) < TOLERANCE:
                            return seen + k + 1, change["t"] / 1000 - offset
                    except ValueError:
                        continue
                return None
            seen, at = until(shown, 10, f"change {i}: cooling_flow {value} L/min in the page")
            latencies.append(at - stamp)
            sent[i] = time.time()
            pub.publish(name, f"{i} {sent[i]!r}")
            with got:
                if not got.wait_for(lambda: i in received, 5):
                    raise RuntimeError(f"MQTT message {i} on {url} not received within 5 s")
            time.sleep(interval)  # let the readout settle: every change starts from a quiet page
    return latencies, [received[i] - sent[i] for i in sent]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="value changes timed")
    parser.add_argument("--interval", type=float, default=0.3, help="pause after each change, s")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n: at least 1")
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        parser.error(f"needs {' and '.join(missing)}: apt-get install chromium chromium-driver")
    # SIGTERM (a timeout, a supervisor) ends the run through the `finally` blocks that stop what it started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(prefix="labrig-bench-") as tmp:
        measure(args.n, args.interval, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())

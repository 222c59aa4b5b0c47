"""The control-room dashboard in a real headless Chromium (issue 6).

One simulated cluster for the module; the dashboard served by `labrig dashboard RIG --port 0`
(the command itself, as a person starts it: Voila on the packaged notebook, a supervisor
kernel per page); Debian's chromium driven by selenium through Debian's chromedriver (no
driver or browser is ever downloaded). The tests do what a person does: read values, arm and
move a knob, watch an interlock trip, press the emergency stop; the simulated devices (the
world process) judge what reached the hardware. Times are taken in the page itself (a
MutationObserver stamps the moment a text changes), so WebDriver's own slowness never counts.
Screenshots go to artifacts/screenshots/ (the README shows panel.png and dashboard.png).
The tests run in file order.
"""
from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from labrig.kernels.widgets.knobs import is_switch, number
from labrig.simulators.world import world_control
from labrig.supervisor.cluster import start_cluster, stop_cluster
from labrig.supervisor.processes import is_ours, log_tail, stop_pid
from labrig.supervisor.rig import Rig
from labrig.supervisor.state import read_state
from support import clear_startup_trips, wait_for

# the first test also starts the cluster, the dashboard and the page: on a loaded 2-core host that alone can
# take minutes (every wait inside is bounded on its own; this only bounds the whole)
pytestmark = [pytest.mark.processes, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
RIG = ROOT / "examples" / "ishtar" / "rig.toml"
SHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"  # apt-get install chromium chromium-driver
PWM_STEP = 150 / 255  # V: one step of the Arduino PWM that makes probe_bias
PAGE_TIMEOUT = 180  # s for the first page: Voila starts a supervisor kernel, which builds the panel

# Stamps (wall clock, ms) the first moment an element's text passes a test, from inside the page.
WATCH_JS = """
const [selector, key, pattern, lo, hi] = arguments;
window.labrigSeen = window.labrigSeen || {};
delete window.labrigSeen[key];
const el = document.querySelector(selector);
if (!el) return "no element " + selector;
const re = pattern ? new RegExp(pattern) : null;
const check = () => {
  const text = el.textContent;
  let ok = re ? re.test(text) : true;
  if (ok && lo !== null) {
    const m = text.match(/-?\\d+(\\.\\d+)?(e-?\\d+)?/);
    ok = m !== null && parseFloat(m[0]) >= lo && parseFloat(m[0]) <= hi;
  }
  if (ok && !(key in window.labrigSeen)) {
    window.labrigSeen[key] = {t: performance.timeOrigin + performance.now(), text: text};
    observer.disconnect();
  }
};
const observer = new MutationObserver(check);
observer.observe(el, {subtree: true, childList: true, characterData: true, attributes: true});
check();
return "";
"""
# Stamps the moment the user presses Enter in any slider's readout (before the widget handles it).
ENTER_JS = """
window.labrigSeen = window.labrigSeen || {};
delete window.labrigSeen.enter;
if (!window.labrigEnterHook) {
  window.labrigEnterHook = true;
  document.addEventListener("keydown", (e) => {
    if (e.key === "Enter") window.labrigSeen.enter = {t: performance.timeOrigin + performance.now()};
  }, true);
}
"""


def knob_css(name: str) -> str:
    return f".labrig-knob-{name}"


class Page:
    """The dashboard in Chromium: find by the labrig-* classes the dashboard adds, wait with timeouts."""

    def __init__(self, driver: webdriver.Chrome):
        self.d = driver

    def el(self, css: str):
        return self.d.find_element(By.CSS_SELECTOR, css)

    def text(self, css: str) -> str:
        return self.el(css).text

    def wait(self, check, timeout: float, what: str):
        try:
            return WebDriverWait(self.d, timeout, poll_frequency=0.1).until(lambda _: check())
        except TimeoutException:
            raise AssertionError(f"{what}: not within {timeout} s") from None

    def watch(self, css: str, key: str, *, pattern: str | None = None, lo: float | None = None,
              hi: float | None = None) -> None:
        problem = self.d.execute_script(WATCH_JS, css, key, pattern, lo, hi)
        assert not problem, problem

    def seen(self, key: str) -> dict | None:
        return self.d.execute_script("return (window.labrigSeen || {})[arguments[0]] || null;", key)

    def value(self, css: str) -> float:
        match = re.search(r"-?\d+(\.\d+)?(e-?\d+)?", self.text(css))
        assert match, f"no number in {css}: {self.text(css)!r}"
        return float(match.group(0))

    def type_into(self, name: str, value: float) -> None:
        """Type a value into a knob's slider readout and press Enter, as a person does."""
        readout = self.el(f"{knob_css(name)} .labrig-control .widget-readout")
        self.wait(lambda: readout.get_attribute("contenteditable") == "true", 5, f"{name}'s slider enabled")
        readout.click()
        readout.send_keys(Keys.CONTROL, "a")
        readout.send_keys(f"{value:g}", Keys.ENTER)

    def arm(self, name: str) -> None:
        self.el(f"{knob_css(name)} .labrig-arm").click()
        self.wait(lambda: "armed" in self.text(f"{knob_css(name)} .labrig-message"), 5, f"{name} armed")

    def disabled(self, name: str) -> bool:
        """Whether a knob's control is greyed out (a toggle button, or a slider and its readout)."""
        control = self.el(f"{knob_css(name)} .labrig-control")
        if control.tag_name == "button":
            return not control.is_enabled()
        readout = control.find_element(By.CSS_SELECTOR, ".widget-readout")
        slider = control.find_element(By.CSS_SELECTOR, ".noUi-target")
        return readout.get_attribute("contenteditable") == "false" and slider.get_attribute("disabled") is not None

    def light_color(self, interlock: str) -> str:
        return self.d.execute_script(
            "return getComputedStyle(document.querySelector(arguments[0])).color;",
            f".labrig-interlock-{interlock} .labrig-light .widget-html-content span span")

    def fit(self) -> None:
        """Make the window as tall as the page, so screenshots hold all of it."""
        height = self.d.execute_script(
            "return Math.max(document.body.scrollHeight, ...Array.from(document.querySelectorAll('*'))"
            ".filter(e => ['auto', 'scroll'].includes(getComputedStyle(e).overflowY)).map(e => e.scrollHeight));")
        self.d.set_window_size(1400, min(int(height) + 140, 4000))

    def shot(self, name: str, css: str | None = None) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / name
        self.fit()  # the page grows (the emergency stop's answer, a trip's reason)
        if css:
            assert self.el(css).screenshot(str(path)), f"screenshot of {css} failed"
        else:
            assert self.d.save_screenshot(str(path)), "screenshot failed"
        return path


class Devices:
    """The simulated hardware, as the world process holds it."""

    def __init__(self, directory: Path):
        self.dir = directory

    def _control(self, request: dict) -> dict:
        return world_control(read_state("sim", self.dir)["world"]["endpoints"]["control"], request)

    def state(self) -> dict:
        return self._control({"op": "snapshot"})["state"]

    def set(self, name: str, value: float) -> None:
        self._control({"op": "set", "name": name, "value": value})


def _browser_paths() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        why = f"needs {' and '.join(missing)} (apt-get install chromium chromium-driver; ./scripts/test does)"
        if os.environ.get("CI"):
            pytest.fail(f"in CI this test never skips: {why}")
        pytest.skip(why)


def _leftovers(marker: str) -> list[str]:
    out = []
    for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
        if pid != os.getpid() and is_ours(pid, marker):
            out.append(f"{pid}: " + Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:160])
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    _browser_paths()  # before a cluster is started for nothing
    directory = tmp_path_factory.mktemp("dashboard") / "state"
    try:
        # no node or supervisor kernels: the dashboard runs its own supervisor kernel (one per page)
        start_cluster(RIG, sim=True, directory=directory, kernels=False, timeout=90)
        clear_startup_trips(directory)
        yield directory
    finally:
        stop_cluster(directory)
        left = _leftovers(str(directory))
        for line in left:
            stop_pid(int(line.split(":")[0]), marker=str(directory))
        assert not left, "left running after the cluster stopped: " + "; ".join(left)


@pytest.fixture(scope="module")
def dashboard(cluster, tmp_path_factory):
    """`labrig dashboard RIG --port 0`, the command itself; its URL. SIGTERM at the end must leave nothing."""
    out = tmp_path_factory.mktemp("dashboard-cli") / "stdout.txt"
    with open(out, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "labrig.supervisor.cli", "dashboard", str(RIG), "--port", "0",
                                 "--timeout", "240", "--state-dir", str(cluster)], stdout=fh, stderr=subprocess.STDOUT,
                                env={**os.environ, "LABRIG_STATE_DIR": str(cluster)})
    try:
        def url():
            found = re.search(r"^dashboard: (http://127\.0\.0\.1:\d+/)$", out.read_text(), re.M)
            assert proc.poll() is None or found, f"labrig dashboard exited ({proc.returncode}):\n{out.read_text()}"
            return found and found.group(1)
        yield wait_for(url, 300, "labrig dashboard printed its URL")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("labrig dashboard did not stop within 60 s of SIGTERM")
        left = _leftovers(str(cluster / "dashboard"))
        assert code == 0, f"labrig dashboard exited with {code} on SIGTERM:\n{out.read_text()}"
        assert not left, "labrig dashboard left running: " + "; ".join(left)


@pytest.fixture(scope="module")
def page(dashboard, cluster, tmp_path_factory):
    options = Options()
    options.binary_location = CHROMIUM  # never selenium-manager: it would download a browser
    for arg in ("--headless=new", "--no-sandbox",  # CI runs as root
                "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--window-size=1400,1000",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    log = cluster / "logs" / "dashboard.log"  # Voila's, and its kernels' output
    try:
        driver.set_page_load_timeout(PAGE_TIMEOUT)
        driver.get(dashboard)
        p = Page(driver)
        try:
            p.wait(lambda: driver.find_elements(By.CSS_SELECTOR, ".labrig-dashboard .labrig-panel"), PAGE_TIMEOUT,
                   "the dashboard's panel rendered")
        except AssertionError as exc:
            shown = driver.execute_script("return document.body ? document.body.innerText : '';")[:800]
            raise AssertionError(f"{exc}\nthe page shows: {shown!r}\n{log.name}: {log_tail(log, 30)}") from None
        p.wait(lambda: "telemetry on" in p.text(".labrig-telemetry"), 10, "the panel's telemetry live")
        p.fit()
        yield p
    finally:
        try:
            driver.get("about:blank")  # Voila shuts a page's kernel down when the page unloads
        finally:
            driver.quit()


def labrig_dashboard(*args: str, state: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labrig.supervisor.cli", "dashboard", str(RIG), *args,
                           "--state-dir", str(state)], capture_output=True, text=True, timeout=120)


def test_without_a_cluster_it_says_to_start_one(tmp_path):
    done = labrig_dashboard(state=tmp_path)
    assert done.returncode == 2, done
    assert "no cluster runs for rig 'ishtar'" in done.stderr and "labrig up" in done.stderr, done.stderr
    assert not _leftovers(str(tmp_path))


def test_beyond_loopback_it_needs_a_token(tmp_path):
    done = labrig_dashboard("--ip", "0.0.0.0", state=tmp_path)
    assert done.returncode == 2, done
    assert "needs a token" in done.stderr and "--token auto" in done.stderr, done.stderr
    done = labrig_dashboard("--ip", "0.0.0.0", "--token", "auto", state=tmp_path)  # accepted: on to the cluster
    assert done.returncode == 2 and "no cluster runs" in done.stderr, done.stderr


def test_live_values_change_as_the_world_does(page, cluster):
    world = Devices(cluster)
    page.wait(lambda: "5 of 5 nodes online" in page.text(".labrig-machine-state")
              and "guard online" in page.text(".labrig-machine-state"), 10,
              "the banner: every node and the guard online")
    # the page's start (Voila, its kernel, Chromium) can starve a heartbeat past the guard's timeout on a
    # loaded 2-core host: such a trip is re-armed, and the banner must show it gone
    clear_startup_trips(cluster)
    page.wait(lambda: "no latched trips" in page.text(".labrig-machine-state"), 10, "the banner: no latched trips")
    # langmuir_I (100 Hz, noisy) changes by itself, pushed to the page
    first = page.text(".labrig-readout-langmuir_I .labrig-value")
    assert first.endswith("mA"), first
    page.wait(lambda: page.text(".labrig-readout-langmuir_I .labrig-value") != first, 5, "langmuir_I changing")
    # the cooling water slows in the simulator (still above the interlock's 2 L/min): the readout follows
    page.wait(lambda: abs(page.value(".labrig-readout-cooling_flow .labrig-value") - 6.0) < 0.05, 5,
              "cooling_flow at 6 L/min")
    try:
        world.set("cooling_flow", 4.0)
        page.wait(lambda: abs(page.value(".labrig-readout-cooling_flow .labrig-value") - 4.0) < 0.05, 5,
                  "cooling_flow at 4 L/min in the page")
    finally:
        world.set("cooling_flow", 6.0)
    page.wait(lambda: abs(page.value(".labrig-readout-cooling_flow .labrig-value") - 6.0) < 0.05, 5,
              "cooling_flow back at 6 L/min in the page")
    page.shot("dashboard.png")
    page.shot("panel.png", ".labrig-panel")


def test_a_second_dashboard_on_the_same_port_is_refused(page, dashboard, cluster):
    port = re.search(r":(\d+)/", dashboard).group(1)
    done = labrig_dashboard("--port", port, state=cluster)
    assert done.returncode == 2, done
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr, done.stderr
    # and the first one still serves its page, untouched
    first = page.text(".labrig-readout-langmuir_I .labrig-value")
    page.wait(lambda: page.text(".labrig-readout-langmuir_I .labrig-value") != first, 5, "langmuir_I still live")


def test_an_armed_knob_moves_and_its_readback_follows_within_the_slew_time(page, cluster):
    name, target = "rf_power", 100.0
    spec = Rig.load(RIG).signals[name]
    css = knob_css(name)
    assert page.disabled(name), "rf_power (arm = true) is greyed out until armed"
    start = page.value(f"{css} .labrig-setpoint")
    page.arm(name)
    assert not page.disabled(name)
    page.d.execute_script(ENTER_JS)
    page.watch(f"{css} .labrig-readback", "readback", lo=target - 2, hi=target + 2)
    page.type_into(name, target)
    seen = page.wait(lambda: page.seen("readback"), 10, f"{name}'s readback near {target:g} W")
    pressed = page.seen("enter")
    assert pressed, "the Enter key press was not seen by the page"
    allowed = abs(target - start) / spec.max_slew + 1.0
    took = (seen["t"] - pressed["t"]) / 1000
    assert took <= allowed, f"the readback reached {target:g} W {took:.2f} s after Enter; allowed {allowed:.2f} s"
    assert page.text(f"{css} .labrig-setpoint") == f"set {number(target, spec.unit)}"
    assert "ramping" in page.text(f"{css} .labrig-message")
    assert abs(Devices(cluster).state()["rf_drive"] - math.sqrt(target / 1500)) < 0.01  # on the RedPitaya
    page.wait(lambda: page.disabled(name), 5, "one change per arm: rf_power greyed out again")
    page.shot("knob-moved.png")


def test_an_interlock_trip_turns_its_light_and_disables_its_knobs(page, cluster):
    world = Devices(cluster)
    red, green = "rgb(204, 0, 0)", "rgb(34, 170, 34)"
    assert page.light_color("coil_needs_cooling") == green
    assert not page.disabled("coil_enable")
    world.set("cooling_flow", 1.0)  # the coils need cooling water: the guard trips coil_needs_cooling
    try:
        page.wait(lambda: page.light_color("coil_needs_cooling") == red, 5, "coil_needs_cooling's light red")
        page.wait(lambda: page.disabled("coil_enable") and page.disabled("coil_current_set"), 5,
                  "the coil's knobs disabled")
        assert not page.el(f"{knob_css('coil_current_set')} .labrig-arm").is_enabled()
        assert "held by" in page.text(f"{knob_css('coil_enable')} .labrig-message")
        page.wait(lambda: "TRIPPED" in page.text(".labrig-machine-state"), 5, "the banner says TRIPPED")
        assert page.el(".labrig-machine-state [data-state]").get_attribute("data-state") == "alarm"
        # the RF lost its cooling_ok too: its trip drove rf_power safe on the RedPitaya
        wait_for(lambda: world.state()["rf_drive"] == 0, 3, "rf_drive at 0 after the trip")
        page.shot("interlock-tripped.png")
        # a re-arm pressed while the water is still off is refused, and the page says why
        page.el(".labrig-interlock-coil_needs_cooling .labrig-rearm").click()
        page.wait(lambda: "refused" in page.text(".labrig-rearm-message"), 5, "the re-arm refused")
    finally:
        world.set("cooling_flow", 6.0)

    def rearm_all() -> bool:  # the guard needs a poll or two to read the water back
        buttons = [b for b in page.d.find_elements(By.CSS_SELECTOR, ".labrig-rearm") if b.is_enabled()]
        for button in buttons:
            button.click()
        return not buttons and page.light_color("coil_needs_cooling") == green
    page.wait(rearm_all, 15, "every interlock re-armed from its button, lights green")
    page.wait(lambda: not page.disabled("coil_enable"), 5, "coil_enable enabled again")
    page.wait(lambda: "no latched trips" in page.text(".labrig-machine-state"), 5, "the banner calm again")


def test_the_emergency_stop_drives_every_output_safe(page, cluster):
    world = Devices(cluster)
    rig = Rig.load(RIG)
    page.el(f"{knob_css('beacon')} .labrig-control").click()
    page.type_into("gas_flow", 20)
    page.type_into("probe_bias", -60)
    page.arm("rf_power")
    page.type_into("rf_power", 200)
    wait_for(lambda: (lambda s: s["beacon"] == 1 and abs(s["gas_valve"] - 0.4) < 0.01
                      and abs(s["probe_bias"] + 60) < PWM_STEP and s["rf_drive"] > 0.3)(world.state()), 5,
             "beacon on, gas valve 40 %, probe bias -60 V, RF drive up, from the page")

    page.el(".labrig-estop").click()
    wait_for(lambda: (lambda s: s["beacon"] == 0 and s["gas_valve"] == 0 and abs(s["probe_bias"]) < PWM_STEP
                      and s["rf_drive"] == 0 and s["coil_current_cmd"] == 0 and s["trigger"] == 0)(world.state()),
             3, "every output of the world at its safe value")
    # first "driving every node safe...", then each node's answer
    page.wait(lambda: all(node in page.text(".labrig-estop-result") for node in rig.nodes), 5,
              "the emergency stop's answer of every node shown")
    shown = page.text(".labrig-estop-result")
    assert "FAILED" not in shown and "UNREACHABLE" not in shown and shown.count(" safe") == len(rig.nodes), shown
    # every knob shows its output's safe value: the setpoint at once, the readback from telemetry
    outputs = {n: s for n, s in rig.signals.items() if s.direction == "out"}
    for name, spec in outputs.items():
        expected = f"set {('on' if spec.safe else 'off') if is_switch(spec) else number(spec.safe, spec.unit)}"
        page.wait(lambda: page.text(f"{knob_css(name)} .labrig-setpoint") == expected, 3,
                  f"{name}'s knob at its safe value ({expected})")
    tolerance = {"probe_bias": PWM_STEP}
    for name, spec in outputs.items():
        page.wait(lambda: abs(page.value(f"{knob_css(name)} .labrig-readback") - spec.safe)
                  <= tolerance.get(name, 1e-3 * max(1.0, abs(spec.safe))), 3, f"{name} read back at its safe value")
    page.shot("emergency-stop.png")

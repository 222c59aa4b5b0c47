"""Shared test fixtures. Loopback only; every process, thread and port is cleaned up."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ISHTAR = ROOT / "examples" / "ishtar" / "rig.toml"


def pytest_addoption(parser):
    parser.addoption("--hw", action="store_true", default=False,
                     help="run tests against real hardware (never in CI)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--hw"):
        return
    skip = pytest.mark.skip(reason="real hardware test: run with --hw")
    for item in items:
        if "hw" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path, monkeypatch):
    """Every test gets its own state directory: nothing touches the user's."""
    state = tmp_path / "state"
    monkeypatch.setenv("LABRIG_STATE_DIR", str(state))
    yield state


@pytest.fixture(autouse=True)
def _no_leaked_threads(request):
    """Fail a test that leaves threads behind (given 3 s to wind down)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 3.0
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if leaked and "allow_thread_leak" not in request.keywords:
        pytest.fail(f"test leaked threads: {', '.join(t.name for t in leaked)}")


@pytest.fixture
def world():
    """The plasma world in-process, on its own thread (unit and protocol tests of one simulator)."""
    from labrig.simulators.world import LocalWorld
    with LocalWorld(seed=1) as w:
        yield w


@pytest.fixture(scope="session")
def ishtar_path() -> Path:
    return ISHTAR


@pytest.fixture
def ishtar():
    from labrig.supervisor.rig import Rig
    return Rig.load(ISHTAR)


@pytest.fixture(scope="module")
def testbed(tmp_path_factory):
    """The simulated testbed of examples/ishtar, as separate processes, for one test module."""
    from labrig.supervisor.rig import Rig
    from labrig.supervisor.testbed import start_testbed, stop_testbed
    directory = tmp_path_factory.mktemp("testbed")
    record = start_testbed(Rig.load(ISHTAR), seed=1, directory=directory)
    record["state_dir"] = str(directory)
    try:
        yield record
    finally:
        stop_testbed(directory)


@pytest.fixture
def lone_machine(ishtar, tmp_path):
    """The example rig with nothing running: no broker, no runtimes, no guard."""
    from labrig.kernels.rig_object import Machine
    machine = Machine(ishtar, tmp_path / "state")
    try:
        yield machine
    finally:
        machine.close()

"""One contract, five buses: every driver against its simulator process, over the real transport.

read, write, safe_state, a garbled frame and a cut link (a typed LinkError
within 2x the I/O timeout), the same test for every bus.
"""
from __future__ import annotations

import math
import re
import time

import pytest

from labrig.drivers.contract import open_driver
from labrig.drivers.errors import ConfigError, LinkError, LinkTimeout
from labrig.simulators.faults import CuttableProxy
from labrig.simulators.world import world_control

# runs simulator processes: with the other process-heavy modules, one at a time (scripts/test)
pytestmark = pytest.mark.processes

TIMEOUT = 0.5

# node, an input to read, writes that prepare the output, the output written, where its effect shows
BUSES = {
    "arduino": dict(node="ard1", input="langmuir_I", prepare=(), output=("probe_bias", -40.0),
                    world=("probe_bias", -40.0, 0.6), safe_world=("probe_bias", 0.0, 0.6)),
    "redpitaya": dict(node="rp1", input="rf_forward", prepare=(), output=("rf_power", 100.0),
                      world=("rf_drive", math.sqrt(100 / 1500), 0.01), safe_world=("rf_drive", 0.0, 1e-6)),
    "simatic": dict(node="plc1", input="coil_current", prepare=(("coil_enable", 1.0),),
                    output=("coil_current_set", 50.0), world=("coil_current_cmd", 50.0, 0.5),
                    safe_world=("coil_current_cmd", 0.0, 1e-6)),
    "rpi": dict(node="pi1", input="door_switch", prepare=(), output=("gas_flow", 10.0),
                world=("gas_valve", 0.2, 0.01), safe_world=("gas_valve", 0.0, 1e-6)),
    "visa": dict(node="gauge1", input="pressure", prepare=(), output=("gauge_setpoint", 2.0),
                 world=None, safe_world=None),
}


def world(testbed, request):
    return world_control(testbed["world"]["endpoints"]["control"], request)


def world_value(testbed, name):
    return world(testbed, {"op": "snapshot"})["state"][name]


def wait_world(testbed, name, target, tol, timeout=3.0):
    deadline = time.monotonic() + timeout
    while True:
        value = world_value(testbed, name)
        if abs(value - target) <= tol:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"world {name} = {value}, expected {target} +- {tol} within {timeout} s")
        time.sleep(0.05)


def open_on(ishtar, node, url):
    spec = ishtar.node(node)
    return open_driver(spec.kind, url, ishtar.channel_specs(node), timeout=TIMEOUT, name=node, **spec.options)


@pytest.fixture(params=list(BUSES))
def bus(request, testbed, ishtar):
    case = dict(BUSES[request.param], kind=request.param)
    case["url"] = testbed["simulators"][case["node"]]["url"]
    yield case
    world(testbed, {"op": "fault", "kind": "link", "name": case["node"], "mode": "clear"})


def timed(fn):
    start = time.monotonic()
    try:
        fn()
    except Exception as exc:  # the caller checks the type
        return exc, time.monotonic() - start
    return None, time.monotonic() - start


def test_read_write_safe_state(bus, testbed, ishtar):
    with open_on(ishtar, bus["node"], bus["url"]) as drv:
        value = drv.read(bus["input"])
        assert isinstance(value, float) and math.isfinite(value)
        for name, v in bus["prepare"]:
            drv.write(name, v)
        name, target = bus["output"]
        drv.write(name, target)
        if bus["world"]:
            wait_world(testbed, *bus["world"])
        else:
            assert drv.read(name) == pytest.approx(target)
        results = drv.safe_state()
        assert results and all(r.ok for r in results.values()), results
        assert results[name].value == ishtar.signal(name).safe
        again = drv.safe_state()  # idempotent
        assert all(r.ok for r in again.values())
        if bus["safe_world"]:
            wait_world(testbed, *bus["safe_world"])
        else:
            assert drv.read(name) == pytest.approx(ishtar.signal(name).safe)


def test_bad_address_is_refused_before_any_io(bus, ishtar):
    from labrig.drivers.contract import ChannelSpec
    spec = ishtar.node(bus["node"])
    with pytest.raises(ConfigError, match="no such pin!"):
        open_driver(spec.kind, bus["url"], [ChannelSpec("x", "no such pin!")], timeout=TIMEOUT)


def test_write_to_an_input_is_refused(bus, testbed, ishtar):
    with open_on(ishtar, bus["node"], bus["url"]) as drv:
        with pytest.raises(ConfigError, match="input"):
            drv.write(bus["input"], 1.0)
        with pytest.raises(ConfigError, match="did you mean"):
            drv.read(bus["input"][:-1] + "_")


def test_garbled_link_gives_a_typed_error_in_bounded_time(bus, testbed, ishtar):
    with open_on(ishtar, bus["node"], bus["url"]) as drv:
        drv.read(bus["input"])
        world(testbed, {"op": "fault", "kind": "link", "name": bus["node"], "mode": "garble"})
        time.sleep(0.05)  # the fault reaches the simulator through the world's state stream
        errors = []
        for _ in range(8):
            exc, took = timed(lambda: drv.read(bus["input"]))
            assert took < 2 * TIMEOUT + 0.1, f"{bus['kind']}: a garbled read took {took:.2f} s"
            if exc is not None:
                assert isinstance(exc, LinkError), f"{bus['kind']}: {type(exc).__name__}: {exc}"
                assert bus["node"] in str(exc)
                errors.append(exc)
        assert errors, f"{bus['kind']}: 8 reads through a garbled link raised nothing"
        world(testbed, {"op": "fault", "kind": "link", "name": bus["node"], "mode": "clear"})
        time.sleep(0.05)
        recovered = False
        for _ in range(6):
            try:
                drv.read(bus["input"])
                recovered = True
                break
            except LinkError:
                time.sleep(0.1)
        assert recovered, f"{bus['kind']}: the driver did not recover after the garbling stopped"


def proxied_url(url: str, port: int, proxy_port: int) -> str:
    # the simulator's main port appears once in its URL (":PORT" or "::PORT::")
    return re.sub(rf"(?<=:){port}(?=\b)", str(proxy_port), url, count=1)


def first_port(endpoints: dict) -> int:
    return int(next(iter(endpoints.values())).rsplit(":", 1)[1])


@pytest.mark.parametrize("how", ["cut", "silent"])
def test_cut_link_gives_a_typed_error_in_bounded_time(bus, testbed, ishtar, how):
    if bus["kind"] == "arduino":
        # a serial line has no proxy: the pty stops answering, as a board that hangs or a pulled cable
        with open_on(ishtar, bus["node"], bus["url"]) as drv:
            drv.read(bus["input"])
            world(testbed, {"op": "fault", "kind": "link", "name": bus["node"], "mode": "mute"})
            time.sleep(0.05)
            exc, took = timed(lambda: drv.read(bus["input"]))
            assert isinstance(exc, LinkTimeout), exc
            assert took < 2 * TIMEOUT + 0.1
        return
    endpoints = testbed["simulators"][bus["node"]]["endpoints"]
    port = first_port(endpoints)
    with CuttableProxy(("127.0.0.1", port)) as proxy:
        url = proxied_url(bus["url"], port, proxy.port)
        assert url != bus["url"]
        with open_on(ishtar, bus["node"], url) as drv:
            drv.read(bus["input"])
            assert proxy.connections >= 1
            proxy.cut() if how == "cut" else proxy.blackhole()
            exc, took = timed(lambda: drv.read(bus["input"]))
            assert isinstance(exc, LinkError), f"{bus['kind']}: {type(exc).__name__}: {exc}"
            if how == "silent":
                assert isinstance(exc, LinkTimeout), exc
            assert bus["node"] in str(exc)
            assert took < 2 * TIMEOUT + 0.1, f"{bus['kind']}: a {how} link took {took:.2f} s to raise"

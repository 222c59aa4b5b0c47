"""The chaos suite's cluster: one for the whole suite (see rig.py)."""
from __future__ import annotations

import psutil
import pytest

from labrig.supervisor.cluster import start_cluster, stop_cluster
from labrig.supervisor.processes import spawn, stop_pid, wait_ready
from labrig.supervisor.rig import Rig
from labrig.supervisor.testbed import start_testbed, stop_testbed

from chaos.rig import Chaos, chaos_rig_text


@pytest.fixture(scope="package")
def chaos(tmp_path_factory):
    directory = tmp_path_factory.mktemp("chaos") / "state"
    directory.mkdir()
    rig_path = directory.parent / "chaos-rig.toml"
    rig_path.write_text(chaos_rig_text("s7://127.0.0.1:1?rack=0&slot=1"))  # the proxy's port comes next
    proxy = None
    c = None
    try:
        bed = start_testbed(Rig.load(rig_path), directory=directory, timeout=60)
        plc_s7 = bed["simulators"]["plc1"]["endpoints"]["s7"]
        ready = directory / "proxy.ready"
        proxy = spawn(["-m", "labrig.simulators.faults", "proxy", "--target", plc_s7, "--ready", str(ready)],
                      name="plc-proxy", log_dir=directory / "logs")
        info = wait_ready(proxy, ready, name="plc-proxy", timeout=15, log_dir=directory / "logs")
        port = info["endpoints"]["proxy"].rsplit(":", 1)[1]
        rig_path.write_text(chaos_rig_text(f"s7://127.0.0.1:{port}?rack=0&slot=1"))
        start_cluster(rig_path, sim=False, directory=directory, timeout=120)
        c = Chaos(directory, rig_path, info["endpoints"]["control"])
        c.recover()
        yield c
    finally:
        if c is not None:
            c.close()
        stopped = stop_cluster(directory)
        stop_testbed(directory)
        if proxy is not None:
            stop_pid(proxy.pid)
            proxy.wait(5)
        left = [p for p in psutil.process_iter(["pid", "cmdline", "status"])
                if str(directory) in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE]
        for p in left:
            stop_pid(p.pid, marker=str(directory))
        assert not left, f"stop_cluster (which stopped {stopped}) left running: " + \
            "; ".join(" ".join(p.info["cmdline"])[:160] for p in left)




@pytest.fixture(autouse=True)
def recovered(chaos):
    """Every chaos test leaves the rig as it found it, pass or fail: the next one starts clean."""
    yield
    chaos.recover()

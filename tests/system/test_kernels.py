"""The node and supervisor kernels, started through jupyter_client like any kernel."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from jupyter_client.manager import start_new_kernel

from labrig.kernels.install import install_kernelspecs
from labrig.supervisor.processes import stop_pid
from labrig.supervisor.runtime.locate import runtime_record

# whole clusters: the process-heavy modules run one at a time (scripts/test)
pytestmark = pytest.mark.processes


def run(kc, code, timeout=30):
    """Execute code; return (printed and displayed text, the result's data, error or None)."""
    msg_id = kc.execute(code)
    out, result, error = [], None, None
    while True:
        msg = kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            out.append(content["text"])
        elif kind == "display_data":
            out.append(content["data"].get("text/plain", ""))
        elif kind == "execute_result":
            result = content["data"]
        elif kind == "error":
            error = f"{content['ename']}: {content['evalue']}"
        elif kind == "status" and content["execution_state"] == "idle":
            return "".join(out), result, error


@pytest.fixture(scope="module")
def kernelspecs(testbed, ishtar_path, tmp_path_factory):
    prefix = tmp_path_factory.mktemp("jupyter")
    names = install_kernelspecs(ishtar_path, prefix=str(prefix), state=Path(testbed["state_dir"]), sim=True)
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = str(prefix / "share" / "jupyter")
    try:
        yield names
    finally:
        if old is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = old
        for node in ("ard1", "rp1", "plc1", "pi1", "gauge1"):
            record = runtime_record(node, Path(testbed["state_dir"]))
            if record:
                stop_pid(record["pid"])


@pytest.mark.allow_thread_leak  # jupyter_client's channel threads end with the module
def test_node_kernel_starts_its_runtime_and_shows_node(kernelspecs, testbed):
    assert "labrig-ard1" in kernelspecs and "labrig-supervisor" in kernelspecs
    km, kc = start_new_kernel(kernel_name="labrig-ard1", startup_timeout=60)
    try:
        out, result, error = run(kc, "node")
        assert error is None, error
        assert "Node ard1 (arduino)" in result["text/plain"]
        out, result, error = run(kc, 'node["probe_bias"].write(-20.0); round(node["probe_bias"].read(), 1)')
        assert error is None, error
        assert result["application/vnd.labrig.value+json"] == pytest.approx(-20.0, abs=0.6)
        out, result, error = run(kc, "%status")
        assert error is None and "probe_bias" in out and "[-100, 50]" in out
        out, result, error = run(kc, 'node["langmuir_j"]')
        assert "did you mean langmuir_I" in error
        out, result, error = run(kc, "%safe")
        assert "probe_bias" in out and "safe" in out
        out, result, error = run(kc, "node.audit()")
        assert error is None and "audit of node ard1" in result["text/plain"]
        assert "kernel-ard1" in result["text/plain"] and "refused" not in result["text/plain"]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    # the runtime outlives its kernel
    assert runtime_record("ard1", Path(testbed["state_dir"]))


@pytest.mark.allow_thread_leak
def test_supervisor_kernel_reads_every_signal_by_name(kernelspecs, testbed, ishtar):
    from labrig.supervisor.runtime.locate import ensure_runtime
    directory = Path(testbed["state_dir"])
    for node in ishtar.nodes:
        ensure_runtime(ishtar.path, node, directory, sim=True)
    km, kc = start_new_kernel(kernel_name="labrig-supervisor", startup_timeout=60)
    try:
        out, result, error = run(kc, "{name: rig[name].read() for name in rig.signals}")
        assert error is None, error
        values = result["application/vnd.labrig.value+json"]
        assert set(values) == set(ishtar.signals)
        assert values["cooling_flow"] == pytest.approx(6.0, abs=0.05)
        out, result, error = run(kc, 'rig["coil_enable"].write(1); rig["coil_current_set"].ramp(100, rate=300)')
        assert error is None, error
        out, result, error = run(kc, "import time; time.sleep(1.0); round(rig.coil.field(), 3)")
        assert result["application/vnd.labrig.value+json"] == pytest.approx(0.02, abs=0.002)
        out, result, error = run(kc, "rig.status()")
        assert error is None, error
        for node in ishtar.nodes:
            assert node in result["text/plain"]
        assert "online" in result["text/plain"]
        out, result, error = run(kc, "rig['langmuir_i']")
        assert "did you mean langmuir_I" in error
        out, result, error = run(kc, "rig['rf_power'].write(5000)")
        assert "RangeError" in error and "[0, 1200] W" in error
        # RF into the empty vessel: the RedPitaya's own interlock trips it, the supervisor shows it
        out, result, error = run(kc, "rig.rf.enable()\n"  # ask the PLC for the RF permit first
                                     "rig['rf_power'].ramp(400, rate=400)\n"
                                     "deadline = time.monotonic() + 5\n"
                                     "while 'rf_reflected_limit' not in repr(rig.status()) and time.monotonic() < deadline:\n"
                                     "    time.sleep(0.1)\n"
                                     "rig.status()")
        assert error is None and "rf_reflected_limit" in result["text/plain"], (error, result)
        out, result, error = run(kc, "rig['rf_power'].write(100)")
        assert error.startswith("Refused") and "re-arm it first" in error
        out, result, error = run(kc, "rig.rearm('rf_reflected_limit')['rearmed']")
        assert error is None and result["application/vnd.labrig.value+json"] is True
        out, result, error = run(kc, "%safe")
        assert error is None and "plc1" in out and "FAILED" not in out
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)

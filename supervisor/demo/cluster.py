"""Demo stage 2: the cluster, driven through the supervisor kernel from a real Jupyter client.

`labrig up --sim` in the background (broker, runtimes, kernels), then a Jupyter
client connects to the supervisor kernel and runs cells, printed like a console
session: the ramps run in the node runtimes, next to the (simulated) hardware.
"""
from __future__ import annotations

import textwrap
import time
from pathlib import Path

from jupyter_client import BlockingKernelClient

from labrig.drivers.errors import LabrigError

CELLS = [
    "rig",
    "rig.status()",
    # ion saturation on the probe, coils enabled; then gas and field ramp inside their runtimes
    'rig["probe_bias"].ramp(-80)\nrig["coil_enable"].write(1)\n'
    'rig["gas_flow"].ramp(20)\nrig["coil_current_set"].ramp(400)',
    "import time\ntime.sleep(2.0)\n"
    'print(f"gas {rig[\'gas_flow\'].read():.1f} sccm, pressure {rig[\'pressure\'].read():.3f} Pa, '
    'B {rig.coil.field():.3f} T")',
    # the PLC grants the RF permit on request, with vacuum and the door closed; then the RF ramp
    'rig.rf.enable()\ntime.sleep(0.2)\nprint(f"RF permit: {rig.rf.permitted()}")\nrig["rf_power"].ramp(735)\ntime.sleep(3.0)',
    'print(f"n_e (Langmuir) = {rig.langmuir.density():.2e} m^-3, n_e (interferometer) = '
    '{rig.interferometer.density():.2e} m^-3, absorbed RF {rig.rf.absorbed():.0f} W")\n'
    "rig.langmuir.density()",
    "%safe",
    # the same discharge as a sequence: compiled against the rig, run by the nodes on one start time,
    # recorded as a numbered shot (one HDF5 file, indexed in the catalog)
    "from labrig.sequences.library import discharge\n"
    "result = rig.run(discharge, power=735, b_field=0.08, flat_top=1.0, rate=100, progress=False)\n"
    "assert result.status == 'success', result.reason\n"
    "print(f'shot {result.number}: {result.status}, file {result.path}')",
    "import numpy as np\n"
    "with result.shot() as shot:\n"
    "    for name in shot.names():\n"
    "        t, v = shot.read(name)\n"
    "        print(f'{name:22s} {len(v):6d} samples, peak |value| {np.nanmax(np.abs(v)):10.4g} {shot.info(name).get(\"unit\", \"\")}')\n"
    "    overview = shot.overview(result.path.with_name(f'shot-{result.number}-overview.png'))\n"
    "print(f'overview plot: {overview}')",
]


class Console:
    """A Jupyter client that runs cells on a kernel and prints them as a console would."""

    def __init__(self, connection_file: str | Path, *, timeout: float = 60.0):
        self.client = BlockingKernelClient(connection_file=str(connection_file))
        self.client.load_connection_file()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=timeout)
        self.timeout = timeout
        self.count = 0

    def run(self, code: str):
        """Execute one cell, print input and output; returns the result's data (or raises on an error)."""
        self.count += 1
        prompt = f"In [{self.count}]: "
        print(prompt + textwrap.indent(code, " " * len(prompt))[len(prompt):])
        msg_id = self.client.execute(code)
        result, error = None, None
        deadline = time.monotonic() + self.timeout
        while True:
            msg = self.client.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                print(content["text"], end="")
            elif kind in ("execute_result", "display_data"):
                text = content["data"].get("text/plain", "")
                if kind == "execute_result":
                    result = content["data"]
                    print(f"Out[{self.count}]: " + text)
                else:
                    print(text)
            elif kind == "error":
                error = f"{content['ename']}: {content['evalue']}"
                print(error)
            elif kind == "status" and content["execution_state"] == "idle":
                break
        print()
        if error:
            raise LabrigError(f"cell {self.count} failed on the supervisor kernel: {error}")
        return result

    def close(self):
        self.client.stop_channels()


def run(record: dict) -> bool:
    """Drive the running cluster through its supervisor kernel; True when the plasma lit and all went safe."""
    console = Console(record["supervisor"]["connection_file"])
    try:
        result = None
        for cell in CELLS:
            data = console.run(cell)
            if cell.endswith("rig.langmuir.density()"):
                result = data
        density = float(result["text/plain"]) if result else 0.0
        return density > 1e18
    finally:
        console.close()

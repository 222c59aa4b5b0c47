"""Kernelspecs generated at install time from sys.executable (as ipykernel does).

`labrig kernel install RIG` installs `labrig-supervisor` and `labrig-<node>` for
every node; JupyterLab, `jupyter console --kernel labrig-supervisor` and nbclient
then start them like any kernel.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from jupyter_client.kernelspec import KernelSpecManager

from labrig.supervisor.rig import Rig

from labrig.supervisor.cluster import kernel_command


def kernelspecs(rig: Rig, rig_path: Path, *, state: Path | None = None, sim: bool = False) -> dict[str, dict]:
    env = {"LABRIG_STATE_DIR": str(state)} if state else {}
    specs = {"labrig-supervisor": {
        "argv": [sys.executable, *kernel_command("{connection_file}", str(rig_path), state)],
        "display_name": f"labrig supervisor ({rig.name})", "language": "python", "interrupt_mode": "signal",
        "env": env, "metadata": {"labrig": {"rig": str(rig_path), "role": "supervisor"}}}}
    for name in rig.nodes:
        specs[f"labrig-{name}"] = {
            "argv": [sys.executable, *kernel_command("{connection_file}", str(rig_path), state, node=name, sim=sim)],
            "display_name": f"labrig {name} ({rig.nodes[name].kind}, {rig.name})", "language": "python",
            "interrupt_mode": "signal", "env": env,
            "metadata": {"labrig": {"rig": str(rig_path), "role": "node", "node": name}}}
    return specs


def install_kernelspecs(rig_path: str | Path, *, user: bool = True, prefix: str | None = None,
                        state: Path | None = None, sim: bool = False) -> list[str]:
    rig_path = Path(rig_path).resolve()
    rig = Rig.load(rig_path)
    manager = KernelSpecManager()
    installed = []
    for name, spec in kernelspecs(rig, rig_path, state=state, sim=sim).items():
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "kernel.json").write_text(json.dumps(spec, indent=1))
            manager.install_kernel_spec(tmp, name, user=user and not prefix, prefix=prefix)
        installed.append(name)
    return installed

"""The supervisor kernel: the whole machine as `rig`.

    python -m labrig.kernels.supervisor -f CONNECTION_FILE --rig RIG [--state-dir D]
"""
from __future__ import annotations

from labrig.supervisor.state import state_dir

from .base import LabrigKernel, launch
from .rig_object import connect


class SupervisorKernel(LabrigKernel):
    implementation = "labrig-supervisor"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.rig = connect(self.rig_path, state_dir(self.state_dir or None))
        self.shell.user_ns["rig"] = self.rig
        self._enable_json_results()
        self._show_figures()
        self.shell.register_magic_function(self._status_magic, "line", "status")
        self.shell.register_magic_function(self._safe_magic, "line", "safe")

    def _status_magic(self, line=""):
        """%status: every node, runtime and kernel up or down, heartbeat age."""
        from IPython.display import display
        display(self.rig.status())

    def _safe_magic(self, line=""):
        """%safe: the emergency stop: every node safe at once."""
        for node, results in self.rig.safe().items():
            if "error" in results:
                print(f"{node:8} UNREACHABLE {results['error']}")
                continue
            bad = {k: v["error"] for k, v in results.items() if not v["ok"]}
            print(f"{node:8} {len(results) - len(bad)} outputs safe" + (f"; FAILED {bad}" if bad else ""))



if __name__ == "__main__":
    launch(SupervisorKernel, needs_node=False)

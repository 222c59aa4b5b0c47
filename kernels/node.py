"""The node kernel: the Jupyter face of one board.

It connects to the node's runtime (starting one when none runs; the runtime
outlives this kernel) and puts `node` into the namespace. Interrupting a cell
stops the cell, never the runtime; restarting or killing the kernel leaves the
runtime and a running ramp untouched. Magics: %status, %safe.

    python -m labrig.kernels.node -f CONNECTION_FILE --rig RIG --node NODE [--state-dir D] [--sim]
"""
from __future__ import annotations

from traitlets import Unicode

from labrig.supervisor.rig import Rig
from labrig.supervisor.runtime.locate import ensure_runtime
from labrig.supervisor.state import state_dir

from .base import LabrigKernel, launch
from .node_object import Node


class NodeKernel(LabrigKernel):
    implementation = "labrig-node"
    node_name = Unicode("", config=True, help="The node this kernel faces.")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        directory = state_dir(self.state_dir or None)
        rig = Rig.load(self.rig_path)
        record = ensure_runtime(self.rig_path, self.node_name, directory, sim=self.sim)
        self.node = Node(rig, self.node_name, record["endpoint"], client=f"kernel-{self.node_name}")
        self.shell.user_ns["node"] = self.node
        self._enable_json_results()
        self.shell.register_magic_function(self._status_magic, "line", "status")
        self.shell.register_magic_function(self._safe_magic, "line", "safe")

    def _status_magic(self, line=""):
        """%status: this node's signals, values, setpoints, limits and trips."""
        from IPython.display import display
        display(self.node.status())

    def _safe_magic(self, line=""):
        """%safe: drive this node's outputs to their safe values now."""
        results = self.node.safe()
        for name, result in results.items():
            print(f"{name:20} {'safe' if result['ok'] else 'FAILED'} "
                  f"{'' if result['value'] is None else result['value']} {result.get('error', '')}")



if __name__ == "__main__":
    launch(NodeKernel, needs_node=True)

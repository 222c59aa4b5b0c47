"""The node kernel: the Jupyter face of one board.

It connects to the node's runtime (starting one when none runs; the runtime
outlives this kernel) and puts `node` into the namespace. Interrupting a cell
stops the cell, never the runtime; restarting or killing the kernel leaves the
runtime and a running ramp untouched. Magics: %status, %safe.

Comm target "labrig.node": a frontend (a widget, a dashboard) opens a comm on it and
sends {"op": "read", "signal": NAME}; the answer is {"value": V} or {"error": TEXT}.
Reads go to the runtime like `node[NAME].read()`, without running code in a cell.

    python -m labrig.kernels.node -f CONNECTION_FILE --rig RIG --node NODE [--state-dir D] [--sim]
"""
from __future__ import annotations

from traitlets import Unicode

from labrig.supervisor.rig import Rig
from labrig.supervisor.runtime.locate import ensure_runtime
from labrig.supervisor.state import state_dir

from .base import LabrigKernel, launch
from .node_object import Node


COMM_TARGET = "labrig.node"


class NodeKernel(LabrigKernel):
    implementation = "labrig-node"
    node_name = Unicode("", config=True, help="The node this kernel faces.")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        directory = state_dir(self.state_dir or None)
        rig = Rig.load(self.rig_path)
        ensure_runtime(self.rig_path, self.node_name, directory, sim=self.sim)
        self.node = Node(rig, self.node_name, directory, client=f"kernel-{self.node_name}")
        self.shell.user_ns["node"] = self.node
        self._enable_json_results()
        self._show_figures()
        self.shell.register_magic_function(self._status_magic, "line", "status")
        self.shell.register_magic_function(self._safe_magic, "line", "safe")
        self.comm_manager.register_target(COMM_TARGET, self._open_comm)

    def _open_comm(self, comm, open_msg):
        comm.on_msg(lambda msg: comm.send(self._comm_request(msg["content"]["data"])))

    def _comm_request(self, data) -> dict:
        """One comm request, answered with {"value": ...} or {"error": "..."}: the frontend waits for an answer."""
        op = data.get("op") if isinstance(data, dict) else None
        if op != "read":
            return {"error": f"unknown op {op!r} on comm {COMM_TARGET!r}; allowed: 'read'"}
        try:
            return {"value": self.node.read(data.get("signal"))}
        except Exception as exc:  # unknown signal, dead link, runtime down: answered, typed, like the runtime does
            return {"error": f"{type(exc).__name__}: {exc}"}

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

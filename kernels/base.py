"""What both labrig kernels share: launch, the JSON result formatter, magics plumbing."""
from __future__ import annotations

import argparse
import json
import sys

from IPython.core.formatters import BaseFormatter
from ipykernel.ipkernel import IPythonKernel
from traitlets import Bool, ObjectName, Unicode

import labrig


VALUE_MIME = "application/vnd.labrig.value+json"


def _jsonable(obj):
    """Plain data and numpy arrays as JSON values, so `rig.nodes[...].execute()` returns values."""
    try:
        import numpy as np
        if isinstance(obj, np.ndarray):
            obj = obj.tolist()
        elif isinstance(obj, np.generic):
            obj = obj.item()
    except ImportError:
        pass
    try:
        json.dumps(obj, allow_nan=False)
    except (TypeError, ValueError):
        return None
    return obj


class ValueFormatter(BaseFormatter):
    format_type = Unicode(VALUE_MIME)
    _return_type = (int, float, bool, list, dict, str)
    print_method = ObjectName("_repr_labrig_value_")


class LabrigKernel(IPythonKernel):
    rig_path = Unicode("", config=True, help="The rig file.")
    state_dir = Unicode("", config=True, help="labrig's state directory (pids, endpoints).")
    sim = Bool(False, config=True, help="Use the simulators for nodes whose runtime this kernel starts.")
    implementation_version = labrig.__version__
    language_info = {**IPythonKernel.language_info}

    def _enable_json_results(self):
        """Add a private mimetype carrying results as JSON (frontends ignore it and show text/plain)."""
        formatter = ValueFormatter(parent=self.shell.display_formatter)
        self.shell.display_formatter.formatters[VALUE_MIME] = formatter
        for kind in (int, float, bool, list, tuple, dict, str):
            formatter.for_type(kind, _jsonable)
        try:
            import numpy as np
            formatter.for_type(np.ndarray, _jsonable)
            formatter.for_type(np.generic, _jsonable)
        except ImportError:
            pass


    def _show_figures(self):
        """matplotlib Figures (plan.plot(), shot.overview()) display as PNG, with or without pyplot: labrig
        draws with the object API so a plot in a kernel thread never touches pyplot's global state."""
        try:
            from matplotlib_inline.backend_inline import select_figure_formats
        except ImportError:  # no matplotlib: nothing to show
            return
        select_figure_formats(self.shell, {"png"}, bbox_inches="tight")


def launch(kernel_class, argv: list[str] | None = None, *, needs_node: bool) -> None:
    """`python -m labrig.kernels.X -f CONNECTION_FILE --rig RIG [--node N] [--state-dir D] [--sim]`."""
    from ipykernel.kernelapp import IPKernelApp
    from traitlets.config import Config
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--rig", required=True)
    if needs_node:
        parser.add_argument("--node", required=True)
    parser.add_argument("--state-dir", default="")
    parser.add_argument("--sim", action="store_true")
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    config = Config()
    section = config[kernel_class.__name__]
    section.rig_path = args.rig
    section.state_dir = args.state_dir
    section.sim = args.sim
    if needs_node:
        section.node_name = args.node
    IPKernelApp.launch_instance(argv=rest, kernel_class=kernel_class, config=config)

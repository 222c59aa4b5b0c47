"""The FPGA modules through pyrpl's own objects (`Fpga(client, backend="pyrpl")`).

labrig checks names and ranges first (fpga.py), then sets pyrpl's attributes, so a
configuration means the same on both paths. pyrpl attaches to a monitor server that
already runs (the board's, or the simulator's): it is started in pyrpl's "no board"
mode (hostname "_NONE_": no ssh, no bitfile upload), pointed at the port, and its own
startclient() builds every hardware module. pyrpl needs a Qt binding (offscreen is
enough) and writes a user directory (PYRPL_USER_DIR); its socket has a 1 s timeout
and its own retries, so its I/O is bounded by pyrpl, not by labrig.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any

from ..errors import ConfigError

# labrig's names -> pyrpl's, where they differ
PYRPL_NAMES = {"output": "output_direct", "trigger": "trigger_source"}


def open_pyrpl_board(host: str, port: int):
    """pyrpl's RedPitaya object on a running monitor server, without ssh."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    try:
        from pyrpl import redpitaya
    except ImportError as exc:
        raise ConfigError(f"the pyrpl FPGA backend needs pyrpl (pip install 'pyrpl[qt-pyqt5]'): {exc}") from None
    saved = dict(redpitaya.defaultparameters)  # RedPitaya() changes these module defaults in place
    try:
        board = redpitaya.RedPitaya(hostname="_NONE_", gui=False, silence_env=True)
        board.parameters.update(hostname=host, port=int(port))
        board.modules = OrderedDict()  # "_NONE_" leaves a list here
        board.parent = board  # what a normal start sets last
        board.startclient()
    finally:
        redpitaya.defaultparameters.clear()
        redpitaya.defaultparameters.update(saved)
    return board


class PyrplBackend:
    def __init__(self, host: str, port: int, *, name: str = ""):
        self.host, self.port, self.name = host, port, name
        self._board = None
        self._lock = threading.Lock()  # pyrpl's client is not thread-safe

    def _module(self, module):
        if self._board is None:
            self._board = open_pyrpl_board(self.host, self.port)
        return getattr(self._board, module.name)

    def configure(self, module, values: dict[str, Any]) -> None:
        with self._lock:
            mod = self._module(module)
            settings = {PYRPL_NAMES.get(k, k): v for k, v in values.items() if k != "on"}
            if module.kind == "asg":
                settings.setdefault("trigger_source", "immediately")  # as fpga.RegisterBackend
            setup = {k: v for k, v in settings.items() if k in mod._setup_attributes}
            for key, value in settings.items():
                if key not in setup:
                    setattr(mod, key, value)  # e.g. a PID's ival: not one of pyrpl's setup attributes
            mod.setup(**setup)
            if module.kind in ("iq", "asg"):
                mod.on = values.get("on", True)

    def state(self, module) -> dict[str, Any]:
        with self._lock:
            mod = self._module(module)
            state = {name: getattr(mod, PYRPL_NAMES.get(name, name)) for name in module.params}
        if module.kind == "iq" and not isinstance(state["bandwidth"], list):
            state["bandwidth"] = [state["bandwidth"]]  # pyrpl gives one stage as a bare number
        return {k: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
                for k, v in state.items()}

    def reset(self, module) -> None:
        with self._lock:
            mod = self._module(module)
            if module.kind == "pid":
                mod.ival = 0
            elif module.kind == "iq":
                was = mod.on
                mod.on = False
                mod.on = was
            else:
                mod.sm_reset = True
                mod.sm_reset = False

    def close(self) -> None:
        with self._lock:
            board, self._board = self._board, None
        if board is not None and board.client is not None:
            board.client.close()

"""A systemd unit for a node runtime on a real board.

The runtime restarts on failure; while it is down, the board's own watchdogs
(Arduino firmware, PLC watchdog word, the Pi's charge-pump relay) hold it safe.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path


def unit_text(rig: Path, node: str, *, user: str = "labrig", bind: str = "127.0.0.1", port: int = 5555,
              curve_keys: str | None = None, python: str | None = None) -> str:
    args = [python or sys.executable, "-m", "labrig.supervisor.cli", "node", "serve", str(rig), node,
            "--bind", bind, "--port", str(port), "--state-dir", "/run/labrig"]
    if curve_keys:
        args += ["--curve-keys", curve_keys]
    return f"""[Unit]
Description=labrig node runtime {node} ({rig.name})
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User={user}
RuntimeDirectory=labrig
RuntimeDirectoryPreserve=yes
ExecStart={shlex.join(args)}
# above interactive work (kernels, notebooks) on the same board: loops and ramps keep their timing
Nice=-5
# the control loops' timing thread asks for SCHED_FIFO (supervisor/runtime/loops.py)
AmbientCapabilities=CAP_SYS_NICE
Restart=on-failure
RestartSec=1
KillSignal=SIGTERM
TimeoutStopSec=10

[Install]
WantedBy=multi-user.target
"""

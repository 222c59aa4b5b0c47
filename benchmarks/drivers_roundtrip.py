"""Round trip of one driver read against its simulator, beside the raw transport floor.

    python benchmarks/drivers_roundtrip.py [--n 500]

Starts the simulated ISHTAR testbed (separate processes, as in production), then
per bus times `driver.read(signal)` N times. The baseline, measured in the same
run, is the bare transport: a TCP echo and a pty echo served by another process,
one small message per round trip. One line per figure:

    figure: drivers_<bus>_read_p50 VALUE ms baseline VALUE ratio R
"""
from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tty
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# bus -> (node, signal read)
READS = {"arduino": ("ard1", "langmuir_I"), "redpitaya": ("rp1", "rf_reflected"), "simatic": ("plc1", "coil_current"),
         "rpi": ("pi1", "door_switch"), "visa": ("gauge1", "pressure")}
TRANSPORT = {"arduino": "pty", "redpitaya": "tcp", "simatic": "tcp", "rpi": "tcp", "visa": "tcp"}


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def timed(fn, n):
    for _ in range(min(20, n)):
        fn()  # warm up
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


# -- the baseline: echo servers in their own process ---------------------------
def serve_echo() -> None:
    """Child process: a TCP echo and a pty echo; prints 'PORT PTYPATH' then serves until stdin closes."""
    listener = socket.create_server(("127.0.0.1", 0))
    main_fd, follower_fd = os.openpty()
    tty.setraw(follower_fd)
    tty.setraw(main_fd)
    print(listener.getsockname()[1], os.ttyname(follower_fd), flush=True)

    def tcp():
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := conn.recv(4096):
            conn.sendall(data)

    threading.Thread(target=tcp, daemon=True).start()

    def pty_echo():
        while True:
            data = os.read(main_fd, 4096)
            os.write(main_fd, data)

    threading.Thread(target=pty_echo, daemon=True).start()
    sys.stdin.read()


def baselines(n):
    child = subprocess.Popen([sys.executable, __file__, "--echo-server"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        port, pty_path = child.stdout.readline().split()
        sock = socket.create_connection(("127.0.0.1", int(port)), timeout=2)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        msg = b"MEAS:PRES?\n"

        def tcp_echo():
            sock.sendall(msg)
            got = b""
            while len(got) < len(msg):
                got += sock.recv(64)

        fd = os.open(pty_path, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(fd)
        frame = bytes(8)

        def pty_echo():
            os.write(fd, frame)
            got = b""
            while len(got) < len(frame):
                select.select([fd], [], [], 1.0)
                got += os.read(fd, 64)

        result = {"tcp": timed(tcp_echo, n), "pty": timed(pty_echo, n)}
        sock.close()
        os.close(fd)
        return result
    finally:
        child.stdin.close()
        child.wait(5)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500, help="reads per bus")
    parser.add_argument("--echo-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # SIGTERM (a timeout, Ctrl-C from a supervisor) ends the run through its `finally` blocks,
    # which stop the testbeds and clusters it started in their own sessions
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.echo_server:
        serve_echo()
        return 0

    sys.path.insert(0, str(ROOT))
    from labrig.supervisor.rig import Rig
    from labrig.supervisor.testbed import start_testbed, stop_testbed

    rig = Rig.load(ROOT / "examples" / "ishtar" / "rig.toml")
    floor = baselines(args.n)
    with tempfile.TemporaryDirectory(prefix="labrig-bench-") as state:
        record = start_testbed(rig, directory=Path(state))
        try:
            for bus, (node, name) in READS.items():
                with rig.open_driver(node, sim=True, sim_state=record) as drv:
                    ours = timed(lambda: drv.read(name), args.n)
                base = floor[TRANSPORT[bus]]
                for q, label in ((50, "p50"), (99, "p99")):
                    o, b = percentile(ours, q), percentile(base, q)
                    print(f"figure: drivers_{bus}_read_{label} {o:.4g} ms baseline {b:.4g} ratio {o / b:.3g}",
                          flush=True)
        finally:
            stop_testbed(Path(state))
    return 0


if __name__ == "__main__":
    sys.exit(main())

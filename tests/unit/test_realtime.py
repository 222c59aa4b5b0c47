"""Real-time scheduling of a node's processes (supervisor/realtime.py), in child processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from labrig.drivers.errors import ConfigError
from labrig.supervisor.rig import Rig

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="setting SCHED_FIFO, or dropping to nobody, needs root")

THREADS = """
import json, os, threading
from labrig.supervisor.realtime import scheduling, use_realtime
before, hold = threading.Event(), threading.Event()
threading.Thread(target=lambda: (before.set(), hold.wait(10)), daemon=True).start()  # a thread already running
before.wait(10)
{prelude}
got = use_realtime(7, what="node test")
after = threading.Thread(target=hold.wait, args=(10,), daemon=True)  # a thread started later
after.start()
tasks = [int(t) for t in os.listdir("/proc/self/task")]
policies = [(os.sched_getscheduler(t), os.sched_getparam(t).sched_priority) for t in tasks]
print(json.dumps({{"got": got, "policies": policies, "shown": scheduling()}}))
hold.set()
"""


def child(prelude: str = "") -> dict:
    done = subprocess.run([sys.executable, "-c", THREADS.format(prelude=prelude)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@needs_root
def test_every_thread_runs_under_sched_fifo_at_the_priority_asked():
    out = child()
    assert out["got"] == {"priority": 7, "policy": "SCHED_FIFO"}
    assert len(out["policies"]) >= 3  # main, the one before, the one after
    assert all(p == [os.SCHED_FIFO, 7] for p in out["policies"]), out["policies"]
    assert out["shown"] == {"policy": "SCHED_FIFO", "priority": 7}


@needs_root
def test_a_process_without_the_right_says_why_and_runs_at_normal_priority():
    out = child("os.setgid(65534); os.setuid(65534)  # nobody: no CAP_SYS_NICE")
    assert out["got"]["priority"] is None
    assert "SCHED_FIFO priority 7 refused" in out["got"]["refused"] and "CAP_SYS_NICE" in out["got"]["refused"]
    assert all(p == [os.SCHED_OTHER, 0] for p in out["policies"])
    assert out["shown"] == {"policy": "normal", "priority": None}


def test_a_realtime_priority_outside_1_to_99_is_refused():
    from labrig.supervisor.realtime import use_realtime
    with pytest.raises(ValueError, match="outside 1..99"):
        use_realtime(0, what="node pi1")
    text = ('schema_version = 1\nname = "t"\n[nodes.pi1]\nkind = "rpi"\nconnection = "sim:"\nrealtime = {}\n'
            '[signals.door]\nnode = "pi1"\nchannel = "GPIO17"\n')
    assert Rig.from_text(text.format(20)).node("pi1").realtime == 20
    with pytest.raises(ConfigError, match="realtime"):
        Rig.from_text(text.format(100))

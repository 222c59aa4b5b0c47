"""Real-time scheduling for a node's processes (the rig file's `realtime = PRIORITY` on a node).

A node runtime that runs step scans or fast loops, and the simulator that stands in for its
board, ask Linux for SCHED_FIFO at that priority: their threads then run as soon as they are
runnable instead of waiting for a core behind ordinary processes, which is what stalls a
1 ms step on a loaded host. Every thread of the process gets the policy (threads started
later inherit it), since a Python thread that holds the GIL must get a core too.

Linux's real-time throttling (kernel.sched_rt_runtime_us, 95 % by default) keeps a runaway
real-time thread from locking the host out. Without root or CAP_SYS_NICE the request is refused:
the process says so and runs at normal priority; nothing else changes.
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger("labrig.realtime")

POLICY = "SCHED_FIFO"


def use_realtime(priority: int | None, *, what: str) -> dict:
    """Put every thread of this process under SCHED_FIFO at `priority` (1..99; None: leave it).
    Returns {"priority": p, "policy": "SCHED_FIFO"} on success, {"priority": None, "refused": why}
    when Linux refused, {} when none was asked."""
    if priority is None:
        return {}
    if not 1 <= int(priority) <= 99:
        raise ValueError(f"{what}: realtime priority {priority} is outside 1..99")
    param = os.sched_param(int(priority))
    try:
        tasks = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # not Linux's /proc: the calling thread alone
        tasks = [0]
    try:
        for task in tasks:
            try:
                os.sched_setscheduler(task, os.SCHED_FIFO, param)
            except ProcessLookupError:  # a thread that ended meanwhile
                continue
    except (PermissionError, AttributeError, OSError) as exc:
        why = (f"{POLICY} priority {priority} refused ({exc}); running at normal priority "
               "(needs root or CAP_SYS_NICE)")
        log.warning("%s: %s", what, why)
        return {"priority": None, "refused": why}
    log.info("%s: %s priority %d", what, POLICY, priority)
    return {"priority": int(priority), "policy": POLICY}


def scheduling() -> dict:
    """This process's scheduling as `labrig status` shows it."""
    try:
        policy = os.sched_getscheduler(0)
        return {"policy": {os.SCHED_FIFO: "SCHED_FIFO", os.SCHED_RR: "SCHED_RR"}.get(policy, "normal"),
                "priority": os.sched_getparam(0).sched_priority or None}
    except (AttributeError, OSError):
        return {"policy": "unknown", "priority": None}

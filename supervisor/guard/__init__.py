"""The supervisor's guard: the cross-node layer of labrig's safety (one process per rig).

It holds a lease on every node runtime, reads the signals its interlocks need, and
trips the interlocks that span nodes or need a node alive (`rp1.online`): the
forced outputs go safe on their own nodes, latched there until the guard re-arms
them. It runs in its own process (`labrig guard RIG`, started by `labrig up`),
never in a kernel: a busy cell must not delay a trip (DESIGN.md, decision 1).
"""
from .guard import Guard
from .main import GUARD_STATE, guard_record, serve_guard

__all__ = ["Guard", "GUARD_STATE", "guard_record", "serve_guard"]

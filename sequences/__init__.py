"""Sequences: a discharge described on a timeline, checked against the rig, split per node.

    from labrig.sequences import sequence, Param
    from labrig.sequences.library import discharge

    plan = discharge(power=800, b_field=0.08).compile(rig)   # every limit, slew and interlock checked
    plan.summary(); plan.plot()                              # the dry run: nothing touches hardware
    plan.tables["rp1"]                                       # what node rp1's step-table executor runs
"""
from .compile import compile_timeline
from .params import Param
from .plan import Plan
from .sequence import Sequence, sequence
from .timeline import MAX, Block, Step, Timeline

__all__ = ["sequence", "Sequence", "Param", "Timeline", "Step", "Block", "MAX", "Plan", "compile_timeline"]

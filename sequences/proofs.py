"""What a plan can prove about a condition before it runs: three-valued logic over intervals.

A planned output is known exactly at every instant (a point interval); an input
is unknown (-inf, inf) except at the instant a wait_until on it ends, when the
wait's own condition holds (its comparisons with numbers narrow the input's
interval). `holds(source, known)` says True (holds for every value still
possible), False (fails for every one) or None (cannot tell). The compiler
refuses a plan only on False: only what is certain is refused.
"""
from __future__ import annotations

import ast
import functools
import math
import operator
from typing import Mapping

INF = math.inf
Interval = tuple[float, float]
UNKNOWN: Interval = (-INF, INF)


def holds(source: str, known: Mapping[str, Interval]) -> bool | None:
    return _truth(_eval(_parse(source).body, known))


@functools.lru_cache(maxsize=256)
def _parse(source: str) -> ast.Expression:
    return ast.parse(source, mode="eval")


def facts(source: str) -> dict[str, Interval]:
    """Intervals a condition pins when it holds: its top-level `and` of `name op number` comparisons."""
    body = _parse(source).body
    terms = body.values if isinstance(body, ast.BoolOp) and isinstance(body.op, ast.And) else [body]
    out: dict[str, Interval] = {}
    for term in terms:
        if not isinstance(term, ast.Compare):
            continue
        items = [term.left, *term.comparators]
        for left, op, right in zip(items, term.ops, items[1:]):
            for name, bound, flipped in ((_name(left), _const(right), False), (_name(right), _const(left), True)):
                if name is None or bound is None:
                    continue
                lo, hi = out.get(name, UNKNOWN)
                kind = type(op)
                if flipped:  # 5 > p  is  p < 5
                    kind = {ast.Lt: ast.Gt, ast.LtE: ast.GtE, ast.Gt: ast.Lt, ast.GtE: ast.LtE}.get(kind, kind)
                if kind in (ast.Lt, ast.LtE):
                    hi = min(hi, bound)  # closed: p < 5 is kept as p <= 5 (a superset: refusals stay sound)
                elif kind in (ast.Gt, ast.GtE):
                    lo = max(lo, bound)
                elif kind is ast.Eq:
                    lo, hi = max(lo, bound), min(hi, bound)
                out[name] = (lo, hi)
    return out


def constants(source: str) -> list[float]:
    """The numbers a condition compares with: where a ramp may cross from holding to failing."""
    found = {_const(n) for n in ast.walk(_parse(source)) if isinstance(n, (ast.Constant, ast.UnaryOp))}
    return sorted(v for v in found if v is not None)  # -50 is USub(50): both are kept, harmlessly


def _name(node) -> str | None:
    if isinstance(node, ast.Name) and node.id not in ("True", "False"):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return f"{node.value.id}.{node.attr}"
    return None


def _const(node) -> float | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _const(node.operand)
        return None if inner is None else -inner
    return None


# -- evaluation: a value is an Interval, or a truth (True/False/None) --------------------
def _eval(node, known):
    if isinstance(node, ast.BoolOp):
        values = [_truth(_eval(v, known)) for v in node.values]
        if isinstance(node.op, ast.And):
            return False if False in values else (None if None in values else True)
        return True if True in values else (None if None in values else False)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        inner = _truth(_eval(node.operand, known))
        return None if inner is None else not inner
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        lo, hi = _interval(_eval(node.operand, known))
        return (-hi, -lo)
    if isinstance(node, ast.Compare):
        items = [_interval(_eval(n, known)) for n in (node.left, *node.comparators)]
        parts = [_compare(type(op), a, b) for op, a, b in zip(node.ops, items, items[1:])]
        return False if False in parts else (None if None in parts else True)
    if isinstance(node, ast.BinOp):
        return _arith(type(node.op), _interval(_eval(node.left, known)), _interval(_eval(node.right, known)))
    if isinstance(node, ast.Constant):
        value = float(node.value)
        return (value, value)
    name = _name(node)
    if name is not None:
        return known.get(name, UNKNOWN)
    if isinstance(node, ast.Name):  # True / False
        value = float(node.id == "True")
        return (value, value)
    return UNKNOWN


def _interval(value) -> Interval:
    if isinstance(value, tuple):
        return value
    return UNKNOWN if value is None else (float(value), float(value))


def _truth(value) -> bool | None:
    if not isinstance(value, tuple):
        return value
    lo, hi = value
    if lo == hi == 0:
        return False
    return True if lo > 0 or hi < 0 else None


def _compare(op, a: Interval, b: Interval) -> bool | None:
    (a1, a2), (b1, b2) = a, b
    if op is ast.Gt:
        return _compare(ast.Lt, b, a)
    if op is ast.GtE:
        return _compare(ast.LtE, b, a)
    if op is ast.Lt:
        return True if a2 < b1 else (False if a1 >= b2 else None)
    if op is ast.LtE:
        return True if a2 <= b1 else (False if a1 > b2 else None)
    if op in (ast.Eq, ast.NotEq):
        equal = True if a1 == a2 == b1 == b2 else (False if a2 < b1 or a1 > b2 else None)
        return equal if op is ast.Eq or equal is None else not equal
    return None


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _arith(op, a: Interval, b: Interval) -> Interval:
    if op is ast.Div:
        if b[0] <= 0 <= b[1]:
            return UNKNOWN
        b = (1 / b[1], 1 / b[0])
        op = ast.Mult
    if op is ast.Sub:
        b, op = (-b[1], -b[0]), ast.Add
    fn = _OPS.get(op)
    if fn is None:
        return UNKNOWN
    with_nan = [fn(x, y) for x in a for y in b]
    corners = [c for c in with_nan if not math.isnan(c)]  # 0 * inf: the interval is unbounded anyway
    if len(corners) < len(with_nan):
        return UNKNOWN
    return (min(corners), max(corners))

"""Conditions over signals, as interlocks and wait-untils write them.

    "pressure < 5 and door_closed == 1"
    "0.05 <= pressure <= 2 and not rf_reflected > 300"

Only comparisons, `and`/`or`/`not`, numbers, True/False, signal names and
`NODE.online` (whether the supervisor's guard reaches that node's runtime) are
allowed; anything else (calls, attributes, arithmetic on strings) is refused
when the rig file is loaded, not when the interlock fires.
"""
from __future__ import annotations

import ast
import math
import operator
from dataclasses import dataclass
from typing import Callable, Mapping

from labrig.drivers.errors import ConfigError

ONLINE = "online"  # `rp1.online`: the only attribute a condition may name

_COMPARE = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
            ast.Eq: operator.eq, ast.NotEq: operator.ne}
_ARITH = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


@dataclass(frozen=True)
class Condition:
    source: str
    signals: tuple[str, ...]
    _fn: Callable[[Mapping[str, float]], bool]

    def __call__(self, values: Mapping[str, float]) -> bool:
        """True when the condition holds. A NaN or missing value never satisfies it."""
        try:
            return bool(self._fn(values))
        except (KeyError, TypeError, ZeroDivisionError):
            return False

    def __str__(self):
        return self.source


def compile_condition(source: str) -> Condition:
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise ConfigError(f"condition {source!r} is not valid: {exc.msg}") from None
    names: list[str] = []
    fn = _compile(tree.body, source, names)
    return Condition(source.strip(), tuple(dict.fromkeys(names)), fn)


def _compile(node, source, names):
    if isinstance(node, ast.BoolOp):
        parts = [_compile(v, source, names) for v in node.values]
        if isinstance(node.op, ast.And):
            return lambda v: all(p(v) for p in parts)
        return lambda v: any(p(v) for p in parts)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        inner = _compile(node.operand, source, names)
        return lambda v: not inner(v)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _compile(node.operand, source, names)
        return lambda v: -inner(v)
    if isinstance(node, ast.Compare):
        terms = [_compile(node.left, source, names)] + [_compile(c, source, names) for c in node.comparators]
        ops = [_COMPARE.get(type(op)) for op in node.ops]
        if None in ops:
            raise ConfigError(f"condition {source!r}: only <, <=, >, >=, ==, != compare")

        def compare(v):
            values = [t(v) for t in terms]
            if any(isinstance(x, float) and math.isnan(x) for x in values):
                return False
            return all(op(a, b) for op, a, b in zip(ops, values, values[1:]))
        return compare
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
        left, right, op = _compile(node.left, source, names), _compile(node.right, source, names), _ARITH[type(node.op)]
        return lambda v: op(left(v), right(v))
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, bool)):
        value = float(node.value)
        return lambda v: value
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.attr == ONLINE and isinstance(node.ctx, ast.Load)):
        name = f"{node.value.id}.{ONLINE}"  # 1 while the supervisor's guard reaches that node's runtime
        names.append(name)
        return lambda v: float(v[name])
    if isinstance(node, ast.Name):
        if node.id in ("True", "False"):
            value = float(node.id == "True")
            return lambda v: value
        names.append(node.id)
        name = node.id
        return lambda v: float(v[name])
    raise ConfigError(f"condition {source!r}: {ast.unparse(node)!r} is not allowed; use signal names, "
                      "numbers, NODE.online, comparisons, + - * /, and/or/not")

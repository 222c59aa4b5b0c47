"""`@sequence`: a Python function with typed, documented parameters that describes a discharge.

    @sequence
    def puff(tl, flow: Annotated[float, Param("sccm", (0, 40), "gas flow of the puff")] = 10):
        "A short gas puff."
        tl.pulse("gas_flow", flow, width=0.1, rate="max")

    plan = puff(flow=20).compile(rig)     # calling checks the parameters, then builds the timeline

The function's first parameter receives the Timeline; the others are the
sequence's parameters. A call with a value outside a parameter's type, unit or
range raises ConfigError/RangeError naming the parameter, its unit and its range,
before any step is built.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import typing

from labrig.drivers.errors import ConfigError

from .params import Param
from .timeline import Timeline


def sequence(fn=None, *, name: str | None = None):
    """Decorate a function `f(tl, **params)` into a Sequence."""
    if fn is None:
        return lambda f: Sequence(f, name=name)
    return Sequence(fn, name=name)


class Sequence:
    def __init__(self, fn, *, name: str | None = None):
        self.fn = fn
        self.name = name or fn.__name__
        signature = inspect.signature(fn, eval_str=True)
        parameters = list(signature.parameters.values())
        if not parameters or parameters[0].kind not in (inspect.Parameter.POSITIONAL_ONLY,
                                                        inspect.Parameter.POSITIONAL_OR_KEYWORD):
            raise ConfigError(f"sequence {self.name}: its first parameter receives the timeline: def {self.name}(tl, ...)")
        self.params: dict[str, Param | None] = {}
        self.defaults: dict[str, object] = {}
        for p in parameters[1:]:
            if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                raise ConfigError(f"sequence {self.name}: *{p.name} is not allowed: every parameter is named and documented")
            self.params[p.name] = _param_of(p.annotation)
            if p.default is not inspect.Parameter.empty:
                self.defaults[p.name] = p.default
        self.signature = signature.replace(parameters=parameters[1:])
        try:
            self.source = inspect.getsource(fn)
        except (OSError, TypeError):  # no source (a function made with exec): its code stands for it
            self.source = f"{fn.__code__.co_code.hex()} {fn.__code__.co_consts!r}"
        functools.update_wrapper(self, fn)
        self.__signature__ = self.signature  # help() and `discharge?` show the parameters, not the timeline
        self.__doc__ = self.describe()

    def __repr__(self) -> str:
        return f"<sequence {self.name}{self.signature}>"

    def describe(self) -> str:
        """The docstring and a table of the parameters (default, type, unit, range, doc)."""
        lines = [inspect.cleandoc(self.fn.__doc__ or self.name), "", "Parameters:"]
        for name, param in self.params.items():
            default = self.defaults.get(name, "(required)")
            spec = param.describe() if param else ""
            unit = f" {param.unit}" if param and param.unit and name in self.defaults else ""
            lines.append(f"  {name} = {default!r}{unit}  ({spec})" + (f": {param.doc}" if param and param.doc else ""))
        return "\n".join(lines)

    def check(self, *args, **kwargs) -> dict:
        """The parameters this call would run with, checked and converted."""
        try:
            bound = self.signature.bind_partial(*args, **kwargs)
        except TypeError as exc:
            raise ConfigError(f"{self.name}: {exc}; parameters: {', '.join(self.params)}") from None
        values = {}
        for name in self.params:
            if name in bound.arguments:
                value = bound.arguments[name]
            elif name in self.defaults:
                value = self.defaults[name]
            else:
                raise ConfigError(f"{self.name}: parameter {name} is required ({self.params[name].describe()})"
                                  if self.params[name] else f"{self.name}: parameter {name} is required")
            param = self.params[name]
            values[name] = param.check(name, value, owner=self.name) if param else value
        return values

    def __call__(self, *args, **kwargs) -> Timeline:
        """Check the parameters and build the timeline (nothing is compiled or run yet)."""
        values = self.check(*args, **kwargs)
        units = {n: p.unit for n, p in self.params.items() if p and p.unit}
        tl = Timeline(self.name, params=values, source=self.source, units=units)
        self.fn(tl, **values)
        return tl


def source_hash(name: str, source: str, params: dict, steps: str = "") -> str:
    """sha256 of what decides a shot's plan: the sequence's source and its parameters."""
    text = json.dumps({"sequence": name, "source": source, "params": params, "steps": steps},
                      sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def _param_of(annotation) -> Param | None:
    if isinstance(annotation, Param):
        return annotation
    if typing.get_origin(annotation) is typing.Annotated:
        base, *extra = typing.get_args(annotation)
        for item in extra:
            if isinstance(item, Param):
                return item if item.type is base or not isinstance(base, type) else \
                    Param(item.unit, item.range, item.doc, base)
        return Param(type=base) if base in (float, int, bool, str) else None
    if annotation in (float, int, bool, str):
        return Param(type=annotation)
    return None

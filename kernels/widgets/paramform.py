"""A form generated from a sequence's signature: one field per parameter, checked by the parameter itself.

    form = ParamForm(discharge)
    form.fields["power"].control.value = 800      # what the browser does
    form.values()                                 # {"power": 800.0, ...}, checked; or a LabrigError naming it
    form.widget

Each field shows the parameter's name, its unit, its range and its default, with its doc as
the tooltip: a FloatText or IntText for numbers, a Checkbox for a bool, a text field for the
rest (a tuple as comma-separated items). Numbers are not bounded by the widget: a bounded
widget would clamp 2000 W to 1200 W without a word, where the parameter's own check says
what is wrong ("discharge: parameter power = 2000 W is outside its range [0, 1200] W"), beside
the field, at once.
"""
from __future__ import annotations

import ast
import html
import inspect
from typing import Any

import ipywidgets as w

from labrig.drivers.errors import ConfigError, LabrigError

from .lights import RED

DESCRIPTION_WIDTH = "110px"


def error_text(exc: BaseException) -> str:
    """What a person reads about a refusal: the message of a labrig error, the type too for anything else."""
    return str(exc) if isinstance(exc, LabrigError) else f"{type(exc).__name__}: {exc}"


class Field:
    """One parameter: its control, what it accepts (the Param, or None), and the line that says what is wrong."""

    def __init__(self, sequence, name: str):
        self.sequence, self.name = sequence, name
        self.param = sequence.params.get(name)
        self.has_default = name in sequence.defaults
        default = sequence.defaults.get(name)
        kind = self.param.type if self.param else type(default) if self.has_default else str
        self.kind = kind
        tip = self._tooltip(default)
        common = dict(description=name, tooltip=tip, style={"description_width": DESCRIPTION_WIDTH},
                      layout=w.Layout(width="300px"))
        if kind is bool and self.has_default:
            self.control = w.Checkbox(value=bool(default), indent=False, description=name, tooltip=tip,
                                      layout=w.Layout(width="300px"))
        elif kind is float and isinstance(default, (int, float)) and not isinstance(default, bool):
            self.control = w.FloatText(value=float(default), **common)
        elif kind is int and isinstance(default, int) and not isinstance(default, bool):
            self.control = w.IntText(value=default, **common)
        else:  # text: str, tuple, an unannotated value, or a parameter with no default (empty = not given)
            self.control = w.Text(value=self._as_text(default) if self.has_default else "",
                                  placeholder="required" if not self.has_default else "", **common)
        self.unit = w.HTML(self._hint(), layout=w.Layout(width="190px"), tooltip=tip)
        self.error = w.HTML("", layout=w.Layout(width="auto"))
        self.widget = w.HBox([self.control, self.unit, self.error])
        self.control.observe(lambda _: self.check(), names="value")

    def _tooltip(self, default) -> str:
        parts = [self.param.doc if self.param and self.param.doc else self.name]
        if self.param:
            parts.append(self.param.describe())
        parts.append(f"default {default!r}" if self.has_default else "required")
        return "; ".join(parts)

    def _hint(self) -> str:
        """Unit and range beside the field, e.g. 'W in [0, 1200]'."""
        p = self.param
        if p is None:
            return ""
        text = html.escape(p.unit)
        if p.range is not None:
            text += f" in [{p.range[0]:g}, {p.range[1]:g}]"
        elif p.type in (tuple, list):
            text += " (comma-separated)"
        return f"<span style='color:#555'>{text.strip()}</span>"

    @staticmethod
    def _as_text(value) -> str:
        if isinstance(value, (tuple, list)):
            return ", ".join(str(v) for v in value)
        return "" if value is None else str(value)

    def raw(self) -> Any:
        """The field's value as the sequence gets it (before its check); `inspect.Parameter.empty` if not given."""
        value = self.control.value
        if not isinstance(self.control, w.Text):
            return value
        text = value.strip()
        if not text:
            return inspect.Parameter.empty
        if self.kind in (tuple, list):
            if text[0] in "([":
                try:
                    return tuple(ast.literal_eval(text))
                except (ValueError, SyntaxError, TypeError):
                    raise ConfigError(f"{self.sequence.name}: parameter {self.name} = {text!r} is not a list "
                                      f"(give comma-separated items)") from None
            return tuple(item.strip() for item in text.split(",") if item.strip())
        if self.kind is str or self.param is not None:
            return text  # a Param parses "0.8 kW" itself
        try:
            return ast.literal_eval(text)  # an unannotated parameter: a Python literal, else the text
        except (ValueError, SyntaxError):
            return text

    def value(self) -> Any:
        """The checked value (converted by the parameter); raises a LabrigError naming the parameter."""
        raw = self.raw()
        if raw is inspect.Parameter.empty:
            raise ConfigError(f"{self.sequence.name}: parameter {self.name} is required"
                              + (f" ({self.param.describe()})" if self.param else ""))
        return self.param.check(self.name, raw, owner=self.sequence.name) if self.param else raw

    def check(self) -> str:
        """Check the field now; show and return what is wrong ('' when it is fine)."""
        try:
            self.value()
        except Exception as exc:  # noqa: BLE001 - the message is the point, never a traceback
            message = error_text(exc)
        else:
            message = ""
        self.error.value = f"<span style='color:{RED}'>{html.escape(message, quote=False)}</span>" if message else ""
        return message

    def close(self) -> None:
        for widget in (self.widget, *self.widget.children):
            widget.close()


class ParamForm:
    """Every parameter of one sequence (a labrig Sequence: .params, .defaults, .check)."""

    def __init__(self, sequence):
        self.sequence = sequence
        self.fields = {name: Field(sequence, name) for name in sequence.params}
        doc = inspect.cleandoc(sequence.fn.__doc__ or "") if hasattr(sequence, "fn") else ""
        self.doc = w.HTML(f"<i>{html.escape(doc)}</i>" if doc else "")
        self.widget = w.VBox([self.doc, *(f.widget for f in self.fields.values())])

    def values(self) -> dict[str, Any]:
        """The parameters as the sequence would run with them, checked by the sequence (every field's
        message shown); raises the first field's LabrigError."""
        wrong = [f for f in self.fields.values() if f.check()]  # every field says what is wrong with it
        if wrong:
            wrong[0].value()  # raises its own error
        given = {name: f.raw() for name, f in self.fields.items()}
        return self.sequence.check(**{n: v for n, v in given.items() if v is not inspect.Parameter.empty})

    def errors(self) -> dict[str, str]:
        """{parameter: what is wrong with it} for the fields that are wrong now."""
        return {name: message for name, f in self.fields.items() if (message := f.check())}

    def close(self) -> None:
        for f in self.fields.values():
            f.close()
        self.doc.close()
        self.widget.close()

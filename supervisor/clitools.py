"""What every `labrig` command shares: labrig's own errors as one red line, never a traceback."""
from __future__ import annotations

import functools

import typer
from rich.console import Console

from labrig.drivers.errors import LabrigError

err = Console(stderr=True, highlight=False)


def friendly(fn):
    """Turn labrig's own errors into one clear message and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LabrigError as exc:
            err.print("labrig:", str(exc), style="red", markup=False, soft_wrap=True)
            raise typer.Exit(2)
    return wrapper

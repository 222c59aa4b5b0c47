"""Where running instances keep their pids and endpoints.

`LABRIG_STATE_DIR` if set, else `$XDG_STATE_HOME/labrig`, else
`~/.local/state/labrig`. The folder is private to its owner (0700): it holds
endpoints and, later, connection files with keys.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def state_dir(override: str | os.PathLike | None = None) -> Path:
    if override:
        path = Path(override)
    elif os.environ.get("LABRIG_STATE_DIR"):
        path = Path(os.environ["LABRIG_STATE_DIR"])
    else:
        base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
        path = Path(base) / "labrig"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def read_state(name: str, directory: Path | None = None) -> dict[str, Any] | None:
    path = (directory or state_dir()) / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        return None  # a half-written file cannot happen (atomic writes), but never crash on it


def write_state(name: str, data: dict[str, Any], directory: Path | None = None) -> Path:
    directory = directory or state_dir()
    path = directory / f"{name}.json"
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    os.replace(tmp, path)
    return path


def remove_state(name: str, directory: Path | None = None) -> None:
    try:
        ((directory or state_dir()) / f"{name}.json").unlink()
    except FileNotFoundError:
        pass

"""Processed data: a new file beside the shots, pointing at its source shot, recording its code.

    derived/shot-000042/density_profile.v1.h5
        attrs: format "labrig-derived", source_shot, source_file, source_sha256 (the source
               file's bytes: it never changes, so this pins it), name, version, code,
               code_sha256, created, user, host, versions (JSON), metadata (JSON)
        /data/KEY  one dataset per array given (chunked, gzip)

Versions count up per (shot, name); a derived file, like a shot, is never modified.
"""
from __future__ import annotations

import getpass
import hashlib
import inspect
import json
import os
import re
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from labrig.drivers.errors import ConfigError

from .errors import StoreError
from .shotfile import ensure_space

if TYPE_CHECKING:
    from .store import ShotStore

FORMAT = "labrig-derived"
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def write_derived(store: "ShotStore", source_shot: int, name: str, data, *, code, metadata=None) -> Path:
    if not NAME.match(name or ""):
        raise ConfigError(f"derived data name {name!r}: letters, digits, '_' or '-', starting with a letter")
    source = store.path_of(source_shot)
    if not source.exists():
        raise StoreError(f"derived data {name!r}: shot {source_shot} has no complete file in {store.root}")
    code_text = _code_text(code)
    arrays = data if isinstance(data, dict) else {"values": data}
    arrays = {key: np.asarray(value) for key, value in arrays.items()}
    folder = store.derived_dir / f"shot-{int(source_shot):06d}"
    folder.mkdir(exist_ok=True)
    with store._locked():  # the version number, like a shot number, is handed out once
        version = 1 + max((int(m.group(1)) for p in folder.iterdir()
                           if (m := re.match(rf"^{re.escape(name)}\.v(\d+)\.h5$", p.name))), default=0)
        dest = folder / f"{name}.v{version}.h5"
        tmp = folder / f".{dest.name}.tmp{os.getpid()}"
        ensure_space(folder, int(sum(a.nbytes for a in arrays.values()) * 1.05) + len(code_text) + (256 << 10),
                     dest.name)
        try:
            with h5py.File(tmp, "w") as f:
                from .store import software_versions
                f.attrs.update({"format": FORMAT, "source_shot": int(source_shot),
                                "source_file": str(source.relative_to(store.root)),
                                "source_sha256": _sha256(source), "name": name, "version": version,
                                "code": code_text, "code_sha256": hashlib.sha256(code_text.encode()).hexdigest(),
                                "created": time.time(), "user": getpass.getuser(), "host": socket.gethostname(),
                                "versions": json.dumps(software_versions()),
                                "metadata": json.dumps(metadata or {}, default=str)})
                for key, value in arrays.items():
                    kw = {"chunks": True, "compression": "gzip", "compression_opts": 1} if value.size > 1 else {}
                    f.create_dataset(f"data/{key}", data=value, **kw)
            os.chmod(tmp, 0o444)
            os.rename(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    try:
        store.catalog.add_derived(describe_derived(dest, store.root))
    except Exception:  # noqa: BLE001 - the file is the truth; reindex repairs the catalog
        pass
    return dest


def describe_derived(path: Path, root: Path) -> dict[str, Any]:
    """The catalog's row for a derived file (attributes only)."""
    with h5py.File(path, "r") as f:
        a = f.attrs
        return {"path": str(Path(path).relative_to(root)), "source_shot": int(a["source_shot"]), "name": str(a["name"]),
                "version": int(a["version"]), "code_sha256": str(a["code_sha256"]), "created": float(a["created"]),
                "user": str(a["user"])}


def _code_text(code) -> str:
    if isinstance(code, str) and code.strip():
        return code
    if callable(code) or inspect.ismodule(code):
        try:
            return inspect.getsource(code)
        except (OSError, TypeError):
            raise ConfigError(f"code {code!r}: its source cannot be found; pass the source text") from None
    raise ConfigError("derived data must record the code that made it: pass code= (a function, a module, "
                      "or its source text)")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

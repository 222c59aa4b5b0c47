"""Export a shot for people without HDF5 tools: MATLAB .mat (scipy) or CSV.

.mat: one struct per group: signals.NAME.t / .values / .unit, telemetry.NAME..., events.t /
.kind / .data, and meta (the root attributes, parameters, versions). MATLAB field names must be
identifiers, so other characters become '_' (the original is kept in .name).
CSV: a folder with signals/NAME.csv and telemetry/NAME.csv (columns t, value), events.csv and
metadata.json. The shot file stays the record; an export is a copy for convenience.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np

from labrig.drivers.errors import ConfigError

from .shotfile import GROUPS

FORMATS = ("mat", "csv")


def export_shot(store, number: int, fmt: str, dest=None) -> Path:
    if fmt not in FORMATS:
        raise ConfigError(f"export format {fmt!r}: use one of {', '.join(FORMATS)}")
    with store.shot(number) as shot:
        meta = {**shot.attrs, **{k: shot.metadata(k) for k in ("parameters", "versions", "firmware", "extra")},
                "sequence_source": shot.source, "rig_text": shot.rig_text, "calibrations": shot.calibrations()}
        stem = f"shot-{number:06d}"
        if fmt == "mat":
            return _mat(shot, meta, Path(dest) if dest else Path.cwd() / f"{stem}.mat")
        return _csv(shot, meta, Path(dest) if dest else Path.cwd() / f"{stem}-csv")


def _field(name: str) -> str:
    name = re.sub(r"\W", "_", name)
    return name if re.match(r"^[A-Za-z]", name) else f"x{name}"


def _mat(shot, meta: dict, path: Path) -> Path:
    from scipy.io import savemat
    content = {"meta": {_field(k): json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in meta.items()}}
    for group in GROUPS:
        content[group] = {}
        for name in shot.names(group):
            t, v = shot.read(name, group=group)
            content[group][_field(name)] = {"name": name, "t": t, "values": v, "unit": shot.info(name, group)["unit"]}
    events = shot.events()
    content["events"] = {"t": np.array([e["t"] for e in events]), "kind": [e["kind"] for e in events],
                         "data": [json.dumps({k: v for k, v in e.items() if k not in ("t", "kind")}) for e in events]}
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, content, do_compression=True, long_field_names=True)
    return path


def _csv(shot, meta: dict, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for group in GROUPS:
        if not shot.names(group):
            continue
        (folder / group).mkdir(exist_ok=True)
        for name in shot.names(group):
            t, v = shot.read(name, group=group)
            unit = shot.info(name, group)["unit"]
            np.savetxt(folder / group / f"{name}.csv", np.column_stack([t, v]), delimiter=",", comments="",
                       header=f"t,{name}" + (f" [{unit}]" if unit else ""), fmt="%.17g")
    with open(folder / "events.csv", "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["t", "kind", "data"])
        for e in shot.events():
            out.writerow([repr(e["t"]), e["kind"], json.dumps({k: v for k, v in e.items() if k not in ("t", "kind")})])
    (folder / "metadata.json").write_text(json.dumps(meta, indent=2, default=str))
    return folder

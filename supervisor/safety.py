"""The emergency stop: every node's outputs to their safe values, at once.

Used by `labrig safe` (from the state directory alone, no kernel needed) and by
`rig.safe()` / `%safe` in the supervisor kernel. It never raises: a node it cannot
reach is reported as such, and the device's own watchdog is the next layer.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Mapping

from labrig.drivers.errors import LabrigError

from .runtime.locate import RuntimeLink


def drive_safe(links: Mapping[str, RuntimeLink]) -> dict[str, dict]:
    """{node: {output: {"ok", "value", "error"}}} or {node: {"error": why it was not reached}}."""
    def one(item):
        name, link = item
        try:
            return name, link.client.safe()
        except LabrigError as exc:
            return name, {"error": f"{type(exc).__name__}: {exc}"}
    if not links:
        return {}
    with ThreadPoolExecutor(len(links), thread_name_prefix="safe") as pool:
        return dict(pool.map(one, links.items()))


def emergency_stop(directory: Path, *, timeout: float = 2.0) -> dict[str, dict]:
    """Drive safe every node that has a runtime recorded in `directory`."""
    nodes = sorted(p.stem.removeprefix("node-") for p in Path(directory).glob("node-*.json"))
    links = {node: RuntimeLink(node, directory, client="labrig-safe", timeout=timeout) for node in nodes}
    try:
        return drive_safe(links)
    finally:
        for link in links.values():
            link.close()


def failures(results: Mapping[str, dict]) -> dict[str, str]:
    """What did not go safe: {node or node.output: why}."""
    out = {}
    for node, result in results.items():
        if "error" in result and isinstance(result["error"], str):
            out[node] = result["error"]
            continue
        for output, r in result.items():
            if not r["ok"]:
                out[f"{node}.{output}"] = r["error"]
    return out

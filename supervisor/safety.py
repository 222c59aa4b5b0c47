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
    links = {node: RuntimeLink(node, directory, client="labrig-safe", timeout=timeout)
             for node in _runtime_nodes(directory)}
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


def _runtime_nodes(directory: Path) -> list[str]:
    return sorted(p.stem.removeprefix("node-") for p in Path(directory).glob("node-*.json"))


def _guard_client(directory: Path, timeout: float):
    from .guard import guard_record
    from .runtime.client import RuntimeClient
    record = guard_record(directory)
    return RuntimeClient(record["endpoint"], node="guard", client="labrig-cli", timeout=timeout) if record else None


def all_trips(directory: Path, *, timeout: float = 2.0) -> dict[str, list[dict] | str]:
    """{"guard" or node: its latched trips, or why it could not be asked}."""
    found: dict[str, list[dict] | str] = {}
    guard = _guard_client(directory, timeout)
    if guard is not None:
        with guard:
            try:
                found["guard"] = guard.trips()
            except LabrigError as exc:
                found["guard"] = f"{type(exc).__name__}: {exc}"
    for node in _runtime_nodes(directory):
        link = RuntimeLink(node, directory, client="labrig-cli", timeout=timeout)
        try:
            found[node] = link.client.trips()
        except LabrigError as exc:
            found[node] = f"{type(exc).__name__}: {exc}"
        finally:
            link.close()
    return found


def rearm(interlock: str, directory: Path, *, timeout: float = 2.0) -> dict:
    """Re-arm an interlock where it is latched: the guard for a cross-node one, else every node that has it."""
    guard = _guard_client(directory, timeout)
    if guard is not None:
        with guard:
            if interlock in {i for i in guard.status()["interlocks"]}:
                return guard.rearm(interlock)
    latched = [node for node, trips in all_trips(directory, timeout=timeout).items()
               if node != "guard" and isinstance(trips, list) and any(t["interlock"] == interlock for t in trips)]
    if not latched:
        return {"interlock": interlock, "rearmed": False, "detail": "is not tripped anywhere"}
    result: dict = {}
    for node in latched:
        link = RuntimeLink(node, directory, client="labrig-cli", timeout=timeout)
        try:
            result = link.client.rearm(interlock)
        finally:
            link.close()
    return result


def override(interlock: str, seconds: float, reason: str, directory: Path, *, timeout: float = 2.0) -> dict:
    """Override an interlock for `seconds` (0 ends it) where it is enforced: the guard, or its node."""
    from labrig.drivers.errors import ConfigError
    guard = _guard_client(directory, timeout)
    if guard is not None:
        with guard:
            if interlock in guard.status()["interlocks"]:
                return guard.call("override", interlock=interlock, seconds=seconds, reason=reason)
    for node in _runtime_nodes(directory):
        link = RuntimeLink(node, directory, client="labrig-cli", timeout=timeout)
        try:
            return {**link.client.call("override", interlock=interlock, seconds=seconds, reason=reason), "node": node}
        except ConfigError as exc:
            if "no interlock" not in str(exc):
                raise
        finally:
            link.close()
    raise ConfigError(f"no running guard or node enforces an interlock {interlock!r}")

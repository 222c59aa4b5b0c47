"""The runner's leases: it holds every node of the run while the run lasts.

Renewed from a thread of its own (a slow shot write never lets a lease lapse); a runner
that dies stops renewing, and each node then runs its table's safe exit by itself.
"""
from __future__ import annotations

import threading

from labrig.drivers.errors import LabrigError

from ..runtime import RuntimeClient
from ..runtime.locate import client_options


class LeaseHolder:
    def __init__(self, records: dict[str, dict], holder: str, ttl: float):
        self.holder, self.ttl = holder, ttl
        self.clients = {node: RuntimeClient(r["endpoint"], node=node, client=holder, timeout=min(1.0, ttl / 2),
                                            **client_options(r)) for node, r in records.items()}
        self.errors: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"leases-{holder}", daemon=True)

    def take(self) -> None:
        """Take every lease now (raises if a node refuses), then keep renewing them."""
        for client in self.clients.values():
            client.call("lease", holder=self.holder, ttl=self.ttl)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            for node, client in self.clients.items():
                try:
                    client.call("lease", holder=self.holder, ttl=self.ttl)
                    self.errors.pop(node, None)
                except LabrigError as exc:  # the run loop sees the node unanswering too
                    self.errors[node] = str(exc)

    def release(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
        for client in self.clients.values():
            try:
                client.call("release", holder=self.holder)
            except LabrigError:
                pass  # its lease runs out by itself
            client.close()

"""The shot store's errors: LabrigError subclasses, so the CLI and kernels show them as one clear line."""
from __future__ import annotations

from labrig.drivers.errors import LabrigError


class StoreError(LabrigError):
    """A shot that does not exist, a closed writer, a file that is not a labrig shot."""


class StoreFull(StoreError):
    """The disk filled up: what was journaled before is kept and the shot can be recovered."""

"""The node runtime (one process per board) and its clients."""
from .client import AsyncRuntimeClient, RuntimeClient

__all__ = ["RuntimeClient", "AsyncRuntimeClient"]

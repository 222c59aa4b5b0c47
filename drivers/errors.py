"""The one exceptions module of labrig's drivers (httpx-style: a small tree).

    LabrigError
    ├── ConfigError            bad rig file, bad URL, unknown channel or signal
    ├── RangeError             a value outside a channel's hard range or a signal's limits
    ├── Refused                a safety layer refused a request (interlock, trip, lease)
    ├── LinkError              anything wrong with the link to a device or a node
    │   ├── LinkTimeout        no answer within the timeout
    │   │   └── NodeUnavailable  a node runtime did not answer (names its last heartbeat)
    │   ├── LinkClosed         the peer closed the link, or the driver is closed
    │   └── FrameError         a garbled, truncated or unexpected frame
    └── DeviceError            the device answered, with an error of its own
"""
from __future__ import annotations


class LabrigError(Exception):
    """Base of every error labrig raises on purpose."""


class ConfigError(LabrigError, ValueError):
    """A configuration (rig file, URL, channel address) is not valid."""


class RangeError(LabrigError, ValueError):
    """A value is outside what a channel allows; the message names the range."""


class LinkError(LabrigError, OSError):
    """The link to a device failed. `device` names it (node, URL)."""

    def __init__(self, message: str, *, device: str = ""):
        super().__init__(f"{device}: {message}" if device else message)
        self.device = device


class LinkTimeout(LinkError, TimeoutError):
    """No answer within the I/O timeout."""


class LinkClosed(LinkError, ConnectionError):
    """The peer closed the link, or the driver was closed."""


class FrameError(LinkError):
    """A garbled, truncated or unexpected frame arrived."""


class NodeUnavailable(LinkTimeout):
    """A node runtime did not answer within the timeout."""


class Refused(LabrigError):
    """A safety layer refused a request; the message says which and why."""


class DeviceError(LabrigError):
    """The device answered with an error of its own."""

    def __init__(self, message: str, *, device: str = ""):
        super().__init__(f"{device}: {message}" if device else message)
        self.device = device

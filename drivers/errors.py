"""The one exceptions module of labrig's drivers (httpx-style: a small tree).

    LabrigError
    ├── ConfigError            bad rig file, bad URL, unknown channel
    ├── RangeError             a value outside a channel's hard range
    └── LinkError              anything wrong with the link to a device
        ├── LinkTimeout        the device did not answer within the I/O timeout
        ├── LinkClosed         the peer closed the link, or the driver is closed
        └── FrameError         a garbled, truncated or unexpected frame
    DeviceError                the device answered, with an error of its own
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


class DeviceError(LabrigError):
    """The device answered with an error of its own."""

    def __init__(self, message: str, *, device: str = ""):
        super().__init__(f"{device}: {message}" if device else message)
        self.device = device

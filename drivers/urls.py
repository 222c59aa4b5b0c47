"""Connection URLs as the rig file writes them.

    serial:///dev/ttyACM0?baud=115200
    tcp://rp-f0a1b2.local:5000?monitor_port=2222
    s7://192.168.0.10:102?rack=0&slot=1
    pigpio://raspberrypi.local:8888
    visa://TCPIP0::10.0.0.5::5025::SOCKET
"""
from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from .errors import ConfigError

SCHEMES = ("serial", "tcp", "s7", "pigpio", "visa", "sim")


@dataclass(frozen=True)
class ConnectionURL:
    scheme: str
    host: str = ""
    port: int | None = None
    path: str = ""
    query: dict[str, str] = field(default_factory=dict)
    raw: str = ""

    def option(self, key: str, default=None, cast=str):
        if key not in self.query:
            return default
        try:
            return cast(self.query[key])
        except ValueError:
            raise ConfigError(f"{self.raw}: option {key}={self.query[key]!r} is not a valid {cast.__name__}") from None


def parse_url(url: str, *, schemes: tuple[str, ...] = SCHEMES) -> ConnectionURL:
    if not isinstance(url, str) or ":" not in url:
        raise ConfigError(f"connection {url!r} is not a URL; expected one of "
                          + ", ".join(f"{s}://..." for s in schemes))
    scheme = url.split(":", 1)[0].lower()
    if scheme not in schemes:
        raise ConfigError(f"connection {url!r}: unknown scheme {scheme!r}; allowed: {', '.join(schemes)}")
    if scheme == "sim":
        return ConnectionURL("sim", raw=url)
    if scheme == "visa":
        resource = url.split("://", 1)[1] if "://" in url else url.split(":", 1)[1]
        if not resource:
            raise ConfigError(f"connection {url!r}: visa:// needs a VISA resource string, "
                              "e.g. visa://TCPIP0::10.0.0.5::5025::SOCKET")
        return ConnectionURL("visa", path=resource, raw=url)
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    if scheme == "serial":
        if not parts.path:
            raise ConfigError(f"connection {url!r}: serial:// needs a device path, e.g. serial:///dev/ttyACM0")
        return ConnectionURL("serial", path=parts.path, query=query, raw=url)
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"connection {url!r}: the port is not a number in 0..65535") from None
    if not parts.hostname:
        raise ConfigError(f"connection {url!r}: {scheme}:// needs a host, e.g. {scheme}://127.0.0.1:PORT")
    return ConnectionURL(scheme, host=parts.hostname, port=port, path=parts.path, query=query, raw=url)

"""Ways into a hub: MQTT over TLS, MQTT over secure WebSockets, and HTTP CONNECT proxies.

Many gateways sit behind firewalls that let only outbound 443 through, often via
an HTTP proxy. A hub may therefore list several :class:`Transport` values (for
example ``mqtts:8883``, then ``wss:443``, then ``mqtts:443`` with ALPN). Each
attempt of the recovery path races them the way Happy Eyeballs races a hub's
addresses, and still resolves the hub fresh, verifies TLS against the FQDN and
opens exactly one TCP connection. The way that worked is remembered as a
preference (never as a cache of addresses) and the configured first way is
tried again in the background, so a device returns to 8883 when it opens.

:class:`ProxySettings` sends every connection (MQTT and the HTTPS side calls)
through an HTTP CONNECT proxy. Through a proxy, the proxy resolves the hub's
name unless ``resolve_locally`` is set; the README says what that means for
"fresh DNS".

Pure values: nothing here opens a socket.
"""

from __future__ import annotations

import ipaddress
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from device_sdk.core.topics import shown
from device_sdk.errors import ConfigError

__all__ = ["ProxySettings", "Transport", "TransportScheme"]

TransportScheme = Literal["mqtts", "wss", "mqtt", "ws"]
_SCHEMES: tuple[TransportScheme, ...] = ("mqtts", "wss", "mqtt", "ws")
_TRANSPORT_TEXT = re.compile(r"(?P<scheme>[a-z]+):(?P<port>[0-9]{1,5})(?P<path>/[^\s]*)?")
# An HTTP header name (RFC 9110 token) and a value without line breaks or controls.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")
# Headers the WebSocket handshake sets itself; a user's copy would break it.
_HANDSHAKE_HEADERS = frozenset(
    {"host", "upgrade", "connection", "sec-websocket-key", "sec-websocket-version"}
)


def _check_port(field_name: str, port: object) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(field_name, shown(port), "a port from 1 to 65535")


def _check_header_value(field_name: str, value: object) -> None:
    if (
        not isinstance(value, str)
        or len(value) > 4096
        or not value.isascii()
        or any(c in value for c in "\r\n\0")
    ):
        raise ConfigError(field_name, shown(value), "ASCII text of at most 4096 characters")


@dataclass(frozen=True, slots=True, kw_only=True)
class Transport:
    """One way into a hub: a scheme and a port, and for WebSockets a path and headers.

    ``mqtts`` and ``wss`` use the hub's TLS settings (SNI and verification on
    the FQDN, always); ``mqtt`` and ``ws`` are plain and only for hubs without
    TLS (testbeds, closed networks). ``alpn_protocols`` replaces the hub's ALPN
    list on this way in (``()``: none; ``None``: the hub's). WebSockets always
    ask for the ``mqtt`` subprotocol.
    """

    scheme: TransportScheme
    port: int
    path: str = "/mqtt"
    headers: tuple[tuple[str, str], ...] = ()
    alpn_protocols: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.scheme not in _SCHEMES:
            raise ConfigError("transport.scheme", shown(self.scheme), "mqtts, wss, mqtt or ws")
        _check_port("transport.port", self.port)
        if (
            not isinstance(self.path, str)
            or not self.path.startswith("/")
            or len(self.path) > 1024
            or not self.path.isascii()
            or any(c.isspace() or not c.isprintable() for c in self.path)
        ):
            raise ConfigError(
                "transport.path", shown(self.path), "an ASCII path starting with '/', no spaces"
            )
        if not isinstance(self.headers, tuple):
            raise ConfigError("transport.headers", shown(self.headers), "a tuple of (name, value)")
        for pair in self.headers:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise ConfigError("transport.headers", shown(pair), "(name, value) pairs")
            name, value = pair
            if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
                raise ConfigError("transport.headers", shown(name), "an HTTP header name")
            if name.lower() in _HANDSHAKE_HEADERS:
                raise ConfigError(
                    "transport.headers", name, "a header the WebSocket handshake does not set"
                )
            _check_header_value(f"transport.headers[{name}]", value)
        if self.headers and not self.websocket:
            raise ConfigError("transport.headers", self.scheme, "headers only on ws or wss")
        alpn = self.alpn_protocols
        if alpn is not None and (
            not isinstance(alpn, tuple)
            or not all(isinstance(p, str) and 1 <= len(p) <= 255 and p.isascii() for p in alpn)
        ):
            raise ConfigError(
                "transport.alpn_protocols", shown(alpn), "a tuple of 1-255 character ASCII names"
            )

    @classmethod
    def parse(cls, text: str, **options: object) -> Transport:
        """``"mqtts:8883"``, ``"wss:443"``, ``"wss:443/custom/path"``: the profile form."""
        match = _TRANSPORT_TEXT.fullmatch(text) if isinstance(text, str) else None
        if match is None or match["scheme"] not in _SCHEMES:
            raise ConfigError(
                "transport", shown(text), "scheme:port[/path], scheme one of mqtts, wss, mqtt, ws"
            )
        scheme = match["scheme"]
        if match["path"] and scheme not in ("ws", "wss"):
            raise ConfigError("transport", text, "a path only on ws or wss")
        fields: dict[str, object] = {"scheme": scheme, "port": int(match["port"])}
        if match["path"]:
            fields["path"] = match["path"]
        fields.update(options)
        return cls(**fields)  # type: ignore[arg-type]

    @property
    def secure(self) -> bool:
        """TLS on this way in (mqtts, wss)."""
        return self.scheme in ("mqtts", "wss")

    @property
    def websocket(self) -> bool:
        return self.scheme in ("ws", "wss")

    @property
    def label(self) -> str:
        """How events, metrics and logs name this way in: ``wss:443/mqtt``, ``mqtts:8883``."""
        text = f"{self.scheme}:{self.port}"
        return text + self.path if self.websocket else text

    def __str__(self) -> str:
        return self.label


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxySettings:
    """An HTTP proxy that every connection goes through with ``CONNECT``.

    ``username``/``password``: Basic proxy authentication. The password is kept
    out of reprs, events, errors and logs.

    ``resolve_locally``: through a proxy, the proxy resolves the hub's name
    (so "fresh DNS" is the proxy's job, and its resolver's cache applies).
    Set this to resolve the FQDN fresh on the device instead and ``CONNECT``
    to the address found; TLS still sends SNI and verifies the FQDN. Only
    where the device can resolve public names.

    ``no_proxy``: hosts reached directly, as in ``NO_PROXY``: a name matches
    itself and its subdomains (``example.com`` and ``.example.com`` alike), an
    IP literal or network (``10.0.0.0/8``) its addresses, ``*`` everything.
    """

    host: str
    port: int
    username: str | None = None
    password: str = field(default="", repr=False)
    resolve_locally: bool = False
    no_proxy: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (
            not isinstance(self.host, str)
            or not 1 <= len(self.host) <= 253
            or not self.host.isascii()
            or any(c.isspace() or c in "/@?#" for c in self.host)
        ):
            raise ConfigError("proxy.host", shown(self.host), "a host name or IP address")
        _check_port("proxy.port", self.port)
        if self.username is not None and (
            not isinstance(self.username, str) or ":" in self.username
        ):
            raise ConfigError("proxy.username", shown(self.username), "a user name without ':'")
        if not isinstance(self.password, str) or any(c in self.password for c in "\r\n\0"):
            raise ConfigError("proxy.password", "(hidden)", "text without line breaks")
        if not isinstance(self.resolve_locally, bool):
            raise ConfigError("proxy.resolve_locally", shown(self.resolve_locally), "true/false")
        if not isinstance(self.no_proxy, tuple) or not all(
            isinstance(entry, str) for entry in self.no_proxy
        ):
            raise ConfigError("proxy.no_proxy", shown(self.no_proxy), "a tuple of host names")

    @property
    def authority(self) -> str:
        """``host:port`` of the proxy, as events and errors name it (never the password)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @classmethod
    def from_url(
        cls, url: str, *, no_proxy: tuple[str, ...] = (), resolve_locally: bool = False
    ) -> ProxySettings:
        """``http://user:password@proxy.example:3128``; user and password percent-decoded."""
        try:
            parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
            port = parts.port or 3128
        except ValueError as exc:
            raise ConfigError("proxy", _without_password(url), f"a proxy URL ({exc})") from exc
        if parts.scheme != "http" or not parts.hostname:
            raise ConfigError(
                "proxy", _without_password(url), "an http:// proxy URL (CONNECT over plain HTTP)"
            )
        username = urllib.parse.unquote(parts.username) if parts.username else None
        password = urllib.parse.unquote(parts.password) if parts.password else ""
        return cls(
            host=parts.hostname,
            port=port,
            username=username,
            password=password,
            resolve_locally=resolve_locally,
            no_proxy=no_proxy,
        )

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str] | None = None, *, resolve_locally: bool = False
    ) -> ProxySettings | None:
        """The proxy ``HTTPS_PROXY`` (or ``https_proxy``) names, with ``NO_PROXY``; None when
        unset. Opt-in: the SDK never reads these variables unless asked to."""
        env = os.environ if environ is None else environ
        url = env.get("HTTPS_PROXY") or env.get("https_proxy") or ""
        if not url.strip():
            return None
        raw = env.get("NO_PROXY") or env.get("no_proxy") or ""
        no_proxy = tuple(entry.strip() for entry in raw.split(",") if entry.strip())
        return cls.from_url(url.strip(), no_proxy=no_proxy, resolve_locally=resolve_locally)

    def bypasses(self, host: str) -> bool:
        """True when ``host`` is reached directly (it matches ``no_proxy``)."""
        name = host.rstrip(".").lower().strip("[]")
        address = _ip(name)
        for entry in self.no_proxy:
            pattern = entry.strip().lower().rstrip(".")
            if pattern == "*":
                return True
            if address is not None:
                network = _network(pattern.strip("[]"))
                if network is not None and address in network:
                    return True
                continue
            pattern = pattern.lstrip("*").lstrip(".")
            if pattern and (name == pattern or name.endswith("." + pattern)):
                return True
        return False


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def _without_password(url: object) -> str:
    """A proxy URL as errors may show it: any password replaced."""
    text = str(url)
    return re.sub(r"(://[^/:@]*):[^/@]*@", r"\1:***@", text)

"""The device side of the concierge transport: one bounded HTTPS GET.

A concierge that is slow, hung or hostile must never hold a device up. So a
fetch has a *total* deadline across resolving, connecting, the TLS handshake,
the response headers and the body, and a size bound:

- every socket operation waits at most for the time that is left, so a server
  that drips one byte a second is cut off at the deadline (a per-read timeout
  alone would let it go on forever);
- a ``Content-Length`` above the bound is refused before the body is read, and
  a body that streams past the bound is cut off.

HTTPS verifies the concierge's certificate against its host name; plain HTTP
needs an explicit opt-in (the local testbed uses it). Redirects are not
followed: one could lead to plain HTTP or to another host. Every failure is a
:class:`~device_sdk.errors.ConciergeUnavailable` carrying the original cause.

The host name is resolved fresh by the SDK's own resolver, which asks the
nameservers directly (the concierge is often kept reachable by DNS
redirection, which an OS cache would defeat), and within the same deadline: a
nameserver that never answers costs the fetch its deadline, not the OS
resolver's seconds of retries. A client passes the resolver for its
``dns`` settings; a fetcher built without one asks resolv.conf's nameservers.
IP literals and ``localhost`` need no DNS. A test's fake resolver (anything
with ``resolve_fresh(fqdn)``) is asked without the deadline.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
import urllib.parse

from device_sdk.adapters.cancel import NEVER, CancelToken
from device_sdk.adapters.dialing import (
    DeadlineSocket,
    DeadlineSSLSocket,
    connect_tcp,
    remaining,
    tls_handshake,
)
from device_sdk.adapters.http_connect import dial_via_proxy
from device_sdk.adapters.resolver import FreshResolver, Resolver, resolve_within
from device_sdk.concierge.document import MAX_ENVELOPE_BYTES
from device_sdk.config import DnsSettings, is_ip_literal
from device_sdk.errors import ConciergeUnavailable, ConfigError, ConnectError
from device_sdk.transports import ProxySettings

__all__ = ["ConciergeFetcher"]

_CHUNK = 16 * 1024
_USER_AGENT = "device-sdk-concierge-client/1"


class ConciergeFetcher:
    """Fetches the concierge's signed envelope: HTTPS, one total deadline, a size bound.

    ``timeout`` is the whole fetch's budget in seconds, ``max_bytes`` the largest
    body accepted. ``ca_file`` replaces the system trust store for the concierge's
    certificate. ``allow_plain_http`` must be set for an ``http://`` URL.
    ``resolver`` resolves the host (default: a :class:`FreshResolver` for
    resolv.conf). ``cancel`` cuts any wait short (the client is closing). ``proxy``
    (unless it bypasses the host) carries the fetch through an HTTP CONNECT
    tunnel; TLS still verifies the concierge's own name. The fetcher holds no
    connection between calls and is safe to share between threads.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        max_bytes: int = MAX_ENVELOPE_BYTES,
        ca_file: str | None = None,
        allow_plain_http: bool = False,
        resolver: Resolver | None = None,
        cancel: CancelToken = NEVER,
        proxy: ProxySettings | None = None,
    ) -> None:
        self.url = url
        self._cancel = cancel
        self._host, self._port, self._target, tls = _split_url(url, allow_plain_http)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ConfigError("concierge.timeout", timeout, "a number of seconds > 0")
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ConfigError("concierge.max_bytes", max_bytes, "an integer >= 1")
        self._timeout = float(timeout)
        self._max_bytes = max_bytes
        self._resolver = resolver if resolver is not None else FreshResolver(DnsSettings())
        self._proxy = proxy if proxy is not None and not proxy.bypasses(self._host) else None
        self._context = _tls_context(ca_file) if tls else None
        default_port = 443 if tls else 80
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._host_header = host if self._port == default_port else f"{host}:{self._port}"

    def fetch(self) -> bytes:
        """The response body of one GET, or :class:`ConciergeUnavailable`."""
        deadline = time.monotonic() + self._timeout
        try:
            return self._fetch(deadline)
        except ConciergeUnavailable:
            raise
        except TimeoutError as exc:
            raise self._unavailable(f"no complete answer within {self._timeout:g} s") from exc
        except ssl.SSLCertVerificationError as exc:
            raise self._unavailable(f"certificate did not verify ({exc.verify_message})") from exc
        except (OSError, http.client.HTTPException, ConnectError, ValueError) as exc:
            # ConnectError: the resolver's (a ResolveError, or Cancelled when closing).
            # ValueError: e.g. an address getaddrinfo refuses.
            raise self._unavailable(str(exc) or type(exc).__name__) from exc

    def _unavailable(self, reason: str) -> ConciergeUnavailable:
        return ConciergeUnavailable(f"concierge {self.url}: {reason}")

    def _fetch(self, deadline: float) -> bytes:
        connection = http.client.HTTPConnection(self._host, self._port)
        # Dialled here, so that http.client never opens a socket without the deadline.
        connection.sock = self._dial(deadline)
        try:
            connection.request("GET", self._target, headers=self._headers())
            with connection.getresponse() as response:
                if response.status != http.HTTPStatus.OK:
                    raise self._unavailable(
                        f"answered HTTP {response.status} {response.reason[:80]}"
                    )
                return self._read_body(response)
        finally:
            connection.close()

    def _headers(self) -> dict[str, str]:
        return {
            "Host": self._host_header,
            "Accept": "application/json",
            "User-Agent": _USER_AGENT,
            "Connection": "close",
        }

    def _read_body(self, response: http.client.HTTPResponse) -> bytes:
        if response.length is not None and response.length > self._max_bytes:
            raise self._unavailable(
                f"announced {response.length} bytes, more than the {self._max_bytes} allowed"
            )
        body = bytearray()
        # Bounded: every pass adds at least one byte or returns, and at most
        # max_bytes + 1 bytes are ever read; each read is bound by the deadline.
        while len(body) <= self._max_bytes:
            chunk = response.read(min(_CHUNK, self._max_bytes + 1 - len(body)))
            if not chunk:
                return bytes(body)
            body += chunk
        raise self._unavailable(f"sent more than the {self._max_bytes} bytes allowed")

    # -- dialling ----------------------------------------------------------------------------

    def _dial(self, deadline: float) -> socket.socket:
        sock = self._connect(deadline)
        if self._context is None:
            return sock
        try:
            tls_sock = self._context.wrap_socket(
                sock, server_hostname=self._host, do_handshake_on_connect=False
            )
        except BaseException:
            sock.close()
            raise
        try:
            tls_handshake(tls_sock, deadline, self._cancel)
        except BaseException:
            tls_sock.close()  # it owns the descriptor now
            raise
        assert isinstance(tls_sock, DeadlineSSLSocket)
        tls_sock.deadline, tls_sock.cancel = deadline, self._cancel
        return tls_sock

    def _connect(self, deadline: float) -> DeadlineSocket:
        if self._proxy is not None:  # a ProxyError (a ConnectError) names the proxy
            raw = dial_via_proxy(
                self._proxy,
                self._resolver,
                self._host,
                self._port,
                deadline=deadline,
                cancel=self._cancel,
            )
            return self._bounded(raw, deadline)
        last_error: OSError = OSError(f"no address for {self._host}")
        for host in self._hosts(deadline):
            try:
                raw = connect_tcp(host, self._port, deadline, self._cancel)
            except TimeoutError:
                raise
            except OSError as exc:  # refused, unreachable: the next address
                last_error = exc
                continue
            return self._bounded(raw, deadline)
        raise last_error

    def _bounded(self, raw: socket.socket, deadline: float) -> DeadlineSocket:
        sock = DeadlineSocket(raw.family, raw.type, raw.proto, fileno=raw.detach())
        sock.setblocking(False)  # until the handshake is done; reads set their timeout
        sock.deadline, sock.cancel = deadline, self._cancel
        return sock

    def _hosts(self, deadline: float) -> tuple[str, ...]:
        """The addresses to dial: IP literals only, so the OS resolver is never asked
        (it would not honour the deadline)."""
        if is_ip_literal(self._host):
            return (self._host,)
        hosts = resolve_within(self._resolver, self._host, deadline).addresses
        remaining(deadline)
        return hosts


def _split_url(url: str, allow_plain_http: bool) -> tuple[str, int, str, bool]:
    """(host, port, request target, tls) of a concierge URL, or ConfigError."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except (ValueError, TypeError) as exc:
        raise ConfigError("concierge.url", url, "an https:// URL") from exc
    if parts.scheme not in ("https", "http") or not parts.hostname or "@" in parts.netloc:
        raise ConfigError("concierge.url", url, "an https:// URL with a host and no user info")
    if parts.scheme == "http" and not allow_plain_http:
        raise ConfigError(
            "concierge.url", url, "an https:// URL (plain http needs allow_plain_http=True)"
        )
    tls = parts.scheme == "https"
    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"
    return parts.hostname, port or (443 if tls else 80), target, tls


def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("concierge.ca_file", ca_file, "a readable PEM CA bundle") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.sslsocket_class = DeadlineSSLSocket
    return context

"""A TCP tunnel through an HTTP proxy with ``CONNECT``: the way out of locked-down networks.

:func:`open_tunnel` dials the proxy (an IP literal: the caller resolves the
proxy's name fresh, see :func:`proxy_addresses`), asks ``CONNECT host:port``
and returns the socket once the proxy answers 2xx. TLS then runs over the
tunnel exactly as over a direct connection: SNI and verification on the real
host, never on the proxy.

A proxy is one more stranger on the path, so its answer is read the way a
hostile hub's is: every wait is bounded by the deadline and cut by ``cancel``;
the headers have a byte bound and a line bound; the status line is parsed
strictly. Every failure is a :class:`~device_sdk.errors.ProxyError`, a
:class:`~device_sdk.errors.DialError`, so the engine treats a proxy that
refuses, hangs or talks nonsense as a failed dial and fails over. The socket
is closed on every failure path. The proxy password goes into the
``Proxy-Authorization`` header and nowhere else: no message, repr or log.

Nothing past the blank line that ends the proxy's headers is ever consumed:
the first bytes of the tunnel (a TLS ServerHello, say) may arrive in the same
segment, so the answer is read with ``MSG_PEEK`` and only the header bytes are
taken off the socket.
"""

from __future__ import annotations

import base64
import errno
import re
import socket

from device_sdk.adapters.cancel import NEVER, CancelToken
from device_sdk.adapters.dialing import connect_tcp, wait_ready
from device_sdk.adapters.resolver import Resolver, resolve_within
from device_sdk.config import is_ip_literal
from device_sdk.errors import (
    ConfigError,
    ProxyError,
    ProxyProtocolError,
    ProxyRefused,
    ProxyTimeout,
)
from device_sdk.transports import ProxySettings

__all__ = [
    "MAX_HEADER_BYTES",
    "MAX_HEADER_LINES",
    "connect_request",
    "dial_via_proxy",
    "open_tunnel",
    "proxy_addresses",
]

MAX_HEADER_BYTES = 16 * 1024  # a CONNECT answer is a few hundred bytes
MAX_HEADER_LINES = 100
_PEEK = 4096
_USER_AGENT = "device-sdk/1"
# RFC 9112 status line; the reason phrase may be empty or absent.
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-9][0-9]{2})(?: ([\t\x20-\x7e\x80-\xff]*))?")
_HEADER_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e\x80-\xff]*")
# The blank line ending the headers; a bare LF is accepted as RFC 9112 allows.
_END_OF_HEADERS = re.compile(rb"\r?\n\r?\n")
_TARGET_HOST = re.compile(r"[A-Za-z0-9._:%-]{1,253}")


def proxy_addresses(proxy: ProxySettings, resolver: Resolver, deadline: float) -> tuple[str, ...]:
    """The proxy's addresses to dial, in order: its IP literal, or its name resolved fresh
    by the SDK's resolver within ``deadline`` (never the OS's, which ignores deadlines)."""
    if is_ip_literal(proxy.host):
        return (proxy.host,)
    return resolve_within(resolver, proxy.host, deadline).addresses


def connect_request(proxy: ProxySettings, target_host: str, target_port: int) -> bytes:
    """The ``CONNECT`` request for ``target_host:target_port`` (IPv6 literals in brackets),
    with ``Proxy-Authorization: Basic`` when the proxy has a username."""
    if not isinstance(target_host, str) or not _TARGET_HOST.fullmatch(target_host):
        raise ConfigError("proxy target host", target_host, "a host name or IP literal")
    if isinstance(target_port, bool) or not isinstance(target_port, int):
        raise ConfigError("proxy target port", target_port, "a port from 1 to 65535")
    if not 1 <= target_port <= 65535:
        raise ConfigError("proxy target port", target_port, "a port from 1 to 65535")
    authority = _authority(target_host, target_port)
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}", f"User-Agent: {_USER_AGENT}"]
    if proxy.username is not None:
        pair = f"{proxy.username}:{proxy.password}".encode()  # RFC 7617: UTF-8
        lines.append(f"Proxy-Authorization: Basic {base64.b64encode(pair).decode('ascii')}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def open_tunnel(
    proxy: ProxySettings,
    proxy_address: str,
    target_host: str,
    target_port: int,
    *,
    deadline: float,
    cancel: CancelToken = NEVER,
) -> socket.socket:
    """A TCP connection to ``target_host:target_port`` through ``proxy`` at ``proxy_address``.

    The socket is returned as :func:`~device_sdk.adapters.dialing.connect_tcp`
    leaves it: non-blocking, ``TCP_NODELAY`` set, and with nothing of the
    tunnel read. ``deadline`` (monotonic) bounds the TCP connect and the
    proxy's answer; ``cancel`` cuts either short with ``Cancelled``. Raises
    :class:`ProxyRefused` (non-2xx), :class:`ProxyTimeout` or
    :class:`ProxyProtocolError`, or :class:`ProxyError` when the proxy cannot
    be reached at all.
    """
    request = connect_request(proxy, target_host, target_port)
    talk = _Exchange(proxy, proxy_address, _authority(target_host, target_port))
    try:
        sock = connect_tcp(proxy_address, proxy.port, deadline, cancel)
    except TimeoutError as exc:
        raise talk.error(ProxyTimeout, "took no connection in time") from exc
    except OSError as exc:
        raise talk.error(ProxyError, f"unreachable ({exc.strerror or exc})") from exc
    try:
        try:
            _send(sock, request, deadline, cancel)
        except TimeoutError as exc:
            raise talk.error(ProxyTimeout, "took no CONNECT request in time") from exc
        except OSError as exc:
            raise talk.error(ProxyProtocolError, f"connection failed ({exc})") from exc
        talk.accept(_read_head(sock, talk, deadline, cancel))
    except BaseException:
        sock.close()
        raise
    return sock


def dial_via_proxy(
    proxy: ProxySettings,
    resolver: Resolver,
    target_host: str,
    target_port: int,
    *,
    deadline: float,
    cancel: CancelToken = NEVER,
) -> socket.socket:
    """A tunnel to ``target_host`` for the HTTPS side calls: each proxy address in turn.

    The proxy resolves ``target_host`` itself, unless ``proxy.resolve_locally``:
    then the SDK resolves it fresh and asks the proxy for each address in turn
    (the next one when the proxy refuses that one). A proxy address that cannot
    be reached, or talks nonsense, gives way to the next; a timeout ends it all,
    since the deadline has passed.
    """
    targets: tuple[str, ...] = (target_host,)
    if proxy.resolve_locally and not is_ip_literal(target_host):
        targets = resolve_within(resolver, target_host, deadline).addresses
    last: ProxyError | None = None
    for address in proxy_addresses(proxy, resolver, deadline):
        for target in targets:
            try:
                return open_tunnel(
                    proxy, address, target, target_port, deadline=deadline, cancel=cancel
                )
            except ProxyTimeout:
                raise
            except ProxyRefused as exc:
                last = exc  # this target: the next one, through the same proxy address
            except ProxyError as exc:
                last = exc  # this proxy address: the next one
                break
    assert last is not None  # resolve_within returns at least one address or raises
    raise last


class _Exchange:
    """Who is talking to whom, for the errors: the proxy by ``authority``, never the password."""

    def __init__(self, proxy: ProxySettings, address: str, target: str) -> None:
        self._proxy = proxy
        self._address = address
        self._target = target

    def error(self, kind: type[ProxyError], reason: str) -> ProxyError:
        message = f"proxy {self._proxy.authority} (CONNECT {self._target}): {reason}"
        proxy, target = self._proxy.authority, self._target
        return kind(message, proxy=proxy, target=target, address=self._address)

    def accept(self, head: bytes) -> None:
        """Return when ``head`` (the proxy's answer, up to its blank line) opens the tunnel."""
        lines = re.split(rb"\r?\n", head)[:-2]  # the blank line leaves two empty strings
        if len(lines) > MAX_HEADER_LINES:
            raise self.error(ProxyProtocolError, f"answered more than {MAX_HEADER_LINES} lines")
        first = lines[0] if lines else b""
        status = _STATUS_LINE.fullmatch(first)
        if status is None:
            raise self.error(
                ProxyProtocolError, f"answered something that is not HTTP: {_shown(first)}"
            )
        if not all(_HEADER_LINE.fullmatch(line) for line in lines[1:]):
            raise self.error(ProxyProtocolError, "answered a malformed header line")
        code = int(status[1])
        if 200 <= code <= 299:
            return  # RFC 9110: Content-Length and Transfer-Encoding of a 2xx are ignored
        raise self._refused(code, self._scrubbed(status[2] or b""))

    def _refused(self, code: int, reason: str) -> ProxyRefused:
        proxy = self._proxy
        # 407 is the standard answer; tinyproxy (1.11) answers a CONNECT's bad credentials 401.
        if code in (401, 407):
            who = (
                f"refused the credentials of user {proxy.username!r}"
                if proxy.username is not None
                else "requires authentication, and no username is configured"
            )
            text = f"proxy authentication: the proxy {who} (HTTP {code} {reason})"
        else:
            text = f"refused with HTTP {code} {reason}"
        message = f"proxy {proxy.authority} (CONNECT {self._target}): {text.rstrip()}"
        return ProxyRefused(
            message, proxy=proxy.authority, target=self._target, status=code, address=self._address
        )

    def _scrubbed(self, reason: bytes) -> str:
        # The proxy saw the password; a hostile one could echo it into its reason phrase.
        text = _shown(reason)
        password = self._proxy.password
        return text.replace(password, "***") if password else text


def _send(sock: socket.socket, data: bytes, deadline: float, cancel: CancelToken) -> None:
    view = memoryview(data)
    # Bounded: every pass sends at least a byte or waits (bounded by the deadline).
    for _ in range(len(data) + 1):
        if not view:
            return
        wait_ready(sock, write=True, deadline=deadline, cancel=cancel, what="CONNECT request")
        try:
            view = view[sock.send(view) :]
        except BlockingIOError:
            continue
    raise TimeoutError(errno.ETIMEDOUT, "the CONNECT request could not be sent")


def _read_head(sock: socket.socket, talk: _Exchange, deadline: float, cancel: CancelToken) -> bytes:
    """The proxy's answer up to and including its blank line, and not one byte more."""
    head = bytearray()
    # Bounded: every pass takes at least one byte off the socket or ends.
    for _ in range(MAX_HEADER_BYTES + 2):
        try:
            wait_ready(sock, write=False, deadline=deadline, cancel=cancel, what="proxy answer")
            peeked = sock.recv(_PEEK, socket.MSG_PEEK)
        except TimeoutError as exc:
            raise talk.error(ProxyTimeout, "gave no complete answer in time") from exc
        except BlockingIOError:
            continue
        except OSError as exc:
            raise talk.error(ProxyProtocolError, f"connection failed ({exc})") from exc
        if not peeked:
            raise talk.error(ProxyProtocolError, "closed the connection before answering")
        # The blank line may straddle what was taken already and what is peeked now.
        start = max(0, len(head) - 3)
        end = _END_OF_HEADERS.search(bytes(head[start:]) + peeked)
        take = (start + end.end() - len(head)) if end else len(peeked)
        try:
            taken = sock.recv(take)  # bytes already peeked: they are in the receive buffer
        except OSError as exc:
            raise talk.error(ProxyProtocolError, f"connection failed ({exc})") from exc
        if len(taken) != take:
            raise talk.error(ProxyProtocolError, "the answer could not be read back")
        head += taken
        if end:
            return bytes(head)
        if len(head) > MAX_HEADER_BYTES:
            raise talk.error(ProxyProtocolError, f"sent over {MAX_HEADER_BYTES} header bytes")
    raise talk.error(ProxyProtocolError, f"sent over {MAX_HEADER_BYTES} header bytes")


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _shown(raw: bytes) -> str:
    text = raw[:80].decode("ascii", errors="replace")
    return "".join(c if c.isprintable() else "?" for c in text) or "(empty)"

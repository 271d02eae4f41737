"""Dialling that close() can interrupt: a TCP connect and a TLS handshake.

Every wait here is a ``select`` on the socket *and* on a
:class:`~device_sdk.adapters.cancel.CancelToken`, bounded by a deadline, so a
blackholed address or a peer that never finishes its handshake costs at most
the deadline, and nothing once the client closes. The MQTT link, the failback
probe and the concierge fetch all dial through here.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import ssl
import time
from typing import TYPE_CHECKING

from device_sdk.adapters.cancel import NEVER, CancelToken

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

# A TLS handshake takes a handful of rounds; a peer dribbling single bytes is cut off by
# the deadline long before this many.
_MAX_HANDSHAKE_ROUNDS = 10_000


def wait_ready(
    sock: socket.socket, *, write: bool, deadline: float, cancel: CancelToken, what: str
) -> None:
    """Wait until ``sock`` is readable (writable) or raise: Cancelled, or TimeoutError."""
    remaining = deadline - time.monotonic()
    if remaining > 0:
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_WRITE if write else selectors.EVENT_READ)
            selector.register(cancel.fileno(), selectors.EVENT_READ)
            ready = {key.fileobj for key, _events in selector.select(remaining)}
        cancel.check(what)
        if sock in ready:
            return
    raise TimeoutError(errno.ETIMEDOUT, f"{what} timed out")


def start_connect(address: str, port: int) -> socket.socket:
    """A non-blocking socket with its connect to an IP literal under way (raises when it
    fails at once). The Happy Eyeballs race starts several of these side by side."""
    family, kind, proto, _name, sockaddr = socket.getaddrinfo(
        address, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        code = sock.connect_ex(sockaddr)
        if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            raise OSError(code, os.strerror(code))
    except BaseException:
        sock.close()
        raise
    return sock


def connect_tcp(address: str, port: int, deadline: float, cancel: CancelToken) -> socket.socket:
    """A TCP connection to an IP literal, cut short by the deadline or ``cancel``."""
    sock = start_connect(address, port)
    try:
        wait_ready(sock, write=True, deadline=deadline, cancel=cancel, what="TCP connect")
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            raise OSError(code, os.strerror(code))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return sock


def tls_handshake(sock: ssl.SSLSocket, deadline: float, cancel: CancelToken) -> None:
    """The TLS handshake on a non-blocking socket, cut short by the deadline or ``cancel``."""
    for _round in range(_MAX_HANDSHAKE_ROUNDS):
        try:
            sock.do_handshake()
            return
        except ssl.SSLWantReadError:
            write = False
        except ssl.SSLWantWriteError:
            write = True
        wait_ready(sock, write=write, deadline=deadline, cancel=cancel, what="TLS handshake")
    raise TimeoutError(errno.ETIMEDOUT, "TLS handshake took too many rounds")


def remaining(deadline: float) -> float:
    """Seconds left until ``deadline`` (monotonic); TimeoutError once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the deadline passed")
    return left


class DeadlineSocket(socket.socket):
    """A TCP socket whose every receive and send waits at most until ``deadline``,
    and whose receives also end when ``cancel`` is set (the client is closing).

    For the HTTPS side channels (the concierge fetch, DPS): ``http.client`` reads
    and writes through these, so one deadline bounds the whole exchange.
    """

    deadline: float | None = None
    cancel: CancelToken = NEVER

    def recv_into(self, buffer: WriteableBuffer, nbytes: int = 0, flags: int = 0) -> int:
        if self.deadline is not None:
            wait_ready(self, write=False, deadline=self.deadline, cancel=self.cancel, what="read")
            self.settimeout(remaining(self.deadline))
        return super().recv_into(buffer, nbytes, flags)

    def sendall(self, data: ReadableBuffer, flags: int = 0, /) -> None:
        if self.deadline is not None:
            self.settimeout(remaining(self.deadline))
        super().sendall(data, flags)


class DeadlineSSLSocket(ssl.SSLSocket):
    """The TLS counterpart of :class:`DeadlineSocket` (``SSLContext.sslsocket_class``)."""

    deadline: float | None = None
    cancel: CancelToken = NEVER

    def recv_into(self, buffer: WriteableBuffer, nbytes: int | None = None, flags: int = 0) -> int:
        if self.deadline is not None:
            if not self.pending():  # decrypted bytes already here need no wait
                what = "TLS read"
                wait_ready(self, write=False, deadline=self.deadline, cancel=self.cancel, what=what)
            self.settimeout(remaining(self.deadline))
        return super().recv_into(buffer, nbytes, flags)

    def sendall(self, data: ReadableBuffer, flags: int = 0) -> None:
        if self.deadline is not None:
            self.settimeout(remaining(self.deadline))
        super().sendall(data, flags)

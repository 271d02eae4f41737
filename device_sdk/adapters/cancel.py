"""A cancellation signal that blocking I/O can select on.

Why a file descriptor and not a ``threading.Event``: every wait on the
recovery path (a DNS answer, a racing TCP connect, a TLS handshake, a CONNACK)
is a ``select`` on a socket. Adding this token's descriptor to the same
``select`` lets ``close()`` cut any of them short at once, instead of after the
wait's own timeout. Set once, from any thread; it never resets.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading

from device_sdk.errors import ConnectError


class Cancelled(ConnectError):
    """The attempt was cut short because the client is closing. Never shown to users:
    the engine stops instead of retrying."""


class CancelToken:
    """Set once by ``cancel()``; ``fileno()`` turns readable from then on."""

    def __init__(self) -> None:
        self._set = threading.Event()
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)

    def cancel(self) -> None:
        if self._set.is_set():
            return
        self._set.set()
        with contextlib.suppress(OSError):
            self._writer.send(b"\0")  # never read: the reader stays readable

    def is_cancelled(self) -> bool:
        return self._set.is_set()

    def fileno(self) -> int:
        return self._reader.fileno()

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds; True at once when cancelled."""
        if self._set.is_set():
            return True
        if timeout > 0:
            select.select([self._reader], [], [], timeout)
        return self._set.is_set()

    def check(self, what: str = "the attempt") -> None:
        """Raise :class:`Cancelled` when cancelled."""
        if self._set.is_set():
            raise Cancelled(f"{what} was cancelled: the client is closing")

    def close(self) -> None:
        self._reader.close()
        self._writer.close()


# A token that is never cancelled, for callers with nothing to cancel (tools, tests).
NEVER = CancelToken()

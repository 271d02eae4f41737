"""The shape shared by the testbed's single-thread servers (DNS server, fault proxy).

A :class:`SelectorLoop` runs on one daemon thread; other threads only ask it
to stop, through a waker socket. :class:`LoopThread` starts it and stops it
within a bound, so no test can hang on a server that will not end.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading

from device_sdk.errors import TestbedError


class SelectorLoop:
    """A selector, a waker and a stop flag; subclasses register their sockets and run()."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._stopping = threading.Event()

    def run(self) -> None:
        """Serve until asked to stop: each registration's data is its handler(mask)."""
        try:
            while not self._stopping.is_set():
                for key, mask in self._selector.select():
                    key.data(mask)
        finally:
            self._shut_down()

    def _shut_down(self) -> None:
        """Close everything the loop owns; runs on the loop thread as it ends."""
        raise NotImplementedError

    def request_stop(self) -> None:
        self._stopping.set()
        self.wake()

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # a full waker buffer means it is awake anyway
            self._wake_writer.send(b"x")

    def close_waker(self) -> None:
        self._wake_writer.close()


class LoopThread:
    """Runs one :class:`SelectorLoop` on a daemon thread named ``name``."""

    def __init__(self, loop: SelectorLoop, name: str) -> None:
        self.loop = loop
        self._thread = threading.Thread(target=loop.run, name=name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float, what: str) -> None:
        """Stop the loop and wait at most ``timeout``; TestbedError if it does not end."""
        self.loop.request_stop()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TestbedError(f"{what} thread did not stop within {timeout:g} s")
        self.loop.close_waker()

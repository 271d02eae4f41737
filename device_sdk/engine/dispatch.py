"""Runs application callbacks off the engine thread.

Why a separate thread: a slow message handler or event callback must never
delay the engine's liveness checks, or a healthy hub would look dead and a
dead one would be noticed late.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger("device_sdk")

_STOP = object()

T = TypeVar("T")

# A callback that never returns must not grow memory for months: past this many
# waiting calls, new ones are dropped, counted and logged.
MAX_PENDING = 10_000


class CallbackDispatcher:
    """A single worker thread that calls queued callbacks in order, logging their errors."""

    def __init__(
        self,
        name: str,
        *,
        max_pending: int = MAX_PENDING,
        on_fault: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_pending)
        self._on_fault = on_fault
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, callback: Callable[[], None]) -> bool:
        """Queue ``callback``; False when it was dropped (the queue is full)."""
        try:
            self._queue.put_nowait(callback)
            return True
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(
                    "application callbacks are not keeping up: %d call(s) dropped "
                    "(an event or message handler is blocked or too slow)",
                    self.dropped,
                )
            return False

    def close(self, timeout: float) -> None:
        """Run what is queued, then stop; waits at most ``timeout`` seconds."""
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=timeout)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            try:
                item()  # type: ignore[operator]
            except Exception as exc:
                log.exception("application callback raised; the client carries on")
                if self._on_fault is not None:
                    self._on_fault(exc)


class AckWhenHandled:
    """Acknowledges one received message once every handler it was given to has returned.

    Why: a command acknowledged before its handler ran is lost if the device
    dies meanwhile; acknowledged after, the hub delivers it again on the
    resumed session. A handler that raised counts as returned, so a command
    that always fails is not delivered again and again. ``send`` runs on the
    thread of the last handler; it only posts the PUBACK to the engine thread.
    """

    def __init__(self, handlers: int, send: Callable[[], None]) -> None:
        self._left = handlers
        self._send = send
        self._lock = threading.Lock()

    def handler_returned(self) -> None:
        with self._lock:
            self._left -= 1
            done = self._left == 0
        if done:
            self._send()


def call_handler(
    handler: Callable[[T], None], message: T, ack: AckWhenHandled | None
) -> Callable[[], None]:
    """The dispatcher's call of one message handler; ``ack`` learns when it returned."""

    def call() -> None:
        try:
            handler(message)
        finally:
            if ack is not None:
                ack.handler_returned()

    return call

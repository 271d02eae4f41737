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

log = logging.getLogger("device_sdk")

_STOP = object()

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

    def submit(self, callback: Callable[[], None]) -> None:
        try:
            self._queue.put_nowait(callback)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(
                    "application callbacks are not keeping up: %d call(s) dropped "
                    "(an event or message handler is blocked or too slow)",
                    self.dropped,
                )

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

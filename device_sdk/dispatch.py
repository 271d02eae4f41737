"""Runs application callbacks off the engine thread.

Why a separate thread: a slow message handler or event callback must never
delay the engine's liveness checks, or a healthy hub would look dead and a
dead one would be noticed late.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("device_sdk")

_STOP = object()


class CallbackDispatcher:
    """A single worker thread that calls queued callbacks in order, logging their errors."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, callback: Callable[[], None]) -> None:
        self._queue.put(callback)

    def close(self, timeout: float) -> None:
        """Run what is queued, then stop; waits at most ``timeout`` seconds."""
        self._queue.put(_STOP)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            try:
                item()  # type: ignore[operator]
            except Exception:
                log.exception("application callback raised; the client carries on")

"""Short blocking checks that must not stall the engine thread.

A failback probe or a concierge fetch can block for its whole timeout. Run on
the engine thread, that would freeze liveness checks and publishing for that
long; so each runs on a short-lived thread of its own, at most one per kind
at a time, and hands its result back through the engine's mailbox, where the
engine thread applies it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

Post = Callable[[Callable[[], None]], None]


class SideTasks:
    """At most one running task per kind; results are posted back, never applied here."""

    def __init__(self, post: Post, name: str) -> None:
        self._post = post
        self._name = name
        self._lock = threading.Lock()
        self._running: dict[str, threading.Thread] = {}

    def start(self, kind: str, work: Callable[[], T], done: Callable[[T], None]) -> bool:
        """Run ``work`` off-thread, then post ``done(result)``. False if one is running."""
        with self._lock:
            current = self._running.get(kind)
            if current is not None and current.is_alive():
                return False
            thread = threading.Thread(
                target=self._run, args=(kind, work, done), name=f"{self._name}-{kind}", daemon=True
            )
            self._running[kind] = thread
        thread.start()
        return True

    def _run(self, kind: str, work: Callable[[], T], done: Callable[[T], None]) -> None:
        report: Callable[[], None]
        try:
            result = work()
        except Exception as exc:
            # Never an end unseen: the fault is raised again on the engine thread, inside
            # its supervision boundary, where it is logged, counted and emitted.
            def report(error: Exception = exc) -> None:
                raise error

        else:

            def report() -> None:
                done(result)

        # This kind is free again before its result is posted: ``done`` may start the
        # next one at once (a DPS run after a failed one), and must not find this
        # thread still alive and be refused.
        with self._lock:
            if self._running.get(kind) is threading.current_thread():
                del self._running[kind]
        self._post(report)

    def join(self, timeout: float) -> None:
        """Wait (bounded) for every task still running."""
        with self._lock:
            threads = list(self._running.values())
        for thread in threads:
            thread.join(timeout)

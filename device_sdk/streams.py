"""Streams of events and messages, shared by both client faces.

The engine hands each event (and each subscribed message) to a listener on its
callback thread. A :class:`Fanout` is that one listener: it copies every item
to each stream attached to it, and ends them all when the client closes. Each
stream keeps its items in a :class:`StreamBuffer`. The faces differ only in how
a reader waits for the next item:

* :class:`BlockingStream` (``DeviceClient.events()``) waits on a
  ``threading.Condition``;
* ``device_sdk.aio.AsyncStream`` is woken through ``loop.call_soon_threadsafe``.

Overflow: each stream is bounded and drops its *oldest* item when full,
counting it in ``dropped`` and logging a warning on the first drop. Why not
backpressure: the producer is the engine's callback thread, and blocking it on
one slow reader would stall every other callback and stream. Why not unbounded:
a reader that stopped reading would grow memory without limit, on a device that
may have a few megabytes. Messages the hub delivered were already acknowledged
by the MQTT session, so a dropped message is gone for that reader; size the
bound (``max_queued``) to the burst the application must absorb.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from types import TracebackType
from typing import Generic, Protocol, TypeVar

from device_sdk.errors import ConfigError

log = logging.getLogger("device_sdk")

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)

DEFAULT_MAX_QUEUED = 1000


class StreamEnded(Exception):
    """Internal: the stream ended and every item before the end was taken."""


class Sink(Protocol[T_contra]):
    """What a :class:`Fanout` feeds. Both calls come from producer threads and must not block."""

    def put(self, item: T_contra) -> None: ...

    def end(self) -> None: ...


class Fanout(Generic[T]):
    """Copies each item to every attached sink; :meth:`close` ends them all. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sinks: list[Sink[T]] = []
        self._closed = False

    def attach(self, sink: Sink[T]) -> None:
        """Feed ``sink`` from now on; a sink attached after close is ended at once."""
        with self._lock:
            if not self._closed:
                self._sinks.append(sink)
                return
        sink.end()

    def detach(self, sink: Sink[T]) -> None:
        with self._lock:
            if sink in self._sinks:
                self._sinks.remove(sink)

    def send(self, item: T) -> None:
        with self._lock:
            sinks = list(self._sinks)
        for sink in sinks:
            sink.put(item)

    def close(self) -> None:
        """End every sink, after whatever was sent before. Idempotent."""
        with self._lock:
            self._closed = True
            sinks, self._sinks = self._sinks, []
        for sink in sinks:
            sink.end()


class StreamBuffer(Generic[T]):
    """A bounded, drop-oldest queue with an end mark. Not thread-safe: its stream guards it."""

    def __init__(self, max_items: int, label: str) -> None:
        if not isinstance(max_items, int) or max_items < 1:
            raise ConfigError("max_queued", max_items, "an integer of at least 1")
        self._items: deque[T] = deque()
        self._max_items = max_items
        self._label = label
        self._ended = False
        self.dropped = 0

    def push(self, item: T) -> None:
        if self._ended:
            return  # in flight when the reader closed the stream: nobody will read it
        if len(self._items) >= self._max_items:
            self._items.popleft()
            self.dropped += 1
            if self.dropped == 1:
                log.warning(
                    "%s: the reader fell %d items behind; dropping the oldest (counted in dropped)",
                    self._label,
                    self._max_items,
                )
        self._items.append(item)

    def end(self, *, discard: bool = False) -> None:
        """No more items will come; ``discard`` also forgets those not yet taken."""
        self._ended = True
        if discard:
            self._items.clear()

    def ready(self) -> bool:
        """True when :meth:`take` will not have to wait: an item is queued, or the end."""
        return bool(self._items) or self._ended

    def take(self) -> T:
        """The oldest queued item; raises StreamEnded once ended and drained."""
        if self._items:
            return self._items.popleft()
        if self._ended:
            raise StreamEnded
        raise LookupError("take() called before ready()")


class BlockingStream(Generic[T]):
    """An iterator over items from a :class:`Fanout`, for threads.

    It ends when the source closes (after the items sent before that), when
    :meth:`close` is called, or after ``timeout`` seconds without an item
    (``None``: no idle limit). Use it as a context manager to detach it early.
    """

    def __init__(
        self, source: Fanout[T], *, timeout: float | None, max_items: int, label: str
    ) -> None:
        self._buffer: StreamBuffer[T] = StreamBuffer(max_items, label)
        self._ready = threading.Condition()
        self._timeout = timeout
        self._source = source
        source.attach(self)

    @property
    def dropped(self) -> int:
        """Items dropped because the reader fell ``max_queued`` behind."""
        with self._ready:
            return self._buffer.dropped

    def put(self, item: T) -> None:
        with self._ready:
            self._buffer.push(item)
            self._ready.notify_all()

    def end(self) -> None:
        with self._ready:
            self._buffer.end()
            self._ready.notify_all()

    def close(self) -> None:
        """Stop receiving; the iteration ends at its next step."""
        self._source.detach(self)
        with self._ready:
            self._buffer.end(discard=True)
            self._ready.notify_all()

    def __iter__(self) -> BlockingStream[T]:
        return self

    def __next__(self) -> T:
        with self._ready:
            idle = not self._ready.wait_for(self._buffer.ready, self._timeout)
            if not idle:
                try:
                    return self._buffer.take()
                except StreamEnded:
                    raise StopIteration from None
        self.close()  # idle for the whole timeout: this stream is done
        raise StopIteration

    def __enter__(self) -> BlockingStream[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

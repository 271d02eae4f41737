"""The outbox: every message ``publish()`` accepted, kept until its PUBACK.

:class:`Outbox` is the interface the engine drains; :class:`MemoryOutbox` is
the bounded in-memory implementation. A message leaves an outbox only when
:meth:`Outbox.ack` is called for it, which the engine does on PUBACK. When a
link dies, :meth:`Outbox.rewind` puts every unacknowledged message back in
line, in its original order, so the next link sends them again first: that
keeps order per topic across reconnects and failovers.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from device_sdk.config import OutboxSettings, check_wait
from device_sdk.core.message_id import MessageIdSource
from device_sdk.errors import ClientClosed, DeviceSDKError, MessageDropped, OutboxFull
from device_sdk.message import PublishProperties

log = logging.getLogger("device_sdk")

# One lock for every handle: held for a few bytecodes at a time, it is cheaper than
# a lock and an Event per message, which showed in the publish hot path.
_HANDLES_LOCK = threading.Lock()


class PublishHandle:
    """What ``publish()`` returns: wait on it for the message's PUBACK.

    ``wait()`` returns once the hub acknowledged the message (QoS 1) or the
    message was written to the socket (QoS 0). It raises :class:`ClientClosed`
    if the client closed first, and ``TimeoutError`` if ``timeout`` passed; the
    message stays queued in both of those cases until the client closes.
    """

    __slots__ = ("_callbacks", "_done", "_error", "_event", "message_id")

    def __init__(self, message_id: str) -> None:
        self.message_id = message_id
        self._done = False
        self._error: DeviceSDKError | None = None
        self._event: threading.Event | None = None  # made only when someone waits
        self._callbacks: list[Callable[[PublishHandle], None]] | None = None

    def wait(self, timeout: float | None = None) -> None:
        if not self._done:
            check_wait("timeout", timeout, none_ok=True)
            with _HANDLES_LOCK:
                if not self._done and self._event is None:
                    self._event = threading.Event()
                event = self._event
            if event is not None and not event.wait(timeout):
                raise TimeoutError(f"message {self.message_id} not acknowledged within {timeout} s")
        if self._error is not None:
            raise self._error

    def done(self) -> bool:
        return self._done

    @property
    def acknowledged(self) -> bool:
        return self._done and self._error is None

    @property
    def error(self) -> DeviceSDKError | None:
        """Why the message will not be acknowledged (once done), or None."""
        return self._error

    def add_done_callback(self, callback: Callable[[PublishHandle], None]) -> None:
        """Call ``callback(handle)`` once done; at once if it already is.

        It runs on the thread that completes the handle (usually the engine's):
        keep it short, as the asyncio face does by only scheduling a future.
        """
        with _HANDLES_LOCK:
            if not self._done:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(callback)
                return
        _call_contained(callback, self)

    def _resolve(self, error: DeviceSDKError | None = None) -> None:
        with _HANDLES_LOCK:
            if self._done:
                return
            self._error = error
            self._done = True
            event, callbacks, self._callbacks = self._event, self._callbacks, None
        if event is not None:
            event.set()
        for callback in callbacks or ():
            _call_contained(callback, self)


def _call_contained(callback: Callable[[PublishHandle], None], handle: PublishHandle) -> None:
    """Run an application's done-callback; its fault is logged and counted, never raised.

    Why: it usually runs on the engine thread, inside the handling of a PUBACK;
    an exception there would unwind through paho and end the engine thread.
    """
    try:
        callback(handle)
    except Exception as exc:
        log.exception("a PublishHandle done-callback raised; the client carries on")
        from device_sdk.engine.supervision import report_callback_fault  # the fault path only

        report_callback_fault(exc)


@dataclass(slots=True, kw_only=True)
class OutboundMessage:
    """One accepted message. ``seq`` orders messages; ``message_id`` is stable across resends."""

    seq: int
    message_id: str
    topic: str
    payload: bytes
    qos: int
    handle: PublishHandle | None = field(default=None, repr=False)
    retain: bool = False
    properties: PublishProperties | None = None  # MQTT 5 only; None: none set
    expires_at: float | None = None  # wall clock (time.time()); None: never (publish(ttl=))
    priority: int = 0  # higher drains first; order is kept within a priority

    @property
    def size(self) -> int:
        return len(self.payload) + len(self.topic)


class Outbox(Protocol):
    """The interface between ``publish()`` and the engine's drain.

    ``put`` is called from application threads; the rest from the engine thread.
    Implementations must be thread-safe between the two. ``ack`` and ``reject``
    both end a message's life in the outbox: ``ack`` when the hub took it,
    ``reject`` (failing its handle with ``error``) when the hub refused it.
    """

    def put(self, topic: str, payload: bytes, qos: int) -> OutboundMessage: ...

    def take_unsent(self, limit: int) -> list[OutboundMessage]: ...

    def ack(self, seq: int) -> None: ...

    def reject(self, seq: int, error: DeviceSDKError) -> None: ...

    def rewind(self) -> None: ...

    def depth(self) -> int: ...

    def dropped(self) -> int: ...

    def close(self, error: DeviceSDKError | None = None) -> list[OutboundMessage]:
        """Refuse new messages; the handles still waiting raise ``error`` (default
        ClientClosed). Returns the messages that were never acknowledged."""
        ...


class MemoryOutbox:
    """A bounded in-memory outbox. Lost on process exit; use it only where that is acceptable."""

    def __init__(
        self,
        *,
        max_messages: int,
        max_bytes: int,
        overflow: Literal["reject", "drop_oldest"] = "reject",
    ) -> None:
        # The bounds' rules live in OutboxSettings; a bad value is a ConfigError here too.
        OutboxSettings(max_messages=max_messages, max_bytes=max_bytes, overflow=overflow)
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._overflow = overflow
        self._dropped = 0
        self._lock = threading.Lock()
        self._pending: OrderedDict[int, OutboundMessage] = OrderedDict()
        self._unsent: deque[int] = deque()
        self._bytes = 0
        self._seq = itertools.count(1)
        self._ids = MessageIdSource()  # the same ids as the durable outbox's
        self._closed = False

    def put(self, topic: str, payload: bytes, qos: int) -> OutboundMessage:
        size = len(payload) + len(topic)
        if size > self._max_bytes:
            raise OutboxFull(
                f"message of {size} bytes exceeds the outbox bound of {self._max_bytes}"
            )
        with self._lock:
            if self._closed:
                raise ClientClosed("the client is closed; the message was not accepted")
            evicted = self._make_room(size)
            message = OutboundMessage(
                seq=next(self._seq),
                message_id=self._ids.next_id(),
                topic=topic,
                payload=payload,
                qos=qos,
                handle=None,
            )
            message.handle = PublishHandle(message.message_id)
            self._pending[message.seq] = message
            self._unsent.append(message.seq)
            self._bytes += size
        for old in evicted:
            if old.handle is not None:
                old.handle._resolve(MessageDropped(f"dropped by drop_oldest: {old.message_id}"))
        return message

    def _make_room(self, size: int) -> list[OutboundMessage]:
        """Under the lock: raise OutboxFull, or evict the oldest under drop_oldest."""
        evicted: list[OutboundMessage] = []
        while len(self._pending) >= self._max_messages or self._bytes + size > self._max_bytes:
            if self._overflow == "reject":
                raise OutboxFull(
                    f"outbox full ({len(self._pending)} messages, {self._bytes} bytes; "
                    f"limits {self._max_messages} messages, {self._max_bytes} bytes); "
                    "nothing queued was dropped"
                )
            _seq, oldest = self._pending.popitem(last=False)
            self._bytes -= oldest.size
            self._dropped += 1
            evicted.append(oldest)
        return evicted

    def take_unsent(self, limit: int) -> list[OutboundMessage]:
        taken: list[OutboundMessage] = []
        with self._lock:
            while self._unsent and len(taken) < limit:
                message = self._pending.get(self._unsent.popleft())
                if message is not None:
                    taken.append(message)
        return taken

    def ack(self, seq: int) -> None:
        self.reject(seq, None)

    def reject(self, seq: int, error: DeviceSDKError | None) -> None:
        with self._lock:
            message = self._pending.pop(seq, None)
            if message is not None:
                self._bytes -= message.size
        if message is not None and message.handle is not None:
            message.handle._resolve(error)

    def rewind(self) -> None:
        with self._lock:
            self._unsent = deque(self._pending)

    def depth(self) -> int:
        with self._lock:
            return len(self._pending)

    def dropped(self) -> int:
        """Messages pushed out by the drop_oldest policy since this outbox was opened."""
        with self._lock:
            return self._dropped

    def close(self, error: DeviceSDKError | None = None) -> list[OutboundMessage]:
        """Refuse new messages; fail the handles of those never acknowledged."""
        with self._lock:
            self._closed = True
            left = list(self._pending.values())
        for message in left:
            if message.handle is not None and not message.handle.done():
                message.handle._resolve(
                    error or ClientClosed("closed before the hub acknowledged it")
                )
        return left

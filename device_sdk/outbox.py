"""The outbox: every message ``publish()`` accepted, kept until its PUBACK.

:class:`Outbox` is the interface the engine drains; :class:`MemoryOutbox` is
the bounded in-memory implementation. A message leaves an outbox only when
:meth:`Outbox.ack` is called for it, which the engine does on PUBACK. When a
link dies, :meth:`Outbox.rewind` puts every unacknowledged message back in
line, in its original order, so the next link sends them again first: that
keeps order per topic across reconnects and failovers.

Priority: a message carries a priority from :data:`ROUTINE` (0, the default)
through :data:`URGENT` (1) up to :data:`HIGHEST_PRIORITY` (9). ``take_unsent``
hands out higher priorities first (alarms drain before routine readings) and
keeps acceptance order within a priority, so order per topic holds for
messages of one priority; ``rewind`` puts unacknowledged messages back in line
by the same rule.

Expiry: a message put with ``ttl`` seconds carries ``expires_at`` (wall
clock). Once that passes while it waits to be sent, it leaves the outbox
unsent and its handle fails with :class:`~device_sdk.errors.MessageExpired`:
:meth:`Outbox.expire` removes such messages and returns them, and
``take_unsent`` never hands one out. A message already sent and awaiting its
PUBACK is not expired: the hub may have it, and its PUBACK is what ends it. If
its link dies, ``rewind`` puts it back in line, where the next ``expire`` or
``take_unsent`` catches it. Why the wall clock: a TTL is about the age of a
reading, and the durable outbox keeps messages across a reboot, which a
monotonic clock does not survive.

Why one module of over 500 lines: the handle, the message, the interface and
the parts both outboxes are built from (:class:`SendQueue`, ``check_extras``)
are one vocabulary that the durable outbox imports whole; :class:`SendQueue`
is pure (no I/O, no clock of its own) and could move to ``core/`` unchanged.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from device_sdk.config import OutboxSettings, check_wait
from device_sdk.core.message_id import MessageIdSource
from device_sdk.errors import (
    ClientClosed,
    ConfigError,
    DeviceSDKError,
    MessageDropped,
    MessageExpired,
    OutboxFull,
)
from device_sdk.message import PublishProperties

log = logging.getLogger("device_sdk")

ROUTINE = 0  # the default priority: readings that can wait behind others
URGENT = 1  # drains before every routine message (an alarm)
HIGHEST_PRIORITY = 9  # priorities are the integers ROUTINE..HIGHEST_PRIORITY
# MQTT's Message Expiry Interval is a four-byte count of seconds: a longer TTL
# could not be carried to the hub, so it is refused rather than silently cut.
MAX_TTL = 4_294_967_295.0
# How many expired messages ``take_unsent`` keeps for the next ``expire()`` to
# report; past that only ``expired()`` counts them (an engine that never calls
# expire() must not hold every stale payload forever).
_UNREPORTED_LIMIT = 1024

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

    def expired_by(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now


class Outbox(Protocol):
    """The interface between ``publish()`` and the engine's drain.

    ``put`` is called from application threads; the rest from the engine thread.
    Implementations must be thread-safe between the two. ``ack`` and ``reject``
    both end a message's life in the outbox: ``ack`` when the hub took it,
    ``reject`` (failing its handle with ``error``) when the hub refused it.

    ``put``'s keyword arguments (``retain``, ``properties``, ``ttl``,
    ``priority``) and the methods ``expire`` and ``expired`` came later than
    the rest. An application's own outbox written before them, with only
    ``put(topic, payload, qos)``, stays usable: the engine calls that short
    form whenever every extra is at its default, and skips expiry for an
    outbox without ``expire``. Publishing with a TTL, a priority, retain or
    properties through such an outbox cannot work: its ``put`` does not take them.
    """

    def put(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        *,
        retain: bool = False,
        properties: PublishProperties | None = None,
        ttl: float | None = None,
        priority: int = ROUTINE,
    ) -> OutboundMessage:
        """Accept a message. ``ttl``: seconds it may wait unsent (None: forever);
        ``priority``: ROUTINE (0) .. HIGHEST_PRIORITY (9), higher drains first."""
        ...

    def take_unsent(self, limit: int) -> list[OutboundMessage]:
        """Up to ``limit`` messages to send now: higher priority first, then in
        acceptance order. Never one whose TTL has passed (those expire here)."""
        ...

    def expire(self, now: float) -> list[OutboundMessage]:
        """Remove every message waiting to be sent whose ``expires_at <= now``
        (wall clock), failing its handle with MessageExpired; messages in flight
        stay. Returns them, and those ``take_unsent`` expired since the last call."""
        ...

    def expired(self) -> int:
        """How many messages have expired since this outbox was opened."""
        ...

    def ack(self, seq: int) -> None: ...

    def reject(self, seq: int, error: DeviceSDKError) -> None: ...

    def rewind(self) -> None: ...

    def depth(self) -> int: ...

    def dropped(self) -> int: ...

    def close(self, error: DeviceSDKError | None = None) -> list[OutboundMessage]:
        """Refuse new messages; the handles still waiting raise ``error`` (default
        ClientClosed). Returns the messages that were never acknowledged."""
        ...


def check_extras(
    *, retain: bool, properties: PublishProperties | None, ttl: float | None, priority: int
) -> None:
    """Validate ``put``'s keyword arguments: ConfigError naming the value and what is allowed."""
    if not isinstance(retain, bool):
        raise ConfigError("retain", retain, "True or False")
    if properties is not None and not isinstance(properties, PublishProperties):
        raise ConfigError("properties", properties, "a PublishProperties or None")
    if ttl is not None and (
        isinstance(ttl, bool)
        or not isinstance(ttl, int | float)
        or not math.isfinite(ttl)
        or not 0 < ttl <= MAX_TTL
    ):
        raise ConfigError("ttl", ttl, f"None (never expires) or seconds, > 0 and <= {MAX_TTL:.0f}")
    if (
        isinstance(priority, bool)
        or not isinstance(priority, int)
        or not ROUTINE <= priority <= HIGHEST_PRIORITY
    ):
        raise ConfigError(
            "priority",
            priority,
            f"an integer from {ROUTINE} (routine) through {URGENT} (urgent) to {HIGHEST_PRIORITY}",
        )


def fail_expired(messages: Iterable[OutboundMessage], now: float) -> None:
    """Fail the handles of expired messages (outside any lock: handles run callbacks)."""
    for message in messages:
        if message.handle is not None:
            overdue = now - (message.expires_at or now)
            message.handle._resolve(
                MessageExpired(message_id=message.message_id, topic=message.topic, overdue=overdue)
            )


class SendQueue:
    """The engine's side of an outbox: what to send next, what is in flight, what expires.

    Both outboxes keep their messages in a seq-ordered ``live`` mapping and use
    this for the rest, under their own lock. Lines are one deque of seqs per
    priority, so the common case (one priority) costs what a single deque did;
    a seq whose message left ``live`` meanwhile (acked, dropped, expired) is
    skipped when reached rather than searched for. Deadlines are a heap of
    ``(expires_at, seq)`` for messages with a TTL only.
    """

    __slots__ = ("_by_priority", "_deadlines", "_in_flight", "_lanes", "unreported")

    def __init__(self) -> None:
        self._lanes: list[tuple[int, deque[int]]] = []  # by priority, highest first
        self._by_priority: dict[int, deque[int]] = {}  # the same lanes, to append to
        self._in_flight: set[int] = set()  # taken, not yet acked, rejected or rewound
        self._deadlines: list[tuple[float, int]] = []
        self.unreported: list[OutboundMessage] = []  # expired in take(), for expire()

    def add(self, message: OutboundMessage, live: Mapping[int, OutboundMessage]) -> None:
        """Put a newly stored message at the end of its priority's line."""
        lane = self._by_priority.get(message.priority)
        (lane if lane is not None else self._lane(message.priority)).append(message.seq)
        if message.expires_at is not None:
            heapq.heappush(self._deadlines, (message.expires_at, message.seq))
            # Acked messages leave stale deadlines behind; with long TTLs they
            # would pile up, so the heap is rebuilt once they outnumber the live.
            if len(self._deadlines) > 2 * len(live) + 64:
                self._deadlines = [
                    (m.expires_at, m.seq) for m in live.values() if m.expires_at is not None
                ]
                heapq.heapify(self._deadlines)

    def _lane(self, priority: int) -> deque[int]:
        lane = self._by_priority.get(priority)
        if lane is None:
            lane = self._by_priority[priority] = deque()
            self._lanes.append((priority, lane))
            self._lanes.sort(key=lambda entry: -entry[0])
        return lane

    def take(
        self, limit: int, live: Mapping[int, OutboundMessage], now: float
    ) -> tuple[list[OutboundMessage], list[OutboundMessage]]:
        """Up to ``limit`` messages to send, by priority then seq; and those found expired.

        The caller removes the expired ones from ``live``.
        """
        taken: list[OutboundMessage] = []
        expired: list[OutboundMessage] = []
        for _priority, lane in self._lanes:
            while lane and len(taken) < limit:
                message = live.get(lane.popleft())
                if message is None:
                    continue  # acked, dropped or expired meanwhile
                if message.expires_at is not None and message.expires_at <= now:
                    expired.append(message)
                    continue
                self._in_flight.add(message.seq)
                taken.append(message)
        if expired:
            room = _UNREPORTED_LIMIT - len(self.unreported)
            self.unreported += expired[: max(room, 0)]
        return taken, expired

    def settled(self, seq: int) -> None:
        """The message left the outbox (acked, rejected): it is no longer in flight."""
        self._in_flight.discard(seq)

    def rewind(self, live: Mapping[int, OutboundMessage]) -> None:
        """Nothing is in flight any more: every live message back in line, by priority then seq."""
        self._in_flight.clear()
        for _priority, lane in self._lanes:
            lane.clear()
        for message in live.values():  # seq order, so each line stays in seq order
            self._lane(message.priority).append(message.seq)

    def due(self, now: float, live: Mapping[int, OutboundMessage]) -> list[OutboundMessage]:
        """Messages waiting to be sent whose deadline is ``<= now``; in-flight ones stay.

        The caller removes them from ``live``; their line entries are skipped later.
        """
        due: list[OutboundMessage] = []
        held: list[tuple[float, int]] = []
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            entry = heapq.heappop(deadlines)
            message = live.get(entry[1])
            if message is None:
                continue
            if entry[1] in self._in_flight:
                held.append(entry)  # its PUBACK may still come; judged again after a rewind
            else:
                due.append(message)
        for entry in held:
            heapq.heappush(deadlines, entry)
        return due


class MemoryOutbox:
    """A bounded in-memory outbox. Lost on process exit; use it only where that is acceptable.

    ``clock`` is the wall clock TTLs are measured on (``time.time``; a test may pass its own).
    """

    def __init__(
        self,
        *,
        max_messages: int,
        max_bytes: int,
        overflow: Literal["reject", "drop_oldest"] = "reject",
        clock: Callable[[], float] = time.time,
    ) -> None:
        # The bounds' rules live in OutboxSettings; a bad value is a ConfigError here too.
        OutboxSettings(max_messages=max_messages, max_bytes=max_bytes, overflow=overflow)
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._overflow = overflow
        self._clock = clock  # wall clock, for TTLs; injectable for tests
        self._dropped = 0
        self._expired = 0
        self._lock = threading.Lock()
        self._pending: OrderedDict[int, OutboundMessage] = OrderedDict()
        self._line = SendQueue()
        self._bytes = 0
        self._seq = itertools.count(1)
        self._ids = MessageIdSource()  # the same ids as the durable outbox's
        self._closed = False

    def put(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        *,
        retain: bool = False,
        properties: PublishProperties | None = None,
        ttl: float | None = None,
        priority: int = ROUTINE,
    ) -> OutboundMessage:
        """Accept a message (see :class:`Outbox`); OutboxFull at the bound under ``reject``."""
        if retain or properties is not None or ttl is not None or priority:
            check_extras(retain=retain, properties=properties, ttl=ttl, priority=priority)
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
            )
            if retain or properties is not None or ttl is not None or priority:
                message.retain, message.properties, message.priority = retain, properties, priority
                message.expires_at = None if ttl is None else self._clock() + ttl
            message.handle = PublishHandle(message.message_id)
            self._pending[message.seq] = message
            self._line.add(message, self._pending)
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
        now = self._clock()
        with self._lock:
            taken, expired = self._line.take(limit, self._pending, now)
            self._remove_expired(expired)
        fail_expired(expired, now)
        return taken

    def expire(self, now: float) -> list[OutboundMessage]:
        with self._lock:
            due = self._line.due(now, self._pending)
            self._remove_expired(due)
            reported, self._line.unreported = self._line.unreported + due, []
        fail_expired(due, now)
        return reported

    def _remove_expired(self, messages: list[OutboundMessage]) -> None:
        for message in messages:
            del self._pending[message.seq]
            self._bytes -= message.size
        self._expired += len(messages)

    def expired(self) -> int:
        """Messages whose TTL passed before they were sent, since this outbox was opened."""
        with self._lock:
            return self._expired

    def ack(self, seq: int) -> None:
        self.reject(seq, None)

    def reject(self, seq: int, error: DeviceSDKError | None) -> None:
        with self._lock:
            self._line.settled(seq)
            message = self._pending.pop(seq, None)
            if message is not None:
                self._bytes -= message.size
        if message is not None and message.handle is not None:
            message.handle._resolve(error)

    def rewind(self) -> None:
        with self._lock:
            self._line.rewind(self._pending)

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

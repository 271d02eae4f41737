"""The durable outbox: SQLite in WAL mode, with group commit.

:class:`SqliteOutbox` behaves exactly like :class:`~device_sdk.outbox.MemoryOutbox`
(the same contract tests run against both), and also survives the process:
``put()`` returns only once the message is committed to the file, and after a
crash or power loss the next ``SqliteOutbox`` on the same file hands every
unacknowledged message back to ``take_unsent()``, in the original order, with
its original message id. Handles do not survive a restart: recovered messages
have ``handle=None``.

Sync levels (``synchronous=``), both in WAL mode:

* ``"FULL"``: every commit fsyncs the write-ahead log. An accepted message
  survives a process crash, a kernel panic and power loss (on storage that
  honours flushes; some cheap SD cards do not).
* ``"NORMAL"``: commits do not fsync; the log is synced at checkpoints. An
  accepted message survives a crash of the process, but power loss or an OS
  crash may roll back the last commits. The file is never corrupted either way.

Group commit: a commit costs the same whether it holds one message or a
hundred (at ``FULL`` it is dominated by one fsync), so concurrent ``put()``
calls share commits. There is no writer thread: the first caller that finds
no commit running becomes the *leader*, takes every message queued so far,
commits them in one transaction outside the lock, and wakes the others; calls
that arrive meanwhile queue up and the next leader commits them together
(after waiting a fraction of a commit for the publishers of the last batch to
come back, see ``_gather``). A single thread putting in a tight loop is always
its own leader and never waits, so it pays no thread hand-off, only its
commit, which is a single INSERT statement.

Acknowledgements are lazy: ``ack()`` (on the engine thread) never touches the
file. It forgets the message in memory and queues the row's DELETE, which rides
along in the next commit, or a background flush when no ``put()`` comes for a
while (``ack_flush_interval``) or many acks piled up (``ack_flush_batch``).
That is safe because a lost DELETE only means a message that was already
acknowledged is sent again after a crash, which at-least-once delivery allows
(it keeps its message id, so the backend deduplicates it), and it keeps fsyncs
off the engine thread, where a slow SD card would stall the network loop.

The file is checked before anything writes to it. A file that is not SQLite,
SQLite without our ``application_id``, a newer schema, or a database that
fails ``PRAGMA quick_check`` raises :class:`~device_sdk.errors.OutboxCorrupt`
and is left byte-for-byte as it was: the header is read with plain file I/O and
the rest is inspected through a read-only connection. A file that cannot be
written (read-only file or file system, permissions), or that another outbox
holds open, raises :class:`~device_sdk.errors.OutboxStorageError`. A write that
fails later (disk full, file size limit, I/O error) makes that ``put()`` raise
``OutboxStorageError``: the message was not accepted, and everything accepted
before is untouched.

Pending messages are also kept in memory (bounded by ``max_bytes``), so the
engine's drain never waits for the file. Priorities and expiry work there too
(see :mod:`device_sdk.outbox`); each row stores its message's retain flag,
properties, ``expires_at`` and priority, so they hold across a restart, and an
expired message's row is deleted like an acknowledged one's, lazily.

The files are private. A new outbox and its ``-wal`` and ``-shm`` files are
created 0600 whatever the umask. An existing outbox that other users can read
is made 0600 at open (bits are only taken away, and a warning is logged)
rather than merely warned about: queued telemetry belongs to the device, such a
file most likely predates this rule, and nothing can share an open outbox
anyway, since it holds its file exclusively. A file this user does not own is
left as it is, with a warning. A missing folder is created 0700, one level
only, as systemd's ``StateDirectory=`` would; deeper (a typo in the path) the
open fails with ``OutboxStorageError`` naming the folder and the two ways out:
create it, or set ``DEVICE_SDK_OUTBOX_PATH`` (``outbox.path``) to another file.

Why one module of over 500 lines: the group commit, the lazy deletes, the
bounds and the recovery after a crash share one lock and one set of in-memory
books (``_live``, ``_unsent``, ``_queue``, ``_deletes``); split apart, each
piece would need the others' invariants spelled out across a module boundary.
The file and permission handling, which needs none of that, is in
:mod:`device_sdk.adapters.sqlite_file`.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from device_sdk.adapters.sqlite_file import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    Synchronous,
    failure_reason,
    open_errors,
    open_outbox_file,
    rollback_quietly,
    storage_failed,
)
from device_sdk.core.message_id import MessageIdSource
from device_sdk.errors import (
    ClientClosed,
    ConfigError,
    DeviceSDKError,
    MessageDropped,
    OutboxCorrupt,
    OutboxFull,
)
from device_sdk.message import PublishProperties
from device_sdk.outbox import (
    ROUTINE,
    OutboundMessage,
    PublishHandle,
    SendQueue,
    check_extras,
    fail_expired,
)

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "SqliteOutbox"]

log = logging.getLogger("device_sdk")

Overflow = Literal["reject", "drop_oldest"]

_INSERT = (
    "INSERT INTO outbox"
    " (seq, message_id, topic, payload, qos, retain, properties, expires_at, priority) VALUES "
)
_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_ONE = _INSERT + _ROW
# A lone routine message (no retain, properties, TTL or priority) names only the
# columns it sets and lets the defaults fill the rest: binding four more
# parameters costs a measurable share of a commit at synchronous=NORMAL.
_INSERT_ONE_PLAIN = (
    "INSERT INTO outbox (seq, message_id, topic, payload, qos) VALUES (?, ?, ?, ?, ?)"
)
_INSERT_ROWS = 100  # rows per INSERT: 900 parameters, under SQLite's old limit of 999
_SELECT_ALL = (
    "SELECT seq, message_id, topic, payload, qos, retain, properties, expires_at, priority"
    " FROM outbox ORDER BY seq"
)
_DELETE_RANGE = "DELETE FROM outbox WHERE seq BETWEEN ? AND ?"
_SAVE_STATE = "UPDATE outbox_state SET last_seq = ?, last_message_id = ? WHERE singleton = 1"


@dataclass(slots=True)
class _Write:
    """One ``put()`` waiting for the commit that stores its message."""

    message: OutboundMessage
    done: bool = False
    failure: BaseException | None = None  # why the commit failed; None once stored


class SqliteOutbox:
    """A bounded outbox in an SQLite file that survives crashes and power loss.

    ``put()`` is called from application threads; ``take_unsent``, ``ack`` and
    ``rewind`` from the engine thread. ``overflow="reject"`` raises
    :class:`~device_sdk.errors.OutboxFull` at the bound and drops nothing;
    ``"drop_oldest"`` deletes the oldest messages to make room, fails their
    handles with :class:`~device_sdk.errors.MessageDropped` and counts them in
    :meth:`dropped`. ``ids`` issues message ids (seeded from the file on open);
    acknowledged rows are deleted once ``ack_flush_batch`` of them are pending
    or ``ack_flush_interval`` seconds after the first. ``clock`` is the wall
    clock TTLs are measured on. Close it (or the client that owns it) to stop
    its flush thread and close the file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_messages: int,
        max_bytes: int,
        overflow: Overflow = "reject",
        synchronous: Synchronous = "FULL",
        ids: MessageIdSource | None = None,
        ack_flush_interval: float = 1.0,
        ack_flush_batch: int = 256,
        clock: Callable[[], float] = time.time,
    ) -> None:
        _check_settings(max_messages, max_bytes, overflow, synchronous, ack_flush_batch)
        if not ack_flush_interval > 0:
            raise ConfigError("ack_flush_interval", ack_flush_interval, "seconds, more than 0")
        self.path = Path(path)
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._drop_oldest = overflow == "drop_oldest"
        self._flush_interval = ack_flush_interval
        self._flush_batch = ack_flush_batch
        self._ids = ids or MessageIdSource()
        self._clock = clock  # wall clock, for TTLs; injectable for tests
        self._db = open_outbox_file(self.path, synchronous)
        self._lock = threading.Lock()
        self._batch_done = threading.Condition(self._lock)
        self._acks_waiting = threading.Condition(self._lock)
        self._live: OrderedDict[int, OutboundMessage] = OrderedDict()  # committed, not acked
        self._live_bytes = 0
        self._line = SendQueue()  # what to send next, what is in flight, what expires
        self._queue: list[_Write] = []  # waiting for a leader to commit them
        # Accepted by put() but not yet committed (queued, or in the running commit):
        # counted against the bounds so concurrent puts cannot overshoot them.
        self._reserved = 0
        self._reserved_bytes = 0
        self._deletes: list[int] = []  # acked or dropped, row not yet deleted
        self._deletes_since = 0.0  # when the oldest of them was queued (monotonic)
        self._committing = False  # a leader is gathering or committing
        self._gathering = False
        self._queue_grew = threading.Condition(self._lock)
        self._last_writers = 0  # put() calls the last commit stored, and how long it took
        self._last_commit_seconds = 0.0
        self._closed = False
        self._db_closed = False
        self._dropped = 0
        self._expired = 0
        self._last_stored: tuple[int, str] = (0, "")  # newest (seq, message_id) ever stored
        try:
            with open_errors(self.path):
                self._seq = itertools.count(self._recover() + 1)
        except BaseException:
            self._db.close()
            raise
        self._flusher = threading.Thread(
            target=self._flush_acks, name=f"device-sdk-outbox-{self.path.name}", daemon=True
        )
        self._flusher.start()

    # -- the Outbox interface --------------------------------------------------------------

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
        """Store a message; returns once it is committed at the configured sync level."""
        if retain or properties is not None or ttl is not None or priority:
            check_extras(retain=retain, properties=properties, ttl=ttl, priority=priority)
        size = len(payload) + len(topic)
        dropped: list[OutboundMessage] = []
        with self._lock:
            if self._closed:
                raise ClientClosed("the outbox is closed; the message was not accepted")
            self._check_room(size)
            message = self._new_message(topic, payload, qos)
            if retain or properties is not None or ttl is not None or priority:
                message.retain, message.properties, message.priority = retain, properties, priority
                message.expires_at = None if ttl is None else self._clock() + ttl
            write = _Write(message)
            self._queue.append(write)
            self._reserved += 1
            self._reserved_bytes += size
            if self._gathering:
                self._queue_grew.notify()
            while not write.done:
                if self._committing:
                    self._batch_done.wait()  # the running commit may not hold ours: re-check
                else:
                    dropped += self._commit_as_leader()
        _fail_dropped(dropped)
        if write.failure is not None:
            raise storage_failed(self.path, write.failure) from write.failure
        return write.message

    def take_unsent(self, limit: int) -> list[OutboundMessage]:
        """Up to ``limit`` messages to send: by priority, then in order; never an expired one."""
        now = self._clock()
        with self._lock:
            taken, expired = self._line.take(limit, self._live, now)
            for message in expired:
                self._forget(message)
            self._expired += len(expired)
        fail_expired(expired, now)
        return taken

    def expire(self, now: float) -> list[OutboundMessage]:
        """Remove the messages waiting to be sent whose TTL passed by ``now`` (wall clock).

        Their handles fail with MessageExpired and their rows are deleted with
        the next deletes. Returns them, with those ``take_unsent`` expired since
        the last call. Messages in flight stay (see :mod:`device_sdk.outbox`).
        """
        with self._lock:
            due = self._line.due(now, self._live)
            for message in due:
                self._forget(message)
            self._expired += len(due)
            reported, self._line.unreported = self._line.unreported + due, []
        fail_expired(due, now)
        return reported

    def expired(self) -> int:
        """How many messages expired before they were sent, since this outbox opened."""
        with self._lock:
            return self._expired

    def ack(self, seq: int) -> None:
        self.reject(seq, None)

    def reject(self, seq: int, error: DeviceSDKError | None) -> None:
        """Like ``ack``, but the handle fails with ``error``: the hub refused the message."""
        with self._lock:
            self._line.settled(seq)  # also when it was dropped while in flight
            message = self._live.get(seq)
            if message is None:
                return
            self._forget(message)
        if message.handle is not None:
            message.handle._resolve(error)

    def _forget(self, message: OutboundMessage) -> None:
        """Under the lock: the message leaves the books; its row's DELETE is queued."""
        del self._live[message.seq]
        self._live_bytes -= message.size
        self._deletes.append(message.seq)  # lazily: see the module docstring
        if len(self._deletes) == 1:
            self._deletes_since = time.monotonic()
            self._acks_waiting.notify()  # the flusher's interval starts now
        elif len(self._deletes) == self._flush_batch:
            self._acks_waiting.notify()

    def rewind(self) -> None:
        with self._lock:
            self._line.rewind(self._live)

    def depth(self) -> int:
        with self._lock:
            return len(self._live)

    def dropped(self) -> int:
        """How many messages the ``drop_oldest`` policy has dropped since this outbox opened."""
        with self._lock:
            return self._dropped

    def close(self, error: DeviceSDKError | None = None) -> list[OutboundMessage]:
        """Commit what is queued, close the file, fail the handles never acknowledged
        (with ``error``, by default ClientClosed).

        Returns the messages still unacknowledged; they stay in the file for the
        next ``SqliteOutbox`` on it. Calling it again returns them again.
        """
        dropped: list[OutboundMessage] = []
        with self._lock:
            if not self._closed:
                self._closed = True
                self._acks_waiting.notify_all()
                while self._committing:
                    self._batch_done.wait()
                if self._queue or self._deletes:
                    dropped = self._commit_as_leader(flush_acks=True)
            left = list(self._live.values())
        _fail_dropped(dropped)
        self._flusher.join()
        self._close_db()
        for message in left:
            if message.handle is not None and not message.handle.done():
                message.handle._resolve(
                    error or ClientClosed("closed before the hub acknowledged it")
                )
        return left

    # -- put: bounds and identity (lock held) ----------------------------------------------

    def _check_room(self, size: int) -> None:
        if size > self._max_bytes:
            raise OutboxFull(
                f"a message of {size} bytes can never fit an outbox of {self._max_bytes} "
                "bytes; nothing queued was dropped"
            )
        if self._drop_oldest:
            return  # the committing leader makes room, in the transaction that inserts
        count = len(self._live) + self._reserved
        used = self._live_bytes + self._reserved_bytes
        if count >= self._max_messages or used + size > self._max_bytes:
            raise OutboxFull(
                f"outbox full ({count} messages, {used} bytes; limits {self._max_messages} "
                f"messages, {self._max_bytes} bytes); nothing queued was dropped"
            )

    def _new_message(self, topic: str, payload: bytes, qos: int) -> OutboundMessage:
        message_id = self._ids.next_id()
        message = OutboundMessage(
            seq=next(self._seq), message_id=message_id, topic=topic, payload=payload, qos=qos
        )
        message.handle = PublishHandle(message_id)
        return message

    # -- group commit ----------------------------------------------------------------------

    def _commit_as_leader(self, *, flush_acks: bool = False) -> list[OutboundMessage]:
        """Commit every queued message (and the pending deletes) in one transaction.

        Called with the lock held, by a ``put()`` that found no commit running,
        by the ack flusher, or by ``close()``. The lock is released during the
        I/O, so the engine keeps draining and other callers keep queueing for
        the next commit meanwhile. Returns the messages dropped to make room:
        the caller fails their handles once it has let go of the lock, because
        a handle runs its done callbacks right there.
        """
        self._committing = True
        if not flush_acks and self._last_writers > 1:
            self._gather()
        batch, self._queue = self._queue, []
        batch_bytes = sum([write.message.size for write in batch])
        victims = self._choose_victims(batch, batch_bytes) if self._drop_oldest else []
        deletes: list[int] = []
        # Deletes ride along only once enough piled up, so most commits stay a
        # single INSERT (see _write); the flusher and close() take them all.
        if flush_acks or len(self._deletes) >= self._flush_batch or victims:
            deletes, self._deletes = self._deletes, []
        self._lock.release()
        started = time.monotonic()
        try:
            failure = self._write(batch, [*(m.seq for m in victims), *deletes])
        finally:
            self._lock.acquire()
            self._committing = False
            self._last_writers = len(batch)
            self._last_commit_seconds = time.monotonic() - started
            self._reserved -= len(batch)
            self._reserved_bytes -= batch_bytes
        dropped: list[OutboundMessage] = []
        if failure is None:
            dropped = self._settle(batch, victims)
        else:
            self._deletes[:0] = deletes  # not applied: they go with a later commit
            if not batch:
                log.warning(
                    "outbox: acknowledged messages not deleted yet: %s",
                    failure_reason(failure),
                )
        for write in batch:
            write.done, write.failure = True, failure
        self._batch_done.notify_all()
        return dropped

    def _gather(self) -> None:
        """Give the publishers that shared the last commit a moment to queue for this one.

        Why: a commit wakes all its publishers at once, and the first one back
        would otherwise commit alone while the others queue behind it, halving
        the batches. The wait is a quarter of the last commit's duration, so it
        matters only where commits are slow, and a lone publisher never waits
        (the last commit held only its own message).
        """
        deadline = time.monotonic() + self._last_commit_seconds / 4
        self._gathering = True
        while len(self._queue) < self._last_writers:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._queue_grew.wait(remaining)
        self._gathering = False

    def _choose_victims(self, batch: list[_Write], batch_bytes: int) -> list[OutboundMessage]:
        """The oldest messages to drop so that the outbox, this batch included, fits."""
        count = len(self._live) + len(batch)
        used = self._live_bytes + batch_bytes
        victims: list[OutboundMessage] = []
        for message in itertools.chain(self._live.values(), _messages(batch)):
            if count <= self._max_messages and used <= self._max_bytes:
                break
            victims.append(message)
            count -= 1
            used -= message.size
        return victims

    def _write(self, batch: list[_Write], deletes: list[int]) -> BaseException | None:
        """Store a batch; returns what went wrong, or ``None`` once it is committed.

        Why so few statements: the sqlite3 module drops and retakes the GIL
        around every statement step, and with several threads publishing each
        retake can wait on them, so a commit is one multi-row INSERT where
        possible (a single statement is its own transaction in autocommit
        mode), and deletes go by ranges of seqs. Inserts come before deletes, so
        a message dropped from its own batch is inserted and deleted atomically.
        """
        newest = (batch[-1].message.seq, batch[-1].message.message_id) if batch else None
        statements: list[tuple[str, tuple[object, ...]]]
        if len(batch) == 1 and not deletes:  # a lone publisher's commit: skip the general case
            m = batch[0].message
            if m.retain or m.properties is not None or m.expires_at is not None or m.priority:
                statements = [(_INSERT_ONE, _row(m))]
            else:
                statements = [(_INSERT_ONE_PLAIN, (m.seq, m.message_id, m.topic, m.payload, m.qos))]
        else:
            statements = _insert_statements(list(_messages(batch)))
        if deletes:
            statements += [(_DELETE_RANGE, run) for run in _runs(deletes)]
            # Only a delete can remove the newest row, so only then must the
            # newest seq and id be kept aside for the next open.
            statements.append((_SAVE_STATE, newest or self._last_stored))
        try:
            if len(statements) > 1:
                self._db.execute("BEGIN IMMEDIATE")
            for sql, parameters in statements:
                self._db.execute(sql, parameters)
            if len(statements) > 1:
                self._db.execute("COMMIT")
        # Whatever failed, this batch counts as not stored: report it to every
        # waiting put() rather than leave them hanging on a dead leader. (If only
        # the final fsync failed, the log may still replay the batch after a
        # restart: a message reported as refused may then be delivered, which
        # at-least-once allows; one reported as accepted is never lost.)
        except Exception as exc:
            rollback_quietly(self._db)
            return exc
        self._last_stored = newest or self._last_stored
        return None

    def _settle(self, batch: list[_Write], victims: list[OutboundMessage]) -> list[OutboundMessage]:
        """After a commit: forget the victims, make the batch visible; returns the dropped."""
        if not victims:
            for write in batch:
                message = write.message
                self._live[message.seq] = message
                self._live_bytes += message.size
                self._line.add(message, self._live)
            return []
        first_new = batch[0].message.seq if batch else None
        doomed = {message.seq for message in victims}
        dropped: list[OutboundMessage] = []
        for message in victims:
            if self._live.pop(message.seq, None) is not None:
                self._live_bytes -= message.size
            elif first_new is None or message.seq < first_new:
                continue  # acked while we committed: it was delivered, not dropped
            dropped.append(message)
        self._dropped += len(dropped)
        for message in _messages(batch):
            if message.seq not in doomed:
                self._live[message.seq] = message
                self._live_bytes += message.size
                self._line.add(message, self._live)
        return dropped

    def _flush_acks(self) -> None:
        """Background thread: delete acknowledged rows when no ``put()`` did it in time."""
        while True:
            dropped: list[OutboundMessage] = []
            with self._lock:
                if self._closed:
                    return
                wait = self._flush_wait()
                if wait is None or wait > 0:
                    self._acks_waiting.wait(wait)
                elif self._committing:
                    self._batch_done.wait()
                else:
                    dropped = self._commit_as_leader(flush_acks=True)
                    if self._deletes:  # it failed (disk full?): retry after an interval
                        self._acks_waiting.wait(self._flush_interval)
            _fail_dropped(dropped)

    def _flush_wait(self) -> float | None:
        """How long the flusher may still sleep: ``None`` until an ack comes, 0 to flush now."""
        if not self._deletes:
            return None
        if len(self._deletes) >= self._flush_batch:
            return 0.0
        return max(0.0, self._deletes_since + self._flush_interval - time.monotonic())

    # -- open and close --------------------------------------------------------------------

    def _recover(self) -> int:
        """Load what a previous run left, in order; returns the last seq ever issued."""
        rows = self._db.execute(_SELECT_ALL).fetchall()
        for seq, message_id, topic, payload, qos, retain, properties, expires_at, priority in rows:
            message = OutboundMessage(
                seq=seq,
                message_id=message_id,
                topic=topic,
                payload=payload,
                qos=qos,
                retain=bool(retain),
                properties=None if properties is None else self._stored_properties(properties),
                expires_at=expires_at,
                priority=priority,
            )
            self._live[seq] = message
            self._live_bytes += message.size
            self._line.add(message, self._live)
        state = self._db.execute("SELECT last_seq, last_message_id FROM outbox_state").fetchone()
        newest = max([(state[0], state[1]), *((row[0], row[1]) for row in rows[-1:])])
        self._last_stored = newest
        if newest[1]:
            self._ids.observe(newest[1])  # new ids sort after every id issued before
        return int(newest[0])

    def _stored_properties(self, text: str) -> PublishProperties:
        try:
            return PublishProperties.from_json(text)
        except ConfigError as exc:
            raise OutboxCorrupt(
                f"{self.path} holds a message with malformed properties ({exc}); "
                "it was left untouched"
            ) from exc

    def _close_db(self) -> None:
        with self._lock:
            if self._db_closed:
                return
            self._db_closed = True
        try:
            self._db.close()  # checkpoints the log into the file and removes it
        except sqlite3.Error as exc:
            # Every commit is still in the write-ahead log, replayed on the next open.
            log.warning("outbox: closing %s: %s", self.path, failure_reason(exc))


def _messages(batch: list[_Write]) -> Iterator[OutboundMessage]:
    return (write.message for write in batch)


def _fail_dropped(messages: list[OutboundMessage]) -> None:
    for message in messages:
        if message.handle is not None:
            message.handle._resolve(
                MessageDropped(f"message {message.message_id} dropped to make room")
            )


def _insert_statements(messages: list[OutboundMessage]) -> list[tuple[str, tuple[object, ...]]]:
    """Multi-row INSERTs for ``messages``, at most ``_INSERT_ROWS`` rows each."""
    statements: list[tuple[str, tuple[object, ...]]] = []
    for start in range(0, len(messages), _INSERT_ROWS):
        chunk = messages[start : start + _INSERT_ROWS]
        parameters = tuple(value for m in chunk for value in _row(m))
        statements.append((_insert_sql(len(chunk)), parameters))
    return statements


def _row(m: OutboundMessage) -> tuple[object, ...]:
    properties = None if m.properties is None else m.properties.to_json()
    return (
        m.seq,
        m.message_id,
        m.topic,
        m.payload,
        m.qos,
        m.retain,
        properties,
        m.expires_at,
        m.priority,
    )


@functools.lru_cache(maxsize=_INSERT_ROWS)
def _insert_sql(rows: int) -> str:
    return _INSERT + ", ".join([_ROW] * rows)


def _runs(seqs: list[int]) -> list[tuple[int, int]]:
    """Sorted, merged ``(first, last)`` ranges covering ``seqs``: acks mostly come in order."""
    runs: list[tuple[int, int]] = []
    for seq in sorted(set(seqs)):
        if runs and seq == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], seq)
        else:
            runs.append((seq, seq))
    return runs


def _check_settings(
    max_messages: int, max_bytes: int, overflow: str, synchronous: str, flush_batch: int
) -> None:
    for name, value in (
        ("max_messages", max_messages),
        ("max_bytes", max_bytes),
        ("ack_flush_batch", flush_batch),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(name, value, "an integer of at least 1")
    if overflow not in ("reject", "drop_oldest"):
        raise ConfigError("overflow", overflow, "'reject' or 'drop_oldest'")
    if synchronous not in ("FULL", "NORMAL"):
        raise ConfigError(
            "synchronous", synchronous, "'FULL' (survives power loss) or 'NORMAL' (process crash)"
        )


# -- opening the file: check everything before anything writes ----------------------------

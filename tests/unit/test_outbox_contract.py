"""The outbox contract, for every outbox; then what only the durable one promises.

The first half runs against :class:`MemoryOutbox` and :class:`SqliteOutbox` at
both sync levels: order, ack, rewind, bounds, ids and close. The second half is
the SQLite outbox's own: reopening, a real SIGKILL mid-stream, real write
failures (a file size limit, a full or read-only file system), and damaged or
foreign files, which must be reported and left byte-for-byte alone.

Tests that mount a file system need root and are marked ``root``; as root, the
read-only file test drops the capabilities that let root ignore file modes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from device_sdk.adapters.sqlite_outbox import SqliteOutbox
from device_sdk.core.message_id import MessageIdSource, message_id_time_ms
from device_sdk.errors import (
    ClientClosed,
    ConfigError,
    MessageDropped,
    MessageExpired,
    OutboxCorrupt,
    OutboxFull,
    OutboxStorageError,
    PublishRejected,
)
from device_sdk.message import PublishProperties
from device_sdk.outbox import URGENT, MemoryOutbox, OutboundMessage, Outbox

Factory = Callable[..., Outbox]  # make(max_messages=, max_bytes=, overflow=)
KINDS = ("memory", "sqlite-FULL", "sqlite-NORMAL")
BIG = {"max_messages": 100_000, "max_bytes": 100_000_000}


@pytest.fixture(params=KINDS)
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    kind: str = request.param
    opened: list[Outbox] = []

    def factory(
        max_messages: int = 100,
        max_bytes: int = 10_000,
        overflow: Any = "reject",
        clock: Callable[[], float] = time.time,
    ) -> Outbox:
        limits = {"max_messages": max_messages, "max_bytes": max_bytes, "overflow": overflow}
        outbox: Outbox
        if kind == "memory":
            outbox = MemoryOutbox(**limits, clock=clock)
        else:
            path = tmp_path / f"outbox-{len(opened)}.db"
            outbox = SqliteOutbox(path, synchronous=kind.split("-")[1], clock=clock, **limits)  # type: ignore[arg-type]
        opened.append(outbox)
        return outbox

    yield factory
    for outbox in opened:
        outbox.close()


def payloads(messages: list[OutboundMessage]) -> list[bytes]:
    return [m.payload for m in messages]


# -- the contract ---------------------------------------------------------------------------


def test_put_returns_the_accepted_message_with_a_pending_handle(make: Factory) -> None:
    outbox = make()
    first = outbox.put("a/b", b"\x00binary\xff", 1)
    second = outbox.put("a/c", b"", 0)
    assert (first.topic, first.payload, first.qos) == ("a/b", b"\x00binary\xff", 1)
    assert (second.topic, second.payload, second.qos) == ("a/c", b"", 0)
    assert second.seq > first.seq
    assert first.handle is not None and not first.handle.done()
    assert first.handle.message_id == first.message_id
    assert outbox.depth() == 2


def test_take_unsent_hands_out_in_order_up_to_the_limit_and_never_twice(make: Factory) -> None:
    outbox = make()
    for i in range(5):
        outbox.put("t", str(i).encode(), 1)
    assert payloads(outbox.take_unsent(2)) == [b"0", b"1"]
    assert payloads(outbox.take_unsent(10)) == [b"2", b"3", b"4"]
    assert outbox.take_unsent(10) == []
    assert outbox.depth() == 5  # taken is not acknowledged


def test_messages_leave_only_when_acked_and_rewind_resends_in_order(make: Factory) -> None:
    outbox = make()
    sent = [outbox.put("t", str(i).encode(), 1) for i in range(5)]
    first = outbox.take_unsent(3)
    assert [m.seq for m in first] == [m.seq for m in sent[:3]]
    outbox.ack(first[1].seq)
    outbox.rewind()  # the link died: everything unacked goes back in line, in order
    assert payloads(outbox.take_unsent(10)) == [b"0", b"2", b"3", b"4"]
    assert outbox.depth() == 4
    assert sent[1].handle is not None and sent[1].handle.acknowledged
    assert sent[0].handle is not None and not sent[0].handle.done()


def test_ack_is_idempotent_and_ignores_unknown_seqs(make: Factory) -> None:
    outbox = make()
    message = outbox.put("t", b"x", 1)
    outbox.take_unsent(1)
    outbox.ack(message.seq)
    outbox.ack(message.seq)
    outbox.ack(message.seq + 1000)
    assert outbox.depth() == 0
    outbox.rewind()
    assert outbox.take_unsent(10) == []


def test_reject_ends_the_message_and_fails_its_handle_with_the_error(make: Factory) -> None:
    outbox = make()
    refused, kept = outbox.put("t", b"0", 1), outbox.put("t", b"1", 1)
    outbox.take_unsent(2)
    error = PublishRejected(
        hub="h", message_id=refused.message_id, topic="t", reason_code=0x87, reason="Not authorized"
    )
    outbox.reject(refused.seq, error)
    outbox.reject(refused.seq, error)  # idempotent, like ack
    assert refused.handle is not None and refused.handle.error is error
    with pytest.raises(PublishRejected):
        refused.handle.wait(0)
    assert outbox.depth() == 1
    outbox.rewind()
    assert outbox.take_unsent(10) == [kept]


def test_rewind_keeps_messages_put_after_the_take(make: Factory) -> None:
    outbox = make()
    outbox.put("t", b"0", 1)
    outbox.take_unsent(10)
    outbox.put("t", b"1", 1)
    outbox.rewind()
    assert payloads(outbox.take_unsent(10)) == [b"0", b"1"]


def test_message_ids_are_unique_sortable_ulids(make: Factory) -> None:
    outbox = make(max_messages=1000, max_bytes=100_000)
    messages = [outbox.put("t", b"x", 1) for _ in range(300)]
    ids = [m.message_id for m in messages]
    assert ids == sorted(ids) and len(set(ids)) == 300
    # One id format whichever outbox: consumers decode the time the same way.
    assert abs(message_id_time_ms(ids[0]) - time.time() * 1000) < 60_000


def test_full_by_count_rejects_and_keeps_what_was_queued(make: Factory) -> None:
    outbox = make(max_messages=2)
    outbox.put("t", b"a", 1)
    outbox.put("t", b"b", 1)
    with pytest.raises(OutboxFull, match="nothing queued was dropped"):
        outbox.put("t", b"c", 1)
    assert payloads(outbox.take_unsent(5)) == [b"a", b"b"]
    assert outbox.depth() == 2


def test_full_by_bytes_rejects_until_an_ack_makes_room(make: Factory) -> None:
    outbox = make(max_bytes=10)
    first = outbox.put("t", b"12345678", 1)  # 9 bytes with the topic
    with pytest.raises(OutboxFull):
        outbox.put("t", b"12", 1)
    outbox.take_unsent(1)
    outbox.ack(first.seq)
    outbox.put("t", b"12", 1)
    assert outbox.depth() == 1


@pytest.mark.parametrize("overflow", ["reject", "drop_oldest"])
def test_a_message_larger_than_the_byte_bound_never_fits(make: Factory, overflow: str) -> None:
    outbox = make(max_bytes=10, overflow=overflow)
    kept = outbox.put("t", b"1", 1)
    with pytest.raises(OutboxFull):
        outbox.put("t", b"x" * 10, 1)
    assert outbox.take_unsent(5) == [kept]  # nothing was dropped for it


def test_drop_oldest_by_count_drops_counts_and_fails_their_handles(make: Factory) -> None:
    outbox = make(max_messages=3, overflow="drop_oldest")
    sent = [outbox.put("t", str(i).encode(), 1) for i in range(5)]
    assert payloads(outbox.take_unsent(10)) == [b"2", b"3", b"4"]
    assert outbox.depth() == 3
    assert outbox.dropped() == 2
    for message in sent[:2]:
        assert message.handle is not None
        with pytest.raises(MessageDropped):
            message.handle.wait(0)
    assert sent[2].handle is not None and not sent[2].handle.done()


def test_drop_oldest_by_bytes_drops_as_many_as_needed(make: Factory) -> None:
    outbox = make(max_bytes=20, overflow="drop_oldest")
    for payload in (b"aaaa", b"bbbb", b"cccc"):  # 5 bytes each with the topic
        outbox.put("t", payload, 1)
    outbox.put("t", b"d" * 14, 1)  # 15 bytes: only the newest 5-byte message can stay
    assert payloads(outbox.take_unsent(10)) == [b"cccc", b"d" * 14]
    assert outbox.dropped() == 2


def test_a_dropped_message_in_flight_acks_as_a_no_op(make: Factory) -> None:
    outbox = make(max_messages=1, overflow="drop_oldest")
    first = outbox.put("t", b"a", 1)
    assert outbox.take_unsent(1) == [first]  # in flight when the next put pushes it out
    outbox.put("t", b"b", 1)
    outbox.ack(first.seq)  # its PUBACK still arrives
    assert outbox.depth() == 1
    assert not outbox._line._in_flight  # type: ignore[attr-defined]  # and it is not in flight
    assert payloads(outbox.take_unsent(5)) == [b"b"]


def test_close_fails_unacked_handles_and_refuses_new_messages(make: Factory) -> None:
    outbox = make()
    acked = outbox.put("t", b"a", 1)
    pending = outbox.put("t", b"b", 1)
    outbox.take_unsent(2)
    outbox.ack(acked.seq)
    left = outbox.close()
    assert [m.seq for m in left] == [pending.seq]
    assert pending.handle is not None and acked.handle is not None
    with pytest.raises(ClientClosed):
        pending.handle.wait(0)
    acked.handle.wait(0)  # acknowledged stays acknowledged
    with pytest.raises(ClientClosed):
        outbox.put("t", b"c", 1)
    assert [m.seq for m in outbox.close()] == [pending.seq]  # closing again is harmless


def test_wait_times_out_while_unacked(make: Factory) -> None:
    handle = make().put("t", b"a", 1).handle
    assert handle is not None
    with pytest.raises(TimeoutError):
        handle.wait(0.01)


def test_concurrent_publishers_and_a_draining_engine_lose_and_reorder_nothing(
    make: Factory,
) -> None:
    outbox = make(max_messages=10_000, max_bytes=1_000_000)
    publishers, per_publisher = 4, 60
    accepted: list[OutboundMessage] = []
    delivered: list[OutboundMessage] = []
    done = threading.Event()

    def publish(name: str) -> None:
        for i in range(per_publisher):
            accepted.append(outbox.put(f"t/{name}", str(i).encode(), 1))

    def engine() -> None:
        while not done.is_set() or outbox.depth():
            for message in outbox.take_unsent(20):
                delivered.append(message)
                outbox.ack(message.seq)
            time.sleep(0.0005)

    drain = threading.Thread(target=engine)
    drain.start()
    threads = [threading.Thread(target=publish, args=(n,)) for n in "abcd"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    drain.join(10)
    assert sorted(m.seq for m in delivered) == sorted(m.seq for m in accepted)
    assert [m.seq for m in delivered] == sorted(m.seq for m in delivered)  # global order
    for name in "abcd":
        mine = [int(m.payload) for m in delivered if m.topic == f"t/{name}"]
        assert mine == list(range(per_publisher))  # and so order per topic
    assert len(accepted) == publishers * per_publisher


# -- the contract: priority and expiry ------------------------------------------------------


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_put_keeps_retain_properties_expiry_and_priority(make: Factory) -> None:
    clock = Clock()
    outbox = make(clock=clock)
    properties = PublishProperties(content_type="text/plain", user_properties=(("k", "v"),))
    message = outbox.put("t", b"x", 1, retain=True, properties=properties, ttl=30, priority=URGENT)
    plain = outbox.put("t", b"y", 0)
    assert (message.retain, message.properties, message.priority) == (True, properties, 1)
    assert message.expires_at == clock.now + 30
    assert (plain.retain, plain.properties, plain.expires_at, plain.priority) == (
        False,
        None,
        None,
        0,
    )


@pytest.mark.parametrize(
    ("extra", "value"),
    [
        ("ttl", 0),
        ("ttl", -1.0),
        ("ttl", float("inf")),
        ("ttl", float("nan")),
        ("ttl", True),
        ("ttl", "60"),
        ("ttl", 2.0**32),
        ("priority", -1),
        ("priority", 10),
        ("priority", 1.0),
        ("priority", True),
        ("retain", 1),
        ("properties", {"content_type": "x"}),
    ],
)
def test_bad_extras_are_config_errors_and_accept_nothing(
    make: Factory, extra: str, value: object
) -> None:
    outbox = make()
    with pytest.raises(ConfigError, match=extra):
        outbox.put("t", b"x", 1, **{extra: value})  # type: ignore[arg-type]
    assert outbox.depth() == 0


def test_higher_priority_drains_first_and_order_holds_within_a_priority(make: Factory) -> None:
    outbox = make()
    for name, priority in [("r0", 0), ("a0", 5), ("u0", 1), ("r1", 0), ("a1", 5), ("u1", 1)]:
        outbox.put("t", name.encode(), 1, priority=priority)
    assert payloads(outbox.take_unsent(3)) == [b"a0", b"a1", b"u0"]
    outbox.put("t", b"a2", 1, priority=5)  # an alarm put while routine ones wait: next out
    assert payloads(outbox.take_unsent(10)) == [b"a2", b"u1", b"r0", b"r1"]


def test_rewind_puts_unacked_back_by_priority_then_order(make: Factory) -> None:
    outbox = make()
    for name, priority in [("r0", 0), ("u0", 1), ("r1", 0), ("u1", 1), ("r2", 0)]:
        outbox.put("t", name.encode(), 1, priority=priority)
    taken = outbox.take_unsent(3)
    assert payloads(taken) == [b"u0", b"u1", b"r0"]
    outbox.ack(taken[1].seq)
    outbox.put("t", b"u2", 1, priority=URGENT)
    outbox.rewind()  # the link died with u0 and r0 in flight
    assert payloads(outbox.take_unsent(10)) == [b"u0", b"u2", b"r0", b"r1", b"r2"]
    ids = [m.message_id for m in sorted(taken, key=lambda m: m.seq)]
    assert ids == sorted(ids)  # ids still sort in acceptance order, whatever the priority


def test_expire_removes_due_messages_fails_their_handles_and_returns_them(
    make: Factory,
) -> None:
    clock = Clock()
    outbox = make(max_messages=3, clock=clock)
    stale = outbox.put("t/stale", b"old", 1, ttl=10)
    later = outbox.put("t", b"later", 1, ttl=60)
    forever = outbox.put("t", b"forever", 1)
    assert outbox.expire(clock.now + 9.9) == []
    assert outbox.expire(clock.now + 12.5) == [stale]
    assert outbox.depth() == 2 and outbox.expired() == 1
    assert stale.handle is not None
    with pytest.raises(MessageExpired, match=rf"{stale.message_id} on 't/stale' expired 2\.500 s"):
        stale.handle.wait(0)
    error = stale.handle.error
    assert isinstance(error, MessageExpired) and error.topic == "t/stale"
    assert error.overdue == pytest.approx(2.5)
    assert later.handle is not None and not later.handle.done()
    outbox.put("t", b"fits", 1)  # the expired message's room is free again
    assert payloads(outbox.take_unsent(10)) == [b"later", b"forever", b"fits"]
    assert outbox.expire(clock.now + 10**6) == []  # later is in flight now
    assert forever.handle is not None and not forever.handle.done()


def test_an_in_flight_message_expires_only_once_rewound(make: Factory) -> None:
    clock = Clock()
    outbox = make(clock=clock)
    sent = outbox.put("t", b"a", 1, ttl=5)
    assert outbox.take_unsent(10) == [sent]
    clock.now += 60
    assert outbox.expire(clock.now) == []  # awaiting its PUBACK: the hub may have it
    assert outbox.depth() == 1
    outbox.ack(sent.seq)  # ... and it did
    assert sent.handle is not None and sent.handle.acknowledged

    lost = outbox.put("t", b"b", 1, ttl=5)
    assert outbox.take_unsent(10) == [lost]
    clock.now += 60
    outbox.rewind()  # the link died before its PUBACK
    assert outbox.expire(clock.now) == [lost]
    assert outbox.depth() == 0 and outbox.expired() == 1


def test_take_unsent_never_hands_out_an_expired_message(make: Factory) -> None:
    clock = Clock()
    outbox = make(clock=clock)
    first = outbox.put("t", b"stale", 1, ttl=1, priority=URGENT)
    fresh = outbox.put("t", b"fresh", 1, ttl=100)
    clock.now += 1  # expires_at <= now: expired
    assert outbox.take_unsent(1) == [fresh]  # the stale one left, and did not use the slot
    assert outbox.depth() == 1 and outbox.expired() == 1
    assert first.handle is not None and isinstance(first.handle.error, MessageExpired)
    assert outbox.expire(clock.now) == [first]  # reported once, by the next expire()
    assert outbox.expire(clock.now) == []
    outbox.rewind()
    clock.now += 1000
    assert outbox.take_unsent(10) == []  # rewound, then expired in the take
    assert outbox.depth() == 0 and outbox.expired() == 2


# -- SQLite: settings, reopening, the ack flush ---------------------------------------------


def open_sqlite(path: Path, **kwargs: Any) -> SqliteOutbox:
    return SqliteOutbox(path, **{**BIG, **kwargs})


@contextlib.contextmanager
def opened(path: Path, **kwargs: Any) -> Iterator[SqliteOutbox]:
    outbox = open_sqlite(path, **kwargs)
    try:
        yield outbox
    finally:
        outbox.close()


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("overflow", "newest"),
        ("synchronous", "OFF"),
        ("max_messages", 0),
        ("max_bytes", True),
        ("ack_flush_batch", 0),
        ("ack_flush_interval", 0),
    ],
)
def test_bad_settings_fail_before_the_file_is_touched(
    tmp_path: Path, setting: str, value: object
) -> None:
    with pytest.raises(ConfigError, match=setting):
        open_sqlite(tmp_path / "o.db", **{setting: value})
    assert list(tmp_path.iterdir()) == []


def test_reopen_returns_the_unacked_in_order_with_their_ids(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with opened(path) as outbox:
        sent = [outbox.put(f"t/{i % 2}", f"m{i}".encode(), i % 2) for i in range(6)]
        for message in outbox.take_unsent(2):
            outbox.ack(message.seq)
    with opened(path) as outbox:
        recovered = outbox.take_unsent(100)
        assert [(m.seq, m.message_id, m.topic, m.payload, m.qos) for m in recovered] == [
            (m.seq, m.message_id, m.topic, m.payload, m.qos) for m in sent[2:]
        ]
        assert all(m.handle is None for m in recovered)  # handles do not survive a restart
        assert outbox.depth() == 4
        newer = outbox.put("t/0", b"new", 1)
        assert newer.seq > sent[-1].seq and newer.message_id > sent[-1].message_id


def test_retain_properties_priority_and_expiry_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    clock = Clock()
    properties = PublishProperties(
        content_type="application/json",
        response_topic="reply/here",
        correlation_data=b"\x00\xffid",
        user_properties=(("a", "1"), ("a", "2")),
        payload_format_utf8=True,
    )
    with opened(path, clock=clock) as outbox:
        plain = outbox.put("t", b"plain", 1)
        rich = outbox.put("t", b"rich", 1, retain=True, properties=properties, ttl=30, priority=7)
        doomed = outbox.put("t", b"doomed", 1, ttl=5)
        urgent = outbox.put("t", b"urgent", 0, priority=URGENT)
    with opened(path, clock=clock) as outbox:
        recovered = outbox.take_unsent(10)
        fields = [(m.retain, m.properties, m.expires_at, m.priority) for m in recovered]
        assert fields == [
            (True, properties, clock.now + 30, 7),
            (False, None, None, 1),
            (False, None, None, 0),
            (False, None, clock.now + 5, 0),
        ]
        assert [m.seq for m in recovered] == [rich.seq, urgent.seq, plain.seq, doomed.seq]
        outbox.rewind()
        clock.now += 10  # the device was off longer than doomed's TTL
        assert [m.seq for m in outbox.expire(clock.now)] == [doomed.seq]
    with opened(path, clock=clock) as outbox:  # its row went with the close's deletes
        assert [m.seq for m in outbox.take_unsent(10)] == [rich.seq, urgent.seq, plain.seq]


def test_ids_and_seqs_keep_increasing_across_a_restart_even_when_empty(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    late = MessageIdSource(clock_ms=lambda: 2_000_000_000_000)
    with opened(path, ids=late) as outbox:
        last = outbox.put("t", b"x", 1)
        outbox.take_unsent(1)
        outbox.ack(last.seq)  # nothing is left in the file
    # The board rebooted without an RTC: its clock is decades behind.
    early = MessageIdSource(clock_ms=lambda: 1_000)
    with opened(path, ids=early) as outbox:
        assert outbox.depth() == 0
        again = outbox.put("t", b"y", 1)
    assert again.seq > last.seq and again.message_id > last.message_id


def crash_copy(path: Path, into: Path) -> Path:
    """What a crash at this instant would leave: the file and its write-ahead log, as they are."""
    into.mkdir()
    for suffix in ("", "-wal"):
        if Path(f"{path}{suffix}").exists():
            shutil.copyfile(f"{path}{suffix}", into / f"{path.name}{suffix}")
    return into / path.name


def seqs_in(path: Path) -> list[int]:
    with opened(path) as outbox:
        return [m.seq for m in outbox.take_unsent(1_000_000)]


def test_put_is_in_the_file_when_it_returns(tmp_path: Path) -> None:
    with opened(tmp_path / "o.db") as outbox:
        sent = [outbox.put("t", b"x", 1).seq for _ in range(3)]
        assert seqs_in(crash_copy(outbox.path, tmp_path / "crash")) == sent


def test_acks_reach_the_file_lazily_and_a_lost_one_only_resends(tmp_path: Path) -> None:
    with opened(tmp_path / "o.db", ack_flush_batch=3, ack_flush_interval=60) as outbox:
        sent = [outbox.put("t", b"x", 1).seq for _ in range(5)]
        for message in outbox.take_unsent(2):
            outbox.ack(message.seq)
        # Two acks, below the batch, within the interval: not in the file yet. A
        # crash now resends them (duplicates, which at-least-once allows).
        assert seqs_in(crash_copy(outbox.path, tmp_path / "c1")) == sent
        outbox.ack(outbox.take_unsent(1)[0].seq)  # the third: the next commit carries them
        sent.append(outbox.put("t", b"y", 1).seq)
        assert seqs_in(crash_copy(outbox.path, tmp_path / "c2")) == sent[3:]


def test_the_flusher_deletes_acked_rows_when_no_put_comes(tmp_path: Path) -> None:
    with opened(tmp_path / "o.db", ack_flush_interval=0.02) as outbox:
        sent = [outbox.put("t", b"x", 1).seq for _ in range(3)]
        outbox.ack(outbox.take_unsent(1)[0].seq)
        deadline = time.monotonic() + 5
        while seqs_in(crash_copy(outbox.path, tmp_path / "c")) != sent[1:]:
            assert time.monotonic() < deadline, "the acked row was never deleted"
            shutil.rmtree(tmp_path / "c")
            time.sleep(0.02)


def test_a_second_outbox_on_the_same_file_is_refused(tmp_path: Path) -> None:
    with opened(tmp_path / "o.db"), pytest.raises(OutboxStorageError, match="another outbox"):
        open_sqlite(tmp_path / "o.db")


# -- SQLite: group commit ---------------------------------------------------------------------


class SlowStorage:
    """Wraps ``SqliteOutbox._write`` so that every commit takes ``delay`` seconds."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, delay: float) -> None:
        self.batches: list[int] = []
        self.release = threading.Event()
        self.release.set()
        real = SqliteOutbox._write

        def slow_write(outbox: SqliteOutbox, batch: list[Any], deletes: list[int]) -> Any:
            self.release.wait(10)
            time.sleep(delay)
            self.batches.append(len(batch))
            return real(outbox, batch, deletes)

        monkeypatch.setattr(SqliteOutbox, "_write", slow_write)


def test_concurrent_puts_share_commits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = SlowStorage(monkeypatch, delay=0.01)  # an SD card's fsync
    with opened(tmp_path / "o.db") as outbox:

        def publish() -> None:
            for _ in range(4):
                outbox.put("t", b"x", 1)

        threads = [threading.Thread(target=publish) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert outbox.depth() == 32
    message_commits = [n for n in storage.batches if n]
    assert sum(message_commits) == 32
    assert len(message_commits) <= 12, storage.batches  # one commit per put would be 32


def put_concurrently(outbox: SqliteOutbox, threads: int, each: int) -> list[OutboundMessage]:
    """``threads`` publishers putting ``each`` messages at once; returns what was accepted."""
    accepted: list[OutboundMessage] = []

    def publish() -> None:
        for _ in range(each):
            with contextlib.suppress(OutboxFull):
                accepted.append(outbox.put("t", b"x", 1))

    workers = [threading.Thread(target=publish) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return accepted


def test_a_shared_commit_stores_each_message_s_extras(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = SlowStorage(monkeypatch, delay=0.005)
    properties = PublishProperties(content_type="c")
    path = tmp_path / "o.db"
    with opened(path) as outbox:

        def publish(n: int) -> None:
            for i in range(4):
                outbox.put(f"t/{n}", b"%d" % i, 1, retain=bool(n % 2), priority=n, ttl=1000 + n)
                outbox.put(f"t/{n}", b"plain", 1, properties=properties if n else None)

        threads = [threading.Thread(target=publish, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        sent = {m.seq: m for m in outbox.take_unsent(100)}
    assert max(storage.batches) > 1  # some commits held several messages
    with opened(path) as outbox:
        recovered = outbox.take_unsent(100)
    assert [(m.seq, m.retain, m.properties, m.expires_at, m.priority) for m in recovered] == [
        (m.seq, m.retain, m.properties, m.expires_at, m.priority)
        for m in sorted(sent.values(), key=lambda m: (-m.priority, m.seq))
    ]
    assert len(recovered) == 48


def test_concurrent_puts_never_overshoot_the_reject_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    SlowStorage(monkeypatch, delay=0.005)  # commits in flight while others check the bound
    with opened(tmp_path / "o.db", max_messages=5) as outbox:
        accepted = put_concurrently(outbox, threads=8, each=2)
        assert len(accepted) == outbox.depth() == 5


def test_a_burst_beyond_the_bound_drops_within_its_own_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = SlowStorage(monkeypatch, delay=0)
    storage.release.clear()  # the first commit hangs until all eight puts have queued
    path = tmp_path / "o.db"
    with opened(path, max_messages=2, overflow="drop_oldest") as outbox:
        accepted: list[OutboundMessage] = []
        burst = threading.Thread(target=lambda: accepted.extend(put_concurrently(outbox, 8, 1)))
        burst.start()
        deadline = time.monotonic() + 10
        while outbox._reserved < 8 and time.monotonic() < deadline:
            time.sleep(0.001)
        storage.release.set()
        burst.join()
        assert storage.batches == [1, 7]  # the second inserted 7 and dropped 5 of them at once
        assert len(accepted) == 8 and outbox.dropped() == 6
        kept = sorted(accepted, key=lambda m: m.seq)[-2:]
        assert outbox.take_unsent(10) == kept
        for message in accepted:
            assert message.handle is not None
            assert message.handle.done() == (message not in kept)
    assert seqs_in(path) == [m.seq for m in kept]


def test_the_engine_never_waits_for_a_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = SlowStorage(monkeypatch, delay=0)
    with opened(tmp_path / "o.db") as outbox:
        first = outbox.put("t", b"a", 1)
        storage.release.clear()  # the next commit hangs in slow storage
        stuck = threading.Thread(target=outbox.put, args=("t", b"b", 1))
        stuck.start()
        started = time.monotonic()
        assert outbox.take_unsent(10) == [first]  # only committed messages are handed out
        outbox.ack(first.seq)
        assert outbox.depth() == 0
        assert time.monotonic() - started < 1.0
        storage.release.set()
        stuck.join(10)
        assert payloads(outbox.take_unsent(10)) == [b"b"]


class FailingConnection:
    """A connection whose next ``fail`` statements raise like a full disk."""

    def __init__(self, real: sqlite3.Connection, fail: int) -> None:
        self.real, self.fail = real, fail

    def execute(self, sql: str, parameters: Any = ()) -> sqlite3.Cursor:
        if self.fail and sql.startswith("INSERT"):
            self.fail -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return self.real.execute(sql, parameters)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_a_failed_commit_accepts_nothing_and_keeps_the_books_straight(tmp_path: Path) -> None:
    with opened(tmp_path / "o.db", max_messages=3, ack_flush_batch=1) as outbox:
        kept = outbox.put("t", b"a", 1)
        outbox.put("t", b"b", 1)
        outbox.ack(outbox.take_unsent(1)[0].seq)  # its delete waits for the next commit
        real = outbox._db
        outbox._db = FailingConnection(real, fail=1)  # type: ignore[assignment]
        with pytest.raises(OutboxStorageError, match=r"not accepted.*intact") as caught:
            outbox.put("t", b"lost", 1)
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        assert outbox.depth() == 1
        outbox.put("t", b"c", 1)  # the failed one took no room
        outbox.put("t", b"d", 1)
        outbox._db = real
    with opened(tmp_path / "o.db") as outbox:
        assert payloads(outbox.take_unsent(10)) == [b"b", b"c", b"d"]
        assert kept.seq not in [m.seq for m in outbox.take_unsent(10)]


# -- SQLite: a real crash and real write failures (child processes) --------------------------


def run_child(
    code: str, *args: str, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


KILLED_MID_STREAM = """
    import os, signal, sys, threading, time
    from device_sdk.adapters.sqlite_outbox import SqliteOutbox

    path, sync, die_after = sys.argv[1], sys.argv[2], float(sys.argv[3])
    outbox = SqliteOutbox(path, max_messages=10**6, max_bytes=10**9, synchronous=sync,
                          ack_flush_batch=7)

    def say(line):  # one write() per line: whole lines even when killed
        os.write(1, (line + "\\n").encode())

    def publish(name):
        for i in range(10**9):
            message = outbox.put("t/" + name, str(i).encode(), 1)
            say(f"P {message.seq} {message.message_id}")

    def engine():  # acknowledges every third message, as PUBACKs would
        while True:
            for message in outbox.take_unsent(20):
                if message.seq % 3 == 0:
                    outbox.ack(message.seq)
                    say(f"A {message.seq}")
            time.sleep(0.001)

    for target, args in [(engine, ())] + [(publish, (n,)) for n in "abc"]:
        threading.Thread(target=target, args=args, daemon=True).start()
    time.sleep(die_after)
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("sync", ["FULL", "NORMAL"])
def test_sigkill_mid_stream_loses_no_accepted_message(tmp_path: Path, sync: str) -> None:
    path = tmp_path / "o.db"
    child = run_child(KILLED_MID_STREAM, str(path), sync, "0.3")
    assert child.returncode == -signal.SIGKILL, child.stderr
    accepted: dict[int, str] = {}
    acked: set[int] = set()
    for line in child.stdout.splitlines():
        kind, seq, *rest = line.split()
        if kind == "P":
            accepted[int(seq)] = rest[0]
        else:
            acked.add(int(seq))
    assert len(accepted) > 50, child.stdout[-500:]
    with opened(path) as outbox:
        recovered = outbox.take_unsent(10**6)
    found = {m.seq: m.message_id for m in recovered}
    missing = [seq for seq in accepted if seq not in acked and seq not in found]
    assert missing == []
    assert all(found[seq] == accepted[seq] for seq in accepted if seq in found)
    assert [m.seq for m in recovered] == sorted(found)
    assert [m.message_id for m in recovered] == sorted(found.values())
    for topic in ("t/a", "t/b", "t/c"):
        numbers = [int(m.payload) for m in recovered if m.topic == topic]
        assert numbers == sorted(numbers)


FILE_SIZE_LIMIT = """
    import resource, signal, sys
    from device_sdk.adapters.sqlite_outbox import SqliteOutbox
    from device_sdk.errors import OutboxStorageError

    outbox = SqliteOutbox(sys.argv[1], max_messages=10**6, max_bytes=10**9)
    # Past RLIMIT_FSIZE the kernel sends SIGXFSZ (fatal by default); ignored, the
    # write() fails with EFBIG instead, exactly as a full disk fails it with ENOSPC.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    for i in range(100_000):
        try:
            message = outbox.put("t", b"%06d" % i + bytes(500), 1)
        except OutboxStorageError as exc:
            print("ERROR", exc)
            break
        print("P", message.seq)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space returns
    print("P", outbox.put("t", b"after", 1).seq)
    outbox.close()
"""


def test_a_write_the_file_system_refuses_is_a_clear_error_and_loses_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "o.db"
    open_sqlite(path).close()  # created without the limit
    child = run_child(FILE_SIZE_LIMIT, str(path))
    assert child.returncode == 0, child.stderr
    lines = child.stdout.splitlines()
    errors = [line for line in lines if line.startswith("ERROR")]
    assert len(errors) == 1 and "not accepted" in errors[0] and "I/O error" in errors[0], lines
    accepted = [int(line.split()[1]) for line in lines if line.startswith("P")]
    assert len(accepted) > 5
    assert seqs_in(path) == accepted


# -- SQLite: files it must not write ----------------------------------------------------------


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def foreign_sqlite(path: Path) -> None:
    db = sqlite3.connect(path)
    try:
        db.execute("CREATE TABLE readings (at REAL, value REAL)")
        db.execute("INSERT INTO readings VALUES (1.0, 21.5)")
        db.commit()
    finally:
        db.close()


def newer_outbox(path: Path) -> None:
    open_sqlite(path).close()
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA user_version = 99")
    finally:
        db.close()


def truncated_outbox(path: Path) -> None:
    with opened(path) as outbox:
        for _ in range(100):
            outbox.put("t", bytes(500), 1)
    size = path.stat().st_size
    with open(path, "r+b") as file:
        file.truncate(size // 2)


DAMAGE = {
    "random bytes": lambda p: p.write_bytes(os.urandom(4096)),
    "empty file": lambda p: p.write_bytes(b""),
    "text file": lambda p: p.write_text("device_id = 42\n"),
    "another application's SQLite": foreign_sqlite,
    "an outbox from a newer version": newer_outbox,
    "a truncated outbox": truncated_outbox,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_corrupt_or_foreign_file_is_reported_and_never_modified(
    tmp_path: Path, damage: str
) -> None:
    path = tmp_path / "o.db"
    DAMAGE[damage](path)
    before = digest(path)
    with pytest.raises(OutboxCorrupt, match="left untouched"):
        open_sqlite(path)
    assert digest(path) == before
    assert [p.name for p in tmp_path.iterdir()] == ["o.db"]  # no journal, no log, no copy


def without_file_permission_override() -> tuple[str, ...]:
    """A command prefix under which even root obeys file modes (or ``()`` when not root)."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: chmod cannot make a file read-only")
    return (setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner")


OPEN_AND_REPORT = """
    import sys
    from device_sdk.adapters.sqlite_outbox import SqliteOutbox
    from device_sdk.errors import DeviceSDKError
    try:
        SqliteOutbox(sys.argv[1], max_messages=10, max_bytes=1000).close()
    except DeviceSDKError as exc:
        print(type(exc).__name__, exc)
    else:
        print("opened")
"""


def test_a_read_only_outbox_is_a_clear_error_at_open(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "o.db"
    with opened(path) as outbox:
        outbox.put("t", b"kept", 1)
    before = digest(path)
    path.chmod(0o444)
    folder.chmod(0o555)
    try:
        child = run_child(OPEN_AND_REPORT, str(path), prefix=without_file_permission_override())
    finally:
        folder.chmod(0o755)
        path.chmod(0o644)
    assert child.stdout.startswith("OutboxStorageError"), (child.stdout, child.stderr)
    assert "cannot be written: permission denied" in child.stdout
    assert digest(path) == before
    assert seqs_in(path) == [1]


@contextlib.contextmanager
def tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A small, real file system of its own (root only; skipped where mounting is not allowed)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


@pytest.mark.root
def test_a_full_disk_is_a_clear_error_and_accepted_messages_survive(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "256k") as disk:
        path = disk / "o.db"
        accepted: list[int] = []
        with opened(path) as outbox:
            filler = disk / "filler"
            with open(filler, "wb") as out, contextlib.suppress(OSError):
                out.write(bytes(200 * 1024))  # leave the outbox a few pages
            with pytest.raises(OutboxStorageError, match=r"disk is full.*not accepted"):
                for _ in range(1000):
                    accepted.append(outbox.put("t", bytes(400), 1).seq)
            assert accepted, "the disk filled before the first message"
            filler.unlink()  # space returns
            accepted.append(outbox.put("t", b"after", 1).seq)
        assert seqs_in(path) == accepted


@pytest.mark.root
def test_a_read_only_file_system_is_a_clear_error_at_open(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "1m") as disk:
        path = disk / "o.db"
        with opened(path) as outbox:
            outbox.put("t", b"kept", 1)
        before = digest(path)
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with pytest.raises(OutboxStorageError, match="read-only file system"):
            open_sqlite(path)
        with pytest.raises(OutboxStorageError, match="read-only file system"):
            open_sqlite(disk / "new.db")
        assert digest(path) == before

"""The outbox contract: every accepted message stays until acked, in order, bounded."""

from __future__ import annotations

import pytest

from device_sdk.errors import ClientClosed, OutboxFull
from device_sdk.outbox import MemoryOutbox


def make(max_messages: int = 100, max_bytes: int = 10_000) -> MemoryOutbox:
    return MemoryOutbox(max_messages=max_messages, max_bytes=max_bytes)


def test_messages_leave_only_when_acked_and_rewind_resends_in_order() -> None:
    outbox = make()
    sent = [outbox.put("t", str(i).encode(), 1) for i in range(5)]
    first = outbox.take_unsent(3)
    assert [m.seq for m in first] == [m.seq for m in sent[:3]]
    outbox.ack(first[1].seq)
    outbox.rewind()  # the link died: everything unacked goes back in line, in order
    again = outbox.take_unsent(10)
    assert [m.payload for m in again] == [b"0", b"2", b"3", b"4"]
    assert outbox.depth() == 4
    assert sent[1].handle is not None and sent[1].handle.acknowledged


def test_message_ids_are_unique_and_sortable() -> None:
    outbox = make()
    ids = [outbox.put("t", b"x", 1).message_id for _ in range(50)]
    assert ids == sorted(ids) and len(set(ids)) == 50


def test_full_by_count_rejects_and_keeps_what_was_queued() -> None:
    outbox = make(max_messages=2)
    outbox.put("t", b"a", 1)
    outbox.put("t", b"b", 1)
    with pytest.raises(OutboxFull, match="nothing queued was dropped"):
        outbox.put("t", b"c", 1)
    assert [m.payload for m in outbox.take_unsent(5)] == [b"a", b"b"]


def test_full_by_bytes_rejects() -> None:
    outbox = make(max_bytes=10)
    outbox.put("t", b"12345678", 1)
    with pytest.raises(OutboxFull):
        outbox.put("t", b"12", 1)


def test_close_fails_unacked_handles_and_refuses_new_messages() -> None:
    outbox = make()
    handle = outbox.put("t", b"a", 1).handle
    assert handle is not None
    outbox.close()
    with pytest.raises(ClientClosed):
        handle.wait(0)
    with pytest.raises(ClientClosed):
        outbox.put("t", b"b", 1)


def test_wait_times_out_while_unacked() -> None:
    handle = make().put("t", b"a", 1).handle
    assert handle is not None
    with pytest.raises(TimeoutError):
        handle.wait(0.01)


def test_deadlines_of_acknowledged_messages_do_not_pile_up() -> None:
    """Long TTLs on a busy outbox: acked messages' deadlines are pruned, not kept for a day."""
    outbox = make(max_messages=10, max_bytes=10_000)
    for _ in range(5000):
        message = outbox.put("t", b"x", 1, ttl=86_400)
        assert outbox.take_unsent(1) == [message]
        outbox.ack(message.seq)
    assert len(outbox._line._deadlines) <= 2 * outbox.depth() + 65
    assert not outbox._line._in_flight  # acked: no longer in flight


def test_an_engine_that_never_calls_expire_does_not_keep_every_stale_payload() -> None:
    now = [1000.0]
    outbox = MemoryOutbox(max_messages=5000, max_bytes=1_000_000, clock=lambda: now[0])
    for _ in range(3000):
        outbox.put("t", b"x", 1, ttl=1)
    now[0] += 2
    assert outbox.take_unsent(10) == []
    assert outbox.expired() == 3000  # every one counted ...
    assert len(outbox.expire(now[0])) == 1024  # ... but only so many kept for the report
    assert outbox.expire(now[0]) == []

"""When a received command is acknowledged: after every handler it was given to returned."""

from __future__ import annotations

import threading

import pytest

from device_sdk.engine.dispatch import AckWhenHandled, CallbackDispatcher, call_handler


def test_the_ack_waits_for_the_last_of_several_handlers() -> None:
    sent: list[str] = []
    ack = AckWhenHandled(3, lambda: sent.append("PUBACK"))
    for _ in range(2):
        call_handler(lambda _m: None, "cmd", ack)()
        assert sent == []
    call_handler(lambda _m: None, "cmd", ack)()
    assert sent == ["PUBACK"]


def test_a_handler_that_raises_counts_as_returned() -> None:
    sent: list[str] = []
    ack = AckWhenHandled(1, lambda: sent.append("PUBACK"))

    def poison(_message: str) -> None:
        raise RuntimeError("always fails")

    with pytest.raises(RuntimeError):
        call_handler(poison, "cmd", ack)()
    assert sent == ["PUBACK"]


def test_a_handler_still_running_holds_the_ack_back() -> None:
    sent = threading.Event()
    release = threading.Event()
    returned = threading.Event()
    ack = AckWhenHandled(2, sent.set)
    faults: list[BaseException] = []
    dispatcher = CallbackDispatcher("test-acks", on_fault=faults.append)
    try:
        assert dispatcher.submit(call_handler(lambda _m: returned.set(), "cmd", ack))
        assert dispatcher.submit(call_handler(lambda _m: release.wait(5.0), "cmd", ack))
        assert returned.wait(5.0)
        assert not sent.is_set()  # one handler returned, the other still runs
        release.set()
        assert sent.wait(5.0)
    finally:
        release.set()
        dispatcher.close(5.0)
    assert faults == []


def test_submit_says_when_a_call_was_dropped() -> None:
    release = threading.Event()
    dispatcher = CallbackDispatcher("test-full", max_pending=1)
    try:
        started = threading.Event()

        def hold() -> None:
            started.set()
            release.wait(5.0)

        assert dispatcher.submit(hold)
        assert started.wait(5.0)  # the worker holds the first call; the queue is empty
        assert dispatcher.submit(lambda: None)
        assert not dispatcher.submit(lambda: None)  # full: dropped, and said so
        assert dispatcher.dropped == 1
    finally:
        release.set()
        dispatcher.close(5.0)

"""The shared stream mechanics and both readers, fed from a real producer thread (no network)."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from device_sdk.aio import AsyncStream
from device_sdk.errors import ConfigError
from device_sdk.streams import BlockingStream, Fanout, StreamBuffer, StreamEnded


def test_the_buffer_drops_the_oldest_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    buffer: StreamBuffer[int] = StreamBuffer(3, "test")
    with caplog.at_level(logging.WARNING, logger="device_sdk"):
        for item in range(5):
            buffer.push(item)
    assert buffer.dropped == 2
    assert [buffer.take() for _ in range(3)] == [2, 3, 4]
    assert len([r for r in caplog.records if "dropping the oldest" in r.message]) == 1


def test_the_buffer_drains_before_it_ends() -> None:
    buffer: StreamBuffer[int] = StreamBuffer(3, "test")
    buffer.push(1)
    buffer.end()
    buffer.push(2)  # after the end: ignored
    assert buffer.take() == 1
    with pytest.raises(StreamEnded):
        buffer.take()


def test_the_buffer_bound_is_validated() -> None:
    with pytest.raises(ConfigError, match="max_queued"):
        StreamBuffer(0, "test")


def _produce(fanout: Fanout[int], count: int) -> threading.Thread:
    """Send 0..count-1 and close, from another thread, as the engine does."""

    def run() -> None:
        for item in range(count):
            fanout.send(item)
        fanout.close()

    return threading.Thread(target=run)


def test_blocking_streams_each_see_everything_then_end() -> None:
    fanout: Fanout[int] = Fanout()
    first = BlockingStream(fanout, timeout=5, max_items=100, label="a")
    second = BlockingStream(fanout, timeout=5, max_items=100, label="b")
    producer = _produce(fanout, 50)
    producer.start()
    assert list(first) == list(range(50))
    assert list(second) == list(range(50))
    producer.join(5)
    late = BlockingStream(fanout, timeout=5, max_items=100, label="late")
    assert list(late) == []  # attached after close: ended at once


def test_a_blocking_stream_ends_after_its_idle_timeout_and_detaches() -> None:
    fanout: Fanout[int] = Fanout()
    stream = BlockingStream(fanout, timeout=0.05, max_items=10, label="idle")
    assert list(stream) == []
    fanout.send(1)
    assert list(stream) == []  # detached: a later item does not revive it


def test_closing_a_blocking_stream_detaches_it() -> None:
    fanout: Fanout[int] = Fanout()
    with BlockingStream(fanout, timeout=None, max_items=10, label="ctx") as stream:
        fanout.send(1)
    fanout.send(2)
    assert list(stream) == []


@pytest.mark.asyncio
async def test_an_async_stream_is_fed_from_another_thread_and_ends() -> None:
    fanout: Fanout[int] = Fanout()
    stream = AsyncStream(fanout, asyncio.get_running_loop(), 1000, "async")
    producer = _produce(fanout, 200)
    producer.start()
    async with asyncio.timeout(5):
        received = [item async for item in stream]
    producer.join(5)
    assert received == list(range(200))
    assert stream.dropped == 0


@pytest.mark.asyncio
async def test_an_async_stream_drops_the_oldest_when_the_reader_lags() -> None:
    fanout: Fanout[int] = Fanout()
    stream = AsyncStream(fanout, asyncio.get_running_loop(), 10, "lagging")
    producer = _produce(fanout, 25)
    producer.start()
    producer.join(5)  # the reader has not read yet
    async with asyncio.timeout(5):
        received = [item async for item in stream]
    assert received == list(range(15, 25))
    assert stream.dropped == 15


@pytest.mark.asyncio
async def test_a_reader_cancelled_mid_wait_leaves_the_stream_usable() -> None:
    fanout: Fanout[int] = Fanout()
    stream = AsyncStream(fanout, asyncio.get_running_loop(), 10, "cancel")
    reader = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    fanout.send(7)
    async with asyncio.timeout(5):
        assert await anext(stream) == 7
    async with stream:  # aclose on exit: detached and ended
        pass
    fanout.send(8)
    async with asyncio.timeout(5):
        assert [item async for item in stream] == []


@pytest.mark.asyncio
async def test_one_reader_at_a_time() -> None:
    fanout: Fanout[int] = Fanout()
    stream = AsyncStream(fanout, asyncio.get_running_loop(), 10, "two readers")
    first = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="another task"):
        await anext(stream)
    fanout.close()
    with pytest.raises(StopAsyncIteration):
        await first

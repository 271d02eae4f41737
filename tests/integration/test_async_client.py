"""AsyncDeviceClient against the real testbed: the sync face's recovery scenarios, awaited.

As in test_recovery, each scenario publishes numbered QoS 1 messages while it
breaks something, then asks independent collectors whether every number
arrived. Here every number must also have been acknowledged to an ``await``.
The last tests check that leaving ``async with`` leaves nothing running.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from device_sdk import (
    AsyncDeviceClient,
    ClientClosed,
    ConfigError,
    DeviceClient,
    Message,
    PublishProperties,
    events,
)
from device_sdk.adapters.sqlite_outbox import SqliteOutbox
from device_sdk.aio import AsyncStream
from device_sdk.outbox import OutboundMessage
from device_sdk.testbed import Testbed
from device_sdk.testbed.collector import Collector, merge
from tests.integration.support import TOPIC, collectors_for

pytestmark = pytest.mark.integration


class EventWatch:
    """Reads an events() iterator, keeping everything it saw."""

    def __init__(self, stream: AsyncStream[events.Event]) -> None:
        self.stream = stream
        self.seen: list[events.Event] = []

    async def wait_for(
        self, kind: type[events.Event], timeout: float, **match: object
    ) -> events.Event:
        async with asyncio.timeout(timeout):
            async for event in self.stream:
                self.seen.append(event)
                if isinstance(event, kind) and all(
                    getattr(event, k) == v for k, v in match.items()
                ):
                    return event
        raise AssertionError(f"the stream ended before a {kind.__name__} {match}: {self.seen}")

    def of(self, kind: type[events.Event]) -> list[Any]:
        return [e for e in self.seen if isinstance(e, kind)]


async def publish_numbers(client: AsyncDeviceClient, stop: asyncio.Event, limit: int = 400) -> int:
    """Await each numbered publish's PUBACK in turn, about every 10 ms; returns how many."""
    count = 0
    while count < limit and not stop.is_set():
        await client.publish(TOPIC, f"{count}:x")
        count += 1
        await asyncio.sleep(0.01)
    return count


async def assert_all_collected(count: int, collectors: list[Collector]) -> None:
    expected = set(range(count))
    async with asyncio.timeout(5):  # acknowledged by a hub; give its subscriber a moment
        while not expected <= set(merge(*collectors)):
            await asyncio.sleep(0.02)
    assert count > 20, "the publisher barely ran; the test proves nothing"


@pytest.mark.asyncio
async def test_crash_fails_over_with_every_publish_acknowledged(testbed: Testbed) -> None:
    collectors = collectors_for(testbed)
    client = AsyncDeviceClient(testbed.client_config("async-crash"))
    watch = EventWatch(client.events())  # before connecting: sees the first Connected too
    stop = asyncio.Event()
    async with client, asyncio.TaskGroup() as group:  # a failing check cancels the publisher
        publisher = group.create_task(publish_numbers(client, stop))
        await watch.wait_for(events.Connected, 5, hub="primary")
        await asyncio.sleep(0.3)
        testbed.hub("primary").broker.kill()
        await watch.wait_for(events.Connected, 5, hub="secondary")
        await asyncio.sleep(0.3)
        stop.set()
        count = await asyncio.wait_for(publisher, 10)  # every await returned: all acknowledged
        await assert_all_collected(count, collectors)
        metrics = client.metrics()
    assert [e.hub for e in watch.of(events.Disconnected)] == ["primary"]
    assert watch.of(events.FailedOver)[0].to_hub == "secondary"
    assert metrics.failovers >= 1 and metrics.current_hub == "secondary"
    assert metrics.acknowledged >= count
    async with asyncio.timeout(5):  # the iterator ends with the client
        await _count(watch.stream)


@pytest.mark.asyncio
async def test_dns_flip_over_tls_reaches_the_new_address_only(tls_testbed: Testbed) -> None:
    bed = tls_testbed
    collectors = collectors_for(bed)
    primary = bed.hub("primary")
    stale, fresh = primary.address, bed.hub("secondary").address
    client = AsyncDeviceClient(bed.client_config("async-flip", hubs=["primary"]))
    stop = asyncio.Event()
    async with client, asyncio.TaskGroup() as group:
        watch = EventWatch(client.events())
        publisher = group.create_task(publish_numbers(client, stop))
        await asyncio.sleep(0.3)
        bed.point("primary", at="secondary")
        primary.broker.kill()
        connected = await watch.wait_for(events.Connected, 5, address=fresh)
        await asyncio.sleep(0.3)
        stop.set()
        count = await asyncio.wait_for(publisher, 10)
        await assert_all_collected(count, collectors)
    assert connected.hub == "primary"  # type: ignore[attr-defined]  # same FQDN, TLS verified it
    dialled = [e.address for e in watch.of(events.DialFailed)]
    assert stale not in dialled
    assert all(e.addresses == (fresh,) for e in watch.of(events.Resolved))


@pytest.mark.asyncio
async def test_a_hung_hub_is_left_within_the_liveness_bound(testbed: Testbed) -> None:
    collectors = collectors_for(testbed)
    config = testbed.client_config("async-hang")
    broker = testbed.hub("primary").broker
    stop = asyncio.Event()
    try:
        async with AsyncDeviceClient(config) as client, asyncio.TaskGroup() as group:
            watch = EventWatch(client.events())
            publisher = group.create_task(publish_numbers(client, stop))
            await asyncio.sleep(0.3)
            hung_at = time.monotonic()
            broker.hang()
            lost = await watch.wait_for(events.Disconnected, 5, hub="primary")
            await watch.wait_for(events.Connected, 5, hub="secondary")
            await asyncio.sleep(0.3)
            stop.set()
            count = await asyncio.wait_for(publisher, 10)
            await assert_all_collected(count, collectors)
    finally:
        broker.resume()
    assert lost.unresponsive  # type: ignore[attr-defined]
    assert lost.at - hung_at <= config.liveness.deadline_ceiling + 0.1


@pytest.mark.asyncio
async def test_messages_round_trip_through_the_hub(testbed: Testbed) -> None:
    async with AsyncDeviceClient(testbed.client_config("async-echo")) as client:
        everything = client.messages()
        await client.subscribe("echo/b/#")
        echo = client.messages("echo/a/#")  # attached, then subscribed: nothing missed
        await client.publish("echo/a/1", b"ping")
        await client.publish("echo/b/1", "pong")
        async with asyncio.timeout(5):
            first = await anext(echo)
            both = [await anext(everything), await anext(everything)]
    assert (first.topic, first.payload, first.subscription) == ("echo/a/1", b"ping", "echo/a/#")
    assert sorted((m.topic, m.payload) for m in both) == [
        ("echo/a/1", b"ping"),
        ("echo/b/1", b"pong"),
    ]
    async with asyncio.timeout(5):  # both iterators end with the client
        assert [m async for m in echo] == []
        assert [m async for m in everything] == []


def _device_sdk_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t not in before and t.name.startswith("device-sdk")]


def _assert_no_threads_left(before: set[threading.Thread]) -> None:
    deadline = time.monotonic() + 5
    for thread in _device_sdk_threads(before):
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not _device_sdk_threads(before), f"left running: {_device_sdk_threads(before)}"
    assert not [t for t in threading.enumerate() if t not in before], "a thread outlived the test"


@pytest.mark.asyncio
async def test_cancelling_the_task_leaves_no_thread_or_task_behind(testbed: Testbed) -> None:
    threads_before = set(threading.enumerate())
    tasks_before = asyncio.all_tasks()
    config = testbed.client_config("async-leak", hubs=["primary"])
    in_block = asyncio.Event()
    ended = asyncio.Event()

    async def read_until_closed(client: AsyncDeviceClient) -> int:
        count = len([m async for m in client.messages("leak/#")])
        ended.set()  # reached only if the iterator ended cleanly
        return count

    async def device() -> None:
        async with AsyncDeviceClient(config) as client, asyncio.TaskGroup() as group:
            group.create_task(read_until_closed(client))
            await client.publish("leak/1", b"1")
            testbed.hub("primary").broker.kill()  # nothing acknowledges from now on
            group.create_task(client.publish("leak/2", b"2"))  # cancelled mid-wait
            in_block.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(device())
    async with asyncio.timeout(5):
        await in_block.wait()
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not ended.is_set()  # the TaskGroup cancelled the reader before the client closed
    assert asyncio.all_tasks() == tasks_before
    _assert_no_threads_left(threads_before)


@pytest.mark.asyncio
async def test_leaving_the_block_ends_iterators_and_threads(testbed: Testbed) -> None:
    threads_before = set(threading.enumerate())
    tasks_before = asyncio.all_tasks()
    async with AsyncDeviceClient(testbed.client_config("async-exit")) as client:
        reader = asyncio.create_task(_count(client.messages("exit/#")))
        events_reader = asyncio.create_task(_collect(client.events()))
        unread = client.events()  # read only after the block: its items must wait for it
        await client.publish("exit/1", b"1")
    async with asyncio.timeout(5):
        assert await reader == 1  # ended with StopAsyncIteration, after its message
        # Ended too, after delivering what happened inside the block: the first PUBACK.
        for seen in (await events_reader, await _collect(unread)):
            assert [e.hub for e in seen if isinstance(e, events.FirstAck)] == ["primary"]
    assert asyncio.all_tasks() == tasks_before
    _assert_no_threads_left(threads_before)


@pytest.mark.asyncio
async def test_durable_publishes_store_off_the_loop_and_their_threads_end(
    testbed: Testbed, tmp_path: Path
) -> None:
    threads_before = set(threading.enumerate())
    stored_on: set[str] = set()
    outbox_order: list[OutboundMessage] = []  # in the order the outbox accepted them

    class WatchedOutbox(SqliteOutbox):
        def put(self, topic: str, payload: bytes, qos: int) -> OutboundMessage:
            stored_on.add(threading.current_thread().name)
            message = super().put(topic, payload, qos)
            outbox_order.append(message)
            return message

    outbox = WatchedOutbox(tmp_path / "outbox.sqlite", max_messages=1000, max_bytes=1_000_000)
    config = testbed.client_config("async-durable", hubs=["primary"])
    async with AsyncDeviceClient(config, outbox=outbox) as client:
        await asyncio.gather(*(client.publish(TOPIC, f"{n}:x") for n in range(50)))
        assert [m.payload for m in outbox_order] == [f"{n}:x".encode() for n in range(50)]
        client.publish_nowait(TOPIC, "50:x")  # documented: stores on the calling thread
        assert client.metrics().published == 51
    loop_thread = threading.current_thread().name
    assert loop_thread in stored_on  # only from publish_nowait
    store_threads = stored_on - {loop_thread}
    assert store_threads and all(
        n.startswith("device-sdk-aio-async-durable-store") for n in store_threads
    )
    _assert_no_threads_left(threads_before)
    with pytest.raises(ClientClosed, match="the message was not accepted"):
        await client.publish(TOPIC, "late")


async def _count(stream: AsyncStream[Any]) -> int:
    return len([item async for item in stream])


async def _collect(stream: AsyncStream[Any]) -> list[Any]:
    return [item async for item in stream]


@pytest.mark.asyncio
async def test_cancelled_while_connecting_leaves_nothing(testbed: Testbed) -> None:
    testbed.hub("primary").broker.kill()
    threads_before = set(threading.enumerate())
    config = testbed.client_config("async-never", hubs=["primary"])
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3), AsyncDeviceClient(config):
            raise AssertionError("connected to a dead hub")
    _assert_no_threads_left(threads_before)


def test_sync_events_iterator_sees_the_failover(testbed: Testbed) -> None:
    client = DeviceClient(testbed.client_config("sync-events"))
    stream = client.events(timeout=5)
    seen: list[events.Event] = []
    with client:
        client.publish(TOPIC, "0:x").wait(5)
        testbed.hub("primary").broker.kill()
        for event in stream:
            seen.append(event)
            if isinstance(event, events.Connected) and event.hub == "secondary":
                break
        client.publish(TOPIC, "1:x").wait(5)
    rest = list(stream)  # ends with the client, after what it emitted before closing
    kinds = [type(e) for e in seen]
    assert kinds[0] is events.Attempting
    assert events.Connected in kinds and events.Disconnected in kinds
    assert events.FailedOver in kinds
    assert any(isinstance(e, events.FirstAck) for e in rest)
    assert list(client.events()) == []  # closed: a new iterator ends at once


@pytest.mark.asyncio
async def test_messages_are_messages_with_their_properties(testbed: Testbed) -> None:
    async with AsyncDeviceClient(testbed.client_config("async-props")) as client:
        stream = client.messages("props/#")
        sent = PublishProperties(content_type="text/plain", user_properties=(("k", "v"),))
        await client.publish("props/1", b"hi", properties=sent)
        async with asyncio.timeout(5):
            message = await anext(stream)
    assert isinstance(message, Message)
    assert (message.topic, message.payload, message.qos) == ("props/1", b"hi", 1)
    assert message.subscription == "props/#"
    assert message.properties.content_type == "text/plain"
    assert ("k", "v") in message.properties.user_properties


@pytest.mark.asyncio
async def test_an_unsubscribed_filter_delivers_nothing_more(testbed: Testbed) -> None:
    async with AsyncDeviceClient(testbed.client_config("async-unsub")) as client:
        everything = client.messages()
        await client.subscribe("unsub/a")
        await client.subscribe("unsub/b")
        await client.publish("unsub/a", b"a0")  # after both SUBSCRIBEs, on the same link
        async with asyncio.timeout(5):
            assert (await anext(everything)).payload == b"a0"
            await client.unsubscribe("unsub/a")
            # Our own publishes follow the UNSUBSCRIBE on the same link, in order.
            await client.publish("unsub/a", b"a1")
            await client.publish("unsub/b", b"b1")
            assert (await anext(everything)).payload == b"b1"


@pytest.mark.asyncio
async def test_request_and_reply_on_the_async_face(testbed: Testbed) -> None:
    async with AsyncDeviceClient(testbed.client_config("async-rr")) as client:
        requests = client.messages("svc/upper")

        async def serve_one() -> None:
            request = await anext(requests)
            await client.reply(request, request.payload.upper())

        server = asyncio.create_task(serve_one())
        async with asyncio.timeout(10):
            # Subscribed before the request, on the same link: the first request is heard.
            answer = await client.request("svc/upper", b"shout", timeout=5.0)
            await server
        assert answer.payload == b"SHOUT"
        assert answer.topic == "async-rr/responses"
        with pytest.raises(TimeoutError, match="no response"):
            await client.request("svc/nobody", b"?", timeout=0.3)


@pytest.mark.asyncio
async def test_async_request_on_mqtt_3_1_1_is_a_config_error(testbed: Testbed) -> None:
    config = testbed.client_config("async-old", mqtt_version="3.1.1")
    async with AsyncDeviceClient(config) as client:
        with pytest.raises(ConfigError) as caught:
            await client.request("svc/echo", b"?", timeout=1.0)
    assert caught.value.field == "mqtt_version"

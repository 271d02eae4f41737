"""publish(retain=, properties=, ttl=, priority=) against real mosquitto, on both faces.

What reaches the hub is judged by a plain paho MQTT 5 subscriber, not by the SDK.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from device_sdk import AsyncDeviceClient, DeviceClient, events
from device_sdk.errors import ConfigError, MessageExpired, RetainNotSupported
from device_sdk.message import PublishProperties
from device_sdk.outbox import URGENT
from device_sdk.testbed import Testbed
from device_sdk.testbed.pytest_plugin import TestbedFactory
from tests.integration.support import EventLog

TOPIC = "test/options"


class Subscriber:
    """A plain paho MQTT 5 client that records every message it gets, with its properties."""

    def __init__(self, bed: Testbed, topic: str = TOPIC, hub: str = "primary") -> None:
        broker = bed.hub(hub).broker
        self._host, self._port, self._topic = broker.host, broker.port, topic
        self._cond = threading.Condition()
        self.messages: list[paho.MQTTMessage] = []
        self._subscribed = threading.Event()
        self._client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"options-subscriber-{time.monotonic_ns()}",
            protocol=paho.MQTTv5,
        )
        self._client.on_connect = lambda c, *_a: c.subscribe(self._topic, qos=1)
        self._client.on_subscribe = lambda *_a: self._subscribed.set()
        self._client.on_message = self._on_message

    def _on_message(self, _c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()

    @contextmanager
    def running(self) -> Iterator[Subscriber]:
        self._client.connect(self._host, self._port, keepalive=5)
        self._client.loop_start()
        try:
            assert self._subscribed.wait(5), "subscriber not subscribed in time"
            yield self
        finally:
            self._client.disconnect()
            self._client.loop_stop()

    def wait_count(self, count: int, timeout: float = 10.0) -> list[paho.MQTTMessage]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.messages) >= count, timeout), (
                f"saw {len(self.messages)} of {count} messages"
            )
            return list(self.messages)


def _bed(factory: TestbedFactory, **options: Any) -> Testbed:
    return factory(hubs=("primary",), **options)


def _config(bed: Testbed, client_id: str, **overrides: Any) -> Any:
    return bed.client_config(client_id, hubs=("primary",), **overrides)


@pytest.mark.parametrize("version", ["5", "3.1.1"])
def test_a_retained_message_reaches_a_later_subscriber(
    testbed_factory: TestbedFactory, version: str
) -> None:
    bed = _bed(testbed_factory)
    with DeviceClient(_config(bed, f"retain-{version}", mqtt_version=version)) as client:
        client.publish(TOPIC, b"last-known", retain=True).wait(10)
        client.publish(TOPIC, b"not-kept").wait(10)
    with Subscriber(bed).running() as later:  # subscribes after both were acknowledged
        (message,) = later.wait_count(1)
        time.sleep(0.2)  # a second retained message would have arrived with the first
        assert [m.payload for m in later.messages] == [b"last-known"]
        assert message.retain


def test_properties_reach_a_plain_mqtt5_subscriber(testbed_factory: TestbedFactory) -> None:
    bed = _bed(testbed_factory)
    properties = PublishProperties(
        content_type="application/json",
        response_topic="replies/device-1",
        correlation_data=b"\x00\x01req-7",
        user_properties=(("site", "north"), ("unit", "celsius"), ("site", "south")),
        payload_format_utf8=True,
    )
    with Subscriber(bed).running() as sub, DeviceClient(_config(bed, "props")) as client:
        handle = client.publish(TOPIC, '{"t": 21.5}', properties=properties, ttl=120)
        handle.wait(10)
        (message,) = sub.wait_count(1)
    got = message.properties
    assert message.payload == b'{"t": 21.5}'
    assert got.ContentType == "application/json"
    assert got.ResponseTopic == "replies/device-1"
    assert got.CorrelationData == b"\x00\x01req-7"
    assert got.PayloadFormatIndicator == 1
    assert 100 <= got.MessageExpiryInterval <= 120
    assert got.UserProperty == [
        ("site", "north"),
        ("unit", "celsius"),
        ("site", "south"),
        ("message-id", handle.message_id),
    ]


def test_a_message_without_options_carries_only_its_message_id(
    testbed_factory: TestbedFactory,
) -> None:
    bed = _bed(testbed_factory)
    with Subscriber(bed).running() as sub, DeviceClient(_config(bed, "plain")) as client:
        handle = client.publish(TOPIC, b"x")
        handle.wait(10)
        (message,) = sub.wait_count(1)
    assert message.properties.UserProperty == [("message-id", handle.message_id)]
    assert not hasattr(message.properties, "MessageExpiryInterval")
    assert not message.retain


def test_ttl_expires_during_an_outage_and_the_rest_is_delivered_after(
    testbed_factory: TestbedFactory,
) -> None:
    bed = _bed(testbed_factory)
    broker = bed.hub("primary").broker
    log = EventLog()
    with DeviceClient(_config(bed, "ttl"), on_event=log) as client:
        broker.stop()
        log.wait_for(events.Disconnected, 5)
        stale = [client.publish(TOPIC, f"stale-{i}", ttl=0.5) for i in range(3)]
        kept = [client.publish(TOPIC, f"kept-{i}") for i in range(3)]
        started = time.monotonic()
        for handle in stale:  # failed while the hub is still down, not at reconnect
            with pytest.raises(MessageExpired):
                handle.wait(5)
        assert time.monotonic() - started < 3.0
        assert not broker.is_running
        expired = log.wait_for(events.MessagesExpired, 5)
        assert isinstance(expired, events.MessagesExpired) and expired.count == 3
        assert client.metrics().expired == 3
        assert client.metrics().queue_depth == 3
        broker.start()
        for handle in kept:  # acknowledged by the hub once it is back
            handle.wait(15)
        assert client.metrics().expired == 3


def test_urgent_messages_drain_first_and_order_holds_within_a_priority(
    testbed_factory: TestbedFactory,
) -> None:
    bed = _bed(testbed_factory)
    with Subscriber(bed).running() as sub:
        client = DeviceClient(_config(bed, "priority"))
        try:
            # Queued before the first connect: all of them wait in the outbox.
            handles = [client.publish(TOPIC, f"routine-{i}") for i in range(5)]
            handles += [client.publish(TOPIC, f"urgent-{i}", priority=URGENT) for i in range(3)]
            client.connect(10)
            for handle in handles:
                handle.wait(10)
        finally:
            client.close()
        got = [m.payload.decode() for m in sub.wait_count(8)]
    assert got == [f"urgent-{i}" for i in range(3)] + [f"routine-{i}" for i in range(5)]


def test_mqtt_3_1_1_refuses_properties_at_the_call(testbed_factory: TestbedFactory) -> None:
    bed = _bed(testbed_factory)
    with Subscriber(bed).running() as sub:
        with DeviceClient(_config(bed, "v311", mqtt_version="3.1.1")) as client:
            with pytest.raises(ConfigError, match=r"MQTT 3\.1\.1 cannot carry"):
                client.publish(TOPIC, b"x", properties=PublishProperties(content_type="a/b"))
            client.publish(TOPIC, b"after", ttl=30, retain=False).wait(10)
        assert [m.payload for m in sub.wait_count(1)] == [b"after"]


def test_a_hub_without_retain_fails_a_retained_message_once(
    testbed_factory: TestbedFactory,
) -> None:
    bed = _bed(testbed_factory, broker_config={"primary": ("retain_available false",)})
    log = EventLog()
    with Subscriber(bed).running() as sub:
        with DeviceClient(_config(bed, "noretain"), on_event=log) as client:
            retained = client.publish(TOPIC, b"kept?", retain=True)
            after = client.publish(TOPIC, b"after")
            with pytest.raises(RetainNotSupported, match="Retain Available = 0"):
                retained.wait(10)
            after.wait(10)
            assert client.metrics().undeliverable == 1
            assert client.metrics().disconnects == 0  # refused before sending: no link lost
            event = log.wait_for(events.MessageUndeliverable, 5)
            assert isinstance(event, events.MessageUndeliverable)
            assert isinstance(event.error, RetainNotSupported)
        assert [m.payload for m in sub.wait_count(1)] == [b"after"]


def test_the_asyncio_face_publishes_with_options(testbed_factory: TestbedFactory) -> None:
    bed = _bed(testbed_factory)
    properties = PublishProperties(content_type="text/plain", user_properties=(("k", "v"),))

    async def run() -> list[str]:
        async with AsyncDeviceClient(_config(bed, "aio-options")) as client:
            await client.publish(TOPIC, b"a", retain=True, properties=properties, ttl=60)
            handle = client.publish_nowait(TOPIC, b"b", priority=URGENT, ttl=60)
            await client.acknowledged(handle)
            with pytest.raises(ConfigError, match="ttl"):
                await client.publish(TOPIC, b"c", ttl=0)
            return [handle.message_id]

    with Subscriber(bed).running() as sub:
        (second_id,) = asyncio.run(run())
        first, second = sub.wait_count(2)
    assert first.payload == b"a" and first.properties.ContentType == "text/plain"
    assert first.properties.UserProperty[0] == ("k", "v")
    assert 50 <= first.properties.MessageExpiryInterval <= 60
    assert second.payload == b"b"
    assert second.properties.UserProperty == [("message-id", second_id)]
    with Subscriber(bed).running() as later:
        (kept,) = later.wait_count(1)
    assert kept.payload == b"a" and kept.retain

"""publish()'s options, without a network: validation at the call, what the engine asks
the outbox, the PUBLISH properties' bytes, and the refusals from what a hub announced."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device_sdk import ClientConfig, DeviceClient, HubEndpoint, MemoryOutbox, events
from device_sdk.adapters.paho_link import LinkSettings, PahoLink, _encoded_options
from device_sdk.core.topics import check_qos
from device_sdk.engine.link_session import LinkSession, SessionServices
from device_sdk.errors import (
    ConfigError,
    MessageNotDeliverable,
    MessageTooLarge,
    RetainNotSupported,
)
from device_sdk.message import PublishProperties
from device_sdk.metrics import MetricsRecorder
from device_sdk.outbox import HIGHEST_PRIORITY, URGENT, OutboundMessage

HUB = HubEndpoint(name="primary", fqdn="hub.example.com", tls=None)
PROPS = PublishProperties(
    content_type="application/json",
    response_topic="replies/1",
    correlation_data=b"\x00corr",
    user_properties=(("b", "2"), ("a", "1"), ("b", "3")),
    payload_format_utf8=True,
)


def _client(version: str = "5", outbox: Any = None) -> DeviceClient:
    config = ClientConfig(client_id="options", hubs=(HUB,), mqtt_version=version)  # type: ignore[arg-type]
    return DeviceClient(config, outbox=outbox)


@pytest.fixture
def client() -> Iterator[DeviceClient]:
    c = _client()
    yield c
    c.close()


# -- validation at the call ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"ttl": 0}, "ttl"),
        ({"ttl": -1.0}, "ttl"),
        ({"ttl": math.nan}, "ttl"),
        ({"ttl": math.inf}, "ttl"),
        ({"ttl": True}, "ttl"),
        ({"ttl": "5"}, "ttl"),
        ({"ttl": 2.0**33}, "ttl"),
        ({"priority": -1}, "priority"),
        ({"priority": HIGHEST_PRIORITY + 1}, "priority"),
        ({"priority": True}, "priority"),
        ({"priority": 1.5}, "priority"),
        ({"retain": 1}, "retain"),
        ({"properties": {"content_type": "a/b"}}, "properties"),
        ({"properties": PublishProperties(user_properties=(("message-id", "x"),))}, "user"),
    ],
)
def test_bad_options_are_refused_at_the_call_and_nothing_is_queued(
    client: DeviceClient, options: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError, match=field):
        client.publish("t", b"x", **options)
    assert client.metrics().queue_depth == 0


def test_a_payload_marked_utf8_must_be_utf8(client: DeviceClient) -> None:
    marked = PublishProperties(payload_format_utf8=True)
    with pytest.raises(ConfigError, match="UTF-8"):
        client.publish("t", b"\xff\xfe", properties=marked)
    client.publish("t", "21.5 °C", properties=marked)
    assert client.metrics().queue_depth == 1


def test_good_options_reach_the_outbox() -> None:
    outbox = MemoryOutbox(max_messages=10, max_bytes=10_000)
    c = _client(outbox=outbox)
    try:
        before = time.time()
        c.publish("t", b"x", retain=True, properties=PROPS, ttl=30, priority=URGENT)
        (message,) = outbox.take_unsent(10)
    finally:
        c.close()
    assert message.retain and message.properties == PROPS and message.priority == URGENT
    assert message.expires_at is not None and before + 30 <= message.expires_at <= time.time() + 30


def test_empty_properties_are_no_properties() -> None:
    outbox = MemoryOutbox(max_messages=10, max_bytes=10_000)
    c = _client("3.1.1", outbox=outbox)
    try:
        c.publish("t", b"x", properties=PublishProperties())
        (message,) = outbox.take_unsent(10)
    finally:
        c.close()
    assert message.properties is None


def test_mqtt_3_1_1_refuses_properties_rather_than_drop_them() -> None:
    c = _client("3.1.1")
    try:
        with pytest.raises(ConfigError, match=r"MQTT 3\.1\.1 cannot carry"):
            c.publish("t", b"x", properties=PublishProperties(content_type="a/b"))
        c.publish("t", b"x", retain=True, ttl=5)  # retain and TTL work on 3.1.1
        assert c.metrics().queue_depth == 1
    finally:
        c.close()


def test_qos_2_is_refused_saying_why() -> None:
    with pytest.raises(ConfigError) as caught:
        check_qos(2)
    text = str(caught.value)
    assert "QoS 2 is not supported" in text
    assert "Azure IoT Hub" in text and "AWS IoT Core" in text


# -- what the engine asks the outbox --------------------------------------------------------


class OldOutbox(MemoryOutbox):
    """An application's outbox written before the options: put() takes three arguments."""

    calls: list[tuple[str, bytes, int]]

    def put(self, topic: str, payload: bytes, qos: int) -> OutboundMessage:  # type: ignore[override]
        self.calls.append((topic, payload, qos))
        return super().put(topic, payload, qos)


def test_an_old_outbox_gets_the_short_form_and_refuses_options_clearly() -> None:
    outbox = OldOutbox(max_messages=10, max_bytes=10_000)
    outbox.calls = []
    c = _client(outbox=outbox)
    try:
        c.publish("t", b"x")
        assert outbox.calls == [("t", b"x", 1)]
        with pytest.raises(ConfigError, match="outbox"):
            c.publish("t", b"y", ttl=5)
        assert c.metrics().queue_depth == 1
    finally:
        c.close()


# -- the PUBLISH properties' bytes ------------------------------------------------------------


def _decoded(options: bytes, link: PahoLink, message_id: str) -> Properties:
    from device_sdk.adapters.paho_link import _PackedProperties

    packed = _PackedProperties(link._id_property_prefix, message_id, options).pack()
    decoded = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    decoded.unpack(packed)  # type: ignore[no-untyped-call]
    return decoded


def _link(version: str = "5") -> PahoLink:
    settings = LinkSettings(
        client_id="options", mqtt_version=version, keepalive=5, connect_timeout=1,  # type: ignore[arg-type]
        inflight_window=10,
    )  # fmt: skip
    return PahoLink(HUB, "127.0.0.1", settings)


def test_every_property_is_encoded_and_the_message_id_comes_last() -> None:
    now = 1_000_000.0
    got = _decoded(_encoded_options(PROPS, now + 90.7, now), _link(), "id-1")
    assert got.ContentType == "application/json"
    assert got.ResponseTopic == "replies/1"
    assert got.CorrelationData == b"\x00corr"
    assert got.PayloadFormatIndicator == 1
    assert got.MessageExpiryInterval == 90  # whole seconds left
    assert got.UserProperty == [("b", "2"), ("a", "1"), ("b", "3"), ("message-id", "id-1")]


@pytest.mark.parametrize(("left", "interval"), [(0.2, 1), (1.0, 1), (1.9, 1), (3600.5, 3600)])
def test_the_expiry_interval_is_the_whole_seconds_left_and_at_least_one(
    left: float, interval: int
) -> None:
    got = _decoded(_encoded_options(None, 500.0 + left, 500.0), _link(), "id")
    assert got.MessageExpiryInterval == interval
    assert not hasattr(got, "ContentType")


def test_publish_size_counts_the_properties() -> None:
    link = _link()
    plain = link.publish_size("t", b"x", 1, "id")
    with_props = link.publish_size("t", b"x", 1, "id", properties=PROPS, expires_at=time.time() + 9)
    extra = len(_encoded_options(PROPS, time.time() + 9, time.time()))
    assert with_props == plain + extra


# -- refusals from what the hub announced -----------------------------------------------------


class FakeLink:
    """The attributes a LinkSession reads from a link, and a record of publishes."""

    def __init__(self, **announced: Any) -> None:
        self.hub = HUB
        self.resumed = False
        self.receive_maximum = 65535
        self.maximum_qos = 2
        self.maximum_packet_size: int | None = None
        self.retain_available = True
        self.carries_properties = True
        self.__dict__.update(announced)
        self.sent: list[tuple[Any, ...]] = []
        self._real = _link("5" if self.carries_properties else "3.1.1")

    def publish(self, topic: str, payload: bytes, qos: int, message_id: str, **options: Any) -> int:
        self.sent.append((topic, payload, qos, message_id, options))
        return len(self.sent)

    def publish_size(self, *args: Any, **options: Any) -> int:
        return self._real.publish_size(*args, **options)

    def coalesced(self, enabled: bool = True) -> Any:
        import contextlib

        return contextlib.nullcontext()


def _session(link: FakeLink, outbox: MemoryOutbox) -> tuple[LinkSession, list[events.Event]]:
    seen: list[events.Event] = []
    services = SessionServices(
        config=ClientConfig(client_id="options", hubs=(HUB,)),
        outbox=outbox,
        metrics=MetricsRecorder(),
        emit=seen.append,
        deliver=lambda *_a: None,
    )
    session = LinkSession(link, services, inflight={}, outage_started=None, now=time.monotonic())  # type: ignore[arg-type]
    return session, seen


def test_a_retained_message_to_a_hub_without_retain_fails_once_and_the_rest_flows() -> None:
    outbox = MemoryOutbox(max_messages=10, max_bytes=10_000)
    retained = outbox.put("t", b"r", 1, retain=True)
    plain = outbox.put("t", b"p", 1)
    link = FakeLink(retain_available=False)
    session, seen = _session(link, outbox)
    session.drain()
    assert retained.handle is not None and isinstance(retained.handle.error, RetainNotSupported)
    assert [sent[1] for sent in link.sent] == [b"p"]
    assert plain.handle is not None and not plain.handle.done()
    assert [type(e) for e in seen] == [events.MessageUndeliverable]
    session.drain()  # never retried
    assert len(link.sent) == 1 and outbox.depth() == 1


def test_properties_never_reach_a_3_1_1_link_unannounced() -> None:
    outbox = MemoryOutbox(max_messages=10, max_bytes=10_000)
    stored = outbox.put("t", b"x", 1, properties=PublishProperties(content_type="a/b"))
    link = FakeLink(carries_properties=False)
    session, _seen = _session(link, outbox)
    session.drain()
    assert stored.handle is not None
    assert type(stored.handle.error) is MessageNotDeliverable
    assert "3.1.1" in str(stored.handle.error) and link.sent == []


def test_options_are_sent_and_plain_messages_take_the_short_call() -> None:
    outbox = MemoryOutbox(max_messages=10, max_bytes=10_000)
    outbox.put("t", b"o", 1, retain=True, properties=PROPS, ttl=60)
    outbox.put("t", b"p", 1)
    link = FakeLink()
    session, _seen = _session(link, outbox)
    session.drain()
    (first, second) = link.sent
    assert first[4]["retain"] is True and first[4]["properties"] == PROPS
    assert first[4]["expires_at"] is not None
    assert second[4] == {}


def test_the_size_check_counts_properties_even_for_a_small_payload() -> None:
    big = PublishProperties(user_properties=tuple((f"k{i}", "v" * 40) for i in range(40)))
    outbox = MemoryOutbox(max_messages=10, max_bytes=10_000)
    stored = outbox.put("t", b"x", 1, properties=big)
    link = FakeLink(maximum_packet_size=1024)
    session, _seen = _session(link, outbox)
    session.drain()
    assert stored.handle is not None and isinstance(stored.handle.error, MessageTooLarge)
    assert link.sent == []

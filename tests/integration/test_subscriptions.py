"""Subscriptions against real mosquitto: unsubscribe (remembered across a failover),
shared subscriptions, the properties a handler sees, and request/response on MQTT 5."""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Iterator

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device_sdk import ConfigError, DeviceClient, HubEndpoint, Message, PublishProperties, events
from device_sdk.testbed import FaultProxy, Testbed
from device_sdk.testbed.proxy import ProxySpec
from tests.integration.support import EventLog

pytestmark = pytest.mark.integration


class Backend:
    """A plain paho MQTT 5 client on one hub: publishes with properties, answers requests."""

    def __init__(self, bed: Testbed, hub: str, name: str) -> None:
        broker = bed.hub(hub).broker
        self.received: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self._subscribed = threading.Event()
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=name, protocol=MQTTProtocolVersion.MQTTv5
        )
        self._client.on_message = lambda _c, _u, message: self.received.put(message)
        self._client.on_subscribe = lambda *_a: self._subscribed.set()
        self._client.connect(broker.host, broker.port, keepalive=10)
        self._client.loop_start()

    def publish(self, topic: str, payload: bytes, properties: Properties | None = None) -> None:
        self._client.publish(topic, payload, qos=1, properties=properties).wait_for_publish(5.0)

    def subscribe(self, topic_filter: str) -> None:
        self._subscribed.clear()
        self._client.subscribe(topic_filter, qos=1)
        assert self._subscribed.wait(5.0)

    def answer_requests(self) -> None:
        """Reply to every request received: to its Response Topic, with its Correlation Data."""

        def answer(_c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
            reply = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            reply.CorrelationData = message.properties.CorrelationData  # type: ignore[union-attr]
            response_topic = message.properties.ResponseTopic  # type: ignore[union-attr]
            self._client.publish(response_topic, b"re:" + message.payload, 1, properties=reply)

        self._client.on_message = answer

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def backend(testbed: Testbed) -> Iterator[Backend]:
    started = Backend(testbed, "primary", "backend")
    yield started
    started.stop()


def expect(received: queue.Queue[Message], timeout: float = 5.0) -> Message:
    try:
        return received.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no message within {timeout} s") from None


def until_received(publish: object, received: queue.Queue[Message], *, tries: int = 25) -> Message:
    """Publish again until the device has it: a new SUBSCRIBE races the first publish."""
    for _ in range(tries):
        publish()  # type: ignore[operator]
        try:
            return received.get(timeout=0.2)
        except queue.Empty:
            continue
    raise AssertionError("the subscription never took effect")


def test_an_unsubscribed_filter_gets_nothing_now_nor_after_a_failover(testbed: Testbed) -> None:
    received: queue.Queue[Message] = queue.Queue()
    log = EventLog()
    with DeviceClient(testbed.client_config("unsubscriber"), on_event=log) as device:
        device.subscribe("cmd/a", received.put, as_message=True)
        device.subscribe("cmd/b", received.put, as_message=True)
        with DeviceClient(testbed.client_config("sender", hubs=["primary"])) as sender:
            until_received(lambda: sender.publish("cmd/a", b"a0").wait(5.0), received)
            device.unsubscribe("cmd/a")
            device.subscribe("cmd/c", received.put, as_message=True)  # after the UNSUBSCRIBE
            until_received(lambda: sender.publish("cmd/c", b"c0").wait(5.0), received)
            sender.publish("cmd/a", b"a1").wait(5.0)
            sender.publish("cmd/b", b"b1").wait(5.0)  # same sender, after a1: a1 came first
            assert expect(received).payload == b"b1"
        testbed.hub("primary").broker.kill()
        log.wait_for(events.Connected, 10.0, hub="secondary")
        with DeviceClient(testbed.client_config("sender2", hubs=["secondary"])) as sender:
            until_received(lambda: sender.publish("cmd/b", b"b2").wait(5.0), received)
            sender.publish("cmd/a", b"a2").wait(5.0)
            sender.publish("cmd/c", b"c2").wait(5.0)
            assert expect(received).payload == b"c2"  # not a2: not restored on the secondary
    assert received.empty()


def test_a_shared_subscription_splits_the_messages_between_its_members(
    testbed: Testbed, backend: Backend
) -> None:
    got: dict[str, queue.Queue[Message]] = {"w1": queue.Queue(), "w2": queue.Queue()}
    shared = "$share/workers/jobs/#"
    with (
        DeviceClient(testbed.client_config("w1", hubs=["primary"])) as w1,
        DeviceClient(testbed.client_config("w2", hubs=["primary"])) as w2,
    ):
        w1.subscribe(shared, got["w1"].put, as_message=True)
        w2.subscribe(shared, got["w2"].put, as_message=True)
        # Both subscriptions are in place once each member's own probe came back.
        w1.subscribe("probe/w1", got["w1"].put, as_message=True)
        w2.subscribe("probe/w2", got["w2"].put, as_message=True)
        until_received(lambda: backend.publish("probe/w1", b"p"), got["w1"])
        until_received(lambda: backend.publish("probe/w2", b"p"), got["w2"])
        for queued in got.values():  # extra probes
            while not queued.empty():
                queued.get()
        for n in range(20):
            backend.publish(f"jobs/{n}", str(n).encode())
        deadline = time.monotonic() + 10.0
        while sum(q.qsize() for q in got.values()) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
    seen = {name: [q.get_nowait() for _ in range(q.qsize())] for name, q in got.items()}
    payloads = sorted(int(m.payload) for messages in seen.values() for m in messages)
    assert payloads == list(range(20))  # each job once, to one member of the group
    assert seen["w1"] and seen["w2"]  # and both members got some
    assert {m.subscription for messages in seen.values() for m in messages} == {shared}


def test_a_handler_sees_the_properties_the_hub_delivered(
    testbed: Testbed, backend: Backend
) -> None:
    received: queue.Queue[Message] = queue.Queue()
    plain: queue.Queue[tuple[str, bytes]] = queue.Queue()
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    properties.ContentType = "application/json"
    properties.ResponseTopic = "replies/here"
    properties.CorrelationData = b"\x00\x01corr"
    properties.UserProperty = [("tenant", "acme"), ("tenant", "beta"), ("trace", "")]
    properties.MessageExpiryInterval = 120
    properties.PayloadFormatIndicator = 1
    with DeviceClient(testbed.client_config("props", hubs=["primary"])) as device:
        device.subscribe("props/#", received.put, as_message=True)
        device.subscribe("props/x", lambda topic, payload: plain.put((topic, payload)))
        message = until_received(lambda: backend.publish("props/x", b"{}", properties), received)
    assert message.topic == "props/x" and message.payload == b"{}"
    assert message.qos == 1 and message.retain is False and message.subscription == "props/#"
    assert message.properties.content_type == "application/json"
    assert message.properties.response_topic == "replies/here"
    assert message.properties.correlation_data == b"\x00\x01corr"
    assert message.properties.user_properties[-3:] == (
        ("tenant", "acme"),
        ("tenant", "beta"),
        ("trace", ""),
    )
    assert message.properties.payload_format_utf8 is True
    assert message.message_expiry is not None and 110 <= message.message_expiry <= 120
    assert plain.get(timeout=5.0) == ("props/x", b"{}")  # (topic, payload) handlers unchanged


def test_a_handler_that_raises_still_acknowledges_its_command(testbed: Testbed) -> None:
    """A poison command must not come back forever: the next session does not get it."""
    config = testbed.client_config("poisoned", hubs=["primary"], session_expiry=300)

    def explode(_topic: str, _payload: bytes) -> None:
        raise RuntimeError("this command always fails")

    received: queue.Queue[Message] = queue.Queue()
    with (
        DeviceClient(config) as device,
        DeviceClient(testbed.client_config("commander", hubs=["primary"])) as commander,
    ):
        device.subscribe("poison/cmd", explode)
        device.subscribe("poison/probe", received.put, as_message=True)
        until_received(lambda: commander.publish("poison/probe", b"p").wait(5.0), received)
        commander.publish("poison/cmd", b"boom").wait(5.0)
        deadline = time.monotonic() + 5.0
        while device.metrics().callback_errors < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert device.metrics().callback_errors == 1
        # The PUBACK was posted before the error was counted; a publish round trip after
        # it proves it left (the engine sends posted acks before draining the outbox).
        device.publish("poison/done", b"").wait(5.0)
    again: queue.Queue[Message] = queue.Queue()
    with DeviceClient(config) as device:  # the same session, resumed
        device.subscribe("poison/cmd", again.put, as_message=True)
        device.subscribe("poison/probe", again.put, as_message=True)
        with DeviceClient(testbed.client_config("commander", hubs=["primary"])) as commander:
            commander.publish("poison/probe", b"after").wait(5.0)
        assert expect(again).payload == b"after"  # nothing before it: not redelivered


def test_request_and_response_with_a_plain_mqtt_responder(
    testbed: Testbed, backend: Backend
) -> None:
    backend.subscribe("svc/echo")
    backend.answer_requests()
    with DeviceClient(testbed.client_config("requester", hubs=["primary"])) as device:
        first = device.request("svc/echo", b"ping", timeout=5.0)
        second = device.request(
            "svc/echo",
            b"pong",
            timeout=5.0,
            properties=PublishProperties(user_properties=(("k", "v"),)),
        )
    assert first.payload == b"re:ping" and second.payload == b"re:pong"
    assert first.topic == "requester/responses"
    assert first.properties.correlation_data != second.properties.correlation_data


def test_a_device_answers_a_request_with_reply(testbed: Testbed) -> None:
    with (
        DeviceClient(testbed.client_config("responder", hubs=["primary"])) as responder,
        DeviceClient(testbed.client_config("asker", hubs=["primary"])) as asker,
    ):
        ready: queue.Queue[Message] = queue.Queue()
        responder.subscribe("svc/probe", ready.put, as_message=True)
        until_received(lambda: asker.publish("svc/probe", b"p").wait(5.0), ready)
        responder.subscribe(
            "svc/add",
            lambda m: responder.reply(m, str(sum(map(int, m.payload.split(b"+"))))),
            as_message=True,
        )
        # The SUBSCRIBE of svc/add went out before this probe's: once it is back, it holds.
        until_received(lambda: asker.publish("svc/probe", b"p").wait(5.0), ready)
        answer = asker.request("svc/add", b"2+3", timeout=5.0, response_topic="asker/sums")
    assert answer.payload == b"5" and answer.topic == "asker/sums"


def test_a_request_nobody_answers_times_out(testbed: Testbed) -> None:
    with (
        DeviceClient(testbed.client_config("lonely", hubs=["primary"])) as device,
        pytest.raises(TimeoutError, match="no response"),
    ):
        device.request("svc/nobody", b"?", timeout=0.3)


def test_request_needs_mqtt_5_and_reply_needs_a_response_topic(testbed: Testbed) -> None:
    config = testbed.client_config("old", hubs=["primary"], mqtt_version="3.1.1")
    with DeviceClient(config) as device:
        with pytest.raises(ConfigError) as caught:
            device.request("svc/echo", b"?", timeout=1.0)
        assert caught.value.field == "mqtt_version"
        with pytest.raises(ConfigError) as no_topic:
            device.reply(Message(topic="cmd", payload=b"", qos=1), b"")
        assert no_topic.value.field == "message.properties.response_topic"


def test_a_filter_unsubscribed_offline_leaves_the_resumed_session_on_the_hub(
    testbed: Testbed, backend: Backend
) -> None:
    """The hub keeps a resumed session's subscriptions: the SDK unsubscribes there too."""
    broker = testbed.hub("primary").broker
    proxy = FaultProxy(ProxySpec(target_host=broker.host, target_port=broker.port))
    proxy.start()
    log = EventLog()
    received: queue.Queue[Message] = queue.Queue()
    base = testbed.client_config("resumer", hubs=["primary"], session_expiry=300)
    hub = HubEndpoint(name="primary", fqdn="127.0.0.1", port=proxy.port, tls=None)
    try:
        with DeviceClient(dataclasses.replace(base, hubs=(hub,)), on_event=log) as device:
            device.subscribe("off/a", received.put, as_message=True)
            device.subscribe("off/b", received.put, as_message=True)
            until_received(lambda: backend.publish("off/b", b"b0"), received)
            proxy.reset()  # the link dies; the hub keeps the session
            log.wait_for(events.Disconnected, 5.0)
            device.unsubscribe("off/a")  # nothing to send it on now
            proxy.restore()
            connected = log.wait_for(events.Connected, 10.0, session_present=True)
            assert connected.session_present  # type: ignore[attr-defined]
            device.publish("off/sync", b"").wait(5.0)  # after the UNSUBSCRIBE, on that link
    finally:
        proxy.stop()
    # The session outlives the device: whoever resumes it gets what it subscribes to.
    heir = paho.Client(
        CallbackAPIVersion.VERSION2, client_id="resumer", protocol=MQTTProtocolVersion.MQTTv5
    )
    heard: queue.Queue[bytes] = queue.Queue()
    joined = threading.Event()
    heir.on_message = lambda _c, _u, message: heard.put(message.payload)
    heir.on_connect = lambda *_a: joined.set()
    heir.connect(broker.host, broker.port, keepalive=10, clean_start=False)
    heir.loop_start()
    try:
        assert joined.wait(5.0)
        backend.publish("off/a", b"a1")
        backend.publish("off/b", b"b1")
        assert heard.get(timeout=5.0) == b"b1"  # a1 was not kept for the session
    finally:
        heir.disconnect()
        heir.loop_stop()

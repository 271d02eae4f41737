"""A message a hub can never take leaves the outbox with a typed error; it never blocks the rest.

mosquitto with ``max_packet_size`` is the real hub here. On MQTT 5 it announces
the limit in its CONNACK, so the client refuses the message before sending it,
and the link stays up. On MQTT 3.1.1 nothing is announced: mosquitto drops the
connection each time the message arrives, and after ``poison_after`` drops in a
row the message is given up as poison. Before this, either version reconnected
about a thousand times a second and every message behind it was stuck.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from device_sdk import (
    DeviceClient,
    MessageTooLarge,
    OutboxSettings,
    PoisonMessage,
    RetryPolicy,
    events,
)
from device_sdk.testbed import Testbed
from tests.integration.support import EventLog

pytestmark = pytest.mark.integration

LIMIT = ["max_packet_size 100"]
BIG = b"x" * 200


@pytest.mark.parametrize("durable", [False, True], ids=["memory-outbox", "sqlite-outbox"])
def test_mqtt5_a_message_over_the_announced_maximum_is_refused_before_sending(
    testbed_factory: Callable[..., Testbed], tmp_path: Path, durable: bool
) -> None:
    bed = testbed_factory(hubs=["primary"], broker_config={"primary": LIMIT})
    outbox = OutboxSettings(path=str(tmp_path / "o.sqlite")) if durable else OutboxSettings()
    log = EventLog()
    config = bed.client_config("too-large-5", outbox=outbox)
    with DeviceClient(config, on_event=log) as client:
        before = client.publish("t/a", b"1")
        big = client.publish("t/a", BIG)
        after = client.publish("t/a", b"3")
        after.wait(5)
        before.wait(5)
        with pytest.raises(MessageTooLarge, match="at most 100 bytes") as caught:
            big.wait(5)
        metrics = client.metrics()
    assert caught.value.message_id == big.message_id
    assert metrics.undeliverable == 1
    assert metrics.queue_depth == 0
    assert metrics.connects == 1, "the link never dropped"
    (event,) = log.of(events.MessageUndeliverable)
    assert isinstance(event, events.MessageUndeliverable) and event.message_id == big.message_id


def test_mqtt311_a_message_the_hub_keeps_dropping_the_link_over_is_poison(
    testbed_factory: Callable[..., Testbed],
) -> None:
    bed = testbed_factory(hubs=["primary"], broker_config={"primary": LIMIT})
    log = EventLog()
    config = bed.client_config(
        "poison-311",
        mqtt_version="3.1.1",
        poison_after=3,
        retry=RetryPolicy(initial=0.01, maximum=0.05),
    )
    with DeviceClient(config, on_event=log) as client:
        big = client.publish("t/a", BIG)
        after = client.publish("t/a", b"2")
        with pytest.raises(PoisonMessage, match="3 times in a row") as caught:
            big.wait(10)
        after.wait(10)  # the message behind it went through
        metrics = client.metrics()
    assert caught.value.message_id == big.message_id
    assert metrics.undeliverable == 1
    assert 3 <= metrics.disconnects <= 4
    assert metrics.queue_depth == 0

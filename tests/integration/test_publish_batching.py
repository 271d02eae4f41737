"""Batching while publishing in a stream never delays a lone message and loses nothing.

The engine pauses up to ``publish_batch_delay`` between sends only while the
application publishes faster than PUBACKs come back (see
``Engine._batch_while_streaming``). These tests set the longest pause allowed,
0.1 s, so a pause where none belongs would show as whole seconds, far beyond
any loopback round trip.
"""

from __future__ import annotations

import time

import pytest

from device_sdk import DeviceClient
from device_sdk.testbed import Testbed
from device_sdk.testbed.collector import wait_until_seen
from tests.integration.support import TOPIC, collectors_for

pytestmark = pytest.mark.integration

LONGEST_PAUSE = 0.1


def test_an_application_that_waits_for_each_puback_never_pauses(testbed: Testbed) -> None:
    config = testbed.client_config("one-at-a-time", publish_batch_delay=LONGEST_PAUSE)
    with DeviceClient(config) as client:
        client.publish(TOPIC, "warm-up").wait(5)
        started = time.monotonic()
        for n in range(20):
            client.publish(TOPIC, f"{n}:x").wait(5)
        took = time.monotonic() - started
    # 20 pauses would take 2 s; 20 loopback round trips take milliseconds.
    assert took < 10 * LONGEST_PAUSE, f"20 publish-and-wait round trips took {took:.2f} s"


def test_a_stream_published_with_pauses_arrives_whole(testbed: Testbed) -> None:
    collectors = collectors_for(testbed)
    config = testbed.client_config(
        "streamer", hubs=["primary"], publish_batch_delay=LONGEST_PAUSE, inflight_window=50
    )
    with DeviceClient(config) as client:
        handles = [client.publish(TOPIC, f"{n}:x") for n in range(500)]
        for handle in handles:
            handle.wait(10)
        assert client.metrics().acknowledged == 500
    assert wait_until_seen(collectors, set(range(500)), timeout=5.0)

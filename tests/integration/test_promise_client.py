"""README, "Quick start": two promises about the client that only a real hub can show.

* "Subscriptions are restored after every reconnect and failover."
* Events go to ``on_event`` callbacks "on a separate thread, so a slow callback never
  delays liveness checks": a callback that blocks must not hold up the link.
"""

from __future__ import annotations

import queue
import threading
import time

import pytest

from device_sdk import DeviceClient, events
from device_sdk.testbed import Testbed
from tests.integration.support import EventLog

pytestmark = pytest.mark.integration

COMMANDS = "devices/promise/commands"


def test_a_subscription_is_restored_on_the_hub_failed_over_to(testbed: Testbed) -> None:
    received: queue.Queue[tuple[str, bytes]] = queue.Queue()
    log = EventLog()
    config = testbed.client_config("subscriber")
    with DeviceClient(config, on_event=log) as device:
        device.subscribe(COMMANDS, lambda topic, payload: received.put((topic, payload)))
        testbed.hub("primary").broker.kill()
        log.wait_for(events.Connected, 5.0, hub="secondary")
        # A commander that knows only the secondary: the command reaches the device only
        # if the device subscribed again there. Retried, since the resubscription races it.
        with DeviceClient(testbed.client_config("commander", hubs=["secondary"])) as commander:
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                commander.publish(COMMANDS, b"reboot").wait(5.0)
                try:
                    assert received.get(timeout=0.2) == (COMMANDS, b"reboot")
                    break
                except queue.Empty:
                    continue
            else:
                raise AssertionError("the subscription was not restored on the secondary")


def test_a_blocked_event_callback_does_not_hold_up_the_link(testbed: Testbed) -> None:
    release = threading.Event()
    blocked = threading.Event()

    def stuck_listener(event: events.Event) -> None:
        blocked.set()
        release.wait(10.0)  # bounded: released at the end of the test at the latest

    try:
        config = testbed.client_config("slow-listener")
        with DeviceClient(config, on_event=stuck_listener) as client:
            assert blocked.wait(5.0)  # the first event's callback is now stuck
            started = time.monotonic()
            for n in range(5):
                client.publish("promise/slow", f"{n}".encode()).wait(5.0)
            # Acknowledged while the callback still blocks: the engine never waited for it.
            assert not release.is_set()
            assert time.monotonic() - started < 5.0
            assert client.metrics().acknowledged >= 5
            release.set()  # before close(), which waits for the callback thread
    finally:
        release.set()

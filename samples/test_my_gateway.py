"""How to test your own device app against real hubs: copy this file into your tests.

Installing device_sdk registers the testbed fixtures with pytest, so these
tests get real mosquitto brokers, a DNS server they control and (optionally)
a concierge, all on loopback, started and stopped for each test::

    pytest samples/test_my_gateway.py
"""

from __future__ import annotations

import time

from device_sdk import DeviceClient, events
from device_sdk.testbed import Testbed


class MyGateway:
    """Stands in for your application: it publishes a reading per call."""

    def __init__(self, client: DeviceClient) -> None:
        self.client = client
        self.sent = 0

    def report(self) -> None:
        self.client.publish("site/42/temperature", f"{self.sent}:21.5").wait(timeout=5)
        self.sent += 1


def test_gateway_keeps_reporting_when_its_primary_hub_dies(testbed: Testbed) -> None:
    watcher = testbed.collector("secondary", "site/42/temperature")
    with DeviceClient(testbed.client_config("my-gateway")) as client:
        gateway = MyGateway(client)
        gateway.report()
        testbed.hub("primary").broker.kill()  # or .hang(), or testbed.point(...)
        gateway.report()  # waits for the PUBACK, now from the secondary
        assert client.metrics().current_hub == "secondary"
    assert watcher.wait_for({1}, timeout=5)


def test_gateway_follows_a_dns_change(testbed: Testbed) -> None:
    seen: list[events.Event] = []
    config = testbed.client_config("my-gateway", hubs=["primary"])
    with DeviceClient(config, on_event=seen.append) as client:
        testbed.point("primary", at="secondary")  # the hub's name now leads elsewhere
        testbed.hub("primary").broker.kill()
        MyGateway(client).report()
    time.sleep(0.1)  # events reach callbacks on their own thread
    addresses = [e.address for e in seen if isinstance(e, events.Connected)]
    assert addresses[-1] == testbed.hub("secondary").address

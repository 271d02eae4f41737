"""An unattended device can retry for days: what the engine keeps must stay bounded."""

from __future__ import annotations

import pytest

from device_sdk import ClientConfig, DeviceClient, HubEndpoint, NotConnected, RetryPolicy
from device_sdk.adapters.resolver import Resolution
from device_sdk.errors import ResolverFailure


class DeadDns:
    """A resolver seam fake whose every lookup fails, as during a long outage."""

    def __init__(self) -> None:
        self.calls = 0

    def resolve_fresh(self, fqdn: str) -> Resolution:
        self.calls += 1
        raise ResolverFailure(f"lookup {self.calls} of {fqdn} failed")


def test_a_long_outage_keeps_only_the_latest_attempt_causes() -> None:
    dns = DeadDns()
    config = ClientConfig(
        client_id="long-outage",
        hubs=(HubEndpoint(name="hub", fqdn="hub.example.com", port=8883),),
        retry=RetryPolicy.immediate(),
    )
    client = DeviceClient(config, resolver=dns)
    try:
        with pytest.raises(NotConnected) as caught:
            client.connect(timeout=0.5)
    finally:
        client.close()
    assert dns.calls > 100, "the test needs a long outage"
    kept = caught.value.attempts
    assert 0 < len(kept) <= 32
    assert all(isinstance(cause, ResolverFailure) for cause in kept)
    numbers = [int(str(cause).split()[1]) for cause in kept]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # the latest, in order
    assert numbers[0] > 1  # the oldest were let go


def test_a_stuck_callback_cannot_queue_without_bound() -> None:
    import threading

    from device_sdk.engine.dispatch import CallbackDispatcher

    release = threading.Event()
    dispatcher = CallbackDispatcher("stuck-test", max_pending=10)
    dispatcher.submit(lambda: release.wait(5))  # the worker is now stuck in a handler
    for _ in range(50):
        dispatcher.submit(lambda: None)
    assert dispatcher.dropped >= 39
    release.set()
    dispatcher.close(5)

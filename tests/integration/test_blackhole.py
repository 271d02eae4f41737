"""A blackholed hub (packets silently dropped: no RST, no FIN) is detected in bounded time.

TCP alone would take minutes to notice; the SDK's RTT-derived PUBACK and
PINGRESP deadlines notice within the profile's bound, without root, through the
testbed's fault-injecting proxy.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import pytest

from device_sdk import DeviceClient, HubEndpoint, events
from device_sdk.testbed import FAST_LIVENESS, FaultProxy, Testbed
from device_sdk.testbed.proxy import ProxySpec
from tests.integration.support import (
    EventLog,
    SteadyPublisher,
    assert_nothing_lost,
    collectors_for,
)

pytestmark = pytest.mark.integration

PROXY_HOST = "127.0.0.1"


@pytest.fixture
def proxied(testbed: Testbed) -> Iterator[tuple[Testbed, FaultProxy]]:
    """The primary's FQDN leads to a fault proxy in front of the primary broker."""
    primary = testbed.hub("primary")
    spec = ProxySpec(target_host=primary.address, target_port=primary.broker.port)
    with FaultProxy(spec) as proxy:
        assert testbed.dns is not None
        testbed.dns.set_address(primary.fqdn, [PROXY_HOST])
        yield testbed, proxy


def config_through(bed: Testbed, proxy: FaultProxy, client_id: str, **liveness: float):  # type: ignore[no-untyped-def]
    via_proxy = HubEndpoint(name="primary", fqdn=bed.hub("primary").fqdn, port=proxy.port, tls=None)
    config = bed.client_config(client_id)
    return dataclasses.replace(
        config,
        hubs=(via_proxy, bed.endpoint("secondary")),
        liveness=dataclasses.replace(FAST_LIVENESS, **liveness),
    )


def test_blackhole_while_publishing_is_detected_by_the_ack_deadline(
    proxied: tuple[Testbed, FaultProxy],
) -> None:
    bed, proxy = proxied
    collectors = collectors_for(bed)
    log = EventLog()
    config = config_through(bed, proxy, "blackhole-busy")
    with DeviceClient(config, on_event=log) as client:
        publisher = SteadyPublisher(client)
        with publisher.running():
            time.sleep(0.4)
            proxy.blackhole()
            dropped_at = time.monotonic()
            lost = log.wait_for(events.Disconnected, 5.0, hub="primary")
            log.wait_for(events.Connected, 5.0, hub="secondary")
            time.sleep(0.3)
        assert_nothing_lost(publisher, *collectors)
    assert lost.unresponsive  # type: ignore[attr-defined]
    assert lost.at - dropped_at <= config.liveness.deadline_ceiling + 0.1


def test_blackhole_on_an_idle_link_is_detected_by_the_ping_deadline(
    proxied: tuple[Testbed, FaultProxy],
) -> None:
    bed, proxy = proxied
    log = EventLog()
    config = config_through(bed, proxy, "blackhole-idle", idle_probe_after=0.5)
    with DeviceClient(config, on_event=log) as client:
        time.sleep(0.2)
        proxy.blackhole()
        dropped_at = time.monotonic()
        lost = log.wait_for(events.Disconnected, 5.0, hub="primary")
        log.wait_for(events.Connected, 5.0, hub="secondary")
        client.publish("test/idle", b"1").wait(5)
    assert lost.unresponsive  # type: ignore[attr-defined]
    bound = config.liveness.probe_after + config.liveness.deadline_ceiling + 0.1
    assert lost.at - dropped_at <= bound

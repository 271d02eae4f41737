"""The recovery path end to end: real mosquitto hubs, real DNS, real TLS, on loopback.

Each test publishes numbered QoS 1 messages through DeviceClient while it
breaks something, then asks independent collectors (plain paho subscribers on
each hub) whether every number arrived at least once.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from device_sdk import DeviceClient, OutboxSettings, events
from device_sdk.testbed import Testbed
from tests.integration.support import (
    TOPIC,
    EventLog,
    SteadyPublisher,
    assert_nothing_lost,
    collectors_for,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("durable", [False, True], ids=["memory-outbox", "sqlite-outbox"])
def test_primary_crash_fails_over_to_secondary_and_loses_nothing(
    testbed: Testbed, tmp_path: Path, durable: bool
) -> None:
    collectors = collectors_for(testbed)
    log = EventLog()
    outbox = OutboxSettings(path=str(tmp_path / "outbox.sqlite") if durable else None)
    config = testbed.client_config("crash-device", outbox=outbox)
    with DeviceClient(config, on_event=log) as client:
        publisher = SteadyPublisher(client)
        with publisher.running():
            time.sleep(0.5)
            testbed.hub("primary").broker.kill()
            log.wait_for(events.Connected, 5.0, hub="secondary")
            time.sleep(0.5)
        assert_nothing_lost(publisher, *collectors)
        metrics = client.metrics()
    assert metrics.failovers >= 1
    assert metrics.current_hub == "secondary"
    assert metrics.last_recovery_seconds is not None
    assert log.of(events.FailedOver)[0].to_hub == "secondary"  # type: ignore[attr-defined]


def test_dns_flip_dials_the_new_address_and_never_the_stale_one(testbed: Testbed) -> None:
    collectors = collectors_for(testbed)
    log = EventLog()
    primary = testbed.hub("primary")
    stale, fresh = primary.address, testbed.hub("secondary").address
    config = testbed.client_config("flip-device", hubs=["primary"])
    assert testbed.dns is not None
    with DeviceClient(config, on_event=log) as client:
        publisher = SteadyPublisher(client)
        with publisher.running():
            time.sleep(0.3)
            testbed.point("primary", at="secondary")
            flipped_at = time.monotonic()
            attempts_before = client.metrics().attempts
            primary.broker.kill()
            log.wait_for(events.Connected, 5.0, address=fresh)
            time.sleep(0.3)
        assert_nothing_lost(publisher, *collectors)
        attempts_after = client.metrics().attempts - attempts_before
    after_flip = [e for e in log.items if e.at >= flipped_at]
    dialled = [e.address for e in after_flip if isinstance(e, events.DialFailed | events.Connected)]
    assert stale not in dialled, f"dialled the stale address after the flip: {after_flip}"
    resolved = [e for e in after_flip if isinstance(e, events.Resolved)]
    assert resolved and all(e.addresses == (fresh,) for e in resolved)
    # One fresh A query per attempt: nothing was answered from a cache.
    a_queries = [
        q for q in testbed.dns.queries(name=primary.fqdn, rdtype="A") if q.time >= flipped_at
    ]
    assert len(a_queries) == attempts_after >= 1


def test_hung_primary_is_detected_within_the_liveness_bound(testbed: Testbed) -> None:
    collectors = collectors_for(testbed)
    log = EventLog()
    config = testbed.client_config("hang-device")
    with DeviceClient(config, on_event=log) as client:
        publisher = SteadyPublisher(client)
        try:
            with publisher.running():
                time.sleep(0.5)
                hung_at = time.monotonic()
                testbed.hub("primary").broker.hang()
                lost = log.wait_for(events.Disconnected, 5.0, hub="primary")
                log.wait_for(events.Connected, 5.0, hub="secondary")
                time.sleep(0.3)
            assert_nothing_lost(publisher, *collectors)
        finally:
            testbed.hub("primary").broker.resume()
    assert lost.unresponsive  # type: ignore[attr-defined]
    detection = lost.at - hung_at
    # Detected by the RTT-derived ack deadline, bounded by the configured ceiling,
    # plus one publish period for an ack to be outstanding at all.
    assert detection <= config.liveness.deadline_ceiling + 0.1


def test_failback_waits_for_the_dwell_and_does_not_flap(testbed: Testbed) -> None:
    """A primary that keeps coming back for a moment never draws the device home;
    once it stays up, the device fails back exactly once and stays."""
    log = EventLog()
    # Probes every 0.1-0.3 s, so the blips below are often seen.
    config = testbed.client_config("failback-device", failback_probe_interval=0.2)
    primary = testbed.hub("primary").broker
    with DeviceClient(config, on_event=log) as client:
        primary.kill()
        on_secondary = log.wait_for(events.Connected, 5.0, hub="secondary")
        # Flap for twice the dwell: up 0.08 s, down 0.4 s. Probes come 0.1-0.3 s apart,
        # so a blip holds at most one probe and each down stretch a failed one: no two
        # healthy probes are ever in a row, and failing back would be a flap.
        flapping_until = time.monotonic() + 2 * config.failover.failback_dwell_seconds
        for _ in range(20):  # bounded; the clock ends it first
            if time.monotonic() >= flapping_until:
                break
            primary.restart()
            time.sleep(0.08)
            primary.kill()
            time.sleep(0.4)
        assert not log.of(events.FailedBack), "failed back to a flapping primary"
        stable_from = time.monotonic()
        primary.restart()
        back = log.wait_for(events.Connected, 10.0, hub="primary", after=on_secondary.at)
        # Home again: it stays there (watched for a whole dwell) and keeps publishing.
        time.sleep(config.failover.failback_dwell_seconds)
        client.publish(TOPIC, "0:x").wait(5)
    assert back.at - on_secondary.at >= config.failover.failback_dwell_seconds
    assert back.at >= stable_from
    assert len(log.of(events.FailedBack)) == 1
    assert [e.to_hub for e in log.of(events.FailedOver)] == ["secondary"]  # type: ignore[attr-defined]
    hubs = [e.hub for e in log.of(events.Connected)]  # type: ignore[attr-defined]
    assert hubs == ["primary", "secondary", "primary"]

"""A hub's ways in race like its addresses: a blocked port costs one stagger, one attempt
opens one TCP connection, and the way that worked is named in events and metrics.

The blocked port is a real loopback listener whose accept queue is full, so the
kernel drops its SYNs exactly as a firewall does. The WebSocket and proxy ways
in have their own test files (real websockify and tinyproxy).
"""

from __future__ import annotations

import dataclasses
import socket
import time

import pytest

from device_sdk import DeviceClient, HubEndpoint, Transport, events
from device_sdk.adapters.happy_eyeballs import CONNECTION_ATTEMPT_DELAY
from device_sdk.adapters.paho_link import PahoLink
from device_sdk.adapters.resolver import FreshResolver
from device_sdk.config import ClientConfig
from device_sdk.engine.dialer import Dialer
from device_sdk.metrics import MetricsRecorder
from device_sdk.testbed import FAST_LIVENESS, Testbed
from device_sdk.testbed.proxy import FaultProxy, ProxySpec
from tests.integration.support import EventLog, blackholed_port

pytestmark = pytest.mark.integration


def _config(
    testbed: Testbed, client_id: str, *ways: Transport, **overrides: object
) -> ClientConfig:
    config = testbed.client_config(client_id, hubs=["primary"], **overrides)  # type: ignore[arg-type]
    hub = dataclasses.replace(config.hubs[0], transports=ways)
    return dataclasses.replace(config, hubs=(hub,))


def _refused_port(host: str) -> int:
    with socket.socket() as sock:  # bound, never listening: a connect is refused
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def test_a_blackholed_first_way_costs_one_stagger_and_the_second_is_named(
    testbed: Testbed,
) -> None:
    primary = testbed.hub("primary")
    log = EventLog()
    liveness = dataclasses.replace(FAST_LIVENESS, connect_timeout=5.0)
    with blackholed_port(primary.address) as blocked:
        config = _config(
            testbed,
            "ways-blackholed",
            Transport(scheme="mqtt", port=blocked),
            Transport(scheme="mqtt", port=primary.broker.port),
            liveness=liveness,
        )
        started = time.monotonic()
        with DeviceClient(config, on_event=log) as client:
            took = time.monotonic() - started
            client.publish("ways/1", "1").wait(5)
            metrics = client.metrics()
    (connected,) = log.of(events.Connected)
    assert connected.transport == f"mqtt:{primary.broker.port}"  # type: ignore[attr-defined]
    assert metrics.current_transport == f"mqtt:{primary.broker.port}"
    assert metrics.transport_fallbacks == 1
    # Tried in turn, the blocked port would cost the whole connect timeout first.
    assert CONNECTION_ATTEMPT_DELAY <= took < liveness.connect_timeout / 2, took


def test_a_refused_first_way_starts_the_next_at_once(testbed: Testbed) -> None:
    primary = testbed.hub("primary")
    config = _config(
        testbed,
        "ways-refused",
        Transport(scheme="mqtt", port=_refused_port(primary.address)),
        Transport(scheme="mqtt", port=primary.broker.port),
    )
    log = EventLog()
    started = time.monotonic()
    with DeviceClient(config, on_event=log) as client:
        took = time.monotonic() - started
        client.publish("ways/2", "1").wait(5)
    assert log.of(events.Connected)[0].transport == f"mqtt:{primary.broker.port}"  # type: ignore[attr-defined]
    assert took < CONNECTION_ATTEMPT_DELAY + 0.5, took


def test_one_attempt_over_two_open_ways_opens_one_tcp_connection(testbed: Testbed) -> None:
    primary = testbed.hub("primary")
    target = dict(target_host=primary.address, target_port=primary.broker.port)
    first = FaultProxy(ProxySpec(listen_host=primary.address, **target))  # type: ignore[arg-type]
    second = FaultProxy(ProxySpec(listen_host=primary.address, **target))  # type: ignore[arg-type]
    with first, second:
        config = _config(
            testbed,
            "ways-one-connection",
            Transport(scheme="mqtt", port=first.port),
            Transport(scheme="mqtt", port=second.port),
        )
        with DeviceClient(config) as client:
            client.publish("ways/3", "1").wait(5)
            assert first.accepted_connections == 1
            assert second.accepted_connections == 0  # never dialled: the first answered in time


def test_the_way_that_worked_races_first_next_time_and_only_as_a_preference(
    testbed: Testbed,
) -> None:
    primary = testbed.hub("primary")
    hub_ways = (
        Transport(scheme="mqtt", port=_refused_port(primary.address)),
        Transport(scheme="mqtt", port=primary.broker.port),
    )
    config = _config(testbed, "ways-preference", *hub_ways)
    assert testbed.dns is not None
    dialer = Dialer(
        config,
        resolver=FreshResolver(config.dns),
        link_factory=PahoLink,
        metrics=MetricsRecorder(),
        emit=lambda _e: None,
    )
    hub: HubEndpoint = config.hubs[0]
    assert dialer.ways_in(hub) == hub_ways
    link = dialer.open(hub)
    try:
        assert link.transport == hub_ways[1]
        assert dialer.ways_in(hub) == (hub_ways[1], hub_ways[0])  # it starts first now
    finally:
        link.disconnect()
    dialer.forget_preference(hub.name)
    assert dialer.ways_in(hub) == hub_ways

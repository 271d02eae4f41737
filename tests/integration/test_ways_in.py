"""Locked-down networks, end to end: MQTT over secure WebSockets through a real
websockify, fallback from a blocked 8883 to wss:443 and back, and an HTTP
CONNECT proxy (a real tinyproxy) for MQTT.

"8883" is a FaultProxy in front of the broker's TLS listener; blocking it drops
SYNs (a full accept queue), as a firewall does. "443" is websockify with a
certificate for the hub's FQDN, in front of the broker's plain listener. Both
listen on the hub's own loopback address, which its FQDN resolves to.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Iterator

import pytest

from device_sdk import (
    ClientConfig,
    DeviceClient,
    HubEndpoint,
    NotConnected,
    ProxyRefused,
    ProxyTimeout,
    TlsError,
    Transport,
    events,
)
from device_sdk.testbed import FAST_LIVENESS, HttpProxy, Testbed, TlsProbeListener
from device_sdk.testbed.proxy import FaultProxy, ProxySpec
from tests.integration.support import TOPIC, EventLog, SteadyPublisher, assert_nothing_lost

pytestmark = pytest.mark.integration


@pytest.fixture
def bed(testbed_factory: object) -> Testbed:
    return testbed_factory(tls=True)  # type: ignore[operator, no-any-return]


@pytest.fixture
def port_8883(bed: Testbed) -> Iterator[FaultProxy]:
    """The hub's mqtts way in, behind a fault proxy that can drop its SYNs."""
    primary = bed.hub("primary")
    assert primary.broker.tls_port is not None
    spec = ProxySpec(
        listen_host=primary.address,
        target_host=primary.address,
        target_port=primary.broker.tls_port,
    )
    with FaultProxy(spec) as proxy:
        yield proxy


def _with_ways(config: ClientConfig, *ways: Transport, **changes: object) -> ClientConfig:
    hub = dataclasses.replace(config.hubs[0], transports=ways, **changes)  # type: ignore[arg-type]
    return dataclasses.replace(config, hubs=(hub, *config.hubs[1:]))


def _wss(bed: Testbed, hub: str = "primary") -> Transport:
    return Transport(scheme="wss", port=bed.websocket_bridge(hub).port)


def test_a_device_publishes_and_receives_commands_over_wss(bed: Testbed) -> None:
    config = _with_ways(bed.client_config("wss-device", hubs=["primary"]), _wss(bed))
    received: list[bytes] = []
    log = EventLog()
    with DeviceClient(config, on_event=log) as client:
        client.subscribe("wss/cmd", lambda _topic, payload: received.append(payload))
        client.connect(timeout=10)
        handles = [client.publish("wss/cmd", f"{i}".encode()) for i in range(50)]
        for handle in handles:
            handle.wait(10)
        deadline = time.monotonic() + 5
        while len(received) < 50 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.metrics().current_transport == config.hubs[0].transports[0].label
    assert sorted(int(p) for p in received) == list(range(50))
    connected = log.of(events.Connected)[0]
    assert connected.transport.startswith("wss:")  # type: ignore[attr-defined]


def test_wss_verifies_the_certificate_against_the_name_dialled(bed: Testbed) -> None:
    # The bridge's certificate names the hubs' FQDNs; a hub named by its IP is refused.
    wss = _wss(bed)
    config = bed.client_config("wss-verify", hubs=["primary"])
    config = _with_ways(config, wss, fqdn=bed.hub("primary").address)
    client = DeviceClient(config)
    try:
        with pytest.raises(NotConnected) as caught:
            client.connect(timeout=1.0)
    finally:
        client.close()
    assert any(isinstance(error, TlsError) for error in caught.value.attempts)


def test_a_blocked_8883_falls_back_to_wss_and_returns_when_it_opens(
    bed: Testbed, port_8883: FaultProxy
) -> None:
    mqtts = Transport(scheme="mqtts", port=port_8883.port)
    config = _with_ways(
        bed.client_config("ways-and-back", hubs=["primary"], failback_probe_interval=0.3),
        mqtts,
        _wss(bed),
    )
    collector = bed.collector("primary", TOPIC)
    log = EventLog()
    port_8883.drop_syns()
    with DeviceClient(config, on_event=log) as client:
        client.connect(timeout=5)
        assert client.metrics().current_transport.startswith("wss:")  # type: ignore[union-attr]
        with SteadyPublisher(client, rate=100, limit=400).running() as publisher:
            time.sleep(0.5)
            port_8883.restore()
            returned = log.wait_for(events.TransportReturned, timeout=5.0)
            time.sleep(0.3)
        assert_nothing_lost(publisher, collector)
        metrics = client.metrics()
    assert returned.to_transport == mqtts.label  # type: ignore[attr-defined]
    assert metrics.current_transport == mqtts.label
    assert metrics.transport_fallbacks == 1 and metrics.transport_returns == 1
    assert not log.of(events.Disconnected)  # make before break: the link never dropped


def test_8883_blocked_mid_session_moves_the_link_to_wss_and_loses_nothing(
    bed: Testbed, port_8883: FaultProxy
) -> None:
    config = _with_ways(
        bed.client_config("ways-mid-session", hubs=["primary"], failback_probe_interval=60.0),
        Transport(scheme="mqtts", port=port_8883.port),
        _wss(bed),
    )
    collector = bed.collector("primary", TOPIC)
    log = EventLog()
    with DeviceClient(config, on_event=log) as client:
        client.connect(timeout=5)
        with SteadyPublisher(client, rate=100, limit=600).running() as publisher:
            time.sleep(0.3)
            blocked_at = time.monotonic()
            port_8883.drop_syns()
            moved = log.wait_for(events.Connected, timeout=10.0, after=blocked_at)
            time.sleep(0.3)
        assert_nothing_lost(publisher, collector)
    assert moved.transport.startswith("wss:")  # type: ignore[attr-defined]
    # A dead link is noticed within the liveness deadlines, and 8883 costs one stagger.
    assert moved.at - blocked_at < 5.0


# -- an HTTP CONNECT proxy (tinyproxy) -------------------------------------------------------


def test_mqtts_through_an_authenticating_proxy_opens_one_tunnel_per_attempt(
    bed: Testbed,
) -> None:
    with HttpProxy(username="gateway", password="Pr0xyPass") as proxy:
        # tinyproxy resolves with the system resolver, which does not know the testbed's
        # names: the device resolves fresh itself and asks for the address.
        config = bed.client_config(
            "proxied-mqtts", hubs=["primary"], proxy=proxy.settings(resolve_locally=True)
        )
        log = EventLog()
        with DeviceClient(config, on_event=log) as client:
            client.publish("proxied/1", b"1").wait(10)
            assert proxy.connects_seen() == 1
        assert log.of(events.Resolved)  # resolved here, as asked
        assert f"CONNECT {bed.hub('primary').address}:" in proxy.log_text()


def test_wss_through_a_proxy_that_resolves_the_name_itself(bed: Testbed) -> None:
    # "localhost" is a name the proxy's own resolver knows: the device does not resolve it.
    primary = bed.hub("primary")
    bridge = bed.websocket_bridge("primary", tls=False)
    spec = ProxySpec(listen_host="127.0.0.1", target_host=bridge.host, target_port=bridge.port)
    with FaultProxy(spec) as local, HttpProxy() as proxy:
        hub = HubEndpoint(
            name="primary",
            fqdn="localhost",
            tls=None,
            transports=(Transport(scheme="ws", port=local.port),),
        )
        config = bed.client_config("proxied-ws", hubs=["primary"])
        config = dataclasses.replace(config, hubs=(hub,), proxy=proxy.settings())
        log = EventLog()
        with DeviceClient(config, on_event=log) as client:
            client.publish("proxied/2", b"1").wait(10)
            assert client.metrics().dns_queries == 0
        assert not log.of(events.Resolved)
        assert "localhost" in proxy.log_text()
    assert primary.broker.port  # the bridge carried it to the broker


def test_a_proxy_that_refuses_is_a_typed_dial_error_and_the_device_fails_over(
    bed: Testbed,
) -> None:
    with HttpProxy(username="gateway", password="right") as proxy:
        settings = proxy.settings(
            password="wrong",
            resolve_locally=True,
            no_proxy=(bed.hub("secondary").fqdn,),  # reached directly
        )
        log = EventLog()
        config = bed.client_config("proxy-refused", proxy=settings)
        with DeviceClient(config, on_event=log) as client:
            client.publish("proxied/3", b"1").wait(10)
            assert client.metrics().current_hub == "secondary"
    refused = [e for e in log.of(events.AttemptFailed) if e.hub == "primary"]  # type: ignore[attr-defined]
    assert refused and isinstance(refused[0].error, ProxyRefused)  # type: ignore[attr-defined]
    assert "wrong" not in str(refused[0].error)  # type: ignore[attr-defined]


def test_a_proxy_that_never_answers_costs_one_connect_timeout(bed: Testbed) -> None:
    with FaultProxy(ProxySpec(target_host="127.0.0.1", target_port=9)) as silent:
        silent.blackhole()  # accepts, then never says a word
        from device_sdk import ProxySettings

        liveness = dataclasses.replace(FAST_LIVENESS, connect_timeout=0.5)
        config = bed.client_config(
            "proxy-silent",
            hubs=["primary"],
            liveness=liveness,
            proxy=ProxySettings(host=silent.host, port=silent.port, resolve_locally=True),
        )
        client = DeviceClient(config)
        started = time.monotonic()
        try:
            with pytest.raises(NotConnected) as caught:
                client.connect(timeout=0.8)
        finally:
            client.close()
    assert isinstance(caught.value.attempts[0], ProxyTimeout)
    assert time.monotonic() - started < 3.0


def test_mqtts_on_443_offers_the_ways_own_alpn(bed: Testbed) -> None:
    # AWS-style 443: the same TLS settings, but this way in offers ALPN "mqtt" alone.
    assert bed.ca is not None and bed.ca_file is not None
    primary = bed.hub("primary")
    files = bed.ca.issue_server_certificate([primary.fqdn]).write_to(bed.work_dir, stem="alpn")
    with TlsProbeListener(
        cert_file=files.cert_file, key_file=files.key_file, host=primary.address
    ) as listener:
        config = _with_ways(
            bed.client_config("alpn-443", hubs=["primary"]),
            Transport(scheme="mqtts", port=listener.port, alpn_protocols=("mqtt",)),
        )
        with DeviceClient(config) as client:
            client.connect(timeout=5)
        (seen, *_rest) = listener.connections()
    assert seen.sni == primary.fqdn
    assert seen.alpn_offered == ("mqtt",) and seen.alpn_selected == "mqtt"


def test_a_session_resumes_over_wss_as_over_tcp(testbed_factory: object) -> None:
    # The same hang-and-resume as tests/integration/test_sessions.py, over WebSockets:
    # the link is reopened on the same paho session through a new WebSocket handshake.
    bed: Testbed = testbed_factory(tls=True, broker_log_types=("all",))  # type: ignore[operator]
    config = _with_ways(
        bed.client_config("wss-resume", hubs=["primary"], session_expiry=60), _wss(bed)
    )
    collector = bed.collector("primary", TOPIC)
    log = EventLog()
    with DeviceClient(config, on_event=log) as client:
        with SteadyPublisher(client).running() as publisher:
            time.sleep(0.3)
            bed.hub("primary").broker.hang()
            lost = log.wait_for(events.Disconnected, 5.0)
            bed.hub("primary").broker.resume()
            back = log.wait_for(events.Connected, 5.0, after=lost.at)
            time.sleep(0.3)
        assert_nothing_lost(publisher, collector)
    assert back.session_present  # type: ignore[attr-defined]
    assert back.transport.startswith("wss:")  # type: ignore[attr-defined]
    assert re.search(
        r"Received PUBLISH from wss-resume \(d1,", bed.hub("primary").broker.log_text()
    )

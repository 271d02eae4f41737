"""close() is prompt in every state, leaves no thread behind, and no hub can cause a storm.

Each state is made real on loopback: a nameserver that never answers, an
address whose SYNs vanish (a listener with a full accept queue), a listener
that accepts and never speaks TLS or MQTT, a refused port during a long
backoff, a connected link to mosquitto. Every server here is bounded and
closed by the test that made it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from device_sdk import (
    ClientConfig,
    DeviceClient,
    DnsSettings,
    HubEndpoint,
    LivenessPolicy,
    RetryPolicy,
    TlsSettings,
    events,
)
from device_sdk.testbed import FAST_FAILOVER, CertificateAuthority, HostileHub, Testbed
from tests.integration.support import EventLog, blackholed_port, mute_listener

pytestmark = pytest.mark.integration

CLOSE_BOUND = 0.5  # seconds, in every state
SLOW_LIVENESS = LivenessPolicy(keepalive=30, connect_timeout=20.0)


def _our_threads(client_id: str) -> list[str]:
    return [t.name for t in threading.enumerate() if client_id in t.name and t.is_alive()]


def _close_promptly(client: DeviceClient, client_id: str) -> None:
    started = time.monotonic()
    client.close()
    took = time.monotonic() - started
    assert took < CLOSE_BOUND, f"close() took {took:.2f} s"
    assert not _our_threads(client_id), _our_threads(client_id)


def _waiting_in(client: DeviceClient, log: EventLog, kind: type[events.Event]) -> None:
    client._engine.start()
    log.wait_for(kind, 5.0)
    time.sleep(0.2)  # now inside the wait


def _config(client_id: str, hub: HubEndpoint, **overrides: object) -> ClientConfig:
    base = ClientConfig(
        client_id=client_id,
        hubs=(hub,),
        retry=RetryPolicy(initial=0.01, maximum=0.05),
        failover=FAST_FAILOVER,
        liveness=SLOW_LIVENESS,
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


@contextlib.contextmanager
def _silent_udp() -> Iterator[int]:
    """A nameserver that reads every query and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_close_while_resolving() -> None:
    log = EventLog()
    with _silent_udp() as port:
        hub = HubEndpoint(name="h", fqdn="hub.device-sdk.test", port=1883, tls=None)
        dns = DnsSettings(nameservers=("127.0.0.1",), port=port, timeout=5.0, lifetime=10.0)
        client = DeviceClient(_config("close-resolving", hub, dns=dns), on_event=log)
        _waiting_in(client, log, events.Attempting)
        _close_promptly(client, "close-resolving")


def test_close_while_dialling_a_blackholed_address() -> None:
    log = EventLog()
    with blackholed_port("127.0.0.2") as port:
        hub = HubEndpoint(name="h", fqdn="127.0.0.2", port=port, tls=None)
        client = DeviceClient(_config("close-dialling", hub), on_event=log)
        _waiting_in(client, log, events.Resolved)
        _close_promptly(client, "close-dialling")


def test_close_during_the_tls_handshake(tmp_path: Path) -> None:
    log = EventLog()
    ca_file = CertificateAuthority.create().write_to(tmp_path)
    with mute_listener() as port:
        tls = TlsSettings(ca_file=str(ca_file))
        hub = HubEndpoint(name="h", fqdn="localhost", port=port, tls=tls)
        client = DeviceClient(_config("close-tls", hub), on_event=log)
        _waiting_in(client, log, events.Resolved)
        _close_promptly(client, "close-tls")


def test_close_while_waiting_for_the_connack() -> None:
    log = EventLog()
    with mute_listener() as port:
        hub = HubEndpoint(name="h", fqdn="127.0.0.1", port=port, tls=None)
        client = DeviceClient(_config("close-connack", hub), on_event=log)
        _waiting_in(client, log, events.Resolved)
        _close_promptly(client, "close-connack")


def test_close_during_a_long_backoff() -> None:
    log = EventLog()
    with socket.socket() as unused:  # a port nobody listens on: refused at once
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        hub = HubEndpoint(name="h", fqdn="127.0.0.1", port=port, tls=None)
        retry = RetryPolicy.fixed(30.0)
        client = DeviceClient(_config("close-backoff", hub, retry=retry), on_event=log)
        _waiting_in(client, log, events.AttemptFailed)
        _close_promptly(client, "close-backoff")


def test_close_while_connected(testbed: Testbed) -> None:
    config = testbed.client_config("close-connected", hubs=["primary"])
    client = DeviceClient(config)
    client.connect(5)
    client.publish("test/telemetry", b"1:x").wait(5)
    _close_promptly(client, "close-connected")


@pytest.mark.parametrize("mqtt_version", ["5", "3.1.1"])
def test_a_hub_that_accepts_then_drops_gets_backoff_not_a_storm(mqtt_version: str) -> None:
    """Before: ~1000 connects a second. Now each short link counts as a failure."""
    seconds = 3.0
    retry = RetryPolicy(initial=0.05, maximum=0.4, stable_after=10.0)
    connack = bytes([0x20, 0x03, 0, 0, 0]) if mqtt_version == "5" else bytes([0x20, 0x02, 0, 0])
    # Every connection gets a successful CONNACK, then the hub closes it at once.
    with HostileHub([connack], scripted_connections=10_000, after_script="close") as hub:
        endpoint = HubEndpoint(name="h", fqdn="127.0.0.1", port=hub.port, tls=None)
        config = _config("no-storm", endpoint, retry=retry, mqtt_version=mqtt_version)
        client = DeviceClient(config)
        client._engine.start()
        time.sleep(seconds)
        client.close()
        connects = len(hub.connections())
    # Full jitter with a 0.4 s cap averages 0.2 s a wait once grown: about 15 in 3 s.
    # The bound leaves room for jitter's short draws, and is far below a storm.
    assert 3 <= connects <= 40, f"{connects} connects in {seconds} s"

"""The WebSocket bridge in front of a real mosquitto: MQTT over ws and wss, with raw paho.

Every wait is bounded; every process is stopped by the PID it was started with.
"""

from __future__ import annotations

import os
import queue
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from device_sdk.errors import TestbedError
from device_sdk.testbed.broker import BrokerSpec, MosquittoBroker, find_mosquitto
from device_sdk.testbed.pki import CertificateAuthority
from device_sdk.testbed.ports import bind_socket
from device_sdk.testbed.websocket_bridge import WebSocketBridge, find_websockify

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        find_mosquitto() is None or find_websockify() is None,
        reason="needs mosquitto and websockify (Debian: apt-get install mosquitto websockify)",
    ),
]

FQDN = "hub-a.hubs.device-sdk.test"
TIMEOUT = 5.0


class _FqdnContext(ssl.SSLContext):
    """Verifies ``expected`` whatever host paho dialled, as the SDK dials an IP for an FQDN."""

    expected = FQDN

    def wrap_socket(self, sock, *args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs["server_hostname"] = self.expected
        return super().wrap_socket(sock, *args, **kwargs)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(BrokerSpec(name="wss-hub"), work_dir=tmp_path / "broker") as hub:
        yield hub


@pytest.fixture
def ca() -> CertificateAuthority:
    return CertificateAuthority.create()


def _hub_certificate(ca: CertificateAuthority, folder: Path) -> tuple[Path, Path]:
    files = ca.issue_server_certificate([FQDN]).write_to(folder, stem="wss")
    return files.cert_file, files.key_file


def _client_context(ca: CertificateAuthority, expected: str = FQDN) -> ssl.SSLContext:
    context = _FqdnContext(ssl.PROTOCOL_TLS_CLIENT)
    context.expected = expected
    context.load_verify_locations(cadata=ca.cert_pem.decode())
    return context


@pytest.fixture
def subscriber(broker: MosquittoBroker) -> Iterator[queue.SimpleQueue[bytes]]:
    """A plain TCP subscriber on mosquitto itself, not through the bridge."""
    received: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    subscribed: queue.SimpleQueue[bool] = queue.SimpleQueue()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="tcp-subscriber")
    client.on_message = lambda _c, _u, message: received.put(message.payload)
    client.on_subscribe = lambda *_args: subscribed.put(True)
    client.connect(broker.host, broker.port)
    client.subscribe("devices/+/telemetry", qos=1)
    client.loop_start()
    try:
        subscribed.get(timeout=TIMEOUT)
        yield received
    finally:
        client.disconnect()
        client.loop_stop()


def _websocket_client(client_id: str, context: ssl.SSLContext | None = None) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, transport="websockets")
    client.ws_set_options(path="/mqtt")
    if context is not None:
        client.tls_set_context(context)
    return client


def _publish_through(client: paho.Client, bridge: WebSocketBridge, payload: bytes) -> None:
    client.connect(bridge.host, bridge.port)
    client.loop_start()
    try:
        info = client.publish("devices/d1/telemetry", payload, qos=1)
        info.wait_for_publish(timeout=TIMEOUT)
        assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def test_a_publish_over_wss_reaches_a_tcp_subscriber(
    broker: MosquittoBroker,
    ca: CertificateAuthority,
    subscriber: queue.SimpleQueue[bytes],
    tmp_path: Path,
) -> None:
    tls = _hub_certificate(ca, tmp_path)
    with WebSocketBridge(broker.host, broker.port, tls=tls, work_dir=tmp_path) as bridge:
        assert bridge.tls and bridge.port != broker.port
        _publish_through(_websocket_client("wss-device", _client_context(ca)), bridge, b"over wss")
        assert subscriber.get(timeout=TIMEOUT) == b"over wss"
        # The bridge really ended TLS and WebSocket: its log names the MQTT path.
        assert "Path: '/mqtt'" in bridge.log_file.read_text()


def test_the_bridge_certificate_names_the_hub_fqdn_only(
    broker: MosquittoBroker, ca: CertificateAuthority, tmp_path: Path
) -> None:
    tls = _hub_certificate(ca, tmp_path)
    context = ca.client_ssl_context()
    with WebSocketBridge(broker.host, broker.port, tls=tls, work_dir=tmp_path) as bridge:
        for name, accepted in ((FQDN, True), ("other.device-sdk.test", False)):
            with socket.create_connection((bridge.host, bridge.port), timeout=TIMEOUT) as raw:
                try:
                    context.wrap_socket(raw, server_hostname=name).close()
                except ssl.SSLCertVerificationError:
                    assert not accepted, name
                else:
                    assert accepted, name


def test_a_publish_over_plain_ws_reaches_a_tcp_subscriber(
    broker: MosquittoBroker, subscriber: queue.SimpleQueue[bytes]
) -> None:
    with WebSocketBridge(broker.host, broker.port) as bridge:
        assert not bridge.tls
        _publish_through(_websocket_client("ws-device"), bridge, b"over ws")
        assert subscriber.get(timeout=TIMEOUT) == b"over ws"


def _live_group(group: int) -> set[int]:
    members = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            same_group = os.getpgid(int(entry)) == group
            with open(f"/proc/{entry}/status") as status:
                zombie = "State:\tZ" in status.read()
        except OSError:
            continue
        if same_group and not zombie:
            members.add(int(entry))
    return members


def test_stop_ends_websockify_and_its_connection_handlers(broker: MosquittoBroker) -> None:
    bridge = WebSocketBridge(broker.host, broker.port)
    client = _websocket_client("held")
    try:
        bridge.start()
        pid = bridge.pid
        assert pid is not None
        client.connect(bridge.host, bridge.port)  # a handler process now serves this connection
        assert len(_live_group(pid)) >= 2
        bridge.stop()
        assert bridge.pid is None
        assert _live_group(pid) == set()
        bridge.stop()  # idempotent
    finally:
        bridge.stop()
        held = client.socket()
        if held is not None:
            held.close()


def test_a_bridge_that_cannot_listen_says_why(broker: MosquittoBroker) -> None:
    # Bound without SO_REUSEADDR and not listening: websockify cannot bind it,
    # and no probe connection succeeds, so only websockify's own exit can tell.
    with bind_socket("127.0.0.1", 0, socket.SOCK_STREAM) as taken:
        bridge = WebSocketBridge(broker.host, broker.port, listen_port=taken.getsockname()[1])
        with pytest.raises(TestbedError, match="websockify exited"):
            bridge.start()
    assert bridge.pid is None

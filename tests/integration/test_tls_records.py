"""A hub that puts several MQTT packets in one TLS record must not stall the link.

OpenSSL decrypts a whole record at once; when paho has read the first packet of
it, the rest waits in OpenSSL's buffer, where select() cannot see it. mosquitto
writes one record per packet, so only a hub that batches its writes (as
asyncio-based and cloud brokers do) shows it: the SUBACK is read, the PUBACK
behind it sits unseen until the ack deadline drops a healthy link.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from device_sdk import ClientConfig, DeviceClient, HubEndpoint, LivenessPolicy, TlsSettings
from device_sdk.testbed import CertificateAuthority

pytestmark = pytest.mark.integration

CONNACK = bytes([0x20, 0x02, 0x00, 0x00])


def read_packet(conn: ssl.SSLSocket) -> tuple[int, bytes]:
    def exactly(count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = conn.recv(count - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    header = exactly(1)[0]
    length, shift = 0, 0
    for _ in range(4):
        byte = exactly(1)[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return header >> 4, exactly(length)


class BatchingHub(threading.Thread):
    """Answers CONNECT, then the SUBSCRIBE and the PUBLISH with SUBACK + PUBACK in one write."""

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(daemon=True)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(10.0)
        self.port = self.server.getsockname()[1]
        self.context = context
        self.batched = threading.Event()

    def run(self) -> None:
        with (
            self.server,
            self.context.wrap_socket(self.server.accept()[0], server_side=True) as conn,
        ):
            conn.settimeout(10.0)
            read_packet(conn)  # CONNECT
            conn.sendall(CONNACK)
            suback = puback = b""
            for _ in range(4):  # bounded: the SUBSCRIBE and the PUBLISH, in either order
                kind, body = read_packet(conn)
                if kind == 8:  # SUBSCRIBE: packet id, then the filters
                    suback = bytes([0x90, 0x03]) + body[:2] + b"\x01"
                elif kind == 3:  # PUBLISH QoS 1: topic, then the packet id
                    topic_length = int.from_bytes(body[:2], "big")
                    puback = bytes([0x40, 0x02]) + body[2 + topic_length : 4 + topic_length]
                if suback and puback:
                    break
            conn.sendall(suback + puback)  # one write: one TLS record holding both
            self.batched.set()
            time.sleep(3.0)  # hold the link; the device must not need its ack deadline


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[BatchingHub, str]]:
    ca = CertificateAuthority.create()
    files = ca.issue_server_certificate([], ["127.0.0.1"]).write_to(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.cert_file, files.key_file)
    server = BatchingHub(context)
    server.start()
    yield server, str(ca.write_to(tmp_path))
    server.join(10.0)


def test_packets_sharing_a_tls_record_are_all_read(hub: tuple[BatchingHub, str]) -> None:
    server, ca_file = hub
    config = ClientConfig(
        client_id="batched",
        hubs=(
            HubEndpoint(
                name="h", fqdn="127.0.0.1", port=server.port, tls=TlsSettings(ca_file=ca_file)
            ),
        ),
        mqtt_version="3.1.1",
        liveness=LivenessPolicy(keepalive=30.0, initial_deadline=2.5, deadline_floor=2.5),
    )
    with DeviceClient(config) as client:
        client.subscribe("commands/#", lambda _topic, _payload: None)
        client.connect(timeout=5.0)
        handle = client.publish("telemetry", b"1")
        assert server.batched.wait(5.0)
        started = time.monotonic()
        handle.wait(2.0)  # within the ack deadline: no reconnect needed
        took = time.monotonic() - started
        metrics = client.metrics()
    assert took < 1.0, f"the PUBACK waited {took:.2f} s in OpenSSL's buffer"
    assert (metrics.connects, metrics.disconnects) == (1, 0)

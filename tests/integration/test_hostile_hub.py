"""A hostile hub cannot hurt the device.

Every rule the link enforces on what a hub sends, played by the testbed's
HostileHub on loopback against a real PahoLink (typed outcomes: a protocol
error reported to the listener, or a HandshakeProtocolError from open()), and
end to end against a real DeviceClient (the engine thread lives on, memory
stays bounded, and a later message is acknowledged by a real mosquitto behind
the same hub address). Also what the link reads from a CONNACK, the exact size
of what it publishes, TLS files that vanished, and cancelling every wait of open().
"""

from __future__ import annotations

import dataclasses
import os
import socket
import struct
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device_sdk import DeviceClient, HubEndpoint, RetryPolicy, TlsSettings
from device_sdk.adapters.cancel import Cancelled, CancelToken
from device_sdk.adapters.paho_link import LinkSettings, PahoLink, Received
from device_sdk.core.outcomes import FailureKind
from device_sdk.errors import (
    ConnectError,
    DialError,
    HandshakeProtocolError,
    PermanentRefusal,
    TlsError,
)
from device_sdk.testbed import CertificateAuthority
from device_sdk.testbed.hostile_hub import Flood, HostileHub, Send, Step, encode_packet
from device_sdk.testbed.pytest_plugin import TestbedFactory
from tests.integration.support import TOPIC, blackholed_port, mute_listener

pytestmark = pytest.mark.integration

V5, V311 = "5", "3.1.1"
CONNACK = {V5: encode_packet(0x20, b"\x00\x00\x00"), V311: encode_packet(0x20, b"\x00\x00")}
HUGE_PUBLISH = b"\x30\xff\xff\xff\x7f"  # PUBLISH announcing 268 435 455 bytes
MiB = 1 << 20


class Recorder:
    """A LinkListener that records what the link reports."""

    def __init__(self) -> None:
        self.reports: list[tuple[Any, ...]] = []

    def on_ack(self, mid: int) -> None:
        self.reports.append(("ack", mid))

    def on_refused(self, mid: int, reason_code: int, reason: str) -> None:
        self.reports.append(("refused", mid, reason_code))

    def on_message(self, received: Received) -> None:
        self.reports.append(("message", received.message.topic, received.message.payload))

    def on_pingresp(self) -> None:
        self.reports.append(("pingresp",))

    def on_protocol_error(self, reason: str) -> None:
        self.reports.append(("protocol_error", reason))

    def on_link_closed(self, reason: str, kind: FailureKind, server_reference: str | None) -> None:
        self.reports.append(("closed", reason))


def _settings(version: str, **overrides: Any) -> LinkSettings:
    base = LinkSettings(
        client_id="hostile-test",
        mqtt_version=version,  # type: ignore[arg-type]
        keepalive=30,
        connect_timeout=2.0,
        inflight_window=10,
    )
    return dataclasses.replace(base, **overrides)


def _open(hub: HostileHub, version: str, **settings: Any) -> PahoLink:
    link = PahoLink(hub.endpoint(), hub.host, _settings(version, **settings))
    link.open(time.monotonic() + 2.0)
    return link


def _serve(link: PahoLink, listener: Recorder, *, until: int = 1, timeout: float = 2.0) -> None:
    """Serve the link until ``until`` reports arrived (or the timeout)."""
    link.start_reporting(listener)
    deadline = time.monotonic() + timeout
    while len(listener.reports) < until and time.monotonic() < deadline:
        link.service(readable=True, writable=link.want_write())
        time.sleep(0.005)


def _protocol_error_after_connack(version: str, steps: list[Step], **settings: Any) -> str:
    """The reason of the one protocol error the link reports for ``steps`` after CONNACK."""
    with HostileHub([CONNACK[version], *steps]) as hub:
        link = _open(hub, version, **settings)
        listener = Recorder()
        _serve(link, listener)
        assert link.fileno() == -1, "the link must be aborted first"
    [(kind, reason)] = listener.reports
    assert kind == "protocol_error"
    return str(reason)


def _handshake_error(version: str, steps: list[Step]) -> HandshakeProtocolError:
    with HostileHub(steps) as hub:
        link = PahoLink(hub.endpoint(), hub.host, _settings(version))
        with pytest.raises(HandshakeProtocolError) as caught:
            link.open(time.monotonic() + 2.0)
    return caught.value


# -- 1. inbound packets are bounded before allocation --------------------------------------


@pytest.mark.parametrize("version", [V5, V311])
def test_a_268_mb_packet_is_refused_from_its_header_and_costs_nothing(version: str) -> None:
    tracemalloc.start()
    try:
        reason = _protocol_error_after_connack(version, [Flood(HUGE_PUBLISH, filler=4 * MiB)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "PUBLISH of 268435460 bytes, over the 262144-byte max_packet_size" in reason
    assert peak < MiB, f"{peak} bytes traced"


def test_the_limit_is_the_whole_packet_to_the_byte() -> None:
    def publish_of(size: int) -> bytes:  # 1 + 1 + body: a one-byte remaining length
        return encode_packet(0x30, b"\x00\x01t" + bytes(size - 5))

    with HostileHub([CONNACK[V311], publish_of(128)]) as hub:
        link = _open(hub, V311, max_packet_size=128)
        listener = Recorder()
        _serve(link, listener)
    assert listener.reports == [("message", "t", bytes(123))]
    reason = _protocol_error_after_connack(V311, [publish_of(129)], max_packet_size=128)
    assert "PUBLISH of 129 bytes, over the 128-byte max_packet_size" in reason


@pytest.mark.parametrize("version", [V5, V311])
def test_a_fifth_remaining_length_byte_is_a_protocol_error(version: str) -> None:
    reason = _protocol_error_after_connack(version, [b"\x30\xff\xff\xff\xff\x01"])
    assert reason == "a remaining length longer than four bytes"


def test_an_oversized_connack_fails_the_handshake() -> None:
    error = _handshake_error(V5, [Flood(b"\x20\xff\xff\x7f", filler=MiB)])
    assert "CONNACK of 2097155 bytes" in str(error)
    assert isinstance(error, ConnectError)


# -- 2. MQTT 5 announces the limit in CONNECT -----------------------------------------------


def _connect_properties(connect: bytes) -> Properties:
    body = connect[2:] if connect[1] < 0x80 else connect[3:]  # short CONNECTs here
    assert body[:6] == b"\x00\x04MQTT" and body[6] == 5
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.unpack(body[10:])  # type: ignore[no-untyped-call]
    return properties


def test_mqtt5_connect_announces_the_maximum_packet_size() -> None:
    with HostileHub([CONNACK[V5]]) as hub:
        link = _open(hub, V5, max_packet_size=4096)
        link.abort()
        [connect] = hub.connections()[0].packets()[:1]
    assert getattr(_connect_properties(connect), "MaximumPacketSize", None) == 4096


# -- 3. a topic that is not a topic ----------------------------------------------------------


@pytest.mark.parametrize("version", [V5, V311])
@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        (b"\xff\xfe", "a topic that is not valid UTF-8"),
        (b"\xed\xa0\x80", "a topic that is not valid UTF-8"),  # an encoded surrogate
        (b"a\x00b", "a topic holding U+0000"),
        (b"a/+/b", "a topic holding a wildcard"),
        (b"a/#", "a topic holding a wildcard"),
        (b"", "an empty topic"),
    ],
)
def test_a_publish_with_a_bad_topic_drops_the_link(version: str, topic: bytes, reason: str) -> None:
    body = len(topic).to_bytes(2, "big") + topic + (b"\x00" if version == V5 else b"") + b"x"
    assert reason in _protocol_error_after_connack(version, [encode_packet(0x30, body)])


def test_a_topic_that_is_odd_but_legal_is_delivered() -> None:
    topic = "\ufeffsensors/ü/\x01"  # a BOM, a non-ASCII letter, a control character
    raw = topic.encode("utf-8")
    publish = encode_packet(0x30, len(raw).to_bytes(2, "big") + raw + b"\x00payload")
    with HostileHub([CONNACK[V5], publish]) as hub:
        link = _open(hub, V5)
        listener = Recorder()
        _serve(link, listener)
    assert listener.reports == [("message", topic, b"payload")]


# -- 4. forbidden server packets -------------------------------------------------------------

PUBLISH_T = b"\x00\x01t"

AFTER_CONNACK: list[tuple[str, bytes, str]] = [
    (V5, CONNACK[V5], "a second CONNACK"),
    (V311, CONNACK[V311], "a second CONNACK"),
    (V5, encode_packet(0x40, b"\x00\x00"), "PUBACK with packet identifier 0"),
    (V311, encode_packet(0x40, b"\x00\x00"), "PUBACK with packet identifier 0"),
    (V5, encode_packet(0x40, b"\x00\x00\x87\x00"), "PUBACK with packet identifier 0"),
    (V311, encode_packet(0x40, b"\x00\x07\x00"), "PUBACK of 3 bytes (MQTT 3.1.1: exactly 2)"),
    (V311, encode_packet(0x40, b"\x00"), "PUBACK too short"),
    (V5, encode_packet(0x40, b"\x00\x07\x00\x00\xff"), "properties do not fill the packet"),
    (V5, encode_packet(0x40, b"\x00\x07\x00\x05\x1f\x00"), "properties do not fill the packet"),
    (V5, encode_packet(0x40, b"\x00\x07\xfe"), "malformed PUBACK"),  # no such reason code
    (V5, encode_packet(0x41, b"\x00\x07"), "PUBACK with reserved flags 0x1"),
    (V5, encode_packet(0x60, b"\x00\x07"), "PUBREL with reserved flags 0x0"),
    (V311, encode_packet(0x91, b"\x00\x07\x00"), "SUBACK with reserved flags 0x1"),
    (V311, encode_packet(0xD1), "PINGRESP with reserved flags 0x1"),
    (V311, encode_packet(0xD0, b"\x00"), "PINGRESP with a body of 1 bytes"),
    (V311, encode_packet(0x36, PUBLISH_T + b"\x00\x01"), "PUBLISH with QoS 3"),
    (V5, encode_packet(0x38, PUBLISH_T + b"\x00"), "PUBLISH with DUP at QoS 0"),
    (V311, encode_packet(0x32, PUBLISH_T + b"\x00\x00x"), "QoS 1 with packet identifier 0"),
    (V5, encode_packet(0x34, PUBLISH_T + b"\x00\x00\x00"), "QoS 2 with packet identifier 0"),
    (V311, encode_packet(0x32, PUBLISH_T + b"\x00"), "PUBLISH at QoS 1 too short"),
    (V5, encode_packet(0x30, b"\x00\x09t"), "PUBLISH whose topic runs past the packet"),
    (V5, encode_packet(0x30, PUBLISH_T + b"\x05\x01"), "PUBLISH whose properties run past"),
    (V5, encode_packet(0x30, PUBLISH_T + b"\x02\x7f\x00"), "malformed PUBLISH"),  # unknown id
    (V5, encode_packet(0x30, PUBLISH_T + b"\x03\x23\x00\x01x"), "Topic Alias"),
    (V5, encode_packet(0x10, b"\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x01x"), "CONNECT, which"),
    (V311, encode_packet(0x82, b"\x00\x01\x00\x01t\x00"), "SUBSCRIBE, which a server never sends"),
    (V5, encode_packet(0xA2, b"\x00\x01\x00\x00\x01t"), "UNSUBSCRIBE, which a server never sends"),
    (V311, encode_packet(0xC0), "PINGREQ, which a server never sends"),
    (V311, encode_packet(0xE0), "DISCONNECT, which a server never sends in MQTT 3.1.1"),
    (V5, encode_packet(0xF0, b"\x00\x00"), "AUTH, though this client asked for no enhanced"),
    (V311, encode_packet(0xF0), "AUTH, which a server never sends"),
    (V311, encode_packet(0x00), "reserved type 0, which a server never sends"),
    (V311, encode_packet(0x90, b"\x00\x00\x00"), "SUBACK with packet identifier 0"),
    (V311, encode_packet(0x90, b"\x00\x01\x03"), "SUBACK with a reserved return code"),
    (V311, encode_packet(0x90, b"\x00\x01"), "SUBACK without a reason code"),
    (V5, encode_packet(0x90, b"\x00\x01\x00"), "SUBACK without a reason code"),
    (V311, encode_packet(0xB0, b"\x00\x01\x00"), "UNSUBACK of 3 bytes"),
    (V5, encode_packet(0xB0, b"\x00\x00\x00\x00"), "UNSUBACK with packet identifier 0"),
    (V5, encode_packet(0x50, b"\x00\x00"), "PUBREC with packet identifier 0"),
    (V5, encode_packet(0x70, b"\x00\x01\x00\x09"), "PUBCOMP whose properties do not fill"),
    (V5, encode_packet(0xE0, b"\x00\x05\x1f"), "DISCONNECT whose properties do not fill"),
    (V5, encode_packet(0xE0, b"\x00\x02\x7f\x00"), "malformed DISCONNECT"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("version", "packet", "reason"),
    AFTER_CONNACK,
    ids=[f"{v}-{reason[:40]}" for v, _p, reason in AFTER_CONNACK],
)
def test_a_forbidden_packet_on_an_established_link_drops_it(
    version: str, packet: bytes, reason: str
) -> None:
    assert reason in _protocol_error_after_connack(version, [packet])


IN_HANDSHAKE: list[tuple[str, bytes, str]] = [
    (V5, encode_packet(0x30, PUBLISH_T + b"\x00x"), "PUBLISH before the CONNACK"),
    (V311, encode_packet(0x32, PUBLISH_T + b"\x00\x01x"), "PUBLISH before the CONNACK"),
    (V311, encode_packet(0xD0), "PINGRESP before the CONNACK"),
    (V5, encode_packet(0x40, b"\x00\x01"), "PUBACK before the CONNACK"),
    (V5, encode_packet(0xE0, b"\x00\x00"), "DISCONNECT before the CONNACK"),
    (V5, encode_packet(0x21, b"\x00\x00\x00"), "CONNACK with reserved flags 0x1"),
    (V311, encode_packet(0x20, b"\x02\x00"), "CONNACK with reserved acknowledge flags 0x02"),
    (V5, encode_packet(0x20, b"\x80\x00\x00"), "CONNACK with reserved acknowledge flags 0x80"),
    (V311, encode_packet(0x20, b"\x01\x05"), "CONNACK refusing (0x05) with Session Present"),
    (V5, encode_packet(0x20, b"\x01\x87\x00"), "CONNACK refusing (0x87) with Session Present"),
    (V311, encode_packet(0x20, b"\x00\x06"), "CONNACK with reserved return code 6"),
    (V311, encode_packet(0x20, b"\x00\x00\x00"), "CONNACK of 3 bytes"),
    (V311, encode_packet(0x20, b"\x00"), "CONNACK too short"),
    (V5, encode_packet(0x20, b"\x00\x00"), "CONNACK whose properties do not fill the packet"),
    (V5, encode_packet(0x20, b"\x00\x00\x00\xff"), "CONNACK whose properties do not fill"),
    (V5, encode_packet(0x20, b"\x00\x00\x02\x24\x02"), "CONNACK with MaximumQoS = 2"),
    (V5, encode_packet(0x20, b"\x00\x00\x02\x25\x07"), "CONNACK with RetainAvailable = 7"),
    (V5, encode_packet(0x20, b"\x00\x00\x03\x21\x00\x00"), "malformed CONNACK"),  # Receive Max 0
    (V5, encode_packet(0x20, b"\x00\x00\x05\x27\x00\x00\x00\x00"), "malformed CONNACK"),  # Max 0
    (V5, encode_packet(0x20, b"\x00\x00\x04\x21\x00\x01\x21"), "malformed CONNACK"),  # cut short
    (V5, encode_packet(0x20, b"\x00\x00\x06\x21\x00\x01\x21\x00\x02"), "malformed"),  # 2x
    (V5, encode_packet(0x20, b"\x00\x05\x00"), "malformed CONNACK"),  # no such CONNACK code
    (V5, b"\x20\xff\xff\xff\xff\x01", "a remaining length longer than four bytes"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("version", "packet", "reason"),
    IN_HANDSHAKE,
    ids=[f"{v}-{reason[:40]}" for v, _p, reason in IN_HANDSHAKE],
)
def test_a_forbidden_packet_before_or_in_the_connack_fails_the_handshake(
    version: str, packet: bytes, reason: str
) -> None:
    error = _handshake_error(version, [packet])
    assert reason in str(error)
    assert error.hub == "hostile"


def test_a_publish_before_the_connack_is_never_acknowledged() -> None:
    early = encode_packet(0x32, PUBLISH_T + b"\x00\x01x")
    with HostileHub([early, Send(CONNACK[V311], delay=0.05)], after_script="hold") as hub:
        link = PahoLink(hub.endpoint(), hub.host, _settings(V311))
        with pytest.raises(HandshakeProtocolError):
            link.open(time.monotonic() + 2.0)
        time.sleep(0.05)
        packets = hub.connections()[0].packets()
    assert [packet[0] for packet in packets] == [0x10]  # the CONNECT, and no PUBACK


def test_a_server_that_speaks_only_mqtt_3_refusing_v5_is_a_refusal_not_a_violation() -> None:
    with HostileHub([encode_packet(0x20, b"\x00\x01")]) as hub:
        link = PahoLink(hub.endpoint(), hub.host, _settings(V5))
        with pytest.raises(PermanentRefusal, match="Unsupported protocol version"):
            link.open(time.monotonic() + 2.0)


def test_well_formed_packets_with_properties_pass() -> None:
    content_type = b"\x03\x00\x04text"
    steps: list[Step] = [
        CONNACK[V5],
        encode_packet(0x30, PUBLISH_T + bytes([len(content_type)]) + content_type + b"p"),
        encode_packet(0xD0),
        encode_packet(0xE0, b"\x00\x00"),
    ]
    with HostileHub(steps) as hub:
        link = _open(hub, V5)
        listener = Recorder()
        _serve(link, listener, until=3)
    assert [report[0] for report in listener.reports] == ["message", "pingresp", "closed"]


# -- 5. decoding failures are the hub's; the listener's exceptions are ours ------------------


class FaultyListener(Recorder):
    def __init__(self, fault: Exception) -> None:
        super().__init__()
        self.fault = fault

    def on_ack(self, mid: int) -> None:
        raise self.fault

    def on_message(self, received: Received) -> None:
        raise self.fault


@pytest.mark.parametrize("fault", [UnicodeDecodeError("utf-8", b"", 0, 1, "x"), ValueError("x")])
@pytest.mark.parametrize("version", [V5, V311])
def test_a_listener_exception_passes_through_service_unchanged(
    version: str, fault: Exception
) -> None:
    # The same types paho's decoders raise: the link must still tell them apart.
    publish = encode_packet(0x30, PUBLISH_T + (b"\x00" if version == V5 else b"") + b"x")
    with HostileHub([CONNACK[version], publish]) as hub:
        link = _open(hub, version)
        listener = FaultyListener(fault)
        link.start_reporting(listener)
        with pytest.raises(type(fault)) as caught:
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                link.service(readable=True, writable=False)
                time.sleep(0.005)
    assert caught.value is fault
    assert listener.reports == []


def test_a_listener_exception_on_the_puback_fast_path_passes_through() -> None:
    fault = RuntimeError("engine bug")

    def answer(packet: bytes) -> list[Step]:
        if packet[0] == 0x10:
            return [CONNACK[V5]]
        if packet[0] & 0xF0 == 0x30:
            return [encode_packet(0x40, packet[5:7])]  # after the topic "t": the packet id
        return []

    with HostileHub(answer) as hub:
        link = _open(hub, V5)
        link.start_reporting(FaultyListener(fault))
        link.publish("t", b"x", 1, "id-1")
        with pytest.raises(RuntimeError) as caught:
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                link.service(readable=True, writable=link.want_write())
                time.sleep(0.005)
    assert caught.value is fault


# -- 6. what the hub announced in its CONNACK ------------------------------------------------


def test_connack_announcements_are_exposed() -> None:
    properties = (
        b"\x27\x00\x00\x03\xe8"  # Maximum Packet Size 1000
        b"\x24\x00"  # Maximum QoS 0
        b"\x25\x00"  # Retain Available 0
        b"\x21\x00\x05"  # Receive Maximum 5
    )
    connack = encode_packet(0x20, b"\x00\x00" + bytes([len(properties)]) + properties)
    with HostileHub([connack]) as hub:
        link = _open(hub, V5)
    assert link.maximum_packet_size == 1000
    assert link.maximum_qos == 0
    assert link.retain_available is False
    assert link.receive_maximum == 5


@pytest.mark.parametrize("version", [V5, V311])
def test_connack_defaults_when_nothing_is_announced(version: str) -> None:
    with HostileHub([CONNACK[version]]) as hub:
        link = _open(hub, version)
    assert link.maximum_packet_size is None
    assert link.maximum_qos == 2
    assert link.retain_available is True
    assert link.receive_maximum == 65535


# -- publish_size is what publish() writes ---------------------------------------------------


@pytest.mark.parametrize(
    ("version", "envelope"), [(V5, False), (V311, False), (V311, True), (V5, True)]
)
def test_publish_size_is_the_exact_size_of_the_publish_written(
    version: str, envelope: bool
) -> None:
    cases = [
        ("t", b"", 0, "id"),
        ("sensors/temperature", b"21.5", 1, "01ABCDEFGHJKMNPQRSTVWXYZ12"),
        ("é/ü", bytes(100), 1, "é" * 40),  # a two-byte remaining length
        ("big", bytes(20_000), 1, "01ABCDEFGHJKMNPQRSTVWXYZ12"),  # a three-byte one
        ("odd", bytes(7), 0, 'quote"and\\slash'),  # JSON escapes in the envelope
    ]
    settings = {"envelope": envelope, "message_id_property": "msg-id"}
    with HostileHub([CONNACK[version]]) as hub:
        link = _open(hub, version, **settings)
        expected = [link.publish_size(*case) for case in cases]
        for case in cases:
            link.publish(*case)
        deadline = time.monotonic() + 2.0
        while len(hub.connections()[0].packets()) < 1 + len(cases):
            assert time.monotonic() < deadline, "the hub did not receive every PUBLISH"
            link.service(readable=False, writable=link.want_write())
            time.sleep(0.005)
        written = [len(packet) for packet in hub.connections()[0].packets()[1:]]
    assert written == expected


# -- 7. TLS files that are gone at dial time -------------------------------------------------


@pytest.mark.parametrize("missing", ["ca_file", "client_cert_file"])
def test_tls_files_gone_at_dial_time_are_a_tls_error(tmp_path: Path, missing: str) -> None:
    ca = CertificateAuthority.create()
    ca_file = ca.write_to(tmp_path)
    files = ca.issue_server_certificate(["hub.example"]).write_to(tmp_path, stem="client")
    tls = TlsSettings(
        ca_file=str(ca_file),
        client_cert_file=str(files.cert_file),
        client_key_file=str(files.key_file),
    )
    os.remove({"ca_file": ca_file, "client_cert_file": files.cert_file}[missing])
    hub = HubEndpoint(name="rotating", fqdn="hub.example", port=8883, tls=tls)
    link = PahoLink(hub, "127.0.0.1", _settings(V5))  # building the link reads no file
    with pytest.raises(TlsError, match="TLS files for rotating could not be loaded") as caught:
        link.open(time.monotonic() + 1.0)
    assert isinstance(caught.value.__cause__, FileNotFoundError)


# -- 8. cancelling open() --------------------------------------------------------------------


def _cancelled_after(link: PahoLink, delay: float, reopen: bool = False) -> float:
    """Seconds from cancel() to open() raising Cancelled (the deadline is 10 s away)."""
    token = CancelToken()
    cancelled_at: list[float] = []

    def cancel_later() -> None:
        time.sleep(delay)
        cancelled_at.append(time.monotonic())
        token.cancel()

    canceller = threading.Thread(target=cancel_later)
    canceller.start()
    try:
        with pytest.raises(Cancelled):
            if reopen:
                link.reopen(link.address, time.monotonic() + 10.0, cancel=token)
            else:
                link.open(time.monotonic() + 10.0, cancel=token)
        return time.monotonic() - cancelled_at[0]
    finally:
        canceller.join()
        token.close()


def test_cancel_cuts_a_tcp_connect_short() -> None:
    with blackholed_port("127.0.0.1") as port:
        hub = HubEndpoint(name="h", fqdn="127.0.0.1", port=port, tls=None)
        link = PahoLink(hub, "127.0.0.1", _settings(V5))
        assert _cancelled_after(link, 0.2) < 0.15


def test_cancel_cuts_a_tls_handshake_short(tmp_path: Path) -> None:
    ca_file = CertificateAuthority.create().write_to(tmp_path)
    with mute_listener() as port:
        tls = TlsSettings(ca_file=str(ca_file))
        hub = HubEndpoint(name="h", fqdn="localhost", port=port, tls=tls)
        link = PahoLink(hub, "127.0.0.1", _settings(V5))
        assert _cancelled_after(link, 0.2) < 0.15
        started = time.monotonic()
        with pytest.raises(DialError, match="TLS handshake timed out"):
            link.open(time.monotonic() + 0.2)  # and the deadline is honoured
        assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("reopen", [False, True])
def test_cancel_cuts_the_connack_wait_short(reopen: bool) -> None:
    with HostileHub([], scripted_connections=2) as hub:
        link = PahoLink(hub.endpoint(), hub.host, _settings(V5))
        if reopen:
            with pytest.raises(ConnectError):
                link.open(time.monotonic() + 0.1)
        assert _cancelled_after(link, 0.2, reopen=reopen) < 0.15


def test_an_already_cancelled_token_stops_open_before_dialling() -> None:
    token = CancelToken()
    token.cancel()
    with HostileHub([CONNACK[V5]]) as hub:
        link = PahoLink(hub.endpoint(), hub.host, _settings(V5))
        with pytest.raises(Cancelled):
            link.open(time.monotonic() + 2.0, cancel=token)
        time.sleep(0.05)
        assert hub.connections() == []
    token.close()


# -- 9. end to end: a real DeviceClient ------------------------------------------------------


def _engine_alive(client_id: str) -> bool:
    names = [t.name for t in threading.enumerate() if t.is_alive()]
    return f"device-sdk-engine-{client_id}" in names


@pytest.mark.parametrize(
    ("case", "steps"),
    [
        ("huge", [CONNACK[V5], Flood(HUGE_PUBLISH, filler=8 * MiB)]),
        ("not-utf8", [CONNACK[V5], encode_packet(0x30, b"\x00\x02\xc3\x28\x00x")]),
        ("publish-first", [encode_packet(0x32, PUBLISH_T + b"\x00\x01\x00x")]),
        ("second-connack", [CONNACK[V5], Send(CONNACK[V5], delay=0.05)]),
    ],
)
def test_a_device_outlives_a_hostile_hub_and_delivers_through_the_next_link(
    testbed_factory: TestbedFactory, case: str, steps: list[Step]
) -> None:
    bed = testbed_factory(hubs=("primary",))
    broker = bed.hub("primary").broker
    client_id = f"hostile-{case}"
    collector = bed.collector("primary", TOPIC)
    with HostileHub(steps, upstream=(broker.host, broker.port)) as hub:
        config = dataclasses.replace(
            bed.client_config(client_id),
            hubs=(hub.endpoint(),),
            retry=RetryPolicy(initial=0.01, maximum=0.05),
        )
        tracemalloc.start()
        try:
            with DeviceClient(config) as client:
                client.publish(TOPIC, b"0:x").wait(5)
                peak = tracemalloc.get_traced_memory()[1]
                assert _engine_alive(client_id)
                assert client.healthy
        finally:
            tracemalloc.stop()
        connections = hub.connections()
    assert connections[0].relayed is False and connections[-1].relayed is True
    assert peak < 8 * MiB, f"{peak} bytes traced"
    assert collector.wait_for({0}, timeout=5.0)


def test_the_hostile_hub_only_listens_on_loopback() -> None:
    from device_sdk.errors import TestbedError

    with pytest.raises(TestbedError, match="loopback only"):
        HostileHub([], host="192.0.2.1")


def test_a_hub_that_resets_as_it_accepts_is_a_dial_error_not_an_engine_fault() -> None:
    # Found by the soak: paho closes the socket when writing CONNECT fails, and the wait
    # for CONNACK then had no socket to wait on (a ValueError on the engine thread).
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port), timeout=2)
        accepted, _ = server.accept()
        accepted.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        accepted.close()  # RST
        time.sleep(0.1)  # the reset has reached the client's socket
        hub = HubEndpoint(name="resetting", fqdn="127.0.0.1", port=port, tls=None)
        link = PahoLink(hub, "127.0.0.1", _settings(V5))
        client.setblocking(False)
        with pytest.raises(DialError, match="closed the connection"):
            link.open(time.monotonic() + 2.0, connected=client)

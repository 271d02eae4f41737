"""Fails when paho-mqtt changes a private hook device_sdk overrides.

device_sdk dials the address it resolved itself while paho's TLS code verifies
the FQDN; that rests on the private names in PAHO_PRIVATE_HOOKS. If a paho
release renames or reshapes one, these tests fail before any device does.
"""

from __future__ import annotations

import inspect

import paho.mqtt.client as paho
import pytest

from device_sdk.adapters.paho_link import PAHO_PRIVATE_HOOKS, _DialingClient


def test_paho_major_version_is_2() -> None:
    import paho.mqtt

    assert paho.mqtt.__version__.split(".")[0] == "2"


EXPECTED_PARAMETERS = {
    "_ssl_wrap_socket": ["self", "tcp_sock"],
    "_sock_recv": ["self", "bufsize"],
    "_send_publish": [
        "self", "mid", "topic", "payload", "qos", "retain", "dup", "info", "properties"
    ],
    "_handle_pubackcomp": ["self", "cmd"],
    "_do_on_publish": ["self", "mid", "reason_code", "properties"],
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(PAHO_PRIVATE_HOOKS))
def test_private_hook_exists_with_the_expected_parameters(name: str) -> None:
    hook = getattr(paho.Client, name)
    parameters = list(inspect.signature(hook).parameters)
    assert parameters == EXPECTED_PARAMETERS.get(name, ["self"])


def test_publish_properties_are_only_packed() -> None:
    # _PackedProperties implements nothing but pack(): paho must use nothing else.
    source = inspect.getsource(paho.Client._send_publish)
    assert "properties.pack()" in source
    assert source.count("properties.") == source.count("properties.pack()")


@pytest.mark.parametrize("message_id", ["01ABCDEFGHJKMNPQRSTVWXYZ12", "x" * 300, "é"])
def test_packed_message_id_property_matches_paho_encoding(message_id: str) -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from device_sdk.adapters.paho_link import _PackedProperties, _utf8_pair_prefix

    theirs = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    theirs.UserProperty = ("message-id", message_id)
    ours = _PackedProperties(_utf8_pair_prefix("message-id"), message_id)
    assert ours.pack() == theirs.pack()


def test_socket_creation_goes_through_the_overridden_hook() -> None:
    source = inspect.getsource(paho.Client._create_socket)
    assert "self._create_socket_connection()" in source
    assert "self._ssl_wrap_socket(sock)" in source


def test_tls_wrap_reads_the_attributes_the_override_uses() -> None:
    source = inspect.getsource(paho.Client._ssl_wrap_socket)
    assert "self._ssl_context" in source
    assert "self._connect_timeout" in source


def test_paho_reads_attributes_the_override_uses() -> None:
    source = inspect.getsource(paho.Client._create_socket_connection)
    assert "self._port" in source
    assert "self._connect_timeout" in source


def test_pingresp_hook_is_called_by_the_packet_dispatcher() -> None:
    source = inspect.getsource(paho.Client._packet_handle)
    assert "self._handle_pingresp()" in source


def test_puback_hook_is_called_by_the_packet_dispatcher_and_reports_as_paho_does() -> None:
    assert 'self._handle_pubackcomp("PUBACK")' in inspect.getsource(paho.Client._packet_handle)
    source = inspect.getsource(paho.Client._handle_pubackcomp)
    assert 'self._in_packet["packet"]' in source
    assert "with self._out_message_mutex:" in source
    assert "if mid in self._out_messages:" in source
    assert "self._do_on_publish(mid, reasonCode, properties)" in source


def _client_expecting(mid: int) -> tuple[_DialingClient, list[tuple[int, str, object]]]:
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    client = _DialingClient(
        dial_address="127.0.0.1",
        server_hostname="hub.example",
        on_pingresp=lambda: None,
        callback_api_version=CallbackAPIVersion.VERSION2,
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    reports: list[tuple[int, str, object]] = []

    def on_publish(_c: object, _u: object, mid: int, reason: object, props: object) -> None:
        reports.append((mid, str(reason), props))

    client.on_publish = on_publish
    client._out_messages[mid] = paho.MQTTMessage(mid)
    client._out_messages[mid].qos = 1
    return client, reports


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (b"\x01\x05", "Success"),  # MQTT 3.1.1, or MQTT 5 with the reason left out
        (b"\x01\x05\x00", "Success"),
        (b"\x01\x05\x10", "No matching subscribers"),  # what mosquitto sends with no subscriber
        (b"\x01\x05\x00\x00", "Success"),  # an empty property block
        (b"\x01\x05\x87\x00", "Not authorized"),  # a refusal: paho's own decoder
        (b"\x01\x05\x10\x03\x1f\x00\x00", "No matching subscribers"),  # with properties
    ],
)
def test_puback_fast_path_reports_what_paho_would(packet: bytes, reason: str) -> None:
    client, reports = _client_expecting(0x0105)
    client._in_packet["packet"] = packet
    assert client._handle_pubackcomp("PUBACK") == paho.MQTTErrorCode.MQTT_ERR_SUCCESS
    assert [(mid, text) for mid, text, _props in reports] == [(0x0105, reason)]
    assert 0x0105 not in client._out_messages
    client._in_packet["packet"] = packet  # a second PUBACK for the same id: ignored
    assert client._handle_pubackcomp("PUBACK") == paho.MQTTErrorCode.MQTT_ERR_SUCCESS
    assert len(reports) == 1


def test_override_is_what_the_client_uses() -> None:
    assert _DialingClient._create_socket_connection is not paho.Client._create_socket_connection
    assert _DialingClient._handle_pingresp is not paho.Client._handle_pingresp
    assert _DialingClient._ssl_wrap_socket is not paho.Client._ssl_wrap_socket


def test_paho_reads_only_through_the_socket_recv() -> None:
    source = inspect.getsource(paho.Client._sock_recv)
    assert "self._sock.recv(bufsize)" in source


def test_read_ahead_socket_serves_small_reads_from_one_system_call() -> None:
    import socket

    from device_sdk.adapters.paho_link import _ReadAheadSocket

    left, right = socket.socketpair()
    with left, _ReadAheadSocket(right) as reader:
        left.sendall(b"\x40\x02\x00\x01" * 3)
        assert reader.recv(1) == b"\x40"
        assert reader.pending() == 11
        assert reader.recv(1) + reader.recv(2) == b"\x02\x00\x01"
        assert reader.recv(100) == b"\x40\x02\x00\x01" * 2
        assert reader.pending() == 0

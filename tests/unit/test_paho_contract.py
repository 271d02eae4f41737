"""Fails when paho-mqtt changes a private hook device_sdk overrides.

device_sdk dials the address it resolved itself while paho's TLS code verifies
the FQDN; that rests on the private names in PAHO_PRIVATE_HOOKS. If a paho
release renames or reshapes one, these tests fail before any device does.
"""

from __future__ import annotations

import inspect
import re
import socket
import tracemalloc

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from device_sdk.adapters.paho_link import (
    PAHO_PRIVATE_ATTRIBUTES,
    PAHO_PRIVATE_HOOKS,
    _DialingClient,
    _HubViolation,
    _ReadAheadSocket,
)


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


@pytest.mark.parametrize("name", sorted(set(PAHO_PRIVATE_HOOKS) - PAHO_PRIVATE_ATTRIBUTES))
def test_private_hook_exists_with_the_expected_parameters(name: str) -> None:
    hook = getattr(paho.Client, name)
    parameters = list(inspect.signature(hook).parameters)
    assert parameters == EXPECTED_PARAMETERS.get(name, ["self"])


def test_every_private_attribute_is_listed_and_set_by_paho() -> None:
    assert set(PAHO_PRIVATE_HOOKS) >= PAHO_PRIVATE_ATTRIBUTES
    client = paho.Client(CallbackAPIVersion.VERSION2)
    for name in PAHO_PRIVATE_ATTRIBUTES:
        assert hasattr(client, name), name


def test_every_private_paho_name_the_adapter_uses_is_listed() -> None:
    from device_sdk.adapters import paho_link

    source = inspect.getsource(paho_link)
    used = set(re.findall(r"(?:self|client|paho\.Client)\.(_[a-z][a-z_]*)", source))
    plain = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    link_names = set(vars(paho_link.PahoLink))  # PahoLink's own, such as its _on_connect
    paho_names = {name for name in used if hasattr(plain, name)} - link_names
    assert paho_names <= set(PAHO_PRIVATE_HOOKS)


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
    assert ours.pack() == theirs.pack()  # type: ignore[no-untyped-call]


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


def _new_client(protocol: MQTTProtocolVersion) -> _DialingClient:
    return _DialingClient(
        dial_address="127.0.0.1",
        server_hostname="hub.example",
        on_pingresp=lambda: None,
        callback_api_version=CallbackAPIVersion.VERSION2,
        protocol=protocol,
    )


def _client_expecting(
    mid: int, protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5
) -> tuple[_DialingClient, list[tuple[int, str, object]]]:
    client = _new_client(protocol)
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
    client._in_packet["packet"] = bytearray(packet)
    assert client._handle_pubackcomp("PUBACK") == MQTTErrorCode.MQTT_ERR_SUCCESS
    assert [(mid, text) for mid, text, _props in reports] == [(0x0105, reason)]
    assert 0x0105 not in client._out_messages
    client._in_packet["packet"] = bytearray(packet)  # a second PUBACK for the same id: ignored
    assert client._handle_pubackcomp("PUBACK") == MQTTErrorCode.MQTT_ERR_SUCCESS
    assert len(reports) == 1


def test_override_is_what_the_client_uses() -> None:
    assert _DialingClient._create_socket_connection is not paho.Client._create_socket_connection
    assert _DialingClient._handle_pingresp is not paho.Client._handle_pingresp
    assert _DialingClient._ssl_wrap_socket is not paho.Client._ssl_wrap_socket


def test_paho_reads_only_through_the_socket_recv() -> None:
    source = inspect.getsource(paho.Client._sock_recv)
    assert "self._sock.recv(bufsize)" in source


def test_read_ahead_socket_serves_small_reads_from_one_system_call() -> None:
    left, right = socket.socketpair()
    with left, _ReadAheadSocket(right) as reader:
        left.sendall(b"\x40\x02\x00\x01" * 3)
        assert reader.recv(1) == b"\x40"
        assert reader.pending() == 11
        assert reader.recv(1) + reader.recv(2) == b"\x02\x00\x01"
        assert reader.recv(100) == b"\x40\x02\x00\x01" * 2
        assert reader.pending() == 0


@pytest.mark.parametrize(
    ("protocol", "packet", "reason"),
    [
        (MQTTProtocolVersion.MQTTv311, b"\x01\x05\x00", "exactly 2"),  # 3.1.1 has no reason code
        (MQTTProtocolVersion.MQTTv311, b"\x00\x00", "packet identifier 0"),
        (MQTTProtocolVersion.MQTTv5, b"\x00\x00", "packet identifier 0"),  # the fast path's miss
        (MQTTProtocolVersion.MQTTv5, b"\x00\x00\x87\x00", "packet identifier 0"),
        (MQTTProtocolVersion.MQTTv5, b"\x01\x05\x00\x00\xff", "do not fill the packet"),
    ],
)
def test_puback_fast_path_refuses_what_the_protocol_forbids(
    protocol: MQTTProtocolVersion, packet: bytes, reason: str
) -> None:
    client, reports = _client_expecting(0x0105, protocol)
    client._in_packet["packet"] = bytearray(packet)
    with pytest.raises(_HubViolation, match=reason):
        client._handle_pubackcomp("PUBACK")
    assert not reports


def _reading_client(
    protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5, max_packet_size: int = 1024
) -> tuple[_DialingClient, socket.socket, socket.socket]:
    """A client reading what the test writes to the first socket returned (no hub, no
    network); the second is the client's end."""
    client = _DialingClient(
        dial_address="127.0.0.1",
        server_hostname="hub.example",
        on_pingresp=lambda: None,
        max_packet_size=max_packet_size,
        callback_api_version=CallbackAPIVersion.VERSION2,
        protocol=protocol,
    )
    hub, ours = socket.socketpair()
    ours.setblocking(False)
    reader = _ReadAheadSocket(ours)
    client._sock = reader
    return client, hub, reader


def test_paho_asks_for_a_whole_body_right_after_its_remaining_length() -> None:
    # The size limit rests on this: the first body read asks for the remaining length,
    # before any of the body is read or a buffer for it allocated.
    source = inspect.getsource(paho.Client._packet_read)
    assert re.findall(r"self\._sock_recv\(([^)]*)\)", source) == [
        "1",
        "1",
        "self._in_packet['to_process']",
    ]
    client, hub, reader = _reading_client()
    with hub, reader:
        hub.sendall(b"\x30\xff\xff\xff\x7f" + bytes(4096))  # PUBLISH, 268 MB announced
        tracemalloc.start()
        try:
            with pytest.raises(_HubViolation, match="268435460 bytes, over the 1024-byte"):
                client._packet_read()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert client._in_packet["packet"] == b""
    assert peak < 256 * 1024


def test_the_limit_counts_the_fixed_header_too() -> None:
    # 1 + 1 + 126 = 128 bytes fits a 128-byte limit; one byte more does not.
    for body, fits in ((126, True), (127, False)):
        client, hub, reader = _reading_client(max_packet_size=128)
        with hub, reader:
            client._sdk_accepting = frozenset({0xD0, 0x30})
            hub.sendall(bytes([0x30, body]) + b"\x00\x01t" + bytes(body - 3))
            if fits:
                assert client._packet_read() == MQTTErrorCode.MQTT_ERR_SUCCESS
            else:
                with pytest.raises(_HubViolation, match="129 bytes"):
                    client._packet_read()


def test_a_fifth_remaining_length_byte_stops_paho_where_it_stands() -> None:
    client, hub, reader = _reading_client()
    with hub, reader:
        hub.sendall(b"\x30\xff\xff\xff\xff\x01")
        assert client._packet_read() == MQTTErrorCode.MQTT_ERR_PROTOCOL
    assert client.overlong_remaining_length()  # what on_disconnect looks at


def test_paho_hands_every_whole_packet_to_the_checked_dispatcher() -> None:
    source = inspect.getsource(paho.Client._packet_read)
    assert "rc = self._packet_handle()" in source
    assert "except MalformedPacket" in source  # why _packet_handle converts it itself
    client, hub, reader = _reading_client()
    with hub, reader:
        hub.sendall(b"\x30\x04\x00\x01t\x00")  # a PUBLISH, before any CONNACK
        with pytest.raises(_HubViolation, match="PUBLISH before the CONNACK"):
            client._packet_read()


def test_every_connection_starts_before_its_connack() -> None:
    # connect() goes through reconnect(), which the client overrides to expect a CONNACK
    # first; reconnect() starts a fresh _in_packet with the keys the checks read.
    assert "return self.reconnect()" in inspect.getsource(paho.Client.connect)
    source = inspect.getsource(paho.Client.reconnect)
    for key in ('"command"', '"remaining_count"', '"packet"'):
        assert f"{key}:" in source


@pytest.mark.parametrize(
    "method",
    [
        paho.Client._handle_connack,
        paho.Client._do_on_publish,
        paho.Client._do_on_disconnect,
        paho.Client._handle_on_message,
    ],
)
def test_paho_re_raises_what_a_callback_raised(method: object) -> None:
    # A listener's exception must reach the engine; paho logs it and re-raises it
    # unless suppress_exceptions is on, which the client turns off explicitly.
    source = inspect.getsource(method)  # type: ignore[arg-type]
    assert re.search(r"if not self\.suppress_exceptions:\s+raise\n", source)
    assert _new_client(MQTTProtocolVersion.MQTTv5).suppress_exceptions is False


def test_a_callback_exception_leaves_paho_as_the_same_object() -> None:
    client, _reports = _client_expecting(0x0105)
    raised = RuntimeError("engine bug")

    def on_publish(*_args: object) -> None:
        raise raised

    client.on_publish = on_publish
    client._in_packet["packet"] = bytearray(b"\x01\x05")
    with pytest.raises(RuntimeError) as caught:
        client._handle_pubackcomp("PUBACK")
    assert caught.value is raised


def test_tls_goes_through_the_wrap_hook_once_a_context_is_set() -> None:
    assert "if self._ssl:" in inspect.getsource(paho.Client._create_socket)
    source = inspect.getsource(paho.Client.tls_set_context)
    assert "self._ssl = True" in source
    assert "self._ssl_context = context" in source


def test_the_websocket_wrapper_takes_the_socket_it_is_given_and_keeps_it() -> None:
    # paho_link builds paho's WebSocket wrapper itself (to bound the handshake by the
    # dial's deadline) and swaps the guarded socket for the plain one afterwards.
    wrapper = paho._WebsocketWrapper
    parameters = list(inspect.signature(wrapper.__init__).parameters)
    assert parameters == ["self", "socket", "host", "port", "is_ssl", "path", "extra_headers"]
    source = inspect.getsource(wrapper)
    assert "self._socket = socket" in source
    assert "def pending(self)" in source
    # The handshake reads the answer through recv() and sends the request with send().
    handshake = inspect.getsource(wrapper._do_handshake)
    assert "self._socket.recv(1)" in handshake and "self._socket.send(header)" in handshake

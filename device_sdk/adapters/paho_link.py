"""The MQTT transport seam over paho-mqtt 2.x: the only module that imports paho.

One :class:`PahoLink` is one MQTT connection to one hub at one resolved
address. The engine owns the loop: it selects on :meth:`PahoLink.fileno` and
calls :meth:`PahoLink.service`, so paho never runs a thread or a reconnect of
its own. Only the SDK reconnects, which is how resolving fresh, choosing a hub
and backing off happen on every attempt.

paho is given the hub's FQDN as its host (so TLS sends SNI = FQDN and verifies
the certificate against the FQDN) and never resolves it: the private hook
``_create_socket_connection`` is overridden to dial the address the SDK
resolved. Every private paho name used here is listed in
:data:`PAHO_PRIVATE_HOOKS`, and ``tests/unit/test_paho_contract.py`` fails if
paho changes any of them under us.

**The hub is not trusted.** Everything a hub sends passes one receive boundary
before paho acts on it: a packet larger than ``max_packet_size`` is refused from
its fixed header, before its body is read or allocated; the fixed header must be
one a server may send in the link's state; and the packet's body must follow
MQTT's rules for its type. Those rules are pure tables and checks of bytes, in
:mod:`device_sdk.adapters.mqtt_rules`.
Whatever breaks them, and whatever paho itself fails to decode, becomes a
protocol error at :meth:`PahoLink.service` (the link is aborted and the listener
told) or a :class:`HandshakeProtocolError` from :meth:`PahoLink.open`. Only the
listener's own exceptions pass through unchanged, so the engine can tell a
hostile hub from a bug of its own.

Why one module of this size: everything here is a paho hook, what the hooks
need, or the link built on them, and paho stays in one place. The parts that
need no paho stand apart: the inbound rules in :mod:`device_sdk.adapters.mqtt_rules`,
the dialling that close() can interrupt in :mod:`device_sdk.adapters.dialing`.
"""

from __future__ import annotations

import contextlib
import math
import selectors
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol, cast

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from device_sdk.adapters.cancel import NEVER, CancelToken
from device_sdk.adapters.dialing import connect_tcp, tls_handshake, wait_ready
from device_sdk.adapters.mqtt_rules import (
    BEFORE_CONNACK,
    BODY_RULES,
    CONNACK,
    PUBACK,
    SERVER_HEADERS,
    largest_body,
    packet_name,
    refusal,
    varint,
)
from device_sdk.config import Credentials, HubEndpoint, TlsSettings, Will
from device_sdk.core.outcomes import (
    REFUSAL_ERRORS,
    FailureKind,
    classify_connack,
    classify_disconnect,
)
from device_sdk.dedup import wrap_envelope
from device_sdk.errors import (
    ConnectError,
    ConnectTimeout,
    DialError,
    HandshakeProtocolError,
    Redirected,
    TlsError,
)
from device_sdk.identity.provider import Identity
from device_sdk.message import Message, PublishProperties
from device_sdk.transports import Transport

_TCP_CORK: int | None = getattr(socket, "TCP_CORK", None)  # Linux only

# The private paho names this module relies on, each with the reason: methods it
# overrides or calls, then attributes it reads.
PAHO_PRIVATE_HOOKS = {
    "_send_publish": "calls only pack() on a PUBLISH's properties (see _PackedProperties)",
    "_create_socket_connection": "dial the SDK-resolved IP instead of resolving _host",
    "_ssl_wrap_socket": "wrap with SNI = FQDN and a fresh context; handshake in a select loop",
    "_handle_pingresp": "report PINGRESPs so the watchdog can measure round trips",
    "_sock_recv": "refuse an oversized packet when paho asks for its body, before reading it",
    "_send_pingreq": "send a PINGREQ when the watchdog wants a liveness probe",
    "_handle_pubackcomp": "a successful PUBACK skips decoding a reason code and properties",
    "_do_on_publish": "called with the PUBACK's packet id, reason code and properties",
    "_packet_handle": "check each packet's fixed header and body before paho handles it",
    "_in_packet": "the packet being read: command byte, remaining length bytes, body",
    "_out_messages": "the PUBACK fast path looks the packet id up as paho does",
    "_out_message_mutex": "held by the PUBACK fast path as paho holds it",
    "_port": "the hub's port, dialled at the resolved address",
    "_ssl_context": "None until paho's TLS path is switched on (once, by tls_set_context)",
    "_create_socket": "open the WebSocket handshake under the dial's deadline and cancel",
    "_websocket_path": "the path of the WebSocket handshake (set by ws_set_options)",
    "_websocket_extra_headers": "the hub's extra headers for the WebSocket handshake",
    "_transport": "tcp or websockets, as chosen when the client was built",
    "_host": "the hub's FQDN: the WebSocket handshake's Host header",
    "_ssl": "True once paho's TLS path is switched on",
}
PAHO_PRIVATE_ATTRIBUTES = frozenset(
    {
        "_in_packet",
        "_out_messages",
        "_out_message_mutex",
        "_port",
        "_ssl_context",
        "_websocket_path",
        "_websocket_extra_headers",
        "_transport",
        "_host",
        "_ssl",
    }
)
# The largest WebSocket handshake answer read: a hub (or a middlebox) that sends more
# is not answering the handshake.
_WEBSOCKET_ANSWER_LIMIT = 16 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkSettings:
    """What a link needs from the client config, flattened for one connection."""

    client_id: str
    mqtt_version: Literal["3.1.1", "5"]
    keepalive: float
    connect_timeout: float
    inflight_window: int
    credentials: Credentials | None = None  # fixed ones; an ``identity`` wins over them
    # What the credential provider gave for this attempt: user name, password, client
    # certificate files (``client_id`` above is already the identity's).
    identity: Identity | None = None
    session_expiry: int = 0
    message_id_property: str = "message-id"
    envelope: bool = False
    max_packet_size: int = 256 * 1024  # inbound limit, see ClientConfig.max_packet_size
    will: Will | None = None  # sent in every CONNECT of this link
    # The way in (mqtts:8883, wss:443, ...); None: the hub's first (HubEndpoint.ways_in).
    transport: Transport | None = None


class LinkListener(Protocol):
    """What a link reports to the engine. Called on the engine thread, from service()."""

    def on_ack(self, mid: int) -> None: ...

    def on_refused(self, mid: int, reason_code: int, reason: str) -> None: ...

    def on_message(self, received: Received) -> None: ...

    def on_pingresp(self) -> None: ...

    def on_protocol_error(self, reason: str) -> None:
        """The hub broke MQTT on an established link; the link has already been aborted."""
        ...

    def on_link_closed(
        self, reason: str, kind: FailureKind, server_reference: str | None
    ) -> None: ...


class _HubViolation(Exception):
    """The hub broke MQTT. Raised inside paho's reader or callbacks to stop it at once;
    never leaves this module (service() and open() translate it)."""


# -- outbound encoding -----------------------------------------------------------------------


class _PackedProperties:
    """PUBLISH properties ending with the message-id user property, encoded once.

    paho only ever calls ``pack()`` on a PUBLISH's properties (when sending and when
    resending with DUP). Building paho's own Properties object cost about 35 µs per
    message, more than the rest of publishing; these bytes take about 2 µs. A
    message with options puts their encoded bytes (``options``) first.
    """

    __slots__ = ("_packed",)

    def __init__(self, prefix: bytes, message_id: str, options: bytes = b"") -> None:
        value = message_id.encode("utf-8")
        body = options + prefix + len(value).to_bytes(2, "big") + value
        self._packed = varint(len(body)) + body

    def pack(self) -> bytes:
        return self._packed

    def __repr__(self) -> str:
        return f"[UserProperty : {self._packed!r}]"


def _utf8_pair_prefix(name: str) -> bytes:
    """Property id 0x26 (User Property) and its UTF-8 name: the part that never changes."""
    key = name.encode("utf-8")
    return b"\x26" + len(key).to_bytes(2, "big") + key


def _encoded_options(
    properties: PublishProperties | None, expires_at: float | None, now: float
) -> bytes:
    """The MQTT 5 property bytes of a message's options, without the length prefix.

    Built with paho's own Properties (only for messages that have options; the
    plain path never comes here). User properties keep their order and come last
    in paho's encoding, so the SDK's message-id pair, appended after, follows them.
    The Message Expiry Interval is the whole seconds left now, at least 1: the
    hub forwards what is left, and a message past its expiry never gets here
    (the outbox's expiry takes it out first).
    """
    packet = _new_properties(PacketTypes.PUBLISH)
    if expires_at is not None:
        packet.MessageExpiryInterval = max(1, int(expires_at - now))
    if properties is not None:
        if properties.payload_format_utf8:
            packet.PayloadFormatIndicator = 1
        if properties.content_type is not None:
            packet.ContentType = properties.content_type
        if properties.response_topic is not None:
            packet.ResponseTopic = properties.response_topic
        if properties.correlation_data is not None:
            packet.CorrelationData = properties.correlation_data
        if properties.user_properties:
            packet.UserProperty = list(properties.user_properties)
    packed: bytes = packet.pack()  # type: ignore[no-untyped-call]  # paho leaves it unannotated
    length_bytes = next(i for i, byte in enumerate(packed) if byte < 0x80) + 1
    return packed[length_bytes:]


def _envelope_size(message_id: str, payload_size: int) -> int:
    """The size of ``wrap_envelope(message_id, payload)`` without building it: the
    envelope of an empty payload plus the payload's base64 length."""
    return len(wrap_envelope(message_id, b"")) + 4 * math.ceil(payload_size / 3)


def _new_properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]  # paho leaves it unannotated


def make_ssl_context(
    tls: TlsSettings,
    identity: Identity | None = None,
    *,
    alpn_protocols: tuple[str, ...] | None = None,
) -> ssl.SSLContext:
    """A verifying client context: CERT_REQUIRED and check_hostname, always.

    The client certificate is the identity's when it names one (re-read at every
    attempt, so a rotated file needs no restart), else the TLS settings'.
    ``alpn_protocols`` replaces the settings' list (a way in that offers its own).
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
    context.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    )
    if identity is not None and identity.cert_file is not None:
        context.load_cert_chain(identity.cert_file, identity.key_file)
    elif tls.client_cert_file is not None:
        context.load_cert_chain(tls.client_cert_file, tls.client_key_file)
    alpn = tls.alpn_protocols if alpn_protocols is None else alpn_protocols
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


class _ReadAheadSocket(socket.socket):
    """A TCP socket that reads ahead.

    paho reads each packet a few bytes at a time (the fixed header, each byte of
    the remaining length, then the body): on a plain socket that is three or more
    system calls per PUBACK. This reads what the kernel has in one call and hands
    it out from memory. TLS sockets need none of this (OpenSSL reads whole records)
    and take over the descriptor, so this class only ever serves plain MQTT.
    """

    _READ_AHEAD = 64 * 1024

    def __init__(self, sock: socket.socket) -> None:
        timeout = sock.gettimeout()  # a socket made from a descriptor would block by default
        super().__init__(sock.family, sock.type, sock.proto, fileno=sock.detach())
        self.settimeout(timeout)
        self._buffer = b""
        self._at = 0  # what was handed out; an offset, so a read copies only what it returns

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        buffer, at = self._buffer, self._at
        if at >= len(buffer):
            buffer, at = super().recv(max(bufsize, self._READ_AHEAD), flags), 0
            self._buffer = buffer
        data = buffer[at : at + bufsize]
        self._at = at + len(data)
        return data

    def pending(self) -> int:
        """Bytes read from the kernel and not handed out yet (select cannot see them)."""
        return len(self._buffer) - self._at

    def close(self) -> None:
        self._buffer, self._at = b"", 0  # what an aborted link had read ahead is never served
        super().close()


class _WebSocket(paho._WebsocketWrapper):
    """paho's WebSocket transport, telling select() what it cannot see.

    paho frames and unframes MQTT over WebSockets; the socket underneath reads
    ahead (plain) or holds decrypted bytes (TLS). paho's own ``pending()`` asks
    only a TLS socket; this asks whichever is underneath.
    """

    def pending(self) -> int:
        inner = self._socket
        return inner.pending() if isinstance(inner, _ReadAheadSocket | ssl.SSLSocket) else 0


class _HandshakeSocket:
    """The socket under paho's WebSocket handshake, bounded by the dial's deadline and cancel.

    paho reads the handshake's answer a byte at a time, blocking, until an empty
    line; a hub that never answers, or streams header lines forever, would hold
    the dial. Here every read waits at most until the deadline, ``close()`` cuts
    it short, and an answer longer than a handshake's is refused.
    """

    def __init__(self, sock: socket.socket, deadline: float, cancel: CancelToken) -> None:
        self.sock, self._deadline, self._cancel = sock, deadline, cancel
        self._received = 0

    def recv(self, bufsize: int) -> bytes:
        self._received += bufsize
        if self._received > _WEBSOCKET_ANSWER_LIMIT:
            raise ConnectionError(
                f"no WebSocket handshake answer within {_WEBSOCKET_ANSWER_LIMIT} bytes"
            )
        return self._io(lambda: self.sock.recv(bufsize), write=False)

    def send(self, data: bytes) -> int:
        self.sock.setblocking(True)  # the request is small; the deadline bounds it
        self.sock.settimeout(max(0.001, self._deadline - time.monotonic()))
        try:
            self.sock.sendall(data)
        finally:
            self.sock.setblocking(False)
        return len(data)

    def _io(self, step: Callable[[], bytes], *, write: bool) -> bytes:
        for _round in range(_WEBSOCKET_ANSWER_LIMIT):
            if isinstance(self.sock, _ReadAheadSocket | ssl.SSLSocket) and self.sock.pending():
                return step()
            wait_ready(
                self.sock,
                write=write,
                deadline=self._deadline,
                cancel=self._cancel,
                what="WebSocket handshake",
            )
            try:
                return step()
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                continue
        raise TimeoutError("WebSocket handshake took too many rounds")


# Handed to on_publish for every successful PUBACK that takes the fast path (read only).
_PUBACK_SUCCESS_CODES = {
    code: ReasonCode(PacketTypes.PUBACK, identifier=code) for code in (0x00, 0x10)
}
_PUBACK_SUCCESS = _PUBACK_SUCCESS_CODES[0x00]
_NO_PUBACK_PROPERTIES = _new_properties(PacketTypes.PUBACK)


class _DialingClient(paho.Client):
    """paho's client with its hooks: dial a given address, check what the hub sends,
    and report PINGRESP."""

    def __init__(
        self,
        *,
        dial_address: str,
        server_hostname: str,
        on_pingresp: Callable[[], None],
        max_packet_size: int = 256 * 1024,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._sdk_dial_address = dial_address
        self._sdk_server_hostname = server_hostname
        self._sdk_on_pingresp = on_pingresp
        self._sdk_deadline = 0.0
        self._sdk_cancel = NEVER
        self._sdk_tls_context: ssl.SSLContext | None = None
        self._sdk_connected: socket.socket | None = None  # handed over by the connect race
        self._sdk_mqtt5 = kwargs.get("protocol") == MQTTProtocolVersion.MQTTv5
        self._sdk_max_packet_size = max_packet_size
        self._sdk_largest_body = largest_body(max_packet_size)
        self._sdk_accepting = BEFORE_CONNACK
        # PUBACKs the fast path may take: MQTT 5 allows 3 or 4 bytes (a reason code, an
        # empty property block); MQTT 3.1.1 exactly 2, anything else is refused.
        self._sdk_fast_ack_limit = 4 if self._sdk_mqtt5 else 2
        # A listener's exception must reach the engine as raised, not logged and dropped.
        self.suppress_exceptions = False

    def prepare_dial(
        self,
        *,
        deadline: float,
        cancel: CancelToken,
        tls_context: ssl.SSLContext | None,
        connected: socket.socket | None = None,
    ) -> None:
        """What the next dial waits until, what cuts it short, the TLS context to use,
        and a TCP connection to the address already open (the connect race's winner)."""
        self._sdk_deadline, self._sdk_cancel = deadline, cancel
        self._sdk_tls_context = tls_context
        self._sdk_connected = connected
        if tls_context is not None and self._ssl_context is None:
            self.tls_set_context(tls_context)  # turns paho's TLS path on, once

    def reconnect(self) -> MQTTErrorCode:
        self._sdk_accepting = BEFORE_CONNACK  # a new connection: its CONNACK comes first
        return super().reconnect()

    def _create_socket_connection(self) -> socket.socket:
        # paho would pass its host (the FQDN) to create_connection and let the OS
        # resolve and cache it. The SDK resolved it fresh a moment ago: dial that, and
        # let close() cut the connect short.
        sock, self._sdk_connected = self._sdk_connected, None
        if sock is None:
            sock = connect_tcp(
                self._sdk_dial_address, self._port, self._sdk_deadline, self._sdk_cancel
            )
        return _ReadAheadSocket(sock)

    def _create_socket(self) -> Any:
        # paho's own version runs the WebSocket handshake blocking for its connect
        # timeout, deaf to close(); here it runs under the dial's deadline and cancel.
        sock = self._create_socket_connection()
        if self._ssl:
            sock = self._ssl_wrap_socket(sock)
        if self._transport != "websockets":
            return sock
        bounded = _HandshakeSocket(sock, self._sdk_deadline, self._sdk_cancel)
        try:
            websocket = _WebSocket(
                socket=cast(socket.socket, bounded),  # it has what the handshake uses
                host=self._host,
                port=self._port,
                is_ssl=self._ssl,
                path=self._websocket_path,
                extra_headers=self._websocket_extra_headers,
            )
        except (OSError, ValueError, ConnectError):  # ConnectError: Cancelled, closing
            sock.close()
            raise
        except Exception as exc:  # paho's parser of the answer trips on what it never expected
            sock.close()
            raise ConnectionError(f"the WebSocket handshake answer was malformed: {exc!r}") from exc
        except BaseException:
            sock.close()
            raise
        websocket._socket = sock  # the handshake is over: reads need no guard from here
        return websocket

    def _ssl_wrap_socket(self, tcp_sock: socket.socket) -> ssl.SSLSocket:
        # SNI and verification use the FQDN, never the IP we dialled; the context (made
        # fresh for this dial, so rotated files are read) has check_hostname on. The
        # handshake runs in a select loop so that close() and the deadline cut it short;
        # the socket is closed when it fails (paho's own version leaks it).
        assert self._sdk_tls_context is not None
        tls_sock = self._sdk_tls_context.wrap_socket(
            tcp_sock, server_hostname=self._sdk_server_hostname, do_handshake_on_connect=False
        )
        try:
            tls_handshake(tls_sock, self._sdk_deadline, self._sdk_cancel)
        except BaseException:
            tls_sock.close()
            raise
        return tls_sock

    # -- the receive boundary ----------------------------------------------------------------

    def _sock_recv(self, bufsize: int) -> bytes:
        # paho asks for a packet's whole body in one call right after reading its
        # remaining length, and for one byte otherwise: the moment to refuse a packet
        # over the limit, before a byte of it is read or a buffer for it allocated.
        if bufsize > self._sdk_largest_body:
            raise _HubViolation(self._oversized(bufsize))
        return paho.Client._sock_recv(self, bufsize)

    def _oversized(self, remaining_length: int) -> str:
        header = 1 + len(self._in_packet["remaining_count"])
        name = packet_name(self._in_packet["command"])
        return (
            f"{name} of {header + remaining_length} bytes, over the "
            f"{self._sdk_max_packet_size}-byte max_packet_size"
        )

    def overlong_remaining_length(self) -> bool:
        """True when paho stopped reading at a fifth remaining-length byte."""
        return len(self._in_packet["remaining_count"]) > 4

    def _packet_handle(self) -> MQTTErrorCode:
        command = self._in_packet["command"]
        if command not in self._sdk_accepting:
            connacked = self._sdk_accepting is not BEFORE_CONNACK
            raise _HubViolation(refusal(command, connacked=connacked, mqtt5=self._sdk_mqtt5))
        try:
            if command == PUBACK:
                return self._handle_pubackcomp("PUBACK")
            return self._handle_checked(command)
        except MalformedPacket as exc:  # paho's decoders found the body malformed
            raise _HubViolation(f"malformed {packet_name(command)}: {exc}") from exc

    def _handle_checked(self, command: int) -> MQTTErrorCode:
        self._check_body(command)
        if command == CONNACK:
            self._sdk_accepting = SERVER_HEADERS[self._sdk_mqtt5]
        rc = paho.Client._packet_handle(self)
        # paho answers a CONNACK refusal with MQTT_ERR_PROTOCOL; anything else it
        # calls a protocol error is one.
        if rc == MQTTErrorCode.MQTT_ERR_PROTOCOL and command != CONNACK:
            raise _HubViolation(f"{packet_name(command)} refused by the MQTT decoder")
        return rc

    def _check_body(self, command: int) -> None:
        problem = BODY_RULES[command >> 4](command, self._in_packet["packet"], self._sdk_mqtt5)
        if problem is not None:
            raise _HubViolation(problem)

    def _handle_pubackcomp(self, cmd: Literal["PUBACK", "PUBCOMP"]) -> MQTTErrorCode:
        # The hot path on a busy link: paho builds a ReasonCode and a Properties
        # object for every PUBACK, a third of the engine thread's time at full rate.
        # A PUBACK that says success (no reason code, or 0x00 "Success" or 0x10 "No
        # matching subscribers", without properties) needs neither; anything else is
        # checked and goes the whole way through paho's decoder.
        packet = self._in_packet["packet"]
        size = len(packet)
        reason = _PUBACK_SUCCESS if size == 2 else None
        if 3 <= size <= self._sdk_fast_ack_limit and (size == 3 or packet[3] == 0):
            reason = _PUBACK_SUCCESS_CODES.get(packet[2])
        if cmd != "PUBACK" or reason is None:
            if cmd == "PUBACK":
                self._check_body(PUBACK)
            return super()._handle_pubackcomp(cmd)
        mid = packet[0] << 8 | packet[1]
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, reason, _NO_PUBACK_PROPERTIES)
        if not mid:  # never in _out_messages: checked only off the hot path
            raise _HubViolation("PUBACK with packet identifier 0")
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_pingresp(self) -> MQTTErrorCode:
        rc = super()._handle_pingresp()
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._sdk_on_pingresp()
        return rc

    def send_pingreq(self) -> bool:
        return self._send_pingreq() == MQTTErrorCode.MQTT_ERR_SUCCESS


# CONNACK properties that are a single byte holding 0 or 1; any other value is a
# protocol error (MQTT 5 §3.2.2.3). paho checks the ranges of the others.
_CONNACK_BOOLEANS = (
    "MaximumQoS",
    "RetainAvailable",
    "WildcardSubscriptionAvailable",
    "SubscriptionIdentifierAvailable",
    "SharedSubscriptionAvailable",
)


class PahoLink:
    """One MQTT connection to one hub at one address. Not thread-safe: engine thread only.

    After :meth:`open`, what the hub announced in its CONNACK is here for the
    session to honour: :attr:`maximum_packet_size` (None when not announced),
    :attr:`maximum_qos`, :attr:`retain_available` and :attr:`receive_maximum`.
    """

    def __init__(self, hub: HubEndpoint, address: str, settings: LinkSettings) -> None:
        self.hub = hub
        self.address = address
        # The way in: its scheme and port, and for WebSockets the path and headers.
        self.transport = settings.transport or hub.ways_in[0]
        self._settings = settings
        self._listener: LinkListener | None = None
        # Until the engine has taken the link on (start_reporting), what paho reports is
        # held back: a resumed session's PUBACKs can arrive in the same read as its CONNACK.
        self._held: list[Callable[[LinkListener], None]] | None = []
        self._connack: tuple[int, bool, str | None] | None = None
        self._closed_reported = False
        # The exception the listener raised last, so service() can let it through as it
        # is instead of taking it for a hub's fault.
        self._listener_fault: Exception | None = None
        self.session_present = False
        self.resumed = False  # True after reopen(): the same paho session, resent with DUP
        self.receive_maximum = 65535
        self.maximum_packet_size: int | None = None
        self.maximum_qos = 2
        self.retain_available = True
        self._mqtt5 = settings.mqtt_version == "5"
        self._id_property_prefix = _utf8_pair_prefix(settings.message_id_property)
        self._client = self._build_client()

    @property
    def client_id(self) -> str:
        """The MQTT client id this link's session belongs to."""
        return self._settings.client_id

    def _build_client(self) -> _DialingClient:
        session: dict[str, bool] = {}
        if not self._mqtt5:  # MQTT 5 asks for session resumption in CONNECT instead
            session["clean_session"] = self._settings.session_expiry == 0
        client = _DialingClient(
            dial_address=self.address,
            server_hostname=self.hub.fqdn.rstrip("."),
            on_pingresp=self._pingresp,
            max_packet_size=self._settings.max_packet_size,
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self._settings.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if self._mqtt5 else MQTTProtocolVersion.MQTTv311,
            reconnect_on_failure=False,
            transport="websockets" if self.transport.websocket else "tcp",
            **session,
        )
        if self.transport.websocket:
            client.ws_set_options(path=self.transport.path, headers=dict(self.transport.headers))
        self._sign_in(client, self._settings)
        self._set_will(client)
        # The engine enforces the in-flight window; paho must never hold messages back.
        client.max_inflight_messages_set(self._settings.inflight_window)
        client.connect_timeout = self._settings.connect_timeout
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        # The engine sends every PUBACK itself (ack()): after the handlers, or on receipt.
        client.manual_ack_set(True)
        return client

    def _set_will(self, client: paho.Client) -> None:
        """The Last Will goes in every CONNECT; on MQTT 5 with its Will Delay Interval."""
        will = self._settings.will
        if will is None:
            return
        properties = None
        if self._mqtt5 and will.delay_interval:
            properties = _new_properties(PacketTypes.WILLMESSAGE)
            properties.WillDelayInterval = will.delay_interval
        client.will_set(
            will.topic, will.payload, qos=will.qos, retain=will.retain, properties=properties
        )

    @staticmethod
    def _sign_in(client: paho.Client, settings: LinkSettings) -> None:
        """Put the attempt's user name and password in the CONNECT paho will send."""
        identity, creds = settings.identity, settings.credentials
        if identity is not None and (identity.username is not None or identity.password):
            client.username_pw_set(identity.username or "", identity.password)
        elif identity is None and creds is not None:
            client.username_pw_set(creds.username, creds.password)
        else:
            client.username_pw_set(None)

    # -- opening ---------------------------------------------------------------------------

    def open(
        self,
        deadline: float,
        cancel: CancelToken = NEVER,
        *,
        connected: socket.socket | None = None,
    ) -> None:
        """Dial, handshake TLS, send CONNECT and wait for CONNACK until ``deadline``.

        Raises a :class:`ConnectError` subclass; never a paho, ssl or socket error.
        ``cancel`` cuts every wait short (:class:`~device_sdk.adapters.cancel.Cancelled`).
        ``connected`` is a TCP connection to :attr:`address` already open (the
        connect race's winner): the link takes it over instead of dialling again.
        """
        self._establish(self._dial, deadline, cancel, connected)

    def reopen(
        self,
        address: str,
        deadline: float,
        cancel: CancelToken = NEVER,
        *,
        identity: Identity | None = None,
        connected: socket.socket | None = None,
    ) -> None:
        """Connect the same paho session again, possibly at a new address of the same hub.

        paho resends every unacknowledged QoS 1 message with DUP set and its
        original packet id once the CONNACK arrives; the engine keeps its
        in-flight table instead of resending them itself. ``identity`` is this
        attempt's (a fresh token); the client id must be the session's.
        """
        if identity is not None:
            self._settings = replace(self._settings, identity=identity)
            self._sign_in(self._client, self._settings)
        self.address = address
        self._client._sdk_dial_address = address
        self._held = []
        self._connack = None
        self._closed_reported = False
        self.resumed = True
        self._establish(self._redial, deadline, cancel, connected)

    def _establish(
        self,
        dial: Callable[[], None],
        deadline: float,
        cancel: CancelToken,
        connected: socket.socket | None,
    ) -> None:
        self._listener = None
        try:
            cancel.check(f"connecting to {self.hub.name}")
            tls_context = self._fresh_tls_context()
            self._client.prepare_dial(
                deadline=deadline, cancel=cancel, tls_context=tls_context, connected=connected
            )
            self._translating_dial_errors(dial)
            self._await_connack(deadline, cancel)
        except ConnectError:
            self.abort()
            raise
        finally:
            if connected is not None and self._client._sdk_connected is connected:
                self._client._sdk_connected = None  # never dialled on: it is closed here
                connected.close()
        code, self.session_present, reference = self._connack or (0, False, None)
        self._raise_for_connack(code, reference)

    def _fresh_tls_context(self) -> ssl.SSLContext | None:
        """The hub's TLS context, its files read now: they may have been rotated (or have
        gone missing) since the config was loaded."""
        if self.hub.tls is None or not self.transport.secure:
            return None
        try:
            return make_ssl_context(
                self.hub.tls, self._settings.identity, alpn_protocols=self.transport.alpn_protocols
            )
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise TlsError(
                f"TLS files for {self.hub.name} could not be loaded: {exc}",
                hub=self.hub.name,
                address=self.address,
            ) from exc

    def start_reporting(self, listener: LinkListener) -> None:
        """Report to ``listener`` from now on, starting with what arrived with the CONNACK."""
        self._listener = listener
        held, self._held = self._held or [], None
        for report in held:
            report(listener)

    def _dial(self) -> None:
        keepalive = max(1, round(self._settings.keepalive))
        port = self.transport.port
        if not self._mqtt5:
            self._client.connect(self.hub.fqdn, port, keepalive=keepalive)
            return
        properties = _new_properties(PacketTypes.CONNECT)
        if self._settings.session_expiry:
            properties.SessionExpiryInterval = self._settings.session_expiry
        # The hub must not send a packet larger than we accept (MQTT 5 §3.1.2.11.4); one
        # that does anyway is refused from its fixed header (see _DialingClient._sock_recv).
        properties.MaximumPacketSize = self._settings.max_packet_size
        self._client.connect(
            self.hub.fqdn,
            port,
            keepalive=keepalive,
            clean_start=self._settings.session_expiry == 0,
            properties=properties,
        )

    def _redial(self) -> None:
        self._client.reconnect()

    def _translating_dial_errors(self, dial: Callable[[], None]) -> None:
        where = f"{self.hub.name} at {self.address} over {self.transport.label}"
        try:
            dial()
        except ssl.SSLCertVerificationError as exc:
            message = f"certificate of {self.hub.fqdn} did not verify ({exc.verify_message})"
            raise TlsError(message, hub=self.hub.name, address=self.address) from exc
        except (ssl.SSLError, ssl.CertificateError) as exc:
            raise TlsError(
                f"TLS handshake with {where} failed: {exc}", hub=self.hub.name, address=self.address
            ) from exc
        except (TimeoutError, OSError, ValueError) as exc:
            raise DialError(
                f"could not open {where}: {exc}", hub=self.hub.name, address=self.address
            ) from exc

    def _await_connack(self, deadline: float, cancel: CancelToken) -> None:
        if self.fileno() < 0:
            # paho closes the socket when sending CONNECT fails: a hub that reset the
            # connection as it was accepted (a restarting broker, a load balancer
            # shedding load). Found by the soak benchmark as an engine fault.
            raise DialError(
                f"{self.hub.name} at {self.address} closed the connection before CONNECT was sent",
                hub=self.hub.name,
                address=self.address,
            )
        with selectors.DefaultSelector() as selector:
            selector.register(self.fileno(), selectors.EVENT_READ)
            selector.register(cancel.fileno(), selectors.EVENT_READ)
            while self._connack is None and not self._closed_reported:
                cancel.check(f"waiting for the CONNACK of {self.hub.name}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ConnectTimeout(
                        f"no CONNACK from {self.hub.name} at {self.address} in time",
                        hub=self.hub.name,
                        address=self.address,
                    )
                if self.has_buffered_input() or selector.select(remaining):
                    cancel.check(f"waiting for the CONNACK of {self.hub.name}")
                    self._handshake_io(self._client.loop_read)
                if self._client.want_write():
                    self._handshake_io(self._client.loop_write)
        if self._connack is None:
            raise DialError(
                f"{self.hub.name} at {self.address} closed the connection before CONNACK",
                hub=self.hub.name,
                address=self.address,
            )

    def _handshake_io(self, step: Callable[[], object]) -> None:
        """One read or write while opening: whatever the hub's input makes paho raise is
        a handshake protocol error. (No listener is called yet, so nothing else can.)"""
        try:
            step()
        except Exception as exc:
            raise HandshakeProtocolError(
                f"{self.hub.name} at {self.address} broke MQTT while connecting: "
                f"{_describe_fault(exc)}",
                hub=self.hub.name,
                address=self.address,
            ) from exc

    def _raise_for_connack(self, code: int, reference: str | None) -> None:
        kind = classify_connack(code, mqtt5=True)  # paho 2 maps 3.1.1 codes to v5 ones
        if kind is None:
            return
        reason = ReasonCode(PacketTypes.CONNACK, identifier=code).getName()
        text = f"{self.hub.name} refused CONNECT: {reason} (0x{code:02X})"
        hub, address = self.hub.name, self.address
        self.abort()
        if kind is FailureKind.REDIRECT:
            raise Redirected(
                text, hub=hub, address=address, reason_code=code, server_reference=reference
            )
        raise REFUSAL_ERRORS[kind](text, hub=hub, address=address, reason_code=code)

    # -- serving ---------------------------------------------------------------------------

    def fileno(self) -> int:
        sock = self._client.socket()
        return -1 if sock is None else sock.fileno()

    def want_write(self) -> bool:
        return self._client.want_write()

    def has_buffered_input(self) -> bool:
        """True when input was read ahead and waits in memory, where select cannot see it.

        On TLS that is OpenSSL's buffer: it decrypts a whole record, and a hub that
        puts several packets in one record (a SUBACK and a PUBACK written together)
        leaves the later ones there after paho read the first. select() sees only
        the socket, which is then quiet: without this, the link would stall until
        the ack deadline dropped it.
        """
        sock = self._client.socket()
        if isinstance(sock, _ReadAheadSocket | ssl.SSLSocket | _WebSocket):
            return sock.pending() > 0
        return False

    def service(self, *, readable: bool, writable: bool) -> None:
        """Let paho read, write and run its housekeeping. Callbacks fire from here.

        The receive boundary: when the hub broke MQTT (or sent what paho could not
        decode), the link is aborted and the listener's ``on_protocol_error`` called;
        nothing is raised. An exception of the listener itself passes through as it is.
        """
        try:
            if readable:
                self._client.loop_read()
            if writable:
                self._client.loop_write()
            self._client.loop_misc()
        except Exception as exc:
            if exc is self._listener_fault:
                self._listener_fault = None
                raise
            self._protocol_error(_describe_fault(exc))

    def _protocol_error(self, reason: str) -> None:
        reported = self._closed_reported
        self.abort()
        if not reported:
            self._report(lambda listener: listener.on_protocol_error(reason))

    @property
    def carries_properties(self) -> bool:
        """True on MQTT 5; MQTT 3.1.1 has no properties at all."""
        return self._mqtt5

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        message_id: str,
        *,
        retain: bool = False,
        properties: PublishProperties | None = None,
        expires_at: float | None = None,
    ) -> int:
        """Send one PUBLISH carrying ``message_id``; returns its packet id.

        ``properties`` and ``expires_at`` (wall clock; sent as the Message Expiry
        Interval left) go out on MQTT 5 only: the session never hands a 3.1.1
        link a message with properties. A failure to queue it is reported as a
        closed link, never raised.
        """
        packed = None
        if self._mqtt5:
            options = b""
            if properties is not None or expires_at is not None:
                options = _encoded_options(properties, expires_at, time.time())
            packed = _PackedProperties(self._id_property_prefix, message_id, options)
        if self._settings.envelope:
            payload = wrap_envelope(message_id, payload)
        info = self._client.publish(
            topic, payload, qos=qos, retain=retain, properties=cast(Properties, packed)
        )
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._report_closed(f"publish failed: {paho.error_string(info.rc)}")
        return info.mid

    def publish_size(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        message_id: str,
        *,
        properties: PublishProperties | None = None,
        expires_at: float | None = None,
    ) -> int:
        """The exact size in bytes of the PUBLISH :meth:`publish` would send for this.

        Lets the session refuse a message over the hub's :attr:`maximum_packet_size`
        before sending it: a hub that gets one drops the link, again and again.
        """
        body = 2 + len(topic.encode("utf-8")) + (2 if qos else 0)
        if self._mqtt5:
            options = b""
            if properties is not None or expires_at is not None:
                options = _encoded_options(properties, expires_at, time.time())
            body += len(_PackedProperties(self._id_property_prefix, message_id, options).pack())
        if self._settings.envelope:
            body += _envelope_size(message_id, len(payload))
        else:
            body += len(payload)
        return 1 + len(varint(body)) + body

    @contextlib.contextmanager
    def coalesced(self, enabled: bool = True) -> Iterator[None]:
        """Hold small writes back (TCP_CORK) while a batch is queued, then send it at once.

        Why: the socket has TCP_NODELAY, so a lone PUBACK-critical packet never waits;
        a burst of PUBLISHes would otherwise leave as one small segment each.
        """
        cork, sock = _TCP_CORK, self._client.socket()
        if not enabled or cork is None or not isinstance(sock, socket.socket):
            yield
            return
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, cork, 1)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, cork, 0)

    def subscribe(self, topic: str, qos: int) -> None:
        result, _mid = self._client.subscribe(topic, qos=qos)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._report_closed(f"subscribe failed: {paho.error_string(result)}")

    def unsubscribe(self, topic: str) -> None:
        result, _mid = self._client.unsubscribe(topic)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._report_closed(f"unsubscribe failed: {paho.error_string(result)}")

    def ack(self, mid: int, qos: int) -> None:
        """Acknowledge a received message (PUBACK) on this connection.

        paho sends no PUBACK of its own (manual ack): the engine calls this once
        the message's handlers returned, or at once, as the client asked.
        """
        if qos <= 0:
            return
        result = self._client.ack(mid, qos)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._report_closed(f"PUBACK failed: {paho.error_string(result)}")

    def announce(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Send a presence message (the birth) outside the outbox: no message id, no handle.

        Its PUBACK, if any, matches no message in flight and is ignored. A hub that
        announced Retain Available = 0 gets it unretained rather than drop the link.
        """
        result = self._client.publish(
            topic, payload, qos=qos, retain=retain and self.retain_available
        ).rc
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._report_closed(f"publish failed: {paho.error_string(result)}")

    def send_ping(self) -> None:
        if not self._client.send_pingreq():
            self._report_closed("PINGREQ could not be sent")

    def disconnect(self) -> None:
        """Say goodbye (DISCONNECT) on a healthy link, then close the socket."""
        self._closed_reported = True  # our own decision: not a link loss
        self._client.disconnect()
        self.abort()

    def abort(self) -> None:
        """Close the socket at once, without a DISCONNECT (the hub may be hung)."""
        self._closed_reported = True
        sock = self._client.socket()
        if sock is not None:
            sock.close()

    # -- paho callbacks: translate and forward, nothing more ------------------------------
    # A callback raises _HubViolation to stop paho where it stands; paho re-raises it
    # (suppress_exceptions is off) and service() or open() translates it.

    def _on_connect(
        self,
        _client: paho.Client,
        _userdata: object,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        for name in _CONNACK_BOOLEANS:
            if getattr(properties, name, 0) not in (0, 1):
                raise _HubViolation(f"CONNACK with {name} = {getattr(properties, name)}")
        reference = getattr(properties, "ServerReference", None)
        self.receive_maximum = getattr(properties, "ReceiveMaximum", 65535)
        self.maximum_packet_size = getattr(properties, "MaximumPacketSize", None)
        self.maximum_qos = getattr(properties, "MaximumQoS", 2)
        self.retain_available = bool(getattr(properties, "RetainAvailable", 1))
        self._connack = (reason_code.value, bool(flags.session_present), reference)

    def _on_disconnect(
        self,
        _client: paho.Client,
        _userdata: object,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not flags.is_disconnect_packet_from_server:
            if self._client.overlong_remaining_length():
                raise _HubViolation("a remaining length longer than four bytes")
            # paho's own code for "the socket died" (0x80 "Unspecified error") says
            # nothing about the hub: report what happened instead.
            self._report_closed("connection lost (closed or reset by the peer)")
            return
        reference = getattr(properties, "ServerReference", None) if properties else None
        code = reason_code.value
        kind = classify_disconnect(code) if code >= 0x80 else FailureKind.TRANSIENT
        name = reason_code.getName()
        self._report_closed(f"hub sent DISCONNECT: {name} (0x{code:02X})", kind, reference)

    def _on_publish(
        self,
        _client: paho.Client,
        _userdata: object,
        mid: int,
        reason_code: ReasonCode,
        _properties: Properties,
    ) -> None:
        if reason_code.value >= 0x80:  # MQTT 5: the hub refused this message
            code, reason = reason_code.value, reason_code.getName()
            self._report(lambda listener: listener.on_refused(mid, code, reason))
            return
        listener = self._listener
        if self._held is None and listener is not None:
            try:
                listener.on_ack(mid)  # the hot path: one call per PUBACK, no closure
            except Exception as exc:
                self._listener_fault = exc
                raise
        else:
            self._report(lambda listener: listener.on_ack(mid))

    def _on_message(self, _client: paho.Client, _userdata: object, msg: paho.MQTTMessage) -> None:
        # The topic's bytes were checked before paho decoded them (_publish_problem).
        if hasattr(msg.properties, "TopicAlias"):
            raise _HubViolation("PUBLISH with a Topic Alias (this client allows none)")
        received = Received(_received_message(msg), msg.mid)
        self._report(lambda listener: listener.on_message(received))

    def _pingresp(self) -> None:
        self._report(lambda listener: listener.on_pingresp())

    def _report_closed(
        self,
        reason: str,
        kind: FailureKind = FailureKind.TRANSIENT,
        server_reference: str | None = None,
    ) -> None:
        if self._closed_reported:
            return
        self._closed_reported = True
        if self._connack is not None:  # before CONNACK, open() raises instead
            self._report(lambda listener: listener.on_link_closed(reason, kind, server_reference))

    def _report(self, report: Callable[[LinkListener], None]) -> None:
        if self._held is not None:
            self._held.append(report)
        elif self._listener is not None:
            try:
                report(self._listener)
            except Exception as exc:
                self._listener_fault = exc  # the engine's own code: service() lets it through
                raise


@dataclass(frozen=True, slots=True)
class Received:
    """A message the hub delivered and the packet id its PUBACK must carry."""

    message: Message
    mid: int


def _received_message(msg: paho.MQTTMessage) -> Message:
    """paho's message as the SDK's Message, its MQTT 5 properties kept as they came."""
    props = msg.properties
    expiry = getattr(props, "MessageExpiryInterval", None)
    correlation = getattr(props, "CorrelationData", None)
    return Message(
        topic=msg.topic,
        payload=bytes(msg.payload),
        qos=msg.qos,
        retain=bool(msg.retain),
        properties=PublishProperties.received(
            content_type=getattr(props, "ContentType", None),
            response_topic=getattr(props, "ResponseTopic", None),
            correlation_data=None if correlation is None else bytes(correlation),
            user_properties=tuple(
                (str(name), str(value)) for name, value in getattr(props, "UserProperty", ())
            ),
            payload_format_utf8=getattr(props, "PayloadFormatIndicator", 0) == 1,
        ),
        message_expiry=None if expiry is None else int(expiry),
    )


def _describe_fault(exc: Exception) -> str:
    """A hub's fault in words: the rule it broke, or what decoding its input raised."""
    if isinstance(exc, _HubViolation):
        return str(exc)
    return f"its input could not be decoded ({type(exc).__name__}: {exc})"

"""A TLS listener on loopback that records what a device offered and presented.

A real broker hides the handshake: a test cannot ask mosquitto which ALPN
protocols the device offered or which server name it sent. To check that a
dialect dials the way a cloud wants (AWS IoT Core's ALPN ``x-amzn-mqtt-ca`` on
443, SNI = the endpoint, client id = thing name, an authorizer's user name),
:class:`TlsProbeListener` terminates TLS itself and records, per connection:

- the SNI (from OpenSSL's server-name callback) and the whole list of ALPN
  protocols offered (parsed from the ClientHello, see below), the protocol it
  selected, the TLS version, and the client certificate's subject CN;
- the MQTT CONNECT: protocol level, client id, user name, keep-alive, and
  whether a password came, with its length and SHA-256 (never the password);
- the PUBLISHes that followed (topic, QoS, payload) and the PINGREQs.

It answers CONNACK accepted, or the next of ``connack_codes`` (MQTT 5 reason
codes; a 3.1.1 device gets the return code meaning the same, see
:func:`connack_packet`), PINGRESP to PINGREQ, PUBACK to QoS 1 PUBLISH and
SUBACK to SUBSCRIBE: enough for ``DeviceClient.connect()`` and a publish to
succeed. A refused CONNECT is answered and the connection closed, as a broker
must.

Why the ClientHello is parsed here: Python's ``ssl`` reports only the ALPN
protocol the server selected, never the list the client offered. The listener
reads the socket itself and feeds OpenSSL through memory BIOs
(``SSLContext.wrap_bio``), so the very bytes OpenSSL handshakes on pass through
:func:`parse_client_hello` first: the offered list is exactly what was on the
wire, whatever the server's own ALPN preferences. A ClientHello that cannot be
parsed is recorded (``hello_error``) and the handshake left to OpenSSL.

Bounded: every read waits at most 50 ms before looking at the stop flag; each
connection ends after ``connection_timeout`` seconds; a ClientHello over 64 KiB
or a packet over ``max_packet_size`` ends that connection; at most
``max_connections`` are served at once. Anything malformed or hostile ends only
its own connection (recorded in ``ended``). :meth:`stop` is bounded.
Loopback only.

Why one module past 500 lines: the ClientHello and MQTT readers here exist only
to record what this listener saw (they check bounds and stop at the first
malformed byte, nothing more), and the listener is their only user; they move
out when a second part needs them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from device_sdk.errors import TestbedError
from device_sdk.testbed.hostile_hub import encode_packet
from device_sdk.testbed.lifecycle import StartsInContext
from device_sdk.testbed.ports import address_family

__all__ = [
    "ClientHello",
    "MqttConnect",
    "ProbeConnection",
    "ProbePublish",
    "TlsProbeListener",
    "connack_packet",
    "parse_client_hello",
    "parse_connect",
]

_POLL = 0.05
_CHUNK = 64 * 1024
_MAX_HELLO = 64 * 1024
_DRAIN = 1.0  # how long a refused device gets to read its CONNACK and hang up
_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
# An MQTT 5 reason code, as the MQTT 3.1.1 return code that means the same (§3.2.2.3).
_V3_RETURN_CODES = {0x00: 0, 0x84: 1, 0x85: 2, 0x86: 4, 0x87: 5}
_V3_SERVER_UNAVAILABLE = 3


class _Ended(Exception):
    """The connection being served is over; the message says why."""


class _Reader:
    """Bounds-checked reads from bytes from outside: ValueError past the end."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    @property
    def left(self) -> int:
        return len(self._data) - self._at

    def take(self, count: int) -> bytes:
        if count < 0 or count > self.left:
            raise ValueError(f"needs {count} bytes, {self.left} left")
        chunk = self._data[self._at : self._at + count]
        self._at += count
        return chunk

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def varint(self) -> int:
        value = 0
        for shift in range(0, 28, 7):
            byte = self.uint(1)
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
        raise ValueError("a variable byte integer longer than four bytes")

    def string(self) -> str:
        return self.take(self.uint(2)).decode("utf-8")


# -- the ClientHello --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientHello:
    """What a TLS ClientHello asked for: the server name and the ALPN protocols offered."""

    server_name: str | None
    alpn_protocols: tuple[str, ...]


def client_hello_body(data: bytes) -> bytes | None:
    """The ClientHello handshake message at the start of ``data`` (raw TLS records),
    None while more bytes are needed; ValueError when it is not one or too large."""
    reader, message = _Reader(data), b""
    while reader.left >= 5:
        kind, _version, length = reader.uint(1), reader.uint(2), reader.uint(2)
        if kind != _HANDSHAKE or length == 0:
            raise ValueError(f"a TLS record of type {kind} before the ClientHello")
        if length > reader.left:
            return None
        message += reader.take(length)
        if len(message) >= 4:
            if message[0] != _CLIENT_HELLO:
                raise ValueError(f"handshake message {message[0]}, not a ClientHello")
            size = int.from_bytes(message[1:4], "big")
            if size > _MAX_HELLO:
                raise ValueError(f"a ClientHello of {size} bytes")
            if len(message) >= 4 + size:
                return message[4 : 4 + size]
    if len(data) > _MAX_HELLO:
        raise ValueError("no ClientHello within 64 KiB")
    return None


def parse_client_hello(body: bytes) -> ClientHello:
    """The SNI and ALPN list of a ClientHello's body; ValueError when malformed."""
    reader = _Reader(body)
    reader.take(2 + 32)  # legacy version, random
    reader.take(reader.uint(1))  # session id
    reader.take(reader.uint(2))  # cipher suites
    reader.take(reader.uint(1))  # compression methods
    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    extensions = _Reader(reader.take(reader.uint(2))) if reader.left else _Reader(b"")
    while extensions.left:
        kind, data = extensions.uint(2), extensions.take(extensions.uint(2))
        if kind == _EXT_SERVER_NAME:
            server_name = _server_name(data)
        elif kind == _EXT_ALPN:
            alpn = _alpn_list(data)
    return ClientHello(server_name=server_name, alpn_protocols=alpn)


def _server_name(data: bytes) -> str | None:
    outer = _Reader(data)
    names = _Reader(outer.take(outer.uint(2)))
    while names.left:
        kind, name = names.uint(1), names.take(names.uint(2))
        if kind == 0:  # host_name
            return name.decode("ascii")
    return None


def _alpn_list(data: bytes) -> tuple[str, ...]:
    outer = _Reader(data)
    protocols = _Reader(outer.take(outer.uint(2)))
    offered: list[str] = []
    while protocols.left:
        name = protocols.take(protocols.uint(1))
        if not name:
            raise ValueError("an empty ALPN protocol name")
        offered.append(name.decode("ascii", errors="backslashreplace"))
    return tuple(offered)


# -- MQTT -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class MqttConnect:
    """A device's CONNECT as recorded: never its password, only whether one came,
    its length and SHA-256. The user name is left out of the repr, since a custom
    authorizer's user name carries a token."""

    protocol_name: str
    protocol_level: int  # 4: MQTT 3.1.1, 5: MQTT 5
    client_id: str
    username: str | None = field(repr=False)
    keepalive: int
    clean_start: bool
    password_present: bool
    password_length: int = 0
    password_sha256: str | None = field(default=None, repr=False)


def parse_connect(body: bytes) -> MqttConnect:
    """The fields of a CONNECT packet's body (3.1.1 or 5); ValueError when malformed."""
    reader = _Reader(body)
    name, level, flags, keepalive = reader.string(), reader.uint(1), reader.uint(1), reader.uint(2)
    if name != "MQTT" or level not in (4, 5) or flags & 0x01:
        raise ValueError(f"not an MQTT 3.1.1 or 5 CONNECT ({name!r}, level {level})")
    if level == 5:
        reader.take(reader.varint())  # properties
    client_id = reader.string()
    if flags & 0x04:  # will
        if level == 5:
            reader.take(reader.varint())
        reader.string()
        reader.take(reader.uint(2))
    username = reader.string() if flags & 0x80 else None
    password = reader.take(reader.uint(2)) if flags & 0x40 else None
    if reader.left:
        raise ValueError(f"{reader.left} bytes after the CONNECT's payload")
    return MqttConnect(
        protocol_name=name,
        protocol_level=level,
        client_id=client_id,
        username=username,
        keepalive=keepalive,
        clean_start=bool(flags & 0x02),
        password_present=password is not None,
        password_length=len(password or b""),
        password_sha256=None if password is None else hashlib.sha256(password).hexdigest(),
    )


def connack_packet(reason_code: int, protocol_level: int) -> bytes:
    """A CONNACK for a device speaking ``protocol_level`` (4 or 5).

    ``reason_code`` is an MQTT 5 reason code. MQTT 5 sends it as is, with empty
    properties. MQTT 3.1.1 has six return codes: 0x84 becomes 1 (unacceptable
    protocol version), 0x85 2 (identifier rejected), 0x86 4 (bad user name or
    password), 0x87 5 (not authorised), and any other failure 3 (server unavailable).
    """
    if protocol_level == 5:
        return encode_packet(0x20, bytes([0, reason_code, 0]))
    code = _V3_RETURN_CODES.get(reason_code, _V3_SERVER_UNAVAILABLE)
    return encode_packet(0x20, bytes([0, code]))


@dataclass(frozen=True, slots=True)
class ProbePublish:
    """A PUBLISH the device sent after its CONNECT was accepted."""

    topic: str
    qos: int
    payload: bytes


def _publish(flags: int, body: bytes, level: int) -> tuple[ProbePublish, int | None]:
    reader = _Reader(body)
    topic, qos = reader.string(), (flags >> 1) & 0x03
    if qos == 3:
        raise ValueError("a PUBLISH with QoS 3")
    packet_id = reader.uint(2) if qos else None
    if level == 5:
        reader.take(reader.varint())
    return ProbePublish(topic, qos, reader.take(reader.left)), packet_id


def _suback(body: bytes, level: int) -> bytes:
    reader = _Reader(body)
    packet_id = reader.take(2)
    if level == 5:
        reader.take(reader.varint())
    granted = bytearray()
    while reader.left:
        reader.string()
        granted.append(min(reader.uint(1) & 0x03, 1))  # this listener goes up to QoS 1
    if not granted:
        raise ValueError("a SUBSCRIBE without topic filters")
    properties = b"\x00" if level == 5 else b""
    return encode_packet(0x90, packet_id + properties + bytes(granted))


def _next_packet(buffer: bytes, limit: int) -> tuple[int, bytes, bytes] | None:
    """(command byte, body, what is left) of the first whole packet, or None."""
    length = 0
    for index in range(1, 5):
        if index >= len(buffer):
            return None
        byte = buffer[index]
        length |= (byte & 0x7F) << (7 * (index - 1))
        if not byte & 0x80:
            break
    else:
        raise ValueError("a remaining length longer than four bytes")
    if length > limit:
        raise ValueError(f"a packet of {length} bytes, over the limit of {limit}")
    start = index + 1
    if len(buffer) < start + length:
        return None
    return buffer[0], buffer[start : start + length], buffer[start + length :]


# -- the record -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeConnection:
    """What one connection showed; the listener replaces it as the connection goes on."""

    number: int
    peer: str
    sni: str | None = None
    alpn_offered: tuple[str, ...] = ()
    alpn_selected: str | None = None
    hello_error: str | None = None
    tls_version: str | None = None
    client_cert_cn: str | None = None
    tls_error: str | None = None
    connect: MqttConnect | None = None
    connack_code: int | None = None
    publishes: tuple[ProbePublish, ...] = ()
    pings: int = 0
    ended: str | None = None  # why the connection ended, once it has


# -- the listener -----------------------------------------------------------------------------


class TlsProbeListener(StartsInContext):
    """A loopback TLS server that records each connection's handshake and CONNECT.

    ``cert_file``/``key_file``: its server certificate (issue one for the hub's
    FQDN with :class:`~device_sdk.testbed.pki.CertificateAuthority`).
    ``client_ca_file``: ask for a client certificate issued by this CA; with
    ``require_client_certificate`` (the default) a device without one fails
    its handshake. ``alpn_protocols``: what the server may select, in its order
    of preference (empty: no ALPN answer). ``connack_codes``: the answers to the
    first CONNECTs, in order, as MQTT 5 reason codes; later ones are accepted.
    """

    def __init__(
        self,
        *,
        cert_file: str | Path,
        key_file: str | Path,
        host: str = "127.0.0.1",
        client_ca_file: str | Path | None = None,
        require_client_certificate: bool = True,
        alpn_protocols: Sequence[str] = ("x-amzn-mqtt-ca", "mqtt"),
        connack_codes: Sequence[int] = (),
        connection_timeout: float = 10.0,
        max_packet_size: int = 64 * 1024,
        max_connections: int = 8,
    ) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise TestbedError(f"a TLS probe listener listens on loopback only, not {host!r}")
        if any(not 0 <= code <= 0xFF for code in connack_codes):
            raise TestbedError(f"CONNACK reason codes are bytes, not {list(connack_codes)}")
        self.host = host
        self.port = 0
        self._cert = (str(cert_file), str(key_file))
        self._client_ca = None if client_ca_file is None else str(client_ca_file)
        self._require_cert = require_client_certificate
        self._alpn = list(alpn_protocols)
        self._codes = list(connack_codes)
        self._timeout = connection_timeout
        self._max_packet = max_packet_size
        self._max_connections = max_connections
        self._changed = threading.Condition()
        self._records: list[ProbeConnection] = []
        self._connects = 0
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        self._context(lambda _name: None)  # a bad certificate or CA fails here, not per device
        listener = socket.socket(address_family(self.host), socket.SOCK_STREAM)
        try:
            listener.bind((self.host, 0))
            listener.listen(16)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self._listener, self.port = listener, listener.getsockname()[1]
        accept = threading.Thread(target=self._accept, name=f"tls-probe-{self.port}", daemon=True)
        self._threads.append(accept)
        accept.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, end every connection and join every thread within ``timeout``."""
        self._stopping.set()
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._listener is not None:
            self._listener.close()
        alive = [thread.name for thread in self._threads if thread.is_alive()]
        if alive:
            raise TestbedError(f"TLS probe listener threads {alive} did not stop in {timeout} s")

    # -- what tests use ----------------------------------------------------------------------

    def connections(self) -> list[ProbeConnection]:
        """Every connection accepted so far, as recorded up to now."""
        with self._changed:
            return list(self._records)

    def wait_for(
        self, predicate: Callable[[list[ProbeConnection]], bool], timeout: float
    ) -> list[ProbeConnection]:
        """Wait until ``predicate(connections)`` holds; TestbedError after ``timeout``."""
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(list(self._records)), timeout):
                raise TestbedError(
                    f"TLS probe listener: not seen within {timeout} s; saw {self._records}"
                )
            return list(self._records)

    def wait_for_connects(self, count: int, timeout: float) -> list[ProbeConnection]:
        """The connections whose CONNECT was answered, once there are ``count`` of them."""
        records = self.wait_for(
            lambda seen: sum(r.connack_code is not None for r in seen) >= count, timeout
        )
        return [record for record in records if record.connack_code is not None]

    # -- serving -----------------------------------------------------------------------------

    def _update(self, number: int, **changes: object) -> None:
        with self._changed:
            record = self._records[number]
            self._records[number] = dataclasses.replace(record, **changes)  # type: ignore[arg-type]
            self._changed.notify_all()

    def _next_connack(self) -> int:
        with self._changed:
            index, self._connects = self._connects, self._connects + 1
        return self._codes[index] if index < len(self._codes) else 0

    def _context(self, on_server_name: Callable[[str | None], None]) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(*self._cert)
        if self._client_ca is not None:
            context.load_verify_locations(cafile=self._client_ca)
            context.verify_mode = ssl.CERT_REQUIRED if self._require_cert else ssl.CERT_OPTIONAL
        if self._alpn:
            context.set_alpn_protocols(self._alpn)

        def server_name(_tls: object, name: str | None, _context: ssl.SSLContext) -> None:
            on_server_name(name)  # returns None: the handshake goes on with this context

        context.sni_callback = server_name
        return context

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            readable, _w, _e = select.select([self._listener], [], [], _POLL)
            if not readable:
                continue
            try:
                sock, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                continue
            self._threads = [thread for thread in self._threads if thread.is_alive()]
            with self._changed:
                number = len(self._records)
                self._records.append(ProbeConnection(number=number, peer=str(peer[0])))
                self._changed.notify_all()
            if len(self._threads) > self._max_connections:  # the accept thread is one of them
                sock.close()
                self._update(number, ended="over max_connections")
                continue
            thread = threading.Thread(
                target=self._serve, args=(sock, number), name=f"tls-probe-{number}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket, number: int) -> None:
        why = "closed"
        try:
            with sock:
                sock.setblocking(False)
                _Session(self, sock, number).run()
        except _Ended as ended:
            why = str(ended)
        except (ssl.SSLError, OSError) as exc:
            why = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a bug here must not pass for the device's doing
            why = f"internal fault: {type(exc).__name__}: {exc}"
        self._update(number, ended=why)


class _Session:
    """One connection: TLS through memory BIOs, then just enough MQTT."""

    def __init__(self, listener: TlsProbeListener, sock: socket.socket, number: int) -> None:
        self._listener = listener
        self._sock = sock
        self._number = number
        self._deadline = time.monotonic() + listener._timeout
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        # A context of its own, so its SNI callback knows which connection it serves.
        context = listener._context(lambda name: listener._update(number, sni=name))
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._hello: bytes | None = b""  # raw bytes until the ClientHello is parsed
        self._level = 4

    def run(self) -> None:
        self._handshake()
        self._mqtt()

    # -- bytes -------------------------------------------------------------------------------

    def _left(self) -> float:
        left = self._deadline - time.monotonic()
        if self._listener._stopping.is_set():
            raise _Ended("the listener stopped")
        if left <= 0:
            raise _Ended("connection_timeout")
        return left

    def _recv(self, until: float | None = None) -> bytes:
        while True:
            if until is not None and time.monotonic() >= until:
                raise _Ended("drained")
            readable, _w, _e = select.select([self._sock], [], [], min(_POLL, self._left()))
            if readable:
                data = self._sock.recv(_CHUNK)
                if not data:
                    raise _Ended("closed by the device")
                return data

    def _flush(self) -> None:
        view = memoryview(self._outgoing.read())
        while view:
            _r, writable, _e = select.select([], [self._sock], [], min(_POLL, self._left()))
            if writable:
                view = view[self._sock.send(view) :]

    def _feed(self) -> None:
        data = self._recv()
        if self._hello is not None:
            self._note_hello(data)
        self._incoming.write(data)

    def _note_hello(self, data: bytes) -> None:
        assert self._hello is not None
        self._hello += data
        try:
            body = client_hello_body(self._hello)
            if body is None:
                return
            hello = parse_client_hello(body)
        except (ValueError, UnicodeDecodeError) as exc:
            self._listener._update(self._number, hello_error=str(exc))
        else:
            self._listener._update(self._number, alpn_offered=hello.alpn_protocols)
        self._hello = None

    # -- TLS ---------------------------------------------------------------------------------

    def _handshake(self) -> None:
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._feed()
            except ssl.SSLError as exc:
                self._flush()  # the alert, so the device learns why
                self._listener._update(self._number, tls_error=exc.reason or str(exc))
                raise _Ended(f"TLS handshake failed: {exc.reason or exc}") from None
        self._flush()
        self._listener._update(
            self._number,
            alpn_selected=self._tls.selected_alpn_protocol(),
            tls_version=self._tls.version(),
            client_cert_cn=_common_name(self._tls.getpeercert()),
        )

    def _read(self) -> bytes:
        while True:
            try:
                data = self._tls.read(_CHUNK)
            except ssl.SSLWantReadError:
                self._flush()
                self._feed()
                continue
            except ssl.SSLZeroReturnError:
                raise _Ended("TLS closed by the device") from None
            if not data:
                raise _Ended("closed by the device")
            return data

    def _write(self, data: bytes) -> None:
        self._tls.write(data)
        self._flush()

    # -- MQTT --------------------------------------------------------------------------------

    def _packets(self) -> _PacketStream:
        return _PacketStream(self._read, self._listener._max_packet)

    def _mqtt(self) -> None:
        stream = self._packets()
        command, body = stream.next()
        if command != 0x10:
            raise _Ended(f"the first packet was {command:#04x}, not CONNECT")
        try:
            connect = parse_connect(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _Ended(f"malformed CONNECT: {exc}") from None
        self._level = connect.protocol_level
        code = self._listener._next_connack()
        self._write(connack_packet(code, self._level))
        self._listener._update(self._number, connect=connect, connack_code=code)
        if code >= 0x80:
            self._hang_up()
            raise _Ended(f"refused with {code:#04x}")
        while True:
            self._answer(*stream.next())

    def _answer(self, command: int, body: bytes) -> None:
        kind = command >> 4
        try:
            if kind == 3:  # PUBLISH
                self._on_publish(command & 0x0F, body)
            elif kind == 8:  # SUBSCRIBE
                self._write(_suback(body, self._level))
            elif kind == 12:  # PINGREQ
                self._write(encode_packet(0xD0))
                with self._listener._changed:
                    pings = self._listener._records[self._number].pings
                self._listener._update(self._number, pings=pings + 1)
            elif kind == 14:  # DISCONNECT
                raise _Ended("DISCONNECT")
            else:
                raise _Ended(f"packet type {kind}, which this listener does not take")
        except (ValueError, UnicodeDecodeError) as exc:
            raise _Ended(f"malformed packet {command:#04x}: {exc}") from None

    def _on_publish(self, flags: int, body: bytes) -> None:
        publish, packet_id = _publish(flags, body, self._level)
        if publish.qos == 2:
            raise _Ended("a QoS 2 PUBLISH, which this listener does not take")
        with self._listener._changed:
            seen = self._listener._records[self._number].publishes
        self._listener._update(self._number, publishes=(*seen, publish))
        if packet_id is not None:
            self._write(encode_packet(0x40, packet_id.to_bytes(2, "big")))

    def _hang_up(self) -> None:
        """Let a refused device read its CONNACK before the socket closes (bounded)."""
        self._sock.shutdown(socket.SHUT_WR)
        until = time.monotonic() + _DRAIN
        while True:  # bounded: _recv ends at ``until`` at the latest
            try:
                self._recv(until)
            except _Ended:
                return


class _PacketStream:
    """Whole MQTT packets from a byte source, each bounded before it is buffered."""

    def __init__(self, read: Callable[[], bytes], limit: int) -> None:
        self._read = read
        self._limit = limit
        self._buffer = b""

    def next(self) -> tuple[int, bytes]:
        while True:
            try:
                packet = _next_packet(self._buffer, self._limit)
            except ValueError as exc:
                raise _Ended(str(exc)) from None
            if packet is not None:
                command, body, self._buffer = packet
                return command, body
            self._buffer += self._read()


def _common_name(certificate: object) -> str | None:
    if not isinstance(certificate, dict):
        return None
    for rdn in certificate.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None

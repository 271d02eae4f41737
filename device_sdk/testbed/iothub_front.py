"""An Azure-IoT-Hub-like MQTT front door on loopback, in front of a real mosquitto.

Azure IoT Hub is not a general broker: it takes MQTT 3.1.1 over TLS only, a
client id that is the device id, a user name ``{hub host}/{device id}/?api-version=...``,
and as password a SAS token signed for ``{hub host}/devices/{device id}`` (or no
password with an X.509 client certificate), and it drops the link the moment
that token expires. :class:`IotHubFront` does exactly that much, then pipes the
accepted connection to mosquitto, so a device's whole path (fresh tokens, renewal
before expiry, the per-hub user name) runs against real TLS and a real broker::

    ca = CertificateAuthority.create()
    files = ca.issue_server_certificate(["hub-a.example.test"]).write_to(tmp_path)
    with MosquittoBroker(BrokerSpec(name="upstream")) as broker, IotHubFront(
        hub_host="hub-a.example.test",
        upstream=(broker.host, broker.port),
        device_keys={"dev-1": base64_key},
        server_cert_file=files.cert_file,
        server_key_file=files.key_file,
    ) as front:
        ...                                 # dial 127.0.0.1:front.port, SNI hub-a.example.test
        front.disconnect_device("dev-1")    # the operator's hand
        assert front.accepted[0].auth == "sas"

CONNACK return codes (MQTT 3.1.1 section 3.2.2.3). Azure's device SDKs log
``CONNACK ... RETURN_CODE: 0x5`` ("Not Authorized") for a bad, expired or
foreign SAS token and for a device the hub does not know (its 401003
IoTHubUnauthorized); the C SDK treats 4 and 2 as bad credentials and 3 as a
disabled device. No public document says what IoT Hub answers a malformed user
name, so the front uses the code the MQTT standard gives malformed credentials:

====  ===========================================================================
code  when
====  ===========================================================================
0     accepted (mosquitto's own CONNACK, passed through)
1     protocol level other than 4 (MQTT 5, MQTT 3.1): IoT Hub speaks 3.1.1 only,
      and [MQTT-3.1.2-2] says to answer 1 and close
2     empty client id: IoT Hub needs the device id there
3     the front cannot reach mosquitto ("server unavailable")
4     no user name, or not ``{this hub}/{client id}/?api-version=...``
5     SAS token unknown device, not a SAS token, signed for another resource,
      bad signature, expired, or naming a shared access policy (``skn``, whose
      key the front does not hold); no password and no client certificate; a
      certificate whose subject CN is not the client id
====  ===========================================================================

Anything that is not a well-formed CONNECT (garbage, another packet type, a
remaining length above ``max_connect_bytes``, a CONNECT not complete within
``connect_timeout``) and a failed TLS handshake (including a client certificate
from a CA the front does not trust: the handshake itself refuses it) close that
connection without a CONNACK, as 3.1.1 says a server does on a protocol
violation; each is recorded in :attr:`IotHubFront.refused` with
``return_code=None``. The listener keeps serving.

While connected, a SAS device is dropped when its token's expiry passes: both
connections close, with no DISCONNECT (3.1.1 has none from a server), as IoT
Hub does. Key changes (:meth:`IotHubFront.set_device_key`,
:meth:`IotHubFront.remove_device`) apply to later CONNECTs only, as on IoT Hub,
where a live connection lasts until its token expires;
:meth:`IotHubFront.disconnect_device` drops live ones now.

One daemon thread runs an asyncio loop that owns every socket; other threads
reach it only through bounded calls. No key and no token is ever logged, kept
in a record or shown in a repr.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import logging
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn, Self, TypeVar

from device_sdk.adapters.mqtt_rules import varint
from device_sdk.errors import ConfigError, TestbedError
from device_sdk.identity.sas import decode_key, parse_sas_token, verify_sas_token
from device_sdk.testbed.lifecycle import StartsInContext
from device_sdk.testbed.ports import address_family, bind_socket

__all__ = [
    "AcceptedConnection",
    "ExpiredDrop",
    "IotHubFront",
    "RefusedConnection",
]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

# CONNACK return codes, MQTT 3.1.1 section 3.2.2.3.
UNACCEPTABLE_PROTOCOL = 1
IDENTIFIER_REJECTED = 2
SERVER_UNAVAILABLE = 3
BAD_USER_NAME_OR_PASSWORD = 4
NOT_AUTHORIZED = 5

_CONNECT = 0x10
_MQTT_311 = 4
_MQTT_5 = 5
_USERNAME_FLAG, _PASSWORD_FLAG, _WILL_FLAG, _RESERVED_FLAG = 0x80, 0x40, 0x04, 0x01
_CHUNK = 65536
_START_TIMEOUT = 5.0
_STOP_TIMEOUT = 5.0
_CALL_TIMEOUT = 5.0
_CLOSE_TIMEOUT = 1.0  # a peer that never answers TLS close_notify is aborted after this
_USERNAME = re.compile(r"(?P<host>[^/]+)/(?P<device>[^/]+)/\?(?P<query>.*)", re.DOTALL)


@dataclass(frozen=True, slots=True, kw_only=True)
class AcceptedConnection:
    """A CONNECT the front let through to mosquitto.

    ``expires_at`` is the SAS token's expiry in Unix seconds (None for X.509);
    ``at`` is the wall-clock time of the decision.
    """

    device_id: str
    auth: Literal["sas", "x509"]
    expires_at: float | None
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RefusedConnection:
    """A connection the front refused: with a CONNACK ``return_code``, or closed (None).

    ``device_id`` is the CONNECT's client id, None when no CONNECT was read.
    """

    device_id: str | None
    return_code: int | None
    reason: str
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ExpiredDrop:
    """A connected SAS device dropped because its token expired (``expires_at``) at ``at``."""

    device_id: str
    expires_at: float
    at: float


# -- the CONNECT packet, sans I/O ----------------------------------------------------------


class _Malformed(Exception):
    """The first packet is not a well-formed MQTT 3.1.1 CONNECT (the text says why)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _Connect:
    level: int
    flags: int
    keepalive: int
    client_id: str
    will: bytes  # will topic and message exactly as sent (empty without a will)
    username: str | None
    password: bytes | None = field(repr=False)


class _Body:
    """A cursor over a CONNECT body that raises _Malformed instead of reading past it."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, size: int) -> bytes:
        if self.at + size > len(self.data):
            raise _Malformed("CONNECT ends early")
        chunk = self.data[self.at : self.at + size]
        self.at += size
        return chunk

    def binary(self) -> bytes:
        return self.take(int.from_bytes(self.take(2), "big"))

    def text(self, what: str) -> str:
        try:
            return self.binary().decode("utf-8")
        except UnicodeDecodeError:
            raise _Malformed(f"{what} is not UTF-8") from None

    def skip_varint(self) -> int:
        value = 0
        for shift in range(0, 28, 7):
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
        raise _Malformed("bad variable byte integer")


def _protocol_level(body: bytes) -> int:
    cursor = _Body(body)
    name = cursor.text("protocol name")
    level = cursor.take(1)[0]
    if name not in ("MQTT", "MQIsdp"):
        raise _Malformed(f"protocol name {name[:16]!r}")
    return level


def _client_id_of_v5(body: bytes) -> str | None:
    """The client id of an MQTT 5 CONNECT, for the record only; None when unreadable."""
    cursor = _Body(body)
    try:
        cursor.binary()
        cursor.take(4)  # level, flags, keep alive
        cursor.take(cursor.skip_varint())  # properties
        return cursor.text("client id")
    except _Malformed:
        return None


def _parse_connect(body: bytes) -> _Connect:
    """A 3.1.1 CONNECT body (level already checked to be 4); _Malformed otherwise."""
    cursor = _Body(body)
    cursor.binary()
    level, flags = cursor.take(1)[0], cursor.take(1)[0]
    if flags & _RESERVED_FLAG or (flags & _PASSWORD_FLAG and not flags & _USERNAME_FLAG):
        raise _Malformed(f"CONNECT flags {flags:#04x} break MQTT-3.1.2-3 or MQTT-3.1.2-22")
    keepalive = int.from_bytes(cursor.take(2), "big")
    client_id = cursor.text("client id")
    will_start = cursor.at
    if flags & _WILL_FLAG:
        cursor.text("will topic")
        cursor.binary()
    will = body[will_start : cursor.at]
    username = cursor.text("user name") if flags & _USERNAME_FLAG else None
    password = cursor.binary() if flags & _PASSWORD_FLAG else None
    if cursor.at != len(body):
        raise _Malformed("bytes after the CONNECT payload")
    return _Connect(
        level=level,
        flags=flags,
        keepalive=keepalive,
        client_id=client_id,
        will=will,
        username=username,
        password=password,
    )


def _anonymous_connect(connect: _Connect) -> bytes:
    """The CONNECT mosquitto gets: the same session, will and keep alive, no credentials.

    mosquitto allows anonymous clients here; the front has already checked who this is.
    """
    flags = connect.flags & ~(_USERNAME_FLAG | _PASSWORD_FLAG)
    name = b"\x00\x04MQTT"
    client_id = connect.client_id.encode("utf-8")
    body = (
        name
        + bytes([_MQTT_311, flags])
        + connect.keepalive.to_bytes(2, "big")
        + len(client_id).to_bytes(2, "big")
        + client_id
        + connect.will
    )
    return bytes([_CONNECT]) + varint(len(body)) + body


def _connack(code: int) -> bytes:
    return bytes([0x20, 0x02, 0x00, code])


# -- who may connect, sans I/O -------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Verdict:
    code: int  # 0: let through
    reason: str
    auth: Literal["sas", "x509"] = "sas"
    expires_at: float | None = None


def _check_username(connect: _Connect, hub_host: str) -> str | None:
    """Why the user name is not ``{hub_host}/{client id}/?api-version=...``, or None."""
    if connect.username is None:
        return "no user name"
    match = _USERNAME.fullmatch(connect.username)
    if match is None:
        return "user name is not {hub host}/{device id}/?api-version=..."
    if match["host"].rstrip(".").lower() != hub_host:
        return "user name names another hub"
    if match["device"] != connect.client_id:
        return "user name names another device than the client id"
    if not urllib.parse.parse_qs(match["query"]).get("api-version"):
        return "user name has no api-version"
    return None


def _authenticate(
    connect: _Connect, *, hub_host: str, key: bytes | None, peer_cn: str | None, now: float
) -> _Verdict:
    if not connect.client_id:
        return _Verdict(code=IDENTIFIER_REJECTED, reason="empty client id")
    problem = _check_username(connect, hub_host)
    if problem is not None:
        return _Verdict(code=BAD_USER_NAME_OR_PASSWORD, reason=problem)
    if connect.password is not None:
        return _check_sas(connect.client_id, connect.password, hub_host=hub_host, key=key, now=now)
    if peer_cn is None:
        return _Verdict(code=NOT_AUTHORIZED, reason="no password and no client certificate")
    if peer_cn != connect.client_id:
        return _Verdict(code=NOT_AUTHORIZED, reason="certificate CN is not the client id")
    return _Verdict(code=0, reason="", auth="x509")


def _check_sas(
    device_id: str, password: bytes, *, hub_host: str, key: bytes | None, now: float
) -> _Verdict:
    if key is None:
        return _Verdict(code=NOT_AUTHORIZED, reason="unknown device")
    try:
        token = password.decode("utf-8")
    except UnicodeDecodeError:
        return _Verdict(code=NOT_AUTHORIZED, reason="not a SAS token")
    resource = f"{hub_host}/devices/{device_id}"
    ok, why = verify_sas_token(token, key, resource=resource, now=now)
    parsed = parse_sas_token(token)
    if not ok or parsed is None:
        return _Verdict(code=NOT_AUTHORIZED, reason=why or "not a SAS token")
    if parsed.policy is not None:
        # A policy token is signed with that policy's key, which the front does not
        # hold; one that verified with the device key was still not meant for it.
        return _Verdict(code=NOT_AUTHORIZED, reason="shared access policy tokens are not taken")
    return _Verdict(code=0, reason="", auth="sas", expires_at=float(parsed.expiry))


def _common_name(ssl_object: ssl.SSLObject | None) -> str | None:
    """The subject CN of the client's certificate, verified by the handshake; None without."""
    certificate = ssl_object.getpeercert() if ssl_object is not None else None
    # getpeercert() gives the subject as RDNs, each a tuple of (name, value) pairs.
    subject: Any = (certificate or {}).get("subject", ())
    for rdn in subject:
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return None


# -- one connection ------------------------------------------------------------------------


class _Session:
    """An accepted connection: the device's stream and mosquitto's, until either ends."""

    def __init__(self, device_id: str, client: asyncio.StreamWriter) -> None:
        self.device_id = device_id
        self.client = client
        self.ended = asyncio.Event()
        self.expiry_timer: asyncio.TimerHandle | None = None


class _Closed(Exception):
    """This connection is over (already recorded)."""


# -- the front -----------------------------------------------------------------------------


class IotHubFront(StartsInContext):
    """A TLS MQTT listener that authenticates like Azure IoT Hub and pipes to mosquitto.

    ``hub_host`` is the FQDN it answers as (the server certificate's SAN must name
    it; clients dial ``listen_host:port`` with SNI ``hub_host``). ``device_keys``
    maps device ids to their base64 SAS keys. ``client_ca_files`` lets X.509
    devices in: a client certificate issued by one of these CAs whose subject CN
    is the client id needs no password. ``connect_timeout`` bounds the TLS
    handshake and the arrival of the whole CONNECT; ``max_connect_bytes`` bounds
    its size. ``clock`` gives wall-clock Unix seconds for token expiry.
    See the module docstring for the CONNACK codes and an example.
    """

    def __init__(
        self,
        *,
        hub_host: str,
        upstream: tuple[str, int],
        device_keys: Mapping[str, str],
        server_cert_file: Path | str,
        server_key_file: Path | str,
        client_ca_files: Sequence[Path | str] = (),
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        connect_timeout: float = 10.0,
        max_connect_bytes: int = 65536,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.hub_host = _check_hub_host(hub_host)
        self.upstream = _check_upstream(upstream)
        self.listen_host = _check_listen_host(listen_host)
        if not 0 <= listen_port <= 65535:
            raise ConfigError("listen_port", listen_port, "0 (pick a free port) to 65535")
        if not 0 < connect_timeout <= 300:
            raise ConfigError("connect_timeout", connect_timeout, "seconds above 0, at most 300")
        if not 64 <= max_connect_bytes <= 1 << 20:
            raise ConfigError("max_connect_bytes", max_connect_bytes, "64 to 1048576 bytes")
        self._port = listen_port
        self._connect_timeout = float(connect_timeout)
        self._max_connect_bytes = max_connect_bytes
        self._clock = clock
        self._keys = {device: _checked_key(device, key) for device, key in device_keys.items()}
        self._ssl_context = _server_context(server_cert_file, server_key_file, client_ca_files)
        self._changed = threading.Condition(threading.RLock())
        self._accepted: list[AcceptedConnection] = []
        self._refused: list[RefusedConnection] = []
        self._expired: list[ExpiredDrop] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._sessions: set[_Session] = set()  # touched on the loop thread only
        self._tasks: set[asyncio.Task[None]] = set()  # likewise

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port devices dial (known once started when created with ``listen_port=0``)."""
        return self._port

    def start(self) -> Self:
        """Listen and start serving on a daemon thread; returns once the listener is open."""
        if self._thread is not None:
            raise TestbedError(f"IoT Hub front {self.hub_host} is already started")
        listener = bind_socket(self.listen_host, self._port, socket.SOCK_STREAM)
        listener.listen(64)
        listener.setblocking(False)
        self._port = listener.getsockname()[1]
        loop = asyncio.new_event_loop()
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._loop = loop
        self._thread = threading.Thread(
            target=self._run, args=(loop, listener, ready), name=f"iothub-front-{self._port}"
        )
        self._thread.daemon = True
        self._thread.start()
        try:
            ready.result(_START_TIMEOUT)
        except BaseException as exc:
            self.stop()
            raise TestbedError(f"IoT Hub front {self.hub_host} did not start: {exc}") from exc
        return self

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """Close the listener and every connection; waits at most ``timeout``. Idempotent."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop has already ended
            loop.call_soon_threadsafe(self._request_stop)
        thread.join(timeout)
        if thread.is_alive():
            raise TestbedError(f"IoT Hub front thread did not stop within {timeout:g} s")
        self._thread = self._loop = None

    def _is_started(self) -> bool:
        return self._thread is not None

    # -- operator controls (any thread) --------------------------------------------------

    def set_device_key(self, device_id: str, key: str) -> None:
        """Register ``device_id`` or rotate its key; later CONNECTs are checked with it."""
        decoded = _checked_key(device_id, key)
        with self._changed:
            self._keys[device_id] = decoded

    def remove_device(self, device_id: str) -> None:
        """Forget ``device_id``: its later SAS CONNECTs are refused (5). Live links stay."""
        with self._changed:
            self._keys.pop(device_id, None)

    def disconnect_device(self, device_id: str) -> int:
        """Drop every live connection of ``device_id`` now; how many there were."""
        return self._call(self._disconnect(device_id), default=0)

    # -- observations (any thread) -------------------------------------------------------

    @property
    def accepted(self) -> list[AcceptedConnection]:
        """Every CONNECT let through, oldest first (a copy)."""
        with self._changed:
            return list(self._accepted)

    @property
    def refused(self) -> list[RefusedConnection]:
        """Every connection refused or closed before a CONNECT was accepted, oldest first."""
        with self._changed:
            return list(self._refused)

    @property
    def expired_drops(self) -> list[ExpiredDrop]:
        """Every connection dropped at its token's expiry, oldest first."""
        with self._changed:
            return list(self._expired)

    @property
    def open_connections(self) -> int:
        """Accepted connections still piped to mosquitto."""
        with self._changed:
            return len(self._sessions)

    def wait_until(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Wait (at most ``timeout``) until ``condition()`` holds after some record changed."""
        with self._changed:
            return self._changed.wait_for(condition, timeout)

    def __repr__(self) -> str:
        return (
            f"IotHubFront(hub_host={self.hub_host!r}, listen={self.listen_host}:{self._port}, "
            f"upstream={self.upstream[0]}:{self.upstream[1]}, devices={len(self._keys)})"
        )

    # -- the loop thread -----------------------------------------------------------------

    def _run(
        self,
        loop: asyncio.AbstractEventLoop,
        listener: socket.socket,
        ready: concurrent.futures.Future[None],
    ) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main(listener, ready))
        except BaseException as exc:  # reported to start(), which is waiting on `ready`
            if not ready.done():
                ready.set_exception(exc)
            _log.exception("IoT Hub front %s ended with an error", self.hub_host)
        finally:
            listener.close()
            _end_tasks(loop)
            loop.close()

    async def _main(self, listener: socket.socket, ready: concurrent.futures.Future[None]) -> None:
        self._stopping = asyncio.Event()
        accepting = asyncio.create_task(self._accept_all(listener))
        ready.set_result(None)
        try:
            await self._stopping.wait()
        finally:
            accepting.cancel()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=_STOP_TIMEOUT / 2)

    async def _accept_all(self, listener: socket.socket) -> None:
        # Sockets are accepted bare and wrapped in TLS here, not by start_server(ssl=...),
        # so a failed handshake reaches this code (and the record) instead of only the
        # loop's exception handler.
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _peer = await loop.sock_accept(listener)
            except OSError as exc:  # out of descriptors, say: the listener stays
                _log.warning("IoT Hub front %s: accept failed: %s", self.hub_host, exc)
                await asyncio.sleep(0.05)
                continue
            task = loop.create_task(self._connection(sock))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _request_stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    def _call(self, coroutine: Coroutine[Any, Any, _T], *, default: _T) -> _T:
        """Run ``coroutine`` on the loop thread and wait for it (bounded)."""
        loop = self._loop
        if loop is None:
            coroutine.close()
            return default
        future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        try:
            return future.result(_CALL_TIMEOUT)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise TestbedError("the IoT Hub front did not respond within 5 s") from exc

    async def _disconnect(self, device_id: str) -> int:
        sessions = [s for s in self._sessions if s.device_id == device_id]
        for session in sessions:
            session.ended.set()
        return len(sessions)

    # -- serving one connection ------------------------------------------------------------

    async def _connection(self, sock: socket.socket) -> None:
        deadline = asyncio.get_running_loop().time() + self._connect_timeout
        reader, writer = await self._open_tls(sock)
        if writer is None:
            return
        try:
            await self._serve(reader, writer, deadline)
        except _Closed:
            pass
        except asyncio.CancelledError:
            writer.transport.abort()  # stopping: no goodbye, at once
            raise
        except Exception:
            _log.exception("IoT Hub front %s: a connection failed unexpectedly", self.hub_host)
        finally:
            await _close(writer)

    async def _open_tls(
        self, sock: socket.socket
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter | None]:
        """The device's TLS stream; no writer (and a record) when the handshake failed."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_CHUNK, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            transport, _ = await asyncio.wait_for(
                loop.connect_accepted_socket(
                    lambda: protocol,
                    sock,
                    ssl=self._ssl_context,
                    ssl_handshake_timeout=self._connect_timeout,
                ),
                self._connect_timeout + _CLOSE_TIMEOUT,
            )
        except (OSError, TimeoutError, EOFError) as exc:  # ssl.SSLError is an OSError
            sock.close()
            self._record_refusal(None, None, f"TLS handshake failed: {_why(exc)}")
            return reader, None
        except BaseException:
            sock.close()
            raise
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, deadline: float
    ) -> None:
        first = await self._first_packet(reader, deadline)
        connect = await self._read_connect(first, writer)
        with self._changed:
            key = self._keys.get(connect.client_id)
        peer_cn = _common_name(writer.get_extra_info("ssl_object"))
        verdict = _authenticate(
            connect, hub_host=self.hub_host, key=key, peer_cn=peer_cn, now=self._clock()
        )
        if verdict.code:
            await self._refuse(writer, connect.client_id, verdict.code, verdict.reason)
        upstream = await self._dial_upstream(writer, connect.client_id)
        await self._pipe(_Session(connect.client_id, writer), reader, upstream, connect, verdict)

    async def _first_packet(self, reader: asyncio.StreamReader, deadline: float) -> bytes:
        left = deadline - asyncio.get_running_loop().time()
        try:
            return await asyncio.wait_for(self._read_packet(reader), max(0.0, left))
        except TimeoutError:
            reason = f"no complete CONNECT within {self._connect_timeout:g} s"
        except asyncio.IncompleteReadError:
            reason = "closed before a complete CONNECT"
        except (_Malformed, OSError) as exc:
            reason = _why(exc)
        self._record_refusal(None, None, reason)
        raise _Closed

    async def _read_packet(self, reader: asyncio.StreamReader) -> bytes:
        header = (await reader.readexactly(1))[0]
        if header != _CONNECT:
            raise _Malformed(f"first packet has header {header:#04x}, not CONNECT")
        length = 0
        for shift in range(0, 28, 7):
            byte = (await reader.readexactly(1))[0]
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
        else:
            raise _Malformed("bad remaining length")
        if length > self._max_connect_bytes:
            # Refused before reading: the bound holds before anything is allocated.
            raise _Malformed(f"CONNECT of {length} bytes, above {self._max_connect_bytes}")
        return await reader.readexactly(length)

    async def _read_connect(self, body: bytes, writer: asyncio.StreamWriter) -> _Connect:
        try:
            level = _protocol_level(body)
            if level != _MQTT_311:
                device = _client_id_of_v5(body) if level == _MQTT_5 else None
                reason = f"protocol level {level}; IoT Hub takes 4 (MQTT 3.1.1) only"
                await self._refuse(writer, device, UNACCEPTABLE_PROTOCOL, reason)
            return _parse_connect(body)
        except _Malformed as exc:
            self._record_refusal(None, None, str(exc))
            raise _Closed from None

    async def _refuse(
        self, writer: asyncio.StreamWriter, device_id: str | None, code: int, reason: str
    ) -> NoReturn:
        self._record_refusal(device_id, code, reason)
        writer.write(_connack(code))
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.drain(), _CLOSE_TIMEOUT)
        raise _Closed

    async def _dial_upstream(
        self, writer: asyncio.StreamWriter, device_id: str
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(*self.upstream, limit=_CHUNK), self._connect_timeout
            )
        except (OSError, TimeoutError) as exc:
            reason = f"mosquitto unreachable: {_why(exc)}"
            await self._refuse(writer, device_id, SERVER_UNAVAILABLE, reason)

    async def _pipe(
        self,
        session: _Session,
        reader: asyncio.StreamReader,
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        connect: _Connect,
        verdict: _Verdict,
    ) -> None:
        up_reader, up_writer = upstream
        up_writer.write(_anonymous_connect(connect))
        tasks = [
            asyncio.create_task(_copy(reader, up_writer)),
            asyncio.create_task(_copy(up_reader, session.client)),
            asyncio.create_task(session.ended.wait()),
        ]
        try:
            self._admit(session, verdict)
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Everything that must happen is synchronous and comes first: a stop() may
            # cancel this task again at the await below.
            self._forget(session)
            up_writer.close()  # plain TCP: close() flushes what is queued, then closes
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=_CLOSE_TIMEOUT)

    def _admit(self, session: _Session, verdict: _Verdict) -> None:
        accepted = AcceptedConnection(
            device_id=session.device_id,
            auth=verdict.auth,
            expires_at=verdict.expires_at,
            at=self._clock(),
        )
        with self._changed:
            self._sessions.add(session)
            self._accepted.append(accepted)
            self._changed.notify_all()
        _log.info(
            "IoT Hub front %s: %s connected (%s)", self.hub_host, session.device_id, verdict.auth
        )
        if verdict.expires_at is not None:
            delay = max(0.0, verdict.expires_at - self._clock())
            session.expiry_timer = asyncio.get_running_loop().call_later(
                delay, self._expire, session, verdict.expires_at
            )

    def _expire(self, session: _Session, expires_at: float) -> None:
        if session.ended.is_set():
            return
        session.ended.set()
        drop = ExpiredDrop(device_id=session.device_id, expires_at=expires_at, at=self._clock())
        with self._changed:
            self._expired.append(drop)
            self._changed.notify_all()
        _log.info("IoT Hub front %s: %s token expired", self.hub_host, session.device_id)

    def _forget(self, session: _Session) -> None:
        if session.expiry_timer is not None:
            session.expiry_timer.cancel()
        with self._changed:
            self._sessions.discard(session)
            self._changed.notify_all()

    def _record_refusal(self, device_id: str | None, code: int | None, reason: str) -> None:
        refused = RefusedConnection(
            device_id=device_id, return_code=code, reason=reason, at=self._clock()
        )
        with self._changed:
            self._refused.append(refused)
            self._changed.notify_all()
        _log.info("IoT Hub front %s refused %s: %s (%s)", self.hub_host, device_id, code, reason)


def _end_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is left (a connection accepted as the front stopped) and let it close."""
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.wait(pending, timeout=_STOP_TIMEOUT / 2))
    loop.run_until_complete(loop.shutdown_asyncgens())


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Move bytes until the reader ends; a reset on either side ends it too."""
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close, flushing what is queued (a CONNACK); abort a peer that will not finish."""
    if writer.transport.is_closing():
        # Already closed by the peer, by an abort or by a failed TLS handshake (after
        # which the stream never hears of the end): nothing is left to flush.
        writer.transport.abort()
        return
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), _CLOSE_TIMEOUT)
    except (Exception, asyncio.CancelledError):  # the peer's reset, TLS alert or silence
        writer.transport.abort()


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or type(exc).__name__
    return str(exc) or type(exc).__name__


# -- validation at the boundary ------------------------------------------------------------


def _check_hub_host(host: object) -> str:
    allowed = "the hub's FQDN: ASCII, no spaces, '/' or ':'"
    if not isinstance(host, str):
        raise ConfigError("hub_host", type(host).__name__, allowed)
    cleaned = host.rstrip(".").lower()
    if not cleaned or not cleaned.isascii() or re.search(r"[\s/:?]", cleaned):
        raise ConfigError("hub_host", host, allowed)
    return cleaned


def _check_upstream(upstream: object) -> tuple[str, int]:
    allowed = "(IP literal, port 1 to 65535) of mosquitto"
    if not isinstance(upstream, tuple) or len(upstream) != 2:
        raise ConfigError("upstream", upstream, allowed)
    host, port = upstream
    if not isinstance(host, str) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError("upstream", upstream, allowed)
    try:
        address_family(host)
    except TestbedError:
        raise ConfigError("upstream", upstream, allowed) from None
    return host, port


def _check_listen_host(host: str) -> str:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError("listen_host", host, "a loopback IP literal (127.0.0.0/8 or ::1)")
    return host


def _checked_key(device_id: object, key: object) -> bytes:
    if not isinstance(device_id, str) or not device_id or "/" in device_id:
        raise ConfigError("device_keys", device_id, "device ids: non-empty text without '/'")
    if not isinstance(key, str):
        raise ConfigError(f"device_keys[{device_id!r}]", "<hidden>", "the key as base64 text")
    try:
        return decode_key(key)
    except ConfigError:
        pass  # raised below, outside the handler: nothing chains to the key
    raise ConfigError(f"device_keys[{device_id!r}]", "<hidden>", "the key as base64 text")


def _server_context(
    cert_file: Path | str, key_file: Path | str, client_ca_files: Sequence[Path | str]
) -> ssl.SSLContext:
    if isinstance(client_ca_files, str | Path):
        raise ConfigError("client_ca_files", client_ca_files, "a list of CA files, not one path")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
        for ca_file in client_ca_files:
            context.load_verify_locations(cafile=ca_file)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise TestbedError(f"IoT Hub front cannot load its TLS files: {_why(exc)}") from exc
    if client_ca_files:
        # Asked, not required: SAS devices present no certificate. One that is
        # presented must verify, or the handshake fails.
        context.verify_mode = ssl.CERT_OPTIONAL
    return context

"""The testbed's IoT-Hub-like front: real TLS on loopback, a real mosquitto behind it.

Refusals are read as raw bytes, so each test sees the exact CONNACK return code a
device gets; the accepted paths use paho-mqtt, as a device would. Every wait is
bounded by a socket timeout or a deadline.
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from device_sdk.adapters.mqtt_rules import varint
from device_sdk.errors import ConfigError
from device_sdk.identity.sas import decode_key, sas_token
from device_sdk.testbed.broker import BrokerSpec, MosquittoBroker, find_mosquitto
from device_sdk.testbed.iothub_front import IotHubFront
from device_sdk.testbed.pki import CertificateAuthority
from device_sdk.testbed.ports import pick_free_port

pytestmark = pytest.mark.integration

HUB = "hub-a.example.test"
KEY = base64.b64encode(b"k" * 32).decode()
OTHER_KEY = base64.b64encode(b"o" * 32).decode()
TIMEOUT = 5.0


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("iothub-front-pki")
    server_ca = CertificateAuthority.create(common_name="hub server CA")
    device_ca = CertificateAuthority.create(common_name="device CA")
    stranger_ca = CertificateAuthority.create(common_name="another CA")
    files = server_ca.issue_server_certificate([HUB]).write_to(folder)
    return {
        "folder": folder,
        "server_ca": server_ca,
        "device_ca": device_ca,
        "stranger_ca": stranger_ca,
        "server_files": files,
        "device_ca_file": device_ca.write_to(folder, filename="device-ca.crt"),
    }


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    if find_mosquitto() is None:
        message = "mosquitto is not installed (Debian: apt-get install mosquitto)"
        if os.environ.get("DEVICE_SDK_REQUIRE_MOSQUITTO") == "1":
            pytest.fail(message)
        pytest.skip(message)
    work_dir = tmp_path_factory.mktemp("iothub-upstream")
    with MosquittoBroker(BrokerSpec(name="iothub-upstream"), work_dir=work_dir) as started:
        yield started


@pytest.fixture
def make_front(
    pki: dict[str, Any], broker: MosquittoBroker
) -> Iterator[Callable[..., IotHubFront]]:
    fronts: list[IotHubFront] = []

    def make(**options: Any) -> IotHubFront:
        options.setdefault("hub_host", HUB)
        options.setdefault("upstream", (broker.host, broker.port))
        options.setdefault("device_keys", {"dev-1": KEY})
        options.setdefault("client_ca_files", [pki["device_ca_file"]])
        front = IotHubFront(
            server_cert_file=pki["server_files"].cert_file,
            server_key_file=pki["server_files"].key_file,
            **options,
        )
        fronts.append(front)
        return front.start()

    yield make
    for front in fronts:
        front.stop()


@pytest.fixture
def front(make_front: Callable[..., IotHubFront]) -> IotHubFront:
    return make_front()


# -- a device's side, byte by byte ------------------------------------------------------------


class FqdnContext(ssl.SSLContext):
    """A client context that dials an IP literal but sends SNI and checks the name ``HUB``."""

    def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> ssl.SSLSocket:  # type: ignore[override]
        kwargs["server_hostname"] = HUB
        return super().wrap_socket(sock, *args, **kwargs)


def client_context(pki: dict[str, Any], cert_stem: str | None = None) -> ssl.SSLContext:
    context = FqdnContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=pki["server_ca"].cert_pem.decode())
    if cert_stem is not None:
        folder: Path = pki["folder"]
        context.load_cert_chain(folder / f"{cert_stem}.crt", folder / f"{cert_stem}.key")
    return context


def device_certificate(pki: dict[str, Any], ca_name: str, common_name: str) -> str:
    stem = f"{ca_name}-{common_name}"
    pki[ca_name].issue_client_certificate(common_name).write_to(pki["folder"], stem=stem)
    return stem


def username(device: str, host: str = HUB) -> str:
    return f"{host}/{device}/?api-version=2021-04-12"


def token(device: str, key: str = KEY, *, ttl: float = 3600, resource: str | None = None) -> str:
    expiry = int(time.time() + ttl)
    return sas_token(resource or f"{HUB}/devices/{device}", decode_key(key), expiry)


def _utf8(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def connect_packet(
    client_id: str, user: str | None = None, password: str | None = None, *, level: int = 4
) -> bytes:
    flags = 0x02 | (0x80 if user is not None else 0) | (0x40 if password is not None else 0)
    body = _utf8("MQTT") + bytes([level, flags]) + (30).to_bytes(2, "big")
    if level == 5:
        body += varint(0)  # no properties
    body += _utf8(client_id)
    body += _utf8(user) if user is not None else b""
    body += _utf8(password) if password is not None else b""
    return bytes([0x10]) + varint(len(body)) + body


def tls_socket(front: IotHubFront, context: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", front.port), timeout=TIMEOUT)
    return context.wrap_socket(raw)


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))  # bounded by the socket's timeout
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def connack_code(sock: socket.socket) -> int:
    header, length, _flags, code = read_exactly(sock, 4)
    assert (header, length) == (0x20, 2)
    return code


def assert_closed_by_front(sock: socket.socket) -> None:
    """The front closed the connection (EOF, reset or a TLS alert), within the timeout."""
    try:
        data = sock.recv(64)
    except TimeoutError:
        pytest.fail("the front kept the connection open")
    except OSError:
        return  # a reset or a TLS alert: closed
    assert data == b"", f"expected the end, got {data!r}"


def raw_connect(front: IotHubFront, context: ssl.SSLContext, packet: bytes) -> int:
    """Send one CONNECT and return the CONNACK code (closing the socket)."""
    with tls_socket(front, context) as sock:
        sock.sendall(packet)
        code = connack_code(sock)
        if code:
            assert_closed_by_front(sock)
        return code


def refused_in_handshake(front: IotHubFront, context: ssl.SSLContext, packet: bytes) -> bool:
    """The TLS handshake, or (TLS 1.3) the first read after it, fails: no CONNACK."""
    try:
        with tls_socket(front, context) as sock:
            sock.sendall(packet)
            return sock.recv(4) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def front_still_serves(front: IotHubFront, pki: dict[str, Any]) -> None:
    packet = connect_packet("dev-1", username("dev-1"), token("dev-1"))
    assert raw_connect(front, client_context(pki), packet) == 0


class PahoDevice:
    """A paho-mqtt 3.1.1 device over TLS to the front, without paho's own reconnects."""

    def __init__(self, front: IotHubFront, pki: dict[str, Any], device: str, password: str):
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.codes: list[int] = []
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=device,
            protocol=paho.MQTTv311,
            reconnect_on_failure=False,
        )
        self.client.username_pw_set(username(device), password)
        self.client.tls_set_context(client_context(pki))
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_args: self.disconnected.set()
        self.client.connect("127.0.0.1", front.port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, _c: Any, _u: Any, _f: Any, code: Any, _p: Any) -> None:
        self.codes.append(code.value)
        self.connected.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Subscriber:
    """A plain paho client on mosquitto itself, behind the front."""

    def __init__(self, broker: MosquittoBroker, topic: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.arrived = threading.Event()
        subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="behind-the-front")
        self.client.on_subscribe = lambda *_args: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        self.client.subscribe(topic, qos=1)
        assert subscribed.wait(TIMEOUT), "mosquitto did not acknowledge the subscription"

    def _on_message(self, _c: Any, _u: Any, message: paho.MQTTMessage) -> None:
        self.messages.append((message.topic, message.payload))
        self.arrived.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- accepted ---------------------------------------------------------------------------------


def test_a_sas_device_publishes_through_the_front_to_mosquitto(
    front: IotHubFront, pki: dict[str, Any], broker: MosquittoBroker
) -> None:
    subscriber = Subscriber(broker, "devices/dev-1/messages/events/#")
    password = token("dev-1")
    device = PahoDevice(front, pki, "dev-1", password)
    try:
        assert device.connected.wait(TIMEOUT) and device.codes == [0]
        info = device.client.publish("devices/dev-1/messages/events/", b"21.5", qos=1)
        info.wait_for_publish(TIMEOUT)
        assert info.is_published()
        assert subscriber.arrived.wait(TIMEOUT)
    finally:
        device.close()
        subscriber.close()
    assert subscriber.messages == [("devices/dev-1/messages/events/", b"21.5")]
    [accepted] = front.accepted
    assert (accepted.device_id, accepted.auth) == ("dev-1", "sas")
    assert accepted.expires_at == float(password.rsplit("se=", 1)[1])
    assert front.refused == []
    # mosquitto (anonymous) got the CONNECT without the token
    seen = [c for c in broker.clients_connected() if c.client_id == "dev-1"]
    assert seen and seen[-1].username is None
    assert password not in repr(front.accepted) and KEY not in repr(front)


# -- refused, with the documented codes --------------------------------------------------------

_PAST = -60.0

REFUSALS = {
    "wrong signature": (connect_packet("dev-1", username("dev-1"), token("dev-1", OTHER_KEY)), 5),
    "wrong resource": (
        connect_packet("dev-1", username("dev-1"), token("dev-1", resource=f"{HUB}/devices/x")),
        5,
    ),
    "expired token": (connect_packet("dev-1", username("dev-1"), token("dev-1", ttl=_PAST)), 5),
    "unknown device": (connect_packet("ghost", username("ghost"), token("ghost")), 5),
    "policy token": (
        connect_packet(
            "dev-1",
            username("dev-1"),
            sas_token(f"{HUB}/devices/dev-1", decode_key(KEY), int(time.time()) + 3600, policy="p"),
        ),
        5,
    ),
    "not a SAS token": (connect_packet("dev-1", username("dev-1"), "hunter2"), 5),
    "no password, no certificate": (connect_packet("dev-1", username("dev-1")), 5),
    "no user name": (connect_packet("dev-1"), 4),
    "user name format": (connect_packet("dev-1", "dev-1", token("dev-1")), 4),
    "user name of another hub": (
        connect_packet("dev-1", username("dev-1", "hub-b.example.test"), token("dev-1")),
        4,
    ),
    "user name of another device": (connect_packet("dev-1", username("dev-2"), token("dev-1")), 4),
    "user name without api-version": (connect_packet("dev-1", f"{HUB}/dev-1/?", token("dev-1")), 4),
    "empty client id": (connect_packet("", username(""), token("dev-1")), 2),
    "MQTT 5": (connect_packet("dev-1", username("dev-1"), token("dev-1"), level=5), 1),
    "MQTT 3.1 level": (connect_packet("dev-1", username("dev-1"), token("dev-1"), level=3), 1),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_each_refusal_answers_its_documented_code_and_is_recorded(
    case: str, front: IotHubFront, pki: dict[str, Any]
) -> None:
    packet, expected = REFUSALS[case]
    assert raw_connect(front, client_context(pki), packet) == expected
    [refused] = front.refused
    assert refused.return_code == expected
    assert front.accepted == []
    if case not in ("empty client id", "MQTT 3.1 level", "unknown device"):
        assert refused.device_id == "dev-1"


def test_the_host_in_the_user_name_is_compared_without_regard_to_case(
    front: IotHubFront, pki: dict[str, Any]
) -> None:
    packet = connect_packet("dev-1", username("dev-1", HUB.upper()), token("dev-1"))
    assert raw_connect(front, client_context(pki), packet) == 0


def test_a_front_that_cannot_reach_mosquitto_answers_server_unavailable(
    make_front: Callable[..., IotHubFront], pki: dict[str, Any]
) -> None:
    front = make_front(upstream=("127.0.0.1", pick_free_port()))
    packet = connect_packet("dev-1", username("dev-1"), token("dev-1"))
    assert raw_connect(front, client_context(pki), packet) == 3
    assert [r.return_code for r in front.refused] == [3]


def test_operator_controls_apply_to_later_connects(front: IotHubFront, pki: dict[str, Any]) -> None:
    context = client_context(pki)
    front.remove_device("dev-1")
    assert (
        raw_connect(front, context, connect_packet("dev-1", username("dev-1"), token("dev-1"))) == 5
    )
    front.set_device_key("dev-1", OTHER_KEY)
    old = connect_packet("dev-1", username("dev-1"), token("dev-1", KEY))
    new = connect_packet("dev-1", username("dev-1"), token("dev-1", OTHER_KEY))
    assert raw_connect(front, context, old) == 5
    assert raw_connect(front, context, new) == 0
    assert [(r.reason, r.return_code) for r in front.refused] == [
        ("unknown device", 5),
        ("bad signature", 5),
    ]
    with pytest.raises(ConfigError) as caught:
        front.set_device_key("dev-1", "not base64!")
    assert "not base64" not in str(caught.value)


def test_disconnect_device_drops_its_live_connection(
    front: IotHubFront, pki: dict[str, Any]
) -> None:
    with tls_socket(front, client_context(pki)) as sock:
        sock.sendall(connect_packet("dev-1", username("dev-1"), token("dev-1")))
        assert connack_code(sock) == 0
        assert front.open_connections == 1
        assert front.disconnect_device("dev-1") == 1
        assert_closed_by_front(sock)
    assert front.wait_until(lambda: front.open_connections == 0, TIMEOUT)
    assert front.disconnect_device("dev-1") == 0


# -- token expiry -----------------------------------------------------------------------------


def test_a_device_is_dropped_when_its_token_expires(
    front: IotHubFront, pki: dict[str, Any]
) -> None:
    password = token("dev-1", ttl=3)  # whole seconds: 2 to 3 s left, time enough to connect
    expiry = float(password.rsplit("se=", 1)[1])
    device = PahoDevice(front, pki, "dev-1", password)
    try:
        assert device.connected.wait(TIMEOUT) and device.codes == [0]
        assert front.expired_drops == []  # connected and not yet expired
        assert device.disconnected.wait(expiry - time.time() + TIMEOUT), "never dropped"
    finally:
        device.close()
    assert front.wait_until(lambda: len(front.expired_drops) == 1, TIMEOUT)
    [drop] = front.expired_drops
    assert (drop.device_id, drop.expires_at) == ("dev-1", expiry)
    assert drop.at >= expiry
    assert front.wait_until(lambda: front.open_connections == 0, TIMEOUT)


# -- X.509 ------------------------------------------------------------------------------------


def test_an_x509_device_with_a_trusted_certificate_needs_no_password(
    front: IotHubFront, pki: dict[str, Any], broker: MosquittoBroker
) -> None:
    stem = device_certificate(pki, "device_ca", "cert-dev")
    context = client_context(pki, stem)
    assert raw_connect(front, context, connect_packet("cert-dev", username("cert-dev"))) == 0
    [accepted] = front.accepted
    assert (accepted.device_id, accepted.auth, accepted.expires_at) == ("cert-dev", "x509", None)
    assert any(c.client_id == "cert-dev" for c in broker.clients_connected())
    # the certificate names one device: another client id is not authorised
    assert raw_connect(front, context, connect_packet("dev-9", username("dev-9"))) == 5
    assert front.refused[-1].reason == "certificate CN is not the client id"


def test_a_certificate_from_another_ca_is_refused_in_the_handshake(
    front: IotHubFront, pki: dict[str, Any]
) -> None:
    stem = device_certificate(pki, "stranger_ca", "cert-dev")
    context = client_context(pki, stem)
    assert refused_in_handshake(front, context, connect_packet("cert-dev", username("cert-dev")))
    assert front.wait_until(lambda: len(front.refused) == 1, TIMEOUT)
    [refused] = front.refused
    assert refused.return_code is None and refused.reason.startswith("TLS handshake failed")
    assert front.accepted == []
    front_still_serves(front, pki)


# -- hostile input closes one connection, never the front --------------------------------------


def test_plain_garbage_instead_of_tls_closes_that_connection_only(
    front: IotHubFront, pki: dict[str, Any]
) -> None:
    with socket.create_connection(("127.0.0.1", front.port), timeout=TIMEOUT) as sock:
        sock.sendall(os.urandom(512))
        assert_closed_by_front(sock)
    assert front.wait_until(lambda: len(front.refused) == 1, TIMEOUT)
    front_still_serves(front, pki)


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(b"\xff" * 64, id="garbage"),
        pytest.param(b"\x30\x05hello", id="publish first"),
        pytest.param(b"\x10" + varint(10 * 1024 * 1024) + b"\x00" * 16, id="oversized"),
        pytest.param(b"\x10\xff\xff\xff\xff\xff", id="bad remaining length"),
        pytest.param(b"\x10\x04\x00\x02MQ", id="malformed"),
    ],
)
def test_a_bad_first_packet_closes_that_connection_only(
    first: bytes, front: IotHubFront, pki: dict[str, Any]
) -> None:
    with tls_socket(front, client_context(pki)) as sock:
        sock.sendall(first)
        assert_closed_by_front(sock)
    assert front.wait_until(lambda: len(front.refused) == 1, TIMEOUT)
    assert front.refused[0].return_code is None
    front_still_serves(front, pki)


def test_a_slow_connect_is_cut_off_at_the_deadline(
    make_front: Callable[..., IotHubFront], pki: dict[str, Any]
) -> None:
    front = make_front(connect_timeout=0.5)
    packet = connect_packet("dev-1", username("dev-1"), token("dev-1"))
    with tls_socket(front, client_context(pki)) as sock:
        sock.sendall(packet[:5])  # and then nothing more
        assert_closed_by_front(sock)  # the socket's timeout (5 s) is ten deadlines
    [refused] = front.refused
    assert "no complete CONNECT" in refused.reason
    front_still_serves(front, pki)


def test_stop_closes_live_connections_and_is_idempotent(
    make_front: Callable[..., IotHubFront], pki: dict[str, Any]
) -> None:
    front = make_front()
    with tls_socket(front, client_context(pki)) as sock:
        sock.sendall(connect_packet("dev-1", username("dev-1"), token("dev-1")))
        assert connack_code(sock) == 0
        front.stop()
        assert_closed_by_front(sock)
    front.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", front.port), timeout=TIMEOUT).close()

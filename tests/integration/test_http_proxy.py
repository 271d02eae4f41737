"""HTTP CONNECT through a real tinyproxy: MQTT over TLS to mosquitto, the concierge fetch
and a DPS registration, with and without Basic authentication.

tinyproxy resolves target names with the system resolver, and the testbed's
names (``*.device-sdk.test``) live only in the testbed's own DNS server, not
in /etc/hosts. So the tunnels here either name an IP literal (the raw MQTT
case) or set ``resolve_locally=True`` (the concierge and DPS cases): the SDK
resolves the name fresh with its own resolver, asks the proxy to CONNECT to the
address, and TLS still sends SNI for and verifies the *name*, which is what a
device behind a proxy that cannot resolve internal names does.
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from device_sdk.adapters.dps_http import register
from device_sdk.adapters.http_connect import open_tunnel
from device_sdk.adapters.resolver import FreshResolver
from device_sdk.concierge import ConciergeFetcher
from device_sdk.config import DnsSettings
from device_sdk.errors import ConciergeUnavailable, ProvisioningUnavailable, ProxyRefused
from device_sdk.provisioning import DpsSettings
from device_sdk.testbed import (
    BrokerSpec,
    BrokerTls,
    CertificateAuthority,
    DnsServer,
    HttpProxy,
    MosquittoBroker,
)
from device_sdk.testbed.dps_service import DpsService, Enrollment

pytestmark = pytest.mark.integration

DOMAIN = "proxy.device-sdk.test"
PASSWORD = "Pw0rdSecret9"
# MQTT 3.1.1 CONNECT, clean session, keepalive 30, client id "px".
MQTT_CONNECT = bytes([0x10, 14, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 30, 0, 2]) + b"px"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[CertificateAuthority, Path]:
    ca = CertificateAuthority.create()
    directory = tmp_path_factory.mktemp("pki")
    return ca, ca.write_to(directory)


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


def resolver_for(dns: DnsServer) -> FreshResolver:
    settings = DnsSettings(nameservers=(dns.host,), port=dns.port, timeout=0.5, lifetime=1.0)
    return FreshResolver(settings)


def test_mqtt_over_tls_to_mosquitto_through_tinyproxy(
    pki: tuple[CertificateAuthority, Path], tmp_path: Path
) -> None:
    ca, ca_file = pki
    leaf = ca.issue_server_certificate([f"hub.{DOMAIN}"]).write_to(tmp_path, stem="hub")
    spec = BrokerSpec(
        name="proxied", tls=BrokerTls(cert_file=leaf.cert_file, key_file=leaf.key_file)
    )
    with MosquittoBroker(spec) as broker, HttpProxy() as proxy:
        assert broker.tls_port is not None
        deadline = time.monotonic() + 5.0
        raw = open_tunnel(
            proxy.settings(), proxy.host, "127.0.0.1", broker.tls_port, deadline=deadline
        )
        raw.setblocking(True)
        raw.settimeout(5.0)
        context = ssl.create_default_context(cafile=str(ca_file))
        with context.wrap_socket(raw, server_hostname=f"hub.{DOMAIN}") as tls:
            tls.sendall(MQTT_CONNECT)
            assert tls.recv(4) == bytes([0x20, 2, 0, 0])  # CONNACK, accepted
        assert proxy.connects_seen() == 1
        # The broker saw the proxy's connection, not the device's: one, from loopback.
        assert len(broker.connection_attempts()) == 1


class TlsHttpServer:
    """Answers every HTTPS request on 127.0.0.1 with ``body``, a thread per connection."""

    def __init__(self, context: ssl.SSLContext, body: bytes) -> None:
        self._context = context
        self._body = body
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self.served = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> TlsHttpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self._listener.close()

    def _serve(self) -> None:
        for _ in range(10_000):  # bounded: 0.2 s accept timeouts until stopped
            if self._stop.is_set():
                return
            try:
                conn, _peer = self._listener.accept()
            except TimeoutError:
                continue
            with conn:
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(2.0)
        try:
            with self._context.wrap_socket(conn, server_side=True) as tls:
                request = b""
                for _ in range(100):
                    if b"\r\n\r\n" in request:
                        break
                    request += tls.recv(4096)
                head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(self._body)
                tls.sendall(head + self._body)
                self.served += 1
        except (OSError, ssl.SSLError):
            pass


@pytest.fixture
def concierge(
    pki: tuple[CertificateAuthority, Path], tmp_path: Path, dns: DnsServer
) -> Iterator[TlsHttpServer]:
    ca, _ca_file = pki
    leaf = ca.issue_server_certificate([f"concierge.{DOMAIN}"]).write_to(tmp_path, stem="c")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(leaf.cert_file, leaf.key_file)
    dns.set_address(f"concierge.{DOMAIN}", ["127.0.0.1"], ttl=1)
    with TlsHttpServer(context, b'{"ok":1}') as server:
        yield server


def fetcher(
    server: TlsHttpServer, ca_file: Path, dns: DnsServer, proxy: HttpProxy, **overrides: object
) -> ConciergeFetcher:
    url = f"https://concierge.{DOMAIN}:{server.port}/v1/endpoint"
    settings = proxy.settings(resolve_locally=True, **overrides)
    return ConciergeFetcher(
        url, timeout=3.0, ca_file=str(ca_file), resolver=resolver_for(dns), proxy=settings
    )


def test_the_concierge_fetch_goes_through_tinyproxy_with_basic_auth(
    concierge: TlsHttpServer, pki: tuple[CertificateAuthority, Path], dns: DnsServer
) -> None:
    _ca, ca_file = pki
    with HttpProxy(username="gateway", password=PASSWORD) as proxy:
        assert fetcher(concierge, ca_file, dns, proxy).fetch() == b'{"ok":1}'
        assert proxy.connects_seen() == 1
        assert dns.queries(f"concierge.{DOMAIN}", "A")  # resolved by the SDK, fresh
        wrong = fetcher(concierge, ca_file, dns, proxy, password="WrongPassword1")
        with pytest.raises(ConciergeUnavailable) as caught:
            wrong.fetch()
        refused = caught.value.__cause__
        assert isinstance(refused, ProxyRefused)
        assert refused.status in (401, 407)  # tinyproxy 1.11 answers a CONNECT's 401
        assert "gateway" in str(refused) and "authentication" in str(caught.value)
        assert "WrongPassword1" not in str(caught.value) + repr(refused)
        assert concierge.served == 1  # the refused tunnel never reached the concierge


def test_no_proxy_sends_the_fetch_straight_to_the_concierge(
    concierge: TlsHttpServer, pki: tuple[CertificateAuthority, Path], dns: DnsServer
) -> None:
    _ca, ca_file = pki
    with HttpProxy() as proxy:
        direct = fetcher(concierge, ca_file, dns, proxy, no_proxy=(f".{DOMAIN}",))
        assert direct.fetch() == b'{"ok":1}'
        proxied = fetcher(concierge, ca_file, dns, proxy)
        assert proxied.fetch() == b'{"ok":1}'
        assert proxy.connects_seen() == 1  # only the second one
    assert concierge.served == 2


def test_a_dps_registration_through_tinyproxy(
    pki: tuple[CertificateAuthority, Path], dns: DnsServer
) -> None:
    ca, ca_file = pki
    key = base64.b64encode(os.urandom(32)).decode()
    hub = f"hub.{DOMAIN}"
    enrollment = Enrollment(registration_id="dev-px", hub_fqdn=hub, sas_key=key)
    dps_name = f"dps.{DOMAIN}"
    dns.set_address(dps_name, ["127.0.0.1"], ttl=1)
    with (
        DpsService(ca=ca, id_scope="0ne0PX", enrollments=[enrollment], server_name=dps_name) as dps,
        HttpProxy(username="gateway", password=PASSWORD) as proxy,
    ):
        settings = DpsSettings(
            id_scope="0ne0PX",
            registration_id="dev-px",
            endpoint=dps_name,
            port=dps.port,
            ca_file=str(ca_file),
            sas_key=key,
            timeout=5.0,
            poll_interval=0.05,
        )
        good = proxy.settings(resolve_locally=True)
        deadline = time.monotonic() + 5.0
        assignment = register(settings, proxy=good, deadline=deadline, resolver=resolver_for(dns))
        assert assignment.hub_fqdn == hub
        # The register PUT and at least one poll: each request its own tunnel.
        assert proxy.connects_seen() >= 2
        bad = proxy.settings(resolve_locally=True, password="WrongPassword1")
        with pytest.raises(ProvisioningUnavailable) as caught:
            register(
                settings, proxy=bad, deadline=time.monotonic() + 5.0, resolver=resolver_for(dns)
            )
        assert isinstance(caught.value.__cause__, ProxyRefused)
        assert "WrongPassword1" not in str(caught.value)

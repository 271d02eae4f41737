"""The low-level testbed parts, each against real processes and real sockets on loopback.

Every wait here is bounded by a socket timeout or a deadline; every broker is
stopped by the PID it was started with (the fixtures close them all).
"""

from __future__ import annotations

import base64
import datetime as dt
import shutil
import socket
import ssl
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import paho.mqtt.client as paho
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from device_sdk.errors import ConfigError, TestbedError
from device_sdk.testbed import broker as broker_module
from device_sdk.testbed.broker import (
    BrokerSpec,
    BrokerTls,
    MosquittoBroker,
    find_mosquitto,
    mosquitto_password_hash,
)
from device_sdk.testbed.dns_server import DnsServer, SrvTarget
from device_sdk.testbed.pki import CertificateAuthority
from device_sdk.testbed.ports import bind_socket, pick_free_port, pick_free_ports
from device_sdk.testbed.proxy import FaultProxy, ProxyMode, ProxySpec

pytestmark = pytest.mark.integration

needs_mosquitto = pytest.mark.skipif(
    find_mosquitto() is None,
    reason="the mosquitto binary is not installed (Debian: apt-get install mosquitto)",
)

FQDN = "hub-a.device-sdk.test"
HUB_A = "127.0.0.2"
HUB_B = "127.0.0.3"
SILENCE = 0.3  # how long "nothing arrives" is watched for


# -- raw MQTT 3.1.1, so hang and TLS tests control every byte -------------------------------


def _utf8(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def connect_packet(
    client_id: str, username: str | None = None, password: str | None = None
) -> bytes:
    flags = 0x02  # clean session
    payload = _utf8(client_id)
    if username is not None:
        flags |= 0x80
        payload += _utf8(username)
    if password is not None:
        flags |= 0x40
        payload += _utf8(password)
    body = _utf8("MQTT") + bytes([4, flags]) + (30).to_bytes(2, "big") + payload
    assert len(body) < 128  # one-byte remaining length keeps the encoder trivial
    return bytes([0x10, len(body)]) + body


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))  # bounded by the socket's timeout
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def connack_code(sock: socket.socket) -> int:
    header, _length, _flags, code = read_exactly(sock, 4)
    assert header == 0x20
    return code


def mqtt_handshake(sock: socket.socket, client_id: str = "raw") -> int:
    sock.sendall(connect_packet(client_id))
    return connack_code(sock)


def paho_connect(
    host: str, port: int, *, username: str | None = None, password: str | None = None
) -> ReasonCode:
    """Connect with paho-mqtt 2.x (MQTT 5) and return the CONNACK reason code."""
    results: list[ReasonCode] = []
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id="testbed-probe",
        protocol=paho.MQTTv5,
    )
    client.on_connect = lambda _c, _u, _f, code, _p: results.append(code)
    if username is not None:
        client.username_pw_set(username, password)
    try:
        client.connect(host, port, keepalive=10)
        deadline = time.monotonic() + 3.0
        while not results and time.monotonic() < deadline:
            client.loop(timeout=0.05)
    finally:
        client.disconnect()
    assert results, f"no CONNACK from {host}:{port}"
    return results[0]


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create(common_name="testbed parts CA")


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator[Callable[..., MosquittoBroker]]:
    brokers: list[MosquittoBroker] = []

    def make(*, start: bool = True, **spec: object) -> MosquittoBroker:
        name = str(spec.pop("name", f"hub{len(brokers)}"))
        broker = MosquittoBroker(BrokerSpec(name=name, **spec), work_dir=tmp_path / name)  # type: ignore[arg-type]
        brokers.append(broker)
        if start:
            broker.start()
        return broker

    yield make
    for broker in brokers:
        broker.close()


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


# -- ports ------------------------------------------------------------------------------


def test_picked_ports_are_distinct_and_free_on_every_host() -> None:
    ports = pick_free_ports(3, [HUB_A, HUB_B], udp=True)

    assert len(set(ports)) == 3
    for port in ports:
        for host in (HUB_A, HUB_B):
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                bind_socket(host, port, kind).close()


def test_testbed_hosts_must_be_ip_literals() -> None:
    with pytest.raises(TestbedError, match="IP literals"):
        pick_free_port(["localhost"])


# -- pki --------------------------------------------------------------------------------


def test_ca_certificate_is_a_constrained_short_lived_ca(ca: CertificateAuthority) -> None:
    cert = ca.certificate
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value

    assert basic.critical and basic.value.ca and basic.value.path_length == 0
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    now = dt.datetime.now(dt.UTC)
    assert cert.not_valid_before_utc <= now - dt.timedelta(minutes=59)
    assert cert.not_valid_after_utc <= now + dt.timedelta(days=2, minutes=1)


def test_server_certificate_names_the_fqdn_for_server_auth(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    server = ca.issue_server_certificate([FQDN + "."], ["127.0.0.2"])
    cert = server.certificate
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value

    assert san.get_values_for_type(x509.DNSName) == [FQDN]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.2"]
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.issuer == ca.certificate.subject
    files = server.write_to(tmp_path, stem="hub-a")
    assert stat.S_IMODE(files.key_file.stat().st_mode) == 0o600
    assert files.cert_file.read_bytes() == server.cert_pem
    assert ca.write_to(tmp_path).read_bytes() == ca.cert_pem


def test_server_certificate_verifies_for_its_fqdn_only(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    files = ca.issue_server_certificate([FQDN]).write_to(tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(files.cert_file, files.key_file)

    handshake_in_memory(ca.client_ssl_context(), server_context, FQDN)
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        handshake_in_memory(ca.client_ssl_context(), server_context, "hub-b.device-sdk.test")
    other_ca = CertificateAuthority.create()
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        handshake_in_memory(other_ca.client_ssl_context(), server_context, FQDN)


def handshake_in_memory(
    client_context: ssl.SSLContext, server_context: ssl.SSLContext, server_hostname: str
) -> None:
    """Run a TLS handshake through memory BIOs: real OpenSSL, no sockets."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_out, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context.wrap_bio(to_client, client_out, server_hostname=server_hostname)
    server = server_context.wrap_bio(to_server, server_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):  # TLS 1.3 needs 2 round trips; 10 bounds a broken peer
        for name, side in (("client", client), ("server", server)):
            try:
                side.do_handshake()
                done[name] = True
            except ssl.SSLWantReadError:
                pass
        to_server.write(client_out.read())
        to_client.write(server_out.read())
        if all(done.values()):
            return
    raise AssertionError("TLS handshake did not finish")


def test_certificates_refuse_bad_names(ca: CertificateAuthority) -> None:
    with pytest.raises(ConfigError, match="dns_names"):
        ca.issue_server_certificate([])
    with pytest.raises(ConfigError, match="not a string"):
        ca.issue_server_certificate(FQDN)
    with pytest.raises(ConfigError, match="ip_addresses"):
        ca.issue_server_certificate([FQDN], ["not-an-ip"])


# -- broker -----------------------------------------------------------------------------


@needs_mosquitto
def test_broker_accepts_mqtt_and_logs_each_connection(
    make_broker: Callable[..., MosquittoBroker],
) -> None:
    broker = make_broker(host=HUB_A)

    code = paho_connect(broker.host, broker.port)

    assert not code.is_failure
    assert broker.is_running and broker.pid is not None
    (attempt,) = broker.connection_attempts()  # the readiness probes are not counted
    assert attempt.listener_port == broker.port
    (client,) = broker.clients_connected()
    assert (client.client_id, client.protocol_level) == ("testbed-probe", 5)
    assert (client.peer_host, client.peer_port) == (attempt.peer_host, attempt.peer_port)


@needs_mosquitto
def test_kill_refuses_connections_and_restart_reuses_the_ports(
    make_broker: Callable[..., MosquittoBroker],
) -> None:
    broker = make_broker(host=HUB_A)
    port, pid = broker.port, broker.pid

    broker.kill()

    assert not broker.is_running and broker.pid is None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((HUB_A, port), timeout=1).close()
    broker.restart()
    assert (broker.port, broker.is_running) == (port, True) and broker.pid != pid
    with socket.create_connection((HUB_A, port), timeout=1) as sock:
        sock.settimeout(2)
        assert mqtt_handshake(sock) == 0
    assert len(broker.connection_attempts()) == 1  # the log survives restarts; probes excluded


@needs_mosquitto
def test_hung_broker_completes_tcp_handshakes_but_answers_nothing_until_resumed(
    make_broker: Callable[..., MosquittoBroker],
) -> None:
    broker = make_broker(host=HUB_A)
    with socket.create_connection((HUB_A, broker.port), timeout=1) as before:
        before.settimeout(2)
        assert mqtt_handshake(before, "before") == 0

        broker.hang()

        assert broker.is_hung and broker.is_running
        with socket.create_connection((HUB_A, broker.port), timeout=1) as during:
            during.sendall(connect_packet("during"))
            during.settimeout(SILENCE)
            with pytest.raises(TimeoutError):
                during.recv(4)
            before.settimeout(SILENCE)
            before.sendall(b"\xc0\x00")  # PINGREQ
            with pytest.raises(TimeoutError):
                before.recv(2)
            assert len(broker.connection_attempts()) == 1  # not accepted yet, so not logged

            broker.resume()

            during.settimeout(2)
            before.settimeout(2)
            assert connack_code(during) == 0
            assert read_exactly(before, 2) == b"\xd0\x00"  # the PINGRESP, late
    assert len(broker.connection_attempts()) == 2


@needs_mosquitto
def test_stop_is_prompt_for_a_hung_broker_and_idempotent(
    make_broker: Callable[..., MosquittoBroker],
) -> None:
    broker = make_broker(host=HUB_A, stop_timeout=3.0)
    broker.hang()

    started = time.monotonic()
    broker.stop()

    # SIGCONT lets it act on SIGTERM at once instead of waiting out stop_timeout.
    assert time.monotonic() - started < 1.5
    assert not broker.is_running
    broker.stop()
    broker.kill()
    with pytest.raises(TestbedError, match="not running"):
        broker.hang()


@needs_mosquitto
def test_two_brokers_share_one_port_on_two_loopback_addresses(
    make_broker: Callable[..., MosquittoBroker],
) -> None:
    port = pick_free_port([HUB_A, HUB_B])
    hub_a = make_broker(name="a", host=HUB_A, port=port)
    hub_b = make_broker(name="b", host=HUB_B, port=port)

    for _ in range(2):
        with socket.create_connection((HUB_B, port), timeout=1) as sock:
            sock.settimeout(2)
            assert mqtt_handshake(sock) == 0

    assert hub_a.port == hub_b.port == port
    assert hub_a.connection_attempts() == []
    assert len(hub_b.connection_attempts()) == 2


@needs_mosquitto
def test_tls_listener_authenticates_the_fqdn_while_the_client_dials_the_ip(
    make_broker: Callable[..., MosquittoBroker], ca: CertificateAuthority, tmp_path: Path
) -> None:
    files = ca.issue_server_certificate([FQDN]).write_to(tmp_path)
    tls = BrokerTls(cert_file=files.cert_file, key_file=files.key_file)
    broker = make_broker(host=HUB_A, tls=tls)
    assert broker.tls_port is not None and broker.tls_port != broker.port
    context = ca.client_ssl_context()

    with (
        socket.create_connection((HUB_A, broker.tls_port), timeout=2) as raw,
        context.wrap_socket(raw, server_hostname=FQDN) as tls_sock,
    ):
        assert mqtt_handshake(tls_sock, "over-tls") == 0
    with (
        socket.create_connection((HUB_A, broker.tls_port), timeout=2) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        context.wrap_socket(raw, server_hostname="hub-b.device-sdk.test").close()

    # The refused handshake may fail inside mosquitto's accept, which logs no ports.
    first, second = broker.connection_attempts()
    assert first.listener_port == broker.tls_port and first.tls_error is None
    assert second.listener_port in (broker.tls_port, None)


@needs_mosquitto
def test_password_file_refuses_a_wrong_password_with_a_connack(
    make_broker: Callable[..., MosquittoBroker],
) -> None:
    broker = make_broker(users={"alice": "s3cret"})

    refused = paho_connect(broker.host, broker.port, username="alice", password="wrong")
    anonymous = paho_connect(broker.host, broker.port)
    accepted = paho_connect(broker.host, broker.port, username="alice", password="s3cret")

    # mosquitto 2.0 answers a bad password with "Not authorized" (0x87), not 0x86.
    assert refused.is_failure and refused.value == 0x87
    assert anonymous.is_failure
    assert not accepted.is_failure
    assert [client.username for client in broker.clients_connected()] == ["alice"]


@needs_mosquitto
def test_password_file_is_written_without_mosquitto_passwd(
    make_broker: Callable[..., MosquittoBroker], monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = make_broker(users={"bob": "hunter2"}, start=False)
    monkeypatch.setattr(broker_module, "_find_tool", lambda _name: None)

    broker.start()

    assert (broker.work_dir / "passwords").read_text().startswith("bob:$7$101$")
    assert paho_connect(broker.host, broker.port, username="bob", password="wrong").is_failure
    assert not paho_connect(broker.host, broker.port, username="bob", password="hunter2").is_failure


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd missing")
def test_password_hash_matches_mosquitto_passwd(tmp_path: Path) -> None:
    password_file = tmp_path / "passwords"
    password_file.touch()
    tool = str(shutil.which("mosquitto_passwd"))
    subprocess.run([tool, "-b", str(password_file), "carol", "pa ss"], check=True, timeout=10)

    _user, hashed = password_file.read_text().strip().split(":", 1)
    _empty, _kind, rounds, salt, _digest = hashed.split("$")
    expected = mosquitto_password_hash("pa ss", salt=base64.b64decode(salt), rounds=int(rounds))
    assert expected == hashed


@needs_mosquitto
def test_start_fails_fast_with_the_log_tail_when_the_port_is_taken(
    make_broker: Callable[..., MosquittoBroker],
) -> None:
    with bind_socket("127.0.0.1", 0, socket.SOCK_STREAM) as squatter:
        squatter.listen()
        broker = make_broker(port=squatter.getsockname()[1], start=False)

        started = time.monotonic()
        with pytest.raises(TestbedError, match="Address already in use"):
            broker.start()

    assert time.monotonic() - started < 2.0
    assert not broker.is_running


def test_broker_spec_refuses_bad_values() -> None:
    with pytest.raises(ConfigError, match="name"):
        BrokerSpec(name="hub a")
    with pytest.raises(ConfigError, match="users"):
        BrokerSpec(name="hub", users={"a:b": "x"})
    with pytest.raises(ConfigError, match="log_types"):
        BrokerSpec(name="hub", log_types=("chatty",))
    with pytest.raises(TestbedError, match="IP literals"):
        BrokerSpec(name="hub", host="localhost")


# -- DNS --------------------------------------------------------------------------------


def ask(
    server: DnsServer, name: str, rdtype: str, *, tcp: bool = False, timeout: float = 2.0
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(query, server.host, port=server.port, timeout=timeout)


def answers(response: dns.message.Message) -> list[str]:
    return sorted(rdata.to_text() for rrset in response.answer for rdata in rrset)


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_dns_answers_a_and_aaaa_authoritatively(dns_server: DnsServer, tcp: bool) -> None:
    dns_server.set_address("Hub-A.Device-SDK.test.", ["127.0.0.2", "::1"], ttl=7)

    a = ask(dns_server, "hub-a.device-sdk.TEST", "A", tcp=tcp)
    aaaa = ask(dns_server, FQDN, "AAAA", tcp=tcp)

    assert a.rcode() == dns.rcode.NOERROR and a.flags & dns.flags.AA
    assert answers(a) == ["127.0.0.2"] and a.answer[0].ttl == 7
    assert answers(aaaa) == ["::1"]


def test_dns_unknown_name_is_nxdomain_and_missing_type_is_nodata(dns_server: DnsServer) -> None:
    dns_server.set_address(FQDN, ["127.0.0.2"])

    unknown = ask(dns_server, "nope.device-sdk.test", "A")
    nodata = ask(dns_server, FQDN, "AAAA")

    assert unknown.rcode() == dns.rcode.NXDOMAIN and unknown.flags & dns.flags.AA
    assert nodata.rcode() == dns.rcode.NOERROR and nodata.answer == []
    dns_server.remove(FQDN)
    assert ask(dns_server, FQDN, "A").rcode() == dns.rcode.NXDOMAIN


def test_dns_serves_srv_and_flips_addresses_at_run_time(dns_server: DnsServer) -> None:
    dns_server.set_srv(
        "_mqtt._tcp.device-sdk.test",
        [
            SrvTarget(priority=10, weight=5, port=8883, target=FQDN),
            SrvTarget(priority=20, weight=0, port=8883, target="hub-b.device-sdk.test."),
        ],
        ttl=30,
    )
    dns_server.set_address(FQDN, ["127.0.0.2"], ttl=1)
    resolver = dns_server.resolver()

    srv = ask(dns_server, "_mqtt._tcp.device-sdk.test", "SRV", tcp=True)
    before = resolver.resolve(FQDN, "A")
    dns_server.set_address(FQDN, ["127.0.0.3"], ttl=1)
    after = resolver.resolve(FQDN, "A")

    assert answers(srv) == [f"10 5 8883 {FQDN}.", "20 0 8883 hub-b.device-sdk.test."]
    assert [r.to_text() for r in before] == ["127.0.0.2"]
    assert [r.to_text() for r in after] == ["127.0.0.3"]


def test_dns_empty_address_list_leaves_a_name_without_addresses(dns_server: DnsServer) -> None:
    dns_server.set_address(FQDN, ["127.0.0.2", "::1"])
    dns_server.set_address(FQDN, [])

    for rdtype in ("A", "AAAA"):
        response = ask(dns_server, FQDN, rdtype)
        assert response.rcode() == dns.rcode.NOERROR and response.answer == []


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_dns_fault_modes(dns_server: DnsServer, tcp: bool) -> None:
    dns_server.set_address(FQDN, ["127.0.0.2"])

    dns_server.fail(FQDN)
    assert ask(dns_server, FQDN, "A", tcp=tcp).rcode() == dns.rcode.SERVFAIL
    dns_server.fail("unknown.device-sdk.test", dns.rcode.REFUSED)
    assert ask(dns_server, "unknown.device-sdk.test", "A", tcp=tcp).rcode() == dns.rcode.REFUSED
    dns_server.drop(FQDN)
    with pytest.raises(dns.exception.Timeout):
        ask(dns_server, FQDN, "A", tcp=tcp, timeout=0.2)
    dns_server.clear_fault(FQDN)
    assert answers(ask(dns_server, FQDN, "A", tcp=tcp)) == ["127.0.0.2"]

    outcomes = [query.outcome for query in dns_server.queries(FQDN)]
    assert outcomes == ["SERVFAIL", "dropped", "NOERROR"]


def test_dns_query_log_records_every_query(dns_server: DnsServer) -> None:
    dns_server.set_address(FQDN, ["127.0.0.2"])
    started = time.monotonic()

    ask(dns_server, FQDN, "A")
    ask(dns_server, FQDN.upper(), "AAAA", tcp=True)
    ask(dns_server, "other.device-sdk.test", "A")

    log = dns_server.queries(FQDN + ".")
    assert [(q.rdtype, q.transport, q.outcome) for q in log] == [
        ("A", "udp", "NOERROR"),
        ("AAAA", "tcp", "NOERROR"),
    ]
    assert all(q.name == FQDN and q.client[0] == "127.0.0.1" for q in log)
    assert started <= log[0].time <= log[1].time <= time.monotonic()
    assert len(dns_server.queries(rdtype="a")) == 2
    dns_server.clear_log()
    assert dns_server.queries() == []


def test_dns_truncates_big_udp_answers_so_clients_retry_over_tcp(dns_server: DnsServer) -> None:
    addresses = [f"127.0.1.{i}" for i in range(1, 61)]
    dns_server.set_address(FQDN, addresses)

    truncated = ask(dns_server, FQDN, "A")
    full, used_tcp = dns.query.udp_with_fallback(
        dns.message.make_query(FQDN, "A"), dns_server.host, port=dns_server.port, timeout=2
    )

    assert truncated.flags & dns.flags.TC and truncated.answer == []
    assert used_tcp and len(answers(full)) == 60


def test_dns_stop_is_bounded_and_closes_the_port() -> None:
    server = DnsServer()
    server.start()
    with socket.create_connection(server.address, timeout=1):
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 1.0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(server.address, timeout=1).close()
    server.stop()


def test_dns_setters_refuse_bad_values(dns_server: DnsServer) -> None:
    with pytest.raises(ConfigError, match="not a string"):
        dns_server.set_address(FQDN, "127.0.0.2")
    with pytest.raises(ConfigError, match="addresses"):
        dns_server.set_address(FQDN, ["127.0.0.300"])
    with pytest.raises(ConfigError, match="ttl"):
        dns_server.set_address(FQDN, ["127.0.0.2"], ttl=-1)
    with pytest.raises(ConfigError, match="rcode"):
        dns_server.fail(FQDN, dns.rcode.NOERROR)


# -- proxy ------------------------------------------------------------------------------
# The DNS server's TCP side is the proxy's target here: a real request/response
# server whose query log shows exactly which bytes got through.


@pytest.fixture
def proxy(dns_server: DnsServer) -> Iterator[FaultProxy]:
    dns_server.set_address(FQDN, ["127.0.0.2"])
    with FaultProxy(ProxySpec(target_host=dns_server.host, target_port=dns_server.port)) as p:
        yield p


def send_query(sock: socket.socket) -> None:
    dns.query.send_tcp(sock, dns.message.make_query(FQDN, "A"))


def receive_answer(sock: socket.socket, timeout: float = 2.0) -> list[str]:
    response, _when = dns.query.receive_tcp(sock, expiration=time.time() + timeout)
    return answers(response)


def assert_silent(sock: socket.socket) -> None:
    """Nothing arrives, not even FIN (b"") or RST (an error): the link is just quiet."""
    sock.settimeout(SILENCE)
    with pytest.raises(TimeoutError):
        sock.recv(1, socket.MSG_PEEK)
    sock.settimeout(None)


def test_proxy_forwards_both_ways_and_passes_half_close(
    proxy: FaultProxy, dns_server: DnsServer
) -> None:
    with socket.create_connection((proxy.host, proxy.port), timeout=2) as sock:
        send_query(sock)
        sock.shutdown(socket.SHUT_WR)  # the server answers, then sees our FIN and closes
        assert receive_answer(sock) == ["127.0.0.2"]
        assert sock.recv(1) == b""

    assert proxy.mode is ProxyMode.FORWARD
    assert [q.transport for q in dns_server.queries()] == ["tcp"]
    proxy.stop()
    assert proxy.accepted_connections == 1  # still readable after stop


def test_proxy_blackhole_is_silent_both_ways_then_restore_resumes_intact(
    proxy: FaultProxy, dns_server: DnsServer
) -> None:
    with socket.create_connection((proxy.host, proxy.port), timeout=2) as old:
        send_query(old)
        assert receive_answer(old) == ["127.0.0.2"]

        proxy.blackhole()

        send_query(old)
        with socket.create_connection((proxy.host, proxy.port), timeout=2) as new:
            send_query(new)
            assert_silent(old)
            assert_silent(new)
            assert len(dns_server.queries()) == 1  # nothing got through
            assert proxy.open_connections == 2

            proxy.restore()

            assert receive_answer(old) == ["127.0.0.2"]  # held, not lost: the stream is intact
            assert receive_answer(new) == ["127.0.0.2"]  # dialled upstream only now
    assert proxy.accepted_connections == 2


def test_proxy_does_not_dial_for_clients_that_gave_up_during_a_blackhole(
    proxy: FaultProxy, dns_server: DnsServer
) -> None:
    proxy.blackhole()
    socket.create_connection((proxy.host, proxy.port), timeout=2).close()
    with socket.create_connection((proxy.host, proxy.port), timeout=2) as patient:
        send_query(patient)
        proxy.restore()
        assert receive_answer(patient) == ["127.0.0.2"]

    assert proxy.accepted_connections == 2
    assert len(dns_server.queries()) == 1


def test_proxy_reset_kills_open_and_new_connections_with_rst(proxy: FaultProxy) -> None:
    with socket.create_connection((proxy.host, proxy.port), timeout=2) as old:
        send_query(old)
        assert receive_answer(old) == ["127.0.0.2"]

        proxy.reset()

        with pytest.raises(ConnectionResetError):
            old.recv(1)
    # The RST may beat connect() back to the client: either call may see it.
    with (
        pytest.raises(ConnectionResetError),
        socket.create_connection((proxy.host, proxy.port), timeout=2) as new,
    ):
        new.recv(1)
    proxy.restore()
    with socket.create_connection((proxy.host, proxy.port), timeout=2) as later:
        send_query(later)
        assert receive_answer(later) == ["127.0.0.2"]
    assert proxy.accepted_connections == 3


def test_proxy_resets_clients_when_the_target_refuses() -> None:
    dead_port = pick_free_port()
    with (
        FaultProxy(ProxySpec(target_host="127.0.0.1", target_port=dead_port)) as proxy,
        pytest.raises(ConnectionResetError),
        socket.create_connection((proxy.host, proxy.port), timeout=2) as sock,
    ):
        sock.recv(1)


def test_proxy_mode_set_before_start_applies_at_start(dns_server: DnsServer) -> None:
    proxy = FaultProxy(ProxySpec(target_host=dns_server.host, target_port=dns_server.port))
    proxy.blackhole()
    with proxy, socket.create_connection((proxy.host, proxy.port), timeout=2) as sock:
        send_query(sock)
        assert proxy.mode is ProxyMode.BLACKHOLE
        assert_silent(sock)
    assert dns_server.queries() == []


@needs_mosquitto
def test_proxy_in_front_of_a_broker(make_broker: Callable[..., MosquittoBroker]) -> None:
    broker = make_broker(host=HUB_A)
    spec = ProxySpec(target_host=broker.host, target_port=broker.port)
    with FaultProxy(spec) as proxy:
        assert not paho_connect(proxy.host, proxy.port).is_failure
        with socket.create_connection((proxy.host, proxy.port), timeout=2) as sock:
            sock.settimeout(2)
            assert mqtt_handshake(sock) == 0
            proxy.blackhole()
            sock.sendall(b"\xc0\x00")  # PINGREQ into the void
            assert_silent(sock)

    assert len(broker.connection_attempts()) == 2

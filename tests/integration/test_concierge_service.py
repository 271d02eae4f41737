"""The reference concierge over loopback, the device's bounded fetch, and the sequence store."""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pytest

from device_sdk.adapters.resolver import FreshResolver
from device_sdk.concierge import ConciergeFetcher, ConciergeTrust, SequenceStore, verify
from device_sdk.concierge import cli as concierge_cli
from device_sdk.concierge.document import DocumentHub, EndpointDocument
from device_sdk.concierge.health import HealthProbeSettings
from device_sdk.concierge.service import ConciergeService, ConciergeServiceConfig
from device_sdk.concierge.signing import write_keypair
from device_sdk.config import DnsSettings
from device_sdk.errors import (
    ConciergeError,
    ConciergeUnavailable,
    ConfigError,
    RollbackRejected,
)
from device_sdk.testbed import CertificateAuthority, DnsServer, Testbed

pytestmark = pytest.mark.integration

KID = "k1"
TOKEN = "operator-token-0123456789"
DOMAIN = "hubs.device-sdk.test"


@dataclass(frozen=True, slots=True, kw_only=True)
class Files:
    key_file: Path
    public_key: str
    token_file: Path
    state_file: Path


@pytest.fixture
def files(tmp_path: Path) -> Files:
    keys = write_keypair(tmp_path / "keys", KID)
    token_file = tmp_path / "operator-token"
    token_file.write_text(TOKEN + "\n")
    return Files(
        key_file=keys.private_key_file,
        public_key=keys.public_key,
        token_file=token_file,
        state_file=tmp_path / "state" / "concierge.json",
    )


def static_hubs() -> dict[str, DocumentHub]:
    return {
        "primary": DocumentHub(fqdn=f"primary.{DOMAIN}", port=1883, tls=False),
        "secondary": DocumentHub(fqdn=f"secondary.{DOMAIN}", port=1883, tls=False),
    }


def service_config(files: Files, **overrides: Any) -> ConciergeServiceConfig:
    fields: dict[str, Any] = {
        "state_file": files.state_file,
        "signing_key_file": files.key_file,
        "kid": KID,
        "token_file": files.token_file,
        "hubs": static_hubs(),
        "port": 0,
        "ttl": 60,
    }
    return ConciergeServiceConfig(**(fields | overrides))


def device_trust(files: Files) -> ConciergeTrust:
    return ConciergeTrust(keys={KID: files.public_key}, allowed_hubs=(f"*.{DOMAIN}",))


def fetch(service: ConciergeService, timeout: float = 2.0) -> bytes:
    fetcher = ConciergeFetcher(f"{service.url}/v1/endpoint", timeout=timeout, allow_plain_http=True)
    return fetcher.fetch()


def fetch_verified(service: ConciergeService, files: Files, last: int | None) -> EndpointDocument:
    return verify(fetch(service), device_trust(files), now=time.time(), last_sequence=last)


def request(
    service: ConciergeService, method: str, path: str, body: bytes | None = None, **headers: str
) -> tuple[int, dict[str, Any], http.client.HTTPMessage]:
    host, port = service.url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        connection.request(method, path, body=body, headers=headers)
        with connection.getresponse() as response:
            return response.status, json.loads(response.read() or b"{}"), response.headers
    finally:
        connection.close()


# -- the service ------------------------------------------------------------------------------


def test_the_served_document_is_signed_fresh_and_verifies(files: Files) -> None:
    with ConciergeService(service_config(files)) as service:
        before = time.time()
        document = fetch_verified(service, files, None)
        assert document.active_hub == "primary"
        assert dict(document.hubs) == static_hubs()
        assert before - 1 <= document.issued_at <= time.time()
        assert document.expires_at == document.issued_at + 60
        assert document.sequence == service.state.sequence


def test_operator_switch_bumps_the_sequence_and_survives_a_restart(files: Files) -> None:
    config = service_config(files)
    with ConciergeService(config) as service:
        first = fetch_verified(service, files, None)
        answer = concierge_cli.post_active(service.url, "secondary", TOKEN)
        assert answer["active_hub"] == "secondary"
        second = fetch_verified(service, files, first.sequence)
        assert second.active_hub == "secondary"
        assert second.sequence > first.sequence
        # Switching to the hub that is already active changes nothing.
        assert concierge_cli.post_active(service.url, "secondary", TOKEN)["sequence"] == (
            second.sequence
        )
    with ConciergeService(config) as restarted:
        after = fetch_verified(restarted, files, second.sequence)
        assert (after.active_hub, after.sequence) == ("secondary", second.sequence)
        restarted.set_active("primary")
        assert fetch_verified(restarted, files, second.sequence).sequence > second.sequence


def test_a_lost_state_file_never_rolls_the_sequence_back(files: Files) -> None:
    config = service_config(files)
    service = ConciergeService(config, clock=lambda: 1_800_000_000.0)
    service.set_active("secondary")
    service.set_active("primary")  # two changes within one millisecond
    before = service.state.sequence
    assert before == 1_800_000_000_002
    files.state_file.unlink()
    fresh = ConciergeService(config, clock=lambda: 1_800_000_000.01)
    assert fresh.state.active_hub == "primary"
    assert fresh.state.sequence > before  # the clock carries it forward


def test_a_corrupt_state_file_stops_the_service_and_is_kept(files: Files) -> None:
    files.state_file.parent.mkdir(parents=True)
    files.state_file.write_text("{not json")
    with pytest.raises(ConfigError, match="state_file"):
        ConciergeService(service_config(files))
    assert files.state_file.read_text() == "{not json"


def test_changed_hubs_in_the_config_bump_the_sequence(files: Files) -> None:
    with ConciergeService(service_config(files)) as service:
        before = service.state.sequence
    extra = static_hubs() | {"tertiary": DocumentHub(fqdn=f"t.{DOMAIN}", port=1883, tls=False)}
    with ConciergeService(service_config(files, hubs=extra)) as service:
        assert service.state.sequence > before
        assert set(fetch_verified(service, files, before).hubs) == set(extra)


def test_the_operator_switch_needs_the_token(files: Files) -> None:
    body = json.dumps({"hub": "secondary"}).encode()
    with ConciergeService(service_config(files)) as service:
        sequence = service.state.sequence
        status, _, headers = request(service, "POST", "/v1/active", body)
        assert status == 401
        assert headers["WWW-Authenticate"].startswith("Bearer")
        wrong = {"Authorization": "Bearer operator-token-0123456780"}
        assert request(service, "POST", "/v1/active", body, **wrong)[0] == 401
        assert request(service, "POST", "/v1/active", body, Authorization=TOKEN)[0] == 401
        with pytest.raises(ConciergeError, match="401"):
            concierge_cli.post_active(service.url, "secondary", "guess-guess-guess")
        assert (service.state.active_hub, service.state.sequence) == ("primary", sequence)


def test_unknown_hubs_and_bad_bodies_are_400(files: Files) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with ConciergeService(service_config(files)) as service:
        with pytest.raises(ConciergeError, match="unknown hub"):
            concierge_cli.post_active(service.url, "tertiary", TOKEN)
        for body in (b"", b"[]", b'{"hub": 1}', b'{"hub": "secondary", "x": 1}', b"x" * 2000):
            assert request(service, "POST", "/v1/active", body, **auth)[0] == 400
        assert request(service, "GET", "/nothing")[0] == 404
        assert service.state.active_hub == "primary"


def test_health_follows_the_active_hubs_broker(testbed: Testbed, files: Files) -> None:
    hubs = {
        hub.name: DocumentHub(fqdn=hub.fqdn, port=hub.broker.port, tls=False)
        for hub in testbed.hubs
    }
    health = HealthProbeSettings(dns=testbed.dns_settings(), timeout=1.0, cache_seconds=0.0)
    with ConciergeService(service_config(files, hubs=hubs, health=health)) as service:
        status, body, _ = request(service, "GET", "/healthz")
        assert (status, body["healthy"], body["hub"]) == (200, True, "primary")
        testbed.hub("primary").broker.kill()
        status, body, _ = request(service, "GET", "/healthz")
        assert (status, body["healthy"], body["hub"]) == (503, False, "primary")
        assert body["detail"]
        service.set_active("secondary")
        status, body, _ = request(service, "GET", "/healthz")
        assert (status, body["hub"]) == (200, "secondary")


def test_health_is_503_when_the_active_hub_does_not_resolve(files: Files) -> None:
    with DnsServer() as dns:
        dns_settings = DnsSettings(
            nameservers=(dns.host,), port=dns.port, timeout=0.3, lifetime=0.5
        )
        health = HealthProbeSettings(dns=dns_settings, timeout=1.0, cache_seconds=0.0)
        with ConciergeService(service_config(files, health=health)) as service:
            status, body, _ = request(service, "GET", "/healthz")
    assert status == 503
    assert "DNS" in body["detail"]


# -- the device's sequence store ---------------------------------------------------------------


def test_replay_is_rejected_after_a_device_restart(files: Files, tmp_path: Path) -> None:
    store_path = tmp_path / "device" / "concierge-sequence.json"
    with ConciergeService(service_config(files)) as service:
        store = SequenceStore(store_path)
        assert store.load() is None
        old_raw = fetch(service)
        old = verify(old_raw, device_trust(files), now=time.time(), last_sequence=store.load())
        store.save(old.sequence)
        service.set_active("secondary")
        new = fetch_verified(service, files, store.load())
        store.save(new.sequence)
    # The device reboots: a new store object on the same file.
    rebooted = SequenceStore(store_path)
    assert rebooted.load() == new.sequence
    with pytest.raises(RollbackRejected):
        verify(old_raw, device_trust(files), now=time.time(), last_sequence=rebooted.load())
    assert [p.name for p in store_path.parent.iterdir()] == [store_path.name]  # no temp files


def test_the_sequence_store_never_moves_back(tmp_path: Path) -> None:
    store = SequenceStore(tmp_path / "seq.json")
    store.save(10)
    store.save(10)
    with pytest.raises(ConciergeError, match="back"):
        store.save(9)
    assert SequenceStore(tmp_path / "seq.json").load() == 10


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"garbage",
        b'{"format": 1}',
        b'{"format": 1, "last_sequence": -1}',
        b'{"format": 1, "last_sequence": "5"}',
        b'{"format": true, "last_sequence": 5}',
        b'{"format": 2, "last_sequence": 5}',
        b"[" * 3000,
    ],
)
def test_a_corrupt_sequence_file_refuses_and_is_never_overwritten(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "seq.json"
    path.write_bytes(content)
    store = SequenceStore(path)
    with pytest.raises(ConciergeError, match="corrupt"):
        store.load()
    with pytest.raises(ConciergeError, match="corrupt"):
        store.save(99)
    assert path.read_bytes() == content


# -- the fetcher against misbehaving servers -----------------------------------------------------

Script = Callable[[socket.socket, threading.Event], None]


class ScriptedServer:
    """A loopback TCP server that reads one request per connection and runs ``script``.

    Bounded: at most 10 connections, each script bounded in steps; ``stop`` is prompt.
    """

    def __init__(self, script: Script, *, tls: ssl.SSLContext | None = None) -> None:
        self._script = script
        self._tls = tls
        self._stopping = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        scheme = "https" if self._tls else "http"
        return f"{scheme}://127.0.0.1:{self._listener.getsockname()[1]}/v1/endpoint"

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        self._thread.join(5)
        self._listener.close()

    def _serve(self) -> None:
        for _ in range(10):
            conn = self._accept()
            if conn is None:
                return
            with conn:
                self._handle(conn)

    def _accept(self) -> socket.socket | None:
        deadline = time.monotonic() + 30
        while not self._stopping.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            return conn
        return None

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(2)
        try:
            if self._tls is not None:
                conn = self._tls.wrap_socket(conn, server_side=True)
            conn.recv(65536)
            self._script(conn, self._stopping)
        except OSError:
            pass  # the client gave up: that is what these tests provoke
        finally:
            conn.close()


def drip(head: bytes, piece: bytes) -> Script:
    """Send ``head``, then ``piece`` every 50 ms (at most 200 times)."""

    def script(conn: socket.socket, stopping: threading.Event) -> None:
        conn.sendall(head)
        for _ in range(200):
            if stopping.wait(0.05):
                return
            conn.sendall(piece)

    return script


def answer(data: bytes, *, then_hold: bool = False) -> Script:
    def script(conn: socket.socket, stopping: threading.Event) -> None:
        conn.sendall(data)
        if then_hold:
            stopping.wait(5)

    return script


def timed_fetch(url: str, **options: Any) -> tuple[float, ConciergeUnavailable | bytes]:
    fetcher = ConciergeFetcher(url, allow_plain_http=True, **({"timeout": 0.5} | options))
    started = time.monotonic()
    try:
        result: ConciergeUnavailable | bytes = fetcher.fetch()
    except ConciergeUnavailable as exc:
        result = exc
    return time.monotonic() - started, result


@pytest.mark.parametrize(
    "script",
    [
        drip(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n", b"x"),
        drip(b"HTTP/1.1 200 OK\r\n", b"X-Drip: 1\r\n"),
        drip(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"1\r\nx\r\n"),
        answer(b"", then_hold=True),
    ],
    ids=["body", "headers", "chunks", "silence"],
)
def test_a_slow_server_is_cut_off_at_the_total_deadline(script: Script) -> None:
    with ScriptedServer(script) as server:
        elapsed, result = timed_fetch(server.url, timeout=0.5)
    assert isinstance(result, ConciergeUnavailable)
    assert "0.5 s" in str(result)
    assert 0.45 <= elapsed < 0.9


def test_an_announced_oversize_body_is_refused_before_reading() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n"
    with ScriptedServer(answer(head, then_hold=True)) as server:
        elapsed, result = timed_fetch(server.url, timeout=2.0, max_bytes=1000)
    assert isinstance(result, ConciergeUnavailable)
    assert "announced 1000000 bytes" in str(result)
    assert elapsed < 1.0


def test_a_body_streaming_past_the_bound_is_cut_off() -> None:
    head = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"
    with ScriptedServer(answer(head + b"x" * 50_000, then_hold=True)) as server:
        elapsed, result = timed_fetch(server.url, timeout=2.0, max_bytes=1000)
    assert isinstance(result, ConciergeUnavailable)
    assert "more than the 1000 bytes" in str(result)
    assert elapsed < 1.0


def test_a_body_of_exactly_the_bound_is_accepted() -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"y" * 1000
    with ScriptedServer(answer(data)) as server:
        _, result = timed_fetch(server.url, timeout=2.0, max_bytes=1000)
    assert result == b"y" * 1000


def test_http_errors_and_refused_connections_are_unavailable() -> None:
    error = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
    with ScriptedServer(answer(error)) as server:
        _, result = timed_fetch(server.url)
        port = server.port
    assert isinstance(result, ConciergeUnavailable)
    assert "HTTP 503" in str(result)
    _, refused = timed_fetch(f"http://127.0.0.1:{port}/v1/endpoint")
    assert isinstance(refused, ConciergeUnavailable)
    assert isinstance(refused.__cause__, ConnectionRefusedError)


def test_plain_http_needs_an_explicit_opt_in() -> None:
    with pytest.raises(ConfigError, match="allow_plain_http"):
        ConciergeFetcher("http://127.0.0.1:1/v1/endpoint", timeout=1.0)
    for url in ("ftp://x.example.com/", "https://user@x.example.com/", "https:///path"):
        with pytest.raises(ConfigError):
            ConciergeFetcher(url, timeout=1.0)


@pytest.fixture
def concierge_tls(tmp_path: Path) -> Iterator[tuple[ssl.SSLContext, Path, DnsServer]]:
    """A server context for concierge.<DOMAIN>, the CA file, and DNS naming it 127.0.0.1."""
    ca = CertificateAuthority.create()
    ca_file = ca.write_to(tmp_path)
    leaf = ca.issue_server_certificate([f"concierge.{DOMAIN}"]).write_to(tmp_path, stem="c")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(leaf.cert_file, leaf.key_file)
    with DnsServer() as dns:
        dns.set_address(f"concierge.{DOMAIN}", ["127.0.0.1"], ttl=1)
        yield context, ca_file, dns


def test_https_verifies_the_concierge_by_name_through_fresh_dns(
    concierge_tls: tuple[ssl.SSLContext, Path, DnsServer],
) -> None:
    context, ca_file, dns = concierge_tls
    resolver = FreshResolver(
        DnsSettings(nameservers=(dns.host,), port=dns.port, timeout=0.5, lifetime=1.0)
    )
    body = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
    with ScriptedServer(answer(body), tls=context) as server:
        url = f"https://concierge.{DOMAIN}:{server.port}/v1/endpoint"
        good = ConciergeFetcher(url, timeout=2.0, ca_file=str(ca_file), resolver=resolver)
        assert good.fetch() == b"{}"
        assert dns.queries(f"concierge.{DOMAIN}", "A")
        # The system trust store does not know the testbed CA: refused, never downgraded.
        untrusted = ConciergeFetcher(url, timeout=2.0, resolver=resolver)
        with pytest.raises(ConciergeUnavailable, match="certificate did not verify"):
            untrusted.fetch()
        # Dialling the right address under a name the certificate lacks fails too.
        by_ip = ConciergeFetcher(server.url, timeout=2.0, ca_file=str(ca_file))
        with pytest.raises(ConciergeUnavailable, match="certificate did not verify"):
            by_ip.fetch()


def test_a_slow_drip_over_tls_is_cut_off_too(
    concierge_tls: tuple[ssl.SSLContext, Path, DnsServer],
) -> None:
    context, ca_file, dns = concierge_tls
    resolver = FreshResolver(
        DnsSettings(nameservers=(dns.host,), port=dns.port, timeout=0.5, lifetime=1.0)
    )
    script = drip(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n", b"x")
    with ScriptedServer(script, tls=context) as server:
        url = f"https://concierge.{DOMAIN}:{server.port}/v1/endpoint"
        fetcher = ConciergeFetcher(url, timeout=0.5, ca_file=str(ca_file), resolver=resolver)
        started = time.monotonic()
        with pytest.raises(ConciergeUnavailable, match=r"0\.5 s"):
            fetcher.fetch()
    assert time.monotonic() - started < 0.9


# -- the command line ----------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="device-sdk")
    concierge_cli.add_subcommands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


class ServeProcess:
    """``device-sdk concierge serve`` in a child process, stopped with SIGTERM."""

    def __init__(self, config_file: Path) -> None:
        code = (
            "import argparse, sys\n"
            "from device_sdk.concierge import cli\n"
            "parser = argparse.ArgumentParser()\n"
            "cli.add_subcommands(parser.add_subparsers(dest='command'))\n"
            "sys.exit(cli.run(parser.parse_args(sys.argv[1:])))\n"
        )
        argv = [sys.executable, "-c", code, "concierge", "serve", "--config", str(config_file)]
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def __enter__(self) -> Self:
        return self

    def first_line(self, timeout: float) -> str:
        assert self.process.stdout is not None
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.append(self.process.stdout.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout)
        return lines[0] if lines else ""

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        with contextlib.suppress(OSError):
            self.process.communicate(timeout=5)


def test_keygen_serve_and_set_active_from_the_command_line(tmp_path: Path) -> None:
    assert (
        concierge_cli.run(parse("concierge", "keygen", "--out", str(tmp_path), "--kid", KID)) == 0
    )
    assert oct(os.stat(tmp_path / f"{KID}.key").st_mode & 0o777) == "0o600"
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    config_file = tmp_path / "concierge.toml"
    config_file.write_text(
        f"""
[service]
state_file = "state.json"
signing_key_file = "{KID}.key"
kid = "{KID}"
token_file = "token"
port = 0
ttl = 120

[hubs.primary]
fqdn = "primary.{DOMAIN}"
port = 1883
tls = false

[hubs.secondary]
fqdn = "secondary.{DOMAIN}"
port = 1883
tls = false

[health]
timeout = 0.5
nameservers = ["127.0.0.1"]
dns_port = 9
"""
    )
    with ServeProcess(config_file) as serve:
        line = serve.first_line(timeout=20)
        assert "concierge serving on http://127.0.0.1:" in line, line
        url = line.split(" on ", 1)[1].split()[0]
        argv = ["concierge", "set-active", "secondary", "--url", url]
        assert concierge_cli.run(parse(*argv, "--token-file", str(token_file))) == 0
        raw = ConciergeFetcher(f"{url}/v1/endpoint", timeout=2, allow_plain_http=True).fetch()
    assert serve.process.returncode == 0
    public_key = (tmp_path / f"{KID}.pub").read_text()
    trust = ConciergeTrust(keys={KID: public_key}, allowed_hubs=(f"*.{DOMAIN}",))
    document = verify(raw, trust, now=time.time(), last_sequence=None)
    assert (document.active_hub, document.expires_at - document.issued_at) == ("secondary", 120)
    assert json.loads((tmp_path / "state.json").read_text())["active_hub"] == "secondary"


def test_a_bad_config_file_names_the_file_and_the_key(tmp_path: Path, files: Files) -> None:
    config_file = tmp_path / "bad.toml"
    config_file.write_text(
        f"""
[service]
state_file = "s.json"
signing_key_file = "{files.key_file}"
kid = "{KID}"
token_file = "{files.token_file}"
ttl = "long"

[hubs.primary]
fqdn = "192.0.2.1"
port = 1883
tls = false
"""
    )
    with pytest.raises(ConfigError) as caught:
        concierge_cli.load_service_config(config_file)
    assert str(config_file) in str(caught.value)
    assert "hubs.primary" in str(caught.value)


def test_set_active_refuses_plain_http_to_a_remote_host(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="plain-http"):
        concierge_cli.post_active("http://concierge.example.com", "secondary", TOKEN)


def test_a_burst_of_devices_is_not_dropped_by_a_short_listen_queue(files: Files) -> None:
    # socketserver's default queue of 5 made a burst of 100 fleet polls wait for SYN
    # retransmissions (1 s and more); the concierge asks for the system's maximum.
    from device_sdk.concierge import service as service_module

    assert service_module._Server.request_queue_size >= 128
    with ConciergeService(service_config(files)) as service:
        host, port = service.url.removeprefix("http://").rsplit(":", 1)
        answered: list[bool] = []

        def fetch() -> None:
            with socket.create_connection((host, int(port)), timeout=5) as sock:
                sock.sendall(b"GET /v1/endpoint HTTP/1.0\r\n\r\n")
                answered.append(sock.recv(12).startswith(b"HTTP/1.0 200"))

        threads = [threading.Thread(target=fetch) for _ in range(100)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    assert answered.count(True) == 100

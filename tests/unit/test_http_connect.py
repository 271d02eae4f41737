"""HTTP CONNECT tunnels against a scripted, often hostile, proxy on loopback; NO_PROXY rules.

Each case is one script: what the fake proxy answers after reading the CONNECT
request. The proxy records the request bytes, so the exact request is checked too.
"""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from device_sdk.adapters.cancel import Cancelled, CancelToken
from device_sdk.adapters.http_connect import (
    MAX_HEADER_BYTES,
    connect_request,
    dial_via_proxy,
    open_tunnel,
    proxy_addresses,
)
from device_sdk.adapters.resolver import Resolution
from device_sdk.errors import (
    DialError,
    ProxyError,
    ProxyProtocolError,
    ProxyRefused,
    ProxyTimeout,
)
from device_sdk.transports import ProxySettings

SECRET = "s3cr3t-Pa55"
Script = Callable[[socket.socket], object]


class ScriptedProxy:
    """Accepts one connection, reads the request head, then runs ``script`` on the socket."""

    def __init__(self, script: Script) -> None:
        self._script = script
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(4)
        self._listener.settimeout(5.0)
        self.port: int = self._listener.getsockname()[1]
        self.request = b""
        self.release = threading.Event()  # ends a script that holds the connection
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        try:
            conn, _peer = self._listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5.0)
            for _ in range(1000):  # bounded: a request head is well under 1000 reads
                if b"\r\n\r\n" in self.request:
                    break
                chunk = conn.recv(1024)
                if not chunk:
                    return
                self.request += chunk
            self._script(conn)

    @contextmanager
    def running(self) -> Iterator[ScriptedProxy]:
        self._thread.start()
        try:
            yield self
        finally:
            self.release.set()
            self._listener.close()
            self._thread.join(5.0)


def answer(data: bytes, *, then: Callable[[socket.socket], None] | None = None) -> Script:
    def script(conn: socket.socket) -> None:
        conn.sendall(data)
        if then is not None:
            then(conn)

    return script


def settings(port: int, **overrides: object) -> ProxySettings:
    fields: dict[str, object] = {"host": "127.0.0.1", "port": port}
    fields.update(overrides)
    return ProxySettings(**fields)  # type: ignore[arg-type]


def tunnel(
    proxy: ProxySettings, target: str = "hub.example", *, within: float = 2.0, **kw: object
) -> socket.socket:
    deadline = time.monotonic() + within
    return open_tunnel(proxy, "127.0.0.1", target, 8883, deadline=deadline, **kw)  # type: ignore[arg-type]


def recv_exactly(sock: socket.socket, count: int) -> bytes:
    sock.setblocking(True)
    sock.settimeout(2.0)
    data = b""
    for _ in range(count):
        if len(data) == count:
            break
        data += sock.recv(count - len(data))
    return data


def test_a_2xx_opens_the_tunnel_and_its_first_byte_is_not_swallowed() -> None:
    def echo(conn: socket.socket) -> None:
        conn.sendall(recv_exactly(conn, 4).upper())

    # One send: headers, the blank line and the tunnel's first bytes in one segment.
    head = b"HTTP/1.1 200 Connection established\r\nVia: x\r\nContent-Length: 99\r\n\r\n"
    with ScriptedProxy(answer(head + b"\x16first", then=echo)).running() as fake:
        time.sleep(0.05)  # the answer is all in the socket before the client reads
        sock = tunnel(settings(fake.port))
        with sock:
            assert sock.getblocking() is False  # as connect_tcp leaves it
            assert recv_exactly(sock, 6) == b"\x16first"
            sock.sendall(b"ping")
            assert recv_exactly(sock, 4) == b"PING"
    assert fake.request.startswith(b"CONNECT hub.example:8883 HTTP/1.1\r\n")
    assert b"\r\nHost: hub.example:8883\r\n" in fake.request
    assert b"Proxy-Authorization" not in fake.request


def test_a_blank_line_split_across_segments_is_found_exactly() -> None:
    def dribble(conn: socket.socket) -> None:
        for piece in (b"HTTP/1.0 200 OK\r\n\r", b"\nT"):
            conn.sendall(piece)
            time.sleep(0.05)

    with ScriptedProxy(dribble).running() as fake, tunnel(settings(fake.port)) as sock:
        assert recv_exactly(sock, 1) == b"T"


def test_basic_authorization_is_exactly_user_colon_password() -> None:
    head = b"HTTP/1.1 200 OK\r\n\r\n"
    with ScriptedProxy(answer(head)).running() as fake:
        tunnel(settings(fake.port, username="dev\u00e9", password=SECRET)).close()
    token = base64.b64encode(f"dev\u00e9:{SECRET}".encode()).decode()
    assert f"\r\nProxy-Authorization: Basic {token}\r\n".encode() in fake.request


def test_an_ipv6_target_is_bracketed() -> None:
    request = connect_request(settings(3128), "2001:db8::1", 443)
    assert request.startswith(b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n")
    assert request.endswith(b"\r\n\r\n")


@pytest.mark.parametrize("target", ["hub.example\r\nX: y", "", "a b"])
def test_a_target_that_would_break_the_request_is_refused(target: str) -> None:
    with pytest.raises(ValueError):
        connect_request(settings(3128), target, 443)


def test_407_names_the_user_and_never_the_password() -> None:
    head = b"HTTP/1.1 407 Proxy Authentication Required " + SECRET.encode() + b"\r\n\r\n"
    with ScriptedProxy(answer(head)).running() as fake:
        proxy = settings(fake.port, username="device-7", password=SECRET)
        with pytest.raises(ProxyRefused) as caught:
            tunnel(proxy)
    error = caught.value
    assert error.status == 407
    assert isinstance(error, DialError)
    assert "device-7" in str(error) and "authentication" in str(error)
    assert f"127.0.0.1:{fake.port}" in str(error) and "hub.example:8883" in str(error)
    for text in (str(error), repr(error), repr(proxy), str(error.args), repr(error.__dict__)):
        assert SECRET not in text


@pytest.mark.parametrize("status", [403, 502])
def test_a_refusal_carries_its_status(status: int) -> None:
    head = f"HTTP/1.1 {status} Nope\r\nContent-Length: 3\r\n\r\nabc".encode()
    with ScriptedProxy(answer(head)).running() as fake, pytest.raises(ProxyRefused) as caught:
        tunnel(settings(fake.port))
    assert caught.value.status == status
    assert f"HTTP {status} Nope" in str(caught.value)


@pytest.mark.parametrize(
    "head",
    [
        b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/2 200\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"\r\n\r\n",
    ],
)
def test_garbage_is_a_protocol_error(head: bytes) -> None:
    with ScriptedProxy(answer(head)).running() as fake, pytest.raises(ProxyProtocolError):
        tunnel(settings(fake.port))


def test_endless_headers_hit_the_size_bound() -> None:
    def endless(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        line = b"X-Filler: " + b"a" * 1000 + b"\r\n"
        try:
            for _ in range(2 * MAX_HEADER_BYTES // len(line) + 2):
                conn.sendall(line)
        except OSError:
            pass  # the client gave up, as it should

    fake = ScriptedProxy(endless)
    with fake.running(), pytest.raises(ProxyProtocolError, match="header bytes"):
        tunnel(settings(fake.port))


def test_closing_before_answering_is_a_protocol_error() -> None:
    fake = ScriptedProxy(answer(b"HTTP/1.1 200"))
    with fake.running(), pytest.raises(ProxyProtocolError, match="closed"):
        tunnel(settings(fake.port))


def test_a_silent_proxy_costs_the_deadline_and_no_more() -> None:
    fake = ScriptedProxy(lambda conn: fake.release.wait(5.0))
    with fake.running():
        started = time.monotonic()
        with pytest.raises(ProxyTimeout):
            tunnel(settings(fake.port), within=0.3)
        assert 0.25 <= time.monotonic() - started < 1.5


def test_cancel_cuts_a_hanging_connect_short() -> None:
    cancel = CancelToken()
    fake = ScriptedProxy(lambda conn: fake.release.wait(5.0))
    timer = threading.Timer(0.1, cancel.cancel)
    try:
        with fake.running():
            timer.start()
            started = time.monotonic()
            with pytest.raises(Cancelled):
                tunnel(settings(fake.port), within=5.0, cancel=cancel)
            assert time.monotonic() - started < 2.0
    finally:
        timer.join(2.0)
        cancel.close()


def test_a_proxy_that_takes_no_connection_is_a_proxy_error() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound but not listening: refused
        with pytest.raises(ProxyError, match="unreachable"):
            tunnel(settings(port, username="u", password=SECRET))


class FakeResolver:
    def __init__(self, addresses: dict[str, tuple[str, ...]]) -> None:
        self.addresses = addresses
        self.asked: list[str] = []

    def resolve_fresh(self, fqdn: str) -> Resolution:
        self.asked.append(fqdn)
        return Resolution(fqdn, self.addresses[fqdn], 1)


def test_proxy_addresses_resolve_a_name_but_not_a_literal() -> None:
    resolver = FakeResolver({"proxy.corp": ("10.0.0.1", "10.0.0.2")})
    deadline = time.monotonic() + 1
    assert proxy_addresses(settings(3128), resolver, deadline) == ("127.0.0.1",)
    named = ProxySettings(host="proxy.corp", port=3128)
    assert proxy_addresses(named, resolver, deadline) == ("10.0.0.1", "10.0.0.2")
    assert resolver.asked == ["proxy.corp"]


def test_resolve_locally_connects_to_the_address_and_tries_the_next_on_refusal() -> None:
    refuse = ScriptedProxy(answer(b"HTTP/1.1 502 Bad Gateway\r\n\r\n"))
    with refuse.running():
        resolver = FakeResolver({"hub.example": ("192.0.2.1",)})
        proxy = settings(refuse.port, resolve_locally=True)
        with pytest.raises(ProxyRefused):
            dial_via_proxy(proxy, resolver, "hub.example", 8883, deadline=time.monotonic() + 2)
    assert refuse.request.startswith(b"CONNECT 192.0.2.1:8883 ")
    assert resolver.asked == ["hub.example"]


# -- ProxySettings: NO_PROXY and the environment (pure) ----------------------------------------


@pytest.mark.parametrize(
    ("entries", "host", "bypassed"),
    [
        (("example.com",), "example.com", True),
        (("example.com",), "hub.EXAMPLE.com.", True),
        ((".example.com",), "hub.example.com", True),
        ((".example.com",), "example.com", True),
        (("*.example.com",), "hub.example.com", True),
        (("example.com",), "badexample.com", False),
        (("example.com",), "example.com.evil", False),
        (("10.0.0.0/8",), "10.1.2.3", True),
        (("10.0.0.0/8",), "11.1.2.3", False),
        (("10.1.2.3",), "10.1.2.3", True),
        (("::1",), "[::1]", True),
        (("[::1]",), "::1", True),
        (("2001:db8::/32",), "2001:db8::7", True),
        (("10.0.0.0/8",), "ten.example", False),
        (("*",), "anything.example", True),
        ((), "hub.example.com", False),
        ((" example.com ",), "example.com", True),
    ],
)
def test_no_proxy_matching(entries: tuple[str, ...], host: str, bypassed: bool) -> None:
    assert settings(3128, no_proxy=entries).bypasses(host) is bypassed


def test_from_environment_reads_https_proxy_and_no_proxy() -> None:
    env = {
        "HTTPS_PROXY": "http://dev%40corp:p%3Ass@proxy.corp:8080",
        "NO_PROXY": "localhost, .internal ,,10.0.0.0/8",
    }
    proxy = ProxySettings.from_environment(env, resolve_locally=True)
    assert proxy is not None
    assert (proxy.host, proxy.port, proxy.username, proxy.password) == (
        "proxy.corp",
        8080,
        "dev@corp",
        "p:ss",
    )
    assert proxy.no_proxy == ("localhost", ".internal", "10.0.0.0/8")
    assert proxy.resolve_locally is True
    assert "p:ss" not in repr(proxy)


def test_from_environment_lower_case_default_port_and_unset() -> None:
    proxy = ProxySettings.from_environment({"https_proxy": "proxy.corp", "no_proxy": "a.b"})
    assert proxy is not None and (proxy.host, proxy.port, proxy.no_proxy) == (
        "proxy.corp",
        3128,
        ("a.b",),
    )
    assert ProxySettings.from_environment({"HTTP_PROXY": "http://p:1"}) is None
    assert ProxySettings.from_environment({"HTTPS_PROXY": "  "}) is None


def test_from_url_refuses_https_proxies_without_showing_the_password() -> None:
    with pytest.raises(ValueError) as caught:
        ProxySettings.from_url(f"https://u:{SECRET}@proxy.corp:3128")
    assert SECRET not in str(caught.value)

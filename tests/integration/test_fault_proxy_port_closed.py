"""FaultProxy.drop_syns: a port whose SYNs are dropped, without root, on loopback.

Every wait is bounded by a socket timeout or a select() timeout.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator

import pytest

from device_sdk.testbed.proxy import FaultProxy, ProxyMode, ProxySpec

pytestmark = pytest.mark.integration

TIMEOUT = 5.0
SILENCE = 0.5  # how long "nothing completes / nothing arrives" is watched for
BURST = 16


@pytest.fixture
def target() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(TIMEOUT)
        yield server


@pytest.fixture
def proxy(target: socket.socket) -> Iterator[FaultProxy]:
    with FaultProxy(ProxySpec(target_host="127.0.0.1", target_port=target.getsockname()[1])) as p:
        yield p


def _connect_nonblocking(proxy: FaultProxy) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.connect_ex((proxy.host, proxy.port))
    return sock


def _completes_within(sock: socket.socket, timeout: float) -> bool:
    _readable, writable, _failed = select.select([], [sock], [], timeout)
    return bool(writable) and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0


def _relay_check(client: socket.socket, upstream: socket.socket, payload: bytes) -> None:
    client.sendall(payload)
    upstream.settimeout(TIMEOUT)
    assert upstream.recv(100) == payload


def test_no_new_handshake_completes_while_syns_are_dropped(proxy: FaultProxy) -> None:
    proxy.drop_syns()
    assert proxy.mode is ProxyMode.DROP_SYN
    with _connect_nonblocking(proxy) as sock:
        assert not _completes_within(sock, SILENCE)


def test_after_restore_a_new_connection_flows_and_no_filler_reaches_the_target(
    proxy: FaultProxy, target: socket.socket
) -> None:
    proxy.drop_syns()
    proxy.restore()
    with socket.create_connection((proxy.host, proxy.port), timeout=TIMEOUT) as client:
        # Accept queues are FIFO: had a filler been forwarded, it would come first.
        upstream, _ = target.accept()
        with upstream:
            _relay_check(client, upstream, b"after restore")
        target.settimeout(SILENCE)
        with pytest.raises(TimeoutError):
            target.accept()
    assert proxy.accepted_connections == 1


def test_after_restore_a_burst_of_connections_completes_at_once(proxy: FaultProxy) -> None:
    # With the backlog left at 0, all but one of a burst would have their SYNs dropped.
    proxy.drop_syns()
    proxy.restore()
    burst = [_connect_nonblocking(proxy) for _ in range(BURST)]
    try:
        assert all(_completes_within(sock, SILENCE) for sock in burst)
    finally:
        for sock in burst:
            sock.close()


def test_existing_connections_are_blackholed_until_restore(
    proxy: FaultProxy, target: socket.socket
) -> None:
    with socket.create_connection((proxy.host, proxy.port), timeout=TIMEOUT) as client:
        upstream, _ = target.accept()
        with upstream:
            _relay_check(client, upstream, b"before")
            proxy.drop_syns()
            client.sendall(b"held")
            upstream.settimeout(SILENCE)
            with pytest.raises(TimeoutError):
                upstream.recv(100)
            proxy.restore()
            upstream.settimeout(TIMEOUT)
            assert upstream.recv(100) == b"held"


def test_a_proxy_started_dropping_syns_drops_them_from_the_start(target: socket.socket) -> None:
    proxy = FaultProxy(ProxySpec(target_host="127.0.0.1", target_port=target.getsockname()[1]))
    proxy.drop_syns()  # before start: applied when it starts
    with proxy, _connect_nonblocking(proxy) as sock:
        assert not _completes_within(sock, SILENCE)
        proxy.restore()
        with socket.create_connection((proxy.host, proxy.port), timeout=TIMEOUT) as client:
            upstream, _ = target.accept()
            with upstream:
                _relay_check(client, upstream, b"late")


def test_stop_is_prompt_while_syns_are_dropped(proxy: FaultProxy) -> None:
    proxy.drop_syns()
    with _connect_nonblocking(proxy):
        started = time.monotonic()
        proxy.stop()
        assert time.monotonic() - started < 1.0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((proxy.host, proxy.port), timeout=TIMEOUT).close()

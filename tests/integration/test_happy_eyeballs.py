"""Happy Eyeballs: an address whose packets vanish costs 250 ms, not a connect timeout.

The vanishing address is a real loopback listener whose accept queue is full:
the kernel then drops new SYNs, so a connect to it hangs exactly like one to a
blackholed route. Everything stays on loopback; every socket is closed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import time
from collections.abc import Iterator

import pytest

from device_sdk import DeviceClient, events
from device_sdk.adapters.happy_eyeballs import CONNECTION_ATTEMPT_DELAY, race_connects
from device_sdk.errors import DialError, NotConnected
from device_sdk.testbed import FAST_LIVENESS, Testbed
from tests.integration.support import EventLog

pytestmark = pytest.mark.integration

BLACKHOLE = "127.0.0.9"


@contextlib.contextmanager
def syn_blackhole(host: str, port: int) -> Iterator[None]:
    """A listener on ``host:port`` that never completes another handshake (accept queue full)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as listener:
        listener.bind((host, port))
        listener.listen(0)
        fillers = [socket.socket(family) for _ in range(3)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex((host, port))
            time.sleep(0.1)  # let the handshakes that fit complete
            yield
        finally:
            for filler in fillers:
                filler.close()


@contextlib.contextmanager
def listener(host: str) -> Iterator[int]:
    with socket.create_server((host, 0)) as server:
        yield server.getsockname()[1]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_silent_address_loses_the_race_after_one_stagger() -> None:
    with listener("127.0.0.2") as port, syn_blackhole(BLACKHOLE, port):
        fds = _open_fds()
        started = time.monotonic()
        race = race_connects((BLACKHOLE, "127.0.0.2"), port, timeout=5.0)
        took = time.monotonic() - started
        # Every raced socket is closed but the winner's, which is handed over connected.
        assert _open_fds() == fds + 1
        assert race.sock is not None and race.sock.getpeername()[0] == "127.0.0.2"
        race.close()
        assert _open_fds() == fds
    assert race.winner == "127.0.0.2"
    assert CONNECTION_ATTEMPT_DELAY <= took < 2.0, took


def test_a_refusing_address_starts_the_next_at_once() -> None:
    with listener("127.0.0.2") as port:
        started = time.monotonic()
        race = race_connects(("127.0.0.3", "127.0.0.2"), port, timeout=5.0)  # nobody on .3
        took = time.monotonic() - started
        race.close()
    assert race.winner == "127.0.0.2"
    assert isinstance(race.failures["127.0.0.3"], ConnectionRefusedError)
    assert took < CONNECTION_ATTEMPT_DELAY, took


def test_when_nothing_answers_the_race_ends_at_the_timeout_with_every_cause() -> None:
    with listener("127.0.0.2") as port, syn_blackhole(BLACKHOLE, port):
        fds = _open_fds()
        started = time.monotonic()
        race = race_connects((BLACKHOLE, "127.0.0.3"), port, timeout=0.5)
        took = time.monotonic() - started
        assert _open_fds() == fds
    assert race.winner is None
    assert isinstance(race.failures[BLACKHOLE], TimeoutError)
    assert isinstance(race.failures["127.0.0.3"], ConnectionRefusedError)
    assert 0.5 <= took < 1.5, took


def test_a_hub_with_a_silent_first_address_is_reached_at_once(testbed: Testbed) -> None:
    # The silent address is IPv6, as a broken IPv6 route is in the field: the resolver
    # puts IPv6 first (RFC 8305), so a dialer that went in turn would wait on it.
    assert testbed.dns is not None
    primary = testbed.hub("primary")
    testbed.dns.set_address(primary.fqdn, ["::1", primary.address], ttl=1)
    log = EventLog()
    liveness = dataclasses.replace(FAST_LIVENESS, connect_timeout=5.0)
    config = testbed.client_config("eyeballs-device", hubs=["primary"], liveness=liveness)
    with syn_blackhole("::1", primary.broker.port):
        started = time.monotonic()
        with DeviceClient(config, on_event=log) as client:
            took = time.monotonic() - started
            client.publish("eyeballs/1", "1").wait(5)
    (resolved,) = log.of(events.Resolved)
    assert resolved.addresses == ("::1", primary.address)  # type: ignore[attr-defined]
    (connected,) = log.of(events.Connected)
    assert connected.address == primary.address  # type: ignore[attr-defined]
    # Dialled in turn, the silent address would cost the whole connect timeout first.
    assert took < config.liveness.connect_timeout / 2, took
    assert not log.of(events.DialFailed)


def test_a_hub_whose_addresses_all_stay_silent_fails_once_per_timeout(testbed: Testbed) -> None:
    assert testbed.dns is not None
    primary = testbed.hub("primary")
    testbed.dns.set_address(primary.fqdn, [BLACKHOLE, "127.0.0.10"], ttl=1)
    log = EventLog()
    config = testbed.client_config("eyeballs-silent", hubs=["primary"])
    with syn_blackhole(BLACKHOLE, primary.broker.port):
        client = DeviceClient(config, on_event=log)
        try:
            with pytest.raises(NotConnected) as caught:
                client.connect(timeout=config.liveness.connect_timeout * 1.5)
        finally:
            client.close()
    first = caught.value.attempts[0]
    assert isinstance(first, DialError) and first.hub == "primary"
    failed = {e.address for e in log.of(events.DialFailed)[:2]}  # type: ignore[attr-defined]
    assert failed == {BLACKHOLE, "127.0.0.10"}  # both reported after one connect timeout


def test_one_attempt_opens_one_tcp_connection_at_the_hub(testbed: Testbed) -> None:
    # Two addresses make the dialer race them. The winner's connection is the one the
    # link opens on: the hub sees one connection, not a throwaway probe and then the
    # real one (which doubled its connections and broke single-accept servers).
    assert testbed.dns is not None
    primary = testbed.hub("primary")
    testbed.dns.set_address(primary.fqdn, ["127.0.0.9", primary.address], ttl=1)  # .9: refused
    config = testbed.client_config("one-connection", hubs=["primary"])
    before = len(primary.broker.connection_attempts())
    with DeviceClient(config) as client:
        client.publish("eyeballs/one", "1").wait(5)
        assert client.metrics().attempts == 1
    seen = primary.broker.connection_attempts()[before:]
    assert len(seen) == 1, seen

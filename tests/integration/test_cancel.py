"""close() is prompt while resolving and racing: a CancelToken ends those waits at once.

A silent nameserver is a bound UDP socket nobody reads; a blackholed address is
a loopback listener whose accept queue is full (see test_happy_eyeballs). Each
wait runs on a worker thread and is cancelled from the test's thread; it must
end with Cancelled well inside its own timeout.
"""

from __future__ import annotations

import contextlib
import random
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from device_sdk import events
from device_sdk.adapters.cancel import Cancelled, CancelToken
from device_sdk.adapters.happy_eyeballs import race_connects
from device_sdk.adapters.paho_link import PahoLink
from device_sdk.adapters.probe import hub_answers
from device_sdk.adapters.resolver import FreshResolver, Resolution
from device_sdk.adapters.srv import discover_hubs
from device_sdk.concierge.fetch import ConciergeFetcher
from device_sdk.config import ClientConfig, DnsSettings, HubEndpoint
from device_sdk.engine.dialer import Dialer
from device_sdk.errors import ConciergeUnavailable
from device_sdk.metrics import MetricsRecorder
from tests.integration.test_happy_eyeballs import BLACKHOLE, listener, syn_blackhole

pytestmark = pytest.mark.integration

PROMPT = 0.3  # seconds from cancel() to the wait's end; the waits here last 5 s or more


@contextlib.contextmanager
def silent_nameserver(host: str = "127.0.0.1") -> Iterator[socket.socket]:
    """A UDP socket that takes queries and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        yield sock


class Worker:
    """Runs ``work`` on a thread and records how and when it ended."""

    def __init__(self, work: Callable[[], object]) -> None:
        self.error: BaseException | None = None
        self.ended_at: float | None = None
        self._thread = threading.Thread(target=self._run, args=(work,), daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[], object]) -> None:
        try:
            work()
        except BaseException as exc:  # recorded for the test to judge
            self.error = exc
        self.ended_at = time.monotonic()

    def join(self) -> None:
        self._thread.join(5)
        assert not self._thread.is_alive(), "the wait did not end"


def cancel_while_waiting(token: CancelToken, worker: Worker) -> float:
    """Cancel ``token``; return how long ``worker`` took to end after that."""
    cancelled_at = time.monotonic()
    token.cancel()
    worker.join()
    assert worker.ended_at is not None
    return worker.ended_at - cancelled_at


def wait_for_query(nameserver: socket.socket) -> None:
    """Block until the resolver's query reaches the silent nameserver (bounded)."""
    readable, _, _ = select.select([nameserver], [], [], 3.0)
    assert readable, "no query reached the nameserver"


@pytest.fixture
def token() -> Iterator[CancelToken]:
    token = CancelToken()
    yield token
    token.close()


def test_a_resolver_waiting_on_a_silent_nameserver_stops_when_cancelled(
    token: CancelToken,
) -> None:
    with silent_nameserver() as nameserver:
        settings = DnsSettings(
            nameservers=("127.0.0.1",), port=nameserver.getsockname()[1], timeout=5, lifetime=10
        )
        resolver = FreshResolver(settings, cancel=token)
        worker = Worker(lambda: resolver.resolve_fresh("hub.device-sdk.test"))
        wait_for_query(nameserver)
        took = cancel_while_waiting(token, worker)
    assert isinstance(worker.error, Cancelled), worker.error
    assert took < PROMPT


def test_a_cancelled_resolver_sends_nothing(token: CancelToken) -> None:
    token.cancel()
    with silent_nameserver() as nameserver:
        settings = DnsSettings(nameservers=("127.0.0.1",), port=nameserver.getsockname()[1])
        with pytest.raises(Cancelled):
            FreshResolver(settings, cancel=token).resolve_fresh("hub.device-sdk.test")
        assert not select.select([nameserver], [], [], 0.05)[0]


def test_a_connect_race_against_a_blackhole_stops_when_cancelled(token: CancelToken) -> None:
    with listener("127.0.0.2") as port, syn_blackhole(BLACKHOLE, port):
        worker = Worker(lambda: race_connects((BLACKHOLE,), port, timeout=5.0, cancel=token))
        time.sleep(0.1)  # the SYN is out and unanswered
        took = cancel_while_waiting(token, worker)
    assert isinstance(worker.error, Cancelled), worker.error
    assert took < PROMPT


def test_a_failback_probe_of_a_mute_tls_hub_stops_when_cancelled(token: CancelToken) -> None:
    # The TCP connect succeeds; the hub never answers the TLS ClientHello.
    with socket.create_server(("127.0.0.1", 0)) as mute:
        hub = HubEndpoint(name="home", fqdn="127.0.0.1", port=mute.getsockname()[1])
        resolver = FreshResolver(DnsSettings(), cancel=token)
        worker = Worker(lambda: hub_answers(hub, resolver, timeout=5.0, cancel=token))
        time.sleep(0.2)  # inside the handshake
        took = cancel_while_waiting(token, worker)
    assert isinstance(worker.error, Cancelled), worker.error
    assert took < PROMPT


def test_the_concierge_fetch_stops_resolving_when_cancelled(token: CancelToken) -> None:
    with silent_nameserver() as nameserver:
        settings = DnsSettings(
            nameservers=("127.0.0.1",), port=nameserver.getsockname()[1], timeout=5, lifetime=10
        )
        fetcher = ConciergeFetcher(
            "http://concierge.device-sdk.test/v1/endpoint",
            timeout=8.0,
            allow_plain_http=True,
            resolver=FreshResolver(settings, cancel=token),
        )
        worker = Worker(fetcher.fetch)
        wait_for_query(nameserver)
        took = cancel_while_waiting(token, worker)
    assert isinstance(worker.error, ConciergeUnavailable), worker.error
    assert isinstance(worker.error.__cause__, Cancelled)
    assert took < PROMPT


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_the_concierge_fetch_stops_waiting_for_a_mute_server_when_cancelled(
    token: CancelToken, scheme: str
) -> None:
    # http: connected, the request sent, no answer; https: no answer to the ClientHello.
    with socket.create_server(("127.0.0.1", 0)) as mute:
        fetcher = ConciergeFetcher(
            f"{scheme}://127.0.0.1:{mute.getsockname()[1]}/v1/endpoint",
            timeout=8.0,
            allow_plain_http=True,
            cancel=token,
        )
        worker = Worker(fetcher.fetch)
        time.sleep(0.2)  # waiting for the server
        took = cancel_while_waiting(token, worker)
    assert isinstance(worker.error, ConciergeUnavailable), worker.error
    assert isinstance(worker.error.__cause__, Cancelled)
    assert took < PROMPT


# --------------------------------------------------------------------------- the dialer


class FixedResolver:
    """A user's fake resolver: only ``resolve_fresh(fqdn)``."""

    def __init__(self, *addresses: str) -> None:
        self._addresses = addresses

    def resolve_fresh(self, fqdn: str) -> Resolution:
        return Resolution(fqdn, self._addresses, 0)


def dialer_for(token: CancelToken, resolver: FixedResolver, emitted: list[events.Event]) -> Dialer:
    hub = HubEndpoint(name="primary", fqdn="primary.device-sdk.test", port=1, tls=None)
    config = ClientConfig(client_id="cancel-device", hubs=(hub,))
    return Dialer(
        config,
        resolver=resolver,
        link_factory=PahoLink,
        metrics=MetricsRecorder(),
        emit=emitted.append,
        cancel=token,
    )


@pytest.mark.parametrize("addresses", [1, 2], ids=["one address: the link", "two: the race"])
def test_a_dial_into_a_blackhole_stops_when_cancelled(token: CancelToken, addresses: int) -> None:
    emitted: list[events.Event] = []
    with listener("127.0.0.2") as port, syn_blackhole(BLACKHOLE, port):
        hub = HubEndpoint(name="primary", fqdn="primary.device-sdk.test", port=port, tls=None)
        dialer = dialer_for(token, FixedResolver(*[BLACKHOLE] * addresses), emitted)
        worker = Worker(lambda: dialer.open(hub))
        time.sleep(0.1)
        took = cancel_while_waiting(token, worker)
    assert isinstance(worker.error, Cancelled), worker.error
    assert took < PROMPT
    # Closing is not a failure of the hub's addresses.
    assert not [e for e in emitted if isinstance(e, events.DialFailed)]


def test_an_srv_lookup_on_a_silent_nameserver_stops_when_cancelled(token: CancelToken) -> None:
    with silent_nameserver() as nameserver:
        settings = DnsSettings(
            nameservers=("127.0.0.1",), port=nameserver.getsockname()[1], timeout=5, lifetime=10
        )
        worker = Worker(
            lambda: discover_hubs(
                "device-sdk.test", secure=False, dns=settings, rng=random.Random(1), cancel=token
            )
        )
        wait_for_query(nameserver)
        took = cancel_while_waiting(token, worker)
    assert isinstance(worker.error, Cancelled), worker.error
    assert took < PROMPT

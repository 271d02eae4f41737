"""The concierge fetch's deadline covers DNS, and the device resolves the concierge itself.

The fetch resolves the concierge's host with the SDK's resolver and the
client's own nameservers, never the OS resolver, and a nameserver that never
answers costs it its deadline and no more. The silent nameserver is a bound
UDP socket nobody reads, on another loopback address at the real DNS server's port.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from device_sdk import DeviceClient, events
from device_sdk.adapters.resolver import FreshResolver
from device_sdk.concierge.fetch import ConciergeFetcher
from device_sdk.config import DnsSettings
from device_sdk.errors import ConciergeUnavailable
from device_sdk.testbed import DOMAIN, DnsServer, Testbed
from device_sdk.testbed.pytest_plugin import TestbedFactory
from tests.integration.support import EventLog
from tests.integration.test_concierge_device import CraftedConcierge

pytestmark = pytest.mark.integration

NAME = f"concierge.{DOMAIN}"
SILENT = "127.0.0.77"
TIMEOUT = 0.5
MARGIN = 0.25


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer(host="127.0.0.1", port=0) as server:
        server.set_address(NAME, ["127.0.0.1"], ttl=1)
        yield server


@pytest.fixture
def silent(dns: DnsServer) -> Iterator[socket.socket]:
    """A nameserver at SILENT, on the real server's port, that never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((SILENT, dns.port))
        yield sock


@pytest.fixture
def concierge() -> Iterator[CraftedConcierge]:
    with CraftedConcierge() as server:
        server.body = b"{}"
        yield server


def fetcher(concierge: CraftedConcierge, host: str, **dns: object) -> ConciergeFetcher:
    port = concierge.server.server_address[1]
    return ConciergeFetcher(
        f"http://{host}:{port}/v1/endpoint",
        timeout=TIMEOUT,
        allow_plain_http=True,
        resolver=FreshResolver(DnsSettings(**dns)) if dns else None,  # type: ignore[arg-type]
    )


def test_a_nameserver_that_never_answers_costs_the_fetch_only_its_deadline(
    dns: DnsServer, silent: socket.socket, concierge: CraftedConcierge
) -> None:
    # Per try and in all, DNS alone would wait far longer than the fetch may.
    slow = fetcher(
        concierge, NAME, nameservers=(SILENT, dns.host), port=dns.port, timeout=2.0, lifetime=4.0
    )
    started = time.monotonic()
    with pytest.raises(ConciergeUnavailable):
        slow.fetch()
    assert time.monotonic() - started < TIMEOUT + MARGIN
    # The same concierge answers when the silent nameserver gives up in time:
    # the next nameserver, in order, knows the name.
    quick = fetcher(
        concierge, NAME, nameservers=(SILENT, dns.host), port=dns.port, timeout=0.1, lifetime=4.0
    )
    assert quick.fetch() == b"{}"
    # A and AAAA go out together, in either order: the A question reached it.
    assert "A" in {q.rdtype for q in dns.queries(name=NAME)}


def test_ip_literals_and_localhost_need_no_dns(
    silent: socket.socket, concierge: CraftedConcierge
) -> None:
    port = silent.getsockname()[1]
    for host in ("127.0.0.1", "localhost"):
        started = time.monotonic()
        assert fetcher(concierge, host, nameservers=(SILENT,), port=port).fetch() == b"{}"
        assert time.monotonic() - started < TIMEOUT
    assert fetcher(concierge, "localhost").fetch() == b"{}"  # the default resolver, too
    silent.setblocking(False)
    with pytest.raises(BlockingIOError):
        silent.recv(512)  # not one query was sent


def test_the_device_finds_its_concierge_through_its_own_nameservers(
    testbed_factory: TestbedFactory,
) -> None:
    bed: Testbed = testbed_factory(concierge=True)
    assert bed.dns is not None and bed.concierge is not None
    # A name only the testbed's DNS knows: the OS resolver could not find it.
    bed.dns.set_address(NAME, ["127.0.0.1"], ttl=1)
    port = bed.concierge.url.rsplit(":", 1)[1]
    settings = bed.concierge_settings(url=f"http://{NAME}:{port}/v1/endpoint")
    log = EventLog()
    with DeviceClient(bed.client_config("dns-device", concierge=settings), on_event=log):
        log.wait_for(events.ConciergeUpdate, 3.0)
    assert bed.dns.queries(name=NAME, rdtype="A")

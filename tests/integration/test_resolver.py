"""FreshResolver against a real authoritative DNS server on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from device_sdk.adapters.resolver import FreshResolver
from device_sdk.config import DnsSettings
from device_sdk.errors import NameNotFound, NoAddress, ResolverFailure, ResolveTimeout
from device_sdk.testbed import DnsServer

NAME = "hub.device-sdk.test"


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer(host="127.0.0.1", port=0) as server:
        yield server


def resolver_for(dns: DnsServer, *, ipv6: bool = True, lifetime: float = 1.0) -> FreshResolver:
    settings = DnsSettings(
        nameservers=(dns.host,), port=dns.port, timeout=lifetime / 2, lifetime=lifetime, ipv6=ipv6
    )
    return FreshResolver(settings)


def test_every_call_asks_the_nameserver_again(dns: DnsServer) -> None:
    dns.set_address(NAME, ["127.0.0.2"], ttl=3600)  # a long TTL must not matter
    resolver = resolver_for(dns)
    assert resolver.resolve_fresh(NAME).addresses == ("127.0.0.2",)
    dns.set_address(NAME, ["127.0.0.3"], ttl=3600)
    assert resolver.resolve_fresh(NAME).addresses == ("127.0.0.3",)
    assert len(dns.queries(name=NAME, rdtype="A")) == 2
    assert len(dns.queries(name=NAME, rdtype="AAAA")) == 2


def test_ipv6_and_ipv4_are_interleaved_ipv6_first(dns: DnsServer) -> None:
    dns.set_address(NAME, ["127.0.0.2", "127.0.0.3", "::1"])
    resolution = resolver_for(dns).resolve_fresh(NAME)
    # An RRset has no order; the interleaving does: v6, v4, then the remaining v4.
    assert resolution.addresses[0] == "::1"
    assert sorted(resolution.addresses[1:]) == ["127.0.0.2", "127.0.0.3"]
    assert resolution.queried == 2


def test_ipv6_can_be_switched_off(dns: DnsServer) -> None:
    dns.set_address(NAME, ["127.0.0.2", "::1"])
    assert resolver_for(dns, ipv6=False).resolve_fresh(NAME).addresses == ("127.0.0.2",)
    assert not dns.queries(rdtype="AAAA")


def test_ip_literals_and_localhost_need_no_dns(dns: DnsServer) -> None:
    resolver = resolver_for(dns)
    assert resolver.resolve_fresh("127.0.0.9").addresses == ("127.0.0.9",)
    assert resolver.resolve_fresh("::1").addresses == ("::1",)
    assert resolver.resolve_fresh("localhost").queried == 0
    assert not dns.queries()


def test_nxdomain_is_name_not_found_and_skips_aaaa(dns: DnsServer) -> None:
    with pytest.raises(NameNotFound, match="NXDOMAIN"):
        resolver_for(dns).resolve_fresh("missing.device-sdk.test")
    assert [q.rdtype for q in dns.queries()] == ["A"]


def test_name_without_addresses_is_no_address(dns: DnsServer) -> None:
    dns.set_address(NAME, [])
    with pytest.raises(NoAddress):
        resolver_for(dns).resolve_fresh(NAME)


def test_servfail_is_resolver_failure(dns: DnsServer) -> None:
    dns.set_address(NAME, ["127.0.0.2"])
    dns.fail(NAME)
    with pytest.raises(ResolverFailure) as caught:
        resolver_for(dns).resolve_fresh(NAME)
    assert caught.value.retryable
    assert caught.value.__cause__ is not None  # the dnspython error, kept for logs


def test_silence_is_a_bounded_timeout(dns: DnsServer) -> None:
    dns.set_address(NAME, ["127.0.0.2"])
    dns.drop(NAME)
    with pytest.raises(ResolveTimeout):
        resolver_for(dns, lifetime=0.3).resolve_fresh(NAME)

"""FreshResolver against a real authoritative DNS server on loopback."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator

import pytest

from device_sdk.adapters.resolver import FreshResolver, Resolution, resolve_within
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


def test_nxdomain_is_name_not_found_and_no_second_wait(dns: DnsServer) -> None:
    # A and AAAA go out together; the A answer's NXDOMAIN decides at once.
    started = time.monotonic()
    with pytest.raises(NameNotFound, match="NXDOMAIN"):
        resolver_for(dns).resolve_fresh("missing.device-sdk.test")
    assert time.monotonic() - started < 0.25
    assert sorted(q.rdtype for q in dns.queries()) in (["A"], ["A", "AAAA"])


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


def test_one_lifetime_covers_both_questions(dns: DnsServer) -> None:
    dns.set_address(NAME, ["127.0.0.2"])
    dns.drop(NAME)
    started = time.monotonic()
    with pytest.raises(ResolveTimeout):
        resolver_for(dns, lifetime=0.3).resolve_fresh(NAME)
    # A and AAAA share the lifetime: a silent server costs it once, not once per type.
    assert time.monotonic() - started < 0.3 + 0.2


def test_a_deadline_cuts_the_lifetime_short(dns: DnsServer) -> None:
    dns.set_address(NAME, ["127.0.0.2"])
    dns.drop(NAME)
    resolver = resolver_for(dns, lifetime=4.0)
    started = time.monotonic()
    with pytest.raises(ResolveTimeout):
        resolver.resolve_fresh(NAME, deadline=started + 0.2)
    assert time.monotonic() - started < 0.2 + 0.2
    with pytest.raises(ResolveTimeout):  # a deadline already gone: no wait at all
        resolver.resolve_fresh(NAME, deadline=started)


def test_a_silent_nameserver_is_skipped_for_the_next_one(dns: DnsServer) -> None:
    dns.set_address(NAME, ["127.0.0.2"])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.77", dns.port))  # never answers
        settings = DnsSettings(
            nameservers=("127.0.0.77", dns.host), port=dns.port, timeout=0.1, lifetime=2.0
        )
        assert FreshResolver(settings).resolve_fresh(NAME).addresses == ("127.0.0.2",)
        assert select.select([silent], [], [], 0)[0]  # it was asked first


def test_an_answer_too_big_for_a_datagram_is_asked_again_over_tcp(dns: DnsServer) -> None:
    many = [f"127.0.1.{n}" for n in range(1, 61)]  # 60 A records: past 512 bytes
    dns.set_address(NAME, many)
    resolution = resolver_for(dns, ipv6=False).resolve_fresh(NAME)
    assert sorted(resolution.addresses) == sorted(many)
    assert [q.transport for q in dns.queries(name=NAME)] == ["udp", "tcp"]


def test_a_fake_resolver_needs_only_resolve_fresh(dns: DnsServer) -> None:
    class Fake:
        def resolve_fresh(self, fqdn: str) -> Resolution:
            return Resolution(fqdn, ("127.0.0.5",), 0)

    assert resolve_within(Fake(), NAME, time.monotonic() + 1).addresses == ("127.0.0.5",)
    dns.set_address(NAME, ["127.0.0.2"])
    real = resolve_within(resolver_for(dns), NAME, time.monotonic() + 1)
    assert real.addresses == ("127.0.0.2",)


def test_a_and_aaaa_are_asked_at_the_same_time(dns: DnsServer) -> None:
    # A silent nameserver makes the order visible: asked one after the other, AAAA
    # would go out only once the A lookup had used up the lifetime (so never).
    dns.set_address("slow.example.test", ["192.0.2.1", "2001:db8::1"], ttl=1)
    dns.drop("slow.example.test")
    resolver = FreshResolver(
        DnsSettings(nameservers=(dns.host,), port=dns.port, timeout=0.2, lifetime=0.6)
    )
    started = time.monotonic()
    with pytest.raises(ResolveTimeout):
        resolver.resolve_fresh("slow.example.test")
    took = time.monotonic() - started
    first_a = min(q.time for q in dns.queries("slow.example.test", "A"))
    first_aaaa = min(q.time for q in dns.queries("slow.example.test", "AAAA"))
    assert abs(first_aaaa - first_a) < 0.1
    assert took < 1.0, took  # one lifetime, not two
    dns.clear_fault("slow.example.test")
    found = resolver.resolve_fresh("slow.example.test")
    assert found.addresses == ("2001:db8::1", "192.0.2.1") and found.queried == 2

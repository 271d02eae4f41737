"""DNS SRV discovery against the real loopback DNS server: order, weights, freshness, errors."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from device_sdk.adapters.srv import (
    SrvRecord,
    discover_hubs,
    hub_name_for,
    hubs_from_records,
    order_records,
)
from device_sdk.config import DnsSettings, HubEndpoint, TlsSettings
from device_sdk.errors import NameNotFound, NoAddress, ResolverFailure, ResolveTimeout
from device_sdk.testbed import DnsServer
from device_sdk.testbed.dns_server import SrvTarget

pytestmark = pytest.mark.integration

DOMAIN = "fleet.device-sdk.test"
PLAIN = f"_mqtt._tcp.{DOMAIN}"
SECURE = f"_secure-mqtt._tcp.{DOMAIN}"


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


def settings_for(server: DnsServer) -> DnsSettings:
    return DnsSettings(nameservers=(server.host,), port=server.port, timeout=0.3, lifetime=0.6)


def target(name: str, *, priority: int = 10, weight: int = 0, port: int = 1883) -> SrvTarget:
    return SrvTarget(priority=priority, weight=weight, port=port, target=f"{name}.{DOMAIN}")


def discover(server: DnsServer, *, secure: bool = False, seed: int = 1) -> tuple[HubEndpoint, ...]:
    return discover_hubs(DOMAIN, secure=secure, dns=settings_for(server), rng=random.Random(seed))


def test_hubs_come_in_priority_order(dns_server: DnsServer) -> None:
    dns_server.set_srv(
        PLAIN,
        [
            target("c", priority=30),
            target("a", priority=10),
            target("b", priority=20, port=1884),
        ],
    )
    hubs = discover(dns_server)
    assert [(hub.fqdn, hub.port) for hub in hubs] == [
        (f"a.{DOMAIN}", 1883),
        (f"b.{DOMAIN}", 1884),
        (f"c.{DOMAIN}", 1883),
    ]
    assert all(hub.tls is None for hub in hubs)
    assert [hub.name for hub in hubs] == [
        f"a.{DOMAIN}_1883",
        f"b.{DOMAIN}_1884",
        f"c.{DOMAIN}_1883",
    ]


def test_weights_share_the_first_place_roughly_in_proportion(dns_server: DnsServer) -> None:
    dns_server.set_srv(
        PLAIN,
        [target("heavy", weight=60), target("medium", weight=30), target("light", weight=10)],
    )
    settings = settings_for(dns_server)
    rng = random.Random(2782)
    firsts = Counter(
        discover_hubs(DOMAIN, secure=False, dns=settings, rng=rng)[0].fqdn.split(".")[0]
        for _ in range(300)
    )
    assert 150 <= firsts["heavy"] <= 210  # expected 180
    assert 65 <= firsts["medium"] <= 115  # expected 90
    assert 12 <= firsts["light"] <= 50  # expected 30
    assert len(dns_server.queries(PLAIN, "SRV")) == 300  # one fresh query per discovery


def test_a_changed_answer_is_seen_on_the_next_call(dns_server: DnsServer) -> None:
    dns_server.set_srv(PLAIN, [target("old")], ttl=3600)
    assert discover(dns_server)[0].fqdn == f"old.{DOMAIN}"
    dns_server.set_srv(PLAIN, [target("new")], ttl=3600)
    assert discover(dns_server)[0].fqdn == f"new.{DOMAIN}"  # a long TTL changes nothing


def test_secure_discovery_asks_secure_mqtt_and_uses_tls(
    dns_server: DnsServer, tmp_path: Path
) -> None:
    dns_server.set_srv(PLAIN, [target("plain")])
    dns_server.set_srv(SECURE, [target("tls", port=8883)])
    ca_file = tmp_path / "hub-ca.pem"
    ca_file.write_text("a CA bundle (only its existence is checked here)\n")
    tls = TlsSettings(ca_file=str(ca_file))
    hubs = discover_hubs(
        DOMAIN, secure=True, dns=settings_for(dns_server), rng=random.Random(1), tls=tls
    )
    assert [(hub.fqdn, hub.port, hub.tls) for hub in hubs] == [(f"tls.{DOMAIN}", 8883, tls)]
    assert discover(dns_server, secure=True)[0].tls == TlsSettings()


def test_duplicate_records_give_one_hub(dns_server: DnsServer) -> None:
    dns_server.set_srv(PLAIN, [target("a", priority=1), target("a", priority=5), target("b")])
    assert [hub.fqdn for hub in discover(dns_server)] == [f"a.{DOMAIN}", f"b.{DOMAIN}"]


def test_a_dot_target_means_not_available() -> None:
    # The testbed's DnsServer refuses to serve a root target, so this half is pure.
    dot = SrvRecord(priority=0, weight=0, port=0, target="")
    good = SrvRecord(priority=5, weight=0, port=1883, target=f"a.{DOMAIN}")
    with pytest.raises(NoAddress, match="not available"):
        hubs_from_records(PLAIN, [dot], rng=random.Random(1), tls=None)
    hubs = hubs_from_records(PLAIN, [dot, good], rng=random.Random(1), tls=None)
    assert [hub.fqdn for hub in hubs] == [f"a.{DOMAIN}"]


def test_dns_failures_are_typed(dns_server: DnsServer) -> None:
    with pytest.raises(NameNotFound):
        discover(dns_server)
    dns_server.set_address(PLAIN, ["127.0.0.9"])  # the name exists, without SRV
    with pytest.raises(NoAddress):
        discover(dns_server)
    dns_server.fail(PLAIN)
    with pytest.raises(ResolverFailure):
        discover(dns_server)
    dns_server.drop(PLAIN)
    with pytest.raises(ResolveTimeout):
        discover(dns_server)


def test_unusable_targets_are_skipped(dns_server: DnsServer) -> None:
    dns_server.set_srv(PLAIN, [target("zero-port", port=0), target("good", priority=20)])
    assert [hub.fqdn for hub in discover(dns_server)] == [f"good.{DOMAIN}"]
    dns_server.set_srv(PLAIN, [target("zero-port", port=0)])
    with pytest.raises(ResolverFailure):
        discover(dns_server)


def test_rfc_2782_order_is_pure_and_seeded() -> None:
    records = [
        SrvRecord(priority=1, weight=0, port=1, target="zero.example.com"),
        SrvRecord(priority=1, weight=5, port=1, target="five.example.com"),
        SrvRecord(priority=0, weight=0, port=1, target="first.example.com"),
    ]
    orders = {tuple(r.target for r in order_records(records, random.Random(s))) for s in range(50)}
    # Priority 0 always leads; the weight-0 record can still come first in its group (draw 0).
    assert all(order[0] == "first.example.com" for order in orders)
    assert {order[1] for order in orders} == {"zero.example.com", "five.example.com"}


def test_long_target_names_still_make_valid_unique_hub_names() -> None:
    long_a = "a" * 60 + ".example.com"
    long_b = "a" * 60 + ".example.org"
    names = {hub_name_for(long_a, 8883), hub_name_for(long_b, 8883), hub_name_for(long_a, 1883)}
    assert len(names) == 3
    for name in names:
        HubEndpoint(name=name, fqdn="x.example.com")  # accepted by the hub name rules
        assert len(name) <= 63

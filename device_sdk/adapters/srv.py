"""Hub discovery from DNS SRV records (RFC 2782): a second source of the ordered hub list.

Operators who already run DNS-based failover publish ``_secure-mqtt._tcp.<domain>``
(TLS) or ``_mqtt._tcp.<domain>`` (plain) and need no concierge: lower priority
values come first, and within one priority the weights share the load.

Like hub names, SRV answers are never cached (see :mod:`device_sdk.adapters.resolver`):
each call asks the nameservers again, so a changed answer is used on the next
attempt. Each target becomes a :class:`~device_sdk.config.HubEndpoint` whose
FQDN is still resolved fresh when it is dialled.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

import dns.name
import dns.rdtypes.IN.SRV

from device_sdk.adapters.cancel import NEVER, CancelToken
from device_sdk.adapters.resolver import FreshResolver
from device_sdk.config import DnsSettings, HubEndpoint, TlsSettings
from device_sdk.errors import ConfigError, NoAddress, ResolverFailure

__all__ = [
    "SrvRecord",
    "discover_hubs",
    "hub_name_for",
    "hubs_from_records",
    "order_records",
    "service_name",
]

_MAX_HUB_NAME = 63
_DIGEST_CHARS = 10


@dataclass(frozen=True, slots=True, kw_only=True)
class SrvRecord:
    """One SRV answer: ``target`` without the final dot, in lower case."""

    priority: int
    weight: int
    port: int
    target: str  # "" for the root target "."


def service_name(domain: str, *, secure: bool) -> str:
    """``_secure-mqtt._tcp.<domain>`` or ``_mqtt._tcp.<domain>``."""
    try:
        name = dns.name.from_text(domain)
    except dns.exception.DNSException as exc:
        raise ConfigError("srv.domain", domain, "a DNS name such as example.com") from exc
    if name == dns.name.root:
        raise ConfigError("srv.domain", domain, "a DNS name other than the root")
    service = "_secure-mqtt" if secure else "_mqtt"
    return f"{service}._tcp.{name.to_text(omit_final_dot=True)}"


def discover_hubs(
    domain: str,
    *,
    secure: bool,
    dns: DnsSettings,
    rng: random.Random,
    tls: TlsSettings | None = None,
    cancel: CancelToken = NEVER,
) -> tuple[HubEndpoint, ...]:
    """The hubs the domain's SRV records name, in RFC 2782 order, asked fresh.

    ``secure`` picks ``_secure-mqtt`` (hubs use ``tls``, default: the system trust
    store) or ``_mqtt`` (plain). ``rng`` drives the weighted choice, so tests
    can seed it. Raises a :class:`~device_sdk.errors.ResolveError` subclass:
    NameNotFound (NXDOMAIN), NoAddress (no SRV records, or the "." target that
    says the service is decidedly not available), ResolverFailure, ResolveTimeout;
    ``Cancelled`` once ``cancel`` is set (the lookup is asked like any hub name,
    through :class:`~device_sdk.adapters.resolver.FreshResolver`).
    """
    name = service_name(domain, secure=secure)
    hub_tls = (tls if tls is not None else TlsSettings()) if secure else None
    found = FreshResolver(dns, cancel=cancel).records(name, "SRV")
    return hubs_from_records(name, _records(found), rng=rng, tls=hub_tls)


def hubs_from_records(
    name: str, records: Sequence[SrvRecord], *, rng: random.Random, tls: TlsSettings | None
) -> tuple[HubEndpoint, ...]:
    """The pure half of :func:`discover_hubs`: SRV records of ``name`` to ordered hubs.

    A target of ``""`` (the root, ".") is skipped; when nothing else is left it
    means the service is not available here (RFC 2782): NoAddress.
    """
    if not records:
        raise NoAddress(f"{name} has no SRV records")
    usable = [record for record in records if record.target]
    if not usable:
        raise NoAddress(f"{name} says the service is not available here (target '.')")
    hubs: list[HubEndpoint] = []
    seen: set[str] = set()
    for record in order_records(_checked(name, usable), rng):
        hub_name = hub_name_for(record.target, record.port)
        if hub_name in seen:  # the same target and port listed twice: dial it once
            continue
        seen.add(hub_name)
        hubs.append(HubEndpoint(name=hub_name, fqdn=record.target, port=record.port, tls=tls))
    return tuple(hubs)


def _records(found: Sequence[object]) -> list[SrvRecord]:
    return [_record(r) for r in found if isinstance(r, dns.rdtypes.IN.SRV.SRV)]


def _record(rdata: dns.rdtypes.IN.SRV.SRV) -> SrvRecord:
    target = rdata.target.to_text(omit_final_dot=True).lower()
    return SrvRecord(
        priority=rdata.priority,
        weight=rdata.weight,
        port=rdata.port,
        target="" if target in ("", ".") else target,
    )


def _checked(name: str, records: list[SrvRecord]) -> list[SrvRecord]:
    """Drop records a HubEndpoint cannot take (port 0, a target that is not a host name,
    or one whose hub name would be invalid, such as an IPv6 literal's)."""
    good = []
    for record in records:
        try:
            name_for = hub_name_for(record.target, record.port)
            HubEndpoint(name=name_for, fqdn=record.target, port=record.port, tls=None)
        except ConfigError:
            continue
        good.append(record)
    if not good:
        raise ResolverFailure(f"{name} has no SRV record with a usable target and port")
    return good


def order_records(records: Sequence[SrvRecord], rng: random.Random) -> list[SrvRecord]:
    """RFC 2782 order: ascending priority; within a priority, weighted random selection."""
    ordered: list[SrvRecord] = []
    for priority in sorted({record.priority for record in records}):
        group = [record for record in records if record.priority == priority]
        ordered.extend(_weighted_order(group, rng))
    return ordered


def _weighted_order(group: list[SrvRecord], rng: random.Random) -> list[SrvRecord]:
    # RFC 2782: put weight-0 records first, then repeatedly draw a number in
    # [0, total weight] and take the first record whose running sum reaches it.
    # Weight-0 records thus come first only when the draw is 0: rarely, but not never.
    remaining = sorted(group, key=lambda record: record.weight != 0)
    chosen: list[SrvRecord] = []
    while remaining:  # bounded: one record leaves per pass
        draw = rng.randint(0, sum(record.weight for record in remaining))
        running = 0
        for index, record in enumerate(remaining):
            running += record.weight
            if running >= draw:
                chosen.append(remaining.pop(index))
                break
    return chosen


def hub_name_for(target: str, port: int) -> str:
    """A stable HubEndpoint name for an SRV target: ``<target>_<port>``.

    Stable across discoveries, so the failover machine keeps a target's failure
    history when the same answer comes back. Names longer than 63 characters
    keep a prefix of the target and add a digest of the whole, so they stay unique.
    """
    name = f"{target}_{port}"
    if len(name) <= _MAX_HUB_NAME:
        return name
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:_DIGEST_CHARS]
    keep = _MAX_HUB_NAME - len(digest) - len(str(port)) - 2
    return f"{target[:keep]}_{digest}_{port}"

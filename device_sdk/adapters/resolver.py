"""Fresh DNS resolution with dnspython: the resolver seam.

Why there is no cache, anywhere: a regional failover often keeps the hub's FQDN
and moves its IP. Any cached answer (ours, dnspython's, the OS's) makes the
device keep dialling a dead address until the entry expires. So every connect
attempt asks the nameservers again; dnspython queries them directly, which also
bypasses the OS resolver cache (nscd, systemd-resolved). A DNS round trip is a
few milliseconds, which is cheap next to a reconnect.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import dns.exception
import dns.inet
import dns.resolver

from device_sdk.config import DnsSettings, is_ip_literal
from device_sdk.errors import (
    NameNotFound,
    NoAddress,
    ResolveError,
    ResolverFailure,
    ResolveTimeout,
)

_LOCALHOST = ("127.0.0.1", "::1")


@dataclass(frozen=True, slots=True)
class Resolution:
    """The addresses one fresh lookup returned, in the order they should be dialled."""

    fqdn: str
    addresses: tuple[str, ...]
    queried: int  # DNS queries sent (0 for IP literals and localhost)


def uncached_resolver(settings: DnsSettings) -> dns.resolver.Resolver:
    """A dnspython resolver for ``settings`` with no cache (see the module docstring)."""
    resolver = dns.resolver.Resolver(configure=not settings.nameservers)
    if settings.nameservers:
        resolver.nameservers = list(settings.nameservers)
    resolver.port = settings.port
    resolver.timeout = settings.timeout
    resolver.lifetime = settings.lifetime
    resolver.cache = None  # explicit: dnspython's default today, and it must stay so
    return resolver


class Resolver(Protocol):
    """The resolver seam. :class:`FreshResolver` is the real one; tests may pass a fake."""

    def resolve_fresh(self, fqdn: str) -> Resolution: ...


class FreshResolver:
    """Resolves A and AAAA records with dnspython on every call, never caching."""

    def __init__(self, settings: DnsSettings) -> None:
        self._settings = settings
        # dnspython resolvers are not documented as thread-safe; a lock keeps the
        # engine and failback probes from sharing one mid-query.
        self._lock = threading.Lock()
        self._resolver = uncached_resolver(settings)

    def resolve_fresh(self, fqdn: str) -> Resolution:
        """Every address of ``fqdn``, IPv6 and IPv4 interleaved (RFC 8305 order).

        Raises a :class:`ResolveError` subclass when no address can be had.
        """
        host = fqdn.rstrip(".")
        if is_ip_literal(host):
            return Resolution(fqdn, (host,), 0)
        if host.lower() == "localhost":
            return Resolution(fqdn, _LOCALHOST, 0)
        with self._lock:
            v4, v4_error = self._query(host, "A")
            if isinstance(v4_error, NameNotFound):
                raise v4_error  # no point asking AAAA of a name that does not exist
            v6, v6_error = self._query(host, "AAAA") if self._settings.ipv6 else ((), None)
        addresses = _interleave(v6, v4)
        queried = 2 if self._settings.ipv6 else 1
        if addresses:
            return Resolution(fqdn, addresses, queried)
        raise v4_error or v6_error or NoAddress(f"{host} has no A or AAAA records")

    def _query(self, host: str, rdtype: str) -> tuple[tuple[str, ...], ResolveError | None]:
        try:
            answer = self._resolver.resolve(host, rdtype, search=False, raise_on_no_answer=False)
        except dns.exception.DNSException as exc:
            return (), translate_dns_error(host, rdtype, exc)
        if answer.rrset is None:
            return (), None
        return tuple(rdata.address for rdata in answer.rrset), None


def translate_dns_error(host: str, rdtype: str, exc: dns.exception.DNSException) -> ResolveError:
    """dnspython's exceptions become ours here, and only here."""
    if isinstance(exc, dns.resolver.NXDOMAIN):
        error: ResolveError = NameNotFound(f"{host} does not exist (NXDOMAIN)")
    elif isinstance(exc, dns.resolver.LifetimeTimeout | dns.exception.Timeout):
        error = ResolveTimeout(f"no nameserver answered for {host} {rdtype} in time")
    elif isinstance(exc, dns.resolver.NoNameservers):
        error = ResolverFailure(f"every nameserver failed for {host} {rdtype}: {exc}")
    else:
        error = ResolverFailure(f"DNS lookup of {host} {rdtype} failed: {exc}")
    error.__cause__ = exc
    return error


def _interleave(first: tuple[str, ...], second: tuple[str, ...]) -> tuple[str, ...]:
    pairs = itertools.zip_longest(first, second)
    return tuple(address for pair in pairs for address in pair if address is not None)


def address_family_of(address: str) -> int:
    """socket.AF_INET or AF_INET6 for an IP literal."""
    return dns.inet.af_for_address(address)


ResolverFactory = Callable[[DnsSettings], Resolver]

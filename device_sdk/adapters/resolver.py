"""Fresh DNS resolution with dnspython: the resolver seam.

Why there is no cache, anywhere: a regional failover often keeps the hub's FQDN
and moves its IP. Any cached answer (ours, dnspython's, the OS's) makes the
device keep dialling a dead address until the entry expires. So every connect
attempt asks the nameservers again, directly, which also bypasses the OS
resolver cache (nscd, systemd-resolved). A DNS round trip is a few
milliseconds, which is cheap next to a reconnect.

Why not ``dns.resolver.Resolver.resolve``: it cannot be interrupted. A device
that is closing must not sit out a silent nameserver's whole lifetime, so each
try here is one UDP datagram (dnspython builds and parses the messages) and a
``select`` on its socket *and* a :class:`~device_sdk.adapters.cancel.CancelToken`.

With no nameservers configured, resolv.conf's are asked. When that names a
local caching stub (systemd-resolved's 127.0.0.53, a router's dnsmasq), the
stub still caches up to the TTL: name the upstream nameservers instead.
"""

from __future__ import annotations

import itertools
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import dns.exception
import dns.inet
import dns.message
import dns.query
import dns.rcode
import dns.rdata
import dns.rdatatype
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.resolver

from device_sdk.adapters.cancel import NEVER, CancelToken
from device_sdk.config import DnsSettings, is_ip_literal
from device_sdk.errors import (
    NameNotFound,
    NoAddress,
    ResolveError,
    ResolverFailure,
    ResolveTimeout,
)

_LOCALHOST = ("127.0.0.1", "::1")
# Bounds on loops that the lifetime already ends in practice: tries per lookup
# (a silent nameserver is asked again while time is left, as dnspython does),
# and datagrams read per try (stray or forged packets are skipped, not answered).
_MAX_TRIES = 64
_MAX_DATAGRAMS = 64


@dataclass(frozen=True, slots=True)
class Resolution:
    """The addresses one fresh lookup returned, in the order they should be dialled."""

    fqdn: str
    addresses: tuple[str, ...]
    queried: int  # DNS queries sent (0 for IP literals and localhost)


class Resolver(Protocol):
    """The resolver seam. :class:`FreshResolver` is the real one; tests may pass a fake."""

    def resolve_fresh(self, fqdn: str) -> Resolution: ...


def resolve_within(resolver: Resolver, fqdn: str, deadline: float) -> Resolution:
    """``resolver.resolve_fresh(fqdn)``, ending by ``deadline`` (monotonic) when it can.

    :class:`FreshResolver` takes the deadline; a fake resolver (which only has to
    provide ``resolve_fresh(fqdn)``) is asked as it is.
    """
    if isinstance(resolver, FreshResolver):
        return resolver.resolve_fresh(fqdn, deadline=deadline)
    return resolver.resolve_fresh(fqdn)


class FreshResolver:
    """Resolves A and AAAA records on every call, never caching.

    The nameservers of ``settings`` are asked in order, each try waiting up to
    ``settings.timeout``, the whole call up to ``settings.lifetime``; with no
    nameservers configured, those of resolv.conf (read again on every call, so a
    new DHCP lease is followed). ``cancel`` ends any wait at once with
    :class:`~device_sdk.adapters.cancel.Cancelled`. Holds no state between
    calls, so it is safe to share between threads.
    """

    def __init__(self, settings: DnsSettings, *, cancel: CancelToken = NEVER) -> None:
        self._settings = settings
        self._cancel = cancel

    def resolve_fresh(self, fqdn: str, *, deadline: float | None = None) -> Resolution:
        """Every address of ``fqdn``, IPv6 and IPv4 interleaved (RFC 8305 order).

        ``deadline`` (``time.monotonic()`` based) cuts the lifetime short. Raises
        a :class:`ResolveError` subclass when no address can be had, or
        ``Cancelled``.
        """
        host = fqdn.rstrip(".")
        if is_ip_literal(host):
            return Resolution(fqdn, (host,), 0)
        if host.lower() == "localhost":
            return Resolution(fqdn, _LOCALHOST, 0)
        end = self._end(deadline)
        servers = self._nameservers()
        aaaa = _Background(lambda: self._lookup(host, "AAAA", servers, end))
        if self._settings.ipv6:
            aaaa.start()  # asked at the same time as A: a lookup costs one round trip
        v4, v4_error = self._lookup(host, "A", servers, end)
        if isinstance(v4_error, NameNotFound):
            raise v4_error  # the name does not exist: the AAAA answer cannot change that
        v6, v6_error = aaaa.result(end) if self._settings.ipv6 else ((), None)
        addresses = _interleave(_addresses(v6), _addresses(v4))
        queried = 2 if self._settings.ipv6 else 1
        if addresses:
            return Resolution(fqdn, addresses, queried)
        raise v4_error or v6_error or NoAddress(f"{host} has no A or AAAA records")

    def records(
        self, name: str, rdtype: str, *, deadline: float | None = None
    ) -> tuple[dns.rdata.Rdata, ...]:
        """The ``rdtype`` records of ``name`` (for example SRV), asked fresh like addresses.

        The same nameservers, timeouts, lifetime and cancellation as
        :meth:`resolve_fresh`. An empty tuple when the name exists without such
        records; a :class:`ResolveError` subclass (or ``Cancelled``) otherwise.
        """
        found, error = self._lookup(
            name.rstrip("."), rdtype, self._nameservers(), self._end(deadline)
        )
        if error is not None:
            raise error
        return found

    def _end(self, deadline: float | None) -> float:
        end = time.monotonic() + self._settings.lifetime
        return end if deadline is None else min(end, deadline)

    def _nameservers(self) -> tuple[str, ...]:
        if self._settings.nameservers:
            return self._settings.nameservers
        try:
            system = dns.resolver.Resolver()  # parses resolv.conf
        except (dns.exception.DNSException, OSError) as exc:
            raise ResolverFailure(f"no nameservers configured, and none found: {exc}") from exc
        servers = tuple(str(server) for server in system.nameservers)
        servers = tuple(server for server in servers if is_ip_literal(server))
        if not servers:
            raise ResolverFailure("no nameservers configured, and resolv.conf names none")
        return servers

    def _lookup(
        self, host: str, rdtype: str, servers: tuple[str, ...], end: float
    ) -> tuple[tuple[dns.rdata.Rdata, ...], ResolveError | None]:
        """Ask ``servers`` in turn until one answers; the error says why none did."""
        try:
            query = dns.message.make_query(host, rdtype)
        except (dns.exception.DNSException, ValueError) as exc:
            return (), _failure(f"{host} is not a name DNS can look up: {exc}", exc)
        exchange = _Exchange(query, self._settings, self._cancel)
        live = list(servers)
        errors: list[tuple[str, bool, int, str, None]] = []
        turn = 0
        for _ in range(_MAX_TRIES):
            left = end - time.monotonic()
            if not live or left <= 0:
                break
            server = live[turn % len(live)]
            outcome = _judge(host, rdtype, exchange.ask(server, min(self._settings.timeout, left)))
            if outcome is None:
                turn += 1  # silent: the next one, and this one again while time is left
            elif isinstance(outcome, str):
                # A failed nameserver is not asked again in this lookup (as dnspython does).
                live.remove(server)
                errors.append((server, False, self._settings.port, outcome, None))
            else:
                return outcome
        if live:
            return (), ResolveTimeout(f"no nameserver answered for {host} {rdtype} in time")
        # dnspython's own error, for logs (its constructor is unannotated).
        cause = dns.resolver.NoNameservers(request=query, errors=errors)  # type: ignore[no-untyped-call]
        return (), _failure(f"every nameserver failed for {host} {rdtype}: {cause}", cause)


_Lookup = tuple[tuple[dns.rdata.Rdata, ...], ResolveError | None]


class _Background:
    """One lookup on a short-lived thread, so A and AAAA are asked at the same time.

    Whatever the lookup raises (``Cancelled`` when the client closes) is kept and
    raised again by :meth:`result` in the caller's thread: never lost with the
    thread. The lookup is bounded by the same ``end`` as the caller's.
    """

    def __init__(self, lookup: Callable[[], _Lookup]) -> None:
        self._lookup = lookup
        self._outcome: _Lookup | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="device-sdk-dns", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            self._outcome = self._lookup()
        except BaseException as exc:  # raised again in the caller's thread
            self._error = exc

    def result(self, end: float) -> _Lookup:
        # The lookup itself ends by ``end``; the margin covers the thread's own exit.
        self._thread.join(max(0.0, end - time.monotonic()) + 1.0)
        if self._error is not None:
            raise self._error
        if self._outcome is None:
            return (), ResolveTimeout("the AAAA lookup did not finish in time")
        return self._outcome


def _judge(
    host: str, rdtype: str, response: dns.message.QueryMessage | str | None
) -> tuple[tuple[dns.rdata.Rdata, ...], NameNotFound | None] | str | None:
    """What one try says: the lookup's result, why the nameserver is no good, or None (silent).

    NOERROR (with or without addresses) and NXDOMAIN end the lookup; any other
    rcode (SERVFAIL, REFUSED, ...) or an unusable answer sends it to the next nameserver.
    """
    if not isinstance(response, dns.message.QueryMessage):
        return response
    rcode = response.rcode()
    if rcode == dns.rcode.NXDOMAIN:
        return (), NameNotFound(f"{host} does not exist (NXDOMAIN)")
    if rcode != dns.rcode.NOERROR:
        return dns.rcode.to_text(rcode)
    try:
        answer = response.resolve_chaining().answer
    except dns.exception.DNSException as exc:  # a CNAME loop, several questions, ...
        return f"an unusable answer: {type(exc).__name__}"
    if answer is None:
        return (), None  # the name exists without records of this type
    wanted = dns.rdatatype.from_text(rdtype)
    return tuple(r for r in answer if r.rdtype == wanted), None


def _addresses(records: tuple[dns.rdata.Rdata, ...]) -> tuple[str, ...]:
    kinds = dns.rdtypes.IN.A.A | dns.rdtypes.IN.AAAA.AAAA
    return tuple(r.address for r in records if isinstance(r, kinds))


class _Exchange:
    """One question, asked of one nameserver at a time: a datagram out, a cancellable wait."""

    def __init__(
        self, query: dns.message.Message, settings: DnsSettings, cancel: CancelToken
    ) -> None:
        self._query = query
        self._port = settings.port
        self._cancel = cancel

    def ask(self, server: str, wait: float) -> dns.message.QueryMessage | str | None:
        """The answer, or why ``server`` is no good (text), or None when it stayed silent."""
        self._cancel.check("the DNS lookup")
        family = socket.AF_INET6 if ":" in server else socket.AF_INET
        until = time.monotonic() + wait
        try:
            destination = dns.inet.low_level_address_tuple((server, self._port), family)
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)  # dnspython's receive must never block here
                dns.query.send_udp(sock, self._query, destination, time.time() + wait)
                return self._receive(sock, destination, server, until)
        except dns.message.Truncated:
            return self._over_tcp(server, until)
        except dns.exception.Timeout:
            return None
        except OSError as exc:  # unreachable, an unknown scope id, ...
            return f"{type(exc).__name__}: {exc}"

    def _receive(
        self, sock: socket.socket, destination: object, server: str, until: float
    ) -> dns.message.QueryMessage | str | None:
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_READ)
            selector.register(self._cancel, selectors.EVENT_READ)
            for _ in range(_MAX_DATAGRAMS):
                left = until - time.monotonic()
                ready = selector.select(left) if left > 0 else []
                if any(key.fileobj is self._cancel for key, _mask in ready):
                    self._cancel.check(f"the DNS lookup at {server}")
                if not ready:
                    return None
                try:
                    # Expiring now: one datagram is ready; anything that is not an
                    # answer to this query (wrong source, id or question) is skipped,
                    # and the wait goes back to the select above.
                    response, _when = dns.query.receive_udp(
                        sock,
                        destination,
                        expiration=time.time(),
                        ignore_unexpected=True,
                        raise_on_truncation=True,
                        ignore_errors=True,
                        query=self._query,
                    )
                except dns.exception.Timeout:
                    continue
                return _query_message(response)
        return None

    def _over_tcp(self, server: str, until: float) -> dns.message.QueryMessage | str | None:
        """The answer did not fit a datagram (TC): ask again over TCP, bounded by the time left.

        Not cancellable while it runs; truncated answers are rare and this is bounded.
        """
        self._cancel.check("the DNS lookup")
        left = until - time.monotonic()
        if left <= 0:
            return None
        try:
            response = dns.query.tcp(self._query, server, timeout=left, port=self._port)
        except dns.exception.Timeout:
            return None
        except (dns.exception.DNSException, OSError, EOFError) as exc:
            return f"{type(exc).__name__} over TCP: {exc}"
        return _query_message(response)


def _query_message(response: object) -> dns.message.QueryMessage | str:
    if isinstance(response, dns.message.QueryMessage):
        return response
    return "an answer that is not a query response"


def _failure(message: str, cause: BaseException) -> ResolverFailure:
    error = ResolverFailure(message)
    error.__cause__ = cause
    return error


def _interleave(first: tuple[str, ...], second: tuple[str, ...]) -> tuple[str, ...]:
    pairs = itertools.zip_longest(first, second)
    return tuple(address for pair in pairs for address in pair if address is not None)


def address_family_of(address: str) -> int:
    """socket.AF_INET or AF_INET6 for an IP literal."""
    return dns.inet.af_for_address(address)


ResolverFactory = Callable[[DnsSettings], Resolver]

"""Steps 3 to 5 of the recovery path: resolve the hub fresh, take fresh credentials, dial.

:class:`Dialer` turns "connect to this hub" into an open :class:`PahoLink` or a
typed :class:`~device_sdk.errors.ConnectError`. It resolves the FQDN on every
call (no cache anywhere), races TCP connects to the addresses when there are
several (Happy Eyeballs, RFC 8305), dials the first that answered and then the
others while TLS verifies the FQDN, and reports each address that failed.
The credential provider is asked for this hub just before the dial (after DNS,
so a token's life is not spent on a slow lookup), and the identity it gave is
kept as :attr:`Dialer.last_identity` for the engine to plan its renewal.
Choosing the hub and backing off are not its business: the failover machine and
the retry policy do those.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from device_sdk import events
from device_sdk.adapters.cancel import NEVER, Cancelled, CancelToken
from device_sdk.adapters.happy_eyeballs import Endpoint, race_endpoints
from device_sdk.adapters.paho_link import LinkSettings, PahoLink
from device_sdk.adapters.resolver import Resolver
from device_sdk.config import ClientConfig, HubEndpoint
from device_sdk.errors import ConnectError, ConnectRefused, DialError
from device_sdk.identity.provider import Identity, identity_for_attempt
from device_sdk.metrics import MetricsRecorder
from device_sdk.transports import ProxySettings, Transport

LinkFactory = Callable[[HubEndpoint, str, LinkSettings], PahoLink]
Emit = Callable[[events.Event], None]


def link_settings(config: ClientConfig) -> LinkSettings:
    """What one MQTT connection needs from the client's configuration."""
    return LinkSettings(
        client_id=config.client_id,
        mqtt_version=config.mqtt_version,
        keepalive=config.liveness.keepalive,
        connect_timeout=config.liveness.connect_timeout,
        inflight_window=config.inflight_window,
        session_expiry=config.session_expiry,
        message_id_property=config.message_id_property,
        envelope=config.envelope,
        max_packet_size=config.max_packet_size,
        will=config.will,
    )


@dataclass(frozen=True, slots=True)
class Candidate:
    """One way to try in an attempt: an address of the hub over one of its ways in."""

    way: Transport
    address: str  # an IP literal; through a proxy that resolves names, the FQDN


class Dialer:
    """Resolves a hub fresh and opens a link to the first address that answers.

    ``cancel`` (the engine's, set by ``close()``) cuts the connect race and the
    link's own waits short with :class:`~device_sdk.adapters.cancel.Cancelled`;
    the resolver takes the same token when it is built.
    """

    def __init__(
        self,
        config: ClientConfig,
        *,
        resolver: Resolver,
        link_factory: LinkFactory,
        metrics: MetricsRecorder,
        emit: Emit,
        cancel: CancelToken = NEVER,
    ) -> None:
        self._settings = link_settings(config)
        self._provider = config.credentials
        self.last_identity: Identity | None = None
        self._connect_timeout = config.liveness.connect_timeout
        self._resolver = resolver
        self._link_factory = link_factory
        self._metrics = metrics
        self._emit = emit
        self._cancel = cancel
        self._proxy = config.proxy
        # Per hub, the way in that opened the last link when it was not the first one.
        self._preferred: dict[str, Transport] = {}

    def open(
        self, hub: HubEndpoint, *, resume: PahoLink | None = None, after_refusal: bool = False
    ) -> PahoLink:
        """A link to ``hub``, reusing ``resume``'s MQTT session when it is given.

        ``after_refusal``: the hub refused the last identity; the provider is told,
        so one that caches a token fetches a new one.
        """
        addresses = self._addresses(hub)
        self.last_identity = None
        identity = identity_for_attempt(
            self._provider, hub, client_id=self._settings.client_id, after_refusal=after_refusal
        )
        self.last_identity = identity
        client_id = identity.client_id or self._settings.client_id
        settings = replace(self._settings, client_id=client_id, identity=identity)
        if resume is not None and resume.client_id != client_id:
            resume = None  # a session belongs to its client id
        candidates = tuple(
            Candidate(way, address) for way in self.ways_in(hub) for address in addresses
        )
        link = self._dial_each(hub, candidates, resume, settings)
        self._remember(hub, link.transport)
        return link

    def _addresses(self, hub: HubEndpoint) -> tuple[str, ...]:
        """Step 3: the hub's addresses, resolved fresh; through a proxy that resolves names
        itself, the FQDN (the proxy's resolver answers, not ours: see the README)."""
        if self._proxy_for(hub) is not None and not self._proxy_resolves_here(hub):
            return (hub.fqdn.rstrip("."),)
        started = time.monotonic()
        try:
            resolution = self._resolver.resolve_fresh(hub.fqdn)
        except ConnectError as exc:
            exc.hub = hub.name
            raise
        self._metrics.add(dns_queries=resolution.queried)
        now = time.monotonic()
        self._emit(
            events.Resolved(
                at=now,
                hub=hub.name,
                fqdn=hub.fqdn,
                addresses=resolution.addresses,
                seconds=now - started,
            )
        )
        return resolution.addresses

    # -- ways in ---------------------------------------------------------------------------

    def ways_in(self, hub: HubEndpoint) -> tuple[Transport, ...]:
        """The hub's ways in, in the order they race: the one that worked last first.

        A preference, not a cache: every attempt still resolves fresh and races
        them all; the remembered way merely starts first. It lives as long as
        the process (a reboot starts from the configured order).
        """
        ways = hub.ways_in
        preferred = self._preferred.get(hub.name)
        if preferred is None or preferred not in ways:
            return ways
        return (preferred, *(way for way in ways if way != preferred))

    def preferred_way(self, hub: HubEndpoint) -> Transport:
        return self.ways_in(hub)[0]

    def forget_preference(self, hub_name: str) -> None:
        """Race in the configured order again (the first way in answers once more)."""
        self._preferred.pop(hub_name, None)

    def _remember(self, hub: HubEndpoint, way: Transport) -> None:
        if way == hub.ways_in[0]:
            self._preferred.pop(hub.name, None)
        else:
            self._preferred[hub.name] = way

    def _proxy_for(self, hub: HubEndpoint) -> ProxySettings | None:
        proxy = self._proxy
        if proxy is None or proxy.bypasses(hub.fqdn):
            return None
        return proxy

    def _proxy_resolves_here(self, hub: HubEndpoint) -> bool:
        proxy = self._proxy_for(hub)
        return proxy is not None and proxy.resolve_locally

    # -- dialling ----------------------------------------------------------------------------

    def _dial_each(
        self,
        hub: HubEndpoint,
        candidates: tuple[Candidate, ...],
        resume: PahoLink | None,
        settings: LinkSettings,
    ) -> PahoLink:
        """Try every (way in, address) in turn; a CONNACK refusal ends the attempt at once.

        With several candidates the connect race goes first, and its winner's TCP
        connection is the one the link opens on: one attempt, one connection.
        Through a proxy the candidates are tunnelled to in turn instead.
        """
        connected: socket.socket | None = None
        proxy = self._proxy_for(hub)
        if len(candidates) > 1 and proxy is None:
            candidates, connected = self._first_to_answer(hub, candidates)
        last_error: ConnectError | None = None
        try:
            for candidate in candidates:
                deadline = time.monotonic() + self._connect_timeout
                handed, connected = connected, None  # only the winner's, and only once
                try:
                    if proxy is not None:
                        handed = self._tunnel(proxy, candidate, deadline)
                    return self._dial(hub, candidate, deadline, resume, settings, connected=handed)
                except Cancelled:
                    raise  # closing: not a failure of this address, and no next one
                except ConnectError as exc:
                    self._dial_failed(hub, candidate, exc)
                    if isinstance(exc, ConnectRefused):
                        raise  # the hub itself answered: another way in says the same
                    last_error = exc
        finally:
            if connected is not None:
                connected.close()
        assert last_error is not None
        raise last_error

    def _dial_failed(self, hub: HubEndpoint, candidate: Candidate, error: ConnectError) -> None:
        self._emit(
            events.DialFailed(
                at=time.monotonic(),
                hub=hub.name,
                address=candidate.address,
                error=error,
                transport=candidate.way.label,
            )
        )

    def _tunnel(self, proxy: ProxySettings, candidate: Candidate, deadline: float) -> socket.socket:
        """A TCP connection to the candidate through the proxy (its CONNECT answered 2xx)."""
        # Imported here: most devices never use a proxy, and start-up time counts.
        from device_sdk.adapters.http_connect import open_tunnel, proxy_addresses

        proxy_address = proxy_addresses(proxy, self._resolver, deadline)[0]
        return open_tunnel(
            proxy,
            proxy_address,
            candidate.address,
            candidate.way.port,
            deadline=deadline,
            cancel=self._cancel,
        )

    def _first_to_answer(
        self, hub: HubEndpoint, candidates: tuple[Candidate, ...]
    ) -> tuple[tuple[Candidate, ...], socket.socket]:
        """``candidates`` with the first to accept TCP in front, and that connection;
        raises when none did.

        Why race first: dialled in turn, an address (or a port) whose packets
        vanish costs a whole connect timeout before the next is tried. When none
        answers within the connect timeout, each is reported as the dial loop
        would have, without spending that timeout once more per candidate.
        """
        endpoints: dict[Endpoint, Candidate] = {}
        for candidate in candidates:  # wss:443 and mqtts:443 share one TCP endpoint
            endpoints.setdefault((candidate.address, candidate.way.port), candidate)
        race = race_endpoints(tuple(endpoints), timeout=self._connect_timeout, cancel=self._cancel)
        if race.winner is not None and race.sock is not None:
            first = endpoints[race.winner]
            return (first, *(c for c in candidates if c != first)), race.sock
        error: DialError | None = None
        for (address, port), candidate in endpoints.items():
            error = DialError(
                f"could not open {hub.name} at {address} port {port}: "
                f"{race.failures[(address, port)]}",
                hub=hub.name,
                address=address,
            )
            self._dial_failed(hub, candidate, error)
        assert error is not None
        raise error

    def _dial(
        self,
        hub: HubEndpoint,
        candidate: Candidate,
        deadline: float,
        resume: PahoLink | None,
        settings: LinkSettings,
        *,
        connected: socket.socket | None = None,
    ) -> PahoLink:
        address = candidate.address
        if resume is not None and resume.transport == candidate.way:
            resume.reopen(
                address,
                deadline,
                cancel=self._cancel,
                identity=settings.identity,
                connected=connected,
            )
            return resume
        link = self._link_factory(hub, address, replace(settings, transport=candidate.way))
        if connected is None:
            link.open(deadline, cancel=self._cancel)
        else:
            link.open(deadline, cancel=self._cancel, connected=connected)
        return link

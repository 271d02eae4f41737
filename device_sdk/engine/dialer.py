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
from dataclasses import replace

from device_sdk import events
from device_sdk.adapters.cancel import NEVER, Cancelled, CancelToken
from device_sdk.adapters.happy_eyeballs import race_connects
from device_sdk.adapters.paho_link import LinkSettings, PahoLink
from device_sdk.adapters.resolver import Resolver
from device_sdk.config import ClientConfig, HubEndpoint
from device_sdk.errors import ConnectError, ConnectRefused, DialError
from device_sdk.identity.provider import Identity, identity_for_attempt
from device_sdk.metrics import MetricsRecorder

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

    def open(
        self, hub: HubEndpoint, *, resume: PahoLink | None = None, after_refusal: bool = False
    ) -> PahoLink:
        """A link to ``hub``, reusing ``resume``'s MQTT session when it is given.

        ``after_refusal``: the hub refused the last identity; the provider is told,
        so one that caches a token fetches a new one.
        """
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
        self.last_identity = None
        identity = identity_for_attempt(
            self._provider, hub, client_id=self._settings.client_id, after_refusal=after_refusal
        )
        self.last_identity = identity
        client_id = identity.client_id or self._settings.client_id
        settings = replace(self._settings, client_id=client_id, identity=identity)
        if resume is not None and resume.client_id != client_id:
            resume = None  # a session belongs to its client id
        return self._dial_each(hub, resolution.addresses, resume, settings)

    def _dial_each(
        self,
        hub: HubEndpoint,
        addresses: tuple[str, ...],
        resume: PahoLink | None,
        settings: LinkSettings,
    ) -> PahoLink:
        """Try every resolved address in turn; a CONNACK refusal ends the attempt at once.

        With several addresses the connect race goes first, and its winner's TCP
        connection is the one the link opens on: one attempt, one connection.
        """
        connected: socket.socket | None = None
        if len(addresses) > 1:
            addresses, connected = self._first_to_answer(hub, addresses)
        last_error: ConnectError | None = None
        try:
            for address in addresses:
                deadline = time.monotonic() + self._connect_timeout
                handed, connected = connected, None  # only the winner's, and only once
                try:
                    return self._dial(hub, address, deadline, resume, settings, connected=handed)
                except Cancelled:
                    raise  # closing: not a failure of this address, and no next one
                except ConnectError as exc:
                    self._emit(
                        events.DialFailed(
                            at=time.monotonic(), hub=hub.name, address=address, error=exc
                        )
                    )
                    if isinstance(exc, ConnectRefused):
                        raise  # the hub itself answered: another address of it says the same
                    last_error = exc
        finally:
            if connected is not None:
                connected.close()
        assert last_error is not None
        raise last_error

    def _first_to_answer(
        self, hub: HubEndpoint, addresses: tuple[str, ...]
    ) -> tuple[tuple[str, ...], socket.socket]:
        """``addresses`` with the first to accept TCP in front, and that connection;
        raises when none did.

        Why race first: dialled in turn, an address whose packets vanish costs a
        whole connect timeout before the next is tried. When no address answers
        within the connect timeout, each is reported as the dial loop would have,
        without spending that timeout once more per address.
        """
        race = race_connects(
            addresses, hub.port, timeout=self._connect_timeout, cancel=self._cancel
        )
        if race.winner is not None and race.sock is not None:
            ordered = (race.winner, *(a for a in addresses if a != race.winner))
            return ordered, race.sock
        error: DialError | None = None
        for address in addresses:
            error = DialError(
                f"could not open {hub.name} at {address} port {hub.port}: {race.failures[address]}",
                hub=hub.name,
                address=address,
            )
            self._emit(
                events.DialFailed(at=time.monotonic(), hub=hub.name, address=address, error=error)
            )
        assert error is not None
        raise error

    def _dial(
        self,
        hub: HubEndpoint,
        address: str,
        deadline: float,
        resume: PahoLink | None,
        settings: LinkSettings,
        *,
        connected: socket.socket | None = None,
    ) -> PahoLink:
        if resume is not None:
            resume.reopen(
                address,
                deadline,
                cancel=self._cancel,
                identity=settings.identity,
                connected=connected,
            )
            return resume
        link = self._link_factory(hub, address, settings)
        if connected is None:
            link.open(deadline, cancel=self._cancel)
        else:
            link.open(deadline, cancel=self._cancel, connected=connected)
        return link

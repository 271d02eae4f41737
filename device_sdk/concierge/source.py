"""The device's side of the concierge: ask, verify, remember, and map onto hubs.

:class:`ConciergeSource` turns one question to the concierge into either a
verified :class:`ConciergeAnswer` (the hubs, in order, and the active one, as
HubEndpoints) or a :class:`~device_sdk.errors.ConciergeError`. It never raises
anything else, so the engine can always carry on from its own hub list.

:func:`map_document` is where a document becomes hubs, and the one place that
makes sure it can: the failover machine takes only a non-empty list of distinct
hub names holding the active one, and a document that broke that would stop
the engine. Document names are the concierge's, not the device's, so they are
never trusted to fit: a name the device already uses for another hub is renamed
(``c-primary``, then ``c2-primary``, ...), deterministically, so the same
document always gives the same names. Whatever still does not fit is refused
as :class:`~device_sdk.errors.InvalidHubSet` before anything is recorded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from device_sdk.adapters.cancel import NEVER, CancelToken
from device_sdk.adapters.resolver import Resolver
from device_sdk.concierge.document import DocumentHub, EndpointDocument
from device_sdk.concierge.fetch import ConciergeFetcher
from device_sdk.concierge.sequence_store import SequenceStore
from device_sdk.concierge.settings import ConciergeSettings
from device_sdk.concierge.trust import verify
from device_sdk.config import HubEndpoint
from device_sdk.errors import ConfigError, HubNotAllowed, InvalidHubSet
from device_sdk.transports import ProxySettings

__all__ = ["ConciergeAnswer", "ConciergeSource", "check_hub_set", "map_document"]

_MAX_NAME = 63  # HubEndpoint.name's limit


@dataclass(frozen=True, slots=True)
class ConciergeAnswer:
    """A verified document, mapped onto the device's hubs."""

    sequence: int
    hubs: tuple[HubEndpoint, ...]  # the device's own hubs first, then any the document adds
    active: str  # the name of the active hub among ``hubs``


class ConciergeSource:
    """Asks the concierge once per :meth:`ask`; thread-safe; remembers the last sequence.

    ``resolver`` resolves the concierge's host within the fetch's deadline; the
    client passes a fresh resolver for its own ``dns`` settings, and its ``proxy``.
    """

    def __init__(
        self,
        settings: ConciergeSettings,
        own_hubs: Sequence[HubEndpoint],
        *,
        resolver: Resolver | None = None,
        cancel: CancelToken = NEVER,
        proxy: ProxySettings | None = None,
    ) -> None:
        self._settings = settings
        self._own_hubs = tuple(own_hubs)
        self._fetcher = ConciergeFetcher(
            settings.url,
            timeout=settings.timeout,
            max_bytes=settings.max_bytes,
            ca_file=settings.ca_file,
            allow_plain_http=settings.allow_plain_http,
            resolver=resolver,
            cancel=cancel,
            proxy=proxy,
        )
        self._store = SequenceStore(settings.state_file) if settings.state_file else None
        self._lock = threading.Lock()
        self._last_sequence: int | None = None

    def ask(self) -> ConciergeAnswer:
        """One fetch and verification. Raises ConciergeError, and nothing else."""
        raw = self._fetcher.fetch()
        with self._lock:
            last = self._store.load() if self._store is not None else self._last_sequence
            document = verify(raw, self._settings.trust, now=time.time(), last_sequence=last)
            answer = self._map(document)
            # Remember before acting: a document we could not record must not be used.
            # A document refused above is not recorded at all.
            if self._store is not None:
                self._store.save(document.sequence)
            self._last_sequence = document.sequence
        return answer

    def _map(self, document: EndpointDocument) -> ConciergeAnswer:
        return map_document(document, self._own_hubs, self._settings)


def map_document(
    document: EndpointDocument, own_hubs: Sequence[HubEndpoint], settings: ConciergeSettings
) -> ConciergeAnswer:
    """The hub set a verified document gives a device whose own hubs are ``own_hubs``.

    The device's hubs keep their names and order. A document hub at the FQDN
    (any case) and port of a hub already in the set *is* that hub; any other is
    added after them, in the order of its document name (a document's member
    order carries no meaning), under its document name or, when the device has
    that name, the first free of ``c-<name>``, ``c2-<name>``, ... (cut to 63
    characters). A plain-MQTT hub needs ``settings.allow_plain_hubs``.

    Raises :class:`HubNotAllowed` or :class:`InvalidHubSet`, and nothing else.
    """
    hubs = list(own_hubs)
    own_names = {hub.name for hub in own_hubs}
    # Renamed hubs avoid every document name too, so a name the document uses
    # never moves to another hub when a later document stops colliding.
    taken = own_names | set(document.hubs)
    names: dict[str, str] = {}  # document hub name -> device hub name
    for doc_name in sorted(document.hubs):
        doc_hub = document.hubs[doc_name]
        known = next((hub for hub in hubs if _same_place(hub, doc_hub)), None)
        if known is None:
            name = doc_name if doc_name not in own_names else _renamed(doc_name, taken)
            taken.add(name)
            known = _added_hub(name, doc_hub, settings)
            hubs.append(known)
        names[doc_name] = known.name
    # A document always names its active hub among its hubs; "" is refused below if not.
    answer = ConciergeAnswer(document.sequence, tuple(hubs), names.get(document.active_hub, ""))
    check_hub_set(answer.hubs, answer.active)
    return answer


def check_hub_set(hubs: Sequence[HubEndpoint], active: str) -> None:
    """Refuse (InvalidHubSet) a hub set the failover machine cannot take.

    Its invariants: at least one hub, names distinct, the active hub among them.
    (HubEndpoint itself guarantees each name's syntax and length.)
    """
    names = [hub.name for hub in hubs]
    if not names:
        raise InvalidHubSet("the document leaves the device without hubs")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InvalidHubSet(f"the document gives several hubs the names {duplicates}")
    if active not in names:
        raise InvalidHubSet(f"the document's active hub {active!r} is not among {names}")


def _same_place(hub: HubEndpoint, doc_hub: DocumentHub) -> bool:
    # DNS names are case-insensitive: PRIMARY.example.com is the device's primary.
    fqdn = hub.fqdn.rstrip(".").lower()
    return (fqdn, hub.port) == (doc_hub.fqdn.lower(), doc_hub.port)


def _renamed(doc_name: str, taken: Collection[str]) -> str:
    """The first of ``c-<name>``, ``c2-<name>``, ... not in ``taken``.

    The prefix is kept whole and the name cut to fit, so the candidates stay
    distinct even when long names agree in their first characters; one of the
    first ``len(taken) + 1`` is therefore always free.
    """
    for number in range(1, len(taken) + 2):
        prefix = "c-" if number == 1 else f"c{number}-"
        candidate = prefix + doc_name[: _MAX_NAME - len(prefix)]
        if candidate not in taken:
            return candidate
    raise InvalidHubSet(f"no free name for the document's hub {doc_name!r}")


def _added_hub(name: str, doc_hub: DocumentHub, settings: ConciergeSettings) -> HubEndpoint:
    if not doc_hub.tls and not settings.allow_plain_hubs:
        raise HubNotAllowed(f"document names plain-MQTT hub {doc_hub.fqdn}; TLS is required")
    try:
        return doc_hub.endpoint(name, tls=settings.hub_tls)
    except ConfigError as exc:  # the document's rules are HubEndpoint's; kept as a guard
        raise InvalidHubSet(f"the document's hub {doc_hub.fqdn} is not usable: {exc}") from exc

"""The device's side of the concierge: ask, verify, remember, and map onto hubs.

:class:`ConciergeSource` turns one question to the concierge into either a
verified :class:`ConciergeAnswer` (the hubs, in order, and the active one, as
HubEndpoints) or a :class:`~device_sdk.errors.ConciergeError`. It never raises
anything else, so the engine can always carry on from its own hub list.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from device_sdk.concierge.document import EndpointDocument
from device_sdk.concierge.fetch import ConciergeFetcher
from device_sdk.concierge.sequence_store import SequenceStore
from device_sdk.concierge.settings import ConciergeSettings
from device_sdk.concierge.trust import verify
from device_sdk.config import HubEndpoint
from device_sdk.errors import HubNotAllowed


@dataclass(frozen=True, slots=True)
class ConciergeAnswer:
    """A verified document, mapped onto the device's hubs."""

    sequence: int
    hubs: tuple[HubEndpoint, ...]  # the device's own hubs first, then any the document adds
    active: str  # the name of the active hub among ``hubs``


class ConciergeSource:
    """Asks the concierge once per :meth:`ask`; thread-safe; remembers the last sequence."""

    def __init__(self, settings: ConciergeSettings, own_hubs: Sequence[HubEndpoint]) -> None:
        self._settings = settings
        self._own_hubs = tuple(own_hubs)
        self._fetcher = ConciergeFetcher(
            settings.url,
            timeout=settings.timeout,
            max_bytes=settings.max_bytes,
            ca_file=settings.ca_file,
            allow_plain_http=settings.allow_plain_http,
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
            if self._store is not None:
                self._store.save(document.sequence)
            self._last_sequence = document.sequence
        return answer

    def _map(self, document: EndpointDocument) -> ConciergeAnswer:
        hubs = list(self._own_hubs)
        names: dict[str, str] = {}  # document hub name -> device hub name
        for doc_name, doc_hub in document.hubs.items():
            known = next(
                (h for h in hubs if (h.fqdn.rstrip("."), h.port) == (doc_hub.fqdn, doc_hub.port)),
                None,
            )
            if known is None:
                if not doc_hub.tls and not self._settings.allow_plain_hubs:
                    raise HubNotAllowed(
                        f"document names plain-MQTT hub {doc_hub.fqdn}; TLS is required"
                    )
                name = doc_name if all(h.name != doc_name for h in hubs) else f"c-{doc_name}"
                known = doc_hub.endpoint(name[:63], tls=self._settings.hub_tls)
                hubs.append(known)
            names[doc_name] = known.name
        return ConciergeAnswer(document.sequence, tuple(hubs), names[document.active_hub])

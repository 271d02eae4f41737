"""Identity on the engine's side: when to renew it, and which hubs refused it.

:class:`RenewalPlan`: when the current link's credentials are renewed, and when
their expiry is announced. :class:`RefusedIdentities`: which hubs refused our
identity since we last connected to them, so the next attempt there asks the
provider for a fresh one, and a refusal of that fresh one is final.

Why renew on a plan instead of waiting for the hub to drop the link: Azure IoT
Hub closes a connection the moment its SAS token expires, and brokers that take
JWTs do the same. Waited for, that is an outage on a schedule, with messages in
flight. So at the identity's ``renew_at`` the engine opens a second link with a
fresh identity and only then closes the first (make before break); the
in-flight messages go back in line and are sent first on the new link. It is
not a failure: no backoff, no failover counting.

Identities state wall-clock times (tokens and certificates do); the engine runs
on the monotonic clock, so each time is converted once, when the link comes up.
"""

from __future__ import annotations

import math

from device_sdk.core.outcomes import AUTH_REFUSAL_CODES, FailureKind, refusal_kind
from device_sdk.identity.provider import Identity

# After a renewal attempt failed, the next one waits a quarter of the time left
# before expiry, within these bounds: soon enough to beat the expiry, sparse
# enough not to hammer a hub that refuses while the current link still works.
_RETRY_AT_LEAST = 1.0
_RETRY_AT_MOST = 60.0


class RenewalPlan:
    """The renewal and expiry-warning times of the identity the current link uses."""

    __slots__ = ("_expires_at", "_renew_at", "_wall_expiry", "_warn_at")

    def __init__(self) -> None:
        self._renew_at = math.inf
        self._warn_at = math.inf
        self._expires_at = math.inf
        self._wall_expiry: float | None = None

    def plan(self, identity: Identity | None, *, mono: float, wall: float) -> None:
        """Plan for ``identity``, in use from now (``mono`` and ``wall`` are the same instant)."""
        self.clear()
        if identity is None:
            return

        def local(at: float | None) -> float:
            return math.inf if at is None else mono + (at - wall)

        # Never sooner than a second after the link came up: a provider whose tokens
        # are due for renewal already would otherwise make a hot loop of renewals.
        self._renew_at = max(local(identity.renew_at), mono + _RETRY_AT_LEAST)
        self._warn_at = local(identity.warn_at)
        self._expires_at = local(identity.expires_at)
        self._wall_expiry = identity.expires_at

    def clear(self) -> None:
        self._renew_at = self._warn_at = self._expires_at = math.inf
        self._wall_expiry = None

    def next_due(self) -> float:
        """The monotonic time of the next renewal or warning (inf: none planned)."""
        return min(self._renew_at, self._warn_at)

    def renewal_due(self, mono: float) -> bool:
        return mono >= self._renew_at

    def warning_due(self, mono: float) -> float | None:
        """The wall-clock expiry to announce, once, when its warning time has come."""
        if mono < self._warn_at:
            return None
        self._warn_at = math.inf
        return self._wall_expiry

    def postpone(self, mono: float) -> None:
        """A renewal attempt failed; try again later, but before the expiry."""
        left = self._expires_at - mono
        wait = min(_RETRY_AT_MOST, max(_RETRY_AT_LEAST, left / 4))
        self._renew_at = mono + wait


class RefusedIdentities:
    """Hubs that refused our identity (or saw it expire) since we last connected there."""

    __slots__ = ("_hubs",)

    def __init__(self) -> None:
        self._hubs: set[str] = set()

    def ask_fresh(self, hub: str) -> bool:
        """Whether the next attempt to ``hub`` must tell the provider it was refused."""
        return hub in self._hubs

    def refused(self, hub: str) -> None:
        """``hub`` refused the identity another way: it expired, or a not-authorised DISCONNECT."""
        self._hubs.add(hub)

    def connected(self, hub: str) -> None:
        self._hubs.discard(hub)

    def classify(
        self, hub: str, kind: FailureKind, *, reason_code: int, renewable: bool
    ) -> tuple[FailureKind, bool]:
        """The machine's kind for a CONNACK refusal, and whether ``hub`` refused a
        fresh identity too (the device may no longer belong there: DPS is asked)."""
        refused_fresh = hub in self._hubs
        kind = refusal_kind(
            kind, reason_code=reason_code, renewable=renewable, refused_fresh=refused_fresh
        )
        if reason_code not in AUTH_REFUSAL_CODES:
            return kind, False
        self._hubs.add(hub)
        return kind, refused_fresh and kind is FailureKind.PERMANENT

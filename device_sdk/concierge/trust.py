"""Deciding whether to believe a concierge: pinned keys, an allow-list, time and sequence.

Pure: :func:`verify` does no I/O and reads no clock; the caller passes ``now``
and the last accepted sequence (see :mod:`device_sdk.concierge.sequence_store`).
Every rejection is exactly one :class:`~device_sdk.errors.DocumentRejected`
subclass, which the client reports as a security event before carrying on from
its last good document or its own hub list.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from device_sdk.concierge.document import (
    SIGNATURE_ALGORITHM,
    EndpointDocument,
    SignedEnvelope,
    fqdn_problem,
    parse_document,
    parse_envelope,
)
from device_sdk.concierge.signing import KID_PATTERN, decode_public_key
from device_sdk.errors import (
    BadSignature,
    ConfigError,
    DocumentExpired,
    DocumentNotYetValid,
    HubNotAllowed,
    RollbackRejected,
    ScopeMismatch,
    UnknownKey,
    WrongAlgorithm,
)

__all__ = ["ConciergeTrust", "verify"]

_MAX_SCOPE_ID = 128
_FORBIDDEN_IN_ID = re.compile(r"[\x00-\x1f\x7f]")
PublicKeySource = bytes | str | Ed25519PublicKey


@dataclass(frozen=True, slots=True, kw_only=True)
class ConciergeTrust:
    """What a device believes about its concierge.

    ``keys`` pins Ed25519 public keys by key id; several at once allow rotation
    (pin the new key, move the concierge to it, then unpin the old one). A key is
    raw 32 bytes, its base64url text, or PEM. ``allowed_hubs`` holds exact hub
    FQDNs and ``*.suffix`` patterns (one or more labels in front of ``suffix``, never
    ``suffix`` itself). ``device_id`` and ``fleet`` are the scopes this device
    answers to; an unscoped document is accepted only with ``accept_unscoped``.
    """

    keys: Mapping[str, PublicKeySource]
    allowed_hubs: tuple[str, ...]
    max_clock_skew: float = 60.0
    device_id: str | None = None
    fleet: str | None = None
    accept_unscoped: bool = True
    _public_keys: Mapping[str, Ed25519PublicKey] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_public_keys", MappingProxyType(self._decode_keys()))
        hubs = self.allowed_hubs
        if isinstance(hubs, str) or not isinstance(hubs, tuple | list | frozenset | set):
            raise ConfigError(
                "concierge.allowed_hubs", hubs, "a sequence of hub name patterns (strings)"
            )
        object.__setattr__(self, "allowed_hubs", tuple(hubs))
        if not self.allowed_hubs:
            raise ConfigError("concierge.allowed_hubs", self.allowed_hubs, "at least one pattern")
        for pattern in self.allowed_hubs:
            _check_pattern(pattern)
        skew = self.max_clock_skew
        if isinstance(skew, bool) or not isinstance(skew, int | float) or not 0 <= skew < math.inf:
            raise ConfigError("concierge.max_clock_skew", skew, "a number of seconds >= 0")
        for name in ("device_id", "fleet"):
            _check_scope_id(name, getattr(self, name))

    def _decode_keys(self) -> dict[str, Ed25519PublicKey]:
        if not isinstance(self.keys, Mapping) or not self.keys:
            raise ConfigError("concierge.keys", self.keys, "at least one key id -> public key")
        decoded = {}
        for kid, source in self.keys.items():
            if not isinstance(kid, str) or not KID_PATTERN.fullmatch(kid):
                raise ConfigError("concierge.keys", kid, "key ids of 1-64 letters, digits, . _ -")
            decoded[kid] = decode_public_key(source, field=f"concierge.keys[{kid}]")
        return decoded

    def public_key(self, kid: str) -> Ed25519PublicKey | None:
        """The pinned key for ``kid``, or None."""
        return self._public_keys.get(kid)

    def allows(self, fqdn: str) -> bool:
        """True when ``fqdn`` matches an allowed name or ``*.suffix`` pattern (any case)."""
        return hub_allowed(self.allowed_hubs, fqdn)

    @property
    def scopes(self) -> frozenset[str]:
        """The document scopes addressed to this device."""
        scopes = set()
        if self.device_id is not None:
            scopes.add(f"device:{self.device_id}")
        if self.fleet is not None:
            scopes.add(f"fleet:{self.fleet}")
        return frozenset(scopes)


def hub_allowed(patterns: Sequence[str], fqdn: str) -> bool:
    """True when ``fqdn`` is one of ``patterns`` or under a ``*.suffix`` one (any case).

    Shared by every hub source that names hubs from outside: the concierge's
    documents and DPS's assignments.
    """
    name = fqdn.lower().rstrip(".")
    for pattern in patterns:
        wanted = pattern.lower()
        if wanted.startswith("*."):
            if name.endswith(wanted[1:]) and len(name) > len(wanted) - 1:
                return True
        elif name == wanted:
            return True
    return False


def check_hub_pattern(field_name: str, pattern: object) -> None:
    """ConfigError unless ``pattern`` is an FQDN or ``*.`` + an FQDN of two or more labels."""
    allowed = "an FQDN or '*.' + an FQDN of two or more labels (no IPs)"
    if not isinstance(pattern, str):
        raise ConfigError(field_name, pattern, allowed)
    name = pattern[2:] if pattern.startswith("*.") else pattern
    if fqdn_problem(name) is not None:
        raise ConfigError(field_name, pattern, allowed)


def _check_pattern(pattern: object) -> None:
    check_hub_pattern("concierge.allowed_hubs", pattern)


def _check_scope_id(name: str, value: object) -> None:
    if value is None:
        return
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= _MAX_SCOPE_ID
        or _FORBIDDEN_IN_ID.search(value)
    ):
        raise ConfigError(f"concierge.{name}", value, "1-128 characters, no control characters")


def verify(
    raw: bytes, trust: ConciergeTrust, *, now: float, last_sequence: int | None
) -> EndpointDocument:
    """Return the document in ``raw`` if, and only if, it can be trusted.

    Raises exactly one :class:`~device_sdk.errors.DocumentRejected` subclass.

    The order of checks is deliberate. Before the signature verifies, only what
    verification needs is read: the envelope's shape (size, strict JSON, the
    canonical bytes), the algorithm (cheapest, and never let the document choose
    how it is checked) and the key id (which pinned key). Nothing in the document
    is interpreted until the signature holds, so an attacker's unsigned content
    never reaches the field parser. Then, on authenticated content: the fields'
    types and ranges, the validity window (a stale or replayed document is
    reported as expired, the usual case), the scope (a document for another
    device must not move this device's sequence), the sequence against the last
    accepted one, and finally the allow-list, a policy on where the document
    may send the device.
    """
    envelope = parse_envelope(raw)
    _check_algorithm(envelope)
    _check_signature(envelope, _pinned_key(envelope, trust))
    document = parse_document(envelope.document)
    _check_times(document, trust.max_clock_skew, now)
    _check_scope(document, trust)
    _check_sequence(document, last_sequence)
    _check_hubs_allowed(document, trust)
    return document


def _check_algorithm(envelope: SignedEnvelope) -> None:
    if envelope.alg != SIGNATURE_ALGORITHM:
        raise WrongAlgorithm(
            f"document signed with {envelope.alg[:32]!r}; only {SIGNATURE_ALGORITHM} is accepted"
        )


def _pinned_key(envelope: SignedEnvelope, trust: ConciergeTrust) -> Ed25519PublicKey:
    key = trust.public_key(envelope.kid)
    if key is None:
        raise UnknownKey(f"document signed with key id {envelope.kid!r}, which is not pinned")
    return key


def _check_signature(envelope: SignedEnvelope, key: Ed25519PublicKey) -> None:
    try:
        key.verify(envelope.signature, envelope.signed_bytes)
    except InvalidSignature:
        raise BadSignature(
            f"the signature does not verify with pinned key {envelope.kid!r}"
        ) from None


def _check_times(document: EndpointDocument, skew: float, now: float) -> None:
    # The skew widens the window on both sides: device clocks drift, and a small
    # drift must not make every document look expired or not yet valid.
    if now + skew < document.issued_at:
        raise DocumentNotYetValid(
            f"document issued at {document.issued_at}, in the future (now {now:.0f}, "
            f"allowed skew {skew:g} s)"
        )
    if now - skew >= document.expires_at:
        raise DocumentExpired(
            f"document expired at {document.expires_at} (now {now:.0f}, allowed skew {skew:g} s)"
        )


def _check_scope(document: EndpointDocument, trust: ConciergeTrust) -> None:
    if document.scope is None:
        if not trust.accept_unscoped:
            raise ScopeMismatch("document has no scope, and this device accepts only scoped ones")
        return
    if document.scope not in trust.scopes:
        mine = sorted(trust.scopes) or "none"
        raise ScopeMismatch(f"document is for {document.scope!r}; this device is {mine}")


def _check_sequence(document: EndpointDocument, last_sequence: int | None) -> None:
    # Why an equal sequence is accepted: the concierge bumps the sequence on every
    # change of content and re-signs the same content with a fresh validity window
    # on every request. A document with the last accepted sequence therefore says
    # what the device already believes; only an older sequence can roll it back.
    if last_sequence is not None and document.sequence < last_sequence:
        raise RollbackRejected(
            f"document sequence {document.sequence} is older than the last accepted "
            f"{last_sequence} (rollback or replay)"
        )


def _check_hubs_allowed(document: EndpointDocument, trust: ConciergeTrust) -> None:
    # Every hub, not only the active one: the device may fail over to any of them.
    for name, hub in document.hubs.items():
        if not trust.allows(hub.fqdn):
            raise HubNotAllowed(f"document names hub {name!r} at {hub.fqdn!r}, not allow-listed")

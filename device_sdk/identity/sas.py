"""Shared access signature (SAS) tokens, as Azure IoT Hub and DPS take them.

A token is ``SharedAccessSignature sr={resource}&sig={signature}&se={expiry}``
(and ``&skn={policy}`` for a shared access policy), where ``resource`` is the
URL-encoded resource URI (``{hub host}/devices/{device id}`` for a device,
``{id scope}/registrations/{registration id}`` for DPS), ``expiry`` is Unix
seconds, and ``signature`` is the URL-encoded base64 of HMAC-SHA256 over
``{resource}\\n{expiry}`` keyed with the base64-decoded key.

Pure functions: no clock, no files. The provider that mints them on every
attempt is :class:`SasTokenProvider` (below); the testbed's IoT-Hub-like front
and DPS-like service verify with :func:`verify_sas_token`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import urllib.parse
from dataclasses import dataclass, field

from device_sdk.errors import ConfigError

_PREFIX = "SharedAccessSignature "


@dataclass(frozen=True, slots=True, kw_only=True)
class SasToken:
    """The fields of a parsed token. ``resource`` is decoded; the signature stays as sent."""

    resource: str
    signature: str = field(repr=False)
    expiry: int
    policy: str | None = None


def decode_key(key: str | bytes) -> bytes:
    """A SAS key as the HMAC takes it: base64 text (as portals show it) decoded.

    Raises ConfigError without showing the key.
    """
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raw = b""
    if not raw:
        raise ConfigError("sas key", "<hidden>", "the key as base64 text, as the portal shows it")
    return raw


def sign(resource: str, key: bytes, expiry: int) -> str:
    """The base64 HMAC-SHA256 of the string to sign (not yet URL-encoded)."""
    to_sign = f"{urllib.parse.quote(resource, safe='')}\n{expiry}".encode()
    return base64.b64encode(hmac.new(key, to_sign, hashlib.sha256).digest()).decode("ascii")


def sas_token(resource: str, key: bytes, expiry: int, *, policy: str | None = None) -> str:
    """A token for ``resource`` (a resource URI, not yet URL-encoded) valid until ``expiry``."""
    encoded = urllib.parse.quote(resource, safe="")
    signature = urllib.parse.quote(sign(resource, key, expiry), safe="")
    token = f"{_PREFIX}sr={encoded}&sig={signature}&se={expiry}"
    return token + (f"&skn={urllib.parse.quote(policy, safe='')}" if policy else "")


def parse_sas_token(token: str) -> SasToken | None:
    """The fields of ``token``, or None when it is not a well-formed SAS token."""
    if not isinstance(token, str) or not token.startswith(_PREFIX) or len(token) > 4096:
        return None
    fields: dict[str, str] = {}
    for part in token[len(_PREFIX) :].split("&"):
        name, sep, value = part.partition("=")
        if not sep or name in fields:
            return None
        fields[name] = urllib.parse.unquote(value)
    expiry = fields.get("se", "")
    if not {"sr", "sig", "se"} <= fields.keys() or not expiry.isascii() or not expiry.isdigit():
        return None
    return SasToken(
        resource=fields["sr"], signature=fields["sig"], expiry=int(expiry), policy=fields.get("skn")
    )


def verify_sas_token(token: str, key: bytes, *, resource: str, now: float) -> tuple[bool, str]:
    """Whether ``token`` is valid for ``resource`` at ``now``: (ok, why not).

    The resource is compared without regard to case, as IoT Hub does; the
    signature in constant time.
    """
    parsed = parse_sas_token(token)
    if parsed is None:
        return False, "not a SAS token"
    if parsed.resource.lower() != resource.lower():
        return False, "signed for another resource"
    expected = sign(parsed.resource, key, parsed.expiry)
    if not hmac.compare_digest(expected.encode(), parsed.signature.encode()):
        return False, "bad signature"
    if parsed.expiry <= now:
        return False, "expired"
    return True, ""

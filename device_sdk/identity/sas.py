"""Shared access signature (SAS) tokens, as Azure IoT Hub and DPS take them.

A token is ``SharedAccessSignature sr={resource}&sig={signature}&se={expiry}``
(and ``&skn={policy}`` for a shared access policy), where ``resource`` is the
URL-encoded resource URI (``{hub host}/devices/{device id}`` for a device,
``{id scope}/registrations/{registration id}`` for DPS), ``expiry`` is Unix
seconds, and ``signature`` is the URL-encoded base64 of HMAC-SHA256 over
``{resource}\\n{expiry}`` keyed with the base64-decoded key.

The functions are pure: no clock, no files. The provider that mints them on every
attempt is :class:`SasTokenProvider` (below); the testbed's IoT-Hub-like front
and DPS-like service verify with :func:`verify_sas_token`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import string
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from device_sdk.config import LONGEST_SECONDS, check_path
from device_sdk.core.topics import check_mqtt_string, shown
from device_sdk.errors import ConfigError, CredentialError
from device_sdk.identity.provider import Identity, check_private_file

if TYPE_CHECKING:
    from device_sdk.config import HubEndpoint

_PREFIX = "SharedAccessSignature "
DEFAULT_TTL = 3600.0
# A device's SAS token is signed for its hub and id; Azure IoT Hub names it so.
DEFAULT_RESOURCE_TEMPLATE = "{fqdn}/devices/{client_id}"
_MIN_TTL = 1.0
_MIN_MARGIN = 5.0
_MAX_KEY_FILE = 4096  # a base64 SAS key is ~44 characters; anything this big is not one
_MAX_REGISTRATION_ID = 128  # DPS's limit for registration ids
_TEMPLATE_FIELDS = frozenset({"fqdn", "hub", "client_id"})


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
    to_sign = string_to_sign(resource, expiry)
    return base64.b64encode(hmac.new(key, to_sign, hashlib.sha256).digest()).decode("ascii")


def sas_token(resource: str, key: bytes, expiry: int, *, policy: str | None = None) -> str:
    """A token for ``resource`` (a resource URI, not yet URL-encoded) valid until ``expiry``."""
    return _token(resource, sign(resource, key, expiry), expiry, policy)


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


def string_to_sign(resource: str, expiry: int) -> bytes:
    """The bytes a SAS signature is the HMAC-SHA256 of: ``{encoded resource}\\n{expiry}``.

    What a ``key_callback`` of :class:`SasTokenProvider` is handed to sign.
    """
    return f"{urllib.parse.quote(resource, safe='')}\n{expiry}".encode()


def derive_device_key(group_key_b64: str, registration_id: str) -> str:
    """A device's SAS key from its DPS enrollment group's key, as base64 text.

    DPS group enrollments with symmetric keys give each device the base64
    HMAC-SHA256 of its registration id, keyed with the group key; the device
    holds only its own key, never the group's. Raises ConfigError (never
    showing either key).
    """
    if (
        not isinstance(registration_id, str)
        or not 1 <= len(registration_id) <= _MAX_REGISTRATION_ID
        or not registration_id.isascii()
        or not registration_id.isprintable()
    ):
        raise ConfigError(
            "registration_id",
            registration_id if isinstance(registration_id, str) else type(registration_id),
            f"1 to {_MAX_REGISTRATION_ID} printable ASCII characters",
        )
    group_key = _decode_key_field("group_key", group_key_b64)
    digest = hmac.new(group_key, registration_id.encode("ascii"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


class SasTokenProvider:
    """Mints a fresh SAS token before every connect attempt (Azure IoT Hub, DPS, testbeds).

    The key comes from exactly one of:

    - ``key``: the base64 text, as the Azure portal shows it;
    - ``key_file``: a file holding that text, read again at every attempt, so a
      rotated key needs no restart; refused when group or others may read it;
    - ``key_callback``: for keys kept in a TPM, HSM or secure element. It is
      called with the bytes to sign (:func:`string_to_sign`) and returns the raw
      32-byte HMAC-SHA256 digest; the SDK never sees the key.

    Each token is valid ``ttl`` seconds; the engine reconnects with a new one
    ``renew_margin`` seconds before it expires (make before break). The resource
    and the optional user name are templates filled with ``{fqdn}`` (the hub's,
    without a trailing dot), ``{hub}`` (its name) and ``{client_id}``, so one
    provider serves every hub of a failover list. ``clock`` gives wall-clock
    seconds (tests pass a virtual one). The key never appears in reprs, errors
    or logs; neither does a token.
    """

    __slots__ = (
        "_clock",
        "_key",
        "_key_callback",
        "_key_file",
        "_policy",
        "_renew_margin",
        "_resource_template",
        "_ttl",
        "_username_template",
    )

    def __init__(
        self,
        *,
        key: str | None = None,
        key_file: str | None = None,
        key_callback: Callable[[bytes], bytes] | None = None,
        ttl: float = DEFAULT_TTL,
        renew_margin: float | None = None,
        resource_template: str = DEFAULT_RESOURCE_TEMPLATE,
        policy: str | None = None,
        username_template: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        sources = [s for s in (key, key_file, key_callback) if s is not None]
        if len(sources) != 1:
            raise ConfigError(
                "sas.key",
                "<hidden>" if sources else None,
                "exactly one of key, key_file or key_callback",
            )
        self._key = None if key is None else _decode_key_field("sas.key", key)
        self._key_file = None if key_file is None else check_path("sas.key_file", key_file)
        if key_callback is not None and not callable(key_callback):
            raise ConfigError(
                "sas.key_callback", type(key_callback).__name__, "a callable (bytes) -> bytes"
            )
        self._key_callback = key_callback
        self._ttl = _check_ttl(ttl)
        self._renew_margin = _check_margin(renew_margin, self._ttl)
        self._resource_template = _check_template("sas.resource_template", resource_template)
        self._username_template = (
            None
            if username_template is None
            else _check_template("sas.username_template", username_template)
        )
        if policy is not None:
            check_mqtt_string("sas.policy", policy)
        self._policy = policy
        if not callable(clock):
            raise ConfigError("sas.clock", type(clock).__name__, "a callable () -> seconds")
        self._clock = clock

    @property
    def renewable(self) -> bool:
        """True: every attempt gets a token the hub has not seen."""
        return True

    @property
    def ttl(self) -> float:
        """How long each token is valid, in seconds."""
        return self._ttl

    @property
    def renew_margin(self) -> float:
        """How long before a token's expiry the engine reconnects with a new one."""
        return self._renew_margin

    def identity_for(self, hub: HubEndpoint, *, client_id: str, after_refusal: bool) -> Identity:
        """A fresh token for ``hub``; every call mints one, so a refusal needs nothing more."""
        now = self._now(hub)
        values = {"fqdn": hub.fqdn.rstrip("."), "hub": hub.name, "client_id": client_id}
        resource = self._resource_template.format(**values)
        expiry = math.floor(now + self._ttl)
        signature = self._signature(hub, resource, expiry)
        token = _token(resource, signature, expiry, self._policy)
        username = (
            None if self._username_template is None else self._username_template.format(**values)
        )
        return Identity(
            username=username,
            password=token,
            expires_at=float(expiry),
            renew_at=expiry - self._renew_margin,
        )

    def _now(self, hub: HubEndpoint) -> float:
        try:
            now = self._clock()
        except Exception as exc:
            raise CredentialError(
                f"the SAS clock raised {type(exc).__name__}", hub=hub.name
            ) from exc
        if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
            raise CredentialError(
                f"the SAS clock gave a {type(now).__name__}, not finite seconds", hub=hub.name
            )
        return float(now)

    def _signature(self, hub: HubEndpoint, resource: str, expiry: int) -> str:
        if self._key is not None:
            return sign(resource, self._key, expiry)
        if self._key_file is not None:
            return sign(resource, _read_key_file(self._key_file, hub.name), expiry)
        assert self._key_callback is not None  # one source is set: checked when built
        return _signature_from_callback(self._key_callback, string_to_sign(resource, expiry), hub)

    def __repr__(self) -> str:
        if self._key_file is not None:
            source = f"key_file={self._key_file!r}"
        elif self._key_callback is not None:
            name = getattr(self._key_callback, "__qualname__", type(self._key_callback).__name__)
            source = f"key_callback={name}"
        else:
            source = "key=<hidden>"
        return (
            f"SasTokenProvider({source}, ttl={self._ttl:g}, renew_margin={self._renew_margin:g}, "
            f"resource_template={self._resource_template!r})"
        )


def _token(resource: str, signature: str, expiry: int, policy: str | None) -> str:
    encoded = urllib.parse.quote(resource, safe="")
    token = f"{_PREFIX}sr={encoded}&sig={urllib.parse.quote(signature, safe='')}&se={expiry}"
    return token + (f"&skn={urllib.parse.quote(policy, safe='')}" if policy else "")


def _decode_key_field(field_name: str, key: object) -> bytes:
    if not isinstance(key, str | bytes):
        raise ConfigError(field_name, type(key).__name__, "the key as base64 text")
    try:
        return decode_key(key.strip())
    except ConfigError:
        pass  # raised below, outside the handler: nothing chains to the key
    raise ConfigError(field_name, "<hidden>", "the key as base64 text, as the portal shows it")


def _check_ttl(ttl: object) -> float:
    if (
        isinstance(ttl, bool)
        or not isinstance(ttl, int | float)
        or not _MIN_TTL <= ttl <= LONGEST_SECONDS
    ):
        raise ConfigError(
            "sas.ttl", ttl, f"seconds from {_MIN_TTL:g} to {LONGEST_SECONDS:g} (30 days)"
        )
    return float(ttl)


def _check_margin(margin: object, ttl: float) -> float:
    if margin is None:
        # A tenth of the life, but at least a few seconds (a reconnect's worth), and
        # always less than the life itself, so a token is used before it is renewed.
        return max(ttl * 0.1, min(_MIN_MARGIN, ttl / 2))
    if isinstance(margin, bool) or not isinstance(margin, int | float) or not 0 < margin < ttl:
        raise ConfigError(
            "sas.renew_margin", margin, f"seconds greater than 0 and less than ttl ({ttl:g})"
        )
    return float(margin)


def _check_template(field_name: str, template: object) -> str:
    allowed = "text with the plain fields {fqdn}, {hub} and {client_id} only"
    if not isinstance(template, str) or not template:
        raise ConfigError(field_name, shown(template), allowed)
    check_mqtt_string(field_name, template)
    try:
        # Plain names only: "{fqdn.__class__}" or "{client_id!r}" would format, but
        # would put something other than the value itself into a signed resource.
        parts = list(string.Formatter().parse(template))
    except ValueError:
        parts = [("", "?", "", None)]
    for _text, name, spec, conversion in parts:
        if name is not None and (name not in _TEMPLATE_FIELDS or spec or conversion):
            raise ConfigError(field_name, shown(template), allowed)
    return template


def _read_key_file(path: str, hub: str) -> bytes:
    check_private_file("sas.key_file", path, private=True, hub=hub)
    try:
        with open(path, "rb") as file:
            text = file.read(_MAX_KEY_FILE + 1)
    except OSError as exc:
        raise CredentialError(
            f"sas.key_file {path!r} cannot be read: {exc.strerror or type(exc).__name__}",
            hub=hub,
        ) from None
    key = b""
    if len(text) <= _MAX_KEY_FILE:
        try:
            key = decode_key(text.strip())
        except ConfigError:
            key = b""
    if not key:  # raised outside the handler: nothing chains to the file's text
        raise CredentialError(
            f"sas.key_file {path!r} does not hold a SAS key as base64 text", hub=hub
        )
    return key


def _signature_from_callback(
    callback: Callable[[bytes], bytes], to_sign: bytes, hub: HubEndpoint
) -> str:
    try:
        digest = callback(to_sign)
    except Exception as exc:
        # Only the type: the callback's own message may quote what it holds. The cause
        # stays on __cause__ for the log's traceback, as for any provider.
        raise CredentialError(
            f"the SAS key callback raised {type(exc).__name__}", hub=hub.name
        ) from exc
    if not isinstance(digest, bytes | bytearray) or len(digest) != hashlib.sha256().digest_size:
        kind = type(digest).__name__
        size = f" of {len(digest)} bytes" if isinstance(digest, bytes | bytearray) else ""
        raise CredentialError(
            f"the SAS key callback returned a {kind}{size}, not the 32-byte HMAC-SHA256 digest",
            hub=hub.name,
        )
    return base64.b64encode(bytes(digest)).decode("ascii")

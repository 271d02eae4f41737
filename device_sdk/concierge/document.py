"""The concierge's endpoint document: its fields, strict parsing, and the bytes that are signed.

A concierge answers with an *envelope*::

    {"document": {...}, "signature": {"alg": "Ed25519", "kid": "k1", "value": "<base64url>"}}

The signature is Ed25519 over :func:`canonical_bytes` of the ``document``
object: RFC 8785 (JSON Canonicalization Scheme) restricted to values without
floating-point numbers, which makes it plain sorted, whitespace-free UTF-8
JSON. ``FORMAT.md`` next to this module is the full specification, written so
that a concierge can be built in another language.

Everything here treats input as hostile: a size bound before parsing, no
duplicate keys, no floats or NaN, integers within the range every JSON
implementation represents exactly, bounded nesting, and exact key sets. Every
failure is a :class:`~device_sdk.errors.MalformedDocument`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import NoReturn

from device_sdk.config import HubEndpoint, TlsSettings, is_ip_literal
from device_sdk.errors import MalformedDocument

__all__ = [
    "FORMAT_VERSION",
    "MAX_ENVELOPE_BYTES",
    "MAX_HUBS",
    "MAX_SAFE_INTEGER",
    "SIGNATURE_ALGORITHM",
    "DocumentHub",
    "EndpointDocument",
    "SignedEnvelope",
    "canonical_bytes",
    "encode_envelope",
    "fqdn_problem",
    "parse_document",
    "parse_envelope",
]

FORMAT_VERSION = 1
SIGNATURE_ALGORITHM = "Ed25519"
MAX_ENVELOPE_BYTES = 64 * 1024
MAX_HUBS = 32
# The largest integer every JSON implementation (JavaScript's doubles included)
# holds exactly; beyond it, two parsers could read different numbers.
MAX_SAFE_INTEGER = 2**53 - 1
_MAX_INTEGER_DIGITS = 17  # len("-9007199254740991"); refuse longer before int() runs
_MAX_DEPTH = 8  # a valid document nests 3 deep; anything past 8 is an attack or a bug
_SIGNATURE_BYTES = 64
_SIGNATURE_CHARS = 86  # ceil(64 * 4 / 3) base64url characters, no padding
_MAX_FQDN = 253
_MAX_SCOPE_ID = 128
_MAX_KID = 64

# The same rule as HubEndpoint.name, so every document hub can become a HubEndpoint.
_HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_SCOPE = re.compile(rf"(device|fleet):[^\x00-\x1f\x7f]{{1,{_MAX_SCOPE_ID}}}")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")

_DOCUMENT_KEYS = frozenset(
    {"format_version", "sequence", "issued_at", "expires_at", "scope", "active_hub", "hubs"}
)
_OPTIONAL_DOCUMENT_KEYS = frozenset({"scope"})
_HUB_KEYS = frozenset({"fqdn", "port", "tls"})
_ENVELOPE_KEYS = frozenset({"document", "signature"})
_SIGNATURE_KEYS = frozenset({"alg", "kid", "value"})


def _reject(message: str) -> NoReturn:
    raise MalformedDocument(f"malformed endpoint document: {message}")


def fqdn_problem(fqdn: object) -> str | None:
    """Why ``fqdn`` is not an acceptable hub name in a document, or None when it is.

    Documents carry DNS names only: never an IP literal (a concierge must not be
    able to pin a device to an address that DNS failover cannot move), never a
    single label such as ``localhost``, no final dot, ASCII only (IDNs as A-labels).
    """
    if not isinstance(fqdn, str):
        return "must be a string"
    if is_ip_literal(fqdn):
        return "must be a DNS name, not an IP literal"
    labels = fqdn.split(".")
    if len(fqdn) > _MAX_FQDN or not all(_LABEL.fullmatch(label) for label in labels):
        return "must be a DNS name: labels of letters, digits and '-', joined by dots"
    if len(labels) < 2:
        return "must have at least two labels"
    if labels[-1].isdigit():
        return "must not end in a numeric label (it could be read as an IPv4 address)"
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class DocumentHub:
    """One hub as a document names it: a DNS name (never an IP), a port and a TLS flag."""

    fqdn: str
    port: int
    tls: bool

    def __post_init__(self) -> None:
        problem = fqdn_problem(self.fqdn)
        if problem is not None:
            _reject(f"hub fqdn {self.fqdn!r} {problem}")
        if not _is_int(self.port) or not 1 <= self.port <= 65535:
            _reject(f"hub port {self.port!r} must be an integer from 1 to 65535")
        if not isinstance(self.tls, bool):
            _reject(f"hub tls {self.tls!r} must be true or false")

    def endpoint(self, name: str, *, tls: TlsSettings) -> HubEndpoint:
        """The HubEndpoint a device dials; ``tls`` applies only when the document says TLS."""
        return HubEndpoint(name=name, fqdn=self.fqdn, port=self.port, tls=tls if self.tls else None)

    def as_json(self) -> dict[str, object]:
        return {"fqdn": self.fqdn, "port": self.port, "tls": self.tls}


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointDocument:
    """What a concierge says: which hub is active, and which hubs exist.

    Times are integer Unix seconds. ``scope`` is ``None`` (every device that pins
    the signing key), ``"device:<client id>"`` or ``"fleet:<name>"``. Building one
    validates it; a bad value raises :class:`~device_sdk.errors.MalformedDocument`.
    """

    format_version: int
    sequence: int
    issued_at: int
    expires_at: int
    scope: str | None
    active_hub: str
    hubs: Mapping[str, DocumentHub]

    def __post_init__(self) -> None:
        if self.format_version != FORMAT_VERSION or not _is_int(self.format_version):
            _reject(f"format_version {self.format_version!r} is not supported (only 1)")
        for name in ("sequence", "issued_at", "expires_at"):
            value = getattr(self, name)
            if not _is_int(value) or not 0 <= value <= MAX_SAFE_INTEGER:
                _reject(f"{name} {value!r} must be an integer from 0 to 2**53 - 1")
        if self.expires_at <= self.issued_at:
            _reject("expires_at must be later than issued_at")
        if self.scope is not None and not (
            isinstance(self.scope, str) and _SCOPE.fullmatch(self.scope)
        ):
            _reject(f"scope {self.scope!r} must be 'device:<id>' or 'fleet:<name>'")
        self._check_hubs()
        # A read-only copy: a frozen document must not change under the caller.
        object.__setattr__(self, "hubs", MappingProxyType(dict(self.hubs)))

    def _check_hubs(self) -> None:
        if not isinstance(self.hubs, Mapping) or not 1 <= len(self.hubs) <= MAX_HUBS:
            _reject(f"hubs must map 1 to {MAX_HUBS} hub names to hubs")
        for name, hub in self.hubs.items():
            if not isinstance(name, str) or not _HUB_NAME.fullmatch(name):
                _reject(f"hub name {name!r} must be 1-63 characters: letters, digits, _ . -")
            if not isinstance(hub, DocumentHub):
                _reject(f"hub {name!r} must be a DocumentHub")
        if not isinstance(self.active_hub, str) or self.active_hub not in self.hubs:
            _reject(f"active_hub {self.active_hub!r} is not one of the hubs")

    def as_json(self) -> dict[str, object]:
        """The document as a JSON value; ``scope`` is left out when it is None."""
        value: dict[str, object] = {
            "format_version": self.format_version,
            "sequence": self.sequence,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "active_hub": self.active_hub,
            "hubs": {name: hub.as_json() for name, hub in self.hubs.items()},
        }
        if self.scope is not None:
            value["scope"] = self.scope
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedEnvelope:
    """A parsed envelope whose signature has NOT been checked yet.

    ``document`` is the raw JSON value: nothing in it may be trusted before
    ``signed_bytes`` verifies against ``signature``.
    """

    document: object
    signed_bytes: bytes
    alg: str
    kid: str
    signature: bytes


# -- the canonical form ----------------------------------------------------------------------


def canonical_bytes(value: object) -> bytes:
    """The canonical UTF-8 bytes of a JSON value (RFC 8785 without floating point).

    Objects: members sorted by key (UTF-16 code units, as RFC 8785 says; for ASCII
    keys that is plain byte order), ``{"k":v,...}`` with no whitespace. Arrays:
    ``[a,b]``. Integers: plain decimal, within +-(2**53 - 1). Strings: as JSON
    ``JSON.stringify`` writes them (``\\"``, ``\\\\``, ``\\b \\f \\n \\r \\t``, other
    controls as lower-case ``\\u00xx``, everything else literal UTF-8).
    ``true``, ``false`` and ``null`` as such. Floats and lone surrogates are refused.
    """
    parts: list[str] = []
    _write(value, parts, 0)
    try:
        return "".join(parts).encode("utf-8")
    except UnicodeEncodeError:
        _reject("strings must be valid Unicode (no lone surrogates)")


def _write(value: object, out: list[str], depth: int) -> None:
    if depth > _MAX_DEPTH:
        _reject(f"nested deeper than {_MAX_DEPTH} levels")
    if value is None:
        out.append("null")
    elif isinstance(value, bool):
        out.append("true" if value else "false")
    elif isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            _reject("integers must be within +-(2**53 - 1)")
        out.append(str(value))
    elif isinstance(value, str):
        out.append(json.dumps(value, ensure_ascii=False))
    elif isinstance(value, list | tuple):
        _write_array(value, out, depth)
    elif isinstance(value, Mapping):
        _write_object(value, out, depth)
    else:
        _reject(f"{type(value).__name__} values are not allowed (no floating point)")


def _write_array(items: list[object] | tuple[object, ...], out: list[str], depth: int) -> None:
    out.append("[")
    for index, item in enumerate(items):
        if index:
            out.append(",")
        _write(item, out, depth + 1)
    out.append("]")


def _write_object(members: Mapping[object, object], out: list[str], depth: int) -> None:
    keys: list[str] = []
    for key in members:
        if not isinstance(key, str):
            _reject("object keys must be strings")
        keys.append(key)
    keys.sort(key=_utf16_order)
    out.append("{")
    for index, key in enumerate(keys):
        if index:
            out.append(",")
        out.append(json.dumps(key, ensure_ascii=False))
        out.append(":")
        _write(members[key], out, depth + 1)
    out.append("}")


def _utf16_order(key: str) -> bytes:
    # RFC 8785 sorts by UTF-16 code units; big-endian UTF-16 bytes compare the same way.
    return key.encode("utf-16-be", errors="surrogatepass")


# -- strict JSON -------------------------------------------------------------------------------


def _unique_object(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # Two parsers that keep different duplicates would see different documents
    # under one signature: refuse duplicates outright.
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            _reject(f"duplicate key {key!r}")
        result[key] = value
    return result


def _bounded_int(text: str) -> int:
    if len(text) > _MAX_INTEGER_DIGITS:
        _reject("integer too large")
    return int(text)


def _no_float(_text: str) -> NoReturn:
    _reject("floating-point numbers are not allowed")


def _no_constant(text: str) -> NoReturn:
    _reject(f"{text} is not JSON")


def _loads(raw: bytes) -> object:
    if not isinstance(raw, bytes | bytearray):
        _reject("expected bytes")
    if len(raw) > MAX_ENVELOPE_BYTES:
        _reject(f"{len(raw)} bytes is more than the {MAX_ENVELOPE_BYTES} allowed")
    try:
        text = bytes(raw).decode("utf-8")  # explicitly UTF-8: json would guess UTF-16/32
        return json.loads(
            text,
            object_pairs_hook=_unique_object,
            parse_int=_bounded_int,
            parse_float=_no_float,
            parse_constant=_no_constant,
        )
    except UnicodeDecodeError:
        _reject("not UTF-8")
    except ValueError as exc:  # JSONDecodeError
        _reject(f"not JSON ({exc})")
    except RecursionError:
        _reject("nested too deeply")


def _members(
    value: object, what: str, keys: frozenset[str], optional: frozenset[str]
) -> dict[str, object]:
    """``value`` as a JSON object with exactly ``keys`` (those in ``optional`` may be absent)."""
    if not isinstance(value, dict):
        _reject(f"{what} must be a JSON object")
    unknown = sorted(set(value) - keys)
    missing = sorted(keys - optional - set(value))
    if unknown:
        _reject(f"{what} has unknown fields {unknown}")
    if missing:
        _reject(f"{what} lacks required fields {missing}")
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _integer(members: Mapping[str, object], key: str, what: str = "") -> int:
    value = members[key]
    if not _is_int(value):
        _reject(f"{what}{key} must be an integer")
    assert isinstance(value, int)
    return value


def _string(members: Mapping[str, object], key: str, what: str) -> str:
    value = members[key]
    if not isinstance(value, str):
        _reject(f"{what}{key} must be a string")
    return value


# -- envelopes and documents -------------------------------------------------------------------


def parse_envelope(raw: bytes) -> SignedEnvelope:
    """Parse the envelope and compute the bytes the signature must cover.

    Looks only at what verification needs; the document itself stays an
    untrusted JSON value until the signature has been checked.
    """
    envelope = _members(_loads(raw), "the envelope", _ENVELOPE_KEYS, frozenset())
    signature = _members(envelope["signature"], "signature", _SIGNATURE_KEYS, frozenset())
    alg = _string(signature, "alg", "signature.")
    kid = _string(signature, "kid", "signature.")
    if not 1 <= len(kid) <= _MAX_KID:
        _reject(f"signature.kid must be 1 to {_MAX_KID} characters")
    document = envelope["document"]
    if not isinstance(document, dict):
        _reject("document must be a JSON object")
    return SignedEnvelope(
        document=document,
        signed_bytes=canonical_bytes(document),
        alg=alg,
        kid=kid,
        signature=_signature_value(_string(signature, "value", "signature.")),
    )


def _signature_value(text: str) -> bytes:
    if len(text) != _SIGNATURE_CHARS or not _BASE64URL.fullmatch(text):
        _reject(f"signature.value must be {_SIGNATURE_CHARS} base64url characters, no padding")
    try:
        value = base64.urlsafe_b64decode(text + "==")
    except (binascii.Error, ValueError):
        _reject("signature.value is not base64url")
    # One encoding per signature: refuse non-zero padding bits (a second spelling).
    if _b64url(value) != text:
        _reject("signature.value is not canonical base64url")
    return value


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def parse_document(value: object) -> EndpointDocument:
    """Build an EndpointDocument from its JSON value, checking every type and range."""
    members = _members(value, "document", _DOCUMENT_KEYS, _OPTIONAL_DOCUMENT_KEYS)
    scope = members.get("scope")
    if scope is not None and not isinstance(scope, str):
        _reject("scope must be a string or null")
    hubs = members["hubs"]
    if not isinstance(hubs, dict) or not 1 <= len(hubs) <= MAX_HUBS:
        _reject(f"hubs must be a JSON object of 1 to {MAX_HUBS} hubs")
    return EndpointDocument(
        format_version=_integer(members, "format_version"),
        sequence=_integer(members, "sequence"),
        issued_at=_integer(members, "issued_at"),
        expires_at=_integer(members, "expires_at"),
        scope=scope,
        active_hub=_string(members, "active_hub", ""),
        hubs={name: _parse_hub(name, hub) for name, hub in hubs.items()},
    )


def _parse_hub(name: str, value: object) -> DocumentHub:
    members = _members(value, f"hub {name!r}", _HUB_KEYS, frozenset())
    tls = members["tls"]
    if not isinstance(tls, bool):
        _reject(f"hub {name!r} tls must be true or false")
    return DocumentHub(
        fqdn=_string(members, "fqdn", f"hub {name!r} "),
        port=_integer(members, "port", f"hub {name!r} "),
        tls=tls,
    )


def encode_envelope(document: EndpointDocument, *, kid: str, signature: bytes) -> bytes:
    """The envelope bytes a concierge serves (itself in canonical form)."""
    if len(signature) != _SIGNATURE_BYTES:
        raise ValueError(f"an Ed25519 signature is {_SIGNATURE_BYTES} bytes")
    envelope = {
        "document": document.as_json(),
        "signature": {"alg": SIGNATURE_ALGORITHM, "kid": kid, "value": _b64url(signature)},
    }
    return canonical_bytes(envelope)

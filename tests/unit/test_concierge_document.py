"""The endpoint document: canonical form, strict parsing, and every way verification refuses."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device_sdk.concierge import (
    ConciergeTrust,
    DocumentHub,
    EndpointDocument,
    canonical_bytes,
    public_key_text,
    sign_document,
    verify,
)
from device_sdk.concierge.signing import (
    decode_public_key,
    load_private_key,
    load_public_key,
    write_keypair,
)
from device_sdk.config import TlsSettings
from device_sdk.errors import (
    BadSignature,
    ConciergeError,
    ConfigError,
    DocumentExpired,
    DocumentNotYetValid,
    DocumentRejected,
    HubNotAllowed,
    MalformedDocument,
    RollbackRejected,
    ScopeMismatch,
    UnknownKey,
    WrongAlgorithm,
)

# The FORMAT.md example: a fixed test key (seed 00 01 02 .. 1f), never a real one.
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
KID = "2026-01"
ISSUED = 1_767_225_600  # 2026-01-01T00:00:00Z
GOLDEN_PUBLIC_KEY = "A6EHv_POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg"
GOLDEN_CANONICAL = (
    b'{"active_hub":"primary","expires_at":1767225900,"format_version":1,"hubs":{"primary":'
    b'{"fqdn":"primary.hubs.example.com","port":8883,"tls":true},"secondary":{"fqdn":'
    b'"secondary.hubs.example.com","port":8883,"tls":true}},"issued_at":1767225600,'
    b'"scope":"fleet:gateways","sequence":42}'
)
GOLDEN_SIGNATURE = (
    "w_Cz6YTc15e3oqL5KNUwL0veCmKmoAMeTQ29G-lYfJubaUvWs6epquRl3QfZfdb8Mk176ZEIVZcjqJG1flOcDA"
)


def hubs(**overrides: DocumentHub) -> dict[str, DocumentHub]:
    base = {
        "primary": DocumentHub(fqdn="primary.hubs.example.com", port=8883, tls=True),
        "secondary": DocumentHub(fqdn="secondary.hubs.example.com", port=8883, tls=True),
    }
    return base | overrides


def document(**overrides: Any) -> EndpointDocument:
    fields: dict[str, Any] = {
        "format_version": 1,
        "sequence": 42,
        "issued_at": ISSUED,
        "expires_at": ISSUED + 300,
        "scope": "fleet:gateways",
        "active_hub": "primary",
        "hubs": hubs(),
    }
    return EndpointDocument(**(fields | overrides))


def trust(**overrides: Any) -> ConciergeTrust:
    fields: dict[str, Any] = {
        "keys": {KID: GOLDEN_PUBLIC_KEY},
        "allowed_hubs": ("*.hubs.example.com",),
        "max_clock_skew": 60.0,
        "device_id": "gw-1",
        "fleet": "gateways",
    }
    return ConciergeTrust(**(fields | overrides))


def sign_value(
    value: object, *, key: Ed25519PrivateKey = KEY, kid: str = KID, alg: str = "Ed25519"
) -> bytes:
    """An envelope around any JSON value, signed over its canonical bytes."""
    signature = key.sign(canonical_bytes(value))
    value_text = base64.urlsafe_b64encode(signature).rstrip(b"=").decode()
    envelope = {"document": value, "signature": {"alg": alg, "kid": kid, "value": value_text}}
    return json.dumps(envelope).encode()


def check(raw: bytes, *, now: float = ISSUED + 10, last: int | None = None, **trusted: Any) -> Any:
    return verify(raw, trust(**trusted), now=now, last_sequence=last)


# -- the canonical form ---------------------------------------------------------------------


def test_golden_vector_canonical_bytes_signature_and_verification() -> None:
    assert public_key_text(KEY.public_key()) == GOLDEN_PUBLIC_KEY
    assert canonical_bytes(document().as_json()) == GOLDEN_CANONICAL
    envelope = sign_document(document(), KEY, KID)
    assert json.loads(envelope)["signature"] == {
        "alg": "Ed25519",
        "kid": KID,
        "value": GOLDEN_SIGNATURE,
    }
    # The envelope is itself canonical, so a concierge's answer is byte-for-byte predictable.
    assert envelope == canonical_bytes(json.loads(envelope))
    assert check(envelope) == document()


def test_canonical_form_escapes_and_orders_like_rfc_8785() -> None:
    # Cross-checked against JavaScript (JSON.stringify and Array.prototype.sort).
    value = {
        "\ue000": 1,
        "\U0001d11e": 2,
        "a": 3,
        "é": None,
        "s": '\t\x00\x1f\x7f\u2028"\\/ \b\f\n\r',
        "n": [-0, -(2**53 - 1), True, False, {}, []],
    }
    expected = (
        '{"a":3,"n":[0,-9007199254740991,true,false,{},[]],'
        '"s":"\\t\\u0000\\u001f\x7f\u2028\\"\\\\/ \\b\\f\\n\\r","é":null,"\U0001d11e":2,"\ue000":1}'
    )
    assert canonical_bytes(value) == expected.encode("utf-8")


@pytest.mark.parametrize(
    "value",
    [1.5, 2**53, -(2**53), "\ud800", {"k": "\udfff"}, {1: "x"}, [[[[[[[[[[1]]]]]]]]]], object()],
)
def test_canonical_form_refuses_what_other_languages_cannot_reproduce(value: object) -> None:
    with pytest.raises(MalformedDocument):
        canonical_bytes(value)


def test_a_document_hub_becomes_a_hub_endpoint(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("not parsed here\n")
    tls = TlsSettings(ca_file=str(ca_file))
    secure = DocumentHub(fqdn="a.example.com", port=8883, tls=True).endpoint("a", tls=tls)
    plain = DocumentHub(fqdn="b.example.com", port=1883, tls=False).endpoint("b", tls=tls)
    assert (secure.fqdn, secure.port, secure.tls) == ("a.example.com", 8883, tls)
    assert plain.tls is None


def test_documents_are_frozen_copies() -> None:
    source = hubs()
    built = document(hubs=source)
    source.clear()
    assert set(built.hubs) == {"primary", "secondary"}
    with pytest.raises(TypeError):
        built.hubs["evil"] = DocumentHub(fqdn="evil.example.net", port=1, tls=False)  # type: ignore[index]


# -- malformed input --------------------------------------------------------------------------

GOOD = document().as_json()
GOOD_HUB = {"fqdn": "primary.hubs.example.com", "port": 8883, "tls": True}


def with_fields(**fields: object) -> dict[str, object]:
    return {k: v for k, v in (GOOD | fields).items() if v is not DROP}


DROP = object()


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"\xff\xfe{}",
        "{}".encode("utf-16"),
        b"[]",
        b'{"document": {}, "signature": {}, "document": {}}',
        b'{"document": {}}',
        b" " * 70_000,
        b"[" * 60_000,
        b'{"document": {"a": 1e3}, "signature": {"alg": "Ed25519", "kid": "k", "value": ""}}',
        b'{"document": {"a": NaN}, "signature": {"alg": "Ed25519", "kid": "k", "value": ""}}',
        b'{"document": {"a": 1' + b"0" * 5000 + b"}}",
    ],
    ids=[
        "empty",
        "text",
        "not-utf8",
        "utf16",
        "array",
        "duplicate-key",
        "no-signature",
        "too-big",
        "deep",
        "float",
        "nan",
        "huge-int",
    ],
)
def test_bytes_that_are_not_an_envelope(raw: bytes) -> None:
    with pytest.raises(MalformedDocument):
        check(raw)


def signature_with(**fields: object) -> bytes:
    envelope = json.loads(sign_document(document(), KEY, KID))
    envelope["signature"] |= fields
    envelope["signature"] = {k: v for k, v in envelope["signature"].items() if v is not DROP}
    return json.dumps(envelope).encode()


@pytest.mark.parametrize(
    "fields",
    [
        {"value": GOLDEN_SIGNATURE + "="},
        {"value": GOLDEN_SIGNATURE[:-1]},
        {"value": GOLDEN_SIGNATURE[:-1] + "B"},  # non-zero padding bits: a second spelling
        {"value": GOLDEN_SIGNATURE[:-2] + "+/"},
        {"value": 12},
        {"kid": ""},
        {"kid": 7},
        {"alg": None},
        {"extra": 1},
        {"kid": DROP},
    ],
)
def test_malformed_signature_objects(fields: dict[str, object]) -> None:
    with pytest.raises(MalformedDocument):
        check(signature_with(**fields))


@pytest.mark.parametrize(
    "value",
    [
        with_fields(sequence=DROP),
        with_fields(hubs=DROP),
        with_fields(extra="x"),
        with_fields(format_version=2),
        with_fields(sequence="42"),
        with_fields(sequence=True),
        with_fields(sequence=-1),
        with_fields(issued_at=None),
        with_fields(expires_at=ISSUED),
        with_fields(scope=5),
        with_fields(scope="region:eu"),
        with_fields(scope="device:"),
        with_fields(scope="device:a\nb"),
        with_fields(active_hub="tertiary"),
        with_fields(active_hub=["primary"]),
        with_fields(hubs={}),
        with_fields(hubs=[GOOD_HUB]),
        with_fields(hubs={f"h{i}": GOOD_HUB for i in range(33)} | {"primary": GOOD_HUB}),
        with_fields(hubs={"primary": GOOD_HUB, "-bad": GOOD_HUB}),
        with_fields(hubs={"primary": GOOD_HUB | {"port": 0}}),
        with_fields(hubs={"primary": GOOD_HUB | {"port": 70000}}),
        with_fields(hubs={"primary": GOOD_HUB | {"port": "8883"}}),
        with_fields(hubs={"primary": GOOD_HUB | {"tls": 1}}),
        with_fields(hubs={"primary": GOOD_HUB | {"ca": "x"}}),
        with_fields(hubs={"primary": {"fqdn": "primary.hubs.example.com", "port": 8883}}),
        with_fields(hubs={"primary": "primary.hubs.example.com"}),
        with_fields(hubs={"primary": GOOD_HUB | {"fqdn": "192.0.2.7"}}),
        with_fields(hubs={"primary": GOOD_HUB | {"fqdn": "2001:db8::7"}}),
        with_fields(hubs={"primary": GOOD_HUB | {"fqdn": "localhost"}}),
        with_fields(hubs={"primary": GOOD_HUB | {"fqdn": "hub.example.com."}}),
        with_fields(hubs={"primary": GOOD_HUB | {"fqdn": "127.1"}}),
        with_fields(hubs={"primary": GOOD_HUB | {"fqdn": "hub_1.example.com"}}),
        with_fields(hubs={"primary": GOOD_HUB | {"fqdn": "hüb.example.com"}}),
        with_fields(hubs={"primary": GOOD_HUB | {"fqdn": "a" * 64 + ".example.com"}}),
    ],
)
def test_signed_but_malformed_documents(value: dict[str, object]) -> None:
    with pytest.raises(MalformedDocument):
        check(sign_value(value))


def test_scope_may_be_absent_or_null() -> None:
    for scope in (DROP, None):
        assert check(sign_value(with_fields(scope=scope))).scope is None


# -- every rejection, each with its own type ----------------------------------------------------


def test_a_tampered_document_has_a_bad_signature() -> None:
    envelope = json.loads(sign_document(document(), KEY, KID))
    envelope["document"]["hubs"]["primary"]["fqdn"] = "evil.hubs.example.com"
    with pytest.raises(BadSignature):
        check(json.dumps(envelope).encode())


def test_a_signature_by_another_key_under_a_pinned_kid_is_bad() -> None:
    with pytest.raises(BadSignature):
        check(sign_document(document(), OTHER_KEY, KID))


def test_an_unpinned_key_id_is_unknown() -> None:
    with pytest.raises(UnknownKey):
        check(sign_document(document(), OTHER_KEY, "attacker"))


@pytest.mark.parametrize("alg", ["none", "EdDSA", "ed25519", "HS256", "RS256", ""])
def test_only_ed25519_is_accepted(alg: str) -> None:
    with pytest.raises(WrongAlgorithm):
        check(sign_value(GOOD, alg=alg))


def test_validity_window_with_clock_skew() -> None:
    raw = sign_document(document(), KEY, KID)
    skew = 60
    assert check(raw, now=ISSUED - skew)  # a device clock slightly behind
    assert check(raw, now=ISSUED + 300 + skew - 0.001)  # or slightly ahead
    with pytest.raises(DocumentNotYetValid):
        check(raw, now=ISSUED - skew - 0.001)
    with pytest.raises(DocumentExpired):
        check(raw, now=ISSUED + 300 + skew)
    with pytest.raises(DocumentExpired):
        check(raw, now=ISSUED + 300, max_clock_skew=0)


def test_an_older_sequence_is_a_rollback_and_the_same_one_is_a_reissue() -> None:
    raw = sign_document(document(sequence=42), KEY, KID)
    with pytest.raises(RollbackRejected):
        check(raw, last=43)
    assert check(raw, last=42).sequence == 42  # same content, fresh validity window
    assert check(raw, last=41).sequence == 42
    assert check(raw, last=None).sequence == 42


@pytest.mark.parametrize(
    ("scope", "trusted"),
    [
        ("fleet:other", {}),
        ("device:gw-2", {}),
        ("device:gw-1", {"device_id": None}),
        ("fleet:gateways", {"fleet": None, "device_id": None}),
        (None, {"accept_unscoped": False}),
    ],
)
def test_documents_for_someone_else_are_scope_mismatches(
    scope: str | None, trusted: dict[str, Any]
) -> None:
    with pytest.raises(ScopeMismatch):
        check(sign_document(document(scope=scope), KEY, KID), **trusted)


@pytest.mark.parametrize("scope", ["device:gw-1", "fleet:gateways", None])
def test_documents_for_this_device_are_in_scope(scope: str | None) -> None:
    assert check(sign_document(document(scope=scope), KEY, KID)).scope == scope


@pytest.mark.parametrize(
    "fqdn",
    [
        "evil.example.net",
        "hubs.example.com",
        "primary.hubs.example.com.evil.net",
        "xhubs.example.com",
    ],
)
def test_hubs_outside_the_allow_list_are_refused(fqdn: str) -> None:
    doc = document(hubs=hubs(secondary=DocumentHub(fqdn=fqdn, port=8883, tls=True)))
    with pytest.raises(HubNotAllowed):
        check(sign_document(doc, KEY, KID))


def test_allow_list_exact_names_wildcards_and_case() -> None:
    allowed = trust(allowed_hubs=("primary.hubs.example.com", "*.backup.example.org"))
    assert allowed.allows("PRIMARY.hubs.example.com")
    assert allowed.allows("a.backup.example.org")
    assert allowed.allows("a.b.backup.example.org")
    assert not allowed.allows("backup.example.org")
    assert not allowed.allows("secondary.hubs.example.com")
    # A fully qualified name (DPS answers may end in a dot) is the same name.
    assert allowed.allows("primary.hubs.example.com.")
    assert allowed.allows("a.backup.example.org.")
    assert not allowed.allows(".primary.hubs.example.com")


def test_checks_run_in_order_signature_before_content() -> None:
    # Expired AND tampered: the signature is checked first, content is never trusted.
    envelope = json.loads(sign_document(document(expires_at=ISSUED + 1), KEY, KID))
    envelope["document"]["sequence"] = 1
    with pytest.raises(BadSignature):
        check(json.dumps(envelope).encode(), now=ISSUED + 10_000)
    # Wrong algorithm AND unknown key: the algorithm comes first.
    with pytest.raises(WrongAlgorithm):
        check(sign_value(GOOD, kid="nobody", alg="RS256"))
    # Expired AND rolled back AND off the allow-list: reported as expired.
    old = document(hubs=hubs(secondary=DocumentHub(fqdn="x.evil.net", port=1, tls=False)))
    with pytest.raises(DocumentExpired):
        check(sign_document(old, KEY, KID), now=ISSUED + 10_000, last=99)


def test_every_rejection_is_a_document_rejected_and_a_concierge_error() -> None:
    for error in (MalformedDocument, BadSignature, UnknownKey, HubNotAllowed, RollbackRejected):
        assert issubclass(error, DocumentRejected)
        assert issubclass(error, ConciergeError)


# -- keys: rotation, formats, files -------------------------------------------------------------


def test_key_rotation_with_two_pinned_keys() -> None:
    both = {KID: KEY.public_key(), "2026-07": public_key_text(OTHER_KEY.public_key())}
    assert check(sign_document(document(), KEY, KID), keys=both)
    assert check(sign_document(document(), OTHER_KEY, "2026-07"), keys=both)
    # The old key is unpinned once every concierge signs with the new one.
    new_only = {"2026-07": both["2026-07"]}
    with pytest.raises(UnknownKey):
        check(sign_document(document(), KEY, KID), keys=new_only)


def test_public_keys_as_raw_bytes_base64url_or_pem() -> None:
    public = KEY.public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for source in (raw, GOLDEN_PUBLIC_KEY, pem, pem.decode()):
        assert decode_public_key(source).public_bytes_raw() == raw


@pytest.mark.parametrize(
    "overrides",
    [
        {"keys": {}},
        {"keys": {KID: b"short"}},
        {"keys": {KID: "A6EHv_POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMb$"}},
        {"keys": {"bad kid": GOLDEN_PUBLIC_KEY}},
        {"allowed_hubs": ()},
        {"allowed_hubs": ("192.0.2.1",)},
        {"allowed_hubs": ("*.com",)},
        {"allowed_hubs": ("*",)},
        {"max_clock_skew": -1},
        {"device_id": ""},
    ],
)
def test_bad_trust_settings_fail_at_construction(overrides: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=rf"^concierge\.{next(iter(overrides))}"):
        trust(**overrides)


def test_keygen_writes_a_0600_private_key_and_never_overwrites(tmp_path: Path) -> None:
    files = write_keypair(tmp_path / "keys", "k1")
    assert stat.S_IMODE(os.stat(files.private_key_file).st_mode) == 0o600
    private_key = load_private_key(files.private_key_file)
    public_key = load_public_key(files.public_key_file)
    assert public_key_text(public_key) == files.public_key
    raw = sign_document(document(), private_key, "k1")
    assert check(raw, keys={"k1": files.public_key})
    with pytest.raises(ConfigError, match="a path where no file exists yet"):
        write_keypair(tmp_path / "keys", "k1")
    with pytest.raises(ConfigError, match=r"^kid = '\.\./escape' is invalid"):
        write_keypair(tmp_path / "keys", "../escape")


# -- property: nothing but ConciergeError, whatever arrives ------------------------------------

JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=8,
)
VALID_HUBS = st.dictionaries(
    st.sampled_from(["primary", "secondary", "backup"]),
    st.builds(
        lambda fqdn, port, tls: {"fqdn": fqdn, "port": port, "tls": tls},
        st.sampled_from(["a.hubs.example.com", "b.hubs.example.com", "evil.example.net"]),
        st.integers(min_value=1, max_value=65535),
        st.booleans(),
    ),
    min_size=1,
    max_size=3,
)
# Mostly well-formed documents, so that random values also reach the checks that
# run after the signature (times, scope, sequence, allow-list); then up to two
# fields replaced by arbitrary JSON, and maybe one left out.
VALID_FIELDS = st.fixed_dictionaries(
    {
        "format_version": st.just(1),
        "sequence": st.integers(min_value=0, max_value=100),
        "issued_at": st.integers(min_value=ISSUED - 500, max_value=ISSUED + 500),
        "expires_at": st.integers(min_value=ISSUED - 100, max_value=ISSUED + 900),
        "scope": st.sampled_from([None, "fleet:gateways", "device:gw-1", "fleet:x"]),
        "active_hub": st.sampled_from(["primary", "secondary"]),
        "hubs": VALID_HUBS,
    }
)
JUNK_FIELDS = st.dictionaries(st.sampled_from([*GOOD, "extra"]), JSON_VALUES, max_size=2)
DROPPED_FIELDS = st.sets(st.sampled_from(list(GOOD)), max_size=1)
PROPERTY_SETTINGS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def only_concierge_errors(raw: bytes, last: int | None = None) -> None:
    """Either a ConciergeError, or a document that obeys every rule and is what was signed."""
    try:
        result = check(raw, last=last)
    except ConciergeError:
        return
    assert isinstance(result, EndpointDocument)
    now, skew = ISSUED + 10, 60  # what check() uses
    assert result.issued_at <= now + skew and now - skew < result.expires_at
    assert result.scope in (None, "device:gw-1", "fleet:gateways")
    assert last is None or result.sequence >= last
    assert all(trust().allows(hub.fqdn) for hub in result.hubs.values())
    signed = json.loads(raw)["document"]
    assert result.as_json() == {k: v for k, v in signed.items() if not (k == "scope" and v is None)}


@PROPERTY_SETTINGS
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_concierge_errors(raw: bytes) -> None:
    only_concierge_errors(raw)


@PROPERTY_SETTINGS
@given(JSON_VALUES, st.sampled_from(["Ed25519", "none"]), st.sampled_from([KID, "x"]))
def test_arbitrary_json_envelopes_raise_only_concierge_errors(
    value: object, alg: str, kid: str
) -> None:
    only_concierge_errors(json.dumps(value).encode())
    signature = {"alg": alg, "kid": kid, "value": GOLDEN_SIGNATURE}
    only_concierge_errors(json.dumps({"document": value, "signature": signature}).encode())


@PROPERTY_SETTINGS
@given(
    VALID_FIELDS,
    JUNK_FIELDS,
    DROPPED_FIELDS,
    st.none() | st.integers(min_value=0, max_value=100),
)
def test_arbitrary_signed_documents_raise_only_concierge_errors(
    valid: dict[str, object], junk: dict[str, object], dropped: set[str], last: int | None
) -> None:
    value = {k: v for k, v in (valid | junk).items() if k not in dropped}
    try:
        raw = sign_value(value)
    except MalformedDocument:  # not even canonicalisable: send it with a junk signature
        signature = {"alg": "Ed25519", "kid": KID, "value": GOLDEN_SIGNATURE}
        raw = json.dumps({"document": value, "signature": signature}).encode()
    only_concierge_errors(raw, last)


# -- the allow-list, against names that nearly match -------------------------------------------


@pytest.mark.parametrize(
    ("fqdn", "allowed"),
    [
        ("a.hubs.example.com", True),
        ("a.b.hubs.example.com", True),
        ("A.HUBS.EXAMPLE.COM", True),
        ("evilhubs.example.com", False),  # the suffix must start at a label boundary
        ("xhubs.example.com", False),
        ("hubs.example.com", False),  # the wildcard needs at least one label in front
        (".hubs.example.com", False),  # ... and not an empty one
        ("a.hubs.example.co", False),
        ("a.hubs.example.com.evil.net", False),
        ("exact.example.org", True),
        ("EXACT.example.org", True),
        ("xexact.example.org", False),
        ("a.exact.example.org", False),  # an exact name is no wildcard
        ("exact.example.orgx", False),
    ],
)
def test_the_allow_list_matches_whole_labels_only(fqdn: str, allowed: bool) -> None:
    trusted = trust(allowed_hubs=("*.hubs.example.com", "exact.example.org"))
    assert trusted.allows(fqdn) is allowed


def test_every_hub_of_a_document_must_be_allowed_not_only_the_active_one() -> None:
    near_miss = DocumentHub(fqdn="evilhubs.example.com", port=8883, tls=True)
    doc = document(hubs=hubs(backup=near_miss))
    with pytest.raises(
        HubNotAllowed,
        match=r"^document names hub 'backup' at 'evilhubs.example.com', not allow-listed$",
    ):
        check(sign_document(doc, KEY, KID))


# -- what a rejection says (the ConciergeProblem security event shows it) -------------------


def test_rejections_say_what_was_wrong() -> None:
    raw = sign_document(document(), KEY, KID)
    with pytest.raises(
        DocumentNotYetValid,
        match=r"^document issued at 1767225600, in the future \(now 1767225530, "
        r"allowed skew 60 s\)$",
    ):
        check(raw, now=ISSUED - 70)
    with pytest.raises(
        DocumentExpired,
        match=r"^document expired at 1767225900 \(now 1767225960, allowed skew 60 s\)$",
    ):
        check(raw, now=ISSUED + 360)
    with pytest.raises(
        RollbackRejected,
        match=r"^document sequence 42 is older than the last accepted 43 \(rollback or replay\)$",
    ):
        check(raw, last=43)
    with pytest.raises(
        ScopeMismatch,
        match=r"^document is for 'fleet:gateways'; "
        r"this device is \['device:gw-2', 'fleet:others'\]$",
    ):
        check(raw, device_id="gw-2", fleet="others")
    with pytest.raises(
        ScopeMismatch, match=r"^document is for 'fleet:gateways'; this device is none$"
    ):
        check(raw, device_id=None, fleet=None)
    unscoped = sign_document(document(scope=None), KEY, KID)
    with pytest.raises(
        ScopeMismatch,
        match=r"^document has no scope, and this device accepts only scoped ones$",
    ):
        check(unscoped, accept_unscoped=False)
    with pytest.raises(
        WrongAlgorithm, match=r"^document signed with 'HS256'; only Ed25519 is accepted$"
    ):
        check(sign_value(GOOD, alg="HS256"))
    with pytest.raises(
        UnknownKey, match=r"^document signed with key id 'attacker', which is not pinned$"
    ):
        check(sign_document(document(), OTHER_KEY, "attacker"))
    with pytest.raises(
        BadSignature, match=r"^the signature does not verify with pinned key '2026-01'$"
    ):
        check(sign_document(document(), OTHER_KEY, KID))


def test_the_window_edges_on_a_real_clock() -> None:
    # Issued "now" on a wall clock: the skew widens both edges by exactly its size.
    raw = sign_document(document(), KEY, KID)
    assert check(raw, now=ISSUED - 60.0, max_clock_skew=60.0)
    with pytest.raises(DocumentNotYetValid):
        check(raw, now=ISSUED - 60.5, max_clock_skew=60.0)
    assert check(raw, now=ISSUED + 300 + 59.5, max_clock_skew=60.0)
    with pytest.raises(DocumentExpired):
        check(raw, now=ISSUED + 300 + 60.0, max_clock_skew=60.0)
    # No allowance: valid from issued_at, expired at expires_at.
    assert check(raw, now=ISSUED, max_clock_skew=0)
    with pytest.raises(DocumentNotYetValid):
        check(raw, now=ISSUED - 0.5, max_clock_skew=0)
    assert check(raw, now=ISSUED + 299.5, max_clock_skew=0)


# -- what a device may be told to trust ---------------------------------------------------------

TRUST_REFUSALS = [
    ({"max_clock_skew": float("inf")}, "concierge.max_clock_skew", "a number of seconds >= 0"),
    ({"max_clock_skew": float("nan")}, "concierge.max_clock_skew", "a number of seconds >= 0"),
    ({"max_clock_skew": -0.5}, "concierge.max_clock_skew", "a number of seconds >= 0"),
    ({"max_clock_skew": True}, "concierge.max_clock_skew", "a number of seconds >= 0"),
    ({"max_clock_skew": "60"}, "concierge.max_clock_skew", "a number of seconds >= 0"),
    ({"keys": {}}, "concierge.keys", "at least one key id -> public key"),
    ({"keys": [GOLDEN_PUBLIC_KEY]}, "concierge.keys", "at least one key id -> public key"),
    ({"keys": {"": GOLDEN_PUBLIC_KEY}}, "concierge.keys", "key ids of 1-64 letters, digits, . _ -"),
    ({"keys": {1: GOLDEN_PUBLIC_KEY}}, "concierge.keys", "key ids of 1-64 letters, digits, . _ -"),
    ({"allowed_hubs": ()}, "concierge.allowed_hubs", "at least one pattern"),
    (
        {"allowed_hubs": (3,)},
        "concierge.allowed_hubs",
        "an FQDN or '*.' + an FQDN of two or more labels (no IPs)",
    ),
    (
        {"allowed_hubs": ("*.localhost",)},
        "concierge.allowed_hubs",
        "an FQDN or '*.' + an FQDN of two or more labels (no IPs)",
    ),
    (
        {"allowed_hubs": ("*.10.0.0.1",)},
        "concierge.allowed_hubs",
        "an FQDN or '*.' + an FQDN of two or more labels (no IPs)",
    ),
    ({"allowed_hubs": None}, "concierge.allowed_hubs", "a sequence of hub name patterns (strings)"),
    # One string is not a list of patterns (its characters would be taken as patterns).
    (
        {"allowed_hubs": "*.example.com"},
        "concierge.allowed_hubs",
        "a sequence of hub name patterns (strings)",
    ),
    ({"device_id": ""}, "concierge.device_id", "1-128 characters, no control characters"),
    ({"device_id": "x" * 129}, "concierge.device_id", "1-128 characters, no control characters"),
    ({"fleet": "a\nb"}, "concierge.fleet", "1-128 characters, no control characters"),
    ({"fleet": "a\x7fb"}, "concierge.fleet", "1-128 characters, no control characters"),
    ({"fleet": 7}, "concierge.fleet", "1-128 characters, no control characters"),
]


@pytest.mark.parametrize(("overrides", "field", "allowed"), TRUST_REFUSALS)
def test_refused_trust_settings_name_the_field_the_value_and_what_is_allowed(
    overrides: dict[str, Any], field: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        trust(**overrides)
    assert (refused.value.field, refused.value.allowed) == (field, allowed)
    # The value shown is the culprit itself: the bad key id or pattern, else the setting.
    (given,) = overrides.values()
    culprits = [given, *given] if isinstance(given, dict | tuple) and given else [given]
    assert any(refused.value.value is culprit for culprit in culprits)


@pytest.mark.parametrize(
    ("pattern", "accepted"),
    [
        ("ab.cd", True),  # an exact name of two short labels
        ("*.x.io", True),  # a wildcard over any name of two labels or more
        ("-x.example.com", False),  # every label of an exact name is checked
        ("*.-x.example.com", False),  # ... and every label of a wildcard's suffix
        ("*.x", False),  # a wildcard over a top-level domain
        ("a.*.example.com", False),  # a wildcard only in front
    ],
)
def test_allow_list_patterns_are_whole_names(pattern: str, accepted: bool) -> None:
    if accepted:
        assert trust(allowed_hubs=(pattern,)).allowed_hubs == (pattern,)
    else:
        with pytest.raises(ConfigError, match=r"^concierge\.allowed_hubs = "):
            trust(allowed_hubs=(pattern,))


def test_a_hostile_algorithm_name_is_cut_short_in_the_message() -> None:
    # The name comes from the attacker: 32 characters of it are enough to report.
    alg = "A" * 32 + "B" * 100
    with pytest.raises(WrongAlgorithm) as refused:
        check(sign_value(GOOD, alg=alg))
    assert str(refused.value) == (f"document signed with {'A' * 32!r}; only Ed25519 is accepted")


@pytest.mark.parametrize(
    "overrides",
    [
        {"max_clock_skew": 0},
        {"max_clock_skew": 0.0},
        {"max_clock_skew": 86_400},
        {"device_id": "x" * 128, "fleet": "f"},
        {"device_id": None, "fleet": None},
        {"allowed_hubs": ["*.hubs.example.com", "hub.example.org"]},  # any sequence
        {"keys": {"a" * 64: GOLDEN_PUBLIC_KEY}},
    ],
)
def test_boundary_trust_settings_are_accepted(overrides: dict[str, Any]) -> None:
    trusted = trust(**overrides)
    assert isinstance(trusted.allowed_hubs, tuple)


def test_scopes_are_the_device_and_its_fleet() -> None:
    assert trust().scopes == frozenset({"device:gw-1", "fleet:gateways"})
    assert trust(fleet=None).scopes == frozenset({"device:gw-1"})
    assert trust(device_id=None).scopes == frozenset({"fleet:gateways"})
    assert trust(device_id=None, fleet=None).scopes == frozenset()


# -- property: a well-formed document is believed exactly when every rule holds -----------------
# An oracle written from the README's rules, independent of the code: for signed documents
# whose fields all have the right types, acceptance is decided by the hubs' consistency, the
# validity window, the scope, the sequence and the allow-list, checked in that order.

ALLOWED_FQDNS = {"a.hubs.example.com", "b.hubs.example.com"}  # "evil.example.net" is not


def expected_rejection(
    value: dict[str, Any], *, now: float, skew: float, last: int | None
) -> type[DocumentRejected] | None:
    hubs_named = value["hubs"]
    rules: list[tuple[bool, type[DocumentRejected]]] = [
        (value["active_hub"] in hubs_named, MalformedDocument),
        (value["expires_at"] > value["issued_at"], MalformedDocument),
        (now + skew >= value["issued_at"], DocumentNotYetValid),
        (now - skew < value["expires_at"], DocumentExpired),
        (value["scope"] in (None, "device:gw-1", "fleet:gateways"), ScopeMismatch),
        (last is None or value["sequence"] >= last, RollbackRejected),
        (all(hub["fqdn"] in ALLOWED_FQDNS for hub in hubs_named.values()), HubNotAllowed),
    ]
    return next((error for holds, error in rules if not holds), None)


@PROPERTY_SETTINGS
@given(
    VALID_FIELDS,
    st.integers(min_value=ISSUED - 700, max_value=ISSUED + 1100),
    st.sampled_from([0, 60]),
    st.none() | st.integers(min_value=0, max_value=100),
)
def test_a_well_formed_document_is_believed_exactly_when_every_rule_holds(
    value: dict[str, Any], now: int, skew: int, last: int | None
) -> None:
    raw = sign_value(value)
    expected = expected_rejection(value, now=now, skew=skew, last=last)
    if expected is not None:
        with pytest.raises(expected):
            check(raw, now=now, last=last, max_clock_skew=skew)
        return
    believed = check(raw, now=now, last=last, max_clock_skew=skew)
    assert believed.as_json() == {k: v for k, v in value.items() if v is not None}

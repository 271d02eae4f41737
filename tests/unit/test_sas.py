"""SAS tokens: the math (known answers, tampering) and the provider that mints one per attempt.

Virtual wall-clock time throughout: the provider's ``clock`` is a list the test moves.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import os
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_sdk import HubEndpoint
from device_sdk.errors import ConfigError, CredentialError
from device_sdk.identity import SasTokenProvider, derive_device_key, identity_for_attempt
from device_sdk.identity.sas import (
    decode_key,
    parse_sas_token,
    sas_token,
    string_to_sign,
    verify_sas_token,
)

RAW_KEY = bytes(range(32))
KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="  # base64 of RAW_KEY
OTHER_RAW = bytes(range(100, 132))
OTHER_KEY = base64.b64encode(OTHER_RAW).decode()
RESOURCE = "myhub.azure-devices.net/devices/dev-01"
NOW = 1_700_000_000.0


def hub(name: str = "a", fqdn: str = "myhub.azure-devices.net.") -> HubEndpoint:
    return HubEndpoint(name=name, fqdn=fqdn, port=8883, tls=None)


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def write_key(path: Path, key: str, mode: int = 0o600) -> Path:
    path.write_text(key + "\n")
    os.chmod(path, mode)
    return path


def independent_token(resource: str, key: bytes, expiry: int) -> str:
    """The token as Azure documents it, computed here without device_sdk."""
    encoded = urllib.parse.quote(resource, safe="")
    digest = hmac.new(key, f"{encoded}\n{expiry}".encode(), hashlib.sha256).digest()
    signature = urllib.parse.quote(base64.b64encode(digest).decode(), safe="")
    return f"SharedAccessSignature sr={encoded}&sig={signature}&se={expiry}"


# -- the math -------------------------------------------------------------------------------


def test_a_token_matches_a_known_answer() -> None:
    expected = (
        "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fdev-01"
        "&sig=VOvP4VRAE6ohczHZpu6xkF1lbm%2FlbEIgqyZEPpxC7dI%3D&se=1700000000"
    )
    assert decode_key(KEY) == RAW_KEY
    assert sas_token(RESOURCE, RAW_KEY, 1_700_000_000) == expected
    assert independent_token(RESOURCE, RAW_KEY, 1_700_000_000) == expected


def test_a_policy_name_is_appended_as_skn() -> None:
    token = sas_token(RESOURCE, RAW_KEY, 1_700_000_000, policy="device policy")
    assert token.endswith("&skn=device%20policy")
    parsed = parse_sas_token(token)
    assert parsed is not None and parsed.policy == "device policy"


@given(
    # Any text with a UTF-8 form (lone surrogates have none to sign).
    resource=st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=80),
    expiry=st.integers(min_value=1, max_value=2**40),
)
def test_tokens_round_trip_through_parse_and_verify(resource: str, expiry: int) -> None:
    token = sas_token(resource, RAW_KEY, expiry)
    parsed = parse_sas_token(token)
    assert parsed is not None
    assert (parsed.resource, parsed.expiry) == (resource, expiry)
    assert verify_sas_token(token, RAW_KEY, resource=resource, now=expiry - 1) == (True, "")


def test_tampered_tokens_are_refused() -> None:
    expiry = 1_700_000_000
    token = sas_token(RESOURCE, RAW_KEY, expiry)
    before = expiry - 10
    assert verify_sas_token(token, RAW_KEY, resource=RESOURCE, now=before) == (True, "")
    other_resource = token.replace("dev-01", "dev-02")
    assert verify_sas_token(other_resource, RAW_KEY, resource=RESOURCE, now=before)[0] is False
    later = token.replace(f"se={expiry}", f"se={expiry + 3600}")
    assert verify_sas_token(later, RAW_KEY, resource=RESOURCE, now=before) == (
        False,
        "bad signature",
    )
    parsed = parse_sas_token(token)
    assert parsed is not None
    flipped = "A" if parsed.signature[0] != "A" else "B"
    bad_sig = token.replace(
        urllib.parse.quote(parsed.signature, safe=""),
        urllib.parse.quote(flipped + parsed.signature[1:], safe=""),
    )
    assert verify_sas_token(bad_sig, RAW_KEY, resource=RESOURCE, now=before) == (
        False,
        "bad signature",
    )
    assert verify_sas_token(token, OTHER_RAW, resource=RESOURCE, now=before) == (
        False,
        "bad signature",
    )
    assert verify_sas_token(token, RAW_KEY, resource=RESOURCE, now=expiry) == (False, "expired")
    assert verify_sas_token("Bearer x", RAW_KEY, resource=RESOURCE, now=before)[0] is False


def test_derive_device_key_is_the_hmac_of_the_registration_id() -> None:
    expected = base64.b64encode(hmac.new(RAW_KEY, b"reg-0001", hashlib.sha256).digest()).decode()
    assert expected == "zZeYv4NYtNz6cyTSnFN9M7Hl0OxMBev88xMM/5rUpmg="
    assert derive_device_key(KEY, "reg-0001") == expected


def test_derive_device_key_refuses_bad_input_without_showing_the_key() -> None:
    with pytest.raises(ConfigError) as caught:
        derive_device_key("not base64 at all!", "reg-0001")
    assert caught.value.field == "group_key"
    assert "not base64" not in str(caught.value)
    for bad in ("", "x" * 129, "bad\nid", 12):
        with pytest.raises(ConfigError) as caught:
            derive_device_key(KEY, bad)  # type: ignore[arg-type]
        assert caught.value.field == "registration_id"
        assert KEY not in str(caught.value)


# -- the provider: times ----------------------------------------------------------------------


def test_each_attempt_gets_a_fresh_token_with_times_from_the_clock() -> None:
    clock = Clock()
    provider = SasTokenProvider(key=KEY, ttl=3600, clock=clock)
    assert provider.renewable is True
    first = provider.identity_for(hub(), client_id="dev-01", after_refusal=False)
    assert first.expires_at == NOW + 3600
    assert first.renew_at == NOW + 3600 - 360  # default margin: a tenth of the life
    assert first.password == independent_token(RESOURCE, RAW_KEY, int(NOW + 3600))
    assert first.username is None and first.cert_file is None

    clock.now += 1234.5
    second = provider.identity_for(hub(), client_id="dev-01", after_refusal=True)
    assert second.expires_at == math.floor(NOW + 1234.5 + 3600)
    assert second.password != first.password
    ok = verify_sas_token(second.password or "", RAW_KEY, resource=RESOURCE, now=clock.now)
    assert ok == (True, "")


@pytest.mark.parametrize(
    ("ttl", "margin", "expected"), [(3600, None, 360.0), (10, None, 5.0), (2, None, 1.0)]
)
def test_the_default_margin_is_a_tenth_but_a_few_seconds_and_below_the_life(
    ttl: float, margin: float | None, expected: float
) -> None:
    provider = SasTokenProvider(key=KEY, ttl=ttl, renew_margin=margin, clock=Clock())
    assert provider.renew_margin == expected
    identity = provider.identity_for(hub(), client_id="dev-01", after_refusal=False)
    assert identity.renew_at is not None and identity.expires_at is not None
    assert NOW < identity.renew_at < identity.expires_at


def test_an_explicit_margin_sets_renew_at() -> None:
    provider = SasTokenProvider(key=KEY, ttl=600, renew_margin=30, clock=Clock())
    identity = provider.identity_for(hub(), client_id="dev-01", after_refusal=False)
    assert identity.renew_at == NOW + 600 - 30


def test_templates_are_filled_per_hub_with_the_fqdn_without_its_dot() -> None:
    provider = SasTokenProvider(
        key=KEY,
        clock=Clock(),
        resource_template="{fqdn}/devices/{client_id}/modules/{hub}",
        username_template="{fqdn}/{client_id}/?api-version=2021-04-12",
        policy="registry",
    )
    for endpoint in (hub("a", "one.example.test."), hub("b", "two.example.test")):
        identity = provider.identity_for(endpoint, client_id="dev-01", after_refusal=False)
        fqdn = endpoint.fqdn.rstrip(".")
        assert identity.username == f"{fqdn}/dev-01/?api-version=2021-04-12"
        parsed = parse_sas_token(identity.password or "")
        assert parsed is not None
        assert parsed.resource == f"{fqdn}/devices/dev-01/modules/{endpoint.name}"
        assert parsed.policy == "registry"


def test_through_identity_for_attempt_the_token_is_checked_and_kept() -> None:
    provider = SasTokenProvider(key=KEY, clock=Clock())
    identity = identity_for_attempt(provider, hub(), client_id="dev-01", now=NOW)
    assert identity.client_id == "dev-01"
    ok = verify_sas_token(identity.password or "", RAW_KEY, resource=RESOURCE, now=NOW)
    assert ok == (True, "")


def test_a_broken_clock_is_a_credential_error() -> None:
    def boom() -> float:
        raise RuntimeError("clock")

    for clock in (boom, lambda: math.nan, lambda: "soon"):
        provider = SasTokenProvider(key=KEY, clock=clock)  # type: ignore[arg-type]
        with pytest.raises(CredentialError):
            provider.identity_for(hub(), client_id="dev-01", after_refusal=False)


# -- the provider: key sources -----------------------------------------------------------------


def test_a_key_file_is_read_again_at_every_attempt(tmp_path: Path) -> None:
    path = write_key(tmp_path / "device.key", KEY)
    provider = SasTokenProvider(key_file=str(path), clock=Clock())
    first = provider.identity_for(hub(), client_id="dev-01", after_refusal=False)
    assert verify_sas_token(first.password or "", RAW_KEY, resource=RESOURCE, now=NOW)[0]

    write_key(path, OTHER_KEY)  # rotated in place: no restart, no new provider
    second = provider.identity_for(hub(), client_id="dev-01", after_refusal=False)
    assert verify_sas_token(second.password or "", OTHER_RAW, resource=RESOURCE, now=NOW)[0]
    assert not verify_sas_token(second.password or "", RAW_KEY, resource=RESOURCE, now=NOW)[0]


def test_a_key_file_others_may_read_is_refused_clearly(tmp_path: Path) -> None:
    path = write_key(tmp_path / "device.key", KEY, mode=0o644)
    provider = SasTokenProvider(key_file=str(path), clock=Clock())
    with pytest.raises(CredentialError) as caught:
        provider.identity_for(hub(), client_id="dev-01", after_refusal=False)
    message = str(caught.value)
    assert "sas.key_file" in message and "0644" in message and "chmod go=" in message
    assert KEY not in message
    assert caught.value.hub == "a"


def test_a_missing_or_unusable_key_file_is_a_credential_error(tmp_path: Path) -> None:
    garbage = "this is not base64!"
    bad = write_key(tmp_path / "bad.key", garbage)
    huge = write_key(tmp_path / "huge.key", "A" * 10_000)
    for path in (tmp_path / "missing.key", bad, huge, tmp_path):
        provider = SasTokenProvider(key_file=str(path), clock=Clock())
        with pytest.raises(CredentialError) as caught:
            provider.identity_for(hub(), client_id="dev-01", after_refusal=False)
        assert garbage not in str(caught.value)
        assert caught.value.__cause__ is None


def test_a_key_callback_signs_and_never_hands_over_the_key() -> None:
    seen: list[bytes] = []

    def hsm(data: bytes) -> bytes:
        seen.append(data)
        return hmac.new(RAW_KEY, data, hashlib.sha256).digest()

    provider = SasTokenProvider(key_callback=hsm, clock=Clock())
    identity = provider.identity_for(hub(), client_id="dev-01", after_refusal=False)
    expiry = int(NOW + 3600)
    assert seen == [string_to_sign(RESOURCE, expiry)]
    assert seen[0] == f"{urllib.parse.quote(RESOURCE, safe='')}\n{expiry}".encode()
    assert identity.password == independent_token(RESOURCE, RAW_KEY, expiry)
    assert "hsm" in repr(provider)


def _raises(_data: bytes) -> bytes:
    raise ValueError(f"could not sign with {KEY}")


@pytest.mark.parametrize(
    "callback",
    [
        _raises,
        lambda data: base64.b64encode(hmac.new(RAW_KEY, data, hashlib.sha256).digest()).decode(),
        lambda data: b"short",
        lambda data: None,
    ],
)
def test_a_faulty_key_callback_is_contained(callback: Callable[[bytes], bytes]) -> None:
    provider = SasTokenProvider(key_callback=callback, clock=Clock())
    with pytest.raises(CredentialError) as caught:
        identity_for_attempt(provider, hub(), client_id="dev-01", now=NOW)
    message = str(caught.value)
    assert "callback" in message and KEY not in message and "SharedAccessSignature" not in message
    assert caught.value.hub == "a"


# -- validation and secrecy ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({}, "sas.key"),
        ({"key": KEY, "key_file": "/k"}, "sas.key"),
        ({"key": "not base64!"}, "sas.key"),
        ({"key": ""}, "sas.key"),
        ({"key_file": ""}, "sas.key_file"),
        ({"key_file": "a\0b"}, "sas.key_file"),
        ({"key_callback": "sign"}, "sas.key_callback"),
        ({"key": KEY, "ttl": 0}, "sas.ttl"),
        ({"key": KEY, "ttl": math.nan}, "sas.ttl"),
        ({"key": KEY, "ttl": True}, "sas.ttl"),
        ({"key": KEY, "ttl": 400 * 86400}, "sas.ttl"),
        ({"key": KEY, "ttl": 60, "renew_margin": 60}, "sas.renew_margin"),
        ({"key": KEY, "renew_margin": 0}, "sas.renew_margin"),
        ({"key": KEY, "resource_template": "{fqdn}/{device}"}, "sas.resource_template"),
        ({"key": KEY, "resource_template": "{fqdn.__class__}"}, "sas.resource_template"),
        ({"key": KEY, "resource_template": "{client_id!r}"}, "sas.resource_template"),
        ({"key": KEY, "resource_template": "{}"}, "sas.resource_template"),
        ({"key": KEY, "resource_template": "{fqdn"}, "sas.resource_template"),
        ({"key": KEY, "username_template": "{hub:>10}"}, "sas.username_template"),
        ({"key": KEY, "policy": ""}, "sas.policy"),
        ({"key": KEY, "clock": 12}, "sas.clock"),
    ],
)
def test_bad_settings_name_their_field_and_never_the_key(
    fields: dict[str, object], field: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        SasTokenProvider(**fields)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert KEY not in str(caught.value) and "not base64" not in str(caught.value)
    assert caught.value.__cause__ is None


def test_neither_key_nor_token_appears_in_reprs_or_strings(tmp_path: Path) -> None:
    provider = SasTokenProvider(key=KEY, clock=Clock())
    identity = provider.identity_for(hub(), client_id="dev-01", after_refusal=False)
    token = identity.password or ""
    assert token.startswith("SharedAccessSignature ")
    signature = (parse_sas_token(token) or pytest.fail("no token")).signature
    for text in (repr(provider), str(provider), repr(identity), str(identity)):
        assert KEY not in text and token not in text and signature not in text
    assert "<hidden>" in repr(provider)
    path = write_key(tmp_path / "k", KEY)
    assert KEY not in repr(SasTokenProvider(key_file=str(path)))

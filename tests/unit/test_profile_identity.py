"""Profile keys for identity and ALPN: loading, bad values, extends, and the providers a
profile builds (token life, renewal margin, certificate expiry warning)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from device_sdk import ConfigError, HubEndpoint, TlsSettings
from device_sdk.identity.sas import parse_sas_token, verify_sas_token
from device_sdk.identity.x509 import DEFAULT_WARN_BEFORE
from device_sdk.profiles import Profile, default_search_path, load_profile
from device_sdk.profiles.schema import DEFAULT_EXPIRY_WARNING, SCHEMA, IdentityTiming
from device_sdk.testbed.pki import CertificateAuthority

KEY = base64.b64encode(b"k" * 32).decode()
HUB = HubEndpoint(name="primary", fqdn="hub-eu.example.com")
NOW = 1_800_000_000.0


def load(folder: Path, text: str, name: str = "p", **kwargs: object) -> Profile:
    (folder / f"{name}.toml").write_text(text, encoding="utf-8")
    kwargs.setdefault("env", {})
    return load_profile(name, search_path=[folder], **kwargs)  # type: ignore[arg-type]


def load_error(folder: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(folder, text, name="bad")
    return caught.value


# --------------------------------------------------------------------------- loading


def test_the_identity_defaults_are_the_providers_defaults(tmp_path: Path) -> None:
    profile = load(tmp_path, "")
    assert profile.identity == IdentityTiming()
    assert profile.identity.token_ttl == 3600.0
    assert profile.identity.renew_margin is None
    assert profile.identity.effective_renew_margin == 360.0  # a tenth of the life
    assert profile.identity.expiry_warning == DEFAULT_EXPIRY_WARNING == DEFAULT_WARN_BEFORE
    assert profile.tls_alpn_protocols == ()
    assert profile.values["identity.renew_margin"] == 0  # TOML's stand-in for None


def test_each_identity_key_and_alpn_loads(tmp_path: Path) -> None:
    profile = load(
        tmp_path,
        "[identity]\ntoken_ttl = 600\nrenew_margin = 120\nexpiry_warning = 86400\n"
        "[tls]\nalpn_protocols = ['mqtt', 'x-amzn-mqtt-ca']\n",
    )
    assert profile.identity == IdentityTiming(
        token_ttl=600.0, renew_margin=120.0, expiry_warning=86400.0
    )
    assert profile.tls_alpn_protocols == ("mqtt", "x-amzn-mqtt-ca")
    assert profile.values["identity.token_ttl"] == 600.0  # integers widen to floats


@pytest.mark.parametrize(
    ("toml", "key", "value", "allowed"),
    [
        ("[identity]\ntoken_ttl = 0.5", "identity.token_ttl", "0.5", "seconds from 1 to 2592000"),
        ("[identity]\ntoken_ttl = 3000000", "identity.token_ttl", "3000000.0", "2592000 (30 days)"),
        ("[identity]\ntoken_ttl = '1h'", "identity.token_ttl", "'1h'", "got a TOML string"),
        (
            "[identity]\ntoken_ttl = 60\nrenew_margin = 60",
            "identity.renew_margin",
            "60.0",
            "less than token_ttl (60)",
        ),
        ("[identity]\nrenew_margin = -5", "identity.renew_margin", "-5.0", "greater than 0"),
        ("[identity]\nrenew_margin = true", "identity.renew_margin", "True", "got a TOML boolean"),
        ("[identity]\nexpiry_warning = -1", "identity.expiry_warning", "-1.0", "from 0 to"),
        (
            "[identity]\nexpiry_warning = 40000000",
            "identity.expiry_warning",
            "40000000.0",
            "31622400",
        ),
        ("[identity]\ntoken_tll = 60", "identity.token_tll", "60", "did you mean"),
        ("[tls]\nalpn_protocols = 'mqtt'", "tls.alpn_protocols", "'mqtt'", "array"),
        ("[tls]\nalpn_protocols = ['']", "tls.alpn_protocols", "('',)", "1-255"),
        ("[tls]\nalpn_protocols = [1]", "tls.alpn_protocols", "[1]", "an array of ALPN"),
    ],
)
def test_a_bad_value_names_file_key_value_and_what_is_allowed(
    tmp_path: Path, toml: str, key: str, value: str, allowed: str
) -> None:
    error = load_error(tmp_path, toml + "\n")
    message = str(error)
    for part in (str(tmp_path / "bad.toml"), key, value, allowed):
        assert part in message, (part, message)
    assert error.field == key


def test_a_margin_set_by_a_base_is_checked_against_the_ttl_that_overrides_it(
    tmp_path: Path,
) -> None:
    (tmp_path / "base.toml").write_text("[identity]\nrenew_margin = 300\n", encoding="utf-8")
    error = load_error(tmp_path, "extends = 'base'\n[identity]\ntoken_ttl = 200\n")
    assert error.field == "identity.renew_margin"
    assert error.source == str(tmp_path / "base.toml")


def test_extends_and_overrides_set_identity_keys_one_by_one(tmp_path: Path) -> None:
    (tmp_path / "base.toml").write_text(
        "[identity]\ntoken_ttl = 7200\nexpiry_warning = 604800\n[tls]\nalpn_protocols = ['a']\n",
        encoding="utf-8",
    )
    profile = load(
        tmp_path,
        "extends = 'base'\n[identity]\nrenew_margin = 600\n",
        env={"DEVICE_SDK_TLS_ALPN_PROTOCOLS": "mqtt, b"},
        overrides={"identity.expiry_warning": 3600},
    )
    assert profile.identity == IdentityTiming(
        token_ttl=7200.0, renew_margin=600.0, expiry_warning=3600.0
    )
    assert profile.tls_alpn_protocols == ("mqtt", "b")
    assert profile.origins["identity.token_ttl"] == str(tmp_path / "base.toml")
    assert profile.origins["identity.renew_margin"] == str(tmp_path / "p.toml")
    assert profile.origins["tls.alpn_protocols"] == "environment DEVICE_SDK_TLS_ALPN_PROTOCOLS"


def test_the_shipped_profiles_renew_as_their_comments_say() -> None:
    cellular = load_profile("cellular-low-data", env={})
    assert cellular.identity.token_ttl == 86400.0  # one renewal handshake a day
    assert cellular.identity.effective_renew_margin == 8640.0
    fast = load_profile("test-fast", env={})
    assert fast.identity.token_ttl == 10.0
    assert fast.identity.effective_renew_margin == 5.0
    pi = load_profile("raspberry-pi-gateway", env={})
    assert pi.identity == IdentityTiming()


def test_every_identity_key_is_in_the_schema_with_its_owner() -> None:
    names = {k for k, v in SCHEMA.items() if v.owner is IdentityTiming}
    assert names == {"identity.token_ttl", "identity.renew_margin", "identity.expiry_warning"}


# --------------------------------------------------------------------------- providers


def test_sas_credentials_live_by_the_profile(tmp_path: Path) -> None:
    profile = load(tmp_path, "[identity]\ntoken_ttl = 600\nrenew_margin = 90\n")
    provider = profile.sas_credentials(key=KEY, clock=lambda: NOW)
    identity = provider.identity_for(HUB, client_id="meter-17", after_refusal=False)
    assert identity.expires_at == NOW + 600
    assert identity.renew_at == identity.expires_at - 90
    assert identity.password is not None
    ok, why = verify_sas_token(
        identity.password,
        base64.b64decode(KEY),
        resource="hub-eu.example.com/devices/meter-17",
        now=NOW,
    )
    assert ok, why


def test_sas_credentials_use_the_default_margin_rule_when_the_profile_names_none(
    tmp_path: Path,
) -> None:
    profile = load(tmp_path, "[identity]\ntoken_ttl = 1200\n")
    provider = profile.sas_credentials(key=KEY, clock=lambda: NOW)
    identity = provider.identity_for(HUB, client_id="d", after_refusal=False)
    assert identity.expires_at is not None
    assert identity.renew_at == identity.expires_at - 120  # a tenth of 1200 s
    assert provider.renew_margin == profile.identity.effective_renew_margin


def test_sas_credentials_take_a_key_file_and_templates(tmp_path: Path) -> None:
    key_file = tmp_path / "sas.key"
    key_file.write_text(KEY + "\n", encoding="utf-8")
    key_file.chmod(0o600)
    profile = load(tmp_path, "")
    provider = profile.sas_credentials(
        key_file=str(key_file),
        resource_template="{fqdn}/registrations/{client_id}",
        username_template="{hub}/{client_id}",
        clock=lambda: NOW,
    )
    identity = provider.identity_for(HUB, client_id="d-1", after_refusal=False)
    assert identity.username == "primary/d-1"
    token = parse_sas_token(identity.password or "")
    assert token is not None and token.resource == "hub-eu.example.com/registrations/d-1"
    assert KEY not in repr(provider)


def test_sas_credentials_need_exactly_one_key_source(tmp_path: Path) -> None:
    profile = load(tmp_path, "")
    with pytest.raises(ConfigError, match="exactly one of key"):
        profile.sas_credentials()
    with pytest.raises(ConfigError) as caught:
        profile.sas_credentials(key=KEY, key_callback=lambda b: b)
    assert KEY not in str(caught.value)


def test_x509_credentials_warn_by_the_profile(tmp_path: Path) -> None:
    ca = CertificateAuthority.create()
    files = ca.issue_client_certificate("meter-17").write_to(tmp_path, stem="device")
    profile = load(tmp_path, "[identity]\nexpiry_warning = 86400\n")
    provider = profile.x509_credentials(
        str(files.cert_file), str(files.key_file), client_id_from_subject=True
    )
    identity = provider.identity_for(HUB, client_id="ignored", after_refusal=False)
    assert identity.client_id == "meter-17"
    assert identity.expires_at is not None
    assert identity.warn_at == identity.expires_at - 86400
    with pytest.raises(ConfigError, match=r"identity\.expiry_warning"):
        profile.x509_credentials(str(files.cert_file), str(files.key_file), warn_before=1.0)


def test_client_config_takes_any_provider_and_offers_the_profiles_alpn(tmp_path: Path) -> None:
    profile = load(tmp_path, "[tls]\nmin_version = '1.3'\nalpn_protocols = ['mqtt']\n")
    own = HubEndpoint(
        name="aws", fqdn="aws.example.com", tls=TlsSettings(alpn_protocols=("x-amzn-mqtt-ca",))
    )
    plain = HubEndpoint(name="lab", fqdn="lab.example.com", port=1883, tls=None)
    credentials = profile.sas_credentials(key=KEY)
    config = profile.client_config(client_id="d", hubs=(HUB, own, plain), credentials=credentials)
    assert config.credentials is credentials
    assert config.hubs[0].tls == TlsSettings(min_version="1.3", alpn_protocols=("mqtt",))
    assert config.hubs[1].tls == TlsSettings(min_version="1.3", alpn_protocols=("x-amzn-mqtt-ca",))
    assert config.hubs[2].tls is None


def test_a_profile_paces_dps_and_raises_its_tls_floor(tmp_path: Path) -> None:
    from device_sdk.provisioning import DpsSettings

    (tmp_path / "paced.toml").write_text(
        'extends = "test-fast"\n[tls]\nmin_version = "1.3"\n'
        "[provisioning]\ntimeout = 7.5\nbackoff_initial = 2\nbackoff_cap = 60\n"
    )
    profile = load_profile("paced", search_path=[tmp_path, *default_search_path()])
    dps = DpsSettings(id_scope="0ne00AB", registration_id="dev-1", sas_key="AAAA")
    hub = HubEndpoint(name="h", fqdn="hub.example.com", tls=None)
    config = profile.client_config(client_id="dev-1", hubs=[hub], dps=dps)
    assert config.dps is not None
    assert (config.dps.timeout, config.dps.backoff_initial, config.dps.backoff_cap) == (7.5, 2, 60)
    assert config.dps.hub_tls is not None and config.dps.hub_tls.min_version == "1.3"
    (tmp_path / "bad.toml").write_text(
        'extends = "test-fast"\n[provisioning]\nbackoff_initial = 10\nbackoff_cap = 5\n'
    )
    with pytest.raises(ConfigError, match=r"provisioning\.backoff_cap"):
        load_profile("bad", search_path=[tmp_path, *default_search_path()])

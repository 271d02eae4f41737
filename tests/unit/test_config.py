"""Configuration values fail at construction, naming the field, the value and what is allowed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from device_sdk.concierge.settings import ConciergeSettings
from device_sdk.concierge.trust import ConciergeTrust
from device_sdk.config import (
    ClientConfig,
    Credentials,
    DnsSettings,
    HubEndpoint,
    OutboxSettings,
    SrvSettings,
    TlsSettings,
)
from device_sdk.errors import ConfigError


def hub(name: str = "primary", **kw: object) -> HubEndpoint:
    return HubEndpoint(name=name, fqdn=kw.pop("fqdn", "hub.example.com"), **kw)  # type: ignore[arg-type]


def config(**overrides: object) -> ClientConfig:
    fields: dict[str, object] = {"client_id": "d", "hubs": (hub(),)}
    return ClientConfig(**(fields | overrides))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("build", "field", "allowed"),
    [
        (lambda: hub(port=0), "hubs[primary].port", "1 to 65535"),
        (lambda: hub(port=70000), "hubs[primary].port", "1 to 65535"),
        (lambda: hub(fqdn="bad_name!.example"), "hubs[primary].fqdn", "DNS name"),
        (lambda: hub(name=""), "hub.name", "letters"),
        (lambda: DnsSettings(nameservers=("dns.example",)), "dns.nameservers", "IP addresses"),
        (lambda: DnsSettings(timeout=0), "dns.timeout", "greater than 0"),
        (lambda: TlsSettings(min_version="1.0"), "tls.min_version", "'1.2' or '1.3'"),  # type: ignore[arg-type]
        (lambda: TlsSettings(client_cert_file="c.pem"), "tls.client_key_file", "together"),
        (lambda: ClientConfig(client_id="", hubs=(hub(),)), "client_id", "1 to 128"),
        (lambda: ClientConfig(client_id="d", hubs=()), "hubs", "at least one"),
        (lambda: ClientConfig(client_id="d", hubs=(hub(), hub())), "hubs", "unique"),
        (
            lambda: ClientConfig(client_id="d", hubs=(hub(),), inflight_window=0),
            "inflight_window",
            "at least 1",
        ),
        (
            lambda: ClientConfig(client_id="d", hubs=(hub(),), publish_batch_delay=-0.001),
            "publish_batch_delay",
            "0 to 0.1",
        ),
        (
            lambda: ClientConfig(client_id="d", hubs=(hub(),), publish_batch_delay=1),
            "publish_batch_delay",
            "0 to 0.1",
        ),
        (
            lambda: ClientConfig(client_id="d", hubs=(hub(),), publish_batch_delay=float("nan")),
            "publish_batch_delay",
            "0 to 0.1",
        ),
        (
            lambda: ClientConfig(client_id="d", hubs=(hub(),), mqtt_version="4"),  # type: ignore[arg-type]
            "mqtt_version",
            "'3.1.1' or '5'",
        ),
    ],
)
def test_invalid_values_name_field_value_and_allowed(build, field: str, allowed: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as caught:
        build()
    assert caught.value.field == field
    assert allowed in str(caught.value)
    assert repr(caught.value.value) in str(caught.value)


def test_ip_literals_and_trailing_dots_are_valid_hosts() -> None:
    assert hub(fqdn="127.0.0.2").fqdn == "127.0.0.2"
    assert hub(fqdn="::1").authority == "::1:8883"
    assert hub(fqdn="hub.example.com.").fqdn == "hub.example.com."


def test_config_is_frozen_and_keyword_only() -> None:
    config = ClientConfig(client_id="d", hubs=(hub(),))
    with pytest.raises(AttributeError):
        config.client_id = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        HubEndpoint("primary", "hub.example.com")  # type: ignore[call-arg]


def test_password_never_appears_in_repr() -> None:
    assert "s3cret" not in repr(Credentials(username="u", password="s3cret"))


def test_hub_lookup_by_name() -> None:
    config = ClientConfig(client_id="d", hubs=(hub("a"), hub("b", fqdn="b.example.com")))
    assert config.hub("b").fqdn == "b.example.com"
    assert config.hub_names == ("a", "b")
    with pytest.raises(ConfigError, match="one of"):
        config.hub("c")


# -- strings that go on the wire ------------------------------------------------------------

BAD_TEXT = [
    ("a\ud800", "lone surrogate U+D800 at index 1"),
    ("a\0b", "NUL U+0000 at index 1"),
    ("a\x1bb", "control character U+001B at index 1"),
    ("a\x85", "control character U+0085 at index 1"),
    ("a\ufffe", "non-character U+FFFE at index 1"),
    ("a\U0001ffff", "non-character U+1FFFF at index 1"),
]


@pytest.mark.parametrize(("text", "found"), BAD_TEXT)
def test_a_client_id_mqtt_cannot_carry_is_refused_when_the_config_is_built(
    text: str, found: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        ClientConfig(client_id=text, hubs=(hub(),))
    assert caught.value.field == "client_id"
    assert found in str(caught.value)


@pytest.mark.parametrize(("text", "found"), BAD_TEXT)
def test_user_names_and_the_message_id_property_follow_the_same_rule(text: str, found: str) -> None:
    with pytest.raises(ConfigError, match=r"credentials\.username") as caught:
        Credentials(username=text)
    assert found in str(caught.value)
    with pytest.raises(ConfigError, match="message_id_property"):
        ClientConfig(client_id="d", hubs=(hub(),), message_id_property=text)


def test_lengths_are_measured_in_utf8_bytes_not_characters() -> None:
    at_limit = "é" * 32767 + "x"  # 65535 bytes in 32768 characters
    assert Credentials(username=at_limit).username == at_limit
    with pytest.raises(ConfigError, match="65536 bytes"):
        Credentials(username="é" * 32768)
    with pytest.raises(ConfigError, match="65535 bytes"):
        Credentials(username="x", password="é" * 32768)


def test_a_password_must_encode_and_is_never_shown() -> None:
    secret = "s3cret\ud800"
    with pytest.raises(ConfigError) as caught:
        Credentials(username="u", password=secret)
    assert caught.value.field == "credentials.password"
    assert "s3cret" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    # MQTT carries a password as binary data: NUL and control characters are fine.
    assert Credentials(username="u", password="a\0\x1b").password == "a\0\x1b"


def test_valid_text_is_accepted_unchanged() -> None:
    config = ClientConfig(
        client_id="capteur-é-17",
        hubs=(hub(),),
        credentials=Credentials(username="hub.azure-devices.net/dev/?api-version=2021-04-12"),
        message_id_property="msg-id",
    )
    assert config.client_id == "capteur-é-17"
    assert Credentials(username="").username == ""  # MQTT allows an empty user name


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: hub(name="primary\n"), "hub.name"),  # "$" in a pattern matches before "\n"
        (lambda: hub(fqdn="hub.example.com\n"), "hubs[primary].fqdn"),
        (lambda: hub(fqdn=None), "hubs[primary].fqdn"),
        (lambda: hub(tls="tls"), "hubs[primary].tls"),
        (lambda: hub(port=True), "hubs[primary].port"),
        (lambda: DnsSettings(nameservers=(167772161,)), "dns.nameservers"),  # type: ignore[arg-type]
        (lambda: DnsSettings(nameservers="10.0.0.1"), "dns.nameservers"),  # type: ignore[arg-type]
        (lambda: DnsSettings(nameservers=None), "dns.nameservers"),  # type: ignore[arg-type]
        (lambda: DnsSettings(timeout=float("nan")), "dns.timeout"),
        (lambda: DnsSettings(lifetime=float("inf")), "dns.lifetime"),
        (lambda: DnsSettings(timeout=True), "dns.timeout"),
        (lambda: DnsSettings(ipv6="no"), "dns.ipv6"),  # type: ignore[arg-type]
        (lambda: Credentials(username=None), "credentials.username"),  # type: ignore[arg-type]
        (lambda: Credentials(username="u", password=b"p"), "credentials.password"),  # type: ignore[arg-type]
        (lambda: OutboxSettings(path="out\0box.db"), "outbox.path"),
        (lambda: OutboxSettings(path="out\ud800.db"), "outbox.path"),
        (lambda: OutboxSettings(path=""), "outbox.path"),
        (lambda: SrvSettings(domain=7), "srv.domain"),  # type: ignore[arg-type]
        (lambda: SrvSettings(domain="example.com", tls=None), "srv.tls"),  # type: ignore[arg-type]
        (lambda: config(client_id=None), "client_id"),
        (lambda: config(hubs=[None]), "hubs"),
        (lambda: config(hubs="primary"), "hubs"),
        (lambda: config(dns=DnsSettings), "dns"),
        (lambda: config(retry={"initial": 1}), "retry"),
        (lambda: config(credentials="user:pass"), "credentials"),
        (lambda: config(outbox=None), "outbox"),
        (lambda: config(concierge="https://concierge.example.com"), "concierge"),
        (lambda: config(envelope="yes"), "envelope"),
        (lambda: config(failback_probe_interval=float("nan")), "failback_probe_interval"),
        (lambda: config(failback_probe_interval=float("inf")), "failback_probe_interval"),
        (lambda: config(failback_probe_interval=1e300), "failback_probe_interval"),
        (lambda: config(session_expiry=2**32), "session_expiry"),
        (lambda: config(message_id_property=""), "message_id_property"),
    ],
)
def test_wrong_types_and_numbers_are_config_errors_naming_the_field(build, field: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as caught:
        build()
    assert caught.value.field == field


def test_huge_values_are_shown_cut_short() -> None:
    with pytest.raises(ConfigError) as caught:
        ClientConfig(client_id="d", hubs=(hub(),), message_id_property="x" * 70_000)
    assert len(str(caught.value)) < 500
    assert "70000 characters" in str(caught.value)


# -- TLS files ------------------------------------------------------------------------------

TLS_FILES = ("ca_file", "client_cert_file", "client_key_file")


def tls_with(name: str, path: str, existing: Path) -> TlsSettings:
    """TlsSettings with ``name`` set to ``path`` (the client pair completed with ``existing``)."""
    files: dict[str, str | None] = dict.fromkeys(TLS_FILES)
    if name != "ca_file":
        files |= {"client_cert_file": str(existing), "client_key_file": str(existing)}
    return TlsSettings(**(files | {name: path}))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", TLS_FILES)
def test_a_missing_tls_file_is_refused_when_the_settings_are_built(
    name: str, tmp_path: Path
) -> None:
    existing = tmp_path / "present.pem"
    existing.write_text("-----BEGIN CERTIFICATE-----\n")
    existing.chmod(0o600)  # it stands in for the key file too
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(ConfigError) as caught:
        tls_with(name, missing, existing)
    assert caught.value.field == f"tls.{name}"
    assert "No such file" in str(caught.value) and missing in str(caught.value)
    with pytest.raises(ConfigError, match="regular file"):
        tls_with(name, str(tmp_path), existing)  # a directory
    assert getattr(tls_with(name, str(existing), existing), name) == str(existing)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_tls_file_is_refused(tmp_path: Path) -> None:
    locked = tmp_path / "ca.pem"
    locked.write_text("x")
    locked.chmod(0)
    with pytest.raises(ConfigError, match="may read"):
        TlsSettings(ca_file=str(locked))


def test_tls_file_paths_must_be_text_the_os_takes() -> None:
    for path in ("ca\0.pem", "ca\ud800.pem", "", Path("/etc/hostname")):
        with pytest.raises(ConfigError) as caught:
            TlsSettings(ca_file=path)  # type: ignore[arg-type]
        assert caught.value.field == "tls.ca_file"


# -- concierge settings ---------------------------------------------------------------------


def concierge(**overrides: object) -> ConciergeSettings:
    trust = ConciergeTrust(keys={"k": b"\x01" * 32}, allowed_hubs=("*.example.com",))
    fields: dict[str, object] = {"url": "https://concierge.example.com/hubs", "trust": trust}
    return ConciergeSettings(**(fields | overrides))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"url": "https://concierge.example.com/\r\nX-Evil: 1"}, "concierge.url"),
        ({"url": "https://concierge.example.com/\ud800"}, "concierge.url"),
        ({"url": None}, "concierge.url"),
        ({"url": "ftp://concierge.example.com/"}, "concierge.url"),
        ({"trust": None}, "concierge.trust"),
        ({"poll_interval": float("nan")}, "concierge.poll_interval"),
        ({"timeout": float("inf")}, "concierge.timeout"),
        ({"timeout": True}, "concierge.timeout"),
        ({"poll_jitter": float("nan")}, "concierge.poll_jitter"),
        ({"poll_jitter": False}, "concierge.poll_jitter"),
        ({"max_bytes": 1.5}, "concierge.max_bytes"),
        ({"ca_file": "/nonexistent/concierge-ca.pem"}, "concierge.ca_file"),
        ({"state_file": "seq\0.json"}, "concierge.state_file"),
        ({"hub_tls": None}, "concierge.hub_tls"),
        ({"allow_plain_http": "yes"}, "concierge.allow_plain_http"),
    ],
)
def test_concierge_settings_refuse_bad_values(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        concierge(**overrides)
    assert caught.value.field == field


def test_valid_concierge_settings_are_unchanged() -> None:
    settings = concierge(poll_interval=60, timeout=1.5, poll_jitter=0)
    assert (settings.poll_interval, settings.timeout, settings.poll_jitter) == (60, 1.5, 0)


def test_a_missing_supervision_policy_is_refused_at_the_boundary() -> None:
    hub = HubEndpoint(name="h", fqdn="h.example.com", tls=None)
    with pytest.raises(ConfigError, match="supervision"):
        ClientConfig(client_id="d", hubs=(hub,), supervision=None)  # type: ignore[arg-type]


def test_concierge_trust_refuses_a_missing_allow_list() -> None:
    from device_sdk.concierge.trust import ConciergeTrust

    with pytest.raises(ConfigError, match="allowed_hubs"):
        ConciergeTrust(keys={"k": b"\x01" * 32}, allowed_hubs=None)  # type: ignore[arg-type]

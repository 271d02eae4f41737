"""Configuration values fail at construction, naming the field, the value and what is allowed."""

from __future__ import annotations

import pytest

from device_sdk.config import ClientConfig, DnsSettings, HubEndpoint, TlsSettings
from device_sdk.errors import ConfigError


def hub(name: str = "primary", **kw: object) -> HubEndpoint:
    return HubEndpoint(name=name, fqdn=str(kw.pop("fqdn", "hub.example.com")), **kw)  # type: ignore[arg-type]


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
            lambda: ClientConfig(client_id="d", hubs=(hub(),), mqtt_version="4"),
            "mqtt_version",
            "'3.1.1' or '5'",
        ),  # type: ignore[arg-type]
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
        HubEndpoint("primary", "hub.example.com")  # type: ignore[misc]


def test_password_never_appears_in_repr() -> None:
    from device_sdk.config import Credentials

    assert "s3cret" not in repr(Credentials(username="u", password="s3cret"))


def test_hub_lookup_by_name() -> None:
    config = ClientConfig(client_id="d", hubs=(hub("a"), hub("b", fqdn="b.example.com")))
    assert config.hub("b").fqdn == "b.example.com"
    assert config.hub_names == ("a", "b")
    with pytest.raises(ConfigError, match="one of"):
        config.hub("c")

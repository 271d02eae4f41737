"""The Azure IoT Hub dialect: per-hub user names and tokens, and the D2C and C2D topics."""

from __future__ import annotations

import base64
import urllib.parse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_sdk import ClientConfig, HubEndpoint, TlsSettings
from device_sdk.dialects.azure import (
    AZURE_API_VERSION,
    azure_client_config,
    azure_hub,
    azure_sas_credentials,
    azure_username_template,
    c2d_filter,
    d2c_topic,
    parse_c2d_topic,
)
from device_sdk.errors import ConfigError
from device_sdk.identity import SasTokenProvider, identity_for_attempt
from device_sdk.identity.sas import parse_sas_token, verify_sas_token

RAW_KEY = bytes(range(32))
KEY = base64.b64encode(RAW_KEY).decode()
NOW = 1_700_000_000.0

# Text an MQTT string may hold: no surrogates (Cs), controls (Cc) or unassigned (Cn).
MQTT_TEXT = st.characters(exclude_categories=("Cs", "Cc", "Cn"))


# -- user names and credentials ------------------------------------------------------------


def test_the_username_template_is_azures() -> None:
    assert AZURE_API_VERSION == "2021-04-12"
    assert azure_username_template() == "{fqdn}/{client_id}/?api-version=2021-04-12"
    assert azure_username_template(model_id="dtmi:com:example:Thermostat;1") == (
        "{fqdn}/{client_id}/?api-version=2021-04-12&model-id=dtmi%3Acom%3Aexample%3AThermostat%3B1"
    )


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"api_version": "latest"}, "azure.api_version"),
        ({"api_version": "2021-04-12&x=1"}, "azure.api_version"),
        ({"model_id": "com:example;1"}, "azure.model_id"),
        ({"model_id": "dtmi:com:{fqdn};1"}, "azure.model_id"),
        ({"model_id": "dtmi:com:example"}, "azure.model_id"),
    ],
)
def test_bad_username_parts_are_refused(fields: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        azure_username_template(**fields)
    assert caught.value.field == field


def test_a_hub_without_a_provider_gets_azures_username_per_attempt() -> None:
    hub = azure_hub("primary", "myhub.azure-devices.net.")
    assert isinstance(hub, HubEndpoint) and hub.port == 8883 and hub.tls == TlsSettings()
    identity = identity_for_attempt(None, hub, client_id="dev-01", now=NOW)
    assert identity.username == "myhub.azure-devices.net/dev-01/?api-version=2021-04-12"
    assert identity.client_id == "dev-01"


def test_sas_credentials_sign_for_the_hub_being_dialled() -> None:
    credentials = azure_sas_credentials(key=KEY, ttl=600, clock=lambda: NOW)
    assert isinstance(credentials, SasTokenProvider)
    for hub in (
        azure_hub("primary", "one.azure-devices.net"),
        azure_hub("secondary", "two.azure-devices.net", model_id="dtmi:com:example:Thermostat;1"),
    ):
        identity = identity_for_attempt(credentials, hub, client_id="dev-01", now=NOW)
        resource = f"{hub.fqdn}/devices/dev-01"
        assert identity.username == f"{hub.fqdn}/dev-01/?api-version=2021-04-12"
        assert identity.expires_at == NOW + 600
        token = identity.password or ""
        assert verify_sas_token(token, RAW_KEY, resource=resource, now=NOW) == (True, "")
        parsed = parse_sas_token(token)
        assert parsed is not None and parsed.policy is None


def test_sas_credentials_can_carry_a_model_id_in_the_username() -> None:
    credentials = azure_sas_credentials(
        key=KEY, model_id="dtmi:com:example:Thermostat;1", clock=lambda: NOW
    )
    hub = HubEndpoint(name="h", fqdn="myhub.azure-devices.net", tls=None)
    identity = identity_for_attempt(credentials, hub, client_id="dev-01", now=NOW)
    assert identity.username == (
        "myhub.azure-devices.net/dev-01/?api-version=2021-04-12"
        "&model-id=dtmi%3Acom%3Aexample%3AThermostat%3B1"
    )


def test_the_client_config_speaks_mqtt_3_1_1_as_the_device() -> None:
    credentials = azure_sas_credentials(key=KEY)
    hubs = [azure_hub("primary", "one.azure-devices.net"), azure_hub("b", "two.azure-devices.net")]
    config = azure_client_config("dev-01", hubs, credentials, inflight_window=5)
    assert isinstance(config, ClientConfig)
    assert (config.client_id, config.mqtt_version, config.inflight_window) == ("dev-01", "3.1.1", 5)
    assert config.hubs == tuple(hubs) and config.credentials is credentials
    for fixed in ("client_id", "hubs", "credentials"):
        with pytest.raises(ConfigError) as caught:
            azure_client_config("dev-01", hubs, credentials, **{fixed: None})
        assert caught.value.field == fixed
    with pytest.raises(ConfigError) as caught:
        azure_client_config("dev/01", hubs, credentials)
    assert caught.value.field == "azure.device_id"


# -- device-to-cloud topics -------------------------------------------------------------------


def test_d2c_topic_without_properties() -> None:
    assert d2c_topic("dev-01") == "devices/dev-01/messages/events/"
    assert d2c_topic("dev-01", {}) == "devices/dev-01/messages/events/"


def test_d2c_topic_encodes_system_and_application_properties() -> None:
    topic = d2c_topic(
        "dev-01",
        {"alert level": "high & rising", "unit": "°C/min", "hash": "#+"},
        content_type="application/json",
        content_encoding="utf-8",
        message_id="m-1",
        correlation_id="c=1",
    )
    assert topic == (
        "devices/dev-01/messages/events/"
        "$.mid=m-1&$.cid=c%3D1&$.ct=application%2Fjson&$.ce=utf-8"
        "&alert%20level=high%20%26%20rising&unit=%C2%B0C%2Fmin&hash=%23%2B"
    )
    assert "+" not in topic and "#" not in topic


@pytest.mark.parametrize(
    ("properties", "system"),
    [
        ({"$.ct": "application/json"}, {}),
        ({"": "x"}, {}),
        ({"a": 1}, {}),
        ({2: "x"}, {}),
        ({"a": "bad\x00"}, {}),
        ({"a": "\ud800"}, {}),
        ({"a\x07": "x"}, {}),
        (["a", "b"], {}),
        (None, {"content_type": 5}),
        (None, {"message_id": "m\x1f"}),
        (None, {"correlation_id": "\udfff"}),
    ],
)
def test_d2c_topic_refuses_properties_it_cannot_carry(
    properties: object, system: dict[str, object]
) -> None:
    with pytest.raises(ConfigError):
        d2c_topic("dev-01", properties, **system)  # type: ignore[arg-type]


@pytest.mark.parametrize("device_id", ["", "a/b", "a+b", "a#", "x" * 129, "dév", "a b", 7])
def test_device_ids_that_are_not_one_topic_level_are_refused(device_id: object) -> None:
    for build in (d2c_topic, c2d_filter):
        with pytest.raises(ConfigError) as caught:
            build(device_id)  # type: ignore[arg-type]
        assert caught.value.field == "azure.device_id"


def test_device_ids_may_use_azures_punctuation() -> None:
    device_id = "dev-01.a_b%*?!(),:=@$'"
    assert d2c_topic(device_id) == f"devices/{device_id}/messages/events/"
    assert c2d_filter(device_id) == f"devices/{device_id}/messages/devicebound/#"


names = st.text(MQTT_TEXT, min_size=1, max_size=20).filter(lambda n: not n.startswith("$"))


@given(st.dictionaries(names, st.text(MQTT_TEXT, max_size=20), max_size=5))
def test_d2c_properties_round_trip_through_the_c2d_parser(properties: dict[str, str]) -> None:
    # The property bag is encoded the same way in both directions.
    topic = d2c_topic("dev-01", properties)
    bag = topic.removeprefix("devices/dev-01/messages/events/")
    assert parse_c2d_topic(f"devices/dev-01/messages/devicebound/{bag}") == ("dev-01", properties)


# -- cloud-to-device topics -------------------------------------------------------------------


def test_a_c2d_topic_as_iot_hub_sends_it_is_parsed() -> None:
    to = urllib.parse.quote("/devices/dev-01/messages/deviceBound", safe="")
    topic = f"devices/dev-01/messages/devicebound/%24.mid=abc-1&%24.to={to}&iothub-ack=full&flag"
    device_id, properties = parse_c2d_topic(topic)
    assert device_id == "dev-01"
    assert properties == {
        "$.mid": "abc-1",
        "$.to": "/devices/dev-01/messages/deviceBound",
        "iothub-ack": "full",
        "flag": "",
    }
    assert parse_c2d_topic("devices/dev-01/messages/devicebound/") == ("dev-01", {})
    assert parse_c2d_topic("devices/dev-01/messages/devicebound") == ("dev-01", {})


@pytest.mark.parametrize(
    "topic",
    [
        b"devices/dev-01/messages/devicebound/",
        None,
        "",
        "devices/dev-01/messages/events/",
        "devices//messages/devicebound/",
        "devices/a/b/messages/devicebound/",
        "devices/dev-01/messages/deviceboundx",
        "xdevices/dev-01/messages/devicebound/",
        "devices/dev-01/messages/devicebound/a=%zz",
        "devices/dev-01/messages/devicebound/a=%4",
        "devices/dev-01/messages/devicebound/a=%e2%28%a1",
        "devices/dev-01/messages/devicebound/a=%00",
        "devices/dev-01/messages/devicebound/a=%ed%a0%80",
        "devices/dev-01/messages/devicebound/a=1&a=2",
        "devices/dev-01/messages/devicebound/=1",
        "devices/dev-01/messages/devicebound/a=1&&b=2",
        "devices/dev-01/messages/devicebound/" + "a=1&" * 20_000,
    ],
)
def test_hostile_c2d_topics_are_config_errors(topic: object) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_c2d_topic(topic)  # type: ignore[arg-type]
    assert len(str(caught.value)) < 1000  # a huge topic is shown cut short


@settings(max_examples=300)
@given(
    st.one_of(
        st.text(),
        st.text().map(lambda bag: f"devices/dev-01/messages/devicebound/{bag}"),
        st.text(alphabet="%0aFz=&/.$").map(lambda bag: f"devices/d/messages/devicebound/{bag}"),
    )
)
def test_any_c2d_topic_parses_or_is_a_config_error(topic: str) -> None:
    try:
        device_id, properties = parse_c2d_topic(topic)
    except ConfigError:
        return
    assert topic.startswith(f"devices/{device_id}/messages/devicebound")
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in properties.items())


def test_websockets_add_iot_hubs_second_way_in_after_8883() -> None:
    hub = azure_hub("primary", "myhub.azure-devices.net", websockets=True)
    assert [way.label for way in hub.ways_in] == ["mqtts:8883", "wss:443/$iothub/websocket"]
    assert azure_hub("primary", "myhub.azure-devices.net").ways_in[0].label == "mqtts:8883"

"""Azure IoT Hub over MQTT 3.1.1: user names, SAS tokens, and the telemetry and C2D topics.

IoT Hub is not a general MQTT broker. A device connects with:

- client id: its device id;
- user name: ``{hub host}/{device id}/?api-version=2021-04-12`` (and
  ``&model-id={DTMI}``, URL-encoded, for an IoT Plug and Play device);
- password: a SAS token signed for ``{hub host}/devices/{device id}``, or none
  with an X.509 client certificate (:class:`~device_sdk.identity.x509.X509Files`
  with ``client_id_from_subject=True``);

over TLS on port 8883 (or MQTT over WebSockets on 443). It publishes telemetry
to ``devices/{device id}/messages/events/`` followed by a URL-encoded property
bag, and receives cloud-to-device messages on
``devices/{device id}/messages/devicebound/{property bag}``.

The user name holds the hub's host name, so it is a template filled per hub at
every attempt: a failover to another hub needs no other configuration. IoT Hub
closes the link the moment a SAS token expires, which the engine avoids by
renewing first (make before break, see ``SasTokenProvider.renew_margin``).

Out of scope here: device twins (``$iothub/twin/...``), direct methods
(``$iothub/methods/...``), modules and IoT Edge, and DPS (see
``device_sdk.provisioning``). Their topics can be used with the ordinary
``publish()`` and ``subscribe()``.
"""

from __future__ import annotations

import re
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from device_sdk.config import ClientConfig, HubEndpoint, TlsSettings
from device_sdk.core.topics import (
    MAX_STRING_BYTES,
    check_mqtt_string,
    check_topic_filter,
    check_topic_name,
    encode_utf8,
    shown,
)
from device_sdk.errors import ConfigError
from device_sdk.identity.provider import CredentialProvider
from device_sdk.identity.sas import DEFAULT_TTL, SasTokenProvider
from device_sdk.transports import Transport

__all__ = [
    "AZURE_API_VERSION",
    "AZURE_RESOURCE_TEMPLATE",
    "azure_client_config",
    "azure_hub",
    "azure_sas_credentials",
    "azure_username_template",
    "c2d_filter",
    "d2c_topic",
    "parse_c2d_topic",
]

AZURE_API_VERSION = "2021-04-12"
# IoT Hub takes MQTT 3.1.1 over secure WebSockets on 443 at this path (subprotocol "mqtt").
AZURE_WEBSOCKET_PATH = "/$iothub/websocket"
# What a device's SAS token is signed for: the hub's host name and the device id.
AZURE_RESOURCE_TEMPLATE = "{fqdn}/devices/{client_id}"

# IoT Hub's device ids: up to 128 ASCII letters, digits and - . % _ * ? ! ( ) , : = @ $ '.
# None of them is '/', '+' or '#', so a valid id is always one whole topic level.
_DEVICE_ID = re.compile(r"[A-Za-z0-9\-.%_*?!(),:=@$']{1,128}")
_API_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}(-preview)?")
# A Digital Twins model identifier (DTDL): dtmi:<segment>(:<segment>)*;<version>.
_SEGMENT = r"[A-Za-z](?:[A-Za-z0-9_]*[A-Za-z0-9])?"
_DTMI = re.compile(rf"dtmi:{_SEGMENT}(?::{_SEGMENT})*;[1-9][0-9]{{0,8}}")
_MAX_DTMI = 2048
_D2C_PREFIX = "devices/{}/messages/events/"
_C2D_MARK = "/messages/devicebound"
# System properties a device may set on telemetry, in the order they are written.
_SYSTEM = (
    ("message_id", "$.mid"),
    ("correlation_id", "$.cid"),
    ("content_type", "$.ct"),
    ("content_encoding", "$.ce"),
)
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_DEFAULT_TLS = TlsSettings()
_FIXED_FIELDS = ("client_id", "hubs", "credentials")


def azure_username_template(
    api_version: str = AZURE_API_VERSION, model_id: str | None = None
) -> str:
    """The user name IoT Hub wants, as a template filled per hub: ``{fqdn}/{client_id}/?...``.

    ``model_id`` is an IoT Plug and Play device's model (a DTMI such as
    ``dtmi:com:example:Thermostat;1``), sent URL-encoded.
    """
    if not isinstance(api_version, str) or not _API_VERSION.fullmatch(api_version):
        raise ConfigError(
            "azure.api_version", shown(api_version), "a date such as '2021-04-12' (or '-preview')"
        )
    template = f"{{fqdn}}/{{client_id}}/?api-version={api_version}"
    if model_id is None:
        return template
    if not isinstance(model_id, str) or len(model_id) > _MAX_DTMI or not _DTMI.fullmatch(model_id):
        raise ConfigError(
            "azure.model_id", shown(model_id), "a DTMI such as 'dtmi:com:example:Thermostat;1'"
        )
    # Fully encoded: ':' and ';' are not left bare in a query, and no brace survives
    # to be read as a template field.
    return f"{template}&model-id={urllib.parse.quote(model_id, safe='')}"


def azure_hub(
    name: str,
    fqdn: str,
    *,
    port: int = 8883,
    tls: TlsSettings | None = _DEFAULT_TLS,
    credentials: CredentialProvider | None = None,
    client_id: str | None = None,
    api_version: str = AZURE_API_VERSION,
    model_id: str | None = None,
    websockets: bool = False,
    websocket_port: int = 443,
) -> HubEndpoint:
    """An IoT hub (``{name}.azure-devices.net``) with IoT Hub's user-name template.

    IoT Hub itself takes TLS only; ``tls=None`` is for IoT-Hub-like test hubs.
    ``websockets=True`` adds IoT Hub's second way in, MQTT over secure WebSockets
    on 443 (:data:`AZURE_WEBSOCKET_PATH`), raced after ``port`` for networks
    that block 8883.
    """
    transports: tuple[Transport, ...] = ()
    if websockets:
        secure = tls is not None
        transports = (
            Transport(scheme="mqtts" if secure else "mqtt", port=port),
            Transport(
                scheme="wss" if secure else "ws", port=websocket_port, path=AZURE_WEBSOCKET_PATH
            ),
        )
    return HubEndpoint(
        name=name,
        fqdn=fqdn,
        port=port,
        tls=tls,
        credentials=credentials,
        client_id=client_id,
        username=azure_username_template(api_version, model_id),
        transports=transports,
    )


def azure_sas_credentials(
    *,
    key: str | None = None,
    key_file: str | None = None,
    key_callback: Callable[[bytes], bytes] | None = None,
    ttl: float = DEFAULT_TTL,
    renew_margin: float | None = None,
    api_version: str = AZURE_API_VERSION,
    model_id: str | None = None,
    clock: Callable[[], float] = time.time,
) -> SasTokenProvider:
    """A provider of device SAS tokens for IoT Hub, from the device's symmetric key.

    One of ``key`` (the base64 primary or secondary key), ``key_file`` (a file
    holding it, mode 0600, read at every attempt) or ``key_callback`` (a
    TPM/HSM signing the bytes it is given). Tokens are signed for
    ``{hub host}/devices/{device id}`` of the hub being dialled.
    """
    return SasTokenProvider(
        key=key,
        key_file=key_file,
        key_callback=key_callback,
        ttl=ttl,
        renew_margin=renew_margin,
        resource_template=AZURE_RESOURCE_TEMPLATE,
        username_template=azure_username_template(api_version, model_id),
        clock=clock,
    )


def azure_client_config(
    device_id: str,
    hubs: Iterable[HubEndpoint],
    credentials: CredentialProvider | None,
    /,
    **overrides: Any,
) -> ClientConfig:
    """A :class:`~device_sdk.ClientConfig` for an IoT Hub device: MQTT 3.1.1, client id = device id.

    ``overrides`` are any other ClientConfig fields (profile values, outbox, ...).
    """
    _check_device_id(device_id)
    for name in _FIXED_FIELDS:
        if name in overrides:
            raise ConfigError(
                name, shown(overrides[name]), "set by azure_client_config's own arguments"
            )
    fields: dict[str, Any] = {"mqtt_version": "3.1.1", **overrides}
    hub_list = tuple(hubs) if isinstance(hubs, Iterable) else hubs
    return ClientConfig(client_id=device_id, hubs=hub_list, credentials=credentials, **fields)


def d2c_topic(
    device_id: str,
    properties: Mapping[str, str] | None = None,
    *,
    content_type: str | None = None,
    content_encoding: str | None = None,
    message_id: str | None = None,
    correlation_id: str | None = None,
) -> str:
    """The topic for device-to-cloud telemetry, with its application and system properties.

    ``devices/{device id}/messages/events/`` then ``key=value`` pairs joined by
    ``&``, URL-encoded; the system properties are written as IoT Hub names them
    (``$.mid``, ``$.cid``, ``$.ct``, ``$.ce``), before the application's.
    IoT Hub routes on ``$.ct=application/json`` with ``$.ce=utf-8``.
    """
    _check_device_id(device_id)
    system = {
        "message_id": message_id,
        "correlation_id": correlation_id,
        "content_type": content_type,
        "content_encoding": content_encoding,
    }
    pairs = [
        f"{wire}={_encode(f'azure.{arg}', system[arg])}"
        for arg, wire in _SYSTEM
        if system[arg] is not None
    ]
    pairs.extend(_application_pairs(properties))
    topic = _D2C_PREFIX.format(device_id) + "&".join(pairs)
    check_topic_name(topic, field="azure.d2c_topic")
    return topic


def c2d_filter(device_id: str) -> str:
    """The filter that receives the device's cloud-to-device messages, whatever their properties."""
    _check_device_id(device_id)
    topic_filter = f"devices/{device_id}/messages/devicebound/#"
    check_topic_filter(topic_filter, field="azure.c2d_filter")
    return topic_filter


def parse_c2d_topic(topic: str) -> tuple[str, dict[str, str]]:
    """The device id and the decoded properties of a cloud-to-device message's topic.

    Properties include the system ones as IoT Hub sends them (``$.mid``,
    ``$.to``, ``iothub-ack``, ...). The topic comes from the hub, so anything
    malformed (too long, not this shape, bad percent-encoding, text MQTT cannot
    carry, a repeated property) raises ConfigError and nothing else.
    """
    if not isinstance(topic, str) or len(topic) > MAX_STRING_BYTES:
        raise ConfigError("azure.c2d_topic", shown(topic), "an MQTT topic name")
    rest = topic.removeprefix("devices/")
    device_id, mark, bag = rest.partition(_C2D_MARK)
    if rest == topic or not mark or not _DEVICE_ID.fullmatch(device_id):
        raise ConfigError(
            "azure.c2d_topic",
            shown(topic),
            "devices/{device id}/messages/devicebound/{properties}",
        )
    if bag and not bag.startswith("/"):
        raise ConfigError("azure.c2d_topic", shown(topic), "a '/' after messages/devicebound")
    return device_id, _decode_bag(bag[1:], topic)


def _check_device_id(device_id: object) -> None:
    if not isinstance(device_id, str) or not _DEVICE_ID.fullmatch(device_id):
        raise ConfigError(
            "azure.device_id",
            shown(device_id),
            "1-128 ASCII letters, digits or - . % _ * ? ! ( ) , : = @ $ '",
        )


def _encode(field_name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(field_name, shown(value), "a string")
    check_mqtt_string(field_name, value, allow_empty=True)
    return urllib.parse.quote(encode_utf8(field_name, value), safe="")


def _application_pairs(properties: Mapping[str, str] | None) -> list[str]:
    if properties is None:
        return []
    if not isinstance(properties, Mapping):
        raise ConfigError(
            "azure.properties", type(properties).__name__, "a mapping of str to str, or None"
        )
    pairs = []
    for name, value in properties.items():
        if not isinstance(name, str) or not name or name.startswith("$"):
            raise ConfigError(
                "azure.properties",
                shown(name),
                "non-empty names not starting with '$' (system properties are keyword"
                " arguments: content_type, content_encoding, message_id, correlation_id)",
            )
        pairs.append(
            f"{_encode('azure.properties', name)}={_encode(f'azure.properties[{name}]', value)}"
        )
    return pairs


def _decode_bag(bag: str, topic: str) -> dict[str, str]:
    properties: dict[str, str] = {}
    if not bag:
        return properties
    for pair in bag.split("&"):
        raw_name, _, raw_value = pair.partition("=")
        name = _decode(raw_name, topic)
        if not name or name in properties:
            raise ConfigError(
                "azure.c2d_topic", shown(topic), "properties with distinct, non-empty names"
            )
        properties[name] = _decode(raw_value, topic)
    return properties


def _decode(text: str, topic: str) -> str:
    """Strict percent-decoding: a stray '%' or bytes that are not UTF-8 are refused."""
    problem = ""
    decoded = ""
    if _BAD_ESCAPE.search(text):
        problem = "percent-encoding of two hex digits after every '%'"
    else:
        try:
            decoded = urllib.parse.unquote_to_bytes(text).decode("utf-8")
        except (UnicodeError, ValueError):
            problem = "percent-encoded UTF-8 properties"
    if not problem:
        try:
            check_mqtt_string("azure.c2d_topic", decoded, allow_empty=True)
        except ConfigError:
            problem = "properties without control characters or non-characters"
    if problem:  # raised outside the handlers: nothing chains to the hub's bytes
        raise ConfigError("azure.c2d_topic", shown(topic), problem)
    return decoded

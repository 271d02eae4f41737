"""The AWS IoT Core dialect's rules, and the probe listener's parsers, without a network."""

from __future__ import annotations

import hashlib
import ssl
import urllib.parse
from pathlib import Path

import pytest

from device_sdk.config import HubEndpoint, TlsSettings
from device_sdk.dialects.aws import (
    ALPN_AUTHORIZER,
    ALPN_CERTIFICATE,
    AuthorizerToken,
    AwsCustomAuthorizer,
    aws_client_config,
    aws_hub,
    custom_authorizer_username,
)
from device_sdk.errors import ConfigError, CredentialError
from device_sdk.identity import CallableCredentials, CredentialProvider, Identity
from device_sdk.identity.provider import identity_for_attempt
from device_sdk.testbed.hostile_hub import encode_packet
from device_sdk.testbed.pki import CertificateAuthority
from device_sdk.testbed.tls_listener import (
    client_hello_body,
    connack_packet,
    parse_client_hello,
    parse_connect,
)

ENDPOINT = "a1b2c3-ats.iot.eu-west-1.amazonaws.com"
SECRET = "tok+en/with=&?chars"


def _authorizer(**overrides: object) -> AwsCustomAuthorizer:
    arguments: dict[str, object] = {
        "authorizer_name": "fleet-auth",
        "token_key_name": "device-token",
        "token_source": lambda _after: AuthorizerToken(value=SECRET, signature="ab+c/d=="),
    }
    arguments.update(overrides)
    return AwsCustomAuthorizer(**arguments)  # type: ignore[arg-type]


def _device_files(tmp_path: Path) -> tuple[str, str]:
    ca = CertificateAuthority.create()
    files = ca.issue_client_certificate("thing-1").write_to(tmp_path, stem="device")
    return str(files.cert_file), str(files.key_file)


# -- aws_hub: ports, ALPN and identity --------------------------------------------------------


def test_port_8883_with_a_certificate_offers_no_alpn(tmp_path: Path) -> None:
    cert, key = _device_files(tmp_path)
    hub = aws_hub("aws", ENDPOINT, cert_file=cert, key_file=key)
    assert hub.port == 8883 and hub.tls is not None
    assert hub.tls.alpn_protocols == ()
    assert (hub.tls.client_cert_file, hub.tls.client_key_file) == (cert, key)


def test_port_443_with_a_certificate_offers_x_amzn_mqtt_ca(tmp_path: Path) -> None:
    cert, key = _device_files(tmp_path)
    hub = aws_hub("aws", ENDPOINT, port=443, cert_file=cert, key_file=key)
    assert hub.tls is not None and hub.tls.alpn_protocols == (ALPN_CERTIFICATE,)


def test_port_443_with_an_authorizer_offers_mqtt_and_asks_the_authorizer() -> None:
    authorizer = _authorizer()
    hub = aws_hub("aws", ENDPOINT, port=443, authorizer=authorizer)
    assert hub.tls is not None and hub.tls.alpn_protocols == (ALPN_AUTHORIZER,)
    assert hub.credentials is authorizer


@pytest.mark.parametrize(
    ("arguments", "field", "value"),
    [
        ({"authorizer": "yes"}, "aws.authorizer", "str"),
        ({"port": 8883, "authorizer": True}, "aws.port", 8883),
        ({"port": 443, "alpn": None}, "aws.alpn", None),
        ({"port": 443, "alpn": "h2"}, "aws.alpn", "h2"),
        ({"port": 9443}, "aws.alpn", "auto"),
        ({"port": 443, "authorizer": True, "alpn": ALPN_CERTIFICATE}, "aws.alpn", ALPN_CERTIFICATE),
    ],
)
def test_combinations_aws_refuses_are_refused_with_field_and_value(
    arguments: dict[str, object], field: str, value: object
) -> None:
    if arguments.get("authorizer") is True:
        arguments = {**arguments, "authorizer": _authorizer()}
    with pytest.raises(ConfigError) as caught:
        aws_hub("aws", ENDPOINT, **arguments)  # type: ignore[arg-type]
    assert caught.value.field == field and caught.value.value == value
    assert caught.value.allowed


def test_an_authorizer_and_a_client_certificate_do_not_go_together(tmp_path: Path) -> None:
    cert, key = _device_files(tmp_path)
    with pytest.raises(ConfigError) as caught:
        aws_hub("aws", ENDPOINT, port=443, cert_file=cert, key_file=key, authorizer=_authorizer())
    assert caught.value.field == "aws.cert_file"


@pytest.mark.parametrize("endpoint", ["203.0.113.7", "::1", "127.0.0.1."])
def test_an_ip_literal_is_no_endpoint_since_aws_needs_sni(endpoint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        aws_hub("aws", endpoint)
    assert caught.value.field == "aws.endpoint" and "SNI" in caught.value.allowed


def test_a_named_alpn_on_another_port_is_kept() -> None:
    hub = aws_hub("aws", ENDPOINT, port=18443, alpn=ALPN_CERTIFICATE)
    assert hub.port == 18443 and hub.tls is not None
    assert hub.tls.alpn_protocols == (ALPN_CERTIFICATE,)
    plain = aws_hub("aws", ENDPOINT, port=18883, alpn=None)
    assert plain.tls is not None and plain.tls.alpn_protocols == ()


# -- aws_client_config: thing names and pairings ----------------------------------------------


def test_the_client_id_is_the_thing_name_over_mqtt_5_by_default() -> None:
    config = aws_client_config("greenhouse-7:b_2", [aws_hub("aws", ENDPOINT)])
    assert config.client_id == "greenhouse-7:b_2" and config.mqtt_version == "5"
    older = aws_client_config("t", [aws_hub("aws", ENDPOINT)], mqtt_version="3.1.1")
    assert older.mqtt_version == "3.1.1"


@pytest.mark.parametrize("thing", ["", "x" * 129, "a/b", "a b", "caf\u00e9", "$aws", "a+b", 7])
def test_a_thing_name_aws_would_refuse_is_refused(thing: object) -> None:
    with pytest.raises(ConfigError) as caught:
        aws_client_config(thing, [aws_hub("aws", ENDPOINT)])  # type: ignore[arg-type]
    assert caught.value.field == "aws.thing_name" and "128" in caught.value.allowed


def test_the_longest_thing_name_is_taken() -> None:
    assert aws_client_config("x" * 128, [aws_hub("aws", ENDPOINT)]).client_id == "x" * 128


def test_the_client_id_cannot_be_overridden() -> None:
    with pytest.raises(ConfigError) as caught:
        aws_client_config("t", [aws_hub("aws", ENDPOINT)], client_id="other")
    assert caught.value.field == "client_id"


def test_a_client_authorizer_on_a_certificate_hub_is_refused() -> None:
    hub = aws_hub("aws", ENDPOINT, port=443)
    with pytest.raises(ConfigError) as caught:
        aws_client_config("t", [hub], credentials=_authorizer())
    assert caught.value.field == "hubs[aws].tls.alpn_protocols"


def test_an_mqtt_alpn_hub_without_an_authorizer_is_refused() -> None:
    hub = aws_hub("aws", ENDPOINT, port=443, alpn=ALPN_AUTHORIZER)
    with pytest.raises(ConfigError) as caught:
        aws_client_config("t", [hub])
    assert caught.value.field == "credentials"
    assert aws_client_config("t", [hub], credentials=_authorizer()).hubs == (hub,)


def test_a_hub_without_tls_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        aws_client_config("t", [HubEndpoint(name="aws", fqdn=ENDPOINT, tls=None)])
    assert caught.value.field == "hubs[aws].tls"


# -- the custom authorizer's user name --------------------------------------------------------


def _identity(authorizer: AwsCustomAuthorizer, *, after_refusal: bool = False) -> Identity:
    hub = aws_hub("aws", ENDPOINT, port=443, authorizer=authorizer)
    return identity_for_attempt(None, hub, client_id="thing-1", after_refusal=after_refusal)


def test_a_signed_token_goes_in_the_user_name_every_value_percent_encoded() -> None:
    identity = _identity(_authorizer(username="meter 12"))
    assert identity.username == (
        "meter 12?x-amz-customauthorizer-name=fleet-auth"
        "&device-token=tok%2Ben%2Fwith%3D%26%3Fchars"
        "&x-amz-customauthorizer-signature=ab%2Bc%2Fd%3D%3D"
    )
    assert identity.password is None and identity.client_id == "thing-1"
    query = urllib.parse.parse_qs(identity.username.partition("?")[2], strict_parsing=True)
    assert query == {
        "x-amz-customauthorizer-name": ["fleet-auth"],
        "device-token": [SECRET],
        "x-amz-customauthorizer-signature": ["ab+c/d=="],
    }


def test_without_a_token_key_the_token_is_the_password() -> None:
    authorizer = _authorizer(token_key_name=None, token_source=lambda _after: SECRET)
    identity = _identity(authorizer)
    assert identity.username == "?x-amz-customauthorizer-name=fleet-auth"
    assert identity.password == SECRET


def test_without_an_authorizer_name_the_endpoints_default_is_used() -> None:
    authorizer = _authorizer(authorizer_name=None, token_source=lambda _after: SECRET)
    assert _identity(authorizer).username == f"?device-token={urllib.parse.quote(SECRET, safe='')}"
    assert custom_authorizer_username("plain", []) == "plain"


def test_the_token_source_is_asked_every_time_and_told_of_a_refusal() -> None:
    calls: list[bool] = []

    def source(after_refusal: bool) -> AuthorizerToken:
        calls.append(after_refusal)
        return AuthorizerToken(value=f"t{len(calls)}", expires_at=2e9, renew_at=1.9e9)

    authorizer = _authorizer(token_source=source)
    first, second = _identity(authorizer), _identity(authorizer, after_refusal=True)
    assert calls == [False, True]
    assert first.username != second.username
    assert (second.expires_at, second.renew_at) == (2e9, 1.9e9)


def test_a_signature_without_a_token_key_is_refused_without_showing_it() -> None:
    authorizer = _authorizer(
        token_key_name=None,
        token_source=lambda _after: AuthorizerToken(value=SECRET, signature="s"),
    )
    with pytest.raises(CredentialError) as caught:
        _identity(authorizer)
    assert SECRET not in str(caught.value) and "token_key_name" in str(caught.value)


@pytest.mark.parametrize("answer", [None, "", b"bytes", AuthorizerToken(value="a\nb")])
def test_an_unusable_token_fails_the_attempt_without_showing_it(answer: object) -> None:
    with pytest.raises(CredentialError) as caught:
        _identity(_authorizer(token_source=lambda _after: answer))
    assert "a\nb" not in str(caught.value)


def test_a_token_too_long_for_the_user_name_is_refused_without_showing_it() -> None:
    huge = "Tk" + "x" * 70_000
    with pytest.raises(CredentialError) as caught:
        _identity(_authorizer(token_source=lambda _after: huge))
    assert "Tkxx" not in str(caught.value) and "65535" in str(caught.value)


def test_a_failing_token_source_is_named_by_type_only() -> None:
    def source(_after: bool) -> str:
        raise RuntimeError(f"vault refused {SECRET}")

    with pytest.raises(CredentialError) as caught:
        _identity(_authorizer(token_source=source))
    assert SECRET not in str(caught.value) and "RuntimeError" in str(caught.value)


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"authorizer_name": "bad name"}, "aws.authorizer_name"),
        ({"authorizer_name": "x" * 129}, "aws.authorizer_name"),
        ({"token_key_name": "a=b"}, "aws.token_key_name"),
        ({"token_source": "token"}, "aws.token_source"),
        ({"username": "user?x=1"}, "aws.username"),
        ({"username": "nul\x00"}, "aws.username"),
        ({"renewable": "yes"}, "aws.renewable"),
    ],
)
def test_authorizer_settings_are_checked_when_built(
    arguments: dict[str, object], field: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _authorizer(**arguments)
    assert caught.value.field == field


def test_the_authorizer_is_a_provider_whose_renewability_is_its_own() -> None:
    assert isinstance(_authorizer(), CredentialProvider)
    assert _authorizer().renewable is True
    assert _authorizer(renewable=False).renewable is False
    assert _authorizer().token_in_username
    assert not _authorizer(token_key_name=None).token_in_username


def test_reprs_show_no_token_or_signature() -> None:
    token = AuthorizerToken(value=SECRET, signature="sig-Xk29")
    authorizer = _authorizer()
    hub = aws_hub("aws", ENDPOINT, port=443, authorizer=authorizer)
    for text in (repr(token), repr(authorizer), repr(hub)):
        assert SECRET not in text and "sig-Xk29" not in text
    assert "fleet-auth" in repr(authorizer) and "device-token" in repr(authorizer)


def test_a_certificate_identity_from_a_provider_serves_an_aws_hub(tmp_path: Path) -> None:
    cert, key = _device_files(tmp_path)
    provider = CallableCredentials(lambda _hub, _r: Identity(cert_file=cert, key_file=key))
    hub = aws_hub("aws", ENDPOINT, port=443)
    config = aws_client_config("thing-1", [hub], credentials=provider)
    identity = identity_for_attempt(config.credentials, hub, client_id=config.client_id)
    assert identity.cert_file == cert and identity.client_id == "thing-1"
    assert isinstance(hub.tls, TlsSettings) and hub.tls.alpn_protocols == (ALPN_CERTIFICATE,)


# -- the probe listener's parsers -------------------------------------------------------------


def _client_hello(alpn: list[str], server_name: str | None) -> bytes:
    context = ssl.create_default_context()
    if alpn:
        context.set_alpn_protocols(alpn)
    if server_name is None:
        context.check_hostname = False
    outgoing = ssl.MemoryBIO()
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_the_offered_alpn_list_and_sni_are_read_from_a_real_client_hello() -> None:
    raw = _client_hello(["h2", ALPN_CERTIFICATE, "mqtt"], ENDPOINT)
    body = client_hello_body(raw)
    assert body is not None
    hello = parse_client_hello(body)
    assert hello.alpn_protocols == ("h2", ALPN_CERTIFICATE, "mqtt")
    assert hello.server_name == ENDPOINT
    bare = client_hello_body(_client_hello([], None))
    assert bare is not None and parse_client_hello(bare).alpn_protocols == ()


def test_a_partial_or_foreign_client_hello_waits_or_is_refused() -> None:
    raw = _client_hello([ALPN_CERTIFICATE], ENDPOINT)
    assert client_hello_body(raw[:3]) is None
    assert client_hello_body(raw[: len(raw) // 2]) is None
    with pytest.raises(ValueError):
        client_hello_body(b"GET / HTTP/1.1\r\n\r\n")
    body = client_hello_body(raw)
    assert body is not None
    with pytest.raises(ValueError):
        parse_client_hello(body[: len(body) - 3])


def test_connack_takes_the_form_of_the_devices_protocol() -> None:
    assert connack_packet(0x00, 5) == b"\x20\x03\x00\x00\x00"
    assert connack_packet(0x87, 5) == b"\x20\x03\x00\x87\x00"
    assert connack_packet(0x00, 4) == b"\x20\x02\x00\x00"
    assert connack_packet(0x87, 4) == b"\x20\x02\x00\x05"
    assert connack_packet(0x86, 4) == b"\x20\x02\x00\x04"
    assert connack_packet(0x97, 4) == b"\x20\x02\x00\x03"  # quota: server unavailable


def _string(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return len(data).to_bytes(2, "big") + data


def test_a_connect_is_recorded_with_only_the_passwords_length_and_hash() -> None:
    body = _string("MQTT") + bytes([4, 0xC2]) + (30).to_bytes(2, "big")
    body += _string("thing-1") + _string("user?x=1") + _string(SECRET)
    connect = parse_connect(body)
    assert (connect.protocol_level, connect.client_id, connect.username) == (
        4,
        "thing-1",
        "user?x=1",
    )
    assert connect.password_present and connect.password_length == len(SECRET)
    assert connect.password_sha256 == hashlib.sha256(SECRET.encode()).hexdigest()
    assert SECRET not in repr(connect) and "user?x=1" not in repr(connect)
    assert not hasattr(connect, "password")
    with pytest.raises(ValueError):
        parse_connect(body[:-1])
    assert encode_packet(0x10, body)[0] == 0x10

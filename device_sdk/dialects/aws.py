"""AWS IoT Core over MQTT: endpoints, ports and ALPN, thing names, custom authorizers.

AWS IoT Core is a general MQTT 3.1.1 and MQTT 5 broker with its own rules for
how a device gets in. As AWS documents them (developer guide, "Device
communication protocols", "MQTT" and "Connecting to AWS IoT Core by using
custom authentication"):

- TLS always (1.2 or 1.3), with SNI = the account's data endpoint
  (``{prefix}-ats.iot.{region}.amazonaws.com`` or a custom domain); a
  connection without SNI is refused, so an IP literal is never an endpoint.
- X.509 client certificate: MQTT on port 8883 with no ALPN, or on port 443
  with ALPN ``x-amzn-mqtt-ca`` (the name tells the 443 listener it is MQTT
  with a client certificate, not HTTPS).
- Custom authorizer: MQTT on port 443 with ALPN ``mqtt``; credentials travel in
  the CONNECT user name (a query string naming the authorizer, the token and
  its signature) and password. Custom authentication is not taken with ALPN
  ``x-amzn-mqtt-ca``.
- The client id identifies the connection; AWS recommends the thing's name, so
  the registry, shadows and lifecycle events line up. Client ids are at most
  128 bytes of UTF-8; thing names are 1-128 of ``[a-zA-Z0-9:_-]``.
- MQTT 5 is supported with differences (no subscription identifiers, at most
  128 KB per message, keep-alive between 30 and 1200 s, a topic of at most
  seven '/'), as are retained messages; a CONNACK tells what this account's
  endpoint takes, and the engine honours it.

:func:`aws_hub` and :func:`aws_client_config` build ordinary
:class:`~device_sdk.HubEndpoint` and :class:`~device_sdk.ClientConfig` values
that follow these rules, refusing combinations AWS would refuse (with a
ConfigError naming the field, the value and what is allowed).
:class:`AwsCustomAuthorizer` is a credential provider asked for a fresh token
before every attempt, like every provider.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from device_sdk.config import ClientConfig, HubEndpoint, TlsSettings, is_ip_literal
from device_sdk.core.topics import MAX_STRING_BYTES, check_mqtt_string, shown
from device_sdk.errors import ConfigError, CredentialError
from device_sdk.identity.provider import CredentialProvider, Identity

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "ALPN_AUTHORIZER",
    "ALPN_CERTIFICATE",
    "AuthorizerToken",
    "AwsAlpn",
    "AwsCustomAuthorizer",
    "aws_client_config",
    "aws_hub",
    "custom_authorizer_username",
]

# What AWS IoT Core's port 443 expects in the ClientHello's ALPN list for MQTT.
ALPN_CERTIFICATE = "x-amzn-mqtt-ca"  # MQTT with an X.509 client certificate
ALPN_AUTHORIZER = "mqtt"  # MQTT with a custom authorizer
AwsAlpn = Literal["auto", "x-amzn-mqtt-ca", "mqtt"] | None

_TLS_PORT = 8883
_ALPN_PORT = 443
_THING_NAME = re.compile(r"[A-Za-z0-9:_-]{1,128}")
_AUTHORIZER_NAME = re.compile(r"[\w=,@-]{1,128}")  # AWS's pattern for authorizer names
_TOKEN_KEY_NAME = re.compile(r"[A-Za-z0-9_-]{1,128}")  # AWS's pattern for token key names
_NAME_PARAM = "x-amz-customauthorizer-name"
_SIGNATURE_PARAM = "x-amz-customauthorizer-signature"
_FIXED_FIELDS = ("client_id",)  # hubs and credentials are arguments of their own


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthorizerToken:
    """One token for a custom authorizer, as a token source returns it.

    ``signature`` is the base64 RSA-SHA256 signature of ``value`` made with the
    authorizer's private key (signing-enabled authorizers only; it is usually
    fetched with the token, since the device should not hold that key).
    ``expires_at`` (wall-clock seconds) lets the engine refuse a stale token;
    ``renew_at`` makes it reconnect with a fresh one first, make before break.
    Neither the token nor its signature appears in reprs.
    """

    value: str = field(repr=False)
    signature: str | None = field(default=None, repr=False)
    expires_at: float | None = None
    renew_at: float | None = None


TokenSource = Callable[[bool], str | AuthorizerToken]


class AwsCustomAuthorizer:
    """A credential provider for an AWS IoT Core custom authorizer.

    Before every attempt it calls ``token_source(after_refusal)`` for a token
    (a str, or an :class:`AuthorizerToken` with its signature and life);
    ``after_refusal`` is True on the first attempt after the hub refused the
    last one, so a source that caches must fetch a new token then.

    Where the token goes follows AWS's MQTT custom authentication:

    - with ``token_key_name`` (required by a signing-enabled authorizer, which
      finds the token under that key to check its signature), the CONNECT user
      name is ``{username}?x-amz-customauthorizer-name={authorizer}&{key}={token}``
      followed by ``&x-amz-customauthorizer-signature={signature}`` when the
      token is signed; every value is percent-encoded (``quote(..., safe="")``),
      so the '+', '/' and '=' of base64 survive the query string;
    - without it (a signing-disabled authorizer), the user name is
      ``{username}?x-amz-customauthorizer-name={authorizer}`` and the token is
      the MQTT password, which AWS hands the authorizer's Lambda base64-encoded.

    ``username`` is the part before '?', passed to the Lambda as the user name
    (it may not hold '?'). ``authorizer_name=None`` leaves the name out, for an
    endpoint whose domain configuration names a default authorizer.
    ``renewable`` says whether the source can mint a new token (a fixed one
    cannot: a refusal is then final for the hub, not retried at once).

    Secrets: the token and signature never appear in this object's repr nor in
    any error it raises. With ``token_key_name`` the user name itself carries
    the token; device_sdk never logs, emits or reports user names (only hub
    names, addresses and reason codes), so it stays off logs, events and the
    status file too. Keep it so in application code: do not log the
    :class:`~device_sdk.identity.Identity` this returns.
    """

    __slots__ = ("_authorizer_name", "_renewable", "_token_key_name", "_token_source", "_username")

    def __init__(
        self,
        *,
        authorizer_name: str | None,
        token_source: TokenSource,
        token_key_name: str | None = None,
        username: str = "",
        renewable: bool = True,
    ) -> None:
        if authorizer_name is not None and (
            not isinstance(authorizer_name, str) or not _AUTHORIZER_NAME.fullmatch(authorizer_name)
        ):
            raise ConfigError(
                "aws.authorizer_name",
                shown(authorizer_name),
                "1-128 letters, digits or _ = , @ - (or None for the endpoint's default)",
            )
        if token_key_name is not None and (
            not isinstance(token_key_name, str) or not _TOKEN_KEY_NAME.fullmatch(token_key_name)
        ):
            raise ConfigError(
                "aws.token_key_name", shown(token_key_name), "1-128 letters, digits, _ or -"
            )
        if not callable(token_source):
            raise ConfigError(
                "aws.token_source",
                type(token_source).__name__,
                "a callable (after_refusal) -> str or AuthorizerToken",
            )
        check_mqtt_string("aws.username", username, allow_empty=True)
        if "?" in username:
            raise ConfigError("aws.username", shown(username), "a user name without '?'")
        if not isinstance(renewable, bool):
            raise ConfigError("aws.renewable", renewable, "True or False")
        self._authorizer_name = authorizer_name
        self._token_key_name = token_key_name
        self._token_source = token_source
        self._username = username
        self._renewable = renewable

    @property
    def renewable(self) -> bool:
        """Whether asking again can give a token the hub has not seen."""
        return self._renewable

    @property
    def token_in_username(self) -> bool:
        """True when the token travels in the user name (a token key name is set)."""
        return self._token_key_name is not None

    def identity_for(self, hub: HubEndpoint, *, client_id: str, after_refusal: bool) -> Identity:
        """A fresh token for this attempt, placed in the user name or the password."""
        token = self._fetch(hub, after_refusal)
        if token.signature is not None and self._token_key_name is None:
            raise CredentialError(
                f"the token source for {hub.name} gave a signed token, but a signature is "
                "only checked with token_key_name set",
                hub=hub.name,
            )
        params: list[tuple[str, str]] = []
        if self._authorizer_name is not None:
            params.append((_NAME_PARAM, self._authorizer_name))
        password: str | None = token.value
        if self._token_key_name is not None:
            params.append((self._token_key_name, token.value))
            if token.signature is not None:
                params.append((_SIGNATURE_PARAM, token.signature))
            password = None
        username = custom_authorizer_username(self._username, params)
        if len(username.encode("utf-8")) > MAX_STRING_BYTES:
            # Checked here, not left to the generic check, whose message would show
            # the start of the user name: with a token key, the token is in it.
            raise CredentialError(
                f"the custom authorizer's user name for {hub.name} would be over "
                f"{MAX_STRING_BYTES} bytes (a token of {len(token.value)} characters)",
                hub=hub.name,
            )
        return Identity(
            username=username,
            password=password,
            expires_at=token.expires_at,
            renew_at=token.renew_at,
        )

    def _fetch(self, hub: HubEndpoint, after_refusal: bool) -> AuthorizerToken:
        try:
            answer = self._token_source(after_refusal)
        except Exception as exc:
            # Only the type: the source's own message may quote the token it failed on.
            raise CredentialError(
                f"the custom authorizer's token source for {hub.name} raised {type(exc).__name__}",
                hub=hub.name,
            ) from exc
        token = AuthorizerToken(value=answer) if isinstance(answer, str) else answer
        if not isinstance(token, AuthorizerToken):
            raise CredentialError(
                f"the token source for {hub.name} returned a {type(answer).__name__}, "
                "not a str or AuthorizerToken",
                hub=hub.name,
            )
        _check_token(hub, token)
        return token

    def __repr__(self) -> str:
        source = getattr(self._token_source, "__qualname__", type(self._token_source).__name__)
        return (
            f"AwsCustomAuthorizer(authorizer_name={self._authorizer_name!r}, "
            f"token_key_name={self._token_key_name!r}, username={self._username!r}, "
            f"token_source={source}, renewable={self._renewable})"
        )


def custom_authorizer_username(username: str, params: Sequence[tuple[str, str]]) -> str:
    """``username`` with ``params`` as a query string, every key and value percent-encoded."""
    if not params:
        return username
    query = "&".join(
        f"{urllib.parse.quote(key, safe='')}={urllib.parse.quote(value, safe='')}"
        for key, value in params
    )
    return f"{username}?{query}"


def _check_token(hub: HubEndpoint, token: AuthorizerToken) -> None:
    # The problems are named, never the values: raised outside any handler, so
    # nothing chains to the text either.
    problem = ""
    for name, value in (("token", token.value), ("signature", token.signature)):
        if value is None and name == "signature":
            continue
        if not isinstance(value, str) or not value:
            problem = f"the {name} is not a non-empty str"
        elif not value.isprintable():
            problem = f"the {name} holds unprintable characters"
    for name in ("expires_at", "renew_at"):
        when = getattr(token, name)
        if when is not None and (
            isinstance(when, bool) or not isinstance(when, int | float) or not math.isfinite(when)
        ):
            problem = f"{name} is not wall-clock seconds"
    if problem:
        raise CredentialError(
            f"the token source for {hub.name} gave an unusable token: {problem}", hub=hub.name
        )


def aws_hub(
    name: str,
    endpoint: str,
    *,
    port: int = _TLS_PORT,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    authorizer: AwsCustomAuthorizer | None = None,
    alpn: AwsAlpn = "auto",
    min_tls: Literal["1.2", "1.3"] = "1.2",
    client_id: str | None = None,
) -> HubEndpoint:
    """An AWS IoT Core data endpoint, with the port, ALPN and identity AWS takes there.

    The device proves who it is with an X.509 client certificate (``cert_file``
    and ``key_file`` here, or files an identity provider names at each attempt)
    or, with ``authorizer``, through a custom authorizer. ``alpn="auto"`` offers
    what AWS expects on that port: nothing on 8883, ``x-amzn-mqtt-ca`` on 443
    with a certificate, ``mqtt`` on 443 with an authorizer. Any other port (a
    local forwarder, a test listener) must name it: ``"x-amzn-mqtt-ca"``,
    ``"mqtt"`` or None. A hub whose authorizer is the client's credentials
    (:func:`aws_client_config`) names ``alpn="mqtt"``. ``ca_file=None`` trusts
    the system store, which holds the Amazon roots; name ``AmazonRootCA1.pem``
    where it does not.
    """
    if not isinstance(endpoint, str) or is_ip_literal(endpoint.rstrip(".")):
        raise ConfigError(
            "aws.endpoint",
            shown(endpoint),
            "the endpoint's DNS name (AWS IoT Core refuses a TLS connection without SNI, "
            "which an IP address cannot carry)",
        )
    if authorizer is not None and not isinstance(authorizer, AwsCustomAuthorizer):
        raise ConfigError("aws.authorizer", type(authorizer).__name__, "an AwsCustomAuthorizer")
    if authorizer is not None and cert_file is not None:
        raise ConfigError(
            "aws.cert_file",
            shown(cert_file),
            "None with a custom authorizer (AWS takes one or the other on an MQTT port)",
        )
    chosen = _choose_alpn(port, alpn, authorizer=authorizer is not None)
    tls = TlsSettings(
        ca_file=ca_file,
        client_cert_file=cert_file,
        client_key_file=key_file,
        min_version=min_tls,
        alpn_protocols=() if chosen is None else (chosen,),
    )
    return HubEndpoint(
        name=name, fqdn=endpoint, port=port, tls=tls, credentials=authorizer, client_id=client_id
    )


def _choose_alpn(port: object, alpn: object, *, authorizer: bool) -> str | None:
    """The ALPN protocol to offer, or None; ConfigError for what AWS would refuse."""
    expected = ALPN_AUTHORIZER if authorizer else ALPN_CERTIFICATE
    how = "a custom authorizer"
    if alpn not in ("auto", ALPN_CERTIFICATE, ALPN_AUTHORIZER, None):
        raise ConfigError(
            "aws.alpn", shown(alpn), f"'auto', '{ALPN_CERTIFICATE}', '{ALPN_AUTHORIZER}' or None"
        )
    if authorizer and port == _TLS_PORT:
        raise ConfigError(
            "aws.port",
            port,
            f"{_ALPN_PORT} with a custom authorizer (AWS takes custom authentication over "
            f"MQTT on {_ALPN_PORT} with ALPN '{ALPN_AUTHORIZER}')",
        )
    if alpn == "auto":
        if port == _ALPN_PORT:
            return expected
        if port == _TLS_PORT:
            return None
        raise ConfigError(
            "aws.alpn",
            "auto",
            f"on a port other than {_ALPN_PORT} or {_TLS_PORT}, the protocol to offer: "
            f"'{expected}' or None",
        )
    # Without an authorizer here, one may still come from the client's credentials:
    # aws_client_config pairs "mqtt" with an authorizer and refuses any other match.
    if authorizer and alpn is not None and alpn != expected:
        raise ConfigError("aws.alpn", alpn, f"'{expected}' with {how}, or 'auto'")
    if alpn is None and port == _ALPN_PORT:
        raise ConfigError(
            "aws.alpn",
            None,
            f"'{expected}' on port {_ALPN_PORT} (AWS needs it to tell MQTT from HTTPS there)",
        )
    return None if alpn is None else str(alpn)


def aws_client_config(
    thing_name: str,
    hubs: Iterable[HubEndpoint],
    credentials: CredentialProvider | None = None,
    **overrides: Any,
) -> ClientConfig:
    """A :class:`~device_sdk.ClientConfig` for an AWS IoT thing: client id = thing name.

    MQTT 5 unless ``mqtt_version="3.1.1"`` is among the ``overrides`` (any other
    ClientConfig fields: profile values, outbox, ...). ``credentials`` serve
    every hub without its own (an :class:`AwsCustomAuthorizer`, or a provider of
    certificate files). Refused: a hub without TLS, an authorizer on a hub that
    offers ``x-amzn-mqtt-ca``, and a hub that offers ``mqtt`` with no authorizer.
    """
    if not isinstance(thing_name, str) or not _THING_NAME.fullmatch(thing_name):
        raise ConfigError(
            "aws.thing_name",
            shown(thing_name),
            "1-128 ASCII letters, digits, ':', '_' or '-' (AWS's thing names; as the "
            "client id, within its 128 bytes)",
        )
    for name in _FIXED_FIELDS:
        if name in overrides:
            raise ConfigError(
                name, shown(overrides[name]), "set by aws_client_config's own arguments"
            )
    hub_list = tuple(hubs) if isinstance(hubs, Iterable) else hubs
    if isinstance(hub_list, tuple):  # anything else: ClientConfig refuses it below
        for hub in hub_list:
            if isinstance(hub, HubEndpoint):
                _check_hub_auth(hub, credentials)
    fields: dict[str, Any] = {"mqtt_version": "5", **overrides}
    return ClientConfig(client_id=thing_name, hubs=hub_list, credentials=credentials, **fields)


def _check_hub_auth(hub: HubEndpoint, credentials: CredentialProvider | None) -> None:
    if hub.tls is None:
        raise ConfigError(f"hubs[{hub.name}].tls", None, "TLS settings (AWS IoT Core is TLS only)")
    provider = hub.credentials if hub.credentials is not None else credentials
    uses_authorizer = isinstance(provider, AwsCustomAuthorizer)
    offered = hub.tls.alpn_protocols
    if uses_authorizer and ALPN_CERTIFICATE in offered:
        raise ConfigError(
            f"hubs[{hub.name}].tls.alpn_protocols",
            offered,
            f"not '{ALPN_CERTIFICATE}' with a custom authorizer (AWS takes no custom "
            f"authentication there; build the hub with aws_hub(authorizer=...) or "
            f"alpn='{ALPN_AUTHORIZER}')",
        )
    if not uses_authorizer and ALPN_AUTHORIZER in offered:
        raise ConfigError(
            "credentials",
            type(provider).__name__ if provider is not None else None,
            f"an AwsCustomAuthorizer for hub {hub.name}, which offers ALPN '{ALPN_AUTHORIZER}'",
        )

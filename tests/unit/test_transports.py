"""Ways in and proxy settings: the profile and URL forms, and what they refuse.

Whatever text reaches ``Transport.parse``, ``ProxySettings.from_url`` or
``from_environment`` (a profile, a command line, an environment a fleet
manager wrote), the answer is a value or a ConfigError, never another
exception and never a password in the message.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_sdk import ConfigError, HubEndpoint, ProxySettings, TlsSettings, Transport


@pytest.mark.parametrize(
    ("text", "label", "secure", "websocket"),
    [
        ("mqtts:8883", "mqtts:8883", True, False),
        ("wss:443", "wss:443/mqtt", True, True),
        ("wss:443/$iothub/websocket", "wss:443/$iothub/websocket", True, True),
        ("mqtt:1883", "mqtt:1883", False, False),
        ("ws:80/mqtt", "ws:80/mqtt", False, True),
    ],
)
def test_the_profile_form_parses(text: str, label: str, secure: bool, websocket: bool) -> None:
    way = Transport.parse(text)
    assert (way.label, way.secure, way.websocket) == (label, secure, websocket)


@pytest.mark.parametrize(
    "text",
    ["", "mqtts", "mqtts:", "mqtts:0", "mqtts:65536", "http:80", "mqtts:8883/path", "wss:443 /x"],
)
def test_bad_profile_forms_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        Transport.parse(text)


def test_headers_the_handshake_sets_itself_are_refused() -> None:
    with pytest.raises(ConfigError, match="does not set"):
        Transport(scheme="wss", port=443, headers=(("Sec-WebSocket-Key", "x"),))
    with pytest.raises(ConfigError, match="ASCII text"):
        Transport(scheme="wss", port=443, headers=(("X-Site", "a\r\nInjected: 1"),))
    with pytest.raises(ConfigError, match="only on ws or wss"):
        Transport(scheme="mqtts", port=8883, headers=(("X-Site", "a"),))


def test_a_hubs_ways_in_match_its_tls_and_differ() -> None:
    with pytest.raises(ConfigError, match="mqtts or wss"):
        HubEndpoint(name="h", fqdn="h.example.com", transports=(Transport.parse("ws:80"),))
    with pytest.raises(ConfigError, match="mqtt or ws"):
        HubEndpoint(
            name="h", fqdn="h.example.com", tls=None, transports=(Transport.parse("wss:443"),)
        )
    twice = (Transport.parse("wss:443"), Transport.parse("wss:443"))
    with pytest.raises(ConfigError, match="differ"):
        HubEndpoint(name="h", fqdn="h.example.com", tls=TlsSettings(), transports=twice)
    plain = HubEndpoint(name="h", fqdn="h.example.com", port=1883, tls=None)
    assert [way.label for way in plain.ways_in] == ["mqtt:1883"]


def test_a_proxy_url_keeps_the_password_out_of_sight() -> None:
    proxy = ProxySettings.from_url("http://gw%40site:p%3Ass@proxy.corp:8080")
    assert (proxy.username, proxy.password, proxy.authority) == (
        "gw@site",
        "p:ss",
        "proxy.corp:8080",
    )
    assert "p:ss" not in repr(proxy)
    with pytest.raises(ConfigError) as caught:
        ProxySettings.from_url("socks5://gw:hunter2@proxy.corp:1080")
    assert "hunter2" not in str(caught.value)
    assert ProxySettings.from_url("proxy.corp").port == 3128


@pytest.mark.parametrize(
    ("no_proxy", "host", "bypassed"),
    [
        (("example.com",), "hub.example.com", True),
        ((".example.com",), "example.com", True),
        (("example.com",), "badexample.com", False),
        (("*",), "anything.test", True),
        (("10.0.0.0/8",), "10.1.2.3", True),
        (("10.0.0.0/8",), "11.1.2.3", False),
        (("::1",), "::1", True),
        (("hub.example.com",), "HUB.example.com.", True),
    ],
)
def test_no_proxy_matching(no_proxy: tuple[str, ...], host: str, bypassed: bool) -> None:
    proxy = ProxySettings(host="proxy.corp", port=3128, no_proxy=no_proxy)
    assert proxy.bypasses(host) is bypassed


def test_the_environment_is_read_only_when_asked() -> None:
    assert ProxySettings.from_environment({}) is None
    env = {"https_proxy": "http://proxy.corp:3128", "no_proxy": " a.test , ,b.test"}
    proxy = ProxySettings.from_environment(env, resolve_locally=True)
    assert proxy is not None and proxy.no_proxy == ("a.test", "b.test") and proxy.resolve_locally


@settings(max_examples=200, deadline=None, database=None)
@given(text=st.text(max_size=80))
def test_any_text_is_a_value_or_a_config_error(text: str) -> None:
    for build in (
        Transport.parse,
        ProxySettings.from_url,
        lambda t: ProxySettings.from_environment({"HTTPS_PROXY": t, "NO_PROXY": t}),
    ):
        with contextlib.suppress(ConfigError):
            build(text)
    ProxySettings(host="proxy.corp", port=3128, no_proxy=(text, "*.x")).bypasses(text)

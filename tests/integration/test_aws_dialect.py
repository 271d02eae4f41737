"""The AWS IoT Core dialect against the testbed's TLS probe listener.

The listener terminates TLS itself, so each test can see what the device put
on the wire: SNI, every ALPN protocol offered, its client certificate, and its
CONNECT. The hub's FQDN resolves through the testbed's DNS server on loopback
and TLS verifies the listener's certificate against that FQDN, as it would
AWS's.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from device_sdk import DeviceClient, events
from device_sdk.config import DnsSettings
from device_sdk.dialects.aws import (
    ALPN_AUTHORIZER,
    ALPN_CERTIFICATE,
    AuthorizerToken,
    AwsCustomAuthorizer,
    aws_client_config,
    aws_hub,
)
from device_sdk.testbed import FAST_FAILOVER, FAST_LIVENESS, FAST_RETRY, DnsServer
from device_sdk.testbed.pki import CertificateAuthority
from device_sdk.testbed.tls_listener import TlsProbeListener

pytestmark = pytest.mark.integration

ENDPOINT = "a1b2c3-ats.iot.eu-west-1.device-sdk.test"
THING = "greenhouse-sensor_7:b"
NOT_AUTHORIZED = 0x87


@dataclass(frozen=True)
class Site:
    """A CA, the listener's certificate files for ENDPOINT, and DNS naming it."""

    ca: CertificateAuthority
    ca_file: str
    cert_file: str
    key_file: str
    dns: DnsSettings
    directory: Path


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    ca = CertificateAuthority.create()
    server = ca.issue_server_certificate([ENDPOINT]).write_to(tmp_path, stem="endpoint")
    with DnsServer() as dns:
        dns.set_address(ENDPOINT, ["127.0.0.1"], ttl=1)
        yield Site(
            ca=ca,
            ca_file=str(ca.write_to(tmp_path)),
            cert_file=str(server.cert_file),
            key_file=str(server.key_file),
            dns=DnsSettings(nameservers=(dns.host,), port=dns.port, timeout=0.5, lifetime=1.0),
            directory=tmp_path,
        )


def _fast(site: Site) -> dict[str, object]:
    return {
        "dns": site.dns,
        "retry": FAST_RETRY,
        "failover": FAST_FAILOVER,
        "liveness": FAST_LIVENESS,
    }


def test_a_thing_with_a_certificate_offers_amazons_alpn_and_publishes(site: Site) -> None:
    device = site.ca.issue_client_certificate(THING).write_to(site.directory, stem="device")
    with TlsProbeListener(
        cert_file=site.cert_file, key_file=site.key_file, client_ca_file=site.ca_file
    ) as listener:
        hub = aws_hub(
            "aws",
            ENDPOINT,
            port=listener.port,
            ca_file=site.ca_file,
            cert_file=str(device.cert_file),
            key_file=str(device.key_file),
            alpn=ALPN_CERTIFICATE,
        )
        config = aws_client_config(THING, [hub], **_fast(site))
        with DeviceClient(config) as client:
            client.connect(timeout=5.0)
            client.publish("dt/greenhouse/temperature", b"21.5").wait(5.0)
        (record,) = listener.wait_for_connects(1, timeout=5.0)

    assert record.alpn_offered == (ALPN_CERTIFICATE,)
    assert record.alpn_selected == ALPN_CERTIFICATE
    assert record.sni == ENDPOINT
    assert record.client_cert_cn == THING
    assert record.connect is not None
    assert record.connect.client_id == THING
    assert record.connect.protocol_level == 5  # MQTT 5 unless asked otherwise
    assert record.connect.username is None and not record.connect.password_present
    assert [(p.topic, p.payload) for p in record.publishes] == [
        ("dt/greenhouse/temperature", b"21.5")
    ]


def test_the_listener_records_every_alpn_protocol_offered_not_only_the_one_it_selects(
    site: Site,
) -> None:
    """What Python's ssl cannot say (the offered list) comes from the ClientHello."""
    with TlsProbeListener(
        cert_file=site.cert_file, key_file=site.key_file, alpn_protocols=("mqtt",)
    ) as listener:
        context = site.ca.client_ssl_context()
        context.set_alpn_protocols(["h2", ALPN_CERTIFICATE, "mqtt"])
        with (
            socket.create_connection(("127.0.0.1", listener.port), 5) as raw,
            context.wrap_socket(raw, server_hostname=ENDPOINT) as tls,
        ):
            assert tls.selected_alpn_protocol() == "mqtt"
        (record,) = listener.wait_for(lambda seen: any(r.ended for r in seen), timeout=5.0)
    assert record.alpn_offered == ("h2", ALPN_CERTIFICATE, "mqtt")
    assert record.sni == ENDPOINT and record.client_cert_cn is None


def test_a_device_without_the_required_certificate_fails_its_handshake(site: Site) -> None:
    with TlsProbeListener(
        cert_file=site.cert_file, key_file=site.key_file, client_ca_file=site.ca_file
    ) as listener:
        context = site.ca.client_ssl_context()
        with socket.create_connection(("127.0.0.1", listener.port), 5) as raw:
            try:
                with context.wrap_socket(raw, server_hostname=ENDPOINT) as tls:
                    tls.recv(1)  # TLS 1.3: the refusal arrives after the client's Finished
            except (ssl.SSLError, OSError):
                pass
        (record,) = listener.wait_for(lambda seen: any(r.ended for r in seen), timeout=5.0)
    assert record.tls_error is not None and record.connect is None


class Tokens:
    """A token source that mints ``tok-<n>`` with a base64-like signature."""

    def __init__(self) -> None:
        self.calls: list[bool] = []
        self.minted: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, after_refusal: bool) -> AuthorizerToken:
        with self._lock:
            token = f"tok-{len(self.minted)}-Hq7Zr+Lp/Wd="
            self.calls.append(after_refusal)
            self.minted.append(token)
        return AuthorizerToken(value=token, signature=f"sig+/{len(self.minted)}==")


def test_a_custom_authorizer_sends_fresh_tokens_in_the_user_name_and_never_logs_them(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    tokens = Tokens()
    authorizer = AwsCustomAuthorizer(
        authorizer_name="fleet-auth", token_key_name="device-token", token_source=tokens
    )
    seen_events: list[events.Event] = []
    caplog.set_level(logging.DEBUG)
    with TlsProbeListener(
        cert_file=site.cert_file, key_file=site.key_file, connack_codes=(NOT_AUTHORIZED,)
    ) as listener:
        hub = aws_hub(
            "aws",
            ENDPOINT,
            port=listener.port,
            ca_file=site.ca_file,
            authorizer=authorizer,
            alpn=ALPN_AUTHORIZER,
        )
        config = aws_client_config(THING, [hub], mqtt_version="3.1.1", **_fast(site))
        with DeviceClient(config, on_event=seen_events.append) as client:
            client.connect(timeout=5.0)
            client.publish("dt/greenhouse/humidity", b"40").wait(5.0)
        refused, accepted = listener.wait_for_connects(2, timeout=5.0)

    assert (refused.connack_code, accepted.connack_code) == (NOT_AUTHORIZED, 0)
    assert tokens.calls[:2] == [False, True]  # asked fresh, and told of the refusal
    for record, token in ((refused, tokens.minted[0]), (accepted, tokens.minted[1])):
        assert record.alpn_offered == (ALPN_AUTHORIZER,) and record.sni == ENDPOINT
        assert record.connect is not None and record.connect.protocol_level == 4
        assert record.connect.client_id == THING
        signature = f"sig+/{tokens.minted.index(token) + 1}=="
        assert record.connect.username == (
            "?x-amz-customauthorizer-name=fleet-auth"
            f"&device-token={_encoded(token)}"
            f"&x-amz-customauthorizer-signature={_encoded(signature)}"
        )
        assert not record.connect.password_present
    assert len(accepted.publishes) == 1

    texts = [caplog.text, repr(config), repr(authorizer), repr(refused), repr(accepted)]
    texts += [repr(e) + e.describe() for e in seen_events]
    assert any(isinstance(e, events.AttemptFailed) for e in seen_events)
    for token in tokens.minted:
        for text in texts:
            assert token not in text and _encoded(token) not in text, text[:300]


def test_a_signing_disabled_authorizer_sends_the_token_as_the_password(site: Site) -> None:
    minted: list[str] = []

    def token_source(_after_refusal: bool) -> str:
        minted.append(f"opaque-{len(minted)}")
        return minted[-1]

    authorizer = AwsCustomAuthorizer(
        authorizer_name="legacy-auth", token_source=token_source, username="meter-12"
    )
    with TlsProbeListener(cert_file=site.cert_file, key_file=site.key_file) as listener:
        hub = aws_hub(
            "aws", ENDPOINT, port=listener.port, ca_file=site.ca_file, alpn=ALPN_AUTHORIZER
        )
        config = aws_client_config(THING, [hub], credentials=authorizer, **_fast(site))
        with DeviceClient(config) as client:
            client.connect(timeout=5.0)
        (record,) = listener.wait_for_connects(1, timeout=5.0)
    assert record.connect is not None
    assert record.connect.username == "meter-12?x-amz-customauthorizer-name=legacy-auth"
    assert record.connect.password_present
    assert record.connect.password_length == len(minted[0])


def _encoded(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def _tls_to(listener: TlsProbeListener, site: Site) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", listener.port), 5)
    return site.ca.client_ssl_context().wrap_socket(raw, server_hostname=ENDPOINT)


def _connect_packet(client_id: str) -> bytes:
    name, ident = b"MQTT", client_id.encode()
    body = len(name).to_bytes(2, "big") + name + bytes([4, 0x02]) + (30).to_bytes(2, "big")
    body += len(ident).to_bytes(2, "big") + ident
    return bytes([0x10, len(body)]) + body


def test_hostile_input_ends_only_its_own_connection(site: Site) -> None:
    with TlsProbeListener(
        cert_file=site.cert_file, key_file=site.key_file, connection_timeout=5.0
    ) as listener:
        with socket.create_connection(("127.0.0.1", listener.port), 5) as plain:
            plain.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # not TLS at all
            assert plain.recv(4096) is not None
        with _tls_to(listener, site) as flood:
            flood.sendall(b"\x10\xff\xff\xff\x7f")  # a CONNECT announcing 256 MB
            assert flood.recv(1) == b""
        with _tls_to(listener, site) as early:
            early.sendall(b"\x30\x04\x00\x01tx")  # a PUBLISH before any CONNECT
            assert early.recv(1) == b""
        with _tls_to(listener, site) as honest:  # the listener still serves
            honest.sendall(_connect_packet("survivor"))
            assert honest.recv(4) == b"\x20\x02\x00\x00"
            honest.sendall(b"\xc0\x00")
            assert honest.recv(2) == b"\xd0\x00"
        records = listener.wait_for(lambda seen: len(seen) == 4 and seen[3].pings == 1, 5.0)
    plain_record, flood_record, early_record, honest_record = records
    assert plain_record.hello_error is not None and plain_record.tls_error is not None
    assert flood_record.ended is not None and "over the limit" in flood_record.ended
    assert early_record.ended is not None and "not CONNECT" in early_record.ended
    assert honest_record.connect is not None and honest_record.connect.client_id == "survivor"


def test_a_silent_device_is_dropped_at_the_connection_timeout(site: Site) -> None:
    with TlsProbeListener(
        cert_file=site.cert_file, key_file=site.key_file, connection_timeout=0.3
    ) as listener:
        with _tls_to(listener, site) as silent:
            silent.settimeout(5.0)
            assert silent.recv(1) == b""  # the listener hung up; the device said nothing
        (record,) = listener.wait_for(lambda seen: any(r.ended for r in seen), 5.0)
    assert record.ended == "connection_timeout"


def test_stop_ends_a_connection_a_device_still_holds(site: Site) -> None:
    listener = TlsProbeListener(cert_file=site.cert_file, key_file=site.key_file).start()
    try:
        held = _tls_to(listener, site)
        held.sendall(_connect_packet("holder"))
        assert held.recv(4) == b"\x20\x02\x00\x00"
    finally:
        listener.stop(timeout=5.0)  # raises TestbedError if any thread outlives it
    with held:
        held.settimeout(5.0)
        assert held.recv(1) == b""
    (record,) = listener.connections()
    assert record.ended == "the listener stopped"

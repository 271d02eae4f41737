"""Bad input gets a clear, typed error, and nothing the device was handed is lost.

TLS with the wrong name or the wrong CA, refused credentials, DNS that fails,
and a message the hub refuses: each reaches the application as a typed DeviceSDKError, the device
never falls back to something insecure, and messages stay queued until a hub
that works acknowledges them.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from device_sdk import (
    Credentials,
    DeviceClient,
    NotConnected,
    OutboxSettings,
    PermanentRefusal,
    PublishRejected,
    ResolveError,
    TlsError,
    TlsSettings,
    events,
)
from device_sdk.adapters.sqlite_outbox import SqliteOutbox
from device_sdk.errors import NameNotFound, ResolverFailure
from device_sdk.testbed import IMPOSTOR, CertificateAuthority, Testbed
from device_sdk.testbed.pytest_plugin import TestbedFactory
from tests.integration.support import TOPIC, EventLog

pytestmark = pytest.mark.integration


def test_tls_dials_the_resolved_ip_and_verifies_the_fqdn(tls_testbed: Testbed) -> None:
    log = EventLog()
    config = tls_testbed.client_config("tls-device")
    primary = tls_testbed.hub("primary")
    assert config.hubs[0].tls is not None
    with DeviceClient(config, on_event=log) as client:
        client.publish(TOPIC, "0:x").wait(5)
    connected = log.of(events.Connected)[0]
    assert connected.address == primary.address  # type: ignore[attr-defined]
    assert config.hubs[0].fqdn == primary.fqdn != primary.address


def test_certificate_for_another_name_is_refused_and_never_bypassed(tls_testbed: Testbed) -> None:
    # A hijacked name: it resolves to a real broker whose certificate does not carry it.
    assert tls_testbed.dns is not None
    tls_testbed.dns.set_address(IMPOSTOR, [tls_testbed.hub("primary").address])
    impostor = dataclasses.replace(tls_testbed.endpoint("primary"), name="impostor", fqdn=IMPOSTOR)
    config = tls_testbed.client_config("mitm-device", hubs=["primary"])
    log = EventLog()
    client = DeviceClient(dataclasses.replace(config, hubs=(impostor,)), on_event=log)
    try:
        with pytest.raises(NotConnected) as caught:
            client.connect(timeout=1.0)
        handle = client.publish(TOPIC, "0:x")
        time.sleep(0.3)
        assert client.metrics().queue_depth == 1  # still held, never sent in the clear
        assert not handle.done()
    finally:
        client.close()
    errors = caught.value.attempts
    assert errors and all(isinstance(e, TlsError) for e in errors)
    assert IMPOSTOR in str(errors[0])
    assert not log.of(events.Connected)


def test_certificate_from_another_ca_is_refused(tls_testbed: Testbed, tmp_path: Path) -> None:
    stranger = CertificateAuthority.create(common_name="someone else").write_to(tmp_path)
    wrong = dataclasses.replace(
        tls_testbed.endpoint("primary"), tls=TlsSettings(ca_file=str(stranger))
    )
    config = tls_testbed.client_config("wrong-ca-device", hubs=["primary"])
    client = DeviceClient(dataclasses.replace(config, hubs=(wrong,)))
    try:
        with pytest.raises(NotConnected) as caught:
            client.connect(timeout=1.0)
    finally:
        client.close()
    assert caught.value.attempts
    assert all(isinstance(e, TlsError) for e in caught.value.attempts)
    assert "did not verify" in str(caught.value.attempts[0])


def test_refused_credentials_fail_over_without_hammering(testbed_factory: TestbedFactory) -> None:
    bed = testbed_factory(users={"primary": {"device": "right"}})
    log = EventLog()
    config = bed.client_config(
        "creds-device", credentials=Credentials(username="device", password="wrong")
    )
    with DeviceClient(config, on_event=log) as client:
        client.publish(TOPIC, "0:x").wait(5)
        time.sleep(1.5)  # long enough for several fast retries, were there any
        assert client.metrics().current_hub == "secondary"
    refusals = [e for e in log.of(events.AttemptFailed) if e.hub == "primary"]  # type: ignore[attr-defined]
    assert len(refusals) == 1
    assert isinstance(refusals[0].error, PermanentRefusal)  # type: ignore[attr-defined]
    assert "Not authorized" in str(refusals[0].error) or "password" in str(refusals[0].error)  # type: ignore[attr-defined]
    assert len(bed.hub("primary").broker.connection_attempts()) == 1


def test_refused_credentials_on_the_only_hub_back_off_long(testbed_factory: TestbedFactory) -> None:
    bed = testbed_factory(users={"primary": {"device": "right"}})
    log = EventLog()
    config = bed.client_config(
        "lonely-device", hubs=["primary"], credentials=Credentials(username="device", password="no")
    )
    client = DeviceClient(config, on_event=log)
    try:
        with pytest.raises(NotConnected) as caught:
            client.connect(timeout=1.5)
        handle = client.publish(TOPIC, "0:x")
        assert client.metrics().queue_depth == 1
        assert not handle.done()
    finally:
        client.close()
    assert [type(e) for e in caught.value.attempts] == [PermanentRefusal]
    assert len(log.of(events.AttemptFailed)) == 1  # LONG backoff (5 s here), not a retry storm


@pytest.mark.parametrize(
    ("fault", "error_type"),
    [("servfail", ResolverFailure), ("nxdomain", NameNotFound)],
)
def test_dns_failure_is_typed_and_queued_messages_survive_it(
    testbed: Testbed, fault: str, error_type: type[ResolveError]
) -> None:
    assert testbed.dns is not None
    primary = testbed.hub("primary")
    if fault == "servfail":
        testbed.dns.fail(primary.fqdn)
    else:
        testbed.dns.remove(primary.fqdn)
    collector = testbed.collector("primary", TOPIC)
    log = EventLog()
    client = DeviceClient(testbed.client_config("dns-device", hubs=["primary"]), on_event=log)
    try:
        with pytest.raises(NotConnected) as caught:
            client.connect(timeout=0.5)
        handles = [client.publish(TOPIC, f"{n}:x") for n in range(5)]
        assert client.metrics().queue_depth == 5
        assert caught.value.attempts and isinstance(caught.value.attempts[0], error_type)
        # DNS heals: everything queued during the outage is delivered.
        testbed.dns.clear_fault(primary.fqdn)
        testbed.dns.set_address(primary.fqdn, [primary.address], ttl=1)
        for handle in handles:
            handle.wait(10)
        assert collector.wait_for(set(range(5)), 5)
    finally:
        client.close()


@pytest.mark.parametrize("durable", [False, True], ids=["memory", "sqlite"])
def test_a_message_the_hub_refuses_is_a_typed_error_never_a_silent_ack(
    testbed_factory: TestbedFactory, tmp_path: Path, durable: bool
) -> None:
    # mosquitto answers an MQTT 5 PUBLISH its ACL forbids with PUBACK 0x87.
    acl = tmp_path / "acl"
    acl.write_text("topic write telemetry/#\ntopic read #\n", encoding="utf-8")
    bed = testbed_factory(hubs=["primary"], broker_config={"primary": [f"acl_file {acl}"]})
    path = tmp_path / "outbox.sqlite"
    outbox = OutboxSettings(path=str(path), synchronous="NORMAL") if durable else OutboxSettings()
    log = EventLog()
    config = bed.client_config("refused-device", outbox=outbox)
    with DeviceClient(config, on_event=log) as client:
        before = client.publish("telemetry/a", "1")
        refused = client.publish("forbidden/a", "2")
        after = client.publish("telemetry/a", "3")
        after.wait(5)
        before.wait(5)
        with pytest.raises(PublishRejected) as caught:
            refused.wait(5)
        metrics = client.metrics()
    error = caught.value
    assert (error.hub, error.topic, error.reason_code) == ("primary", "forbidden/a", 0x87)
    assert error.message_id == refused.message_id
    assert "refused" in str(error) and "Not authorized" in str(error)
    assert refused.error is error and not refused.acknowledged
    assert (metrics.rejected, metrics.acknowledged, metrics.queue_depth) == (1, 2, 0)
    (event,) = log.of(events.MessageRejected)
    assert event.message_id == refused.message_id  # type: ignore[attr-defined]
    assert "0x87 Not authorized" in event.describe()
    if durable:  # refused means decided: it is not sent again after a restart either
        reopened = SqliteOutbox(path, max_messages=10, max_bytes=10_000)
        try:
            assert reopened.take_unsent(10) == []
        finally:
            reopened.close()

"""Identity on the recovery path, end to end against real mosquitto hubs.

Credentials are asked for before every attempt, renewed before they expire
(make before break, nothing lost, no backoff), asked for again when a hub
refuses them, and may differ per hub. Secrets never reach a log line, an event
or an error.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from pathlib import Path

import pytest

from device_sdk import Credentials, DeviceClient, events
from device_sdk.config import HubEndpoint
from device_sdk.errors import PermanentRefusal
from device_sdk.identity import CallableCredentials, Identity, X509Files
from device_sdk.status import write_status
from device_sdk.testbed import Testbed
from device_sdk.testbed.pytest_plugin import TestbedFactory
from tests.integration.support import (
    EventLog,
    SteadyPublisher,
    assert_nothing_lost,
    collectors_for,
)

pytestmark = pytest.mark.integration


class TokenSource:
    """Mints ``token-<n>`` valid for ``ttl`` s, renewed ``margin`` s before it expires."""

    def __init__(self, *, ttl: float = 1e6, margin: float = 0.0, prefix: str = "token") -> None:
        self.ttl, self.margin, self.prefix = ttl, margin, prefix
        self.minted: list[str] = []
        self.refusals_seen = 0
        self._lock = threading.Lock()

    def __call__(self, _hub: HubEndpoint, after_refusal: bool) -> Identity:
        with self._lock:
            self.refusals_seen += after_refusal
            token = f"{self.prefix}-{len(self.minted)}-Zq8vX2"
            self.minted.append(token)
        now = time.time()
        renew_at = now + self.ttl - self.margin if self.margin else None
        return Identity(
            username="device", password=token, expires_at=now + self.ttl, renew_at=renew_at
        )


def test_a_short_lived_token_is_renewed_before_expiry_without_loss_or_backoff(
    testbed: Testbed,
) -> None:
    collectors = collectors_for(testbed)
    log = EventLog()
    tokens = TokenSource(ttl=1.5, margin=0.9)
    config = testbed.client_config("renewing", credentials=CallableCredentials(tokens))
    with DeviceClient(config, on_event=log) as client:
        publisher = SteadyPublisher(client, rate=100.0)
        with publisher.running():
            deadline = time.monotonic() + 10.0
            while len(log.of(events.CredentialsRenewed)) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
        assert_nothing_lost(publisher, *collectors)
        metrics = client.metrics()
    assert len(log.of(events.CredentialsRenewed)) >= 3
    assert metrics.credential_renewals >= 3
    # Planned, not a failure: one attempt, one connect, no disconnects, no failover.
    assert (metrics.attempts, metrics.connects, metrics.failovers) == (1, 1, 0)
    assert not log.of(events.Disconnected) and not log.of(events.AttemptFailed)
    broker = testbed.hub("primary").broker
    assert len(broker.clients_connected()) >= 4  # the first CONNECT and one per renewal


def test_a_refused_token_is_renewed_and_retried_not_shunned(
    testbed_factory: TestbedFactory,
) -> None:
    # The hub only knows the second token: the first is refused as "not authorized",
    # as a token that expired during an outage is. The device asks for a fresh one
    # and is in within the normal backoff, not after the 30 s permanent penalty.
    bed = testbed_factory(hubs=("primary",), users={"primary": {"device": "token-1-Zq8vX2"}})
    log = EventLog()
    tokens = TokenSource()
    config = bed.client_config("refused-once", credentials=CallableCredentials(tokens))
    started = time.monotonic()
    with DeviceClient(config, on_event=log) as client:
        client.connect(timeout=5.0)
        took = time.monotonic() - started
        metrics = client.metrics()
    assert took < 2.0, f"connected after {took:.1f} s"
    assert tokens.refusals_seen == 1 and tokens.minted[:2] == ["token-0-Zq8vX2", "token-1-Zq8vX2"]
    failed = log.of(events.AttemptFailed)
    assert len(failed) == 1 and isinstance(failed[0].error, PermanentRefusal)  # type: ignore[attr-defined]
    assert metrics.attempts == 2 and metrics.failovers == 0


def test_a_refusal_that_persists_after_a_fresh_token_shuns_the_hub(
    testbed_factory: TestbedFactory,
) -> None:
    bed = testbed_factory(users={"primary": {"device": "never-minted"}})
    log = EventLog()
    tokens = TokenSource()
    config = bed.client_config("refused-twice", credentials=CallableCredentials(tokens))
    with DeviceClient(config, on_event=log) as client:
        client.connect(timeout=5.0)
        metrics = client.metrics()
    assert metrics.current_hub == "secondary"
    primary_failures = [e for e in log.of(events.AttemptFailed) if e.hub == "primary"]  # type: ignore[attr-defined]
    assert len(primary_failures) == 2  # the token, then a fresh one: then shunned
    assert tokens.refusals_seen == 1


def test_fixed_credentials_that_are_refused_shun_the_hub_at_once(
    testbed_factory: TestbedFactory,
) -> None:
    bed = testbed_factory(users={"primary": {"device": "right"}})
    log = EventLog()
    config = bed.client_config("fixed", credentials=Credentials(username="device", password="bad"))
    with DeviceClient(config, on_event=log) as client:
        client.connect(timeout=5.0)
        assert client.metrics().current_hub == "secondary"
    assert len([e for e in log.of(events.AttemptFailed) if e.hub == "primary"]) == 1  # type: ignore[attr-defined]


def test_each_hub_gets_its_own_identity_across_a_failover(testbed_factory: TestbedFactory) -> None:
    bed = testbed_factory(
        users={"primary": {"dev@primary": "pw-primary"}, "secondary": {"dev@secondary": "pw-sec"}}
    )
    collectors = collectors_for(bed)
    log = EventLog()
    hubs = (
        dataclasses.replace(
            bed.endpoint("primary"),
            credentials=Credentials(username="dev@primary", password="pw-primary"),
            client_id="dev-1-primary",
        ),
        dataclasses.replace(
            bed.endpoint("secondary"),
            credentials=Credentials(username="dev@secondary", password="pw-sec"),
            client_id="dev-1-secondary",
        ),
    )
    config = dataclasses.replace(bed.client_config("dev-1"), hubs=hubs)
    with DeviceClient(config, on_event=log) as client:
        publisher = SteadyPublisher(client)
        with publisher.running():
            time.sleep(0.3)
            bed.hub("primary").broker.kill()
            log.wait_for(events.Connected, 5.0, hub="secondary")
            time.sleep(0.3)
        assert_nothing_lost(publisher, *collectors)
    seen = bed.hub("secondary").broker.clients_connected()
    device = [c for c in seen if c.client_id.startswith("dev-1")]
    assert device and all(
        (c.client_id, c.username) == ("dev-1-secondary", "dev@secondary") for c in device
    )


def test_a_rotated_client_certificate_is_used_on_the_next_attempt(
    testbed_factory: TestbedFactory, tmp_path: Path
) -> None:
    bed = testbed_factory(hubs=("primary",), client_certificates=True)
    cert_file, key_file = bed.device_certificate("device-gen-1", stem="device")
    log = EventLog()
    config = bed.client_config(
        "rotating", credentials=X509Files(cert_file=cert_file, key_file=key_file)
    )
    broker = bed.hub("primary").broker
    with DeviceClient(config, on_event=log) as client:
        client.connect(timeout=5.0)
        bed.device_certificate("device-gen-2", stem="device")  # rotated in place
        after = time.monotonic()
        broker.restart()
        log.wait_for(events.Connected, 10.0, after=after)
    names = [c.username for c in broker.clients_connected() if c.client_id == "rotating"]
    assert names[0] == "device-gen-1" and names[-1] == "device-gen-2", names


def test_no_secret_reaches_logs_events_errors_or_the_status_file(
    testbed_factory: TestbedFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Everything at DEBUG through a renewal, a failover and a refusal: no secret in it."""
    right, wrong = "pw-Ks93hQ-right", "pw-Ws71pL-wrong"
    bed = testbed_factory(users={"secondary": {"fallback": right}})
    tokens = TokenSource(ttl=1.2, margin=0.7)
    asked: list[bool] = []

    def fallback(_hub: HubEndpoint, after_refusal: bool) -> Identity:
        asked.append(after_refusal)
        return Identity(username="fallback", password=right if after_refusal else wrong)

    seen_events: list[events.Event] = []
    status_file = tmp_path / "status.json"
    hubs = (
        bed.endpoint("primary"),
        dataclasses.replace(bed.endpoint("secondary"), credentials=CallableCredentials(fallback)),
    )
    config = dataclasses.replace(
        bed.client_config("leak-check", credentials=CallableCredentials(tokens)), hubs=hubs
    )
    caplog.set_level(logging.DEBUG)
    with DeviceClient(config, on_event=seen_events.append) as client:
        client.connect(timeout=5.0)
        deadline = time.monotonic() + 5.0
        while client.metrics().credential_renewals < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        bed.hub("primary").broker.kill()
        deadline = time.monotonic() + 5.0
        while client.metrics().current_hub != "secondary" and time.monotonic() < deadline:
            time.sleep(0.05)
        metrics = client.metrics()
        write_status(status_file, metrics)
    assert metrics.credential_renewals >= 1 and metrics.current_hub == "secondary"
    assert asked[:2] == [False, True]  # refused once, then a fresh identity got in
    assert any(isinstance(e, events.AttemptFailed) for e in seen_events)
    secrets = [*tokens.minted, right, wrong]
    texts = [caplog.text, status_file.read_text(), repr(config), repr(metrics)]
    texts += [repr(e) + e.describe() for e in seen_events]
    texts += [repr(getattr(e, "error", "")) for e in seen_events]
    for secret in secrets:
        for text in texts:
            assert secret not in text, f"{secret} leaked into: {text[:300]}"


def test_a_refused_renewal_keeps_the_working_link_and_tries_again_later(
    testbed_factory: TestbedFactory,
) -> None:
    # The hub takes only the first token: every renewal is refused. The link it
    # replaces still works, so the device serves on it and retries later.
    bed = testbed_factory(hubs=("primary",), users={"primary": {"device": "token-0-Zq8vX2"}})
    collectors = collectors_for(bed)
    log = EventLog()
    tokens = TokenSource(ttl=5.0, margin=4.5)  # renew 0.5 s after connecting
    config = bed.client_config("renewal-refused", credentials=CallableCredentials(tokens))
    with DeviceClient(config, on_event=log) as client:
        publisher = SteadyPublisher(client)
        with publisher.running():
            log.wait_for(events.AttemptFailed, 5.0)
            time.sleep(1.5)
        assert_nothing_lost(publisher, *collectors)
        metrics = client.metrics()
    renewals = log.of(events.RenewingCredentials)
    assert 2 <= len(renewals) <= 4  # retried, but at least a second apart (not a hot loop)
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(renewals)]
    assert all(gap >= 0.9 for gap in gaps), gaps
    assert not log.of(events.Disconnected) and not log.of(events.CredentialsRenewed)
    assert (metrics.connects, metrics.disconnects, metrics.credential_renewals) == (1, 0, 0)


def test_a_certificate_near_its_expiry_is_announced_once(testbed_factory: TestbedFactory) -> None:
    bed = testbed_factory(hubs=("primary",), client_certificates=True)
    cert_file, key_file = bed.device_certificate("device-expiring")
    log = EventLog()
    # Warned a year ahead: the testbed's certificate is well inside that.
    credentials = X509Files(cert_file=cert_file, key_file=key_file, warn_before=366 * 86400.0)
    config = bed.client_config("expiring", credentials=credentials)
    with DeviceClient(config, on_event=log) as client:
        client.connect(timeout=5.0)
        warning = log.wait_for(events.CredentialExpiring, 3.0, hub="primary")
        time.sleep(0.3)
    assert isinstance(warning, events.CredentialExpiring)
    assert 0 < warning.seconds < 366 * 86400.0
    assert abs(warning.expires_at - time.time() - warning.seconds) < 5.0
    assert len(log.of(events.CredentialExpiring)) == 1
    quiet = X509Files(cert_file=cert_file, key_file=key_file, warn_before=60.0)
    with DeviceClient(bed.client_config("quiet", credentials=quiet), on_event=log) as client:
        client.connect(timeout=5.0)
        time.sleep(0.3)
    assert len(log.of(events.CredentialExpiring)) == 1  # far from expiry: no warning

"""A device on an IoT-Hub-like front: real TLS, real SAS tokens, real mosquitto behind it.

The front drops a link the moment its token expires and refuses an expired
token with CONNACK 5, as Azure IoT Hub does. Against it, a device renews before
expiry without a gap, and a token that expired during an outage costs one
refused attempt and a fresh token, not the permanent penalty.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from device_sdk import DeviceClient, events
from device_sdk.config import HubEndpoint, TlsSettings
from device_sdk.dialects.azure import azure_client_config, azure_hub, azure_sas_credentials
from device_sdk.errors import PermanentRefusal
from device_sdk.identity import CallableCredentials, Identity
from device_sdk.identity.sas import sas_token
from device_sdk.testbed import CertificateAuthority, IotHubFront, Testbed
from device_sdk.testbed.bed import FAST_FAILOVER, FAST_LIVENESS, FAST_RETRY
from device_sdk.testbed.pki import ServerCertificateFiles
from device_sdk.testbed.pytest_plugin import TestbedFactory
from tests.integration.support import EventLog, SteadyPublisher, assert_nothing_lost, collectors_for

pytestmark = pytest.mark.integration

HUB_HOST = "iothub-a.hubs.device-sdk.test"
DEVICE = "sensor-7"
KEY = base64.b64encode(b"device-key-for-the-iot-hub-test!").decode()


def start_front(bed: Testbed, files: ServerCertificateFiles, port: int = 0) -> IotHubFront:
    broker = bed.hub("primary").broker
    return IotHubFront(
        hub_host=HUB_HOST,
        upstream=(broker.host, broker.port),
        device_keys={DEVICE: KEY},
        server_cert_file=files.cert_file,
        server_key_file=files.key_file,
        listen_port=port,
    ).start()


@pytest.fixture
def front(
    testbed_factory: TestbedFactory, tmp_path: Path
) -> Iterator[tuple[Testbed, IotHubFront, str, ServerCertificateFiles]]:
    bed = testbed_factory(hubs=("primary",))
    ca = CertificateAuthority.create()
    ca_file = str(ca.write_to(tmp_path))
    files = ca.issue_server_certificate([HUB_HOST]).write_to(tmp_path, stem="iothub")
    running = start_front(bed, files)
    try:
        assert bed.dns is not None
        bed.dns.set_address(HUB_HOST, ["127.0.0.1"], ttl=1)
        yield bed, running, ca_file, files
    finally:
        running.stop()


def hub_for(front: IotHubFront, ca_file: str) -> HubEndpoint:
    return azure_hub("iothub", HUB_HOST, port=front.port, tls=TlsSettings(ca_file=ca_file))


def test_sas_tokens_are_renewed_before_the_hub_drops_them(
    front: tuple[Testbed, IotHubFront, str, ServerCertificateFiles],
) -> None:
    bed, iothub, ca_file, _files = front
    collectors = collectors_for(bed)
    log = EventLog()
    credentials = azure_sas_credentials(key=KEY, ttl=3, renew_margin=1.5)
    config = azure_client_config(
        DEVICE,
        (hub_for(iothub, ca_file),),
        credentials,
        dns=bed.dns_settings(),
        retry=FAST_RETRY,
        failover=FAST_FAILOVER,
        liveness=FAST_LIVENESS,
    )
    with DeviceClient(config, on_event=log) as client:
        publisher = SteadyPublisher(client)
        with publisher.running():
            time.sleep(5.0)  # more than a token's whole life, twice over its renewal time
        assert_nothing_lost(publisher, *collectors)
        metrics = client.metrics()
    assert not iothub.expired_drops, "the hub had to drop an expired token"
    assert metrics.credential_renewals >= 2 and metrics.disconnects == 0
    assert len(iothub.accepted) == 1 + metrics.credential_renewals
    assert all(a.auth == "sas" and a.device_id == DEVICE for a in iothub.accepted)
    assert not log.of(events.AttemptFailed) and not iothub.refused


class CachingTokenSource:
    """A token source that does not know its tokens' expiry, as many JWT helpers do:
    it mints a 2 s token once and only fetches another when the hub refused it."""

    def __init__(self) -> None:
        self.fetches = 0
        self.token = self._mint(2)

    def _mint(self, ttl: int) -> str:
        self.fetches += 1
        resource = f"{HUB_HOST}/devices/{DEVICE}"
        return sas_token(resource, base64.b64decode(KEY), int(time.time()) + ttl)

    def __call__(self, _hub: HubEndpoint, after_refusal: bool) -> Identity:
        if after_refusal:
            self.token = self._mint(60)  # the fresh one outlives the test
        return Identity(password=self.token)


def test_a_token_that_expired_during_an_outage_costs_one_refusal_not_the_penalty(
    front: tuple[Testbed, IotHubFront, str, ServerCertificateFiles],
) -> None:
    bed, iothub, ca_file, files = front
    collectors = collectors_for(bed)
    log = EventLog()
    tokens = CachingTokenSource()
    config = azure_client_config(
        DEVICE,
        (hub_for(iothub, ca_file),),
        CallableCredentials(tokens),
        dns=bed.dns_settings(),
        retry=FAST_RETRY,
        failover=FAST_FAILOVER,  # permanent_penalty_seconds=30: far beyond the bound below
        liveness=FAST_LIVENESS,
    )
    with DeviceClient(config, on_event=log) as client:
        client.connect(timeout=5.0)
        publisher = SteadyPublisher(client)
        with publisher.running():
            time.sleep(0.3)
            port = iothub.port
            iothub.stop()  # the outage: nothing answers on the hub's port
            time.sleep(2.5)  # the 2 s token expires during it
            restarted = time.monotonic()
            again = start_front(bed, files, port)
            try:
                back = log.wait_for(events.Connected, 5.0, after=restarted)
                time.sleep(0.3)
            except BaseException:
                again.stop()
                raise
        try:  # the hub stays up until every message is acknowledged
            assert_nothing_lost(publisher, *collectors)
            refused_codes = [r.return_code for r in again.refused]
        finally:
            again.stop()
    took = back.at - restarted
    assert took < 2.0, f"back {took:.2f} s after the hub returned"
    failed = log.of(events.AttemptFailed)
    refusals = [e for e in failed if isinstance(e.error, PermanentRefusal)]  # type: ignore[attr-defined]
    assert len(refusals) == 1, failed
    assert refused_codes == [5]
    assert tokens.fetches == 2  # the first token, and one fresh one after the refusal

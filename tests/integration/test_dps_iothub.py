"""DPS and IoT Hub together: a hub that refuses a device even with a fresh token
sends it back to DPS, which assigns it elsewhere; nothing published is lost.

Real parts throughout: the DPS-like HTTPS service, two IoT-Hub-like TLS fronts
checking SAS tokens, each in front of its own mosquitto, and the testbed's DNS.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from device_sdk import DeviceClient, events
from device_sdk.config import HubEndpoint, TlsSettings
from device_sdk.dialects.azure import azure_sas_credentials
from device_sdk.errors import PermanentRefusal
from device_sdk.provisioning import DpsSettings
from device_sdk.testbed import CertificateAuthority, IotHubFront, Testbed
from device_sdk.testbed.bed import FAST_FAILOVER
from device_sdk.testbed.dps_service import DpsService, Enrollment
from device_sdk.testbed.ports import pick_free_port, pick_free_ports
from tests.integration.support import EventLog, SteadyPublisher, assert_nothing_lost, collectors_for

pytestmark = pytest.mark.integration

SCOPE = "0ne00IOT"
RID = "thermo-12"
DPS_NAME = "dps.device-sdk.test"
HOSTS = {"huba": "iothub-a.device-sdk.test", "hubb": "iothub-b.device-sdk.test"}
FRONT_IPS = {"huba": "127.0.0.10", "hubb": "127.0.0.11"}


@dataclasses.dataclass
class Rig:
    bed: Testbed
    dps: DpsService
    fronts: dict[str, IotHubFront]
    settings: DpsSettings
    key: str


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    key = base64.b64encode(os.urandom(32)).decode()
    with Testbed(hubs=("huba", "hubb"), work_dir=tmp_path / "bed") as bed:
        assert bed.dns is not None
        ca = CertificateAuthority.create()
        ca_file = str(ca.write_to(tmp_path))
        files = ca.issue_server_certificate(list(HOSTS.values())).write_to(tmp_path, stem="hubs")
        (port,) = pick_free_ports(1, list(FRONT_IPS.values()))
        fronts: dict[str, IotHubFront] = {}
        try:
            for hub, host in HOSTS.items():
                broker = bed.hub(hub).broker
                fronts[hub] = IotHubFront(
                    hub_host=host,
                    upstream=(broker.host, broker.port),
                    device_keys={RID: key},
                    server_cert_file=files.cert_file,
                    server_key_file=files.key_file,
                    listen_host=FRONT_IPS[hub],
                    listen_port=port,
                ).start()
                bed.dns.set_address(host, [FRONT_IPS[hub]], ttl=1)
            bed.dns.set_address(DPS_NAME, ["127.0.0.1"], ttl=1)
            enrollment = Enrollment(registration_id=RID, hub_fqdn=HOSTS["huba"], sas_key=key)
            with DpsService(
                ca=ca, id_scope=SCOPE, enrollments=[enrollment], server_name=DPS_NAME
            ) as dps:
                settings = DpsSettings(
                    id_scope=SCOPE,
                    registration_id=RID,
                    endpoint=DPS_NAME,
                    port=dps.port,
                    ca_file=ca_file,
                    sas_key=key,
                    state_path=str(tmp_path / "state" / "dps.json"),
                    timeout=3.0,
                    poll_interval=0.05,
                    backoff_initial=0.1,
                    backoff_cap=0.5,
                    hub_port=port,
                    hub_tls=TlsSettings(ca_file=ca_file),
                    allowed_hubs=("*.device-sdk.test",),
                )
                yield Rig(bed, dps, fronts, settings, key)
        finally:
            for front in fronts.values():
                front.stop()


def test_a_hub_that_refuses_a_fresh_token_sends_the_device_back_to_dps(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="device_sdk")
    collectors = collectors_for(rig.bed)
    log = EventLog()
    placeholder = HubEndpoint(
        name="unprovisioned", fqdn="127.0.0.1", port=pick_free_port(("127.0.0.1",)), tls=None
    )
    config = dataclasses.replace(
        rig.bed.client_config(RID),
        hubs=(placeholder,),
        dps=rig.settings,
        mqtt_version="3.1.1",  # IoT Hub's
        credentials=azure_sas_credentials(key=rig.key),
        # A long streak before failing over, so it is the refusal of a fresh token,
        # not the failure count, that sends the device back to DPS.
        failover=dataclasses.replace(FAST_FAILOVER, failover_after_failures=10),
    )
    with DeviceClient(config, on_event=log) as client:
        client.connect(timeout=10.0)
        first = log.wait_for(events.Provisioned, 5.0)
        assert isinstance(first, events.Provisioned) and first.fqdn == HOSTS["huba"]
        publisher = SteadyPublisher(client)
        with publisher.running():
            log.wait_for(events.FirstAck, 5.0)
            time.sleep(0.5)
            # The operator moves the device: hub A forgets it, DPS names hub B.
            rig.dps.reassign(RID, HOSTS["hubb"])
            rig.fronts["huba"].remove_device(RID)
            rig.fronts["huba"].disconnect_device(RID)
            moved = log.wait_for(events.Provisioned, 10.0, fqdn=HOSTS["hubb"])
            assert isinstance(moved, events.Provisioned)
            log.wait_for(events.Connected, 10.0, hub=moved.hub)
            log.wait_for(events.FirstAck, 5.0, hub=moved.hub)
            time.sleep(0.5)
        assert_nothing_lost(publisher, *collectors)
    refusals = [
        e
        for e in log.of(events.AttemptFailed)
        if isinstance(e.error, PermanentRefusal)  # type: ignore[attr-defined]
    ]
    assert len(refusals) == 2, refusals  # the old token, then a fresh one: then DPS
    # The second refusal asked DPS again before the machine moved on (which would also ask).
    assert "dps-iothub-a refused a fresh identity" in caplog.text
    assert [r.return_code for r in rig.fronts["huba"].refused] == [5, 5]
    assert rig.dps.registrations == 2
    assert rig.fronts["hubb"].accepted and rig.fronts["hubb"].accepted[-1].device_id == RID

"""DPS against the real DPS-like service and real mosquitto hubs: provisioned to a hub,
kept across a restart, re-provisioned to another hub on failover with nothing lost,
refusals and throttling seen and survived."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import itertools
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from device_sdk import DeviceClient, events
from device_sdk.adapters.dps_http import MAX_RESPONSE_BYTES, ProvisioningThrottled, register
from device_sdk.adapters.resolver import FreshResolver
from device_sdk.config import ClientConfig, HubEndpoint
from device_sdk.errors import (
    NotConnected,
    ProvisioningFailed,
    ProvisioningRefused,
    ProvisioningUnavailable,
)
from device_sdk.provisioning import DpsSettings
from device_sdk.testbed import CertificateAuthority, Testbed
from device_sdk.testbed.dps_service import DpsService, Enrollment
from device_sdk.testbed.ports import pick_free_port

from .support import TOPIC, EventLog, SteadyPublisher, assert_nothing_lost, mute_listener

pytestmark = pytest.mark.integration

SCOPE = "0ne00DPS"
RID = "device-7"
DPS_NAME = "dps.device-sdk.test"


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


@dataclasses.dataclass
class Rig:
    bed: Testbed
    dps: DpsService
    dps_ca: CertificateAuthority
    ca_file: str
    key: str
    state_path: Path
    placeholder: HubEndpoint

    def fqdn(self, hub: str) -> str:
        return self.bed.hub(hub).fqdn

    def config(self, **dps_overrides: object) -> ClientConfig:
        settings = DpsSettings(
            id_scope=SCOPE,
            registration_id=RID,
            endpoint=DPS_NAME,
            port=self.dps.port,
            ca_file=self.ca_file,
            sas_key=self.key,
            state_path=str(self.state_path),
            timeout=3.0,
            poll_interval=0.05,
            backoff_initial=0.1,
            backoff_cap=0.5,
            hub_port=self.bed.hub("huba").broker.port,
            hub_tls=None,  # the testbed's plain listeners
            allowed_hubs=("*.hubs.device-sdk.test",),
        )
        settings = dataclasses.replace(settings, **dps_overrides)
        base = self.bed.client_config("dps-device")
        # The configured hub is only a placeholder: a loopback port nobody listens on.
        return dataclasses.replace(base, hubs=(self.placeholder,), dps=settings)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with Testbed(hubs=("huba", "hubb"), work_dir=tmp_path / "bed") as bed:
        assert bed.dns is not None
        bed.dns.set_address(DPS_NAME, ["127.0.0.1"], ttl=1)
        ca = CertificateAuthority.create()
        ca_file = str(ca.write_to(tmp_path))
        key = new_key()
        enrollment = Enrollment(registration_id=RID, hub_fqdn=bed.hub("huba").fqdn, sas_key=key)
        with DpsService(
            ca=ca, id_scope=SCOPE, enrollments=[enrollment], server_name=DPS_NAME
        ) as dps:
            closed = pick_free_port(("127.0.0.1",))
            placeholder = HubEndpoint(name="unprovisioned", fqdn="127.0.0.1", port=closed, tls=None)
            yield Rig(bed, dps, ca, ca_file, key, tmp_path / "state" / "dps.json", placeholder)


def publish_and_check(client: DeviceClient, rig: Rig, hub: str, first: int, count: int) -> None:
    collector = rig.bed.collector(hub, TOPIC)
    handles = [client.publish(TOPIC, f"{first + i}:x") for i in range(count)]
    for handle in handles:
        handle.wait(5.0)
    assert collector.wait_for(set(range(first, first + count)), 5.0)


def test_provisioned_to_the_assigned_hub_and_kept_across_a_restart(rig: Rig) -> None:
    log = EventLog()
    with DeviceClient(rig.config(), on_event=log) as client:
        client.connect(timeout=10)
        provisioned = log.wait_for(events.Provisioned, 5.0)
        assert isinstance(provisioned, events.Provisioned)
        assert (provisioned.fqdn, provisioned.from_disk) == (rig.fqdn("huba"), False)
        assert provisioned.device_id == RID
        log.wait_for(events.Connected, 5.0, hub=provisioned.hub)
        assert log.of(events.Attempting)[0].hub != "unprovisioned"  # DPS came first
        publish_and_check(client, rig, "huba", 0, 20)
    assert rig.dps.registrations == 1
    kept = json.loads(rig.state_path.read_text())
    assert (kept["hub_fqdn"], kept["device_id"]) == (rig.fqdn("huba"), RID)
    assert rig.state_path.stat().st_mode & 0o777 == 0o600
    assert rig.state_path.parent.stat().st_mode & 0o777 == 0o700

    restarted = EventLog()
    with DeviceClient(rig.config(), on_event=restarted) as client:
        client.connect(timeout=10)
        again = restarted.wait_for(events.Provisioned, 5.0)
        assert isinstance(again, events.Provisioned) and again.from_disk
        restarted.wait_for(events.Connected, 5.0, hub=again.hub)
        publish_and_check(client, rig, "huba", 100, 20)
    assert rig.dps.registrations == 1, "the kept assignment must spare DPS a registration"


def test_reassigned_and_failed_over_to_the_new_hub_with_nothing_lost(rig: Rig) -> None:
    log = EventLog()
    collectors = [rig.bed.collector(name, TOPIC) for name in ("huba", "hubb")]
    with DeviceClient(rig.config(), on_event=log) as client:
        client.connect(timeout=10)
        log.wait_for(events.Connected, 5.0, hub="dps-huba")
        publisher = SteadyPublisher(client, rate=100.0, limit=400)
        with publisher.running():
            time.sleep(0.5)  # let some messages reach hub A first
            rig.dps.reassign(RID, rig.fqdn("hubb"))
            stopped = time.monotonic()
            rig.bed.hub("huba").broker.stop()
            log.wait_for(events.Connected, 15.0, hub="dps-hubb", after=stopped)
            time.sleep(0.5)  # and some after the move
        assert_nothing_lost(publisher, *collectors)
    assert rig.dps.registrations == 2
    moved = [e for e in log.of(events.Provisioned) if isinstance(e, events.Provisioned)]
    assert [(e.fqdn, e.from_disk) for e in moved] == [
        (rig.fqdn("huba"), False),
        (rig.fqdn("hubb"), False),
    ]
    assert json.loads(rig.state_path.read_text())["hub_fqdn"] == rig.fqdn("hubb")
    # Every copy of a message, on either hub, carries the same message id.
    for collector in collectors:
        for seq, ids in collector.message_ids().items():
            assert len(ids) == 1, f"message {seq} arrived with ids {ids}"
    ids_a, ids_b = (c.message_ids() for c in collectors)
    for seq in set(ids_a) & set(ids_b):
        assert ids_a[seq] == ids_b[seq]


def test_a_refused_registration_is_reported_and_the_device_serves_on_its_last_hub(
    rig: Rig,
) -> None:
    with DeviceClient(rig.config()) as client:
        client.connect(timeout=10)
    rig.dps.set_sas_key(RID, new_key())  # the device's key no longer attests it
    log = EventLog()
    with DeviceClient(rig.config(), on_event=log) as client:
        client.connect(timeout=10)
        log.wait_for(events.Connected, 5.0, hub="dps-huba")
        broker = rig.bed.hub("huba").broker
        broker.stop()
        problem = log.wait_for(events.ProvisioningProblem, 10.0)
        assert isinstance(problem, events.ProvisioningProblem)
        assert isinstance(problem.error, ProvisioningRefused)
        assert rig.key not in str(problem.error)
        back = time.monotonic()
        broker.start()
        log.wait_for(events.Connected, 10.0, hub="dps-huba", after=back)
        publish_and_check(client, rig, "huba", 0, 20)
    assert rig.dps.registrations == 1
    assert json.loads(rig.state_path.read_text())["hub_fqdn"] == rig.fqdn("huba")


def test_a_throttling_dps_is_asked_again_only_after_its_retry_after(rig: Rig) -> None:
    rig.dps.throttle(after=0, retry_after=1)
    log = EventLog()
    client = DeviceClient(rig.config(backoff_cap=2.0), on_event=log)
    try:
        with pytest.raises(NotConnected):  # throttled at start: the placeholder refuses
            client.connect(timeout=0.2)
        deadline = time.monotonic() + 10.0
        while len(rig.dps.register_requests(RID)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        throttled = [r for r in rig.dps.register_requests(RID) if r.status == 429]
        assert len(throttled) >= 3, rig.dps.register_requests(RID)
        gaps = [b.at - a.at for a, b in itertools.pairwise(throttled)]
        assert all(gap >= 0.95 for gap in gaps), f"Retry-After not honoured: {gaps}"
        problems = [e for e in log.of(events.ProvisioningProblem)]
        assert problems and all(
            isinstance(e, events.ProvisioningProblem) and isinstance(e.error, ProvisioningThrottled)
            for e in problems
        )
        rig.dps.throttle(after=None)
        log.wait_for(events.Connected, 10.0, hub="dps-huba")
    finally:
        client.close()
    assert rig.dps.registrations == 1


# --------------------------------------------------------------------------- one run, bounded


def run_settings(rig: Rig, **overrides: object) -> DpsSettings:
    config = rig.config(**overrides)
    assert config.dps is not None
    return config.dps


def resolver_for(rig: Rig) -> FreshResolver:
    return FreshResolver(rig.bed.dns_settings())


def test_an_x509_device_is_known_by_its_certificate(rig: Rig, tmp_path: Path) -> None:
    ca = rig.dps_ca
    good = ca.issue_client_certificate("x509-dev").write_to(tmp_path, stem="good")
    other = ca.issue_client_certificate("someone-else").write_to(tmp_path, stem="other")
    rig.dps.enroll(Enrollment(registration_id="x509-dev", hub_fqdn=rig.fqdn("hubb")))
    x509 = {"sas_key": None, "registration_id": "x509-dev"}
    settings = run_settings(rig, cert_file=str(good.cert_file), key_file=str(good.key_file), **x509)
    deadline = time.monotonic() + 3.0
    assignment = register(settings, deadline=deadline, resolver=resolver_for(rig))
    assert (assignment.hub_fqdn, assignment.device_id) == (rig.fqdn("hubb"), "x509-dev")
    impostor = dataclasses.replace(
        settings, cert_file=str(other.cert_file), key_file=str(other.key_file)
    )
    with pytest.raises(ProvisioningRefused):
        register(impostor, deadline=time.monotonic() + 3.0, resolver=resolver_for(rig))


def test_a_rotated_key_file_is_read_again_on_every_run(rig: Rig, tmp_path: Path) -> None:
    key_file = tmp_path / "dps.key"
    key_file.write_text(rig.key + "\n")
    key_file.chmod(0o600)
    settings = run_settings(rig, sas_key=None, sas_key_file=str(key_file))
    register(settings, deadline=time.monotonic() + 3.0, resolver=resolver_for(rig))
    rotated = new_key()
    rig.dps.set_sas_key(RID, rotated)
    with pytest.raises(ProvisioningRefused) as refused:
        register(settings, deadline=time.monotonic() + 3.0, resolver=resolver_for(rig))
    assert rig.key not in str(refused.value)
    key_file.write_text(rotated)
    register(settings, deadline=time.monotonic() + 3.0, resolver=resolver_for(rig))


def test_a_dps_that_never_answers_costs_the_run_its_deadline(rig: Rig) -> None:
    with mute_listener() as port:
        settings = run_settings(rig, endpoint="127.0.0.1", port=port, timeout=0.5)
        with pytest.raises(ProvisioningUnavailable, match=r"within 0\.5 s"):
            register(settings, deadline=time.monotonic() + 0.5)


def test_close_cuts_a_first_provisioning_short(rig: Rig) -> None:
    with mute_listener() as port:
        config = rig.config(endpoint="127.0.0.1", port=port, timeout=60.0)
        client = DeviceClient(config)
        with pytest.raises(NotConnected):
            client.connect(timeout=0.2)
        started = time.monotonic()
        client.close()
        # Far below the run's own 60 s deadline: close() cancelled the handshake's wait.
        assert time.monotonic() - started < 10.0


@pytest.mark.parametrize(
    ("head", "body"),
    [
        (b"HTTP/1.1 202 Accepted\r\nContent-Length: 99999999\r\n", b"{}"),
        (b"HTTP/1.1 202 Accepted\r\nConnection: close\r\n", b"[" * (MAX_RESPONSE_BYTES + 10)),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n", b"{nope}\n"),
    ],
)
def test_oversized_or_malformed_answers_fail_the_run(
    rig: Rig, tmp_path: Path, head: bytes, body: bytes
) -> None:
    files = rig.dps_ca.issue_server_certificate([DPS_NAME]).write_to(tmp_path, stem="rogue")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.cert_file, files.key_file)
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(5.0)

        def answer_once() -> None:
            with contextlib.suppress(OSError):
                conn, _ = server.accept()
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.settimeout(5.0)
                    request = b""
                    # The whole request (its JSON body ends it), bounded: answering before
                    # it is read would reset the connection under the client's feet.
                    for _ in range(20):
                        request += tls.recv(65536)
                        if request.endswith(b"}"):
                            break
                    tls.sendall(head + b"\r\n" + body)

        thread = threading.Thread(target=answer_once, daemon=True)
        thread.start()
        settings = run_settings(rig, port=server.getsockname()[1])
        with pytest.raises(ProvisioningFailed):
            register(settings, deadline=time.monotonic() + 3.0, resolver=resolver_for(rig))
        thread.join(5.0)


def test_hostile_clients_leave_the_service_serving(rig: Rig) -> None:
    port = rig.dps.port
    with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\n\r\n" + b"\x00" * 1000)  # not even TLS
    context = rig.dps_ca.client_ssl_context()
    requests = [
        b"PUT /" + SCOPE.encode() + b"/registrations/" + RID.encode() + b"/register HTTP/1.1\r\n"
        b"Host: x\r\nContent-Length: 999999999\r\n\r\n",
        b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PUT /" + SCOPE.encode() + b"/registrations/" + RID.encode() + b"/register HTTP/1.1\r\n"
        b"Host: x\r\nContent-Length: 5\r\nAuthorization: SharedAccessSignature sr=&sig=&se=x\r\n"
        b"\r\n[[[[[",
        b"\xff\xfe garbage\r\n\r\n",
    ]
    for request in requests:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=2) as sock,
            context.wrap_socket(sock, server_hostname=DPS_NAME) as tls,
        ):
            tls.sendall(request)
            status = tls.recv(65536)[:12]
        # Refused as a client error; a request line that is not HTTP/1.x gets http.server's
        # bare error page (HTTP/0.9 has no status line).
        assert status[:10] == b"HTTP/1.1 4" or status.startswith(b"<!DOCTYPE"), status
    assignment = register(
        run_settings(rig), deadline=time.monotonic() + 3.0, resolver=resolver_for(rig)
    )
    assert assignment.hub_fqdn == rig.fqdn("huba")
    started = time.monotonic()
    rig.dps.stop()
    assert time.monotonic() - started < 10.0

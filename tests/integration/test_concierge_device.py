"""A device and its concierge, end to end: the real reference service on loopback.

The concierge adds speed and control, and is never a single point of failure:
an operator's switch moves every device within one poll interval without
losing a message, a concierge that is down or hangs changes nothing about
failover, and a bad document is refused with a typed error and never moves a
device anywhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import secrets
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_sdk import DeviceClient, events
from device_sdk.concierge.document import DocumentHub, EndpointDocument
from device_sdk.concierge.service import ConciergeService, ConciergeServiceConfig
from device_sdk.concierge.settings import ConciergeSettings
from device_sdk.concierge.signing import sign_document, write_keypair
from device_sdk.concierge.trust import ConciergeTrust
from device_sdk.errors import (
    BadSignature,
    DocumentExpired,
    DocumentRejected,
    HubNotAllowed,
    MalformedDocument,
    RollbackRejected,
    UnknownKey,
)
from device_sdk.testbed import DOMAIN, FaultProxy, Testbed
from device_sdk.testbed.proxy import ProxySpec
from device_sdk.testbed.pytest_plugin import TestbedFactory
from tests.integration.support import (
    EventLog,
    SteadyPublisher,
    assert_nothing_lost,
    collectors_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def bed(testbed_factory: TestbedFactory) -> Testbed:
    return testbed_factory(concierge=True)


def operator_switch(bed: Testbed, hub: str) -> None:
    """What `device-sdk concierge set-active` does: an authenticated POST."""
    assert bed.concierge is not None and bed.concierge_token_file is not None
    token = bed.concierge_token_file.read_text().strip()
    request = urllib.request.Request(
        f"{bed.concierge.url}/v1/active",
        data=f'{{"hub": "{hub}"}}'.encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def test_operator_switch_moves_every_device_within_a_poll_interval(bed: Testbed) -> None:
    collectors = collectors_for(bed)
    settings = bed.concierge_settings(poll_interval=1.0, poll_jitter=0.2)
    logs = [EventLog(), EventLog()]
    clients = [
        DeviceClient(bed.client_config(f"fleet-{n}", concierge=settings), on_event=log)
        for n, log in enumerate(logs)
    ]
    publishers = []
    try:
        for client in clients:
            client.connect(timeout=5)
            publishers.append(SteadyPublisher(client, rate=40))
        for publisher in publishers:
            publisher._thread.start()
        time.sleep(0.3)
        switched_at = time.monotonic()
        operator_switch(bed, "secondary")
        for log in logs:
            moved = log.wait_for(events.Connected, 3.0, hub="secondary", after=switched_at)
            assert moved.at - switched_at <= settings.poll_interval * 1.2 + 0.3
            assert log.of(events.Migrating), "moved by a migration, not by a failure"
            assert not log.of(events.Disconnected)  # make before break: no outage at all
        time.sleep(0.3)
    finally:
        for publisher in publishers:
            publisher._stop.set()
            publisher._thread.join(5)
    for publisher in publishers:
        assert_nothing_lost(publisher, *collectors)
    for client in clients:
        assert client.metrics().current_hub == "secondary"
        client.close()


def test_concierge_that_hangs_does_not_slow_failover(bed: Testbed) -> None:
    assert bed.concierge is not None
    host, port = bed.concierge.url.removeprefix("http://").rsplit(":", 1)
    with FaultProxy(ProxySpec(target_host=host, target_port=int(port))) as proxy:
        proxy.blackhole()  # accepts, then silence: the worst concierge there is
        url = f"http://{proxy.host}:{proxy.port}/v1/endpoint"
        settings = bed.concierge_settings(url=url, timeout=0.5)
        log = EventLog()
        config = bed.client_config("patient-device", concierge=settings)
        with DeviceClient(config, on_event=log) as client:
            killed_at = time.monotonic()
            bed.hub("primary").broker.kill()
            moved = log.wait_for(events.Connected, 3.0, hub="secondary", after=killed_at)
            client.publish("test/after", b"1").wait(5)
            problem = log.wait_for(events.ConciergeProblem, 3.0)
    # Recovery did not wait for the concierge: the fetch runs beside the attempts.
    assert moved.at - killed_at < settings.timeout
    assert not problem.security  # type: ignore[attr-defined]  # unavailable, not lying


def test_concierge_that_is_down_changes_nothing(bed: Testbed) -> None:
    assert bed.concierge is not None
    settings = bed.concierge_settings()
    bed.concierge.stop()
    log = EventLog()
    config = bed.client_config("alone-device", concierge=settings)
    started = time.monotonic()
    with DeviceClient(config, on_event=log) as client:
        # A down concierge never delays the device: not at start, not in failover.
        assert time.monotonic() - started < settings.timeout
        killed = time.monotonic()
        bed.hub("primary").broker.kill()
        connected = log.wait_for(events.Connected, 3.0, hub="secondary")
        assert connected.at - killed < settings.timeout
        client.publish("test/after", b"1").wait(5)
        problems = log.of(events.ConciergeProblem)
        metrics = client.metrics()
    assert all(isinstance(e, events.FailedOver) and "concierge" not in e.reason
               for e in log.of(events.FailedOver))  # fmt: skip
    assert len(problems) >= 2, problems  # asked at start and again in the recovery cycle
    assert not any(p.security for p in problems if isinstance(p, events.ConciergeProblem))
    assert not log.of(events.ConciergeUpdate)
    assert metrics.concierge_updates == 0 and metrics.concierge_rejections == 0
    assert metrics.current_hub == "secondary"


# --------------------------------------------------------------------------- lying concierges


class CraftedConcierge:
    """An HTTP server on loopback that serves whatever envelope the test sets."""

    def __init__(self) -> None:
        self.body = b""
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/endpoint"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> CraftedConcierge:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def crafted() -> Iterator[CraftedConcierge]:
    with CraftedConcierge() as server:
        yield server


KEY = Ed25519PrivateKey.generate()
OTHER_KEY = Ed25519PrivateKey.generate()


def document(
    bed: Testbed, *, active: str = "secondary", sequence: int = 10, **hubs: str
) -> EndpointDocument:
    now = int(time.time())
    names = {hub.name: hub.fqdn for hub in bed.hubs} | hubs
    return EndpointDocument(
        format_version=1,
        sequence=sequence,
        issued_at=now,
        expires_at=now + 60,
        scope=None,
        active_hub=active,
        hubs={
            name: DocumentHub(fqdn=fqdn, port=bed.hub("primary").broker.port, tls=False)
            for name, fqdn in names.items()
        },
    )


def trusting(bed: Testbed, crafted: CraftedConcierge, tmp_path: Path, **overrides: object):  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization

    raw = KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    settings = bed.concierge_settings(
        url=crafted.url,
        trust=ConciergeTrust(keys={"k1": raw}, allowed_hubs=(f"*.{DOMAIN}",)),
        state_file=str(tmp_path / "concierge.seq"),
        poll_interval=0.3,
    )
    return dataclasses.replace(settings, **overrides) if overrides else settings


def expired(doc: EndpointDocument) -> EndpointDocument:
    return dataclasses.replace(doc, issued_at=doc.issued_at - 7200, expires_at=doc.issued_at - 3600)


BAD_DOCUMENTS: list[tuple[str, Callable[[Testbed], bytes], type[DocumentRejected]]] = [
    ("wrong key", lambda bed: sign_document(document(bed), OTHER_KEY, "k1"), BadSignature),
    ("unknown kid", lambda bed: sign_document(document(bed), KEY, "k2"), UnknownKey),
    ("expired", lambda bed: sign_document(expired(document(bed)), KEY, "k1"), DocumentExpired),
    (
        "unlisted hub",
        lambda bed: sign_document(
            document(bed, active="evil", evil="evil.attacker.example"), KEY, "k1"
        ),
        HubNotAllowed,
    ),
    ("not json", lambda bed: b"{not json", MalformedDocument),
]


@pytest.mark.parametrize(
    ("make", "error_type"),
    [case[1:] for case in BAD_DOCUMENTS],
    ids=[case[0] for case in BAD_DOCUMENTS],
)
def test_bad_documents_are_refused_and_move_nobody(
    bed: Testbed,
    crafted: CraftedConcierge,
    tmp_path: Path,
    make: Callable[[Testbed], bytes],
    error_type: type[DocumentRejected],
) -> None:
    assert bed.dns is not None
    bed.dns.set_address("evil.attacker.example", [bed.hub("secondary").address])
    crafted.body = make(bed)
    collectors = collectors_for(bed)
    log = EventLog()
    config = bed.client_config("wary-device", concierge=trusting(bed, crafted, tmp_path))
    with DeviceClient(config, on_event=log) as client:
        publisher = SteadyPublisher(client)
        with publisher.running():
            problem = log.wait_for(events.ConciergeProblem, 10.0)
            time.sleep(0.5)  # a couple more polls: still refused, still publishing
        assert_nothing_lost(publisher, *collectors)
        assert client.metrics().current_hub == "primary"
        assert client.metrics().concierge_rejections >= 1
    assert isinstance(problem.error, error_type), problem  # type: ignore[attr-defined]
    assert problem.security  # type: ignore[attr-defined]
    dialled = {e.hub for e in log.items if isinstance(e, events.Connected | events.DialFailed)}
    assert dialled == {"primary"}


def test_replayed_document_is_refused_after_a_device_restart(
    bed: Testbed, crafted: CraftedConcierge, tmp_path: Path
) -> None:
    settings = trusting(bed, crafted, tmp_path)
    crafted.body = sign_document(document(bed, active="secondary", sequence=20), KEY, "k1")
    log = EventLog()
    with DeviceClient(bed.client_config("replay-device", concierge=settings), on_event=log):
        log.wait_for(events.ConciergeUpdate, 3.0, sequence=20)
        log.wait_for(events.Connected, 3.0, hub="secondary")
    # The device restarts; an attacker replays an older, validly signed document.
    crafted.body = sign_document(document(bed, active="primary", sequence=19), KEY, "k1")
    log = EventLog()
    config = bed.client_config("replay-device", hubs=["secondary", "primary"], concierge=settings)
    with DeviceClient(config, on_event=log) as client:
        problem = log.wait_for(events.ConciergeProblem, 3.0)
        assert client.metrics().current_hub == "secondary"
    assert isinstance(problem.error, RollbackRejected)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- DNS SRV


def test_srv_answer_orders_the_hubs_and_a_changed_answer_is_used_next(
    testbed: Testbed,
) -> None:
    from device_sdk import SrvSettings
    from device_sdk.adapters.srv import hub_name_for
    from device_sdk.testbed import SrvTarget

    assert testbed.dns is not None
    primary, secondary = testbed.hub("primary"), testbed.hub("secondary")
    port = primary.broker.port
    service = f"_mqtt._tcp.{DOMAIN}"
    testbed.dns.set_srv(
        service,
        [
            SrvTarget(priority=20, weight=1, port=port, target=secondary.fqdn),
            SrvTarget(priority=10, weight=1, port=port, target=primary.fqdn),
        ],
    )
    log = EventLog()
    config = testbed.client_config("srv-device", srv=SrvSettings(domain=DOMAIN, secure=False))
    with DeviceClient(config, on_event=log) as client:
        assert client.metrics().current_hub == hub_name_for(primary.fqdn, port)
        # The operator drains the primary in DNS, then it dies: no attempt goes back to it.
        testbed.dns.set_srv(
            service, [SrvTarget(priority=10, weight=1, port=port, target=secondary.fqdn)]
        )
        changed_at = time.monotonic()
        primary.broker.kill()
        log.wait_for(events.Connected, 3.0, hub=hub_name_for(secondary.fqdn, port))
        client.publish("test/after", b"1").wait(5)
    dialled = [
        e.hub
        for e in log.items
        if isinstance(e, events.DialFailed | events.Connected) and e.at >= changed_at
    ]
    assert dialled == [hub_name_for(secondary.fqdn, port)]
    assert testbed.dns.queries(name=service, rdtype="SRV")


# --------------------------------------------------------------------------- hub sets


@contextlib.contextmanager
def reference_concierge(
    tmp_path: Path, hubs: dict[str, DocumentHub], active: str
) -> Iterator[tuple[ConciergeService, str]]:
    """The real reference service naming ``hubs``; yields it and its public key to pin."""
    keys = write_keypair(tmp_path / "keys", "k1")
    token_file = tmp_path / "operator.token"
    token_file.write_text(secrets.token_urlsafe(24))
    config = ConciergeServiceConfig(
        state_file=tmp_path / "state.json",
        signing_key_file=keys.private_key_file,
        kid="k1",
        token_file=token_file,
        hubs=hubs,
        initial_active=active,
        ttl=60,
        port=0,
    )
    with ConciergeService(config) as service:
        yield service, keys.public_key


def test_a_document_whose_names_collide_with_the_devices_is_applied_safely(
    testbed: Testbed, tmp_path: Path
) -> None:
    # The document calls a hub elsewhere "primary" (the device's own name, so it
    # must be renamed) and also names a "c-primary": once, that gave two hubs called
    # c-primary and stopped the engine. Both places lead to the secondary broker.
    assert testbed.dns is not None
    secondary = testbed.hub("secondary")
    for place in ("other", "third"):
        testbed.dns.set_address(f"{place}.{DOMAIN}", [secondary.address], ttl=1)
    port = secondary.broker.port
    hubs = {
        "primary": DocumentHub(fqdn=f"other.{DOMAIN}", port=port, tls=False),
        "c-primary": DocumentHub(fqdn=f"third.{DOMAIN}", port=port, tls=False),
    }
    collectors = collectors_for(testbed)
    log = EventLog()
    with reference_concierge(tmp_path, hubs, active="primary") as (service, public_key):
        settings = ConciergeSettings(
            url=f"{service.url}/v1/endpoint",
            trust=ConciergeTrust(keys={"k1": public_key}, allowed_hubs=(f"*.{DOMAIN}",)),
            poll_interval=0.3,
            timeout=0.5,
            allow_plain_http=True,
            allow_plain_hubs=True,
        )
        config = testbed.client_config("collision-device", concierge=settings)
        with DeviceClient(config, on_event=log) as client:
            publisher = SteadyPublisher(client)
            with publisher.running():
                log.wait_for(events.Connected, 3.0, hub="c2-primary")
                time.sleep(0.7)  # a few more polls of the same document
            assert_nothing_lost(publisher, *collectors)
            assert client.metrics().current_hub == "c2-primary"
            assert client.metrics().engine_state != "failed"
    updates = log.of(events.ConciergeUpdate)
    assert len(updates) >= 2 and {u.active_hub for u in updates} == {"c2-primary"}  # type: ignore[attr-defined]
    assert not log.of(events.ConciergeProblem)
    assert not log.of(events.EngineFault)

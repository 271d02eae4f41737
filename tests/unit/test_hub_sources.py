"""The engine's side inputs: probes are spread, and hostile hub lists never break the machine."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_sdk.adapters.resolver import FreshResolver
from device_sdk.adapters.srv import SrvRecord, hubs_from_records
from device_sdk.concierge.document import DocumentHub, EndpointDocument
from device_sdk.concierge.fetch import ConciergeFetcher
from device_sdk.concierge.settings import ConciergeSettings
from device_sdk.concierge.signing import sign_document
from device_sdk.concierge.trust import ConciergeTrust
from device_sdk.config import ClientConfig, HubEndpoint, SrvSettings
from device_sdk.core import failover as fsm
from device_sdk.engine import hub_sources
from device_sdk.engine.hub_sources import PROBE_JITTER, HubSources, next_probe_at
from device_sdk.events import ConciergeProblem, ConciergeUpdate, Event
from device_sdk.metrics import MetricsRecorder


def test_probes_are_spread_over_the_jitter_band_around_the_interval() -> None:
    rng = random.Random(7)
    delays = [next_probe_at(100.0, 30.0, rng) - 100.0 for _ in range(2000)]
    low, high = 30.0 * (1 - PROBE_JITTER), 30.0 * (1 + PROBE_JITTER)
    assert all(low <= d <= high for d in delays)
    assert min(delays) < low + 1.0 and max(delays) > high - 1.0  # the whole band is used
    assert abs(sum(delays) / len(delays) - 30.0) < 1.0  # on average, the interval
    # 10 000 devices probing in the same second would be the stampede this prevents.
    per_second: dict[int, int] = {}
    for d in delays:
        per_second[int(d)] = per_second.get(int(d), 0) + 1
    assert max(per_second.values()) < len(delays) / 10


# --------------------------------------------------------------------------- hostile inputs
# Nothing a document or an SRV answer holds may raise on the engine thread: a bad one is
# reported and the device keeps its last hub list. Driven with the real failover machine.


class InlineSide:
    """Runs a side task at once on the calling thread (no network in these tests)."""

    def start(self, kind: str, work: Callable[[], object], done: Callable[[object], None]) -> bool:
        done(work())
        return True


KEY = Ed25519PrivateKey.generate()
OWN = (
    HubEndpoint(name="primary", fqdn="primary.example.com"),
    HubEndpoint(name="secondary", fqdn="secondary.example.com"),
)


def sources_for(config: ClientConfig) -> tuple[HubSources, fsm.FailoverMachine, list[Event]]:
    machine = fsm.FailoverMachine(config.hub_names, config.failover)
    machine.handle(fsm.Start(), 0.0)
    machine.handle(fsm.Connected(hub="primary"), 0.0)
    emitted: list[Event] = []
    sources = HubSources(
        config,
        machine=machine,
        resolver=FreshResolver(config.dns),
        rng=random.Random(1),
        side=InlineSide(),  # type: ignore[arg-type]
        metrics=MetricsRecorder(),
        emit=emitted.append,
        follow=lambda event: machine.handle(event, 1.0) and None,
    )
    return sources, machine, emitted


def concierge_config(tmp_path: Path) -> ClientConfig:
    public = KEY.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    settings = ConciergeSettings(
        url="https://concierge.example.com/v1/endpoint",
        trust=ConciergeTrust(keys={"k1": public}, allowed_hubs=("*.example.com",)),
        state_file=str(tmp_path / "concierge.seq"),
    )
    return ClientConfig(client_id="device", hubs=OWN, concierge=settings)


def serve(monkeypatch: pytest.MonkeyPatch, hubs: dict[str, str], active: str, tls: bool) -> None:
    now = int(time.time())
    doc = EndpointDocument(
        format_version=1,
        sequence=3,
        issued_at=now,
        expires_at=now + 60,
        scope=None,
        active_hub=active,
        hubs={name: DocumentHub(fqdn=fqdn, port=8883, tls=tls) for name, fqdn in hubs.items()},
    )
    raw = sign_document(doc, KEY, "k1")
    monkeypatch.setattr(ConciergeFetcher, "fetch", lambda self: raw)


def test_a_document_with_colliding_names_moves_the_device_without_breaking_the_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sources, machine, emitted = sources_for(concierge_config(tmp_path))
    hubs = {"primary": "other.example.com", "c-primary": "third.example.com"}
    serve(monkeypatch, hubs, active="primary", tls=True)
    sources.ask_concierge()
    assert machine.hubs == ("primary", "secondary", "c-primary", "c2-primary")
    assert machine.home_hub == "c2-primary"
    assert sources.endpoint("c2-primary").fqdn == "other.example.com"
    assert [type(e) for e in emitted] == [ConciergeUpdate]


def test_a_document_refused_while_mapping_is_a_counted_concierge_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sources, machine, emitted = sources_for(concierge_config(tmp_path))
    metrics = sources._metrics
    serve(monkeypatch, {"plain": "plain.example.com"}, active="plain", tls=False)
    sources.ask_concierge()
    assert machine.hubs == ("primary", "secondary") and machine.home_hub == "primary"
    (problem,) = emitted
    assert isinstance(problem, ConciergeProblem) and problem.security
    assert metrics.snapshot(queue_depth=0, dropped=0).concierge_rejections == 1


def test_an_srv_answer_no_hub_can_hold_keeps_the_last_hub_list(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # An IP-literal target is a valid FQDN for a HubEndpoint, but "fe80::1_8883" is not a
    # hub name: the record is dropped, and with nothing left the last list stays.
    def answer(domain: str, **_options: object) -> tuple[HubEndpoint, ...]:
        record = SrvRecord(priority=1, weight=1, port=8883, target="fe80::1")
        return hubs_from_records(domain, [record], rng=random.Random(1), tls=None)

    monkeypatch.setattr(hub_sources, "discover_hubs", answer)
    config = ClientConfig(client_id="device", hubs=OWN, srv=SrvSettings(domain="example.com"))
    sources, machine, _emitted = sources_for(config)
    with caplog.at_level(logging.WARNING, logger="device_sdk"):
        sources.refresh_srv()
    assert machine.hubs == ("primary", "secondary")
    assert "no SRV record with a usable target and port" in caplog.text

"""What the README promises, each pinned by a test that fails when the promise breaks.

No network: the clients here are never connected (``publish()`` only hands messages
to the outbox), and the concierge is never actually asked (its side task is recorded,
not run). Each test names the README sentence it holds the code to.
"""

from __future__ import annotations

import queue
import random
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_sdk import ClientConfig, DeviceClient, HubEndpoint, Metrics, OutboxSettings, events
from device_sdk.adapters.resolver import FreshResolver
from device_sdk.concierge.settings import ConciergeSettings
from device_sdk.concierge.trust import ConciergeTrust
from device_sdk.core import failover as fsm
from device_sdk.engine import hub_sources
from device_sdk.engine.hub_sources import HubSources
from device_sdk.errors import MessageDropped, OutboxFull
from device_sdk.metrics import MetricsRecorder
from device_sdk.status import prometheus_text

# An address nothing listens on; nothing here dials it (no client is connected).
HUBS = (
    HubEndpoint(name="primary", fqdn="127.0.0.1", port=9, tls=None),
    HubEndpoint(name="secondary", fqdn="127.0.0.1", port=19, tls=None),
)


# --------------------------------------------------------------------------- concierge polling
# README, "The concierge": devices ask it "on a jittered interval while connected".


class RecordingSide:
    """Side tasks recorded, never run: the test sees what was asked, nothing is fetched."""

    def __init__(self) -> None:
        self.started: list[str] = []

    def start(self, kind: str, work: Callable[[], object], done: Callable[[object], None]) -> bool:
        self.started.append(kind)
        return True


def concierge_sources(
    tmp_path: Path, now: float, *, poll_interval: float, poll_jitter: float, seed: int
) -> tuple[HubSources, RecordingSide]:
    public = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    settings = ConciergeSettings(
        url="https://concierge.example.com/v1/endpoint",
        trust=ConciergeTrust(keys={"k1": public}, allowed_hubs=("*.example.com",)),
        poll_interval=poll_interval,
        poll_jitter=poll_jitter,
        state_file=str(tmp_path / "concierge.seq"),
    )
    # Failback probes far later than any poll, so next_due() is the concierge's.
    config = ClientConfig(
        client_id="device", hubs=HUBS, concierge=settings, failback_probe_interval=86_400.0
    )
    machine = fsm.FailoverMachine(config.hub_names, config.failover)
    side = RecordingSide()
    sources = HubSources(
        config,
        machine=machine,
        resolver=FreshResolver(config.dns),
        rng=random.Random(seed),
        side=side,  # type: ignore[arg-type]
        metrics=MetricsRecorder(),
        emit=lambda event: None,
        follow=lambda event: None,
    )
    sources.connected(now)
    return sources, side


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """The engine's monotonic clock as a settable value (``clock[0]``)."""
    now = [1_000_000.0]  # a realistic monotonic reading, days after boot
    # Only hub_sources' view of the clock: nothing else in the process is affected.
    monkeypatch.setattr(hub_sources, "time", SimpleNamespace(monotonic=lambda: now[0]))
    yield now


def test_the_concierge_poll_interval_is_jittered(tmp_path: Path, clock: list[float]) -> None:
    # Devices asking at the same instant must not all ask again at the same instant: each
    # poll's wait is drawn afresh (a fleet's devices draw from their own generators).
    sources, _ = concierge_sources(tmp_path, clock[0], poll_interval=300.0, poll_jitter=0.2, seed=7)
    waits = []
    for _ in range(500):
        sources.ask_concierge()
        waits.append(sources.next_due() - clock[0])
    assert all(240.0 <= wait <= 360.0 for wait in waits)  # within +-poll_jitter
    assert min(waits) < 250.0 and max(waits) > 350.0  # the whole band is used
    assert statistics.mean(waits) == pytest.approx(300.0, abs=10.0)  # on average the interval
    assert len({round(wait) for wait in waits}) > 80  # spread, not a few lockstep groups


def test_without_jitter_the_concierge_is_asked_every_poll_interval(
    tmp_path: Path, clock: list[float]
) -> None:
    sources, _ = concierge_sources(tmp_path, clock[0], poll_interval=42.0, poll_jitter=0.0, seed=1)
    sources.ask_concierge()
    assert sources.next_due() == clock[0] + 42.0


def test_while_connected_the_concierge_is_asked_again_once_the_poll_is_due(
    tmp_path: Path, clock: list[float]
) -> None:
    sources, side = concierge_sources(
        tmp_path, clock[0], poll_interval=300.0, poll_jitter=0.2, seed=3
    )
    sources.ask_concierge()
    due = sources.next_due()
    assert side.started == ["concierge"]
    sources.tick(due - 0.001)
    assert side.started == ["concierge"]  # not before it is due
    clock[0] = due
    sources.tick(due)
    assert side.started == ["concierge", "concierge"]
    assert 240.0 <= sources.next_due() - due <= 360.0  # and the next poll is scheduled again


# --------------------------------------------------------------------------- the outbox's bounds
# README, "Never lose what the device was handed": overflow="drop_oldest" drops the oldest
# message, fails its handle with MessageDropped, counts it in metrics().dropped and emits a
# MessagesDropped event; overflow="reject" raises OutboxFull and drops nothing.


def unconnected_client(overflow: str, seen: queue.Queue[events.Event]) -> DeviceClient:
    outbox = OutboxSettings(max_messages=2, overflow=overflow)  # type: ignore[arg-type]
    config = ClientConfig(client_id="promise-device", hubs=HUBS, outbox=outbox)
    return DeviceClient(config, on_event=seen.put)


def dropped_events(seen: queue.Queue[events.Event], until: int) -> int:
    """Sum MessagesDropped counts until ``until`` are reported (bounded: 5 s per event)."""
    total = 0
    while total < until:
        event = seen.get(timeout=5.0)
        if isinstance(event, events.MessagesDropped):
            total += event.count
    return total


def test_drop_oldest_fails_the_oldest_handles_counts_them_and_emits_an_event() -> None:
    seen: queue.Queue[events.Event] = queue.Queue()
    client = unconnected_client("drop_oldest", seen)
    try:
        handles = [client.publish("telemetry", f"{n}".encode()) for n in range(5)]
        assert client.metrics().dropped == 3
        assert dropped_events(seen, until=3) == 3
        for handle in handles[:3]:  # the oldest three made room
            assert handle.done()
            with pytest.raises(MessageDropped):
                handle.wait(0)
        assert not any(handle.done() for handle in handles[3:])  # the newest still wait
        assert client.metrics().queue_depth == 2
    finally:
        client.close()


def test_reject_raises_outbox_full_and_drops_nothing() -> None:
    seen: queue.Queue[events.Event] = queue.Queue()
    client = unconnected_client("reject", seen)
    try:
        kept = [client.publish("telemetry", b"1"), client.publish("telemetry", b"2")]
        with pytest.raises(OutboxFull):
            client.publish("telemetry", b"3")
        metrics = client.metrics()
        assert (metrics.dropped, metrics.queue_depth) == (0, 2)
        assert not any(handle.done() for handle in kept)
    finally:
        client.close()
    assert not any(isinstance(event, events.MessagesDropped) for event in list(seen.queue))


# --------------------------------------------------------------------------- the Prometheus file
# README, "Gateway monitoring": device_sdk_failovers_total counts failovers, and failbacks
# have a family of their own. Distinct values, so that a swap or a sum would show.


def test_the_prometheus_failover_counter_never_reports_failbacks() -> None:
    text = prometheus_text(Metrics(failovers=5, failbacks=2, dropped=7))
    samples = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert samples["device_sdk_failovers_total"] == "5"
    assert samples["device_sdk_failbacks_total"] == "2"
    assert samples["device_sdk_messages_dropped_total"] == "7"


# --------------------------------------------------------------------------- refusal table
# README, "What a refusal means": every code in the table is classified as the table says.

_TABLE_KINDS = {
    "permanent": "permanent",
    "transient": "transient",
    "busy": "busy",
    "redirect": "redirect",
    "renewable provider": "renew",
}


def _refusal_table() -> list[tuple[list[int], str]]:
    text = (Path(__file__).parents[2] / "README.md").read_text()
    start = text.index("| code (MQTT 5; 3.1.1 in brackets) |")
    rows = []
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        codes_cell, _meaning, action = (cell.strip() for cell in line.strip("|").split("|"))
        codes = [int(word.rstrip(","), 16) for word in codes_cell.split() if word.startswith("0x")]
        kind = next(k for prefix, k in _TABLE_KINDS.items() if action.startswith(prefix))
        rows.append((codes, kind))
    return rows


def test_the_readme_refusal_table_is_the_code() -> None:
    from device_sdk.core.outcomes import FailureKind, classify_connack, refusal_kind

    rows = _refusal_table()
    assert len(rows) >= 5 and sum(len(codes) for codes, _ in rows) >= 20
    for codes, kind in rows:
        for code in codes:
            found = classify_connack(code, mqtt5=True)
            assert found is not None
            if kind == "renew":
                assert found is FailureKind.PERMANENT
                fresh = refusal_kind(found, reason_code=code, renewable=True, refused_fresh=False)
                again = refusal_kind(found, reason_code=code, renewable=True, refused_fresh=True)
                fixed = refusal_kind(found, reason_code=code, renewable=False, refused_fresh=False)
                assert (fresh, again, fixed) == (
                    FailureKind.TRANSIENT,
                    FailureKind.PERMANENT,
                    FailureKind.PERMANENT,
                ), hex(code)
            else:
                assert found.value == kind, f"0x{code:02X}: README says {kind}, code says {found}"
                assert (
                    refusal_kind(found, reason_code=code, renewable=True, refused_fresh=False)
                    is found
                )
    assert classify_connack(0xA5, mqtt5=True) is FailureKind.TRANSIENT  # "any other"

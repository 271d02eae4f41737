"""Concierge replicas on a real 3-member etcd cluster: one sequence for the fleet.

Devices here are the SDK's own concierge client (`ConciergeSource`, which
verifies and persists the last accepted sequence), pointed at one replica or
another, always sharing one sequence file, as one device polling a DNS name
with a record per replica would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import threading
import time
from pathlib import Path

import pytest

from device_sdk.concierge.cli import main_status_lines, post_active, replica_view
from device_sdk.concierge.document import EndpointDocument, parse_document, parse_envelope
from device_sdk.concierge.etcd_store import EtcdStateStore, parse_store_url
from device_sdk.concierge.fetch import ConciergeFetcher
from device_sdk.concierge.service import ConciergeService
from device_sdk.concierge.source import ConciergeSource
from device_sdk.errors import ConciergeError, ConfigError
from device_sdk.testbed import EtcdCluster, Testbed
from device_sdk.testbed.concierge_cluster import ConciergeCluster
from device_sdk.testbed.proxy import FaultProxy, ProxySpec

pytestmark = pytest.mark.integration

PROPAGATION_BOUND = (
    2.0  # seconds from a switch until every replica serves it (watch: ~20 ms; poll: 0.5 s)
)


@pytest.fixture
def bed(testbed_factory: object) -> Testbed:
    return testbed_factory(concierge_replicas=3, concierge_store="etcd")  # type: ignore[operator, no-any-return]


def _cluster(bed: Testbed) -> ConciergeCluster:
    assert bed.concierge_cluster is not None
    return bed.concierge_cluster


def _device(bed: Testbed, index: int, state_file: Path) -> ConciergeSource:
    """One device's concierge client, pointed at replica ``index``."""
    cluster = _cluster(bed)
    settings = bed.concierge_settings(
        url=f"{cluster.replica_url(index)}/v1/endpoint", state_file=str(state_file)
    )
    return ConciergeSource(settings, tuple(bed.endpoint(hub.name) for hub in bed.hubs))


def _served(cluster: ConciergeCluster, index: int) -> tuple[int, str]:
    view = replica_view(cluster.replica_url(index), timeout=2.0)
    return int(view["sequence"]), str(view["active_hub"])


def _until_every_replica_serves(
    cluster: ConciergeCluster, sequence: int, replicas: range | list[int], bound: float
) -> float:
    started = time.monotonic()
    while time.monotonic() - started < bound:
        if all(_served(cluster, i)[0] >= sequence for i in replicas):
            return time.monotonic() - started
        time.sleep(0.01)
    raise AssertionError(f"not every replica served sequence {sequence} within {bound} s")


def test_switches_through_any_replica_reach_every_replica_and_never_look_like_a_rollback(
    bed: Testbed, tmp_path: Path
) -> None:
    cluster = _cluster(bed)
    token = cluster.token_file.read_text()
    state_file = tmp_path / "device.seq"
    devices = [_device(bed, i, state_file) for i in range(3)]
    errors: list[BaseException] = []
    stop = threading.Event()
    polls = 0

    def poll() -> None:  # one device, asking a random replica each time
        nonlocal polls
        rng = random.Random(7)
        while not stop.is_set() and polls < 5000:
            try:
                rng.choice(devices).ask()
                polls += 1
            except ConciergeError as exc:
                errors.append(exc)
                return

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    took: list[float] = []
    try:
        for round_no, hub in enumerate(["secondary", "primary", "secondary", "primary"]):
            answer = post_active(cluster.replica_url(round_no % 3), hub, token)
            took.append(
                _until_every_replica_serves(
                    cluster,
                    int(answer["sequence"]),
                    range(3),
                    PROPAGATION_BOUND,  # type: ignore[call-overload]
                )
            )
            assert {_served(cluster, i)[1] for i in range(3)} == {hub}
    finally:
        stop.set()
        poller.join(5)
    assert not errors, errors  # no rollback, no replay, no refusal of any kind
    assert polls > 20
    assert max(took) < PROPAGATION_BOUND


def test_moving_a_file_store_deployment_to_etcd_is_no_rollback(
    testbed_factory: object, tmp_path: Path
) -> None:
    # Before: one concierge on its state file, sequences in Unix milliseconds. The
    # operator switched to the secondary, and the device accepted that and kept it.
    bed: Testbed = testbed_factory(concierge=True)  # type: ignore[operator]
    service = bed.concierge
    assert service is not None
    service.set_active("secondary")
    device_file = tmp_path / "device.seq"
    settings = bed.concierge_settings(state_file=str(device_file))
    own = tuple(bed.endpoint(hub.name) for hub in bed.hubs)
    before = ConciergeSource(settings, own).ask()
    service.stop()
    # After: the same replica (same key, same state file) on a fresh etcd cluster. It
    # finds the cluster empty and imports its file, with an offset above its sequence.
    with EtcdCluster(3, work_dir=tmp_path / "etcd") as etcd:
        store = "etcd://" + ",".join(etcd.endpoints)
        moved = dataclasses.replace(service.config, store=store, port=0)
        with ConciergeService(moved) as replica:
            url = f"{replica.url}/v1/endpoint"
            after = ConciergeSource(dataclasses.replace(settings, url=url), own).ask()
            switched = replica.set_active("primary")
            again = ConciergeSource(dataclasses.replace(settings, url=url), own).ask()
    assert before.active == after.active == "secondary"  # the switch survived the move
    assert after.sequence > before.sequence  # a device holding a file-era sequence accepts
    assert again.active == "primary" and again.sequence == switched.sequence > after.sequence


def test_the_switch_completes_with_an_etcd_member_and_a_replica_gone(
    bed: Testbed, tmp_path: Path
) -> None:
    cluster = _cluster(bed)
    assert cluster.etcd is not None
    leader = cluster.etcd.leader()
    assert leader is not None
    cluster.etcd.kill(leader)  # the member every write went through
    cluster.stop_replica(0)  # and the replica of the same region
    answer = post_active(cluster.replica_url(1), "secondary", cluster.token_file.read_text())
    took = _until_every_replica_serves(cluster, int(answer["sequence"]), [1, 2], 5.0)  # type: ignore[call-overload]
    device = _device(bed, 2, tmp_path / "device.seq")
    assert device.ask().active == "secondary"
    assert took < 5.0


def test_a_replica_cut_off_from_etcd_serves_what_it_knew_until_that_expires(
    bed: Testbed, tmp_path: Path
) -> None:
    cluster = _cluster(bed)
    assert cluster.etcd is not None
    with contextlib.ExitStack() as stack:
        proxies = []
        for member in cluster.etcd.members:
            spec = ProxySpec(target_host=member.host, target_port=member.port)
            proxies.append(stack.enter_context(FaultProxy(spec)))
        url = "etcd://" + ",".join(f"{p.host}:{p.port}" for p in proxies)
        ttl = 3
        config = dataclasses.replace(cluster.configs[1], port=0, ttl=ttl, store=url)
        store = EtcdStateStore(url, ttl=ttl, poll_interval=0.2, timeout=0.3)
        cut_off = stack.enter_context(ConciergeService(config, store=store))
        before = cut_off.state
        for proxy in proxies:
            proxy.blackhole()  # the partition: nothing moves, nothing is closed
        cut_at = time.time()
        answer = post_active(cluster.replica_url(0), "secondary", cluster.token_file.read_text())
        time.sleep(1.5)
        health = replica_view(cut_off.url, timeout=2.0)
        assert health["http_status"] == 503 and health["store"]["reachable"] is False
        assert "etcd" in health["store"]["reason"]
        # Still what it knew: the old hub under the old sequence, never a newer sequence
        # with an older hub, and a document that ends a ttl after the last confirmation.
        assert cut_off.state == before and cut_off.state.sequence < int(answer["sequence"])
        document = _fetch_document(cut_off.url)
        assert document.expires_at <= int(store.health(time.time()).confirmed_at) + ttl
        while time.time() < cut_at + ttl + 1.5:
            time.sleep(0.1)
        with pytest.raises(ConciergeError):
            _fetch_document(cut_off.url)  # 503: it no longer vouches for anything
        for proxy in proxies:
            proxy.restore()
        deadline = time.monotonic() + 5
        while cut_off.state.active_hub != "secondary" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cut_off.state.active_hub == "secondary"
        assert _fetch_document(cut_off.url).sequence == int(answer["sequence"])


def _fetch_document(url: str) -> EndpointDocument:
    """The document a replica serves now (parsed; these tests trust the replica)."""
    raw = ConciergeFetcher(f"{url}/v1/endpoint", timeout=2.0, allow_plain_http=True).fetch()
    return parse_document(parse_envelope(raw).document)


def test_the_status_command_shows_every_replicas_view(bed: Testbed) -> None:
    cluster = _cluster(bed)
    urls = [cluster.replica_url(i) for i in range(3)]
    lines, agree = main_status_lines(urls)
    assert agree and len(lines) == 3
    assert all("etcd store reachable" in line for line in lines)
    cluster.stop_replica(2)
    lines, agree = main_status_lines(urls)
    assert not agree and "UNREACHABLE" in lines[2]


def test_a_store_url_is_checked_when_the_config_is_built() -> None:
    assert parse_store_url("etcd://127.0.0.1:2379,[::1]:2380") == (
        ("127.0.0.1", 2379),
        ("::1", 2380),
    )
    for bad in ("http://x:1", "etcd://", "etcd://host", "etcd://host:0", "etcd://a b:1"):
        with pytest.raises(ConfigError, match="store"):
            parse_store_url(bad)

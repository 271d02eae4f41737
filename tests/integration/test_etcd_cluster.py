"""A real 3-member etcd cluster on loopback, driven through etcd3gw as the concierge store will be.

These tests pin what the etcd-backed concierge relies on: one cluster (not three
lone servers), a quorum that survives one lost member, a member that rejoins on
its own data, a compare-and-swap transaction and a watch through the JSON
gateway of etcd 3.4, and no process left behind.
"""

from __future__ import annotations

import base64
import os
import queue
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import etcd3gw
import pytest
from etcd3gw.client import Etcd3Client
from etcd3gw.exceptions import ConnectionFailedError, ConnectionTimeoutError

from device_sdk.errors import TestbedError
from device_sdk.testbed.etcd_cluster import EtcdCluster, EtcdMember, find_etcd

pytestmark = pytest.mark.integration

WATCH_BOUND = 1.0  # seconds from a put through one member to the event through another
QUORUM_BOUND = 5.0  # seconds for the survivors to elect a leader and commit a write


def require_etcd() -> None:
    if find_etcd() is None:
        message = "etcd is not installed (Debian: apt-get install etcd-server)"
        if os.environ.get("DEVICE_SDK_REQUIRE_MOSQUITTO") == "1":  # CI: a missing tool fails
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    require_etcd()
    with EtcdCluster(3, work_dir=tmp_path / "etcd") as started:
        yield started


def client(member: EtcdMember, timeout: float = 1.0) -> Etcd3Client:
    return etcd3gw.client(host=member.host, port=member.port, timeout=timeout)


def put_within(member: EtcdMember, key: str, value: str, bound: float) -> float:
    """Put through ``member``, retrying while the cluster has no leader; the seconds it took."""
    started = time.monotonic()
    for _ in range(100):
        try:
            client(member, timeout=0.5).put(key, value)
            return time.monotonic() - started
        except (ConnectionTimeoutError, ConnectionFailedError):
            # A proposal sent while the leader is lost waits for etcd's own
            # request timeout; the client gives up sooner and tries again.
            if time.monotonic() - started > bound:
                break
    raise AssertionError(f"no write through {member.name} within {bound} s")


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def member_id(member: EtcdMember) -> str:
    return client(member).status()["header"]["member_id"]


def test_three_members_form_one_cluster_with_a_leader(cluster: EtcdCluster) -> None:
    first, _, third = cluster.members
    assert [m.host for m in cluster.members] == ["127.0.0.31", "127.0.0.32", "127.0.0.33"]
    assert cluster.endpoints == [f"{m.host}:{m.port}" for m in cluster.members]
    assert cluster.leader() in {m.name for m in cluster.members}
    assert len({member_id(m) for m in cluster.members}) == 3

    client(first).put("/concierge/active", "hub-b")

    assert client(third).get("/concierge/active") == [b"hub-b"]


def test_one_lost_member_leaves_a_quorum_and_two_lost_leave_none(cluster: EtcdCluster) -> None:
    leader = cluster.leader()
    assert leader is not None
    pid = cluster.member(leader).pid
    assert pid is not None
    survivors = [m for m in cluster.members if m.name != leader]

    cluster.kill(leader)

    assert cluster.member(leader).pid is None and gone(pid)
    put_within(survivors[0], "/after-leader-loss", "1", QUORUM_BOUND)
    assert client(survivors[1]).get("/after-leader-loss") == [b"1"]
    # With two of three gone a write must not commit: the members really are one cluster.
    cluster.stop_member(survivors[0].name)
    with pytest.raises(ConnectionTimeoutError):
        client(survivors[1], timeout=1.0).put("/without-quorum", "1")


def test_a_killed_member_restarts_on_its_data_and_catches_up(cluster: EtcdCluster) -> None:
    first, _, third = cluster.members
    identity = member_id(third)
    cluster.kill(third.name)
    for index in range(5):
        put_within(first, f"/missed/{index}", str(index), QUORUM_BOUND)

    cluster.restart_member(third.name)

    assert third.pid is not None
    assert member_id(third) == identity  # rejoined as itself, not as a new member
    missed = client(third).get_prefix("/missed/")
    assert sorted(value for value, _ in missed) == [b"0", b"1", b"2", b"3", b"4"]


def test_stop_leaves_no_process_and_removes_its_own_dir() -> None:
    require_etcd()
    cluster = EtcdCluster(3).start()
    pids = [m.pid for m in cluster.members]
    assert all(pids)

    cluster.stop()

    assert [m.pid for m in cluster.members] == [None, None, None]
    assert all(gone(pid) for pid in pids if pid is not None)
    assert not cluster.work_dir.exists()


def test_a_member_that_cannot_start_fails_start_with_its_log(cluster: EtcdCluster) -> None:
    cluster.stop_members()
    victim = cluster.member("etcd-2")
    squatter = socket.create_server((victim.host, victim.port))
    try:
        with pytest.raises(TestbedError, match=r"etcd etcd-2 exited(.|\n)*address already in use"):
            cluster.start()
    finally:
        squatter.close()
    assert all(m.pid is None for m in cluster.members)


def test_compare_and_swap_on_the_mod_revision(cluster: EtcdCluster) -> None:
    first, second, _ = cluster.members
    client(first).put("/concierge/active", "hub-a")
    [(_, meta)] = client(second).get("/concierge/active", metadata=True)
    seen = int(meta["mod_revision"])

    def swap(value: str) -> dict[str, object]:
        # etcd3gw passes the transaction through as is: keys and values base64 by hand.
        key = base64.b64encode(b"/concierge/active").decode()
        new = base64.b64encode(value.encode()).decode()
        txn = {
            "compare": [{"key": key, "result": "EQUAL", "target": "MOD", "mod_revision": seen}],
            "success": [{"request_put": {"key": key, "value": new}}],
            "failure": [{"request_range": {"key": key}}],
        }
        return dict(client(second).transaction(txn))

    won = swap("hub-b")
    lost = swap("hub-c")

    assert won.get("succeeded") is True
    # A failed compare omits "succeeded" (proto3 JSON drops false) and returns the range.
    assert "succeeded" not in lost
    assert client(first).get("/concierge/active") == [b"hub-b"]
    header = won["header"]
    assert isinstance(header, dict) and int(header["revision"]) == seen + 1


def test_a_watch_through_one_member_sees_a_put_through_another(cluster: EtcdCluster) -> None:
    first, second, _ = cluster.members
    start = int(client(second).status()["header"]["revision"]) + 1
    events, cancel = client(second).watch("/concierge/active", start_revision=start)
    seen: queue.Queue[tuple[float, bytes]] = queue.Queue()

    def read() -> None:
        for event in events:
            seen.put((time.monotonic(), event["kv"].get("value", b"")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        for hub in ("hub-a", "hub-b", "hub-c"):
            sent = time.monotonic()
            client(first).put("/concierge/active", hub)
            arrived, value = seen.get(timeout=WATCH_BOUND)
            assert value == hub.encode()
            assert arrived - sent < WATCH_BOUND
    finally:
        cancel()
    reader.join(2)
    assert not reader.is_alive()

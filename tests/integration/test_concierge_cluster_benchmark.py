"""The concierge cluster benchmark in miniature: 3 replicas on etcd, a few switches, 20 pollers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from benchmarks import concierge_cluster
from device_sdk.testbed.etcd_cluster import find_etcd

pytestmark = pytest.mark.integration

SWITCHES = 3
FLEET_SWITCHES = 2
# Replicas read etcd every 0.5 s as well as watching it; a median switch well under
# half of that shows the watch, not the poll, carried it (the poll alone misses this
# bound in most runs).
WATCHED_BOUND = 0.25


def _require_etcd() -> None:
    if find_etcd() is None:
        message = "etcd is not installed (Debian: apt-get install etcd-server)"
        if os.environ.get("DEVICE_SDK_REQUIRE_MOSQUITTO") == "1":  # CI: a missing tool fails
            pytest.fail(message)
        pytest.skip(message)


# testbed_factory starts nothing here: it only skips (or, in CI, fails) without mosquitto.
@pytest.mark.usefixtures("testbed_factory")
def test_every_replica_and_every_poller_follow_each_switch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _require_etcd()
    out = tmp_path / "concierge_cluster.json"
    argv = ["--testbeds", "cluster", "--runs", "1", "--seconds", "0.5", "--threads", "2"]
    argv += ["--switches", str(SWITCHES), "--fleet", "20", "--period", "0.3"]
    argv += ["--fleet-switches", str(FLEET_SWITCHES), "--json", str(out)]
    code = concierge_cluster.main(argv)
    document = json.loads(out.read_text(encoding="utf-8"))
    summary = document["summary"]
    assert document["problems"] == [], document["problems"]
    (rps,) = summary["rps"].values()  # the 3-replica testbed only
    assert rps["requests_per_s_median"] > 0, document["results"]["rps"]
    assert all(run["failed"] == 0 for runs in document["results"]["rps"].values() for run in runs)
    propagation = summary["propagation"]
    assert propagation["every_replica_s"]["n"] == SWITCHES, document["results"]["propagation"]
    assert propagation["every_replica_s"]["max"] < concierge_cluster.PROPAGATION_BOUND
    assert propagation["every_replica_s"]["median"] < WATCHED_BOUND, propagation
    switches = document["results"]["propagation"]["switches"]
    assert [s["via"] for s in switches] == [0, 1, 2]  # each replica takes one switch
    sequences = [s["sequence"] for s in switches]
    assert sequences == sorted(set(sequences)), sequences  # one rising sequence for all
    fleet = summary["fleet"]
    assert fleet["all_moved_s"]["n"] == FLEET_SWITCHES, document["results"]["fleet"]
    assert 0 < fleet["all_moved_s"]["max"] < concierge_cluster.FLEET_BOUND
    assert fleet["rollbacks"] == 0
    assert fleet["failed_polls"] == 0
    assert code == 0
    assert "PASS: no anomalies" in capsys.readouterr().out  # the tables are printed alongside

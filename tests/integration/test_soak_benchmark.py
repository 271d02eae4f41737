"""The soak benchmark in miniature: six faults of every kind in 20 s, nothing lost, no fd leak."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest

from benchmarks import soak

pytestmark = pytest.mark.integration


def test_fault_order_is_seeded_rounds_of_every_kind() -> None:
    first, again = soak.fault_order(7), soak.fault_order(7)
    drawn = [first() for _ in range(3 * len(soak.KINDS))]
    assert drawn == [again() for _ in range(3 * len(soak.KINDS))]
    for start in range(0, len(drawn), len(soak.KINDS)):
        assert sorted(drawn[start : start + len(soak.KINDS)]) == sorted(soak.KINDS)
    other = soak.fault_order(8)
    assert drawn != [other() for _ in range(len(drawn))]


def test_slope_is_least_squares_per_hour() -> None:
    # 10 KiB per minute, and noise symmetric about the middle (no trend of its own).
    noise = [1, -1, 0, 0, 0, 0, -1, 1]
    points = [(60.0 * i, 100.0 + 10 * i + noise[i]) for i in range(8)]
    assert soak.slope_per_hour(points) == pytest.approx(600.0)
    assert soak.slope_per_hour([(60.0 * i, 100.0 + 10 * i) for i in range(8)][::-1]) == (
        pytest.approx(600.0)
    )
    assert soak.slope_per_hour([(0.0, 5.0), (3600.0, 7.0)]) == pytest.approx(2.0)
    assert soak.slope_per_hour([(0.0, 5.0)]) is None


# testbed_factory starts nothing here: it only skips (or, in CI, fails) without mosquitto.
@pytest.mark.usefixtures("testbed_factory")
def test_a_short_soak_recovers_from_every_fault_and_loses_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "soak.json"
    argv = ["--minutes", "0.35", "--fault-interval", "3", "--sample-interval", "2"]
    code = soak.main([*argv, "--warmup", "0", "--seed", "2", "--json", str(out)])
    document = json.loads(out.read_text(encoding="utf-8"))
    summary = document["summary"]
    assert document["failures"] == [], document["faults"]
    assert code == 0
    assert summary["published"] > 300, summary
    assert summary["lost"] == 0, summary["lost_numbers"]
    assert summary["drained"], summary
    for kind, row in summary["by_kind"].items():  # six faults, one round: each kind once
        assert row["injected"] == 1 == row["recovered"], (kind, document["faults"])
        assert row["recovery_median_ms"] > 0, (kind, row)
    samples = document["samples"]
    assert len(samples) >= 8, samples
    assert all(s["rss_kib"] > 0 and s["fds"] > 0 and s["os_threads"] >= 1 for s in samples)
    # Three hubs were stopped and started again in 20 s: neither the device nor the
    # benchmark may keep a descriptor or a thread per fault.
    assert samples[-1]["fds"] <= samples[0]["fds"] + 2, samples
    assert samples[-1]["threads"] <= samples[0]["threads"] + 1, samples
    assert summary["rss_kib_per_hour"] is not None
    assert all(s["py_blocks"] > 10_000 for s in samples), samples
    libc, version = platform.libc_ver()
    if libc == "glibc" and tuple(map(int, version.split(".")[:2])) >= (2, 33):  # mallinfo2
        assert all(s["heap_used_kib"] > 1024 and s["heap_free_kib"] >= 0 for s in samples)
        assert summary["heap_used_kib_per_hour"] is not None
    assert "PASS: 0 lost" in capsys.readouterr().out

"""The footprint benchmark in miniature: every row of both tables has positive figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import footprint

pytestmark = pytest.mark.integration


# testbed_factory starts nothing here: it only skips (or, in CI, fails) without mosquitto.
@pytest.mark.usefixtures("testbed_factory")
def test_a_short_run_measures_every_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "footprint.json"
    argv = ["--runs", "2", "--memory-runs", "1", "--messages", "100", "--importtime-runs", "1"]
    code = footprint.main([*argv, "--json", str(out)])
    assert code == 0
    document = json.loads(out.read_text(encoding="utf-8"))

    imports = {row["variant"]: row for row in document["import_time"]}
    assert set(imports) == {"python", "paho", "device_sdk", "sdk_client"}
    for row in imports.values():
        assert row["runs"] == 2, row
        assert 0 < row["process_ms_min"] <= row["process_ms_median"], row
    for key in ("paho", "device_sdk", "sdk_client"):
        assert 0 < imports[key]["import_ms_min"] <= imports[key]["import_ms_median"]
        assert imports[key]["process_ratio"] > 0
    assert imports["paho"]["process_ratio"] == 1.0
    assert imports["python"]["import_ms_median"] is None  # `-c pass` imports nothing

    importtime = document["importtime"]
    assert importtime["total_ms"] > 0
    assert importtime["packages_by_self_time"], importtime
    assert all(p["self_ms"] > 0 for p in importtime["packages_by_self_time"])
    assert all(m["cumulative_ms"] > 0 for m in importtime["modules_by_cumulative_time"])

    memory = {row["case"]: row for row in document["memory"]}
    assert set(memory) == {c.key for c in footprint.MEMORY_CASES}
    for row in memory.values():
        assert row["peak_rss_kb"] > 0, row
        assert row["rss_kb"] > 0, row
        assert row["hwm_kb"] > 0, row
        assert row["threads"] >= 1, row
    for key in ("paho_connected", "sdk_memory", "sdk_sqlite"):
        assert memory[key]["threads"] >= 2, memory[key]  # a network thread beside main
    for key in ("sdk_import", "sdk_memory", "sdk_sqlite"):
        assert memory[key]["peak_rss_ratio"] > 0, memory[key]
        assert memory[key]["rss_ratio"] > 0, memory[key]
    assert len(document["memory_runs"]) == len(footprint.MEMORY_CASES)

    cpu = {row["case"]: row for row in document["cpu_per_1000_messages"]}
    assert set(cpu) == {"paho_connected", "sdk_memory", "sdk_sqlite"}
    for row in cpu.values():
        assert row["cpu_ms_per_1000_median"] > 0, row
    assert cpu["paho_connected"]["ratio"] is None
    for key in ("sdk_memory", "sdk_sqlite"):
        expected = (
            cpu[key]["cpu_ms_per_1000_median"] / cpu["paho_connected"]["cpu_ms_per_1000_median"]
        )
        assert cpu[key]["ratio"] == pytest.approx(expected, rel=0.01), cpu[key]

    printed = capsys.readouterr().out  # the tables are printed alongside
    assert "import device_sdk" in printed
    assert "sdk sqlite NORMAL, connected" in printed
    assert "CPU time (ms per 1000 messages)" in printed

    targets = {row["what"]: row for row in document["targets"]}
    assert len(targets) == 4
    sdk_memory = targets["sdk_memory peak RSS - raw paho connected, kB"]
    assert sdk_memory["figure"] == memory["sdk_memory"]["peak_rss_diff_kb"]
    assert sdk_memory["met"] is (sdk_memory["figure"] <= 5 * 1024)

"""The kill-and-restart benchmark in miniature: two SIGKILLs, one primary crash, nothing lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import kill_restart

pytestmark = pytest.mark.integration


# testbed_factory starts nothing here: it only skips (or, in CI, fails) without mosquitto.
@pytest.mark.usefixtures("testbed_factory")
def test_a_short_run_loses_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "kill_restart.json"
    argv = ["--kills", "2", "--min-delay", "1.0", "--max-delay", "1.5", "--failover"]
    code = kill_restart.main([*argv, "--json", str(out)])
    document = json.loads(out.read_text(encoding="utf-8"))
    summary = document["summary"]
    assert summary["accepted"] > 0, document["runs"]
    assert summary["lost"] == 0, summary["lost_numbers"]
    assert summary["kills"] == 2, document["runs"]
    assert summary["duplicated_with_changed_message_id"] == []
    assert summary["drained"], document["runs"][-1]
    assert document["failures"] == []
    assert code == 0
    assert "PASS: 0 lost" in capsys.readouterr().out  # the tables are printed alongside

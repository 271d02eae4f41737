"""The bad-link benchmark in miniature: one good link, every implementation, nothing lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bad_link

pytestmark = pytest.mark.integration


# testbed_factory starts nothing here: it only skips (or, in CI, fails) without mosquitto.
@pytest.mark.usefixtures("testbed_factory")
def test_a_quick_run_counts_drops_and_times_the_blackhole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bad_link.json"
    code = bad_link.main(["--quick", "--links", "lte-good", "--json", str(out)])
    document = json.loads(out.read_text(encoding="utf-8"))

    rows = {row["implementation"]: row for row in document["summaries"]}
    assert set(rows) == set(bad_link.IMPLEMENTATIONS)
    for implementation in (bad_link.SDK_PROFILE, bad_link.SDK_DEFAULTS):
        row = rows[implementation]
        assert row["published"] > 0, document["runs"]
        assert row["lost"] == 0, document["runs"]
        assert row["false_drops"] == row["false_failovers"] == 0, document["runs"]
        # The blackhole at the end is seen, within the deadline ceiling the profile states.
        assert row["detected"] == 1, document["runs"]
    # library defaults: 1 s deadline floor on a 50 ms link; cellular-low-data: its 3 s floor
    assert rows[bad_link.SDK_DEFAULTS]["detection_median_s"] < 2.0
    # raw paho notices only after two 60 s keepalives: not within the quick wait
    assert rows[bad_link.PAHO]["detection_median_s"] is None
    assert rows[bad_link.PAHO]["lost"] == 0  # restored before it noticed: nothing went missing
    assert code == 0
    assert "== lte-good:" in capsys.readouterr().out

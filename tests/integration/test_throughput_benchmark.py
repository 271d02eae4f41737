"""The throughput benchmark in miniature, over each way in: every variant really goes
through the bridge or the proxy, and the report names the transport."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import throughput

pytestmark = pytest.mark.integration


# testbed_factory starts nothing here: it only skips (or, in CI, fails) without mosquitto.
@pytest.mark.usefixtures("testbed_factory")
@pytest.mark.parametrize("transport", throughput.TRANSPORTS)
def test_a_short_run_carries_every_variant_over_the_transport(
    transport: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(throughput, "WARM_UP_MESSAGES", 50)
    out = tmp_path / "throughput.json"
    # The exit status says whether the ratio targets were met: noise at this size.
    throughput.main(
        ["--runs", "1", "--messages", "100", "--transport", transport, "--json", str(out)]
    )
    document = json.loads(out.read_text(encoding="utf-8"))

    assert document["settings"]["transport"] == transport
    route = document["route"]
    made = len(throughput.VARIANTS) * 2  # a warm-up and one timed run each
    assert route["connections_made"] == made
    # A variant that dialled the broker directly would leave the bridge or proxy short.
    assert route["connections_carried"] == (None if transport == "tcp" else made)
    rows = {row["variant"]: row for row in document["summary"]}
    assert set(rows) == set(throughput.VARIANTS)
    assert all(row["median_msg_per_s"] > 0 for row in rows.values())
    assert rows[throughput.RAW]["ratio_to_raw_paho"] == 1.0
    assert f"transport: {transport}, " in capsys.readouterr().out

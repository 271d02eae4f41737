"""The drill and the samples run for real, as a user would run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from device_sdk.drill import format_report, run_drill
from device_sdk.testbed import find_mosquitto

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed"),
]

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("scenario", "fault_line"),
    [("crash", "primary killed"), ("concierge", "operator: concierge set-active secondary")],
)
def test_drill_recovers_and_loses_nothing(scenario: str, fault_line: str) -> None:
    report = run_drill(scenario, warmup=0.5, after=0.3)
    text = format_report(report)
    assert report.ok, text
    assert report.lost == 0 and report.published > 5
    assert fault_line in text and "first PUBACK from secondary" in text


def test_telemetry_gateway_sample_runs_against_the_testbed() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "samples" / "telemetry_gateway.py"),
            "--local-testbed",
            "--seconds",
            "1",
            "--rate",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "acknowledged" in result.stdout

"""The device-sdk command as an operator runs it: publish, run with a status file, status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from device_sdk.testbed import Testbed

pytestmark = pytest.mark.integration


def device_sdk(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "device_sdk.cli", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
        check=False,
    )


def hub_arguments(bed: Testbed) -> list[str]:
    # IP literals need no DNS; the hubs are plain MQTT on the testbed.
    return [
        *(f"--hub={h.name}={h.address}:{h.broker.port}" for h in bed.hubs),
        "--plain",
        "--profile=test-fast",
    ]


def test_publish_exits_zero_once_acknowledged(testbed: Testbed) -> None:
    collector = testbed.collector("primary", "cli/test")
    result = device_sdk(
        "publish",
        "--client-id=cli-1",
        "--topic=cli/test",
        "--message=7:hello",
        *hub_arguments(testbed),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("acknowledged ")
    assert collector.wait_for({7}, 5)


def test_publish_reports_a_bad_hub_in_one_line(testbed: Testbed) -> None:
    result = device_sdk("publish", "--client-id=cli-1", "--message=x", "--hub=nonsense")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "--hub" in result.stderr and "hint:" in result.stderr


def test_run_publishes_stdin_and_writes_a_status_file(testbed: Testbed, tmp_path: Path) -> None:
    collector = testbed.collector("primary", "cli/lines")
    status = tmp_path / "status.json"
    result = device_sdk(
        "run",
        "--client-id=cli-2",
        "--topic=cli/lines",
        "--stdin",
        f"--status-file={status}",
        f"--prometheus-file={tmp_path / 'gw.prom'}",
        *hub_arguments(testbed),
        stdin="1:a\n2:b\n3:c\n",
    )
    assert result.returncode == 0, result.stderr
    assert collector.wait_for({1, 2, 3}, 5)
    shown = device_sdk("status", str(status), "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["metrics"]["published"] == 3
    assert "device_sdk_messages_acknowledged_total" in (tmp_path / "gw.prom").read_text()

"""``profile check``, ``profile show`` and ``status`` as the device-sdk command runs them."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from device_sdk import Metrics
from device_sdk.cli.profiles import add_profile_subcommands, run
from device_sdk.profiles.schema import SCHEMA
from device_sdk.status import write_status


def main(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="device-sdk")
    parser.add_argument("--debug", action="store_true")
    add_profile_subcommands(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(argv))


def test_check_passes_every_shipped_profile(capsys: pytest.CaptureFixture[str]) -> None:
    assert main("profile", "check") == 0
    out = capsys.readouterr().out
    assert "ok     test-fast" in out
    assert "ok     cellular-low-data" in out


def test_check_prints_one_line_per_bad_profile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "good.toml").write_text("[retry]\nmaximum = 60\n")
    (tmp_path / "bad.toml").write_text("[retry]\nmaximum = '60'\n")
    (tmp_path / "worse.toml").write_text("[mqtt]\nversoin = '5'\n")
    assert main("profile", "check", "--profile-dir", str(tmp_path)) == 1
    captured = capsys.readouterr()
    assert "ok     good" in captured.out
    errors = [line for line in captured.err.splitlines() if line.startswith("error")]
    assert len(errors) == 2
    assert "bad.toml: retry.maximum = '60' is invalid" in errors[0]
    assert "worse.toml: mqtt.versoin" in errors[1]
    assert captured.err.splitlines()[-1].startswith("hint: ")


def test_check_ignores_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DEVICE_SDK_RETRY_MAXIMUM", "not a number")
    assert main("profile", "check", "test-fast") == 0


def test_check_with_nothing_to_check_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main("profile", "check", "--profile-dir", str(tmp_path)) == 1
    assert "no profiles found" in capsys.readouterr().err


def test_show_prints_values_and_origins(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DEVICE_SDK_LIVENESS_KEEPALIVE", "45")
    assert main("profile", "show", "industrial-gateway", "--set", "retry.maximum=90") == 0
    out = capsys.readouterr().out
    assert "[retry]" in out
    assert "maximum = 90.0" in out and "# explicit override" in out
    assert "# environment DEVICE_SDK_LIVENESS_KEEPALIVE" in out
    assert "# raspberry-pi-gateway.toml" in out and "# industrial-gateway.toml" in out


def test_show_json_has_every_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main("profile", "show", "cellular-low-data", "--json", "--no-env") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["name"] == "cellular-low-data"
    assert set(data["values"]) == set(SCHEMA)
    keepalive = data["values"]["liveness.keepalive"]
    assert keepalive["value"] == 240.0
    assert keepalive["origin"].endswith("cellular-low-data.toml")
    assert keepalive["env"] == "DEVICE_SDK_LIVENESS_KEEPALIVE"


def test_show_errors_are_one_line_and_a_hint(capsys: pytest.CaptureFixture[str]) -> None:
    assert main("profile", "show", "no-such-profile") == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert err[0].startswith("device-sdk: error: profile = 'no-such-profile' is invalid")
    assert err[1].startswith("hint: ")
    assert main("profile", "show", "test-fast", "--set", "retry.maximum") == 1
    assert "KEY=VALUE" in capsys.readouterr().err


def test_debug_raises_instead(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(Exception, match="no-such-profile"):
        main("--debug", "profile", "show", "no-such-profile")


def test_status_prints_the_snapshot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "status.json"
    metrics = Metrics(current_hub="primary", queue_depth=3, last_recovery_seconds=0.05)
    write_status(path, metrics, extra={"profile": "test-fast"})
    assert main("status", str(path)) == 0
    out = capsys.readouterr().out
    assert f"pid {os.getpid()}" in out
    assert "hub: primary (connected)" in out
    assert "outbox: 3 waiting" in out
    assert "last recovery: 0.050 s" in out
    assert "profile: test-fast" in out
    assert main("status", str(path), "--json") == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["queue_depth"] == 3


def test_status_max_age_fails_on_a_stale_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "status.json"
    write_status(path, Metrics())
    document = json.loads(path.read_text())
    document["written_at"] -= 120
    path.write_text(json.dumps(document))
    assert main("status", str(path), "--max-age", "60") == 1
    assert "more than --max-age 60 s" in capsys.readouterr().err
    assert main("status", str(path), "--max-age", "600") == 0


def test_status_of_a_missing_file_is_one_line_and_a_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main("status", str(tmp_path / "missing.json")) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("device-sdk: error: cannot read the status file")
    assert err[1].startswith("hint: ")

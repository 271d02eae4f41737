"""The drill and the samples run for real, as a user would run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from device_sdk.cli.drill import format_report, run_drill
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


def run_sample(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        cwd=ROOT,
        env=env,
    )


def test_gateway_sample_speaks_the_systemd_notify_protocol(tmp_path: Path) -> None:
    import os
    import socket

    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(address)
        notify.settimeout(30)
        env = dict(os.environ, NOTIFY_SOCKET=address, WATCHDOG_USEC="200000")
        result = run_sample(
            "samples/telemetry_gateway.py",
            "--local-testbed",
            "--seconds",
            "0.5",
            "--rate",
            "20",
            "--outbox",
            str(tmp_path / "outbox.sqlite"),
            env=env,
        )
        assert result.returncode == 0, result.stderr
        states = {notify.recv(64).decode() for _ in range(2)}
    assert states == {"READY=1", "WATCHDOG=1"}


def test_systemd_unit_restarts_and_watches_the_gateway() -> None:
    import configparser

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(ROOT / "samples" / "telemetry-gateway.service")
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert int(service["WatchdogSec"]) > 0
    assert service["Restart"] == "always"
    assert "telemetry_gateway.py" in service["ExecStart"]
    assert unit["Unit"]["StartLimitIntervalSec"] == "0"


def test_concierge_runbook_moves_the_fleet() -> None:
    result = run_sample("samples/concierge_runbook.py", "--local-testbed", "--devices", "2")
    assert result.returncode == 0, result.stderr
    assert "2/2 devices moved to secondary" in result.stdout


def test_testbed_fixture_sample_passes_as_a_user_would_run_it() -> None:
    result = run_sample(
        "-m", "pytest", "-q", "-p", "no:cacheprovider", "samples/test_my_gateway.py"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_asyncio_sensor_sample_reports_and_obeys_commands() -> None:
    result = run_sample("samples/asyncio_sensor.py", "--local-testbed", "--seconds", "1")
    assert result.returncode == 0, result.stderr
    assert "[command] period is now 0.25 s" in result.stdout
    assert "readings acknowledged" in result.stdout


def test_gateway_sample_feeds_the_watchdog_only_while_the_client_is_healthy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client stopped for good (EngineFailed) must let systemd's watchdog fire."""
    import importlib.util
    import socket

    spec = importlib.util.spec_from_file_location("gateway", ROOT / "samples/telemetry_gateway.py")
    assert spec is not None and spec.loader is not None
    gateway = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gateway)

    class Client:
        healthy = True

    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(address)
        systemd.settimeout(1.0)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        monkeypatch.setenv("WATCHDOG_USEC", "2")  # due on every loop
        watchdog = gateway.Watchdog()
        client = Client()
        assert watchdog.feed(client)
        assert systemd.recv(64) == b"WATCHDOG=1"
        client.healthy = False
        assert not watchdog.feed(client)
        systemd.settimeout(0.2)
        with pytest.raises(TimeoutError):
            systemd.recv(64)  # no ping: systemd restarts the process


def test_token_expiry_drill_renews_then_outlives_a_token_and_loses_nothing() -> None:
    report = run_drill("token-expiry", warmup=0.2, after=0.3)
    text = format_report(report)
    assert report.ok, text
    assert report.lost == 0 and report.published > 5
    assert report.renewals >= 1 and report.renewal_disconnects == 0
    assert report.refusals == 0
    assert report.back_seconds is not None and report.recovery_seconds is not None
    lines = text.splitlines()
    expired = next(i for i, line in enumerate(lines) if "token held at the fault expires" in line)
    back = next(i for i, line in enumerate(lines) if "IoT hub back" in line)
    assert expired < back  # the hub came back only after the old token was dead
    assert "credentials renewed on iothub" in text


def test_dps_drill_reprovisions_once_and_drains_on_the_reassigned_hub() -> None:
    report = run_drill("dps", warmup=0.5, after=0.3)
    text = format_report(report)
    assert report.ok, text
    assert report.lost == 0 and report.published > 5 and report.id_mismatches == 0
    assert report.recovery_seconds is not None
    hub_b = "hubb.hubs.device-sdk.test"
    assert report.reassigned_to == hub_b and report.ended_on == hub_b
    assert report.registrations == 2 and report.reprovisions == 1
    provisioned = [line for line in text.splitlines() if "provisioned to" in line]
    assert len(provisioned) == 2, text  # at start, on hub A; after the fault, on hub B
    assert "huba.hubs.device-sdk.test" in provisioned[0] and hub_b in provisioned[1]
    assert "first PUBACK from dps-hubb" in text


def test_the_drill_command_runs_the_dps_scenario() -> None:
    result = run_sample("-m", "device_sdk.cli", "drill", "--scenario", "dps", "--no-tls")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "failover drill: dps" in result.stdout
    assert "operator: DPS reassigns drill-dps to hubb.hubs.device-sdk.test" in result.stdout
    assert "result: OK" in result.stdout


@pytest.mark.parametrize(
    ("sample", "command_line"),
    [
        ("samples/azure_iot_hub.py", "C2D message: b'{\"interval\": 30}'"),
        ("samples/aws_iot_core.py", "command on cmd/greenhouse/greenhouse-7"),
    ],
)
def test_cloud_samples_publish_and_receive_against_the_testbed(
    sample: str, command_line: str
) -> None:
    result = run_sample(sample, "--testbed", "--readings", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    acknowledged = [line for line in result.stdout.splitlines() if "acknowledged (PUBACK)" in line]
    assert len(acknowledged) == 3, result.stdout
    assert command_line in result.stdout


def test_the_port_blocked_drill_moves_to_wss_and_back_losing_nothing() -> None:
    report = run_drill("port-blocked", warmup=0.5, after=0.3)
    text = format_report(report)
    assert report.ok, text
    assert report.lost == 0 and report.published > 5
    assert report.fallback_transport is not None and report.fallback_transport.startswith("wss:")
    assert report.returned_seconds is not None
    assert "drops SYNs" in text and "back on mqtts:" in text


def test_the_region_loss_drill_follows_the_switch_through_a_surviving_replica() -> None:
    report = run_drill("region-loss", warmup=0.5, after=0.5)
    text = format_report(report)
    assert report.ok, text
    assert report.lost == 0 and report.rollbacks == 0
    assert report.confirmed_seconds is not None and report.confirmed_seconds < 5.0
    assert "region 1 lost" in text and "through replica 2" in text

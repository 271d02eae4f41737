"""The device-sdk command as an operator runs it: publish, run with a status file, status,
and a fresh machine whose outbox folder does not exist yet."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from device_sdk.identity.sas import sas_token
from device_sdk.profiles import env_variable
from device_sdk.testbed import DnsServer, Testbed
from device_sdk.testbed.pki import CertificateAuthority
from device_sdk.testbed.tls_listener import TlsProbeListener

pytestmark = pytest.mark.integration

OUTBOX_PATH = env_variable("outbox.path")  # DEVICE_SDK_OUTBOX_PATH


def device_sdk(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "device_sdk.cli", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
        check=False,
        env=None if env is None else {**os.environ, **env},
    )


def hub_arguments(bed: Testbed, profile: str = "test-fast") -> list[str]:
    # IP literals need no DNS; the hubs are plain MQTT on the testbed.
    return [
        *(f"--hub={h.name}={h.address}:{h.broker.port}" for h in bed.hubs),
        "--plain",
        f"--profile={profile}",
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


def test_run_waits_for_every_puback_at_the_end_of_its_input(testbed: Testbed) -> None:
    """Without a status file slowing its exit, `run --stdin` used to leave before its PUBACKs."""
    collector = testbed.collector("primary", "cli/all")
    lines = "".join(f"{n}:x\n" for n in range(200))
    result = device_sdk(
        "run", "--client-id=cli-4", "--topic=cli/all", "--stdin", *hub_arguments(testbed),
        stdin=lines,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert collector.wait_for(set(range(200)), 5)


def test_run_says_what_was_not_acknowledged_when_time_runs_out(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from device_sdk import ClientConfig, DeviceClient, HubEndpoint
    from device_sdk.cli.run import _drain

    hub = HubEndpoint(name="gone", fqdn="127.0.0.1", port=9, tls=None)
    client = DeviceClient(ClientConfig(client_id="cli-5", hubs=(hub,)))  # never connected
    try:
        client.publish("cli/none", b"1:x")
        assert _drain(client, 0.2) == 3
    finally:
        client.close()
    err = capsys.readouterr().err
    assert "1 message(s) not acknowledged within 0.2 s; the outbox is in memory" in err


def test_a_fresh_machine_gets_its_outbox_folder_made_private(
    testbed: Testbed, tmp_path: Path
) -> None:
    # The gateway profile's durable outbox, moved (as on a device) to a folder not made yet.
    state = tmp_path / "state"
    collector = testbed.collector("primary", "cli/fresh")
    result = device_sdk(
        "publish",
        "--client-id=cli-3",
        "--topic=cli/fresh",
        "--message=8:durable",
        *hub_arguments(testbed, profile="raspberry-pi-gateway"),
        env={OUTBOX_PATH: str(state / "outbox.sqlite")},
    )
    assert result.returncode == 0, result.stderr
    assert collector.wait_for({8}, 5)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in state.iterdir()}
    assert modes.get("outbox.sqlite") == 0o600, modes
    assert set(modes.values()) == {0o600}, modes


@pytest.mark.parametrize("where", ["parent-missing", "parent-is-a-file"])
def test_an_outbox_that_cannot_be_created_is_one_error_naming_both_ways_out(
    tmp_path: Path, where: str
) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    folder = tmp_path / "typo" / "state" if where == "parent-missing" else tmp_path / "a-file"
    result = device_sdk(
        "run",
        "--client-id=cli-4",
        "--hub=primary=127.0.0.1:9",  # never dialled: the outbox is opened first
        "--plain",
        "--profile=raspberry-pi-gateway",
        "--duration=0",
        env={OUTBOX_PATH: str(folder / "outbox.sqlite")},
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    error, hint = result.stderr.strip().splitlines()
    assert error.startswith("device-sdk: error: OutboxStorageError: ")
    assert str(folder) in error and OUTBOX_PATH in error
    assert hint.startswith("hint: create the outbox's folder") and f"{OUTBOX_PATH}=" in hint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing was created


# --------------------------------------------------------------------------- identity options

SAS_KEY = base64.b64encode(b"integration sas key, 32 bytes!!!").decode()
AZURE_ENDPOINT = "iothub-cli.device-sdk.test"


def sas_key_file(folder: Path) -> Path:
    path = folder / "device.sas"
    path.write_text(SAS_KEY + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def test_run_signs_in_to_mosquitto_with_azures_user_name_and_mqtt_3(
    testbed: Testbed, tmp_path: Path
) -> None:
    collector = testbed.collector("primary", "cli/azure")
    result = device_sdk(
        "run", "--client-id=cli-azure-1", "--topic=cli/azure", "--stdin", "--azure",
        f"--sas-key-file={sas_key_file(tmp_path)}", *hub_arguments(testbed),
        stdin="1:a\n2:b\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert collector.wait_for({1, 2}, 5)
    primary = testbed.hubs[0]
    (client,) = [c for c in primary.broker.clients_connected() if c.client_id == "cli-azure-1"]
    assert client.protocol_level == 2  # mosquitto logs MQTT 3.1.1 as p2 (5 for MQTT 5)
    assert client.username == f"{primary.address}/cli-azure-1/?api-version=2021-04-12"
    assert SAS_KEY not in result.stdout + result.stderr
    assert "SharedAccessSignature" not in result.stdout + result.stderr


def test_run_sends_a_sas_token_minted_from_the_key_file_and_the_profiles_alpn(
    tmp_path: Path,
) -> None:
    """The probe listener records the password's SHA-256: it must be a token signed with
    the key file's key for this hub and device, valid the profile's 10 s."""
    ca = CertificateAuthority.create()
    server = ca.issue_server_certificate([AZURE_ENDPOINT]).write_to(tmp_path, stem="hub")
    ca_file = ca.write_to(tmp_path)
    with (
        DnsServer() as dns,
        TlsProbeListener(
            cert_file=server.cert_file,
            key_file=server.key_file,
            require_client_certificate=False,
            alpn_protocols=("mqtt",),
        ) as listener,
    ):
        dns.set_address(AZURE_ENDPOINT, ["127.0.0.1"], ttl=1)
        started = time.time()
        result = device_sdk(
            "run", "--client-id=cli-azure-2", "--stdin", "--azure", "--profile=test-fast",
            f"--sas-key-file={sas_key_file(tmp_path)}", f"--ca-file={ca_file}",
            f"--hub=azure={AZURE_ENDPOINT}:{listener.port}",
            stdin="1:a\n",
            env={
                env_variable("dns.nameservers"): dns.host,
                env_variable("dns.port"): str(dns.port),
                env_variable("tls.alpn_protocols"): "mqtt",
            },
        )  # fmt: skip
        ended = time.time()
        records = listener.wait_for_connects(1, timeout=5.0)
    assert result.returncode == 0, result.stderr
    record = records[0]
    assert record.sni == AZURE_ENDPOINT
    assert record.alpn_offered == ("mqtt",)
    connect = record.connect
    assert connect is not None and connect.password_present
    assert connect.client_id == "cli-azure-2" and connect.protocol_level == 4
    assert connect.username == f"{AZURE_ENDPOINT}/cli-azure-2/?api-version=2021-04-12"
    resource = f"{AZURE_ENDPOINT}/devices/cli-azure-2"
    key = base64.b64decode(SAS_KEY)
    expected = {
        hashlib.sha256(sas_token(resource, key, expiry).encode()).hexdigest()
        for expiry in range(math.floor(started + 10) - 1, math.floor(ended + 10) + 1)
    }
    assert connect.password_sha256 in expected
    assert [p.topic for p in record.publishes] == ["devices/cli-azure-2/messages/events/"]
    assert SAS_KEY not in result.stdout + result.stderr
    assert "SharedAccessSignature" not in result.stdout + result.stderr

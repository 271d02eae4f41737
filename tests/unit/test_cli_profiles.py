"""``profile check``, ``profile show`` and ``status`` as the device-sdk command runs them, and
the identity options of ``run`` and ``publish`` turned into a ClientConfig by the profile."""

from __future__ import annotations

import argparse
import base64
import json
import os
from pathlib import Path

import pytest

from device_sdk import ConfigError, Credentials, Metrics
from device_sdk.cli import _parser
from device_sdk.cli.profiles import add_profile_subcommands, run
from device_sdk.cli.run import _topic, device_config
from device_sdk.config import ClientConfig
from device_sdk.identity import SasTokenProvider
from device_sdk.identity.sas import parse_sas_token
from device_sdk.profiles.schema import SCHEMA
from device_sdk.status import write_status
from device_sdk.testbed.pki import CertificateAuthority


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


# --------------------------------------------------------------------------- run's identity

KEY = base64.b64encode(b"s" * 32).decode()
HUBS = ("--hub=primary=hub-eu.example.com:8883", "--hub=secondary=hub-us.example.com:8883")


def run_config(*argv: str) -> tuple[argparse.Namespace, ClientConfig]:
    args = _parser().parse_args(["run", "--client-id=meter-17", "--profile=test-fast", *argv])
    return args, device_config(args)


def key_file(folder: Path, mode: int = 0o600, text: str = KEY) -> Path:
    path = folder / "sas.key"
    path.write_text(text + "\n", encoding="utf-8")
    path.chmod(mode)
    return path


def option_error(*argv: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        run_config(*argv)
    assert KEY not in str(caught.value)
    return caught.value


def test_sas_key_file_mints_tokens_that_live_by_the_profile(tmp_path: Path) -> None:
    _args, config = run_config(f"--sas-key-file={key_file(tmp_path)}", *HUBS)
    provider = config.credentials
    assert isinstance(provider, SasTokenProvider)
    assert (provider.ttl, provider.renew_margin) == (10.0, 5.0)  # test-fast's [identity]
    identity = provider.identity_for(config.hubs[1], client_id="meter-17", after_refusal=False)
    token = parse_sas_token(identity.password or "")
    assert token is not None and token.resource == "hub-us.example.com/devices/meter-17"
    assert identity.username is None
    assert config.mqtt_version == "5"


def test_sas_key_file_is_read_again_at_every_attempt(tmp_path: Path) -> None:
    path = key_file(tmp_path)
    _args, config = run_config(f"--sas-key-file={path}", *HUBS)
    assert config.credentials is not None
    hub = config.hubs[0]
    first = config.credentials.identity_for(hub, client_id="meter-17", after_refusal=False)
    key_file(tmp_path, text=base64.b64encode(b"r" * 32).decode())  # rotated in place
    second = config.credentials.identity_for(hub, client_id="meter-17", after_refusal=False)
    tokens = [parse_sas_token(i.password or "") for i in (first, second)]
    assert tokens[0] is not None and tokens[1] is not None
    if tokens[0].expiry == tokens[1].expiry:  # same second: only the new key differs
        assert tokens[0].signature != tokens[1].signature


def test_a_username_with_a_sas_key_is_a_template_filled_per_hub(tmp_path: Path) -> None:
    _args, config = run_config(
        f"--sas-key-file={key_file(tmp_path)}", "--username={fqdn}/{client_id}", *HUBS
    )
    assert config.credentials is not None
    identity = config.credentials.identity_for(
        config.hubs[1], client_id="meter-17", after_refusal=False
    )
    assert identity.username == "hub-us.example.com/meter-17"


def test_azure_speaks_iot_hubs_dialect(tmp_path: Path) -> None:
    args, config = run_config("--azure", f"--sas-key-file={key_file(tmp_path)}", *HUBS)
    assert config.mqtt_version == "3.1.1"
    assert config.client_id == "meter-17"
    assert [hub.username for hub in config.hubs] == [
        "{fqdn}/{client_id}/?api-version=2021-04-12"
    ] * 2
    assert isinstance(config.credentials, SasTokenProvider)
    assert _topic(args, config) == "devices/meter-17/messages/events/"


def test_cert_and_key_files_give_mutual_tls_warned_by_the_profile(tmp_path: Path) -> None:
    files = CertificateAuthority.create().issue_client_certificate("meter-17")
    written = files.write_to(tmp_path, stem="device")
    _args, config = run_config(
        "--azure", f"--cert-file={written.cert_file}", f"--key-file={written.key_file}", *HUBS
    )
    assert config.credentials is not None
    identity = config.credentials.identity_for(
        config.hubs[0], client_id="meter-17", after_refusal=False
    )
    assert identity.cert_file == str(written.cert_file)
    assert identity.password is None
    assert identity.expires_at is not None
    assert identity.warn_at == identity.expires_at - 14 * 24 * 3600.0


def test_a_password_file_still_gives_fixed_credentials(tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("pa ss\n", encoding="utf-8")
    _args, config = run_config("--username=alice", f"--password-file={password}", *HUBS)
    assert config.credentials == Credentials(username="alice", password="pa ss")


@pytest.mark.parametrize(
    ("extra", "option", "allowed"),
    [
        (("--password-file={key}", "--username=u"), "--sas-key-file", "not with --password-file"),
        (("--cert-file={key}", "--key-file={key}"), "--cert-file", "not with --sas-key-file"),
        (("--azure", "--username=u"), "--username", "unset with --azure"),
    ],
)
def test_conflicting_identity_options_name_the_option(
    tmp_path: Path, extra: tuple[str, ...], option: str, allowed: str
) -> None:
    path = key_file(tmp_path)
    argv = [f"--sas-key-file={path}", *(e.format(key=path) for e in extra), *HUBS]
    error = option_error(*argv)
    assert error.field == option
    assert allowed in str(error)


def test_incomplete_identity_options_name_the_missing_one(tmp_path: Path) -> None:
    path = str(key_file(tmp_path))
    assert option_error(f"--cert-file={path}", *HUBS).field == "--key-file"
    assert option_error(f"--key-file={path}", *HUBS).field == "--cert-file"
    assert option_error(f"--password-file={path}", *HUBS).field == "--username"
    error = option_error("--azure", *HUBS)
    assert error.field == "--azure" and "--sas-key-file or --cert-file" in str(error)
    error = option_error("--azure", "--username=u", "--password-file=" + path, *HUBS)
    assert error.field == "--azure"
    assert option_error(f"--cert-file={path}", f"--key-file={path}", "--plain", *HUBS).field == (
        "--cert-file"
    )


def test_azure_checks_the_device_id(tmp_path: Path) -> None:
    args = _parser().parse_args(
        ["run", "--client-id=meter/17", "--azure", f"--sas-key-file={key_file(tmp_path)}", *HUBS]
    )
    with pytest.raises(ConfigError) as caught:
        device_config(args)
    assert caught.value.field == "--client-id" and "IoT Hub device id" in str(caught.value)


@pytest.mark.parametrize(
    ("mode", "text", "why"),
    [
        (0o644, KEY, "may be read by group or others"),
        (0o600, "not a key!", "does not hold a SAS key"),
    ],
    ids=["readable-by-others", "not-base64"],
)
def test_an_unusable_key_file_fails_at_start_naming_the_option(
    tmp_path: Path, mode: int, text: str, why: str
) -> None:
    error = option_error(f"--sas-key-file={key_file(tmp_path, mode, text)}", *HUBS)
    assert error.field == "--sas-key-file"
    assert why in str(error)
    assert "not a key!" not in str(error)


def test_a_missing_key_file_fails_at_start_naming_the_option(tmp_path: Path) -> None:
    error = option_error(f"--sas-key-file={tmp_path / 'absent.key'}", *HUBS)
    assert error.field == "--sas-key-file" and "cannot be read" in str(error)


def test_a_private_key_others_may_read_names_key_file(tmp_path: Path) -> None:
    written = CertificateAuthority.create().issue_client_certificate("d").write_to(tmp_path)
    Path(written.key_file).chmod(0o644)
    error = option_error(
        f"--cert-file={written.cert_file}", f"--key-file={written.key_file}", *HUBS
    )
    assert error.field == "--key-file" and "group or others" in str(error)


def test_run_reports_an_identity_conflict_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from device_sdk.cli import main as cli_main

    path = key_file(tmp_path)
    status = cli_main(
        ["run", "--client-id=d", f"--sas-key-file={path}", f"--password-file={path}", *HUBS]
    )
    assert status == 1
    err = capsys.readouterr().err
    assert "--password-file" in err and "--sas-key-file" in err and "Traceback" not in err
    assert KEY not in err


# --------------------------------------------------------------------------- run's ways in


def test_transport_options_give_every_hub_its_ways_in_in_order() -> None:
    _args, config = run_config("--transport=mqtts:8883", "--transport=wss:443/mqtt", *HUBS)
    for hub in config.hubs:
        assert [way.label for way in hub.ways_in] == ["mqtts:8883", "wss:443/mqtt"]
    _args, config = run_config("--websockets", *HUBS)
    assert [way.label for way in config.hubs[0].ways_in] == ["mqtts:8883", "wss:443/mqtt"]


def test_azure_websockets_use_iot_hubs_path(tmp_path: Path) -> None:
    _args, config = run_config(
        "--azure", f"--sas-key-file={key_file(tmp_path)}", "--websockets", *HUBS
    )
    labels = [way.label for way in config.hubs[0].ways_in]
    assert labels == ["mqtts:8883", "wss:443/$iothub/websocket"]


def test_proxy_options_name_the_proxy_and_never_show_its_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _args, config = run_config("--proxy=http://gw:s3cret@proxy.corp:3128", *HUBS)
    assert config.proxy is not None and config.proxy.authority == "proxy.corp:3128"
    assert "s3cret" not in repr(config)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp:8080")
    monkeypatch.setenv("NO_PROXY", ".example.com")
    _args, config = run_config("--proxy-from-env", "--proxy-resolve-locally", *HUBS)
    assert config.proxy is not None and config.proxy.resolve_locally
    assert config.proxy.bypasses("hub-eu.example.com")
    monkeypatch.delenv("HTTPS_PROXY")
    assert option_error("--proxy-from-env", *HUBS).field == "--proxy-from-env"
    assert option_error("--proxy=socks5://p:1080", *HUBS).field == "--proxy"
    assert option_error("--transport=wss:443", "--plain", *HUBS).field == "--transport"

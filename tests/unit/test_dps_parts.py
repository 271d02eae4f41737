"""DPS parts with no network: settings at the boundary, the kept assignment, DPS's answers
(hostile ones included), the backoff between runs, and the hub an assignment becomes."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import math
import os
import random
from pathlib import Path

import pytest

from device_sdk.adapters.dps_http import (
    MAX_RETRY_AFTER,
    Pending,
    ProvisioningThrottled,
    parse_answer,
    parse_retry_after,
)
from device_sdk.concierge.settings import ConciergeSettings
from device_sdk.concierge.trust import ConciergeTrust
from device_sdk.config import ClientConfig, HubEndpoint, SrvSettings
from device_sdk.errors import (
    ConfigError,
    ProvisioningFailed,
    ProvisioningRefused,
    ProvisioningUnavailable,
)
from device_sdk.provisioning import (
    Assignment,
    AssignmentStore,
    DpsSettings,
    hub_for,
    provisioning_delay,
)
from device_sdk.transports import Transport

KEY = base64.b64encode(b"k" * 32).decode()


def settings(**overrides: object) -> DpsSettings:
    values: dict[str, object] = {"id_scope": "0ne00ABC", "registration_id": "dev-1", "sas_key": KEY}
    values.update(overrides)
    return DpsSettings(**values)  # type: ignore[arg-type]


def private_file(path: Path, text: str, mode: int = 0o600) -> str:
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


# --------------------------------------------------------------------------- settings


def test_defaults_are_azure_s() -> None:
    dps = settings()
    assert dps.endpoint == "global.azure-devices-provisioning.net"
    assert (dps.port, dps.api_version, dps.hub_port) == (443, "2021-06-01", 8883)
    assert dps.hub_tls is not None and dps.state_path is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id_scope", ""),
        ("id_scope", "0ne/../x"),
        ("registration_id", ""),
        ("registration_id", "-dev"),
        ("registration_id", "dev 1"),
        ("registration_id", "d" * 129),
        ("registration_id", "dev/../1"),
        ("endpoint", "https://global.azure-devices-provisioning.net"),
        ("endpoint", "a..b"),
        ("port", 0),
        ("port", True),
        ("hub_port", 70000),
        ("timeout", 0),
        ("timeout", math.nan),
        ("poll_interval", -1),
        ("backoff_initial", math.inf),
        ("backoff_cap", 1.0),  # below the default initial of 5 s
        ("api_version", "latest"),
        ("hub_tls", "tls"),
        ("state_path", ""),
    ],
)
def test_bad_values_are_refused_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(**{field: value})
    assert f"dps.{field}" in str(caught.value)


def test_exactly_one_attestation(tmp_path: Path) -> None:
    key_file = private_file(tmp_path / "key", KEY)
    with pytest.raises(ConfigError, match="exactly one"):
        settings(sas_key=None)
    with pytest.raises(ConfigError, match="exactly one"):
        settings(sas_key_file=key_file)
    assert settings(sas_key=None, sas_key_file=key_file).sas_key_file == key_file
    with pytest.raises(ConfigError, match=r"dps\.key_file"):
        settings(sas_key=None, cert_file=key_file)


def test_a_key_is_never_shown(tmp_path: Path) -> None:
    secret = "not//base64!!" + "s3cr3t"
    with pytest.raises(ConfigError) as caught:
        settings(sas_key=secret)
    assert "s3cr3t" not in str(caught.value) and caught.value.__cause__ is None
    assert KEY not in repr(settings())


@pytest.mark.parametrize("field", ["sas_key_file", "key_file"])
def test_key_files_others_may_read_are_refused(tmp_path: Path, field: str) -> None:
    loose = private_file(tmp_path / "loose", KEY, mode=0o640)
    cert = private_file(tmp_path / "cert", "cert", mode=0o644)
    extra = {"cert_file": cert} if field == "key_file" else {}
    with pytest.raises(ConfigError, match=f"dps.{field}.*0640"):
        settings(sas_key=None, **{field: loose}, **extra)
    os.chmod(loose, 0o600)
    assert getattr(settings(sas_key=None, **{field: loose}, **extra), field) == loose


def test_a_client_takes_dps_alone_not_with_a_concierge_or_srv() -> None:
    hubs = (HubEndpoint(name="unprovisioned", fqdn="unprovisioned.invalid"),)
    assert ClientConfig(client_id="c", hubs=hubs, dps=settings()).dps == settings()
    with pytest.raises(ConfigError, match="dps"):
        ClientConfig(client_id="c", hubs=hubs, dps="dps")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="dps"):
        ClientConfig(client_id="c", hubs=hubs, dps=settings(), srv=SrvSettings(domain="a.b"))
    trust = ConciergeTrust(
        keys={"k": base64.b64encode(b"x" * 32).decode()}, allowed_hubs=("*.example.com",)
    )
    concierge = ConciergeSettings(url="https://concierge.example.com/v1", trust=trust)
    with pytest.raises(ConfigError, match="dps"):
        ClientConfig(client_id="c", hubs=hubs, dps=settings(), concierge=concierge)


# --------------------------------------------------------------------------- the kept assignment


def test_the_assignment_is_kept_privately_and_read_back(tmp_path: Path) -> None:
    store = AssignmentStore(str(tmp_path / "state" / "nested" / "dps.json"))
    assert store.load() is None
    kept = Assignment(hub_fqdn="hub-a.azure-devices.net", device_id="dev-1", assigned_at=1.5e9)
    store.save(kept)
    assert store.load() == kept
    assert store.path.stat().st_mode & 0o777 == 0o600
    assert store.path.parent.stat().st_mode & 0o777 == 0o700
    moved = dataclasses.replace(kept, hub_fqdn="hub-b.azure-devices.net")
    store.save(moved)
    assert store.load() == moved
    assert [p.name for p in store.path.parent.iterdir()] == ["dps.json"]  # no temp left
    store.forget()
    store.forget()
    assert store.load() is None


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"\xff\xfe",
        b"[]",
        b"null",
        b"[" * 50_000,
        b'{"format": 2, "hub_fqdn": "h.example.com", "device_id": "d", "assigned_at": 1}',
        b'{"format": 1, "hub_fqdn": "h.example.com", "device_id": "d"}',
        b'{"format": 1, "hub_fqdn": "h.example.com", "device_id": "d", "assigned_at": true}',
        b'{"format": 1, "hub_fqdn": "10.0.0.1", "device_id": "d", "assigned_at": 1}',
        b'{"format": 1, "hub_fqdn": "bad name.com", "device_id": "d", "assigned_at": 1}',
        b'{"format": 1, "hub_fqdn": "h.example.com", "device_id": "", "assigned_at": 1}',
        b'{"format": 1, "hub_fqdn": "h.example.com", "device_id": 7, "assigned_at": 1}',
        b'{"format": 1, "hub_fqdn": "h.example.com", "device_id": "d", "assigned_at": -1}',
        b" " * 20_000,
    ],
)
def test_a_damaged_file_is_reported_and_treated_as_absent(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "dps.json"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="device_sdk"):
        assert AssignmentStore(str(path)).load() is None
    assert "damaged" in caplog.text


def test_an_unreadable_state_folder_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "dps.json"
    folder.mkdir()  # a directory where the file should be
    with caplog.at_level(logging.WARNING, logger="device_sdk"):
        assert AssignmentStore(str(folder)).load() is None
    assert "cannot be read" in caplog.text


# --------------------------------------------------------------------------- DPS's answers


def body(value: object) -> bytes:
    return json.dumps(value).encode()


ASSIGNED = {
    "operationId": "op-1",
    "status": "assigned",
    "registrationState": {"assignedHub": "hub-a.azure-devices.net", "deviceId": "dev-1"},
}


def test_an_assigning_answer_is_polled_and_an_assigned_one_ends_the_run() -> None:
    pending = parse_answer(202, body({"operationId": "op-1", "status": "assigning"}))
    assert pending == Pending("op-1", None)
    assert parse_answer(202, body({"operationId": "x", "status": "unassigned"}), retry_after="3")
    assigned = parse_answer(200, body(ASSIGNED))
    assert isinstance(assigned, Assignment)
    assert (assigned.hub_fqdn, assigned.device_id) == ("hub-a.azure-devices.net", "dev-1")


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, ProvisioningRefused),
        (403, ProvisioningRefused),
        (404, ProvisioningRefused),
        (429, ProvisioningThrottled),
        (500, ProvisioningUnavailable),
        (503, ProvisioningUnavailable),
        (302, ProvisioningFailed),
        (400, ProvisioningFailed),
        (204, ProvisioningFailed),
    ],
)
def test_http_statuses_map_onto_the_error_tree(status: int, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_answer(status, body({"errorCode": 401002, "message": "no"}))


@pytest.mark.parametrize(
    "answer",
    [
        b"",
        b"not json",
        b"\xff\xfe\xfd",
        b"[1, 2]",
        b'"assigned"',
        b"[" * 100_000,
        body({"status": "assigning"}),  # no operationId
        body({"status": "assigning", "operationId": ""}),
        body({"status": "assigning", "operationId": "x" * 300}),
        body({"status": "assigning", "operationId": "a\nb"}),
        body({"status": "assigning", "operationId": 5}),
        body({"status": "assigned"}),
        body({"status": "assigned", "registrationState": []}),
        body({"status": "assigned", "registrationState": {"deviceId": "d"}}),
        body({"status": "assigned", "registrationState": {"assignedHub": "h.example.com"}}),
        body({**ASSIGNED, "registrationState": {"assignedHub": "10.1.2.3", "deviceId": "d"}}),
        body({**ASSIGNED, "registrationState": {"assignedHub": "localhost", "deviceId": "d"}}),
        body({**ASSIGNED, "registrationState": {"assignedHub": "a b.com", "deviceId": "d"}}),
        body({**ASSIGNED, "registrationState": {"assignedHub": "h.com/x", "deviceId": "d"}}),
        body({**ASSIGNED, "registrationState": {"assignedHub": "h.com", "deviceId": "d" * 200}}),
        body({**ASSIGNED, "registrationState": {"assignedHub": "h.com", "deviceId": "a\x00"}}),
        body({"status": "failed", "registrationState": {"errorCode": "x" * 10_000}}),
        body({"status": "mystery"}),
        body({"status": ["assigned"]}),
    ],
)
def test_hostile_answers_fail_the_run_with_a_provisioning_error(answer: bytes) -> None:
    with pytest.raises(ProvisioningFailed) as caught:
        parse_answer(200, answer)
    assert len(str(caught.value)) < 400  # nothing the server sent is echoed at length


def test_a_disabled_enrollment_is_a_refusal() -> None:
    with pytest.raises(ProvisioningRefused, match="disabled"):
        parse_answer(200, body({"operationId": "o", "status": "disabled"}))


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("3", 3.0),
        (" 2 ", 2.0),
        ("0", 0.0),
        ("-1", None),
        ("1.5", None),
        ("abc", None),
        ("\uff19", None),  # a non-ASCII (fullwidth) digit
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
        ("99999999", MAX_RETRY_AFTER),
        ("9" * 400, None),
    ],
)
def test_retry_after_is_bounded(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds
    if header is not None:
        with pytest.raises(ProvisioningThrottled) as caught:
            parse_answer(429, b"", retry_after=header)
        assert caught.value.retry_after == seconds


# --------------------------------------------------------------------------- backoff between runs


def test_the_first_run_is_at_once_then_full_jitter_under_a_growing_capped_ceiling() -> None:
    dps = settings(backoff_initial=1.0, backoff_cap=16.0)
    rng = random.Random(42)
    assert provisioning_delay(0, dps, rng) == 0.0
    for failures, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (9, 16.0), (5000, 16.0)):
        delays = [provisioning_delay(failures, dps, rng) for _ in range(500)]
        assert all(0.0 <= d <= ceiling for d in delays)
        # Full jitter uses the whole band: a fleet spreads instead of re-registering in step.
        assert min(delays) < ceiling * 0.1 and max(delays) > ceiling * 0.9


def test_the_backoff_is_the_engine_rng_s_so_a_seed_repeats_it() -> None:
    dps = settings(backoff_initial=1.0, backoff_cap=60.0)
    first = [provisioning_delay(n, dps, random.Random(7)) for n in range(1, 8)]
    again = [provisioning_delay(n, dps, random.Random(7)) for n in range(1, 8)]
    assert first == again
    assert first != [provisioning_delay(n, dps, random.Random(8)) for n in range(1, 8)]


def test_a_throttling_dps_is_never_asked_before_its_retry_after() -> None:
    dps = settings(backoff_initial=0.1, backoff_cap=0.2)
    rng = random.Random(3)
    throttled = ProvisioningThrottled("429", 5.0)
    assert all(provisioning_delay(1, dps, rng, throttled) >= 5.0 for _ in range(100))
    unhinted = ProvisioningThrottled("429", None)
    assert all(provisioning_delay(1, dps, rng, unhinted) <= 0.1 for _ in range(100))


# --------------------------------------------------------------------------- the hub it becomes


def test_an_assignment_becomes_a_hub_with_the_dps_device_id_port_and_tls() -> None:
    dps = settings(hub_port=8884, hub_tls=None)
    assignment = Assignment(hub_fqdn="hub-a.azure-devices.net", device_id="dev-9", assigned_at=0)
    hub = hub_for(assignment, dps, taken=())
    assert (hub.name, hub.fqdn, hub.port, hub.tls, hub.client_id) == (
        "dps-hub-a",
        "hub-a.azure-devices.net",
        8884,
        None,
        "dev-9",
    )
    assert hub_for(assignment, dps, taken=("dps-hub-a",)).name == "dps2-hub-a"
    assert hub_for(assignment, dps, taken=("dps-hub-a", "dps2-hub-a")).name == "dps3-hub-a"
    long = dataclasses.replace(assignment, hub_fqdn="h" * 63 + ".azure-devices.net")
    names = {hub_for(long, dps, taken=()).name, hub_for(long, dps, taken=("dps-" + "h" * 59,)).name}
    assert len(names) == 2 and all(len(name) <= 63 for name in names)


BAD_VALUES: list[object] = [None, b"bytes", 3.5, -1, True, math.nan, "\ud800", "a\x00b", [], {}]


@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(DpsSettings)])
def test_any_bad_value_is_a_config_error_and_nothing_else(field: str, value: object) -> None:
    with contextlib.suppress(ConfigError):
        settings(**{field: value})


def test_dps_may_only_name_hubs_the_allow_list_takes() -> None:
    assert settings().allowed_hubs[0] == "*.azure-devices.net"  # IoT Hub's public cloud
    for bad in ((), ("10.0.0.1",), ("*",), ("*.com",), ["*.azure-devices.net"]):
        with pytest.raises(ConfigError, match=r"dps\.allowed_hubs"):
            settings(allowed_hubs=bad)


def test_an_assignment_outside_the_allow_list_is_refused_and_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from device_sdk.errors import ProvisioningFailed
    from device_sdk.provisioning import source as source_module
    from device_sdk.provisioning.assignment import AssignmentStore
    from device_sdk.provisioning.source import DpsSource

    state = tmp_path / "dps.json"
    evil = Assignment(hub_fqdn="hub.attacker.example", device_id="dev-1", assigned_at=1.5e9)
    monkeypatch.setattr(source_module, "register", lambda *_a, **_k: evil)
    source = DpsSource(settings(state_path=str(state)), resolver=None)  # type: ignore[arg-type]
    with pytest.raises(ProvisioningFailed, match=r"outside dps\.allowed_hubs"):
        source.provision()
    assert not state.exists()
    # A kept file naming a hub no longer allowed is ignored, not dialled.
    AssignmentStore(str(state)).save(evil)
    assert source.kept() is None
    good = dataclasses.replace(evil, hub_fqdn="hub-a.azure-devices.net")
    AssignmentStore(str(state)).save(good)
    assert source.kept() == good


def test_the_assigned_hub_takes_the_ways_in_dps_settings_name() -> None:
    ways = (
        Transport(scheme="mqtts", port=8883),
        Transport(scheme="wss", port=443, path="/$iothub/websocket"),
    )
    dps = settings(hub_transports=ways)
    assignment = Assignment(hub_fqdn="hub-a.azure-devices.net", device_id="dev-1", assigned_at=0)
    assert hub_for(assignment, dps, taken=()).ways_in == ways
    with pytest.raises(ConfigError, match=r"dps\.hub_transports"):
        settings(hub_transports=(Transport(scheme="ws", port=80),))  # plain, yet hub_tls is set

"""Status files: atomic JSON snapshots, the Prometheus textfile format, the periodic writer."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
import threading
import time
from pathlib import Path

import pytest

from device_sdk import ConfigError, DeviceSDKError, Metrics
from device_sdk.status import (
    StatusWriter,
    prometheus_text,
    read_status,
    write_prometheus,
    write_status,
)

# Every counter a different value, so that a counter reporting another field shows.
SAMPLE = Metrics(
    attempts=7,
    connects=3,
    disconnects=2,
    failovers=4,
    failbacks=1,
    dns_queries=9,
    concierge_updates=11,
    concierge_rejections=12,
    published=120,
    acknowledged=118,
    rejected=13,
    undeliverable=14,
    protocol_errors=15,
    callback_errors=16,
    internal_faults=17,
    queue_depth=2,
    dropped=5,
    current_hub="secondary",
    current_transport="wss:443/mqtt",
    transport_fallbacks=21,
    transport_returns=19,
    last_recovery_seconds=0.042,
    last_reconnect_seconds=0.031,
    ack_deadline_seconds=0.25,
)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# --------------------------------------------------------------------------- JSON


def test_status_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    before = time.time()
    write_status(path, SAMPLE, extra={"profile": "raspberry-pi-gateway", "state": "connected"})
    report = read_status(path)
    assert report.metrics == SAMPLE
    assert report.pid == os.getpid()
    assert before <= report.written_at <= time.time()
    assert report.extra == {"profile": "raspberry-pi-gateway", "state": "connected"}
    assert 0 <= report.age() < 5
    assert leftovers(tmp_path) == []


def test_status_files_are_readable_by_monitoring_users(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    write_status(path, SAMPLE)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_failed_write_keeps_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "status.json"
    write_status(path, SAMPLE)
    old = path.read_bytes()

    def broken_replace(src: str, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        write_status(path, Metrics(attempts=99))
    assert path.read_bytes() == old
    assert leftovers(tmp_path) == []


def test_unknown_metrics_from_a_newer_client_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    write_status(path, SAMPLE)
    document = json.loads(path.read_text())
    document["metrics"]["a_future_counter"] = 5
    path.write_text(json.dumps(document))
    assert read_status(path).metrics == SAMPLE


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"[]",
        b'{"format": 2}',
        b'{"format": 1, "metrics": {}}',
        b'{"format": 1, "metrics": [], "written_at": 1, "pid": 1, "extra": {}}',
        b'{"format": 1, "metrics": {"attempts": "7"}, "written_at": 1, "pid": 1, "extra": {}}',
        b'{"format": 1, "metrics": {"attempts": true}, "written_at": 1, "pid": 1, "extra": {}}',
        b'{"format": 1, "metrics": {"current_hub": 3}, "written_at": 1, "pid": 1, "extra": {}}',
        b'{"format": 1, "metrics": {}, "written_at": "now", "pid": 1, "extra": {}}',
        b"\xff\xfe",
    ],
)
def test_a_file_that_is_not_a_status_file_is_one_clear_error(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "status.json"
    path.write_bytes(content)
    with pytest.raises(DeviceSDKError, match="is not a device-sdk status file"):
        read_status(path)


def test_a_missing_status_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DeviceSDKError, match="cannot read the status file"):
        read_status(tmp_path / "missing.json")


# --------------------------------------------------------------------------- Prometheus

# The text exposition format, strictly enough to catch mistakes.
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{({_LABEL}(?:,{_LABEL})*)\}})? (\S+)$")
_COMMENT = re.compile(rf"^# (HELP|TYPE) ({_NAME}) (.+)$")
_LABEL_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')


def parse_exposition(text: str) -> dict[str, dict[str, object]]:
    """name -> {"type", "help", "samples": [(labels, value)]}; raises on any bad line."""
    assert text.endswith("\n")
    families: dict[str, dict[str, object]] = {}
    for line in text.splitlines():
        comment = _COMMENT.match(line)
        if comment:
            kind, name, rest = comment.groups()
            family = families.setdefault(name, {"samples": []})
            assert kind.lower() not in family, f"second {kind} for {name}"
            assert kind == "HELP" or "help" in family, f"TYPE before HELP for {name}"
            family[kind.lower()] = rest
            continue
        sample = _SAMPLE.match(line)
        assert sample, f"not exposition format: {line!r}"
        name, labels, value = sample.groups()
        assert name in families and "type" in families[name], f"sample before TYPE: {name}"
        pairs = {k: unescape(v) for k, v in _LABEL_PAIR.findall(labels or "")}
        samples = families[name]["samples"]
        assert isinstance(samples, list)
        samples.append((pairs, float(value)))
    return families


def unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), value)


def test_prometheus_output_parses_with_help_type_and_values() -> None:
    families = parse_exposition(prometheus_text(SAMPLE, labels={"device": "gw-17"}))
    for name, family in families.items():
        assert family["type"] in ("counter", "gauge")
        assert (family["type"] == "counter") == name.endswith("_total"), name
        assert family["help"]
    assert families["device_sdk_connect_attempts_total"]["samples"] == [({"device": "gw-17"}, 7.0)]
    assert families["device_sdk_outbox_depth"]["samples"] == [({"device": "gw-17"}, 2.0)]
    assert families["device_sdk_last_recovery_seconds"]["samples"] == [({"device": "gw-17"}, 0.042)]
    assert families["device_sdk_connected"]["samples"] == [({"device": "gw-17"}, 1.0)]
    assert families["device_sdk_current_hub"]["samples"] == [
        ({"device": "gw-17", "hub": "secondary"}, 1.0)
    ]
    assert families["device_sdk_current_transport"]["samples"] == [
        ({"device": "gw-17", "transport": "wss:443/mqtt"}, 1.0)
    ]
    assert families["device_sdk_transport_fallbacks_total"]["samples"] == [
        ({"device": "gw-17"}, 21.0)
    ]


def test_unknown_gauges_have_no_sample_and_no_hub_means_disconnected() -> None:
    families = parse_exposition(prometheus_text(Metrics()))
    assert families["device_sdk_last_recovery_seconds"]["samples"] == []
    assert families["device_sdk_ack_deadline_seconds"]["samples"] == []
    assert families["device_sdk_current_hub"]["samples"] == []
    assert families["device_sdk_current_transport"]["samples"] == []
    assert families["device_sdk_connected"]["samples"] == [({}, 0.0)]


def test_label_values_are_escaped() -> None:
    awkward = 'a "quoted"\\ name\nwith a newline'
    families = parse_exposition(prometheus_text(Metrics(current_hub=awkward)))
    labels, _ = families["device_sdk_current_hub"]["samples"][0]  # type: ignore[index]
    assert labels == {"hub": awkward}


@pytest.mark.parametrize("name", ["1device", "__reserved", "with-dash", "hub"])
def test_bad_label_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="label name"):
        prometheus_text(SAMPLE, labels={name: "x"})


def test_every_metric_reports_its_own_field() -> None:
    families = parse_exposition(prometheus_text(SAMPLE))
    values = {name: family["samples"] for name, family in families.items()}
    assert values == {
        "device_sdk_connect_attempts_total": [({}, 7.0)],
        "device_sdk_connects_total": [({}, 3.0)],
        "device_sdk_disconnects_total": [({}, 2.0)],
        "device_sdk_failovers_total": [({}, 4.0)],  # failbacks are not failovers
        "device_sdk_failbacks_total": [({}, 1.0)],
        "device_sdk_dns_queries_total": [({}, 9.0)],
        "device_sdk_concierge_updates_total": [({}, 11.0)],
        "device_sdk_concierge_rejections_total": [({}, 12.0)],
        "device_sdk_messages_published_total": [({}, 120.0)],
        "device_sdk_messages_acknowledged_total": [({}, 118.0)],
        "device_sdk_messages_dropped_total": [({}, 5.0)],
        "device_sdk_messages_rejected_total": [({}, 13.0)],
        "device_sdk_messages_undeliverable_total": [({}, 14.0)],
        "device_sdk_protocol_errors_total": [({}, 15.0)],
        "device_sdk_callback_errors_total": [({}, 16.0)],
        "device_sdk_internal_faults_total": [({}, 17.0)],
        "device_sdk_transport_fallbacks_total": [({}, 21.0)],
        "device_sdk_transport_returns_total": [({}, 19.0)],
        "device_sdk_current_transport": [({"transport": "wss:443/mqtt"}, 1.0)],
        "device_sdk_outbox_depth": [({}, 2.0)],
        "device_sdk_last_recovery_seconds": [({}, 0.042)],
        "device_sdk_last_reconnect_seconds": [({}, 0.031)],
        "device_sdk_ack_deadline_seconds": [({}, 0.25)],
        "device_sdk_connected": [({}, 1.0)],
        "device_sdk_current_hub": [({"hub": "secondary"}, 1.0)],
        "device_sdk_engine_failed": [({}, 0.0)],
    }


def test_write_prometheus_is_atomic_and_needs_a_prom_name(tmp_path: Path) -> None:
    path = tmp_path / "device_sdk.prom"
    write_prometheus(path, SAMPLE, labels={"device": "gw-17"})
    families = parse_exposition(path.read_text())
    assert families["device_sdk_failovers_total"]["samples"] == [({"device": "gw-17"}, 4.0)]
    assert families["device_sdk_failbacks_total"]["samples"] == [({"device": "gw-17"}, 1.0)]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert leftovers(tmp_path) == []
    with pytest.raises(ConfigError, match=r"ending in \.prom"):
        write_prometheus(tmp_path / "device_sdk.txt", SAMPLE)


# --------------------------------------------------------------------------- StatusWriter


class FakeMetrics:
    """A metrics source that counts its calls and sets ``called`` at the ``until``-th."""

    def __init__(self, *, fail: bool = False, until: int = 1) -> None:
        self.calls = 0
        self.fail = fail
        self.until = until
        self.called = threading.Event()

    def __call__(self) -> Metrics:
        self.calls += 1
        if self.calls >= self.until:
            self.called.set()
        if self.fail:
            raise RuntimeError("metrics source broke")
        return Metrics(attempts=self.calls, current_hub="primary")


def test_the_writer_writes_at_once_and_stops_promptly(tmp_path: Path) -> None:
    source = FakeMetrics()
    writer = StatusWriter(source, tmp_path / "s.json", tmp_path / "s.prom", interval=60.0)
    writer.start()
    assert source.called.wait(5.0)
    started = time.monotonic()
    writer.stop(timeout=5.0)
    assert time.monotonic() - started < 1.0  # an Event wait, not a 60 s sleep
    assert not any(t.name == "device-sdk-status" for t in threading.enumerate())
    assert writer.writes == 2  # the first and the final snapshot
    assert read_status(tmp_path / "s.json").metrics.attempts == 2
    assert "device_sdk_connect_attempts_total 2" in (tmp_path / "s.prom").read_text()


def test_the_writer_repeats_every_interval(tmp_path: Path) -> None:
    source = FakeMetrics(until=3)
    with StatusWriter(source, tmp_path / "s.json", interval=0.01):
        assert source.called.wait(5.0)
    assert source.calls >= 3


def test_a_failing_write_is_logged_and_the_writer_carries_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = FakeMetrics(fail=True)
    writer = StatusWriter(source, tmp_path / "s.json", interval=60.0).start()
    assert source.called.wait(5.0)
    writer.stop()
    assert isinstance(writer.last_error, RuntimeError)
    assert writer.writes == 0
    assert "could not write the status file" in caplog.text


def test_the_writer_validates_its_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"status\.interval"):
        StatusWriter(FakeMetrics(), tmp_path / "s.json", interval=0)
    with pytest.raises(ConfigError, match=r"status\.interval"):
        StatusWriter(FakeMetrics(), tmp_path / "s.json", interval=True)
    with pytest.raises(ConfigError, match=r"\.prom"):
        StatusWriter(FakeMetrics(), tmp_path / "s.json", tmp_path / "s.txt")
    writer = StatusWriter(FakeMetrics(), tmp_path / "s.json", interval=60.0).start()
    try:
        with pytest.raises(DeviceSDKError, match="already started"):
            writer.start()
    finally:
        writer.stop()


def test_extra_comes_from_a_callable_at_each_write(tmp_path: Path) -> None:
    states = iter(["connecting", "connected"])
    writer = StatusWriter(
        FakeMetrics(), tmp_path / "s.json", interval=60.0, extra=lambda: {"state": next(states)}
    )
    writer.write_once()
    assert read_status(tmp_path / "s.json").extra == {"state": "connecting"}
    writer.write_once()
    assert read_status(tmp_path / "s.json").extra == {"state": "connected"}


def test_every_metrics_field_type_is_checked_when_read() -> None:
    from device_sdk.status import _ACCEPTS

    assert {str(field.type) for field in dataclasses.fields(Metrics)} <= set(_ACCEPTS)

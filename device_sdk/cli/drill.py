"""The failover drill: break the primary hub on a local testbed and time the recovery.

A device publishes numbered QoS 1 telemetry at a steady rate to a two-hub
testbed. The drill then breaks the primary (kill it, flip its DNS record and
kill it, or hang it), records every connection event on one clock, and
reports the time from the fault to the first PUBACK after it, plus what the
independent collectors on each hub received: lost messages must be zero.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from device_sdk import events
from device_sdk.client import DeviceClient
from device_sdk.config import ClientConfig
from device_sdk.errors import DeviceSDKError, TestbedError
from device_sdk.outbox import PublishHandle
from device_sdk.testbed.bed import Testbed
from device_sdk.testbed.collector import Collector, merge, wait_until_seen

SCENARIOS = ("crash", "dns-flip", "hang", "concierge", "failback")


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    seconds: float  # relative to the fault
    text: str


@dataclass(slots=True, kw_only=True)
class DrillReport:
    """What one drill run measured."""

    scenario: str
    timeline: list[TimelineEntry] = field(default_factory=list)
    recovery_seconds: float | None = None  # fault -> first PUBACK after it
    detection_seconds: float | None = None  # fault -> the device noticed
    published: int = 0
    delivered: int = 0
    lost: int = 0
    duplicates: int = 0
    stale_dials: int = 0  # dials to the old address after a DNS flip
    failback_seconds: float | None = None  # primary back -> connected to it again (failback)

    @property
    def ok(self) -> bool:
        failed_back = self.scenario != "failback" or self.failback_seconds is not None
        recovered = self.recovery_seconds is not None and failed_back
        return recovered and self.lost == 0 and self.stale_dials == 0

    def as_dict(self) -> dict[str, object]:
        return {
            "scenario": self.scenario,
            "recovery_seconds": self.recovery_seconds,
            "detection_seconds": self.detection_seconds,
            "published": self.published,
            "delivered": self.delivered,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "stale_dials": self.stale_dials,
            "failback_seconds": self.failback_seconds,
            "timeline": [{"t": e.seconds, "event": e.text} for e in self.timeline],
            "ok": self.ok,
        }


class _Recorder:
    """Collects device events and drill marks on one monotonic clock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.entries: list[tuple[float, str, events.Event | None]] = []
        self.first_ack_after = threading.Event()
        self.back_home = threading.Event()
        self.fault_at: float | None = None
        self.home_at: float | None = None

    def on_event(self, event: events.Event) -> None:
        with self._lock:
            self.entries.append((event.at, event.describe(), event))
            if isinstance(event, events.FirstAck) and self.fault_at is not None:
                self.first_ack_after.set()
            if isinstance(event, events.Connected) and event.hub == "primary" and self.home_at:
                self.back_home.set()

    def mark(self, text: str) -> float:
        now = time.monotonic()
        with self._lock:
            self.entries.append((now, text, None))
        return now

    def after_fault(self) -> list[tuple[float, str, events.Event | None]]:
        assert self.fault_at is not None
        with self._lock:
            return sorted(e for e in self.entries if e[0] >= self.fault_at - 1e-6)


class _Publisher(threading.Thread):
    """Publishes ``<seq>:<time>`` at a steady rate until stopped."""

    def __init__(self, client: DeviceClient, topic: str, rate: float) -> None:
        super().__init__(name="drill-publisher", daemon=True)
        self._client, self._topic, self._period = client, topic, 1.0 / rate
        self._stop_flag = threading.Event()
        self.handles: list[PublishHandle] = []
        self.error: DeviceSDKError | None = None

    def run(self) -> None:
        next_at = time.monotonic()
        seq = 0
        while not self._stop_flag.wait(max(0.0, next_at - time.monotonic())):
            try:
                self.handles.append(self._client.publish(self._topic, f"{seq}:{time.time():.3f}"))
            except DeviceSDKError as exc:  # OutboxFull: reported, never silently dropped
                self.error = exc
                return
            seq += 1
            next_at += self._period

    def stop(self) -> None:
        self._stop_flag.set()
        self.join(5.0)


def run_drill(
    scenario: str = "crash",
    *,
    rate: float = 20.0,
    warmup: float = 1.0,
    after: float = 1.0,
    tls: bool = True,
    progress: Callable[[str], None] = lambda _text: None,
) -> DrillReport:
    """Run one drill scenario on a fresh testbed and return what it measured."""
    if scenario not in SCENARIOS:
        raise TestbedError(f"unknown scenario {scenario!r}; choose one of {SCENARIOS}")
    topic = f"drill/{scenario}/telemetry"
    recorder = _Recorder()
    with_concierge = scenario == "concierge"
    progress(
        "starting testbed: two mosquitto hubs, DNS, a throwaway CA"
        + (", the reference concierge" if with_concierge else "")
    )
    with Testbed(tls=tls, concierge=with_concierge) as bed:
        collectors = [bed.collector(hub.name, topic) for hub in bed.hubs]
        config = _device_config(scenario, bed)
        with DeviceClient(config, on_event=recorder.on_event) as client:
            publisher = _Publisher(client, topic, rate)
            publisher.start()
            progress(f"device connected; publishing QoS 1 at {rate:g} msg/s")
            time.sleep(warmup)
            _inject(scenario, bed, recorder, progress)
            recovered = recorder.first_ack_after.wait(15.0)
            if scenario == "failback" and recovered:
                _restart_primary(bed, recorder, config, progress)
            time.sleep(after)
            publisher.stop()
            progress("draining the outbox")
            _wait_all(publisher.handles, timeout=10.0)
            report = _report(
                scenario,
                recorder=recorder,
                publisher=publisher,
                collectors=collectors,
                bed=bed,
                recovered=recovered,
            )
        if scenario == "hang":
            bed.hub("primary").broker.resume()
    return report


def _device_config(scenario: str, bed: Testbed) -> ClientConfig:
    client_id = f"drill-{scenario}"
    if scenario == "dns-flip":
        return bed.client_config(client_id, hubs=["primary"])  # only DNS can save it
    if scenario == "concierge":
        return bed.client_config(client_id, concierge=bed.concierge_settings(poll_interval=1.0))
    return bed.client_config(client_id)


def _restart_primary(
    bed: Testbed, recorder: _Recorder, config: ClientConfig, progress: Callable[[str], None]
) -> None:
    primary = bed.hub("primary").broker
    primary.restart()
    recorder.home_at = recorder.mark(f"primary restarted (pid {primary.pid})")
    dwell = config.failover.failback_dwell_seconds
    progress(f"primary back; the device returns after the {dwell:g} s dwell")
    recorder.back_home.wait(dwell + 10.0)


def _inject(
    scenario: str, bed: Testbed, recorder: _Recorder, progress: Callable[[str], None]
) -> None:
    primary = bed.hub("primary").broker
    if scenario == "dns-flip":
        bed.point("primary", at="secondary")
        recorder.mark(f"DNS: {bed.hub('primary').fqdn} now -> {bed.hub('secondary').address}")
        recorder.fault_at = recorder.mark(f"primary killed (SIGKILL pid {primary.pid})")
        primary.kill()
    elif scenario == "hang":
        recorder.fault_at = recorder.mark(f"primary hung (SIGSTOP pid {primary.pid})")
        primary.hang()
    elif scenario == "concierge":
        assert bed.concierge is not None
        recorder.fault_at = recorder.mark("operator: concierge set-active secondary")
        bed.concierge.set_active("secondary")
    else:  # crash, and the first half of failback
        pid = primary.pid
        recorder.fault_at = recorder.mark(f"primary killed (SIGKILL pid {pid})")
        primary.kill()
    progress(f"fault injected: {scenario}")


def _wait_all(handles: list[PublishHandle], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for handle in handles:
        try:
            handle.wait(max(0.0, deadline - time.monotonic()))
        except (TimeoutError, DeviceSDKError):
            return


def _report(
    scenario: str,
    *,
    recorder: _Recorder,
    publisher: _Publisher,
    collectors: list[Collector],
    bed: Testbed,
    recovered: bool,
) -> DrillReport:
    assert recorder.fault_at is not None
    report = DrillReport(scenario=scenario)
    fault = recorder.fault_at
    stale = bed.hub("primary").address
    for at, text, event in recorder.after_fault():
        report.timeline.append(TimelineEntry(at - fault, text))
        if isinstance(event, events.Disconnected) and report.detection_seconds is None:
            report.detection_seconds = at - fault
        if isinstance(event, events.FirstAck) and report.recovery_seconds is None and recovered:
            report.recovery_seconds = at - fault
        if scenario == "dns-flip" and isinstance(event, events.Connected | events.DialFailed):
            report.stale_dials += int(event.address == stale)
        home = recorder.home_at
        back = isinstance(event, events.Connected) and event.hub == "primary"
        if back and home is not None and at >= home and report.failback_seconds is None:
            report.failback_seconds = at - home
    accepted = len(publisher.handles)
    wait_until_seen(collectors, range(accepted), timeout=5.0)
    seen = merge(*collectors)
    report.published = accepted
    report.delivered = sum(1 for seq in range(accepted) if seq in seen)
    report.lost = accepted - report.delivered
    report.duplicates = sum(count - 1 for seq, count in seen.items() if seq < accepted)
    return report


def format_report(report: DrillReport) -> str:
    lines = [f"failover drill: {report.scenario}", "timeline (ms from the fault):"]
    lines += [f"  {e.seconds * 1000:9.1f}  {e.text}" for e in report.timeline]
    if report.recovery_seconds is None:
        lines.append("NOT RECOVERED within the drill's bound")
    else:
        detected = report.detection_seconds
        noticed = "" if detected is None else f"detected after {detected * 1000:.1f} ms; "
        lines.append(
            f"{noticed}recovered {report.recovery_seconds * 1000:.1f} ms after the fault "
            "(fault -> first PUBACK after it)"
        )
    lines.append(
        f"messages: published {report.published}, delivered {report.delivered}, "
        f"lost {report.lost}, duplicates {report.duplicates}"
    )
    if report.scenario == "dns-flip":
        lines.append(f"dials to the stale address after the flip: {report.stale_dials}")
    if report.scenario == "failback":
        back = report.failback_seconds
        text = "did NOT return" if back is None else f"returned {back:.2f} s after it came back"
        lines.append(f"failback to the primary: {text} (dwell and healthy probes first)")
    lines.append("result: OK" if report.ok else "result: FAILED")
    return "\n".join(lines)

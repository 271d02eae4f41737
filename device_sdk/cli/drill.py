"""The failover drill: break the primary hub on a local testbed and time the recovery.

A device publishes numbered QoS 1 telemetry at a steady rate to a two-hub
testbed. The drill then breaks the primary (kill it, flip its DNS record and
kill it, or hang it), records every connection event on one clock, and
reports the time from the fault to the first PUBACK after it, plus what the
independent collectors on each hub received: lost messages must be zero.

The ``token-expiry`` scenario puts an IoT-Hub-like front (SAS tokens, dropped
at expiry) before the primary broker and keeps the hub away for longer than a
token lives. Each scenario is a stage built on a running testbed
(:data:`_SCENARIOS`): the device's config and topic, how to break the hub, and
the numbers only it reports; a new scenario is one more stage.
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from device_sdk import events
from device_sdk.client import DeviceClient
from device_sdk.config import ClientConfig, TlsSettings
from device_sdk.dialects.azure import (
    azure_client_config,
    azure_hub,
    azure_sas_credentials,
    d2c_topic,
)
from device_sdk.errors import DeviceSDKError, TestbedError
from device_sdk.outbox import PublishHandle
from device_sdk.testbed.bed import DOMAIN, FAST_FAILOVER, FAST_LIVENESS, FAST_RETRY, Testbed
from device_sdk.testbed.collector import Collector, merge, wait_until_seen
from device_sdk.testbed.iothub_front import IotHubFront
from device_sdk.testbed.ports import pick_free_ports

SCENARIOS = ("crash", "dns-flip", "hang", "concierge", "failback", "token-expiry")

Progress = Callable[[str], None]

# token-expiry: how long each SAS token lives. Short, so a renewal happens within
# the warm-up and an outage can outlast a token in a few seconds.
TOKEN_TTL = 3.0
_IOTHUB = f"iothub.{DOMAIN}"
_FRONT_ADDRESSES = ("127.0.0.20", "127.0.0.21")


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
    renewals: int = 0  # credentials renewed, make before break (token-expiry)
    renewal_disconnects: int = 0  # Disconnected events before the fault (token-expiry)
    refusals: int = 0  # CONNACKs refusing the device, as the hub recorded them (token-expiry)
    back_seconds: float | None = None  # hub back -> first PUBACK (token-expiry)

    @property
    def ok(self) -> bool:
        failed_back = self.scenario != "failback" or self.failback_seconds is not None
        recovered = self.recovery_seconds is not None and failed_back
        clean = self.lost == 0 and self.stale_dials == 0
        if self.scenario == "token-expiry":
            renewed = self.renewals >= 1 and self.renewal_disconnects == 0
            clean = clean and renewed and self.refusals == 0 and self.back_seconds is not None
        return recovered and clean

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
            "renewals": self.renewals,
            "renewal_disconnects": self.renewal_disconnects,
            "refusals": self.refusals,
            "back_seconds": self.back_seconds,
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
        self.renewed = threading.Event()
        self.fault_at: float | None = None
        self.home_at: float | None = None

    def on_event(self, event: events.Event) -> None:
        with self._lock:
            self.entries.append((event.at, event.describe(), event))
            if isinstance(event, events.FirstAck) and self.fault_at is not None:
                self.first_ack_after.set()
            if isinstance(event, events.Connected) and event.hub == "primary" and self.home_at:
                self.back_home.set()
            if isinstance(event, events.CredentialsRenewed):
                self.renewed.set()

    def mark(self, text: str, at: float | None = None) -> float:
        now = time.monotonic() if at is None else at
        with self._lock:
            self.entries.append((now, text, None))
        return now

    def since(self, start: float) -> list[tuple[float, str, events.Event | None]]:
        with self._lock:
            return sorted((e for e in self.entries if e[0] >= start - 1e-6), key=lambda e: e[0])


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


# -- scenarios as stages -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Site:
    """What a stage builds on: the running testbed, the clock, and a stack for its own parts."""

    name: str
    bed: Testbed
    recorder: _Recorder
    parts: ExitStack  # closed after the device, before the testbed
    progress: Progress


def _nothing() -> None:
    return None


def _no_numbers(_report: DrillReport) -> None:
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class _Stage:
    """One scenario on a running testbed.

    ``warm_up`` waits (bounded) for what must happen before the fault;
    ``inject`` breaks the hub and sets the recorder's ``fault_at``;
    ``after_recovery`` runs once the device has recovered (bring a hub back);
    ``numbers`` adds the scenario's own figures to the report; with
    ``timeline_from_start`` the timeline shows the warm-up too.
    """

    config: ClientConfig
    topic: str
    collectors: list[Collector]
    inject: Callable[[], None]
    warm_up: Callable[[float], None] = time.sleep
    after_recovery: Callable[[], None] = _nothing
    numbers: Callable[[DrillReport], None] = _no_numbers
    timeline_from_start: bool = False


@dataclass(frozen=True, slots=True)
class _Scenario:
    testbed: Mapping[str, Any]  # Testbed options
    stage: Callable[[_Site], _Stage]
    describe: str  # what the drill's first line says it starts


def run_drill(
    scenario: str = "crash",
    *,
    rate: float = 20.0,
    warmup: float = 1.0,
    after: float = 1.0,
    tls: bool = True,
    progress: Progress = lambda _text: None,
) -> DrillReport:
    """Run one drill scenario on a fresh testbed and return what it measured."""
    if scenario not in SCENARIOS:
        raise TestbedError(f"unknown scenario {scenario!r}; choose one of {SCENARIOS}")
    plan = _SCENARIOS[scenario]
    recorder = _Recorder()
    progress(f"starting testbed: {plan.describe}")
    options = {"tls": tls, **plan.testbed}  # IoT Hub takes TLS only: token-expiry insists
    with Testbed(**options) as bed, ExitStack() as parts:
        stage = plan.stage(_Site(scenario, bed, recorder, parts, progress))
        with DeviceClient(stage.config, on_event=recorder.on_event) as client:
            started = time.monotonic()
            publisher = _Publisher(client, stage.topic, rate)
            publisher.start()
            progress(f"device connected; publishing QoS 1 at {rate:g} msg/s")
            stage.warm_up(warmup)
            stage.inject()
            recovered = recorder.first_ack_after.wait(15.0)
            if recovered:
                stage.after_recovery()
            time.sleep(after)
            publisher.stop()
            progress("draining the outbox")
            _wait_all(publisher.handles, timeout=10.0)
            report = _report(
                scenario,
                recorder=recorder,
                publisher=publisher,
                stage=stage,
                bed=bed,
                recovered=recovered,
                started=started,
            )
        if scenario == "hang":
            bed.hub("primary").broker.resume()
    return report


# -- the failover scenarios: two mosquitto hubs, one of them broken ----------------------------


def _failover_stage(site: _Site) -> _Stage:
    scenario, bed, recorder, progress = site.name, site.bed, site.recorder, site.progress
    topic = f"drill/{scenario}/telemetry"
    config = _device_config(scenario, bed)
    collectors = [bed.collector(hub.name, topic) for hub in bed.hubs]

    def restart_primary() -> None:
        if scenario == "failback":
            _restart_primary(bed, recorder, config, progress)

    return _Stage(
        config=config,
        topic=topic,
        collectors=collectors,
        inject=lambda: _inject(scenario, bed, recorder, progress),
        after_recovery=restart_primary,
    )


def _device_config(scenario: str, bed: Testbed) -> ClientConfig:
    client_id = f"drill-{scenario}"
    if scenario == "dns-flip":
        return bed.client_config(client_id, hubs=["primary"])  # only DNS can save it
    if scenario == "concierge":
        return bed.client_config(client_id, concierge=bed.concierge_settings(poll_interval=1.0))
    return bed.client_config(client_id)


def _restart_primary(
    bed: Testbed, recorder: _Recorder, config: ClientConfig, progress: Progress
) -> None:
    primary = bed.hub("primary").broker
    primary.restart()
    recorder.home_at = recorder.mark(f"primary restarted (pid {primary.pid})")
    dwell = config.failover.failback_dwell_seconds
    progress(f"primary back; the device returns after the {dwell:g} s dwell")
    recorder.back_home.wait(dwell + 10.0)


def _inject(scenario: str, bed: Testbed, recorder: _Recorder, progress: Progress) -> None:
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


# -- token-expiry: an IoT-Hub-like front away for longer than a token lives ------------------


class _TokenExpiry:
    """An IoT Hub device whose hub is gone for longer than its SAS token lives.

    The device signs in to an :class:`IotHubFront` before the primary broker with
    tokens of :data:`TOKEN_TTL` seconds, so it renews one within the warm-up. The
    fault stops the front (its links are reset) and keeps it stopped until the
    token in use then has expired; the hub then comes back behind the same host
    name, at a new loopback address (a stopped listener's port may be held by
    TIME_WAIT on its old address, and IoT Hub's own failover moves its address
    too). The secondary hub is not in the device's list: the only way back is the
    same hub, with a token minted after the old one died. Anything the hub
    refuses (CONNACK 4 or 5: an expired or bad token) is counted as a refusal.
    """

    def __init__(self, site: _Site) -> None:
        self.site = site
        bed = site.bed
        if bed.ca is None or bed.ca_file is None or bed.dns is None:
            raise TestbedError("the token-expiry drill needs TLS (run it without --no-tls)")
        self.device_id = "drill-token-expiry"
        self.key = base64.b64encode(secrets.token_bytes(32)).decode("ascii")
        server = bed.ca.issue_server_certificate([_IOTHUB]).write_to(bed.work_dir, stem="iothub")
        self.server_files = server
        (self.port,) = pick_free_ports(1, _FRONT_ADDRESSES)
        self.fronts: list[IotHubFront] = []
        self.token_expiry: float | None = None  # wall clock: the token held at the fault
        self.back_at: float | None = None
        self.front = self._start_front(_FRONT_ADDRESSES[0])

    def _start_front(self, address: str) -> IotHubFront:
        bed = self.site.bed
        broker = bed.hub("primary").broker
        front = IotHubFront(
            hub_host=_IOTHUB,
            upstream=(broker.host, broker.port),
            device_keys={self.device_id: self.key},
            server_cert_file=self.server_files.cert_file,
            server_key_file=self.server_files.key_file,
            listen_host=address,
            listen_port=self.port,
        )
        self.site.parts.callback(front.stop)
        front.start()
        assert bed.dns is not None
        bed.dns.set_address(_IOTHUB, [address], ttl=1)
        self.fronts.append(front)
        return front

    def stage(self) -> _Stage:
        bed = self.site.bed
        assert bed.ca_file is not None
        topic = d2c_topic(self.device_id)
        hub = azure_hub(
            "iothub", _IOTHUB, port=self.port, tls=TlsSettings(ca_file=str(bed.ca_file))
        )
        config = azure_client_config(
            self.device_id,
            [hub],
            azure_sas_credentials(key=self.key, ttl=TOKEN_TTL),
            dns=bed.dns_settings(),
            retry=FAST_RETRY,
            failover=FAST_FAILOVER,
            liveness=FAST_LIVENESS,
        )
        return _Stage(
            config=config,
            topic=topic,
            collectors=[bed.collector("primary", topic)],
            warm_up=self.warm_up,
            inject=self.inject,
            numbers=self.numbers,
            timeline_from_start=True,
        )

    def warm_up(self, warmup: float) -> None:
        # At least one renewal before the fault, whatever ``warmup`` says; bounded by
        # a token's life and a little.
        if not self.site.recorder.renewed.wait(TOKEN_TTL + 2.0):
            self.site.progress("no renewal within the warm-up")
        time.sleep(min(warmup, 0.5))

    def inject(self) -> None:
        recorder, progress = self.site.recorder, self.site.progress
        held = [a.expires_at for a in self.front.accepted if a.expires_at is not None]
        self.token_expiry = max(held) if held else time.time() + TOKEN_TTL
        recorder.fault_at = recorder.mark(
            f"IoT hub down (front at {self.front.listen_host} stopped)"
        )
        self.front.stop()
        progress("fault injected: token-expiry (the hub stays away until the token has expired)")
        expires_in = self.token_expiry - time.time()
        recorder.mark("the token held at the fault expires", at=time.monotonic() + expires_in)
        # Half a second past the expiry: the old token is dead for certain.
        time.sleep(max(0.0, expires_in) + 0.5)
        self.front = self._start_front(_FRONT_ADDRESSES[1])
        self.back_at = recorder.mark(
            f"IoT hub back behind {_IOTHUB} (front at {self.front.listen_host})"
        )

    def numbers(self, report: DrillReport) -> None:
        recorder = self.site.recorder
        fault = recorder.fault_at
        assert fault is not None
        for at, _text, event in recorder.since(0.0):
            if isinstance(event, events.CredentialsRenewed):
                report.renewals += 1
            if isinstance(event, events.Disconnected) and at < fault:
                report.renewal_disconnects += 1
            back = self.back_at
            first = isinstance(event, events.FirstAck) and report.back_seconds is None
            if first and back is not None and at >= back:
                report.back_seconds = at - back
        report.refusals = sum(
            1 for front in self.fronts for r in front.refused if r.return_code in (4, 5)
        )


_SCENARIOS: dict[str, _Scenario] = {
    "crash": _Scenario({}, _failover_stage, "two mosquitto hubs, DNS, a throwaway CA"),
    "dns-flip": _Scenario({}, _failover_stage, "two mosquitto hubs, DNS, a throwaway CA"),
    "hang": _Scenario({}, _failover_stage, "two mosquitto hubs, DNS, a throwaway CA"),
    "concierge": _Scenario(
        {"concierge": True},
        _failover_stage,
        "two mosquitto hubs, DNS, a throwaway CA, the reference concierge",
    ),
    "failback": _Scenario({}, _failover_stage, "two mosquitto hubs, DNS, a throwaway CA"),
    "token-expiry": _Scenario(
        {"tls": True},
        lambda site: _TokenExpiry(site).stage(),
        "an IoT-Hub-like front (SAS tokens of "
        f"{TOKEN_TTL:g} s) before a mosquitto hub, DNS, a throwaway CA",
    ),
}


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
    stage: _Stage,
    bed: Testbed,
    recovered: bool,
    started: float,
) -> DrillReport:
    assert recorder.fault_at is not None
    report = DrillReport(scenario=scenario)
    fault = recorder.fault_at
    stale = bed.hub("primary").address
    for at, text, event in recorder.since(started if stage.timeline_from_start else fault):
        report.timeline.append(TimelineEntry(at - fault, text))
        if at < fault - 1e-6:
            continue  # the warm-up is shown, not measured
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
    stage.numbers(report)
    accepted = len(publisher.handles)
    wait_until_seen(stage.collectors, range(accepted), timeout=5.0)
    seen = merge(*stage.collectors)
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
    if report.scenario == "token-expiry":
        lines += _token_lines(report)
    lines.append("result: OK" if report.ok else "result: FAILED")
    return "\n".join(lines)


def _token_lines(report: DrillReport) -> list[str]:
    back = report.back_seconds
    returned = "NOT back" if back is None else f"first PUBACK {back * 1000:.1f} ms after the hub"
    return [
        f"renewals seen: {report.renewals} (make before break; disconnects before the "
        f"fault: {report.renewal_disconnects})",
        f"refusals by the hub (CONNACK 4 or 5, an expired or bad token): {report.refusals}",
        f"hub back: {returned} came back, under the retry policy's normal backoff "
        f"(at most {FAST_RETRY.maximum:g} s here), not its long delay "
        f"({FAST_RETRY.long_delay:g} s here, 300 s by default) for a hub that refused us",
    ]

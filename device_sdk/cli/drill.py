"""The failover drill: break the primary hub on a local testbed and time the recovery.

A device publishes numbered QoS 1 telemetry at a steady rate to a two-hub
testbed. The drill then breaks the primary (kill it, flip its DNS record and
kill it, or hang it), records every connection event on one clock, and
reports the time from the fault to the first PUBACK after it, plus what the
independent collectors on each hub received: lost messages must be zero.

The ``token-expiry`` scenario puts an IoT-Hub-like front (SAS tokens, dropped
at expiry) before the primary broker and keeps the hub away for longer than a
token lives. In the ``dps`` scenario a DPS-like service provisions the device
to hub A; the operator moves it to hub B in DPS, hub A dies, and the device
re-provisions and drains its outbox on B. In ``port-blocked`` the hub's 8883 (a
fault proxy before its TLS listener) starts dropping SYNs while the device
publishes; the device must move to the hub's second way in, secure WebSockets
through a real websockify, and come back to 8883 once it opens. In
``region-loss`` the concierge runs as three replicas on a real etcd cluster; the
primary region (its hub, its concierge replica and its etcd member) dies at
once, the operator switches through a surviving replica, and the device
follows. Each scenario
is a stage built on a running testbed (:data:`_SCENARIOS`): the device's config
and topic, how to break the hub, and the numbers only it reports; a new
scenario is one more stage.
"""

from __future__ import annotations

import base64
import dataclasses
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from device_sdk import events
from device_sdk.client import DeviceClient
from device_sdk.config import ClientConfig, HubEndpoint, TlsSettings
from device_sdk.dialects.azure import (
    azure_client_config,
    azure_hub,
    azure_sas_credentials,
    d2c_topic,
)
from device_sdk.errors import DeviceSDKError, TestbedError
from device_sdk.outbox import PublishHandle
from device_sdk.provisioning import DpsSettings
from device_sdk.testbed.bed import DOMAIN, FAST_FAILOVER, FAST_LIVENESS, FAST_RETRY, Testbed
from device_sdk.testbed.collector import Collector, merge, wait_until_seen
from device_sdk.testbed.dps_service import DpsService, Enrollment
from device_sdk.testbed.iothub_front import IotHubFront
from device_sdk.testbed.pki import CertificateAuthority
from device_sdk.testbed.ports import pick_free_port, pick_free_ports
from device_sdk.testbed.proxy import FaultProxy, ProxySpec
from device_sdk.transports import Transport

SCENARIOS = (
    "crash",
    "dns-flip",
    "hang",
    "concierge",
    "failback",
    "token-expiry",
    "dps",
    "port-blocked",
    "region-loss",
)

Progress = Callable[[str], None]

# token-expiry: how long each SAS token lives. Short, so a renewal happens within
# the warm-up and an outage can outlast a token in a few seconds.
TOKEN_TTL = 3.0
_IOTHUB = f"iothub.{DOMAIN}"
_FRONT_ADDRESSES = ("127.0.0.20", "127.0.0.21")
# dps: the DPS-like service's name (in the testbed's DNS), its scope, the device.
_DPS_NAME = "dps.device-sdk.test"
_DPS_SCOPE = "0ne00DRILL"
_DPS_DEVICE = "drill-dps"
# port-blocked: how often the device probes 8883 while on the fallback way in.
_WAY_BACK_PROBE = 0.5


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
    id_mismatches: int = 0  # messages that arrived under more than one message id
    registrations: int = 0  # registrations DPS accepted, at start and after (dps)
    reprovisions: int = 0  # Provisioned events after the fault (dps)
    reassigned_to: str | None = None  # the hub the operator named in DPS (dps)
    ended_on: str | None = None  # FQDN of the hub the device was on at the end (dps)
    fallback_seconds: float | None = None  # fault -> connected over the fallback way in
    fallback_transport: str | None = None  # the way in it moved to (port-blocked)
    returned_seconds: float | None = None  # 8883 open again -> back on it (port-blocked)
    switch_sequence: int | None = None  # what the surviving replica answered (region-loss)
    confirmed_seconds: float | None = None  # switch -> the device accepted it (region-loss)
    rollbacks: int = 0  # concierge documents the device rejected (region-loss)

    @property
    def ok(self) -> bool:
        failed_back = self.scenario != "failback" or self.failback_seconds is not None
        recovered = self.recovery_seconds is not None and failed_back
        clean = self.lost == 0 and self.stale_dials == 0 and self.id_mismatches == 0
        if self.scenario == "token-expiry":
            renewed = self.renewals >= 1 and self.renewal_disconnects == 0
            clean = clean and renewed and self.refusals == 0 and self.back_seconds is not None
        if self.scenario == "dps":
            # Exactly one re-provisioning: one registration at start, one after the fault.
            moved = self.reassigned_to is not None and self.ended_on == self.reassigned_to
            clean = clean and moved and self.reprovisions == 1 and self.registrations == 2
        if self.scenario == "region-loss":
            confirmed = self.confirmed_seconds is not None and self.switch_sequence is not None
            clean = clean and confirmed and self.rollbacks == 0
        if self.scenario == "port-blocked":
            moved_away = self.fallback_seconds is not None and self.fallback_transport is not None
            clean = clean and moved_away and self.returned_seconds is not None
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
            "id_mismatches": self.id_mismatches,
            "registrations": self.registrations,
            "reprovisions": self.reprovisions,
            "reassigned_to": self.reassigned_to,
            "ended_on": self.ended_on,
            "fallback_seconds": self.fallback_seconds,
            "fallback_transport": self.fallback_transport,
            "returned_seconds": self.returned_seconds,
            "switch_sequence": self.switch_sequence,
            "confirmed_seconds": self.confirmed_seconds,
            "rollbacks": self.rollbacks,
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
        self.returned = threading.Event()
        self.concierge_moved = threading.Event()
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
            if isinstance(event, events.TransportReturned):
                self.returned.set()
            if isinstance(event, events.ConciergeUpdate) and event.active_hub == "secondary":
                self.concierge_moved.set()

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
        started = time.monotonic()  # a timeline from the start shows the connect (and DPS) too
        with DeviceClient(stage.config, on_event=recorder.on_event) as client:
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


# -- dps: the operator moves the device in DPS while its hub dies ----------------------------


class _DpsDrill:
    """A device DPS provisioned to hub A, moved by the operator to hub B as A dies.

    A DPS-like service (HTTPS, SAS attestation) on loopback, named in the
    testbed's DNS, assigns the device to hub A at its start; the device's
    configured hub list holds only a placeholder nobody listens on, so every
    hub it reaches, DPS named. The fault: the operator reassigns the device to
    hub B in DPS, then hub A's broker is killed. Nothing tells the device about
    the move: its failover criteria trip on A, it leaves A and asks DPS again
    (IoT Hub's own failover path), is told B, and drains its outbox there under
    the same message ids. The assigned hubs are the testbed's plain or TLS
    listeners, as the drill's ``tls`` says (``DpsSettings.hub_port``/``hub_tls``).
    """

    def __init__(self, site: _Site) -> None:
        self.site = site
        bed = site.bed
        if bed.dns is None:
            raise TestbedError("the dps drill needs the testbed's DNS")
        self.home, self.away = bed.hub("huba"), bed.hub("hubb")
        self.key = base64.b64encode(secrets.token_bytes(32)).decode("ascii")
        # DPS is HTTPS whatever the hubs speak: the testbed's CA when it has one.
        ca = bed.ca or CertificateAuthority.create()
        self.ca_file = bed.ca_file or ca.write_to(bed.work_dir, filename="dps-ca.crt")
        enrollment = Enrollment(
            registration_id=_DPS_DEVICE, hub_fqdn=self.home.fqdn, sas_key=self.key
        )
        self.service = DpsService(
            ca=ca, id_scope=_DPS_SCOPE, enrollments=[enrollment], server_name=_DPS_NAME
        )
        site.parts.callback(self.service.stop)
        self.service.start()
        bed.dns.set_address(_DPS_NAME, [self.service.host], ttl=1)
        self.reassigned_to: str | None = None

    def stage(self) -> _Stage:
        bed = self.site.bed
        topic = f"drill/{self.site.name}/telemetry"
        # The configured hub is only a placeholder: a loopback port nobody listens on.
        closed = pick_free_port(("127.0.0.1",))
        placeholder = HubEndpoint(name="unprovisioned", fqdn="127.0.0.1", port=closed, tls=None)
        config = dataclasses.replace(
            bed.client_config(_DPS_DEVICE), hubs=(placeholder,), dps=self._settings()
        )
        return _Stage(
            config=config,
            topic=topic,
            collectors=[bed.collector(hub.name, topic) for hub in (self.home, self.away)],
            inject=self.inject,
            numbers=self.numbers,
            timeline_from_start=True,  # the first Provisioned comes before the fault
        )

    def _settings(self) -> DpsSettings:
        bed = self.site.bed
        broker = self.home.broker  # both hubs listen on the same ports
        tls = bed.ca_file is not None and broker.tls_port is not None
        return DpsSettings(
            id_scope=_DPS_SCOPE,
            registration_id=_DPS_DEVICE,
            endpoint=_DPS_NAME,
            port=self.service.port,
            ca_file=str(self.ca_file),
            sas_key=self.key,
            state_path=str(bed.work_dir / "dps-state" / "assignment.json"),
            timeout=3.0,
            poll_interval=0.05,
            backoff_initial=0.1,
            backoff_cap=0.5,
            allowed_hubs=(f"*.{DOMAIN}",),  # the testbed's hubs, not IoT Hub's cloud domains
            hub_port=broker.tls_port if tls and broker.tls_port else broker.port,
            hub_tls=TlsSettings(ca_file=str(bed.ca_file)) if tls else None,
        )

    def inject(self) -> None:
        recorder, broker = self.site.recorder, self.home.broker
        self.service.reassign(_DPS_DEVICE, self.away.fqdn)
        self.reassigned_to = self.away.fqdn
        recorder.mark(f"operator: DPS reassigns {_DPS_DEVICE} to {self.away.fqdn}")
        recorder.fault_at = recorder.mark(f"{self.home.name} killed (SIGKILL pid {broker.pid})")
        broker.kill()
        self.site.progress("fault injected: dps (reassigned in DPS, then hub A killed)")

    def numbers(self, report: DrillReport) -> None:
        fault = self.site.recorder.fault_at
        assert fault is not None
        report.registrations = self.service.registrations
        report.reassigned_to = self.reassigned_to
        assigned: dict[str, str] = {}  # hub name in the device's list -> FQDN
        on: str | None = None
        for at, _text, event in self.site.recorder.since(0.0):
            if isinstance(event, events.Provisioned):
                assigned[event.hub] = event.fqdn
                report.reprovisions += int(at >= fault)
            elif isinstance(event, events.Connected):
                on = event.hub
            elif isinstance(event, events.Disconnected):
                on = None
        report.ended_on = None if on is None else assigned.get(on)


# -- port-blocked: a firewall starts dropping 8883; the hub's wss:443 way in is open ---------


class _PortBlocked:
    """A hub with two ways in: mqtts on "8883" and wss on "443" (websockify).

    "8883" is a :class:`FaultProxy` before the broker's TLS listener (plain MQTT
    with ``--no-tls``: then ``ws``). The fault makes it drop SYNs and hold the
    open connection silent, as a firewall rule does; the device notices its
    link is dead, races both ways and lands on WebSockets. Once it has
    recovered, the rule is lifted and the device's way-back probe (every
    :data:`_WAY_BACK_PROBE` s here) returns it to 8883, make before break.
    """

    def __init__(self, site: _Site) -> None:
        self.site = site
        bed = site.bed
        primary = bed.hub("primary")
        self.tls = bed.ca is not None and primary.broker.tls_port is not None
        target = primary.broker.tls_port if self.tls and primary.broker.tls_port else None
        spec = ProxySpec(
            listen_host=primary.address,
            target_host=primary.address,
            target_port=target or primary.broker.port,
        )
        self.port_8883 = FaultProxy(spec)
        site.parts.callback(self.port_8883.stop)
        self.port_8883.start()
        self.bridge = bed.websocket_bridge("primary", tls=self.tls)
        self.opened_at: float | None = None

    def stage(self) -> _Stage:
        bed = self.site.bed
        topic = f"drill/{self.site.name}/telemetry"
        first = Transport(scheme="mqtts" if self.tls else "mqtt", port=self.port_8883.port)
        second = Transport(scheme="wss" if self.tls else "ws", port=self.bridge.port)
        config = bed.client_config(
            "drill-port-blocked", hubs=["primary"], failback_probe_interval=_WAY_BACK_PROBE
        )
        hub = dataclasses.replace(config.hubs[0], transports=(first, second))
        return _Stage(
            config=dataclasses.replace(config, hubs=(hub,)),
            topic=topic,
            collectors=[bed.collector("primary", topic)],
            inject=self.inject,
            after_recovery=self.open_again,
            numbers=self.numbers,
        )

    def inject(self) -> None:
        recorder = self.site.recorder
        recorder.fault_at = recorder.mark(
            f"firewall: port {self.port_8883.port} drops SYNs; its open connection goes silent"
        )
        self.port_8883.drop_syns()
        self.site.progress("fault injected: port-blocked (8883 blackholed)")

    def open_again(self) -> None:
        recorder = self.site.recorder
        time.sleep(0.5)  # some publishing over the fallback first
        self.opened_at = recorder.mark(f"firewall: port {self.port_8883.port} open again")
        self.port_8883.restore()
        recorder.returned.wait(_WAY_BACK_PROBE * 2 + 5.0)

    def numbers(self, report: DrillReport) -> None:
        recorder = self.site.recorder
        fault = recorder.fault_at
        assert fault is not None
        for at, _text, event in recorder.since(fault):
            if isinstance(event, events.Connected) and report.fallback_seconds is None:
                report.fallback_seconds = at - fault
                report.fallback_transport = event.transport
            opened = self.opened_at
            returned = isinstance(event, events.TransportReturned)
            if returned and opened is not None and report.returned_seconds is None:
                report.returned_seconds = at - opened


# -- region-loss: the primary region (hub, concierge replica, etcd member) dies at once --------


class _RegionLoss:
    """Three concierge replicas on a 3-member etcd cluster; region 1 holds the primary
    hub, replica 1 and etcd member 1. The fault takes all three down together; the
    operator then switches through replica 2, and the device, polling the concierge's
    one name (an A record per replica), follows."""

    def __init__(self, site: _Site) -> None:
        self.site = site
        cluster = site.bed.concierge_cluster
        if cluster is None or cluster.etcd is None:
            raise TestbedError("the region-loss drill needs concierge replicas on etcd")
        self.cluster = cluster
        self.etcd = cluster.etcd
        self.switched_at: float | None = None
        self.sequence: int | None = None

    def stage(self) -> _Stage:
        bed = self.site.bed
        topic = f"drill/{self.site.name}/telemetry"
        settings = bed.concierge_settings(poll_interval=0.5)
        config = bed.client_config("drill-region-loss", concierge=settings)
        return _Stage(
            config=config,
            topic=topic,
            collectors=[bed.collector(hub.name, topic) for hub in bed.hubs],
            inject=self.inject,
            after_recovery=self.switch,
            numbers=self.numbers,
        )

    def inject(self) -> None:
        recorder, bed = self.site.recorder, self.site.bed
        primary = bed.hub("primary").broker
        member = self.etcd.members[0]
        recorder.fault_at = recorder.mark(
            f"region 1 lost: hub primary (SIGKILL pid {primary.pid}), concierge replica 1 "
            f"({self.cluster.addresses[0]}), etcd member {member.name} (SIGKILL pid {member.pid})"
        )
        primary.kill()
        self.etcd.kill(member.name)
        self.cluster.stop_replica(0)
        self.site.progress("fault injected: region-loss (hub, concierge replica, etcd member)")

    def switch(self) -> None:
        from device_sdk.concierge.cli import post_active  # the operator's own client

        recorder = self.site.recorder
        url = self.cluster.replica_url(1)
        token = self.cluster.token_file.read_text()
        answer = post_active(url, "secondary", token, timeout=10.0)
        sequence = answer.get("sequence")
        self.sequence = sequence if isinstance(sequence, int) else None
        self.switched_at = recorder.mark(
            f"operator: set-active secondary through replica 2 ({url}): sequence {sequence}"
        )
        recorder.concierge_moved.wait(10.0)

    def numbers(self, report: DrillReport) -> None:
        report.switch_sequence = self.sequence
        switched = self.switched_at
        for at, _text, event in self.site.recorder.since(0.0):
            if isinstance(event, events.ConciergeProblem) and event.security:
                report.rollbacks += 1
            moved = isinstance(event, events.ConciergeUpdate) and event.sequence == self.sequence
            if moved and switched is not None and report.confirmed_seconds is None:
                report.confirmed_seconds = at - switched


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
    "dps": _Scenario(
        {"hubs": ("huba", "hubb")},
        lambda site: _DpsDrill(site).stage(),
        "a DPS-like service (SAS attestation) assigning two mosquitto hubs, DNS, a throwaway CA",
    ),
    "region-loss": _Scenario(
        {"concierge_replicas": 3, "concierge_store": "etcd"},
        lambda site: _RegionLoss(site).stage(),
        "two mosquitto hubs, three concierge replicas on a 3-member etcd cluster, DNS, a "
        "throwaway CA",
    ),
    "port-blocked": _Scenario(
        {"hubs": ("primary",)},
        lambda site: _PortBlocked(site).stage(),
        "a mosquitto hub with two ways in: 8883 behind a fault proxy, wss through "
        "websockify; DNS, a throwaway CA",
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
    stale = bed.hub("primary").address if scenario == "dns-flip" else None
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
    report.id_mismatches = _id_mismatches(stage.collectors)
    return report


def _id_mismatches(collectors: list[Collector]) -> int:
    """Messages seen under more than one message id, on one hub or across hubs.

    A resend after a failover must carry the id of the first copy, or a consumer
    cannot deduplicate it (MQTT 5 only: without user properties there is no id).
    """
    ids: dict[int, set[str]] = {}
    for collector in collectors:
        for seq, seen in collector.message_ids().items():
            ids.setdefault(seq, set()).update(seen)
    return sum(1 for seen in ids.values() if len(seen) > 1)


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
    if report.id_mismatches or report.scenario == "dps":
        lines.append(f"messages seen under more than one message id: {report.id_mismatches}")
    if report.scenario == "token-expiry":
        lines += _token_lines(report)
    if report.scenario == "dps":
        lines += _dps_lines(report)
    if report.scenario == "port-blocked":
        lines += _port_lines(report)
    if report.scenario == "region-loss":
        confirmed = report.confirmed_seconds
        text = "NOT confirmed" if confirmed is None else f"accepted {confirmed * 1000:.0f} ms after"
        lines.append(
            f"concierge: the device {text} the switch (sequence {report.switch_sequence}); "
            f"documents rejected: {report.rollbacks}"
        )
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


def _dps_lines(report: DrillReport) -> list[str]:
    return [
        f"DPS registrations made: {report.registrations} (one at start, one re-provisioning); "
        f"provisioned after the fault: {report.reprovisions}",
        f"ended on {report.ended_on or 'no hub'} (the operator reassigned it to "
        f"{report.reassigned_to})",
    ]


def _port_lines(report: DrillReport) -> list[str]:
    moved, back = report.fallback_seconds, report.returned_seconds
    away = (
        "did NOT move" if moved is None else f"on {report.fallback_transport} {moved * 1000:.1f} ms"
    )
    home = "did NOT return" if back is None else f"back on 8883 {back * 1000:.1f} ms after"
    return [
        f"fallback: {away} after 8883 was blocked (link declared dead, then one race)",
        f"way back: {home} it opened (way-back probe every {_WAY_BACK_PROBE:g} s, make "
        "before break)",
    ]

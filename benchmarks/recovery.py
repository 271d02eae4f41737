"""Time-to-recover: device_sdk against raw paho-mqtt, on the local testbed, in one run.

    python benchmarks/recovery.py [--trials N] [--json [PATH]] [--scenario NAME]

Each trial starts a fresh testbed (two mosquitto hubs, ``primary`` and
``secondary``, and the testbed's authoritative DNS server, all on loopback),
connects one device, publishes numbered QoS 1 messages at 20 msg/s with a 5 s
keepalive, breaks the primary, and times the recovery on one monotonic clock:

* ``crash``: SIGKILL the primary. Recovery = kill -> first PUBACK after it.
* ``dns-flip``: the device knows only the primary's FQDN; flip that FQDN to the
  secondary's address, then SIGKILL the primary. Recovery = kill -> first PUBACK
  after it. Dials to the old address after the flip are counted (stale dials).
* ``hang``: SIGSTOP the primary (SIGCONT afterwards, always). Detection =
  fault -> the client notices; recovery = fault -> first PUBACK after it.

"First PUBACK after it" means the first PUBACK on a link opened after the fault,
for both implementations (device_sdk's ``FirstAck`` event; for paho, the first
``on_publish`` after an ``on_connect``), so an ack already in flight from the
dying hub never counts as a recovery.

Raw paho-mqtt gets the best case we can give it: its built-in reconnect with
its default delays (1 s doubling to 120 s), and a system resolver with no cache
at all, emulated by patching ``socket.getaddrinfo`` for testbed names only, and
only while a paho trial runs (device_sdk resolves with dnspython and dials IP
literals, so it never goes through the patch). paho has one host, so it gets
the primary's FQDN.

Lost messages: numbers whose ``publish()`` returned but that no collector (an
independent subscriber on every hub) saw once the outbox drained; for paho,
also only those whose PUBACK never came (informational: paho keeps them queued
in memory, undelivered).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import random
import socket
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import dns.exception
import dns.name
import dns.resolver
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from device_sdk import ClientConfig, DeviceClient, DeviceSDKError, PublishHandle, events
from device_sdk.errors import TestbedError
from device_sdk.testbed import DOMAIN, FAST_LIVENESS, Collector, Testbed
from device_sdk.testbed.collector import merge

try:  # the benchmarks' shared machine description and --json handling
    from benchmarks import report
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    import report  # type: ignore[import-not-found,no-redef]

SCENARIOS = ("crash", "dns-flip", "hang")
SDK = "device_sdk"
PAHO = "raw paho"
PAHO_LONG = "raw paho-mqtt, built-in reconnect, uncached system resolver (best case)"

RATE = 20.0  # QoS 1 messages per second
KEEPALIVE = 5  # seconds, both implementations
WARMUP = 1.0  # publishing before the fault, plus a random fraction of one publish period
AFTER = 0.5  # publishing after the recovery
SDK_BOUND = 10.0  # how long a device_sdk trial waits for its recovery
PAHO_BOUND = {"crash": 5.0, "dns-flip": 5.0, "hang": 15.0}
DRAIN_TIMEOUT = 10.0  # waiting for every outstanding PUBACK after the publisher stopped
SEEN_TIMEOUT = 2.0  # waiting for the collectors to see every acknowledged number
MAX_MESSAGES = 2_000  # publisher cap per trial (20 msg/s for far longer than any bound)

# The numbers the project is held to (DESIGN.md), checked on the device_sdk medians.
TARGET_RECOVERY = 0.100
TARGET_DETECTION = 1.0
TARGET_AFTER_DETECTION = 0.100


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- one timeline per trial, on time.monotonic() ----------------------------------------------


@dataclass(frozen=True, slots=True)
class _Entry:
    at: float
    kind: str  # mark | connected | disconnected | first_ack | dial | info
    text: str
    address: str | None = None  # set on every entry that is a dial to that address


class _Timeline:
    """Everything that happened in one trial: the fault marks and the client's events."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[_Entry] = []
        self.fault_at: float | None = None
        self.recovered = threading.Event()  # a first_ack at or after the fault

    def add(self, at: float, kind: str, text: str, address: str | None = None) -> None:
        with self._lock:
            self._entries.append(_Entry(at, kind, text, address))
            if kind == "first_ack" and self.fault_at is not None and at >= self.fault_at:
                self.recovered.set()

    def mark(self, text: str, *, fault: bool = False) -> float:
        with self._lock:
            now = time.monotonic()
            self._entries.append(_Entry(now, "mark", text))
            if fault:
                self.fault_at = now
        return now

    def entries(self) -> list[_Entry]:
        with self._lock:
            return sorted(self._entries, key=lambda e: e.at)

    def first(self, kind: str, after: float) -> float | None:
        return next((e.at for e in self.entries() if e.kind == kind and e.at >= after), None)

    def dials_to(self, address: str, after: float) -> int:
        return sum(1 for e in self.entries() if e.address == address and e.at >= after)


def _sdk_listener(timeline: _Timeline) -> Callable[[events.Event], None]:
    def on_event(event: events.Event) -> None:
        kind, address = "info", None
        if isinstance(event, events.Connected):
            kind, address = "connected", event.address
        elif isinstance(event, events.DialFailed):
            kind, address = "info", event.address
        elif isinstance(event, events.Disconnected):
            kind = "disconnected"
        elif isinstance(event, events.FirstAck):
            kind = "first_ack"
        timeline.add(event.at, kind, event.describe(), address)

    return on_event


# -- the publisher, the same for both implementations ----------------------------------------


class _Publisher(threading.Thread):
    """Calls ``send(seq)`` at a steady rate until stopped (and at most MAX_MESSAGES times)."""

    def __init__(self, send: Callable[[int], None]) -> None:
        super().__init__(name="bench-publisher", daemon=True)
        self._send = send
        self._stop_flag = threading.Event()
        self.count = 0
        self.error: str | None = None

    def run(self) -> None:
        period = 1.0 / RATE
        next_at = time.monotonic()
        while self.count < MAX_MESSAGES:
            if self._stop_flag.wait(max(0.0, next_at - time.monotonic())):
                return
            try:
                self._send(self.count)
            except DeviceSDKError as exc:  # QueueFull: reported, never silently dropped
                self.error = f"{type(exc).__name__}: {exc}"
                return
            self.count += 1
            next_at += period

    def stop(self) -> None:
        self._stop_flag.set()
        self.join(5.0)


def _payload(seq: int) -> str:
    return f"{seq}:{time.time():.3f}"


# -- faults -----------------------------------------------------------------------------------


def _warm_up() -> None:
    """Publish for WARMUP s, then a random phase within a period, so faults do not always
    land just after a publish (which would always leave one message in flight to resend)."""
    time.sleep(WARMUP + _PHASE.uniform(0.0, 1.0 / RATE))


_PHASE = random.Random()


def _inject(scenario: str, bed: Testbed, timeline: _Timeline) -> float | None:
    """Break the primary; returns when the DNS flip took effect (dns-flip only)."""
    primary = bed.hub("primary")
    flipped_at = None
    if scenario == "dns-flip":
        bed.point("primary", at="secondary")
        flipped_at = timeline.mark(f"DNS: {primary.fqdn} now -> {bed.hub('secondary').address}")
    pid = primary.broker.pid
    if scenario == "hang":
        timeline.mark(f"primary hung (SIGSTOP pid {pid})", fault=True)
        primary.broker.hang()
    else:
        timeline.mark(f"primary killed (SIGKILL pid {pid})", fault=True)
        primary.broker.kill()
    return flipped_at


def _resume_if_hung(scenario: str, bed: Testbed) -> None:
    if scenario == "hang":
        with contextlib.suppress(TestbedError):  # not running any more: nothing to resume
            bed.hub("primary").broker.resume()


def _wait_seen(collectors: Sequence[Collector], expected: set[int], timeout: float) -> None:
    """Bounded wait until the collectors together saw every number in ``expected``."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.02) + 1):
        if expected.issubset(merge(*collectors)) or time.monotonic() >= deadline:
            return
        time.sleep(0.02)


# -- results ----------------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class Trial:
    """What one trial of one implementation measured (seconds from the fault)."""

    implementation: str
    scenario: str
    index: int
    bound: float
    recovery: float | None = None  # fault -> first PUBACK on a link opened after it
    detection: float | None = None  # fault -> the client saw the link end
    reconnect: float | None = None  # fault -> CONNACK of the next link
    published: int = 0
    acknowledged: int = 0
    lost: int = 0
    duplicates: int = 0
    stale_dials: int | None = None
    error: str | None = None
    timeline: list[tuple[float, str]] = field(default_factory=list)

    @property
    def after_detection(self) -> float | None:
        if self.recovery is None or self.detection is None:
            return None
        return self.recovery - self.detection

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["after_detection"] = self.after_detection
        data["timeline"] = [{"t": round(t, 6), "event": text} for t, text in self.timeline]
        return data


def _measure(
    trial: Trial, timeline: _Timeline, stale: str | None, flipped_at: float | None
) -> None:
    fault = timeline.fault_at
    assert fault is not None
    trial.detection = _since(timeline.first("disconnected", fault), fault)
    trial.reconnect = _since(timeline.first("connected", fault), fault)
    if timeline.recovered.is_set():
        trial.recovery = _since(timeline.first("first_ack", fault), fault)
    if stale is not None and flipped_at is not None:
        trial.stale_dials = timeline.dials_to(stale, flipped_at)
    trial.timeline = [(e.at - fault, e.text) for e in timeline.entries() if e.at >= fault - 2.0]


def _since(at: float | None, origin: float) -> float | None:
    return None if at is None else at - origin


def _count_lost(
    trial: Trial, seen: Counter[int], *, published: int, acked: set[int], candidates: set[int]
) -> None:
    """Lost = the candidates no collector saw."""
    trial.published = published
    trial.acknowledged = len(acked)
    trial.lost = sum(1 for seq in candidates if seq not in seen)
    trial.duplicates = sum(n - 1 for seq, n in seen.items() if seq < published and n > 1)


# -- device_sdk trials ------------------------------------------------------------------------


def run_sdk_trial(scenario: str, index: int) -> Trial:
    trial = Trial(implementation=SDK, scenario=scenario, index=index, bound=SDK_BOUND)
    timeline = _Timeline()
    topic = f"bench/{scenario}/sdk/{index}"
    with Testbed(tls=False) as bed:
        collectors = [bed.collector(hub.name, topic) for hub in bed.hubs]
        hubs = ("primary",) if scenario == "dns-flip" else ("primary", "secondary")
        config = bed.client_config(
            f"bench-sdk-{scenario}-{index}",
            hubs=hubs,
            liveness=dataclasses.replace(FAST_LIVENESS, keepalive=float(KEEPALIVE)),
        )
        try:
            _drive_sdk(
                scenario,
                bed,
                config=config,
                timeline=timeline,
                collectors=collectors,
                trial=trial,
            )
        finally:
            _resume_if_hung(scenario, bed)
    return trial


def _drive_sdk(
    scenario: str,
    bed: Testbed,
    *,
    config: ClientConfig,
    timeline: _Timeline,
    collectors: list[Collector],
    trial: Trial,
) -> None:
    handles: list[PublishHandle] = []
    client = DeviceClient(config, on_event=_sdk_listener(timeline))
    try:
        client.connect(10.0)
        topic = collectors[0].topic
        publisher = _Publisher(lambda seq: handles.append(client.publish(topic, _payload(seq))))
        publisher.start()
        _warm_up()
        flipped_at = _inject(scenario, bed, timeline)
        if timeline.recovered.wait(SDK_BOUND):
            time.sleep(AFTER)
        publisher.stop()
        trial.error = publisher.error
        _wait_handles(handles, DRAIN_TIMEOUT)
        acked = {seq for seq, h in enumerate(handles) if h.acknowledged}
        _wait_seen(collectors, acked, SEEN_TIMEOUT)
        # Every accepted number counts: an acknowledged one no collector saw is lost too.
        everything = set(range(len(handles)))
        _count_lost(
            trial, merge(*collectors), published=len(handles), acked=acked, candidates=everything
        )
        stale = bed.hub("primary").address if scenario == "dns-flip" else None
        _measure(trial, timeline, stale, flipped_at)
    finally:
        client.close(5.0)


def _wait_handles(handles: list[PublishHandle], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for handle in list(handles):
        try:
            handle.wait(max(0.0, deadline - time.monotonic()))
        except (TimeoutError, DeviceSDKError):
            return


# -- raw paho trials --------------------------------------------------------------------------


@contextlib.contextmanager
def uncached_system_resolver(bed: Testbed, timeline: _Timeline) -> Iterator[None]:
    """Make ``socket.getaddrinfo`` answer testbed names from the testbed DNS, uncached.

    The testbed's DNS server is not the OS resolver, so paho (which resolves
    through ``getaddrinfo``) could not find the hubs otherwise. Every lookup
    asks the server afresh, the best case for paho: no nscd/systemd-resolved
    cache holding a dead address. Other names go to the real getaddrinfo.
    Each answer is recorded as a dial (paho connects to the first address).
    """
    assert bed.dns is not None
    resolver = bed.dns.resolver(lifetime=1.0)
    original = socket.getaddrinfo

    # Same positional signature as socket.getaddrinfo, which callers use positionally.
    def getaddrinfo(  # noqa: PLR0917
        host: bytes | str | None,
        port: bytes | str | int | None,
        family: int = 0,
        socktype: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[Any]:
        name = host.decode() if isinstance(host, bytes) else host
        if name is None or not _in_testbed_domain(name) or family not in (0, socket.AF_INET):
            return original(host, port, family, socktype, proto, flags)
        addresses = _resolve_a(resolver, name)
        for address in addresses:
            timeline.add(time.monotonic(), "dial", f"getaddrinfo {name} -> {address}", address)
        number = int(port) if port not in (None, b"", "") else 0
        stream = socktype or socket.SOCK_STREAM
        return [
            (socket.AF_INET, stream, proto or socket.IPPROTO_TCP, "", (a, number))
            for a in addresses
        ]

    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]
    try:
        yield
    finally:
        socket.getaddrinfo = original


def _in_testbed_domain(name: str) -> bool:
    name = name.rstrip(".").lower()
    return name == DOMAIN or name.endswith("." + DOMAIN)


def _resolve_a(resolver: dns.resolver.Resolver, name: str) -> list[str]:
    try:
        answer = resolver.resolve(dns.name.from_text(name), "A", search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer) as exc:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from exc
    except dns.exception.DNSException as exc:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution") from exc
    return [rdata.address for rdata in answer]


class _PahoDevice:
    """Raw paho-mqtt as an application would use it: loop_start() and built-in reconnect."""

    def __init__(self, client_id: str, timeline: _Timeline) -> None:
        self._timeline = timeline
        self._lock = threading.Condition()
        self.mids: list[int] = []  # index = sequence number
        self._acked: set[int] = set()
        self._awaiting_first_ack = False
        self.connected = threading.Event()
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv311,
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=120)  # paho's defaults
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish

    def publish(self, topic: str, seq: int) -> None:
        info = self.client.publish(topic, _payload(seq), qos=1)
        # NO_CONN still queues a QoS 1 message: paho sends it after the reconnect.
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise DeviceSDKError(f"paho refused message {seq}: {paho.error_string(info.rc)}")
        with self._lock:
            self.mids.append(info.mid)

    def unacked(self) -> set[int]:
        with self._lock:
            return {seq for seq, mid in enumerate(self.mids) if mid not in self._acked}

    def wait_drained(self, timeout: float) -> None:
        with self._lock:
            self._lock.wait_for(lambda: self._acked.issuperset(self.mids), timeout)

    def stop(self) -> None:
        """disconnect(), then loop_stop(), which joins without a bound: join it bounded."""
        self.client.disconnect()
        stopper = threading.Thread(target=self.client.loop_stop, daemon=True)
        stopper.start()
        stopper.join(5.0)
        if stopper.is_alive():
            _progress("  warning: paho's network thread did not stop within 5 s")

    def _on_connect(self, _c: object, _u: object, _f: object, rc: Any, _p: object) -> None:
        if rc.is_failure:
            self._timeline.add(time.monotonic(), "info", f"paho CONNACK refused: {rc}")
            return
        with self._lock:
            self._awaiting_first_ack = True
        self._timeline.add(time.monotonic(), "connected", "paho on_connect")
        self.connected.set()

    def _on_connect_fail(self, _c: object, _u: object) -> None:
        self._timeline.add(time.monotonic(), "info", "paho on_connect_fail (connect failed)")

    def _on_disconnect(self, _c: object, _u: object, _f: object, rc: Any, _p: object) -> None:
        self._timeline.add(time.monotonic(), "disconnected", f"paho on_disconnect: {rc}")

    def _on_publish(self, _c: object, _u: object, mid: int, _rc: object, _p: object) -> None:
        now = time.monotonic()
        with self._lock:
            self._acked.add(mid)
            first, self._awaiting_first_ack = self._awaiting_first_ack, False
            self._lock.notify_all()
        if first:
            self._timeline.add(now, "first_ack", f"paho first PUBACK after connect (mid {mid})")


def run_paho_trial(scenario: str, index: int) -> Trial:
    bound = PAHO_BOUND[scenario]
    trial = Trial(implementation=PAHO, scenario=scenario, index=index, bound=bound)
    timeline = _Timeline()
    topic = f"bench/{scenario}/paho/{index}"
    with Testbed(tls=False) as bed, uncached_system_resolver(bed, timeline):
        collectors = [bed.collector(hub.name, topic) for hub in bed.hubs]
        device = _PahoDevice(f"bench-paho-{scenario}-{index}", timeline)
        try:
            _drive_paho(
                scenario,
                bed,
                device=device,
                timeline=timeline,
                collectors=collectors,
                trial=trial,
            )
        finally:
            device.stop()
            _resume_if_hung(scenario, bed)
    return trial


def _drive_paho(
    scenario: str,
    bed: Testbed,
    *,
    device: _PahoDevice,
    timeline: _Timeline,
    collectors: list[Collector],
    trial: Trial,
) -> None:
    primary = bed.hub("primary")
    device.client.connect(primary.fqdn, primary.broker.port, keepalive=KEEPALIVE)
    device.client.loop_start()
    if not device.connected.wait(5.0):
        raise TestbedError("raw paho did not connect to the primary within 5 s")
    topic = collectors[0].topic
    publisher = _Publisher(lambda seq: device.publish(topic, seq))
    publisher.start()
    _warm_up()
    flipped_at = _inject(scenario, bed, timeline)
    recovered = timeline.recovered.wait(trial.bound)
    if recovered:
        time.sleep(AFTER)
    publisher.stop()
    trial.error = publisher.error
    if recovered:
        device.wait_drained(DRAIN_TIMEOUT)
    unacked = device.unacked()
    acked = set(range(len(device.mids))) - unacked
    _wait_seen(collectors, acked, SEEN_TIMEOUT)
    _count_lost(
        trial, merge(*collectors), published=len(device.mids), acked=acked, candidates=unacked
    )
    stale = primary.address if scenario == "dns-flip" else None
    _measure(trial, timeline, stale, flipped_at)
    if not recovered:
        trial.recovery = None  # a late first ack past the bound does not count


# -- summary and report -----------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class Summary:
    """Medians and maxima of one implementation in one scenario (milliseconds)."""

    scenario: str
    implementation: str
    trials: int
    recovered: int
    bound_s: float
    recovery_median_ms: float | None
    recovery_max_ms: float | None
    detection_median_ms: float | None
    detection_max_ms: float | None
    after_detection_median_ms: float | None
    after_detection_max_ms: float | None
    reconnect_median_ms: float | None
    lost: int
    duplicates: int
    stale_dials: int | None


def summarise(trials: Sequence[Trial]) -> Summary:
    first = trials[0]

    def stats(values: list[float | None]) -> tuple[float | None, float | None]:
        present = [v * 1000 for v in values if v is not None]
        if not present:
            return None, None
        return statistics.median(present), max(present)

    recovery = stats([t.recovery for t in trials])
    detection = stats([t.detection for t in trials])
    after = stats([t.after_detection for t in trials])
    stale = [t.stale_dials for t in trials if t.stale_dials is not None]
    return Summary(
        scenario=first.scenario,
        implementation=first.implementation,
        trials=len(trials),
        recovered=sum(1 for t in trials if t.recovery is not None),
        bound_s=first.bound,
        recovery_median_ms=recovery[0],
        recovery_max_ms=recovery[1],
        detection_median_ms=detection[0],
        detection_max_ms=detection[1],
        after_detection_median_ms=after[0],
        after_detection_max_ms=after[1],
        reconnect_median_ms=stats([t.reconnect for t in trials])[0],
        lost=sum(t.lost for t in trials),
        duplicates=sum(t.duplicates for t in trials),
        stale_dials=sum(stale) if stale else None,
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


_COLUMNS = (
    ("impl", 10),
    ("recovered", 9),
    ("recovery med", 12),
    ("recovery max", 12),
    ("reconnect med", 13),
    ("detect med", 10),
    ("detect max", 10),
    ("after-detect med", 16),
    ("lost", 5),
    ("dup", 3),
    ("stale dials", 11),
)


def _row(s: Summary) -> str:
    recovery_median = _ms(s.recovery_median_ms)
    recovery_max = _ms(s.recovery_max_ms)
    if s.recovered == 0:
        recovery_median = recovery_max = f"none <{s.bound_s:g}s"
    elif s.recovered < s.trials:
        recovery_max = f"none <{s.bound_s:g}s"
    cells = (
        s.implementation,
        f"{s.recovered}/{s.trials}",
        recovery_median,
        recovery_max,
        _ms(s.reconnect_median_ms),
        _ms(s.detection_median_ms),
        _ms(s.detection_max_ms),
        _ms(s.after_detection_median_ms),
        str(s.lost) + ("*" if s.implementation == PAHO else ""),
        str(s.duplicates),
        "-" if s.stale_dials is None else str(s.stale_dials),
    )
    row = "  ".join(cell.ljust(width) for cell, (_h, width) in zip(cells, _COLUMNS, strict=True))
    return row.rstrip()


def _ratio(paho_value: float | None, sdk: Summary, paho_s: Summary, what: str) -> str:
    sdk_value = sdk.recovery_median_ms if what == "recovery" else sdk.detection_median_ms
    if sdk_value is None or sdk_value <= 0:
        return f"ratio paho/sdk ({what}, medians): n/a (device_sdk has no {what} value)"
    if paho_value is None or (what == "recovery" and paho_s.recovered < paho_s.trials):
        floor = paho_s.bound_s * 1000 / sdk_value
        return (
            f"ratio paho/sdk ({what}, medians): n/a, raw paho did not recover in every trial "
            f"within {paho_s.bound_s:g} s (so > {floor:.0f}x)"
        )
    return f"ratio paho/sdk ({what}, medians): {paho_value / sdk_value:.1f}x"


_DESCRIPTIONS = {
    "crash": "SIGKILL the primary; recovery = kill -> first PUBACK after it",
    "dns-flip": "device knows only the primary FQDN; flip it to the secondary's IP, then "
    "SIGKILL the primary; recovery = kill -> first PUBACK after it",
    "hang": "SIGSTOP the primary; detection = fault -> client sees the link end; "
    "recovery = fault -> first PUBACK after it",
}


def format_scenario(scenario: str, sdk: Summary, paho_s: Summary) -> str:
    header = "  ".join(name.ljust(width) for name, width in _COLUMNS).rstrip()
    lines = [
        f"== {scenario}: {_DESCRIPTIONS[scenario]}",
        "   (times in ms from the fault; medians and maxima over trials)",
        header,
        "-" * len(header),
        _row(sdk),
        _row(paho_s),
        _ratio(paho_s.recovery_median_ms, sdk, paho_s, "recovery"),
    ]
    if scenario == "hang":
        lines.append(_ratio(paho_s.detection_median_ms, sdk, paho_s, "detection"))
    return "\n".join(lines)


def check_targets(summaries: dict[str, Summary]) -> list[tuple[str, bool]]:
    """The DESIGN.md targets, judged on device_sdk's medians and totals."""
    checks: list[tuple[str, bool]] = []
    for scenario, s in summaries.items():
        all_back = s.recovered == s.trials
        checks.append(
            (f"{scenario}: recovered in every trial ({s.recovered}/{s.trials})", all_back)
        )
        checks.append((f"{scenario}: 0 lost (lost {s.lost})", s.lost == 0))
        if scenario in ("crash", "dns-flip"):
            median = s.recovery_median_ms
            checks.append(
                (
                    f"{scenario}: recovery median {_ms(median)} ms < 100 ms "
                    f"(max {_ms(s.recovery_max_ms)} ms)",
                    median is not None and median < TARGET_RECOVERY * 1000,
                )
            )
        if scenario == "dns-flip":
            checks.append((f"dns-flip: 0 stale dials ({s.stale_dials})", s.stale_dials == 0))
        if scenario == "hang":
            detect, after = s.detection_median_ms, s.after_detection_median_ms
            checks.append(
                (
                    f"hang: detection median {_ms(detect)} ms < 1000 ms "
                    f"(max {_ms(s.detection_max_ms)} ms)",
                    detect is not None and detect < TARGET_DETECTION * 1000,
                )
            )
            checks.append(
                (
                    f"hang: recovery after detection median {_ms(after)} ms < 100 ms "
                    f"(max {_ms(s.after_detection_max_ms)} ms)",
                    after is not None and after < TARGET_AFTER_DETECTION * 1000,
                )
            )
    return checks


def format_timeline(trial: Trial) -> str:
    lines = [f"slowest device_sdk trial, {trial.scenario} #{trial.index} (ms from the fault):"]
    lines += [f"  {t * 1000:9.1f}  {text}" for t, text in trial.timeline]
    return "\n".join(lines)


# -- machine ----------------------------------------------------------------------------------


def format_machine(info: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"recovery benchmark, {info['date']}",
            f"machine: {info['platform']}, {info['cpu']}, {info['cpu_count']} CPUs",
            f"python {info['python']}, device_sdk {info['device_sdk']} "
            f"({info['device_sdk_source']}), "
            f"paho-mqtt {info['paho_mqtt']}, {info['mosquitto']}",
            f"load: QoS 1 at {RATE:g} msg/s, keepalive {KEEPALIVE} s, plain MQTT on loopback; "
            "a fresh testbed per trial",
            f"{SDK}: testbed fast policies (FAST_LIVENESS with keepalive {KEEPALIVE} s), "
            "hubs primary+secondary (dns-flip: primary only)",
            f"{PAHO}: {PAHO_LONG}; one host, the primary's FQDN; "
            "getaddrinfo patched for testbed names during paho trials only",
        ]
    )


# -- main -------------------------------------------------------------------------------------


def run(scenarios: Sequence[str], trials: int) -> dict[str, list[Trial]]:
    """Run every scenario, alternating the two implementations trial by trial."""
    results: dict[str, list[Trial]] = {}
    for scenario in scenarios:
        for index in range(1, trials + 1):
            for implementation, runner in ((SDK, run_sdk_trial), (PAHO, run_paho_trial)):
                trial = runner(scenario, index)
                results.setdefault(f"{scenario}/{implementation}", []).append(trial)
                _progress(_trial_line(trial, trials))
    return results


def _trial_line(trial: Trial, trials: int) -> str:
    recovery = (
        f"recovered {trial.recovery * 1000:.1f} ms"
        if trial.recovery is not None
        else f"did not recover within {trial.bound:g} s"
    )
    detection = "" if trial.detection is None else f", detected {trial.detection * 1000:.1f} ms"
    stale = "" if trial.stale_dials is None else f", stale dials {trial.stale_dials}"
    error = "" if trial.error is None else f", publisher error: {trial.error}"
    return (
        f"[{trial.scenario}] {trial.implementation} {trial.index}/{trials}: {recovery}"
        f"{detection}, lost {trial.lost}/{trial.published}{stale}{error}"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Time-to-recover of device_sdk and raw paho-mqtt on the local testbed."
    )
    parser.add_argument("--trials", type=int, default=5, help="trials per scenario (default 5)")
    report.add_json_option(parser)
    parser.add_argument(
        "--scenario", choices=(*SCENARIOS, "all"), default="all", help="default: all three"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # The SDK logs every disconnect as a warning; its events are in the timelines already.
    logging.getLogger("device_sdk").addHandler(logging.NullHandler())
    if not 1 <= args.trials <= 100:
        _parser().error("--trials must be between 1 and 100")
    scenarios = SCENARIOS if args.scenario == "all" else (args.scenario,)
    info = report.machine_info()
    if not report.json_only(args.json):
        print(format_machine(info), end="\n\n", flush=True)
    results = run(scenarios, args.trials)
    summaries = {
        scenario: (
            summarise(results[f"{scenario}/{SDK}"]),
            summarise(results[f"{scenario}/{PAHO}"]),
        )
        for scenario in scenarios
    }
    checks = check_targets({scenario: pair[0] for scenario, pair in summaries.items()})
    report.emit(
        lambda: _text_report(results, summaries, checks),
        lambda: _document(info, args, results, summaries, checks),
        args.json,
    )
    return 0 if all(ok for _text, ok in checks) else 1


def _document(
    info: dict[str, Any],
    args: argparse.Namespace,
    results: dict[str, list[Trial]],
    summaries: dict[str, tuple[Summary, Summary]],
    checks: list[tuple[str, bool]],
) -> dict[str, Any]:
    return {
        "machine": info,
        "command": " ".join(["python", "benchmarks/recovery.py", *sys.argv[1:]]),
        "settings": {
            "trials": args.trials,
            "rate_msg_per_s": RATE,
            "keepalive_s": KEEPALIVE,
            "sdk_bound_s": SDK_BOUND,
            "paho_bound_s": PAHO_BOUND,
            "paho_resolver": PAHO_LONG,
        },
        "summaries": [dataclasses.asdict(s) for pair in summaries.values() for s in pair],
        "targets": [{"target": text, "met": ok} for text, ok in checks],
        "trials": [t.as_dict() for trials in results.values() for t in trials],
    }


def _text_report(
    results: dict[str, list[Trial]],
    summaries: dict[str, tuple[Summary, Summary]],
    checks: list[tuple[str, bool]],
) -> str:
    parts = [format_scenario(scenario, *pair) for scenario, pair in summaries.items()]
    parts.append(
        "* raw paho 'lost' = published, never acknowledged and seen by no collector at the "
        "end of the trial (still queued in paho's memory); informational"
    )
    parts.append(
        "device_sdk targets (DESIGN.md):\n"
        + "\n".join(f"  [{'met' if ok else 'MISSED'}] {text}" for text, ok in checks)
    )
    for scenario in summaries:
        sdk_trials = results[f"{scenario}/{SDK}"]
        slowest = max(sdk_trials, key=lambda t: float("inf") if t.recovery is None else t.recovery)
        parts.append(format_timeline(slowest))
    return "\n\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())

"""A long soak: one device publishing for hours while its hubs break every 30 s.

    python benchmarks/soak.py                 # 2 hours (stops by itself)
    python benchmarks/soak.py --minutes 10    # the developer's variant
    python benchmarks/soak.py [--seed S] [--rate R] [--json [PATH]]

One testbed: two mosquitto hubs (``primary`` and ``secondary``, plain MQTT), the
testbed's DNS server and the reference concierge, all on loopback. Each hub sits
behind a :class:`~device_sdk.testbed.proxy.FaultProxy` on its own loopback
address and the hub's port (as a cloud hub sits behind its load balancer); the
hub's FQDN resolves to its proxy. The device is one ``DeviceClient`` with the
testbed's fast policies, a 5 s keepalive, the concierge (polled every second)
and a durable SQLite outbox (``synchronous=NORMAL``, in a temp dir): a device
that runs for months keeps its messages on disk, and this exercises the SQLite
code paths for leaks as well. It publishes numbered QoS 1 messages at ``--rate``
(20 msg/s).

Every ``--fault-interval`` (30 s) one fault hits the hub the device is connected
to, in a seeded random order (each round of six is a shuffle of every kind):

* ``crash``: SIGKILL the hub; healed by starting it again.
* ``hang``: SIGSTOP the hub; healed by SIGCONT.
* ``dns-flip``: point the FQDN the device is using at the other hub, then SIGKILL
  this one; healed by starting it and pointing the FQDN home.
* ``concierge``: the operator makes the other hub active (make before break).
* ``blackhole``: the hub's proxy drops every byte, both ways, silently; healed
  by forwarding again.
* ``restart``: stop the hub gracefully (SIGTERM: it closes its connections);
  healed by starting it again.

A fault is healed ``HEAL_AFTER`` s after the device recovered (or after the
recovery bound), so the next fault always finds both hubs up. Recovery = the
fault -> the first PUBACK on a link opened after it (the SDK's ``FirstAck``).

A stopped hub comes back only after the device recovered on the other one, and
its collector is replaced before the device can return (failback waits for a
dwell and healthy probes): mosquitto keeps no subscription across a restart, and
a message acknowledged while nobody was subscribed would look lost.

Every ``--sample-interval`` (60 s) the benchmark samples its own process (the
device, and with it the testbed's DNS server, concierge, proxies and
subscribers, all long-lived): VmRSS and Threads from ``/proc/self/status``,
the open descriptors in ``/proc/self/fd``, ``threading.active_count()``, the
live blocks of Python's own allocator (``sys.getallocatedblocks()``) and, with
glibc, ``mallinfo2()``: what malloc has handed out and what it holds free. RSS
that grows while both of those stay flat is the allocator's fragmentation, not
a leak. The
slopes are least squares over the samples after ``--warmup`` (120 s: the
outbox, caches and the allocator settle first). The subscribers count into one
preallocated array, and the publisher keeps no handles, so nothing of the
benchmark's own grows with the run.

At the end the publisher stops, the outbox drains, and every number whose
``publish()`` returned must have reached a subscriber: lost must be 0.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import itertools
import math
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from device_sdk import DeviceClient, DeviceSDKError, events
from device_sdk.config import OutboxSettings
from device_sdk.errors import TestbedError
from device_sdk.testbed import FAST_LIVENESS, Testbed
from device_sdk.testbed.proxy import FaultProxy, ProxySpec

try:  # the benchmarks' shared machine description and --json handling
    from benchmarks import report
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    import report  # type: ignore[import-not-found,no-redef]

KINDS = ("crash", "hang", "dns-flip", "concierge", "blackhole", "restart")
TOPIC = "bench/soak"
CLIENT_ID = "soak-device"

MINUTES = 120.0
RATE = 20.0  # QoS 1 messages per second
KEEPALIVE = 5.0
FAULT_INTERVAL = 30.0
SAMPLE_INTERVAL = 60.0
WARMUP = 120.0  # samples before this are left out of the slopes
RECOVERY_BOUND = 15.0  # a fault not recovered by then counts as unrecovered
HEAL_AFTER = 1.0  # the fault lasts this much longer after the recovery
CONNECT_BOUND = 10.0
DRAIN_BOUND = 60.0  # waiting for the outbox to empty at the end
SEEN_BOUND = 10.0  # waiting for the subscribers to see every accepted number
PROXY_OFFSET = 10  # hub i's proxy listens on 127.0.0.(first octet + i + PROXY_OFFSET)
DNS_TTL = 1


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- what reached the hubs ----------------------------------------------------------------------


class _Tally:
    """Deliveries per number, in one array sized for the whole run (so it never grows)."""

    def __init__(self, capacity: int) -> None:
        self._counts = bytearray(capacity)
        # Touch every page now: a zeroed buffer gets its pages only when first written,
        # and that growth (one byte per message) would show in the RSS slope.
        for offset in range(0, capacity, 4096):
            self._counts[offset] = 0
        self._lock = threading.Lock()
        self.unexpected = 0  # numbers outside the array, or not numbers at all

    def add(self, seq: int) -> None:
        with self._lock:
            if 0 <= seq < len(self._counts):
                self._counts[seq] = min(255, self._counts[seq] + 1)
            else:
                self.unexpected += 1

    def missing(self, count: int) -> list[int]:
        with self._lock:
            return [n for n in range(count) if self._counts[n] == 0]

    def duplicates(self, count: int) -> int:
        with self._lock:
            return sum(c - 1 for c in self._counts[:count] if c > 1)

    def wait_all(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.missing(count):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True


class _Subscriber:
    """A plain paho subscriber on one broker, independent of device_sdk, counting into a tally.

    Not the testbed's Collector, which keeps every number and message id it saw:
    over hours that would be the fastest-growing memory in this process.
    """

    _ids = itertools.count()

    def __init__(self, host: str, port: int, tally: _Tally) -> None:
        self.host, self.port, self._tally = host, port, tally
        self._ready = threading.Event()
        self._client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"soak-subscriber-{host}-{next(self._ids)}",
            protocol=paho.MQTTv5,
        )
        self._client.on_connect = lambda c, *_: c.subscribe(TOPIC, qos=1)
        self._client.on_subscribe = lambda *_: self._ready.set()
        self._client.on_message = self._on_message

    def start(self, timeout: float = 5.0) -> _Subscriber:
        try:
            self._client.connect(self.host, self.port, keepalive=5)
        except OSError as exc:
            raise TestbedError(f"subscriber could not reach {self.host}:{self.port}") from exc
        self._client.loop_start()
        if not self._ready.wait(timeout):
            self.stop()
            raise TestbedError(f"subscriber on {self.host}:{self.port} not subscribed in time")
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        # The callbacks refer back to this object: without them, dropping the last
        # reference frees the paho client at once, and with it its wake-up socket pair
        # (two fds that the garbage collector would otherwise free at some later time).
        self._client.on_connect = self._client.on_subscribe = self._client.on_message = None

    def _on_message(self, _c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        head = bytes(message.payload).split(b":", 1)[0]
        self._tally.add(int(head) if head.isdigit() else -1)


# -- the device's side: where it is, and when it recovered ---------------------------------------


class _Watch:
    """Follows the device's events: the link it is on, and the first PUBACK after a fault."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.hub: str | None = None
        self.address: str | None = None
        self._fault_at: float | None = None
        self.detected_at: float | None = None
        self.recovered_at: float | None = None

    def on_event(self, event: events.Event) -> None:
        with self._cond:
            if isinstance(event, events.Connected):
                self.hub, self.address = event.hub, event.address
            elif isinstance(event, events.Disconnected) and event.hub == self.hub:
                # Make before break ends the old link after Connected named the new hub.
                self.hub = self.address = None
                if self._fault_at is not None and self.detected_at is None:
                    self.detected_at = event.at
            elif isinstance(event, events.FirstAck) and self._pending(event.at):
                self.recovered_at = event.at
            self._cond.notify_all()

    def _pending(self, at: float) -> bool:
        return self._fault_at is not None and self.recovered_at is None and at >= self._fault_at

    def arm(self) -> float:
        """Mark the fault now; returns its time."""
        with self._cond:
            self._fault_at = time.monotonic()
            self.detected_at = self.recovered_at = None
            return self._fault_at

    def wait_recovered(self, timeout: float) -> float | None:
        with self._cond:
            self._cond.wait_for(lambda: self.recovered_at is not None, timeout)
            return self.recovered_at

    def wait_link(self, timeout: float) -> tuple[str, str] | None:
        """(hub name, dialled address) of the current link, waiting for one (bounded)."""
        with self._cond:
            self._cond.wait_for(lambda: self.address is not None, timeout)
            if self.hub is None or self.address is None:
                return None
            return self.hub, self.address


class _Publisher(threading.Thread):
    """Publishes numbered QoS 1 messages at a steady rate; keeps only the count."""

    def __init__(self, client: DeviceClient, rate: float, limit: int) -> None:
        super().__init__(name="soak-publisher", daemon=True)
        self._client, self._period, self._limit = client, 1.0 / rate, limit
        self._stop_flag = threading.Event()
        self.count = 0
        self.error: str | None = None

    def run(self) -> None:
        next_at = time.monotonic()
        while self.count < self._limit:
            if self._stop_flag.wait(max(0.0, next_at - time.monotonic())):
                return
            try:
                self._client.publish(TOPIC, f"{self.count}:{time.time():.3f}")
            except DeviceSDKError as exc:  # QueueFull: reported, never silently dropped
                self.error = f"{type(exc).__name__}: {exc}"
                return
            self.count += 1
            next_at += self._period

    def stop(self) -> None:
        self._stop_flag.set()
        self.join(5.0)


# -- the site: hubs behind proxies, their names, their subscribers -------------------------------


class _Site:
    """The testbed with a proxy before each hub and a subscriber on each broker."""

    def __init__(self, bed: Testbed, tally: _Tally) -> None:
        assert bed.dns is not None
        self.bed, self._tally = bed, tally
        self.proxies: dict[str, FaultProxy] = {}
        self.subscribers: dict[str, _Subscriber] = {}
        for hub in bed.hubs:
            octet = int(hub.address.rsplit(".", 1)[1]) + PROXY_OFFSET
            spec = ProxySpec(
                listen_host=f"127.0.0.{octet}",
                listen_port=hub.broker.port,  # the port the hub's endpoint names
                target_host=hub.address,
                target_port=hub.broker.port,
            )
            proxy = FaultProxy(spec)
            proxy.start()
            self.proxies[hub.name] = proxy
            self.point(hub.name, at=hub.name)
            self.subscribers[hub.name] = _Subscriber(hub.address, hub.broker.port, tally).start()

    def close(self) -> None:
        for subscriber in self.subscribers.values():
            subscriber.stop()
        for proxy in self.proxies.values():
            proxy.stop()

    def hub_at(self, address: str) -> str:
        """The hub whose proxy listens on ``address``."""
        for name, proxy in self.proxies.items():
            if proxy.host == address:
                return name
        raise TestbedError(f"the device is connected to {address}, no hub's proxy")

    def other(self, name: str) -> str:
        return next(hub.name for hub in self.bed.hubs if hub.name != name)

    def point(self, name: str, *, at: str) -> None:
        """Make hub ``name``'s FQDN resolve to hub ``at``'s proxy."""
        assert self.bed.dns is not None
        fqdn = self.bed.hub(name).fqdn
        self.bed.dns.set_address(fqdn, [self.proxies[at].host], ttl=DNS_TTL)

    def bring_back(self, name: str) -> None:
        """Start a stopped broker, with a fresh subscriber (what the old one saw is tallied)."""
        # Stopped before the broker is back, or it would resubscribe and count twice.
        self.subscribers.pop(name).stop()
        hub = self.bed.hub(name)
        hub.broker.start()
        self.subscribers[name] = _Subscriber(hub.address, hub.broker.port, self._tally).start()


# -- faults: each breaks the hub the device is on and returns how to heal it ---------------------

Heal = Callable[[], None]


def _crash(site: _Site, name: str, _link_hub: str) -> Heal:
    site.bed.hub(name).broker.kill()
    return lambda: site.bring_back(name)


def _hang(site: _Site, name: str, _link_hub: str) -> Heal:
    broker = site.bed.hub(name).broker
    broker.hang()
    return broker.resume


def _dns_flip(site: _Site, name: str, link_hub: str) -> Heal:
    site.point(link_hub, at=site.other(name))
    site.bed.hub(name).broker.kill()

    def heal() -> None:
        site.bring_back(name)
        site.point(link_hub, at=link_hub)

    return heal


def _concierge(site: _Site, _name: str, link_hub: str) -> Heal:
    # By the name the device uses (after a healed DNS flip it may differ from the broker).
    concierge = site.bed.concierge
    assert concierge is not None
    concierge.set_active(link_hub)  # a no-op unless a failover left the device off it
    concierge.set_active(site.other(link_hub))
    return lambda: None


def _blackhole(site: _Site, name: str, _link_hub: str) -> Heal:
    proxy = site.proxies[name]
    proxy.blackhole()
    return proxy.restore


def _restart(site: _Site, name: str, _link_hub: str) -> Heal:
    site.bed.hub(name).broker.stop()
    return lambda: site.bring_back(name)


_FAULTS: dict[str, Callable[[_Site, str, str], Heal]] = {
    "crash": _crash,
    "hang": _hang,
    "dns-flip": _dns_flip,
    "concierge": _concierge,
    "blackhole": _blackhole,
    "restart": _restart,
}


@dataclass(slots=True, kw_only=True)
class FaultRecord:
    """One injected fault (times in seconds; ``at`` from the start of the run)."""

    index: int
    kind: str
    hub: str  # the hub (broker) broken
    at: float
    detection: float | None = None  # fault -> the device's link to it ended
    recovery: float | None = None  # fault -> first PUBACK on a link opened after it
    error: str | None = None  # the fault could not be injected or healed


def fault_order(seed: int) -> Callable[[], str]:
    """The next fault kind: rounds of every kind, each round shuffled by a seeded RNG."""
    rng = random.Random(seed)
    queue: list[str] = []

    def next_kind() -> str:
        if not queue:
            queue.extend(KINDS)
            rng.shuffle(queue)
        return queue.pop(0)

    return next_kind


def _inject(site: _Site, watch: _Watch, kind: str, index: int, origin: float) -> FaultRecord:
    link = watch.wait_link(CONNECT_BOUND)
    if link is None:
        return FaultRecord(
            index=index,
            kind=kind,
            hub="-",
            at=time.monotonic() - origin,
            error="the device had no link to break",
        )
    link_hub, address = link
    name = site.hub_at(address)
    fault_at = watch.arm()
    record = FaultRecord(index=index, kind=kind, hub=name, at=fault_at - origin)
    heal: Heal | None = None
    try:
        heal = _FAULTS[kind](site, name, link_hub)
        recovered_at = watch.wait_recovered(RECOVERY_BOUND)
        if recovered_at is not None:
            record.recovery = recovered_at - fault_at
        if watch.detected_at is not None:
            record.detection = watch.detected_at - fault_at
        time.sleep(HEAL_AFTER)
    except (TestbedError, DeviceSDKError, OSError) as exc:
        record.error = f"{type(exc).__name__}: {exc}"
    finally:
        if heal is not None:
            heal()
    return record


# -- samples and slopes -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # seconds from the start
    rss_kib: int
    fds: int
    threads: int  # threading.active_count()
    os_threads: int  # /proc/self/status Threads
    py_blocks: int  # sys.getallocatedblocks(): live objects of Python's own allocator
    heap_used_kib: int | None  # glibc mallinfo2: bytes handed out by malloc (all arenas)
    heap_free_kib: int | None  # glibc mallinfo2: bytes malloc holds but has not handed out


class _MallInfo2(ctypes.Structure):
    _fields_ = [  # the ctypes layout of glibc's struct mallinfo2
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _mallinfo() -> Callable[[], _MallInfo2] | None:
    """glibc's ``mallinfo2`` (2.33+), or None elsewhere (musl, macOS, older glibc)."""
    try:
        libc = ctypes.CDLL(None)
        function = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    function.restype = _MallInfo2
    function.argtypes = []
    return function


_MALLINFO = _mallinfo()


def take_sample(origin: float) -> Sample:
    status: dict[str, str] = {}
    with open("/proc/self/status", encoding="ascii") as lines:
        for line in lines:
            key, _sep, value = line.partition(":")
            status[key] = value.strip()
    heap = None if _MALLINFO is None else _MALLINFO()
    return Sample(
        at=time.monotonic() - origin,
        rss_kib=int(status["VmRSS"].split()[0]),
        fds=len(os.listdir("/proc/self/fd")) - 1,  # less the one listdir itself opened
        threads=threading.active_count(),
        os_threads=int(status["Threads"]),
        py_blocks=sys.getallocatedblocks(),
        heap_used_kib=None if heap is None else (heap.uordblks + heap.hblkhd) // 1024,
        heap_free_kib=None if heap is None else heap.fordblks // 1024,
    )


def slope_per_hour(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, in value per hour."""
    if len(points) < 2:
        return None
    mean_t = statistics.fmean(t for t, _v in points)
    mean_v = statistics.fmean(v for _t, v in points)
    spread = sum((t - mean_t) ** 2 for t, _v in points)
    if spread == 0:
        return None
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / spread * 3600


# -- the run ------------------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class Settings:
    minutes: float
    rate: float
    seed: int
    fault_interval: float
    sample_interval: float
    warmup: float


@dataclass(slots=True, kw_only=True)
class Outcome:
    duration: float = 0.0
    faults: list[FaultRecord] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    published: int = 0
    publisher_error: str | None = None
    drained: bool = False
    all_seen: bool = False
    lost: list[int] = field(default_factory=list)
    duplicates: int = 0
    unexpected: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)


def run_soak(settings: Settings) -> Outcome:
    seconds = settings.minutes * 60
    capacity = math.ceil(settings.rate * (seconds + 30)) + 1000
    tally = _Tally(capacity)
    watch = _Watch()
    outcome = Outcome()
    with (
        Testbed(tls=False, concierge=True, dns_ttl=DNS_TTL) as bed,
        tempfile.TemporaryDirectory(prefix="device-sdk-soak-") as directory,
    ):
        site = _Site(bed, tally)
        try:
            config = bed.client_config(
                CLIENT_ID,
                liveness=dataclasses.replace(FAST_LIVENESS, keepalive=KEEPALIVE),
                concierge=bed.concierge_settings(poll_interval=1.0),
                outbox=OutboxSettings(
                    path=str(Path(directory) / "outbox.sqlite"), synchronous="NORMAL"
                ),
            )
            client = DeviceClient(config, on_event=watch.on_event)
            try:
                client.connect(CONNECT_BOUND)
                publisher = _Publisher(client, settings.rate, capacity)
                publisher.start()
                try:
                    _drive(settings, site, watch, outcome)
                finally:
                    publisher.stop()
                outcome.published, outcome.publisher_error = publisher.count, publisher.error
                outcome.drained = _drain(client, DRAIN_BOUND)
                outcome.all_seen = tally.wait_all(outcome.published, SEEN_BOUND)
                outcome.lost = tally.missing(outcome.published)
                outcome.duplicates = tally.duplicates(outcome.published)
                outcome.unexpected = tally.unexpected
                outcome.metrics = dataclasses.asdict(client.metrics())
            finally:
                client.close(5.0)
        finally:
            for hub in bed.hubs:
                if hub.broker.is_hung:
                    hub.broker.resume()
            site.close()
    return outcome


def _drive(settings: Settings, site: _Site, watch: _Watch, outcome: Outcome) -> None:
    """Faults and samples on schedule until the run's end (every wait bounded by it)."""
    origin = time.monotonic()
    end = origin + settings.minutes * 60
    next_kind = fault_order(settings.seed)
    next_fault = origin + settings.fault_interval
    next_sample = origin
    # Bounded: one pass per fault or sample, and both are spaced by at least 1 s.
    for _ in range(int(settings.minutes * 60) * 2 + 10):
        now = time.monotonic()
        if now >= end:
            break
        if now >= next_sample:
            outcome.samples.append(take_sample(origin))
            next_sample += settings.sample_interval
            continue
        if now >= next_fault:
            record = _inject(site, watch, next_kind(), len(outcome.faults) + 1, origin)
            outcome.faults.append(record)
            _progress(_fault_line(record))
            next_fault += settings.fault_interval
            continue
        time.sleep(max(0.0, min(next_fault, next_sample, end) - now))
    outcome.samples.append(take_sample(origin))
    outcome.duration = time.monotonic() - origin


def _drain(client: DeviceClient, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while client.metrics().queue_depth > 0:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _fault_line(record: FaultRecord) -> str:
    recovered = "NOT recovered" if record.recovery is None else f"{record.recovery * 1000:.0f} ms"
    error = f" ({record.error})" if record.error else ""
    return (
        f"[{record.at:8.1f} s] fault {record.index} {record.kind} on {record.hub}: "
        f"recovered {recovered}{error}"
    )


# -- summary and report -----------------------------------------------------------------------


def _percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest rank: the smallest value with at least ``fraction`` of them at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _optional_slope(points: Sequence[tuple[float, int | None]]) -> float | None:
    known = [(at, float(value)) for at, value in points if value is not None]
    return slope_per_hour(known) if len(known) == len(points) else None


def summarise(settings: Settings, outcome: Outcome) -> dict[str, Any]:
    steady = [s for s in outcome.samples if s.at >= settings.warmup]
    kinds: dict[str, Any] = {}
    for kind in KINDS:
        records = [r for r in outcome.faults if r.kind == kind]
        times = [r.recovery * 1000 for r in records if r.recovery is not None]
        kinds[kind] = {
            "injected": len(records),
            "recovered": len(times),
            "errors": sum(1 for r in records if r.error),
            "recovery_median_ms": statistics.median(times) if times else None,
            "recovery_p95_ms": _percentile(times, 0.95) if times else None,
            "recovery_max_ms": max(times) if times else None,
        }
    first, last = (outcome.samples[0], outcome.samples[-1]) if outcome.samples else (None, None)
    return {
        "duration_s": outcome.duration,
        "published": outcome.published,
        "lost": len(outcome.lost),
        "lost_numbers": outcome.lost[:50],
        "duplicates": outcome.duplicates,
        "unexpected_deliveries": outcome.unexpected,
        "drained": outcome.drained,
        "all_seen": outcome.all_seen,
        "publisher_error": outcome.publisher_error,
        "faults": len(outcome.faults),
        "faults_unrecovered": sum(1 for r in outcome.faults if r.recovery is None),
        "faults_with_errors": sum(1 for r in outcome.faults if r.error),
        "by_kind": kinds,
        "samples": len(outcome.samples),
        "samples_in_slopes": len(steady),
        "rss_kib_per_hour": slope_per_hour([(s.at, s.rss_kib) for s in steady]),
        "fds_per_hour": slope_per_hour([(s.at, s.fds) for s in steady]),
        "threads_per_hour": slope_per_hour([(s.at, s.threads) for s in steady]),
        "os_threads_per_hour": slope_per_hour([(s.at, s.os_threads) for s in steady]),
        "py_blocks_per_hour": slope_per_hour([(s.at, s.py_blocks) for s in steady]),
        "heap_used_kib_per_hour": _optional_slope([(s.at, s.heap_used_kib) for s in steady]),
        "heap_free_kib_per_hour": _optional_slope([(s.at, s.heap_free_kib) for s in steady]),
        "first_sample": None if first is None else dataclasses.asdict(first),
        "last_sample": None if last is None else dataclasses.asdict(last),
        "metrics": outcome.metrics,
    }


def failures(summary: dict[str, Any]) -> list[str]:
    """Why the run fails (empty: it passed)."""
    problems = []
    if summary["lost"]:
        problems.append(f"lost {summary['lost']}: {summary['lost_numbers'][:20]}")
    if summary["faults_unrecovered"]:
        problems.append(
            f"{summary['faults_unrecovered']} faults not recovered within {RECOVERY_BOUND:g} s"
        )
    if summary["faults_with_errors"]:
        problems.append(f"{summary['faults_with_errors']} faults could not be injected or healed")
    if not summary["drained"]:
        problems.append(f"the outbox did not drain within {DRAIN_BOUND:g} s")
    if summary["publisher_error"]:
        problems.append(f"publishing stopped: {summary['publisher_error']}")
    if summary["metrics"].get("internal_faults"):
        problems.append(f"internal faults: {summary['metrics']['internal_faults']}")
    return problems


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_header(info: dict[str, Any], settings: Settings) -> str:
    return "\n".join(
        [
            f"soak benchmark, {info['date']}",
            f"machine: {info['platform']}, {info['cpu']}, {info['cpu_count']} CPUs, "
            f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the start",
            f"python {info['python']}, device_sdk {info['device_sdk']} "
            f"({info['device_sdk_source']}), paho-mqtt {info['paho_mqtt']}, {info['mosquitto']}",
            f"run: {settings.minutes:g} min, one DeviceClient (durable SQLite outbox, NORMAL; "
            f"fast test policies, keepalive {KEEPALIVE:g} s, concierge polled every 1 s), "
            f"QoS 1 at {settings.rate:g} msg/s; hubs primary+secondary behind fault proxies",
            f"faults: one every {settings.fault_interval:g} s on the device's hub, rounds of "
            f"{', '.join(KINDS)} shuffled (seed {settings.seed}); healed {HEAL_AFTER:g} s after "
            f"recovery; samples every {settings.sample_interval:g} s, slopes after "
            f"{settings.warmup:g} s",
        ]
    )


def format_report(summary: dict[str, Any]) -> str:
    header = (
        f"{'fault':10}  {'injected':>8}  {'recovered':>9}  {'median ms':>9}  "
        f"{'p95 ms':>8}  {'max ms':>8}"
    )
    lines = ["recovery: fault -> first PUBACK on a link opened after it", header, "-" * len(header)]
    for kind, row in summary["by_kind"].items():
        lines.append(
            f"{kind:10}  {row['injected']:>8}  {row['recovered']:>9}  "
            f"{_num(row['recovery_median_ms']):>9}  {_num(row['recovery_p95_ms']):>8}  "
            f"{_num(row['recovery_max_ms']):>8}"
        )
    first, last = summary["first_sample"] or {}, summary["last_sample"] or {}
    metrics = summary["metrics"]
    lines += [
        "",
        f"slopes over {summary['samples_in_slopes']} of {summary['samples']} samples "
        "(least squares, after the warm-up):",
        f"  RSS {_num(summary['rss_kib_per_hour'])} KiB/hour "
        f"({first.get('rss_kib', '-')} -> {last.get('rss_kib', '-')} KiB)",
        f"  open fds {_num(summary['fds_per_hour'], 2)}/hour "
        f"({first.get('fds', '-')} -> {last.get('fds', '-')})",
        f"  threads {_num(summary['threads_per_hour'], 2)}/hour (threading), "
        f"{_num(summary['os_threads_per_hour'], 2)}/hour (/proc) "
        f"({first.get('threads', '-')} -> {last.get('threads', '-')}, "
        f"{first.get('os_threads', '-')} -> {last.get('os_threads', '-')})",
        f"  Python objects {_num(summary['py_blocks_per_hour'], 0)} blocks/hour "
        f"({first.get('py_blocks', '-')} -> {last.get('py_blocks', '-')})",
        f"  malloc in use {_num(summary['heap_used_kib_per_hour'])} KiB/hour "
        f"({first.get('heap_used_kib', '-')} -> {last.get('heap_used_kib', '-')} KiB), "
        f"held free {_num(summary['heap_free_kib_per_hour'])} KiB/hour "
        f"({first.get('heap_free_kib', '-')} -> {last.get('heap_free_kib', '-')} KiB)",
        "",
        f"messages: published {summary['published']}, lost {summary['lost']}, "
        f"duplicates {summary['duplicates']}, drained {summary['drained']}",
        f"device counters: connects {metrics.get('connects')}, disconnects "
        f"{metrics.get('disconnects')}, failovers {metrics.get('failovers')}, failbacks "
        f"{metrics.get('failbacks')}, concierge updates {metrics.get('concierge_updates')}, "
        f"internal faults {metrics.get('internal_faults')}",
    ]
    problems = failures(summary)
    lines.append(
        "FAIL: " + "; ".join(problems)
        if problems
        else f"PASS: 0 lost, {summary['faults']} faults all recovered"
    )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--minutes",
        type=float,
        default=MINUTES,
        help=f"how long to run (default {MINUTES:g}; 10 for a quick look)",
    )
    parser.add_argument("--rate", type=float, default=RATE, help="QoS 1 messages per second")
    parser.add_argument("--seed", type=int, default=1, help="the order of the faults")
    parser.add_argument(
        "--fault-interval", type=float, default=FAULT_INTERVAL, help="seconds between faults"
    )
    parser.add_argument(
        "--sample-interval",
        type=float,
        default=SAMPLE_INTERVAL,
        help="seconds between samples of memory, fds and threads",
    )
    parser.add_argument(
        "--warmup", type=float, default=WARMUP, help="seconds of samples left out of the slopes"
    )
    report.add_json_option(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= 24 * 60:
        parser.error("--minutes must be above 0 and at most 1440")
    if not 1 <= args.rate <= 1000:
        parser.error("--rate must be between 1 and 1000")
    if min(args.fault_interval, args.sample_interval) < 1:
        parser.error("--fault-interval and --sample-interval must be at least 1 s")
    settings = Settings(
        minutes=args.minutes,
        rate=args.rate,
        seed=args.seed,
        fault_interval=args.fault_interval,
        sample_interval=args.sample_interval,
        warmup=args.warmup,
    )
    info = report.machine_info()
    if not report.json_only(args.json):
        print(format_header(info, settings), end="\n\n", flush=True)
    outcome = run_soak(settings)
    summary = summarise(settings, outcome)

    def document() -> dict[str, Any]:
        return {
            "machine": info,
            "command": " ".join(
                ["python", "benchmarks/soak.py", *(sys.argv[1:] if argv is None else argv)]
            ),
            "settings": dataclasses.asdict(settings),
            "summary": summary,
            "failures": failures(summary),
            "faults": [dataclasses.asdict(r) for r in outcome.faults],
            "samples": [dataclasses.asdict(s) for s in outcome.samples],
        }

    report.emit(lambda: format_report(summary), document, args.json)
    return 1 if failures(summary) else 0


if __name__ == "__main__":
    sys.exit(main())

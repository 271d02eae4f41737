"""Bad links: false link drops and failovers, and blackhole detection, device_sdk against raw paho.

    python benchmarks/bad_link.py [--duration S] [--links a,b] [--trials N] [--json [PATH]]
    python benchmarks/bad_link.py --quick       # seconds long, for tests

One testbed (two mosquitto hubs, ``primary`` and ``secondary``, and its DNS
server) on loopback. For every link profile of
:mod:`device_sdk.testbed.link_shaper` and every implementation, a device
reaches each hub through its own shaping :class:`FaultProxy`, so both hubs sit
behind the same kind of bad link. It publishes numbered QoS 1 messages at a low
rate for ``--duration`` seconds while nothing is broken, so **every drop in
that time is false** (the hub was alive), and every failover is a false one.
Then both of its proxies are blackholed (no byte either way, no FIN, no RST)
and the time until the device sees its link end is the **detection** time. The
proxies are restored, the device drains, and **lost** counts the numbers no
collector (a subscriber on each broker, not behind the link) ever saw.

The implementations:

* ``sdk-profile``: device_sdk with the firmware profile a user on such a link
  picks (``cellular-low-data``; ``--sdk-profile`` names another);
* ``sdk-defaults``: device_sdk with the library's default policies;
* ``raw-paho``: paho-mqtt 2.x with its own keepalive (60 s, its default) and its
  built-in reconnect, one hub (the primary); it cannot fail over.

A device_sdk run's detection bound is what its profile states: one publish
period (a PUBACK is owed by then) plus the liveness deadline ceiling. raw
paho's is two keepalives: it pings after one keepalive without a byte from
the hub and gives up at a later keepalive check (one or two keepalives in
all). All runs go in parallel (their own threads, topics and proxies), so the
whole benchmark takes about duration + the longest detection bound + draining.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from device_sdk import ClientConfig, DeviceClient, DeviceSDKError, HubEndpoint, events
from device_sdk.profiles import load_profile
from device_sdk.testbed import Collector, FaultProxy, Testbed
from device_sdk.testbed.collector import merge
from device_sdk.testbed.link_shaper import LINK_PROFILES, LinkProfile
from device_sdk.testbed.proxy import ProxySpec

try:  # the benchmarks' shared machine description and --json handling
    from benchmarks import report
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    import report  # type: ignore[import-not-found,no-redef]

SDK_PROFILE = "sdk-profile"
SDK_DEFAULTS = "sdk-defaults"
PAHO = "raw-paho"
IMPLEMENTATIONS = (SDK_PROFILE, SDK_DEFAULTS, PAHO)
PATHOLOGICAL = "pathological"  # the one link profile the goal exempts

RATE = 2.0  # QoS 1 messages per second: a telemetry device, not a firehose
PAHO_KEEPALIVE = 60  # paho's default
DEFAULT_DURATION = 120.0
QUICK_DURATION = 3.0
QUICK_DETECT_WAIT = 6.0  # --quick: how long any run waits for its detection
CONNECT_TIMEOUT = 60.0  # a first CONNECT over a 2G-like link takes seconds
DRAIN_TIMEOUT = 90.0
QUICK_DRAIN_TIMEOUT = 20.0
PROXY_HOST = "127.0.0.1"


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass(slots=True, kw_only=True)
class Run:
    """What one implementation measured on one link profile in one trial."""

    link: str
    implementation: str
    trial: int
    duration_s: float = 0.0  # publishing with nothing broken
    false_drops: int = 0
    false_failovers: int = 0
    detection_s: float | None = None  # blackhole -> the device saw its link end
    detection_bound_s: float = 0.0
    published: int = 0
    lost: int = 0
    drained: bool = False
    error: str | None = None
    drops: list[str] = field(default_factory=list)  # (time from start, reason) of false drops

    @property
    def detected_in_bound(self) -> bool:
        return self.detection_s is not None and self.detection_s <= self.detection_bound_s


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    duration: float
    detect_wait: float | None  # None: each run waits for its own bound
    drain_timeout: float
    sdk_profile: str
    seed: int


# -- the clock of one run: start, the blackhole, and what the device said ----------------------


class _Marks:
    """Drops, failovers and the blackhole instant of one run, on time.monotonic()."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.blackholed_at: float | None = None
        self.detected = threading.Event()
        self.detected_at: float | None = None
        self.drops: list[tuple[float, str]] = []
        self.failovers: list[tuple[float, str]] = []

    def blackhole(self) -> None:
        with self._lock:
            self.blackholed_at = time.monotonic()

    def dropped(self, at: float, reason: str) -> None:
        with self._lock:
            if self.blackholed_at is None:
                self.drops.append((at, reason))
            elif self.detected_at is None:
                self.detected_at = at
                self.detected.set()

    def failed_over(self, at: float, reason: str) -> None:
        with self._lock:
            if self.blackholed_at is None:
                self.failovers.append((at, reason))


class _Publisher(threading.Thread):
    """Calls ``send(seq)`` at RATE until stopped."""

    def __init__(self, send: Callable[[int], None]) -> None:
        super().__init__(name="bad-link-publisher", daemon=True)
        self._send = send
        self._stop_flag = threading.Event()
        self.count = 0
        self.error: str | None = None

    def run(self) -> None:
        next_at = time.monotonic()
        while not self._stop_flag.wait(max(0.0, next_at - time.monotonic())):
            try:
                self._send(self.count)
            except DeviceSDKError as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                return
            self.count += 1
            next_at += 1.0 / RATE

    def stop(self) -> None:
        self._stop_flag.set()
        self.join(5.0)


# -- the devices ------------------------------------------------------------------------------


class _SdkDevice:
    def __init__(self, config: ClientConfig, marks: _Marks) -> None:
        self._marks = marks
        self.client = DeviceClient(config, on_event=self._on_event)
        self.detection_bound = 1.0 / RATE + config.liveness.deadline_ceiling

    def _on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Disconnected):
            self._marks.dropped(event.at, event.describe())
        elif isinstance(event, events.FailedOver):
            self._marks.failed_over(event.at, event.describe())

    def connect(self) -> None:
        self.client.connect(CONNECT_TIMEOUT)

    def publish(self, topic: str, seq: int) -> None:
        self.client.publish(topic, _payload(seq))

    def close(self) -> None:
        self.client.close(5.0)


class _PahoDevice:
    """Raw paho-mqtt as an application would use it: loop_start(), built-in reconnect."""

    def __init__(self, client_id: str, host: str, port: int, marks: _Marks) -> None:
        self._marks = marks
        self._host, self._port = host, port
        self._connected = threading.Event()
        self.detection_bound = 2.0 * PAHO_KEEPALIVE + 1.0
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv311,
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=120)  # paho's defaults
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect

    def connect(self) -> None:
        self.client.connect(self._host, self._port, keepalive=PAHO_KEEPALIVE)
        self.client.loop_start()
        if not self._connected.wait(CONNECT_TIMEOUT):
            raise DeviceSDKError(f"raw paho did not connect within {CONNECT_TIMEOUT:g} s")

    def publish(self, topic: str, seq: int) -> None:
        info = self.client.publish(topic, _payload(seq), qos=1)
        # NO_CONN still queues a QoS 1 message: paho sends it after the reconnect.
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise DeviceSDKError(f"paho refused message {seq}: {paho.error_string(info.rc)}")

    def close(self) -> None:
        """disconnect(), then loop_stop(), which joins without a bound: join it bounded."""
        self.client.disconnect()
        stopper = threading.Thread(target=self.client.loop_stop, daemon=True)
        stopper.start()
        stopper.join(5.0)

    def _on_connect(self, _c: object, _u: object, _f: object, rc: Any, _p: object) -> None:
        if not rc.is_failure:
            self._connected.set()

    def _on_disconnect(self, _c: object, _u: object, _f: object, rc: Any, _p: object) -> None:
        self._marks.dropped(time.monotonic(), f"paho on_disconnect: {rc}")


def _payload(seq: int) -> str:
    return f"{seq}:{time.time():.3f}"


# -- one run ----------------------------------------------------------------------------------


def _proxies(bed: Testbed, link: LinkProfile, seed: int) -> dict[str, FaultProxy]:
    proxies = {}
    for index, hub in enumerate(bed.hubs):
        spec = ProxySpec(
            target_host=hub.address,
            target_port=hub.broker.port,
            link=link,
            seed=seed * 10 + index,
        )
        proxies[hub.name] = FaultProxy(spec)
        proxies[hub.name].start()
    return proxies


def _sdk_config(
    bed: Testbed, implementation: str, client_id: str, proxies: dict[str, FaultProxy], profile: str
) -> ClientConfig:
    hubs = tuple(
        HubEndpoint(name=name, fqdn=bed.hub(name).fqdn, port=proxy.port, tls=None)
        for name, proxy in proxies.items()
    )
    if implementation == SDK_DEFAULTS:
        return ClientConfig(client_id=client_id, hubs=hubs, dns=bed.dns_settings())
    loaded = load_profile(profile, env={})
    return loaded.client_config(client_id=client_id, hubs=hubs, dns=bed.dns_settings())


def run_one(
    bed: Testbed, link: LinkProfile, implementation: str, trial: int, settings: Settings
) -> Run:
    run = Run(link=link.name, implementation=implementation, trial=trial)
    name = f"{link.name}-{implementation}-{trial}"
    topic = f"bench/bad-link/{name}"
    # Collectors of their own: the testbed's share one client id per hub, and runs in
    # parallel would take each other's sessions over.
    collectors = [
        Collector(hub.broker.host, hub.broker.port, topic, name=f"collector-{name}").start()
        for hub in bed.hubs
    ]
    proxies = _proxies(
        bed, link, settings.seed + trial * 1000 + IMPLEMENTATIONS.index(implementation)
    )
    marks = _Marks()
    device: _SdkDevice | _PahoDevice
    if implementation == PAHO:
        device = _PahoDevice(name, PROXY_HOST, proxies["primary"].port, marks)
    else:
        config = _sdk_config(bed, implementation, name, proxies, settings.sdk_profile)
        device = _SdkDevice(config, marks)
    run.detection_bound_s = device.detection_bound
    try:
        _drive(run, device, proxies, marks, topic, collectors, settings)
    except DeviceSDKError as exc:
        run.error = f"{type(exc).__name__}: {exc}"
    finally:
        device.close()
        for proxy in proxies.values():
            proxy.stop()
        for collector in collectors:
            collector.stop()
    return run


def _drive(  # noqa: PLR0917
    run: Run,
    device: _SdkDevice | _PahoDevice,
    proxies: dict[str, FaultProxy],
    marks: _Marks,
    topic: str,
    collectors: list[Collector],
    settings: Settings,
) -> None:
    device.connect()
    publisher = _Publisher(lambda seq: device.publish(topic, seq))
    started = time.monotonic()
    publisher.start()
    time.sleep(settings.duration)
    for proxy in proxies.values():
        proxy.blackhole()
    marks.blackhole()
    run.duration_s = time.monotonic() - started
    wait = run.detection_bound_s + 2.0
    marks.detected.wait(wait if settings.detect_wait is None else settings.detect_wait)
    publisher.stop()
    for proxy in proxies.values():
        proxy.restore()
    run.published = publisher.count
    run.error = publisher.error
    expected = set(range(publisher.count))
    run.drained = _wait_seen(collectors, expected, settings.drain_timeout)
    run.lost = len(expected - set(merge(*collectors)))
    assert marks.blackholed_at is not None
    if marks.detected_at is not None:
        run.detection_s = marks.detected_at - marks.blackholed_at
    run.false_drops = len(marks.drops)
    run.false_failovers = len(marks.failovers)
    run.drops = [f"{at - started:.1f} s: {reason}" for at, reason in marks.drops + marks.failovers]


def _wait_seen(collectors: Sequence[Collector], expected: set[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.1) + 1):
        if expected.issubset(merge(*collectors)):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return False


def run_all(links: Sequence[LinkProfile], trials: int, settings: Settings) -> list[Run]:
    """Every (link, implementation) run of a trial in parallel; trials one after another."""
    results: list[Run] = []
    with Testbed(tls=False) as bed:
        assert bed.dns is not None
        for hub in bed.hubs:  # each device dials its own proxy ports on this address
            bed.dns.set_address(hub.fqdn, [PROXY_HOST])
        for trial in range(1, trials + 1):
            batch = _run_trial(bed, links, trial, settings)
            for run in batch:
                _progress(_run_line(run))
            results += batch
    return results


def _run_trial(
    bed: Testbed, links: Sequence[LinkProfile], trial: int, settings: Settings
) -> list[Run]:
    batch: list[Run] = []

    def one(link: LinkProfile, implementation: str) -> None:
        batch.append(run_one(bed, link, implementation, trial, settings))

    threads = [
        threading.Thread(
            target=one, args=(link, impl), name=f"bad-link-{link.name}-{impl}", daemon=True
        )
        for link in links
        for impl in IMPLEMENTATIONS
    ]
    for thread in threads:
        thread.start()
    for thread in threads:  # each run ends by itself: every wait in it is bounded
        thread.join()
    return sorted(batch, key=_order)


def _order(run: Run) -> tuple[int, int, int]:
    names = list(LINK_PROFILES)
    return names.index(run.link), IMPLEMENTATIONS.index(run.implementation), run.trial


def _run_line(run: Run) -> str:
    detect = "none" if run.detection_s is None else f"{run.detection_s:.2f} s"
    error = "" if run.error is None else f", error: {run.error}"
    return (
        f"[{run.link}] {run.implementation} #{run.trial}: {run.false_drops} false drops, "
        f"{run.false_failovers} false failovers in {run.duration_s:.0f} s, detection {detect} "
        f"(bound {run.detection_bound_s:g} s), lost {run.lost}/{run.published}{error}"
    )


# -- summary ----------------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class Summary:
    """One implementation on one link profile, over every trial."""

    link: str
    implementation: str
    trials: int
    hours: float
    false_drops: int
    false_failovers: int
    false_drops_per_hour: float
    false_failovers_per_hour: float
    detection_median_s: float | None
    detection_max_s: float | None
    detected: int
    detection_bound_s: float
    lost: int
    published: int


def summarise(runs: Sequence[Run]) -> Summary:
    first = runs[0]
    hours = sum(r.duration_s for r in runs) / 3600
    detections = [r.detection_s for r in runs if r.detection_s is not None]
    drops = sum(r.false_drops for r in runs)
    failovers = sum(r.false_failovers for r in runs)
    return Summary(
        link=first.link,
        implementation=first.implementation,
        trials=len(runs),
        hours=hours,
        false_drops=drops,
        false_failovers=failovers,
        false_drops_per_hour=drops / hours if hours else 0.0,
        false_failovers_per_hour=failovers / hours if hours else 0.0,
        detection_median_s=statistics.median(detections) if detections else None,
        detection_max_s=max(detections) if detections else None,
        detected=sum(1 for r in runs if r.detected_in_bound),
        detection_bound_s=first.detection_bound_s,
        lost=sum(r.lost for r in runs),
        published=sum(r.published for r in runs),
    )


def check_targets(summaries: Sequence[Summary]) -> list[tuple[str, bool]]:
    """The DESIGN.md goal, for device_sdk on every link but the pathological one."""
    checks = []
    for s in summaries:
        if s.implementation == PAHO or s.link == PATHOLOGICAL:
            continue
        who = f"{s.link} / {s.implementation}"
        checks.append((f"{who}: 0 false failovers ({s.false_failovers})", s.false_failovers == 0))
        checks.append(
            (
                f"{who}: blackhole detected within {s.detection_bound_s:g} s in every trial "
                f"({s.detected}/{s.trials}, max {_seconds(s.detection_max_s)})",
                s.detected == s.trials,
            )
        )
        checks.append((f"{who}: 0 lost ({s.lost})", s.lost == 0))
    return checks


def _seconds(value: float | None) -> str:
    return "none" if value is None else f"{value:.2f} s"


_COLUMNS = (
    ("impl", 12),
    ("minutes", 7),
    ("false drops", 11),
    ("/h", 6),
    ("false failovers", 15),
    ("/h", 6),
    ("detect med", 10),
    ("detect max", 10),
    ("bound", 6),
    ("lost", 9),
)


def _row(s: Summary) -> str:
    bound_note = "" if s.detected == s.trials else "!"
    failovers = "n/a" if s.implementation == PAHO else str(s.false_failovers)
    failovers_h = "n/a" if s.implementation == PAHO else f"{s.false_failovers_per_hour:.0f}"
    cells = (
        s.implementation,
        f"{s.hours * 60:.1f}",
        str(s.false_drops),
        f"{s.false_drops_per_hour:.0f}",
        failovers,
        failovers_h,
        _seconds(s.detection_median_s) + bound_note,
        _seconds(s.detection_max_s),
        f"{s.detection_bound_s:g}",
        f"{s.lost}/{s.published}",
    )
    return "  ".join(c.ljust(w) for c, (_h, w) in zip(cells, _COLUMNS, strict=True)).rstrip()


def format_link(link: LinkProfile, rows: Sequence[Summary]) -> str:
    header = "  ".join(name.ljust(width) for name, width in _COLUMNS).rstrip()
    return "\n".join([f"== {link.describe()}", header, "-" * len(header), *map(_row, rows)])


def format_machine(info: dict[str, Any], settings: Settings, trials: int) -> str:
    return "\n".join(
        [
            f"bad-link benchmark, {info['date']}",
            f"machine: {info['platform']}, {info['cpu']}, {info['cpu_count']} CPUs",
            f"python {info['python']}, device_sdk {info['device_sdk']} "
            f"({info['device_sdk_source']}), paho-mqtt {info['paho_mqtt']}, {info['mosquitto']}",
            f"load: QoS 1 at {RATE:g} msg/s for {settings.duration:g} s per run, then both hubs "
            f"blackholed; {trials} trial(s); every run in parallel on one testbed; "
            f"seed {settings.seed}",
            f"{SDK_PROFILE}: firmware profile {settings.sdk_profile}; {SDK_DEFAULTS}: library "
            f"defaults; both with hubs primary+secondary, each behind its own shaped link",
            f"{PAHO}: paho-mqtt built-in reconnect (1-120 s), keepalive {PAHO_KEEPALIVE} s, "
            "one hub (primary) behind a shaped link",
        ]
    )


def _text_report(
    links: Sequence[LinkProfile], summaries: Sequence[Summary], checks: list[tuple[str, bool]]
) -> str:
    parts = [format_link(link, [s for s in summaries if s.link == link.name]) for link in links]
    parts.append(
        "false = while the hub was alive (nothing is broken before the blackhole); detect = "
        "blackhole -> the device saw its link end; '!' = not detected within the bound in "
        "every trial; lost = published numbers no collector saw after restore and drain "
        "(raw paho keeps unsent ones in memory)"
    )
    parts.append(
        "device_sdk goal (DESIGN.md, every link but pathological):\n"
        + "\n".join(f"  [{'met' if ok else 'MISSED'}] {text}" for text, ok in checks)
    )
    return "\n\n".join(parts)


# -- main -------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="False drops, false failovers and blackhole detection on shaped bad links."
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help=f"seconds of healthy publishing per run (default {DEFAULT_DURATION:g})",
    )
    parser.add_argument(
        "--links", default="all", help=f"comma-separated, of: {', '.join(LINK_PROFILES)}"
    )
    parser.add_argument("--trials", type=int, default=1, help="trials per run (default 1)")
    parser.add_argument("--sdk-profile", default="cellular-low-data", help="firmware profile")
    parser.add_argument("--seed", type=int, default=14, help="link shaping seed")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_DURATION:g} s runs, detection awaited at most {QUICK_DETECT_WAIT:g} s",
    )
    report.add_json_option(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.getLogger("device_sdk").addHandler(logging.NullHandler())
    names = list(LINK_PROFILES) if args.links == "all" else args.links.split(",")
    unknown = [n for n in names if n not in LINK_PROFILES]
    if unknown:
        parser.error(f"unknown link {unknown[0]!r}; known: {', '.join(LINK_PROFILES)}")
    if not 1 <= args.trials <= 20:
        parser.error("--trials must be between 1 and 20")
    duration = args.duration or (QUICK_DURATION if args.quick else DEFAULT_DURATION)
    settings = Settings(
        duration=duration,
        detect_wait=QUICK_DETECT_WAIT if args.quick else None,
        drain_timeout=QUICK_DRAIN_TIMEOUT if args.quick else DRAIN_TIMEOUT,
        sdk_profile=args.sdk_profile,
        seed=args.seed,
    )
    links = [LINK_PROFILES[n] for n in names]
    info = report.machine_info()
    if not report.json_only(args.json):
        print(format_machine(info, settings, args.trials), end="\n\n", flush=True)
    runs = run_all(links, args.trials, settings)
    summaries = [
        summarise([r for r in runs if r.link == link.name and r.implementation == impl])
        for link in links
        for impl in IMPLEMENTATIONS
    ]
    checks = check_targets(summaries)
    report.emit(
        lambda: _text_report(links, summaries, checks),
        lambda: _document(info, args, settings, links, runs, summaries, checks),
        args.json,
    )
    return 0 if all(ok for _t, ok in checks) else 1


def _document(  # noqa: PLR0917
    info: dict[str, Any],
    args: argparse.Namespace,
    settings: Settings,
    links: Sequence[LinkProfile],
    runs: Sequence[Run],
    summaries: Sequence[Summary],
    checks: list[tuple[str, bool]],
) -> dict[str, Any]:
    return {
        "machine": info,
        "command": " ".join(["python", "benchmarks/bad_link.py", *sys.argv[1:]]),
        "settings": {
            **dataclasses.asdict(settings),
            "trials": args.trials,
            "rate_msg_per_s": RATE,
            "paho_keepalive_s": PAHO_KEEPALIVE,
        },
        "links": [dataclasses.asdict(link) for link in links],
        "summaries": [dataclasses.asdict(s) for s in summaries],
        "targets": [{"target": text, "met": ok} for text, ok in checks],
        "runs": [dataclasses.asdict(r) for r in runs],
    }


if __name__ == "__main__":
    sys.exit(main())

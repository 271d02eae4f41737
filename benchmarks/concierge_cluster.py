"""The concierge cluster on this machine: requests per second, switch propagation, fleet move.

    python benchmarks/concierge_cluster.py [--runs N] [--seconds S] [--threads T]
        [--switches N] [--fleet N] [--period P] [--fleet-switches N]
        [--testbeds all|cluster] [--json [PATH]]

Three testbeds, one after the other, each with its hubs (mosquitto) and the
testbed's DNS server; the etcd ones also run a real 3-member etcd cluster
(``--testbeds cluster``: only the last one):

* ``file, 1 replica``: ``Testbed(concierge=True)``, the state in a JSON file;
* ``etcd, 1 replica``: ``Testbed(concierge_replicas=1, concierge_store="etcd")``;
* ``etcd, 3 replicas``: ``Testbed(concierge_replicas=3, concierge_store="etcd")``.

Every measurement runs in a separate client process (this file with
``--client``), so the load generator never competes with the replicas for the
benchmark process's GIL. It still competes for the machine's cores: every
replica, etcd member, broker and client shares them, all on loopback.

1. **Requests per second** of ``GET /v1/endpoint`` (a freshly signed envelope
   per request): ``--threads`` client threads, each opening a new connection per
   request (``http.client``, ``Connection: close``, no keep-alive), thread *i*
   on replica *i* mod the replica count, for ``--seconds``; ``--runs`` runs per
   testbed, the median reported.
2. **Propagation** (3 replicas): ``--switches`` switches through replica
   *k* mod 3, alternating the hubs. One thread per replica polls that replica's
   ``/v1/endpoint`` back to back and verifies each envelope; a replica has the
   switch at the end of the first response that names the new hub with a
   higher sequence. Time zero is just before the POST. Any replica serving a
   lower sequence than it served before, or the new sequence with the old hub,
   is an anomaly.
3. **Fleet move** (3 replicas): ``--fleet`` simulated devices, one thread
   each, poll a random replica every ``--period`` s spread uniformly by +-50 %
   (first poll at a random point in the first period). Each poll is the
   device's own fetch (``ConciergeFetcher``) and verification (``verify``
   against the device's last accepted sequence), as ``ConciergeSource.ask`` does.
   Once every device is on the current hub and after a random wait within a
   period, a switch goes through a random replica; the time until every device
   has verified a document naming the new hub is measured, ``--fleet-switches``
   times. Rollbacks (``RollbackRejected``) and failed polls are counted.

The exit status is 1 when a client process fails, a replica serves a lower
sequence, a switch never reaches a replica or a device within its bound, or a
device sees a rollback.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import random
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

try:  # the benchmarks' shared machine description and --json handling
    from benchmarks import report
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    import report  # type: ignore[import-not-found,no-redef]

HUBS = ("primary", "secondary")
CONFIGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("file, 1 replica", {"concierge": True}),
    ("etcd, 1 replica", {"concierge_replicas": 1, "concierge_store": "etcd"}),
    ("etcd, 3 replicas", {"concierge_replicas": 3, "concierge_store": "etcd"}),
)
REQUEST_TIMEOUT = 5.0  # seconds per request, any measurement
PROPAGATION_BOUND = 5.0  # seconds a switch has to reach every replica
FLEET_BOUND = 15.0  # seconds a switch has to reach every device (several periods)
SETTLE_BOUND = 15.0  # seconds for the fleet to agree before a switch
CLIENT_SLACK = 60.0  # added to a client process's own expected duration, then it is killed


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in (0, 1]) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-fraction * len(ordered) // 1))))
    return ordered[rank - 1]


# == the client process: everything that talks to the replicas ===============================


def _get(url: str, path: str) -> tuple[int, bytes]:
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(
        parts.hostname or "", parts.port, timeout=REQUEST_TIMEOUT
    )
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        with connection.getresponse() as response:
            return response.status, response.read()
    finally:
        connection.close()


def _trust(spec: dict[str, Any]) -> Any:
    from device_sdk.concierge.trust import ConciergeTrust

    return ConciergeTrust(keys=spec["keys"], allowed_hubs=tuple(spec["allowed_hubs"]))


# -- 1. requests per second -------------------------------------------------------------------


class _Hammer:
    """One client thread: GET /v1/endpoint on one replica, a new connection each time."""

    def __init__(self, url: str, deadline: float) -> None:
        self.url, self.deadline = url, deadline
        self.ok = self.failed = 0
        self.latencies: list[float] = []

    def run(self) -> None:
        while time.monotonic() < self.deadline:
            began = time.monotonic()
            try:
                status, _body = _get(self.url, "/v1/endpoint")
            except (OSError, http.client.HTTPException):
                status = 0
            if status == 200:
                self.ok += 1
                self.latencies.append(time.monotonic() - began)
            else:
                self.failed += 1


def client_rps(spec: dict[str, Any]) -> dict[str, Any]:
    """``threads`` threads GET /v1/endpoint for ``seconds``; thread i on replica i mod n."""
    urls: list[str] = spec["urls"]
    start = time.monotonic()
    hammers = [
        _Hammer(urls[i % len(urls)], start + spec["seconds"]) for i in range(spec["threads"])
    ]
    _run_threads([h.run for h in hammers], spec["seconds"] + 10)
    elapsed = time.monotonic() - start
    latencies = [x for h in hammers for x in h.latencies]
    ok = sum(h.ok for h in hammers)
    return {
        "ok": ok,
        "failed": sum(h.failed for h in hammers),
        "seconds": elapsed,
        "requests_per_s": ok / elapsed,
        "latency_p50_ms": 1000 * statistics.median(latencies) if latencies else None,
        "latency_p95_ms": 1000 * percentile(latencies, 0.95) if latencies else None,
        "latency_max_ms": 1000 * max(latencies) if latencies else None,
    }


def _run_threads(targets: Sequence[Callable[[], None]], bound: float) -> None:
    threads = [threading.Thread(target=t, daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    end = time.monotonic() + bound
    for thread in threads:
        thread.join(max(0.0, end - time.monotonic()))


# -- 2. propagation to every replica ----------------------------------------------------------


class _ReplicaWatch:
    """What one replica served: the last sequence, and any step backwards."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.last_sequence: int | None = None
        self.anomalies: list[str] = []

    def read(self, trust: Any) -> tuple[int, str] | None:
        from device_sdk.concierge.trust import verify
        from device_sdk.errors import DeviceSDKError

        try:
            status, body = _get(self.url, "/v1/endpoint")
            if status != 200:
                return None
            document = verify(body, trust, now=time.time(), last_sequence=None)
        except (OSError, http.client.HTTPException, DeviceSDKError):
            return None
        if self.last_sequence is not None and document.sequence < self.last_sequence:
            self.anomalies.append(
                f"{self.url} served sequence {document.sequence} after {self.last_sequence}"
            )
        self.last_sequence = max(document.sequence, self.last_sequence or 0)
        return document.sequence, document.active_hub


class _Switch:
    """One switch watched on every replica: when each first served it, and what came before."""

    def __init__(self, watches: Sequence[_ReplicaWatch], hub: str, before: int) -> None:
        self.watches, self.hub, self.before = watches, hub, before
        self.arrived: list[float | None] = [None] * len(watches)
        self.last_old_start: list[float | None] = [None] * len(watches)  # began, old answer
        self.begun = threading.Barrier(len(watches) + 1)

    def watch(self, index: int, trust: Any) -> None:
        replica = self.watches[index]
        self.begun.wait(5.0)
        end = time.monotonic() + PROPAGATION_BOUND
        while time.monotonic() < end:
            started = time.monotonic()
            seen = replica.read(trust)
            if seen is None:
                continue
            sequence, active = seen
            if sequence > self.before and active != self.hub:
                replica.anomalies.append(
                    f"{replica.url} served sequence {sequence} with hub {active}, not {self.hub}"
                )
            if sequence > self.before and active == self.hub:
                self.arrived[index] = time.monotonic()
                return
            self.last_old_start[index] = started


def client_propagation(spec: dict[str, Any]) -> dict[str, Any]:
    from device_sdk.concierge.cli import post_active

    urls: list[str] = spec["urls"]
    trust = _trust(spec)
    watches = [_ReplicaWatch(url) for url in urls]
    before = _agreed_sequence(watches, trust)
    switches, anomalies = [], []
    for k in range(spec["switches"]):
        hub, via = HUBS[(k + 1) % 2], k % len(urls)
        switch = _Switch(watches, hub, before)
        threads = [
            threading.Thread(target=switch.watch, args=(i, trust), daemon=True)
            for i in range(len(urls))
        ]
        for thread in threads:
            thread.start()
        switch.begun.wait(5.0)
        t0 = time.monotonic()
        answer = post_active(urls[via], hub, spec["token"], allow_plain_http=True)
        posted = time.monotonic() - t0
        _join(threads, PROPAGATION_BOUND + REQUEST_TIMEOUT + 1)
        old = switch.last_old_start[via]
        if old is not None and old > t0 + posted:
            # Read-your-writes: a request begun after the POST answered got the old state.
            anomalies.append(f"{urls[via]} served the old hub after it answered the switch")
        switches.append(
            {
                "hub": hub,
                "via": via,
                "sequence": answer.get("sequence"),
                "post_s": posted,
                "replica_s": [None if at is None else at - t0 for at in switch.arrived],
            }
        )
        before = int(str(answer.get("sequence", before)))
    anomalies += [a for w in watches for a in w.anomalies]
    return {"switches": switches, "anomalies": anomalies}


def _agreed_sequence(watches: Sequence[_ReplicaWatch], trust: Any) -> int:
    """The highest sequence any replica serves now (the state before the first switch)."""
    seen = [w.read(trust) for w in watches]
    return max((s[0] for s in seen if s is not None), default=0)


# -- 3. a fleet of pollers --------------------------------------------------------------------


class _Device:
    """One simulated device: its last accepted sequence and the hub it believes is active."""

    def __init__(self) -> None:
        self.last_sequence: int | None = None
        self.active: str | None = None
        self.changed_at = 0.0
        self.polls = 0
        self.failed = 0
        self.rollbacks: list[str] = []
        self.lateness: list[float] = []
        self.fetch_seconds: list[float] = []


class _Fleet:
    def __init__(self, spec: dict[str, Any]) -> None:
        from device_sdk.concierge.fetch import ConciergeFetcher

        self.spec = spec
        self.trust = _trust(spec)
        self.fetchers = [
            ConciergeFetcher(f"{url}/v1/endpoint", timeout=2.0, allow_plain_http=True)
            for url in spec["urls"]
        ]
        self.devices = [_Device() for _ in range(spec["fleet"])]
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._poll_forever, args=(d, i), daemon=True)
            for i, d in enumerate(self.devices)
        ]

    def _poll_forever(self, device: _Device, seed: int) -> None:
        period, rng = self.spec["period"], random.Random(seed)
        due = time.monotonic() + rng.uniform(0.0, period)
        for _ in range(100_000):  # far more polls than any run makes
            if self.stop.wait(max(0.0, due - time.monotonic())):
                return
            device.lateness.append(time.monotonic() - due)
            self._poll(device, rng)
            due = time.monotonic() + period * rng.uniform(0.5, 1.5)

    def _poll(self, device: _Device, rng: random.Random) -> None:
        from device_sdk.concierge.trust import verify
        from device_sdk.errors import ConciergeError, RollbackRejected

        device.polls += 1
        began = time.monotonic()
        try:
            raw = rng.choice(self.fetchers).fetch()
            device.fetch_seconds.append(time.monotonic() - began)
            document = verify(raw, self.trust, now=time.time(), last_sequence=device.last_sequence)
        except RollbackRejected as exc:
            device.rollbacks.append(str(exc))
            return
        except ConciergeError:
            device.failed += 1
            return
        device.last_sequence = document.sequence
        if document.active_hub != device.active:
            device.active, device.changed_at = document.active_hub, time.monotonic()

    def all_on(self, hub: str, bound: float) -> bool:
        end = time.monotonic() + bound
        while time.monotonic() < end:
            if all(d.active == hub for d in self.devices):
                return True
            time.sleep(0.01)
        return False


def client_fleet(spec: dict[str, Any]) -> dict[str, Any]:
    from device_sdk.concierge.cli import post_active

    fleet, rng = _Fleet(spec), random.Random(spec.get("seed", 1))
    for thread in fleet.threads:
        thread.start()
    switches: list[dict[str, Any]] = []
    current = spec["initial_hub"]
    try:
        for k in range(spec["switches"]):
            settled = fleet.all_on(current, SETTLE_BOUND)
            time.sleep(rng.uniform(0.0, spec["period"]))
            hub, via = HUBS[(HUBS.index(current) + 1) % 2], rng.randrange(len(spec["urls"]))
            polls_before = sum(d.polls for d in fleet.devices)
            t0 = time.monotonic()
            post_active(spec["urls"][via], hub, spec["token"], allow_plain_http=True)
            moved = fleet.all_on(hub, FLEET_BOUND)
            elapsed = time.monotonic() - t0
            times = [d.changed_at - t0 for d in fleet.devices if d.active == hub]
            switches.append(
                {
                    "index": k,
                    "hub": hub,
                    "via": via,
                    "settled_before": settled,
                    "moved": moved,
                    "all_moved_s": max(times) if moved else None,
                    "p50_s": statistics.median(times) if times else None,
                    "p99_s": percentile(times, 0.99) if times else None,
                    "polls_per_s": (sum(d.polls for d in fleet.devices) - polls_before) / elapsed,
                }
            )
            current = hub
    finally:
        fleet.stop.set()
        _join(fleet.threads, REQUEST_TIMEOUT)
    lateness = [x for d in fleet.devices for x in d.lateness]
    fetches = [x for d in fleet.devices for x in d.fetch_seconds]
    return {
        "switches": switches,
        "polls": sum(d.polls for d in fleet.devices),
        "failed": sum(d.failed for d in fleet.devices),
        "rollbacks": [r for d in fleet.devices for r in d.rollbacks][:20],
        "rollback_count": sum(len(d.rollbacks) for d in fleet.devices),
        "lateness_p50_ms": 1000 * statistics.median(lateness) if lateness else None,
        "lateness_p99_ms": 1000 * percentile(lateness, 0.99) if lateness else None,
        "fetch_p50_ms": 1000 * statistics.median(fetches) if fetches else None,
        "fetch_p99_ms": 1000 * percentile(fetches, 0.99) if fetches else None,
        "fetch_max_ms": 1000 * max(fetches) if fetches else None,
        "fetches_over_1s": sum(1 for x in fetches if x > 1.0),
    }


def _join(threads: Sequence[threading.Thread], bound: float) -> None:
    end = time.monotonic() + bound
    for thread in threads:
        thread.join(max(0.0, end - time.monotonic()))


CLIENT_MODES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "rps": client_rps,
    "propagation": client_propagation,
    "fleet": client_fleet,
}


def client_main(spec_text: str) -> int:
    spec = json.loads(spec_text)
    print(json.dumps(CLIENT_MODES[spec["mode"]](spec)))
    return 0


# == the benchmark process: the testbeds, and the client processes against them ==============


def run_client(spec: dict[str, Any], expected: float) -> dict[str, Any]:
    """One client process; its JSON answer, or ``{"error": ...}``."""
    command = [sys.executable, str(Path(__file__).resolve()), "--client", json.dumps(spec)]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=expected + CLIENT_SLACK, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"the {spec['mode']} client ran past {expected + CLIENT_SLACK:.0f} s"}
    if done.returncode != 0:
        return {
            "error": f"the {spec['mode']} client exited {done.returncode}: {done.stderr[-2000:]}"
        }
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def _endpoints(bed: Any) -> tuple[list[str], dict[str, Any]]:
    """The replica URLs and what a client needs to trust and switch them."""
    settings = bed.concierge_settings()
    cluster = bed.concierge_cluster
    if cluster is not None:
        urls = [cluster.replica_url(i) for i in range(len(cluster.replicas))]
        token = cluster.token_file.read_text()
    else:
        urls, token = [bed.concierge.url], bed.concierge_token_file.read_text()
    keys = {kid: str(key) for kid, key in settings.trust.keys.items()}
    return urls, {"token": token, "keys": keys, "allowed_hubs": list(settings.trust.allowed_hubs)}


def measure_rps(urls: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    runs = []
    for run in range(args.runs):
        spec = {"mode": "rps", "urls": urls, "threads": args.threads, "seconds": args.seconds}
        runs.append(run_client(spec, args.seconds))
        _progress(f"  rps run {run + 1}/{args.runs}: {_short(runs[-1], 'requests_per_s')}")
    return runs


def _short(answer: dict[str, Any], key: str) -> str:
    return answer["error"] if "error" in answer else f"{answer[key]:.0f}"


def run(args: argparse.Namespace) -> dict[str, Any]:
    from device_sdk.testbed import Testbed

    results: dict[str, Any] = {"rps": {}, "propagation": None, "fleet": None}
    configs = CONFIGS if args.testbeds == "all" else CONFIGS[-1:]
    for label, kwargs in configs:
        _progress(f"[{label}] starting the testbed")
        with Testbed(**kwargs) as bed:
            urls, access = _endpoints(bed)
            results["rps"][label] = measure_rps(urls, args)
            if label != CONFIGS[-1][0]:
                continue
            _progress(f"[{label}] propagation: {args.switches} switches")
            spec = {"mode": "propagation", "urls": urls, "switches": args.switches, **access}
            results["propagation"] = run_client(spec, args.switches * (PROPAGATION_BOUND + 2))
            _progress(f"[{label}] fleet: {args.fleet} pollers, {args.fleet_switches} switches")
            assert bed.concierge_cluster is not None
            initial = bed.concierge_cluster.replicas[0].state.active_hub
            spec = {
                "mode": "fleet", "urls": urls, "fleet": args.fleet, "period": args.period,
                "switches": args.fleet_switches, "initial_hub": initial, **access,
            }  # fmt: skip
            expected = args.fleet_switches * (SETTLE_BOUND + FLEET_BOUND + args.period)
            results["fleet"] = run_client(spec, expected)
    return results


# -- summaries --------------------------------------------------------------------------------


def summarise(results: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The medians, and every anomaly that makes the exit status 1."""
    problems: list[str] = []
    rps = {}
    for label, runs in results["rps"].items():
        good = [r for r in runs if "error" not in r]
        problems += [f"{label}: {r['error']}" for r in runs if "error" in r]
        problems += [f"{label}: {r['failed']} failed requests" for r in good if r["failed"]]
        rps[label] = {
            "requests_per_s_median": statistics.median(r["requests_per_s"] for r in good)
            if good else None,
            "runs": [round(r["requests_per_s"]) for r in good],
            "latency_p50_ms_median": statistics.median(r["latency_p50_ms"] for r in good)
            if good else None,
            "latency_p95_ms_median": statistics.median(r["latency_p95_ms"] for r in good)
            if good else None,
            "latency_max_ms": max(r["latency_max_ms"] for r in good) if good else None,
        }  # fmt: skip
    propagation = _summarise_propagation(results["propagation"], problems)
    fleet = _summarise_fleet(results["fleet"], problems)
    return {"rps": rps, "propagation": propagation, "fleet": fleet}, problems


def _spread(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "median": statistics.median(values),
        "p95": percentile(values, 0.95),
        "max": max(values),
        "n": len(values),
    }


def _summarise_propagation(answer: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    if "error" in answer:
        problems.append(f"propagation: {answer['error']}")
        return {}
    problems += answer["anomalies"]
    every, others, via, posts = [], [], [], []
    for switch in answer["switches"]:
        times = switch["replica_s"]
        posts.append(switch["post_s"])
        if any(t is None for t in times):
            problems.append(f"switch to {switch['hub']} via {switch['via']} never reached {times}")
            continue
        every.append(max(times))
        via.append(times[switch["via"]])
        others += [t for i, t in enumerate(times) if i != switch["via"]]
    return {
        "post_returned_s": _spread(posts),
        "every_replica_s": _spread(every),
        "replica_taking_the_post_s": _spread(via),
        "each_other_replica_s": _spread(others),
    }


def _summarise_fleet(answer: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    if "error" in answer:
        problems.append(f"fleet: {answer['error']}")
        return {}
    if answer["rollback_count"]:
        problems.append(
            f"fleet: {answer['rollback_count']} rollbacks, e.g. {answer['rollbacks'][:3]}"
        )
    switches = answer["switches"]
    problems += [f"fleet switch {s['index']} never reached every device" for s in switches
                 if not s["moved"]]  # fmt: skip
    moved = [s for s in switches if s["moved"]]
    return {
        "all_moved_s": _spread([s["all_moved_s"] for s in moved]),
        "p50_device_s_median": statistics.median(s["p50_s"] for s in moved) if moved else None,
        "p99_device_s_median": statistics.median(s["p99_s"] for s in moved) if moved else None,
        "polls_per_s_median": statistics.median(s["polls_per_s"] for s in switches)
        if switches else None,
        "polls": answer["polls"],
        "failed_polls": answer["failed"],
        "rollbacks": answer["rollback_count"],
        "poll_lateness_p50_ms": answer["lateness_p50_ms"],
        "poll_lateness_p99_ms": answer["lateness_p99_ms"],
        "fetch_p50_ms": answer["fetch_p50_ms"],
        "fetch_p99_ms": answer["fetch_p99_ms"],
        "fetch_max_ms": answer["fetch_max_ms"],
        "fetches_over_1s": answer["fetches_over_1s"],
    }  # fmt: skip


# -- output -----------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{1000 * value:.1f} ms"


def _spread_text(spread: dict[str, float] | None) -> str:
    if not spread:
        return "-"
    return (
        f"median {_ms(spread['median'])}, p95 {_ms(spread['p95'])}, max {_ms(spread['max'])} "
        f"(n={spread['n']})"
    )


def text_report(summary: dict[str, Any], problems: list[str], args: argparse.Namespace) -> str:
    lines = [
        f"1. GET /v1/endpoint, {args.threads} client threads (one client process), a new "
        f"connection per request, {args.seconds:g} s x {args.runs} runs",
        f"   {'':18} {'req/s median':>12}  {'runs':<20} {'latency p50':>11} {'p95':>9} {'max':>9}",
    ]
    for label, row in summary["rps"].items():
        rate = row["requests_per_s_median"]
        lines.append(
            f"   {label:18} {'-' if rate is None else f'{rate:.0f}':>12}  "
            f"{' '.join(map(str, row['runs'])):<20} "
            f"{_fmt_ms(row['latency_p50_ms_median']):>11} "
            f"{_fmt_ms(row['latency_p95_ms_median']):>9} {_fmt_ms(row['latency_max_ms']):>9}"
        )
    prop = summary["propagation"]
    lines += [
        "",
        f"2. set-active through replica k mod 3 until every replica serves it "
        f"(3 replicas on etcd, {args.switches} switches)",
    ]
    for key, text in (
        ("post_returned_s", "POST answered     "),
        ("replica_taking_the_post_s", "that replica      "),
        ("each_other_replica_s", "each other replica"),
        ("every_replica_s", "every replica     "),
    ):
        lines.append(f"   {text} {_spread_text(prop.get(key))}")
    fleet = summary["fleet"]
    lines += [
        "",
        f"3. {args.fleet} pollers, each every {args.period:g} s +-50 % on a random replica "
        f"(fetch + verify), {args.fleet_switches} switches",
        f"   every device moved  {_spread_text(fleet.get('all_moved_s'))}",
        f"   half / 99 % moved   median {_ms(fleet.get('p50_device_s_median'))} / "
        f"{_ms(fleet.get('p99_device_s_median'))}",
        f"   polls               {fleet.get('polls')} ({_num(fleet.get('polls_per_s_median'))}/s), "
        f"failed {fleet.get('failed_polls')}, rollbacks {fleet.get('rollbacks')}, "
        f"start late p50 {_fmt_ms(fleet.get('poll_lateness_p50_ms'))} "
        f"p99 {_fmt_ms(fleet.get('poll_lateness_p99_ms'))}",
        f"   one fetch           p50 {_fmt_ms(fleet.get('fetch_p50_ms'))}, "
        f"p99 {_fmt_ms(fleet.get('fetch_p99_ms'))}, max {_fmt_ms(fleet.get('fetch_max_ms'))}, "
        f"{fleet.get('fetches_over_1s')} over 1 s",
        "",
        "Everything shares this machine's cores: the replicas (one Python process, one GIL), "
        "the 3 etcd members, the brokers, the DNS server and the client process.",
        "PASS: no anomalies" if not problems else "FAIL:\n" + "\n".join(f"  {p}" for p in problems),
    ]
    return "\n".join(lines)


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _etcd_version() -> str:
    try:
        done = subprocess.run(
            ["etcd", "--version"], capture_output=True, text=True, timeout=5.0, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    first = done.stdout.splitlines()
    return first[0].strip() if first else "unknown"


def format_machine(info: dict[str, Any]) -> str:
    return (
        f"{info['date']}  {info['platform']}  {info['cpu']} x{info['cpu_count']}  "
        f"Python {info['python']}  {info['mosquitto']}  {info['etcd']}  "
        f"device_sdk {info['device_sdk_source']}"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="The concierge cluster on this machine.")
    parser.add_argument("--runs", type=int, default=3, help="runs per testbed (default 3)")
    parser.add_argument("--seconds", type=float, default=5.0, help="per run (default 5)")
    parser.add_argument("--threads", type=int, default=4, help="client threads (default 4)")
    parser.add_argument("--switches", type=int, default=20, help="propagation (default 20)")
    parser.add_argument("--fleet", type=int, default=200, help="pollers (default 200)")
    parser.add_argument("--period", type=float, default=1.0, help="poll period (default 1 s)")
    parser.add_argument("--fleet-switches", type=int, default=5, help="(default 5)")
    parser.add_argument(
        "--testbeds",
        choices=("all", "cluster"),
        default="all",
        help="all three testbeds (default), or only the 3 replicas on etcd",
    )
    parser.add_argument("--client", help=argparse.SUPPRESS)
    report.add_json_option(parser)
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    bounds = (
        ("--runs", args.runs, 1, 20),
        ("--seconds", args.seconds, 0.2, 120),
        ("--threads", args.threads, 1, 64),
        ("--switches", args.switches, 1, 200),
        ("--fleet", args.fleet, 1, 2000),
        ("--period", args.period, 0.1, 10),
        ("--fleet-switches", args.fleet_switches, 1, 50),
    )
    for name, value, low, high in bounds:
        if not low <= value <= high:
            parser.error(f"{name} must be between {low} and {high}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.client is not None:
        return client_main(args.client)
    _check(parser, args)
    # Every switch logs a warning; the benchmark reports the switches itself.
    logging.getLogger("device_sdk").addHandler(logging.NullHandler())
    info = {**report.machine_info(paho=False), "etcd": _etcd_version()}
    if not report.json_only(args.json):
        print(format_machine(info), end="\n\n", flush=True)
    results = run(args)
    summary, problems = summarise(results)
    report.emit(
        lambda: text_report(summary, problems, args),
        lambda: {
            "machine": info,
            "command": " ".join(
                [
                    "python",
                    "benchmarks/concierge_cluster.py",
                    *(sys.argv[1:] if argv is None else argv),
                ]
            ),
            "settings": {k: v for k, v in vars(args).items() if k not in ("json", "client")},
            "summary": summary,
            "problems": problems,
            "results": results,
        },
        args.json,
    )
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())

"""Kill and restart: SIGKILL a real device process K times, then count what was lost.

    python benchmarks/kill_restart.py [--kills K] [--seed S] [--failover] [--json [PATH]]

One testbed (two mosquitto hubs, ``primary`` and ``secondary``, plain MQTT, and
the testbed's DNS server, all on loopback) and a collector (an independent
plain-paho subscriber) on every hub. The device is the real process
``tests/integration/programs/numbered_device.py``: it publishes a numbered QoS 1
stream at a steady rate to one topic through a durable SQLite outbox
(``synchronous=NORMAL``) and prints ``accepted <n>`` once ``publish()`` returned
for ``n``. Each run is SIGKILLed (by its PID) at a random delay after it started
(seeded, so a run of the benchmark can be repeated), then restarted on the same
outbox file, numbering on after the last number accepted. After K kills, one
last run publishes a few more numbers and drains the outbox cleanly.

* **lost**: numbers whose ``publish()`` returned (an ``accepted`` line) that no
  collector saw once the outbox drained. Must be 0.
* **duplicates**: deliveries of a number beyond its first, over all collectors.
  Allowed (QoS 1 is at-least-once) but each must carry the same ``message-id``
  user property (MQTT 5) as the first delivery, so a receiver can drop it.
* **time to resume**: process start -> its first ``accepted`` line, for every
  restart (Python start-up, opening the outbox, connecting, the first publish).

``--failover`` also SIGKILLs the primary hub in every second run, at a random
moment while the device is publishing, so the device fails over to the
secondary before it is itself killed; the primary is restarted (and its
collector replaced) before the next run starts.

A number the device may have stored but was killed before printing ``accepted``
for (at most one per kill: the one whose ``publish()`` was under way) is never
reused: the next run starts one number further on. Such numbers are "in doubt":
not counted as accepted, but counted when seen.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import queue
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from device_sdk.testbed import Collector, Testbed
from device_sdk.testbed.collector import merge, wait_until_seen

try:  # the benchmarks' shared machine description and --json handling
    from benchmarks import report
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    import report  # type: ignore[import-not-found,no-redef]

ROOT = Path(__file__).resolve().parents[1]
PROGRAM = ROOT / "tests" / "integration" / "programs" / "numbered_device.py"
TOPIC = "bench/kill-restart"
CLIENT_ID = "kill-restart-device"

RATE = 200.0  # messages per second (default of --rate)
MIN_DELAY, MAX_DELAY = 1.0, 12.0  # SIGKILL this long after the process started (uniform)
RUN_COUNT = 1_000_000  # numbers one killed run may publish: far more than it lives for
DRAIN_COUNT = 20  # numbers the last, clean run publishes before draining
CONNECT_TIMEOUT = 10.0  # the device's own connect() bound
DRAIN_BOUND = 45.0  # the last run: start-up, connect, DRAIN_COUNT publishes, 15 s drain
EXIT_BOUND = 10.0  # waiting for a killed (or finished) process to be reaped
TAIL_BOUND = 2.0  # reading what a killed process printed before it died
SEEN_TIMEOUT = 10.0  # waiting for the collectors to see every accepted number
FAILOVER_AT = (0.3, 0.7)  # primary killed at this fraction of the run's delay (uniform)

DUPLICATES_NOTE = (
    "duplicates are expected: the SQLite outbox deletes acknowledged rows lazily (once 256\n"
    "are pending, or 1 s after the first), so a restart resends what was acknowledged since\n"
    "the last delete, and what was in flight; each copy must keep its message id"
)


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- the device process -----------------------------------------------------------------------


class _Device:
    """One device process, its stdout lines timestamped on a queue; killed by PID if needed."""

    def __init__(self, spec: dict[str, Any], stderr: IO[bytes]) -> None:
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, str(PROGRAM), json.dumps(spec)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        self.lines: queue.Queue[tuple[float, str] | None] = queue.Queue()
        self.eof = False
        self._reader = threading.Thread(target=self._read, name="device-stdout", daemon=True)
        try:
            self._reader.start()
        except BaseException:
            self.kill()
            self.proc.wait(EXIT_BOUND)
            raise

    def _read(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        for line in stdout:
            self.lines.put((time.monotonic(), line.strip()))
        self.lines.put(None)

    def next_line(self, deadline: float) -> tuple[float, str] | None:
        """The next line, or None at the deadline or at end of output."""
        if self.eof:
            return None
        try:
            item = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None
        if item is None:
            self.eof = True
        return item

    def kill(self) -> float:
        """SIGKILL by PID (only while not yet reaped, so the PID is still ours)."""
        at = time.monotonic()
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        return at

    def close(self) -> int | None:
        """Kill if still running, reap (bounded), and stop reading."""
        self.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(EXIT_BOUND)
        if self._reader.ident is not None:
            self._reader.join(EXIT_BOUND)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


# -- one run ----------------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class Run:
    """One life of the device process (times in seconds from its start)."""

    index: int  # 1..K killed runs, K+1 the last (draining) run
    start: int  # the first number it was told to publish
    kill_delay: float | None  # SIGKILL this long after the start (None: the draining run)
    accepted: list[int] = field(default_factory=list)
    connected: float | None = None  # "connected" line (None: "offline" or killed before)
    offline: bool = False
    first_accepted: float | None = None  # time to resume (to start, for run 1)
    last_accepted: float | None = None
    killed_at: float | None = None
    primary_killed_at: float | None = None  # --failover runs only
    drained_depth: int | None = None  # the draining run: outbox depth it reported at the end
    exit_code: int | None = None

    @property
    def rate(self) -> float | None:
        """Numbers accepted per second, first to last accepted line."""
        if self.first_accepted is None or self.last_accepted is None or len(self.accepted) < 2:
            return None
        span = self.last_accepted - self.first_accepted
        return (len(self.accepted) - 1) / span if span > 0 else None

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["rate"] = self.rate
        data.pop("accepted")
        data["accepted_count"] = len(self.accepted)
        data["first_number"] = self.accepted[0] if self.accepted else None
        data["last_number"] = self.accepted[-1] if self.accepted else None
        return data


def _spec(bed: Testbed, outbox: Path, *, start: int, count: int, rate: float) -> dict[str, Any]:
    assert bed.dns is not None
    return {
        "client_id": CLIENT_ID,
        "hubs": [{"name": h.name, "fqdn": h.fqdn, "port": h.broker.port} for h in bed.hubs],
        "dns_host": bed.dns.host,
        "dns_port": bed.dns.port,
        "outbox": str(outbox),
        "topic": TOPIC,
        "start": start,
        "count": count,
        "rate": rate,
        "connect_timeout": CONNECT_TIMEOUT,
    }


def _take(run: Run, device: _Device, item: tuple[float, str]) -> str:
    """Record one line of the device's output; returns its first word."""
    at, line = item
    word, _sep, rest = line.partition(" ")
    since = at - device.started_at
    if word == "accepted":
        run.accepted.append(int(rest))
        if run.first_accepted is None:
            run.first_accepted = since
        run.last_accepted = since
    elif word == "connected":
        run.connected = since
    elif word == "offline":
        run.offline = True
    elif word == "drained":
        run.drained_depth = int(rest)
    return word


def _killed_run(bed: Testbed, run: Run, device: _Device, *, failover_at: float | None) -> bool:
    """Read the device's output until its kill moment, kill it, read the rest.

    With ``failover_at`` (seconds from the start), the primary hub is SIGKILLed
    then, or as soon after as the device has accepted a first number. Returns
    whether the primary was killed.
    """
    assert run.kill_delay is not None
    kill_at = device.started_at + run.kill_delay
    primary_down = False
    # Bounded: one pass per output line (rate x delay) or per timeout, and the deadline.
    while (now := time.monotonic()) < kill_at:
        wake = kill_at
        if failover_at is not None and not primary_down:
            primary_at = device.started_at + failover_at
            if run.accepted and now >= primary_at:
                bed.hub("primary").broker.kill()
                run.primary_killed_at = time.monotonic() - device.started_at
                primary_down = True
                continue
            wake = min(wake, max(primary_at, now + 0.005))
        item = device.next_line(wake)
        if item is not None:
            _take(run, device, item)
        elif device.eof:
            break  # it exited by itself: nothing left to kill (reported as its exit code)
    run.killed_at = device.kill() - device.started_at
    with contextlib.suppress(subprocess.TimeoutExpired):
        device.proc.wait(EXIT_BOUND)
    # Everything it printed before it died is in the pipe: read to the end (bounded).
    tail_deadline = time.monotonic() + TAIL_BOUND
    while (item := device.next_line(tail_deadline)) is not None:
        _take(run, device, item)
    return primary_down


def _draining_run(run: Run, device: _Device) -> None:
    deadline = device.started_at + DRAIN_BOUND
    while (item := device.next_line(deadline)) is not None:
        if _take(run, device, item) == "drained":
            break
    # It closes the client and exits by itself after "drained"; close() kills it otherwise.
    with contextlib.suppress(subprocess.TimeoutExpired):
        device.proc.wait(EXIT_BOUND)


# -- the whole benchmark ----------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class Settings:
    kills: int
    rate: float
    min_delay: float
    max_delay: float
    seed: int
    failover: bool


@dataclass(slots=True, kw_only=True)
class Outcome:
    runs: list[Run]
    accepted: set[int]
    seen: Counter[int]
    ids: dict[int, set[str]]
    all_seen: bool
    primary_kills: int


def run_benchmark(settings: Settings) -> Outcome:
    rng = random.Random(settings.seed)
    runs: list[Run] = []
    primary_kills = 0
    with (
        Testbed(tls=False) as bed,
        tempfile.TemporaryDirectory(prefix="device-sdk-kill-restart-") as directory,
    ):
        collectors = [bed.collector(hub.name, TOPIC) for hub in bed.hubs]
        outbox = Path(directory) / "outbox.sqlite"
        stderr_path = Path(directory) / "device-stderr.log"
        next_start = 0
        with stderr_path.open("ab") as stderr:
            for index in range(1, settings.kills + 2):
                last = index == settings.kills + 1
                delay = None if last else rng.uniform(settings.min_delay, settings.max_delay)
                failover_at = None
                if settings.failover and index % 2 == 0 and delay is not None:
                    failover_at = delay * rng.uniform(*FAILOVER_AT)
                run = Run(index=index, start=next_start, kill_delay=delay)
                count = DRAIN_COUNT if last else RUN_COUNT
                spec = _spec(bed, outbox, start=next_start, count=count, rate=settings.rate)
                device = _Device(spec, stderr)
                try:
                    if last:
                        _draining_run(run, device)
                    elif _killed_run(bed, run, device, failover_at=failover_at):
                        primary_kills += 1
                        collectors.append(_restart_primary(bed, collectors))
                finally:
                    run.exit_code = device.close()
                runs.append(run)
                _progress(_run_line(run, settings.kills))
                # The number after the last accepted one may be stored without its
                # "accepted" line (killed inside publish()): never reuse it.
                highest = run.accepted[-1] if run.accepted else next_start - 1
                next_start = highest + 2
        if runs[-1].drained_depth is None:
            _progress(f"the last run did not drain; device stderr:\n{_tail(stderr_path)}")
        accepted = {n for run in runs for n in run.accepted}
        all_seen = wait_until_seen(collectors, accepted, SEEN_TIMEOUT)
        seen = merge(*collectors)
        ids: dict[int, set[str]] = {}
        for collector in collectors:
            for number, found in collector.message_ids().items():
                ids.setdefault(number, set()).update(found)
    return Outcome(
        runs=runs,
        accepted=accepted,
        seen=seen,
        ids=ids,
        all_seen=all_seen,
        primary_kills=primary_kills,
    )


def _restart_primary(bed: Testbed, collectors: list[Collector]) -> Collector:
    """Bring the killed primary back with a fresh collector, before the next run starts.

    The old collector is stopped first (it keeps what it counted), so it cannot
    reconnect to the new broker and count every later delivery twice.
    """
    primary = bed.hub("primary")
    for collector in collectors:
        if collector.host == primary.address:
            collector.stop()
    primary.broker.restart()
    return bed.collector("primary", TOPIC)


def _tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no stderr)"


def _run_line(run: Run, kills: int) -> str:
    what = "drain run" if run.kill_delay is None else f"run {run.index}/{kills}"
    accepted = len(run.accepted)
    numbers = f" ({run.accepted[0]}..{run.accepted[-1]})" if accepted else ""
    resume = "-" if run.first_accepted is None else f"{run.first_accepted * 1000:.0f} ms"
    end = (
        f"killed at {run.killed_at:.2f} s"
        if run.killed_at is not None
        else f"drained (outbox depth {run.drained_depth}), exit {run.exit_code}"
    )
    failover = (
        ""
        if run.primary_killed_at is None
        else f", primary killed at {run.primary_killed_at:.2f} s"
    )
    return f"{what}: accepted {accepted}{numbers}, first accepted {resume}{failover}, {end}"


# -- summary and report -----------------------------------------------------------------------


def summarise(settings: Settings, outcome: Outcome) -> dict[str, Any]:
    accepted, seen, ids = outcome.accepted, outcome.seen, outcome.ids
    lost = sorted(accepted - set(seen))
    duplicated = sorted(n for n, times in seen.items() if times > 1)
    same_id = [n for n in duplicated if len(ids.get(n, set())) == 1]
    changed = sorted(n for n in duplicated if len(ids.get(n, set())) > 1)
    without_id = sorted(n for n in seen if not ids.get(n))
    in_doubt = set(seen) - accepted
    resumes = [r.first_accepted for r in outcome.runs[1:] if r.first_accepted is not None]
    connects = [r.connected for r in outcome.runs[1:] if r.connected is not None]
    rates = [r.rate for r in outcome.runs[:-1] if r.rate is not None]
    return {
        "kills": sum(1 for r in outcome.runs if r.exit_code == -signal.SIGKILL),
        "exited_by_itself": [r.index for r in outcome.runs[:-1] if r.exit_code != -signal.SIGKILL],
        "primary_kills": outcome.primary_kills,
        "accepted": len(accepted),
        "seen_distinct": len(seen),
        "deliveries": sum(seen.values()),
        "lost": len(lost),
        "lost_numbers": lost[:50],
        "duplicates": sum(seen[n] - 1 for n in duplicated),
        "duplicated_numbers": len(duplicated),
        "duplicated_with_one_message_id": len(same_id),
        "duplicated_with_changed_message_id": changed[:50],
        "seen_without_message_id": len(without_id),
        "in_doubt_seen": len(in_doubt),
        "all_seen": outcome.all_seen,
        "drained": outcome.runs[-1].drained_depth == 0 and outcome.runs[-1].exit_code == 0,
        "drain_depth": outcome.runs[-1].drained_depth,
        "drain_exit_code": outcome.runs[-1].exit_code,
        "restarts": len(outcome.runs) - 1,
        "resumed": len(resumes),
        "resume_median_ms": _median_ms(resumes),
        "resume_max_ms": None if not resumes else max(resumes) * 1000,
        "connect_median_ms": _median_ms(connects),
        "first_start_ms": _ms_or_none(outcome.runs[0].first_accepted),
        "rate_msg_per_s": settings.rate,
        "rate_achieved_median_msg_per_s": statistics.median(rates) if rates else None,
    }


def _median_ms(values: Sequence[float]) -> float | None:
    return statistics.median(values) * 1000 if values else None


def _ms_or_none(value: float | None) -> float | None:
    return None if value is None else value * 1000


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def failures(summary: dict[str, Any]) -> list[str]:
    """Why the run fails (empty: it passed): loss, a changed message id, an undrained outbox."""
    problems = []
    if summary["lost"]:
        problems.append(f"lost {summary['lost']}: {summary['lost_numbers'][:20]}")
    if summary["duplicated_with_changed_message_id"]:
        changed = summary["duplicated_with_changed_message_id"][:20]
        problems.append(f"duplicates with a changed message id: {changed}")
    if not summary["drained"]:
        problems.append(
            f"the last run did not drain its outbox (depth {summary['drain_depth']}, "
            f"exit code {summary['drain_exit_code']})"
        )
    if summary["exited_by_itself"]:
        problems.append(f"runs not ended by the SIGKILL: {summary['exited_by_itself']}")
    return problems


_COLUMNS = (
    ("run", 5),
    ("start", 7),
    ("kill at s", 9),
    ("accepted", 8),
    ("numbers", 15),
    ("connect ms", 10),
    ("resume ms", 9),
    ("msg/s", 5),
    ("primary killed s", 16),
)


def format_runs(runs: Sequence[Run]) -> str:
    header = "  ".join(name.ljust(width) for name, width in _COLUMNS).rstrip()
    lines = [header, "-" * len(header)]
    for run in runs:
        numbers = f"{run.accepted[0]}..{run.accepted[-1]}" if run.accepted else "-"
        connect = "offline" if run.offline else _ms(_ms_or_none(run.connected))
        cells = (
            str(run.index) if run.kill_delay is not None else "drain",
            str(run.start),
            "-" if run.killed_at is None else f"{run.killed_at:.2f}",
            str(len(run.accepted)),
            numbers,
            connect,
            _ms(_ms_or_none(run.first_accepted)),
            _rate(run.rate),
            "-" if run.primary_killed_at is None else f"{run.primary_killed_at:.2f}",
        )
        row = "  ".join(c.ljust(w) for c, (_h, w) in zip(cells, _COLUMNS, strict=True))
        lines.append(row.rstrip())
    return "\n".join(lines)


def format_summary(summary: dict[str, Any]) -> str:
    s = summary
    seen_note = "" if s["all_seen"] else f" (not all seen within {SEEN_TIMEOUT:g} s)"
    rows = [
        ("kills (device SIGKILLs)", str(s["kills"])),
        ("primary hub kills", str(s["primary_kills"])),
        ("numbers accepted", str(s["accepted"])),
        ("lost (must be 0)", f"{s['lost']}{seen_note}"),
        (
            "duplicates",
            f"{s['duplicates']} extra deliveries of {s['duplicated_numbers']} numbers",
        ),
        (
            "  with one message id",
            f"{s['duplicated_with_one_message_id']}/{s['duplicated_numbers']} numbers",
        ),
        ("seen without message id", str(s["seen_without_message_id"])),
        ("in doubt, seen", str(s["in_doubt_seen"])),
        (
            "time to resume",
            f"median {_ms(s['resume_median_ms'])} ms, max {_ms(s['resume_max_ms'])} ms "
            f"({s['resumed']}/{s['restarts']} restarts)",
        ),
        ("time to connected", f"median {_ms(s['connect_median_ms'])} ms"),
        (
            "publishing rate",
            f"median {_rate(s['rate_achieved_median_msg_per_s'])} msg/s over the killed runs "
            f"(asked for {s['rate_msg_per_s']:g})",
        ),
        ("outbox drained", "yes" if s["drained"] else "NO"),
    ]
    width = max(len(name) for name, _v in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def format_header(info: dict[str, Any], settings: Settings) -> str:
    failover = (
        "the primary hub is SIGKILLed mid-run in every second run and restarted after it"
        if settings.failover
        else "off"
    )
    return "\n".join(
        [
            f"kill-restart benchmark, {info['date']}",
            f"machine: {info['platform']}, {info['cpu']}, {info['cpu_count']} CPUs",
            f"python {info['python']}, device_sdk {info['device_sdk']} "
            f"({info['device_sdk_source']}), paho-mqtt {info['paho_mqtt']}, {info['mosquitto']}",
            f"load: one device process ({PROGRAM.relative_to(ROOT)}), numbered QoS 1 stream "
            f"at {settings.rate:g} msg/s to one topic, durable SQLite outbox "
            "(synchronous=NORMAL) kept across restarts; hubs primary+secondary, plain MQTT on "
            "loopback, a collector on each",
            f"kills: {settings.kills} SIGKILLs of the device, each uniformly "
            f"{settings.min_delay:g}-{settings.max_delay:g} s after its start "
            f"(seed {settings.seed}); failover: {failover}",
        ]
    )


def format_report(settings: Settings, outcome: Outcome, summary: dict[str, Any]) -> str:
    problems = failures(summary)
    verdict = "PASS: 0 lost" if not problems else "FAIL: " + "; ".join(problems)
    return "\n\n".join(
        [
            "runs (times from the process start; resume = start -> first accepted):\n"
            + format_runs(outcome.runs),
            format_summary(summary),
            DUPLICATES_NOTE,
            verdict,
        ]
    )


# -- main -------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--kills", type=int, default=10, help="device SIGKILLs (default 10)")
    parser.add_argument("--seed", type=int, default=1, help="for the kill moments (default 1)")
    parser.add_argument(
        "--rate", type=float, default=RATE, help=f"messages per second (default {RATE:g})"
    )
    parser.add_argument(
        "--min-delay",
        type=float,
        default=MIN_DELAY,
        help=f"earliest kill, s after the process started (default {MIN_DELAY:g})",
    )
    parser.add_argument(
        "--max-delay",
        type=float,
        default=MAX_DELAY,
        help=f"latest kill, s after the process started (default {MAX_DELAY:g})",
    )
    parser.add_argument(
        "--failover",
        action="store_true",
        help="also SIGKILL the primary hub mid-run in every second run",
    )
    report.add_json_option(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not 1 <= args.kills <= 1000:
        parser.error("--kills must be between 1 and 1000")
    if not 0 < args.min_delay <= args.max_delay <= 600:
        parser.error("need 0 < --min-delay <= --max-delay <= 600")
    if not 1 <= args.rate <= 10_000:
        parser.error("--rate must be between 1 and 10000")
    settings = Settings(
        kills=args.kills,
        rate=args.rate,
        min_delay=args.min_delay,
        max_delay=args.max_delay,
        seed=args.seed,
        failover=args.failover,
    )
    info = report.machine_info()
    if not report.json_only(args.json):
        print(format_header(info, settings), end="\n\n", flush=True)
    outcome = run_benchmark(settings)
    summary = summarise(settings, outcome)

    def document() -> dict[str, Any]:
        return {
            "machine": info,
            "command": " ".join(
                ["python", "benchmarks/kill_restart.py", *(sys.argv[1:] if argv is None else argv)]
            ),
            "settings": dataclasses.asdict(settings) | {"topic": TOPIC, "drain_count": DRAIN_COUNT},
            "summary": summary,
            "failures": failures(summary),
            "runs": [run.as_dict() for run in outcome.runs],
        }

    report.emit(lambda: format_report(settings, outcome, summary), document, args.json)
    return 1 if failures(summary) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Import time and resident memory: device_sdk beside raw paho-mqtt, in one run.

    python benchmarks/footprint.py [--runs N] [--memory-runs M] [--messages K] [--json [PATH]]

Everything is measured in fresh child processes (``sys.executable -c ...``, run
from the repository root), so nothing the benchmark itself imported counts.

* **Import time**: the child times ``import paho.mqtt.client``, ``import
  device_sdk`` (whose public names load on first use, so this is the package
  alone) or ``from device_sdk import ClientConfig, DeviceClient, HubEndpoint``
  (what a program about to connect loads: engine, paho, resolver, policies)
  with ``time.perf_counter()`` around the import statement alone;
  the parent also times the whole child process, start to exit, and does the
  same for ``python -c pass`` (Python's bare start-up). N runs of each (default
  15), interleaved (the order rotates run by run) after one untimed warm-up each
  (which compiles every module's ``.pyc``: see `child_environment`); median and minimum. Then
  ``python -X importtime -c`` with the client names shows where the time goes:
  self time summed per top-level package, and the largest imports by cumulative
  time (median of a few runs; the instrumentation inflates the absolute times).
* **Resident memory**: each child reports its peak RSS (``getrusage`` ``ru_maxrss``,
  kB) and its current RSS (``VmRSS`` in ``/proc/self/status``) at the end of its
  work, and ``threading.active_count()``. Cases: bare Python; after ``import
  paho.mqtt.client``; after ``import device_sdk``; a raw paho client (MQTT 5,
  ``loop_start()``) connected to a local mosquitto after K QoS 1 messages (default
  1000) were published and every PUBACK came; a ``DeviceClient`` (in-memory
  outbox) after the same; and one with the durable SQLite outbox
  (``OutboxSettings(path=..., synchronous="NORMAL")``). Each figure is the median
  of M children per case (default 3), interleaved, after one untimed child per
  case (bytecode, page cache); the SDK rows are compared with
  their raw-paho counterpart (difference and ratio), the paho rows with bare Python.
* **CPU time per 1000 messages**: the same connected children read
  ``time.process_time()`` (user + sys of the whole process, every thread) before
  the first publish and after the last PUBACK; scaled to 1000 messages, median
  of the M children, and each SDK case as a ratio over raw paho's.

Linux carries a process's ``ru_maxrss`` across ``execve()``: a child started
straight from this (larger) process would report this process's peak as its
own. So the memory children are started through ``sh -c '"$@"; exit $?'``: the
shell forks a fresh process (no peak carried over but the shell's own, about
1 MB) and then runs Python. ``VmHWM`` (the peak of the current address space
alone, from ``/proc/self/status``) is reported beside it as a cross-check. On
recent kernels ``ru_maxrss`` is built from approximate per-CPU RSS counters while
``/proc`` sums them exactly, so the two may differ by a few hundred kB; the table
says by how much.

Every child runs under a timeout in its own session and is killed (its process
group, while its leader is unreaped) when it overruns; connections go to
127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import logging
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from device_sdk.testbed import BrokerSpec, MosquittoBroker

try:  # the benchmarks' shared machine description and --json handling
    from benchmarks import report
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    import report  # type: ignore[import-not-found,no-redef]

ROOT = Path(__file__).resolve().parents[1]
TOPIC = "bench/footprint"
PAYLOAD_BYTES = 64
MESSAGES = 1000  # default of --messages: QoS 1 messages each connected case publishes
MAX_MESSAGES = 10_000  # the SDK's default outbox bound: every message fits, no backpressure
RUNS = 15  # default of --runs (import time)
MEMORY_RUNS = 3  # default of --memory-runs
IMPORTTIME_RUNS = 3  # default of --importtime-runs
TOP = 8  # rows in each -X importtime list
# The targets of issue 14: import time as a ratio over paho's (whole process), and the
# connected client's peak RSS over raw paho's.
IMPORT_RATIO_TARGET = 1.3
MEMORY_EXTRA_TARGET_KB = 5 * 1024

IMPORT_TIMEOUT = 60.0  # one import-time child, start to exit
MEMORY_TIMEOUT = 90.0  # one memory child: start, connect, K messages, every PUBACK, close
EXIT_BOUND = 5.0  # reaping a child after it was killed
CONNECT_TIMEOUT = 10.0  # inside the connected children
ACK_TIMEOUT = 60.0  # inside the connected children: every PUBACK by then

# Launch through a shell that forks (the "; exit $?" keeps it from exec-ing Python in its
# own place), so the child's ru_maxrss does not start at this process's peak; see above.
SHELL = shutil.which("sh") or "/bin/sh"
FORKING_SHELL = (SHELL, "-c", '"$@"; exit $?', "sh")

RESULT_MARK = "FOOTPRINT"
CLIENT_IMPORT = "from device_sdk import ClientConfig, DeviceClient, HubEndpoint"


# -- child programs ---------------------------------------------------------------------------

# Import time: only the import statement is timed, inside the child.
_IMPORT_TIMER = """\
import time
_started = time.perf_counter()
{statement}
_elapsed = time.perf_counter() - _started
print("{mark}", _elapsed)
"""

# Memory: every memory child starts with this, so all of them carry the same cost of
# measuring (resource, threading), bare Python included.
_MEMORY_PROLOGUE = f"""\
import resource
import sys
import threading


def report(cpu=None):
    status = {{}}
    with open("/proc/self/status") as lines:
        for line in lines:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                status[key] = int(value.split()[0])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu = -1.0 if cpu is None else cpu
    print(
        "{RESULT_MARK}", peak, status["VmRSS"], status["VmHWM"], threading.active_count(), repr(cpu)
    )
    sys.stdout.flush()


"""

# argv: host port messages
_RAW_PAHO_CONNECTED = f"""\
import os
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
acked = 0
connected = threading.Event()
all_acked = threading.Event()


def on_connect(client, userdata, flags, reason_code, properties):
    if not reason_code.is_failure:
        connected.set()


def on_publish(client, userdata, mid, reason_code, properties):
    global acked  # paho's network thread is the only writer
    acked += 1
    if acked == count:
        all_acked.set()


client = mqtt.Client(
    CallbackAPIVersion.VERSION2, client_id=f"footprint-paho-{{os.getpid()}}", protocol=mqtt.MQTTv5
)
client.on_connect = on_connect
client.on_publish = on_publish
client.connect(host, port, keepalive=60)
client.loop_start()
try:
    if not connected.wait({CONNECT_TIMEOUT}):
        sys.exit("raw paho: no CONNACK within {CONNECT_TIMEOUT} s")
    payload = b"x" * {PAYLOAD_BYTES}
    cpu_started = time.process_time()  # user + sys of the whole process, every thread
    for _ in range(count):
        client.publish("{TOPIC}", payload, qos=1)
    if not all_acked.wait({ACK_TIMEOUT}):
        sys.exit(f"raw paho: {{acked}}/{{count}} PUBACKs after {ACK_TIMEOUT} s")
    report(time.process_time() - cpu_started)
finally:
    client.disconnect()
    client.loop_stop()
"""

# argv: host port messages [outbox path]
_SDK_CONNECTED = f"""\
import os
import time

from device_sdk import ClientConfig, DeviceClient, HubEndpoint, OutboxSettings

host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
path = sys.argv[4] if len(sys.argv) > 4 else None
outbox = OutboxSettings() if path is None else OutboxSettings(path=path, synchronous="NORMAL")
config = ClientConfig(
    client_id=f"footprint-sdk-{{os.getpid()}}",
    hubs=(HubEndpoint(name="footprint", fqdn=host, port=port, tls=None),),
    outbox=outbox,
)
client = DeviceClient(config)
try:
    client.connect(timeout={CONNECT_TIMEOUT})
    payload = b"x" * {PAYLOAD_BYTES}
    last = None
    cpu_started = time.process_time()  # user + sys of the whole process, every thread
    for _ in range(count):  # the handles are dropped, like paho's MQTTMessageInfo above
        last = client.publish("{TOPIC}", payload, qos=1)
    last.wait({ACK_TIMEOUT})  # PUBACKs resolve handles in order
    deadline = time.monotonic() + 5.0
    while client.metrics().acknowledged < count and time.monotonic() < deadline:
        time.sleep(0.01)
    if client.metrics().acknowledged < count:
        sys.exit(f"device_sdk: {{client.metrics().acknowledged}}/{{count}} PUBACKs")
    report(time.process_time() - cpu_started)
finally:
    client.close()
"""


@dataclass(frozen=True, slots=True)
class ImportVariant:
    key: str
    label: str
    statement: str | None  # None: ``python -c pass``, timed from outside only


IMPORT_VARIANTS = (
    ImportVariant("python", "python -c pass", None),
    ImportVariant("paho", "import paho.mqtt.client", "import paho.mqtt.client"),
    ImportVariant("device_sdk", "import device_sdk", "import device_sdk"),
    # What a program starts with: the package's names load on first use (PEP 562), so this
    # row, not the one above, is the cost of a client that is about to connect.
    ImportVariant("sdk_client", "sdk client names", CLIENT_IMPORT),
)


@dataclass(frozen=True, slots=True)
class MemoryCase:
    key: str
    label: str
    body: str  # after _MEMORY_PROLOGUE
    compared_with: str | None  # the key of the row this one is set beside
    connected: bool = False
    sqlite: bool = False


MEMORY_CASES = (
    MemoryCase("bare", "bare python", "report()\n", None),
    MemoryCase(
        "paho_import", "import paho.mqtt.client", "import paho.mqtt.client\nreport()\n", "bare"
    ),
    MemoryCase("sdk_import", "import device_sdk", "import device_sdk\nreport()\n", "paho_import"),
    MemoryCase("paho_connected", "raw paho, connected", _RAW_PAHO_CONNECTED, "bare", True),
    MemoryCase(
        "sdk_memory", "sdk memory outbox, connected", _SDK_CONNECTED, "paho_connected", True
    ),
    MemoryCase(
        "sdk_sqlite",
        "sdk sqlite NORMAL, connected",
        _SDK_CONNECTED,
        "paho_connected",
        True,
        sqlite=True,
    ),
)


# -- running children ------------------------------------------------------------------------


class ChildFailed(RuntimeError):
    """A child process overran its timeout, failed, or printed no result."""


def child_environment(pycache: Path) -> dict[str, str]:
    """The children's environment: this one, with bytecode caching on, in ``pycache``.

    A device runs the package as pip installed it, with ``.pyc`` files written at
    install time. A developer's shell (or a CI image) may set
    ``PYTHONDONTWRITEBYTECODE``, and then a source tree would be compiled again in
    every child while paho and dnspython load their installed ``.pyc`` files: that
    times the compiler, not the import. Every child writes and reads its bytecode
    under one fresh prefix instead (``PYTHONPYCACHEPREFIX``), for every package
    alike, so the warm-up compiles each module once and the timed runs load
    bytecode, as on a device.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


# Set by main() for the run; None (tests calling the helpers) inherits this environment.
CHILD_ENV: dict[str, str] | None = None


def run_child(argv: Sequence[str], timeout: float, what: str) -> tuple[str, str, float]:
    """Run one child to its end: its stdout, its stderr, and the seconds from start to exit."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        list(argv),
        env=CHILD_ENV,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,  # its own process group: a timeout kills the shell's child too
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException as exc:
        _kill(proc)
        if isinstance(exc, subprocess.TimeoutExpired):
            raise ChildFailed(f"{what}: still running after {timeout:g} s") from None
        raise
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        tail = "\n".join(err.strip().splitlines()[-15:])
        raise ChildFailed(f"{what}: exit status {proc.returncode}\n{tail}")
    return out, err, elapsed


def _kill(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the child's process group, only while its leader is unreaped (still ours)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.communicate(timeout=EXIT_BOUND)


def _marked(out: str) -> list[str]:
    for line in reversed(out.splitlines()):
        if line.startswith(RESULT_MARK + " "):
            return line.split()[1:]
    raise ChildFailed(f"no {RESULT_MARK} line in the child's output: {out[-300:]!r}")


# -- import time ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImportRun:
    variant: str
    index: int  # 0 is the warm-up
    import_seconds: float | None  # inside the child, around the import statement
    process_seconds: float  # the whole child, from the parent


def import_once(variant: ImportVariant, index: int) -> ImportRun:
    if variant.statement is None:
        _out, _err, elapsed = run_child(
            [sys.executable, "-c", "pass"], IMPORT_TIMEOUT, variant.label
        )
        return ImportRun(variant.key, index, None, elapsed)
    code = _IMPORT_TIMER.format(statement=variant.statement, mark=RESULT_MARK)
    out, _err, elapsed = run_child([sys.executable, "-c", code], IMPORT_TIMEOUT, variant.label)
    return ImportRun(variant.key, index, float(_marked(out)[0]), elapsed)


def measure_imports(runs: int, progress: Callable[[str], None]) -> list[ImportRun]:
    results = [import_once(v, 0) for v in IMPORT_VARIANTS]  # warm-up: .pyc files, page cache
    for index in range(1, runs + 1):
        shift = (index - 1) % len(IMPORT_VARIANTS)
        for variant in IMPORT_VARIANTS[shift:] + IMPORT_VARIANTS[:shift]:
            run = import_once(variant, index)
            results.append(run)
            inside = (
                "" if run.import_seconds is None else f"import {run.import_seconds * 1e3:6.1f} ms, "
            )
            progress(
                f"import run {index}/{runs} {variant.label:<24} {inside}"
                f"process {run.process_seconds * 1e3:6.1f} ms"
            )
    return results


def summarise_imports(results: Sequence[ImportRun]) -> list[dict[str, Any]]:
    rows = []
    paho = [r.process_seconds for r in results if r.variant == "paho" and r.index > 0]
    paho_median = statistics.median(paho)
    for variant in IMPORT_VARIANTS:
        timed = [r for r in results if r.variant == variant.key and r.index > 0]
        inside = [r.import_seconds for r in timed if r.import_seconds is not None]
        process = [r.process_seconds for r in timed]
        rows.append(
            {
                "variant": variant.key,
                "label": variant.label,
                "runs": len(timed),
                "import_ms_median": _ms(statistics.median(inside)) if inside else None,
                "import_ms_min": _ms(min(inside)) if inside else None,
                "process_ms_median": _ms(statistics.median(process)),
                "process_ms_min": _ms(min(process)),
                "process_ratio": round(statistics.median(process) / paho_median, 3),
            }
        )
    return rows


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


# -- python -X importtime ---------------------------------------------------------------------

_IMPORTTIME = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)\s*$")


def parse_importtime(stderr: str, root: str) -> list[tuple[str, int, int, int]]:
    """The entries (name, depth, self us, cumulative us) of the import of ``root`` and after.

    ``-X importtime`` prints a module after everything it imported, indented two
    spaces per level; a top-level import's line closes its tree. Start-up imports
    (``site`` and what it pulls in) come first, as their own trees. The tree of
    ``root`` and every top-level tree after it are the statement's: a package whose
    names load on first use (``from device_sdk import DeviceClient``) imports them
    as trees of their own, after its own.
    """
    pending: list[tuple[str, int, int, int]] = []
    trees: list[list[tuple[str, int, int, int]]] = []
    for line in stderr.splitlines():
        match = _IMPORTTIME.match(line)
        if match is None:
            continue
        own, cumulative, indent, name = match.groups()
        entry = (name, len(indent) // 2, int(own), int(cumulative))
        pending.append(entry)
        if entry[1] == 0:
            trees.append(pending)
            pending = []
    for index, tree in enumerate(trees):
        if tree[-1][0] == root:
            return [entry for later in trees[index:] for entry in later]
    return []


def measure_importtime(runs: int, progress: Callable[[str], None]) -> dict[str, Any] | None:
    """Where a program's ``from device_sdk import ...`` spends its time (medians).

    By package and by module. ``import device_sdk`` alone loads next to nothing
    (its names load on first use), so the statement profiled is the one a program
    about to connect writes.
    """
    if runs < 1:
        return None
    by_package: list[dict[str, int]] = []
    by_module: list[dict[str, int]] = []
    totals: list[int] = []
    for index in range(1, runs + 1):
        argv = [sys.executable, "-X", "importtime", "-c", CLIENT_IMPORT]
        _out, err, _elapsed = run_child(argv, IMPORT_TIMEOUT, "python -X importtime")
        entries = parse_importtime(err, "device_sdk")
        if not entries:
            raise ChildFailed("python -X importtime printed no tree for device_sdk")
        packages: dict[str, int] = {}
        for name, _depth, own, _cumulative in entries:
            top = name.split(".", 1)[0]
            packages[top] = packages.get(top, 0) + own
        by_package.append(packages)
        by_module.append({name: cumulative for name, _d, _o, cumulative in entries})
        totals.append(sum(cumulative for _n, depth, _o, cumulative in entries if depth == 0))
        progress(f"importtime run {index}/{runs}: client names {totals[-1] / 1e3:.1f} ms")
    total = statistics.median(totals)

    def medians(samples: list[dict[str, int]]) -> dict[str, float]:
        names = {name for sample in samples for name in sample}
        return {n: statistics.median(s.get(n, 0) for s in samples) for n in names}

    packages_med = sorted(medians(by_package).items(), key=lambda kv: -kv[1])
    modules_med = sorted(medians(by_module).items(), key=lambda kv: -kv[1])
    return {
        "runs": runs,
        "total_ms": round(total / 1e3, 2),
        "modules_imported": len(by_module[-1]),
        "packages_by_self_time": [
            {"package": name, "self_ms": round(us / 1e3, 2), "share": round(us / total, 3)}
            for name, us in packages_med[:TOP]
        ],
        "modules_by_cumulative_time": [
            {"module": name, "cumulative_ms": round(us / 1e3, 2), "share": round(us / total, 3)}
            for name, us in modules_med
            if name != "device_sdk"
        ][:TOP],
    }


# -- resident memory --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemoryRun:
    case: str
    index: int
    peak_rss_kb: int  # ru_maxrss
    rss_kb: int  # VmRSS
    hwm_kb: int  # VmHWM, the cross-check
    threads: int
    cpu_ms_per_1000: float | None  # connected cases: user + sys while publishing, per 1000


def memory_once(
    case: MemoryCase, index: int, broker: MosquittoBroker, directory: Path, messages: int
) -> MemoryRun:
    argv = [*FORKING_SHELL, sys.executable, "-c", _MEMORY_PROLOGUE + case.body]
    if case.connected:
        argv += [broker.host, str(broker.port), str(messages)]
    outbox = directory / f"outbox-{index}.sqlite"
    if case.sqlite:
        argv.append(str(outbox))
    try:
        out, _err, _elapsed = run_child(argv, MEMORY_TIMEOUT, f"memory child {case.label}")
    finally:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{outbox}{suffix}")
    marked = _marked(out)
    peak, rss, hwm, threads = (int(v) for v in marked[:4])
    cpu = float(marked[4])
    per_1000 = round(cpu / messages * 1e6, 2) if case.connected and cpu >= 0 else None
    return MemoryRun(case.key, index, peak, rss, hwm, threads, per_1000)


def measure_memory(runs: int, messages: int, progress: Callable[[str], None]) -> list[MemoryRun]:
    results: list[MemoryRun] = []
    with (
        MosquittoBroker(BrokerSpec(name="footprint", host="127.0.0.1")) as broker,
        tempfile.TemporaryDirectory(prefix="device-sdk-footprint-") as directory,
    ):
        for case in MEMORY_CASES:  # untimed: compiles the modules only these cases load
            memory_once(case, 0, broker, Path(directory), messages)
        for index in range(1, runs + 1):
            shift = (index - 1) % len(MEMORY_CASES)
            for case in MEMORY_CASES[shift:] + MEMORY_CASES[:shift]:
                run = memory_once(case, index, broker, Path(directory), messages)
                results.append(run)
                progress(
                    f"memory run {index}/{runs} {case.label:<30} peak {run.peak_rss_kb} kB, "
                    f"now {run.rss_kb} kB, {run.threads} threads"
                )
    return results


def summarise_memory(results: Sequence[MemoryRun]) -> list[dict[str, Any]]:
    medians: dict[str, dict[str, int]] = {}
    for case in MEMORY_CASES:
        runs = [r for r in results if r.case == case.key]
        medians[case.key] = {
            name: round(statistics.median(getattr(r, name) for r in runs))
            for name in ("peak_rss_kb", "rss_kb", "hwm_kb", "threads")
        }
    rows = []
    for case in MEMORY_CASES:
        row: dict[str, Any] = {"case": case.key, "label": case.label, **medians[case.key]}
        base = None if case.compared_with is None else medians[case.compared_with]
        row["compared_with"] = case.compared_with
        for name in ("peak_rss_kb", "rss_kb"):
            stem = name.removesuffix("_kb")
            row[f"{stem}_diff_kb"] = None if base is None else row[name] - base[name]
            row[f"{stem}_ratio"] = None if base is None else round(row[name] / base[name], 3)
        rows.append(row)
    return rows


def summarise_cpu(results: Sequence[MemoryRun]) -> list[dict[str, Any]]:
    """CPU time per 1000 published messages, each connected case beside raw paho's."""
    medians = {}
    for case in MEMORY_CASES:
        samples = [r.cpu_ms_per_1000 for r in results if r.case == case.key]
        if case.connected and samples and all(v is not None for v in samples):
            medians[case.key] = statistics.median(v for v in samples if v is not None)
    rows = []
    for case in MEMORY_CASES:
        if case.key not in medians:
            continue
        base = medians.get("paho_connected") if case.key != "paho_connected" else None
        ms = medians[case.key]
        rows.append(
            {
                "case": case.key,
                "label": case.label,
                "runs": sum(1 for r in results if r.case == case.key),
                "cpu_ms_per_1000_median": round(ms, 2),
                "compared_with": None if base is None else "paho_connected",
                "ratio": None if base is None or base <= 0 else round(ms / base, 3),
            }
        )
    return rows


# -- the report -------------------------------------------------------------------------------


def format_header(info: dict[str, Any], args: argparse.Namespace) -> str:
    deps = ", ".join(f"{name} {version}" for name, version in dependency_versions().items())
    return "\n".join(
        [
            f"footprint benchmark, {info['date']}",
            f"machine: {info['platform']}, {info['cpu']}, {info['cpu_count']} CPUs",
            f"python {info['python']}, device_sdk {info['device_sdk']} "
            f"({info['device_sdk_source']}), paho-mqtt {info['paho_mqtt']}, {info['mosquitto']}",
            f"device_sdk's other dependencies: {deps}",
            f"import time: fresh `{Path(sys.executable).name} -c` processes (cwd {ROOT}), "
            f"{args.runs} runs per statement, interleaved, after one warm-up each; every "
            "child loads bytecode (compiled by the warm-up under one fresh "
            "PYTHONPYCACHEPREFIX, as pip compiles at install)",
            f"memory: median of {args.memory_runs} fresh processes per case; connected cases "
            f"publish {args.messages} QoS 1 messages of {PAYLOAD_BYTES} bytes (MQTT 5, in-flight "
            "window 20) to a local mosquitto on 127.0.0.1 and wait for every PUBACK",
        ]
    )


def dependency_versions() -> dict[str, str]:
    versions = {}
    for name in ("dnspython", "tenacity", "cryptography"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _cell(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def format_imports(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        f"{'import time (ms)':<26} {'import med':>10} {'min':>7}   {'process med':>11} {'min':>7}"
        f"   {'x paho (process)':>16}",
        "-" * 86,
    ]
    for row in rows:
        lines.append(
            f"{row['label']:<26} {_cell(row['import_ms_median']):>10} "
            f"{_cell(row['import_ms_min']):>7}   {_cell(row['process_ms_median']):>11} "
            f"{_cell(row['process_ms_min']):>7}   {_cell(row['process_ratio'], '.2f'):>16}"
        )
    by_key = {row["variant"]: row for row in rows}
    paho = by_key["paho"]
    for key in ("device_sdk", "sdk_client"):
        sdk = by_key[key]
        lines.append(
            f"{sdk['label'] + ' - paho':<26} "
            f"{sdk['import_ms_median'] - paho['import_ms_median']:>+10.1f} {'':>7}   "
            f"{sdk['process_ms_median'] - paho['process_ms_median']:>+11.1f}"
        )
    lines.append(
        "import = around the import statement, inside the child; process = the whole child, "
        "start to exit,\nseen from the parent (python -c pass: Python's bare start-up); "
        "x paho = process median over that of\n`import paho.mqtt.client`. "
        f"sdk client names = `{CLIENT_IMPORT}`."
    )
    return "\n".join(lines)


def format_importtime(report: dict[str, Any]) -> str:
    lines = [
        f"where `{CLIENT_IMPORT}` goes\n(python -X importtime, median of {report['runs']}: "
        f"{report['total_ms']:.1f} ms, {report['modules_imported']} modules; "
        "the instrumentation inflates absolute times)",
        f"{'package, self time summed':<34} {'ms':>7} {'share':>6}    "
        f"{'module, cumulative':<34} {'ms':>7} {'share':>6}",
        "-" * 100,
    ]
    packages, modules = report["packages_by_self_time"], report["modules_by_cumulative_time"]
    for i in range(max(len(packages), len(modules))):
        left = (
            f"{packages[i]['package']:<34} {packages[i]['self_ms']:>7.1f} "
            f"{packages[i]['share']:>6.0%}"
            if i < len(packages)
            else " " * 49
        )
        right = (
            f"{modules[i]['module']:<34} {modules[i]['cumulative_ms']:>7.1f} "
            f"{modules[i]['share']:>6.0%}"
            if i < len(modules)
            else ""
        )
        lines.append(f"{left}    {right}".rstrip())
    return "\n".join(lines)


def format_memory(rows: Sequence[dict[str, Any]], messages: int) -> str:
    labels = {row["case"]: row["label"] for row in rows}
    lines = [
        f"{'resident memory (kB)':<29} {'peak RSS':>8} {'VmHWM':>6} {'RSS now':>7} {'threads':>7}"
        f"   {'compared with':<23} {'+peak':>7} {'+now':>7} {'x peak':>6} {'x now':>6}",
        "-" * 118,
    ]
    for row in rows:
        base = row["compared_with"]
        sdk = row["case"].startswith("sdk")
        lines.append(
            f"{row['label']:<29} {row['peak_rss_kb']:>8} {row['hwm_kb']:>6} {row['rss_kb']:>7} "
            f"{row['threads']:>7}   {'' if base is None else labels[base]:<23} "
            f"{_cell(row['peak_rss_diff_kb'], '+d'):>7} {_cell(row['rss_diff_kb'], '+d'):>7} "
            f"{_cell(row['peak_rss_ratio'] if sdk else None, '.2f'):>6} "
            f"{_cell(row['rss_ratio'] if sdk else None, '.2f'):>6}"
        )
    lag = max(abs(row["hwm_kb"] - row["peak_rss_kb"]) for row in rows)
    lines.append(
        f"connected = after {messages} QoS 1 messages were published and every PUBACK came, "
        "still connected. Read at that\nmoment: peak RSS = getrusage ru_maxrss; VmHWM "
        "(peak) and RSS now (VmRSS) from /proc/self/status; threads =\n"
        "threading.active_count(). +/x: difference to and ratio over the row compared with. "
        "ru_maxrss comes from\nthe kernel's approximate per-CPU RSS counters, /proc from "
        f"exact sums: here they differ by up to {lag} kB."
    )
    return "\n".join(lines)


def format_cpu(rows: Sequence[dict[str, Any]], messages: int) -> str:
    lines = [
        f"{'CPU time (ms per 1000 messages)':<31} {'median':>7} {'runs':>5}   "
        f"{'compared with':<20} {'x':>6}",
        "-" * 76,
    ]
    labels = {case.key: case.label for case in MEMORY_CASES}
    for row in rows:
        base = row["compared_with"]
        lines.append(
            f"{row['label']:<31} {row['cpu_ms_per_1000_median']:>7.1f} {row['runs']:>5}   "
            f"{'' if base is None else labels[base]:<20} {_cell(row['ratio'], '.2f'):>6}"
        )
    lines.append(
        "user + sys CPU time of the whole process (time.process_time(), every thread) from "
        f"the first of {messages}\nQoS 1 publishes until every PUBACK came, scaled to 1000 "
        "messages; x = ratio over raw paho's."
    )
    return "\n".join(lines)


def judge_targets(
    imports: Sequence[dict[str, Any]], memory: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each target beside its figure: import ratios over paho, connected peak RSS over paho's."""
    ratios = {row["variant"]: row["process_ratio"] for row in imports}
    extra = {row["case"]: row["peak_rss_diff_kb"] for row in memory}
    rows = [
        {
            "what": f"{label} / import paho.mqtt.client, process",
            "figure": ratios[key],
            "target": IMPORT_RATIO_TARGET,
            "met": ratios[key] <= IMPORT_RATIO_TARGET,
        }
        for key, label in (("device_sdk", "import device_sdk"), ("sdk_client", "client names"))
    ]
    rows.extend(
        {
            "what": f"{key} peak RSS - raw paho connected, kB",
            "figure": extra[key],
            "target": MEMORY_EXTRA_TARGET_KB,
            "met": extra[key] <= MEMORY_EXTRA_TARGET_KB,
        }
        for key in ("sdk_memory", "sdk_sqlite")
    )
    return rows


def format_targets(rows: Sequence[dict[str, Any]]) -> str:
    lines = [f"{'target':<56} {'figure':>8} {'at most':>8}   met", "-" * 80]
    for row in rows:
        lines.append(
            f"{row['what']:<56} {row['figure']:>8g} {row['target']:>8g}   "
            f"{'yes' if row['met'] else 'NO'}"
        )
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--runs", type=int, default=RUNS, help=f"import-time runs per statement (default {RUNS})"
    )
    parser.add_argument(
        "--memory-runs",
        type=int,
        default=MEMORY_RUNS,
        help=f"memory children per case (default {MEMORY_RUNS})",
    )
    parser.add_argument(
        "--messages",
        type=int,
        default=MESSAGES,
        help=f"QoS 1 messages per connected case (default {MESSAGES})",
    )
    parser.add_argument(
        "--importtime-runs",
        type=int,
        default=IMPORTTIME_RUNS,
        help=f"python -X importtime runs, 0 to skip (default {IMPORTTIME_RUNS})",
    )
    report.add_json_option(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 1000:
        parser.error("--runs must be between 1 and 1000")
    if not 1 <= args.memory_runs <= 100:
        parser.error("--memory-runs must be between 1 and 100")
    if not 1 <= args.messages <= MAX_MESSAGES:
        parser.error(f"--messages must be between 1 and {MAX_MESSAGES}")
    if not 0 <= args.importtime_runs <= 100:
        parser.error("--importtime-runs must be between 0 and 100")
    logging.getLogger("device_sdk").addHandler(logging.NullHandler())
    info = report.machine_info()
    if not report.json_only(args.json):
        print(format_header(info, args), end="\n\n", flush=True)

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    global CHILD_ENV  # noqa: PLW0603 - one run's setting, read by every child it starts
    try:
        with tempfile.TemporaryDirectory(prefix="device-sdk-footprint-pyc-") as pycache:
            CHILD_ENV = child_environment(Path(pycache))
            import_runs = measure_imports(args.runs, progress)
            importtime = measure_importtime(args.importtime_runs, progress)
            memory_runs = measure_memory(args.memory_runs, args.messages, progress)
    except ChildFailed as exc:
        print(f"footprint benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        CHILD_ENV = None
    imports = summarise_imports(import_runs)
    memory = summarise_memory(memory_runs)
    cpu = summarise_cpu(memory_runs)
    targets = judge_targets(imports, memory)

    def document() -> dict[str, Any]:
        return {
            "machine": info,
            "dependencies": dependency_versions(),
            "command": " ".join(
                ["python", "benchmarks/footprint.py", *(sys.argv[1:] if argv is None else argv)]
            ),
            "settings": {
                "runs": args.runs,
                "memory_runs": args.memory_runs,
                "importtime_runs": args.importtime_runs,
                "messages": args.messages,
                "payload_bytes": PAYLOAD_BYTES,
                "mqtt_version": "5",
            },
            "import_time": imports,
            "importtime": importtime,
            "memory": memory,
            "cpu_per_1000_messages": cpu,
            "targets": targets,
            "import_runs": [asdict(r) for r in import_runs if r.index > 0],
            "memory_runs": [asdict(r) for r in memory_runs],
        }

    def tables() -> str:
        sections = [format_imports(imports)]
        if importtime is not None:
            sections.append(format_importtime(importtime))
        sections.append(format_memory(memory, args.messages))
        sections.append(format_cpu(cpu, args.messages))
        sections.append(format_targets(targets))
        return "\n\n".join(sections)

    report.emit(tables, document, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Never lose what the device was handed: kill -9 of the device process.

A real device process publishes a numbered stream through the durable SQLite
outbox and is killed with SIGKILL at random moments, then restarted with the
same outbox file. Every number whose ``publish()`` returned must reach a hub;
duplicates are allowed and must carry identical message ids.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from device_sdk.testbed import Testbed
from device_sdk.testbed.collector import merge, wait_until_seen

pytestmark = pytest.mark.integration

PROGRAM = Path(__file__).parent / "programs" / "numbered_device.py"
ROOT = Path(__file__).resolve().parents[2]
TOPIC = "test/durable"


def device_spec(
    bed: Testbed, outbox: Path, *, start: int, count: int, **more: object
) -> dict[str, object]:
    assert bed.dns is not None
    return {
        "client_id": "durable-device",
        "hubs": [{"name": h.name, "fqdn": h.fqdn, "port": h.broker.port} for h in bed.hubs],
        "dns_host": bed.dns.host,
        "dns_port": bed.dns.port,
        "outbox": str(outbox),
        "topic": TOPIC,
        "start": start,
        "count": count,
        "rate": 200,
    } | more


@contextmanager
def device(spec: dict[str, object]) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str]]]:
    """The device process, with its stdout lines on a queue; killed by PID if still running."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, str(PROGRAM), json.dumps(spec)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        yield proc, lines
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        reader.join(5)
        proc.stdout.close()


def read_until(lines: queue.Queue[str], accepted: set[int], deadline: float, stop: str) -> bool:
    """Collect ``accepted n`` lines until a line starting with ``stop`` or the deadline."""
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=remaining).strip()
        except queue.Empty:
            return False
        if line.startswith("accepted "):
            accepted.add(int(line.split()[1]))
        elif line.startswith(stop):
            return True
    return False


def test_sigkill_while_publishing_loses_nothing(testbed: Testbed, tmp_path: Path) -> None:
    collectors = [testbed.collector(hub.name, TOPIC) for hub in testbed.hubs]
    outbox = tmp_path / "outbox.sqlite"
    accepted: set[int] = set()
    rng = random.Random(7)
    for run in range(3):
        # Each run numbers from its own block: a message stored but killed before its
        # "accepted" line was printed must not share a number with the next run's.
        spec = device_spec(testbed, outbox, start=run * 100_000, count=100_000)
        with device(spec) as (proc, lines):
            assert read_until(lines, accepted, time.monotonic() + 10, "connected")
            read_until(lines, accepted, time.monotonic() + rng.uniform(0.2, 0.6), "never")
            os.kill(proc.pid, signal.SIGKILL)  # mid-stream, mid-commit, mid-flight
            proc.wait(10)
            read_until(lines, accepted, time.monotonic() + 0.2, "never")  # what was printed
        assert accepted, "the device accepted nothing before the kill"
    # A last, clean run drains what the killed runs left in the outbox.
    spec = device_spec(testbed, outbox, start=3 * 100_000, count=20)
    with device(spec) as (proc, lines):
        assert read_until(lines, accepted, time.monotonic() + 30, "drained")
        assert proc.wait(10) == 0
    wait_until_seen(collectors, accepted, timeout=10)
    seen = merge(*collectors)
    missing = sorted(accepted - set(seen))
    assert not missing, f"lost {len(missing)} of {len(accepted)} accepted messages: {missing[:20]}"
    ids: dict[int, set[str]] = {}
    for collector in collectors:
        for number, found in collector.message_ids().items():
            ids.setdefault(number, set()).update(found)
    changed = {n: found for n, found in ids.items() if len(found) > 1}
    assert not changed, f"a resend changed its message id: {list(changed.items())[:5]}"


def test_messages_accepted_while_the_hub_is_down_survive_a_kill(
    testbed: Testbed, tmp_path: Path
) -> None:
    """The outbox file is the only copy: hub down, device killed, then both come back."""
    primary = testbed.hub("primary").broker
    outbox = tmp_path / "outbox.sqlite"
    primary.stop()
    accepted: set[int] = set()
    offline = device_spec(testbed, outbox, start=0, count=50, connect_timeout=0.3)
    offline["hubs"] = offline["hubs"][:1]  # type: ignore[index]
    with device(offline) as (proc, lines):
        assert read_until(lines, accepted, time.monotonic() + 10, "done")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert accepted == set(range(50))
    primary.restart()
    collector = testbed.collector("primary", TOPIC)  # subscribed before anything is resent
    drain = device_spec(testbed, outbox, start=50, count=0)
    drain["hubs"] = drain["hubs"][:1]  # type: ignore[index]
    with device(drain) as (proc, lines):
        assert read_until(lines, accepted, time.monotonic() + 30, "drained")
        assert proc.wait(10) == 0
    assert collector.wait_for(accepted, 10), sorted(accepted - set(collector.seen()))[:20]

"""Inbound commands are acknowledged after their handler returns, so a crash re-delivers them.

A device process with a persistent session (fixed client id, session expiry) receives a
QoS 1 command and is killed with SIGKILL while its handler runs. With ``command_ack =
"after_handler"`` (the default) the command was never acknowledged, and the hub delivers
it again to the next process with that client id; with ``"on_receipt"`` it was, and the
hub does not.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from device_sdk import DeviceClient
from device_sdk.testbed import Testbed

pytestmark = pytest.mark.integration

PROGRAM = Path(__file__).parent / "programs" / "command_device.py"
ROOT = Path(__file__).resolve().parents[2]
COMMANDS = "devices/at-least-once/commands"


def device_spec(bed: Testbed, *, command_ack: str, block: bool) -> dict[str, object]:
    assert bed.dns is not None
    primary = bed.hub("primary")
    return {
        "client_id": f"commanded-{command_ack}",
        "hubs": [{"name": primary.name, "fqdn": primary.fqdn, "port": primary.broker.port}],
        "dns_host": bed.dns.host,
        "dns_port": bed.dns.port,
        "topic": COMMANDS,
        "command_ack": command_ack,
        "session_expiry": 300,
        "block": block,
    }


@contextmanager
def device(spec: dict[str, object]) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str]]]:
    """The device process, with its stdout lines on a queue; killed by PID if still running."""
    proc = subprocess.Popen(
        [sys.executable, str(PROGRAM), json.dumps(spec)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None and proc.stdin is not None
    stdout = proc.stdout
    reader = threading.Thread(target=lambda: [lines.put(line.strip()) for line in stdout])
    reader.start()
    try:
        yield proc, lines
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        reader.join(5)
        proc.stdin.close()
        stdout.close()


def read_until(lines: queue.Queue[str], wanted: str, timeout: float = 15.0) -> list[str]:
    """Every line up to and including ``wanted``; fails after ``timeout``."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            break
        seen.append(line)
        if line == wanted:
            return seen
    raise AssertionError(f"{wanted!r} not printed within {timeout} s; saw {seen}")


def command(bed: Testbed, payload: bytes) -> None:
    config = bed.client_config("commander", hubs=["primary"])
    with DeviceClient(config) as commander:
        commander.publish(COMMANDS, payload).wait(5.0)


def kill_inside_the_handler(bed: Testbed, *, command_ack: str) -> None:
    with device(device_spec(bed, command_ack=command_ack, block=True)) as (proc, lines):
        read_until(lines, "ready")
        command(bed, b"cmd-1")
        read_until(lines, "got cmd-1")  # the handler runs, and hangs
        # Let the engine loop go round: an on-receipt PUBACK, queued as the message
        # arrived, is on the wire by then; an after-handler one must still not be.
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_a_command_whose_handler_never_returned_is_delivered_again(testbed: Testbed) -> None:
    kill_inside_the_handler(testbed, command_ack="after_handler")
    with device(device_spec(testbed, command_ack="after_handler", block=False)) as (_p, lines):
        seen = read_until(lines, "got cmd-1")
    assert "got cmd-1" in seen


def test_a_command_acknowledged_on_receipt_is_not_delivered_again(testbed: Testbed) -> None:
    kill_inside_the_handler(testbed, command_ack="on_receipt")
    with device(device_spec(testbed, command_ack="on_receipt", block=False)) as (_p, lines):
        before = read_until(lines, "ready")
        command(testbed, b"cmd-2")  # the session is alive: later commands still arrive
        after = read_until(lines, "got cmd-2")
    assert "got cmd-1" not in before + after

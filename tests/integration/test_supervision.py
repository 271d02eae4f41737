"""A device never stops silently: faults are contained, counted, and visible when terminal.

Real mosquitto hubs from the testbed; the faults come from the public API a
careless application or a broken plug-in part would use: a done-callback that
raises, an event listener that raises, a custom outbox whose storage fails.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from device_sdk import (
    DeviceClient,
    EngineFailed,
    MemoryOutbox,
    RetryPolicy,
    events,
)
from device_sdk.outbox import OutboundMessage
from device_sdk.status import prometheus_text, read_status, write_status
from device_sdk.testbed import Testbed
from tests.integration.support import TOPIC, EventLog

pytestmark = pytest.mark.integration

FAST = RetryPolicy(initial=0.01, maximum=0.05)


def _engine_threads(client_id: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"device-sdk-engine-{client_id}"]


class FaultyOutbox(MemoryOutbox):
    """A plugged-in outbox whose storage fails ``faults`` times when the engine drains it."""

    def __init__(self, faults: int) -> None:
        super().__init__(max_messages=1000, max_bytes=1 << 20)
        self.faults_left = faults

    def take_unsent(self, limit: int) -> list[OutboundMessage]:
        if self.faults_left > 0 and self.depth() > 0:
            self.faults_left -= 1
            raise RuntimeError("storage went away")
        return super().take_unsent(limit)


def test_a_done_callback_that_raises_is_contained_and_counted(testbed: Testbed) -> None:
    ran_on: list[str] = []

    def careless(_handle: object) -> None:
        ran_on.append(threading.current_thread().name)
        raise ValueError("application bug")

    config = testbed.client_config("cb-raises", hubs=["primary"])
    with DeviceClient(config) as client:
        # A callback added after the PUBACK runs on the caller's thread; keep going
        # (bounded) until one runs on the engine thread, inside the PUBACK handling.
        for n in range(50):
            client.publish(TOPIC, f"{n}:x").add_done_callback(careless)
            if any(name.startswith("device-sdk-engine-") for name in ran_on):
                break
            time.sleep(0.01)
        client.publish(TOPIC, b"99:x").wait(5)  # the engine is still serving
        assert any(name == "device-sdk-engine-cb-raises" for name in ran_on), ran_on
        assert _engine_threads("cb-raises")
        assert client.healthy
        metrics = client.metrics()
    assert metrics.callback_errors >= 1
    assert metrics.internal_faults == 0


def test_an_event_listener_that_raises_is_counted(testbed: Testbed) -> None:
    def listener(_event: events.Event) -> None:
        raise RuntimeError("listener bug")

    config = testbed.client_config("listener-raises", hubs=["primary"])
    with DeviceClient(config, on_event=listener) as client:
        client.publish(TOPIC, b"1:x").wait(5)
        deadline = time.monotonic() + 5
        while client.metrics().callback_errors == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.metrics().callback_errors >= 1
        assert client.healthy


def test_one_internal_fault_restarts_the_link_and_loses_nothing(testbed: Testbed) -> None:
    log = EventLog()
    outbox = FaultyOutbox(faults=1)
    config = testbed.client_config("one-fault", hubs=["primary"], retry=FAST)
    with DeviceClient(config, on_event=log, outbox=outbox) as client:
        handle = client.publish(TOPIC, b"1:x")
        fault = log.wait_for(events.EngineFault, 5.0)
        assert isinstance(fault, events.EngineFault)
        assert not fault.terminal
        assert isinstance(fault.error, RuntimeError)
        handle.wait(5)  # sent again on the restarted link
        assert client.healthy
        assert _engine_threads("one-fault")
        metrics = client.metrics()
    assert metrics.internal_faults == 1
    assert metrics.engine_state == "running"
    assert client.metrics().engine_state == "closed"
    assert not client.healthy
    assert log.of(events.Disconnected), "the restart drops the link"


def test_repeated_internal_faults_stop_the_engine_visibly(testbed: Testbed, tmp_path: Path) -> None:
    log = EventLog()
    config = testbed.client_config("many-faults", hubs=["primary"], retry=FAST)
    client = DeviceClient(config, on_event=log, outbox=FaultyOutbox(faults=1_000_000))
    try:
        client.connect(5)
        pending = client.publish(TOPIC, b"1:x")
        final = log.wait_for(events.EngineFault, 10.0, terminal=True)
        assert isinstance(final, events.EngineFault) and final.faults == 5
        deadline = time.monotonic() + 5
        while client.healthy and time.monotonic() < deadline:
            time.sleep(0.01)
        # Terminal and visible everywhere a user or a supervisor looks.
        assert not client.healthy
        assert isinstance(client.failure, EngineFailed)
        with pytest.raises(EngineFailed, match="5 internal faults"):
            pending.wait(1)
        with pytest.raises(EngineFailed):
            client.publish(TOPIC, b"2:x")
        with pytest.raises(EngineFailed):
            client.connect(1)
        metrics = client.metrics()
        assert metrics.engine_state == "failed"
        assert metrics.internal_faults == 5
        assert "device_sdk_engine_failed 1" in prometheus_text(metrics)
        write_status(tmp_path / "status.json", metrics)
        assert read_status(tmp_path / "status.json").metrics.engine_state == "failed"
        raw = json.loads((tmp_path / "status.json").read_text())
        assert raw["metrics"]["engine_state"] == "failed"
        assert not _engine_threads("many-faults")
    finally:
        client.close()
    assert client.metrics().engine_state == "failed"  # close() does not hide it


def test_a_custom_resolver_that_raises_untyped_is_contained(testbed: Testbed) -> None:
    class BrokenResolver:
        calls = 0

        def resolve_fresh(self, fqdn: str) -> object:
            BrokenResolver.calls += 1
            raise KeyError(fqdn)

    log = EventLog()
    config = testbed.client_config("bad-resolver", hubs=["primary"], retry=FAST)
    client = DeviceClient(config, on_event=log, resolver=BrokenResolver())  # type: ignore[arg-type]
    try:
        client._engine.start()
        log.wait_for(events.EngineFault, 10.0, terminal=True)
        assert isinstance(client.failure, EngineFailed)
        assert BrokenResolver.calls == 5  # backed off between tries; then it stopped
    finally:
        client.close()


def test_a_side_task_that_raises_reaches_the_engine_boundary() -> None:
    from device_sdk.engine.side_tasks import SideTasks

    posted: list[object] = []
    side = SideTasks(posted.append, "test")

    def broken() -> int:
        raise LookupError("a bug in a probe")

    assert side.start("probe", broken, lambda _result: None)
    side.join(5)
    (fault,) = posted
    with pytest.raises(LookupError, match="a bug in a probe"):
        fault()  # type: ignore[operator]  # what the engine thread runs from its mailbox

"""Helpers shared by the integration tests: an event log, a steady publisher, loss checks."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress

from device_sdk import DeviceClient, events
from device_sdk.outbox import PublishHandle
from device_sdk.testbed import Testbed
from device_sdk.testbed.collector import Collector, merge, wait_until_seen

TOPIC = "test/telemetry"


class EventLog:
    """Thread-safe record of the events a client emitted."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self.items: list[events.Event] = []

    def __call__(self, event: events.Event) -> None:
        with self._lock:
            self.items.append(event)
            self._lock.notify_all()

    def of(self, kind: type[events.Event]) -> list[events.Event]:
        with self._lock:
            return [e for e in self.items if isinstance(e, kind)]

    def wait_for(
        self, kind: type[events.Event], timeout: float, *, after: float = 0.0, **match: object
    ) -> events.Event:
        """The first ``kind`` event at or after ``after`` whose fields equal ``match``."""

        def found() -> events.Event | None:
            for event in self.items:
                if event.at < after or not isinstance(event, kind):
                    continue
                if all(getattr(event, k) == v for k, v in match.items()):
                    return event
            return None

        with self._lock:
            assert self._lock.wait_for(lambda: found() is not None, timeout), (
                f"no {kind.__name__} {match} within {timeout} s; saw {self.items}"
            )
            event = found()
            assert event is not None
            return event


class SteadyPublisher:
    """Publishes ``<seq>:x`` at ``rate`` per second from its own thread (bounded count)."""

    def __init__(self, client: DeviceClient, rate: float = 50.0, limit: int = 2000) -> None:
        self.client, self.period, self.limit = client, 1.0 / rate, limit
        self.handles: list[PublishHandle] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period) and len(self.handles) < self.limit:
            self.handles.append(self.client.publish(TOPIC, f"{len(self.handles)}:x"))

    @contextmanager
    def running(self) -> Iterator[SteadyPublisher]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(5)

    def wait_all_acked(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        for handle in self.handles:
            handle.wait(max(0.0, deadline - time.monotonic()))


def assert_nothing_lost(publisher: SteadyPublisher, *collectors: Collector) -> None:
    publisher.wait_all_acked()
    expected = set(range(len(publisher.handles)))
    wait_until_seen(collectors, expected, timeout=5.0)
    missing = sorted(expected - set(merge(*collectors)))
    assert not missing, f"lost {len(missing)} of {len(expected)}: {missing[:20]}"
    assert len(expected) > 20, "the publisher barely ran; the test proves nothing"


@contextmanager
def mute_listener() -> Iterator[int]:
    """A loopback port that accepts TCP connections (the kernel does) and never sends a byte."""
    with socket.create_server(("127.0.0.1", 0), backlog=8) as server:
        yield server.getsockname()[1]


@contextmanager
def blackholed_port(host: str) -> Iterator[int]:
    """A port on ``host`` whose SYNs vanish: a listener whose accept queue is full."""
    with ExitStack() as stack:
        server = stack.enter_context(socket.create_server((host, 0), backlog=0))
        port = server.getsockname()[1]
        for _ in range(8):  # fill the accept queue (bounded): later SYNs are dropped
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            with suppress(BlockingIOError):
                filler.connect((host, port))
        time.sleep(0.05)
        yield port


def collectors_for(bed: Testbed) -> list[Collector]:
    return [bed.collector(hub.name, TOPIC) for hub in bed.hubs]

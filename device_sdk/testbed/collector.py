"""An independent observer: counts what actually reached a hub.

The collector subscribes on one broker with plain paho-mqtt, deliberately not
through device_sdk, so a bug in the SDK cannot hide itself from the tests that
judge it. Payloads it understands are ``<seq>`` or ``<seq>:<anything>``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from device_sdk.errors import TestbedError


class Collector:
    """Subscribes to ``topic`` on one broker and records every sequence number seen."""

    def __init__(
        self,
        host: str,
        port: int,
        topic: str,
        *,
        name: str = "collector",
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.host, self.port, self.topic = host, port, topic
        self._lock = threading.Condition()
        self._seen: Counter[int] = Counter()
        self._ids: dict[int, set[str]] = {}
        self._ready = threading.Event()
        self._client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"{name}-{host}-{port}",
            protocol=paho.MQTTv5,
        )
        if username is not None:  # a broker started with ``users`` admits only those
            self._client.username_pw_set(username, password)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def start(self, timeout: float = 5.0) -> Collector:
        try:
            self._client.connect(self.host, self.port, keepalive=5)
        except OSError as exc:
            raise TestbedError(f"collector could not reach {self.host}:{self.port}") from exc
        self._client.loop_start()
        if not self._ready.wait(timeout):
            self.stop()
            raise TestbedError(f"collector on {self.host}:{self.port} not subscribed in time")
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def seen(self) -> Counter[int]:
        with self._lock:
            return Counter(self._seen)

    def message_ids(self) -> dict[int, set[str]]:
        """Sequence number -> the ``message-id`` user properties it arrived with (MQTT 5)."""
        with self._lock:
            return {seq: set(ids) for seq, ids in self._ids.items()}

    def wait_for(self, numbers: set[int], timeout: float) -> bool:
        """Wait (bounded) until every number in ``numbers`` was seen."""
        with self._lock:
            return self._lock.wait_for(lambda: numbers.issubset(self._seen), timeout)

    def _on_connect(
        self, client: paho.Client, _u: object, _f: object, rc: object, _p: object
    ) -> None:
        client.subscribe(self.topic, qos=1)

    def _on_subscribe(self, *_args: object) -> None:
        self._ready.set()

    def _on_message(self, _client: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        head = bytes(message.payload).split(b":", 1)[0]
        if not head.isdigit():
            return
        pairs = getattr(message.properties, "UserProperty", None) or ()
        ids = {value for key, value in pairs if key == "message-id"}
        with self._lock:
            self._seen[int(head)] += 1
            self._ids.setdefault(int(head), set()).update(ids)
            self._lock.notify_all()


def merge(*collectors: Collector) -> Counter[int]:
    """Every sequence number seen by any of the collectors, with total counts."""
    total: Counter[int] = Counter()
    for collector in collectors:
        total.update(collector.seen())
    return total


def wait_until_seen(
    collectors: Sequence[Collector], numbers: Iterable[int], timeout: float
) -> bool:
    """Wait (bounded) until every number was seen by one collector or another.

    A hub acknowledges a message to the publisher and delivers it to its
    subscribers independently; after the last PUBACK, the last deliveries may
    still be on their way. Counting before they land would report a loss that
    is not one.
    """
    wanted = set(numbers)
    deadline = time.monotonic() + timeout
    while not wanted <= set(merge(*collectors)):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True

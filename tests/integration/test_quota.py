"""A hub over its quota (PUBACK 0x97) is backed off from; the message is republished, not dropped.

mosquitto never answers a PUBLISH with 0x97 Quota exceeded, but cloud hubs do
when a device publishes faster than its plan allows. So this test speaks to a
small MQTT 5 hub of its own on loopback: it accepts connections, refuses the
first PUBLISH of one payload with 0x97 and acknowledges everything else, and
records what it acknowledged, in order. Every loop is bounded; the hub's
thread and sockets are closed at the end.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from device_sdk import ClientConfig, DeviceClient, HubBusy, HubEndpoint, RetryPolicy, events
from device_sdk.testbed import FAST_FAILOVER, FAST_LIVENESS, FAST_RETRY
from tests.integration.support import EventLog

pytestmark = pytest.mark.integration

_CONNACK = bytes([0x20, 0x03, 0x00, 0x00, 0x00])  # MQTT 5: no session, success, no properties
_PINGRESP = bytes([0xD0, 0x00])


class QuotaHub:
    """An MQTT 5 hub that answers PUBACK 0x97 to the first PUBLISH of ``refuse_once``,
    the first CONNECTs with the CONNACK reason codes in ``refuse_connects``, and drops the
    next sessions, right after their CONNACK, with the DISCONNECT codes in ``drop_with``."""

    def __init__(
        self,
        refuse_once: bytes,
        refuse_connects: tuple[int, ...] = (),
        drop_with: tuple[int, ...] = (),
    ) -> None:
        self._refuse = refuse_once
        self._refuse_connects = list(refuse_connects)
        self._drop_with = list(drop_with)
        self._refused = False
        self.acknowledged: list[bytes] = []  # payloads, in the order they were acknowledged
        self.connections = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.port = self._server.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="quota-hub", daemon=True)

    def __enter__(self) -> QuotaHub:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._server.close()

    def _serve(self) -> None:
        while not self._stop.is_set():  # one connection at a time, as a device makes them
            try:
                conn, _peer = self._server.accept()
            except TimeoutError:
                continue
            self.connections += 1
            with conn:
                conn.settimeout(0.2)
                self._session(conn)

    def _session(self, conn: socket.socket) -> None:
        for header, body in _packets(conn, self._stop):
            kind = header & 0xF0
            if kind == 0x10 and self._refuse_connects:  # CONNECT, refused
                conn.sendall(bytes([0x20, 0x03, 0x00, self._refuse_connects.pop(0), 0x00]))
                return
            if kind == 0x10 and self._drop_with:  # CONNECT, accepted, then dropped
                conn.sendall(_CONNACK + bytes([0xE0, 0x01, self._drop_with.pop(0)]))
                return
            if kind == 0x10:  # CONNECT
                conn.sendall(_CONNACK)
            elif kind == 0xC0:  # PINGREQ
                conn.sendall(_PINGRESP)
            elif kind == 0xE0:  # DISCONNECT
                return
            elif kind == 0x30:  # PUBLISH, QoS 1 (the device sends nothing else)
                mid, payload = _parse_publish(body)
                if payload == self._refuse and not self._refused:
                    self._refused = True
                    conn.sendall(bytes([0x40, 0x04, *mid, 0x97, 0x00]))
                else:
                    self.acknowledged.append(payload)
                    conn.sendall(bytes([0x40, 0x02, *mid]))


def _packets(conn: socket.socket, stop: threading.Event) -> Iterator[tuple[int, bytes]]:
    """MQTT packets from ``conn`` until it closes or ``stop`` is set (bounded by 30 s)."""
    buffer = b""
    deadline = time.monotonic() + 30
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            chunk = conn.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return
        if not chunk:
            return
        buffer += chunk
        while (packet := _split(buffer)) is not None:
            header, body, buffer = packet
            yield header, body


def _split(buffer: bytes) -> tuple[int, bytes, bytes] | None:
    """One whole packet off the front of ``buffer``, or None when it is incomplete."""
    length, multiplier, index = 0, 1, 1
    while True:
        if index >= len(buffer) or index > 4:
            return None
        byte = buffer[index]
        length += (byte & 0x7F) * multiplier
        multiplier *= 128
        index += 1
        if not byte & 0x80:
            break
    end = index + length
    if len(buffer) < end:
        return None
    return buffer[0], buffer[index:end], buffer[end:]


def _parse_publish(body: bytes) -> tuple[bytes, bytes]:
    """(packet id, payload) of an MQTT 5 QoS 1 PUBLISH body."""
    topic_length = int.from_bytes(body[:2], "big")
    at = 2 + topic_length
    mid = body[at : at + 2]
    at += 2
    properties, multiplier = 0, 1
    while True:  # the property length, a variable byte integer
        byte = body[at]
        at += 1
        properties += (byte & 0x7F) * multiplier
        multiplier *= 128
        if not byte & 0x80:
            break
    return mid, body[at + properties :]


# The busy tests: every busy wait drawn from [0, 3 s], where the test schedule's are tiny.
BUSY_RETRY = dataclasses.replace(FAST_RETRY, busy_initial=3.0, maximum=3.0)


def _config(client_id: str, port: int, retry: RetryPolicy = FAST_RETRY) -> ClientConfig:
    hub = HubEndpoint(name="hub", fqdn="127.0.0.1", port=port, tls=None)
    return ClientConfig(
        client_id=client_id,
        hubs=(hub,),
        retry=retry,
        failover=FAST_FAILOVER,
        liveness=FAST_LIVENESS,
    )


def test_a_hub_over_quota_is_backed_off_from_and_nothing_is_dropped() -> None:
    log = EventLog()
    with QuotaHub(refuse_once=b"1") as hub:
        config = _config("quota-device", hub.port)
        with DeviceClient(config, on_event=log) as client:
            for payload in ("0", "1", "2"):  # one at a time: the order is the hub's to keep
                client.publish("telemetry", payload).wait(10)
            metrics = client.metrics()
    assert hub.acknowledged == [b"0", b"1", b"2"]
    assert hub.connections == 2  # left after the refusal, came back, republished
    assert (metrics.rejected, metrics.acknowledged, metrics.queue_depth) == (0, 3, 0)
    (lost,) = log.of(events.Disconnected)
    assert "over quota" in str(lost.error) and "nothing was dropped" in str(lost.error)  # type: ignore[attr-defined]
    assert not log.of(events.MessageRejected)


def test_a_busy_hub_is_retried_over_the_busy_window_and_nothing_is_lost() -> None:
    # CONNACK 0x9F (connection rate exceeded), 0x89 (server busy), 0x97 (quota exceeded),
    # then accepted: every refusal is typed HubBusy, and the retries after them wait over
    # the busy window (uniform up to busy_initial, capped at maximum: 3 s each), not the
    # test schedule (up to 0.05 s, 0.1 s, 0.2 s: 0.35 s at the most for all three).
    log = EventLog()
    with QuotaHub(refuse_once=b"", refuse_connects=(0x9F, 0x89, 0x97)) as hub:
        config = _config("busy-device", hub.port, BUSY_RETRY)
        started = time.monotonic()
        with DeviceClient(config, on_event=log) as client:
            client.publish("telemetry", "0").wait(10)
            metrics = client.metrics()
        assert hub.connections == 4
    refusals = [e.error for e in log.of(events.AttemptFailed)]  # type: ignore[attr-defined]
    assert [type(e) for e in refusals] == [HubBusy, HubBusy, HubBusy]
    assert [e.reason_code for e in refusals] == [0x9F, 0x89, 0x97]
    assert "connection rate exceeded" in str(refusals[0]).lower()
    assert hub.acknowledged == [b"0"]
    assert (metrics.acknowledged, metrics.queue_depth) == (1, 0)
    (connected,) = log.of(events.Connected)
    waited = connected.at - log.of(events.AttemptFailed)[0].at
    # Three draws from [0, 3 s] sum below 0.36 s once in 3 500 runs, and the test
    # schedule cannot reach it; nor can they pass 9 s, plus the dials.
    assert 0.36 < waited < 11, waited
    assert time.monotonic() - started < 15


def test_a_hub_that_drops_the_link_saying_busy_is_not_redialled_at_once() -> None:
    # Three sessions end with the hub's DISCONNECT 0x89 (server busy), 0x9F (connection
    # rate exceeded) and 0x97 (quota exceeded), right after their CONNACK: a hub shedding
    # load. Each redial waits over the busy window (up to 3 s here), not at once and then
    # the test schedule (0.05 s, 0.1 s: well under 0.36 s for all three).
    log = EventLog()
    with QuotaHub(refuse_once=b"", drop_with=(0x89, 0x9F, 0x97)) as hub:
        config = _config("shed-device", hub.port, BUSY_RETRY)
        with DeviceClient(config, on_event=log) as client:
            client.publish("telemetry", "0").wait(15)  # acknowledged by the fourth session
        assert hub.connections == 4
    dropped = log.of(events.Disconnected)
    assert len(dropped) == 3, dropped
    for error, reason in zip(
        (e.error for e in dropped),  # type: ignore[attr-defined]
        ("server busy", "connection rate exceeded", "quota exceeded"),
        strict=True,
    ):
        assert reason in str(error).lower(), error
    last = log.of(events.Connected)[-1]
    waited = last.at - dropped[0].at
    # Three draws from [0, 3 s] sum below 0.36 s once in 3 500 runs.
    assert 0.36 < waited < 11, waited
    assert hub.acknowledged == [b"0"]

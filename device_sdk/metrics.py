"""The metrics snapshot: counters a gateway reports to its fleet monitoring."""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class Metrics:
    """A consistent copy of the client's counters at one moment."""

    attempts: int = 0
    connects: int = 0
    disconnects: int = 0
    failovers: int = 0
    failbacks: int = 0
    dns_queries: int = 0
    concierge_updates: int = 0
    concierge_rejections: int = 0
    published: int = 0
    acknowledged: int = 0
    rejected: int = 0  # refused by the hub in a PUBACK (MQTT 5 reason code >= 0x80)
    undeliverable: int = 0  # a hub could never take them (too large, QoS, poison): left
    expired: int = 0  # their TTL passed before a hub acknowledged them: left the outbox
    protocol_errors: int = 0  # links dropped because the hub broke MQTT
    callback_errors: int = 0  # application callbacks that raised (contained, logged)
    internal_faults: int = 0  # faults of device_sdk's own code on the engine thread
    credential_renewals: int = 0  # links replaced, make before break, with a fresh identity
    # Connects on a way in other than the hub's first (8883 blocked: wss:443 took over).
    transport_fallbacks: int = 0
    # Links replaced, make before break, to return to the hub's first way in.
    transport_returns: int = 0
    # "running", "failed" (terminal: EngineFailed or the retry policy gave up) or "closed".
    engine_state: str = "running"
    queue_depth: int = 0
    dropped: int = 0
    current_hub: str | None = None
    current_transport: str | None = None  # the way in of the current link: "wss:443/mqtt"
    # From losing a link to the first PUBACK on the next one, for the last outage.
    last_recovery_seconds: float | None = None
    # From losing a link to the CONNACK of the next one, for the last outage.
    last_reconnect_seconds: float | None = None
    ack_deadline_seconds: float | None = None


class MetricsRecorder:
    """Thread-safe counters the engine bumps; ``snapshot()`` copies them for readers.

    Why a dict and not the frozen Metrics value: ``add`` runs on every publish and
    every PUBACK, and rebuilding a dataclass each time was a measurable share of
    the hot path. The value object is built only when someone reads it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, object] = {f.name: f.default for f in dataclasses.fields(Metrics)}
        self._acknowledged = 0

    def acknowledged(self) -> None:
        """One more PUBACK. Engine thread only: its single writer needs no lock."""
        self._acknowledged += 1

    def add(self, **increments: int) -> None:
        with self._lock:
            values = self._values
            for name, amount in increments.items():
                values[name] = values[name] + amount  # type: ignore[operator]

    def set(self, **values: object) -> None:
        with self._lock:
            self._values.update(values)

    def snapshot(self, *, queue_depth: int, dropped: int) -> Metrics:
        with self._lock:
            values = dict(self._values, queue_depth=queue_depth, dropped=dropped)
        values["acknowledged"] = self._acknowledged
        return Metrics(**values)  # type: ignore[arg-type]

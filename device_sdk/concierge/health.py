"""The concierge's health probe: does the active hub accept an MQTT connection right now?

A DNS traffic manager polls ``/healthz`` and routes devices away from a region
whose concierge says its hub is down. A TCP connect alone would call a broker
healthy that accepts sockets but refuses sessions, so the probe does a real
MQTT CONNECT and waits for a successful CONNACK, through the same paho adapter
and fresh DNS resolution that devices use.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from device_sdk.adapters.paho_link import LinkSettings, PahoLink
from device_sdk.adapters.resolver import FreshResolver, Resolver
from device_sdk.concierge.document import DocumentHub
from device_sdk.config import Credentials, DnsSettings, TlsSettings
from device_sdk.errors import ConfigError, ConnectError

__all__ = ["HealthChecker", "HealthProbeSettings", "HealthStatus"]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthProbeSettings:
    """How ``/healthz`` checks the active hub: a real MQTT CONNECT within ``timeout``.

    The hub's FQDN is resolved fresh with ``dns``, like devices do. The probe uses
    its own client id, so it never takes over a device's session. A result is
    reused for ``cache_seconds``, so a flood of probes cannot hammer the hub.
    """

    dns: DnsSettings = field(default_factory=DnsSettings)
    timeout: float = 2.0
    client_id: str = "concierge-health-probe"
    ca_file: str | None = None
    credentials: Credentials | None = None
    mqtt_version: Literal["3.1.1", "5"] = "5"
    cache_seconds: float = 1.0

    def __post_init__(self) -> None:
        if not _is_number(self.timeout) or self.timeout <= 0:
            raise ConfigError("health.timeout", self.timeout, "a number of seconds > 0")
        if not _is_number(self.cache_seconds) or self.cache_seconds < 0:
            raise ConfigError("health.cache_seconds", self.cache_seconds, "seconds >= 0")
        if not isinstance(self.client_id, str) or not 1 <= len(self.client_id) <= 128:
            raise ConfigError("health.client_id", self.client_id, "1 to 128 characters")
        if self.mqtt_version not in ("3.1.1", "5"):
            raise ConfigError("health.mqtt_version", self.mqtt_version, "'3.1.1' or '5'")


@dataclass(frozen=True, slots=True)
class HealthStatus:
    """One health verdict on the active hub, as ``/healthz`` reports it."""

    healthy: bool
    hub: str
    detail: str
    checked_at: float

    def as_json(self) -> dict[str, object]:
        return {"healthy": self.healthy, "hub": self.hub, "detail": self.detail}


class HealthChecker:
    """Does the active hub accept an MQTT connection right now? Cached, serialised."""

    def __init__(
        self,
        settings: HealthProbeSettings,
        *,
        resolver: Resolver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._resolver = resolver if resolver is not None else FreshResolver(settings.dns)
        self._clock = clock
        # One probe at a time: concurrent health requests wait and share its result.
        self._lock = threading.Lock()
        self._last: HealthStatus | None = None

    def check(self, name: str, hub: DocumentHub) -> HealthStatus:
        with self._lock:
            last = self._last
            fresh = (
                last is not None and self._clock() - last.checked_at < self._settings.cache_seconds
            )
            if last is not None and fresh and last.hub == name:
                return last
            self._last = self._probe(name, hub)
            return self._last

    def _fresh(self, status: HealthStatus) -> bool:
        return self._clock() - status.checked_at < self._settings.cache_seconds

    def _probe(self, name: str, hub: DocumentHub) -> HealthStatus:
        deadline = time.monotonic() + self._settings.timeout
        try:
            addresses = self._resolver.resolve_fresh(hub.fqdn).addresses
        except ConnectError as exc:  # a ResolveError
            return self._status(False, name, f"DNS: {exc}")
        failures: list[str] = []
        for address in addresses:
            if time.monotonic() >= deadline:
                failures.append("out of time")
                break
            try:
                self._connect_once(name, hub, address, deadline)
            except (ConnectError, OSError) as exc:
                failures.append(f"{address}: {exc}")
                continue
            return self._status(True, name, f"CONNACK from {hub.fqdn} at {address}")
        return self._status(False, name, "; ".join(failures) or "no address")

    def _connect_once(self, name: str, hub: DocumentHub, address: str, deadline: float) -> None:
        settings = self._settings
        endpoint = hub.endpoint(name, tls=TlsSettings(ca_file=settings.ca_file))
        link = PahoLink(
            endpoint,
            address,
            LinkSettings(
                client_id=settings.client_id,
                mqtt_version=settings.mqtt_version,
                keepalive=60.0,
                connect_timeout=max(0.001, deadline - time.monotonic()),
                inflight_window=1,
                credentials=settings.credentials,
            ),
        )
        link.open(deadline)
        link.disconnect()

    def _status(self, healthy: bool, name: str, detail: str) -> HealthStatus:
        return HealthStatus(healthy, name, detail, self._clock())

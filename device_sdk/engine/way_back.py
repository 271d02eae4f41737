"""Back to the first way in: a link that fell back (to wss:443) returns when 8883 opens.

The connect race puts a hub's ways in side by side; when its first one (say
``mqtts:8883``) is blocked, the link opens on a later one and the dialer
remembers that as a preference. This probes the first way in the background,
like a failback probe (TCP and a verified TLS handshake, never a second MQTT
session), every ``failback_probe_interval`` spread by +-50 %. When it answers,
the engine replaces the link make before break (as for a credential renewal):
nothing in flight is lost and no backoff is taken.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from device_sdk.adapters.cancel import CancelToken
from device_sdk.adapters.probe import way_answers
from device_sdk.adapters.resolver import Resolver
from device_sdk.config import ClientConfig, HubEndpoint
from device_sdk.engine.hub_sources import next_probe_at
from device_sdk.engine.side_tasks import SideTasks
from device_sdk.errors import ConnectError
from device_sdk.transports import Transport

OnFirstWayOpen = Callable[[str, Transport], None]


class WayBack:
    """When and how to probe the first way in of the hub the link is on."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        side: SideTasks,
        resolver: Resolver,
        rng: random.Random,
        cancel: CancelToken,
        on_open: OnFirstWayOpen,
    ) -> None:
        self._config = config
        self._side = side
        self._resolver = resolver
        self._rng = rng
        self._cancel = cancel
        self._on_open = on_open
        self._hub: HubEndpoint | None = None  # on a fallback way: the hub it belongs to
        self._next_at = math.inf

    def connected(self, hub: HubEndpoint, way: Transport, now: float) -> None:
        """A link is up on ``way``: probe the hub's first way from about an interval on,
        unless that is the way the link is on."""
        if way == hub.ways_in[0]:
            self._hub, self._next_at = None, math.inf
            return
        self._hub = hub
        self._next_at = next_probe_at(now, self._config.failback_probe_interval, self._rng)

    def disconnected(self) -> None:
        self._hub, self._next_at = None, math.inf

    def next_due(self) -> float:
        return self._next_at

    def tick(self, now: float) -> None:
        hub = self._hub
        if hub is None or now < self._next_at:
            return
        self._next_at = next_probe_at(now, self._config.failback_probe_interval, self._rng)
        first = hub.ways_in[0]
        timeout = self._config.liveness.connect_timeout
        resolver, cancel, proxy = self._resolver, self._cancel, self._config.proxy

        def probe() -> bool:
            try:
                return way_answers(hub, first, resolver, timeout, cancel, proxy=proxy)
            except ConnectError:  # Cancelled: the client is closing
                return False

        self._side.start("way-back", probe, lambda open_: self._answered(hub, first, open_))

    def _answered(self, hub: HubEndpoint, first: Transport, open_: bool) -> None:
        if open_ and self._hub is hub:
            self._hub, self._next_at = None, math.inf  # the replacement link re-arms it
            self._on_open(hub.name, first)

"""The device's side of DPS: ask, keep the answer, and turn it into a hub.

:class:`DpsSource` runs one provisioning (``register`` then polls) and keeps
what DPS assigned on disk. It never raises anything but a
:class:`~device_sdk.errors.ProvisioningError` (or ``Cancelled`` when the client
closes), so the engine can always carry on with the hub it had.

The pure parts are here too: :func:`provisioning_delay` (full-jitter backoff
between runs: DPS throttles fleets, and devices that lost the same hub at the
same moment must not re-register in step) and :func:`hub_for` (an assignment
as a :class:`~device_sdk.config.HubEndpoint` the failover machine can take).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Collection

from device_sdk.adapters.cancel import NEVER, CancelToken
from device_sdk.adapters.dps_http import ProvisioningThrottled, register
from device_sdk.adapters.resolver import Resolver
from device_sdk.concierge.trust import hub_allowed
from device_sdk.config import HubEndpoint
from device_sdk.errors import ProvisioningError, ProvisioningFailed
from device_sdk.provisioning.assignment import Assignment, AssignmentStore
from device_sdk.provisioning.settings import DpsSettings
from device_sdk.transports import ProxySettings

__all__ = ["DpsSource", "hub_for", "provisioning_delay"]

log = logging.getLogger("device_sdk")

_MAX_NAME = 63  # HubEndpoint.name's limit
_MAX_EXPONENT = 62  # 2**62 * any initial is far past any cap; avoids float overflow


class DpsSource:
    """Asks DPS once per :meth:`provision`; keeps the assignment at ``settings.state_path``.

    Thread-safe: a run holds no state but the file, which is replaced atomically.
    ``resolver`` resolves the DPS host within the run's deadline; ``proxy``, the
    client's HTTP CONNECT proxy, carries the run.
    """

    def __init__(
        self,
        settings: DpsSettings,
        *,
        resolver: Resolver | None = None,
        cancel: CancelToken = NEVER,
        proxy: ProxySettings | None = None,
    ) -> None:
        self.settings = settings
        self._resolver = resolver
        self._cancel = cancel
        self._proxy = proxy
        self._store = AssignmentStore(settings.state_path) if settings.state_path else None

    def kept(self) -> Assignment | None:
        """The assignment kept from an earlier run, if any (a damaged file is logged, None)."""
        kept = self._store.load() if self._store is not None else None
        if kept is not None and not hub_allowed(self.settings.allowed_hubs, kept.hub_fqdn):
            log.warning(
                "ignoring the kept DPS assignment to %s: outside dps.allowed_hubs", kept.hub_fqdn
            )
            return None
        return kept

    def provision(self, *, delay: float = 0.0) -> Assignment:
        """Wait ``delay`` (cut short on close), then one run within ``settings.timeout``.

        The answer is kept before it is returned. Raises ProvisioningError or Cancelled.
        """
        if delay > 0 and self._cancel.wait(delay):
            self._cancel.check("provisioning")
        deadline = time.monotonic() + self.settings.timeout
        assignment = register(
            self.settings,
            deadline=deadline,
            cancel=self._cancel,
            resolver=self._resolver,
            proxy=self._proxy,
        )
        if not hub_allowed(self.settings.allowed_hubs, assignment.hub_fqdn):
            raise ProvisioningFailed(
                f"DPS assigned {assignment.hub_fqdn}, outside dps.allowed_hubs "
                f"{list(self.settings.allowed_hubs)}"
            )
        self._keep(assignment)
        return assignment

    def _keep(self, assignment: Assignment) -> None:
        if self._store is None:
            return
        try:
            self._store.save(assignment)
        except OSError as exc:
            # Used all the same: the device belongs there now. Not keeping it costs one
            # registration at the next boot, not the connection.
            log.warning(
                "DPS assignment could not be kept at %s (%s); it is used but not kept",
                self._store.path,
                exc.strerror or type(exc).__name__,
            )


def provisioning_delay(
    failures: int, settings: DpsSettings, rng: random.Random, error: ProvisioningError | None = None
) -> float:
    """How long to wait before the next run after ``failures`` fruitless runs in a row.

    None yet: at once. Then full jitter: uniform in ``[0, min(cap, initial * 2**(n-1))]``,
    and never less than a throttling DPS asked for (Retry-After).
    """
    if failures <= 0:
        return 0.0
    exponent = min(failures - 1, _MAX_EXPONENT)
    ceiling = min(settings.backoff_cap, settings.backoff_initial * 2.0**exponent)
    delay = rng.uniform(0.0, ceiling)
    if isinstance(error, ProvisioningThrottled) and error.retry_after is not None:
        delay = max(delay, error.retry_after)
    return delay


def hub_for(assignment: Assignment, settings: DpsSettings, taken: Collection[str]) -> HubEndpoint:
    """The assigned hub as a HubEndpoint: ``dps-<first label>``, or ``dps2-...`` and so on
    when another hub has that name; the DPS settings' hub port and TLS; DPS's device id
    as its MQTT client id."""
    label = assignment.hub_fqdn.split(".", 1)[0]
    name = ""
    for number in range(1, len(taken) + 2):  # one of these is always free
        prefix = "dps-" if number == 1 else f"dps{number}-"
        name = prefix + label[: _MAX_NAME - len(prefix)]
        if name not in taken:
            break
    return HubEndpoint(
        name=name,
        fqdn=assignment.hub_fqdn,
        port=settings.hub_port,
        tls=settings.hub_tls,
        client_id=assignment.device_id,
        transports=settings.hub_transports,
    )

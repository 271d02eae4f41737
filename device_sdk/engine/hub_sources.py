"""The engine's side inputs: the hub list, the hub the concierge names, whether home is back.

The failover machine decides where to connect; these sources only ask and
report. A concierge document names the active hub (``ConciergeNamed``) and may
change the hub list, as may DNS SRV records (``HubsChanged``); a failback probe
says whether the home hub answers again (``ProbeResult``). A concierge fetch or
a probe can block for its whole timeout, so both run as side tasks off the
engine thread, and their answers come back through the engine's mailbox. An SRV
lookup is part of an attempt (asked fresh before each one) and runs inline.

DPS (``config.dps``) names the hub the device belongs to, much as a concierge
names the active one. At the engine's start (its first :meth:`HubSources.ask_concierge`),
a kept assignment is used at once; with none, the device provisions *on the
engine thread, before its first MQTT attempt* (bounded by ``dps.timeout``, cut
short by close()), because the configured hubs are often only a placeholder for
a DPS device. If that run fails, the first attempt goes to the configured hubs
and DPS is asked again off the engine thread, with jittered backoff, until it
answers. Later runs (the machine failed over away from the assigned hub, or the
hub refused a fresh identity: the device may belong elsewhere now) always run
as side tasks. An assigned hub joins the list as ``dps-<first label>`` after the
configured hubs and is named to the machine like a concierge's active hub
(``ConciergeNamed``); a previously assigned hub leaves the list once the device
is connected elsewhere. A DPS device's configured ``hubs`` may be a placeholder
(any HubEndpoint, e.g. ``HubEndpoint(name="unprovisioned", fqdn="unprovisioned.invalid")``)
or a real fallback hub.

Engine thread only: every method is called from the engine thread, and the
``follow`` callback feeds the machine there. So nothing a concierge document
or an SRV answer holds may raise here: a document that would not make a valid
hub set is refused where it becomes hubs (:func:`~device_sdk.concierge.source.map_document`)
and reported as a ``ConciergeProblem``; an SRV answer that cannot be used is
logged; either way the device carries on with its last hub list.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from device_sdk import events
from device_sdk.adapters.cancel import NEVER, Cancelled, CancelToken
from device_sdk.adapters.probe import hub_answers
from device_sdk.adapters.resolver import FreshResolver, Resolver
from device_sdk.adapters.srv import discover_hubs
from device_sdk.config import ClientConfig, HubEndpoint
from device_sdk.core import failover as fsm
from device_sdk.engine.side_tasks import SideTasks
from device_sdk.errors import (
    ConciergeError,
    ConnectError,
    DeviceSDKError,
    DocumentRejected,
    ProvisioningError,
)
from device_sdk.metrics import MetricsRecorder
from device_sdk.transports import ProxySettings

if TYPE_CHECKING:
    # A concierge (its signatures need cryptography) and DPS (HTTP, the SAS signer) are
    # loaded by the configurations that use them, not by every client.
    from device_sdk.concierge.source import ConciergeAnswer, ConciergeSource
    from device_sdk.provisioning.assignment import Assignment
    from device_sdk.provisioning.source import DpsSource

log = logging.getLogger("device_sdk")

# Failback probes are spread over +-50 % of their interval. Why: devices that
# failed over together (every device of a hub that crashed) would otherwise
# probe home in the same instant every interval, and all move back in the same
# moment once home answers: a stampede on the hub that just recovered
# (measured by benchmarks/fleet.py).
PROBE_JITTER = 0.5


def next_probe_at(now: float, interval: float, rng: random.Random) -> float:
    """When to probe home next: ``interval`` from ``now``, spread by +-PROBE_JITTER of it."""
    return now + interval * (1 + rng.uniform(-PROBE_JITTER, PROBE_JITTER))


Emit = Callable[[events.Event], None]
Follow = Callable[[fsm.Input], None]


class HubSources:
    """The hub list and its sources: the concierge, DNS SRV, DPS and failback probes.

    ``cancel`` (the engine's) cuts the concierge's DNS lookup short on close.
    """

    def __init__(
        self,
        config: ClientConfig,
        *,
        machine: fsm.FailoverMachine,
        resolver: Resolver,
        rng: random.Random,
        side: SideTasks,
        metrics: MetricsRecorder,
        emit: Emit,
        follow: Follow,
        cancel: CancelToken = NEVER,
    ) -> None:
        self._config = config
        self._machine = machine  # read here; fed only through ``follow``
        self._resolver = resolver
        self._rng = rng
        self._side = side
        self._metrics = metrics
        self._emit = emit
        self._follow = follow
        self._cancel = cancel
        # Hubs by name: the configured list, or the latest a concierge or SRV gave.
        self._hubs: dict[str, HubEndpoint] = {hub.name: hub for hub in config.hubs}
        self._concierge = None
        if config.concierge is not None:
            # The SDK's own resolver for the concierge's host, whatever resolves the
            # hubs (a test may fake that one): its nameservers, within the deadline.
            from device_sdk.concierge.source import ConciergeSource

            resolver = FreshResolver(config.dns, cancel=cancel)
            self._concierge = ConciergeSource(
                config.concierge, config.hubs, resolver=resolver, cancel=cancel, proxy=config.proxy
            )
        self._next_concierge_at = 0.0
        self._next_probe_at = 0.0
        self._started = False
        self._dps: _DpsState | None = None
        if config.dps is not None:
            from device_sdk.provisioning.source import DpsSource

            dps_resolver = FreshResolver(config.dns, cancel=cancel)
            dps = DpsSource(config.dps, resolver=dps_resolver, cancel=cancel, proxy=config.proxy)
            self._dps = _DpsState(dps)

    def endpoint(self, name: str) -> HubEndpoint:
        return self._hubs[name]

    def hub_for_reference(self, reference: str | None) -> str | None:
        """Map an MQTT 5 server reference to a known hub; unknown hosts are ignored."""
        if not reference:
            return None
        for candidate in reference.split():
            for hub in self._hubs.values():
                if candidate in (hub.fqdn, hub.authority):
                    return hub.name
        return None

    def next_due(self) -> float:
        """When :meth:`tick` has work next (monotonic): a probe or a concierge poll."""
        if self._concierge is None:
            return self._next_probe_at
        return min(self._next_probe_at, self._next_concierge_at)

    def connected(self, now: float) -> None:
        """A link is up: the first failback probe waits about an interval."""
        self._next_probe_at = next_probe_at(now, self._config.failback_probe_interval, self._rng)
        self._dps_connected()

    def tick(self, now: float) -> None:
        """While connected: start a failback probe or a concierge poll when one is due."""
        self._maybe_probe(now)
        if self._concierge is not None and now >= self._next_concierge_at:
            self.ask_concierge()

    # -- the concierge ----------------------------------------------------------------------

    def start(self) -> None:
        """The engine starts: DPS is asked for an assignment (kept, or fresh) now.

        Idempotent: after a fault the engine restarts its cycle, not its sources.
        """
        if not self._started:
            self._started = True
            self._start_dps()

    def ask_concierge(self) -> None:
        """Ask now, off the engine thread (never a delay), and schedule the next poll."""
        source, settings = self._concierge, self._config.concierge
        if source is None or settings is None:
            return
        jitter = 1 + self._rng.uniform(-settings.poll_jitter, settings.poll_jitter)
        self._next_concierge_at = time.monotonic() + settings.poll_interval * jitter
        self._side.start("concierge", _asking(source), self._concierge_answered)

    def _concierge_answered(self, outcome: ConciergeAnswer | ConciergeError) -> None:
        now = time.monotonic()
        if isinstance(outcome, ConciergeError):
            self._metrics.add(concierge_rejections=int(isinstance(outcome, DocumentRejected)))
            self._emit(events.ConciergeProblem(at=now, error=outcome))
            return  # carry on from the last good answer or the device's own list
        self._metrics.add(concierge_updates=1)
        self._emit(
            events.ConciergeUpdate(at=now, sequence=outcome.sequence, active_hub=outcome.active)
        )
        self._set_hubs(outcome.hubs)
        self._follow(fsm.ConciergeNamed(hub=outcome.active))

    # -- DNS SRV ----------------------------------------------------------------------------

    def refresh_srv(self) -> None:
        """Ask DNS SRV for the hub list again; a changed answer is used for this attempt."""
        srv = self._config.srv
        if srv is None:
            return
        try:
            hubs = discover_hubs(
                srv.domain,
                secure=srv.secure,
                dns=self._config.dns,
                rng=self._rng,
                tls=srv.tls,
                cancel=self._cancel,
            )
        except DeviceSDKError as exc:
            # A ResolveError, or a ConfigError for an answer no HubEndpoint can hold.
            log.warning(
                "SRV discovery for %s failed; keeping the last hub list: %s: %s",
                srv.domain,
                type(exc).__name__,
                exc,
            )
            return
        finally:
            self._metrics.add(dns_queries=1)
        self._set_hubs(hubs)

    def _set_hubs(self, hubs: tuple[HubEndpoint, ...]) -> None:
        names = tuple(hub.name for hub in hubs)
        if names == self._machine.hubs and all(self._hubs.get(h.name) == h for h in hubs):
            return
        self._hubs = {hub.name: hub for hub in hubs}
        self._follow(fsm.HubsChanged(hubs=names))

    # -- what the recovery path tells the sources -------------------------------------------

    def failed_over(self, from_hub: str) -> None:
        """The machine left ``from_hub`` after its failover criteria tripped.

        Leaving the hub DPS assigned is IoT Hub's failover path: ask DPS again.
        """
        dps = self._dps
        if dps is not None and dps.hub is not None and from_hub == dps.hub.name:
            self._reprovision(f"failed over from {from_hub}")

    def refused_us(self, hub: str) -> None:
        """``hub`` refused a fresh identity too: the device may no longer belong there."""
        dps = self._dps
        if dps is not None and dps.hub is not None and hub == dps.hub.name:
            self._reprovision(f"{hub} refused a fresh identity")

    # -- DPS --------------------------------------------------------------------------------

    def _start_dps(self) -> None:
        dps = self._dps
        if dps is None:
            return
        kept = dps.source.kept()
        if kept is not None:
            self._assigned(kept, from_disk=True)
            return
        # No assignment yet: provision before the first attempt (see the module's docstring).
        try:
            assignment = dps.source.provision()
        except Cancelled:
            return  # the client is closing
        except ProvisioningError as exc:
            dps.wanted = True
            self._provisioning_failed(exc)
            return
        self._assigned(assignment, from_disk=False)

    def _reprovision(self, why: str) -> None:
        dps = self._dps
        assert dps is not None
        dps.wanted = True
        from device_sdk.provisioning.source import provisioning_delay

        delay = provisioning_delay(dps.failures, dps.source.settings, self._rng, dps.last_error)
        source = dps.source
        if self._side.start("dps", _provisioning(source, delay), self._provisioning_done):
            log.info("asking DPS again in %.2f s: %s", delay, why)

    def _provisioning_done(self, outcome: Assignment | ProvisioningError | None) -> None:
        dps = self._dps
        assert dps is not None
        if outcome is None:
            return  # cancelled: the client is closing
        if isinstance(outcome, ProvisioningError):
            self._provisioning_failed(outcome)
            return
        moved = dps.hub is None or dps.hub.fqdn.lower() != outcome.hub_fqdn.lower()
        # A run that leaves the device where it was did not help: the next one waits longer.
        dps.failures = 0 if moved else dps.failures + 1
        dps.last_error = None
        dps.wanted = False
        self._assigned(outcome, from_disk=False)

    def _provisioning_failed(self, error: ProvisioningError) -> None:
        dps = self._dps
        assert dps is not None
        dps.failures += 1
        dps.last_error = error
        self._emit(events.ProvisioningProblem(at=time.monotonic(), error=error))
        if dps.wanted:  # still no answer where one is needed: ask again, later
            self._reprovision(f"the last run failed: {type(error).__name__}")

    def _assigned(self, assignment: Assignment, *, from_disk: bool) -> None:
        dps = self._dps
        assert dps is not None
        own = {hub.name for hub in self._config.hubs}
        same = dps.hub is not None and dps.hub.fqdn.lower() == assignment.hub_fqdn.lower()
        if not same or dps.hub is None or dps.hub.client_id != assignment.device_id:
            taken = own | {hub.name for hub in dps.previous}
            if dps.hub is not None:
                dps.previous.append(dps.hub)
                taken.add(dps.hub.name)
            from device_sdk.provisioning.source import hub_for

            dps.hub = hub_for(assignment, dps.source.settings, taken)
        hub = dps.hub
        # The hub left behind stays listed until the device is connected elsewhere: the
        # machine may still be on it, or fall back to it if the move fails.
        self._set_hubs(self._config.hubs + tuple(dps.previous) + (hub,))
        self._emit(
            events.Provisioned(
                at=time.monotonic(),
                hub=hub.name,
                fqdn=hub.fqdn,
                device_id=assignment.device_id,
                from_disk=from_disk,
            )
        )
        self._follow(fsm.ConciergeNamed(hub=hub.name))

    def _dps_connected(self) -> None:
        dps = self._dps
        if dps is None or dps.hub is None:
            return
        current = self._machine.current_hub
        if current == dps.hub.name:
            dps.wanted, dps.failures, dps.last_error = False, 0, None
        # Withdraw hubs DPS assigned before, except the one we are on: withdrawing that
        # one would move the device before its link is even served.
        keep = [hub for hub in dps.previous if hub.name == current]
        if len(keep) != len(dps.previous):
            dps.previous = keep
            self._set_hubs(self._config.hubs + tuple(keep) + (dps.hub,))

    # -- failback probes --------------------------------------------------------------------

    def _maybe_probe(self, now: float) -> None:
        if now < self._next_probe_at:
            return
        self._next_probe_at = next_probe_at(now, self._config.failback_probe_interval, self._rng)
        candidate = self._machine.failback_candidate(now)
        if candidate is None:
            return
        hub = self.endpoint(candidate)
        timeout = self._config.liveness.connect_timeout
        self._side.start(
            "probe",
            _probing(hub, self._resolver, timeout, self._cancel, self._config.proxy),
            lambda healthy: self._probe_result(hub.name, healthy),
        )

    def _probe_result(self, hub: str, healthy: bool) -> None:
        if hub not in self._machine.hubs:
            return  # withdrawn while the probe ran
        self._follow(fsm.ProbeResult(hub=hub, healthy=healthy))


def _probing(
    hub: HubEndpoint,
    resolver: Resolver,
    timeout: float,
    cancel: CancelToken,
    proxy: ProxySettings | None,
) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            return hub_answers(hub, resolver, timeout, cancel, proxy=proxy)
        except ConnectError:  # Cancelled: the client is closing, and the answer is moot
            return False

    return probe


class _DpsState:
    """What the sources remember of DPS: the hub it assigned, and how runs have gone."""

    def __init__(self, source: DpsSource) -> None:
        self.source = source
        self.hub: HubEndpoint | None = None  # the hub of the latest assignment
        self.previous: list[HubEndpoint] = []  # assigned before; withdrawn once left
        self.failures = 0  # runs in a row that failed or did not move the device
        self.last_error: ProvisioningError | None = None
        self.wanted = False  # a run should go on until one answers


def _provisioning(
    source: DpsSource, delay: float
) -> Callable[[], Assignment | ProvisioningError | None]:
    def provision() -> Assignment | ProvisioningError | None:
        try:
            return source.provision(delay=delay)
        except ProvisioningError as exc:
            return exc
        except Cancelled:
            return None

    return provision


def _asking(source: ConciergeSource) -> Callable[[], ConciergeAnswer | ConciergeError]:
    def ask() -> ConciergeAnswer | ConciergeError:
        try:
            return source.ask()
        except ConciergeError as exc:
            return exc

    return ask

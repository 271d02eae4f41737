"""The one place that decides where to connect next.

`FailoverMachine` is a pure state machine in the h11/h2 style: inputs and a
``now`` go in, actions come out, and it never touches a socket, a clock or a
retry library. Everything that affects a transition is in this file; the
``(Phase, input type)`` table is `TRANSITIONS` at the bottom.

The rules, in short:

* Stay on a hub through a short streak of failures (``failover_after_failures``
  attempts or ``failover_after_seconds``), then move to the next hub in order,
  wrapping around. A hung hub (UNRESPONSIVE) or a redirect moves us at once.
* A hub that refuses us permanently is skipped for a penalty period while any
  other hub is usable; when every hub refuses us, back off long.
* The first attempt against a hub that has not failed in this outage is not
  delayed; once every hub has failed, each attempt backs off (no hot loop).
* Fail back to the home hub only after a dwell time *and* several healthy
  probes, so a flapping primary cannot make the device flap with it.
* A hub's failure streak is forgotten only when a link to some hub has stayed
  up for ``stable_after_seconds``: a hub that accepts and drops at once keeps
  its streak, so it is failed over and its retries back off.
* A hub that answers "busy" (BUSY) counts as failing like any transient
  failure (the retry policy widens the waits: see ``RetryPolicy.busy_initial``);
  but a failback or concierge move it refuses keeps the dwell served on the hub
  we stayed on, so a throttling home hub is tried again after fresh healthy
  probes, not after another full dwell.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, TypeAlias

from device_sdk.core.outcomes import FailureKind
from device_sdk.errors import ConfigError, StateMachineError

# --------------------------------------------------------------------------- policy


@dataclass(frozen=True, slots=True, kw_only=True)
class FailoverPolicy:
    """When to leave a hub, when to come back, and how long to shun a refusing hub."""

    failover_after_failures: int = 2
    failover_after_seconds: float = 30.0
    failback_dwell_seconds: float = 300.0
    failback_healthy_probes: int = 2
    permanent_penalty_seconds: float = 300.0
    stable_after_seconds: float = 10.0

    def __post_init__(self) -> None:
        for name, ok, allowed in (
            ("failover_after_failures", _is_count(self.failover_after_failures), "int >= 1"),
            ("failover_after_seconds", _is_seconds(self.failover_after_seconds, 0.0), "> 0"),
            ("failback_dwell_seconds", _is_seconds(self.failback_dwell_seconds), ">= 0"),
            ("failback_healthy_probes", _is_count(self.failback_healthy_probes), "int >= 1"),
            ("permanent_penalty_seconds", _is_seconds(self.permanent_penalty_seconds), ">= 0"),
            ("stable_after_seconds", _is_seconds(self.stable_after_seconds), ">= 0"),
        ):
            if not ok:
                raise ConfigError(f"failover.{name}", getattr(self, name), allowed)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_seconds(value: object, above: float | None = None) -> bool:
    """A finite number of seconds, >= 0 (or strictly above ``above``)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    low_ok = value >= 0 if above is None else value > above
    return low_ok and value < float("inf")


# --------------------------------------------------------------------------- phases, inputs


class Phase(enum.Enum):
    """Where the machine is in a connection's life. CLOSED is terminal."""

    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Start:
    """Begin connecting."""


@dataclass(frozen=True, slots=True)
class AttemptFailed:
    """One connect attempt to ``hub`` failed."""

    hub: str
    kind: FailureKind


@dataclass(frozen=True, slots=True)
class Connected:
    """The hub accepted us (CONNACK success)."""

    hub: str


@dataclass(frozen=True, slots=True)
class LinkDown:
    """An established link died; ``unresponsive`` means a deadline passed (hung hub)."""

    hub: str
    unresponsive: bool


@dataclass(frozen=True, slots=True)
class Redirect:
    """CONNACK or DISCONNECT 0x9C/0x9D; ``target`` is a listed hub or None for "next"."""

    hub: str
    target: str | None


@dataclass(frozen=True, slots=True)
class ConciergeNamed:
    """A verified concierge document names ``hub`` as the active hub."""

    hub: str


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The engine probed ``hub`` (the failback candidate) while connected elsewhere."""

    hub: str
    healthy: bool


@dataclass(frozen=True, slots=True)
class Close:
    """Stop for good."""


@dataclass(frozen=True, slots=True)
class HubsChanged:
    """A discovery source (DNS SRV, a concierge document) changed the ordered hub list."""

    hubs: tuple[str, ...]


Input: TypeAlias = (
    Start
    | AttemptFailed
    | Connected
    | LinkDown
    | Redirect
    | ConciergeNamed
    | ProbeResult
    | HubsChanged
    | Close
)

# --------------------------------------------------------------------------- actions


class Delay(enum.Enum):
    """How long the engine waits before an `Attempt`; the retry policy turns it into seconds."""

    NONE = "none"
    """Dial at once: first attempt of a cycle, or a hub not yet tried in this outage."""
    BACKOFF = "backoff"
    """Apply the retry policy's next delay."""
    LONG = "long"
    """Only hubs that refused us permanently remain: back off long."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """Connect to ``hub`` after ``delay``. Supersedes any attempt not yet finished."""

    hub: str
    delay: Delay
    reason: str


@dataclass(frozen=True, slots=True)
class Migrate:
    """While connected: close the link to ``from_hub`` and connect to ``to_hub`` at once."""

    from_hub: str
    to_hub: str
    reason: str


@dataclass(frozen=True, slots=True)
class FailedOver:
    """Announcement (events, metrics): the next attempt goes to a different hub."""

    from_hub: str
    to_hub: str
    reason: str


@dataclass(frozen=True, slots=True)
class FailedBack:
    """Announcement (events, metrics): migrating back to the home hub."""

    from_hub: str
    to_hub: str


Action: TypeAlias = Attempt | Migrate | FailedOver | FailedBack
Actions: TypeAlias = tuple[Action, ...]
Step: TypeAlias = tuple[Phase, Actions]

# --------------------------------------------------------------------------- per-hub history


@dataclass(frozen=True, slots=True)
class HubRecord:
    """One hub's failure streak and permanent-refusal penalty."""

    failures: int = 0
    failing_since: float | None = None
    penalized_until: float | None = None

    def failed(self, now: float) -> HubRecord:
        since = now if self.failing_since is None else self.failing_since
        return replace(self, failures=self.failures + 1, failing_since=since)

    def penalized(self, until: float) -> HubRecord:
        return replace(self, penalized_until=until)

    def streak_cleared(self) -> HubRecord:
        return replace(self, failures=0, failing_since=None)

    def is_penalized(self, now: float) -> bool:
        return self.penalized_until is not None and now < self.penalized_until


# --------------------------------------------------------------------------- the machine


class FailoverMachine:
    """Chooses which hub to connect to next. `handle` is the only mutator.

    ``hubs`` is the ordered list, primary first. Feed it every outcome with the
    current time and execute the actions it returns, in order. An empty tuple
    while CONNECTING (a superseded attempt's result, a repeated concierge
    answer, a late probe) means: carry on with the attempt already asked for.
    """

    def __init__(self, hubs: Sequence[str], policy: FailoverPolicy) -> None:
        if isinstance(hubs, str) or not hubs or len(set(hubs)) != len(hubs):
            raise ConfigError("hubs", hubs, "a non-empty sequence of distinct hub names")
        self._hubs = tuple(hubs)
        self._policy = policy
        self._phase = Phase.IDLE
        self._current = self._hubs[0]
        self._home = self._hubs[0]
        self._records = {hub: HubRecord() for hub in self._hubs}
        self._connected_since: float | None = None
        self._healthy_probes = 0
        self._migrated_from: str | None = None
        # When the link a move left (to _migrated_from) came up; past a move refused as
        # BUSY it is kept, with that hub, as _resume (see _on_connected).
        self._left_since: float | None = None
        self._resume: tuple[str, float] | None = None

    # ---- read-only view

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def current_hub(self) -> str:
        """The hub being attempted or connected to."""
        return self._current

    @property
    def home_hub(self) -> str:
        """The concierge-named hub if any, else the first hub of the list."""
        return self._home

    @property
    def hubs(self) -> tuple[str, ...]:
        return self._hubs

    @property
    def failure_history(self) -> Mapping[str, HubRecord]:
        return MappingProxyType(self._records)

    def failback_candidate(self, now: float) -> str | None:
        """The hub the engine should probe: home, while connected elsewhere."""
        if self._phase is not Phase.CONNECTED or self._current == self._home:
            return None
        # Why skip a penalized home: a health probe cannot tell whether it
        # still refuses our credentials; wait for the penalty to run out.
        return None if self._records[self._home].is_penalized(now) else self._home

    # ---- the one mutator

    def handle(self, event: Input, now: float) -> Actions:
        """Apply one input at time ``now`` and return the actions to execute."""
        handler = TRANSITIONS.get((self._phase, type(event)))
        if handler is None:
            raise StateMachineError(
                f"{type(event).__name__} is impossible in phase {self._phase.name}: {event!r}"
            )
        self._check_hubs(event)
        self._phase, actions = handler(self, event, now)
        return actions

    # ---- handlers (one per table row)

    def _on_start(self, event: Start, now: float) -> Step:
        self._current = self._home
        return Phase.CONNECTING, (Attempt(self._home, Delay.NONE, "start"),)

    def _on_attempt_failed(self, event: AttemptFailed, now: float) -> Step:
        if event.kind is FailureKind.REDIRECT:
            return self._on_redirect(Redirect(event.hub, None), now)
        self._record_failure(event.hub, now)
        if event.hub != self._current:
            return Phase.CONNECTING, ()  # a superseded attempt: history only
        if event.kind is FailureKind.PERMANENT:
            penalty_end = now + self._policy.permanent_penalty_seconds
            self._records[event.hub] = self._records[event.hub].penalized(penalty_end)
        return Phase.CONNECTING, self._after_failure(event.kind, now)

    def _on_connected(self, event: Connected, now: float) -> Step:
        # The streak is not cleared here but when the link proves stable
        # (see _end_link): a hub that accepts and drops at once must keep it.
        self._current = event.hub
        self._records[event.hub] = replace(self._records[event.hub], penalized_until=None)
        # Why resume: a move refused as busy leaves us on the link we had (the
        # engine makes before it breaks); the home hub is alive and was healthy,
        # so only fresh probes are owed, not another full dwell.
        resume, self._resume = self._resume, None
        self._connected_since = resume[1] if resume and resume[0] == event.hub else now
        self._healthy_probes = 0
        self._migrated_from = None
        return Phase.CONNECTED, ()

    def _on_link_down(self, event: LinkDown, now: float) -> Step:
        # A fresh cycle (first retry not delayed, as after a broker restart)
        # unless this hub is already on a streak: it keeps dropping us.
        fresh_cycle = self._end_link(now) or self._records[self._current].failures == 0
        self._record_failure(self._current, now)
        if event.unresponsive:
            return Phase.CONNECTING, self._after_failure(FailureKind.UNRESPONSIVE, now)
        if fresh_cycle:
            return Phase.CONNECTING, (Attempt(self._current, Delay.NONE, "link lost"),)
        return Phase.CONNECTING, self._after_failure(FailureKind.TRANSIENT, now)

    def _on_redirect(self, event: Redirect, now: float) -> Step:
        if self._phase is Phase.CONNECTING and event.hub != self._current:
            self._record_failure(event.hub, now)
            return Phase.CONNECTING, ()  # a superseded attempt: history only
        if self._phase is Phase.CONNECTED:
            self._end_link(now)
        # Counted as a failure so two hubs redirecting to each other back off.
        self._record_failure(self._current, now)
        self._migrated_from = None
        named = event.target if event.target in self._records else None
        target = named if named != self._current else None
        target = target or self._next_usable(now)
        if target is None:
            return Phase.CONNECTING, (Attempt(self._current, Delay.BACKOFF, "redirect"),)
        return Phase.CONNECTING, self._switch_to(target, "redirect")

    def _on_concierge_idle(self, event: ConciergeNamed, now: float) -> Step:
        self._home = self._current = event.hub
        return Phase.IDLE, ()

    def _on_concierge_connecting(self, event: ConciergeNamed, now: float) -> Step:
        # Why only a change acts: the concierge repeats its answer on every
        # poll; a repeat while we sit elsewhere is left to failback hysteresis.
        if event.hub == self._home:
            return Phase.CONNECTING, ()
        self._home = event.hub
        if event.hub == self._current:
            return Phase.CONNECTING, ()
        previous, self._current = self._current, event.hub
        self._migrated_from = None
        return Phase.CONNECTING, (
            FailedOver(previous, event.hub, "concierge"),
            Attempt(event.hub, Delay.NONE, "concierge"),
        )

    def _on_concierge_connected(self, event: ConciergeNamed, now: float) -> Step:
        if event.hub == self._home:
            return Phase.CONNECTED, ()
        self._home = event.hub
        if event.hub == self._current:
            return Phase.CONNECTED, ()
        # No dwell: the operator decided.
        return Phase.CONNECTING, (self._migrate(event.hub, now, "concierge"),)

    def _on_hubs_changed(self, event: HubsChanged, now: float) -> Step:
        hubs = event.hubs
        if isinstance(hubs, str) or not hubs or len(set(hubs)) != len(hubs):
            raise StateMachineError(f"{event!r} needs a non-empty list of distinct hub names")
        # Known hubs keep their history (streaks, penalties); new ones start clean.
        self._records = {hub: self._records.get(hub, HubRecord()) for hub in hubs}
        self._hubs = tuple(hubs)
        if self._migrated_from not in self._records:
            self._migrated_from = None  # a move that fails never falls back to a withdrawn hub
        if self._home not in self._records:
            self._home = self._hubs[0]
        if self._current in self._records:
            return self._phase, ()
        # The hub we use was withdrawn: leave it now, as the operator asked.
        if self._phase is Phase.CONNECTED:
            migrate = self._migrate(self._home, now, "withdrawn")
            self._migrated_from = None  # never fall back to a withdrawn hub
            return Phase.CONNECTING, (migrate,)
        previous, self._current = self._current, self._home
        if self._phase is Phase.IDLE:
            return Phase.IDLE, ()
        return Phase.CONNECTING, (
            FailedOver(previous, self._home, "withdrawn"),
            Attempt(self._home, Delay.NONE, "withdrawn"),
        )

    def _on_probe_result(self, event: ProbeResult, now: float) -> Step:
        if event.hub != self.failback_candidate(now):
            return Phase.CONNECTED, ()
        self._healthy_probes = self._healthy_probes + 1 if event.healthy else 0
        if not self._may_fail_back(now):
            return Phase.CONNECTED, ()
        previous = self._current
        migrate = self._migrate(self._home, now, "failback")
        return Phase.CONNECTING, (FailedBack(previous, self._home), migrate)

    def _on_late_probe(self, event: ProbeResult, now: float) -> Step:
        # Why allowed: a probe may finish just after the link dropped.
        return self._phase, ()

    def _on_close(self, event: Close, now: float) -> Step:
        return Phase.CLOSED, ()

    # ---- the rules

    def _after_failure(self, kind: FailureKind, now: float) -> Actions:
        """Where to go after the current hub failed (its failure already counted)."""
        back = self._migrated_from
        self._migrated_from = None
        if back is not None and not self._records[back].is_penalized(now):
            # A failed failback/concierge move: the hub we left worked moments ago.
            if kind is FailureKind.BUSY and self._left_since is not None:
                self._resume = (back, self._left_since)
            return self._switch_to(back, "migration failed", Delay.NONE)
        if kind is FailureKind.PERMANENT:
            return self._after_refusal(now)
        reason = self._failover_reason(kind, now)
        target = self._next_usable(now) if reason else None
        if reason and target is not None:
            return self._switch_to(target, reason)
        return (Attempt(self._current, Delay.BACKOFF, "retry"),)

    def _after_refusal(self, now: float) -> Actions:
        target = self._next_usable(now)
        if target is not None:
            return self._switch_to(target, "permanent refusal")
        # Every hub refuses us: try the one whose penalty ends first, slowly.
        target = min(self._hubs, key=lambda hub: self._records[hub].penalized_until or 0.0)
        if target == self._current:
            return (Attempt(target, Delay.LONG, "all hubs refused"),)
        return self._switch_to(target, "all hubs refused", Delay.LONG)

    def _failover_reason(self, kind: FailureKind, now: float) -> str:
        """Why the current hub's streak is long enough to leave it ('' if it is not)."""
        record = self._records[self._current]
        if kind is FailureKind.UNRESPONSIVE:
            # A hub that takes the socket but never answers costs a whole
            # deadline per try: one such failure is enough.
            return "unresponsive"
        if record.failures >= self._policy.failover_after_failures:
            return f"{record.failures} consecutive failures"
        since = record.failing_since if record.failing_since is not None else now
        if now - since >= self._policy.failover_after_seconds:
            return f"no success for {now - since:g} s"
        return ""

    def _next_usable(self, now: float) -> str | None:
        """The next hub after the current one, in order and wrapping, that is not penalized."""
        start = self._hubs.index(self._current)
        for offset in range(1, len(self._hubs)):
            hub = self._hubs[(start + offset) % len(self._hubs)]
            if not self._records[hub].is_penalized(now):
                return hub
        return None

    def _switch_to(self, target: str, reason: str, delay: Delay | None = None) -> Actions:
        if delay is None:
            # A hub untried in this outage is dialled at once; after a full
            # round every hub has failed, so each attempt backs off.
            fresh = self._records[target].failures == 0
            delay = Delay.NONE if fresh else Delay.BACKOFF
        previous, self._current = self._current, target
        return (FailedOver(previous, target, reason), Attempt(target, delay, reason))

    def _migrate(self, target: str, now: float, reason: str) -> Migrate:
        previous = self._current
        self._left_since = self._connected_since
        self._end_link(now)
        self._current = target
        self._migrated_from = previous
        self._healthy_probes = 0
        return Migrate(previous, target, reason)

    def _may_fail_back(self, now: float) -> bool:
        since = self._connected_since if self._connected_since is not None else now
        enough_probes = self._healthy_probes >= self._policy.failback_healthy_probes
        return enough_probes and now - since >= self._policy.failback_dwell_seconds

    def _end_link(self, now: float) -> bool:
        """Forget the link; if it was stable, start a fresh outage cycle. Returns that."""
        since, self._connected_since = self._connected_since, None
        stable = since is not None and now - since >= self._policy.stable_after_seconds
        if stable:
            self._records = {hub: rec.streak_cleared() for hub, rec in self._records.items()}
        return stable

    def _record_failure(self, hub: str, now: float) -> None:
        self._records[hub] = self._records[hub].failed(now)
        self._resume = None  # the way back failed too: a dwell starts afresh

    def _check_hubs(self, event: Input) -> None:
        # The engine validates names against its list; an unknown one is a bug.
        # (A redirect *target* outside the list is not: it comes from the
        # broker and is treated as "the next hub", never followed blindly.)
        name = getattr(event, "hub", None)
        if name is not None and name not in self._records:
            raise StateMachineError(f"unknown hub {name!r} in {event!r}; known: {self._hubs}")


Handler: TypeAlias = Callable[[FailoverMachine, Any, float], Step]

# Every (phase, input) pair that can happen. Anything else raises StateMachineError.
TRANSITIONS: Mapping[tuple[Phase, type], Handler] = MappingProxyType(
    {
        (Phase.IDLE, Start): FailoverMachine._on_start,
        (Phase.IDLE, ConciergeNamed): FailoverMachine._on_concierge_idle,
        (Phase.IDLE, Close): FailoverMachine._on_close,
        (Phase.IDLE, HubsChanged): FailoverMachine._on_hubs_changed,
        (Phase.CONNECTING, HubsChanged): FailoverMachine._on_hubs_changed,
        (Phase.CONNECTED, HubsChanged): FailoverMachine._on_hubs_changed,
        (Phase.CONNECTING, AttemptFailed): FailoverMachine._on_attempt_failed,
        (Phase.CONNECTING, Connected): FailoverMachine._on_connected,
        (Phase.CONNECTING, Redirect): FailoverMachine._on_redirect,
        (Phase.CONNECTING, ConciergeNamed): FailoverMachine._on_concierge_connecting,
        (Phase.CONNECTING, ProbeResult): FailoverMachine._on_late_probe,
        (Phase.CONNECTING, Close): FailoverMachine._on_close,
        (Phase.CONNECTED, LinkDown): FailoverMachine._on_link_down,
        (Phase.CONNECTED, Redirect): FailoverMachine._on_redirect,
        (Phase.CONNECTED, ConciergeNamed): FailoverMachine._on_concierge_connected,
        (Phase.CONNECTED, ProbeResult): FailoverMachine._on_probe_result,
        (Phase.CONNECTED, Close): FailoverMachine._on_close,
        (Phase.CLOSED, Close): FailoverMachine._on_close,  # closing twice is harmless
    }
)

"""A fleet of devices reconnecting after a hub outage, on virtual time, with the real policies.

    python benchmarks/fleet.py [--devices N] [--outage S] [--seed S] [--admit-rate R]
                               [--profile NAME ...] [--json [PATH]]

Pure simulation: no sockets, no threads, no sleeping. An event queue (a heap
ordered by virtual time, ties in the order events were scheduled) drives N
devices (default 10 000). Every device is connected to the ``primary`` hub,
and has been for an hour, when the primary goes down at t = 0; every device
notices at t = 0 (a crashed broker's host answers with a reset at once: the
worst case, nothing spreads the fleet out before its first retry). The primary
is down for S seconds (``--outage``, default 60) and then up for good.

Two scenarios, every policy in each (and three more with ``--admit-rate``, below):

* ``failover``: hubs ``primary`` and ``secondary``; the secondary is up all along.
* ``single-hub``: the device knows only the primary (or every hub it knows is
  down with it), so all it can do is back off and retry until the primary returns.

What is real: the SDK's own objects decide everything a device does. Each
device owns a `device_sdk.core.failover.FailoverMachine` (the profile's
`FailoverPolicy`, hubs in order) and a `device_sdk.core.retry.Backoff`, and
every delay comes from ``RetryPolicy.next_delay(backoff, attempt.delay, rng)``,
the call the engine makes, with one seeded ``random.Random`` per simulated
policy and scenario. The benchmark feeds the machine what the engine feeds it:
``LinkDown`` at t = 0, ``AttemptFailed`` (``TRANSIENT``) or ``Connected`` after
every attempt, ``ProbeResult`` for failback probes, and ``AttemptFailed`` then
``Connected(old hub)`` when a failback move fails (make before break).

What is modelled, after the engine (``device_sdk/engine/recovery.py``,
``device_sdk/engine/hub_sources.py``): the first attempt of a recovery cycle after
a lost link waits ``RetryPolicy.first_attempt_delay`` (uniform in [0,
``retry.first_attempt_spread``]; 0, drawing nothing, by default), every later one
after ``next_delay``; an attempt takes no time and fails at once while its hub
is down (connection refused, so ``FailureKind.TRANSIENT``; a hub that does not
answer at all would cost a connect timeout per attempt and fail over at once
as ``UNRESPONSIVE``). A device connected away from its home hub probes home at
the times the engine's own `device_sdk.engine.hub_sources.next_probe_at` gives, where
the engine calls it: the first probe when the link comes up
(``HubSources.connected``), the next one each time a probe starts
(``HubSources._maybe_probe``), so each wait is ``failback_probe_interval``
spread by +-`PROBE_JITTER` (50 %) of it, drawn from a seeded ``random.Random``
of its own per policy and scenario (the retry delays draw from theirs, as
before). A probe is a TCP connect, healthy when the hub is up at that moment,
and its answer reaches the machine `PROBE_ROUND_TRIP` (50 ms) later, where a
failback move starts. A failback move that fails leaves the probe timer as it
was (the engine stays on the old link and does not call ``connected``).
With ``--admit-rate R`` every hub admits at most R new connections per second,
as a token bucket (R tokens a second, at most R saved: a second's burst, full at
the start); a connect to a hub that is up but out of tokens is refused with MQTT
5 CONNACK 0x9F "connection rate exceeded" (`REFUSAL_CODE`), and the machine gets
what the engine gives it for that code: ``classify_connack(0x9F)``, which is
``BUSY`` (as are 0x89 "server busy" and MQTT 3.1.1's 3), and the device's
``Backoff`` counts a busy refusal, as the engine's does. A failback move so
refused is a failed move (the device stays on the old link). Probes are TCP
only and are not limited. Three scenarios are then added (`THROTTLED`):

* ``move``: the primary dies at t = 0 for good; the fleet moves to the secondary.
  Done when connected.
* ``failback``: the fleet has sat on the secondary for an hour (it failed over
  then) when the primary returns at t = 0; the probe timers run from
  `PROBE_LEAD` intervals before. Done when home on the primary.
* ``both-down``: both hubs are down for [0, 600) s, then both admit R/s. Done
  when connected.

For each: the time until 99 % of the fleet is done against the
admission-limited minimum, fleet / (R x hubs admitting), refused attempts per
device (median, p99) and the peak attempts per 100 ms; the goal of issue 14 is
t99 <= 1.5 x the minimum and a median of 3 or fewer refusals. Not modelled:
network delay, TLS, DNS, the concierge, keepalive detection (every link ends at
exactly t = 0), publishing.

Policies compared (the rows): the SDK defaults (``RetryPolicy()``,
``FailoverPolicy()``, ``ClientConfig``'s failback probe interval), every shipped
firmware profile's ``retry`` and ``failover`` tables and probe interval (loaded
with `device_sdk.profiles.load_profile`, environment ignored; ``test-fast`` is
left out unless named with ``--profile``, see `DEFAULT_EXCLUDED`), and two
baselines without jitter: ``RetryPolicy.fixed(1.0)`` through the same machinery,
and a model of paho-mqtt's documented default reconnect (``reconnect_delay_set``
defaults: wait 1 s before the first reconnect, doubling to 120 s, no jitter, one
host so no failover). That last row is a model of paho's schedule, not paho.

Devices whose retry policy draws no random numbers (the two baselines) all do
the same thing at the same moment, so each is simulated as one cohort carrying
a count (split when a hub's capacity admits only part of it): exactly what N
separate copies would do, at the cost of one. That holds until they need a
probe time, which every device draws for itself: a cohort that connects away
from home is split into single devices there, each with its own first probe.
(The paho model has one hub and never probes; in ``single-hub`` nothing probes.)
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import heapq
import importlib.metadata
import itertools
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tenacity
from tenacity.stop import stop_base, stop_never

from device_sdk.config import ClientConfig
from device_sdk.core import failover as fsm
from device_sdk.core.outcomes import FailureKind, classify_connack
from device_sdk.core.retry import Backoff, RetryPolicy
from device_sdk.engine.hub_sources import PROBE_JITTER, next_probe_at
from device_sdk.errors import ConfigError
from device_sdk.profiles import available_profiles, load_profile

try:  # the benchmarks' shared machine description and --json handling
    from benchmarks import report
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    import report  # type: ignore[import-not-found,no-redef]

ROOT = Path(__file__).resolve().parents[1]
PRIMARY, SECONDARY = "primary", "secondary"

DEVICES = 10_000  # default of --devices
OUTAGE = 60.0  # default of --outage: the primary is down for [0, OUTAGE)
SEED = 1  # default of --seed
SETTLED = 3600.0  # every link had been up this long at t = 0: stable, so a fresh cycle
HISTOGRAM_TAIL = 10.0  # the histograms cover [0, outage + this)
HISTOGRAM_WIDTH = 80  # at most this many columns; wider spans share a column
PAHO_MIN_DELAY, PAHO_MAX_DELAY = 1.0, 120.0  # paho-mqtt's reconnect_delay_set defaults
# A failback probe's answer arrives one TCP handshake after it starts. Why not 0: a probe
# exactly failback_dwell_seconds after the connect would pass or fail the dwell check on
# float rounding; in the engine the answer always comes after the probe's timer.
PROBE_ROUND_TRIP = 0.05
# Bounds of the event loop: events per simulated device (an hour's outage costs the
# paho model about 35 attempts, the default policy about 130; a failback a few dozen
# probes), and virtual time. Hitting either marks the row incomplete.
EVENTS_PER_DEVICE = 5_000
HORIZON = 7 * 86_400.0
MAX_DEVICES = 200_000
MAX_OUTAGE = 86_400.0

# Shipped profiles left out unless named with --profile, and why.
DEFAULT_EXCLUDED = {
    "test-fast": "loopback tests only (its file: 'never for a device in the field'); "
    "a 1 s backoff cap makes it the slowest row to simulate",
}

SCENARIOS = {
    "failover": "primary down, secondary up: devices follow the FailoverMachine",
    "single-hub": "primary only: devices back off and retry until it returns",
}
# Against hubs that admit R new connections per second (only with --admit-rate).
THROTTLED = {
    "move": "the primary dies for good at t=0; the fleet moves to the secondary",
    "failback": "the fleet sits on the secondary; the primary returns at t=0; failback",
    "both-down": "primary and secondary down for [0, 600) s; then both admit R/s",
}
BOTH_DOWN = 600.0  # the both-down scenario's outage of both hubs
# What a throttling hub answers a connect over its rate: MQTT 5 CONNACK 0x9F "connection
# rate exceeded" (0x89 "server busy", and MQTT 3.1.1's 3 "server unavailable", are
# classified alike). The machine is fed what the engine feeds it for that CONNACK.
REFUSAL_CODE = 0x9F
# A hub that is down refuses the socket: the engine's kind for a refused connect.
DOWN_KIND = FailureKind.TRANSIENT
# The both-down and failback runs start the probe timer this many intervals before
# t = 0 rather than an hour before: its phase at t = 0 is spread as in steady state.
PROBE_LEAD = 4
GOAL_RATIO, GOAL_REFUSED = 1.5, 3  # issue 14: 99 % within 1.5 x fleet / R; median <= 3


# -- what is simulated ------------------------------------------------------------------------


@dataclass(frozen=True)
class Contender:
    """One row: the policies every device of the fleet runs."""

    key: str
    label: str
    source: str
    retry: RetryPolicy | None  # None: the paho-mqtt reconnect model
    failover: fsm.FailoverPolicy
    probe_interval: float

    @property
    def deterministic(self) -> bool:
        """True when the retry policy draws no random numbers: every device does the same.

        Until it needs a failback probe time: those are drawn device by device (see
        `Simulation._connected`). Known strategies only: one added later is simulated
        device by device (always right).
        """
        if self.retry is None:
            return True
        spread = self.retry.first_attempt_spread
        return spread == 0 and self.retry.strategy in ("fixed", "immediate", "none")

    def as_dict(self) -> dict[str, Any]:
        retry: dict[str, Any]
        if self.retry is None:
            retry = {
                "model": "paho-mqtt reconnect_delay_set defaults",
                "min_delay": PAHO_MIN_DELAY,
                "max_delay": PAHO_MAX_DELAY,
            }
        else:
            retry = dataclasses.asdict(self.retry)
        return {
            "key": self.key,
            "label": self.label,
            "source": self.source,
            "retry": retry,
            "failover": None if self.retry is None else dataclasses.asdict(self.failover),
            "failback_probe_interval": None if self.retry is None else self.probe_interval,
            "failback_probe_jitter": None if self.retry is None else PROBE_JITTER,
        }


@dataclass(frozen=True)
class Settings:
    devices: int = DEVICES
    outage: float = OUTAGE
    seed: int = SEED
    admit_rate: float | None = None  # new connections a hub admits per second; None: all


@dataclass(frozen=True)
class Scenario:
    """Which hubs exist, when each is down, where the fleet starts and what "done" is."""

    key: str
    hubs: tuple[str, ...]
    down: dict[str, tuple[float, float]]  # hub: down in [from, until)
    start_on: str = PRIMARY  # the hub every device is connected to before t = 0
    loses_link: bool = True  # that link ends at t = 0 (else: only probes move the fleet)
    goal: str = "home"  # a device is done when "home" (on the primary) or "connected"
    clock: float = 0.0  # times are reported from here: when the hubs it waits for are up
    admitting: int = 1  # hubs that admit the fleet after ``clock``: the minimum's divisor

    def up(self, hub: str, at: float) -> bool:
        start, end = self.down.get(hub, (math.inf, math.inf))
        return not start <= at < end


def scenario(key: str, settings: Settings) -> Scenario:
    outage = settings.outage
    if key == "failover":
        return Scenario(key, (PRIMARY, SECONDARY), {PRIMARY: (0.0, outage)}, clock=outage)
    if key == "single-hub":
        return Scenario(key, (PRIMARY,), {PRIMARY: (0.0, outage)}, clock=outage)
    if key == "move":
        return Scenario(key, (PRIMARY, SECONDARY), {PRIMARY: (0.0, math.inf)}, goal="connected")
    if key == "failback":
        down = {PRIMARY: (-math.inf, 0.0)}
        return Scenario(key, (PRIMARY, SECONDARY), down, start_on=SECONDARY, loses_link=False)
    both = {PRIMARY: (0.0, BOTH_DOWN), SECONDARY: (0.0, BOTH_DOWN)}
    return Scenario(key, (PRIMARY, SECONDARY), both, goal="connected", clock=BOTH_DOWN, admitting=2)


def applies(contender: Contender, key: str) -> bool:
    """The paho model knows one host: it cannot move to a secondary or fail back."""
    return contender.retry is not None or key not in ("move", "failback")


class _TokenBucket:
    """A hub's admission: ``rate`` tokens a second, at most ``rate`` saved (a second's worth).

    Full at the start; a connect takes a token or is refused.
    """

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.at: float | None = None

    def admit(self, count: int, at: float) -> int:
        if self.at is not None:
            self.tokens = min(self.rate, self.tokens + (at - self.at) * self.rate)
        self.at = at
        admitted = min(count, math.floor(self.tokens + 1e-9))
        self.tokens -= admitted
        return admitted


def default_profiles() -> list[str]:
    return [name for name in available_profiles() if name not in DEFAULT_EXCLUDED]


def contenders(profiles: Iterable[str]) -> list[Contender]:
    """The SDK defaults, each named profile, then the two baselines without jitter."""
    probe_default = next(
        f.default for f in dataclasses.fields(ClientConfig) if f.name == "failback_probe_interval"
    )
    assert isinstance(probe_default, float)
    rows = [
        Contender(
            "sdk-default",
            "sdk default",
            "RetryPolicy(), FailoverPolicy(), ClientConfig.failback_probe_interval",
            RetryPolicy(),
            fsm.FailoverPolicy(),
            probe_default,
        )
    ]
    for name in profiles:
        profile = load_profile(name, env={})
        source = Path(profile.source)
        shown = source.relative_to(ROOT) if source.is_relative_to(ROOT) else source
        rows.append(
            Contender(
                f"profile:{profile.name}",
                profile.name,
                f"{shown} [retry], [failover]",
                profile.retry,
                profile.failover,
                profile.failback_probe_interval,
            )
        )
    rows.append(
        Contender(
            "fixed-1s",
            "no jitter: fixed 1 s",
            "RetryPolicy.fixed(1.0), FailoverPolicy(), ClientConfig.failback_probe_interval",
            RetryPolicy.fixed(1.0),
            fsm.FailoverPolicy(),
            probe_default,
        )
    )
    rows.append(
        Contender(
            "paho-model",
            "paho model: 1-120 s x2",
            "a model of paho-mqtt's documented default reconnect (not paho): 1 s before the "
            "first reconnect, doubling to 120 s, no jitter, one host (no failover)",
            None,
            fsm.FailoverPolicy(),
            probe_default,
        )
    )
    return rows


# -- the simulation ---------------------------------------------------------------------------

_ATTEMPT, _PROBE, _PROBE_RESULT = 0, 1, 2
_CARRIER = tenacity.Retrying()  # only carries RetryCallState for the stop check; never run


class _Cohort:
    """``count`` devices in the same state.

    1 unless the retry policy is deterministic, and always 1 once the devices need a
    failback probe time (each draws its own).
    """

    __slots__ = (
        "attempt",
        "backoff",
        "count",
        "cycle_tries",
        "first_connect",
        "gave_up",
        "home_at",
        "machine",
        "paho_delay",
        "probe",
        "refused",
        "tries",
    )

    def __init__(self, count: int, machine: fsm.FailoverMachine | None) -> None:
        self.count = count
        self.machine = machine
        self.backoff = Backoff.start().link_up(-SETTLED)
        self.attempt = fsm.Attempt(PRIMARY, fsm.Delay.NONE, "start")
        self.tries = 0  # connect attempts, failback moves included
        self.cycle_tries = 0  # attempts in the current recovery cycle (tenacity's count)
        self.paho_delay = 0.0  # the paho model's last reconnect delay
        self.refused = 0  # attempts a hub up refused for its admission rate (CONNACK)
        self.probe: tuple[str, bool] | None = None  # the probe under way: hub, healthy
        self.first_connect: float | None = None
        self.home_at: float | None = None
        self.gave_up: float | None = None


def _attempt_in(actions: fsm.Actions) -> fsm.Attempt | None:
    """The attempt the machine asks for (the engine follows the last one)."""
    found = None
    for action in actions:
        if isinstance(action, fsm.Attempt):
            found = action
    return found


class Simulation:
    """One policy, one scenario: N devices from the outage until all are home again."""

    def __init__(self, contender: Contender, scenario: Scenario, settings: Settings) -> None:
        self.contender = contender
        self.settings = settings
        self.scenario = scenario
        self.hubs = scenario.hubs
        key = scenario.key
        self.rng = random.Random(f"{settings.seed}/{key}/{contender.key}")
        # The probe times' own stream: the retry delays draw what they drew before probes
        # were spread, so the probe schedule is the only thing that changed.
        self.probe_rng = random.Random(f"{settings.seed}/{key}/{contender.key}/probes")
        rate = settings.admit_rate
        self.buckets = {hub: _TokenBucket(rate) for hub in self.hubs} if rate else {}
        refused = classify_connack(REFUSAL_CODE, mqtt5=True)
        assert refused is not None
        self.refused_kind = refused
        self.stop: stop_base = (
            stop_never if contender.retry is None else contender.retry.tenacity_stop()
        )
        self._heap: list[tuple[float, int, int, _Cohort]] = []
        self._seq = itertools.count()
        self.cohorts: list[_Cohort] = []
        self.attempts_100ms: Counter[int] = Counter()  # index floor(10 t)
        self.after_return: Counter[int] = Counter()  # 1 s buckets from the return: floor(t - S)
        self.probes: Counter[int] = Counter()  # index floor(t)
        self.first_second = 0  # attempts in [S, S + 1)
        self.failbacks = 0  # failback moves started (Migrate actions, per device)
        self.events = 0
        self.complete = False

    # ---- driving

    def run(self) -> Simulation:
        for cohort in self._initial():
            self.cohorts.append(cohort)
            if self.scenario.loses_link:
                self._lose_link(cohort)
            else:  # the engine's probe timer has run since the connect (see PROBE_LEAD)
                lead = -PROBE_LEAD * self.contender.probe_interval
                self._push(self._next_probe(lead), _PROBE, cohort)
        for _ in range(self.settings.devices * EVENTS_PER_DEVICE):
            if not self._heap or self._heap[0][0] > HORIZON:
                break
            at, _seq, kind, cohort = heapq.heappop(self._heap)
            self.events += 1
            if kind == _ATTEMPT:
                self._attempt(cohort, at)
            elif kind == _PROBE:
                self._probe(cohort, at)
            else:
                self._probe_result(cohort, at)
        self.complete = not self._heap
        return self

    def _initial(self) -> list[_Cohort]:
        # Away from home every device draws its own probe times: single devices.
        if self.contender.deterministic and self.scenario.start_on == PRIMARY:
            return [self._fresh(self.settings.devices)]
        return [self._fresh(1) for _ in range(self.settings.devices)]

    def _fresh(self, count: int) -> _Cohort:
        """Devices connected to ``start_on`` since long before t = 0."""
        if self.contender.retry is None:
            return _Cohort(count, None)
        machine = fsm.FailoverMachine(self.hubs, self.contender.failover)
        machine.handle(fsm.Start(), -SETTLED)
        for _ in range(self.contender.failover.failover_after_failures):
            if machine.current_hub == self.scenario.start_on:
                break  # failed over long ago, as the engine does: the home hub refused
            machine.handle(fsm.AttemptFailed(hub=machine.current_hub, kind=DOWN_KIND), -SETTLED)
        assert machine.current_hub == self.scenario.start_on
        machine.handle(fsm.Connected(hub=self.scenario.start_on), -SETTLED)
        return _Cohort(count, machine)

    def _push(self, at: float, kind: int, cohort: _Cohort) -> None:
        heapq.heappush(self._heap, (at, next(self._seq), kind, cohort))

    def _up(self, hub: str, at: float) -> bool:
        return self.scenario.up(hub, at)

    # ---- a device's life

    def _lose_link(self, cohort: _Cohort) -> None:
        if cohort.machine is None:  # paho: _reconnect_wait() before every reconnect
            cohort.paho_delay = PAHO_MIN_DELAY
            self._push(PAHO_MIN_DELAY, _ATTEMPT, cohort)
            return
        retry = self.contender.retry
        assert retry is not None
        actions = cohort.machine.handle(fsm.LinkDown(hub=PRIMARY, unresponsive=False), 0.0)
        cohort.backoff = cohort.backoff.link_down(0.0, retry)
        cohort.attempt = _attempt_in(actions) or cohort.attempt
        cohort.cycle_tries = 0
        # The engine waits retry.first_attempt_delay() before a recovery cycle's first
        # attempt after a lost link: 0 (no draw) unless retry.first_attempt_spread is set.
        self._push(retry.first_attempt_delay(self.rng), _ATTEMPT, cohort)

    def _attempt(self, cohort: _Cohort, at: float) -> None:
        hub = cohort.attempt.hub
        self._count_attempt(cohort, at)
        won, lost, kind = self._admit(cohort, hub, at)
        if won is not None:
            self._connected(won, hub, at)
        if lost is not None:
            self._failed(lost, hub, at, kind)

    def _failed(self, cohort: _Cohort, hub: str, at: float, kind: FailureKind) -> None:
        if cohort.machine is None:
            cohort.paho_delay = min(cohort.paho_delay * 2, PAHO_MAX_DELAY)
            self._push(at + cohort.paho_delay, _ATTEMPT, cohort)
            return
        retry = self.contender.retry
        assert retry is not None
        cohort.backoff = cohort.backoff.failed(busy=kind is FailureKind.BUSY)
        actions = cohort.machine.handle(fsm.AttemptFailed(hub=hub, kind=kind), at)
        cohort.attempt = _attempt_in(actions) or cohort.attempt
        # tenacity computes the wait before it checks the stop condition; so does this.
        delay, cohort.backoff = retry.next_delay(cohort.backoff, cohort.attempt.delay, self.rng)
        if self._gives_up(cohort):
            cohort.gave_up = at
            return
        self._push(at + delay, _ATTEMPT, cohort)

    def _gives_up(self, cohort: _Cohort) -> bool:
        """The engine's tenacity stop (``RetryPolicy.tenacity_stop()``) after this attempt."""
        if self.stop is stop_never:
            return False
        state = tenacity.RetryCallState(_CARRIER, fn=None, args=(), kwargs={})
        state.attempt_number = cohort.cycle_tries
        return bool(self.stop(state))

    def _connected(self, cohort: _Cohort, hub: str, at: float) -> None:
        if cohort.first_connect is None:
            cohort.first_connect = at
        cohort.cycle_tries = 0
        if cohort.machine is not None:
            cohort.machine.handle(fsm.Connected(hub=hub), at)
            cohort.backoff = cohort.backoff.link_up(at)
        if self.scenario.goal == "connected":
            return  # what this scenario measures is done; what follows is another's
        if hub == PRIMARY:
            # Home: nothing left to probe, the device is done. (The engine draws a probe
            # time here too, but at home failback_candidate() is None: it never probes.)
            cohort.home_at = at
            return
        # The engine sets the first probe when a link comes up (HubSources.connected), a
        # random time per device: from here on every device is simulated on its own.
        for device in self._split(cohort):
            self._push(self._next_probe(at), _PROBE, device)

    def _split(self, cohort: _Cohort) -> list[_Cohort]:
        """``cohort`` as single devices: itself, with ``count - 1`` copies."""
        copies = [copy.deepcopy(cohort) for _ in range(cohort.count - 1)]
        for device in copies:
            device.count = 1
        cohort.count = 1
        self.cohorts.extend(copies)
        return [cohort, *copies]

    def _next_probe(self, at: float) -> float:
        return next_probe_at(at, self.contender.probe_interval, self.probe_rng)

    def _probe(self, cohort: _Cohort, at: float) -> None:
        machine = cohort.machine
        assert machine is not None and cohort.count == 1
        if cohort.home_at is not None:
            return  # a probe timer left from before the device went home
        # The engine sets the next probe when it starts one (HubSources._maybe_probe).
        self._push(self._next_probe(at), _PROBE, cohort)
        candidate = machine.failback_candidate(at)
        if candidate is None:  # home is penalized: nothing to probe this time
            return
        self.probes[math.floor(at)] += cohort.count
        cohort.probe = (candidate, self._up(candidate, at))
        self._push(at + PROBE_ROUND_TRIP, _PROBE_RESULT, cohort)

    def _probe_result(self, cohort: _Cohort, at: float) -> None:
        machine = cohort.machine
        assert machine is not None and cohort.probe is not None
        hub, healthy = cohort.probe
        actions = machine.handle(fsm.ProbeResult(hub=hub, healthy=healthy), at)
        move = next((a for a in actions if isinstance(a, fsm.Migrate)), None)
        if move is None:
            return
        self.failbacks += cohort.count
        self._count_attempt(cohort, at)
        won, lost, kind = self._admit(cohort, move.to_hub, at)
        if won is not None:
            self._connected(won, move.to_hub, at)
        if lost is not None:  # the engine stays on the old link (Engine._migration_failed)
            assert lost.machine is not None
            failed = fsm.AttemptFailed(hub=move.to_hub, kind=kind)
            lost.machine.handle(failed, at)
            lost.machine.handle(fsm.Connected(hub=move.from_hub), at)

    # ---- hubs and counting

    def _admit(
        self, cohort: _Cohort, hub: str, at: float
    ) -> tuple[_Cohort | None, _Cohort | None, FailureKind]:
        """Split ``cohort`` into the devices the hub accepts and those it refuses, and
        the kind the refused ones feed the machine (a refused socket, or a CONNACK)."""
        if not self._up(hub, at):
            return None, cohort, DOWN_KIND
        bucket = self.buckets.get(hub)
        accepted = cohort.count if bucket is None else bucket.admit(cohort.count, at)
        kind = self.refused_kind
        if accepted < cohort.count:
            cohort.refused += 1  # the refused part (the admitted part is copied first)
        if accepted == 0:
            return None, cohort, kind
        if accepted == cohort.count:
            return cohort, None, kind
        won = copy.deepcopy(cohort)
        won.refused -= 1
        won.count, cohort.count = accepted, cohort.count - accepted
        self.cohorts.append(won)
        return won, cohort, kind

    def _count_attempt(self, cohort: _Cohort, at: float) -> None:
        count = cohort.count
        cohort.tries += 1
        cohort.cycle_tries += 1
        self.attempts_100ms[math.floor(at * 10)] += count
        outage = self.scenario.clock
        if at >= outage:
            self.after_return[math.floor(at - outage)] += count
            if at < outage + 1:
                self.first_second += count


# -- results ----------------------------------------------------------------------------------


def _percentile(pairs: Sequence[tuple[float, int]], total: int, fraction: float) -> float | None:
    """Nearest-rank percentile of weighted values over ``total`` devices (None: too few)."""
    need = max(1, math.ceil(fraction * total))
    seen = 0
    for value, count in sorted(pairs):
        seen += count
        if seen >= need:
            return value
    return None


def _peak(buckets: Counter[int]) -> tuple[int, int | None]:
    """The largest bucket and its index (the earliest one on a tie)."""
    if not buckets:
        return 0, None
    index = min(buckets, key=lambda i: (-buckets[i], i))
    return buckets[index], index


def summarise(sim: Simulation, elapsed: float) -> dict[str, Any]:
    settings = sim.settings
    total = settings.devices
    per_second: Counter[int] = Counter()
    for index, count in sim.attempts_100ms.items():
        per_second[index // 10] += count
    peak_s, peak_s_at = _peak(per_second)
    peak_100, peak_100_at = _peak(sim.attempts_100ms)
    peak_after, peak_after_at = _peak(sim.after_return)
    peak_probes, peak_probes_at = _peak(sim.probes)
    tries = [(float(c.tries), c.count) for c in sim.cohorts]
    first = [(c.first_connect, c.count) for c in sim.cohorts if c.first_connect is not None]
    home = [(c.home_at - settings.outage, c.count) for c in sim.cohorts if c.home_at is not None]
    span = math.ceil(settings.outage + HISTOGRAM_TAIL)
    return {
        "contender": sim.contender.key,
        "label": sim.contender.label,
        "devices": total,
        "reconnected": sum(count for _v, count in first),
        "home": sum(count for _v, count in home),
        "gave_up": sum(c.count for c in sim.cohorts if c.gave_up is not None),
        "complete": sim.complete,
        "attempts": sum(per_second.values()),
        "attempts_per_device_median": _percentile(tries, total, 0.5),
        "attempts_per_device_max": max((v for v, _c in tries), default=None),
        "peak_per_second": peak_s,
        "peak_per_second_at": peak_s_at,
        "peak_per_100ms": peak_100,
        "peak_per_100ms_at": None if peak_100_at is None else round(peak_100_at / 10, 1),
        "first_second_after_return": sim.first_second,
        "peak_per_second_after_return": peak_after,
        "peak_per_second_after_return_at": peak_after_at,
        "reconnected_all_at": _percentile(first, total, 1.0),
        "home_after_return_p50": _percentile(home, total, 0.5),
        "home_after_return_p99": _percentile(home, total, 0.99),
        "home_after_return_all": _percentile(home, total, 1.0),
        "failback_moves": sim.failbacks,
        "probes": sum(sim.probes.values()),
        "peak_probes_per_second": peak_probes,
        "peak_probes_per_second_at": peak_probes_at,
        "attempts_per_second": [per_second.get(i, 0) for i in range(span)],
        "events": sim.events,
        "simulated_in_seconds": round(elapsed, 3),
    }


def summarise_throttled(sim: Simulation, elapsed: float) -> dict[str, Any]:
    """The figures of issue 14 for one throttled scenario and policy."""
    settings, scene = sim.settings, sim.scenario
    total = settings.devices
    assert settings.admit_rate is not None
    done = [
        ((c.first_connect if scene.goal == "connected" else c.home_at), c.count)
        for c in sim.cohorts
    ]
    times = [(at - scene.clock, count) for at, count in done if at is not None]
    admitting = 1 if sim.contender.retry is None else scene.admitting  # paho: one host
    minimum = total / (settings.admit_rate * admitting)
    t99 = _percentile(times, total, 0.99)
    refused = [(float(c.refused), c.count) for c in sim.cohorts]
    median_refused = _percentile(refused, total, 0.5)
    peak_100, peak_100_at = _peak(sim.attempts_100ms)
    ratio = None if t99 is None else t99 / minimum
    # The goal is on being connected. A failback is make before break: the fleet stays
    # connected throughout (99 % at 0 s), and the time home is reported beside it.
    connected_ratio = 0.0 if scene.goal == "home" else ratio
    return {
        "contender": sim.contender.key,
        "label": sim.contender.label,
        "devices": total,
        "goal_state": scene.goal,
        "done": sum(count for _v, count in times),
        "home": sum(c.count for c in sim.cohorts if c.home_at is not None),
        "complete": sim.complete,
        "minimum_seconds": minimum,
        "t50": _percentile(times, total, 0.5),
        "t99": t99,
        "t99_over_minimum": ratio,
        "refused_per_device_median": median_refused,
        "refused_per_device_p99": _percentile(refused, total, 0.99),
        "attempts": sum(sim.attempts_100ms.values()),
        "attempts_per_device_median": _percentile(
            [(float(c.tries), c.count) for c in sim.cohorts], total, 0.5
        ),
        "peak_per_100ms": peak_100,
        "peak_per_100ms_at": None if peak_100_at is None else round(peak_100_at / 10, 1),
        "goal_met": connected_ratio is not None
        and median_refused is not None
        and connected_ratio <= GOAL_RATIO
        and median_refused <= GOAL_REFUSED,
        "done_within_goal_ratio": ratio is not None and ratio <= GOAL_RATIO,
        "events": sim.events,
        "simulated_in_seconds": round(elapsed, 3),
    }


def scenario_keys(settings: Settings) -> list[str]:
    return [*SCENARIOS, *(THROTTLED if settings.admit_rate is not None else ())]


def run_benchmark(settings: Settings, rows: Sequence[Contender]) -> dict[str, list[dict[str, Any]]]:
    """Every contender in every scenario; the results, by scenario, in row order."""
    results: dict[str, list[dict[str, Any]]] = {}
    for key in scenario_keys(settings):
        results[key] = []
        scene = scenario(key, settings)
        summary = summarise if key in SCENARIOS else summarise_throttled
        for contender in rows:
            if not applies(contender, key):
                continue
            started = time.perf_counter()
            sim = Simulation(contender, scene, settings).run()
            results[key].append(summary(sim, time.perf_counter() - started))
    return results


def failures(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Rows where some device never got home (or connected), or the event loop hit a bound."""
    problems = []
    for scenario, rows in results.items():
        for row in rows:
            if row.get("goal_state") == "connected":
                if not row["complete"] or row["done"] < row["devices"]:
                    problems.append(
                        f"{scenario}/{row['contender']}: {row['done']}/{row['devices']} connected"
                        + ("" if row["complete"] else " (event bound hit)")
                    )
            elif not row["complete"] or row["home"] < row["devices"]:
                problems.append(
                    f"{scenario}/{row['contender']}: {row['home']}/{row['devices']} home"
                    + ("" if row["complete"] else " (event bound hit)")
                )
    return problems


# -- tables -----------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


def _count_at(count: int, at: float | None) -> str:
    return f"{count:,}" if at is None else f"{count:,} @{at:g}"


COLUMNS = {
    "failover": (
        ("policy", lambda r: r["label"]),
        ("attempts", lambda r: f"{r['attempts']:,}"),
        (
            "per dev med/max",
            lambda r: f"{r['attempts_per_device_median']:g}/{r['attempts_per_device_max']:g}",
        ),
        ("peak/s @s", lambda r: _count_at(r["peak_per_second"], r["peak_per_second_at"])),
        ("peak/100ms @s", lambda r: _count_at(r["peak_per_100ms"], r["peak_per_100ms_at"])),
        ("all on a hub", lambda r: _num(r["reconnected_all_at"], 2)),
        (
            "probes peak/s @s",
            lambda r: _count_at(r["peak_probes_per_second"], r["peak_probes_per_second_at"]),
        ),
        ("1st s back", lambda r: f"{r['first_second_after_return']:,}"),
        (
            "peak/s back @+s",
            lambda r: _count_at(
                r["peak_per_second_after_return"], r["peak_per_second_after_return_at"]
            ),
        ),
        ("home p50", lambda r: _num(r["home_after_return_p50"])),
        ("p99", lambda r: _num(r["home_after_return_p99"])),
        ("all", lambda r: _num(r["home_after_return_all"])),
    ),
    "single-hub": (
        ("policy", lambda r: r["label"]),
        ("attempts", lambda r: f"{r['attempts']:,}"),
        (
            "per dev med/max",
            lambda r: f"{r['attempts_per_device_median']:g}/{r['attempts_per_device_max']:g}",
        ),
        ("peak/s @s", lambda r: _count_at(r["peak_per_second"], r["peak_per_second_at"])),
        ("peak/100ms @s", lambda r: _count_at(r["peak_per_100ms"], r["peak_per_100ms_at"])),
        ("1st s back", lambda r: f"{r['first_second_after_return']:,}"),
        (
            "peak/s back @+s",
            lambda r: _count_at(
                r["peak_per_second_after_return"], r["peak_per_second_after_return_at"]
            ),
        ),
        ("reconn p50", lambda r: _num(r["home_after_return_p50"])),
        ("p99", lambda r: _num(r["home_after_return_p99"])),
        ("all", lambda r: _num(r["home_after_return_all"])),
    ),
}

NOTES = {
    "failover": (
        "attempts: connect attempts to any hub, failback moves included; per dev: per device; "
        "peak/s, peak/100ms: the busiest bucket of virtual time and where it starts (s); "
        "all on a hub: s after the outage began until every device was connected somewhere; "
        "probes: failback probes of the primary (TCP only, not connects), every wait the "
        f"probe interval +-{PROBE_JITTER:.0%} (next_probe_at); 1st s back: attempts "
        "in the first second after the primary returned; peak/s back: the busiest second from "
        "then on (+s after the return); home p50/p99/all: s after the return until that share "
        "of the fleet was connected to the primary again"
    ),
    "single-hub": (
        "columns as above; reconn p50/p99/all: s after the hub returned until that share of "
        "the fleet was connected again"
    ),
}


def format_table(scenario: str, rows: Sequence[dict[str, Any]], settings: Settings) -> str:
    columns = COLUMNS[scenario]
    cells = [[name for name, _f in columns]] + [[f(row) for _n, f in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells
    ]
    lines.insert(1, "-" * len(lines[0]))
    title = (
        f"== {scenario}: {SCENARIOS[scenario]}; primary down [0, {settings.outage:g}) s, "
        f"{settings.devices:,} devices"
    )
    incomplete = [
        f"{r['label']}: {r['home']:,}/{r['devices']:,} home"
        for r in rows
        if r["home"] < r["devices"] or not r["complete"]
    ]
    extra = ["NOT ALL HOME: " + "; ".join(incomplete)] if incomplete else []
    return "\n".join([title, *lines, *extra, _wrap(NOTES[scenario])])


def _goal(row: dict[str, Any]) -> str:
    verdict = "met" if row["goal_met"] else "NOT MET"
    if row["goal_state"] == "home" and not row["done_within_goal_ratio"]:
        verdict += f"; home > {GOAL_RATIO:g}x"
    return verdict


THROTTLED_COLUMNS = (
    ("scenario", lambda r: r["scenario"]),
    ("policy", lambda r: r["label"]),
    ("min s", lambda r: _num(r["minimum_seconds"])),
    ("t50 s", lambda r: _num(r["t50"])),
    ("t99 s", lambda r: _num(r["t99"])),
    ("t99/min", lambda r: _num(r["t99_over_minimum"], 2)),
    (
        "refused med/p99",
        lambda r: (
            f"{_num(r['refused_per_device_median'], 0)}/{_num(r['refused_per_device_p99'], 0)}"
        ),
    ),
    ("tries med", lambda r: _num(r["attempts_per_device_median"], 0)),
    ("peak/100ms @s", lambda r: _count_at(r["peak_per_100ms"], r["peak_per_100ms_at"])),
    ("goal", _goal),
)


def format_throttled(results: dict[str, list[dict[str, Any]]], settings: Settings) -> str:
    rows = [row | {"scenario": key} for key in THROTTLED for row in results.get(key, [])]
    cells = [[name for name, _f in THROTTLED_COLUMNS]]
    cells += [[f(row) for _n, f in THROTTLED_COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(THROTTLED_COLUMNS))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells
    ]
    lines.insert(1, "-" * len(lines[0]))
    title = (
        f"== throttled: every hub admits {settings.admit_rate:g} new connections/s (token "
        f"bucket, burst {settings.admit_rate:g}) and answers the rest CONNACK "
        f"0x{REFUSAL_CODE:02X}; {settings.devices:,} devices"
    )
    scenes = "; ".join(f"{key}: {text}" for key, text in THROTTLED.items())
    note = (
        f"{scenes}. min s: the admission-limited minimum, fleet / (R x hubs admitting): "
        "one hub for move (the secondary) and failback (the primary), two for both-down "
        "(one for the paho model, which knows one host). "
        "t50, t99: s from t=0 (both-down: from the hubs' return) until 50 %, 99 % of the "
        "fleet was connected (move, both-down) or home on the primary (failback: make "
        "before break, so the fleet stays connected throughout). refused: attempts a hub "
        "that was up refused for its rate, per device; tries: connect attempts per device, "
        "to hubs up or down, failback moves included; peak/100ms: the busiest 100 ms of "
        f"attempts and where it starts (s). goal: t99 <= {GOAL_RATIO:g} x min and median "
        f"refused <= {GOAL_REFUSED} (failback: the fleet is connected throughout, so only the "
        f"refusals decide; '; home > {GOAL_RATIO:g}x' marks a slow failback)."
    )
    return "\n".join([title, *lines, _wrap(note)])


def _wrap(text: str, width: int = 100) -> str:
    lines: list[str] = []
    line = ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return "\n".join([*lines, line])


def format_histogram(row: dict[str, Any], outage: float) -> str:
    """Attempts per second over [0, outage + tail), as columns on a log scale."""
    counts: list[int] = row["attempts_per_second"]
    group = max(1, math.ceil(len(counts) / HISTOGRAM_WIDTH))
    columns = [max(counts[i : i + group]) for i in range(0, len(counts), group)]
    top = max(columns, default=0)
    levels = math.floor(2 * math.log10(top)) if top > 1 else 0
    label = "second" if group == 1 else f"{group} s (the busiest second in each)"
    lines = [
        f"{row['label']}: attempts per second, one column per {label}; "
        "log scale, '#' = at least the row's value"
    ]
    for level in range(levels, -1, -1):
        threshold = 10 ** (level / 2)
        bar = "".join("#" if value >= threshold else " " for value in columns)
        lines.append(f"{round(threshold):>8,} |{bar.rstrip()}")
    axis = [" "] * len(columns)
    for second in range(0, len(counts), 10 * group):
        text = str(second)
        col = second // group
        axis[col : col + len(text)] = list(text)
    back = min(len(columns) - 1, math.floor(outage) // group)
    lines.append(" " * 9 + "+" + "-" * len(columns))
    lines.append(" " * 10 + "".join(axis[: len(columns)]).rstrip() + "  (s)")
    lines.append(" " * 10 + " " * back + f"^ primary back at {outage:g} s")
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    """The shared machine description without paho, git and mosquitto: none matters here."""
    info = report.machine_info(paho=False, git=False, mosquitto=False)
    info["tenacity"] = importlib.metadata.version("tenacity")
    return info


def format_header(info: dict[str, Any], settings: Settings, rows: Sequence[Contender]) -> str:
    rate = settings.admit_rate
    capacity = "unlimited" if rate is None else f"{rate:g} new connections/s (token bucket)"
    excluded = [n for n in DEFAULT_EXCLUDED if n in available_profiles()]
    names = {row.label for row in rows}
    left_out = [
        f"{n}: {DEFAULT_EXCLUDED[n]}; --profile {n} adds it" for n in excluded if n not in names
    ]
    lines = [
        f"fleet benchmark (virtual time), {info['date']}",
        f"machine: {info['platform']}, {info['cpu']}, {info['cpu_count']} CPUs",
        f"python {info['python']}, device_sdk {info['device_sdk']} ({info['device_sdk_path']}), "
        f"tenacity {info['tenacity']}",
        f"fleet: {settings.devices:,} devices on the primary, all links lost at t=0; primary "
        f"down for {settings.outage:g} s, then up; secondary always up; seed {settings.seed}; "
        f"hub admission {capacity}",
        "policies:",
        *(f"  {row.label}: {row.source}" for row in rows),
    ]
    if left_out:
        lines.extend(f"left out: {text}" for text in left_out)
    return "\n".join(lines)


def format_report(results: dict[str, list[dict[str, Any]]], settings: Settings) -> str:
    parts = [format_table(key, results[key], settings) for key in SCENARIOS]
    if settings.admit_rate is not None:
        parts.append(format_throttled(results, settings))
    single = {row["contender"]: row for row in results["single-hub"]}
    for key in ("sdk-default", "fixed-1s"):
        parts.append("single-hub, " + format_histogram(single[key], settings.outage))
    took = sum(row["simulated_in_seconds"] for rows in results.values() for row in rows)
    problems = failures(results)
    verdict = "every device home in every row" if not problems else "FAIL: " + "; ".join(problems)
    parts.append(f"{verdict}; simulated in {took:.1f} s of wall time")
    return "\n\n".join(parts)


# -- main -------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--devices", type=int, default=DEVICES, help=f"fleet size (default {DEVICES:,})"
    )
    parser.add_argument(
        "--outage",
        type=float,
        default=OUTAGE,
        help=f"seconds the primary is down (default {OUTAGE:g})",
    )
    parser.add_argument("--seed", type=int, default=SEED, help=f"for the jitter (default {SEED})")
    parser.add_argument(
        "--admit-rate",
        "--capacity",
        dest="admit_rate",
        type=float,
        default=None,
        metavar="R",
        help="new connections each hub admits per second (token bucket, burst R); the rest "
        f"are refused with CONNACK 0x{REFUSAL_CODE:02X}; adds the throttled scenarios "
        "(default: hubs admit everyone)",
    )
    parser.add_argument(
        "--profile",
        action="append",
        metavar="NAME",
        help="a firmware profile to compare (repeatable; default: every shipped profile "
        f"except {', '.join(DEFAULT_EXCLUDED)})",
    )
    report.add_json_option(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not 1 <= args.devices <= MAX_DEVICES:
        parser.error(f"--devices must be between 1 and {MAX_DEVICES}")
    if not 0 < args.outage <= MAX_OUTAGE:
        parser.error(f"--outage must be > 0 and at most {MAX_OUTAGE:g}")
    if args.admit_rate is not None and not 1 <= args.admit_rate < math.inf:
        parser.error("--admit-rate must be at least 1")
    settings = Settings(
        devices=args.devices, outage=args.outage, seed=args.seed, admit_rate=args.admit_rate
    )
    try:
        rows = contenders(args.profile if args.profile else default_profiles())
    except ConfigError as exc:
        parser.error(str(exc))
    info = machine_info()
    if not report.json_only(args.json):
        print(format_header(info, settings, rows), end="\n\n", flush=True)
    results = run_benchmark(settings, rows)

    def document() -> dict[str, Any]:
        return {
            "machine": info,
            "command": " ".join(
                ["python", "benchmarks/fleet.py", *(sys.argv[1:] if argv is None else argv)]
            ),
            "settings": dataclasses.asdict(settings)
            | {"settled_seconds": SETTLED, "events_per_device": EVENTS_PER_DEVICE},
            "contenders": [row.as_dict() for row in rows],
            "scenarios": {key: (SCENARIOS | THROTTLED)[key] for key in results},
            "results": results,
            "failures": failures(results),
        }

    report.emit(lambda: format_report(results, settings), document, args.json)
    return 1 if failures(results) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Retry policy as a frozen value that builds tenacity strategies.

There are no sleep loops here: a `RetryPolicy` names *how* to back off and
hands tenacity ``wait``/``stop`` objects to whoever drives the retries. The
engine keeps its position in the schedule in a `Backoff` value, which survives
reconnect cycles (urllib3 ``Retry`` style: every change returns a new value).

Randomness is injectable (``rng``) so tests and fleet simulations are
deterministic; by default each wait object gets its own ``random.Random``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

import tenacity
from tenacity.stop import stop_after_attempt, stop_base, stop_never
from tenacity.wait import wait_base, wait_exponential, wait_fixed, wait_none

from device_sdk.core.failover import Delay
from device_sdk.errors import ConfigError

Strategy = Literal["exponential_jitter", "decorrelated_jitter", "fixed", "immediate", "none"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)


class FullJitterWait(wait_exponential):
    """``wait_random_exponential`` with an injectable random source.

    Uniform in ``[0, min(maximum, initial * multiplier ** (n - 1))]`` for attempt n
    (AWS "full jitter"): the widening window spreads a fleet's reconnects.
    """

    def __init__(
        self, *, initial: float, maximum: float, multiplier: float, rng: random.Random | None = None
    ) -> None:
        super().__init__(multiplier=initial, max=maximum, exp_base=multiplier)
        self._rng = rng if rng is not None else random.Random()

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        return self._rng.uniform(0.0, super().__call__(retry_state))


class DecorrelatedJitterWait(wait_base):
    """AWS "decorrelated jitter": ``min(maximum, uniform(initial, previous * 3))``.

    The previous sleep is read from tenacity's ``retry_state.upcoming_sleep``,
    which still holds it when the next wait is computed; the object itself
    stays stateless, so one policy value can serve any number of retry loops.
    """

    def __init__(self, *, initial: float, maximum: float, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.maximum = maximum
        self._rng = rng if rng is not None else random.Random()

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        previous = max(self.initial, retry_state.upcoming_sleep)
        return min(self.maximum, self._rng.uniform(self.initial, previous * 3))


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How to back off between connect attempts. A value: profiles name policies.

    ``max_attempts=None`` retries forever, the right default for an unattended
    device. ``long_delay`` is used when only hubs that refused us remain.
    """

    strategy: Strategy = "exponential_jitter"
    initial: float = 0.1
    maximum: float = 30.0
    multiplier: float = 2.0
    long_delay: float = 300.0
    # Why: a hub that accepts and then drops at once must not get a fresh,
    # fast retry schedule each time; only a link that stayed up resets it.
    stable_after: float = 10.0
    max_attempts: int | None = None
    # Why: when a hub dies, every device of a fleet loses its link in the same
    # instant; dialling at once lands the whole fleet on the next hub together,
    # where a rate-limited hub refuses all but its admission rate. Spreading
    # the first attempt after a lost link uniformly over this many seconds
    # (about fleet size / the hub's admitted connects per second) lets the hub
    # take them as they come. 0 keeps a lone device's recovery immediate.
    first_attempt_spread: float = 0.0
    # Why: a hub that answers "busy" (server busy, quota or connection rate
    # exceeded, server unavailable) is usually taking a crowd that arrived
    # together, e.g. a fleet whose other hub died. Retrying on the ordinary
    # schedule (0.1 s, 0.2 s, ...) gets a device refused again and again before
    # its window is wide enough for the hub's rate. Once n attempts since the
    # last stable link were refused as busy, every backoff wait (to that hub or
    # to the next) is drawn uniformly up to busy_initial * multiplier ** (n - 1)
    # (capped at ``maximum``), or the ordinary draw when that is longer. A lone
    # device never sees "busy" from a healthy hub, so its recovery is unchanged.
    # 0 treats "busy" as any transient refusal.
    busy_initial: float = 10.0

    def __post_init__(self) -> None:
        jittered = self.strategy in ("exponential_jitter", "decorrelated_jitter")
        attempts = self.max_attempts
        lowest = "> 0 (jittered strategies)" if jittered else ">= 0"
        for name, ok, allowed in (
            ("strategy", self.strategy in STRATEGIES, " | ".join(STRATEGIES)),
            ("initial", _finite(self.initial, 0) and (self.initial > 0 or not jittered), lowest),
            ("maximum", _finite(self.maximum, self.initial), f">= initial ({self.initial})"),
            ("multiplier", _finite(self.multiplier, 1.0), ">= 1"),
            ("long_delay", _finite(self.long_delay, 0), ">= 0"),
            ("stable_after", _finite(self.stable_after, 0), ">= 0"),
            ("max_attempts", attempts is None or _positive_int(attempts), "None or int >= 1"),
            ("first_attempt_spread", _finite(self.first_attempt_spread, 0), ">= 0"),
            ("busy_initial", _finite(self.busy_initial, 0), ">= 0"),
        ):
            if not ok:
                raise ConfigError(f"retry.{name}", getattr(self, name), allowed)

    # ---- named constructors

    @classmethod
    def exponential(
        cls, *, initial: float = 0.1, maximum: float = 30.0, multiplier: float = 2.0, **more: Any
    ) -> RetryPolicy:
        """Exponential backoff with full jitter, capped (the default)."""
        return cls(initial=initial, maximum=maximum, multiplier=multiplier, **more)

    @classmethod
    def decorrelated(
        cls, *, initial: float = 0.1, maximum: float = 30.0, **more: Any
    ) -> RetryPolicy:
        """AWS decorrelated jitter, capped."""
        return cls(strategy="decorrelated_jitter", initial=initial, maximum=maximum, **more)

    @classmethod
    def fixed(cls, delay: float, **more: Any) -> RetryPolicy:
        """The same delay before every retry."""
        return cls(strategy="fixed", initial=delay, maximum=delay, **more)

    @classmethod
    def immediate(cls, **more: Any) -> RetryPolicy:
        """Retry at once (tests; never for a fleet)."""
        return cls(strategy="immediate", initial=0.0, maximum=0.0, **more)

    @classmethod
    def never(cls, **more: Any) -> RetryPolicy:
        """No retries at all: one attempt."""
        return cls(strategy="none", **more)

    # ---- tenacity values

    def tenacity_wait(self, rng: random.Random | None = None) -> wait_base:
        """The tenacity wait strategy for this policy (compose it with ``+`` freely)."""
        if self.strategy == "exponential_jitter":
            return FullJitterWait(
                initial=self.initial, maximum=self.maximum, multiplier=self.multiplier, rng=rng
            )
        if self.strategy == "decorrelated_jitter":
            return DecorrelatedJitterWait(initial=self.initial, maximum=self.maximum, rng=rng)
        if self.strategy == "fixed":
            return wait_fixed(self.initial)
        return wait_none()

    def tenacity_stop(self) -> stop_base:
        """The tenacity stop strategy: never, after ``max_attempts``, or after one ("none")."""
        if self.strategy == "none":
            return stop_after_attempt(1)
        if self.max_attempts is not None:
            return stop_after_attempt(self.max_attempts)
        return stop_never

    # ---- for the engine's own reconnect loop

    def delay_for(self, backoff: Backoff, delay: Delay, rng: random.Random | None = None) -> float:
        """Seconds to wait before an attempt the failover machine asked for."""
        if delay is Delay.NONE:
            return 0.0
        if delay is Delay.LONG:
            return self.long_delay
        state = tenacity.RetryCallState(_RETRYING, fn=None, args=(), kwargs={})
        state.attempt_number = max(1, backoff.failures)
        state.upcoming_sleep = backoff.last_delay
        source = rng if rng is not None else random.Random()
        return self._stretched(float(self.tenacity_wait(source)(state)), backoff.busy, source)

    def _stretched(self, seconds: float, busy: int, source: random.Random) -> float:
        """``seconds``, or a longer draw over the busy window after ``busy`` busy answers;
        no draw at all when that cannot change the wait (no busy answer, no window)."""
        if busy and self.busy_initial > 0 and self.maximum > 0:
            return max(seconds, source.uniform(0.0, self.busy_window(busy)))
        return seconds

    def busy_window(self, busy: int) -> float:
        """The busy window after ``busy`` refusals that said "busy" (at least one):
        ``busy_initial * multiplier ** (busy - 1)``, capped at ``maximum``."""
        try:  # a float power, so a long busy streak overflows at once, never builds a huge int
            window = self.busy_initial * float(self.multiplier) ** max(0, busy - 1)
        except OverflowError:
            return self.maximum
        return min(self.maximum, window)

    def first_attempt_delay(
        self, rng: random.Random | None = None, backoff: Backoff | None = None
    ) -> float:
        """Seconds to wait before the first attempt after a lost link: uniform in
        ``[0, first_attempt_spread]``, and 0 without drawing when there is no spread
        (so a seeded ``rng`` shared with other draws gives them what it gave before).
        When ``backoff`` counts busy answers (the hub dropped the link saying it was
        busy, or refused us so since the last stable link), the longer of that and a
        draw over the busy window (`busy_window`).
        """
        source = rng if rng is not None else random.Random()
        seconds = 0.0
        if self.first_attempt_spread > 0:
            seconds = source.uniform(0.0, self.first_attempt_spread)
        return self._stretched(seconds, 0 if backoff is None else backoff.busy, source)

    def next_delay(
        self, backoff: Backoff, delay: Delay, rng: random.Random | None = None
    ) -> tuple[float, Backoff]:
        """`delay_for` plus the `Backoff` that remembers it (decorrelated jitter needs it)."""
        seconds = self.delay_for(backoff, delay, rng)
        return seconds, backoff.waited(seconds)

    def exhausted(self, backoff: Backoff) -> bool:
        """True when no further attempt is allowed (``max_attempts`` or strategy "none")."""
        limit = 1 if self.strategy == "none" else self.max_attempts
        return limit is not None and backoff.failures >= limit


# Only a carrier for RetryCallState; never iterated.
_RETRYING = tenacity.Retrying()


@dataclass(frozen=True, slots=True)
class Backoff:
    """Where the engine is in its backoff schedule, across reconnect cycles. Immutable.

    ``failures`` counts failed attempts since the last *stable* link, and ``busy``
    those of them a hub refused as busy; ``last_delay`` is the previous backoff
    sleep (for decorrelated jitter).
    """

    failures: int = 0
    up_since: float | None = None
    last_delay: float = 0.0
    busy: int = 0

    @classmethod
    def start(cls) -> Backoff:
        return cls()

    def failed(self, *, busy: bool = False) -> Backoff:
        """One more failed attempt (or a link that died); ``busy``: the hub said so."""
        return replace(self, failures=self.failures + 1, busy=self.busy + busy)

    def waited(self, seconds: float) -> Backoff:
        """Remember the backoff sleep just taken."""
        return replace(self, last_delay=seconds)

    def link_up(self, now: float) -> Backoff:
        return replace(self, up_since=now)

    def link_down(self, now: float, policy: RetryPolicy, *, busy: bool = False) -> Backoff:
        """The link ended: reset only if it stayed up for ``policy.stable_after``.

        A link that ended sooner counts as a failed attempt, so the schedule keeps
        growing: a hub that accepts and then drops at once (or over one message)
        gets ever longer waits, never a storm of reconnects. ``busy``: the hub's
        DISCONNECT said busy, quota or rate exceeded; counted even after a stable link.
        """
        if self.up_since is not None and now - self.up_since >= policy.stable_after:
            return Backoff(busy=int(busy))
        return replace(self, up_since=None, failures=self.failures + 1, busy=self.busy + busy)


def _finite(value: object, minimum: object) -> bool:
    """A finite real number >= minimum (False, not TypeError, for anything else)."""
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in (value, minimum)):
        return False
    assert isinstance(value, int | float) and isinstance(minimum, int | float)
    return minimum <= value < float("inf")


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1

"""RetryPolicy builds tenacity values; tenacity records the delays instead of sleeping."""

from __future__ import annotations

import random
from typing import Any

import pytest
import tenacity

from device_sdk.core.failover import Attempt, Delay
from device_sdk.core.retry import STRATEGIES, Backoff, RetryPolicy
from device_sdk.errors import ConfigError


def recorded_sleeps(policy: RetryPolicy, attempts: int = 12, seed: int = 7) -> list[float]:
    """Run a always-failing call under the policy; return the sleeps tenacity asked for."""
    sleeps: list[float] = []
    calls: list[None] = []

    def always_refused() -> None:
        calls.append(None)
        raise ConnectionRefusedError

    retrying = tenacity.Retrying(
        sleep=sleeps.append,
        wait=policy.tenacity_wait(random.Random(seed)),
        stop=policy.tenacity_stop() | tenacity.stop_after_attempt(attempts),
        reraise=True,
    )
    with pytest.raises(ConnectionRefusedError):
        retrying(always_refused)
    assert len(sleeps) == len(calls) - 1
    return sleeps


@pytest.mark.parametrize("seed", range(5))
def test_full_jitter_stays_in_the_widening_window_and_is_capped(seed: int) -> None:
    policy = RetryPolicy.exponential(initial=0.1, maximum=5.0, multiplier=2.0)
    sleeps = recorded_sleeps(policy, attempts=15, seed=seed)
    assert len(sleeps) == 14
    for n, slept in enumerate(sleeps, start=1):
        assert 0.0 <= slept <= min(5.0, 0.1 * 2.0 ** (n - 1)), n


def test_full_jitter_spreads_a_fleet() -> None:
    # Ten thousand devices failing at once do not retry at once.
    policy = RetryPolicy()
    first = [
        policy.delay_for(Backoff(failures=8), Delay.BACKOFF, random.Random(i))
        for i in range(10_000)
    ]
    window = min(policy.maximum, policy.initial * policy.multiplier**7)
    buckets = {int(d / window * 10) for d in first}
    assert buckets == set(range(10))
    assert sum(first) / len(first) == pytest.approx(window / 2, rel=0.05)


@pytest.mark.parametrize("seed", range(5))
def test_decorrelated_jitter_bounds(seed: int) -> None:
    policy = RetryPolicy.decorrelated(initial=0.1, maximum=3.0)
    sleeps = recorded_sleeps(policy, attempts=20, seed=seed)
    previous = 0.1
    for slept in sleeps:
        assert 0.1 <= slept <= min(3.0, previous * 3)
        previous = slept


def test_fixed_and_immediate() -> None:
    assert recorded_sleeps(RetryPolicy.fixed(0.5), attempts=4) == [0.5, 0.5, 0.5]
    assert recorded_sleeps(RetryPolicy.immediate(), attempts=4) == [0.0, 0.0, 0.0]


def test_none_stops_after_the_first_attempt() -> None:
    assert recorded_sleeps(RetryPolicy.never()) == []


def test_max_attempts_stops_tenacity() -> None:
    assert len(recorded_sleeps(RetryPolicy(max_attempts=3), attempts=100)) == 2


def test_retries_forever_by_default() -> None:
    assert RetryPolicy().tenacity_stop() is tenacity.stop.stop_never


def test_tenacity_values_compose() -> None:
    # a policy's wait is a plain tenacity value: it composes with others
    wait = RetryPolicy.fixed(1.0).tenacity_wait() + tenacity.wait_fixed(0.5)
    sleeps: list[float] = []
    retrying = tenacity.Retrying(
        sleep=sleeps.append, wait=wait, stop=tenacity.stop_after_attempt(2), reraise=True
    )
    with pytest.raises(ZeroDivisionError):
        retrying(lambda: 1 / 0)
    assert sleeps == [1.5]


# --------------------------------------------------------------------------- delay_for


def test_delay_kinds() -> None:
    policy = RetryPolicy(long_delay=120.0)
    rng = random.Random(1)
    backoff = Backoff.start().failed().failed().failed()
    assert policy.delay_for(backoff, Delay.NONE, rng) == 0.0
    assert policy.delay_for(backoff, Delay.LONG, rng) == 120.0
    assert 0.0 <= policy.delay_for(backoff, Delay.BACKOFF, rng) <= 0.4


def test_delay_for_is_deterministic_with_a_seeded_rng() -> None:
    policy = RetryPolicy()
    backoff = Backoff(failures=5)
    first = policy.delay_for(backoff, Delay.BACKOFF, random.Random(42))
    assert first == policy.delay_for(backoff, Delay.BACKOFF, random.Random(42))


def test_delay_for_caps_at_maximum() -> None:
    policy = RetryPolicy.fixed(2.0)
    assert policy.delay_for(Backoff(failures=1), Delay.BACKOFF) == 2.0
    exp = RetryPolicy(initial=1.0, maximum=4.0)
    delays = [
        exp.delay_for(Backoff(failures=60), Delay.BACKOFF, random.Random(i)) for i in range(50)
    ]
    assert max(delays) <= 4.0


def test_next_delay_remembers_the_sleep_for_decorrelated_jitter() -> None:
    policy = RetryPolicy.decorrelated(initial=0.1, maximum=30.0)
    rng = random.Random(3)
    backoff = Backoff.start()
    for _ in range(10):
        previous = max(0.1, backoff.last_delay)
        seconds, backoff = policy.next_delay(backoff.failed(), Delay.BACKOFF, rng)
        assert 0.1 <= seconds <= previous * 3
        assert backoff.last_delay == seconds


def test_exhausted() -> None:
    assert not RetryPolicy().exhausted(Backoff(failures=10_000))
    assert RetryPolicy(max_attempts=3).exhausted(Backoff(failures=3))
    assert not RetryPolicy(max_attempts=3).exhausted(Backoff(failures=2))
    assert RetryPolicy.never().exhausted(Backoff(failures=1))


# --------------------------------------------------------------------------- Backoff across cycles

POLICY = RetryPolicy(stable_after=10.0)


@pytest.mark.parametrize(
    ("up_at", "down_at", "failures_after"),
    [
        (100.0, 100.5, 4),  # accepted then dropped at once: one more failure, no storm
        (100.0, 109.9, 4),
        (100.0, 110.0, 0),  # stayed up for stable_after: start over
        (100.0, 5000.0, 0),
        # A real monotonic clock is days or months in: the rule is about the difference.
        (8_640_000.0, 8_640_000.5, 4),
        (8_640_000.0, 8_640_010.0, 0),
    ],
)
def test_backoff_resets_only_after_a_stable_link(
    up_at: float, down_at: float, failures_after: int
) -> None:
    backoff = Backoff.start().failed().failed().failed()
    backoff = backoff.link_up(up_at).link_down(down_at, POLICY)
    assert backoff.failures == failures_after
    assert backoff.up_since is None


def test_link_down_without_link_up_counts_as_a_failure() -> None:
    assert Backoff(failures=2).link_down(50.0, POLICY).failures == 3


def test_backoff_is_immutable() -> None:
    start = Backoff.start()
    assert start.failed() is not start
    assert start.failures == 0
    with pytest.raises(AttributeError):
        start.failures = 3  # type: ignore[misc]


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "options",
    [
        {"strategy": "linear"},
        {"initial": -1.0},
        {"initial": 0.0},  # a jittered window of zero would never back off
        {"maximum": 1.0, "initial": 2.0},
        {"multiplier": 0.5},
        {"long_delay": float("nan")},
        {"stable_after": -1.0},
        {"max_attempts": 0},
        {"max_attempts": True},
        {"maximum": "30"},
        {"initial": "0.1"},
    ],
)
def test_validation(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=f"retry.{next(iter(options))}"):
        RetryPolicy(**options)


def test_named_constructors_pass_extra_fields() -> None:
    policy = RetryPolicy.fixed(1.0, max_attempts=5, long_delay=60.0)
    assert (policy.strategy, policy.initial, policy.max_attempts, policy.long_delay) == (
        "fixed",
        1.0,
        5,
        60.0,
    )
    assert RetryPolicy.immediate().strategy == "immediate"


def test_named_constructors_are_the_policies_their_fields_describe() -> None:
    assert RetryPolicy.exponential() == RetryPolicy()
    assert RetryPolicy.decorrelated() == RetryPolicy(strategy="decorrelated_jitter")
    assert RetryPolicy.immediate() == RetryPolicy(strategy="immediate", initial=0.0, maximum=0.0)
    assert RetryPolicy.never() == RetryPolicy(strategy="none")
    # a fixed delay above the default maximum is still that delay
    assert RetryPolicy.fixed(45.0) == RetryPolicy(strategy="fixed", initial=45.0, maximum=45.0)
    assert RetryPolicy.exponential(
        initial=0.5, maximum=8.0, multiplier=3.0, long_delay=60.0
    ) == RetryPolicy(initial=0.5, maximum=8.0, multiplier=3.0, long_delay=60.0)
    assert RetryPolicy.decorrelated(initial=0.5, maximum=8.0, stable_after=2.0) == RetryPolicy(
        strategy="decorrelated_jitter", initial=0.5, maximum=8.0, stable_after=2.0
    )
    assert RetryPolicy.immediate(max_attempts=2).max_attempts == 2
    assert RetryPolicy.never(long_delay=5.0).long_delay == 5.0


# --------------------------------------------------------------------------- the rules, exactly
# A stub random source that always draws the top (or the bottom) of the range it is given
# shows the exact window each strategy computes, with nothing left to chance.


class Highest(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return b


class Lowest(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return a


@pytest.mark.parametrize("strategy", ["exponential_jitter", "decorrelated_jitter", "fixed"])
def test_every_delay_kind_through_next_delay(strategy: Any) -> None:
    # "Every hub refused us" must wait long_delay, "a new hub" nothing, a retry the policy's
    # backoff; and the Backoff returned remembers exactly the sleep that was taken.
    policy = RetryPolicy(strategy=strategy, initial=0.5, maximum=8.0, long_delay=240.0)
    backoff = Backoff(failures=3, last_delay=1.0)
    assert policy.next_delay(backoff, Delay.NONE, Highest()) == (0.0, backoff.waited(0.0))
    assert policy.next_delay(backoff, Delay.LONG, Highest()) == (240.0, backoff.waited(240.0))
    seconds, after = policy.next_delay(backoff, Delay.BACKOFF, Highest())
    assert (
        seconds == {"exponential_jitter": 2.0, "decorrelated_jitter": 3.0, "fixed": 0.5}[strategy]
    )
    assert after == backoff.waited(seconds)


@pytest.mark.parametrize("multiplier", [1.0, 1.5, 3.0, 10.0])
def test_the_full_jitter_window_grows_by_the_multiplier(multiplier: float) -> None:
    # Attempt n draws from [0, min(maximum, initial * multiplier ** (n - 1))]; n counts the
    # failures since the last stable link, and the first retry (n <= 1) uses initial itself.
    policy = RetryPolicy(initial=0.2, maximum=50.0, multiplier=multiplier)
    for failures in range(0, 8):
        top = policy.delay_for(Backoff(failures=failures), Delay.BACKOFF, Highest())
        expected = min(50.0, 0.2 * multiplier ** (max(1, failures) - 1))
        assert top == pytest.approx(expected, rel=1e-12), failures
        assert policy.delay_for(Backoff(failures=failures), Delay.BACKOFF, Lowest()) == 0.0


def test_a_multiplier_reaches_tenacity_too() -> None:
    # The same window for tenacity's own loop (the policy's public tenacity value).
    sleeps = recorded_sleeps(RetryPolicy(initial=1.0, maximum=1000.0, multiplier=5.0), attempts=5)
    assert all(s <= 1.0 * 5.0**n for n, s in enumerate(sleeps))
    assert any(s > 1.0 * 2.0**n for n, s in enumerate(sleeps))  # wider than the default 2


def test_decorrelated_jitter_grows_from_the_last_sleep_and_is_capped() -> None:
    policy = RetryPolicy.decorrelated(initial=0.5, maximum=10.0)
    # from nothing: between initial and 3 * initial
    assert policy.delay_for(Backoff(failures=1), Delay.BACKOFF, Highest()) == 1.5
    assert policy.delay_for(Backoff(failures=1), Delay.BACKOFF, Lowest()) == 0.5
    # from the last sleep: up to three times it, never above maximum, never below initial
    assert policy.delay_for(Backoff(failures=2, last_delay=2.0), Delay.BACKOFF, Highest()) == 6.0
    assert policy.delay_for(Backoff(failures=2, last_delay=2.0), Delay.BACKOFF, Lowest()) == 0.5
    assert policy.delay_for(Backoff(failures=9, last_delay=9.0), Delay.BACKOFF, Highest()) == 10.0


def test_immediate_and_never_do_not_wait() -> None:
    for policy in (RetryPolicy.immediate(), RetryPolicy.never()):
        assert policy.delay_for(Backoff(failures=5), Delay.BACKOFF, Highest()) == 0.0


def test_without_an_rng_each_wait_draws_its_own_randomness() -> None:
    # The default is a fresh generator per wait object: two devices built alike still differ.
    policy = RetryPolicy(initial=1.0, maximum=1000.0)
    draws = {policy.delay_for(Backoff(failures=10), Delay.BACKOFF) for _ in range(20)}
    assert len(draws) > 1
    decorrelated = RetryPolicy.decorrelated(initial=1.0, maximum=1000.0)
    draws = {decorrelated.delay_for(Backoff(failures=2), Delay.BACKOFF) for _ in range(20)}
    assert len(draws) > 1


def test_max_attempts_counts_every_attempt_and_never_allows_one() -> None:
    assert recorded_sleeps(RetryPolicy(max_attempts=1), attempts=100) == []
    assert not RetryPolicy(max_attempts=1).exhausted(Backoff(failures=0))
    assert RetryPolicy(max_attempts=1).exhausted(Backoff(failures=1))
    assert not RetryPolicy.never().exhausted(Backoff(failures=0))
    # "none" stops after one attempt even if max_attempts says more
    assert RetryPolicy.never(max_attempts=5).exhausted(Backoff(failures=1))
    assert len(recorded_sleeps(RetryPolicy.never(max_attempts=5), attempts=100)) == 0


def test_a_link_up_exactly_stable_after_resets_and_one_tick_short_does_not() -> None:
    # On a realistic monotonic clock (100 days in), where a sum instead of a difference
    # would make every link look stable.
    policy = RetryPolicy(stable_after=10.0)
    up = Backoff(failures=4, last_delay=3.0).link_up(8_640_000.0)
    assert up.link_down(8_640_010.0, policy) == Backoff()
    short = up.link_down(8_640_009.75, policy)
    assert (short.failures, short.up_since, short.last_delay) == (5, None, 3.0)
    # stable_after=0: any link that came up resets the schedule
    assert up.link_down(8_640_000.0, RetryPolicy(stable_after=0.0)) == Backoff()


# --------------------------------------------------------------------------- boundaries
# What a profile may say, exactly: the messages are what a user reads when a profile fails.

INF = float("inf")


@pytest.mark.parametrize(
    ("options", "field", "allowed"),
    [
        ({"strategy": "linear"}, "strategy", " | ".join(STRATEGIES)),
        ({"initial": INF}, "initial", "> 0 (jittered strategies)"),
        ({"initial": -0.1, "strategy": "fixed"}, "initial", ">= 0"),
        (
            {"initial": 0.0, "strategy": "decorrelated_jitter"},
            "initial",
            "> 0 (jittered strategies)",
        ),
        ({"maximum": INF}, "maximum", ">= initial (0.1)"),
        ({"maximum": 0.09}, "maximum", ">= initial (0.1)"),
        ({"multiplier": INF}, "multiplier", ">= 1"),
        ({"multiplier": 0.99}, "multiplier", ">= 1"),
        ({"long_delay": INF}, "long_delay", ">= 0"),
        ({"long_delay": -0.001}, "long_delay", ">= 0"),
        ({"stable_after": INF}, "stable_after", ">= 0"),
        ({"stable_after": float("nan")}, "stable_after", ">= 0"),
        ({"max_attempts": 0}, "max_attempts", "None or int >= 1"),
        ({"max_attempts": 2.0}, "max_attempts", "None or int >= 1"),
        ({"multiplier": True}, "multiplier", ">= 1"),
        ({"long_delay": None}, "long_delay", ">= 0"),
        ({"first_attempt_spread": -0.001}, "first_attempt_spread", ">= 0"),
        ({"first_attempt_spread": INF}, "first_attempt_spread", ">= 0"),
        ({"first_attempt_spread": float("nan")}, "first_attempt_spread", ">= 0"),
        ({"first_attempt_spread": "60"}, "first_attempt_spread", ">= 0"),
        ({"busy_initial": -0.001}, "busy_initial", ">= 0"),
        ({"busy_initial": INF}, "busy_initial", ">= 0"),
        ({"busy_initial": float("nan")}, "busy_initial", ">= 0"),
        ({"busy_initial": "10"}, "busy_initial", ">= 0"),
    ],
)
def test_refused_values_name_the_field_and_what_is_allowed(
    options: dict[str, Any], field: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        RetryPolicy(**options)
    assert (refused.value.field, refused.value.allowed) == (f"retry.{field}", allowed)
    assert str(refused.value).startswith(f"retry.{field} = {options[field]!r} is invalid")


@pytest.mark.parametrize(
    "options",
    [
        {"strategy": "fixed", "initial": 0.0, "maximum": 0.0},  # fixed and immediate may be 0
        {"strategy": "immediate", "initial": 0.0, "maximum": 0.0},
        {"strategy": "none", "initial": 0.0, "maximum": 0.0},
        {"initial": 1e-9, "maximum": 1e-9},  # jittered: any positive initial; maximum == initial
        {"multiplier": 1.0},  # no growth at all is allowed
        {"long_delay": 0.0, "stable_after": 0.0},
        {"max_attempts": 1},
        {"initial": 1, "maximum": 30, "long_delay": 300, "stable_after": 10},  # ints from TOML
        {"first_attempt_spread": 0.0},
        {"first_attempt_spread": 600},
        {"busy_initial": 0},
        {"busy_initial": 3600.0},
    ],
)
def test_boundary_values_are_accepted(options: dict[str, Any]) -> None:
    policy = RetryPolicy(**options)
    assert all(getattr(policy, name) == value for name, value in options.items())


# --------------------------------------------------------------------------- first attempt spread


def test_no_spread_by_default_and_no_draw_from_a_shared_rng() -> None:
    rng, untouched = random.Random(5), random.Random(5)
    assert RetryPolicy().first_attempt_spread == 0.0
    assert RetryPolicy().first_attempt_delay(rng) == 0.0
    # The engine shares its rng with probe times: no spread must leave their draws alone.
    assert rng.random() == untouched.random()


def test_the_first_attempt_is_spread_uniformly_over_the_window() -> None:
    policy = RetryPolicy(first_attempt_spread=100.0)
    rng = random.Random(11)
    delays = [policy.first_attempt_delay(rng) for _ in range(2000)]
    assert all(0.0 <= d <= 100.0 for d in delays)
    # A fleet's first attempts cover the window evenly: every tenth of it holds about a tenth.
    tenths = [sum(1 for d in delays if k * 10 <= d < (k + 1) * 10) for k in range(10)]
    assert min(tenths) > 150 and max(tenths) < 250, tenths
    again = random.Random(11)
    assert policy.first_attempt_delay(again) == delays[0]  # seeded: reproducible
    # The window starts at 0: some devices dial almost at once, as without a spread.
    short = RetryPolicy(first_attempt_spread=2.0)
    assert min(short.first_attempt_delay(rng) for _ in range(500)) < 0.1


def test_without_an_rng_the_spread_still_draws() -> None:
    policy = RetryPolicy(first_attempt_spread=10.0)
    delays = {policy.first_attempt_delay() for _ in range(20)}
    assert len(delays) > 1 and all(0.0 <= d <= 10.0 for d in delays)


def _engine_waits(spread: float, *, after_a_lost_link: bool) -> list[float]:
    """The sleeps the engine takes before a cycle's first attempt, on virtual time."""
    from device_sdk.config import ClientConfig, HubEndpoint
    from device_sdk.engine import Engine

    config = ClientConfig(
        client_id="fleet-17",
        hubs=(HubEndpoint(name="primary", fqdn="127.0.0.1"),),
        retry=RetryPolicy(first_attempt_spread=spread),
    )
    engine = Engine(config, rng=random.Random(3))
    sleeps: list[float] = []
    connected = object()
    try:
        engine._sleep = sleeps.append  # type: ignore[method-assign]
        engine._attempt_once = lambda: connected  # type: ignore[assignment,method-assign,return-value]
        if after_a_lost_link:
            engine._outage_started = 0.0  # as _after_link leaves it
        assert engine._recover(Attempt("primary", Delay.NONE, "link lost")) is connected
    finally:
        engine.close()
    return sleeps


def test_the_engine_spreads_the_first_attempt_after_a_lost_link() -> None:
    expected = RetryPolicy(first_attempt_spread=50.0).first_attempt_delay(random.Random(3))
    assert 0.0 < expected < 50.0
    assert _engine_waits(50.0, after_a_lost_link=True) == [expected]


def test_the_engine_dials_at_once_at_start_and_without_a_spread() -> None:
    assert _engine_waits(50.0, after_a_lost_link=False) == []  # connect() is not delayed
    assert [s for s in _engine_waits(0.0, after_a_lost_link=True) if s > 0] == []


# --------------------------------------------------------------------------- busy hubs


class Counting(random.Random):
    """Counts its draws and returns the top of each range."""

    def __init__(self) -> None:
        super().__init__(0)
        self.draws = 0

    def uniform(self, a: float, b: float) -> float:
        self.draws += 1
        return b


def test_busy_refusals_are_counted_and_reset_only_by_a_stable_link() -> None:
    backoff = Backoff.start().failed(busy=True).failed().failed(busy=True)
    assert (backoff.failures, backoff.busy) == (3, 2)
    policy = RetryPolicy(stable_after=10.0)
    up = backoff.link_up(100.0)
    assert up.link_down(105.0, policy).busy == 2  # a short link: still a crowd out there
    assert up.link_down(110.0, policy) == Backoff()


@pytest.mark.parametrize("busy", [1, 2, 3, 4, 5])
def test_after_busy_refusals_the_window_starts_at_busy_initial_and_doubles(busy: int) -> None:
    policy = RetryPolicy(initial=0.1, maximum=30.0, busy_initial=4.0)
    backoff = Backoff(failures=busy, busy=busy)
    expected = min(30.0, 4.0 * 2.0 ** (busy - 1))  # 4, 8, 16, 30, 30
    assert policy.busy_window(busy) == expected
    assert policy.delay_for(backoff, Delay.BACKOFF, Highest()) == expected
    assert policy.delay_for(backoff, Delay.BACKOFF, Lowest()) == 0.0
    # A draw from [0, window]: never more, and spread over all of it.
    draws = [policy.delay_for(backoff, Delay.BACKOFF, random.Random(i)) for i in range(400)]
    assert max(draws) <= expected and max(draws) > 0.9 * expected
    assert min(draws) < 0.1 * expected


def test_the_ordinary_draw_wins_when_it_is_longer() -> None:
    policy = RetryPolicy(initial=1.0, maximum=60.0, busy_initial=2.0)
    backoff = Backoff(failures=6, busy=1)  # ordinary window 32 s, busy window 2 s
    assert policy.delay_for(backoff, Delay.BACKOFF, Highest()) == 32.0


def test_without_busy_refusals_nothing_changes_and_nothing_more_is_drawn() -> None:
    policy = RetryPolicy()
    rng = Counting()
    assert policy.delay_for(Backoff(failures=3), Delay.BACKOFF, rng) == pytest.approx(0.4)
    assert rng.draws == 1


@pytest.mark.parametrize(
    "policy",
    [
        RetryPolicy(busy_initial=0),
        RetryPolicy.immediate(),
        RetryPolicy.fixed(0.5),
    ],
    ids=["busy_initial 0", "immediate", "fixed"],
)
def test_busy_never_stretches_a_policy_that_opts_out_or_has_no_room(policy: RetryPolicy) -> None:
    plain = policy.delay_for(Backoff(failures=2), Delay.BACKOFF, Highest())
    assert policy.delay_for(Backoff(failures=2, busy=2), Delay.BACKOFF, Highest()) == plain


def test_busy_leaves_no_wait_and_long_waits_alone() -> None:
    policy = RetryPolicy(busy_initial=10.0)
    backoff = Backoff(failures=4, busy=4)
    assert policy.delay_for(backoff, Delay.NONE, Highest()) == 0.0
    assert policy.delay_for(backoff, Delay.LONG, Highest()) == policy.long_delay


@pytest.mark.parametrize("multiplier", [1.5, 2, 10.0])
def test_the_busy_window_cannot_overflow(multiplier: float) -> None:
    policy = RetryPolicy(maximum=30.0, multiplier=multiplier, busy_initial=5.0)
    assert policy.busy_window(10_000) == 30.0
    assert policy.busy_window(10**9) == 30.0
    assert RetryPolicy(multiplier=1.0, maximum=30.0, busy_initial=5.0).busy_window(10_000) == 5.0


def test_a_slow_multiplier_grows_the_busy_window_exactly() -> None:
    policy = RetryPolicy(maximum=30.0, multiplier=1.01, busy_initial=10.0)
    for busy in (64, 65, 66, 100):
        assert policy.busy_window(busy) == pytest.approx(10.0 * 1.01 ** (busy - 1)), busy


def test_a_busy_window_below_a_second_and_a_cap_of_a_second_still_apply() -> None:
    policy = RetryPolicy(initial=0.01, maximum=1.0, busy_initial=0.5)
    assert policy.delay_for(Backoff(failures=1, busy=1), Delay.BACKOFF, Highest()) == 0.5
    assert policy.delay_for(Backoff(failures=2, busy=2), Delay.BACKOFF, Highest()) == 1.0


def test_busy_draws_nothing_when_it_cannot_change_the_wait() -> None:
    # busy_initial 0 opts out, and a policy capped at 0 has no room: neither takes a draw
    # from the engine's random source (shared with its other draws).
    for policy, draws in ((RetryPolicy(busy_initial=0), 1), (RetryPolicy.fixed(0.0), 0)):
        rng = Counting()
        policy.delay_for(Backoff(failures=2, busy=2), Delay.BACKOFF, rng)
        assert rng.draws == draws, policy


def test_without_an_rng_a_busy_wait_draws_its_own() -> None:
    policy = RetryPolicy(initial=0.001, maximum=30.0, busy_initial=20.0)
    waits = {policy.delay_for(Backoff(failures=1, busy=1), Delay.BACKOFF) for _ in range(20)}
    assert len(waits) == 20 and all(0.0 <= w <= 20.0 for w in waits)
    assert max(waits) > 1.0  # the busy window, not the 1 ms schedule


@pytest.mark.parametrize("strategy", ["exponential_jitter", "decorrelated_jitter"])
def test_a_tenacity_wait_without_an_rng_draws_its_own(strategy: Any) -> None:
    policy = RetryPolicy(strategy=strategy, initial=1.0, maximum=30.0)
    state = tenacity.RetryCallState(tenacity.Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = 3
    waits = {policy.tenacity_wait()(state) for _ in range(20)}
    assert len(waits) == 20 and all(0.0 <= w <= 30.0 for w in waits)


def test_a_hub_that_drops_us_saying_busy_counts_even_after_a_stable_link() -> None:
    policy = RetryPolicy(stable_after=10.0)
    up = Backoff.start().link_up(100.0)
    assert up.link_down(200.0, policy, busy=True) == Backoff(busy=1)
    assert up.link_down(200.0, policy) == Backoff()
    short = up.link_down(105.0, policy, busy=True)
    assert (short.failures, short.busy) == (1, 1)


def test_the_first_attempt_after_a_busy_drop_waits_over_the_busy_window() -> None:
    policy = RetryPolicy(busy_initial=8.0, maximum=30.0)
    assert policy.first_attempt_delay(Highest(), Backoff(busy=1)) == 8.0
    assert policy.first_attempt_delay(Highest(), Backoff(busy=3)) == 30.0
    assert policy.first_attempt_delay(Lowest(), Backoff(busy=1)) == 0.0
    # No busy answer: still no wait and no draw (a lone device's recovery is immediate).
    rng = Counting()
    assert policy.first_attempt_delay(rng, Backoff(failures=2)) == 0.0
    assert policy.first_attempt_delay(rng) == 0.0
    assert rng.draws == 0
    # With a spread too, the longer of the two draws.
    spread = RetryPolicy(busy_initial=8.0, first_attempt_spread=100.0)
    assert spread.first_attempt_delay(Highest(), Backoff(busy=1)) == 100.0
    assert RetryPolicy(busy_initial=0).first_attempt_delay(Highest(), Backoff(busy=5)) == 0.0
    assert RetryPolicy.immediate().first_attempt_delay(Highest(), Backoff(busy=5)) == 0.0


def test_a_first_attempt_spread_under_a_second_is_drawn_too() -> None:
    assert RetryPolicy(first_attempt_spread=0.5).first_attempt_delay(Highest()) == 0.5
    assert RetryPolicy(first_attempt_spread=0.5).first_attempt_delay(Lowest()) == 0.0

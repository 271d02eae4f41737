"""Dead-link detection on virtual time: RTT-derived deadlines, pings, exact wake-ups."""

from __future__ import annotations

from typing import Any

import pytest

from device_sdk.core.liveness import (
    Dead,
    Healthy,
    LinkWatchdog,
    LivenessPolicy,
    RttEstimator,
    SendPing,
)
from device_sdk.errors import ConfigError

# RFC 6298 alone (no RTT multiple), so the estimator's own arithmetic shows; the
# multiple has its own tests below.
POLICY = LivenessPolicy(
    keepalive=60.0, deadline_floor=1.0, deadline_ceiling=30.0, deadline_rtt_multiple=0.0
)


def settled(rtt: float, samples: int = 30, policy: LivenessPolicy = POLICY) -> LinkWatchdog:
    """A watchdog that has seen ``samples`` round trips of ``rtt``, ending before t=20."""
    dog = LinkWatchdog(policy, now=0.0)
    now = 0.0
    for token in range(samples):
        dog.on_ack_expected(token, now)
        assert dog.on_acked(token, now + rtt) == pytest.approx(rtt)
        now += max(0.5, rtt)
    return dog


# --------------------------------------------------------------------------- the estimator


def test_rfc6298_first_and_second_sample() -> None:
    first = RttEstimator().sample(0.2)
    assert (first.srtt, first.rttvar) == (0.2, 0.1)
    second = first.sample(0.4)
    assert second.rttvar == pytest.approx(0.75 * 0.1 + 0.25 * 0.2)
    assert second.srtt == pytest.approx(0.875 * 0.2 + 0.125 * 0.4)


@pytest.mark.parametrize(
    ("estimator", "deadline"),
    [
        (RttEstimator(), 5.0),  # no sample yet: initial_deadline
        (RttEstimator(srtt=0.001, rttvar=0.0), 1.0),  # floor
        (RttEstimator(srtt=2.0, rttvar=0.5), 4.0),  # srtt + 4 * rttvar
        (RttEstimator(srtt=20.0, rttvar=5.0), 30.0),  # ceiling
    ],
)
def test_deadline_is_clamped(estimator: RttEstimator, deadline: float) -> None:
    assert estimator.deadline(POLICY) == pytest.approx(deadline)


def test_loopback_rtt_converges_to_the_floor() -> None:
    fast = LivenessPolicy(deadline_floor=0.2, initial_deadline=1.0)
    assert settled(0.002, policy=fast).deadline == 0.2


def test_gradual_climb_to_two_seconds_never_trips_and_raises_the_deadline() -> None:
    dog = settled(0.3)
    assert dog.deadline == 1.0  # a 300 ms link sits at the floor
    now = 20.0
    for k in range(40):
        rtt = 0.3 + 1.7 * k / 39  # 300 ms -> 2 s over 40 round trips
        dog.on_ack_expected(k, now)
        verdict = dog.check(now + rtt - 1e-6)  # the worst moment: just before the ack
        assert not isinstance(verdict, Dead), (k, rtt, dog.deadline)
        dog.on_acked(k, now + rtt)
        now += rtt + 0.5
    assert dog.deadline > 2.0


def test_sudden_spike_past_the_deadline_is_dead() -> None:
    # The other side of the trade: a floor-level deadline does not wait for 2 s.
    dog = settled(0.3)
    dog.on_ack_expected("spike", 20.0)
    assert isinstance(dog.check(21.0), Dead)


def test_karns_rule_no_sample_from_a_retransmission() -> None:
    dog = settled(0.3)
    before = dog.estimator
    dog.on_ack_expected("m", 20.0, retransmitted=True)
    assert dog.on_acked("m", 20.9) is None
    dog.on_ack_expected("n", 21.0)
    dog.on_ack_expected("n", 21.5)  # sent again: ambiguous too
    assert dog.on_acked("n", 21.6) is None
    assert dog.estimator == before


def test_unknown_ack_is_no_sample() -> None:
    assert LinkWatchdog(POLICY, 0.0).on_acked("never sent", 1.0) is None


# --------------------------------------------------------------------------- verdicts

Row = tuple[float, str, Any]


def play(dog: LinkWatchdog, rows: list[Row]) -> None:
    """Rows of (virtual time, what happened, expected verdict of check() right after)."""
    for now, what, expected in rows:
        if what.startswith("publish "):
            dog.on_ack_expected(what.split()[1], now)
        elif what.startswith("puback "):
            dog.on_acked(what.split()[1], now)
        elif what == "ping":
            dog.on_ping_sent(now)
        elif what == "pingresp":
            dog.on_pingresp(now)
        elif what == "inbound":
            dog.on_received(now)
        assert dog.check(now) == expected, (now, what)


def test_hung_hub_is_dead_within_floor_to_deadline() -> None:
    dog = settled(0.01)
    deadline = dog.deadline
    assert deadline == 1.0
    play(
        dog,
        [
            (20.0, "publish a", Healthy(next_check_at=21.0)),
            (20.2, "publish b", Healthy(next_check_at=21.0)),  # the oldest sets the clock
            (20.999, "check", Healthy(next_check_at=21.0)),
            (21.0, "check", Dead("hub silent for 1.000 s while owing a reply (deadline 1.000 s)")),
        ],
    )


def test_acks_that_keep_coming_keep_the_link_alive() -> None:
    # Why: after a burst, the last PUBACK comes long after its PUBLISH was queued.
    dog = settled(0.01)
    for token in range(10):
        dog.on_ack_expected(token, 20.0)
    for token in range(10):
        now = 20.0 + 0.9 * (token + 1)
        dog.on_acked(token, now)
        assert isinstance(dog.check(now), Healthy)
    assert dog.outstanding == 0


def test_idle_link_pings_then_dies_when_the_pingresp_misses_its_deadline() -> None:
    policy = LivenessPolicy(keepalive=10.0, idle_probe_after=4.0, initial_deadline=2.0)
    play(
        LinkWatchdog(policy, now=0.0),
        [
            (0.0, "check", Healthy(next_check_at=4.0)),
            (4.0, "check", SendPing()),
            (4.0, "ping", Healthy(next_check_at=6.0)),
            (5.9, "check", Healthy(next_check_at=6.0)),
            (6.0, "check", Dead("hub silent for 2.000 s while owing a reply (deadline 2.000 s)")),
        ],
    )


def test_answered_ping_is_an_rtt_sample_and_rearms_the_probe() -> None:
    policy = LivenessPolicy(keepalive=10.0, idle_probe_after=4.0, initial_deadline=2.0)
    dog = LinkWatchdog(policy, now=0.0)
    play(
        dog,
        [
            (4.0, "ping", Healthy(next_check_at=6.0)),
            (4.1, "pingresp", Healthy(next_check_at=8.1)),
            (8.1, "check", SendPing()),
        ],
    )
    assert dog.estimator.srtt == pytest.approx(0.1)


def test_default_probe_is_half_the_keepalive() -> None:
    dog = LinkWatchdog(LivenessPolicy(keepalive=30.0), now=0.0)
    assert dog.check(0.0) == Healthy(next_check_at=15.0)
    assert dog.check(15.0) == SendPing()


def test_we_ping_when_we_have_sent_nothing_for_a_keepalive() -> None:
    # Inbound traffic alone does not satisfy MQTT: the client must send within keepalive.
    policy = LivenessPolicy(keepalive=10.0, idle_probe_after=8.0)
    play(
        LinkWatchdog(policy, now=0.0),
        [
            (5.0, "inbound", Healthy(next_check_at=10.0)),
            (9.0, "inbound", Healthy(next_check_at=10.0)),
            (10.0, "inbound", SendPing()),
        ],
    )


def test_next_check_at_is_the_earliest_deadline() -> None:
    policy = LivenessPolicy(keepalive=10.0, idle_probe_after=4.0, initial_deadline=2.0)
    play(
        LinkWatchdog(policy, now=0.0),
        [
            (1.0, "publish x", Healthy(next_check_at=3.0)),  # ack deadline first
            (1.5, "puback x", Healthy(next_check_at=5.5)),  # then the idle probe
        ],
    )


def test_a_second_ping_while_one_is_outstanding_keeps_the_first_time() -> None:
    dog = LinkWatchdog(LivenessPolicy(initial_deadline=2.0), now=0.0)
    dog.on_ping_sent(1.0)
    dog.on_ping_sent(2.0)
    assert dog.check(3.0) == Dead("hub silent for 2.000 s while owing a reply (deadline 2.000 s)")


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "options",
    [
        {"keepalive": 0},
        {"keepalive": 70000},
        {"idle_probe_after": 0.0},
        {"idle_probe_after": 61.0},
        {"deadline_floor": 0.0},
        {"deadline_ceiling": 0.5},
        {"initial_deadline": 0.5},
        {"initial_deadline": 31.0},
        {"connect_timeout": -1.0},
        {"deadline_floor": "1"},
        {"keepalive": float("inf")},
    ],
)
def test_validation(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=f"liveness.{next(iter(options))}"):
        LivenessPolicy(**options)


def test_a_window_of_acks_is_sampled_once_per_round_trip() -> None:
    policy = LivenessPolicy(deadline_floor=0.01, deadline_ceiling=5.0, initial_deadline=1.0)
    watchdog = LinkWatchdog(policy, 0.0)
    for token in range(20):
        watchdog.on_ack_expected(token, 0.0)
    samples = [watchdog.on_acked(token, 0.1 + token * 0.001) for token in range(20)]
    assert samples[0] == pytest.approx(0.1)
    assert all(sample is None for sample in samples[1:])  # all within one smoothed RTT
    watchdog.on_ack_expected("later", 0.2)
    assert watchdog.on_acked("later", 0.35) == pytest.approx(0.15)  # next round trip: timed


# --------------------------------------------------------------------------- the rules, exactly


def test_a_stray_pingresp_is_no_sample_but_shows_the_hub_alive() -> None:
    # A PINGRESP we did not ask for (a duplicate, a late one) must not be timed against
    # some other moment, and must not clear a ping we send later.
    dog = settled(0.3)
    before = dog.estimator
    assert dog.on_pingresp(25.0) is None
    assert dog.estimator == before
    dog.on_ack_expected("m", 25.0)
    dog.on_pingresp(25.5)  # inbound: the hub is alive, the owed reply is counted from here
    assert dog.check(25.5 + dog.deadline - 0.01) == Healthy(next_check_at=25.5 + dog.deadline)


def test_a_pingresp_answers_only_the_ping_outstanding() -> None:
    dog = LinkWatchdog(LivenessPolicy(initial_deadline=2.0), now=0.0)
    dog.on_ping_sent(1.0)
    assert dog.on_pingresp(1.25) == 0.25
    assert dog.on_pingresp(1.5) is None  # the second reply has no ping to answer
    assert dog.estimator.srtt == 0.25


def test_a_late_packet_time_never_moves_the_last_inbound_back() -> None:
    dog = LinkWatchdog(LivenessPolicy(initial_deadline=2.0), now=0.0)
    dog.on_ack_expected("a", 10.0)
    dog.on_received(11.0)
    dog.on_received(10.5)  # reported out of order by another thread's clock read
    assert dog.check(12.99) == Healthy(next_check_at=13.0)


def test_on_a_realistic_monotonic_clock_deadlines_are_differences() -> None:
    t0 = 8_640_000.0  # 100 days of uptime
    policy = LivenessPolicy(keepalive=10.0, idle_probe_after=4.0, initial_deadline=2.0)
    dog = LinkWatchdog(policy, now=t0)
    assert dog.check(t0) == Healthy(next_check_at=t0 + 4.0)
    dog.on_ack_expected("a", t0 + 1.0)
    assert dog.check(t0 + 2.999) == Healthy(next_check_at=t0 + 3.0)
    assert isinstance(dog.check(t0 + 3.0), Dead)


def test_the_oldest_of_an_ack_and_a_ping_sets_the_clock() -> None:
    dog = LinkWatchdog(LivenessPolicy(initial_deadline=2.0), now=0.0)
    dog.on_ping_sent(1.0)
    dog.on_ack_expected("a", 1.5)
    assert dog.check(2.9) == Healthy(next_check_at=3.0)
    assert dog.check(3.0) == Dead("hub silent for 2.000 s while owing a reply (deadline 2.000 s)")


def test_acked_tokens_stop_being_owed() -> None:
    dog = LinkWatchdog(LivenessPolicy(initial_deadline=2.0), now=0.0)
    dog.on_ack_expected("a", 1.0)
    dog.on_ack_expected("b", 1.0)
    assert dog.outstanding == 2
    dog.on_acked("a", 1.5)
    dog.on_acked("b", 1.6)
    assert dog.outstanding == 0
    assert dog.check(100.0) == SendPing()  # nothing owed: idle, not dead


def test_a_negative_measurement_is_a_zero_round_trip() -> None:
    # A clock stepping back must not make the deadline shrink below a real round trip.
    assert RttEstimator().sample(-0.5) == RttEstimator(srtt=0.0, rttvar=0.0)


def test_with_no_variation_the_deadline_is_srtt_plus_the_clock_granularity() -> None:
    policy = LivenessPolicy(
        deadline_floor=0.001, deadline_ceiling=30.0, initial_deadline=1.0, deadline_rtt_multiple=0
    )
    assert RttEstimator(srtt=0.5, rttvar=0.0).deadline(policy) == pytest.approx(0.51)
    assert RttEstimator(srtt=0.5, rttvar=0.001).deadline(policy) == pytest.approx(0.51)
    assert RttEstimator(srtt=0.5, rttvar=0.01).deadline(policy) == pytest.approx(0.54)


def test_the_next_sample_waits_one_smoothed_round_trip() -> None:
    policy = LivenessPolicy(deadline_floor=0.01, deadline_ceiling=5.0, initial_deadline=1.0)
    dog = LinkWatchdog(policy, 0.0)
    dog.on_ack_expected("a", 0.0)
    assert dog.on_acked("a", 0.2) == pytest.approx(0.2)  # srtt 0.2: next sample from 0.4
    dog.on_ack_expected("b", 0.3)
    assert dog.on_acked("b", 0.39) is None
    dog.on_ack_expected("c", 0.3)
    assert dog.on_acked("c", 0.4) == pytest.approx(0.1)


def test_ack_and_ping_deadlines_adapt_to_the_measured_link() -> None:
    # Ten 2 s round trips (a slow cellular link) lift the deadline above them: one more
    # 2 s round trip is no dead link, though the floor is 1 s.
    dog = settled(2.0, samples=10)
    assert dog.deadline > 2.0
    dog.on_ack_expected("slow", 100.0)
    assert not isinstance(dog.check(100.0 + 2.0), Dead)


# --------------------------------------------------------------------------- boundaries
# What a profile may say, exactly: the messages are what a user reads when a profile fails.

INF = float("inf")


@pytest.mark.parametrize(
    ("options", "field", "allowed"),
    [
        ({"keepalive": 65535.5}, "keepalive", "0 < keepalive <= 65535"),
        ({"keepalive": 0.0}, "keepalive", "0 < keepalive <= 65535"),
        ({"keepalive": float("nan")}, "keepalive", "0 < keepalive <= 65535"),
        ({"idle_probe_after": INF}, "idle_probe_after", "None or 0 < value <= keepalive"),
        ({"idle_probe_after": 60.01}, "idle_probe_after", "None or 0 < value <= keepalive"),
        ({"idle_probe_after": True}, "idle_probe_after", "None or 0 < value <= keepalive"),
        ({"deadline_floor": INF}, "deadline_floor", "> 0"),
        ({"deadline_floor": -1.0}, "deadline_floor", "> 0"),
        ({"deadline_ceiling": INF}, "deadline_ceiling", ">= floor"),
        ({"deadline_ceiling": 0.99}, "deadline_ceiling", ">= floor"),
        ({"initial_deadline": INF}, "initial_deadline", "floor..ceiling"),
        ({"initial_deadline": 30.01}, "initial_deadline", "floor..ceiling"),
        ({"initial_deadline": 0.99}, "initial_deadline", "floor..ceiling"),
        ({"connect_timeout": INF}, "connect_timeout", "> 0"),
        ({"connect_timeout": 0.0}, "connect_timeout", "> 0"),
        ({"connect_timeout": None}, "connect_timeout", "> 0"),
    ],
)
def test_refused_values_name_the_field_and_what_is_allowed(
    options: dict[str, Any], field: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        LivenessPolicy(**options)
    assert (refused.value.field, refused.value.allowed) == (f"liveness.{field}", allowed)


@pytest.mark.parametrize(
    "options",
    [
        {"keepalive": 65535},  # the largest MQTT can carry
        {"keepalive": 0.001},
        {"keepalive": 10.0, "idle_probe_after": 10.0},  # probe at the keepalive itself
        {"keepalive": 10.0, "idle_probe_after": 0.25},  # or after any positive silence
        {"deadline_floor": 2.0, "deadline_ceiling": 2.0, "initial_deadline": 2.0},  # one value
        {"deadline_floor": 1.0, "initial_deadline": 1.0},  # initial at the floor
        {"deadline_ceiling": 30.0, "initial_deadline": 30.0},  # initial at the ceiling
        {"connect_timeout": 0.001},
        {"keepalive": 60, "deadline_floor": 1, "deadline_ceiling": 30, "initial_deadline": 5},
    ],
)
def test_boundary_values_are_accepted(options: dict[str, Any]) -> None:
    policy = LivenessPolicy(**options)
    assert all(getattr(policy, name) == value for name, value in options.items())


def test_after_a_zero_round_trip_the_next_ack_is_timed_at_once() -> None:
    # One sample per smoothed RTT: when that RTT is zero, the window is empty.
    policy = LivenessPolicy(deadline_floor=0.01, deadline_ceiling=5.0, initial_deadline=1.0)
    dog = LinkWatchdog(policy, 0.0)
    dog.on_ack_expected("a", 1.0)
    assert dog.on_acked("a", 1.0) == 0.0
    dog.on_ack_expected("b", 1.5)
    assert dog.on_acked("b", 1.6) == pytest.approx(0.1)


# --------------------------------------------------------------------------- the RTT multiple
# Why: a radio link's stalls last seconds where its round trip is hundreds of ms.

DEFAULTS = LivenessPolicy()


@pytest.mark.parametrize(
    ("estimator", "deadline"),
    [
        (RttEstimator(srtt=0.002, rttvar=0.001), 1.0),  # loopback: still the floor
        (RttEstimator(srtt=0.05, rttvar=0.01), 1.0),  # a good LTE link: still the floor
        (RttEstimator(srtt=0.6, rttvar=0.05), 3.6),  # 6 x srtt beats srtt + 4 * rttvar
        (RttEstimator(srtt=0.6, rttvar=0.9), 4.2),  # srtt + 4 * rttvar beats 6 x srtt
        (RttEstimator(srtt=2.0, rttvar=0.3), 12.0),  # 2G-like
        (RttEstimator(srtt=6.0, rttvar=0.1), 30.0),  # still capped by the ceiling
    ],
)
def test_the_default_deadline_is_at_least_six_round_trips(
    estimator: RttEstimator, deadline: float
) -> None:
    assert DEFAULTS.deadline_rtt_multiple == 6.0
    assert estimator.deadline(DEFAULTS) == pytest.approx(deadline)


def test_the_multiple_is_a_policy_value() -> None:
    estimator = RttEstimator(srtt=0.5, rttvar=0.0)
    assert estimator.deadline(LivenessPolicy(deadline_rtt_multiple=3.0)) == pytest.approx(1.5)
    assert estimator.deadline(LivenessPolicy(deadline_rtt_multiple=0.0)) == pytest.approx(1.0)
    assert estimator.deadline(LivenessPolicy(deadline_rtt_multiple=2.5)) == pytest.approx(1.25)


def cellular(policy: LivenessPolicy = DEFAULTS) -> LinkWatchdog:
    """A watchdog settled on a 600 ms link whose round trips vary by +-40 ms, by t=40."""
    dog = LinkWatchdog(policy, now=0.0)
    now = 0.0
    for token in range(40):
        rtt = 0.6 + (0.04 if token % 2 else -0.04)
        dog.on_ack_expected(token, now)
        dog.on_acked(token, now + rtt)
        now += 1.0
    return dog


def test_a_two_second_stall_on_a_600_ms_link_is_no_dead_link() -> None:
    # The issue-14 link: a PUBLISH sent just before a 2 s stall, its PUBACK after the
    # stall and a slow round trip: 2.8 s of silence from a live hub.
    dog = cellular()
    assert 3.3 < dog.deadline < 4.0
    play(
        dog,
        [
            (40.0, "publish p", Healthy(next_check_at=40.0 + dog.deadline)),
            (42.8, "check", Healthy(next_check_at=40.0 + dog.deadline)),
            (42.8, "puback p", Healthy(next_check_at=42.8 + 30.0)),  # next: the probe
        ],
    )


def test_without_the_multiple_the_same_stall_was_a_false_hung_hub() -> None:
    # What issue 14 measured with the former defaults: the floor, 1 s.
    dog = cellular(LivenessPolicy(deadline_rtt_multiple=0.0))
    assert dog.deadline == 1.0
    dog.on_ack_expected("p", 40.0)
    assert isinstance(dog.check(42.8), Dead)


def test_a_hung_hub_behind_a_600_ms_link_is_still_found_at_the_deadline() -> None:
    dog = cellular()
    deadline = dog.deadline
    dog.on_ack_expected("p", 40.0)
    assert dog.check(40.0 + deadline - 0.001) == Healthy(next_check_at=40.0 + deadline)
    assert isinstance(dog.check(40.0 + deadline), Dead)


@pytest.mark.parametrize("multiple", [-0.1, 100.01, INF, float("nan"), True, "6"])
def test_the_multiple_must_be_0_to_100(multiple: object) -> None:
    with pytest.raises(ConfigError) as caught:
        LivenessPolicy(deadline_rtt_multiple=multiple)  # type: ignore[arg-type]
    assert caught.value.field == "liveness.deadline_rtt_multiple"
    assert caught.value.allowed == "0 (off) to 100"


@pytest.mark.parametrize("multiple", [0, 0.0, 1.0, 100.0])
def test_the_multiple_may_be_0_to_100_inclusive(multiple: float) -> None:
    assert LivenessPolicy(deadline_rtt_multiple=multiple).deadline_rtt_multiple == multiple

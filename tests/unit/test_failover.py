"""FailoverMachine as scenario tables on virtual time.

Each row is ``(now, input, expected actions)``: the machine is fed the input
at that virtual time and must answer with exactly those actions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_sdk.core.failover import (
    TRANSITIONS,
    Action,
    Attempt,
    AttemptFailed,
    Close,
    ConciergeNamed,
    Connected,
    Delay,
    FailedBack,
    FailedOver,
    FailoverMachine,
    FailoverPolicy,
    HubRecord,
    HubsChanged,
    Input,
    LinkDown,
    Migrate,
    Phase,
    ProbeResult,
    Redirect,
    Start,
)
from device_sdk.core.outcomes import FailureKind
from device_sdk.errors import ConfigError, StateMachineError

PRIMARY, SECONDARY, TERTIARY = "primary", "secondary", "tertiary"
TWO = (PRIMARY, SECONDARY)
THREE = (PRIMARY, SECONDARY, TERTIARY)
TRANSIENT, PERMANENT = FailureKind.TRANSIENT, FailureKind.PERMANENT
UNRESPONSIVE, REDIRECT = FailureKind.UNRESPONSIVE, FailureKind.REDIRECT
BUSY = FailureKind.BUSY
NONE, BACKOFF, LONG = Delay.NONE, Delay.BACKOFF, Delay.LONG

Row = tuple[float, Input, tuple[Action, ...]]


def run(rows: Sequence[Row], hubs: Sequence[str] = TWO, **policy: Any) -> FailoverMachine:
    machine = FailoverMachine(hubs, FailoverPolicy(**policy))
    for now, event, expected in rows:
        assert machine.handle(event, now) == expected, f"t={now} {event}"
        assert machine.current_hub in hubs
    return machine


def over(src: str, dst: str, reason: str, delay: Delay = NONE) -> tuple[Action, ...]:
    return (FailedOver(src, dst, reason), Attempt(dst, delay, reason))


def retry(hub: str) -> tuple[Action, ...]:
    return (Attempt(hub, BACKOFF, "retry"),)


START = (0.0, Start(), (Attempt(PRIMARY, NONE, "start"),))
UP = (0.05, Connected(PRIMARY), ())


# --------------------------------------------------------------------------- failover


def test_crash_peer_closed_then_refused_twice_fails_over() -> None:
    machine = run(
        [
            START,
            UP,
            (100.0, LinkDown(PRIMARY, unresponsive=False), (Attempt(PRIMARY, NONE, "link lost"),)),
            (100.01, AttemptFailed(PRIMARY, TRANSIENT), retry(PRIMARY)),
            (
                100.1,
                AttemptFailed(PRIMARY, TRANSIENT),
                over(PRIMARY, SECONDARY, "3 consecutive failures"),
            ),
            (100.12, Connected(SECONDARY), ()),
        ],
        failover_after_failures=3,
    )
    assert machine.phase is Phase.CONNECTED
    assert machine.current_hub == SECONDARY
    assert machine.failure_history[PRIMARY].failures == 3


def test_crash_with_default_policy_fails_over_after_the_first_refusal() -> None:
    run(
        [
            START,
            UP,
            (100.0, LinkDown(PRIMARY, unresponsive=False), (Attempt(PRIMARY, NONE, "link lost"),)),
            (
                100.01,
                AttemptFailed(PRIMARY, TRANSIENT),
                over(PRIMARY, SECONDARY, "2 consecutive failures"),
            ),
        ]
    )


def test_hung_hub_fails_over_at_once() -> None:
    run(
        [
            START,
            UP,
            (50.0, LinkDown(PRIMARY, unresponsive=True), over(PRIMARY, SECONDARY, "unresponsive")),
            (50.02, Connected(SECONDARY), ()),
        ]
    )


def test_connect_timeout_fails_over_at_once() -> None:
    run(
        [
            START,
            (10.0, AttemptFailed(PRIMARY, UNRESPONSIVE), over(PRIMARY, SECONDARY, "unresponsive")),
        ]
    )


def test_single_hub_never_fails_over_it_backs_off() -> None:
    run(
        [
            START,
            (0.1, AttemptFailed(PRIMARY, TRANSIENT), retry(PRIMARY)),
            (0.3, AttemptFailed(PRIMARY, TRANSIENT), retry(PRIMARY)),
            (60.0, AttemptFailed(PRIMARY, UNRESPONSIVE), retry(PRIMARY)),
        ],
        hubs=(PRIMARY,),
    )


def test_failover_after_seconds_counts_from_the_first_failure_of_the_streak() -> None:
    run(
        [
            START,
            (10.0, AttemptFailed(PRIMARY, TRANSIENT), retry(PRIMARY)),
            (25.0, AttemptFailed(PRIMARY, TRANSIENT), retry(PRIMARY)),
            (39.9, AttemptFailed(PRIMARY, TRANSIENT), retry(PRIMARY)),
            (
                40.0,
                AttemptFailed(PRIMARY, TRANSIENT),
                over(PRIMARY, SECONDARY, "no success for 30 s"),
            ),
        ],
        failover_after_failures=100,
        failover_after_seconds=30.0,
    )


def test_wrap_around_in_order_and_back_off_once_every_hub_failed() -> None:
    # Why BACKOFF on the second round: every hub failed in this outage, and
    # dialling each at once would be a hot loop against a dead region.
    run(
        [
            START,
            (
                0.1,
                AttemptFailed(PRIMARY, TRANSIENT),
                over(PRIMARY, SECONDARY, "1 consecutive failures"),
            ),
            (
                0.2,
                AttemptFailed(SECONDARY, TRANSIENT),
                over(SECONDARY, TERTIARY, "1 consecutive failures"),
            ),
            (
                0.3,
                AttemptFailed(TERTIARY, TRANSIENT),
                over(TERTIARY, PRIMARY, "1 consecutive failures", BACKOFF),
            ),
            (
                0.9,
                AttemptFailed(PRIMARY, TRANSIENT),
                over(PRIMARY, SECONDARY, "2 consecutive failures", BACKOFF),
            ),
        ],
        hubs=THREE,
        failover_after_failures=1,
    )


def test_hub_that_accepts_and_drops_at_once_keeps_its_streak() -> None:
    # Why: resetting the streak on CONNACK would retry such a hub instantly forever.
    # Only the first drop gets an undelayed retry; then it backs off, then fails over.
    dropped = LinkDown(PRIMARY, unresponsive=False)
    run(
        [
            START,
            (0.01, Connected(PRIMARY), ()),
            (0.02, dropped, (Attempt(PRIMARY, NONE, "link lost"),)),
            (0.03, Connected(PRIMARY), ()),
            (0.04, dropped, retry(PRIMARY)),
            (0.5, Connected(PRIMARY), ()),
            (0.51, dropped, over(PRIMARY, SECONDARY, "3 consecutive failures")),
        ],
        failover_after_failures=3,
    )


def test_a_stable_link_starts_a_fresh_cycle() -> None:
    machine = run(
        [
            START,
            (0.1, AttemptFailed(PRIMARY, TRANSIENT), retry(PRIMARY)),
            (0.5, Connected(PRIMARY), ()),
            (20.0, LinkDown(PRIMARY, unresponsive=False), (Attempt(PRIMARY, NONE, "link lost"),)),
        ]
    )
    assert machine.failure_history[PRIMARY].failures == 1
    assert machine.failure_history[PRIMARY].failing_since == 20.0


def test_superseded_attempt_only_updates_history() -> None:
    machine = run(
        [
            START,
            (0.1, ConciergeNamed(SECONDARY), over(PRIMARY, SECONDARY, "concierge")),
            (0.2, AttemptFailed(PRIMARY, TRANSIENT), ()),
        ]
    )
    assert machine.current_hub == SECONDARY
    assert machine.failure_history[PRIMARY].failures == 1


# --------------------------------------------------------------------------- permanent refusals


def test_permanent_refusal_on_primary_goes_to_secondary_and_skips_primary() -> None:
    machine = run(
        [
            START,
            (0.1, AttemptFailed(PRIMARY, PERMANENT), over(PRIMARY, SECONDARY, "permanent refusal")),
            (0.2, AttemptFailed(SECONDARY, TRANSIENT), retry(SECONDARY)),
            # the streak would fail over, but the primary is still penalized
            (0.5, AttemptFailed(SECONDARY, TRANSIENT), retry(SECONDARY)),
            # penalty over (0.1 + 300): the primary is usable again
            (
                300.2,
                AttemptFailed(SECONDARY, TRANSIENT),
                over(SECONDARY, PRIMARY, "3 consecutive failures", BACKOFF),
            ),
        ]
    )
    assert machine.failure_history[PRIMARY].penalized_until == pytest.approx(300.1)


def test_all_hubs_refusing_permanently_backs_off_long() -> None:
    run(
        [
            START,
            (0.1, AttemptFailed(PRIMARY, PERMANENT), over(PRIMARY, SECONDARY, "permanent refusal")),
            (
                0.2,
                AttemptFailed(SECONDARY, PERMANENT),
                over(SECONDARY, PRIMARY, "all hubs refused", LONG),
            ),
            (
                300.2,
                AttemptFailed(PRIMARY, PERMANENT),
                over(PRIMARY, SECONDARY, "permanent refusal", BACKOFF),
            ),
            (
                300.3,
                AttemptFailed(SECONDARY, PERMANENT),
                over(SECONDARY, PRIMARY, "all hubs refused", LONG),
            ),
        ]
    )


def test_single_hub_refusing_permanently_backs_off_long() -> None:
    run(
        [
            START,
            (0.1, AttemptFailed(PRIMARY, PERMANENT), (Attempt(PRIMARY, LONG, "all hubs refused"),)),
            (
                300.1,
                AttemptFailed(PRIMARY, PERMANENT),
                (Attempt(PRIMARY, LONG, "all hubs refused"),),
            ),
            (600.1, Connected(PRIMARY), ()),
        ],
        hubs=(PRIMARY,),
    )


def test_connecting_clears_the_penalty() -> None:
    machine = run(
        [
            START,
            (0.1, AttemptFailed(PRIMARY, PERMANENT), (Attempt(PRIMARY, LONG, "all hubs refused"),)),
            (300.1, Connected(PRIMARY), ()),
        ],
        hubs=(PRIMARY,),
    )
    assert machine.failure_history[PRIMARY].penalized_until is None


# --------------------------------------------------------------------------- redirects


def test_connack_redirect_goes_to_the_next_hub_at_once() -> None:
    run([START, (0.1, AttemptFailed(PRIMARY, REDIRECT), over(PRIMARY, SECONDARY, "redirect"))])


def test_redirect_to_a_named_hub() -> None:
    run(
        [START, (0.1, Redirect(PRIMARY, TERTIARY), over(PRIMARY, TERTIARY, "redirect"))], hubs=THREE
    )


def test_redirect_to_an_unlisted_server_goes_to_the_next_listed_hub() -> None:
    # Why: a broker-supplied reference is never followed outside the allow-list.
    run(
        [START, (0.1, Redirect(PRIMARY, "evil.example"), over(PRIMARY, SECONDARY, "redirect"))],
        hubs=THREE,
    )


def test_disconnect_redirect_while_connected() -> None:
    run([START, UP, (60.0, Redirect(PRIMARY, None), over(PRIMARY, SECONDARY, "redirect"))])


def test_redirect_ping_pong_backs_off() -> None:
    run(
        [
            START,
            (0.1, Redirect(PRIMARY, SECONDARY), over(PRIMARY, SECONDARY, "redirect")),
            (0.2, Redirect(SECONDARY, PRIMARY), over(SECONDARY, PRIMARY, "redirect", BACKOFF)),
        ]
    )


def test_redirect_with_one_hub_backs_off() -> None:
    run(
        [START, (0.1, Redirect(PRIMARY, None), (Attempt(PRIMARY, BACKOFF, "redirect"),))],
        hubs=(PRIMARY,),
    )


# --------------------------------------------------------------------------- concierge


def test_concierge_switch_while_connected_migrates_without_dwell() -> None:
    machine = run(
        [
            START,
            UP,
            (5.0, ConciergeNamed(SECONDARY), (Migrate(PRIMARY, SECONDARY, "concierge"),)),
            (5.1, Connected(SECONDARY), ()),
            (65.0, ConciergeNamed(SECONDARY), ()),  # repeated answer: nothing to do
        ]
    )
    assert machine.home_hub == SECONDARY
    assert machine.failback_candidate(66.0) is None


def test_concierge_switch_while_connecting_redirects_the_next_attempt() -> None:
    run(
        [
            START,
            (0.1, AttemptFailed(PRIMARY, TRANSIENT), retry(PRIMARY)),
            (0.2, ConciergeNamed(SECONDARY), over(PRIMARY, SECONDARY, "concierge")),
            (0.3, ConciergeNamed(SECONDARY), ()),
        ]
    )


def test_concierge_before_start_chooses_the_first_hub() -> None:
    machine = run(
        [
            (0.0, ConciergeNamed(SECONDARY), ()),
            (0.0, Start(), (Attempt(SECONDARY, NONE, "start"),)),
        ]
    )
    assert machine.home_hub == SECONDARY


def test_concierge_repeating_the_home_hub_does_not_undo_a_failover() -> None:
    # Why: the concierge repeats itself on every poll; only a change is a decision.
    run(
        [
            (0.0, ConciergeNamed(PRIMARY), ()),
            START,
            UP,
            (50.0, LinkDown(PRIMARY, unresponsive=True), over(PRIMARY, SECONDARY, "unresponsive")),
            (50.1, Connected(SECONDARY), ()),
            (60.0, ConciergeNamed(PRIMARY), ()),
        ]
    )


def test_failed_concierge_migration_returns_to_the_working_hub() -> None:
    run(
        [
            START,
            UP,
            (5.0, ConciergeNamed(SECONDARY), (Migrate(PRIMARY, SECONDARY, "concierge"),)),
            (
                5.1,
                AttemptFailed(SECONDARY, TRANSIENT),
                over(SECONDARY, PRIMARY, "migration failed"),
            ),
            (5.2, Connected(PRIMARY), ()),
        ]
    )


def test_unknown_hub_name_is_rejected() -> None:
    machine = FailoverMachine(TWO, FailoverPolicy())
    with pytest.raises(StateMachineError, match="elsewhere"):
        machine.handle(ConciergeNamed("elsewhere"), 0.0)


# --------------------------------------------------------------------------- failback


def on_secondary_since(t: float) -> list[Row]:
    return [
        START,
        (t - 0.2, AttemptFailed(PRIMARY, UNRESPONSIVE), over(PRIMARY, SECONDARY, "unresponsive")),
        (t, Connected(SECONDARY), ()),
    ]


FAILBACK = (FailedBack(SECONDARY, PRIMARY), Migrate(SECONDARY, PRIMARY, "failback"))


def test_failback_needs_dwell_and_healthy_probes() -> None:
    machine = run(
        [
            *on_secondary_since(10.0),
            (100.0, ProbeResult(PRIMARY, healthy=True), ()),
            (200.0, ProbeResult(PRIMARY, healthy=True), ()),  # two probes, no dwell yet
            (311.0, ProbeResult(PRIMARY, healthy=False), ()),  # dwell met, streak broken
            (312.0, ProbeResult(PRIMARY, healthy=True), ()),  # only one in a row
            (313.0, ProbeResult(SECONDARY, healthy=True), ()),  # not the candidate: ignored
            (314.0, ProbeResult(PRIMARY, healthy=True), FAILBACK),
            (314.1, Connected(PRIMARY), ()),
        ]
    )
    assert machine.failback_candidate(400.0) is None


def test_failback_candidate_is_home_only_while_connected_elsewhere() -> None:
    machine = FailoverMachine(TWO, FailoverPolicy())
    assert machine.failback_candidate(0.0) is None
    for now, event, _ in on_secondary_since(10.0):
        machine.handle(event, now)
    assert machine.failback_candidate(11.0) == PRIMARY


def test_failed_failback_returns_to_the_hub_it_left() -> None:
    run(
        [
            *on_secondary_since(10.0),
            (300.0, ProbeResult(PRIMARY, healthy=True), ()),
            (310.0, ProbeResult(PRIMARY, healthy=True), FAILBACK),
            (
                315.0,
                AttemptFailed(PRIMARY, UNRESPONSIVE),
                over(PRIMARY, SECONDARY, "migration failed"),
            ),
            (315.1, Connected(SECONDARY), ()),
            # the dwell restarts from the new connection
            (320.0, ProbeResult(PRIMARY, healthy=True), ()),
            (330.0, ProbeResult(PRIMARY, healthy=True), ()),
        ],
        failback_dwell_seconds=300.0,
    )


def test_failback_refused_as_busy_keeps_the_dwell_already_served() -> None:
    # A home hub that answers "busy" is alive and was probed healthy: back on the hub we
    # stayed on (make before break), only fresh healthy probes are owed, not a new dwell.
    run(
        [
            *on_secondary_since(10.0),
            (300.0, ProbeResult(PRIMARY, healthy=True), ()),
            (310.0, ProbeResult(PRIMARY, healthy=True), FAILBACK),
            (310.1, AttemptFailed(PRIMARY, BUSY), over(PRIMARY, SECONDARY, "migration failed")),
            (310.1, Connected(SECONDARY), ()),
            (320.0, ProbeResult(PRIMARY, healthy=True), ()),  # the probe streak starts again
            (330.0, ProbeResult(PRIMARY, healthy=True), FAILBACK),
            (330.1, Connected(PRIMARY), ()),
        ],
        failback_dwell_seconds=300.0,
    )


@pytest.mark.parametrize("kind", [TRANSIENT, UNRESPONSIVE])
def test_failback_failing_otherwise_serves_the_dwell_again(kind: FailureKind) -> None:
    machine = run(
        [
            *on_secondary_since(10.0),
            (300.0, ProbeResult(PRIMARY, healthy=True), ()),
            (310.0, ProbeResult(PRIMARY, healthy=True), FAILBACK),
            (311.0, AttemptFailed(PRIMARY, kind), over(PRIMARY, SECONDARY, "migration failed")),
            (311.0, Connected(SECONDARY), ()),
            (320.0, ProbeResult(PRIMARY, healthy=True), ()),
            (330.0, ProbeResult(PRIMARY, healthy=True), ()),
            (610.0, ProbeResult(PRIMARY, healthy=True), ()),  # 299 s after the return
        ],
        failback_dwell_seconds=300.0,
    )
    assert machine.handle(ProbeResult(PRIMARY, healthy=True), 611.0) == FAILBACK


def test_a_busy_refusal_keeps_the_dwell_only_for_the_link_it_returns_to() -> None:
    # After the refused failback the way back fails too, and a new link comes up later:
    # that one serves a dwell of its own.
    run(
        [
            *on_secondary_since(10.0),
            (300.0, ProbeResult(PRIMARY, healthy=True), ()),
            (310.0, ProbeResult(PRIMARY, healthy=True), FAILBACK),
            (310.1, AttemptFailed(PRIMARY, BUSY), over(PRIMARY, SECONDARY, "migration failed")),
            (310.2, AttemptFailed(SECONDARY, TRANSIENT), (Attempt(SECONDARY, BACKOFF, "retry"),)),
            (311.0, Connected(SECONDARY), ()),
            (320.0, ProbeResult(PRIMARY, healthy=True), ()),
            (330.0, ProbeResult(PRIMARY, healthy=True), ()),  # dwell from 311 s: not yet
        ],
        failback_dwell_seconds=300.0,
    )


def test_a_concierge_move_refused_as_busy_keeps_the_dwell_too() -> None:
    machine = run(
        [
            START,
            UP,
            (400.0, ConciergeNamed(SECONDARY), (Migrate(PRIMARY, SECONDARY, "concierge"),)),
            (400.1, AttemptFailed(SECONDARY, BUSY), over(SECONDARY, PRIMARY, "migration failed")),
            (400.1, Connected(PRIMARY), ()),
            (410.0, ProbeResult(SECONDARY, healthy=True), ()),
        ],
        failback_dwell_seconds=300.0,
    )
    assert machine.handle(ProbeResult(SECONDARY, healthy=True), 420.0) == (
        FailedBack(PRIMARY, SECONDARY),
        Migrate(PRIMARY, SECONDARY, "failback"),
    )


def test_busy_refusals_make_a_streak_like_transient_ones() -> None:
    run(
        [
            START,
            (0.1, AttemptFailed(PRIMARY, BUSY), (Attempt(PRIMARY, BACKOFF, "retry"),)),
            (
                0.2,
                AttemptFailed(PRIMARY, BUSY),
                over(PRIMARY, SECONDARY, "2 consecutive failures"),
            ),
        ]
    )


def test_late_probe_result_while_connecting_is_ignored() -> None:
    run(
        [
            *on_secondary_since(10.0),
            (
                20.0,
                LinkDown(SECONDARY, unresponsive=False),
                (Attempt(SECONDARY, NONE, "link lost"),),
            ),
            (20.1, ProbeResult(PRIMARY, healthy=True), ()),
        ]
    )


def flapping_run(horizon: float, policy: FailoverPolicy) -> int:
    """The primary is up 4 s, down 4 s, forever; the secondary is always up.

    Drives the machine like the engine would and returns the number of failbacks.
    """

    def primary_up(t: float) -> bool:
        return int(t // 4) % 2 == 0

    machine = FailoverMachine(TWO, policy)
    now, failbacks = 0.0, 0
    actions = machine.handle(Start(), now)
    for _ in range(int(horizon) * 10):  # bounded: virtual time advances at least 0.01 s a step
        if now >= horizon:
            break
        failbacks += sum(isinstance(a, FailedBack) for a in actions)
        if machine.phase is Phase.CONNECTING:
            wait = 1.0 if any(getattr(a, "delay", None) is BACKOFF for a in actions) else 0.0
            now += wait + 0.01
            hub = machine.current_hub
            ok = hub == SECONDARY or primary_up(now)
            event: Input = Connected(hub) if ok else AttemptFailed(hub, TRANSIENT)
        elif machine.current_hub == PRIMARY:
            now = (now // 8 + 1) * 8 - 4 if primary_up(now) else now  # next fall
            event = LinkDown(PRIMARY, unresponsive=False)
        else:
            now += 3.0
            event = ProbeResult(PRIMARY, healthy=primary_up(now))
        actions = machine.handle(event, now)
    assert now >= horizon, f"stuck at t={now}"
    return failbacks


def test_flapping_primary_cannot_make_the_device_flap() -> None:
    policy = FailoverPolicy(failback_dwell_seconds=60.0, failback_healthy_probes=2)
    horizon = 3600.0
    failbacks = flapping_run(horizon, policy)
    assert 1 <= failbacks <= horizon / policy.failback_dwell_seconds + 1


# --------------------------------------------------------------------------- the table itself


def test_impossible_input_in_closed_names_phase_and_input() -> None:
    machine = run([START, (1.0, Close(), ()), (2.0, Close(), ())])
    with pytest.raises(StateMachineError, match=r"AttemptFailed.*CLOSED"):
        machine.handle(AttemptFailed(PRIMARY, TRANSIENT), 3.0)
    assert machine.phase is Phase.CLOSED


def test_start_twice_is_impossible() -> None:
    machine = run([START])
    with pytest.raises(StateMachineError, match=r"Start.*CONNECTING"):
        machine.handle(Start(), 1.0)


def test_every_table_row_names_a_handler_method() -> None:
    for (phase, kind), handler in TRANSITIONS.items():
        assert isinstance(phase, Phase)
        assert handler.__name__.startswith("_on_"), (phase, kind)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("failover_after_failures", 0),
        ("failover_after_failures", True),
        ("failover_after_seconds", 0.0),
        ("failback_dwell_seconds", -1.0),
        ("failback_healthy_probes", 1.5),
        ("permanent_penalty_seconds", float("inf")),
        ("stable_after_seconds", "10"),
    ],
)
def test_policy_validation(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"failover.{field}"):
        FailoverPolicy(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("hubs", [(), (PRIMARY, PRIMARY), "primary"])
def test_hub_list_validation(hubs: Sequence[str]) -> None:
    with pytest.raises(ConfigError, match="hubs"):
        FailoverMachine(hubs, FailoverPolicy())


# --------------------------------------------------------------------------- properties

HUB_NAMES = st.sampled_from(THREE)
GAPS = st.one_of(st.floats(0.0, 2.0), st.floats(0.0, 400.0))
# "current" (resolved when fed) keeps most inputs about the hub the engine is on.
WHO = st.sampled_from(("current", "current", "current", *THREE))
MakeInput = Callable[[str], Input]
TEMPLATES: st.SearchStrategy[MakeInput] = st.one_of(
    st.just(lambda hub: Start()),
    st.builds(lambda kind: partial(AttemptFailed, kind=kind), st.sampled_from(FailureKind)),
    st.just(Connected),
    st.builds(lambda down: partial(LinkDown, unresponsive=down), st.booleans()),
    st.builds(
        lambda to: partial(Redirect, target=to),
        st.one_of(st.none(), HUB_NAMES, st.just("unlisted")),
    ),
    st.just(ConciergeNamed),
    st.builds(lambda ok: partial(ProbeResult, healthy=ok), st.booleans()),
)
STEPS = st.lists(st.tuples(GAPS, WHO, st.integers(0, 40), TEMPLATES), max_size=80)


@settings(max_examples=300, deadline=None)
@given(STEPS)
def test_random_inputs_never_crash_nor_hot_loop(
    steps: list[tuple[float, str, int, MakeInput]],
) -> None:
    machine = FailoverMachine(THREE, FailoverPolicy())
    now, undelayed, concierge = 0.0, 0, 0
    for gap, who, dice, make in steps:
        now += gap
        hub = machine.current_hub if who == "current" else who
        event = Close() if dice == 0 else make(hub)
        before = (machine.phase, machine.current_hub, dict(machine.failure_history))
        try:
            actions = machine.handle(event, now)
        except StateMachineError:
            # a refused input leaves the machine untouched
            assert before == (machine.phase, machine.current_hub, dict(machine.failure_history))
            continue
        assert machine.current_hub in THREE
        assert machine.home_hub in THREE
        if isinstance(event, Connected):
            undelayed = concierge = 0
        concierge += isinstance(event, ConciergeNamed)
        for action in actions:
            hubs = [getattr(action, name, None) for name in ("hub", "from_hub", "to_hub")]
            assert all(h in THREE for h in hubs if h is not None)
            if isinstance(action, Attempt) and action.delay is NONE:
                undelayed += action.reason not in ("concierge", "migration failed")
        # No hot loop: without a success, each hub is dialled at once at most
        # once per outage (plus once per operator decision).
        assert undelayed <= len(THREE) + concierge


# --------------------------------------------------------------------------- discovery


def test_new_hub_list_keeps_history_and_the_current_hub() -> None:
    machine = run([START, (0.1, AttemptFailed(PRIMARY, TRANSIENT), retry(PRIMARY))], hubs=THREE)
    assert machine.handle(HubsChanged((TERTIARY, PRIMARY)), 0.2) == ()
    assert machine.hubs == (TERTIARY, PRIMARY)
    assert machine.failure_history[PRIMARY].failures == 1
    assert machine.failure_history[TERTIARY].failures == 0
    # The streak continues on the kept hub: the second failure moves on, in the new order.
    assert machine.handle(AttemptFailed(PRIMARY, TRANSIENT), 0.3) == over(
        PRIMARY, TERTIARY, "2 consecutive failures"
    )


def test_withdrawn_hub_while_connecting_moves_the_next_attempt() -> None:
    machine = run([START, (0.1, AttemptFailed(PRIMARY, TRANSIENT), retry(PRIMARY))])
    actions = machine.handle(HubsChanged((SECONDARY,)), 0.2)
    assert actions == over(PRIMARY, SECONDARY, "withdrawn")
    assert machine.home_hub == SECONDARY


def test_withdrawn_hub_while_connected_migrates_and_never_returns() -> None:
    machine = run([START, UP])
    actions = machine.handle(HubsChanged((SECONDARY,)), 1.0)
    assert actions == (Migrate(PRIMARY, SECONDARY, "withdrawn"),)
    assert machine.phase is Phase.CONNECTING
    # The move fails: there is nothing to go back to, so it retries what is listed.
    retry_actions = machine.handle(AttemptFailed(SECONDARY, TRANSIENT), 1.1)
    assert all(getattr(a, "hub", SECONDARY) == SECONDARY for a in retry_actions)


def test_a_failed_move_never_falls_back_to_a_hub_withdrawn_meanwhile() -> None:
    # Connected to primary, told to move to tertiary (a migration remembers where it
    # came from), and primary is withdrawn while the move is under way: when the move
    # fails, the machine retries what is listed instead of looking primary up.
    machine = run([START, UP], hubs=THREE)
    assert machine.handle(ConciergeNamed(TERTIARY), 1.0) == (
        Migrate(PRIMARY, TERTIARY, "concierge"),
    )
    assert machine.handle(HubsChanged((SECONDARY, TERTIARY)), 1.1) == ()
    actions = machine.handle(AttemptFailed(TERTIARY, TRANSIENT), 1.2)
    assert PRIMARY not in {getattr(a, "hub", None) for a in actions}
    assert machine.current_hub in (SECONDARY, TERTIARY)


def test_empty_or_duplicate_hub_lists_are_impossible() -> None:
    machine = run([START])
    with pytest.raises(StateMachineError, match="needs a non-empty list of distinct hub names"):
        machine.handle(HubsChanged(()), 0.1)
    with pytest.raises(StateMachineError, match="needs a non-empty list of distinct hub names"):
        machine.handle(HubsChanged((PRIMARY, PRIMARY)), 0.1)


# --------------------------------------------------------------------------- the rules, exactly

DAYS = 8_640_000.0  # a realistic monotonic clock: 100 days of uptime


def test_stable_link_timing_on_a_realistic_monotonic_clock() -> None:
    # A link is stable when it stayed up stable_after_seconds: a difference of two clock
    # readings, whatever the clock's origin. One that drops sooner keeps the hub's streak.
    short = run(
        [
            (DAYS, Start(), (Attempt(PRIMARY, NONE, "start"),)),
            (DAYS + 0.1, AttemptFailed(PRIMARY, TRANSIENT), retry(PRIMARY)),
            (DAYS + 0.2, Connected(PRIMARY), ()),
            (
                DAYS + 9.9,
                LinkDown(PRIMARY, unresponsive=False),
                over(PRIMARY, SECONDARY, "2 consecutive failures"),
            ),
        ]
    )
    assert short.failure_history[PRIMARY].failing_since == DAYS + 0.1
    stable = run(
        [
            (DAYS, Start(), (Attempt(PRIMARY, NONE, "start"),)),
            (DAYS + 0.1, AttemptFailed(PRIMARY, TRANSIENT), retry(PRIMARY)),
            (DAYS + 0.2, Connected(PRIMARY), ()),
            (
                DAYS + 10.2,
                LinkDown(PRIMARY, unresponsive=False),
                (Attempt(PRIMARY, NONE, "link lost"),),
            ),
        ]
    )
    assert stable.failure_history[PRIMARY].failing_since == DAYS + 10.2


def test_a_home_hub_that_refused_us_is_not_probed_nor_failed_back_to_during_its_penalty() -> None:
    # It refused our credentials: a health probe cannot tell whether it still would.
    machine = run(
        [
            START,
            (0.1, AttemptFailed(PRIMARY, PERMANENT), over(PRIMARY, SECONDARY, "permanent refusal")),
            (0.2, Connected(SECONDARY), ()),
            (100.0, ProbeResult(PRIMARY, healthy=True), ()),  # a probe started before: ignored
            (200.0, ProbeResult(PRIMARY, healthy=True), ()),
        ],
        failback_dwell_seconds=0.0,
        failback_healthy_probes=1,
        permanent_penalty_seconds=300.0,
    )
    assert machine.failback_candidate(300.0) is None  # penalized until 300.1
    assert machine.failback_candidate(300.1) == PRIMARY
    assert machine.handle(ProbeResult(PRIMARY, healthy=True), 300.2) == FAILBACK


def test_a_discovery_update_that_adds_hubs_then_uses_them() -> None:
    machine = run([START, UP])
    assert machine.handle(HubsChanged((PRIMARY, "fourth", SECONDARY)), 1.0) == ()
    assert machine.failure_history["fourth"].failures == 0
    rows: list[Row] = [
        (50.0, LinkDown(PRIMARY, unresponsive=True), over(PRIMARY, "fourth", "unresponsive")),
        (50.1, Connected("fourth"), ()),
    ]
    for now, event, expected in rows:
        assert machine.handle(event, now) == expected
    assert machine.current_hub == "fourth"
    assert machine.failback_candidate(51.0) == PRIMARY


def test_a_discovery_update_before_start_makes_its_first_hub_home() -> None:
    machine = FailoverMachine(TWO, FailoverPolicy())
    assert machine.handle(HubsChanged(("new-a", "new-b")), 0.0) == ()
    assert (machine.phase, machine.home_hub) == (Phase.IDLE, "new-a")
    assert machine.handle(Start(), 0.1) == (Attempt("new-a", NONE, "start"),)
    assert machine.hubs == ("new-a", "new-b")
    with pytest.raises(StateMachineError, match="unknown hub 'primary'"):
        machine.handle(AttemptFailed(PRIMARY, TRANSIENT), 0.2)


def test_a_redirect_naming_the_current_hub_goes_to_the_next_one() -> None:
    # "Use another server: this one" is not followed into a loop on the same hub.
    run(
        [START, (0.1, Redirect(PRIMARY, PRIMARY), over(PRIMARY, SECONDARY, "redirect"))],
        hubs=THREE,
    )


def test_a_late_redirect_from_a_superseded_attempt_only_counts_against_its_hub() -> None:
    machine = run(
        [
            START,
            (1.0, ConciergeNamed(SECONDARY), over(PRIMARY, SECONDARY, "concierge")),
            (2.0, Redirect(PRIMARY, TERTIARY), ()),  # the old attempt's CONNACK: history only
        ],
        hubs=THREE,
    )
    assert machine.current_hub == SECONDARY
    assert machine.failure_history[PRIMARY] == HubRecord(failures=1, failing_since=2.0)
    assert machine.failure_history[SECONDARY].failures == 0


def test_a_redirected_hubs_streak_dates_from_the_redirect() -> None:
    # A redirect counts as a failure from the moment it came: thirty seconds later the
    # hub has had no success for thirty seconds.
    run(
        [
            START,
            (1.0, ConciergeNamed(SECONDARY), over(PRIMARY, SECONDARY, "concierge")),
            (2.0, Redirect(PRIMARY, None), ()),
            (
                3.0,
                AttemptFailed(SECONDARY, UNRESPONSIVE),
                over(SECONDARY, PRIMARY, "unresponsive", BACKOFF),
            ),
            (
                32.0,
                AttemptFailed(PRIMARY, TRANSIENT),
                over(PRIMARY, SECONDARY, "no success for 30 s", BACKOFF),
            ),
        ],
        failover_after_failures=100,
        failover_after_seconds=30.0,
    )


def test_a_redirect_after_a_stable_link_starts_a_fresh_cycle() -> None:
    # The secondary failed in an earlier outage; an hour of a good link forgives it, so
    # the redirect's move to it is not delayed.
    run(
        [
            START,
            (0.1, AttemptFailed(PRIMARY, UNRESPONSIVE), over(PRIMARY, SECONDARY, "unresponsive")),
            (
                0.2,
                AttemptFailed(SECONDARY, UNRESPONSIVE),
                over(SECONDARY, PRIMARY, "unresponsive", BACKOFF),
            ),
            (1.0, Connected(PRIMARY), ()),
            (3600.0, Redirect(PRIMARY, None), over(PRIMARY, SECONDARY, "redirect")),
        ]
    )


def test_when_every_hub_refuses_the_one_whose_penalty_ends_first_is_retried() -> None:
    # Names, list order and penalty order all differ, so none can stand in for the rule.
    hubs = ("mike", "zulu", "alpha")
    run(
        [
            (0.0, ConciergeNamed("zulu"), ()),
            (0.0, Start(), (Attempt("zulu", NONE, "start"),)),
            (0.1, AttemptFailed("zulu", PERMANENT), over("zulu", "alpha", "permanent refusal")),
            (0.2, AttemptFailed("alpha", PERMANENT), over("alpha", "mike", "permanent refusal")),
            (0.3, AttemptFailed("mike", PERMANENT), over("mike", "zulu", "all hubs refused", LONG)),
        ],
        hubs=hubs,
    )


def test_an_unresponsive_link_skips_penalized_hubs() -> None:
    run(
        [
            START,
            (0.1, AttemptFailed(PRIMARY, PERMANENT), over(PRIMARY, SECONDARY, "permanent refusal")),
            (
                0.2,
                AttemptFailed(SECONDARY, PERMANENT),
                over(SECONDARY, TERTIARY, "permanent refusal"),
            ),
            (0.3, Connected(TERTIARY), ()),
            (
                50.0,
                LinkDown(TERTIARY, unresponsive=True),
                (Attempt(TERTIARY, BACKOFF, "retry"),),
            ),
        ],
        hubs=THREE,
    )


def test_a_redirect_is_dated_in_the_redirected_hubs_history() -> None:
    connack = run(
        [START, (0.1, AttemptFailed(PRIMARY, REDIRECT), over(PRIMARY, SECONDARY, "redirect"))]
    )
    assert connack.failure_history[PRIMARY] == HubRecord(failures=1, failing_since=0.1)
    disconnect = run(
        [START, UP, (60.0, Redirect(PRIMARY, None), over(PRIMARY, SECONDARY, "redirect"))]
    )
    assert disconnect.failure_history[PRIMARY] == HubRecord(failures=1, failing_since=60.0)


def test_a_redirect_never_sends_us_to_a_hub_that_refused_us() -> None:
    # With every other hub refusing, the redirected device backs off where it is.
    run(
        [
            START,
            (0.1, AttemptFailed(PRIMARY, PERMANENT), over(PRIMARY, SECONDARY, "permanent refusal")),
            (
                0.2,
                AttemptFailed(SECONDARY, PERMANENT),
                over(SECONDARY, TERTIARY, "permanent refusal"),
            ),
            (0.3, Redirect(TERTIARY, None), (Attempt(TERTIARY, BACKOFF, "redirect"),)),
        ],
        hubs=THREE,
    )


def test_a_move_redirected_elsewhere_no_longer_returns_to_the_hub_it_left() -> None:
    # A concierge move whose target redirects us has ended; a failure after that is an
    # ordinary failure, not "the move failed, go back".
    run(
        [
            START,
            UP,
            (5.0, ConciergeNamed(SECONDARY), (Migrate(PRIMARY, SECONDARY, "concierge"),)),
            (5.1, AttemptFailed(SECONDARY, REDIRECT), over(SECONDARY, TERTIARY, "redirect")),
            (5.2, AttemptFailed(TERTIARY, TRANSIENT), retry(TERTIARY)),
        ],
        hubs=THREE,
    )


def test_a_failed_move_goes_back_at_once_even_to_a_hub_with_a_streak() -> None:
    # The hub we left worked moments ago: no backoff before returning to it, though it
    # failed once before that link (too short-lived to clear its streak).
    run(
        [
            START,
            (0.1, AttemptFailed(PRIMARY, TRANSIENT), retry(PRIMARY)),
            (0.5, Connected(PRIMARY), ()),
            (1.0, ConciergeNamed(SECONDARY), (Migrate(PRIMARY, SECONDARY, "concierge"),)),
            (
                1.1,
                AttemptFailed(SECONDARY, TRANSIENT),
                over(SECONDARY, PRIMARY, "migration failed"),
            ),
        ]
    )


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("failover_after_failures", 0, "int >= 1"),
        ("failover_after_failures", 2.0, "int >= 1"),
        ("failover_after_seconds", 0.0, "> 0"),
        ("failover_after_seconds", float("inf"), "> 0"),
        ("failback_dwell_seconds", float("inf"), ">= 0"),
        ("failback_dwell_seconds", -0.001, ">= 0"),
        ("failback_healthy_probes", 0, "int >= 1"),
        ("failback_healthy_probes", False, "int >= 1"),
        ("permanent_penalty_seconds", float("nan"), ">= 0"),
        ("permanent_penalty_seconds", -1, ">= 0"),
        ("stable_after_seconds", float("inf"), ">= 0"),
        ("stable_after_seconds", None, ">= 0"),
    ],
)
def test_refused_policy_values_name_the_field_and_what_is_allowed(
    field: str, value: object, allowed: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        FailoverPolicy(**{field: value})  # type: ignore[arg-type]
    assert (refused.value.field, refused.value.allowed) == (f"failover.{field}", allowed)
    assert refused.value.value is value  # the bad value itself is shown (NaN included)


@pytest.mark.parametrize(
    "options",
    [
        {"failover_after_failures": 1, "failback_healthy_probes": 1},
        {"failover_after_seconds": 0.001},  # any positive time
        {"failover_after_seconds": 0.5},
        {"failback_dwell_seconds": 0, "permanent_penalty_seconds": 0, "stable_after_seconds": 0},
        {"failback_dwell_seconds": 86_400.0, "permanent_penalty_seconds": 86_400},
    ],
)
def test_boundary_policy_values_are_accepted(options: dict[str, Any]) -> None:
    policy = FailoverPolicy(**options)
    assert all(getattr(policy, name) == value for name, value in options.items())


@pytest.mark.parametrize("hubs", [(), (PRIMARY, PRIMARY), "primary"])
def test_a_bad_hub_list_names_itself_and_what_is_allowed(hubs: Sequence[str]) -> None:
    with pytest.raises(ConfigError) as refused:
        FailoverMachine(hubs, FailoverPolicy())
    assert (refused.value.field, refused.value.value, refused.value.allowed) == (
        "hubs",
        hubs,
        "a non-empty sequence of distinct hub names",
    )


def test_failback_needs_that_many_healthy_probes_after_the_link_came_up() -> None:
    # Probes count from the connection to the hub we are on, never from before it.
    run(
        [
            *on_secondary_since(10.0),
            (400.0, ProbeResult(PRIMARY, healthy=True), ()),  # dwell met, one probe of two
            (401.0, ProbeResult(PRIMARY, healthy=True), FAILBACK),
        ]
    )

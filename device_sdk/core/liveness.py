"""Dead-link detection with deadlines derived from measured round trips.

Why adaptive: a fixed short PUBACK deadline trips on every cellular latency
spike, and a fixed long one makes a hung or blackholed hub take ages to
notice. So, like TCP's retransmission timer (RFC 6298), the deadline is the
smoothed RTT plus four times its variation, clamped to the profile's floor and
ceiling. Everything here is pure: the engine passes every time in.

Why also a multiple of the smoothed RTT: RFC 6298's timer only retransmits, so
TCP can afford to fire early; ours ends the link, and on a two-hub device
fails over. A radio link stalls now and then with no byte either way (a
cellular handover, a radio link failure and its re-establishment, link-layer
retransmissions), and those stalls are seconds where the link's round trip is
hundreds of milliseconds, while a LAN's are both tiny. On a link whose RTT
barely varies, srtt + 4 * rttvar sits just above the RTT and a 2 s stall on a
600 ms link is a false "hung hub" every time (issue 14: 4 in 120 s with the
defaults). So the deadline is at least ``deadline_rtt_multiple`` round trips:
6 x 600 ms covers a 2 s stall plus the round trip around it, 6 x 2 s a 2G-like
link's multi-second cell changes, while a loopback or LAN link (RTT of
milliseconds) stays at the floor and a hung hub there is still found in about
the floor.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, replace
from typing import TypeAlias

from device_sdk.errors import ConfigError

# RFC 6298 gains and clock granularity.
ALPHA = 1 / 8
BETA = 1 / 4
GRANULARITY = 0.01


@dataclass(frozen=True, slots=True, kw_only=True)
class LivenessPolicy:
    """Keepalive and the bounds of the RTT-derived ack/ping deadline, in seconds.

    ``idle_probe_after`` is how long the hub may stay silent before we send our
    own PINGREQ; ``None`` means half the keepalive. ``deadline_rtt_multiple``:
    the deadline is never shorter than this many smoothed round trips (the
    module docstring says why; 0 leaves RFC 6298's srtt + 4 * rttvar alone).
    """

    keepalive: float = 60.0
    idle_probe_after: float | None = None
    deadline_floor: float = 1.0
    deadline_ceiling: float = 30.0
    initial_deadline: float = 5.0
    connect_timeout: float = 10.0
    deadline_rtt_multiple: float = 6.0

    def __post_init__(self) -> None:
        floor, ceiling = self.deadline_floor, self.deadline_ceiling
        probe = self.idle_probe_after
        for name, ok, allowed in (
            ("keepalive", _between(self.keepalive, 0, 65535), "0 < keepalive <= 65535"),
            (
                "idle_probe_after",
                probe is None or _between(probe, 0, self.keepalive),
                "None or 0 < value <= keepalive",
            ),
            ("deadline_floor", _between(floor, 0, _INF), "> 0"),
            ("deadline_ceiling", _between(ceiling, floor, _INF, closed=True), ">= floor"),
            (
                "initial_deadline",
                _between(self.initial_deadline, floor, ceiling, closed=True),
                "floor..ceiling",
            ),
            ("connect_timeout", _between(self.connect_timeout, 0, _INF), "> 0"),
            (
                "deadline_rtt_multiple",
                _between(self.deadline_rtt_multiple, 0, 100, closed=True),
                "0 (off) to 100",
            ),
        ):
            if not ok:
                raise ConfigError(f"liveness.{name}", getattr(self, name), allowed)

    @property
    def probe_after(self) -> float:
        """Silence from the hub after which we ping it."""
        if self.idle_probe_after is None:
            return self.keepalive / 2
        return self.idle_probe_after


_INF = float("inf")


def _between(value: object, low: float, high: float, *, closed: bool = False) -> bool:
    """A finite real number in ``(low, high]`` (``[low, high]`` when ``closed``)."""
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in (value, low, high)):
        return False  # bad types are reported, never raised as TypeError
    assert isinstance(value, int | float)
    above = low <= value if closed else low < value
    return above and value <= high and value < _INF


@dataclass(frozen=True, slots=True)
class RttEstimator:
    """Smoothed round-trip time and its variation (RFC 6298). Immutable."""

    srtt: float | None = None
    rttvar: float = 0.0

    def sample(self, rtt: float) -> RttEstimator:
        """Fold one measured round trip into the estimate."""
        rtt = max(0.0, rtt)
        if self.srtt is None:
            return RttEstimator(srtt=rtt, rttvar=rtt / 2)
        rttvar = (1 - BETA) * self.rttvar + BETA * abs(self.srtt - rtt)
        return replace(self, srtt=(1 - ALPHA) * self.srtt + ALPHA * rtt, rttvar=rttvar)

    def deadline(self, policy: LivenessPolicy) -> float:
        """How long a reply may take before the link counts as dead."""
        if self.srtt is None:
            return policy.initial_deadline
        rfc6298 = self.srtt + max(GRANULARITY, 4 * self.rttvar)
        raw = max(rfc6298, policy.deadline_rtt_multiple * self.srtt)
        return min(policy.deadline_ceiling, max(policy.deadline_floor, raw))


@dataclass(frozen=True, slots=True)
class Healthy:
    """The link is fine; call `LinkWatchdog.check` again at ``next_check_at`` at the latest."""

    next_check_at: float


@dataclass(frozen=True, slots=True)
class SendPing:
    """Send a PINGREQ now (then call `LinkWatchdog.on_ping_sent`)."""


@dataclass(frozen=True, slots=True)
class Dead:
    """The hub owes us a reply and has been silent past the deadline."""

    reason: str


Verdict: TypeAlias = Healthy | SendPing | Dead


class LinkWatchdog:
    """Decides, from packet times alone, whether an established link still lives.

    The engine reports what it sends and receives and calls `check` no later
    than the ``next_check_at`` it was given; no polling is needed.
    """

    def __init__(self, policy: LivenessPolicy, now: float) -> None:
        self._policy = policy
        self._rtt = RttEstimator()
        self._last_sent = now
        self._last_received = now
        self._ping_sent_at: float | None = None
        self._next_sample_at = now  # acks before this are not timed (see on_acked)
        # token -> (sent at, retransmitted); dict order = send order, oldest first.
        self._awaiting: dict[Hashable, tuple[float, bool]] = {}

    @property
    def deadline(self) -> float:
        return self._rtt.deadline(self._policy)

    @property
    def estimator(self) -> RttEstimator:
        return self._rtt

    @property
    def outstanding(self) -> int:
        """Acks we are waiting for."""
        return len(self._awaiting)

    # ---- what happened on the wire

    def on_sent(self, now: float) -> None:
        self._last_sent = now

    def on_received(self, now: float) -> None:
        """Any inbound packet."""
        self._last_received = max(self._last_received, now)

    def on_ack_expected(self, token: Hashable, now: float, *, retransmitted: bool = False) -> None:
        """We sent something the hub must acknowledge (QoS 1 PUBLISH, SUBSCRIBE, ...).

        Sending the same token again counts as a retransmission.
        """
        retransmitted = retransmitted or self._awaiting.pop(token, None) is not None
        self._awaiting[token] = (now, retransmitted)
        self.on_sent(now)

    def on_acked(self, token: Hashable, now: float) -> float | None:
        """The hub acknowledged ``token``; returns the RTT sample taken, if any."""
        self.on_received(now)
        entry = self._awaiting.pop(token, None)
        if entry is None:
            return None
        sent_at, retransmitted = entry
        if retransmitted:
            return None  # Karn's rule: which copy was acked is ambiguous.
        if now < self._next_sample_at:
            # One sample per smoothed RTT, as TCP times one segment per round trip: a
            # window of acks arriving together says no more than its first one, and
            # sampling each would cost the hot path for nothing.
            return None
        rtt = self._sample(now - sent_at)
        self._next_sample_at = now + (self._rtt.srtt or 0.0)
        return rtt

    def on_ping_sent(self, now: float) -> None:
        if self._ping_sent_at is None:
            self._ping_sent_at = now
        self.on_sent(now)

    def on_pingresp(self, now: float) -> float | None:
        """PINGRESP arrived; returns the RTT sample taken, if a ping was outstanding."""
        self.on_received(now)
        sent_at, self._ping_sent_at = self._ping_sent_at, None
        return None if sent_at is None else self._sample(now - sent_at)

    # ---- the verdict

    def check(self, now: float) -> Verdict:
        """Is the link dead, due a ping, or healthy until when?"""
        owed_since = self._owed_since()
        deadline = self.deadline
        if owed_since is not None and now - owed_since >= deadline:
            silent = now - owed_since
            return Dead(
                f"hub silent for {silent:.3f} s while owing a reply (deadline {deadline:.3f} s)"
            )
        if self._ping_due_at() <= now:
            return SendPing()
        return Healthy(next_check_at=self._next_check_at(owed_since))

    def _owed_since(self) -> float | None:
        """Since when the hub has owed us a reply without sending anything.

        Why counted from the last inbound packet, not from each send: after a
        burst, the last PUBACK legitimately arrives long after its PUBLISH was
        queued; a hub that keeps acknowledging is alive. A hung or blackholed
        hub sends nothing, so it is still declared dead one deadline after the
        first unanswered request.
        """
        oldest = [t for t in (self._oldest_ack(), self._ping_sent_at) if t is not None]
        if not oldest:
            return None
        return max(min(oldest), self._last_received)

    def _oldest_ack(self) -> float | None:
        for sent_at, _ in self._awaiting.values():
            return sent_at
        return None

    def _ping_due_at(self) -> float:
        if self._ping_sent_at is not None:
            return float("inf")
        # Silence from the hub triggers a probe; so does our own silence,
        # because MQTT requires the client to send within each keepalive.
        by_silence = self._last_received + self._policy.probe_after
        return min(by_silence, self._last_sent + self._policy.keepalive)

    def _next_check_at(self, owed_since: float | None) -> float:
        dead_at = float("inf") if owed_since is None else owed_since + self.deadline
        return min(dead_at, self._ping_due_at())

    def _sample(self, rtt: float) -> float:
        self._rtt = self._rtt.sample(rtt)
        return rtt

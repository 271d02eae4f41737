"""A bad link in user space: latency with jitter, a bandwidth cap and stalls, per connection.

The kernel's netem needs root and is not on every machine, so the fault proxy
shapes the bytes it copies instead. Bytes are only ever *delayed*: never
dropped, never reordered, exactly what an application sees of a lossy radio
link through TCP (losses show up as extra delay, retransmission timeouts as
stalls).

How one connection is shaped (both directions share one stall schedule, each
direction has its own latency draws and its own bandwidth):

* Every chunk the proxy reads gets one latency draw, ``latency ± jitter``
  (uniform), so a chunk's segments travel together as one burst would.
* The bandwidth cap serialises segments: a segment leaves when the previous
  one has left, and takes ``size * 8 / bits_per_second`` to do so.
* A stall is a window in which no byte moves either way, as during a cellular
  handover or a radio link failure and its re-establishment. A segment due to
  leave or arrive inside one waits for its end. Stalls start at drawn
  intervals (``stall_every`` * uniform(0.5, 1.5)) from the connection's start
  and last a drawn duration (uniform between ``stall_min`` and ``stall_max``).
* A segment never arrives before the one sent ahead of it (TCP delivers in
  order), so a short draw after a long one waits for it.

Everything here is pure: the proxy passes the time in, and the RNG is seeded.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

from device_sdk.errors import ConfigError

__all__ = [
    "LINK_PROFILES",
    "DirectionShaper",
    "HeldBytes",
    "LinkProfile",
    "StallSchedule",
    "link_profile",
]

# Segments of a read are timed separately, so a bandwidth cap lets bytes trickle
# through as a TCP sender's segments would rather than as one 64 KiB lump.
SEGMENT = 1400


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkProfile:
    """The numbers of one kind of link, each way, in seconds and bits per second.

    ``uplink_bps`` shapes device -> hub bytes, ``downlink_bps`` hub -> device;
    ``None`` means uncapped. ``stall_every=None`` means no stalls. ``source``
    says where the numbers come from and how rough they are.
    """

    name: str
    latency: float
    jitter: float = 0.0
    uplink_bps: int | None = None
    downlink_bps: int | None = None
    stall_every: float | None = None
    stall_min: float = 0.0
    stall_max: float = 0.0
    source: str = ""

    def __post_init__(self) -> None:
        checks = (
            ("latency", self.latency >= 0, ">= 0 seconds"),
            ("jitter", 0 <= self.jitter <= self.latency, "0 to latency (delays stay >= 0)"),
            ("uplink_bps", self.uplink_bps is None or self.uplink_bps > 0, "None or > 0"),
            ("downlink_bps", self.downlink_bps is None or self.downlink_bps > 0, "None or > 0"),
            ("stall_every", self.stall_every is None or self.stall_every > 0, "None or > 0"),
            ("stall_min", self.stall_min >= 0, ">= 0 seconds"),
            ("stall_max", self.stall_max >= self.stall_min, ">= stall_min"),
        )
        for key, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"link.{key}", getattr(self, key), allowed)

    @property
    def rtt(self) -> float:
        """The mean round trip with no stall and no queueing: twice the one-way latency."""
        return 2 * self.latency

    def describe(self) -> str:
        def rate(bps: int | None) -> str:
            return "uncapped" if bps is None else f"{bps / 1000:g} kbit/s"

        stalls = (
            "no stalls"
            if self.stall_every is None
            else f"stalls {self.stall_min:g}-{self.stall_max:g} s every ~{self.stall_every:g} s"
        )
        return (
            f"{self.name}: {self.latency * 1000:g} ± {self.jitter * 1000:g} ms each way, "
            f"up {rate(self.uplink_bps)}, down {rate(self.downlink_bps)}, {stalls}"
        )


# The numbers are round figures from the cited sources, not a fit to any one
# network; a real link varies by the hour. They are meant to be typical of
# their class, with the stalls that make the class hard.
LTE_GOOD = LinkProfile(
    name="lte-good",
    latency=0.025,
    jitter=0.010,
    uplink_bps=5_000_000,
    downlink_bps=10_000_000,
    stall_every=60.0,
    stall_min=0.03,
    stall_max=0.08,
    source=(
        "RTT ~50 ms: Opensignal and Ookla national LTE latency reports put typical LTE "
        "round trips at 30-60 ms. 10/5 Mbit/s: LTE UE category 1 peak rates "
        "(3GPP TS 36.306), the class most IoT modems use. 30-80 ms stalls about once "
        "a minute: an intra-LTE handover interrupts the user plane for roughly 30-60 ms "
        "(3GPP TS 36.133 bounds, measured ~40-50 ms in drive tests); once a minute "
        "assumes a moving device."
    ),
)
LTE_POOR = LinkProfile(
    name="lte-poor",
    latency=0.300,
    jitter=0.100,
    uplink_bps=256_000,
    downlink_bps=1_000_000,
    stall_every=30.0,
    stall_min=1.0,
    stall_max=2.0,
    source=(
        "The field report of issue 14 (300 ± 100 ms each way, a 2 s stall about every "
        "30 s), itself a cell-edge LTE link: round trips of several hundred ms at the cell "
        "edge and under load are common in published LTE measurements (e.g. Huang et al., "
        "MobiSys 2012, long tails well above the ~70 ms median). 1-2 s stalls: a radio "
        "link failure waits T310 (1 s by default in many networks, 3GPP TS 36.331) and "
        "then re-establishes the connection. 1 Mbit/s down, 256 kbit/s up: an assumed "
        "cell-edge share, not a measured figure."
    ),
)
NB_IOT_2G = LinkProfile(
    name="2g-nbiot-like",
    latency=1.0,
    jitter=0.5,
    uplink_bps=20_000,
    downlink_bps=25_000,
    stall_every=120.0,
    stall_min=2.0,
    stall_max=5.0,
    source=(
        "NB-IoT: 3GPP TR 45.820 targets 10 s latency for exception reports at extreme "
        "coverage; at normal coverage round trips of 1-3 s are typical in operator and "
        "academic measurements, so 1 ± 0.5 s each way. GPRS/EDGE round trips of 0.6-1 s "
        "and tens of kbit/s are of the same order. 20-25 kbit/s: Cat-NB1 practical "
        "throughput (peak ~26 kbit/s down, ~60 kbit/s up, TS 36.306), and about 2 GPRS "
        "time slots. 2-5 s stalls every ~2 min: NB-IoT Rel-13 has no connected-mode "
        "handover, so a cell change is an RRC re-establishment of seconds; GPRS cell "
        "reselection without NACC is of the same order. An approximation."
    ),
)
SATELLITE = LinkProfile(
    name="satellite",
    latency=0.300,
    jitter=0.030,
    uplink_bps=512_000,
    downlink_bps=2_000_000,
    stall_every=120.0,
    stall_min=0.2,
    stall_max=0.5,
    source=(
        "Geostationary: the propagation alone is ~240-280 ms each way (35 786 km up and "
        "down), ~300 ms with the ground segment, so RTTs of ~550-650 ms, as VSAT and "
        "Inmarsat BGAN operators publish. 512 kbit/s up, 2 Mbit/s down: a small "
        "terminal's plan (BGAN streams up to ~0.5 Mbit/s). 0.2-0.5 s stalls every ~2 min: "
        "an assumed allowance for beam and gateway switches and fades, not a measured "
        "figure."
    ),
)
PATHOLOGICAL = LinkProfile(
    name="pathological",
    latency=0.800,
    jitter=0.600,
    uplink_bps=9_600,
    downlink_bps=9_600,
    stall_every=40.0,
    stall_min=15.0,
    stall_max=75.0,
    source=(
        "Deliberately beyond any profile's patience: stalls of 15-75 s, longer than the "
        "60 s deadline ceiling of cellular-low-data, on a 9.6 kbit/s link (a GSM data "
        "call). A device here cannot tell a stalled link from a blackholed hub; false "
        "drops are expected and show the price of each profile."
    ),
)
LINK_PROFILES: dict[str, LinkProfile] = {
    p.name: p for p in (LTE_GOOD, LTE_POOR, NB_IOT_2G, SATELLITE, PATHOLOGICAL)
}


def link_profile(name: str) -> LinkProfile:
    """The named link profile; ConfigError naming the known ones otherwise."""
    try:
        return LINK_PROFILES[name]
    except KeyError:
        raise ConfigError("link", name, ", ".join(LINK_PROFILES)) from None


class StallSchedule:
    """The stall windows of one connection, drawn lazily in time order."""

    def __init__(self, profile: LinkProfile, rng: random.Random, start: float) -> None:
        self._profile = profile
        self._rng = rng
        self._windows: deque[tuple[float, float]] = deque()
        self._drawn_until = start  # the end of the last window drawn

    def clear_at(self, at: float) -> float:
        """``at``, or the end of the stall that covers it."""
        if self._profile.stall_every is None:
            return at
        self._draw_past(at)
        while self._windows and self._windows[0][1] < at:
            self._windows.popleft()  # over before anything now asks about it
        for begin, end in self._windows:
            if begin <= at < end:
                return end
            if begin > at:
                break
        return at

    def windows(self, until: float) -> list[tuple[float, float]]:
        """The windows not yet forgotten that begin before ``until`` (for tests)."""
        self._draw_past(until)
        return [w for w in self._windows if w[0] < until]

    def _draw_past(self, at: float) -> None:
        every = self._profile.stall_every
        assert every is not None
        while self._drawn_until <= at:
            begin = self._drawn_until + every * self._rng.uniform(0.5, 1.5)
            end = begin + self._rng.uniform(self._profile.stall_min, self._profile.stall_max)
            self._windows.append((begin, end))
            self._drawn_until = end


class DirectionShaper:
    """When each segment read in one direction may be delivered (pure; time passed in)."""

    def __init__(
        self,
        profile: LinkProfile,
        bits_per_second: int | None,
        rng: random.Random,
        stalls: StallSchedule,
    ) -> None:
        self._profile = profile
        self._bps = bits_per_second
        self._rng = rng
        self._stalls = stalls
        self._wire_free_at = 0.0
        self._last_arrival = 0.0

    def schedule(self, size: int, now: float) -> list[tuple[float, int]]:
        """Delivery times and sizes of the segments of a ``size``-byte chunk read at ``now``."""
        p = self._profile
        latency = p.latency + self._rng.uniform(-p.jitter, p.jitter)
        plan: list[tuple[float, int]] = []
        for offset in range(0, size, SEGMENT):
            length = min(SEGMENT, size - offset)
            leaves = self._stalls.clear_at(max(now, self._wire_free_at))
            if self._bps is not None:
                leaves += length * 8 / self._bps
            self._wire_free_at = leaves
            arrives = self._stalls.clear_at(max(leaves + latency, self._last_arrival))
            self._last_arrival = arrives
            plan.append((arrives, length))
        return plan


class HeldBytes:
    """Bytes crossing a shaped link in one direction, each segment with its delivery time."""

    def __init__(self, shaper: DirectionShaper) -> None:
        self._shaper = shaper
        self._segments: deque[tuple[float, bytes]] = deque()
        self.size = 0

    @property
    def next_due(self) -> float | None:
        return self._segments[0][0] if self._segments else None

    def add(self, data: bytes, now: float) -> None:
        offset = 0
        for deliver_at, length in self._shaper.schedule(len(data), now):
            self._segments.append((deliver_at, data[offset : offset + length]))
            offset += length
        self.size += len(data)

    def take_due(self, now: float) -> bytes:
        """Every segment due by ``now``, joined in order (empty if none)."""
        due = bytearray()
        while self._segments and self._segments[0][0] <= now:
            due += self._segments.popleft()[1]
        self.size -= len(due)
        return bytes(due)

"""Failback probes are spread, so a fleet that failed over together does not probe home in step."""

from __future__ import annotations

import random

from device_sdk.engine.hub_sources import PROBE_JITTER, next_probe_at


def test_probes_are_spread_over_the_jitter_band_around_the_interval() -> None:
    rng = random.Random(7)
    delays = [next_probe_at(100.0, 30.0, rng) - 100.0 for _ in range(2000)]
    low, high = 30.0 * (1 - PROBE_JITTER), 30.0 * (1 + PROBE_JITTER)
    assert all(low <= d <= high for d in delays)
    assert min(delays) < low + 1.0 and max(delays) > high - 1.0  # the whole band is used
    assert abs(sum(delays) / len(delays) - 30.0) < 1.0  # on average, the interval
    # 10 000 devices probing in the same second would be the stampede this prevents.
    per_second: dict[int, int] = {}
    for d in delays:
        per_second[int(d)] = per_second.get(int(d), 0) + 1
    assert max(per_second.values()) < len(delays) / 10

"""The fault proxy's link shaper: latency with jitter, stalls and a bandwidth cap, on loopback.

Bytes cross a real FaultProxy to a small echo or sink server; every wait is
bounded by a socket timeout. The pure shaping arithmetic is checked first, on
times passed in.
"""

from __future__ import annotations

import random
import socket
import statistics
import threading
import time
from collections.abc import Iterator

import pytest

from device_sdk.errors import ConfigError
from device_sdk.testbed.link_shaper import (
    LINK_PROFILES,
    DirectionShaper,
    LinkProfile,
    StallSchedule,
    link_profile,
)
from device_sdk.testbed.proxy import FaultProxy, ProxySpec

pytestmark = pytest.mark.integration

TIMEOUT = 10.0


# -- the arithmetic, on times passed in --------------------------------------------------------


def _shaper(profile: LinkProfile, bps: int | None = None, seed: int = 1) -> DirectionShaper:
    rng = random.Random(seed)
    return DirectionShaper(profile, bps, rng, StallSchedule(profile, rng, 0.0))


def test_jittered_segments_are_never_reordered() -> None:
    profile = LinkProfile(name="j", latency=0.2, jitter=0.2)
    shaper = _shaper(profile)
    arrivals = [shaper.schedule(10, now=i * 0.001)[0][0] for i in range(200)]
    assert arrivals == sorted(arrivals)
    # The draws do vary: some chunk waits for a slower one sent before it.
    delays = [a - i * 0.001 for i, a in enumerate(arrivals)]
    assert max(delays) - min(delays) > 0.1
    assert all(0.0 <= d <= 0.4 + 1e-9 for d in delays)  # waiting never exceeds the worst draw


def test_a_bandwidth_cap_serialises_the_segments_of_a_chunk() -> None:
    profile = LinkProfile(name="slow", latency=0.0)
    plan = _shaper(profile, bps=8_000).schedule(3 * 1400, now=0.0)  # 1000 bytes/s
    assert [length for _t, length in plan] == [1400, 1400, 1400]
    assert [round(t, 6) for t, _n in plan] == [1.4, 2.8, 4.2]


def _stalled(seed: int) -> tuple[DirectionShaper, float, float]:
    profile = LinkProfile(name="s", latency=0.1, stall_every=10.0, stall_min=2.0, stall_max=2.0)
    rng = random.Random(seed)
    stalls = StallSchedule(profile, rng, 0.0)
    begin, end = stalls.windows(until=15.0)[0]
    return DirectionShaper(profile, None, rng, stalls), begin, end


def test_a_segment_due_inside_a_stall_waits_for_its_end() -> None:
    shaper, begin, end = _stalled(3)
    assert 5.0 <= begin <= 15.0  # every * uniform(0.5, 1.5) after the start
    assert end == pytest.approx(begin + 2.0)
    ((arrives, _n),) = shaper.schedule(10, now=begin + 0.5)
    assert arrives == pytest.approx(end + 0.1)  # left at the stall's end, then crossed
    shaper, begin, end = _stalled(3)
    ((arrives, _n),) = shaper.schedule(10, now=begin - 0.05)
    assert arrives == pytest.approx(end)  # left before it, would have arrived inside it
    shaper, begin, end = _stalled(3)
    ((arrives, _n),) = shaper.schedule(10, now=begin - 0.5)
    assert arrives == pytest.approx(begin - 0.4)  # crossed before it began


def test_profiles_carry_their_sources_and_bad_numbers_are_refused() -> None:
    assert {"lte-good", "lte-poor", "2g-nbiot-like", "satellite", "pathological"} <= set(
        LINK_PROFILES
    )
    assert all(len(p.source) > 80 for p in LINK_PROFILES.values())
    assert link_profile("lte-poor").rtt == pytest.approx(0.6)
    with pytest.raises(ConfigError, match="lte-good"):
        link_profile("carrier-pigeon")
    with pytest.raises(ConfigError, match="jitter"):
        LinkProfile(name="x", latency=0.1, jitter=0.2)
    with pytest.raises(ConfigError, match="stall_max"):
        LinkProfile(name="x", latency=0.1, stall_every=5.0, stall_min=2.0, stall_max=1.0)


# -- through a real proxy ----------------------------------------------------------------------


class _Target:
    """A one-connection TCP server that echoes, or records (arrival time, bytes)."""

    def __init__(self, *, echo: bool) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(TIMEOUT)
        self.port = self._server.getsockname()[1]
        self.received: list[tuple[float, bytes]] = []
        self._echo = echo
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self._server.accept()
        with conn:
            conn.settimeout(TIMEOUT)
            while data := conn.recv(65536):
                self.received.append((time.monotonic(), data))
                if self._echo:
                    conn.sendall(data)

    def close(self) -> None:
        self._server.close()
        self._thread.join(TIMEOUT)


@pytest.fixture
def echo() -> Iterator[_Target]:
    target = _Target(echo=True)
    yield target
    target.close()


@pytest.fixture
def sink() -> Iterator[_Target]:
    target = _Target(echo=False)
    yield target
    target.close()


def _shaped(target: _Target, link: LinkProfile) -> FaultProxy:
    return FaultProxy(ProxySpec(target_host="127.0.0.1", target_port=target.port, link=link))


def _dial(proxy: FaultProxy) -> socket.socket:
    sock = socket.create_connection((proxy.host, proxy.port), timeout=TIMEOUT)
    sock.settimeout(TIMEOUT)
    return sock


def test_round_trips_through_the_shaper_match_the_profile(echo: _Target) -> None:
    link = link_profile("lte-good")  # 25 ± 10 ms each way; first stall >= 30 s away
    with _shaped(echo, link) as proxy, _dial(proxy) as sock:
        rtts = []
        for i in range(25):
            started = time.monotonic()
            sock.sendall(bytes([i]))
            assert sock.recv(1) == bytes([i])
            rtts.append(time.monotonic() - started)
    assert statistics.median(rtts) == pytest.approx(link.rtt, abs=0.012)
    assert min(rtts) >= 2 * (link.latency - link.jitter) - 0.001
    assert max(rtts) < 2 * (link.latency + link.jitter) + 0.05  # scheduling slack only


def test_a_stall_holds_bytes_then_releases_them_in_order(sink: _Target) -> None:
    # A stall begins 0.2-0.6 s after the connection starts and lasts 0.5 s.
    link = LinkProfile(name="stally", latency=0.0, stall_every=0.4, stall_min=0.5, stall_max=0.5)
    with _shaped(sink, link) as proxy, _dial(proxy) as sock:
        for i in range(100):  # 1 s of numbered bytes, one every 10 ms
            sock.sendall(bytes([i]))
            time.sleep(0.01)
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + TIMEOUT
        while sum(len(d) for _t, d in sink.received) < 100 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert b"".join(d for _t, d in sink.received) == bytes(range(100))
    gaps = [b[0] - a[0] for a, b in zip(sink.received, sink.received[1:], strict=False)]
    assert max(gaps) >= 0.45  # nothing arrived during the stall
    # Then what had piled up came at once, not one byte per 10 ms.
    after_stall = sink.received[gaps.index(max(gaps)) + 1][1]
    assert len(after_stall) >= 20


def test_a_bandwidth_cap_bounds_throughput(sink: _Target) -> None:
    link = LinkProfile(name="capped", latency=0.0, uplink_bps=400_000)  # 50 000 bytes/s
    payload = bytes(100_000)
    with _shaped(sink, link) as proxy, _dial(proxy) as sock:
        started = time.monotonic()
        sock.sendall(payload)
        deadline = started + TIMEOUT
        while sum(len(d) for _t, d in sink.received) < len(payload):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        elapsed = sink.received[-1][0] - started
    assert 1.9 <= elapsed <= 2.6  # 100 kB at 50 kB/s, give or take the first segment


def test_stop_is_prompt_while_bytes_are_held(sink: _Target) -> None:
    link = LinkProfile(name="far", latency=30.0)
    proxy = _shaped(sink, link)
    proxy.start()
    with _dial(proxy) as sock:
        sock.sendall(b"on its way")
        time.sleep(0.1)
        assert proxy.open_connections == 1
        started = time.monotonic()
        proxy.stop()
        assert time.monotonic() - started < 1.0
    assert sink.received == []  # held bytes were never delivered early


def test_a_blackhole_freezes_held_bytes_until_restore(echo: _Target) -> None:
    link = LinkProfile(name="l", latency=0.1)
    with _shaped(echo, link) as proxy, _dial(proxy) as sock:
        sock.sendall(b"a")
        assert sock.recv(1) == b"a"
        sock.sendall(b"b")
        proxy.blackhole()
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # due long ago, yet held
        proxy.restore()
        sock.settimeout(TIMEOUT)
        assert sock.recv(1) == b"b"

"""Fuzzing a hostile hub in the suite: no stream of server bytes hurts the device.

hypothesis draws cases with the generator of ``benchmarks/fuzz_hub.py`` (valid
CONNACK, PUBACK, PUBLISH, SUBACK, UNSUBACK, PINGRESP, PUBREC/PUBREL/PUBCOMP and
DISCONNECT packets for MQTT 3.1.1 and 5, corrupted in flags, types, lengths,
packet ids, properties, topics, order and completeness) and plays each from a
HostileHub against a real DeviceClient. Every time, the engine thread lives,
nothing is taken for a fault of our own code, traced memory stays under a few
MiB, and a message published after the storm is acknowledged by a real
mosquitto through the same hub address. The default run is short and
derandomized (stable in CI); ``python benchmarks/fuzz_hub.py`` runs many more.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks import fuzz_hub
from benchmarks.fuzz_hub import FuzzRig, draw_case
from device_sdk.testbed import find_mosquitto

pytestmark = pytest.mark.integration

_numbers = itertools.count()  # one client id per case: its engine thread is looked up by name


def _require_mosquitto() -> None:
    if find_mosquitto() is not None:
        return
    message = "mosquitto is not installed (Debian: apt-get install mosquitto)"
    if os.environ.get("DEVICE_SDK_REQUIRE_MOSQUITTO") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzRig]:
    """One mosquitto for every case of this module (a case starts its own hub and client)."""
    _require_mosquitto()
    tracemalloc.start()
    try:
        with FuzzRig(tmp_path_factory.mktemp("fuzz")) as started:
            yield started
    finally:
        tracemalloc.stop()


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(rng=st.randoms(use_true_random=False))
def test_no_stream_of_hub_bytes_hurts_the_device(rig: FuzzRig, rng: random.Random) -> None:
    case = draw_case(rng)
    outcome = rig.play(case, next(_numbers))
    assert not outcome.problems, f"{outcome.problems}: {case.describe()}"


def test_the_longer_run_reports_cases_and_failures(tmp_path: Path) -> None:
    _require_mosquitto()
    out = tmp_path / "fuzz.json"
    code = fuzz_hub.main(["--cases", "3", "--seconds", "30", "--seed", "7", "--json", str(out)])
    document = json.loads(out.read_text(encoding="utf-8"))
    assert code == 0
    assert document["summary"]["cases"] == 3
    assert document["summary"]["failed"] == 0
    assert document["failures"] == []
    assert document["command"].startswith("python benchmarks/fuzz_hub.py --cases 3")

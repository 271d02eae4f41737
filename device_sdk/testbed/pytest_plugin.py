"""pytest fixtures for testing device apps against the real local testbed.

Registered automatically (entry point ``pytest11``) when device_sdk is
installed. Each fixture starts real processes on loopback and stops them, by
PID, when the test ends::

    def test_my_gateway_survives_a_crash(testbed):
        config = testbed.client_config("gateway-1")
        with DeviceClient(config) as client:
            testbed.hub("primary").broker.kill()
            client.publish("telemetry", b"1").wait(5)

mosquitto must be installed. Without it the fixtures skip the test, unless
``DEVICE_SDK_REQUIRE_MOSQUITTO=1`` is set (CI sets it), in which case they fail.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from device_sdk.testbed.bed import Testbed
from device_sdk.testbed.broker import find_mosquitto

TestbedFactory = Callable[..., Testbed]


def _require_mosquitto() -> None:
    if find_mosquitto() is not None:
        return
    message = "mosquitto is not installed (Debian: apt-get install mosquitto)"
    if os.environ.get("DEVICE_SDK_REQUIRE_MOSQUITTO") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def testbed_factory(tmp_path: Path) -> Iterator[TestbedFactory]:
    """Start testbeds with any options (``tls=``, ``hubs=``, ``users=``); all stop at teardown."""
    _require_mosquitto()
    started: list[Testbed] = []

    def start(**options: Any) -> Testbed:
        options.setdefault("work_dir", tmp_path / f"testbed-{len(started)}")
        Path(options["work_dir"]).mkdir(parents=True, exist_ok=True)
        bed = Testbed(**options)
        started.append(bed)
        return bed.start()

    yield start
    for bed in reversed(started):
        bed.stop()


@pytest.fixture
def testbed(testbed_factory: TestbedFactory) -> Testbed:
    """Two plain-MQTT hubs, ``primary`` and ``secondary``, with their DNS."""
    return testbed_factory()


@pytest.fixture
def tls_testbed(testbed_factory: TestbedFactory) -> Testbed:
    """Like ``testbed``, with TLS listeners whose certificates name each hub's FQDN."""
    return testbed_factory(tls=True)

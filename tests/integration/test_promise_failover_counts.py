"""README, "Gateway monitoring": the Prometheus file counts failovers and failbacks apart.

A real client fails over once (the primary is killed) and fails back once (the primary
returns); the file a gateway's node_exporter reads must then say exactly one of each.
Were failbacks counted as failovers, the failover counter would read 2.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from device_sdk import DeviceClient, events
from device_sdk.status import StatusWriter
from device_sdk.testbed import Testbed
from tests.integration.support import TOPIC, EventLog

pytestmark = pytest.mark.integration


def counters(prom_file: Path) -> dict[str, str]:
    lines = prom_file.read_text().splitlines()
    return dict(line.rsplit(" ", 1) for line in lines if line and not line.startswith("#"))


def test_one_failover_and_one_failback_are_counted_once_each(
    testbed: Testbed, tmp_path: Path
) -> None:
    log = EventLog()
    config = testbed.client_config("counting-device")
    with DeviceClient(config, on_event=log) as client:
        testbed.hub("primary").broker.kill()
        on_secondary = log.wait_for(events.Connected, 5.0, hub="secondary")
        testbed.hub("primary").broker.restart()
        log.wait_for(events.Connected, 10.0, hub="primary", after=on_secondary.at)
        client.publish(TOPIC, "0:x").wait(5)
        writer = StatusWriter(client.metrics, tmp_path / "status.json", tmp_path / "device.prom")
        writer.write_once()
    assert (len(log.of(events.FailedOver)), len(log.of(events.FailedBack))) == (1, 1)
    written = counters(tmp_path / "device.prom")
    assert written["device_sdk_failovers_total"] == "1"
    assert written["device_sdk_failbacks_total"] == "1"

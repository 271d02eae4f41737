"""Message identity and session semantics over real mosquitto.

* Every message carries its stable id as an MQTT 5 user property, and a
  resend after a failover carries the same id.
* On a reconnect to the same hub with a resumed session, in-flight messages
  are resent with DUP set and their original packet identifiers.
* After a failover (a new session), they are republished as new messages.
"""

from __future__ import annotations

import re
import time

import pytest

from device_sdk import DeviceClient, events
from device_sdk.testbed import Testbed
from device_sdk.testbed.pytest_plugin import TestbedFactory
from tests.integration.support import (
    EventLog,
    SteadyPublisher,
    assert_nothing_lost,
    collectors_for,
)

pytestmark = pytest.mark.integration

_PUBLISH = re.compile(r"Received PUBLISH from (\S+) \(d(\d), q1, r\d, m(\d+),")


def publishes(bed: Testbed, hub: str, client_id: str) -> list[tuple[int, int]]:
    """(dup flag, packet id) of every QoS 1 PUBLISH the broker received from ``client_id``."""
    log = bed.hub(hub).broker.log_text()
    return [(int(d), int(m)) for c, d, m in _PUBLISH.findall(log) if c == client_id]


def test_resumed_session_resends_with_dup_and_original_packet_ids(
    testbed_factory: TestbedFactory,
) -> None:
    bed = testbed_factory(broker_log_types=("all",))
    collectors = collectors_for(bed)
    log = EventLog()
    config = bed.client_config("resume-device", hubs=["primary"], session_expiry=60)
    with DeviceClient(config, on_event=log) as client:
        publisher = SteadyPublisher(client)
        with publisher.running():
            time.sleep(0.3)
            bed.hub("primary").broker.hang()
            lost = log.wait_for(events.Disconnected, 5.0)
            bed.hub("primary").broker.resume()
            back = log.wait_for(events.Connected, 5.0, after=lost.at)
            time.sleep(0.3)
        assert_nothing_lost(publisher, *collectors)
    assert back.session_present  # type: ignore[attr-defined]
    sent = publishes(bed, "primary", "resume-device")
    resent = [mid for dup, mid in sent if dup == 1]
    assert resent, f"nothing was in flight to resend; log: {sent[-10:]}"
    # Original packet ids, not new ones: the resends continue the numbering from before
    # the hang (some originals died unread in the hung broker's socket), and everything
    # published after the resume is numbered after them.
    first_resend = next(i for i, (dup, _mid) in enumerate(sent) if dup)
    before = [mid for dup, mid in sent[:first_resend] if dup == 0]
    after = [mid for dup, mid in sent[first_resend:] if dup == 0]
    assert min(resent) <= max(before) + 1
    assert not after or max(resent) < min(after)


def test_failover_republishes_as_new_messages_with_the_same_ids(
    testbed_factory: TestbedFactory,
) -> None:
    bed = testbed_factory(broker_log_types=("all",))
    collectors = collectors_for(bed)
    log = EventLog()
    config = bed.client_config("ids-device", session_expiry=60)
    with DeviceClient(config, on_event=log) as client:
        publisher = SteadyPublisher(client)
        with publisher.running():
            time.sleep(0.3)
            bed.hub("primary").broker.hang()
            log.wait_for(events.Connected, 5.0, hub="secondary")
            time.sleep(0.3)
        assert_nothing_lost(publisher, *collectors)
        bed.hub("primary").broker.resume()
    assert all(dup == 0 for dup, _mid in publishes(bed, "secondary", "ids-device"))
    ids: dict[int, set[str]] = {}
    for collector in collectors:
        for seq, found in collector.message_ids().items():
            ids.setdefault(seq, set()).update(found)
    assert all(len(found) == 1 for found in ids.values()), "a resend changed a message id"
    assert len({next(iter(found)) for found in ids.values()}) == len(ids)  # unique per message

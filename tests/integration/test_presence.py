"""Presence against real mosquitto: the Last Will in every CONNECT, the birth after every
connect, what a backend sees when the link dies, when the device closes, and when it
comes back within the will delay."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from device_sdk import DeviceClient, HubEndpoint, events
from device_sdk.config import Birth, ClientConfig, Will
from device_sdk.testbed import FaultProxy, Testbed
from device_sdk.testbed.proxy import ProxySpec
from tests.integration.support import EventLog

pytestmark = pytest.mark.integration

STATUS = "devices/gw-1/status"


class StatusWatcher:
    """A backend: a plain paho subscriber recording every (payload, retain) on the status topic."""

    def __init__(self, host: str, port: int) -> None:
        self.seen: list[tuple[bytes, bool]] = []
        self._changed = threading.Condition()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"watcher-{time.time()}")
        self._client.on_message = self._on_message
        self._client.on_connect = lambda c, *_a: c.subscribe(STATUS, qos=1)
        self._client.connect(host, port, keepalive=10)
        self._client.loop_start()

    def _on_message(self, _c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        with self._changed:
            self.seen.append((message.payload, bool(message.retain)))
            self._changed.notify_all()

    def wait_for(self, payload: bytes, count: int = 1, timeout: float = 5.0) -> None:
        with self._changed:
            ok = self._changed.wait_for(
                lambda: [p for p, _r in self.seen].count(payload) >= count, timeout
            )
        assert ok, f"{payload!r} x{count} not seen within {timeout} s; saw {self.seen}"

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def rig(testbed_factory: object) -> Iterator[tuple[Testbed, FaultProxy, StatusWatcher]]:
    bed: Testbed = testbed_factory(hubs=("primary",))  # type: ignore[operator]
    broker = bed.hub("primary").broker
    proxy = FaultProxy(ProxySpec(target_host=broker.host, target_port=broker.port))
    proxy.start()
    watcher = StatusWatcher(broker.host, broker.port)
    yield bed, proxy, watcher
    watcher.stop()
    proxy.stop()


def config_for(bed: Testbed, proxy: FaultProxy, *, will: Will, **overrides: object) -> ClientConfig:
    base = bed.client_config("gw-1")
    hub = HubEndpoint(name="primary", fqdn="127.0.0.1", port=proxy.port, tls=None)
    return ClientConfig(
        **{
            **{f: getattr(base, f) for f in ("client_id", "dns", "retry", "failover", "liveness")},
            "hubs": (hub,),
            "will": will,
            "birth": Birth(topic=STATUS, payload=b"online"),
            **overrides,
        }  # type: ignore[arg-type]
    )


def test_the_will_announces_a_lost_link_and_the_birth_the_return(
    rig: tuple[Testbed, FaultProxy, StatusWatcher],
) -> None:
    bed, proxy, watcher = rig
    log = EventLog()
    config = config_for(bed, proxy, will=Will(topic=STATUS, payload=b"offline"))
    with DeviceClient(config, on_event=log) as client:
        client.connect(timeout=5.0)
        watcher.wait_for(b"online")
        proxy.reset()  # the link dies without a DISCONNECT: the hub publishes the will
        watcher.wait_for(b"offline")
        proxy.restore()
        watcher.wait_for(b"online", count=2)  # back, and announced before anything else
        # Events reach on_event from the callback thread: the birth can arrive first.
        first = log.of(events.Connected)[0]
        log.wait_for(events.Connected, 5.0, after=first.at + 1e-6)
        assert len(log.of(events.Connected)) == 2
    # A clean close says goodbye: no will.
    time.sleep(0.5)
    assert [p for p, _r in watcher.seen].count(b"offline") == 1
    # Both are retained: a backend that subscribes later learns the last state.
    late = StatusWatcher(bed.hub("primary").broker.host, bed.hub("primary").broker.port)
    try:
        late.wait_for(b"online")
        assert late.seen[0] == (b"online", True)
    finally:
        late.stop()


def test_a_device_back_within_the_will_delay_is_never_announced_offline(
    rig: tuple[Testbed, FaultProxy, StatusWatcher],
) -> None:
    bed, proxy, watcher = rig
    will = Will(topic=STATUS, payload=b"offline", delay_interval=3)
    # The will waits for the delay or the end of the session, whichever is first: the
    # session must outlive the delay for the delay to help.
    config = config_for(bed, proxy, will=will, session_expiry=10)
    with DeviceClient(config) as client:
        client.connect(timeout=5.0)
        watcher.wait_for(b"online")
        proxy.reset()
        time.sleep(0.3)
        proxy.restore()
        watcher.wait_for(b"online", count=2)
        time.sleep(3.5)  # past the delay: the hub cancelled the will when the device returned
    assert b"offline" not in [p for p, _r in watcher.seen]

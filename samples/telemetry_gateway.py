"""A telemetry gateway: publish readings at a steady rate, survive hub outages.

Run it against the local testbed (two mosquitto hubs with their DNS):

    python samples/telemetry_gateway.py --local-testbed --seconds 5

or against your own hubs:

    python samples/telemetry_gateway.py --hub primary=hub-eu.example.com:8883 \
        --hub secondary=hub-us.example.com:8883 --client-id gateway-0042

Under systemd (see ``telemetry-gateway.service``) it reports READY=1 once
connected and pings the watchdog from its main loop, so systemd restarts it if
the loop ever hangs. It does not stop pinging while the hub is unreachable: a
restart cannot fix the network, and the outbox keeps every reading meanwhile.
It does stop pinging, and exits, once the client has stopped for good
(``client.healthy`` is False: repeated internal faults, see the README's
"When something goes wrong"): then a restart is exactly the cure, and the
durable outbox hands every accepted reading to the new process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import socket
import time
from collections.abc import Iterator

from device_sdk import ClientConfig, DeviceClient, HubEndpoint, OutboxSettings, events
from device_sdk.testbed import Testbed


def sd_notify(state: str) -> None:
    """Tell systemd ``state`` (READY=1, WATCHDOG=1) when run as a Type=notify service."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract socket namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(state.encode(), address)


def watchdog_interval() -> float | None:
    """Half of systemd's WatchdogSec, the usual ping period; None without a watchdog."""
    usec = os.environ.get("WATCHDOG_USEC")
    return int(usec) / 2e6 if usec else None


class Watchdog:
    """Feeds systemd's watchdog from the main loop, but only while the client is healthy."""

    def __init__(self) -> None:
        self.every = watchdog_interval()
        self._last = 0.0

    def feed(self, client: DeviceClient) -> bool:
        """Ping when due; False (and no ping) once the client has stopped for good."""
        if not client.healthy:
            return False
        now = time.monotonic()
        if self.every is not None and now - self._last >= self.every:
            sd_notify("WATCHDOG=1")
            self._last = now
        return True


def parse_hub(text: str) -> HubEndpoint:
    name, _, authority = text.partition("=")
    fqdn, _, port = authority.rpartition(":")
    return HubEndpoint(name=name, fqdn=fqdn, port=int(port))


@contextlib.contextmanager
def configured(args: argparse.Namespace) -> Iterator[ClientConfig]:
    outbox = OutboxSettings(path=args.outbox)  # None: in memory
    if args.local_testbed:
        with Testbed(tls=True) as bed:
            yield bed.client_config(args.client_id, outbox=outbox)
    else:
        hubs = tuple(parse_hub(h) for h in args.hub)
        yield ClientConfig(client_id=args.client_id, hubs=hubs, outbox=outbox)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hub", action="append", default=[], help="name=fqdn:port, in order")
    parser.add_argument("--client-id", default="sample-gateway")
    parser.add_argument("--local-testbed", action="store_true")
    parser.add_argument("--outbox", help="durable SQLite outbox file (default: in memory)")
    parser.add_argument("--seconds", type=float, default=float("inf"), help="run this long")
    parser.add_argument("--rate", type=float, default=2.0, help="readings per second")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    def show(event: events.Event) -> None:
        if isinstance(event, events.Connected | events.FailedOver | events.Disconnected):
            print(f"[event] {event.describe()}", flush=True)

    with configured(args) as config, DeviceClient(config, on_event=show) as client:
        sd_notify("READY=1")
        watchdog = Watchdog()
        topic = f"devices/{config.client_id}/telemetry"
        handles = []
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            if not watchdog.feed(client):
                print(f"device_sdk stopped for good ({client.failure}); exiting", flush=True)
                return 70  # EX_SOFTWARE: systemd restarts us; the outbox kept every reading
            reading = {"temperature": round(20 + random.random() * 5, 2), "ts": time.time()}
            handles.append(client.publish(topic, json.dumps(reading)))
            time.sleep(1.0 / args.rate)
        for handle in handles:
            handle.wait(timeout=30)  # every reading acknowledged by a hub
        print(f"published and acknowledged {len(handles)} readings; {client.metrics()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

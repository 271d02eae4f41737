"""A telemetry gateway: publish readings at a steady rate, survive hub outages.

Run it against the local testbed (two mosquitto hubs with their DNS):

    python samples/telemetry_gateway.py --local-testbed --seconds 5

or against your own hubs:

    python samples/telemetry_gateway.py --hub primary=hub-eu.example.com:8883 \
        --hub secondary=hub-us.example.com:8883 --client-id gateway-0042
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import random
import time
from collections.abc import Iterator

from device_sdk import ClientConfig, DeviceClient, HubEndpoint, events
from device_sdk.testbed import Testbed


def parse_hub(text: str) -> HubEndpoint:
    name, _, authority = text.partition("=")
    fqdn, _, port = authority.rpartition(":")
    return HubEndpoint(name=name, fqdn=fqdn, port=int(port))


@contextlib.contextmanager
def configured(args: argparse.Namespace) -> Iterator[ClientConfig]:
    if args.local_testbed:
        with Testbed(tls=True) as bed:
            yield bed.client_config(args.client_id)
    else:
        yield ClientConfig(client_id=args.client_id, hubs=tuple(parse_hub(h) for h in args.hub))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hub", action="append", default=[], help="name=fqdn:port, in order")
    parser.add_argument("--client-id", default="sample-gateway")
    parser.add_argument("--local-testbed", action="store_true")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=2.0, help="readings per second")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    def show(event: events.Event) -> None:
        if isinstance(event, events.Connected | events.FailedOver | events.Disconnected):
            print(f"[event] {event.describe()}", flush=True)

    with configured(args) as config, DeviceClient(config, on_event=show) as client:
        topic = f"devices/{config.client_id}/telemetry"
        handles = []
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            reading = {"temperature": round(20 + random.random() * 5, 2), "ts": time.time()}
            handles.append(client.publish(topic, json.dumps(reading)))
            time.sleep(1.0 / args.rate)
        for handle in handles:
            handle.wait(timeout=30)  # every reading acknowledged by a hub
        print(f"published and acknowledged {len(handles)} readings; {client.metrics()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

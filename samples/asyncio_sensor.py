"""An asyncio sensor: readings, commands and connection events in one event loop.

Against the local testbed:

    python samples/asyncio_sensor.py --local-testbed --seconds 5

The sensor publishes a reading every ``--period`` seconds and awaits its
PUBACK, obeys ``set-period <seconds>`` commands sent to its command topic, and
logs every connection event. One ``async with`` block owns all of it: leaving it
(normally, on an error, or on Ctrl-C) stops every task and thread.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import time
from collections.abc import Iterator

from device_sdk import AsyncDeviceClient, ClientConfig, HubEndpoint
from device_sdk.testbed import Testbed


class Sensor:
    def __init__(self, client: AsyncDeviceClient, period: float) -> None:
        self.client, self.period, self.acknowledged = client, period, 0
        self.topic = f"devices/{client.config.client_id}"

    async def report(self, until: float) -> None:
        while time.monotonic() < until:
            reading = {"humidity": round(40 + 10 * random.random(), 1), "ts": time.time()}
            await self.client.publish(f"{self.topic}/telemetry", json.dumps(reading))
            self.acknowledged += 1
            await asyncio.sleep(self.period)

    async def obey(self) -> None:
        async for message in self.client.messages(f"{self.topic}/commands"):
            command, _, value = message.payload.decode().partition(" ")
            if command == "set-period":
                self.period = float(value)
                print(f"[command] period is now {self.period} s", flush=True)

    async def watch(self) -> None:
        async for event in self.client.events():
            print(f"[event] {event.describe()}", flush=True)


@contextlib.contextmanager
def configured(args: argparse.Namespace) -> Iterator[ClientConfig]:
    if args.local_testbed:
        with Testbed() as bed:
            yield bed.client_config(args.client_id)
    else:
        name, _, authority = args.hub.partition("=")
        fqdn, _, port = authority.rpartition(":")
        hub = HubEndpoint(name=name, fqdn=fqdn, port=int(port))
        yield ClientConfig(client_id=args.client_id, hubs=(hub,))


async def run(config: ClientConfig, seconds: float, period: float) -> int:
    async with AsyncDeviceClient(config) as client:
        sensor = Sensor(client, period)
        side = [asyncio.create_task(sensor.obey()), asyncio.create_task(sensor.watch())]
        await asyncio.sleep(0.1)  # let the command subscription settle
        await client.publish(f"{sensor.topic}/commands", f"set-period {period / 2}")
        await sensor.report(time.monotonic() + seconds)
        for task in side:
            task.cancel()
        print(f"{sensor.acknowledged} readings acknowledged", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--local-testbed", action="store_true")
    parser.add_argument("--hub", default="primary=hub.example.com:8883", help="name=fqdn:port")
    parser.add_argument("--client-id", default="sample-sensor")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--period", type=float, default=0.5)
    args = parser.parse_args()
    with configured(args) as config:
        return asyncio.run(run(config, args.seconds, args.period))


if __name__ == "__main__":
    raise SystemExit(main())

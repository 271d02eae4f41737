"""A device process for kill tests: publishes a numbered stream through a durable outbox.

Prints ``accepted <n>`` once ``publish()`` has returned for message ``n`` (the
message is then durably stored), so the test knows exactly what the SDK was
handed before it was killed. Run with a JSON description on argv[1]:
``{"config": {...testbed description...}, "outbox": path, "start": n, "count": n, "rate": r}``.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time

from device_sdk import (
    ClientConfig,
    DeviceClient,
    NotConnected,
    OutboxSettings,
)
from tests.integration.programs.testbed_device import testbed_config


def config_from(spec: dict[str, object]) -> ClientConfig:
    return testbed_config(
        spec, outbox=OutboxSettings(path=str(spec["outbox"]), synchronous="NORMAL")
    )


def main() -> int:
    spec = json.loads(sys.argv[1])
    config = config_from(spec)
    start, count, period = int(spec["start"]), int(spec["count"]), 1.0 / float(spec["rate"])
    client = DeviceClient(config)
    try:
        client.connect(timeout=float(spec.get("connect_timeout", 30.0)))
        print("connected", flush=True)
    except NotConnected:
        print("offline", flush=True)  # publishing still works: the outbox keeps it
    with contextlib.closing(client):
        for n in range(start, start + count):
            client.publish(str(spec["topic"]), f"{n}:x")
            print(f"accepted {n}", flush=True)
            time.sleep(period)
        print("done", flush=True)
        deadline = time.monotonic() + 15.0  # bounded: let the outbox drain before closing
        while client.metrics().queue_depth and time.monotonic() < deadline:
            time.sleep(0.05)
        print(f"drained {client.metrics().queue_depth}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

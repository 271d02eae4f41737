"""A device process for the at-least-once command tests: receives commands, may hang in them.

Subscribes to ``spec["topic"]`` at QoS 1 with a persistent session (a fixed client id,
``session_expiry`` > 0) and prints ``got <payload>`` when its handler is called. With
``"block": true`` the handler then hangs (bounded), so the test can SIGKILL the process
inside it. Prints ``ready`` once the hub has certainly taken its subscription: a QoS 1
message published after the SUBSCRIBE on the same link was acknowledged. Run with a JSON
description on argv[1]: ``{"client_id", "hubs", "dns_host", "dns_port", "topic",
"command_ack", "session_expiry", "block"}``.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading

from device_sdk import ClientConfig, DeviceClient
from tests.integration.programs.testbed_device import testbed_config

# How long a blocking handler hangs at most: the test kills the process well before.
_HANG_SECONDS = 60.0


def config_from(spec: dict[str, object]) -> ClientConfig:
    return testbed_config(
        spec,
        session_expiry=int(spec["session_expiry"]),
        command_ack=spec["command_ack"],
    )


def main() -> int:
    spec = json.loads(sys.argv[1])
    hang = threading.Event()  # never set: the handler hangs until the timeout or the kill

    def on_command(topic: str, payload: bytes) -> None:
        print(f"got {payload.decode()}", flush=True)
        if spec["block"]:
            hang.wait(_HANG_SECONDS)

    client = DeviceClient(config_from(spec))
    with contextlib.closing(client):
        client.subscribe(str(spec["topic"]), on_command, qos=1)
        client.connect(timeout=10.0)
        client.publish(f"{spec['topic']}-ready", b"ready").wait(10.0)
        print("ready", flush=True)
        sys.stdin.read()  # until the test closes stdin (or kills the process)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

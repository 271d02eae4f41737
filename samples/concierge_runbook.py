"""Operator runbook: switch the active hub at the concierge and watch the devices move.

Against the local testbed (a concierge, two hubs and a small fleet of devices
started here):

    python samples/concierge_runbook.py --local-testbed --devices 3 --to secondary

Against a real deployment, only the switch is made (the devices are yours):

    python samples/concierge_runbook.py --url https://concierge.example.com \
        --token-file /etc/concierge/operator-token --to secondary
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

from device_sdk import DeviceClient, events
from device_sdk.concierge.cli import post_active
from device_sdk.testbed import Testbed


def switch(url: str, token_file: Path, hub: str, *, allow_plain_http: bool = False) -> None:
    answer = post_active(
        url, hub, token_file.read_text().strip(), allow_plain_http=allow_plain_http
    )
    print(
        f"concierge: active hub is now {answer.get('active_hub')} "
        f"(document sequence {answer.get('sequence')})",
        flush=True,
    )


def watch_fleet(count: int, target: str, timeout: float) -> None:
    """Start a fleet on the local testbed, switch, and report when each device has moved."""
    with Testbed(concierge=True) as bed:
        assert bed.concierge is not None and bed.concierge_token_file is not None
        moved: dict[str, float] = {}
        done = threading.Condition()

        def listener(device: str):  # type: ignore[no-untyped-def]
            def on_event(event: events.Event) -> None:
                if isinstance(event, events.Connected) and event.hub == target:
                    with done:
                        moved.setdefault(device, time.monotonic())
                        done.notify_all()

            return on_event

        settings = bed.concierge_settings(poll_interval=1.0)
        clients = [
            DeviceClient(
                bed.client_config(f"fleet-{n}", concierge=settings), on_event=listener(f"fleet-{n}")
            )
            for n in range(count)
        ]
        try:
            for client in clients:
                client.connect(timeout=10)
            print(f"{count} devices connected to {clients[0].metrics().current_hub}", flush=True)
            started = time.monotonic()
            switch(bed.concierge.url, bed.concierge_token_file, target, allow_plain_http=True)
            with done:
                done.wait_for(lambda: len(moved) == count, timeout)
            for device, at in sorted(moved.items(), key=lambda item: item[1]):
                print(f"  {device} on {target} after {(at - started) * 1000:.0f} ms", flush=True)
            print(f"{len(moved)}/{count} devices moved to {target}", flush=True)
        finally:
            for client in clients:
                client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--to", default="secondary", help="the hub to make active")
    parser.add_argument("--local-testbed", action="store_true")
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument("--url", help="the concierge's base URL (real deployments)")
    parser.add_argument("--token-file", type=Path, help="the operator token (real deployments)")
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    if args.local_testbed:
        watch_fleet(args.devices, args.to, args.timeout)
    elif args.url and args.token_file:
        switch(args.url, args.token_file, args.to)
    else:
        parser.error("give --local-testbed, or --url and --token-file")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

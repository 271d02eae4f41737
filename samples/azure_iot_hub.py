"""A device on Azure IoT Hub with a SAS key: telemetry with properties, cloud-to-device messages.

In the field (the key file holds the device's primary key as the portal shows
it, mode 0600; a token is minted from it before every connect attempt):

    python samples/azure_iot_hub.py --hub-host my-hub.azure-devices.net \\
        --device-id sensor-1 --key-file /etc/sensor-1/sas.key

On this machine, against the testbed's stand-in for IoT Hub (a TLS front that
checks IoT Hub's user names and SAS tokens, before a real mosquitto), with a
key generated for the run:

    python samples/azure_iot_hub.py --testbed

The device subscribes to its cloud-to-device messages, sends ``--readings``
readings as device-to-cloud telemetry with application and system properties,
and waits for each PUBACK. With ``--testbed`` the sample also plays the cloud
once: it sends the device one C2D message and waits for it.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from device_sdk import ClientConfig, DeviceClient, TlsSettings
from device_sdk.dialects.azure import (
    azure_client_config,
    azure_hub,
    azure_sas_credentials,
    c2d_filter,
    d2c_topic,
    parse_c2d_topic,
)
from device_sdk.testbed import FAST_RETRY, IotHubFront, Testbed

TESTBED_HUB = "sample-hub.hubs.device-sdk.test"
TESTBED_DEVICE = "sensor-1"


def device_config(
    hub_host: str,
    device_id: str,
    key_file: str,
    *,
    port: int = 8883,
    ca_file: str | None = None,
    **overrides: Any,
) -> ClientConfig:
    """IoT Hub's dialect: MQTT 3.1.1 over TLS, client id = device id, a fresh SAS token.

    ``ca_file=None`` trusts the system store, which holds IoT Hub's roots.
    """
    hub = azure_hub("iothub", hub_host, port=port, tls=TlsSettings(ca_file=ca_file))
    credentials = azure_sas_credentials(key_file=key_file, ttl=3600)
    return azure_client_config(device_id, [hub], credentials, **overrides)


class Device:
    """Sends readings as D2C telemetry and prints the C2D messages it is sent."""

    def __init__(self, client: DeviceClient, device_id: str) -> None:
        self.client, self.device_id = client, device_id
        self.commands: list[tuple[str, dict[str, str]]] = []
        self.command_arrived = threading.Event()
        client.subscribe(c2d_filter(device_id), self.on_c2d)

    def on_c2d(self, topic: str, payload: bytes) -> None:
        _device, properties = parse_c2d_topic(topic)
        self.commands.append((payload.decode("utf-8", "replace"), properties))
        print(f"C2D message: {payload!r} with properties {properties}", flush=True)
        self.command_arrived.set()

    def send_reading(self, number: int) -> None:
        reading = {"temperature": round(20 + number * 0.1, 1), "ts": time.time()}
        topic = d2c_topic(
            self.device_id,
            {"sensor": "temperature", "alert": "false"},
            content_type="application/json",
            content_encoding="utf-8",
            message_id=f"{self.device_id}-{number}",
        )
        self.client.publish(topic, json.dumps(reading)).wait(30.0)
        print(f"reading {number} acknowledged (PUBACK)", flush=True)


@contextlib.contextmanager
def testbed_hub(device_id: str) -> Iterator[tuple[ClientConfig, tuple[str, int]]]:
    """The stand-ins: mosquitto, DNS and a CA from the testbed, an IoT Hub front before them.

    Yields the device's config and the broker behind the front (where the
    sample plays the cloud).
    """
    with Testbed(tls=True, hubs=("primary",)) as bed:
        assert bed.ca is not None and bed.dns is not None
        key = base64.b64encode(secrets.token_bytes(32)).decode("ascii")
        key_file = bed.work_dir / "sas.key"
        key_file.write_text(key)
        os.chmod(key_file, 0o600)
        server = bed.ca.issue_server_certificate([TESTBED_HUB]).write_to(bed.work_dir, stem="hub")
        broker = bed.hub("primary").broker
        with IotHubFront(
            hub_host=TESTBED_HUB,
            upstream=(broker.host, broker.port),
            device_keys={device_id: key},
            server_cert_file=server.cert_file,
            server_key_file=server.key_file,
        ) as front:
            bed.dns.set_address(TESTBED_HUB, [front.listen_host], ttl=1)
            config = device_config(
                TESTBED_HUB,
                device_id,
                str(key_file),
                port=front.port,
                ca_file=str(bed.ca_file),
                dns=bed.dns_settings(),
                retry=FAST_RETRY,
            )
            yield config, (broker.host, broker.port)


def send_c2d(broker: tuple[str, int], device_id: str) -> None:
    """What IoT Hub does when a service sends the device a message (testbed only)."""
    cloud = paho.Client(CallbackAPIVersion.VERSION2, client_id="sample-cloud")
    cloud.connect(*broker, keepalive=10)
    cloud.loop_start()
    try:
        topic = f"devices/{device_id}/messages/devicebound/%24.mid=c2d-1&command=set-interval"
        cloud.publish(topic, b'{"interval": 30}', qos=1).wait_for_publish(10.0)
    finally:
        cloud.disconnect()
        cloud.loop_stop()


def run(config: ClientConfig, device_id: str, readings: int, cloud: tuple[str, int] | None) -> int:
    with DeviceClient(config) as client:
        device = Device(client, device_id)
        client.connect(timeout=30.0)
        print(f"connected to {config.hubs[0].fqdn} as {device_id}", flush=True)
        for number in range(readings):
            device.send_reading(number)
        if cloud is not None:
            send_c2d(cloud, device_id)
            if not device.command_arrived.wait(10.0):
                print("no C2D message arrived", flush=True)
                return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--testbed", action="store_true", help="run against local stand-ins")
    parser.add_argument("--hub-host", help="the IoT hub's host name: NAME.azure-devices.net")
    parser.add_argument("--device-id", default=TESTBED_DEVICE)
    parser.add_argument("--key-file", type=Path, help="the device's SAS key (base64), mode 0600")
    parser.add_argument("--readings", type=int, default=3)
    args = parser.parse_args()
    if args.testbed:
        with testbed_hub(args.device_id) as (config, broker):
            return run(config, args.device_id, args.readings, broker)
    if not args.hub_host or not args.key_file:
        parser.error("--hub-host and --key-file are needed (or --testbed)")
    config = device_config(args.hub_host, args.device_id, str(args.key_file))
    return run(config, args.device_id, args.readings, None)


if __name__ == "__main__":
    raise SystemExit(main())

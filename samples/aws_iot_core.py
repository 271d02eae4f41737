"""A thing on AWS IoT Core with an X.509 certificate: telemetry and commands over mutual TLS.

In the field (the certificate and key AWS issued for the thing, the account's
data endpoint from ``aws iot describe-endpoint --endpoint-type iot:Data-ATS``):

    python samples/aws_iot_core.py --endpoint a1b2c3-ats.iot.eu-west-1.amazonaws.com \\
        --thing-name greenhouse-7 --cert-file thing.crt --key-file thing.key

Add ``--port 443`` where only 443 leaves the site: the device then offers the
ALPN protocol ``x-amzn-mqtt-ca``, as AWS requires there.

On this machine, against a local stand-in (a testbed mosquitto whose TLS
listener requires a client certificate from the testbed's CA, issued here for
the thing's name):

    python samples/aws_iot_core.py --testbed

The thing subscribes to its command topic, publishes ``--readings`` readings
and waits for each PUBACK. With ``--testbed`` the sample also plays the cloud
once: it sends the thing one command and waits for it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from device_sdk import ClientConfig, DeviceClient
from device_sdk.dialects.aws import AwsAlpn, aws_client_config, aws_hub
from device_sdk.testbed import FAST_RETRY, Testbed

TESTBED_THING = "greenhouse-7"


def thing_config(
    endpoint: str,
    thing_name: str,
    cert_file: str,
    key_file: str,
    *,
    port: int = 8883,
    alpn: AwsAlpn = "auto",
    ca_file: str | None = None,
    **overrides: Any,
) -> ClientConfig:
    """AWS IoT Core's dialect: TLS with the thing's certificate, client id = thing name, MQTT 5.

    ``alpn="auto"`` offers nothing on 8883 and ``x-amzn-mqtt-ca`` on 443;
    ``ca_file=None`` trusts the system store, which holds the Amazon roots.
    """
    hub = aws_hub(
        "aws",
        endpoint,
        port=port,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
        alpn=alpn,
    )
    return aws_client_config(thing_name, [hub], **overrides)


class Thing:
    """Publishes readings to ``dt/greenhouse/{thing}`` and obeys ``cmd/greenhouse/{thing}``."""

    def __init__(self, client: DeviceClient, thing_name: str) -> None:
        self.client, self.thing_name = client, thing_name
        self.telemetry = f"dt/greenhouse/{thing_name}"
        self.commands = f"cmd/greenhouse/{thing_name}"
        self.command_arrived = threading.Event()
        client.subscribe(self.commands, self.on_command)

    def on_command(self, topic: str, payload: bytes) -> None:
        print(f"command on {topic}: {payload!r}", flush=True)
        self.command_arrived.set()

    def send_reading(self, number: int) -> None:
        reading = {"humidity": round(55 + number * 0.5, 1), "ts": time.time()}
        self.client.publish(self.telemetry, json.dumps(reading)).wait(30.0)
        print(f"reading {number} acknowledged (PUBACK)", flush=True)


@contextlib.contextmanager
def testbed_endpoint(thing_name: str) -> Iterator[tuple[ClientConfig, tuple[str, int]]]:
    """A mosquitto that takes only devices with a certificate from the testbed CA.

    Its TLS port is not 443, so the ALPN protocol is named (mosquitto does not
    select one; AWS would). Yields the thing's config and the broker's plain
    listener (where the sample plays the cloud).
    """
    with Testbed(client_certificates=True, hubs=("aws",)) as bed:
        hub = bed.hub("aws")
        assert hub.broker.tls_port is not None
        cert_file, key_file = bed.device_certificate(thing_name)
        config = thing_config(
            hub.fqdn,
            thing_name,
            cert_file,
            key_file,
            port=hub.broker.tls_port,
            alpn="x-amzn-mqtt-ca",
            ca_file=str(bed.ca_file),
            dns=bed.dns_settings(),
            retry=FAST_RETRY,
        )
        yield config, (hub.broker.host, hub.broker.port)


def send_command(broker: tuple[str, int], topic: str) -> None:
    """What a cloud application does to command the thing (testbed only)."""
    cloud = paho.Client(CallbackAPIVersion.VERSION2, client_id="sample-cloud")
    cloud.connect(*broker, keepalive=10)
    cloud.loop_start()
    try:
        cloud.publish(topic, b'{"vent": "open"}', qos=1).wait_for_publish(10.0)
    finally:
        cloud.disconnect()
        cloud.loop_stop()


def run(config: ClientConfig, readings: int, cloud: tuple[str, int] | None) -> int:
    with DeviceClient(config) as client:
        thing = Thing(client, config.client_id)
        client.connect(timeout=30.0)
        print(f"connected to {config.hubs[0].fqdn} as {config.client_id}", flush=True)
        for number in range(readings):
            thing.send_reading(number)
        if cloud is not None:
            send_command(cloud, thing.commands)
            if not thing.command_arrived.wait(10.0):
                print("no command arrived", flush=True)
                return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--testbed", action="store_true", help="run against a local stand-in")
    parser.add_argument("--endpoint", help="the account's data endpoint (…-ats.iot.REGION…)")
    parser.add_argument("--thing-name", default=TESTBED_THING)
    parser.add_argument("--cert-file", help="the thing's certificate (PEM)")
    parser.add_argument("--key-file", help="its private key (PEM), mode 0600")
    parser.add_argument("--ca-file", help="AmazonRootCA1.pem, where the system store lacks it")
    parser.add_argument("--port", type=int, choices=(8883, 443), default=8883)
    parser.add_argument("--readings", type=int, default=3)
    args = parser.parse_args()
    if args.testbed:
        with testbed_endpoint(args.thing_name) as (config, broker):
            return run(config, args.readings, broker)
    if not (args.endpoint and args.cert_file and args.key_file):
        parser.error("--endpoint, --cert-file and --key-file are needed (or --testbed)")
    config = thing_config(
        args.endpoint,
        args.thing_name,
        args.cert_file,
        args.key_file,
        port=args.port,
        ca_file=args.ca_file,
    )
    return run(config, args.readings, None)


if __name__ == "__main__":
    raise SystemExit(main())

"""QoS 1 publish throughput: raw paho-mqtt against device_sdk, on one local broker, in one run.

    python benchmarks/throughput.py [--messages N] [--runs R] [--json [PATH]] [--mqtt 5|3.1.1]
                                    [--transport tcp|ws|proxy]

One mosquitto broker (``device_sdk.testbed.MosquittoBroker``, plain listener on
127.0.0.1) serves every run. A run publishes N QoS 1 messages of
``PAYLOAD_BYTES`` bytes to one topic as fast as the publishing thread can,
then waits for every PUBACK; its rate is N divided by the time from the first
``publish()`` to the last PUBACK. Connecting is not timed. Four variants, each
with an in-flight window of ``WINDOW`` messages and MQTT 5 (``--mqtt 3.1.1``: both
sides speak 3.1.1):

* ``raw paho``: paho-mqtt 2.x, ``loop_start()``, ``max_inflight_messages_set``,
  publishing from the main thread (paho queues what the window cannot take).
* ``sdk memory``: ``DeviceClient`` with the in-memory outbox.
* ``sdk sqlite NORMAL`` and ``sdk sqlite FULL``: ``DeviceClient`` with a fresh
  ``SqliteOutbox`` file at that sync level, in a temporary directory.

The SDK's outbox bound is raised to hold all N messages, so backpressure never
interrupts a run. The variants take turns run by run (rotating which goes
first), after one untimed warm-up run each, and the table reports the median
of the R runs and its ratio to raw paho's median. DESIGN.md's targets: the
in-memory SDK at least 0.9x raw paho, the durable outbox at least 0.5x.

``--transport`` chooses how every variant reaches that broker; the ratios are
always to raw paho over the same way in, in the same run:

* ``tcp`` (default): straight to the broker's port.
* ``ws``: MQTT over plain WebSockets through a websockify bridge
  (``device_sdk.testbed.WebSocketBridge``, no TLS) in front of the broker. No
  TLS on purpose: the figures show the framing's cost (and the bridge's), not
  the cipher's. Raw paho uses ``transport="websockets"`` with path ``/mqtt``;
  the SDK a hub with ``transports=(Transport(scheme="ws", ...),)``. websockify
  is a Python process of its own (one forked handler per connection) that
  copies every frame, so on a small machine it competes with both clients for
  the CPU and may well be what limits every variant.
* ``proxy``: through an HTTP CONNECT proxy (``device_sdk.testbed.HttpProxy``, a
  real tinyproxy) to the broker's port; the target is the IP literal
  127.0.0.1, so tinyproxy resolves nothing. The SDK gets ``ClientConfig.proxy``.
  paho can only reach a proxy through PySocks, which is not one of our
  dependencies, so raw paho here is a ``paho.Client`` subclass whose
  ``_create_socket_connection`` (the private hook paho's own ``connect()``
  calls for its TCP socket) returns a tunnel opened with
  ``device_sdk.adapters.http_connect.open_tunnel``: the same CONNECT exchange
  the SDK does, after which paho owns a plain socket, as it would via PySocks.

The JSON's ``route`` says how many connections the bridge or proxy carried,
so a run that bypassed it would show.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from device_sdk import ClientConfig, DeviceClient, HubEndpoint, ProxySettings, Transport
from device_sdk.adapters.http_connect import open_tunnel
from device_sdk.adapters.sqlite_outbox import SqliteOutbox
from device_sdk.config import OutboxSettings
from device_sdk.outbox import Outbox
from device_sdk.testbed import BrokerSpec, HttpProxy, MosquittoBroker, WebSocketBridge

try:  # the benchmarks' shared machine description and --json handling
    from benchmarks import report
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    import report  # type: ignore[import-not-found,no-redef]

WINDOW = 20
PAYLOAD_BYTES = 64
TOPIC = "bench/throughput"
RAW = "raw paho"
# The protocol both sides speak; --mqtt sets it. MQTT 5 costs paho more per PUBACK
# (it decodes a reason code and properties), and the SDK adds a message-id property.
MQTT_VERSION: Literal["5", "3.1.1"] = "5"

TRANSPORTS = ("tcp", "ws", "proxy")
WS_PATH = "/mqtt"
# websockify's verbose log line for each connection it carries to the broker.
_BRIDGED = re.compile(r"connecting to: ")

VARIANTS = (RAW, "sdk memory", "sdk sqlite NORMAL", "sdk sqlite FULL")
TARGETS = {"sdk memory": 0.9, "sdk sqlite NORMAL": 0.5}  # DESIGN.md, as ratios to raw paho
ACK_TIMEOUT = 120.0  # a run that has not seen every PUBACK by then is a failure
WARM_UP_MESSAGES = 500


@dataclass(frozen=True, slots=True)
class Run:
    variant: str
    index: int  # 0 is the warm-up
    messages: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


# -- the way in -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """How every variant reaches the broker: ``host:port`` is what a client dials (the
    broker, or the bridge in front of it); through ``proxy``, the tunnel's target."""

    transport: str
    host: str
    port: int
    websocket: bool = False
    proxy: ProxySettings | None = None
    carried: Callable[[], int] | None = None  # connections the bridge or proxy took so far


@contextlib.contextmanager
def route_to(broker: MosquittoBroker, transport: str) -> Iterator[Route]:
    """Start what ``transport`` puts in front of ``broker`` and stop it afterwards."""
    if transport == "tcp":
        yield Route(transport=transport, host=broker.host, port=broker.port)
    elif transport == "ws":
        with WebSocketBridge(broker.host, broker.port, listen_host=broker.host) as bridge:

            def bridged() -> int:
                return len(_BRIDGED.findall(bridge.log_file.read_text(errors="replace")))

            yield Route(
                transport=transport,
                host=bridge.host,
                port=bridge.port,
                websocket=True,
                carried=bridged,
            )
    elif transport == "proxy":
        with HttpProxy() as proxy:
            yield Route(
                transport=transport,
                host=broker.host,
                port=broker.port,
                proxy=proxy.settings(),
                carried=proxy.connects_seen,
            )
    else:
        raise ValueError(f"unknown transport {transport!r}: one of {', '.join(TRANSPORTS)}")


# -- raw paho ---------------------------------------------------------------------------------


class TunnelledPahoClient(paho.Client):
    """paho-mqtt over an HTTP CONNECT tunnel, without PySocks.

    paho's ``connect()`` takes its TCP socket from ``_create_socket_connection``
    (private, paho 2.x); this returns the tunnel instead, blocking with paho's
    connect timeout, as ``socket.create_connection`` would have left it.
    """

    def __init__(self, proxy: ProxySettings, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tunnel_proxy = proxy

    def _create_socket_connection(self) -> socket.socket:
        deadline = time.monotonic() + self.connect_timeout
        sock = open_tunnel(
            self._tunnel_proxy, self._tunnel_proxy.host, self.host, self.port, deadline=deadline
        )
        sock.settimeout(self.connect_timeout)
        return sock


def raw_paho_client(route: Route) -> paho.Client:
    protocol = paho.MQTTv5 if MQTT_VERSION == "5" else paho.MQTTv311
    transport: Literal["tcp", "websockets"] = "websockets" if route.websocket else "tcp"
    if route.proxy is not None:
        return TunnelledPahoClient(
            route.proxy, CallbackAPIVersion.VERSION2, protocol=protocol, transport=transport
        )
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=protocol, transport=transport)
    if route.websocket:
        client.ws_set_options(path=WS_PATH)
    return client


def run_raw_paho(route: Route, messages: int, payload: bytes) -> float:
    """Publish from this thread with paho's own network thread; seconds until the last PUBACK."""
    acked = 0
    all_acked = threading.Event()

    def on_publish(_c: object, _u: object, _mid: int, _rc: object, _p: object) -> None:
        nonlocal acked  # paho's network thread is the only writer
        acked += 1
        if acked == messages:
            all_acked.set()

    client = raw_paho_client(route)
    client.max_inflight_messages_set(WINDOW)
    client.max_queued_messages_set(0)  # unbounded, like the SDK's outbox here
    client.on_publish = on_publish
    connected = threading.Event()
    client.on_connect = lambda *_args: connected.set()
    client.connect(route.host, route.port, keepalive=60)
    client.loop_start()
    try:
        if not connected.wait(10):
            raise RuntimeError("raw paho did not connect within 10 s")
        started = time.perf_counter()
        for _ in range(messages):
            client.publish(TOPIC, payload, qos=1)
        if not all_acked.wait(ACK_TIMEOUT):
            raise RuntimeError(f"raw paho: {acked}/{messages} PUBACKs after {ACK_TIMEOUT} s")
        return time.perf_counter() - started
    finally:
        client.disconnect()
        client.loop_stop()


# -- device_sdk -------------------------------------------------------------------------------


def sdk_config(route: Route, messages: int) -> ClientConfig:
    ways = (Transport(scheme="ws", port=route.port, path=WS_PATH),) if route.websocket else ()
    hub = HubEndpoint(name="bench", fqdn=route.host, port=route.port, tls=None, transports=ways)
    return ClientConfig(
        client_id=f"throughput-{os.getpid()}",
        hubs=(hub,),
        proxy=route.proxy,
        inflight_window=WINDOW,
        mqtt_version=MQTT_VERSION,
        outbox=OutboxSettings(max_messages=messages, max_bytes=messages * (PAYLOAD_BYTES + 64)),
    )


def run_sdk(config: ClientConfig, outbox: Outbox | None, messages: int, payload: bytes) -> float:
    """Publish through a DeviceClient; seconds from the first publish() to the last PUBACK."""
    client = DeviceClient(config, outbox=outbox)
    try:
        client.connect(timeout=10)
        started = time.perf_counter()
        handles = [client.publish(TOPIC, payload, qos=1) for _ in range(messages)]
        # PUBACKs resolve handles in order, so waiting on the last one first wakes
        # this thread once instead of once per message (which would steal the GIL
        # from the engine thousands of times); the loop then only confirms the rest.
        handles[-1].wait(ACK_TIMEOUT)
        for handle in handles:
            handle.wait(ACK_TIMEOUT)
        return time.perf_counter() - started
    finally:
        client.close()


@contextlib.contextmanager
def sqlite_outbox(
    directory: Path, synchronous: str, config: ClientConfig
) -> Iterator[SqliteOutbox]:
    path = directory / f"outbox-{synchronous}-{time.monotonic_ns()}.db"
    outbox = SqliteOutbox(
        path,
        max_messages=config.outbox.max_messages,
        max_bytes=config.outbox.max_bytes,
        synchronous="FULL" if synchronous == "FULL" else "NORMAL",
    )
    try:
        yield outbox
    finally:
        outbox.close()  # the client closed it already; closing again is harmless
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{path}{suffix}")


def runner(variant: str, route: Route, directory: Path) -> Callable[[int, bytes], float]:
    """A function that times one run of ``variant`` with a given message count."""
    if variant == RAW:
        return lambda n, payload: run_raw_paho(route, n, payload)

    def run(n: int, payload: bytes) -> float:
        config = sdk_config(route, n)
        if variant == "sdk memory":
            return run_sdk(config, None, n, payload)
        with sqlite_outbox(directory, variant.rsplit(" ", 1)[1], config) as outbox:
            return run_sdk(config, outbox, n, payload)

    return run


# -- the run and the report -------------------------------------------------------------------


def measure(
    messages: int, runs: int, progress: Callable[[str], None], transport: str = "tcp"
) -> tuple[list[Run], int | None]:
    """Every run of every variant over ``transport``; and how many connections the bridge
    or proxy carried (None over tcp)."""
    payload = os.urandom(PAYLOAD_BYTES)
    results: list[Run] = []
    with (
        MosquittoBroker(BrokerSpec(name="throughput", host="127.0.0.1")) as broker,
        route_to(broker, transport) as route,
        tempfile.TemporaryDirectory(prefix="device-sdk-throughput-") as directory,
    ):
        run_for = {v: runner(v, route, Path(directory)) for v in VARIANTS}
        for variant in VARIANTS:
            results.append(
                Run(variant, 0, WARM_UP_MESSAGES, run_for[variant](WARM_UP_MESSAGES, payload))
            )
        for index in range(1, runs + 1):
            shift = (index - 1) % len(VARIANTS)
            for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                run = Run(variant, index, messages, run_for[variant](messages, payload))
                results.append(run)
                progress(f"run {index}/{runs} {variant:<18} {run.rate:9.0f} msg/s")
        carried = None if route.carried is None else route.carried()
    return results, carried


def summarise(results: Sequence[Run]) -> list[dict[str, Any]]:
    timed = [r for r in results if r.index > 0]
    medians = {v: statistics.median(r.rate for r in timed if r.variant == v) for v in VARIANTS}
    rows = []
    for variant in VARIANTS:
        rates = [r.rate for r in timed if r.variant == variant]
        ratio = medians[variant] / medians[RAW]
        target = TARGETS.get(variant)
        rows.append(
            {
                "variant": variant,
                "median_msg_per_s": round(medians[variant]),
                "min_msg_per_s": round(min(rates)),
                "max_msg_per_s": round(max(rates)),
                "ratio_to_raw_paho": round(ratio, 3),
                "target_ratio": target,
                "target_met": None if target is None else ratio >= target,
            }
        )
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        f"{'variant':<18} {'median msg/s':>12} {'min':>8} {'max':>8} {'x raw paho':>10}  target",
        "-" * 72,
    ]
    for row in rows:
        target = row["target_ratio"]
        verdict = (
            "" if target is None else f">= {target}: {'met' if row['target_met'] else 'MISSED'}"
        )
        lines.append(
            f"{row['variant']:<18} {row['median_msg_per_s']:>12} {row['min_msg_per_s']:>8} "
            f"{row['max_msg_per_s']:>8} {row['ratio_to_raw_paho']:>10.2f}  {verdict}"
        )
    return "\n".join(lines)


ROUTE_TEXT = {
    "tcp": "plain TCP to 127.0.0.1",
    "ws": f"MQTT over plain WebSockets (ws, no TLS, path {WS_PATH}) through websockify "
    "to 127.0.0.1",
    "proxy": "plain TCP through an HTTP CONNECT proxy (tinyproxy) to 127.0.0.1",
}


def format_header(info: dict[str, Any], messages: int, runs: int, transport: str = "tcp") -> str:
    temp = tempfile.gettempdir()
    return "\n".join(
        [
            f"throughput benchmark, {info['date']}",
            f"machine: {info['platform']}, {info['cpu']}, {info['cpu_count']} CPUs",
            f"python {info['python']}, device_sdk {info['device_sdk']} "
            f"({info['device_sdk_source']}), paho-mqtt {info['paho_mqtt']}, {info['mosquitto']}",
            f"load: {messages} QoS 1 messages of {PAYLOAD_BYTES} bytes per run, one topic, "
            f"in-flight window {WINDOW}, MQTT {MQTT_VERSION}; median of {runs} runs per variant",
            f"transport: {transport}, {ROUTE_TEXT[transport]}, for every variant; "
            "ratios to raw paho over the same transport",
            f"durable outbox directory: {temp} ({_file_system(temp)})",
        ]
    )


def _file_system(directory: str) -> str:
    """The type and device of the file system holding ``directory`` (fsync cost depends on it)."""
    best = ("", "unknown file system")
    with contextlib.suppress(OSError), open("/proc/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            device, mount_point, kind, *_rest = line.split()
            inside = directory == mount_point or directory.startswith(mount_point.rstrip("/") + "/")
            if inside and len(mount_point) >= len(best[0]):
                best = (mount_point, f"{kind} on {device}, mounted at {mount_point}")
    return best[1]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=20_000, help="per run (default 20000)")
    parser.add_argument("--runs", type=int, default=5, help="per variant (default 5)")
    report.add_json_option(parser, one_table=True)
    parser.add_argument(
        "--mqtt", choices=("5", "3.1.1"), default="5", help="protocol for both sides (default 5)"
    )
    parser.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default="tcp",
        help="how every variant reaches the broker: tcp, ws through websockify, "
        "or proxy through tinyproxy (default tcp)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    global MQTT_VERSION  # noqa: PLW0603 - one setting for the whole run
    args = _parser().parse_args(argv)
    MQTT_VERSION = args.mqtt
    if args.messages < 1 or not 1 <= args.runs <= 100:
        _parser().error("--messages must be at least 1 and --runs between 1 and 100")
    logging.getLogger("device_sdk").addHandler(logging.NullHandler())
    info = report.machine_info()
    if not report.json_only(args.json):
        print(format_header(info, args.messages, args.runs, args.transport), end="\n\n", flush=True)

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    results, carried = measure(args.messages, args.runs, progress, args.transport)
    rows = summarise(results)

    def document() -> dict[str, Any]:
        return {
            "machine": info,
            "command": " ".join(["python", "benchmarks/throughput.py", *sys.argv[1:]]),
            "settings": {
                "messages": args.messages,
                "runs": args.runs,
                "payload_bytes": PAYLOAD_BYTES,
                "inflight_window": WINDOW,
                "mqtt_version": MQTT_VERSION,
                "transport": args.transport,
            },
            "route": {
                "transport": args.transport,
                "description": ROUTE_TEXT[args.transport],
                # Every run, warm-ups included, is one connection; None over tcp.
                "connections_carried": carried,
                "connections_made": len(results),
            },
            "summary": rows,
            "runs": [asdict(r) | {"rate": round(r.rate)} for r in results if r.index > 0],
        }

    report.emit(lambda: format_table(rows), document, args.json)
    return 0 if all(row["target_met"] is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

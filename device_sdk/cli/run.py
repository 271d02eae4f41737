"""``device-sdk run`` and ``device-sdk publish``: a device on the command line.

::

    device-sdk run --profile raspberry-pi-gateway --client-id gw-1 \\
        --hub primary=hub-eu.example.com:8883 --hub secondary=hub-us.example.com:8883 \\
        [--stdin | --interval 10] [--status-file /run/gw/status.json]
    device-sdk publish --profile raspberry-pi-gateway --client-id gw-1 \\
        --hub primary=hub-eu.example.com:8883 --topic t --message "hello"

Identity, one source per run: ``--username`` with ``--password-file`` (a
fixed password), ``--sas-key-file`` (a SAS token minted before every attempt
from the key in the file, which is read again each time so a rotated key needs
no restart; its life and renewal margin are the profile's ``[identity]``), or
``--cert-file`` with ``--key-file`` (mutual TLS, the files re-read before every
attempt). ``--azure`` speaks Azure IoT Hub's dialect: MQTT 3.1.1, the client id
is the device id, IoT Hub's user name filled per hub, tokens signed for
``{hub host}/devices/{device id}``, and telemetry to the device's D2C topic
unless ``--topic`` says otherwise. No key, token or password is ever printed.

``run`` publishes each line of standard input, or a sample telemetry reading
every ``--interval`` seconds, and keeps one status line up to date (state,
hub, outbox depth, last recovery). ``publish`` sends one message and exits 0
once it is acknowledged, 1 on an error, 2 when it timed out (the message may
still be delivered later from a durable outbox).

An outbox that cannot be opened (say its folder's parent is missing, or the
user may not write there) ends the command with the error and a hint naming
the two ways out: create the folder, or point ``DEVICE_SDK_OUTBOX_PATH``
elsewhere (empty keeps the outbox in memory).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, TextIO, TypeVar

from device_sdk.client import DeviceClient
from device_sdk.config import ClientConfig, Credentials, HubEndpoint, TlsSettings
from device_sdk.dialects.azure import AZURE_RESOURCE_TEMPLATE, azure_hub, d2c_topic
from device_sdk.errors import (
    ConfigError,
    CredentialError,
    CredentialExpired,
    DeviceSDKError,
    OutboxStorageError,
)
from device_sdk.identity.provider import CredentialProvider, identity_for_attempt
from device_sdk.metrics import Metrics
from device_sdk.profiles import Profile, env_variable, load_profile
from device_sdk.status import StatusWriter
from device_sdk.transports import ProxySettings, Transport

# The options that each give the device its identity; a run takes one.
_IDENTITY_SOURCES = ("password_file", "sas_key_file", "cert_file")
_T = TypeVar("_T")


def add_device_subcommands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser("run", help="connect with a profile and keep publishing")
    _device_arguments(run)
    source = run.add_mutually_exclusive_group()
    source.add_argument("--stdin", action="store_true", help="publish each line of stdin")
    source.add_argument("--interval", type=float, default=10.0, help="seconds between readings")
    run.add_argument("--status-file", type=Path, help="write the metrics snapshot here")
    run.add_argument("--prometheus-file", type=Path, help="also write a node_exporter .prom file")
    run.add_argument("--duration", type=float, help="stop after this many seconds")
    run.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="at the end of input or --duration, wait this long for every PUBACK (default 30)",
    )
    publish = commands.add_parser("publish", help="publish one message, then exit")
    _device_arguments(publish)
    publish.add_argument("--message", required=True, help="the payload (UTF-8 text)")
    publish.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for PUBACK")


def _device_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="raspberry-pi-gateway", help="profile name or file")
    parser.add_argument("--profile-dir", type=Path, action="append", help="where profiles live")
    parser.add_argument("--client-id", required=True)
    parser.add_argument(
        "--hub", action="append", required=True, help="name=fqdn:port, in priority order"
    )
    parser.add_argument("--plain", action="store_true", help="plain MQTT (no TLS): labs only")
    parser.add_argument("--ca-file", help="trust these CAs for the hubs (default: system store)")
    identity = parser.add_argument_group(
        "identity", "one of --password-file, --sas-key-file or --cert-file/--key-file"
    )
    identity.add_argument(
        "--username",
        help="MQTT user name; with --sas-key-file it may hold {fqdn}, {hub}, "
        "{client_id}, filled per hub",
    )
    identity.add_argument("--password-file", type=Path, help="a fixed password (with --username)")
    identity.add_argument(
        "--sas-key-file",
        type=Path,
        metavar="PATH",
        help="mint a SAS token before every attempt from the base64 key in PATH (mode 0600, "
        "re-read each attempt); token life and renewal from the profile's [identity]",
    )
    identity.add_argument(
        "--cert-file", type=Path, metavar="PATH", help="client certificate (PEM) for mutual TLS"
    )
    identity.add_argument(
        "--key-file", type=Path, metavar="PATH", help="its private key (PEM, mode 0600)"
    )
    identity.add_argument(
        "--azure",
        action="store_true",
        help="Azure IoT Hub: MQTT 3.1.1, client id = device id, IoT Hub's user name per hub, "
        "SAS tokens for {hub}/devices/{device id}; needs --sas-key-file or --cert-file",
    )
    parser.add_argument(
        "--topic", help="default: devices/<client id>/telemetry (with --azure: the D2C topic)"
    )
    network = parser.add_argument_group(
        "locked-down networks", "other ways in than 8883, and HTTP proxies"
    )
    network.add_argument(
        "--transport",
        action="append",
        metavar="SCHEME:PORT[/PATH]",
        help="a way into every hub, in order (mqtts:8883, wss:443, wss:443/mqtt, mqtts:443); "
        "they race like addresses (default: the hub's own port)",
    )
    network.add_argument(
        "--websockets",
        action="store_true",
        help="after each hub's port, also race MQTT over secure WebSockets on 443 "
        "(with --azure: IoT Hub's /$iothub/websocket)",
    )
    network.add_argument(
        "--proxy",
        metavar="URL",
        help="an HTTP CONNECT proxy, http://[user[:password]@]host:port; a password is better "
        "given in HTTPS_PROXY with --proxy-from-env (command lines are visible to other users)",
    )
    network.add_argument(
        "--proxy-from-env", action="store_true", help="take the proxy from HTTPS_PROXY/NO_PROXY"
    )
    network.add_argument(
        "--proxy-resolve-locally",
        action="store_true",
        help="resolve hub names here, fresh, and CONNECT to the address (default: the proxy "
        "resolves them)",
    )


def device_config(args: argparse.Namespace) -> ClientConfig:
    """The ClientConfig the command line describes: a profile plus identity and hubs.

    Raises ConfigError naming the option when the identity options conflict or
    their files cannot give an identity (checked now, not at the first attempt).
    """
    _check_identity_options(args)
    profile = load_profile(args.profile, search_path=args.profile_dir)
    tls = None if args.plain else TlsSettings(ca_file=args.ca_file)
    hubs = tuple(
        _ways_in(_hub(text, tls, azure=args.azure, websockets=args.websockets), args)
        for text in args.hub
    )
    credentials = _credentials(args, profile)
    overrides: dict[str, Any] = {"mqtt_version": "3.1.1"} if args.azure else {}
    proxy = _proxy(args)
    if proxy is not None:
        overrides["proxy"] = proxy
    config = profile.client_config(
        client_id=args.client_id, hubs=hubs, credentials=credentials, **overrides
    )
    _check_identity(args, config)
    return config


def _check_identity_options(args: argparse.Namespace) -> None:
    """One identity source, its files paired, and what --azure needs (ConfigError)."""
    chosen = [name for name in _IDENTITY_SOURCES if getattr(args, name, None) is not None]
    if len(chosen) > 1:
        raise ConfigError(
            _option(chosen[1]),
            str(getattr(args, chosen[1])),
            f"not with {_option(chosen[0])}: one identity source per run "
            "(--password-file, --sas-key-file or --cert-file/--key-file)",
        )
    if (args.cert_file is None) != (args.key_file is None):
        missing = "--key-file" if args.key_file is None else "--cert-file"
        given = "--cert-file" if args.key_file is None else "--key-file"
        raise ConfigError(missing, None, f"a path, given with {given} (a certificate and its key)")
    if args.cert_file is not None and args.plain:
        raise ConfigError("--cert-file", str(args.cert_file), "TLS hubs: not with --plain")
    if args.password_file is not None and not args.username:
        raise ConfigError("--username", None, "a user name, given with --password-file")
    if args.azure:
        _check_azure_options(args, chosen)


def _check_azure_options(args: argparse.Namespace, chosen: list[str]) -> None:
    if chosen not in (["sas_key_file"], ["cert_file"]):
        raise ConfigError(
            "--azure",
            True,
            "with --sas-key-file or --cert-file/--key-file: IoT Hub takes a SAS token or an "
            "X.509 certificate",
        )
    if args.username:
        raise ConfigError(
            "--username",
            args.username,
            "unset with --azure: IoT Hub's user name is {hub host}/{device id}/?api-version=..., "
            "filled per hub",
        )
    try:
        d2c_topic(args.client_id)  # checks the id against IoT Hub's device id rules
    except ConfigError as exc:
        raise ConfigError(
            "--client-id", exc.value, f"an IoT Hub device id: {exc.allowed}"
        ) from None


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _credentials(args: argparse.Namespace, profile: Profile) -> CredentialProvider | None:
    if args.sas_key_file is not None:
        return _as_option(
            "--sas-key-file",
            str(args.sas_key_file),
            lambda: profile.sas_credentials(
                key_file=str(args.sas_key_file),
                resource_template=AZURE_RESOURCE_TEMPLATE,
                username_template=args.username or None,
            ),
        )
    if args.cert_file is not None:
        return _as_option(
            "--cert-file",
            str(args.cert_file),
            lambda: profile.x509_credentials(
                str(args.cert_file), str(args.key_file), username=args.username or None
            ),
        )
    if args.username:
        password = args.password_file.read_text().strip() if args.password_file else ""
        return Credentials(username=args.username, password=password)
    return None


def _check_identity(args: argparse.Namespace, config: ClientConfig) -> None:
    """Ask the provider once for the first hub, so a key file that is missing, readable by
    others or not a key fails now, naming its option, instead of at every attempt.

    An expired certificate is left to the engine: it reports it at every attempt and
    picks up the rotated files without a restart. The identity is dropped unseen.
    """
    if config.credentials is None or isinstance(config.credentials, Credentials):
        return
    sas = args.sas_key_file is not None
    option, path = ("--sas-key-file", args.sas_key_file) if sas else ("--cert-file", args.cert_file)
    try:
        identity_for_attempt(config.credentials, config.hubs[0], client_id=config.client_id)
    except CredentialExpired:
        pass
    except CredentialError as exc:
        if not sas and str(exc).startswith("x509.key_file"):
            option, path = "--key-file", args.key_file
        raise ConfigError(option, str(path), f"files a device can sign in with ({exc})") from None


def _as_option(option: str, value: str, build: Callable[[], _T]) -> _T:
    """``build()``, its ConfigError re-raised naming the command-line option."""
    try:
        return build()
    except ConfigError as exc:
        raise ConfigError(option, value, f"{exc.field}: {exc.allowed}") from None


def _hub(
    text: str, tls: TlsSettings | None, *, azure: bool = False, websockets: bool = False
) -> HubEndpoint:
    name, _, authority = text.partition("=")
    fqdn, _, port = authority.rpartition(":")
    if not name or not fqdn or not port.isdigit():
        raise ConfigError("--hub", text, "name=fqdn:port, e.g. primary=hub.example.com:8883")
    if azure:
        return azure_hub(name, fqdn, port=int(port), tls=tls, websockets=websockets)
    return HubEndpoint(name=name, fqdn=fqdn, port=int(port), tls=tls)


def _ways_in(hub: HubEndpoint, args: argparse.Namespace) -> HubEndpoint:
    """The hub with the ways in ``--transport`` and ``--websockets`` name."""
    ways = list(hub.transports) if args.azure and args.websockets else []
    for text in args.transport or ():
        ways.append(_as_option("--transport", text, partial(Transport.parse, text)))
    if args.websockets and not args.azure:
        secure = hub.tls is not None
        ways = ways or list(hub.ways_in)
        ways.append(Transport(scheme="wss" if secure else "ws", port=443))
    if not ways:
        return hub
    labels = ",".join(way.label for way in ways)
    return _as_option("--transport", labels, partial(replace, hub, transports=tuple(ways)))


def _proxy(args: argparse.Namespace) -> ProxySettings | None:
    if args.proxy and args.proxy_from_env:
        raise ConfigError("--proxy", args.proxy, "not with --proxy-from-env: one proxy source")
    local = bool(args.proxy_resolve_locally)
    if args.proxy:
        return _as_option(
            "--proxy",
            "(hidden)",
            lambda: ProxySettings.from_url(args.proxy, resolve_locally=local),
        )
    if args.proxy_from_env:
        proxy = _as_option(
            "--proxy-from-env",
            "HTTPS_PROXY",
            lambda: ProxySettings.from_environment(resolve_locally=local),
        )
        if proxy is None:
            raise ConfigError("--proxy-from-env", True, "HTTPS_PROXY set in the environment")
        return proxy
    return None


def _topic(args: argparse.Namespace, config: ClientConfig) -> str:
    if args.topic:
        return str(args.topic)
    if getattr(args, "azure", False):
        return d2c_topic(config.client_id)
    return f"devices/{config.client_id}/telemetry"


def _open_client(args: argparse.Namespace, config: ClientConfig) -> DeviceClient | None:
    """The client, or ``None`` once an outbox that cannot be opened has been reported.

    Why here and not the generic "run again with --debug": the fix is never in a
    traceback. The folder is missing or not writable, and the hint says both
    ways out, in the words of the profile's own override variable.
    """
    try:
        return DeviceClient(config)
    except OutboxStorageError as exc:
        if getattr(args, "debug", False):
            raise
        variable = env_variable("outbox.path")
        print(f"device-sdk: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(
            f"hint: create the outbox's folder for the user running device-sdk, or run with "
            f"{variable}=/a/writable/folder/outbox.sqlite ({variable}= keeps the outbox in "
            "memory, lost if the process dies)",
            file=sys.stderr,
        )
        return None


def run_device(args: argparse.Namespace) -> int:
    config = device_config(args)
    topic = _topic(args, config)
    opened = _open_client(args, config)
    if opened is None:
        return 1
    status = 0
    with opened as client:
        writer = _status_writer(args, client)
        stop = threading.Event()
        try:
            if args.stdin:
                _publish_lines(client, topic, sys.stdin, stop)
            else:
                _publish_readings(client, topic, args.interval, args.duration, stop)
            status = _drain(client, args.drain_timeout)
        except KeyboardInterrupt:
            pass
        finally:
            stop.set()
            if writer is not None:
                writer.stop(5.0)
            print(file=sys.stderr)
    return status


def _drain(client: DeviceClient, timeout: float) -> int:
    """Wait (bounded) until the outbox is empty: every message acknowledged or refused.

    Why: leaving at the end of input would drop an in-memory outbox's messages
    and leave a durable one's for the next run. Returns the exit status: 0, or
    3 when messages were still waiting, with a line saying where they are.
    """
    deadline = time.monotonic() + timeout
    while (depth := client.metrics().queue_depth) and time.monotonic() < deadline:
        if not client.healthy:
            break
        time.sleep(0.02)
    if depth == 0:
        return 0
    where = (
        "they stay in the durable outbox for the next run"
        if client.config.outbox.path is not None
        else "the outbox is in memory: they are lost"
    )
    print(
        f"device-sdk: {depth} message(s) not acknowledged within {timeout:g} s; {where}",
        file=sys.stderr,
    )
    return 3


def _status_writer(args: argparse.Namespace, client: DeviceClient) -> StatusWriter | None:
    if args.status_file is None:
        return None
    writer = StatusWriter(
        client.metrics, args.status_file, prometheus_path=args.prometheus_file, interval=5.0
    )
    writer.start()
    return writer


def _publish_lines(client: DeviceClient, topic: str, lines: TextIO, stop: threading.Event) -> None:
    for line in lines:
        if stop.is_set():
            return
        client.publish(topic, line.rstrip("\n"))
        _show(client.metrics())


def _publish_readings(
    client: DeviceClient, topic: str, interval: float, duration: float | None, stop: threading.Event
) -> None:
    end = None if duration is None else time.monotonic() + duration
    while end is None or time.monotonic() < end:
        reading = {"temperature": round(20 + 5 * random.random(), 2), "ts": round(time.time(), 3)}
        client.publish(topic, json.dumps(reading))
        _show(client.metrics())
        if stop.wait(interval):
            return


def _show(metrics: Metrics) -> None:
    """One status line, rewritten in place: state, hub, outbox depth, last recovery."""
    state = "connected" if metrics.current_hub else "reconnecting"
    recovery = metrics.last_recovery_seconds
    last = "-" if recovery is None else f"{recovery * 1000:.0f} ms"
    line = (
        f"{state} hub={metrics.current_hub or '-'} outbox={metrics.queue_depth} "
        f"acked={metrics.acknowledged} failovers={metrics.failovers} last_recovery={last}"
    )
    print(f"\r{line:<100}", end="", file=sys.stderr, flush=True)


def publish_once(args: argparse.Namespace) -> int:
    config = device_config(args)
    opened = _open_client(args, config)
    if opened is None:
        return 1
    with opened as client:
        handle = client.publish(_topic(args, config), args.message)
        try:
            handle.wait(args.timeout)
        except TimeoutError:
            print(f"device-sdk: not acknowledged within {args.timeout} s", file=sys.stderr)
            return 2
        except DeviceSDKError as exc:
            print(f"device-sdk: error: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    print(f"acknowledged {handle.message_id}")
    return 0

"""``device-sdk concierge``: serve the reference concierge, switch its hub, make keys.

::

    device-sdk concierge keygen --out DIR --kid KID
    device-sdk concierge serve --config concierge.toml [--store etcd://host:port,...]
    device-sdk concierge set-active HUB --url URL --token-file FILE
    device-sdk concierge status --url URL [--url URL ...]

``keygen`` writes ``DIR/KID.key`` (mode 0600) and ``DIR/KID.pub`` and prints the
public key as devices pin it. With replicas on etcd, ``set-active`` works
through any replica, and ``status`` shows each replica's view: its sequence,
active hub, store health and the age of the last change it saw.
``set-active`` posts to ``URL/v1/active``; plain ``http://`` is accepted only
for a loopback host unless ``--allow-plain-http``.

The ``serve`` configuration is TOML. Relative paths are relative to the file;
unknown keys are errors::

    [service]
    state_file = "state.json"            # required: active hub and sequence, kept across restarts
    signing_key_file = "keys/k1.key"     # required: Ed25519 private key (from keygen)
    kid = "k1"                           # required: the key id devices pin the public key under
    token_file = "operator-token"        # required: the operator's bearer token (>= 16 chars)
    host = "127.0.0.1"                   # IP address to bind (default 127.0.0.1)
    port = 8080                          # default 8080
    ttl = 300                            # seconds each document stays valid (default 300)
    scope = "fleet:gateways"             # optional: "device:<id>" or "fleet:<name>"
    initial_active = "primary"           # optional: active hub on a fresh start (default: first)
    store = "etcd://10.0.1.5:2379,10.0.2.5:2379,10.0.3.5:2379"
                                         # optional: share the state with every replica
                                         # (the device_sdk[etcd] extra); default: state_file
    store_prefix = "/device-sdk/concierge/"  # optional: this deployment's keys in etcd

    [hubs.primary]                       # one table per hub, in priority order
    fqdn = "primary.hubs.example.com"    # a DNS name, never an IP
    port = 8883
    tls = true

    [hubs.secondary]
    fqdn = "secondary.hubs.example.com"
    port = 8883
    tls = true

    [health]                             # optional: the /healthz MQTT probe
    timeout = 2.0                        # seconds for resolve + CONNECT + CONNACK
    cache_seconds = 1.0                  # reuse a verdict this long
    client_id = "concierge-health-probe"
    mqtt_version = "5"                   # or "3.1.1"
    ca_file = "hub-ca.pem"               # default: the system trust store
    username = "probe"                   # optional, with password_file
    password_file = "probe-password"
    nameservers = ["10.0.0.2"]           # default: the system's resolv.conf
    dns_port = 53
    dns_timeout = 2.0
    dns_lifetime = 4.0
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import ipaddress
import json
import signal
import ssl
import threading
import tomllib
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from device_sdk.concierge.document import DocumentHub
from device_sdk.concierge.health import HealthProbeSettings
from device_sdk.config import Credentials, DnsSettings, is_ip_literal
from device_sdk.errors import ConciergeError, ConciergeUnavailable, ConfigError, MalformedDocument

if TYPE_CHECKING:
    from device_sdk.concierge.service import ConciergeServiceConfig

# The service (an HTTP server, its state store) and the signing keys (cryptography) are
# imported by the commands that use them: every `device-sdk` command builds this parser,
# and `device-sdk publish` on a small device should not load a server and a crypto library.

__all__ = ["add_subcommands", "load_service_config", "post_active", "run"]

_MISSING: Any = object()
_LOOPBACK_NAMES = ("localhost",)


def add_subcommands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``concierge {serve,set-active,keygen}`` to a ``device-sdk`` command parser."""
    concierge = subparsers.add_parser("concierge", help="the reference concierge service")
    commands = concierge.add_subparsers(dest="concierge_command", required=True)
    serve = commands.add_parser("serve", help="serve signed endpoint documents")
    serve.add_argument("--config", required=True, type=Path, help="the TOML configuration")
    serve.add_argument(
        "--store",
        metavar="etcd://HOST:PORT[,HOST:PORT...]",
        help="keep the state in this etcd cluster, shared by every replica (overrides the "
        "file's store)",
    )
    status = commands.add_parser("status", help="every replica's view of the state")
    status.add_argument(
        "--url", required=True, action="append", help="a replica's base URL (repeat for each)"
    )
    status.add_argument("--ca-file", help="CA bundle for https:// replicas")
    status.add_argument("--timeout", type=float, default=5.0, help="seconds per replica")
    status.add_argument("--json", action="store_true", help="print the views as JSON")
    switch = commands.add_parser("set-active", help="switch the active hub (operator)")
    switch.add_argument("hub", help="the hub name to make active")
    switch.add_argument("--url", required=True, help="the concierge's base URL")
    switch.add_argument("--token-file", required=True, type=Path, help="operator token file")
    switch.add_argument("--ca-file", help="CA bundle for an https:// concierge")
    switch.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    switch.add_argument(
        "--allow-plain-http", action="store_true", help="allow http:// to a non-loopback host"
    )
    keygen = commands.add_parser("keygen", help="make an Ed25519 signing key pair")
    keygen.add_argument("--out", required=True, type=Path, help="directory for the key files")
    keygen.add_argument("--kid", required=True, help="the key id, e.g. 2025-01")


def run(args: argparse.Namespace) -> int:
    """Run the ``concierge`` subcommand in ``args``; DeviceSDKError escapes for the caller."""
    command = args.concierge_command
    if command == "serve":
        return _serve(args.config, getattr(args, "store", None))
    if command == "set-active":
        return _set_active(args)
    if command == "status":
        return _status(args)
    return _keygen(args.out, args.kid)


def _keygen(out: Path, kid: str) -> int:
    from device_sdk.concierge.signing import write_keypair

    files = write_keypair(out, kid)
    print(f"private key (keep secret, mode 0600): {files.private_key_file}")
    print(f"public key: {files.public_key_file}")
    print(f"pin on devices as key id {files.kid!r}: {files.public_key}")
    return 0


def _serve(config_file: Path, store: str | None = None) -> int:
    from device_sdk.concierge.service import ConciergeService

    config = load_service_config(config_file)
    if store is not None:
        config = dataclasses.replace(config, store=store)
    stopping = threading.Event()
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: stopping.set()) if in_main else None
    try:
        with ConciergeService(config) as service:
            active = service.state.active_hub
            print(f"concierge serving on {service.url} (active hub {active})", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                stopping.wait()  # until SIGTERM or Ctrl-C
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _set_active(args: argparse.Namespace) -> int:
    try:
        token = args.token_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("--token-file", str(args.token_file), "a readable file") from exc
    answer = post_active(
        args.url,
        args.hub,
        token,
        timeout=args.timeout,
        ca_file=args.ca_file,
        allow_plain_http=args.allow_plain_http,
    )
    print(f"active hub: {answer.get('active_hub')} (sequence {answer.get('sequence')})")
    return 0


def _status(args: argparse.Namespace) -> int:
    """Each replica's /healthz view; exit 1 when any is unreachable or they disagree."""
    views = [replica_view(url, timeout=args.timeout, ca_file=args.ca_file) for url in args.url]
    if args.json:
        print(json.dumps(views, indent=2))
        return 0 if _agree(views) else 1
    lines, agree = status_lines(views)
    for line in lines:
        print(line)
    print("replicas agree" if agree else "replicas DISAGREE or are unreachable")
    return 0 if agree else 1


def main_status_lines(urls: list[str], *, timeout: float = 5.0) -> tuple[list[str], bool]:
    """The status command's lines for ``urls``, and whether every replica answered with
    one sequence (for scripts and tests)."""
    return status_lines([replica_view(url, timeout=timeout) for url in urls])


def status_lines(views: list[dict[str, Any]]) -> tuple[list[str], bool]:
    return [_describe_view(view) for view in views], _agree(views)


def _agree(views: list[dict[str, Any]]) -> bool:
    sequences = {view.get("sequence") for view in views if view.get("reachable")}
    return len(sequences) == 1 and all(view.get("reachable") for view in views)


def replica_view(url: str, *, timeout: float = 5.0, ca_file: str | None = None) -> dict[str, Any]:
    """What one replica reports on /healthz: sequence, active hub, store health."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError("--url", url, "an http:// or https:// URL")
    connection: http.client.HTTPConnection
    if parts.scheme == "http":
        connection = http.client.HTTPConnection(host, parts.port, timeout=timeout)
    else:
        context = ssl.create_default_context(cafile=ca_file)
        connection = http.client.HTTPSConnection(host, parts.port, timeout=timeout, context=context)
    try:
        connection.request("GET", parts.path.rstrip("/") + "/healthz")
        with connection.getresponse() as response:
            status, data = response.status, response.read(64 * 1024)
    except (OSError, http.client.HTTPException) as exc:
        return {"url": url, "reachable": False, "error": str(exc)}
    finally:
        connection.close()
    answer = _json_object(data)
    return {"url": url, "reachable": True, "http_status": status, **answer}


def _describe_view(view: dict[str, Any]) -> str:
    if not view.get("reachable"):
        return f"{view['url']}: UNREACHABLE ({view.get('error')})"
    raw = view.get("store")
    store: dict[str, Any] = raw if isinstance(raw, dict) else {}
    age = store.get("last_change_age")
    changed = "no change seen" if age is None else f"last change {age:.1f} s ago"
    health = "healthy" if view.get("healthy") else f"UNHEALTHY ({view.get('detail')})"
    store_text = (
        f"{store.get('kind')} store {'reachable' if store.get('reachable') else 'UNREACHABLE'}"
    )
    return (
        f"{view['url']}: sequence {view.get('sequence')}, active {view.get('active_hub')}, "
        f"{store_text} ({store.get('reason')}), {changed}; {health}"
    )


# -- the operator's client -------------------------------------------------------------------


def post_active(
    url: str,
    hub: str,
    token: str,
    *,
    timeout: float = 10.0,
    ca_file: str | None = None,
    allow_plain_http: bool = False,
) -> dict[str, object]:
    """POST ``{"hub": hub}`` to ``url``/v1/active with the operator token; the JSON answer.

    Raises ConciergeUnavailable when the concierge cannot be reached, and
    ConciergeError when it refuses (bad token, unknown hub).
    """
    connection, path = _operator_connection(url, timeout, ca_file, allow_plain_http)
    body = json.dumps({"hub": hub}).encode("utf-8")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    try:
        connection.request("POST", path, body=body, headers=headers)
        with connection.getresponse() as response:
            status, data = response.status, response.read(64 * 1024)
    except (OSError, http.client.HTTPException) as exc:
        raise ConciergeUnavailable(f"concierge {url}: {exc}") from exc
    finally:
        connection.close()
    answer = _json_object(data)
    if status != http.HTTPStatus.OK:
        reason = answer.get("error", data[:200].decode("utf-8", "replace"))
        raise ConciergeError(f"concierge {url} refused the switch (HTTP {status}): {reason}")
    return answer


def _operator_connection(
    url: str, timeout: float, ca_file: str | None, allow_plain_http: bool
) -> tuple[http.client.HTTPConnection, str]:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError("--url", url, "an https:// (or loopback http://) URL")
    loopback = host in _LOOPBACK_NAMES or (is_ip_literal(host) and _is_loopback(host))
    if parts.scheme == "http" and not (loopback or allow_plain_http):
        # The operator token would cross the network in the clear.
        raise ConfigError("--url", url, "https://, or http:// to loopback, or --allow-plain-http")
    path = parts.path.rstrip("/") + "/v1/active"
    if parts.scheme == "http":
        return http.client.HTTPConnection(host, parts.port, timeout=timeout), path
    context = ssl.create_default_context(cafile=ca_file)
    return http.client.HTTPSConnection(host, parts.port, timeout=timeout, context=context), path


def _is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


def _json_object(data: bytes) -> dict[str, object]:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


# -- the TOML configuration ------------------------------------------------------------------


class _Table:
    """One TOML table: typed reads that name the file and key, and no unknown keys."""

    def __init__(self, values: object, name: str, source: Path) -> None:
        if not isinstance(values, dict):
            raise ConfigError(name, values, "a table", source=str(source))
        self._values: dict[str, object] = values
        self._name = name
        self._source = source
        self._used: set[str] = set()

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = _MISSING) -> Any:
        self._used.add(key)
        field = f"{self._name}.{key}"
        if key not in self._values:
            if default is _MISSING:
                raise ConfigError(field, None, "a value (required)", source=str(self._source))
            return default
        value = self._values[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            allowed = " or ".join(k.__name__ for k in kinds)
            raise ConfigError(field, value, allowed, source=str(self._source))
        return value

    def names(self) -> list[str]:
        return list(self._values)

    def path(self, key: str, default: Any = _MISSING) -> Any:
        value = self.get(key, str, default)
        if not isinstance(value, str):
            return value
        return self._source.parent / value

    def finish(self) -> None:
        unknown = sorted(set(self._values) - self._used)
        if unknown:
            raise ConfigError(
                f"{self._name}.{unknown[0]}",
                self._values[unknown[0]],
                f"one of the keys {sorted(self._used)}",
                source=str(self._source),
            )


def load_service_config(path: Path | str) -> ConciergeServiceConfig:
    """Read and validate a concierge TOML file (the format is in this module's docstring)."""
    source = Path(path)
    try:
        with source.open("rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise ConfigError("--config", str(source), f"a readable file ({exc.strerror})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", str(source), f"valid TOML ({exc})") from exc
    try:
        return _service_config(document, source)
    except ConfigError as exc:
        if exc.source:
            raise
        raise ConfigError(exc.field, exc.value, exc.allowed, source=str(source)) from exc


def _service_config(document: dict[str, Any], source: Path) -> ConciergeServiceConfig:
    from device_sdk.concierge.service import ConciergeServiceConfig

    root = _Table(document, "concierge", source)
    service = _Table(root.get("service", dict), "service", source)
    hubs = _hubs(_Table(root.get("hubs", dict), "hubs", source), source)
    health = _health(_Table(root.get("health", dict, {}), "health", source))
    root.finish()
    config = ConciergeServiceConfig(
        state_file=service.path("state_file"),
        signing_key_file=service.path("signing_key_file"),
        kid=service.get("kid", str),
        token_file=service.path("token_file"),
        hubs=hubs,
        initial_active=service.get("initial_active", str, None),
        ttl=service.get("ttl", int, 300),
        scope=service.get("scope", str, None),
        host=service.get("host", str, "127.0.0.1"),
        port=service.get("port", int, 8080),
        health=health,
        store=service.get("store", str, None),
        store_prefix=service.get("store_prefix", str, "/device-sdk/concierge/"),
    )
    service.finish()
    return config


def _hubs(table: _Table, source: Path) -> dict[str, DocumentHub]:
    hubs: dict[str, DocumentHub] = {}
    for name in table.names():
        hub = _Table(table.get(name, dict), f"hubs.{name}", source)
        try:
            hubs[name] = DocumentHub(
                fqdn=hub.get("fqdn", str), port=hub.get("port", int), tls=hub.get("tls", bool)
            )
        except MalformedDocument as exc:
            raise ConfigError(f"hubs.{name}", str(exc), "a hub", source=str(source)) from exc
        hub.finish()
    return hubs


def _health(table: _Table) -> HealthProbeSettings:
    username = table.get("username", str, None)
    password_file = table.path("password_file", None)
    nameservers = table.get("nameservers", list, [])
    if not all(isinstance(server, str) for server in nameservers):
        raise ConfigError("health.nameservers", nameservers, "a list of IP address strings")
    dns = DnsSettings(
        nameservers=tuple(nameservers),
        port=table.get("dns_port", int, 53),
        timeout=table.get("dns_timeout", (int, float), 2.0),
        lifetime=table.get("dns_lifetime", (int, float), 4.0),
    )
    settings = HealthProbeSettings(
        dns=dns,
        timeout=table.get("timeout", (int, float), 2.0),
        cache_seconds=table.get("cache_seconds", (int, float), 1.0),
        client_id=table.get("client_id", str, "concierge-health-probe"),
        mqtt_version=table.get("mqtt_version", str, "5"),
        ca_file=_optional_str(table.path("ca_file", None)),
        credentials=_credentials(username, password_file),
    )
    table.finish()
    return settings


def _optional_str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _credentials(username: str | None, password_file: Path | None) -> Credentials | None:
    if username is None:
        return None
    if password_file is None:
        return Credentials(username=username)
    try:
        password = password_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("health.password_file", str(password_file), "a readable file") from exc
    return Credentials(username=username, password=password)

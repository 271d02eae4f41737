"""The reference concierge: tells devices which hub is active, signed.

A deliberately small standard-library HTTP service (``ThreadingHTTPServer``):

``GET /v1/endpoint``
    a freshly signed envelope: ``issued_at`` = now, ``expires_at`` = now + ttl,
    the current sequence, the active hub and the hub map.
``POST /v1/active`` with ``{"hub": "secondary"}`` and ``Authorization: Bearer <token>``
    the operator's switch: changes the active hub, bumps the sequence and
    persists, before answering. 401 without a valid token, 400 for an unknown hub.
``GET /healthz``
    200 only while the active hub accepts an MQTT connection (a real CONNECT and
    CONNACK), 503 otherwise, each with a small JSON reason: the probe a DNS
    traffic manager polls to route around a broken region.

State (active hub, sequence, hub map) lives in a :class:`StateStore`: by
default a JSON file replaced atomically on every change, where every change
sets the sequence to ``max(previous + 1, Unix time in milliseconds)``; with
``store = "etcd://host:port,..."`` one key in an etcd cluster that replicas in
every region share, the sequence coming from the cluster's revision (see
:mod:`device_sdk.concierge.etcd_store`). Either way it never goes backwards.
``/healthz`` also reports the store; a replica that cannot see its store
answers 503 there, and stops answering ``/v1/endpoint`` once a document from
its last confirmed state would have expired.

It binds loopback by default; in production, put TLS in front of it (a
reverse proxy or load balancer) so devices can verify it and the operator
token never crosses the network in the clear.
"""

from __future__ import annotations

import hmac
import http
import json
import logging
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Self

from device_sdk.concierge.document import (
    FORMAT_VERSION,
    DocumentHub,
    EndpointDocument,
)
from device_sdk.concierge.health import HealthChecker, HealthProbeSettings, HealthStatus
from device_sdk.concierge.signing import check_kid, load_private_key, sign_document
from device_sdk.concierge.state_store import (
    FileStateStore,
    ServiceState,
    StateStore,
    StoreHealth,
    next_sequence,
)
from device_sdk.config import is_ip_literal
from device_sdk.errors import ConciergeError, ConfigError, MalformedDocument

__all__ = [
    "ConciergeService",
    "ConciergeServiceConfig",
    "HealthProbeSettings",  # re-exported: a service config names it
    "HealthStatus",
    "ServiceState",
    "StateStore",
    "StoreHealth",
    "next_sequence",
]

logger = logging.getLogger(__name__)

_MAX_TTL = 30 * 24 * 3600
_MAX_REQUEST_BODY = 1024
_MIN_TOKEN_LENGTH = 16
_CONNECTION_TIMEOUT = 10.0  # seconds a client may take per socket operation
_POLL_INTERVAL = 0.05  # how quickly serve_forever notices stop()


@dataclass(frozen=True, slots=True, kw_only=True)
class ConciergeServiceConfig:
    """Everything the reference concierge needs.

    ``hubs`` maps hub names to hubs in the order operators think of them; the
    first is active on a fresh start unless ``initial_active`` says otherwise.
    ``scope`` is stamped on every document (None: unscoped). ``port=0`` picks a
    free port (tests). ``store``: None keeps the state in ``state_file``;
    ``"etcd://host:port[,host:port...]"`` keeps it in that etcd cluster, shared
    with every replica (``state_file``, if it holds a state, is imported once, so
    a running deployment moves to etcd without devices seeing a rollback).
    ``store_prefix`` is the cluster's key prefix for this deployment.
    """

    state_file: Path
    signing_key_file: Path
    kid: str
    token_file: Path
    hubs: Mapping[str, DocumentHub]
    initial_active: str | None = None
    ttl: int = 300
    scope: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    health: HealthProbeSettings = field(default_factory=HealthProbeSettings)
    store: str | None = None
    store_prefix: str = "/device-sdk/concierge/"

    def __post_init__(self) -> None:
        check_kid(self.kid)
        if self.store is not None:
            from device_sdk.concierge.etcd_store import parse_store_url

            parse_store_url(self.store)  # ConfigError naming "store" when malformed
        ttl = self.ttl
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= _MAX_TTL:
            raise ConfigError("ttl", ttl, f"whole seconds from 1 to {_MAX_TTL}")
        if not isinstance(self.host, str) or not is_ip_literal(self.host):
            raise ConfigError("host", self.host, "an IP address to bind, such as 127.0.0.1")
        port = self.port
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError("port", port, "0 to 65535 (0: any free port)")
        object.__setattr__(self, "hubs", MappingProxyType(dict(self.hubs)))
        try:  # the document's own rules: hub names, FQDNs only, scope syntax
            self.document(sequence=0, now=0, active=self.first_active)
        except MalformedDocument as exc:
            raise ConfigError("hubs", dict(self.hubs), str(exc)) from exc

    @property
    def first_active(self) -> str:
        """The hub that is active on a fresh start."""
        if self.initial_active is not None:
            return self.initial_active
        return next(iter(self.hubs), "")

    def document(
        self,
        *,
        sequence: int,
        now: float,
        active: str,
        hubs: Mapping[str, DocumentHub] | None = None,
        confirmed_at: float | None = None,
    ) -> EndpointDocument:
        """A document issued ``now``; it expires ``ttl`` after ``confirmed_at`` (the last
        moment the store confirmed this state) at the latest, so a replica cut off
        from its store never vouches for a state longer than one ttl."""
        issued_at = int(now)
        expires_at = issued_at + self.ttl
        if confirmed_at is not None:
            expires_at = min(expires_at, int(confirmed_at) + self.ttl)
        return EndpointDocument(
            format_version=FORMAT_VERSION,
            sequence=sequence,
            issued_at=issued_at,
            expires_at=expires_at,
            scope=self.scope,
            active_hub=active,
            hubs=self.hubs if hubs is None else hubs,
        )

    def state_store(self) -> StateStore:
        """The store this config names: the file, or the etcd cluster."""
        if self.store is None:
            return FileStateStore(self.state_file)
        from device_sdk.concierge.etcd_store import EtcdStateStore

        return EtcdStateStore(
            self.store, prefix=self.store_prefix, import_file=self.state_file, ttl=self.ttl
        )


def _read_token(path: Path) -> bytes:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("token_file", str(path), "a readable UTF-8 file") from exc
    if len(token) < _MIN_TOKEN_LENGTH:
        raise ConfigError(
            "token_file", str(path), f"a token of at least {_MIN_TOKEN_LENGTH} characters"
        )
    return token.encode("utf-8")


# -- the service ---------------------------------------------------------------------------------


class ConciergeService:
    """The reference concierge on a background thread. ``start()``, ``stop()``, or ``with``.

    Construction loads the signing key, the operator token and the state (and
    persists the state when the configured hubs changed), so a bad deployment
    fails before it serves anything.
    """

    def __init__(
        self,
        config: ConciergeServiceConfig,
        *,
        clock: Callable[[], float] = time.time,
        health_checker: HealthChecker | None = None,
        store: StateStore | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self._private_key = load_private_key(config.signing_key_file)
        self._token = _read_token(config.token_file)
        self._store = store if store is not None else config.state_store()
        self._store.open(config.hubs, config.first_active, clock())
        self._health = health_checker or HealthChecker(config.health)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        """Bind and serve on a background thread; ``url`` is known afterwards."""
        if self._server is not None:
            raise ConciergeError("the concierge service is already running")
        try:
            server = _Server((self.config.host, self.config.port), self)
        except OSError as exc:
            where = f"{self.config.host}:{self.config.port}"
            raise ConciergeError(f"the concierge cannot bind {where}: {exc}") from exc
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": _POLL_INTERVAL},
            name=f"concierge-{server.server_port}",
            daemon=True,
        )
        self._thread.start()
        logger.info("concierge serving on %s (active hub %s)", self.url, self.state.active_hub)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and close every socket; bounded by ``timeout`` plus open requests'
        own socket timeouts."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        server.shutdown()
        thread.join(timeout)
        server.server_close()  # waits for request threads, each bounded by its socket timeout
        self._store.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://host:port`` of the running service."""
        if self._server is None:
            raise ConciergeError("the concierge service is not running")
        host, port = self.config.host, self._server.server_port
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    # -- what the endpoints do ---------------------------------------------------------------

    @property
    def state(self) -> ServiceState:
        return self._store.current()

    @property
    def store(self) -> StateStore:
        return self._store

    def set_active(self, hub: str) -> ServiceState:
        """Make ``hub`` active: bump the sequence and persist before anyone sees it
        (on etcd: a compare-and-swap every replica then serves)."""
        before = self.state
        state = self._store.switch(hub, self._clock())  # raises: the switch did not happen
        if state.sequence != before.sequence:
            logger.warning("concierge: active hub is now %s (sequence %d)", hub, state.sequence)
        return state

    def envelope(self) -> bytes:
        """A freshly signed envelope for the current state.

        ConciergeError when the store has not confirmed the state for a whole
        ttl: a replica cut off from its cluster stops vouching for what may no
        longer be true, rather than invent or prolong anything.
        """
        now = self._clock()
        store = self._store.health(now)
        if now >= store.confirmed_at + self.config.ttl:
            raise ConciergeError(
                f"the {store.kind} state store has not confirmed the state for "
                f"{now - store.confirmed_at:.0f} s (ttl {self.config.ttl} s): {store.reason}"
            )
        state = self.state
        document = self.config.document(
            sequence=state.sequence,
            now=now,
            active=state.active_hub,
            hubs=state.hubs,
            confirmed_at=store.confirmed_at,
        )
        return sign_document(document, self._private_key, self.config.kid)

    def health(self) -> HealthStatus:
        state = self.state
        return self._health.check(state.active_hub, state.hubs[state.active_hub])

    def store_health(self) -> StoreHealth:
        return self._store.health(self._clock())

    def authorized(self, header: str | None) -> bool:
        """True when ``header`` is ``Bearer <the operator token>`` (constant-time compare)."""
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(token.strip().encode("utf-8"), self._token)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default listen queue is 5: a fleet polling at once overflows it, and
    # every dropped SYN costs a device a retransmission of a second or more.
    request_queue_size = socket.SOMAXCONN

    def handle_error(self, request: object, client_address: object) -> None:
        # A device that gave up mid-answer is routine for a service polled by a fleet
        # (socketserver would print its traceback to stderr); anything else is a fault of
        # ours, and is logged as one.
        if isinstance(sys.exc_info()[1], ConnectionError):
            logger.debug("concierge: %s went away mid-request", client_address)
            return
        logger.exception("concierge: a request from %s failed", client_address)

    def __init__(self, address: tuple[str, int], service: ConciergeService) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.service = service
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "device-sdk-concierge/1"
    timeout = _CONNECTION_TIMEOUT  # bounds every request thread, so stop() is bounded

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        service = self.server.service
        if path == "/v1/endpoint":
            try:
                envelope = service.envelope()
            except ConciergeError as exc:
                self._send_json(http.HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
                return
            self._send(http.HTTPStatus.OK, envelope)
        elif path == "/healthz":
            status, store = service.health(), service.store_health()
            healthy = status.healthy and store.reachable
            code = http.HTTPStatus.OK if healthy else http.HTTPStatus.SERVICE_UNAVAILABLE
            state = service.state
            answer = {
                **status.as_json(),
                "healthy": healthy,
                "store": store.as_json(),
                "sequence": state.sequence,
                "active_hub": state.active_hub,
            }
            self._send_json(code, answer)
        else:
            self._send_json(http.HTTPStatus.NOT_FOUND, {"error": "not found"})

    def do_POST(self) -> None:
        if urllib.parse.urlsplit(self.path).path != "/v1/active":
            self._send_json(http.HTTPStatus.NOT_FOUND, {"error": "not found"})
            return
        service = self.server.service
        if not service.authorized(self.headers.get("Authorization")):
            logger.warning("concierge: refused an operator request without a valid token")
            self._send_json(
                http.HTTPStatus.UNAUTHORIZED,
                {"error": "a valid operator token is required"},
                {"WWW-Authenticate": 'Bearer realm="concierge"'},
            )
            return
        hub = self._requested_hub()
        if hub is None:
            return
        try:
            state = service.set_active(hub)
        except ConfigError:
            self._send_json(
                http.HTTPStatus.BAD_REQUEST,
                {"error": f"unknown hub {hub!r}", "hubs": list(service.state.hubs)},
            )
            return
        except ConciergeError as exc:
            self._send_json(http.HTTPStatus.INTERNAL_SERVER_ERROR, {"error": str(exc)})
            return
        self._send_json(
            http.HTTPStatus.OK, {"active_hub": state.active_hub, "sequence": state.sequence}
        )

    def _requested_hub(self) -> str | None:
        """The hub named by the request body, or None after answering 4xx."""
        length_text = self.headers.get("Content-Length", "")
        if not length_text.isdigit() or int(length_text) > _MAX_REQUEST_BODY:
            self._send_json(
                http.HTTPStatus.BAD_REQUEST,
                {"error": f"send a JSON body of at most {_MAX_REQUEST_BODY} bytes"},
            )
            return None
        try:
            body = json.loads(self.rfile.read(int(length_text)))
        except (ValueError, RecursionError):
            body = None
        if not isinstance(body, dict) or set(body) != {"hub"} or not isinstance(body["hub"], str):
            self._send_json(http.HTTPStatus.BAD_REQUEST, {"error": 'expected {"hub": "<name>"}'})
            return None
        return body["hub"]

    def _send_json(
        self,
        status: http.HTTPStatus,
        value: dict[str, object],
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._send(status, json.dumps(value).encode("utf-8") + b"\n", headers)

    def _send(
        self, status: http.HTTPStatus, body: bytes, headers: Mapping[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("concierge %s: %s", self.address_string(), format % args)

"""A DPS-like HTTPS service on loopback, for tests and drills of DPS devices.

It speaks the part of Azure's Device Provisioning Service a device uses:

- ``PUT /{idScope}/registrations/{registrationId}/register?api-version=...`` with
  ``{"registrationId": ...}`` answers 202 ``{"operationId", "status": "assigning"}``;
- ``GET /{idScope}/registrations/{registrationId}/operations/{operationId}?api-version=...``
  answers ``assigning`` (202) for ``assigning_polls`` polls, then 200 with
  ``status`` ``assigned`` and ``registrationState.assignedHub``/``deviceId`` (or
  ``disabled`` for a disabled enrollment).

A device proves itself with a SAS token (``sr={idScope}/registrations/{id}``,
``skn=registration``, checked with
:func:`~device_sdk.identity.sas.verify_sas_token`) or with a TLS client
certificate issued by the testbed CA whose subject CN is its registration id.
Wrong proof: 401; unknown device: 404. ``throttle(after=n)`` answers 429 with
``Retry-After`` once ``n`` registrations were accepted, to test a device's
backoff. The operator moves a device with :meth:`DpsService.reassign`.

Hostile clients are bounded: a request body of at most 4 KiB, socket timeouts
on every connection (a stalled handshake or request costs its thread a few
seconds, never the service), and ``stop()`` returns within its bound.

::

    ca = CertificateAuthority.create()
    with DpsService(ca=ca, id_scope="0ne00TEST", enrollments=[
        Enrollment(registration_id="dev-1", hub_fqdn="huba.example.test", sas_key=key),
    ]) as dps:
        settings = DpsSettings(endpoint="localhost", port=dps.port, ca_file=ca_file, ...)
"""

from __future__ import annotations

import contextlib
import http
import json
import logging
import re
import secrets
import socket
import ssl
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

from device_sdk.errors import ConfigError, TestbedError
from device_sdk.identity.sas import decode_key, parse_sas_token, verify_sas_token
from device_sdk.testbed.lifecycle import StartsInContext
from device_sdk.testbed.pki import CertificateAuthority

__all__ = ["DpsService", "Enrollment", "Registration"]

log = logging.getLogger("device_sdk.testbed")

_MAX_BODY = 4096
_CONNECTION_TIMEOUT = 3.0
_POLL_INTERVAL = 0.05
_PATH = re.compile(
    r"/(?P<scope>[A-Za-z0-9]{1,64})/registrations/(?P<rid>[A-Za-z0-9._:-]{1,128})"
    r"/(?:(?P<register>register)|operations/(?P<op>[A-Za-z0-9-]{1,64}))"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Enrollment:
    """One device DPS knows: how it proves itself and where it belongs.

    ``sas_key`` (base64) for symmetric-key attestation; ``None`` for X.509 (a
    client certificate from the testbed CA with CN = ``registration_id``).
    ``device_id`` defaults to the registration id.
    """

    registration_id: str
    hub_fqdn: str
    sas_key: str | None = field(default=None, repr=False)
    device_id: str | None = None
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.sas_key is not None:
            decode_key(self.sas_key)  # ConfigError without showing it


@dataclass(frozen=True, slots=True)
class Registration:
    """One register request the service answered: when (monotonic), who, what status."""

    at: float
    registration_id: str
    status: int


@dataclass(slots=True)
class _Operation:
    registration_id: str
    polls_left: int


class DpsService(StartsInContext):
    """The DPS-like service on a background thread. ``start()``, ``stop()``, or ``with``.

    ``server_name`` is the name the server certificate carries (and devices dial);
    it is issued by ``ca``, which also vouches for X.509 devices.
    """

    def __init__(
        self,
        *,
        ca: CertificateAuthority,
        id_scope: str,
        enrollments: Iterable[Enrollment] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        server_name: str = "localhost",
        assigning_polls: int = 1,
        retry_after: int | None = None,
    ) -> None:
        if assigning_polls < 1:
            raise ConfigError("assigning_polls", assigning_polls, "at least 1 (DPS assigns later)")
        self.id_scope = id_scope
        self.host = host
        self._port = port
        self.server_name = server_name
        self._ca = ca
        self._assigning_polls = assigning_polls
        self._retry_after = retry_after
        self._lock = threading.Lock()
        self._enrollments = {e.registration_id: e for e in enrollments}
        self._operations: dict[str, _Operation] = {}
        self._log: list[Registration] = []
        self._accepted = 0
        self._throttle_after: int | None = None
        self._throttle_retry_after = 1
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        if self._server is not None:
            raise TestbedError("the DPS service is already running")
        context = self._tls_context()
        try:
            server = _Server((self.host, self._port), self, context)
        except OSError as exc:
            raise TestbedError(f"the DPS service cannot bind {self.host}:{self._port}") from exc
        self._server, self._port = server, server.server_port
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": _POLL_INTERVAL},
            name=f"dps-service-{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and close the socket; bounded by ``timeout`` plus open requests'
        socket timeouts (a few seconds)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        server.shutdown()
        thread.join(timeout)
        server.server_close()

    @property
    def port(self) -> int:
        return self._port

    def _tls_context(self) -> ssl.SSLContext:
        certificate = self._ca.issue_server_certificate([self.server_name])
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        with tempfile.TemporaryDirectory(prefix="device-sdk-dps-") as directory:
            files = certificate.write_to(Path(directory), stem="dps")
            context.load_cert_chain(files.cert_file, files.key_file)
        # Optional: SAS devices send no certificate; X.509 devices are checked by CN.
        context.verify_mode = ssl.CERT_OPTIONAL
        context.load_verify_locations(cadata=self._ca.cert_pem.decode())
        return context

    # -- the operator ------------------------------------------------------------------------

    def enroll(self, enrollment: Enrollment) -> None:
        """Add or replace an enrollment."""
        with self._lock:
            self._enrollments[enrollment.registration_id] = enrollment

    def reassign(self, registration_id: str, hub_fqdn: str) -> None:
        """Assign the device to ``hub_fqdn`` from its next registration on."""
        self._change(registration_id, hub_fqdn=hub_fqdn)

    def set_sas_key(self, registration_id: str, sas_key: str) -> None:
        """Rotate the enrollment's key: a device with the old one is refused (401)."""
        decode_key(sas_key)
        self._change(registration_id, sas_key=sas_key)

    def set_enabled(self, registration_id: str, enabled: bool) -> None:
        self._change(registration_id, enabled=enabled)

    def throttle(self, *, after: int | None, retry_after: int = 1) -> None:
        """Answer 429 (Retry-After: ``retry_after``) to registrations once ``after`` were
        accepted; ``after=None`` stops throttling."""
        with self._lock:
            self._throttle_after, self._throttle_retry_after = after, retry_after

    def _change(self, registration_id: str, **changes: Any) -> None:
        with self._lock:
            current = self._enrollments.get(registration_id)
            if current is None:
                raise ConfigError("registration_id", registration_id, "an enrolled device")
            self._enrollments[registration_id] = replace(current, **changes)

    # -- counters ----------------------------------------------------------------------------

    @property
    def registrations(self) -> int:
        """Register requests accepted (authenticated and not throttled)."""
        with self._lock:
            return self._accepted

    def register_requests(self, registration_id: str | None = None) -> list[Registration]:
        """Every register request answered, in order (optionally for one device)."""
        with self._lock:
            return [r for r in self._log if registration_id in (None, r.registration_id)]

    # -- the endpoints (request threads) -----------------------------------------------------

    def answer(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes | None,
        peer_cn: str | None,
    ) -> tuple[int, dict[str, object], dict[str, str]]:
        """(status, JSON body, extra headers) for one request."""
        parts = urllib.parse.urlsplit(target)
        match = _PATH.fullmatch(parts.path)
        if match is None or match["scope"] != self.id_scope:
            return 404, {"errorCode": 404000, "message": "not found"}, {}
        rid = match["rid"]
        registering = match["register"] is not None
        if registering != (method == "PUT"):
            return 405, {"errorCode": 405000, "message": "method not allowed"}, {}
        with self._lock:
            enrollment = self._enrollments.get(rid)
        if enrollment is None:
            return self._logged(registering, rid, 404, {"errorCode": 404201, "message": "unknown"})
        if not self._attested(enrollment, headers.get("Authorization"), peer_cn):
            return self._logged(
                registering, rid, 401, {"errorCode": 401002, "message": "unauthorized"}
            )
        if registering:
            return self._register(enrollment, body)
        return self._operation(enrollment, match["op"])

    def _logged(
        self,
        registering: bool,
        rid: str,
        status: int,
        body: dict[str, object],
        extra: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, object], dict[str, str]]:
        if registering:
            with self._lock:
                self._log.append(Registration(time.monotonic(), rid, status))
        return status, body, extra or {}

    def _attested(
        self, enrollment: Enrollment, authorization: str | None, peer_cn: str | None
    ) -> bool:
        if enrollment.sas_key is None:
            return peer_cn == enrollment.registration_id
        token = authorization or ""
        parsed = parse_sas_token(token)
        if parsed is None or parsed.policy != "registration":
            return False
        resource = f"{self.id_scope}/registrations/{enrollment.registration_id}"
        ok, _why = verify_sas_token(
            token, decode_key(enrollment.sas_key), resource=resource, now=time.time()
        )
        return ok

    def _register(
        self, enrollment: Enrollment, body: bytes | None
    ) -> tuple[int, dict[str, object], dict[str, str]]:
        rid = enrollment.registration_id
        try:
            request = json.loads(body or b"")
        except (ValueError, RecursionError):
            request = None
        if not isinstance(request, dict) or request.get("registrationId") != rid:
            return self._logged(True, rid, 400, {"errorCode": 400004, "message": "bad request"})
        with self._lock:
            limit = self._throttle_after
            if limit is not None and self._accepted >= limit:
                wait = str(self._throttle_retry_after)
                self._log.append(Registration(time.monotonic(), rid, 429))
                return 429, {"errorCode": 429001, "message": "throttled"}, {"Retry-After": wait}
            self._accepted += 1
            operation = secrets.token_hex(8)
            self._operations[operation] = _Operation(rid, self._assigning_polls)
            if len(self._operations) > 1000:  # bounded: forget the oldest
                self._operations.pop(next(iter(self._operations)))
            self._log.append(Registration(time.monotonic(), rid, 202))
        extra = {"Retry-After": str(self._retry_after)} if self._retry_after is not None else {}
        return 202, {"operationId": operation, "status": "assigning"}, extra

    def _operation(
        self, enrollment: Enrollment, operation_id: str
    ) -> tuple[int, dict[str, object], dict[str, str]]:
        rid = enrollment.registration_id
        with self._lock:
            operation = self._operations.get(operation_id)
            if operation is None or operation.registration_id != rid:
                return 404, {"errorCode": 404203, "message": "unknown operation"}, {}
            if operation.polls_left > 0:
                operation.polls_left -= 1
                extra = (
                    {"Retry-After": str(self._retry_after)} if self._retry_after is not None else {}
                )
                return 202, {"operationId": operation_id, "status": "assigning"}, extra
        if not enrollment.enabled:
            return 200, {"operationId": operation_id, "status": "disabled"}, {}
        state = {
            "registrationId": rid,
            "assignedHub": enrollment.hub_fqdn,
            "deviceId": enrollment.device_id or rid,
            "status": "assigned",
            "substatus": "initialAssignment",
        }
        return (
            200,
            {"operationId": operation_id, "status": "assigned", "registrationState": state},
            {},
        )


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], service: DpsService, context: ssl.SSLContext
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.service = service
        self.context = context
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs here, on the request's own thread, bounded by the socket
        # timeout: a client that stalls it never holds up the accepting thread.
        request.settimeout(_CONNECTION_TIMEOUT)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (OSError, ValueError):
            with contextlib.suppress(OSError):
                request.close()
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            with contextlib.suppress(OSError):
                tls.close()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "device-sdk-dps/1"
    protocol_version = "HTTP/1.1"
    timeout = _CONNECTION_TIMEOUT

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_GET(self) -> None:
        self._serve("GET")

    def _serve(self, method: str) -> None:
        body: bytes | None = None
        if method == "PUT":
            length = self.headers.get("Content-Length", "")
            if not length.isascii() or not length.isdigit() or int(length) > _MAX_BODY:
                self._send(413, {"errorCode": 413000, "message": "body too large"}, {})
                return
            body = self.rfile.read(int(length))
        headers = {"Authorization": self.headers.get("Authorization", "")}
        status, document, extra = self.server.service.answer(
            method, self.path, headers, body, _peer_cn(self.connection)
        )
        self._send(status, document, extra)

    def _send(self, status: int, document: dict[str, object], extra: Mapping[str, str]) -> None:
        body = json.dumps(document).encode()
        self.send_response(http.HTTPStatus(status))
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        log.debug("dps %s: %s", self.address_string(), format % args)


def _peer_cn(connection: Any) -> str | None:
    """The subject CN of the client's verified certificate, if it sent one."""
    getpeercert = getattr(connection, "getpeercert", None)
    certificate = getpeercert() if getpeercert is not None else None
    if not certificate:
        return None
    for rdn in certificate.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and isinstance(value, str):
                return value
    return None

"""The Device Provisioning Service's HTTPS registration: one bounded run.

A run is ``PUT /{idScope}/registrations/{registrationId}/register`` and then
``GET .../operations/{operationId}`` until the operation is no longer
assigning, waiting between polls as DPS asks (``Retry-After``, bounded). The
whole run has one deadline across resolving, connecting, TLS, every request
and every wait between polls; every answer has a size bound; close() cuts any
wait short (the client's :class:`~device_sdk.adapters.cancel.CancelToken`).

The device proves who it is either with a SAS token in the ``Authorization``
header, signed over ``{idScope}/registrations/{registrationId}`` with the
policy name ``registration``, or with its TLS client certificate. DPS's
certificate is verified against its host name, never switched off.

Everything that goes wrong ends as a :class:`~device_sdk.errors.ProvisioningError`:

==========================================  ======================================
401, 403, 404; status ``disabled``          :class:`ProvisioningRefused`
429 (:class:`ProvisioningThrottled`), 5xx,  :class:`ProvisioningUnavailable`
timeouts, socket, DNS, TLS, proxy errors
status ``failed``; malformed, oversized or  :class:`ProvisioningFailed`
incomplete answers; a hub that is not a
DNS name; any other HTTP status
==========================================  ======================================

except :class:`~device_sdk.adapters.cancel.Cancelled` when the client closes.
No message ever holds the key or the token.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from device_sdk.adapters.cancel import NEVER, Cancelled, CancelToken
from device_sdk.adapters.dialing import (
    DeadlineSocket,
    DeadlineSSLSocket,
    connect_tcp,
    tls_handshake,
)
from device_sdk.adapters.http_connect import dial_via_proxy
from device_sdk.adapters.resolver import FreshResolver, Resolver, resolve_within
from device_sdk.config import DnsSettings, is_ip_literal
from device_sdk.errors import (
    ConfigError,
    ConnectError,
    CredentialError,
    ProvisioningError,
    ProvisioningFailed,
    ProvisioningRefused,
    ProvisioningUnavailable,
)
from device_sdk.identity.provider import check_private_file
from device_sdk.identity.sas import decode_key, sas_token
from device_sdk.provisioning.assignment import Assignment, check_assignment
from device_sdk.provisioning.settings import DpsSettings
from device_sdk.transports import ProxySettings

__all__ = [
    "MAX_RESPONSE_BYTES",
    "Pending",
    "ProvisioningThrottled",
    "parse_answer",
    "register",
]

MAX_RESPONSE_BYTES = 64 * 1024  # a DPS answer is well under 2 KiB
MAX_RETRY_AFTER = 30.0  # a Retry-After beyond this is taken as this (the deadline still rules)
_MAX_POLLS = 1000  # with the deadline, a bound on a run whatever DPS answers
_MAX_KEY_FILE = 4096
_CHUNK = 16 * 1024
_USER_AGENT = "device-sdk-dps-client/1"
_SAS_POLICY = "registration"
_REFUSED = frozenset({401, 403, 404})


class ProvisioningThrottled(ProvisioningUnavailable):
    """DPS answered 429: too many requests. ``retry_after`` is its hint in seconds, if any."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Pending:
    """The registration is still being assigned; poll ``operation_id`` again."""

    operation_id: str
    retry_after: float | None


def register(
    settings: DpsSettings,
    *,
    deadline: float,
    cancel: CancelToken = NEVER,
    resolver: Resolver | None = None,
    proxy: ProxySettings | None = None,
) -> Assignment:
    """Register with DPS and poll until it assigns a hub, by ``deadline`` (monotonic).

    ``proxy`` (unless it bypasses the DPS host) carries every request through an
    HTTP CONNECT tunnel; TLS still verifies DPS's own name. Raises
    ProvisioningError (see the module's table), or Cancelled.
    """
    run = _Run(settings, deadline=deadline, cancel=cancel, resolver=resolver, proxy=proxy)
    try:
        return run.register()
    except (ProvisioningError, Cancelled):
        raise
    except TimeoutError as exc:
        raise run.unavailable(f"no complete answer within {settings.timeout:g} s") from exc
    except ssl.SSLCertVerificationError as exc:
        raise run.unavailable(f"certificate did not verify ({exc.verify_message})") from exc
    except (OSError, http.client.HTTPException, ConnectError, ValueError) as exc:
        # ConnectError: the resolver's ResolveError. ValueError: getaddrinfo's refusals.
        raise run.unavailable(str(exc) or type(exc).__name__) from exc


def parse_answer(
    status: int, body: bytes, *, retry_after: str | None = None, registration_id: str = ""
) -> Pending | Assignment:
    """What one DPS answer (HTTP ``status``, ``body``) means for the run.

    Pure: the unit tests feed it hostile answers. Raises ProvisioningError.
    """
    who = f"registration {registration_id!r}" if registration_id else "the registration"
    if status in _REFUSED:
        raise ProvisioningRefused(f"DPS refused {who}: HTTP {status}{_error_code(body)}")
    if status == 429:
        hint = parse_retry_after(retry_after)
        raise ProvisioningThrottled(f"DPS is throttling {who} (HTTP 429)", hint)
    if status >= 500:
        raise ProvisioningUnavailable(f"DPS failed answering {who}: HTTP {status}")
    if status not in (200, 202):
        raise ProvisioningFailed(f"DPS answered {who} with HTTP {status}{_error_code(body)}")
    document = _json_object(body)
    state = document.get("status")
    if state in ("assigning", "unassigned"):
        return Pending(_operation_id(document), parse_retry_after(retry_after))
    if state == "assigned":
        return _assignment(document)
    if state == "disabled":
        raise ProvisioningRefused(f"DPS says the enrollment of {who} is disabled")
    if state == "failed":
        registration = document.get("registrationState")
        code = _error_code_of(registration if isinstance(registration, dict) else {})
        raise ProvisioningFailed(f"DPS says {who} failed{code}")
    raise ProvisioningFailed(f"DPS answered an unknown status {_short(state)}")


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as whole seconds from 0 to MAX_RETRY_AFTER; None when absent or not a number."""
    if value is None:
        return None
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 9:
        return None
    return min(float(text), MAX_RETRY_AFTER)


# -- reading answers --------------------------------------------------------------------------


def _json_object(body: bytes) -> dict[str, object]:
    try:
        document = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        document = None
    if not isinstance(document, dict):
        raise ProvisioningFailed("DPS answered something that is not a JSON object")
    return document


def _operation_id(document: Mapping[str, object]) -> str:
    operation = document.get("operationId")
    if (
        not isinstance(operation, str)
        or not 1 <= len(operation) <= 256
        or not operation.isascii()
        or not operation.isprintable()
    ):
        raise ProvisioningFailed("DPS answered 'assigning' without a usable operationId")
    return operation


def _assignment(document: Mapping[str, object]) -> Assignment:
    registration = document.get("registrationState")
    if not isinstance(registration, dict):
        raise ProvisioningFailed("DPS answered 'assigned' without a registrationState")
    hub, device = registration.get("assignedHub"), registration.get("deviceId")
    try:
        check_assignment(hub, device)
    except ConfigError as exc:
        raise ProvisioningFailed(f"DPS assigned an unusable hub or device id: {exc}") from None
    assert isinstance(hub, str) and isinstance(device, str)
    return Assignment(hub_fqdn=hub.rstrip("."), device_id=device, assigned_at=time.time())


def _error_code(body: bytes) -> str:
    try:
        document = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):
        return ""
    return _error_code_of(document) if isinstance(document, dict) else ""


def _error_code_of(document: Mapping[str, object]) -> str:
    code = document.get("errorCode")
    if isinstance(code, int) and not isinstance(code, bool) and 0 <= code < 10**9:
        return f" (error {code})"
    return ""


def _short(value: object) -> str:
    text = value if isinstance(value, str) else type(value).__name__
    return repr(text[:40])


# -- one run ----------------------------------------------------------------------------------


class _Run:
    """One registration: its deadline, its TLS context, its requests."""

    def __init__(
        self,
        settings: DpsSettings,
        *,
        deadline: float,
        cancel: CancelToken,
        resolver: Resolver | None,
        proxy: ProxySettings | None = None,
    ) -> None:
        self._settings = settings
        bypassed = proxy is not None and proxy.bypasses(settings.endpoint)
        self._proxy = None if bypassed else proxy
        self._deadline = deadline
        self._cancel = cancel
        self._resolver = (
            resolver if resolver is not None else FreshResolver(DnsSettings(), cancel=cancel)
        )
        scope = urllib.parse.quote(settings.id_scope, safe="")
        rid = urllib.parse.quote(settings.registration_id, safe="")
        self._base = f"/{scope}/registrations/{rid}"
        self._query = f"?api-version={urllib.parse.quote(settings.api_version, safe='')}"
        port = settings.port
        self._host_header = settings.endpoint if port == 443 else f"{settings.endpoint}:{port}"

    def unavailable(self, reason: str) -> ProvisioningUnavailable:
        return ProvisioningUnavailable(f"DPS {self._settings.endpoint}: {reason}")

    def register(self) -> Assignment:
        context = self._context()
        body = json.dumps({"registrationId": self._settings.registration_id}).encode()
        outcome = self._ask(context, "PUT", f"{self._base}/register{self._query}", body)
        for _poll in range(_MAX_POLLS):
            if isinstance(outcome, Assignment):
                return outcome
            self._wait(outcome.retry_after)
            operation = urllib.parse.quote(outcome.operation_id, safe="")
            outcome = self._ask(context, "GET", f"{self._base}/operations/{operation}{self._query}")
        raise self.unavailable(f"still assigning after {_MAX_POLLS} polls")

    def _wait(self, retry_after: float | None) -> None:
        wait = self._settings.poll_interval if retry_after is None else retry_after
        if time.monotonic() + wait >= self._deadline:
            raise self.unavailable(f"still assigning after {self._settings.timeout:g} s")
        if self._cancel.wait(wait):
            self._cancel.check("provisioning")

    def _ask(
        self, context: ssl.SSLContext, method: str, target: str, body: bytes | None = None
    ) -> Pending | Assignment:
        status, retry_after, answer = self._request(context, method, target, body)
        return parse_answer(
            status, answer, retry_after=retry_after, registration_id=self._settings.registration_id
        )

    def _request(
        self, context: ssl.SSLContext, method: str, target: str, body: bytes | None
    ) -> tuple[int, str | None, bytes]:
        connection = http.client.HTTPConnection(self._settings.endpoint, self._settings.port)
        # Dialled here, so http.client never opens a socket without the deadline.
        connection.sock = self._dial(context)
        try:
            connection.request(method, target, body=body, headers=self._headers(body))
            with connection.getresponse() as response:
                return response.status, response.getheader("Retry-After"), _read_body(response)
        finally:
            connection.close()

    def _headers(self, body: bytes | None) -> dict[str, str]:
        headers = {
            "Host": self._host_header,
            "Accept": "application/json",
            "User-Agent": _USER_AGENT,
            "Connection": "close",
        }
        if body is not None:
            headers["Content-Type"] = "application/json; charset=utf-8"
        authorization = self._authorization()
        if authorization is not None:
            headers["Authorization"] = authorization
        return headers

    def _authorization(self) -> str | None:
        """A SAS token minted now for this request, or None for X.509."""
        settings = self._settings
        if settings.uses_x509:
            return None
        key = _sas_key(settings)
        expiry = int(time.time() + settings.sas_ttl)
        resource = f"{settings.id_scope}/registrations/{settings.registration_id}"
        return sas_token(resource, key, expiry, policy=_SAS_POLICY)

    def _context(self) -> ssl.SSLContext:
        settings = self._settings
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ProvisioningFailed(
                f"dps.ca_file {settings.ca_file!r} is not a readable PEM CA bundle"
            ) from exc
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.sslsocket_class = DeadlineSSLSocket
        if settings.cert_file is not None and settings.key_file is not None:
            _load_client_certificate(context, settings.cert_file, settings.key_file)
        return context

    def _dial(self, context: ssl.SSLContext) -> socket.socket:
        sock = self._connect()
        try:
            tls_sock = context.wrap_socket(
                sock, server_hostname=self._settings.endpoint, do_handshake_on_connect=False
            )
        except BaseException:
            sock.close()
            raise
        try:
            tls_handshake(tls_sock, self._deadline, self._cancel)
        except BaseException:
            tls_sock.close()
            raise
        assert isinstance(tls_sock, DeadlineSSLSocket)
        tls_sock.deadline, tls_sock.cancel = self._deadline, self._cancel
        return tls_sock

    def _connect(self) -> DeadlineSocket:
        host = self._settings.endpoint
        if self._proxy is not None:  # a ProxyError (a ConnectError) names the proxy
            raw = dial_via_proxy(
                self._proxy,
                self._resolver,
                host,
                self._settings.port,
                deadline=self._deadline,
                cancel=self._cancel,
            )
            return self._bounded(raw)
        last_error: OSError = OSError(f"no address for {host}")
        for address in self._addresses(host):
            try:
                raw = connect_tcp(address, self._settings.port, self._deadline, self._cancel)
            except TimeoutError:
                raise
            except OSError as exc:  # refused, unreachable: the next address
                last_error = exc
                continue
            return self._bounded(raw)
        raise last_error

    def _bounded(self, raw: socket.socket) -> DeadlineSocket:
        sock = DeadlineSocket(raw.family, raw.type, raw.proto, fileno=raw.detach())
        sock.setblocking(False)
        sock.deadline, sock.cancel = self._deadline, self._cancel
        return sock

    def _addresses(self, host: str) -> tuple[str, ...]:
        # Resolved fresh by the SDK's resolver within the deadline; never the OS's.
        if is_ip_literal(host):
            return (host,)
        return resolve_within(self._resolver, host, self._deadline).addresses


def _read_body(response: http.client.HTTPResponse) -> bytes:
    if response.length is not None and response.length > MAX_RESPONSE_BYTES:
        raise ProvisioningFailed(
            f"DPS announced {response.length} bytes, more than the {MAX_RESPONSE_BYTES} allowed"
        )
    body = bytearray()
    # Bounded: every pass adds a byte or returns, at most MAX_RESPONSE_BYTES + 1 in all.
    while len(body) <= MAX_RESPONSE_BYTES:
        chunk = response.read(min(_CHUNK, MAX_RESPONSE_BYTES + 1 - len(body)))
        if not chunk:
            return bytes(body)
        body += chunk
    raise ProvisioningFailed(f"DPS sent more than the {MAX_RESPONSE_BYTES} bytes allowed")


def _sas_key(settings: DpsSettings) -> bytes:
    """The SAS key, read again from its file on every run (a rotated key is used at once)."""
    if settings.sas_key is not None:
        return decode_key(settings.sas_key.strip())
    path = settings.sas_key_file
    assert path is not None
    try:
        check_private_file("dps.sas_key_file", path, private=True)
        with open(path, "rb") as file:
            text = file.read(_MAX_KEY_FILE + 1)
    except (CredentialError, OSError) as exc:
        raise ProvisioningFailed(f"dps.sas_key_file cannot be used: {_reason(exc)}") from None
    key = b""
    if len(text) <= _MAX_KEY_FILE:
        try:
            key = decode_key(text.strip())
        except ConfigError:
            key = b""
    if not key:  # raised outside the handler: nothing chains to the file's text
        raise ProvisioningFailed(
            f"dps.sas_key_file {path!r} does not hold a SAS key as base64 text"
        )
    return key


def _load_client_certificate(context: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    try:
        check_private_file("dps.key_file", key_file, private=True)
        context.load_cert_chain(cert_file, key_file)
    except (CredentialError, OSError, ssl.SSLError) as exc:
        raise ProvisioningFailed(
            f"the DPS client certificate cannot be used: {_reason(exc)}"
        ) from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__

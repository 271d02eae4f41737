"""The one error tree of device_sdk.

Users catch these and nothing else: paho, dnspython, ssl and socket errors are
translated at the adapter edge (``raise ... from exc``), so the original cause
stays on ``__cause__`` for logs.

::

    DeviceSDKError
    ├── ConfigError                 a config value is invalid (names field, value, allowed)
    ├── ConnectError                one connect attempt to one hub failed
    │   ├── ResolveError            DNS gave no usable address (retryable)
    │   │   ├── NameNotFound        NXDOMAIN
    │   │   ├── NoAddress           the name exists but has no A/AAAA
    │   │   ├── ResolverFailure     SERVFAIL / REFUSED / malformed answer
    │   │   └── ResolveTimeout      no nameserver answered in time
    │   ├── DialError               TCP connect refused, unreachable or timed out
    │   │   └── ProxyError          the HTTP CONNECT proxy gave no tunnel (unreachable too)
    │   │       ├── ProxyRefused        it answered non-2xx (``status``; 407: authentication)
    │   │       ├── ProxyTimeout        no complete answer before the deadline
    │   │       └── ProxyProtocolError  garbage, oversized headers, or closed before answering
    │   ├── TlsError                handshake failed or the certificate did not verify
    │   ├── ConnectTimeout          no CONNACK within the connect deadline
    │   ├── HandshakeProtocolError  the hub broke MQTT before or in its CONNACK
    │   ├── CredentialError         the credential provider failed or gave unusable credentials
    │   │   └── CredentialExpired   the credentials it gave had already expired
    │   └── ConnectRefused          the hub answered CONNACK with a failure code
    │       ├── TransientRefusal    unavailable, busy, quota, rate: retry later
    │       ├── PermanentRefusal    bad credentials, not authorised, banned: no fast retry
    │       └── Redirected          0x9C use another server / 0x9D server moved
    ├── LinkLost                    an established link died (socket error, ack or ping deadline)
    │   └── ProtocolError           the hub broke MQTT (malformed, forbidden or oversized packet)
    ├── EngineFailed                our own code faulted repeatedly: the client stopped, visibly
    ├── RecoveryFailed              a whole recovery cycle gave up; carries every attempt's cause
    │   └── NotConnected            connect() timed out; the client keeps trying in the background
    ├── PublishError                a publish could not be accepted or completed
    │   ├── OutboxFull              the outbox is at its bound (reject policy); nothing was dropped
    │   ├── MessageDropped          the drop_oldest policy pushed this message out (counted)
    │   ├── MessageExpired          its TTL passed before its PUBACK; it left the outbox (counted)
    │   ├── ClientClosed            the client was closed before the message was acknowledged
    │   ├── PublishRejected         the hub refused it in its PUBACK (MQTT 5 reason code >= 0x80)
    │   ├── MessageNotDeliverable   this hub can never take it; it left the outbox (counted)
    │   │   ├── MessageTooLarge     over the hub's Maximum Packet Size
    │   │   ├── QosNotSupported     above the hub's Maximum QoS
    │   │   ├── RetainNotSupported  retained, and the hub announced Retain Available = 0
    │   │   └── PoisonMessage       MQTT 3.1.1: the hub dropped the link over it K times in a row
    │   └── OutboxStorageError      (also an OutboxError) storage refused the write: not accepted
    ├── OutboxError                 the outbox's storage failed
    │   ├── OutboxStorageError      disk full, read-only file system or I/O error
    │   └── OutboxCorrupt           damaged or foreign file; reported, never overwritten
    ├── ConciergeError              the concierge could not be used; the device carries on
    │   ├── ConciergeUnavailable    unreachable, timed out, HTTP error, too slow or too large
    │   └── DocumentRejected        a document failed verification (a security event)
    │       ├── MalformedDocument   not JSON, wrong types, missing fields
    │       ├── BadSignature        the signature does not verify
    │       ├── UnknownKey          the key id is not pinned
    │       ├── WrongAlgorithm      not the expected signature algorithm
    │       ├── DocumentExpired     past expires_at (beyond the allowed clock skew)
    │       ├── DocumentNotYetValid issued in the future (beyond the allowed clock skew)
    │       ├── RollbackRejected    sequence not newer than the last accepted one (replay)
    │       ├── ScopeMismatch       meant for another device or fleet
    │       ├── HubNotAllowed       names a hub FQDN outside the allow-list
    │       └── InvalidHubSet       applied, it would give a hub set the device cannot use
    ├── ProvisioningError           DPS could not assign a hub; the device keeps its last one
    │   ├── ProvisioningUnavailable unreachable, timed out, throttled (429) or a server error
    │   ├── ProvisioningRefused     attestation refused, or the device is unknown or disabled
    │   └── ProvisioningFailed      the registration ended failed, or the answer was malformed
    ├── StateMachineError           an impossible (state, input) pair reached a pure machine
    └── TestbedError                the local testbed could not start or control a part
"""

from __future__ import annotations

from collections.abc import Sequence


class DeviceSDKError(Exception):
    """Root of every error device_sdk raises."""


class ConfigError(DeviceSDKError, ValueError):
    """A configuration value is invalid.

    The message names the field, the bad value and what is allowed.
    """

    def __init__(self, field: str, value: object, allowed: str, *, source: str = "") -> None:
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{field} = {value!r} is invalid; allowed: {allowed}")
        self.field = field
        self.value = value
        self.allowed = allowed
        self.source = source


class ConnectError(DeviceSDKError):
    """One connect attempt to one hub failed.

    ``hub`` is the hub's name and ``address`` the IP that was dialled (``None``
    when the attempt failed before dialling, for example in DNS).
    """

    retryable: bool = True

    def __init__(self, message: str, *, hub: str = "", address: str | None = None) -> None:
        super().__init__(message)
        self.hub = hub
        self.address = address


class ResolveError(ConnectError):
    """DNS gave no usable address for the hub's FQDN. Retryable; counts toward failover."""


class NameNotFound(ResolveError):
    """The FQDN does not exist (NXDOMAIN)."""


class NoAddress(ResolveError):
    """The FQDN exists but has neither A nor AAAA records."""


class ResolverFailure(ResolveError):
    """A nameserver answered SERVFAIL/REFUSED or something unusable."""


class ResolveTimeout(ResolveError):
    """No nameserver answered within the resolver's lifetime."""


class DialError(ConnectError):
    """The TCP connection could not be opened (refused, unreachable, timed out)."""


class ProxyError(DialError):
    """The HTTP CONNECT proxy did not open a tunnel to the target.

    A dial failure like any other: the attempt fails and the device fails over.
    ``proxy`` is the proxy's ``host:port`` and ``target`` the ``host:port`` asked
    for; ``address`` the proxy address dialled. Never carries the proxy password.
    """

    def __init__(
        self, message: str, *, proxy: str, target: str, hub: str = "", address: str | None = None
    ) -> None:
        super().__init__(message, hub=hub, address=address)
        self.proxy = proxy
        self.target = target


class ProxyRefused(ProxyError):
    """The proxy answered the CONNECT with a non-2xx ``status`` (407: authentication)."""

    def __init__(
        self,
        message: str,
        *,
        proxy: str,
        target: str,
        status: int,
        hub: str = "",
        address: str | None = None,
    ) -> None:
        super().__init__(message, proxy=proxy, target=target, hub=hub, address=address)
        self.status = status


class ProxyTimeout(ProxyError):
    """The proxy took no connection, or gave no complete answer, before the deadline."""


class ProxyProtocolError(ProxyError):
    """The proxy answered something that is not HTTP, headers past the size bound, or
    closed the connection before its answer was complete."""


class TlsError(ConnectError):
    """The TLS handshake failed or the hub's certificate did not verify for its FQDN.

    Never answered by switching verification off: the attempt fails, the hub
    counts a failure, and the device moves on.
    """

    retryable = False


class ConnectTimeout(ConnectError):
    """The hub accepted the socket but sent no CONNACK before the connect deadline."""


class HandshakeProtocolError(ConnectError):
    """The hub broke the MQTT protocol before or in its CONNACK (a malformed or
    forbidden packet, an oversized one). Transient: back off, then retry or fail over."""


class CredentialError(ConnectError):
    """The credential provider raised, or gave credentials that cannot be used.

    The attempt fails and is retried under the normal backoff, so a vault that is
    down for a minute costs a minute, not the device. Never carries a secret:
    a provider's own exception is kept on ``__cause__`` (for the log's
    traceback), and its text is not repeated here.
    """


class CredentialExpired(CredentialError):
    """The provider gave credentials whose ``expires_at`` had already passed."""

    def __init__(self, message: str, *, hub: str = "", expires_at: float = 0.0) -> None:
        super().__init__(message, hub=hub)
        self.expires_at = expires_at


class ConnectRefused(ConnectError):
    """The hub answered CONNACK with a failure reason code."""

    def __init__(
        self, message: str, *, hub: str = "", address: str | None = None, reason_code: int = 0
    ) -> None:
        super().__init__(message, hub=hub, address=address)
        self.reason_code = reason_code


class TransientRefusal(ConnectRefused):
    """Server unavailable, busy, quota exceeded or rate limited: back off and retry."""


class HubBusy(TransientRefusal):
    """The hub is over its capacity or connection rate (CONNACK server busy, quota or
    connection rate exceeded, server unavailable).

    Retried like any transient refusal, over a wider window
    (``RetryPolicy.busy_initial``): a throttling hub is usually taking a crowd.
    """


class PermanentRefusal(ConnectRefused):
    """Bad credentials, not authorised or banned on this hub.

    The engine does not retry this hub quickly: it fails over when it can and
    backs off long otherwise, and reports this error to the application.
    """

    retryable = False


class Redirected(ConnectRefused):
    """MQTT 5 CONNACK 0x9C (use another server) or 0x9D (server moved)."""

    def __init__(
        self,
        message: str,
        *,
        hub: str = "",
        address: str | None = None,
        reason_code: int = 0,
        server_reference: str | None = None,
    ) -> None:
        super().__init__(message, hub=hub, address=address, reason_code=reason_code)
        self.server_reference = server_reference


class LinkLost(DeviceSDKError):
    """An established link died: socket error, PUBACK deadline or PINGRESP deadline."""

    def __init__(self, message: str, *, hub: str = "", unresponsive: bool = False) -> None:
        super().__init__(message)
        self.hub = hub
        # True when the hub stopped answering (deadline passed) rather than closing the
        # socket: the failover machine treats that as a stronger signal.
        self.unresponsive = unresponsive


class ProtocolError(LinkLost):
    """The hub broke the MQTT protocol, so the link was dropped and recovery goes on.

    For example a packet longer than the client's ``max_packet_size`` (refused
    before anything is allocated), a topic that is not UTF-8, a malformed or
    forbidden packet (a second CONNACK, a PUBLISH before the CONNACK). Counted
    in ``metrics().protocol_errors``.
    """


class EngineFailed(DeviceSDKError):
    """The engine stopped for good after repeated faults in device_sdk's own code.

    Terminal and visible: every pending handle, every later ``publish()``,
    ``wait()`` and ``connect()`` raises this; ``metrics().engine_failed``, the
    status file and the Prometheus file say so, and the systemd sample stops
    feeding its watchdog so the process is restarted (the durable outbox keeps
    every accepted message). ``__cause__`` and ``faults`` hold the faults.
    """

    def __init__(self, message: str, faults: Sequence[BaseException] = ()) -> None:
        super().__init__(message)
        self.faults = tuple(faults)


class RecoveryFailed(DeviceSDKError):
    """A recovery cycle gave up. ``attempts`` holds the attempts' causes, oldest first.

    After a long outage only the latest causes are kept (32), so a device that
    retries for days does not hold every exception it ever saw.
    """

    def __init__(self, message: str, attempts: Sequence[BaseException] = ()) -> None:
        super().__init__(message)
        self.attempts = tuple(attempts)


class NotConnected(RecoveryFailed):
    """``connect(timeout=...)`` ran out of time. The client keeps trying in the background;
    ``attempts`` holds the causes so far."""


class PublishError(DeviceSDKError):
    """A message could not be accepted or completed."""


class OutboxFull(PublishError):
    """The outbox is at its bound under the ``reject`` policy (backpressure).

    Nothing already queued was dropped; the caller decides what to do with this message.
    """


class MessageDropped(PublishError):
    """The ``drop_oldest`` policy pushed this message out to make room (counted in metrics)."""


class MessageExpired(PublishError):
    """The message's TTL (``publish(ttl=...)``) passed before the hub acknowledged it.

    Stale telemetry is worth less than the fresh readings queued behind it, so
    the message left the outbox unsent (counted by ``Outbox.expired()``). A
    message already sent and awaiting its PUBACK is never expired under the
    engine's feet; it is expired only if its link dies and it would be sent
    again. ``message_id``, ``topic`` and ``overdue`` (seconds past its expiry
    when it was removed) say which and by how much.
    """

    def __init__(self, *, message_id: str, topic: str, overdue: float) -> None:
        super().__init__(
            f"message {message_id} on {topic!r} expired {overdue:.3f} s ago, before its "
            "PUBACK; it left the outbox unsent"
        )
        self.message_id = message_id
        self.topic = topic
        self.overdue = overdue


class ClientClosed(PublishError):
    """The client was closed before the message was acknowledged."""


class PublishRejected(PublishError):
    """The hub refused the message: its MQTT 5 PUBACK carried a failure reason code.

    For example 0x87 Not authorized, 0x90 Topic Name invalid, 0x99 Payload format
    invalid. The hub has decided on this message, so it has left the outbox rather
    than block the messages behind it; the application decides whether to publish
    it again. (0x97 Quota exceeded is not a refusal of the message: the client
    backs off and republishes it.) ``hub``, ``message_id``, ``topic``,
    ``reason_code`` and ``reason`` say which and why. (MQTT 3.1.1 has no way to
    refuse a PUBLISH: a hub acknowledges or drops the connection.)
    """

    def __init__(
        self, *, hub: str, message_id: str, topic: str, reason_code: int, reason: str
    ) -> None:
        super().__init__(
            f"hub {hub} refused message {message_id} on {topic!r}: "
            f"0x{reason_code:02X} {reason}; it left the outbox"
        )
        self.hub = hub
        self.message_id = message_id
        self.topic = topic
        self.reason_code = reason_code
        self.reason = reason


class MessageNotDeliverable(PublishError):
    """This hub can never take the message, so it left the outbox instead of blocking it.

    Counted in ``metrics().undeliverable`` and announced by a
    ``MessageUndeliverable`` event. ``hub``, ``message_id`` and ``topic`` say which.
    """

    def __init__(self, message: str, *, hub: str, message_id: str, topic: str) -> None:
        super().__init__(f"{message}; message {message_id} on {topic!r} left the outbox")
        self.hub = hub
        self.message_id = message_id
        self.topic = topic


class MessageTooLarge(MessageNotDeliverable):
    """The PUBLISH would exceed the Maximum Packet Size the hub announced in its CONNACK."""


class QosNotSupported(MessageNotDeliverable):
    """The message's QoS is above the Maximum QoS the hub announced in its CONNACK."""


class RetainNotSupported(MessageNotDeliverable):
    """The message is retained, and the hub announced Retain Available = 0 in its CONNACK.

    Sending it anyway would make an MQTT 5 hub drop the link (MQTT 5 §3.3.1.3), again
    on every link; sending it unretained would quietly break what the application asked.
    """


class PoisonMessage(MessageNotDeliverable):
    """MQTT 3.1.1: the hub dropped the link right after this message, K times in a row.

    3.1.1 gives a hub no way to refuse one message, so a message it cannot take
    (too large, a forbidden topic) shows only as a dropped link; without this
    rule it would block every message behind it forever.
    """


class OutboxError(DeviceSDKError):
    """The outbox's storage failed."""


class OutboxStorageError(OutboxError, PublishError):
    """Storage refused a write (disk full, read-only file system, I/O error).

    Raised by ``publish()``: the message was not accepted. Messages accepted
    earlier are untouched and are still delivered once the link allows.
    """


class OutboxCorrupt(OutboxError):
    """The outbox file is damaged or is not an outbox. It is reported and never overwritten."""


class ConciergeError(DeviceSDKError):
    """The concierge could not be used. The device carries on from its own hub list."""


class ConciergeUnavailable(ConciergeError):
    """The concierge was unreachable, too slow, answered an HTTP error, or sent too much."""


class DocumentRejected(ConciergeError):
    """A concierge document failed verification. Always logged as a security event."""


class MalformedDocument(DocumentRejected):
    """Not JSON, wrong types, or missing fields."""


class BadSignature(DocumentRejected):
    """The signature does not verify with the pinned key."""


class UnknownKey(DocumentRejected):
    """The document is signed with a key id that is not pinned."""


class WrongAlgorithm(DocumentRejected):
    """The document names a signature algorithm other than the expected one."""


class DocumentExpired(DocumentRejected):
    """The document's ``expires_at`` has passed (beyond the allowed clock skew)."""


class DocumentNotYetValid(DocumentRejected):
    """The document's ``issued_at`` is in the future (beyond the allowed clock skew)."""


class RollbackRejected(DocumentRejected):
    """The document's sequence is not newer than the last accepted one (rollback or replay)."""


class ScopeMismatch(DocumentRejected):
    """The document is scoped to another device or fleet."""


class HubNotAllowed(DocumentRejected):
    """The document names a hub FQDN outside the configured allow-list."""


class InvalidHubSet(DocumentRejected):
    """A verified document whose hubs, applied, would break the device's hub set.

    For example two hubs with one name after renaming, or a name the device
    already uses for another FQDN. Rejected before it reaches the failover machine.
    """


class ProvisioningError(DeviceSDKError):
    """The Device Provisioning Service could not assign a hub this time.

    The device carries on with the hub it was assigned last (kept on disk) and
    asks again later, with jittered backoff: DPS throttles fleets.
    """


class ProvisioningUnavailable(ProvisioningError):
    """DPS was unreachable, too slow, throttling (HTTP 429) or failing (5xx)."""


class ProvisioningRefused(ProvisioningError):
    """DPS refused the attestation (401/403), or does not know the device (404)."""


class ProvisioningFailed(ProvisioningError):
    """The registration ended in a failed or disabled state, or DPS answered nonsense."""


class StateMachineError(DeviceSDKError):
    """A pure state machine received an input that is impossible in its current state."""


class TestbedError(DeviceSDKError):
    """The local testbed could not start, stop or control one of its parts."""

    __test__ = False  # not a pytest test class, despite the name

"""Connection events, each carrying its reason.

The engine emits these as they happen. Applications receive them through
``DeviceClient(on_event=...)``, through ``client.events()`` and through the
``device_sdk`` logger, all with the same text from :meth:`Event.describe`.
``at`` is the engine's monotonic clock, so a sequence of events is a timeline.
"""

from __future__ import annotations

from dataclasses import dataclass

from device_sdk.errors import (
    ConciergeError,
    DeviceSDKError,
    DocumentRejected,
    LinkLost,
    MessageNotDeliverable,
    ProvisioningError,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of every connection event."""

    at: float

    def describe(self) -> str:
        return type(self).__name__


@dataclass(frozen=True, slots=True, kw_only=True)
class Attempting(Event):
    """A connect attempt to ``hub`` begins (after any backoff)."""

    hub: str
    attempt: int
    delay: float  # the backoff waited before this attempt

    def describe(self) -> str:
        return f"attempt #{self.attempt} to {self.hub} (after {self.delay * 1000:.0f} ms backoff)"


@dataclass(frozen=True, slots=True, kw_only=True)
class Resolved(Event):
    """The hub's FQDN was resolved fresh; ``addresses`` are tried in this order."""

    hub: str
    fqdn: str
    addresses: tuple[str, ...]
    seconds: float

    def describe(self) -> str:
        took = self.seconds * 1000
        return f"resolved {self.fqdn} -> {', '.join(self.addresses)} in {took:.1f} ms"


@dataclass(frozen=True, slots=True, kw_only=True)
class DialFailed(Event):
    """One address of a hub could not be opened; the attempt goes on with the next one."""

    hub: str
    address: str
    error: DeviceSDKError
    transport: str = ""  # the way in, e.g. "wss:443/mqtt"

    def describe(self) -> str:
        over = f" over {self.transport}" if self.transport else ""
        return f"dial {self.hub} at {self.address}{over} failed: {self.error}"


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptFailed(Event):
    """An attempt failed; ``error`` is the typed cause."""

    hub: str
    address: str | None
    error: DeviceSDKError

    def describe(self) -> str:
        where = f" at {self.address}" if self.address else ""
        return f"attempt to {self.hub}{where} failed: {type(self.error).__name__}: {self.error}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Connected(Event):
    """The device is connected to ``hub`` at ``address``."""

    hub: str
    address: str
    session_present: bool
    outage_seconds: float | None  # from losing the previous link to this CONNACK
    transport: str = ""  # the way in, e.g. "mqtts:8883" or "wss:443/mqtt"

    def describe(self) -> str:
        over = f" over {self.transport}" if self.transport else ""
        text = f"connected to {self.hub} at {self.address}{over}"
        if self.outage_seconds is not None:
            text += f" ({self.outage_seconds * 1000:.1f} ms after the link was lost)"
        return text


@dataclass(frozen=True, slots=True, kw_only=True)
class Disconnected(Event):
    """The link to ``hub`` ended; ``error`` says why (``error.unresponsive``: a deadline passed)."""

    hub: str
    error: LinkLost

    @property
    def reason(self) -> str:
        return str(self.error)

    @property
    def unresponsive(self) -> bool:
        return self.error.unresponsive

    def describe(self) -> str:
        return f"disconnected from {self.hub}: {self.reason}"


@dataclass(frozen=True, slots=True, kw_only=True)
class FailedOver(Event):
    """The device moved from one hub to another because the first one failed."""

    from_hub: str
    to_hub: str
    reason: str

    def describe(self) -> str:
        return f"failover {self.from_hub} -> {self.to_hub}: {self.reason}"


@dataclass(frozen=True, slots=True, kw_only=True)
class FailedBack(Event):
    """The device returned to its home hub after the dwell time."""

    from_hub: str
    to_hub: str

    def describe(self) -> str:
        return f"failback {self.from_hub} -> {self.to_hub}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Migrating(Event):
    """The device leaves a healthy link to move to another hub (failback or concierge)."""

    from_hub: str
    to_hub: str
    reason: str

    def describe(self) -> str:
        return f"migrating {self.from_hub} -> {self.to_hub}: {self.reason}"


@dataclass(frozen=True, slots=True, kw_only=True)
class FirstAck(Event):
    """The first PUBACK after a (re)connect: the device is recovered end to end."""

    hub: str
    recovery_seconds: float | None  # from losing the previous link to this PUBACK

    def describe(self) -> str:
        if self.recovery_seconds is None:
            return f"first PUBACK from {self.hub}"
        took = self.recovery_seconds * 1000
        return f"first PUBACK from {self.hub}: recovered {took:.1f} ms after the link was lost"


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueDepth(Event):
    """How many messages wait for a PUBACK, reported when the link changes."""

    depth: int

    def describe(self) -> str:
        return f"{self.depth} message(s) waiting for PUBACK"


@dataclass(frozen=True, slots=True, kw_only=True)
class MessagesDropped(Event):
    """The outbox's drop_oldest policy pushed ``count`` old messages out to make room."""

    count: int

    def describe(self) -> str:
        return f"outbox full: dropped the {self.count} oldest message(s) (drop_oldest policy)"


@dataclass(frozen=True, slots=True, kw_only=True)
class MessagesExpired(Event):
    """``count`` messages outlived their ``publish(ttl=...)`` and left the outbox unsent
    (or unacknowledged); their handles raise MessageExpired."""

    count: int

    def describe(self) -> str:
        return f"{self.count} message(s) expired (TTL passed) and left the outbox"


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageRejected(Event):
    """``hub`` refused a message in its PUBACK; its handle raises PublishRejected."""

    hub: str
    message_id: str
    topic: str
    reason_code: int
    reason: str

    def describe(self) -> str:
        return (
            f"{self.hub} refused message {self.message_id} on {self.topic!r}: "
            f"0x{self.reason_code:02X} {self.reason}"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageUndeliverable(Event):
    """``hub`` can never take a message, so it left the outbox; its handle raises ``error``.

    ``error`` is a :class:`~device_sdk.errors.MessageNotDeliverable`: too large for
    the hub's Maximum Packet Size, above its Maximum QoS, or (MQTT 3.1.1) a
    message the hub dropped the link over again and again.
    """

    hub: str
    message_id: str
    topic: str
    error: MessageNotDeliverable

    def describe(self) -> str:
        return f"{self.hub} cannot take message {self.message_id}: {self.error}"


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineFault(Event):
    """device_sdk's own code raised on the engine thread (a bug, or a broken plug-in part
    such as a custom outbox or resolver). The link was restarted; ``faults`` counts
    the recent ones. ``terminal``: they repeated, and the client stopped for good
    (every call now raises :class:`~device_sdk.errors.EngineFailed`)."""

    error: BaseException
    faults: int
    terminal: bool

    def describe(self) -> str:
        what = "engine stopped for good" if self.terminal else "restarting the link"
        return f"internal fault #{self.faults} ({type(self.error).__name__}: {self.error}); {what}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ConciergeUpdate(Event):
    """A verified concierge document names ``active_hub`` (sequence ``sequence``)."""

    sequence: int
    active_hub: str

    def describe(self) -> str:
        return f"concierge: {self.active_hub} is active (document #{self.sequence})"


@dataclass(frozen=True, slots=True, kw_only=True)
class ConciergeProblem(Event):
    """The concierge could not be used. ``security``: a document failed verification."""

    error: ConciergeError

    @property
    def security(self) -> bool:
        return isinstance(self.error, DocumentRejected)

    def describe(self) -> str:
        label = "SECURITY: rejected a concierge document" if self.security else "concierge"
        return f"{label}: {type(self.error).__name__}: {self.error}"


@dataclass(frozen=True, slots=True, kw_only=True)
class RenewingCredentials(Event):
    """The link's identity is due for renewal: a new link with a fresh one is opening."""

    hub: str

    def describe(self) -> str:
        return f"renewing credentials for {self.hub} (make before break)"


@dataclass(frozen=True, slots=True, kw_only=True)
class CredentialsRenewed(Event):
    """A new link with a fresh identity replaced the old one; nothing in flight was lost."""

    hub: str
    address: str
    expires_at: float | None  # wall clock (time.time()); None: no expiry

    def describe(self) -> str:
        return f"credentials renewed on {self.hub} at {self.address}"


@dataclass(frozen=True, slots=True, kw_only=True)
class TransportReturned(Event):
    """The hub's first way in answered again; a link on it replaced the fallback one,
    make before break, and nothing in flight was lost."""

    hub: str
    address: str
    from_transport: str
    to_transport: str

    def describe(self) -> str:
        return f"back on {self.to_transport} to {self.hub} (from {self.from_transport})"


@dataclass(frozen=True, slots=True, kw_only=True)
class CredentialExpiring(Event):
    """The identity in use (a client certificate, a long-lived token) expires soon.

    Rotate the files or the key before ``expires_at`` (wall clock): the next
    attempt after that would be refused.
    """

    hub: str
    expires_at: float
    seconds: float  # left until then

    def describe(self) -> str:
        return f"the credentials for {self.hub} expire in {self.seconds / 3600:.1f} h"


@dataclass(frozen=True, slots=True, kw_only=True)
class Provisioned(Event):
    """DPS assigned the device to ``fqdn`` (``from_disk``: the assignment kept from before)."""

    hub: str  # the name the hub has in the device's hub list
    fqdn: str
    device_id: str
    from_disk: bool

    def describe(self) -> str:
        where = "kept on disk" if self.from_disk else "from DPS"
        return f"provisioned to {self.fqdn} as {self.device_id} ({where})"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProvisioningProblem(Event):
    """Asking DPS failed; the device carries on with its last assignment."""

    error: ProvisioningError

    def describe(self) -> str:
        return f"provisioning failed: {type(self.error).__name__}: {self.error}"

"""One established link, served: the in-flight window, liveness, and what the link reports.

A :class:`LinkSession` lives from a CONNACK to the end of that link. It drains
the outbox within the in-flight window, feeds the RTT-derived watchdog, turns
PUBACKs into acknowledged messages, and records why the link ended. The
engine runs the loop and decides what happens next; the session only keeps
the books. Engine thread only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from device_sdk import events
from device_sdk.adapters.paho_link import PahoLink, Received
from device_sdk.config import ClientConfig
from device_sdk.core import failover as fsm
from device_sdk.core.liveness import Dead, LinkWatchdog, SendPing
from device_sdk.core.outcomes import FailureKind
from device_sdk.errors import (
    MessageNotDeliverable,
    MessageTooLarge,
    PublishRejected,
    QosNotSupported,
    RetainNotSupported,
)
from device_sdk.metrics import MetricsRecorder
from device_sdk.outbox import OutboundMessage, Outbox

# PUBACK reason code 0x97: the hub is over a quota (a rate, a volume). It refuses
# the message now, not the message itself; see LinkSession.on_refused.
QUOTA_EXCEEDED = 0x97

Emit = Callable[[events.Event], None]
Deliver = Callable[[Received], None]


@dataclass(frozen=True, slots=True)
class LinkEnd:
    """Why serving a link stopped."""

    reason: str
    unresponsive: bool = False
    redirect: bool = False
    server_reference: str | None = None
    migrate: fsm.Migrate | None = None
    fresh_session: bool = False  # do not resume this link's session: republish from the outbox
    protocol_error: bool = False  # the hub broke MQTT: reported as ProtocolError
    renew: bool = False  # the identity is due for renewal: make a new link, then close this one
    refused: bool = False  # the hub's DISCONNECT said not authorised (or banned)
    busy: bool = False  # the hub's DISCONNECT said busy, quota or rate exceeded
    way_back: bool = False  # with renew: the hub's first way in opened; move back to it


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionServices:
    """What every session uses from its engine."""

    config: ClientConfig
    outbox: Outbox
    metrics: MetricsRecorder
    emit: Emit
    deliver: Deliver


class PoisonWatch:
    """MQTT 3.1.1: finds a message the hub can never take, from the links it drops.

    3.1.1 gives a hub no way to refuse one message: a hub that cannot take a
    PUBLISH (too large, a topic it forbids) drops the connection. The message
    is then first in line on every new link, so without this rule it is resent
    forever and blocks every message behind it. When the hub closes ``limit``
    links in a row while the same message is the oldest one unacknowledged,
    that message is the poison. A link that ends any other way (a deadline, our
    own decision, with nothing in flight, or with another message oldest)
    breaks the streak, so a hub that merely restarts is not mistaken for it.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._suspect: str | None = None
        self._count = 0

    def link_ended(self, session: LinkSession, end: LinkEnd) -> OutboundMessage | None:
        """Feed one ended link; returns the poison message once the streak is long enough."""
        closed_by_hub = not (end.unresponsive or end.redirect or end.migrate or end.fresh_session)
        oldest = session.oldest_unacknowledged() if closed_by_hub else None
        if oldest is None or oldest.message_id != self._suspect:
            self._suspect = None if oldest is None else oldest.message_id
            self._count = 0 if oldest is None else 1
        else:
            self._count += 1
        if oldest is None or self._count < self._limit:
            return None
        self._suspect, self._count = None, 0
        return oldest


class LinkSession:
    """The books of one link: in-flight messages, the watchdog, the first PUBACK, the end.

    ``inflight`` carries the messages a resumed session still owes acks for
    (paho resends them with DUP and their packet ids); on a new session they
    go back into the outbox's line instead and are republished in order.
    """

    def __init__(
        self,
        link: PahoLink,
        services: SessionServices,
        *,
        inflight: dict[int, OutboundMessage],
        outage_started: float | None,
        now: float,
    ) -> None:
        self.link = link
        self._services = services
        self._watchdog = LinkWatchdog(services.config.liveness, now)
        self._outage_started = outage_started
        self._awaiting_first_ack = True
        self.end: LinkEnd | None = None
        if link.resumed:
            self.inflight = inflight
            for mid in inflight:
                self._watchdog.on_ack_expected(mid, now, retransmitted=True)
        else:
            self.inflight = {}
            services.outbox.rewind()

    # -- driven by the engine's loop -----------------------------------------------------

    @property
    def window(self) -> int:
        """Messages allowed in flight: ours, and the hub's Receive Maximum."""
        return min(self._services.config.inflight_window, self.link.receive_maximum)

    def has_room(self) -> bool:
        return len(self.inflight) < self.window

    def drain(self) -> None:
        """Send queued messages while the window allows."""
        room = self.window - len(self.inflight)
        if room <= 0:
            return
        outbox = self._services.outbox
        batch = outbox.take_unsent(room)
        if not batch:
            return
        with self.link.coalesced(len(batch) > 1):
            for message in batch:
                refusal = self._never_deliverable(message)
                if refusal is not None:
                    self.give_up(message, refusal)
                elif not self._send(message):
                    return  # the link died under the publish; the next link sends it again

    def _send(self, message: OutboundMessage) -> bool:
        if message.retain or message.properties is not None or message.expires_at is not None:
            mid = self.link.publish(
                message.topic,
                message.payload,
                message.qos,
                message.message_id,
                retain=message.retain,
                properties=message.properties,
                expires_at=message.expires_at,
            )
        else:  # the hot path: most telemetry has no options
            mid = self.link.publish(message.topic, message.payload, message.qos, message.message_id)
        if self.end is not None:
            return False
        if message.qos == 0:
            self._services.outbox.ack(message.seq)
        else:
            self.inflight[mid] = message
            self._watchdog.on_ack_expected(mid, time.monotonic())
        return True

    def _never_deliverable(self, message: OutboundMessage) -> MessageNotDeliverable | None:
        """Why this hub can never take ``message``, from what it announced in CONNACK; or None.

        Why check before sending: an MQTT 5 hub drops the link over a packet larger
        than its Maximum Packet Size, and the message would be resent on every
        link, blocking everything behind it and reconnecting in a loop.
        """
        link = self.link
        hub = link.hub.name
        if message.qos > link.maximum_qos:
            return QosNotSupported(
                f"{hub} takes QoS {link.maximum_qos} at most (its CONNACK says so); "
                f"this message is QoS {message.qos}",
                hub=hub,
                message_id=message.message_id,
                topic=message.topic,
            )
        if message.retain or message.properties is not None:
            refusal = self._options_refused(message)
            if refusal is not None:
                return refusal
        limit = link.maximum_packet_size
        # The exact size is computed only when the payload comes near the limit, or
        # when the message carries properties (rare, and their size is open-ended).
        if limit is None or (
            message.properties is None
            and len(message.payload) + 4 * len(message.topic) + 256 < limit
        ):
            return None
        size = link.publish_size(
            message.topic,
            message.payload,
            message.qos,
            message.message_id,
            properties=message.properties,
            expires_at=message.expires_at,
        )
        if size <= limit:
            return None
        return MessageTooLarge(
            f"{hub} takes packets of at most {limit} bytes (its CONNACK says so); "
            f"this PUBLISH is {size} bytes",
            hub=hub,
            message_id=message.message_id,
            topic=message.topic,
        )

    def _options_refused(self, message: OutboundMessage) -> MessageNotDeliverable | None:
        """A retained message to a hub without Retain Available, or properties on 3.1.1.

        Why refuse rather than send: an MQTT 5 hub that announced Retain Available
        = 0 drops the link over a retained PUBLISH, on every link; and sending it
        unretained (or without its properties) would quietly change what the
        application asked for. Properties reach a 3.1.1 link only from a durable
        outbox written under MQTT 5; publish() refuses them on 3.1.1.
        """
        link, hub = self.link, self.link.hub.name
        if message.retain and not link.retain_available:
            return RetainNotSupported(
                f"{hub} announced Retain Available = 0 in its CONNACK; this message is retained",
                hub=hub,
                message_id=message.message_id,
                topic=message.topic,
            )
        properties = message.properties
        if properties is not None and not properties.empty and not link.carries_properties:
            return MessageNotDeliverable(
                f"{hub} speaks MQTT 3.1.1, which cannot carry this message's properties",
                hub=hub,
                message_id=message.message_id,
                topic=message.topic,
            )
        return None

    def give_up(self, message: OutboundMessage, error: MessageNotDeliverable) -> None:
        """``message`` can never reach this hub: it leaves the outbox, counted and announced."""
        self.inflight = {mid: m for mid, m in self.inflight.items() if m.seq != message.seq}
        self._services.outbox.reject(message.seq, error)
        self._services.metrics.add(undeliverable=1)
        self._services.emit(
            events.MessageUndeliverable(
                at=time.monotonic(),
                hub=self.link.hub.name,
                message_id=message.message_id,
                topic=message.topic,
                error=error,
            )
        )

    def oldest_unacknowledged(self) -> OutboundMessage | None:
        """The earliest message sent on this link and not acknowledged, if any."""
        return min(self.inflight.values(), key=lambda m: m.seq, default=None)

    def check_liveness(self, now: float) -> float | None:
        """Run the watchdog. Returns when it must run again, or None once the link is dead.

        Why a missed PUBACK or PINGRESP ends the link: a hung or blackholed hub
        sends no RST, and TCP would take minutes to give up. The deadline comes
        from measured round trips, so a slow link is not mistaken for a dead one.
        """
        verdict = self._watchdog.check(now)
        if isinstance(verdict, Dead):
            self.link.abort()
            self.end = LinkEnd(reason=verdict.reason, unresponsive=True)
            return None
        if isinstance(verdict, SendPing):
            self.link.send_ping()
            self._watchdog.on_ping_sent(now)
            verdict = self._watchdog.check(now)
        return getattr(verdict, "next_check_at", None)

    # -- LinkListener: called by the link from service(), on the engine thread ------------

    def on_ack(self, mid: int) -> None:
        message = self.inflight.pop(mid, None)
        if message is None:
            return
        now = time.monotonic()
        self._watchdog.on_acked(mid, now)
        self._services.outbox.ack(message.seq)
        self._services.metrics.acknowledged()
        if self._awaiting_first_ack:
            self._first_ack(now)

    def on_refused(self, mid: int, reason_code: int, reason: str) -> None:
        """The hub answered, and refused the message.

        0x97 Quota exceeded refuses the moment, not the message: the link ends
        as if the hub were busy, the retry policy backs off, and the next link
        (a new session) republishes everything still in the outbox, this
        message included, in order and with the same ids. Nothing is dropped.

        Any other refusal (not authorized, topic or payload invalid, ...) is
        the hub's decision on these bytes, and resending them would hold up
        every message behind this one: the message leaves the outbox with a
        typed error, seen on the handle, in a MessageRejected event and in the
        ``rejected`` counter, never as a silent acknowledgement.
        """
        if mid not in self.inflight:
            return
        now = time.monotonic()
        self._watchdog.on_acked(mid, now)  # the hub is alive and answering
        if reason_code == QUOTA_EXCEEDED:
            if self.end is None:  # the engine closes the link once this read is handled
                self.end = LinkEnd(
                    reason=f"the hub is over quota (PUBACK 0x97 {reason}): backing off; "
                    "nothing was dropped",
                    fresh_session=True,
                )
            return
        message = self.inflight.pop(mid)
        hub = self.link.hub.name
        error = PublishRejected(
            hub=hub,
            message_id=message.message_id,
            topic=message.topic,
            reason_code=reason_code,
            reason=reason,
        )
        self._services.outbox.reject(message.seq, error)
        self._services.metrics.add(rejected=1)
        self._services.emit(
            events.MessageRejected(
                at=now,
                hub=hub,
                message_id=message.message_id,
                topic=message.topic,
                reason_code=reason_code,
                reason=reason,
            )
        )
        if self._awaiting_first_ack:
            self._first_ack(now)

    def _first_ack(self, now: float) -> None:
        self._awaiting_first_ack = False
        recovery = None if self._outage_started is None else now - self._outage_started
        self._services.metrics.set(
            last_recovery_seconds=recovery, ack_deadline_seconds=self._watchdog.deadline
        )
        self._services.emit(
            events.FirstAck(at=now, hub=self.link.hub.name, recovery_seconds=recovery)
        )

    def on_message(self, received: Received) -> None:
        self._watchdog.on_received(time.monotonic())
        self._services.deliver(received)

    def on_pingresp(self) -> None:
        self._watchdog.on_pingresp(time.monotonic())

    def on_protocol_error(self, reason: str) -> None:
        if self.end is None:
            self.end = LinkEnd(reason=f"protocol error: {reason}", protocol_error=True)

    def on_link_closed(self, reason: str, kind: FailureKind, server_reference: str | None) -> None:
        if kind is FailureKind.REDIRECT:
            self.end = LinkEnd(
                reason=f"redirected: {reason}", redirect=True, server_reference=server_reference
            )
        else:
            self.end = LinkEnd(
                reason=reason,
                refused=kind is FailureKind.PERMANENT,
                busy=kind is FailureKind.BUSY,
            )

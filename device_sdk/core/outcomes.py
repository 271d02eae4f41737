"""What an MQTT reason code means for the recovery path.

Every mapping here is a table, so the whole policy can be read (and reviewed)
at a glance. The failover machine only ever sees a `FailureKind`; the raw code
stays in the typed error the engine raises for the application.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from device_sdk.errors import (
    ConnectRefused,
    HubBusy,
    PermanentRefusal,
    Redirected,
    TransientRefusal,
)


class FailureKind(enum.Enum):
    """How a failed attempt or a lost link should steer the next attempt."""

    TRANSIENT = "transient"
    """The hub may accept us soon: back off and retry (and fail over after a while)."""
    PERMANENT = "permanent"
    """This hub refuses *us* (credentials, authorisation, ban): do not hammer it."""
    REDIRECT = "redirect"
    """The hub told us to go elsewhere (MQTT 5 0x9C / 0x9D)."""
    UNRESPONSIVE = "unresponsive"
    """The hub stopped answering (connect, ack or ping deadline passed)."""
    BUSY = "busy"
    """The hub is up and answered, but is over its capacity or connection rate
    (server busy, quota or connection rate exceeded, server unavailable). As
    TRANSIENT, except that the retry waits over a wider window (a hub that
    throttles is usually taking a crowd that arrived together), and a failback
    or concierge move refused this way keeps the dwell already served."""


_T = FailureKind.TRANSIENT
_P = FailureKind.PERMANENT
_R = FailureKind.REDIRECT
_B = FailureKind.BUSY

# Why unknown codes are TRANSIENT: a device in the field must never strand
# itself on a code a newer broker invented. Backoff still protects the hub.
UNKNOWN_CODE_KIND = FailureKind.TRANSIENT

MQTT311_CONNACK: Mapping[int, FailureKind] = MappingProxyType(
    {
        1: _P,  # unacceptable protocol version
        2: _P,  # identifier rejected
        3: _B,  # server unavailable (what a throttling 3.1.1 hub answers)
        4: _P,  # bad user name or password
        5: _P,  # not authorized
    }
)

MQTT5_CONNACK: Mapping[int, FailureKind] = MappingProxyType(
    {
        0x80: _T,  # unspecified error
        0x81: _P,  # malformed packet
        0x82: _P,  # protocol error
        0x83: _T,  # implementation specific error
        0x84: _P,  # unsupported protocol version
        0x85: _P,  # client identifier not valid
        0x86: _P,  # bad user name or password
        0x87: _P,  # not authorized
        0x88: _B,  # server unavailable
        0x89: _B,  # server busy
        0x8A: _P,  # banned
        0x8C: _P,  # bad authentication method
        0x95: _P,  # packet too large
        0x97: _B,  # quota exceeded
        0x99: _P,  # payload format invalid
        0x9A: _P,  # retain not supported
        0x9B: _P,  # QoS not supported
        0x9C: _R,  # use another server
        0x9D: _R,  # server moved
        0x9F: _B,  # connection rate exceeded
    }
)

# Server-sent DISCONNECT: anything not listed is TRANSIENT (shutting down, keep-alive
# timeout, session taken over, ...): reconnect with backoff. A hub shedding load says
# busy, quota or rate: BUSY, so the whole crowd it dropped does not come straight back.
MQTT5_DISCONNECT: Mapping[int, FailureKind] = MappingProxyType(
    {
        0x87: _P,  # not authorized
        0x89: _B,  # server busy
        0x8A: _P,  # banned
        0x97: _B,  # quota exceeded
        0x9C: _R,  # use another server
        0x9D: _R,  # server moved
        0x9F: _B,  # connection rate exceeded
    }
)

MQTT311_NAMES: Mapping[int, str] = MappingProxyType(
    {
        0: "connection accepted",
        1: "unacceptable protocol version",
        2: "identifier rejected",
        3: "server unavailable",
        4: "bad user name or password",
        5: "not authorized",
    }
)

MQTT5_NAMES: Mapping[int, str] = MappingProxyType(
    {
        0x00: "success",
        0x04: "disconnect with will message",
        0x80: "unspecified error",
        0x81: "malformed packet",
        0x82: "protocol error",
        0x83: "implementation specific error",
        0x84: "unsupported protocol version",
        0x85: "client identifier not valid",
        0x86: "bad user name or password",
        0x87: "not authorized",
        0x88: "server unavailable",
        0x89: "server busy",
        0x8A: "banned",
        0x8B: "server shutting down",
        0x8C: "bad authentication method",
        0x8D: "keep alive timeout",
        0x8E: "session taken over",
        0x8F: "topic filter invalid",
        0x90: "topic name invalid",
        0x93: "receive maximum exceeded",
        0x94: "topic alias invalid",
        0x95: "packet too large",
        0x96: "message rate too high",
        0x97: "quota exceeded",
        0x98: "administrative action",
        0x99: "payload format invalid",
        0x9A: "retain not supported",
        0x9B: "QoS not supported",
        0x9C: "use another server",
        0x9D: "server moved",
        0x9E: "shared subscriptions not supported",
        0x9F: "connection rate exceeded",
        0xA0: "maximum connect time",
        0xA1: "subscription identifiers not supported",
        0xA2: "wildcard subscriptions not supported",
    }
)

# Refusals that say "not these credentials" (paho 2 reports MQTT 3.1.1's codes 4 and 5
# as these). A provider that can renew is asked again before the hub is shunned.
AUTH_REFUSAL_CODES = frozenset({0x86, 0x87})


def refusal_kind(
    kind: FailureKind, *, reason_code: int, renewable: bool, refused_fresh: bool
) -> FailureKind:
    """How a refusal steers the machine, given what the credential provider can do.

    Why not shun at once: a token that expired during an outage is refused
    with "not authorized" although the device is welcome; shunning the hub
    for the permanent penalty (and waiting the long delay when every hub says
    so) would keep it out for minutes after the hub came back. So the first
    such refusal retries with a fresh identity under the normal backoff; only
    one that persists after fresh credentials (``refused_fresh``), or from a
    provider that cannot renew, is permanent.
    """
    auth = kind is FailureKind.PERMANENT and reason_code in AUTH_REFUSAL_CODES
    if auth and renewable and not refused_fresh:
        return FailureKind.TRANSIENT
    return kind


REFUSAL_ERRORS: Mapping[FailureKind, type[ConnectRefused]] = MappingProxyType(
    {
        FailureKind.TRANSIENT: TransientRefusal,
        FailureKind.UNRESPONSIVE: TransientRefusal,
        FailureKind.BUSY: HubBusy,
        FailureKind.PERMANENT: PermanentRefusal,
        FailureKind.REDIRECT: Redirected,
    }
)
"""The typed error the engine raises for a CONNACK refusal of each kind."""


def classify_connack(reason_code: int, *, mqtt5: bool) -> FailureKind | None:
    """Classify a CONNACK return/reason code; ``None`` means the hub accepted us."""
    if reason_code == 0:
        return None
    table = MQTT5_CONNACK if mqtt5 else MQTT311_CONNACK
    return table.get(reason_code, UNKNOWN_CODE_KIND)


def classify_disconnect(reason_code: int) -> FailureKind:
    """Classify the reason code of a DISCONNECT the server sent (MQTT 5 only)."""
    return MQTT5_DISCONNECT.get(reason_code, UNKNOWN_CODE_KIND)


def describe_reason(reason_code: int, *, mqtt5: bool) -> str:
    """The protocol's name for a reason code, for events, logs and error messages."""
    names = MQTT5_NAMES if mqtt5 else MQTT311_NAMES
    default = f"unknown reason code 0x{reason_code:02X}"
    return names.get(reason_code, default)

"""Frozen, keyword-only configuration values.

Everything a client needs is one :class:`ClientConfig`. Values validate
themselves when built, so a bad value fails at the boundary with a
:class:`~device_sdk.errors.ConfigError` naming the field, the value and what is
allowed, never deep inside a reconnect.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from device_sdk.core.failover import FailoverPolicy
from device_sdk.core.liveness import LivenessPolicy
from device_sdk.core.retry import RetryPolicy
from device_sdk.errors import ConfigError

if TYPE_CHECKING:  # the concierge package builds on this module
    from device_sdk.concierge.settings import ConciergeSettings

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
# The largest packet MQTT can express: a four-byte remaining length, plus its header.
_MQTT_MAX = 268_435_455 + 5
_HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def is_ip_literal(host: str) -> bool:
    """True when ``host`` is an IPv4 or IPv6 literal (dialled without DNS)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _check_fqdn(field_name: str, fqdn: str) -> None:
    name = fqdn.rstrip(".")
    if is_ip_literal(name):
        return
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ConfigError(field_name, fqdn, "a DNS name (letters, digits, '-', dots) or IP literal")


def _check_port(field_name: str, port: int) -> None:
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ConfigError(field_name, port, "an integer port from 1 to 65535")


def _check_positive(field_name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(field_name, value, "a number greater than 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsSettings:
    """How to authenticate a hub over TLS.

    The certificate is always verified against the hub's FQDN (SNI = FQDN),
    even though the SDK dials the address it resolved itself. There is no
    switch to turn verification off.
    """

    ca_file: str | None = None  # None: the system trust store
    client_cert_file: str | None = None
    client_key_file: str | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"

    def __post_init__(self) -> None:
        if self.min_version not in ("1.2", "1.3"):
            raise ConfigError("tls.min_version", self.min_version, "'1.2' or '1.3'")
        if (self.client_cert_file is None) != (self.client_key_file is None):
            raise ConfigError(
                "tls.client_key_file",
                self.client_key_file,
                "set together with tls.client_cert_file, or neither",
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class HubEndpoint:
    """One hub the device may connect to: a name, an FQDN and a port.

    The FQDN is resolved fresh on every attempt; the hub is never pinned to an IP.
    ``tls=None`` means plain MQTT (testbeds and closed networks only).
    """

    name: str
    fqdn: str
    port: int = 8883
    tls: TlsSettings | None = field(default_factory=TlsSettings)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _HUB_NAME.match(self.name):
            raise ConfigError("hub.name", self.name, "1-63 characters: letters, digits, _ . -")
        _check_fqdn(f"hubs[{self.name}].fqdn", self.fqdn)
        _check_port(f"hubs[{self.name}].port", self.port)

    @property
    def authority(self) -> str:
        """``fqdn:port``, the form MQTT 5 server references use."""
        return f"{self.fqdn}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsSettings:
    """Where and how hub names are resolved.

    An empty ``nameservers`` means the system's resolv.conf. Queries go to the
    nameservers directly, so no OS cache sits between the device and a DNS flip.
    """

    nameservers: tuple[str, ...] = ()
    port: int = 53
    timeout: float = 2.0  # per nameserver try
    lifetime: float = 4.0  # whole resolution, all tries
    ipv6: bool = True

    def __post_init__(self) -> None:
        for server in self.nameservers:
            if not is_ip_literal(server):
                raise ConfigError("dns.nameservers", server, "IP addresses of nameservers")
        _check_port("dns.port", self.port)
        _check_positive("dns.timeout", self.timeout)
        _check_positive("dns.lifetime", self.lifetime)


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    """MQTT user name and password. The password never appears in reprs or logs."""

    username: str
    password: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxSettings:
    """Where accepted messages wait for their PUBACK, and how much may wait.

    ``path=None`` keeps them in memory: they survive hub crashes and failovers,
    not the death of the process. A file path gives the durable SQLite outbox.
    ``synchronous="FULL"`` survives power loss; ``"NORMAL"`` survives a crash of
    the process but may lose the last commits on power loss (SQLite WAL).
    """

    path: str | None = None
    max_messages: int = 10_000
    max_bytes: int = 16 * 1024 * 1024
    overflow: Literal["reject", "drop_oldest"] = "reject"
    synchronous: Literal["FULL", "NORMAL"] = "FULL"

    def __post_init__(self) -> None:
        for name in ("max_messages", "max_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"outbox.{name}", value, "an integer of at least 1")
        if self.overflow not in ("reject", "drop_oldest"):
            raise ConfigError("outbox.overflow", self.overflow, "'reject' or 'drop_oldest'")
        if self.synchronous not in ("FULL", "NORMAL"):
            raise ConfigError("outbox.synchronous", self.synchronous, "'FULL' or 'NORMAL'")


@dataclass(frozen=True, slots=True, kw_only=True)
class SrvSettings:
    """Discover the ordered hub list from DNS SRV records, asked fresh before every attempt.

    ``_secure-mqtt._tcp.<domain>`` (TLS, with ``tls``) or ``_mqtt._tcp.<domain>``
    (plain). Priority orders the hubs and weight spreads a fleet within a
    priority (RFC 2782). When the lookup fails, the last list (at first, the
    configured ``hubs``) stays in use.
    """

    domain: str
    secure: bool = True
    tls: TlsSettings = field(default_factory=TlsSettings)

    def __post_init__(self) -> None:
        _check_fqdn("srv.domain", self.domain)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    """Everything one device client needs. Build once; it never changes."""

    client_id: str
    hubs: tuple[HubEndpoint, ...]
    dns: DnsSettings = field(default_factory=DnsSettings)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    failover: FailoverPolicy = field(default_factory=FailoverPolicy)
    liveness: LivenessPolicy = field(default_factory=LivenessPolicy)
    mqtt_version: Literal["3.1.1", "5"] = "5"
    credentials: Credentials | None = None
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    inflight_window: int = 20
    # While publish() is called in a stream, the engine waits up to this long
    # between sends so PUBLISHes and PUBACKs go in batches (0: never; a lone
    # message never waits). See Engine._batch_while_streaming.
    publish_batch_delay: float = 0.002
    failback_probe_interval: float = 30.0
    # > 0: ask the hub to keep the session this long, so a reconnect to the same hub
    # resumes it and in-flight messages are resent with DUP and their packet ids.
    session_expiry: int = 0
    # MQTT 5 user property carrying each message's stable id (for downstream dedup).
    message_id_property: str = "message-id"
    # Wrap payloads in a JSON envelope carrying the message id (for MQTT 3.1.1 consumers).
    envelope: bool = False
    # The largest MQTT packet the device accepts from a hub, in bytes. Checked from a
    # packet's fixed header, before its body is read or allocated, so a hostile or
    # broken hub cannot make a small board allocate hundreds of MB; MQTT 5 also
    # announces it in CONNECT (Maximum Packet Size), so a well-behaved hub never
    # sends more. 256 KiB covers Azure IoT Hub's and AWS IoT Core's largest messages.
    max_packet_size: int = 256 * 1024
    # MQTT 3.1.1 only (MQTT 5 hubs refuse a message in their PUBACK): a message after
    # which the hub drops the link this many times in a row is one it can never take.
    # It leaves the outbox as PoisonMessage rather than block the messages behind it.
    poison_after: int = 3
    # Ask a concierge which hub is active; None: the hub list alone decides.
    concierge: ConciergeSettings | None = None
    # Take the hub list from DNS SRV records; None: the configured hubs.
    srv: SrvSettings | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.client_id, str) or not 1 <= len(self.client_id) <= 128:
            raise ConfigError("client_id", self.client_id, "a string of 1 to 128 characters")
        if not self.hubs:
            raise ConfigError("hubs", self.hubs, "at least one HubEndpoint")
        names = [hub.name for hub in self.hubs]
        if len(set(names)) != len(names):
            raise ConfigError("hubs", names, "hub names that are unique")
        if self.mqtt_version not in ("3.1.1", "5"):
            raise ConfigError("mqtt_version", self.mqtt_version, "'3.1.1' or '5'")
        for name in ("inflight_window", "session_expiry"):
            value = getattr(self, name)
            minimum = 0 if name == "session_expiry" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(name, value, f"an integer of at least {minimum}")
        size = self.max_packet_size
        if isinstance(size, bool) or not isinstance(size, int) or not 128 <= size <= _MQTT_MAX:
            raise ConfigError(
                "max_packet_size", size, f"an integer of bytes from 128 to {_MQTT_MAX}"
            )
        poison = self.poison_after
        if isinstance(poison, bool) or not isinstance(poison, int) or not 1 <= poison <= 100:
            raise ConfigError("poison_after", poison, "an integer from 1 to 100")
        if self.inflight_window > 65535:
            raise ConfigError("inflight_window", self.inflight_window, "at most 65535")
        _check_positive("failback_probe_interval", self.failback_probe_interval)
        delay = self.publish_batch_delay
        if isinstance(delay, bool) or not isinstance(delay, int | float) or not 0 <= delay <= 0.1:
            raise ConfigError("publish_batch_delay", delay, "seconds from 0 to 0.1")
        if self.concierge is not None and self.srv is not None:
            raise ConfigError("srv", self.srv.domain, "unset when a concierge names the hubs")

    def hub(self, name: str) -> HubEndpoint:
        """The hub called ``name``; ConfigError when there is none."""
        for hub in self.hubs:
            if hub.name == name:
                return hub
        raise ConfigError("hub", name, f"one of {[h.name for h in self.hubs]}")

    @property
    def hub_names(self) -> tuple[str, ...]:
        return tuple(hub.name for hub in self.hubs)

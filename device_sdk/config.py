"""Frozen, keyword-only configuration values.

Everything a client needs is one :class:`ClientConfig`. Values validate
themselves when built, so a bad value fails at the boundary with a
:class:`~device_sdk.errors.ConfigError` naming the field, the value and what is
allowed, never deep inside a reconnect.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from device_sdk.core.failover import FailoverPolicy
from device_sdk.core.liveness import LivenessPolicy
from device_sdk.core.retry import RetryPolicy
from device_sdk.core.supervision import SupervisionPolicy
from device_sdk.core.topics import MAX_STRING_BYTES, check_mqtt_string, shown
from device_sdk.errors import ConfigError
from device_sdk.transports import ProxySettings, Transport

if TYPE_CHECKING:  # the concierge and identity packages build on this module
    from device_sdk.concierge.settings import ConciergeSettings
    from device_sdk.identity.provider import CredentialProvider, Identity
    from device_sdk.provisioning.settings import DpsSettings

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
# The largest packet MQTT can express: a four-byte remaining length, plus its header.
_MQTT_MAX = 268_435_455 + 5
_HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
# The longest wait or interval a setting may name. Far beyond any sensible value, and
# far below where a deadline computed from it overflows the OS's timers on the engine
# thread (which is why inf is refused too).
LONGEST_SECONDS = 30 * 24 * 3600.0
_MAX_SESSION_EXPIRY = 0xFFFF_FFFF  # a four-byte integer in CONNECT (MQTT 5 §3.1.2.11.2)


def is_ip_literal(host: str) -> bool:
    """True when ``host`` is an IPv4 or IPv6 literal (dialled without DNS)."""
    if not isinstance(host, str):  # ip_address() would take an int or 4 bytes
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _check_fqdn(field_name: str, fqdn: str) -> None:
    allowed = "a DNS name (letters, digits, '-', dots) or IP literal"
    if not isinstance(fqdn, str):
        raise ConfigError(field_name, fqdn, allowed)
    name = fqdn.rstrip(".")
    if is_ip_literal(name):
        return
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ConfigError(field_name, shown(fqdn), allowed)


def _check_port(field_name: str, port: int) -> None:
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ConfigError(field_name, port, "an integer port from 1 to 65535")


def check_seconds(field_name: str, value: object) -> None:
    """A finite number of seconds greater than 0 and at most LONGEST_SECONDS.

    ``bool`` is not a number; NaN fails every comparison, so the range is tested
    as one positive condition rather than as ``value <= 0``, which NaN would pass.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value <= LONGEST_SECONDS
    ):
        raise ConfigError(
            field_name, value, f"a number greater than 0, at most {LONGEST_SECONDS:g} seconds"
        )


def check_wait(field_name: str, value: object, *, none_ok: bool) -> None:
    """How long a call may block: seconds from 0 up to what the OS can wait, or None
    (no limit) where ``none_ok``."""
    if value is None and none_ok:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= threading.TIMEOUT_MAX
    ):
        unlimited = "None (no limit) or " if none_ok else ""
        raise ConfigError(
            field_name,
            value,
            f"{unlimited}a number of seconds from 0 to {threading.TIMEOUT_MAX:.0f}",
        )


def _check_bool(field_name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(field_name, value, "True or False")


def _check_instance(field_name: str, value: object, kind: type, *, none_ok: bool) -> None:
    if not (isinstance(value, kind) or (value is None and none_ok)):
        allowed = f"a {kind.__name__}" + (" or None" if none_ok else "")
        raise ConfigError(field_name, value, allowed)


def check_path(field_name: str, path: object) -> str:
    """``path`` as text the OS takes for a file name: a non-empty str without NUL,
    encodable in the file system's encoding (which takes the lone surrogates that
    stand for undecodable bytes of a name the OS listed)."""
    if not isinstance(path, str) or not path:
        raise ConfigError(field_name, path, "a file path (a non-empty str)")
    try:
        encodable = "\0" not in path and bool(os.fsencode(path))
    except UnicodeEncodeError:
        encodable = False
    if not encodable:
        raise ConfigError(
            field_name, shown(path), "a path without NUL, encodable in the file system's encoding"
        )
    return path


def check_readable_file(field_name: str, path: object) -> None:
    """``path`` names an existing, regular file this process may read.

    Checked when the settings are built, so a typo fails at start and names the
    field, not at the first dial on the engine thread. Only the file's existence
    and mode are checked, not its contents: the file is read again at every dial
    (certificates are rotated in place), so a bad one fails that dial anyway, and
    parsing a system-size CA bundle here would cost tens of ms on every build.
    """
    text = check_path(field_name, path)
    try:
        mode = os.stat(text).st_mode
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(
            field_name, shown(text), f"an existing, readable regular file (here: {reason})"
        ) from exc
    if not stat.S_ISREG(mode):
        raise ConfigError(
            field_name, shown(text), "a regular file (here: a directory, device or pipe)"
        )
    if not os.access(text, os.R_OK):
        raise ConfigError(field_name, shown(text), "a file this process may read (here: denied)")


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
    # ALPN protocols offered in the handshake, in order of preference. AWS IoT Core
    # takes MQTT with a client certificate on port 443 when offered "x-amzn-mqtt-ca";
    # empty: no ALPN extension.
    alpn_protocols: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.min_version not in ("1.2", "1.3"):
            raise ConfigError("tls.min_version", self.min_version, "'1.2' or '1.3'")
        alpn = self.alpn_protocols
        if not isinstance(alpn, tuple) or not all(
            isinstance(p, str) and 1 <= len(p) <= 255 and p.isascii() and p.isprintable()
            for p in alpn
        ):
            raise ConfigError(
                "tls.alpn_protocols", shown(str(alpn)), "a tuple of 1-255 character ASCII names"
            )
        if (self.client_cert_file is None) != (self.client_key_file is None):
            raise ConfigError(
                "tls.client_key_file",
                self.client_key_file,
                "set together with tls.client_cert_file, or neither",
            )
        for name in ("ca_file", "client_cert_file", "client_key_file"):
            path = getattr(self, name)
            if path is not None:
                check_readable_file(f"tls.{name}", path)
        if self.client_key_file is not None:
            check_private_key_file("tls.client_key_file", self.client_key_file)


def check_private_key_file(field_name: str, path: str) -> None:
    """Refuse a private key file that group or others may read (ConfigError).

    Why: a device key any local account can copy is an identity any local
    account can use; ssh refuses such keys for the same reason.
    """
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise ConfigError(
            field_name,
            shown(path),
            f"a key file only its owner may read (here mode {mode:04o}; chmod go= the file)",
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class HubEndpoint:
    """One hub the device may connect to: a name, an FQDN and a port.

    The FQDN is resolved fresh on every attempt; the hub is never pinned to an IP.
    ``tls=None`` means plain MQTT (testbeds and closed networks only).

    A hub may carry its own identity: ``credentials`` (a provider, or fixed
    :class:`Credentials`), ``client_id``, and a ``username`` template filled
    with ``{fqdn}``, ``{hub}`` and ``{client_id}`` when the provider gives no
    user name. Unset, the client's are used.

    ``transports``: the ways in, in order of preference (see
    :mod:`device_sdk.transports`); they race like addresses. Empty: one way,
    ``mqtts`` (or ``mqtt`` without TLS) on ``port``.
    """

    name: str
    fqdn: str
    port: int = 8883
    tls: TlsSettings | None = field(default_factory=TlsSettings)
    credentials: CredentialProvider | None = None
    client_id: str | None = None
    username: str | None = None
    transports: tuple[Transport, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _HUB_NAME.fullmatch(self.name):
            raise ConfigError(
                "hub.name", shown(self.name), "1-63 characters: letters, digits, _ . -"
            )
        _check_fqdn(f"hubs[{self.name}].fqdn", self.fqdn)
        _check_port(f"hubs[{self.name}].port", self.port)
        _check_instance(f"hubs[{self.name}].tls", self.tls, TlsSettings, none_ok=True)
        check_provider(f"hubs[{self.name}].credentials", self.credentials)
        if self.client_id is not None:
            _check_client_id(f"hubs[{self.name}].client_id", self.client_id)
        if self.username is not None:
            check_mqtt_string(f"hubs[{self.name}].username", self.username, allow_empty=True)
        self._check_transports()

    def _check_transports(self) -> None:
        where = f"hubs[{self.name}].transports"
        if not isinstance(self.transports, tuple):
            raise ConfigError(where, shown(self.transports), "a tuple of Transport values")
        for way in self.transports:
            _check_instance(where, way, Transport, none_ok=False)
            if way.secure != (self.tls is not None):
                allowed = "mqtts or wss (the hub has TLS settings)"
                if self.tls is None:
                    allowed = "mqtt or ws (the hub has tls=None)"
                raise ConfigError(where, way.label, allowed)
        labels = [way.label for way in self.transports]
        if len(set(labels)) != len(labels):
            raise ConfigError(where, labels, "ways in that differ from each other")

    @property
    def ways_in(self) -> tuple[Transport, ...]:
        """The transports to race, in order: the configured ones, or the one on ``port``."""
        if self.transports:
            return self.transports
        return (Transport(scheme="mqtts" if self.tls is not None else "mqtt", port=self.port),)

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
        if not isinstance(self.nameservers, tuple | list):
            raise ConfigError("dns.nameservers", self.nameservers, "a tuple of IP addresses")
        for server in self.nameservers:
            if not is_ip_literal(server):
                raise ConfigError("dns.nameservers", shown(server), "IP addresses of nameservers")
        _check_port("dns.port", self.port)
        check_seconds("dns.timeout", self.timeout)
        check_seconds("dns.lifetime", self.lifetime)
        _check_bool("dns.ipv6", self.ipv6)


def _check_client_id(field_name: str, client_id: object) -> None:
    if not isinstance(client_id, str) or not 1 <= len(client_id) <= 128:
        raise ConfigError(field_name, shown(client_id), "a string of 1 to 128 characters")
    check_mqtt_string(field_name, client_id)


def check_provider(field_name: str, provider: object) -> None:
    """``provider`` is None or has what a credential provider needs (ConfigError)."""
    if provider is None:
        return
    renewable = getattr(provider, "renewable", None)  # a property, or a plain attribute
    if not callable(getattr(provider, "identity_for", None)) or not isinstance(renewable, bool):
        raise ConfigError(
            field_name,
            type(provider).__name__,
            "Credentials, or a CredentialProvider (identity_for() and a bool renewable)",
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    """A fixed MQTT user name and password: the simplest credential provider.

    It is the same on every attempt, so a hub that refuses it is not asked
    again soon (``renewable`` is False). The password never appears in reprs
    or logs.
    """

    username: str
    password: str = field(default="", repr=False)
    renewable = False  # class constant: asking again gives the same password

    def identity_for(self, hub: HubEndpoint, *, client_id: str, after_refusal: bool) -> Identity:
        """The same user name and password for every hub and every attempt."""
        from device_sdk.identity.provider import Identity

        return Identity(username=self.username, password=self.password)

    def __post_init__(self) -> None:
        check_mqtt_string("credentials.username", self.username, allow_empty=True)
        # MQTT carries the password as binary data: any text that encodes is fine. The
        # error never shows it, nor chains the UnicodeEncodeError that holds it.
        hidden = "<hidden>"
        if not isinstance(self.password, str):
            raise ConfigError("credentials.password", hidden, "a string")
        try:
            size = len(self.password.encode("utf-8"))
        except UnicodeEncodeError:
            size = -1  # raised below, outside this handler, so nothing chains to it
        if size < 0:
            raise ConfigError(
                "credentials.password", hidden, "text encodable as UTF-8 (no lone surrogates)"
            )
        if size > MAX_STRING_BYTES:
            raise ConfigError("credentials.password", hidden, f"at most {MAX_STRING_BYTES} bytes")


def _check_presence(kind: str, topic: object, payload: object, qos: object, retain: object) -> None:
    from device_sdk.core.topics import check_topic_name

    check_topic_name(topic, field=f"{kind}.topic")
    if not isinstance(payload, bytes) or len(payload) > 65_535:
        raise ConfigError(f"{kind}.payload", "<payload>", "bytes, at most 65535")
    if qos not in (0, 1) or isinstance(qos, bool):
        raise ConfigError(f"{kind}.qos", qos, "0 or 1 (QoS 2 is not supported)")
    _check_bool(f"{kind}.retain", retain)


@dataclass(frozen=True, slots=True, kw_only=True)
class Will:
    """The Last Will the hub publishes when the device's link dies without a goodbye.

    Sent in every CONNECT, on every hub, after every failover. ``delay_interval``
    (MQTT 5) makes the hub wait that many seconds before publishing it, and not
    publish it at all if the device is back within them: set it above a
    failover's duration so a device that moved to another hub is not announced
    offline by the one it left. Retained by default, as presence topics are.
    """

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True
    delay_interval: int = 0

    def __post_init__(self) -> None:
        _check_presence("will", self.topic, self.payload, self.qos, self.retain)
        delay = self.delay_interval
        if isinstance(delay, bool) or not isinstance(delay, int) or not 0 <= delay <= 0xFFFFFFFF:
            raise ConfigError("will.delay_interval", delay, "whole seconds from 0 to 4294967295")


@dataclass(frozen=True, slots=True, kw_only=True)
class Birth:
    """A message published right after every successful connect, before the outbox drains:
    the "online" half of the presence pattern whose "offline" half is the :class:`Will`."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True

    def __post_init__(self) -> None:
        _check_presence("birth", self.topic, self.payload, self.qos, self.retain)


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
        if self.path is not None:
            check_path("outbox.path", self.path)
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
        _check_bool("srv.secure", self.secure)
        _check_instance("srv.tls", self.tls, TlsSettings, none_ok=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    """Everything one device client needs. Build once; it never changes."""

    client_id: str
    hubs: tuple[HubEndpoint, ...]
    dns: DnsSettings = field(default_factory=DnsSettings)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    failover: FailoverPolicy = field(default_factory=FailoverPolicy)
    liveness: LivenessPolicy = field(default_factory=LivenessPolicy)
    # How many internal faults, within how long, make the engine stop for good (visibly).
    supervision: SupervisionPolicy = field(default_factory=SupervisionPolicy)
    mqtt_version: Literal["3.1.1", "5"] = "5"
    # Asked before every attempt (fixed Credentials, a SAS or JWT provider, X.509 files);
    # a hub's own credentials win over these.
    credentials: CredentialProvider | None = None
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
    # Presence: the Last Will sent in every CONNECT, and the birth message after it.
    will: Will | None = None
    birth: Birth | None = None
    # When an inbound QoS 1 message is acknowledged: "after_handler" (the PUBACK goes
    # out once every handler returned, so a crash redelivers it: at least once) or
    # "on_receipt" (as soon as it arrives: at most once for the application).
    command_ack: Literal["after_handler", "on_receipt"] = "after_handler"
    # Ask Azure's Device Provisioning Service which hub the device belongs to (see
    # device_sdk.engine.hub_sources); None: the hub list alone decides.
    dps: DpsSettings | None = None
    # An HTTP CONNECT proxy for MQTT and the HTTPS side calls (concierge, DPS); None:
    # direct. ProxySettings.from_environment() takes it from HTTPS_PROXY/NO_PROXY.
    proxy: ProxySettings | None = None

    def __post_init__(self) -> None:
        _check_client_id("client_id", self.client_id)
        check_provider("credentials", self.credentials)
        self._check_hubs()
        self._check_parts()
        if self.mqtt_version not in ("3.1.1", "5"):
            raise ConfigError("mqtt_version", self.mqtt_version, "'3.1.1' or '5'")
        self._check_counts()
        check_seconds("failback_probe_interval", self.failback_probe_interval)
        delay = self.publish_batch_delay
        if isinstance(delay, bool) or not isinstance(delay, int | float) or not 0 <= delay <= 0.1:
            raise ConfigError("publish_batch_delay", delay, "seconds from 0 to 0.1")
        check_mqtt_string("message_id_property", self.message_id_property)
        if self.command_ack not in ("after_handler", "on_receipt"):
            raise ConfigError("command_ack", self.command_ack, "'after_handler' or 'on_receipt'")
        _check_bool("envelope", self.envelope)
        if self.concierge is not None and self.srv is not None:
            raise ConfigError("srv", self.srv.domain, "unset when a concierge names the hubs")

    def _check_hubs(self) -> None:
        if not isinstance(self.hubs, tuple | list) or not self.hubs:
            raise ConfigError("hubs", self.hubs, "at least one HubEndpoint")
        for hub in self.hubs:
            _check_instance("hubs", hub, HubEndpoint, none_ok=False)
        names = [hub.name for hub in self.hubs]
        if len(set(names)) != len(names):
            raise ConfigError("hubs", names, "hub names that are unique")

    def _check_parts(self) -> None:
        for name, kind, none_ok in (
            ("dns", DnsSettings, False),
            ("retry", RetryPolicy, False),
            ("failover", FailoverPolicy, False),
            ("liveness", LivenessPolicy, False),
            ("supervision", SupervisionPolicy, False),
            ("outbox", OutboxSettings, False),
            ("srv", SrvSettings, True),
            ("will", Will, True),
            ("birth", Birth, True),
            ("proxy", ProxySettings, True),
        ):
            _check_instance(name, getattr(self, name), kind, none_ok=none_ok)
        if self.concierge is not None:
            # Imported only here: the concierge package builds on this module.
            from device_sdk.concierge.settings import ConciergeSettings

            _check_instance("concierge", self.concierge, ConciergeSettings, none_ok=True)
        if self.dps is not None:
            # Imported only here: the provisioning package builds on this module.
            from device_sdk.provisioning.settings import DpsSettings

            _check_instance("dps", self.dps, DpsSettings, none_ok=True)
            if self.concierge is not None or self.srv is not None:
                # Each names the device's hubs; two would fight over the machine's home.
                raise ConfigError(
                    "dps", "DpsSettings(...)", "unset when a concierge or SRV names the hubs"
                )

    def _check_counts(self) -> None:
        for name, low, high in (
            ("inflight_window", 1, 65535),
            ("session_expiry", 0, _MAX_SESSION_EXPIRY),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(name, value, f"an integer of at least {low}")
            if value > high:
                raise ConfigError(name, value, f"at most {high}")
        size = self.max_packet_size
        if isinstance(size, bool) or not isinstance(size, int) or not 128 <= size <= _MQTT_MAX:
            raise ConfigError(
                "max_packet_size", size, f"an integer of bytes from 128 to {_MQTT_MAX}"
            )
        poison = self.poison_after
        if isinstance(poison, bool) or not isinstance(poison, int) or not 1 <= poison <= 100:
            raise ConfigError("poison_after", poison, "an integer from 1 to 100")

    def hub(self, name: str) -> HubEndpoint:
        """The hub called ``name``; ConfigError when there is none."""
        for hub in self.hubs:
            if hub.name == name:
                return hub
        raise ConfigError("hub", name, f"one of {[h.name for h in self.hubs]}")

    @property
    def hub_names(self) -> tuple[str, ...]:
        return tuple(hub.name for hub in self.hubs)

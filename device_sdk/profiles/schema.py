"""The one table of firmware profile keys, and the checks every value passes at load.

`SCHEMA` maps each dotted key (``section.key``) to its TOML type, the dataclass
field it sets and what it allows. The loader (:mod:`device_sdk.profiles`)
checks types here and leaves ranges to the dataclasses' own validation, so a
rule is written once. ``firmware_profiles/README.md`` holds `keys_markdown`'s
table, and a test keeps the two equal.

Units: seconds are numbers (an integer is a fine number of seconds), sizes
are integers of bytes. TOML has no null, so a key whose field may be ``None``
names a stand-in value (`Key.none_as`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from device_sdk.config import ClientConfig, DnsSettings, OutboxSettings, TlsSettings
from device_sdk.core.failover import FailoverPolicy
from device_sdk.core.liveness import LivenessPolicy
from device_sdk.core.retry import STRATEGIES, RetryPolicy
from device_sdk.core.supervision import SupervisionPolicy
from device_sdk.errors import ConfigError
from device_sdk.identity.sas import DEFAULT_TTL, SasTokenProvider

if TYPE_CHECKING:  # the concierge package loads cryptography; profiles need only the type
    from device_sdk.concierge.settings import ConciergeSettings
    from device_sdk.provisioning.settings import DpsSettings

__all__ = [
    "DEFAULT_EXPIRY_WARNING",
    "SCHEMA",
    "SECTIONS",
    "TLS_VERSIONS",
    "ConciergePolling",
    "IdentityTiming",
    "Key",
    "ProvisioningPacing",
    "builtin_default",
    "checked_value",
    "field_value",
    "keys_markdown",
    "one_of",
    "parsed_value",
    "schema_key",
    "shown",
    "toml_literal",
]

TLS_VERSIONS = ("1.2", "1.3")  # lowest first


@dataclass(frozen=True, slots=True, kw_only=True)
class ConciergePolling:
    """How often and how patiently a device asks its concierge: the profile's part of
    :class:`~device_sdk.concierge.settings.ConciergeSettings` (the deployment gives the
    URL and the trust)."""

    poll_interval: float = 300.0
    poll_jitter: float = 0.2
    timeout: float = 2.0

    def __post_init__(self) -> None:
        for name in ("poll_interval", "timeout"):
            value = getattr(self, name)
            if not _finite(value) or value <= 0:
                raise ConfigError(f"concierge.{name}", value, "seconds > 0")
        if not _finite(self.poll_jitter) or not 0 <= self.poll_jitter < 1:
            raise ConfigError("concierge.poll_jitter", self.poll_jitter, "a fraction in [0, 1)")

    def apply(self, settings: ConciergeSettings) -> ConciergeSettings:
        """``settings`` with this polling."""
        return dataclasses.replace(
            settings,
            poll_interval=self.poll_interval,
            poll_jitter=self.poll_jitter,
            timeout=self.timeout,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ProvisioningPacing:
    """How patiently and how sparsely a device asks DPS: the profile's part of
    :class:`~device_sdk.provisioning.settings.DpsSettings` (the deployment gives the
    id scope, the registration id and the attestation)."""

    timeout: float = 30.0
    poll_interval: float = 2.0
    backoff_initial: float = 5.0
    backoff_cap: float = 300.0

    def __post_init__(self) -> None:
        for name in ("timeout", "poll_interval", "backoff_initial", "backoff_cap"):
            value = getattr(self, name)
            if not _finite(value) or value <= 0:
                raise ConfigError(f"provisioning.{name}", value, "seconds > 0")
        if self.backoff_cap < self.backoff_initial:
            raise ConfigError(
                "provisioning.backoff_cap",
                self.backoff_cap,
                "at least provisioning.backoff_initial",
            )

    def apply(self, settings: DpsSettings) -> DpsSettings:
        """``settings`` with this pacing (its own checks run again)."""
        return dataclasses.replace(
            settings,
            timeout=self.timeout,
            poll_interval=self.poll_interval,
            backoff_initial=self.backoff_initial,
            backoff_cap=self.backoff_cap,
        )


# 14 days, as X509Files's DEFAULT_WARN_BEFORE (a test keeps them equal). Not imported from
# there: that module loads cryptography, which a device signing in with a token never needs.
DEFAULT_EXPIRY_WARNING = 14 * 24 * 3600.0
_MAX_EXPIRY_WARNING = 366 * 24 * 3600.0
_TTL_ALLOWED = "seconds from 1 to 2592000 (30 days)"  # SasTokenProvider's range
_WARNING_ALLOWED = f"seconds from 0 to {_MAX_EXPIRY_WARNING:.0f} (366 days)"
# The SasTokenProvider fields behind the identity keys, as its errors name them.
_SAS_FIELDS = {"sas.ttl": "identity.token_ttl", "sas.renew_margin": "identity.renew_margin"}


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentityTiming:
    """How long a profile's credentials live: the profile's part of a credential provider
    (the deployment gives the key or the certificate files).

    ``token_ttl`` is each minted SAS token's (or JWT's) life; ``renew_margin`` how
    long before its expiry the engine reconnects with a fresh one, make before break
    (None: SasTokenProvider's rule, a tenth of the life, at least 5 s but under half a
    short life); ``expiry_warning`` how long before a certificate expires the
    ``CredentialExpiring`` event fires.
    """

    token_ttl: float = DEFAULT_TTL
    renew_margin: float | None = None
    expiry_warning: float = DEFAULT_EXPIRY_WARNING

    def __post_init__(self) -> None:
        # Why a throwaway provider: the ttl and margin rules live in SasTokenProvider,
        # and a copy here would drift. Its callback is never called.
        try:
            SasTokenProvider(
                key_callback=_never_signs, ttl=self.token_ttl, renew_margin=self.renew_margin
            )
        except ConfigError as exc:
            field = _SAS_FIELDS.get(exc.field, exc.field)
            allowed = _TTL_ALLOWED if field == "identity.token_ttl" else exc.allowed
            raise ConfigError(field, exc.value, allowed.replace("ttl (", "token_ttl (")) from None
        warning = self.expiry_warning
        if not _finite(warning) or not 0 <= warning <= _MAX_EXPIRY_WARNING:
            raise ConfigError("identity.expiry_warning", warning, _WARNING_ALLOWED)

    @property
    def effective_renew_margin(self) -> float:
        """The margin a provider built from this timing renews at, the default rule applied."""
        return SasTokenProvider(
            key_callback=_never_signs, ttl=self.token_ttl, renew_margin=self.renew_margin
        ).renew_margin


def _never_signs(_to_sign: bytes) -> bytes:
    raise AssertionError("a throwaway provider that checks identity timing never signs")


Kind = Literal["bool", "int", "float", "str", "str_list"]
_KIND_TEXT: Mapping[Kind, str] = {
    "bool": "boolean",
    "int": "integer",
    "float": "number",
    "str": "string",
    "str_list": "array of strings",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Key:
    """One profile key: its TOML type, the dataclass field it sets and what it allows.

    ``none_as`` is the TOML value that stands for the field's ``None``:
    ``max_attempts = 0`` retries forever, ``path = ""`` keeps the outbox in memory.
    ``check`` is a range rule for the rare key whose owner does not check it.
    """

    kind: Kind
    owner: type
    field: str
    allowed: str
    meaning: str
    choices: tuple[str, ...] = ()
    none_as: object = None
    check: Callable[[Any], bool] | None = None


def _k(kind: Kind, owner: type, field: str, allowed: str, meaning: str, **more: Any) -> Key:
    return Key(kind=kind, owner=owner, field=field, allowed=allowed, meaning=meaning, **more)


_R, _F, _L, _D, _O = RetryPolicy, FailoverPolicy, LivenessPolicy, DnsSettings, OutboxSettings
_C, _P, _S, _I = ClientConfig, ConciergePolling, SupervisionPolicy, IdentityTiming
_V = ProvisioningPacing

SCHEMA: Mapping[str, Key] = MappingProxyType({
    "retry.strategy": _k("str", _R, "strategy", ", ".join(STRATEGIES),
                         "how the delay between connect attempts grows", choices=STRATEGIES),
    "retry.initial": _k("float", _R, "initial", "seconds >= 0 (> 0 when jittered)",
                        "first backoff delay (the delay itself for `fixed`)"),
    "retry.maximum": _k("float", _R, "maximum", "seconds >= retry.initial", "backoff cap"),
    "retry.multiplier": _k("float", _R, "multiplier", "a number >= 1",
                           "growth per failed attempt (exponential_jitter)"),
    "retry.long_delay": _k("float", _R, "long_delay", "seconds >= 0",
                           "wait when only hubs that refused us remain"),
    "retry.stable_after": _k("float", _R, "stable_after", "seconds >= 0",
                             "a link must stay up this long before the backoff resets"),
    "retry.max_attempts": _k("int", _R, "max_attempts", "an integer >= 1, or 0 for forever",
                             "give up after this many attempts", none_as=0),
    "retry.first_attempt_spread": _k("float", _R, "first_attempt_spread", "seconds >= 0",
                                     "first attempt after a lost link: uniform in [0, this]"),
    "retry.busy_initial": _k("float", _R, "busy_initial", "seconds >= 0",
                             "after n busy refusals a wait is up to this x multiplier^(n-1)"),
    "failover.failover_after_failures": _k("int", _F, "failover_after_failures", "an integer >= 1",
                                           "failed attempts on a hub before moving on"),
    "failover.failover_after_seconds": _k("float", _F, "failover_after_seconds", "seconds > 0",
                                          "or this long failing on one hub"),
    "failover.failback_dwell_seconds": _k("float", _F, "failback_dwell_seconds", "seconds >= 0",
                                          "least time away from home before failing back"),
    "failover.failback_healthy_probes": _k("int", _F, "failback_healthy_probes", "an integer >= 1",
                                           "healthy probes of home needed to fail back"),
    "failover.failback_probe_interval": _k("float", _C, "failback_probe_interval", "seconds > 0",
                                           "time between probes of home (spread +-50 %)"),
    "failover.permanent_penalty_seconds": _k("float", _F, "permanent_penalty_seconds",
                                             "seconds >= 0", "how long a refusing hub is skipped"),
    "failover.stable_after_seconds": _k("float", _F, "stable_after_seconds", "seconds >= 0",
                                        "uptime after which failure streaks are forgotten"),
    "liveness.keepalive": _k("float", _L, "keepalive", "seconds in (0, 65535]", "MQTT keepalive"),
    "liveness.idle_probe_after": _k("float", _L, "idle_probe_after",
                                    "seconds in (0, keepalive], or 0 for keepalive / 2",
                                    "hub silence before we send our own PINGREQ", none_as=0),
    "liveness.deadline_floor": _k("float", _L, "deadline_floor", "seconds > 0",
                                  "lowest RTT-derived ack/ping deadline"),
    "liveness.deadline_ceiling": _k("float", _L, "deadline_ceiling", "seconds >= deadline_floor",
                                    "highest RTT-derived ack/ping deadline"),
    "liveness.initial_deadline": _k("float", _L, "initial_deadline",
                                    "seconds in [deadline_floor, deadline_ceiling]",
                                    "ack/ping deadline before any RTT is measured"),
    "liveness.deadline_rtt_multiple": _k("float", _L, "deadline_rtt_multiple",
                                         "a number from 0 (off) to 100",
                                         "ack/ping deadline at least this many smoothed RTTs"),
    "liveness.connect_timeout": _k("float", _L, "connect_timeout", "seconds > 0",
                                   "per attempt: TCP, TLS and CONNACK"),
    "dns.nameservers": _k("str_list", _D, "nameservers", "IP addresses; [] for resolv.conf",
                          "nameservers asked directly (no OS cache)"),
    "dns.port": _k("int", _D, "port", "an integer port from 1 to 65535", "nameserver port"),
    "dns.timeout": _k("float", _D, "timeout", "seconds > 0", "per nameserver try"),
    "dns.lifetime": _k("float", _D, "lifetime", "seconds > 0", "whole resolution, all tries"),
    "dns.ipv6": _k("bool", _D, "ipv6", "true or false", "also ask for AAAA records"),
    "outbox.path": _k("str", _O, "path", 'a file path, or "" to keep the outbox in memory',
                      "durable SQLite outbox file", none_as=""),
    "outbox.max_messages": _k("int", _O, "max_messages", "an integer >= 1",
                              "messages that may wait for a PUBACK"),
    "outbox.max_bytes": _k("int", _O, "max_bytes", "an integer >= 1 (bytes)",
                           "payload bytes that may wait for a PUBACK"),
    "outbox.overflow": _k("str", _O, "overflow", "reject or drop_oldest",
                          "what a full outbox does", choices=("reject", "drop_oldest")),
    "outbox.synchronous": _k("str", _O, "synchronous", "FULL or NORMAL",
                             "FULL survives power loss; NORMAL a crash, with fewer writes",
                             choices=("FULL", "NORMAL")),
    "tls.min_version": _k("str", TlsSettings, "min_version", '"1.2" or "1.3"',
                          "lowest TLS version for every hub", choices=TLS_VERSIONS),
    "tls.alpn_protocols": _k("str_list", TlsSettings, "alpn_protocols",
                             "an array of ALPN protocol names, 1-255 ASCII each; [] for none",
                             "ALPN offered to every TLS hub that names none itself"),
    "mqtt.version": _k("str", _C, "mqtt_version", '"3.1.1" or "5"', "MQTT protocol version",
                       choices=("3.1.1", "5")),
    "mqtt.inflight_window": _k("int", _C, "inflight_window", "an integer from 1 to 65535",
                               "QoS 1 messages in flight at once"),
    "mqtt.publish_batch_delay": _k("float", _C, "publish_batch_delay", "seconds from 0 to 0.1",
                                   "pause between sends while publishing in a stream (0: none)"),
    "mqtt.session_expiry": _k("int", _C, "session_expiry", "seconds from 0 to 4294967295",
                              "session kept by the hub across reconnects (0: none)",
                              check=lambda v: v <= 0xFFFFFFFF),  # a 4-byte MQTT 5 property
    "mqtt.max_packet_size": _k("int", _C, "max_packet_size",
                               "an integer of bytes from 128 to 268435460",
                               "largest packet accepted from a hub (announced in CONNECT)"),
    "mqtt.poison_after": _k("int", _C, "poison_after", "an integer from 1 to 100",
                            "MQTT 3.1.1: drops in a row that make a message undeliverable"),
    "concierge.poll_interval": _k("float", _P, "poll_interval", "seconds > 0",
                                  "time between concierge polls while connected"),
    "concierge.poll_jitter": _k("float", _P, "poll_jitter", "a fraction in [0, 1)",
                                "spread of each poll interval, so a fleet does not poll at once"),
    "concierge.timeout": _k("float", _P, "timeout", "seconds > 0", "per concierge request"),
    "supervision.max_faults": _k("int", _S, "max_faults", "an integer from 1 to 1000",
                                 "internal faults within the window that stop the engine"),
    "supervision.window": _k("float", _S, "window", "seconds > 0, finite",
                             "how far back internal faults are counted"),
    "identity.token_ttl": _k("float", _I, "token_ttl", _TTL_ALLOWED,
                             "life of each minted SAS token or JWT"),
    "identity.renew_margin": _k("float", _I, "renew_margin",
                                "seconds > 0 and < identity.token_ttl, or 0 for a tenth of "
                                "the TTL (at least 5 s, under half a short TTL)",
                                "renew a token this long before it expires, make before break",
                                none_as=0),
    "identity.expiry_warning": _k("float", _I, "expiry_warning", _WARNING_ALLOWED,
                                  "CredentialExpiring fires this long before a certificate "
                                  "expires"),
    "provisioning.timeout": _k("float", _V, "timeout", "seconds > 0",
                               "one whole DPS registration, polls included"),
    "provisioning.poll_interval": _k("float", _V, "poll_interval", "seconds > 0",
                                     "between status polls when DPS names no Retry-After"),
    "provisioning.backoff_initial": _k("float", _V, "backoff_initial", "seconds > 0",
                                       "first wait before asking DPS again (full jitter)"),
    "provisioning.backoff_cap": _k("float", _V, "backoff_cap",
                                   "seconds >= provisioning.backoff_initial",
                                   "longest wait between DPS registrations (DPS throttles fleets)"),
})  # fmt: skip

SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(dotted.split(".")[0] for dotted in SCHEMA))


def builtin_default(key: Key) -> object:
    """The key's built-in default (its owner's field default), as TOML would hold it."""
    default = next(f.default for f in dataclasses.fields(key.owner) if f.name == key.field)
    if default is None:
        return key.none_as
    return tuple(default) if isinstance(default, list | tuple) else default


def field_value(key: Key, value: object) -> object:
    """The dataclass field value for a TOML-level value (``none_as`` becomes None)."""
    if key.none_as is not None and value == key.none_as:  # types were checked: 0 == 0.0 only
        return None
    return value


def schema_key(dotted: str, value: object, source: str) -> Key:
    """The schema entry for ``dotted``; an unknown key fails naming the keys of its section."""
    key = SCHEMA.get(dotted)
    if key is None:
        section = dotted.partition(".")[0]
        names = [name for name in SCHEMA if name.startswith(f"{section}.")] or list(SCHEMA)
        raise ConfigError(dotted, shown(value), one_of(dotted, names, "keys"), source=source)
    return key


def checked_value(dotted: str, value: object, source: str) -> object:
    """``value`` with its TOML type (and choices) checked; ints widen to floats.

    Ranges are left to the owning dataclass, so each rule lives in one place.
    """
    key = schema_key(dotted, value, source)
    if not _type_ok(key.kind, value):
        allowed = f"{key.allowed}; got a TOML {_toml_type(value)}"
        raise ConfigError(dotted, value, allowed, source=source)
    if key.choices and value not in key.choices:
        raise ConfigError(dotted, value, key.allowed, source=source)
    if key.check is not None and not key.check(value):
        raise ConfigError(dotted, value, key.allowed, source=source)
    if isinstance(value, int | float) and key.kind == "float":
        return float(value)
    return tuple(value) if isinstance(value, list) else value


_BOOL_TEXT = {"true": True, "yes": True, "on": True, "1": True}
_BOOL_TEXT.update({"false": False, "no": False, "off": False, "0": False})


def parsed_value(dotted: str, text: str, source: str) -> object:
    """Text (an environment variable, ``--set``) converted to the key's type, then checked.

    Arrays are comma-separated; booleans are true/false, yes/no, on/off or 1/0.
    """
    key = schema_key(dotted, text, source)
    value: object = text
    try:
        if key.kind == "int":
            value = int(text)
        elif key.kind == "float":
            value = float(text)
        elif key.kind == "str_list":
            value = [part.strip() for part in text.split(",") if part.strip()]
        elif key.kind == "bool":
            value = _BOOL_TEXT[text.strip().lower()]
    except (ValueError, KeyError):
        raise ConfigError(dotted, text, f"{key.allowed}, as text", source=source) from None
    return checked_value(dotted, value, source)


def _type_ok(kind: Kind, value: object) -> bool:
    if kind == "bool" or isinstance(value, bool):  # a TOML boolean is never a number
        return kind == "bool" and isinstance(value, bool)
    if kind == "float":
        return isinstance(value, int | float) and math.isfinite(value)
    if kind == "str_list":
        return isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
    return isinstance(value, int if kind == "int" else str)


def _toml_type(value: object) -> str:
    """The TOML name of a value's type, for "got a TOML ..." in messages."""
    if isinstance(value, float) and not math.isfinite(value):
        return "non-finite float"
    names = {bool: "boolean", int: "integer", float: "float", str: "string", dict: "table"}
    return names.get(type(value), "array" if isinstance(value, list | tuple) else "value")


def one_of(name: str, names: Sequence[str], what: str) -> str:
    """ "one of the keys: a, b, c; did you mean 'b'?" for an unknown name."""
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"one of the {what}: {', '.join(names)}{hint}"


def shown(value: object) -> object:
    """A value for a message: a whole table would drown the line."""
    return "{...}" if isinstance(value, dict) else value


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def keys_markdown() -> str:
    """The README's key table, generated from `SCHEMA` (a test keeps the README equal to it)."""
    rows = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for dotted, key in SCHEMA.items():
        default = toml_literal(builtin_default(key))
        cells = (f"`{dotted}`", _KIND_TEXT[key.kind], f"`{default}`", key.allowed, key.meaning)
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows)


def toml_literal(value: object) -> str:
    """``value`` as TOML writes it (for the docs and ``profile show``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    return repr(value)

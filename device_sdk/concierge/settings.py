"""How a device uses its concierge: where it is, whom to trust, how often to ask."""

from __future__ import annotations

from dataclasses import dataclass, field

from device_sdk.concierge.document import MAX_ENVELOPE_BYTES
from device_sdk.concierge.fetch import _split_url
from device_sdk.concierge.trust import ConciergeTrust
from device_sdk.config import (
    LONGEST_SECONDS,
    TlsSettings,
    check_path,
    check_readable_file,
)
from device_sdk.core.topics import check_mqtt_string
from device_sdk.errors import ConfigError


@dataclass(frozen=True, slots=True, kw_only=True)
class ConciergeSettings:
    """The concierge a device asks which hub is active.

    The device asks at start, at the beginning of every reconnect cycle (in
    parallel with its first attempt, so a slow concierge never delays recovery)
    and every ``poll_interval`` seconds while connected, jittered by
    ``poll_jitter`` (a fraction) so a fleet does not poll in lockstep.

    ``state_file`` keeps the last accepted sequence across reboots, so an old
    document replayed after a restart is still refused; ``None`` keeps it in
    memory only. Hubs a document adds get ``hub_tls``; a document may name a
    plain-MQTT hub only with ``allow_plain_hubs`` (never let a document
    downgrade a device to cleartext by default).
    """

    url: str
    trust: ConciergeTrust
    poll_interval: float = 300.0
    poll_jitter: float = 0.2
    timeout: float = 2.0
    max_bytes: int = MAX_ENVELOPE_BYTES
    ca_file: str | None = None
    allow_plain_http: bool = False
    state_file: str | None = None
    hub_tls: TlsSettings = field(default_factory=TlsSettings)
    allow_plain_hubs: bool = False

    def __post_init__(self) -> None:
        for flag in ("allow_plain_http", "allow_plain_hubs"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"concierge.{flag}", getattr(self, flag), "True or False")
        if not isinstance(self.url, str):
            raise ConfigError("concierge.url", self.url, "an https:// URL")
        check_mqtt_string("concierge.url", self.url)  # it goes into the request line
        _split_url(self.url, self.allow_plain_http)  # the fetcher's own rule: raises ConfigError
        if not isinstance(self.trust, ConciergeTrust):
            raise ConfigError("concierge.trust", self.trust, "a ConciergeTrust")
        for name in ("poll_interval", "timeout"):
            value = getattr(self, name)
            # One positive range test: NaN fails it, where ``value <= 0`` would let NaN in.
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 < value <= LONGEST_SECONDS
            ):
                raise ConfigError(
                    f"concierge.{name}",
                    value,
                    f"a number of seconds > 0, at most {LONGEST_SECONDS:g}",
                )
        jitter = self.poll_jitter
        if isinstance(jitter, bool) or not isinstance(jitter, int | float) or not 0 <= jitter < 1:
            raise ConfigError("concierge.poll_jitter", jitter, "a fraction in [0, 1)")
        size = self.max_bytes
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError("concierge.max_bytes", size, "an integer >= 1")
        if self.ca_file is not None:
            check_readable_file("concierge.ca_file", self.ca_file)
        if self.state_file is not None:
            check_path("concierge.state_file", self.state_file)
        if not isinstance(self.hub_tls, TlsSettings):
            raise ConfigError("concierge.hub_tls", self.hub_tls, "a TlsSettings")

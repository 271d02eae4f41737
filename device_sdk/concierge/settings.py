"""How a device uses its concierge: where it is, whom to trust, how often to ask."""

from __future__ import annotations

from dataclasses import dataclass, field

from device_sdk.concierge.document import MAX_ENVELOPE_BYTES
from device_sdk.concierge.trust import ConciergeTrust
from device_sdk.config import TlsSettings
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
        for name in ("poll_interval", "timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"concierge.{name}", value, "a number of seconds > 0")
        if not isinstance(self.poll_jitter, int | float) or not 0 <= self.poll_jitter < 1:
            raise ConfigError("concierge.poll_jitter", self.poll_jitter, "a fraction in [0, 1)")

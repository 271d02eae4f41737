"""How a device asks Azure's Device Provisioning Service (DPS) for its hub."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from device_sdk.concierge.trust import check_hub_pattern
from device_sdk.config import (
    TlsSettings,
    check_path,
    check_private_key_file,
    check_readable_file,
    check_seconds,
)
from device_sdk.core.topics import shown
from device_sdk.errors import ConfigError
from device_sdk.identity.sas import decode_key
from device_sdk.transports import Transport

__all__ = ["DEFAULT_ENDPOINT", "DpsSettings"]

DEFAULT_ENDPOINT = "global.azure-devices-provisioning.net"
# DPS's rule: up to 128 characters, alphanumerics and ". _ - :", no special character
# at either end (a trailing '-' is tolerated by the service, so it is here too).
_REGISTRATION_ID = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._:-]{0,126}[A-Za-z0-9-])?")
_ID_SCOPE = re.compile(r"[A-Za-z0-9]{1,64}")
_API_VERSION = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:-preview)?")
_HOST = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")


# The host names of IoT Hub in Azure's public and national clouds.
IOT_HUB_DOMAINS = (
    "*.azure-devices.net",
    "*.azure-devices.cn",
    "*.azure-devices.us",
    "*.azure-devices.de",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class DpsSettings:
    """Where DPS is, who the device is to it, and how the hub it names is reached.

    Attestation is exactly one of: ``sas_key`` (the device's symmetric key as
    base64 text, as the portal shows it; a group enrollment's device key is
    derived beforehand with :func:`device_sdk.identity.sas.derive_device_key`),
    ``sas_key_file`` (a file holding that text, mode 0600 or stricter, re-read on
    every run) or ``cert_file`` + ``key_file`` (X.509: the TLS client certificate,
    key file 0600 or stricter, re-read on every run).

    ``endpoint``/``port`` is the DPS host (its certificate is verified against
    that name, with ``ca_file`` or the system store). One provisioning run (the
    registration and every poll of its operation) ends within ``timeout``;
    ``poll_interval`` is the wait between polls when DPS sends no Retry-After.
    Runs after a failed or fruitless one wait a random time in
    ``[0, min(backoff_cap, backoff_initial * 2**n))`` (full jitter): DPS throttles
    fleets that re-provision in step.

    ``state_path`` keeps the last assignment (JSON, 0600) so a reboot connects
    without asking DPS again; ``None`` keeps it in memory only. The assigned
    hub is dialled on ``hub_port`` with ``hub_tls`` (``None``: plain MQTT, for
    testbeds only).

    ``allowed_hubs`` bounds what DPS may name, as the concierge's allow-list does:
    exact FQDNs or ``*.suffix`` patterns. The default takes IoT Hub's public
    clouds' host names only; an assignment outside it is refused as
    ProvisioningFailed and the device keeps its last hub.
    """

    id_scope: str
    registration_id: str
    endpoint: str = DEFAULT_ENDPOINT
    port: int = 443
    sas_key: str | None = field(default=None, repr=False)
    sas_key_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None
    state_path: str | None = None
    timeout: float = 30.0
    poll_interval: float = 2.0
    api_version: str = "2021-06-01"
    sas_ttl: float = 3600.0
    backoff_initial: float = 5.0
    backoff_cap: float = 300.0
    hub_port: int = 8883
    hub_tls: TlsSettings | None = field(default_factory=TlsSettings)
    # The assigned hub's ways in (e.g. mqtts:8883 then wss:443 at IoT Hub's WebSocket
    # path); empty: one, on hub_port.
    hub_transports: tuple[Transport, ...] = ()
    allowed_hubs: tuple[str, ...] = IOT_HUB_DOMAINS

    def __post_init__(self) -> None:
        self._check_names()
        if not isinstance(self.allowed_hubs, tuple) or not self.allowed_hubs:
            raise ConfigError(
                "dps.allowed_hubs", self.allowed_hubs, "a non-empty tuple of hub name patterns"
            )
        for pattern in self.allowed_hubs:
            check_hub_pattern("dps.allowed_hubs", pattern)
        self._check_attestation()
        for name in ("timeout", "poll_interval", "sas_ttl", "backoff_initial", "backoff_cap"):
            check_seconds(f"dps.{name}", getattr(self, name))
        if self.backoff_cap < self.backoff_initial:
            raise ConfigError(
                "dps.backoff_cap",
                self.backoff_cap,
                f"at least backoff_initial ({self.backoff_initial:g})",
            )
        if self.ca_file is not None:
            check_readable_file("dps.ca_file", self.ca_file)
        if self.state_path is not None:
            check_path("dps.state_path", self.state_path)
        if self.hub_tls is not None and not isinstance(self.hub_tls, TlsSettings):
            raise ConfigError("dps.hub_tls", self.hub_tls, "a TlsSettings, or None for plain MQTT")
        if not isinstance(self.hub_transports, tuple) or not all(
            isinstance(way, Transport) and way.secure == (self.hub_tls is not None)
            for way in self.hub_transports
        ):
            raise ConfigError(
                "dps.hub_transports",
                self.hub_transports,
                "Transport values, secure (mqtts, wss) exactly when hub_tls is set",
            )
        for name in ("port", "hub_port"):
            port = getattr(self, name)
            if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
                raise ConfigError(f"dps.{name}", port, "an integer port from 1 to 65535")

    def _check_names(self) -> None:
        if not isinstance(self.id_scope, str) or not _ID_SCOPE.fullmatch(self.id_scope):
            raise ConfigError("dps.id_scope", shown(self.id_scope), "1-64 letters and digits")
        rid = self.registration_id
        if not isinstance(rid, str) or not _REGISTRATION_ID.fullmatch(rid):
            raise ConfigError(
                "dps.registration_id",
                shown(rid),
                "1-128 characters: letters, digits and . _ - :, starting alphanumeric",
            )
        host = self.endpoint
        if not isinstance(host, str) or len(host) > 253 or not _HOST.fullmatch(host):
            raise ConfigError(
                "dps.endpoint", shown(host), "a DNS host name such as " + DEFAULT_ENDPOINT
            )
        version = self.api_version
        if not isinstance(version, str) or not _API_VERSION.fullmatch(version):
            raise ConfigError("dps.api_version", shown(version), "a date such as '2021-06-01'")

    def _check_attestation(self) -> None:
        x509 = self.cert_file is not None or self.key_file is not None
        chosen = [self.sas_key is not None, self.sas_key_file is not None, x509]
        if sum(chosen) != 1:
            raise ConfigError(
                "dps.attestation",
                "<hidden>" if self.sas_key is not None else None,
                "exactly one of sas_key, sas_key_file, or cert_file with key_file",
            )
        if self.sas_key is not None:
            _check_key_text(self.sas_key)
        if self.sas_key_file is not None:
            check_readable_file("dps.sas_key_file", self.sas_key_file)
            check_private_key_file("dps.sas_key_file", self.sas_key_file)
        if x509:
            if self.cert_file is None or self.key_file is None:
                raise ConfigError(
                    "dps.key_file", self.key_file, "set together with dps.cert_file, or neither"
                )
            check_readable_file("dps.cert_file", self.cert_file)
            check_readable_file("dps.key_file", self.key_file)
            check_private_key_file("dps.key_file", self.key_file)

    @property
    def uses_x509(self) -> bool:
        """True when the device proves itself with its TLS client certificate."""
        return self.cert_file is not None


def _check_key_text(key: object) -> None:
    """The key decodes as base64; the error never shows it, nor chains to it."""
    ok = isinstance(key, str)
    if ok:
        try:
            decode_key(str(key).strip())
        except ConfigError:
            ok = False
    if not ok:
        raise ConfigError(
            "dps.sas_key", "<hidden>", "the key as base64 text, as the portal shows it"
        )

"""The hub DPS assigned, and where it is kept between boots.

A device that was provisioned once connects at the next boot without asking
DPS again: DPS is a throttled, regional service, and a fleet that re-registers
on every reboot (say after a power cut across a site) is exactly what it
throttles. So the assignment is kept on disk, replaced atomically (a power cut
leaves the old file or the new one) and private (0600, in a 0700 folder the
store creates). A damaged or foreign file is reported and treated as absent:
the device provisions again instead of failing to start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from device_sdk.atomic_file import write_file_atomically
from device_sdk.config import _check_fqdn, is_ip_literal
from device_sdk.core.topics import shown
from device_sdk.errors import ConfigError

__all__ = ["Assignment", "AssignmentStore", "check_assignment"]

log = logging.getLogger("device_sdk")

_FORMAT = 1
_MAX_FILE_BYTES = 16 * 1024  # an assignment is ~200 bytes; anything this big is not one
_MAX_DEVICE_ID = 128


@dataclass(frozen=True, slots=True, kw_only=True)
class Assignment:
    """DPS's answer: the hub's FQDN, the device id there, and when (Unix seconds)."""

    hub_fqdn: str
    device_id: str
    assigned_at: float

    def __post_init__(self) -> None:
        check_assignment(self.hub_fqdn, self.device_id)
        at = self.assigned_at
        if isinstance(at, bool) or not isinstance(at, int | float) or not 0 <= at < 2**33:
            raise ConfigError("assignment.assigned_at", at, "Unix seconds")


def check_assignment(hub_fqdn: object, device_id: object) -> None:
    """ConfigError unless ``hub_fqdn`` is a DNS name and ``device_id`` a usable MQTT client id.

    An IP literal is refused too: IoT Hub is always named, and its certificate
    is verified against that name.
    """
    if not isinstance(hub_fqdn, str) or is_ip_literal(hub_fqdn) or "." not in hub_fqdn:
        raise ConfigError("assignment.hub_fqdn", shown(hub_fqdn), "a DNS name with a domain")
    _check_fqdn("assignment.hub_fqdn", hub_fqdn)
    if (
        not isinstance(device_id, str)
        or not 1 <= len(device_id) <= _MAX_DEVICE_ID
        or not device_id.isprintable()
        or not device_id.isascii()
    ):
        raise ConfigError(
            "assignment.device_id", shown(device_id), "1-128 printable ASCII characters"
        )


class AssignmentStore:
    """Keeps one :class:`Assignment` in a JSON file at ``path``."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def load(self) -> Assignment | None:
        """The kept assignment; None when there is none or the file is unusable (logged)."""
        try:
            with open(self.path, "rb") as file:
                raw = file.read(_MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning(
                "DPS assignment %s cannot be read (%s); provisioning again", self.path, exc.strerror
            )
            return None
        try:
            return _parse(raw)
        except (ValueError, ConfigError, RecursionError) as exc:
            # A torn write cannot happen (atomic replace), but a disk error or a hand edit can.
            log.warning("DPS assignment %s is damaged (%s); provisioning again", self.path, exc)
            return None

    def save(self, assignment: Assignment) -> None:
        """Replace the kept assignment atomically (0600; its folder 0700 when created).

        Raises OSError.
        """
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        document = {
            "format": _FORMAT,
            "hub_fqdn": assignment.hub_fqdn,
            "device_id": assignment.device_id,
            "assigned_at": assignment.assigned_at,
        }
        write_file_atomically(self.path, json.dumps(document).encode(), mode=0o600)

    def forget(self) -> None:
        """Remove the kept assignment (absent already is fine). Raises OSError."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _parse(raw: bytes) -> Assignment:
    if len(raw) > _MAX_FILE_BYTES:
        raise ValueError(f"more than {_MAX_FILE_BYTES} bytes")
    document = json.loads(raw.decode("utf-8"))
    if not isinstance(document, dict) or document.get("format") != _FORMAT:
        raise ValueError("not an assignment of a format this SDK writes")
    at = document.get("assigned_at")
    if isinstance(at, bool) or not isinstance(at, int | float):
        raise ValueError("assigned_at is not a number")
    return Assignment(
        hub_fqdn=document.get("hub_fqdn"),  # type: ignore[arg-type]  # checked by Assignment
        device_id=document.get("device_id"),  # type: ignore[arg-type]
        assigned_at=float(at),
    )

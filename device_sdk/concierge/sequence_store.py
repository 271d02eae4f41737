"""The last accepted concierge sequence, kept on disk so that a reboot does not reopen replay.

Without it, a device that restarts would accept any old, still-unexpired
document an attacker recorded earlier, and be rolled back to a hub the
operator already left.

The file is small JSON, ``{"format": 1, "last_sequence": 42}``, replaced
atomically (temporary file in the same directory, fsync, rename, fsync of the
directory): after a crash or power loss it holds the old value or the new one,
never a torn mix.

A file that exists but cannot be read as a sequence is **not** treated as
missing. Treating it as missing would silently reopen replay, which is what an
attacker with write access to the disk, or a failing SD card, would want.
:meth:`SequenceStore.load` and :meth:`SequenceStore.save` raise
:class:`~device_sdk.errors.ConciergeError` instead, and never overwrite the file.
The client then stops trusting concierge documents (a security event) and
works from its own hub list, which is always safe, until an operator inspects
the file and deletes or repairs it.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from device_sdk.atomic_file import write_file_atomically
from device_sdk.concierge.document import MAX_SAFE_INTEGER
from device_sdk.errors import ConciergeError, ConfigError

__all__ = ["SequenceStore"]

_FORMAT = 1
_MAX_FILE_BYTES = 4096


class SequenceStore:
    """Persists the last accepted concierge document sequence at ``path``.

    ``load()`` is None while nothing was ever accepted (no file). ``save()``
    only ever moves the sequence forward. Both raise
    :class:`~device_sdk.errors.ConciergeError` when the file is unreadable or
    corrupt; see the module docstring for why that refuses rather than resets.
    Persist a document's sequence *before* acting on the document: if saving
    fails, the document must not be used.
    """

    def __init__(self, path: Path | str) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self._path

    def load(self) -> int | None:
        """The last accepted sequence, or None when none was ever saved."""
        with self._lock:
            return self._load()

    def save(self, sequence: int) -> None:
        """Record ``sequence`` as accepted. Equal to the stored one: nothing to write."""
        if isinstance(sequence, bool) or not isinstance(sequence, int):
            raise ConfigError("sequence", sequence, "an integer")
        if not 0 <= sequence <= MAX_SAFE_INTEGER:
            raise ConfigError("sequence", sequence, "0 to 2**53 - 1")
        with self._lock:
            current = self._load()
            if current is not None and sequence <= current:
                if sequence < current:
                    raise ConciergeError(
                        f"refusing to move the concierge sequence in {self._path} back "
                        f"from {current} to {sequence}"
                    )
                return
            self._write(sequence)

    def _load(self) -> int | None:
        try:
            with self._path.open("rb") as file:
                data = file.read(_MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConciergeError(
                f"cannot read the concierge sequence file {self._path}: {exc.strerror}; "
                "concierge documents are refused until it can be read"
            ) from exc
        return self._parse(data)

    def _parse(self, data: bytes) -> int:
        sequence = _sequence_in(data)
        if sequence is None:
            raise ConciergeError(
                f"the concierge sequence file {self._path} is corrupt; concierge documents "
                "are refused (the device uses its own hub list) until an operator checks "
                "the file and deletes it"
            )
        return sequence

    def _write(self, sequence: int) -> None:
        data = json.dumps({"format": _FORMAT, "last_sequence": sequence}).encode() + b"\n"
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            write_file_atomically(self._path, data)
        except OSError as exc:
            raise ConciergeError(
                f"cannot persist the concierge sequence to {self._path}: {exc.strerror or exc}"
            ) from exc


def _sequence_in(data: bytes) -> int | None:
    """The sequence a store file holds, or None when it is not a valid store file."""
    if len(data) > _MAX_FILE_BYTES:
        return None
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or absurdly nested
        return None
    if not isinstance(value, dict) or set(value) != {"format", "last_sequence"}:
        return None
    version, sequence = value["format"], value["last_sequence"]
    if type(version) is not int or version != _FORMAT or type(sequence) is not int:
        return None
    return sequence if 0 <= sequence <= MAX_SAFE_INTEGER else None

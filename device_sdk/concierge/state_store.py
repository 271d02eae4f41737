"""Where the reference concierge keeps its state: a file, or etcd for replicas in every region.

The state is the active hub, the hub map and the document sequence. Two stores
keep it behind one small interface, :class:`StateStore`:

* :class:`FileStateStore` (the default, one instance): a JSON file replaced
  atomically on every change. Sequences are ``max(previous + 1, Unix time in
  milliseconds)``, so they keep rising even if the file is lost.
* :class:`~device_sdk.concierge.etcd_store.EtcdStateStore` (``--store
  etcd://...``): one key in a replicated etcd cluster, shared by every
  replica, with the sequence taken from the cluster's revision (see that module).

A store answers :meth:`StateStore.current` from memory (a request never waits
on the store), :meth:`StateStore.switch` durably before it returns, and
:meth:`StateStore.health` with how fresh its view is: a replica cut off from
its cluster keeps serving what it knew only until documents issued from it
would have expired (``confirmed_at + ttl``).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from device_sdk.atomic_file import write_file_atomically
from device_sdk.concierge.document import MAX_SAFE_INTEGER, DocumentHub
from device_sdk.errors import ConciergeError, ConfigError, MalformedDocument

__all__ = [
    "FileStateStore",
    "ServiceState",
    "StateStore",
    "StoreHealth",
    "load_state",
    "next_sequence",
    "save_state",
]

_STATE_FORMAT = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceState:
    """What the concierge persists: the active hub, the sequence and the hub map."""

    active_hub: str
    sequence: int
    hubs: Mapping[str, DocumentHub]

    def as_json(self) -> dict[str, object]:
        return {
            "format": _STATE_FORMAT,
            "active_hub": self.active_hub,
            "sequence": self.sequence,
            "hubs": {name: hub.as_json() for name, hub in self.hubs.items()},
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreHealth:
    """How current a replica's view of the state is.

    ``confirmed_at`` (wall clock) is the last moment the store confirmed the
    state served now; documents never outlive ``confirmed_at + ttl``.
    ``last_change_age``: seconds since the replica last saw the state change
    (None: never, since it started).
    """

    kind: str
    reachable: bool
    reason: str
    confirmed_at: float
    last_change_age: float | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "reachable": self.reachable,
            "reason": self.reason,
            "confirmed_at": round(self.confirmed_at, 3),
            "last_change_age": None
            if self.last_change_age is None
            else round(self.last_change_age, 3),
        }


class StateStore(Protocol):
    """What the concierge service asks of the place its state lives."""

    kind: str

    def open(self, hubs: Mapping[str, DocumentHub], first_active: str, now: float) -> ServiceState:
        """Load (or create) the state for these hubs; raises ConfigError when unusable."""
        ...

    def current(self) -> ServiceState:
        """The state to serve now, from memory."""
        ...

    def switch(self, hub: str, now: float) -> ServiceState:
        """Make ``hub`` active, durably, with a higher sequence; ConciergeError if it could
        not be made durable (the switch did not happen)."""
        ...

    def health(self, now: float) -> StoreHealth: ...

    def close(self) -> None: ...


def next_sequence(previous: int, now: float) -> int:
    """The sequence after ``previous``: one more, or Unix time in milliseconds if larger.

    Why the clock: if the state file is ever lost, a fresh start still issues
    sequences above everything devices have already accepted (unless changes
    came faster than one per millisecond). 2**53 milliseconds is 285,000 years.
    """
    return min(max(previous + 1, int(now * 1000)), MAX_SAFE_INTEGER)


# -- the state file ---------------------------------------------------------------------------


def load_state(path: Path) -> ServiceState | None:
    """The persisted state, None when there is none; ConfigError when it is unusable."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError("state_file", str(path), f"a readable file ({exc.strerror})") from exc
    try:
        return _state_from_json(json.loads(data))
    except (ValueError, KeyError, TypeError, RecursionError, MalformedDocument) as exc:
        raise ConfigError(
            "state_file",
            str(path),
            "a state file written by the concierge; it is never overwritten: move it away "
            "to start afresh (sequences stay monotonic through the clock)",
        ) from exc


def _state_from_json(value: dict[str, object]) -> ServiceState:
    if value["format"] != _STATE_FORMAT:
        raise ValueError("unknown state format")
    hubs_value = value["hubs"]
    if not isinstance(hubs_value, dict):
        raise TypeError("hubs must be an object")
    hubs = {name: DocumentHub(**hub) for name, hub in hubs_value.items()}
    active, sequence = value["active_hub"], value["sequence"]
    if not isinstance(active, str) or type(sequence) is not int or sequence < 0:
        raise TypeError("active_hub must be a string and sequence an integer")
    return ServiceState(active_hub=active, sequence=sequence, hubs=hubs)


def save_state(path: Path, state: ServiceState) -> None:
    data = json.dumps(state.as_json(), indent=2, sort_keys=True).encode() + b"\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomically(path, data)
    except OSError as exc:
        raise ConciergeError(f"cannot persist concierge state to {path}: {exc}") from exc


class FileStateStore:
    """The state in one JSON file (one concierge instance)."""

    kind = "file"

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._state: ServiceState | None = None

    def open(self, hubs: Mapping[str, DocumentHub], first_active: str, now: float) -> ServiceState:
        """The state to serve after a (re)start; persisted when it differs from the file."""
        stored = load_state(self.path)
        wanted = dict(hubs)
        if stored is not None and stored.active_hub in wanted and dict(stored.hubs) == wanted:
            state = stored
        else:
            kept = stored.active_hub if stored is not None else None
            state = ServiceState(
                active_hub=kept if kept is not None and kept in wanted else first_active,
                sequence=next_sequence(stored.sequence if stored is not None else 0, now),
                hubs=wanted,
            )
            save_state(self.path, state)
        with self._lock:
            self._state = state
        return state

    def current(self) -> ServiceState:
        with self._lock:
            if self._state is None:
                raise ConciergeError("the concierge state store is not open")
            return self._state

    def switch(self, hub: str, now: float) -> ServiceState:
        with self._lock:
            current = self._state
            if current is None:
                raise ConciergeError("the concierge state store is not open")
            if hub not in current.hubs:
                raise ConfigError("hub", hub, f"one of {list(current.hubs)}")
            if hub == current.active_hub:
                return current
            state = ServiceState(
                active_hub=hub,
                sequence=next_sequence(current.sequence, now),
                hubs=current.hubs,
            )
            save_state(self.path, state)  # raises: the switch did not happen
            self._state = state
            return state

    def health(self, now: float) -> StoreHealth:
        return StoreHealth(kind=self.kind, reachable=True, reason="local file", confirmed_at=now)

    def close(self) -> None:
        return None

"""The concierge's state in etcd: one key that every replica shares, and one sequence for the fleet.

Replicas in several regions (behind one DNS name) must give devices one answer
and one rising sequence. The state lives in an etcd cluster (v3 API, reached
through etcd's JSON gateway with the ``etcd3gw`` client, installed by the
``device_sdk[etcd]`` extra; devices never need it). Under ``prefix`` there are
two keys:

* ``state``: ``{"format": 1, "active_hub": ..., "hubs": {...}}``;
* ``offset``: the sequence's base, a decimal integer, written once.

**The sequence is ``offset + mod_revision`` of the state key.** etcd's
revisions are totally ordered across the cluster, so every replica computes
the same sequence for the same state. A switch through any replica is a
compare-and-swap transaction on the key's revision, so it always gives a
higher sequence. A replica only ever serves a sequence it read from the
cluster: it never invents one.

**Migration from the file store.** File-era sequences are Unix milliseconds,
far above a fresh cluster's revisions, and devices persist the last one they
accepted. The first replica that finds the cluster empty writes ``offset =
max(Unix ms now, the file's sequence)`` and the file's state in one
transaction (``import_file``, the replica's old ``state_file``). Every etcd-era
sequence is then above every file-era sequence, so no device sees a rollback.
Later replicas find the keys and leave them alone.

**Freshness.** Each replica reads the key (a linearizable read, which needs a
quorum) every ``poll_interval``, and also watches it. A watch event wakes the
reader at once, so a switch reaches every replica within about a round trip;
the poll bounds it when a watch is lost. A replica cut off from a quorum keeps
its last state, and :meth:`EtcdStateStore.health` says since when. The
service stops issuing documents a ttl after that moment, and ``/healthz``
answers 503, so a traffic manager prefers replicas that can see the cluster.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from device_sdk.concierge.document import MAX_SAFE_INTEGER, DocumentHub
from device_sdk.concierge.state_store import ServiceState, StoreHealth, load_state
from device_sdk.config import is_ip_literal
from device_sdk.errors import ConciergeError, ConfigError, MalformedDocument

__all__ = ["EtcdStateStore", "parse_store_url"]

logger = logging.getLogger(__name__)

_FORMAT = 1
_SCHEME = "etcd://"
_CAS_ROUNDS = 10  # compare-and-swap retries when another replica wrote in between
_MAX_VALUE_BYTES = 64 * 1024


def parse_store_url(url: str) -> tuple[tuple[str, int], ...]:
    """``etcd://host:port[,host:port...]`` as (host, port) pairs; ConfigError naming ``store``."""
    allowed = "etcd://host:port[,host:port...] (IPv6 in brackets)"
    if not isinstance(url, str) or not url.startswith(_SCHEME):
        raise ConfigError("store", url, allowed)
    endpoints: list[tuple[str, int]] = []
    for part in url[len(_SCHEME) :].split(","):
        host, _, port = part.strip().rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError("store", url, allowed)
        if not is_ip_literal(host) and not all(
            label.isalnum() or "-" in label for label in host.split(".")
        ):
            raise ConfigError("store", url, allowed)
        endpoints.append((host, int(port)))
    return tuple(endpoints)


class _Cluster:
    """The cluster's members, tried in turn: the one that answered last goes first."""

    def __init__(self, endpoints: Sequence[tuple[str, int]], timeout: float) -> None:
        try:
            import etcd3gw  # the device_sdk[etcd] extra: operators only
        except ImportError as exc:
            raise ConfigError(
                "store", "etcd://...", "the etcd3gw library: pip install 'device_sdk[etcd]'"
            ) from exc
        self._clients = [
            etcd3gw.Etcd3Client(host=host, port=port, timeout=timeout, api_path="/v3/")
            for host, port in endpoints
        ]
        self._names = [f"{host}:{port}" for host, port in endpoints]
        self._first = 0
        self._lock = threading.Lock()

    def call(self, what: str, step: Callable[[Any], Any]) -> Any:
        """``step(client)`` on the first member that answers; ConciergeError naming each."""
        failures: list[str] = []
        with self._lock:
            start = self._first
        for offset in range(len(self._clients)):
            index = (start + offset) % len(self._clients)
            try:
                result = step(self._clients[index])
            except Exception as exc:  # etcd3gw raises its own tree, requests' and JSON's
                failures.append(f"{self._names[index]}: {type(exc).__name__}: {exc}")
                continue
            with self._lock:
                self._first = index
            return result
        raise ConciergeError(f"etcd: {what} failed on every member ({'; '.join(failures)})")

    def watch_client(self) -> Any:
        with self._lock:
            return self._clients[self._first]

    def close(self) -> None:
        for client in self._clients:
            client.session.close()


class EtcdStateStore:
    """The concierge state in an etcd cluster, shared by every replica (see the module)."""

    kind = "etcd"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "/device-sdk/concierge/",
        import_file: Any = None,
        ttl: int = 300,
        poll_interval: float = 0.5,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(prefix, str) or not prefix.startswith("/") or not prefix.endswith("/"):
            raise ConfigError("store_prefix", prefix, "a key prefix like /device-sdk/concierge/")
        self._endpoints = parse_store_url(url)
        self._prefix = prefix
        self._state_key = prefix + "state"
        self._offset_key = prefix + "offset"
        self._import_file = import_file
        self._ttl = ttl
        self._poll_interval = poll_interval
        self._timeout = timeout
        self._clock = clock
        self._cluster: _Cluster | None = None
        self._lock = threading.Lock()
        self._state: ServiceState | None = None
        self._revision = 0  # mod_revision of the state key behind self._state
        self._offset = 0
        self._confirmed_at = 0.0
        self._changed_at: float | None = None
        self._reason = "not opened"
        self._reachable = False
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._reader: threading.Thread | None = None
        self._watcher: Any = None
        self._watching: Any = None  # the client the watch runs on

    # -- the StateStore interface --------------------------------------------------------------

    def open(self, hubs: Mapping[str, DocumentHub], first_active: str, now: float) -> ServiceState:
        self._cluster = _Cluster(self._endpoints, self._timeout)
        try:
            self._create_if_empty(hubs, first_active, now)
            for _round in range(_CAS_ROUNDS):
                state, revision = self._read()
                if dict(state.hubs) == dict(hubs):
                    break
                # This replica's hub map differs from the cluster's: the deployment changed
                # it. Write it, keeping the active hub where it still exists.
                active = state.active_hub if state.active_hub in hubs else first_active
                if self._swap(revision, active, hubs) is not None:
                    break
            else:
                raise ConciergeError("etcd: the hub map kept changing under this replica")
        except BaseException:
            self._cluster.close()
            raise
        self._ensure_watch()  # before the first poll: a switch right after start is seen at once
        self._reader = threading.Thread(
            target=self._keep_reading, name="concierge-etcd-reader", daemon=True
        )
        self._reader.start()
        return self.current()

    def current(self) -> ServiceState:
        with self._lock:
            if self._state is None:
                raise ConciergeError("the etcd state store is not open")
            return self._state

    def switch(self, hub: str, now: float) -> ServiceState:
        for _round in range(_CAS_ROUNDS):
            state, revision = self._read()
            if hub not in state.hubs:
                raise ConfigError("hub", hub, f"one of {list(state.hubs)}")
            if hub == state.active_hub:
                return state
            switched = self._swap(revision, hub, state.hubs)
            if switched is not None:
                return switched
        raise ConciergeError("etcd: other replicas kept switching; the switch did not happen")

    def health(self, now: float) -> StoreHealth:
        """Reachable while a read succeeded within a poll interval and a timeout (a read
        stuck on a silent member counts as unreachable before it fails)."""
        with self._lock:
            changed = None if self._changed_at is None else now - self._changed_at
            silent = now - self._confirmed_at
            reachable, reason = self._reachable, self._reason
            if reachable and silent > self._poll_interval + self._timeout + 1.0:
                reachable = False
                reason = f"no answer from the etcd cluster for {silent:.1f} s"
            return StoreHealth(
                kind=self.kind,
                reachable=reachable,
                reason=reason,
                confirmed_at=self._confirmed_at,
                last_change_age=changed,
            )

    def close(self) -> None:
        self._closing.set()
        self._wake.set()
        if self._reader is not None:
            self._reader.join(self._timeout + 1.0)
        self._stop_watch()
        if self._cluster is not None:
            self._cluster.close()

    # -- reading and writing the key -------------------------------------------------------------

    def _create_if_empty(
        self, hubs: Mapping[str, DocumentHub], first_active: str, now: float
    ) -> None:
        """A fresh cluster gets the offset and the first state in one transaction; the
        file's state and sequence when this replica had one (the migration)."""
        imported = load_state(self._import_file) if self._import_file is not None else None
        active = first_active
        base = int(now * 1000)
        if imported is not None:
            base = max(base, imported.sequence)
            if imported.active_hub in hubs:
                active = imported.active_hub
        base = min(base, MAX_SAFE_INTEGER // 2)
        txn = {
            "compare": [
                _created(self._offset_key, 0),
                _created(self._state_key, 0),
            ],
            "success": [
                _put(self._offset_key, str(base)),
                _put(self._state_key, _state_value(active, hubs)),
            ],
            "failure": [],
        }
        answer = self._call("create the state", lambda c: c.transaction(txn))
        if answer.get("succeeded"):
            logger.warning(
                "concierge: created the state in etcd (offset %d, active hub %s%s)",
                base,
                active,
                ", imported from the state file" if imported is not None else "",
            )

    def _read(self) -> tuple[ServiceState, int]:
        """The cluster's state now (a linearizable read), remembered for serving."""
        prefix = self._prefix
        kvs = self._call(
            "read the state",
            lambda c: c.get(prefix, metadata=True, range_end=_range_end(prefix)),
        )
        found: dict[str, tuple[bytes, dict[str, Any]]] = {}
        for value, meta in kvs:
            key = meta["key"].decode() if isinstance(meta["key"], bytes) else str(meta["key"])
            found[key] = (value, meta)
        if self._state_key not in found or self._offset_key not in found:
            raise ConciergeError(f"etcd: {self._state_key} or {self._offset_key} is missing")
        offset = _integer(found[self._offset_key][0], self._offset_key)
        value, meta = found[self._state_key]
        revision = int(meta["mod_revision"])
        state = _parse_state(value, offset + revision, self._state_key)
        self._remember(state, revision, offset)
        return state, revision

    def _swap(
        self, revision: int, active: str, hubs: Mapping[str, DocumentHub]
    ) -> ServiceState | None:
        """Write the state if the key is still at ``revision``; None when another replica
        wrote first (the caller reads again and decides again)."""
        txn = {
            "compare": [
                {
                    "key": _b64(self._state_key),
                    "result": "EQUAL",
                    "target": "MOD",
                    "mod_revision": revision,
                }
            ],
            "success": [_put(self._state_key, _state_value(active, hubs))],
            "failure": [],
        }
        answer = self._call("switch the active hub", lambda c: c.transaction(txn))
        if not answer.get("succeeded"):
            return None
        new_revision = int(answer["header"]["revision"])
        with self._lock:
            offset = self._offset
        state = ServiceState(active_hub=active, sequence=offset + new_revision, hubs=dict(hubs))
        self._remember(state, new_revision, offset)
        return state

    def _remember(self, state: ServiceState, revision: int, offset: int) -> None:
        now = self._clock()
        with self._lock:
            self._offset = offset
            self._confirmed_at = now
            self._reachable, self._reason = True, "reading the cluster"
            if revision < self._revision:
                return  # an older read finished after a newer one: never serve backwards
            if revision > self._revision and self._state is not None:
                self._changed_at = now
            self._state, self._revision = state, revision

    def _call(self, what: str, step: Callable[[Any], Any]) -> Any:
        assert self._cluster is not None
        try:
            return self._cluster.call(what, step)
        except ConciergeError as exc:
            with self._lock:
                self._reachable, self._reason = False, str(exc)
            raise

    # -- keeping the view fresh ------------------------------------------------------------------

    def _keep_reading(self) -> None:
        """Read the key every poll interval, or at once when the watch saw a change."""
        while not self._closing.is_set():
            self._wake.wait(self._poll_interval)
            self._wake.clear()
            if self._closing.is_set():
                return
            try:
                self._read()
            except (ConciergeError, MalformedDocument) as exc:
                logger.warning("concierge: cannot read the state from etcd: %s", exc)
                self._stop_watch()
                continue
            except Exception:  # a fault of ours: visible, and the loop goes on
                logger.exception("concierge: reading the state from etcd failed")
                continue
            self._ensure_watch()

    def _ensure_watch(self) -> None:
        """A watch on the member that answered last, opened off this thread.

        Why off this thread: etcd3gw opens a watch with no timeout, and a member
        that stopped answering would hold the reader (and with it the health
        report) for good. The poll keeps the view fresh while no watch runs.
        """
        assert self._cluster is not None
        client = self._cluster.watch_client()
        with self._lock:
            if self._watching is client or self._closing.is_set():
                return  # running, or being opened, on that member
            stale, self._watcher, self._watching = self._watcher, None, client
            start = self._revision + 1
        _stop(stale)
        threading.Thread(
            target=self._open_watch, args=(client, start), name="concierge-etcd-watch", daemon=True
        ).start()

    def _open_watch(self, client: Any, start: int) -> None:
        try:
            from etcd3gw.watch import Watcher

            watcher = Watcher(
                client, self._state_key, lambda _event: self._wake.set(), start_revision=start
            )
        except Exception as exc:  # the poll still keeps the view fresh
            logger.warning("concierge: cannot watch etcd (polling only): %s", exc)
            with self._lock:
                if self._watching is client:
                    self._watching = None
            return
        with self._lock:
            keep = self._watching is client and not self._closing.is_set()
            if keep:
                self._watcher = watcher
        if not keep:
            _stop(watcher)
        else:
            self._wake.set()  # read once more: a change may have come while it opened

    def _stop_watch(self) -> None:
        with self._lock:
            watcher, self._watcher, self._watching = self._watcher, None, None
        _stop(watcher)


def _stop(watcher: Any) -> None:
    if watcher is None:
        return
    try:
        watcher.stop()
    except Exception as exc:  # its connection may be gone already
        logger.debug("concierge: stopping an etcd watch: %s", exc)


# -- the wire format ------------------------------------------------------------------------------


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _put(key: str, value: str) -> dict[str, Any]:
    return {"request_put": {"key": _b64(key), "value": _b64(value)}}


def _created(key: str, revision: int) -> dict[str, Any]:
    return {"key": _b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": revision}


def _range_end(prefix: str) -> str:
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _state_value(active: str, hubs: Mapping[str, DocumentHub]) -> str:
    value = {
        "format": _FORMAT,
        "active_hub": active,
        "hubs": {name: hub.as_json() for name, hub in hubs.items()},
    }
    return json.dumps(value, sort_keys=True)


def _integer(value: bytes, key: str) -> int:
    text = value.decode("ascii", "replace")
    if not text.isdigit() or int(text) > MAX_SAFE_INTEGER // 2:
        raise ConciergeError(f"etcd: {key} is not a sequence base: {text[:40]!r}")
    return int(text)


def _parse_state(value: bytes, sequence: int, key: str) -> ServiceState:
    """The state key's JSON, checked as the file store checks its file."""
    try:
        if len(value) > _MAX_VALUE_BYTES:
            raise ValueError("too large")
        data = json.loads(value)
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError("unknown format")
        raw_hubs, active = data["hubs"], data["active_hub"]
        if not isinstance(raw_hubs, dict) or not isinstance(active, str):
            raise TypeError("hubs must be an object and active_hub a string")
        hubs = {name: DocumentHub(**hub) for name, hub in raw_hubs.items()}
        if active not in hubs:
            raise ValueError(f"active hub {active!r} is not in the hub map")
    except (ValueError, KeyError, TypeError, RecursionError, MalformedDocument) as exc:
        raise ConciergeError(f"etcd: {key} does not hold a concierge state: {exc}") from exc
    if sequence > MAX_SAFE_INTEGER:
        raise ConciergeError(f"etcd: the sequence {sequence} is past 2**53 - 1")
    return ServiceState(active_hub=active, sequence=sequence, hubs=hubs)

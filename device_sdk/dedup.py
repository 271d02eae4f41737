"""Consumer-side helpers: read a message's stable id, and drop the duplicates.

At-least-once delivery means a consumer can see a message twice: after a
failover the device resends whatever the old hub had not acknowledged, and the
old hub may have delivered some of it already. Every message carries a stable
id, the same on every resend:

* MQTT 5: a user property, ``message-id`` by default (``ClientConfig.message_id_property``);
* MQTT 3.1.1, with ``ClientConfig(envelope=True)``: a JSON envelope
  ``{"message_id": "<id>", "payload": "<base64 of the original payload>"}``.

A backend that remembers the ids it has applied can merge the streams of two
regions idempotently::

    seen = Deduplicator(capacity=1_000_000)
    def on_message(client, userdata, msg):
        message_id = message_id_from_properties(msg.properties)
        if message_id is None or seen.first_time(message_id):
            apply(msg.payload)
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from device_sdk.errors import ConfigError

MESSAGE_ID_PROPERTY = "message-id"


def wrap_envelope(message_id: str, payload: bytes) -> bytes:
    """The JSON envelope for MQTT 3.1.1 consumers (compact, UTF-8)."""
    body = {"message_id": message_id, "payload": base64.b64encode(payload).decode("ascii")}
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def unwrap_envelope(data: bytes) -> tuple[str, bytes]:
    """``(message_id, original payload)`` from an envelope; ConfigError if it is not one."""
    try:
        body = json.loads(data)
        message_id, encoded = body["message_id"], body["payload"]
        if not isinstance(message_id, str) or not isinstance(encoded, str):
            raise TypeError("message_id and payload must be strings")
        return message_id, base64.b64decode(encoded, validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise ConfigError("envelope", data[:60], "a device_sdk JSON envelope") from exc


def message_id_from_properties(properties: Any, name: str = MESSAGE_ID_PROPERTY) -> str | None:
    """The id from an MQTT 5 message's properties (paho's ``msg.properties``), if present."""
    pairs: Iterable[tuple[str, str]] = getattr(properties, "UserProperty", None) or ()
    for key, value in pairs:
        if key == name:
            return value
    return None


class Deduplicator:
    """Remembers the last ``capacity`` message ids; thread-safe.

    ``first_time(id)`` is True once per id (within the window). Size the window
    to cover the longest outage you expect times the device's message rate.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        if capacity < 1:
            raise ConfigError("capacity", capacity, "an integer of at least 1")
        self._capacity = capacity
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def first_time(self, message_id: str) -> bool:
        with self._lock:
            if message_id in self._seen:
                self._seen.move_to_end(message_id)
                return False
            self._seen[message_id] = None
            if len(self._seen) > self._capacity:
                self._seen.popitem(last=False)
            return True

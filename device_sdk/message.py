"""The values a message carries besides its topic and payload, on both faces.

:class:`PublishProperties` are what ``publish(..., properties=...)`` sends on
MQTT 5 (the SDK adds its own ``message-id`` user property, and a Message Expiry
Interval from ``ttl``). :class:`Message` is what a subscription handler
receives: topic, payload, QoS, retain and the properties the hub delivered.

Both are frozen values; ``PublishProperties`` also has a compact JSON form,
``to_json()``/``from_json()``, which the durable outbox stores so a message
keeps its properties across a restart.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from device_sdk.core.topics import check_mqtt_string, check_topic_name
from device_sdk.errors import ConfigError

# The largest Correlation Data MQTT can carry (a two-byte length).
_MAX_BINARY = 65_535


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishProperties:
    """MQTT 5 publish properties an application sets.

    ``user_properties`` are (name, value) pairs, in order, names may repeat.
    ``payload_format_utf8`` marks the payload as UTF-8 text (Payload Format
    Indicator 1). Message expiry is not here: ``publish(ttl=...)`` sets it from
    the time the message has left. MQTT 3.1.1 has none of these: publishing
    them there is refused with a ConfigError, never dropped silently.
    """

    content_type: str | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None
    user_properties: tuple[tuple[str, str], ...] = ()
    payload_format_utf8: bool = False

    def __post_init__(self) -> None:
        if self.content_type is not None:
            check_mqtt_string("properties.content_type", self.content_type)
        if self.response_topic is not None:
            check_topic_name(self.response_topic, field="properties.response_topic")
        data = self.correlation_data
        if data is not None and (not isinstance(data, bytes) or len(data) > _MAX_BINARY):
            raise ConfigError(
                "properties.correlation_data", "<bytes>", f"bytes, at most {_MAX_BINARY}"
            )
        pairs = self.user_properties
        if not isinstance(pairs, tuple) or not all(_is_pair(pair) for pair in pairs):
            raise ConfigError(
                "properties.user_properties", pairs, "a tuple of (name, value) string pairs"
            )
        for name, value in pairs:
            check_mqtt_string("properties.user_properties name", name)
            check_mqtt_string("properties.user_properties value", value, allow_empty=True)
        if not isinstance(self.payload_format_utf8, bool):
            raise ConfigError("properties.payload_format_utf8", self.payload_format_utf8, "a bool")

    @classmethod
    def received(
        cls,
        *,
        content_type: str | None = None,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        user_properties: tuple[tuple[str, str], ...] = (),
        payload_format_utf8: bool = False,
    ) -> PublishProperties:
        """The properties a hub delivered, kept as they came, unchecked.

        What an application hands over is checked; what a hub sent is shown as it
        is. A value an application could not send (a control character in a user
        property) must not make the message undeliverable: refusing it would drop
        the link, and a resumed session would deliver it again, forever.
        """
        properties = object.__new__(cls)
        for name, value in (
            ("content_type", content_type),
            ("response_topic", response_topic),
            ("correlation_data", correlation_data),
            ("user_properties", user_properties),
            ("payload_format_utf8", payload_format_utf8),
        ):
            object.__setattr__(properties, name, value)
        return properties

    @property
    def empty(self) -> bool:
        return self == _EMPTY

    def to_json(self) -> str:
        """A compact JSON form, for storage (correlation data as base64)."""
        document: dict[str, object] = {}
        if self.content_type is not None:
            document["ct"] = self.content_type
        if self.response_topic is not None:
            document["rt"] = self.response_topic
        if self.correlation_data is not None:
            document["cd"] = base64.b64encode(self.correlation_data).decode("ascii")
        if self.user_properties:
            document["up"] = [list(pair) for pair in self.user_properties]
        if self.payload_format_utf8:
            document["pf"] = 1
        return json.dumps(document, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> PublishProperties:
        """The properties ``to_json`` wrote; ConfigError for anything else."""
        try:
            document = json.loads(text)
            if not isinstance(document, dict):
                raise TypeError("not an object")
            data = document.get("cd")
            return cls(
                content_type=document.get("ct"),
                response_topic=document.get("rt"),
                correlation_data=None if data is None else base64.b64decode(data, validate=True),
                user_properties=tuple(tuple(pair) for pair in document.get("up", ())),
                payload_format_utf8=document.get("pf") == 1,
            )
        except (ValueError, TypeError) as exc:
            raise ConfigError("stored properties", text[:80], "what to_json() wrote") from exc


_EMPTY = PublishProperties()


def _is_pair(pair: object) -> bool:
    return isinstance(pair, Sequence) and not isinstance(pair, str) and len(pair) == 2


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """A message a subscription received.

    ``properties`` are the MQTT 5 properties the hub delivered (empty on 3.1.1);
    ``message_expiry`` is the Message Expiry Interval it carried, if any;
    ``subscription`` the filter it was delivered for (a message that matches
    several subscriptions is delivered once for each).
    """

    topic: str
    payload: bytes = field(repr=False)
    qos: int
    retain: bool = False
    properties: PublishProperties = _EMPTY
    message_expiry: int | None = None
    subscription: str | None = None

    def reply_properties(self) -> tuple[str, PublishProperties]:
        """Where a reply to this request goes, and the properties it carries.

        The Response Topic and the Correlation Data this message came with
        (MQTT 5 request/response); ConfigError when it named no Response Topic.
        """
        response_topic = self.properties.response_topic
        if response_topic is None:
            raise ConfigError(
                "message.properties.response_topic",
                None,
                f"a Response Topic to reply to (the message on {self.topic!r} carried none)",
            )
        return response_topic, PublishProperties(correlation_data=self.properties.correlation_data)

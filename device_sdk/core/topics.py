"""What MQTT accepts from an application, pure: its strings, topic names, filters and QoS.

Every string that goes on the wire (client id, user name, topics, user property
names) is checked here when the application hands it over, so that a value MQTT
cannot carry fails with a :class:`~device_sdk.errors.ConfigError` naming it,
rather than later on the engine thread as an encoding error or a hub closing
the link. Also topic matching (MQTT 5 §4.7).
"""

from __future__ import annotations

import re

from device_sdk.errors import ConfigError

MAX_STRING_BYTES = 65535  # MQTT strings carry a two-byte length (MQTT 5 §1.5.4)

_NON_CHARACTERS = "\ufdd0-\ufdef" + "".join(
    f"{chr(plane << 16 | 0xFFFE)}{chr(plane << 16 | 0xFFFF)}" for plane in range(17)
)
# MQTT 5 §1.5.4: a UTF-8 string MUST NOT hold U+0000 or surrogates (UTF-8 cannot
# encode them), and SHOULD NOT hold the control characters U+0001-U+001F and
# U+007F-U+009F or Unicode non-characters, which a receiver MAY treat as a
# malformed packet. We refuse those too: a hub that does so drops the link, and a
# queued message holding one would drop it again after every reconnect. Refused
# here, the application can still change the value.
_FORBIDDEN = re.compile(f"[\x00-\x1f\x7f-\x9f\ud800-\udfff{_NON_CHARACTERS}]")
_SHOWN_CHARS = 200  # a huge bad value is shown cut short in the error message


def check_mqtt_string(field: str, value: object, *, allow_empty: bool = False) -> None:
    """``value`` as an MQTT UTF-8 string: a str, encodable, ≤ 65535 bytes, no NUL,
    no control characters and no non-characters (empty only with ``allow_empty``)."""
    if not isinstance(value, str):
        raise ConfigError(field, value, "a string")
    if not value and not allow_empty:
        raise ConfigError(field, value, "a non-empty string")
    if len(value) > MAX_STRING_BYTES:  # a character is at least one byte: too long already
        raise ConfigError(field, shown(value), _too_long(f"at least {len(value)}"))
    found = _FORBIDDEN.search(value)
    if found is not None:
        char, index = found.group(), found.start()
        raise ConfigError(
            field,
            shown(value),
            "UTF-8 text without NUL, control characters, lone surrogates or non-characters"
            f" (found {_kind(char)} U+{ord(char):04X} at index {index})",
        )
    size = len(value.encode("utf-8"))  # no surrogates left: it encodes
    if size > MAX_STRING_BYTES:
        raise ConfigError(field, shown(value), _too_long(str(size)))


def encode_utf8(field: str, text: str) -> bytes:
    """``text`` as UTF-8, or ConfigError naming ``field`` (a lone surrogate cannot be encoded)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigError(
            field,
            shown(text),
            f"text encodable as UTF-8 (U+{ord(text[exc.start]):04X} at index {exc.start}"
            " is a lone surrogate)",
        ) from None


def check_topic_name(topic: object, *, field: str = "topic") -> None:
    """A topic a message is published to: a non-empty MQTT string without wildcards."""
    if not isinstance(topic, str) or not topic:
        raise ConfigError(field, shown(topic), "a non-empty string")
    if "+" in topic or "#" in topic:
        raise ConfigError(field, shown(topic), "a topic name without the wildcards + and #")
    check_mqtt_string(field, topic)


SHARE_PREFIX = "$share/"


def check_topic_filter(topic_filter: object, *, field: str = "topic filter") -> None:
    """A subscription filter: '+' fills a whole level, '#' only as the whole last level.

    A shared subscription, ``$share/{group}/{filter}`` (MQTT 5 §4.8.2), needs a
    group name without '/', '+' or '#', and a valid filter after it.
    """
    if not isinstance(topic_filter, str) or not topic_filter:
        raise ConfigError(field, shown(topic_filter), "a non-empty string")
    check_mqtt_string(field, topic_filter)  # first: bounds the split below to 65535 bytes
    if topic_filter.startswith(SHARE_PREFIX):
        _check_shared(topic_filter, field)
        topic_filter = subscribed_filter(topic_filter)
    _check_levels(topic_filter, topic_filter, field)


def _check_shared(topic_filter: str, field: str) -> None:
    group, slash, inner = topic_filter[len(SHARE_PREFIX) :].partition("/")
    if not group or "+" in group or "#" in group:
        raise ConfigError(
            field, shown(topic_filter), "'$share/{group}/{filter}' with a group name without + or #"
        )
    if not slash or not inner:
        raise ConfigError(
            field, shown(topic_filter), "'$share/{group}/{filter}' with a non-empty filter"
        )


def subscribed_filter(topic_filter: str) -> str:
    """The filter a subscription matches topics against: a shared one's inner filter."""
    if not topic_filter.startswith(SHARE_PREFIX):
        return topic_filter
    _group, _slash, inner = topic_filter[len(SHARE_PREFIX) :].partition("/")
    return inner


def _check_levels(topic_filter: str, whole: str, field: str) -> None:
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "+" in level and level != "+":
            raise ConfigError(field, shown(whole), "'+' only as a whole level")
        if "#" in level and (level != "#" or index != len(levels) - 1):
            raise ConfigError(field, shown(whole), "'#' only as the whole last level")


def check_qos(qos: object) -> None:
    """0 or 1 as an int (True is not a QoS).

    QoS 2 is not supported, on purpose: Azure IoT Hub and AWS IoT Core do not
    support it, and QoS 1 with the SDK's stable message ids and deduplication
    downstream gives the same end result for telemetry (each message counted once).
    """
    if not isinstance(qos, int) or isinstance(qos, bool) or qos not in (0, 1):
        raise ConfigError(
            "qos",
            qos,
            "the integer 0 or 1; QoS 2 is not supported (Azure IoT Hub and AWS IoT Core do "
            "not support it; QoS 1 with stable message ids and deduplication downstream "
            "gives the same end result)",
        )


def shown(value: object) -> object:
    """``value`` for an error message: a long string is cut short, anything else kept."""
    if isinstance(value, str) and len(value) > _SHOWN_CHARS:
        return f"{value[:_SHOWN_CHARS]}... ({len(value)} characters)"
    return value


def _too_long(size: str) -> str:
    return f"at most {MAX_STRING_BYTES} bytes of UTF-8 (this is {size} bytes)"


def _kind(char: str) -> str:
    code = ord(char)
    if code == 0:
        return "NUL"
    if code <= 0x9F:
        return "the control character"
    if 0xD800 <= code <= 0xDFFF:
        return "the lone surrogate"
    return "the non-character"


def topic_matches(topic_filter: str, topic: str) -> bool:
    """True when ``topic`` matches ``topic_filter`` (``$``-topics only match explicitly).

    A shared subscription ``$share/{group}/{filter}`` matches what its ``filter``
    matches: the hub delivers the group's messages under their own topic names.
    """
    topic_filter = subscribed_filter(topic_filter)
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels):
            return False
        if level not in ("+", topic_levels[index]):
            return False
    return len(filter_levels) == len(topic_levels)

"""MQTT topic rules (MQTT 5 §4.7), pure: validating names and filters, and matching."""

from __future__ import annotations

from device_sdk.errors import ConfigError

_MAX_TOPIC_BYTES = 65535


def check_topic_name(topic: str) -> None:
    """A topic a message is published to: non-empty, no wildcards, no NUL, ≤ 65535 bytes."""
    if not isinstance(topic, str) or not topic:
        raise ConfigError("topic", topic, "a non-empty string")
    if "+" in topic or "#" in topic:
        raise ConfigError("topic", topic, "a topic name without the wildcards + and #")
    _check_common(topic)


def check_topic_filter(topic_filter: str) -> None:
    """A subscription filter: '+' fills a whole level, '#' only as the whole last level."""
    if not isinstance(topic_filter, str) or not topic_filter:
        raise ConfigError("topic filter", topic_filter, "a non-empty string")
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "+" in level and level != "+":
            raise ConfigError("topic filter", topic_filter, "'+' only as a whole level")
        if "#" in level and (level != "#" or index != len(levels) - 1):
            raise ConfigError("topic filter", topic_filter, "'#' only as the whole last level")
    _check_common(topic_filter)


def _check_common(text: str) -> None:
    if "\0" in text:
        raise ConfigError("topic", text, "no NUL characters")
    if len(text.encode("utf-8")) > _MAX_TOPIC_BYTES:
        raise ConfigError("topic", text[:40] + "...", f"at most {_MAX_TOPIC_BYTES} UTF-8 bytes")


def topic_matches(topic_filter: str, topic: str) -> bool:
    """True when ``topic`` matches ``topic_filter`` (``$``-topics only match explicitly)."""
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

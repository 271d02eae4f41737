from __future__ import annotations

import pytest

from device_sdk.core.topics import (
    check_mqtt_string,
    check_qos,
    check_topic_filter,
    check_topic_name,
    topic_matches,
)
from device_sdk.errors import ConfigError


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("#", "a/b", True),
        ("#", "$SYS/x", False),
        ("+/x", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
        ("a/b", "a/c", False),
        ("a/b/c", "a/b", False),
    ],
)
def test_topic_matching(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


# What no MQTT string may hold: NUL and lone surrogates (MUST NOT), control characters
# and non-characters (SHOULD NOT, which a hub MAY answer by closing the link).
UNCARRIABLE = [
    "a\0b",
    "a\ud800",
    "\udfff",
    "a\x01",
    "a\x1f",
    "a\x7f",
    "a\x9f",
    "a\ufdd0",
    "a\ufffe",
    "a\U0010ffff",
    "é" * 32768,  # 32768 characters, 65536 bytes
    "x" * 65536,
]
NOT_TEXT = [None, b"a/b", 5, ["a"], True]


@pytest.mark.parametrize("topic", ["", "a/+", "a/#", *UNCARRIABLE, *NOT_TEXT])
def test_bad_topic_names_are_refused(topic: str) -> None:
    with pytest.raises(ConfigError):
        check_topic_name(topic)


@pytest.mark.parametrize("topic", ["a", "a/b/c", "$iothub/twin/GET/?$rid=1", "température/é", " "])
def test_topic_names_mqtt_carries_are_accepted(topic: str) -> None:
    check_topic_name(topic)


def test_the_byte_limit_is_exact() -> None:
    check_topic_name("é" * 32767 + "x")  # 65535 bytes
    with pytest.raises(ConfigError, match="65536 bytes"):
        check_topic_name("é" * 32767 + "xy")


@pytest.mark.parametrize("text", UNCARRIABLE)
def test_uncarriable_text_is_refused_naming_the_field(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_mqtt_string("client_id", text)
    assert caught.value.field == "client_id"


def test_the_error_says_which_character_and_where() -> None:
    with pytest.raises(ConfigError) as caught:
        check_topic_name("sensors/a\ud800b")
    assert caught.value.field == "topic"
    assert "lone surrogate U+D800 at index 9" in str(caught.value)


@pytest.mark.parametrize("topic_filter", ["#", "+", "a/+/#", "+/+", "$share/group/a/#", "a//b"])
def test_filters_with_wildcards_in_place_are_accepted(topic_filter: str) -> None:
    check_topic_filter(topic_filter)


@pytest.mark.parametrize(
    "topic_filter", ["", "a+/b", "a/#/b", "a/b#", "#/a", "a/++", *UNCARRIABLE, *NOT_TEXT]
)
def test_bad_filters_are_refused(topic_filter: str) -> None:
    with pytest.raises(ConfigError):
        check_topic_filter(topic_filter)


@pytest.mark.parametrize("qos", [0, 1])
def test_qos_0_and_1_are_accepted(qos: int) -> None:
    check_qos(qos)


@pytest.mark.parametrize("qos", [2, -1, True, False, 1.0, "1", None])
def test_other_qos_values_are_refused(qos: object) -> None:
    with pytest.raises(ConfigError, match="qos"):
        check_qos(qos)

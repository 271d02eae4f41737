from __future__ import annotations

import pytest

from device_sdk.core.topics import check_topic_filter, check_topic_name, topic_matches
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


@pytest.mark.parametrize("topic", ["", "a/+", "a/#", "a\0b"])
def test_bad_topic_names_are_refused(topic: str) -> None:
    with pytest.raises(ConfigError):
        check_topic_name(topic)


@pytest.mark.parametrize("topic_filter", ["", "a+/b", "a/#/b", "a/b#"])
def test_bad_filters_are_refused(topic_filter: str) -> None:
    with pytest.raises(ConfigError):
        check_topic_filter(topic_filter)

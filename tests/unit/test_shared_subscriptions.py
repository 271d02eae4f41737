"""Shared subscriptions ``$share/{group}/{filter}``: their form, and what they match."""

from __future__ import annotations

import pytest

from device_sdk.core.topics import check_topic_filter, subscribed_filter, topic_matches
from device_sdk.errors import ConfigError


@pytest.mark.parametrize(
    "topic_filter",
    ["$share/g/a", "$share/g/#", "$share/workers/cmd/+/run", "$share/g/+", "$share/g/$SYS/#"],
)
def test_shared_filters_of_the_right_form_are_accepted(topic_filter: str) -> None:
    check_topic_filter(topic_filter)


@pytest.mark.parametrize(
    "topic_filter",
    [
        "$share/",  # no group, no filter
        "$share/g",  # no filter
        "$share/g/",  # an empty filter
        "$share//a",  # an empty group
        "$share/g+/a",  # a wildcard in the group
        "$share/+/a",
        "$share/#/a",
        "$share/g/a/#/b",  # the inner filter is checked like any other
        "$share/g/a+",
    ],
)
def test_malformed_shared_filters_are_refused(topic_filter: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_topic_filter(topic_filter)
    assert caught.value.field == "topic filter"


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("$share/g/cmd/#", "cmd/reboot", True),
        ("$share/g/cmd/#", "other/reboot", False),
        ("$share/g/cmd/+", "cmd/a/b", False),
        ("$share/g/cmd/+", "cmd/a", True),
        ("$share/g/#", "$SYS/x", False),  # $-topics still match only explicitly
        ("$share/g/$SYS/#", "$SYS/x", True),
        # Not the share syntax: matched literally, as any filter is.
        ("$shared/g/a", "$shared/g/a", True),
    ],
)
def test_a_shared_filter_matches_what_its_inner_filter_matches(
    topic_filter: str, topic: str, expected: bool
) -> None:
    assert topic_matches(topic_filter, topic) is expected


def test_the_subscribed_filter_of_a_plain_filter_is_itself() -> None:
    assert subscribed_filter("a/+/#") == "a/+/#"
    assert subscribed_filter("$share/group/a/+/#") == "a/+/#"

from __future__ import annotations

import pytest

from device_sdk.dedup import (
    Deduplicator,
    message_id_from_properties,
    unwrap_envelope,
    wrap_envelope,
)
from device_sdk.errors import ConfigError


def test_envelope_round_trips_any_payload() -> None:
    payload = bytes(range(256))
    assert unwrap_envelope(wrap_envelope("01ABC", payload)) == ("01ABC", payload)


@pytest.mark.parametrize("data", [b"", b"{}", b"[1]", b'{"message_id": 1, "payload": ""}',
                                  b'{"message_id": "x", "payload": "***"}', b"\xff"])  # fmt: skip
def test_not_an_envelope_is_a_clear_error(data: bytes) -> None:
    with pytest.raises(ConfigError, match="envelope"):
        unwrap_envelope(data)


def test_deduplicator_forgets_only_beyond_its_window() -> None:
    seen = Deduplicator(capacity=2)
    assert seen.first_time("a") and seen.first_time("b")
    assert not seen.first_time("a")
    assert seen.first_time("c")  # evicts b, the least recently seen
    assert seen.first_time("b")


def test_message_id_from_user_properties() -> None:
    class Props:
        UserProperty = (("other", "x"), ("message-id", "01XYZ"))

    assert message_id_from_properties(Props()) == "01XYZ"
    assert message_id_from_properties(None) is None

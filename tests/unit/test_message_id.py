"""Message ids: ULID layout, sortable as strings, never going backwards. Virtual clock only."""

from __future__ import annotations

import threading

import pytest

from device_sdk.core.message_id import (
    ID_LENGTH,
    MessageIdSource,
    decode_message_id,
    encode_message_id,
    message_id_time_ms,
)


class FakeClock:
    """Milliseconds the test sets by hand."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


def source(clock: FakeClock, random_value: int = 0) -> MessageIdSource:
    return MessageIdSource(clock_ms=clock, random_bits=lambda bits: random_value % (1 << bits))


def test_encoding_matches_the_ulid_reference() -> None:
    # The ULID spec's example: timestamp 1469918176385 encodes as 01ARYZ6S41.
    assert encode_message_id(1469918176385 << 80)[:10] == "01ARYZ6S41"
    assert encode_message_id(0) == "0" * ID_LENGTH
    assert encode_message_id((1 << 128) - 1) == "7" + "Z" * 25


@pytest.mark.parametrize("value", [0, 1, 31, 32, 1 << 80, (1 << 127) + 12345, (1 << 128) - 1])
def test_decode_inverts_encode(value: int) -> None:
    assert decode_message_id(encode_message_id(value)) == value


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0" * 25,
        "0" * 27,
        "8" + "0" * 25,  # beyond 128 bits
        "0" * 25 + "I",  # not in Crockford's alphabet
        "0" * 25 + "U",
        "01arYZ6S410000000000000000",  # lower case is not canonical
    ],
)
def test_decode_rejects_anything_but_a_canonical_id(text: str) -> None:
    with pytest.raises(ValueError, match="not a message id"):
        decode_message_id(text)


def test_encode_rejects_values_outside_128_bits() -> None:
    for value in (-1, 1 << 128):
        with pytest.raises(ValueError):
            encode_message_id(value)


def test_ids_carry_the_clock_and_sort_as_strings_in_issue_order() -> None:
    clock = FakeClock(1_700_000_000_000)
    ids = MessageIdSource(clock_ms=clock)
    issued = []
    for step in (0, 0, 0, 1, 1, 250, 250, 86_400_000):
        clock.now_ms += step
        issued.append(ids.next_id())
    assert issued == sorted(issued)
    assert len(set(issued)) == len(issued)
    assert all(len(i) == ID_LENGTH for i in issued)
    assert message_id_time_ms(issued[-1]) == clock.now_ms


def test_within_one_millisecond_the_random_part_counts_up() -> None:
    ids = source(FakeClock(5), random_value=41)
    first, second, third = (decode_message_id(ids.next_id()) for _ in range(3))
    assert first == 5 << 80 | 41
    assert (second, third) == (first + 1, first + 2)


def test_a_new_millisecond_draws_fresh_randomness() -> None:
    clock = FakeClock(5)
    draws = iter([900, 7])
    ids = MessageIdSource(clock_ms=clock, random_bits=lambda _bits: next(draws))
    ids.next_id()
    clock.now_ms = 6
    # A lower random part, but a later millisecond: still greater.
    assert decode_message_id(ids.next_id()) == 6 << 80 | 7


def test_never_goes_backwards_when_the_wall_clock_does() -> None:
    clock = FakeClock(1_000_000)
    ids = source(clock, random_value=3)
    before = ids.next_id()
    clock.now_ms = 10  # NTP stepped back, or a board without an RTC rebooted
    after = [ids.next_id() for _ in range(3)]
    assert before < after[0] < after[1] < after[2]
    assert message_id_time_ms(after[0]) == 1_000_000  # keeps counting from the last id
    clock.now_ms = 2_000_000
    assert message_id_time_ms(ids.next_id()) == 2_000_000  # and follows the clock once it is ahead


def test_a_full_random_part_carries_into_the_timestamp() -> None:
    ids = source(FakeClock(5), random_value=(1 << 80) - 1)
    first, second = (decode_message_id(ids.next_id()) for _ in range(2))
    assert second == first + 1 == 6 << 80


def test_observe_seeds_the_source_from_a_stored_id() -> None:
    stored = encode_message_id(9_000 << 80 | 77)
    ids = source(FakeClock(10), random_value=1)
    assert ids.last is None
    ids.observe(stored)
    assert ids.last == stored
    assert ids.next_id() > stored
    ids.observe(encode_message_id(1))  # an older id changes nothing
    assert decode_message_id(ids.last or "") == 9_000 << 80 | 78


def test_observe_rejects_a_malformed_id() -> None:
    with pytest.raises(ValueError):
        source(FakeClock(1)).observe("not-an-id")


def test_a_clock_outside_48_bits_is_refused() -> None:
    for bad in (-1, 1 << 48):
        with pytest.raises(ValueError, match="48-bit"):
            source(FakeClock(bad)).next_id()


def test_ids_are_unique_and_ordered_across_threads() -> None:
    ids = source(FakeClock(42))  # one frozen millisecond: every id comes from the counter
    per_thread: list[list[str]] = [[] for _ in range(4)]

    def issue(into: list[str]) -> None:
        into.extend(ids.next_id() for _ in range(500))

    threads = [threading.Thread(target=issue, args=(out,)) for out in per_thread]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [i for out in per_thread for i in out]
    assert len(set(everything)) == 2000
    assert all(out == sorted(out) for out in per_thread)


def test_default_source_uses_the_wall_clock_and_real_randomness() -> None:
    a, b = MessageIdSource(), MessageIdSource()
    # Two devices (two sources) in the same millisecond still differ, in the random part.
    assert a.next_id() != b.next_id()

"""Message ids: sortable, unique per device, stable across resends.

Every message gets its id once, when ``publish()`` accepts it, and keeps it
through every resend, reconnect, failover and restart, so a backend can
deduplicate. The layout is ULID's: 128 bits, written as 26 characters of
Crockford base32 (``0-9`` and ``A-Z`` without ``I L O U``)::

    01HZX3J8C4 Q5W7N2B6R9T0Y1V3
    |--------| |--------------|
    48-bit ms  80 bits: random, +1 within one millisecond
    timestamp

Why this layout: ids sort by acceptance time as plain strings (the alphabet is
in ASCII order and every id has the same length), so a backend can merge and
deduplicate two hubs' streams after a failover with nothing but string
comparison; and the 80 random bits keep two devices, or one device before and
after a lost state file, from colliding.

The source never goes backwards: an id is always greater than the last one it
issued, even if the wall clock steps back (NTP, a gateway without an RTC
booting at 1970). Then it keeps counting up from the last id instead. The
durable outbox seeds the source from the newest id it has stored
(:meth:`MessageIdSource.observe`), so this holds across restarts too.

Pure: the clock and the randomness are injected (defaults: wall clock and a
generator seeded from ``secrets``); nothing here does I/O.
"""

from __future__ import annotations

import base64
import os
import random
import re
import secrets
import threading
import time
from collections.abc import Callable

__all__ = [
    "ID_LENGTH",
    "MessageIdSource",
    "decode_message_id",
    "encode_message_id",
    "message_id_time_ms",
    "wall_clock_ms",
]

ID_LENGTH = 26
_RANDOM_BITS = 80
_MAX_VALUE = (1 << 128) - 1
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RFC4648 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_TO_RFC4648 = str.maketrans(_CROCKFORD, _RFC4648)
# 26 characters carry 130 bits; the top two are always zero, so the first is 0-7.
_CANONICAL = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}")
# base64's base32 works on 5-byte groups: 20 bytes (160 bits) give 32 characters,
# of which the last 26 hold the low 130 bits, i.e. the whole 128-bit value.
_PADDING = 32 - ID_LENGTH
# Encoding: 26 characters are 13 pairs, one per 10-bit group, most significant first.
_PAIRS = tuple(high + low for high in _CROCKFORD for low in _CROCKFORD)
_PAIR_SHIFTS = tuple(range(ID_LENGTH * 5 - 10, -1, -10))


def encode_message_id(value: int) -> str:
    """The 26-character id for a 128-bit value."""
    if not 0 <= value <= _MAX_VALUE:
        raise ValueError(f"a message id is a 128-bit value, not {value}")
    # Two characters per 10-bit group from a table: publish() calls this once per
    # message, and it is several times faster than base64's base32 (pure Python
    # before 3.12) or a loop over 5-bit groups.
    pairs = _PAIRS
    return "".join([pairs[(value >> shift) & 0x3FF] for shift in _PAIR_SHIFTS])


def decode_message_id(text: str) -> int:
    """The 128-bit value of a canonical (upper-case) id; ``ValueError`` for anything else."""
    if not isinstance(text, str) or not _CANONICAL.fullmatch(text):
        raise ValueError(f"not a message id (26 Crockford base32 characters): {text!r}")
    padded = "A" * _PADDING + text.translate(_TO_RFC4648)
    return int.from_bytes(base64.b32decode(padded), "big")


def message_id_time_ms(text: str) -> int:
    """The millisecond timestamp in an id (when the source issued it, by its clock)."""
    return decode_message_id(text) >> _RANDOM_BITS


# The random part only has to keep ids of different devices (or of one device
# before and after a lost state file) apart, not to be unguessable: a generator
# seeded from the OS once (and again in a forked child) serves, without the
# system call per new millisecond that ``secrets`` costs on the publish path.
_RANDOM = random.Random(secrets.randbits(128))
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _RANDOM.seed(secrets.randbits(128)))


def random_bits(bits: int) -> int:
    """``bits`` random bits from a generator seeded by the OS; the default for ids."""
    return _RANDOM.getrandbits(bits)


def wall_clock_ms() -> int:
    """Milliseconds since the Unix epoch, from the wall clock (which may step back)."""
    return time.time_ns() // 1_000_000


class MessageIdSource:
    """Issues message ids in strictly increasing order. Thread-safe.

    ``clock_ms`` returns milliseconds since the epoch; ``random_bits(k)`` returns
    a random integer of ``k`` bits. Both are injectable so tests control time and
    randomness. Within one millisecond (or while the clock is behind the last id)
    the next id is the last one plus one, as ULID's monotonic mode does, so a
    burst of ids stays in acceptance order.
    """

    def __init__(
        self,
        *,
        clock_ms: Callable[[], int] = wall_clock_ms,
        random_bits: Callable[[int], int] = random_bits,
    ) -> None:
        self._clock_ms = clock_ms
        self._random_bits = random_bits
        self._lock = threading.Lock()
        self._last = -1

    @property
    def last(self) -> str | None:
        """The greatest id issued or observed so far, or ``None``."""
        with self._lock:
            return None if self._last < 0 else encode_message_id(self._last)

    def next_id(self) -> str:
        """A new id, greater than every id issued or observed before."""
        now_ms = self._clock_ms()
        if not 0 <= now_ms < 1 << (128 - _RANDOM_BITS):
            raise ValueError(f"clock_ms returned {now_ms}, outside the 48-bit range")
        with self._lock:
            if now_ms > (self._last >> _RANDOM_BITS):
                value = now_ms << _RANDOM_BITS | self._random_bits(_RANDOM_BITS)
            else:
                # Same millisecond, or the clock stepped back: count up from the
                # last id. A carry out of the random part moves into the timestamp,
                # which keeps the order; 2**80 ids in one millisecond never happen.
                value = self._last + 1
            if value > _MAX_VALUE:
                raise OverflowError("message id space exhausted")
            self._last = value
        return encode_message_id(value)

    def observe(self, message_id: str) -> None:
        """Never issue an id less than or equal to ``message_id`` (seeding after a restart)."""
        value = decode_message_id(message_id)
        with self._lock:
            self._last = max(self._last, value)

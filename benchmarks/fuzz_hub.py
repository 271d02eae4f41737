"""Fuzzing a hostile hub: corrupted server packet streams against a real DeviceClient.

    python benchmarks/fuzz_hub.py [--cases N] [--seconds S] [--seed K] [--json [PATH]]

Each case builds a stream of valid server packets for MQTT 3.1.1 or 5 (a
CONNACK, then PUBACK, PUBLISH, SUBACK, UNSUBACK, PINGRESP, PUBREC, PUBREL,
PUBCOMP and, in MQTT 5, DISCONNECT), corrupts it (fixed-header flags and types,
remaining lengths up to 268 MB and five-byte ones, packet ids, property blocks,
topics that are not UTF-8 or hold U+0000 or wildcards, single bytes, order,
duplicates, truncation, garbage between packets), cuts it into chunks sent a few
milliseconds apart, and plays it from a testbed ``HostileHub`` to a real
``DeviceClient`` (MQTT version of the case, in-memory outbox). After the stream
the hub closes that connection; every later one is relayed to a real mosquitto.
Every case must leave:

* the client's engine thread (``device-sdk-engine-<client id>``) alive and the
  client healthy, with no ``EngineFault`` event (a hub's bytes are never taken for
  a fault of device_sdk's own code);
* the peak of memory traced by ``tracemalloc`` while the case ran, above what
  was traced when it started, below ``--memory-bound`` MiB;
* one message, published once the hostile connection is over, acknowledged
  within ``--ack-timeout`` seconds through mosquitto.

A case that breaks one is a failure, printed with the stream that caused it; the
exit status is 1 when there is any. The run stops after ``--cases`` cases or
``--seconds`` seconds, whichever comes first. Cases come from ``--seed``, so a
run can be repeated; ``tests/integration/test_fuzz_hub.py`` draws the same kind
of case through hypothesis. Everything runs on loopback; the testbed stops the
mosquitto it started, by PID.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import random
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_sdk import DeviceClient, FailoverPolicy, RetryPolicy, events
from device_sdk.adapters.mqtt_rules import varint
from device_sdk.errors import DeviceSDKError
from device_sdk.testbed import Testbed
from device_sdk.testbed.hostile_hub import HostileHub, Send, encode_packet

try:  # the benchmarks' shared machine description and --json handling
    from benchmarks import report
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    import report  # type: ignore[import-not-found,no-redef]


V5, V311 = "5", "3.1.1"
TOPIC = "fuzz/telemetry"
MiB = 1 << 20
MEMORY_BOUND_MIB = 4.0
ACK_TIMEOUT = 5.0
# A case's chunks: at most this many, each after a pause of at most MAX_PAUSE seconds.
MAX_CHUNKS = 4
MAX_PAUSE = 0.02
# Fast retries, no long back-off after a refusal, no shunning of the only hub: a case
# measures containment, not the retry policy.
FUZZ_RETRY = RetryPolicy(initial=0.01, maximum=0.05, long_delay=0.05, stable_after=0.5)
FUZZ_FAILOVER = FailoverPolicy(permanent_penalty_seconds=0.0, failback_dwell_seconds=0.0)


# -- drawing cases from a Random -------------------------------------------------------------


def _blob(rng: random.Random, max_size: int) -> bytes:
    return rng.randbytes(rng.randint(0, max_size))


@dataclass(slots=True)
class Piece:
    """One packet of a stream while it is built: its command byte and body, and the
    remaining-length bytes when a mutation forged them (None: the true length).
    ``raw`` pieces are bytes sent as they are (garbage, a truncated packet)."""

    command: int
    body: bytes
    length_field: bytes | None = None
    raw: bool = False

    def encode(self) -> bytes:
        if self.raw:
            return self.body
        if self.length_field is None:
            return encode_packet(self.command, self.body)
        return bytes([self.command]) + self.length_field + self.body


def _properties(rng: random.Random, options: Sequence[bytes]) -> bytes:
    """A property block holding none or one of ``options`` (each id + value)."""
    chosen = b"" if rng.randint(0, 2) == 0 else rng.choice(options)
    return varint(len(chosen)) + chosen


_TOPICS = ("t", "sensors/temperature", "a/b/c", "é/ü/€", "x" * 40)
_PUBLISH_PROPERTIES = (
    b"\x01\x01",
    b"\x02\x00\x00\x00\x3c",
    b"\x03\x00\x04text",
    b"\x26\x00\x01k\x00\x01v",
)
_ACK_PROPERTIES = (b"\x1f\x00\x02ok", b"\x26\x00\x01k\x00\x01v")
_CONNACK_PROPERTIES = (
    b"\x21\x00\x05",  # Receive Maximum 5
    b"\x27\x00\x00\x10\x00",  # Maximum Packet Size 4096
    b"\x24\x00",  # Maximum QoS 0
    b"\x25\x00",  # Retain Available 0
    b"\x22\x00\x0a",  # Topic Alias Maximum 10
    b"\x12\x00\x03abc",  # Assigned Client Identifier
)


def _packet_id(rng: random.Random) -> bytes:
    return rng.randint(1, 0xFFFF).to_bytes(2, "big")


def _connack(rng: random.Random, mqtt5: bool) -> Piece:
    if not mqtt5:
        return Piece(0x20, bytes([0, 0]))
    return Piece(0x20, b"\x00\x00" + _properties(rng, _CONNACK_PROPERTIES))


def _publish(rng: random.Random, mqtt5: bool) -> Piece:
    qos, retain = rng.randint(0, 2), rng.randint(0, 1)
    topic = rng.choice(_TOPICS).encode("utf-8")
    body = len(topic).to_bytes(2, "big") + topic + (_packet_id(rng) if qos else b"")
    if mqtt5:
        body += _properties(rng, _PUBLISH_PROPERTIES)
    return Piece(0x30 | qos << 1 | retain, body + _blob(rng, 48))


def _ack(rng: random.Random, mqtt5: bool, command: int, codes: Sequence[int]) -> Piece:
    body = _packet_id(rng)
    shape = rng.randint(0, 2) if mqtt5 else 0
    if shape >= 1:
        body += bytes([rng.choice(codes)])
    if shape == 2:
        body += _properties(rng, _ACK_PROPERTIES)
    return Piece(command, body)


def _suback(rng: random.Random, mqtt5: bool, command: int) -> Piece:
    codes = (0x00, 0x01, 0x02, 0x80) + ((0x87, 0x11) if mqtt5 else ())
    chosen = bytes(rng.choice(codes) for _ in range(rng.randint(1, 3)))
    if command == 0xB0 and not mqtt5:
        chosen = b""  # an MQTT 3.1.1 UNSUBACK is its packet id alone
    return Piece(command, _packet_id(rng) + (b"\x00" if mqtt5 else b"") + chosen)


def _disconnect(rng: random.Random) -> Piece:
    shape = rng.randint(0, 2)
    if shape == 0:
        return Piece(0xE0, b"")
    code = bytes([rng.choice((0x00, 0x80, 0x89, 0x8B, 0x93))])
    return Piece(0xE0, code + (_properties(rng, _ACK_PROPERTIES) if shape == 2 else b""))


_PUBACK_CODES = (0x00, 0x10, 0x80, 0x87, 0x97)


def _valid_packet(rng: random.Random, mqtt5: bool) -> Piece:
    kinds: list[Callable[[], Piece]] = [
        lambda: _publish(rng, mqtt5),
        lambda: _ack(rng, mqtt5, 0x40, _PUBACK_CODES),
        lambda: _ack(rng, mqtt5, 0x50, _PUBACK_CODES),
        lambda: _ack(rng, mqtt5, 0x62, (0x00, 0x92)),
        lambda: _ack(rng, mqtt5, 0x70, (0x00, 0x92)),
        lambda: _suback(rng, mqtt5, 0x90),
        lambda: _suback(rng, mqtt5, 0xB0),
        lambda: Piece(0xD0, b""),
    ]
    if mqtt5:
        kinds.append(lambda: _disconnect(rng))
    return rng.choice(kinds)()


# -- corrupting them ---------------------------------------------------------------------------

_BAD_TOPICS = (b"\xff\xfe", b"\xc3\x28", b"a\x00b", b"a/+/b", b"#", b"", b"\xed\xa0\x80")
_LENGTH_FIELDS = (b"\xff\xff\xff\x7f", b"\xff\xff\xff\xff\x01", b"\x80\x80\x80\x80\x80", b"\x00")


def _flags(rng: random.Random, pieces: list[Piece], at: int) -> str | None:
    piece = pieces[at]
    piece.command = piece.command & 0xF0 | rng.randint(0, 15)
    return f"flags of #{at} -> 0x{piece.command:02X}"


def _type(rng: random.Random, pieces: list[Piece], at: int) -> str | None:
    piece = pieces[at]
    piece.command = rng.randint(0, 15) << 4 | piece.command & 0x0F
    return f"type of #{at} -> 0x{piece.command:02X}"


def _length(rng: random.Random, pieces: list[Piece], at: int) -> str | None:
    field = rng.choice([*_LENGTH_FIELDS, varint(rng.randint(0, 300))])
    pieces[at].length_field = field
    return f"remaining length of #{at} -> {field.hex()}"


def _zero_id(_rng: random.Random, pieces: list[Piece], at: int) -> str | None:
    piece = pieces[at]
    publish = piece.command >> 4 == 3
    if len(piece.body) < 2 or (publish and piece.command & 0x06 == 0):
        return None  # no packet id to zero
    start = 2 + (piece.body[0] << 8 | piece.body[1]) if publish else 0
    piece.body = piece.body[:start] + b"\x00\x00" + piece.body[start + 2 :]
    return f"packet id of #{at} -> 0"


def _byte(rng: random.Random, pieces: list[Piece], at: int) -> str | None:
    piece = pieces[at]
    if not piece.body:
        return None
    spot = rng.randint(0, len(piece.body) - 1)
    piece.body = piece.body[:spot] + bytes([rng.randint(0, 255)]) + piece.body[spot + 1 :]
    return f"byte {spot} of #{at} -> 0x{piece.body[spot]:02X}"


def _topic(rng: random.Random, pieces: list[Piece], at: int) -> str | None:
    piece = pieces[at]
    if piece.command >> 4 != 3 or len(piece.body) < 2:
        return None
    topic = rng.choice(_BAD_TOPICS)
    rest = piece.body[2 + (piece.body[0] << 8 | piece.body[1]) :]
    piece.body = len(topic).to_bytes(2, "big") + topic + rest
    return f"topic of #{at} -> {topic!r}"


def _tail(rng: random.Random, pieces: list[Piece], at: int) -> str | None:
    piece, junk = pieces[at], _blob(rng, 12)
    piece.body = piece.body[: rng.randint(0, len(piece.body))] + varint(len(junk)) + junk
    return f"tail of #{at} -> a property block of {junk.hex() or 'nothing'}"


def _truncate(rng: random.Random, pieces: list[Piece], at: int) -> str | None:
    encoded = pieces[at].encode()
    if not encoded:
        return None  # already cut to nothing
    pieces[at] = Piece(0, encoded[: rng.randint(0, len(encoded) - 1)], raw=True)
    return f"#{at} cut to {len(pieces[at].body)} bytes"


def _duplicate(rng: random.Random, pieces: list[Piece], at: int) -> str | None:
    pieces.insert(rng.randint(0, len(pieces)), dataclasses.replace(pieces[at]))
    return f"#{at} sent twice"


def _swap(rng: random.Random, pieces: list[Piece], at: int) -> str | None:
    other = rng.randint(0, len(pieces) - 1)
    pieces[at], pieces[other] = pieces[other], pieces[at]
    return f"#{at} and #{other} swapped"


def _garbage(rng: random.Random, pieces: list[Piece], _at: int) -> str | None:
    pieces.insert(rng.randint(0, len(pieces)), Piece(0, _blob(rng, 16), raw=True))
    return "garbage between packets"


def _drop_first(_rng: random.Random, pieces: list[Piece], _at: int) -> str | None:
    if len(pieces) < 2:
        return None
    del pieces[0]
    return "first packet left out"


# Each corrupts the stream in place at packet ``at`` and says how (None: it did not fit).
_MUTATIONS: tuple[Callable[[random.Random, list[Piece], int], str | None], ...] = (
    _flags,
    _type,
    _length,
    _zero_id,
    _byte,
    _topic,
    _tail,
    _truncate,
    _duplicate,
    _swap,
    _garbage,
    _drop_first,
)


def _mutate(rng: random.Random, pieces: list[Piece]) -> str:
    """Corrupt ``pieces`` in place, one way; returns what was done."""
    mutation = rng.choice(_MUTATIONS)
    done = mutation(rng, pieces, rng.randint(0, len(pieces) - 1))
    return done or f"nothing ({mutation.__name__.strip('_')} did not fit)"


@dataclass(frozen=True, slots=True)
class Case:
    """A stream a hostile hub plays after the device's CONNECT, and how it was made."""

    version: str
    chunks: tuple[tuple[float, bytes], ...]  # (pause before, bytes)
    recipe: tuple[str, ...]

    def describe(self) -> str:
        stream = b"".join(data for _pause, data in self.chunks)
        return f"MQTT {self.version}: {'; '.join(self.recipe)}; stream {stream.hex()}"


def draw_case(rng: random.Random) -> Case:
    """One case: valid packets for a protocol version, corrupted, cut into chunks.

    ``rng`` is seeded here; the suite passes hypothesis's ``randoms()``, so its
    choices are derandomized and shrinkable."""
    version = rng.choice((V5, V311))
    mqtt5 = version == V5
    pieces = [_connack(rng, mqtt5)] + [_valid_packet(rng, mqtt5) for _ in range(rng.randint(0, 5))]
    recipe = [" ".join(f"{piece.command:02X}" for piece in pieces)]
    recipe += [_mutate(rng, pieces) for _ in range(rng.randint(0, 3))]
    stream = b"".join(piece.encode() for piece in pieces)
    cuts = sorted({rng.randint(0, len(stream)) for _ in range(rng.randint(0, MAX_CHUNKS - 1))})
    bounds = [0, *cuts, len(stream)]
    chunks = tuple(
        (rng.randint(0, int(MAX_PAUSE * 1000)) / 1000, stream[start:end])
        for start, end in itertools.pairwise(bounds)
        if end > start
    )
    return Case(version=version, chunks=chunks, recipe=tuple(recipe))


# -- playing them ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one case did to the client; ``problems`` is empty when it was contained."""

    number: int
    case: Case
    seconds: float
    peak_bytes: int
    first_link: str  # how the hostile connection ended, as the client saw it
    problems: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "case": self.case.describe(),
            "seconds": round(self.seconds, 4),
            "peak_bytes": self.peak_bytes,
            "first_link": self.first_link,
            "problems": list(self.problems),
        }


def _engine_alive(client_id: str) -> bool:
    return any(t.name == f"device-sdk-engine-{client_id}" for t in threading.enumerate())


def _first_link(seen: list[events.Event]) -> str:
    """How the client saw the hostile connection end: its first error, by type."""
    for event in seen:
        error = getattr(event, "error", None)
        if isinstance(event, events.AttemptFailed | events.Disconnected) and error is not None:
            return type(error).__name__
    return "no error seen"


class FuzzRig:
    """A mosquitto to recover through, and the means to play cases against a new client.

    ``tracemalloc`` must be tracing while cases are played (``play`` resets its peak).
    """

    def __init__(
        self,
        work_dir: Path,
        *,
        memory_bound: float = MEMORY_BOUND_MIB * MiB,
        ack_timeout: float = ACK_TIMEOUT,
    ) -> None:
        self._bed = Testbed(hubs=("primary",), work_dir=work_dir)
        self._memory_bound = memory_bound
        self._ack_timeout = ack_timeout

    def __enter__(self) -> FuzzRig:
        self._bed.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._bed.stop()

    def play(self, case: Case, number: int) -> Outcome:
        broker = self._bed.hub("primary").broker
        script = [Send(data, delay=pause) for pause, data in case.chunks]
        client_id = f"fuzz-{number}"
        seen: list[events.Event] = []
        started = time.monotonic()
        with HostileHub(script, upstream=(broker.host, broker.port), after_script="close") as hub:
            config = dataclasses.replace(
                self._bed.client_config(client_id, mqtt_version=case.version),
                hubs=(hub.endpoint(),),
                retry=FUZZ_RETRY,
                failover=FUZZ_FAILOVER,
            )
            # What this case costs: its peak above what earlier cases left (this run's own
            # records, caches), so a long run does not count its history against a case.
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            client = DeviceClient(config, on_event=seen.append)
            try:
                problems = self._contained(client, hub, client_id)
                peak = tracemalloc.get_traced_memory()[1] - before
            finally:
                client.close()
        if peak > self._memory_bound:
            problems.append(f"traced memory peaked at {peak} bytes")
        faults = [e for e in seen if isinstance(e, events.EngineFault)]
        if faults:
            problems.append(f"hub input taken for our own fault: {faults[0].error!r}")
        return Outcome(
            number=number,
            case=case,
            seconds=time.monotonic() - started,
            peak_bytes=peak,
            first_link=_first_link(seen),
            problems=tuple(problems),
        )

    def _contained(self, client: DeviceClient, hub: HostileHub, client_id: str) -> list[str]:
        """Publish once the hostile connection is over; what went wrong, if anything."""
        timeout = self._ack_timeout
        try:
            client.connect(timeout=timeout)
            hub.wait_for_connections(2, timeout)  # the hostile one ended; relayed from now on
            client.publish(TOPIC, b"after the storm").wait(timeout)
        except DeviceSDKError as exc:
            return [f"no acknowledged publish: {exc!r}"]
        problems = []
        if not _engine_alive(client_id):
            problems.append("the engine thread died")
        if not client.healthy:
            problems.append(f"the client is not healthy: {client.failure!r}")
        return problems


# -- the run -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    cases: int
    seconds: float
    seed: int
    memory_bound_mib: float
    ack_timeout: float


def run(settings: Settings, *, progress: bool = True) -> list[Outcome]:
    """Play cases until ``settings.cases`` or ``settings.seconds``, whichever comes first."""
    rng = random.Random(settings.seed)
    # Every case makes the client log a dropped link; the report says what matters.
    logging.getLogger("device_sdk").addHandler(logging.NullHandler())
    outcomes: list[Outcome] = []
    deadline = time.monotonic() + settings.seconds
    with tempfile.TemporaryDirectory(prefix="fuzz-hub-") as work_dir:
        rig = FuzzRig(
            Path(work_dir),
            memory_bound=settings.memory_bound_mib * MiB,
            ack_timeout=settings.ack_timeout,
        )
        tracemalloc.start()
        try:
            with rig:
                for number in range(settings.cases):
                    if time.monotonic() >= deadline:
                        break
                    outcomes.append(rig.play(draw_case(rng), number))
                    if progress and outcomes[-1].problems:
                        print(f"FAILED case {number}: {outcomes[-1].problems}", flush=True)
        finally:
            tracemalloc.stop()
    return outcomes


def summarise(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    seconds = [outcome.seconds for outcome in outcomes]
    peaks = [outcome.peak_bytes for outcome in outcomes] or [0]
    return {
        "cases": len(outcomes),
        "failed": sum(1 for outcome in outcomes if outcome.problems),
        "versions": dict(Counter(outcome.case.version for outcome in outcomes)),
        "first_link": dict(Counter(outcome.first_link for outcome in outcomes).most_common()),
        "peak_bytes_max": max(peaks),
        "peak_bytes_median": int(statistics.median(peaks)),
        "seconds_total": round(sum(seconds), 2),
        "seconds_max": round(max(seconds, default=0.0), 3),
    }


def format_report(settings: Settings, summary: dict[str, Any], outcomes: Sequence[Outcome]) -> str:
    lines = [
        f"cases tried      {summary['cases']} (MQTT 5: {summary['versions'].get(V5, 0)}, "
        f"3.1.1: {summary['versions'].get(V311, 0)})",
        f"failures         {summary['failed']}",
        f"peak traced      {summary['peak_bytes_max'] / MiB:.2f} MiB at most, median "
        f"{summary['peak_bytes_median'] / MiB:.2f} MiB (bound {settings.memory_bound_mib:g} MiB)",
        f"time             {summary['seconds_total']:.1f} s, "
        f"slowest case {summary['seconds_max']:.2f} s",
        "how the hostile connection ended, as the client saw it:",
    ]
    lines += [f"  {count:6d}  {name}" for name, count in summary["first_link"].items()]
    for outcome in outcomes:
        if outcome.problems:
            lines += [f"FAILED case {outcome.number}: {'; '.join(outcome.problems)}"]
            lines += [f"  {outcome.case.describe()}"]
    return "\n".join(lines)


def format_header(info: dict[str, Any], settings: Settings) -> str:
    return "\n".join(
        [
            "== fuzz_hub: corrupted server packet streams against a real DeviceClient",
            f"machine: {info['platform']}, {info['cpu']}, {info['cpu_count']} CPUs; "
            f"Python {info['python']}, paho-mqtt {info['paho_mqtt']}, {info['mosquitto']}",
            f"device_sdk: {info['device_sdk_source']}",
            f"date: {info['date']}",
            f"settings: up to {settings.cases} cases or {settings.seconds:g} s, seed "
            f"{settings.seed}, memory bound {settings.memory_bound_mib:g} MiB, "
            f"ack timeout {settings.ack_timeout:g} s",
        ]
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cases", type=int, default=500, help="at most this many (500)")
    parser.add_argument("--seconds", type=float, default=300.0, help="at most this long (300)")
    parser.add_argument("--seed", type=int, default=1, help="where the cases come from (1)")
    parser.add_argument(
        "--memory-bound",
        type=float,
        default=MEMORY_BOUND_MIB,
        help=f"MiB of traced memory a case may peak at ({MEMORY_BOUND_MIB:g})",
    )
    parser.add_argument(
        "--ack-timeout",
        type=float,
        default=ACK_TIMEOUT,
        help=f"seconds for the message after the storm to be acknowledged ({ACK_TIMEOUT:g})",
    )
    report.add_json_option(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not 1 <= args.cases <= 1_000_000:
        parser.error("--cases must be between 1 and 1000000")
    if not 0 < args.seconds <= 86_400:
        parser.error("--seconds must be between 0 and 86400")
    if not 0 < args.memory_bound <= 1024 or not 0 < args.ack_timeout <= 60:
        parser.error("need 0 < --memory-bound <= 1024 and 0 < --ack-timeout <= 60")
    settings = Settings(
        cases=args.cases,
        seconds=args.seconds,
        seed=args.seed,
        memory_bound_mib=args.memory_bound,
        ack_timeout=args.ack_timeout,
    )
    info = report.machine_info()
    quiet = report.json_only(args.json)
    if not quiet:
        print(format_header(info, settings), end="\n\n", flush=True)
    outcomes = run(settings, progress=not quiet)
    summary = summarise(outcomes)

    def document() -> dict[str, Any]:
        command = ["python", "benchmarks/fuzz_hub.py", *(sys.argv[1:] if argv is None else argv)]
        return {
            "machine": info,
            "command": " ".join(command),
            "settings": dataclasses.asdict(settings),
            "summary": summary,
            "failures": [outcome.as_dict() for outcome in outcomes if outcome.problems],
        }

    report.emit(lambda: format_report(settings, summary, outcomes), document, args.json)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""What an MQTT server may send a client: the inbound rules, as tables and pure checks.

MQTT 3.1.1 and MQTT 5 (sections 2 and 3) say which fixed headers a server may
send before and after its CONNACK, and what each packet's body must look like.
:mod:`device_sdk.adapters.paho_link` applies these at its one receive boundary,
before paho acts on a packet; nothing here touches a socket or paho, so the
rules read (and are tested) on their own. Each ``*_problem`` check returns why a
body breaks the protocol, or None.
"""

from __future__ import annotations

from collections.abc import Callable

CONNACK, PUBLISH, PUBACK, DISCONNECT = 0x20, 0x30, 0x40, 0xE0


def varint(value: int) -> bytes:
    """MQTT's variable byte integer (MQTT 5 §1.5.5)."""
    out = bytearray()
    while True:
        byte, value = value % 128, value // 128
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _publish_headers() -> frozenset[int]:
    """PUBLISH fixed headers a server may send: QoS 3 is malformed [MQTT-3.3.1-4], and
    DUP must be 0 at QoS 0 [MQTT-3.3.1-2]."""
    headers = set()
    for flags in range(16):
        qos, dup = (flags >> 1) & 3, flags & 8
        if qos != 3 and not (dup and qos == 0):
            headers.add(PUBLISH | flags)
    return frozenset(headers)


# Fixed headers (type and flags) a server may send once the CONNACK is in. The flags of
# every type but PUBLISH are fixed (0, and 0b0010 for PUBREL). A server never sends
# CONNECT, SUBSCRIBE, UNSUBSCRIBE or PINGREQ; DISCONNECT only in MQTT 5; AUTH only
# after a CONNECT with an Authentication Method, which this client never sends.
_SERVER_HEADERS_V311 = _publish_headers() | {0x40, 0x50, 0x62, 0x70, 0x90, 0xB0, 0xD0}
SERVER_HEADERS = {
    False: frozenset(_SERVER_HEADERS_V311),
    True: frozenset(_SERVER_HEADERS_V311 | {DISCONNECT}),
}
# Before the CONNACK a server sends nothing else [MQTT-3.2.0-1]; paho would even
# acknowledge a PUBLISH that came first.
BEFORE_CONNACK = frozenset({CONNACK})
_SERVER_TYPES = {
    mqtt5: frozenset(header >> 4 for header in headers | BEFORE_CONNACK)
    for mqtt5, headers in SERVER_HEADERS.items()
}

_PACKET_NAMES = {
    0: "reserved type 0", 1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC",
    6: "PUBREL", 7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK",
    12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT", 15: "AUTH",
}  # fmt: skip


def packet_name(command: int) -> str:
    return _PACKET_NAMES[command >> 4]


# Types a server never sends, where a particular word is due.
_NEVER_FROM_SERVER = {
    (15, True): "AUTH, though this client asked for no enhanced authentication",
    (14, False): "DISCONNECT, which a server never sends in MQTT 3.1.1",
}


def refusal(command: int, *, connacked: bool, mqtt5: bool) -> str:
    """Why a fixed header is not one the server may send now, in words."""
    name, kind = packet_name(command), command >> 4
    if kind == CONNACK >> 4 and connacked:
        return "a second CONNACK"
    if command in SERVER_HEADERS[mqtt5]:
        return f"{name} before the CONNACK"
    if kind == PUBLISH >> 4:
        return "PUBLISH with QoS 3" if command & 0x06 == 0x06 else "PUBLISH with DUP at QoS 0"
    if kind in _SERVER_TYPES[mqtt5]:
        return f"{name} with reserved flags 0x{command & 0x0F:X}"
    return _NEVER_FROM_SERVER.get((kind, mqtt5), f"{name}, which a server never sends")


def _properties_end(body: bytes | bytearray, at: int) -> int:
    """Where an MQTT 5 property block starting at ``at`` ends; -1 when its length is
    malformed (cut short, or longer than four bytes)."""
    length, shift = 0, 0
    for used in range(4):
        if at + used >= len(body):
            return -1
        byte = body[at + used]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return at + used + 1 + length
    return -1


def _nonzero_id(body: bytes | bytearray, name: str) -> str | None:
    if len(body) < 2:
        return f"{name} too short for a packet identifier"
    if not (body[0] | body[1]):
        return f"{name} with packet identifier 0"
    return None


def _connack_problem(_command: int, body: bytes | bytearray, mqtt5: bool) -> str | None:
    if len(body) < 2:
        return "CONNACK too short"
    flags, code = body[0], body[1]
    if flags & 0xFE:
        return f"CONNACK with reserved acknowledge flags 0x{flags:02X}"
    if flags and code:
        return f"CONNACK refusing (0x{code:02X}) with Session Present set"
    return _connack_v5_problem(body) if mqtt5 else _connack_v311_problem(body)


def _connack_v311_problem(body: bytes | bytearray) -> str | None:
    if len(body) != 2:
        return f"CONNACK of {len(body)} bytes (MQTT 3.1.1: exactly 2)"
    return f"CONNACK with reserved return code {body[1]}" if body[1] > 5 else None


def _connack_v5_problem(body: bytes | bytearray) -> str | None:
    if body[1] == 1 and len(body) == 2:
        return None  # an MQTT 3.1.1 server refusing the protocol version, in its own words
    if _properties_end(body, 2) != len(body):
        return "CONNACK whose properties do not fill the packet"
    return None


def _ack_problem(command: int, body: bytes | bytearray, mqtt5: bool) -> str | None:
    """PUBACK, PUBREC, PUBREL and PUBCOMP: a packet id, then (MQTT 5) a reason code and
    a property block that ends the packet."""
    name = packet_name(command)
    problem = _nonzero_id(body, name)
    if problem is not None:
        return problem
    if not mqtt5:
        return None if len(body) == 2 else f"{name} of {len(body)} bytes (MQTT 3.1.1: exactly 2)"
    if len(body) > 3 and _properties_end(body, 3) != len(body):
        return f"{name} whose properties do not fill the packet"
    return None


def _suback_problem(command: int, body: bytes | bytearray, mqtt5: bool) -> str | None:
    """SUBACK, and MQTT 5's UNSUBACK: a packet id, (MQTT 5) properties, then at least
    one reason code."""
    name = packet_name(command)
    problem = _nonzero_id(body, name)
    if problem is not None:
        return problem
    codes_at = _properties_end(body, 2) if mqtt5 else 2
    if not 0 <= codes_at < len(body):
        return f"{name} without a reason code after its header"
    if not mqtt5 and any(code not in (0, 1, 2, 0x80) for code in body[2:]):
        return "SUBACK with a reserved return code"
    return None


def _unsuback_problem(command: int, body: bytes | bytearray, mqtt5: bool) -> str | None:
    if mqtt5:
        return _suback_problem(command, body, mqtt5)
    problem = _nonzero_id(body, "UNSUBACK")  # MQTT 3.1.1: a packet id and nothing else
    if problem is None and len(body) != 2:
        problem = f"UNSUBACK of {len(body)} bytes (MQTT 3.1.1: exactly 2)"
    return problem


def _empty_problem(command: int, body: bytes | bytearray, _mqtt5: bool) -> str | None:
    return None if not body else f"{packet_name(command)} with a body of {len(body)} bytes"


def _disconnect_problem(_command: int, body: bytes | bytearray, _mqtt5: bool) -> str | None:
    if len(body) > 1 and _properties_end(body, 1) != len(body):
        return "DISCONNECT whose properties do not fill the packet"
    return None


def _topic_problem(raw: bytes | bytearray) -> str | None:
    """A PUBLISH topic name: UTF-8 without U+0000 [MQTT-1.5.3], no wildcards
    [MQTT-3.3.2-2], not empty (this client allows no topic aliases)."""
    if not raw:
        return "an empty topic (this client allows no topic alias)"
    try:
        topic = bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return f"a topic that is not valid UTF-8 ({bytes(raw[:40])!r})"
    if "\0" in topic:
        return "a topic holding U+0000"
    if "+" in topic or "#" in topic:
        return "a topic holding a wildcard"
    return None


def _publish_problem(command: int, body: bytes | bytearray, mqtt5: bool) -> str | None:
    if len(body) < 2:
        return "PUBLISH too short for its topic"
    end = 2 + (body[0] << 8 | body[1])
    if end > len(body):
        return "PUBLISH whose topic runs past the packet"
    problem = _topic_problem(body[2:end])
    if problem is not None:
        return f"PUBLISH with {problem}"
    qos = (command >> 1) & 3
    if qos:
        problem = _nonzero_id(body[end:], f"PUBLISH at QoS {qos}")
        if problem is not None:
            return problem
        end += 2
    if mqtt5 and not 0 <= _properties_end(body, end) <= len(body):
        return "PUBLISH whose properties run past the packet"
    return None


# Per packet type (the high nibble), what its body must look like. Each returns why
# it does not, or None.
BODY_RULES: dict[int, Callable[[int, bytes | bytearray, bool], str | None]] = {
    0x2: _connack_problem,
    0x3: _publish_problem,
    0x4: _ack_problem,
    0x5: _ack_problem,
    0x6: _ack_problem,
    0x7: _ack_problem,
    0x9: _suback_problem,
    0xB: _unsuback_problem,
    0xD: _empty_problem,
    0xE: _disconnect_problem,
}


def largest_body(max_packet_size: int) -> int:
    """The largest remaining length whose packet (with the shortest fixed header that
    encodes it) still fits ``max_packet_size``."""
    return max(
        body
        for body in range(max(0, max_packet_size - 5), max_packet_size - 1)
        if 1 + len(varint(body)) + body <= max_packet_size
    )

"""Reason codes -> FailureKind: the tables, read back as tables."""

from __future__ import annotations

import pytest

from device_sdk.core.outcomes import (
    MQTT5_CONNACK,
    MQTT5_NAMES,
    MQTT311_CONNACK,
    REFUSAL_ERRORS,
    FailureKind,
    classify_connack,
    classify_disconnect,
    describe_reason,
)
from device_sdk.errors import HubBusy, PermanentRefusal, Redirected, TransientRefusal

T, P, R = FailureKind.TRANSIENT, FailureKind.PERMANENT, FailureKind.REDIRECT
B = FailureKind.BUSY

MQTT311_ROWS = [(0, None), (1, P), (2, P), (3, B), (4, P), (5, P), (6, T), (200, T)]

MQTT5_ROWS = [
    (0x00, None),
    (0x80, T),
    (0x81, P),
    (0x82, P),
    (0x83, T),
    (0x84, P),
    (0x85, P),
    (0x86, P),
    (0x87, P),
    (0x88, B),
    (0x89, B),
    (0x8A, P),
    (0x8C, P),
    (0x95, P),
    (0x97, B),
    (0x99, P),
    (0x9A, P),
    (0x9B, P),
    (0x9C, R),
    (0x9D, R),
    (0x9F, B),
    (0xA7, T),  # unknown: never strand the device
]

DISCONNECT_ROWS = [
    (0x00, T),
    (0x80, T),
    (0x87, P),
    (0x89, B),
    (0x8A, P),
    (0x8B, T),
    (0x8E, T),
    (0x97, B),
    (0x9C, R),
    (0x9D, R),
    (0x9F, B),
    (0xFE, T),
]


@pytest.mark.parametrize(("code", "kind"), MQTT311_ROWS)
def test_mqtt311_connack(code: int, kind: FailureKind | None) -> None:
    assert classify_connack(code, mqtt5=False) is kind


@pytest.mark.parametrize(("code", "kind"), MQTT5_ROWS)
def test_mqtt5_connack(code: int, kind: FailureKind | None) -> None:
    assert classify_connack(code, mqtt5=True) is kind


@pytest.mark.parametrize(("code", "kind"), DISCONNECT_ROWS)
def test_mqtt5_disconnect(code: int, kind: FailureKind) -> None:
    assert classify_disconnect(code) is kind


def test_every_classified_code_has_a_name() -> None:
    assert set(MQTT5_CONNACK) <= set(MQTT5_NAMES)
    for code in MQTT311_CONNACK:
        assert "unknown" not in describe_reason(code, mqtt5=False)


@pytest.mark.parametrize(
    ("code", "mqtt5", "name"),
    [
        (0x9C, True, "use another server"),
        (0x8B, True, "server shutting down"),
        (4, False, "bad user name or password"),
        (0xA7, True, "unknown reason code 0xA7"),
        (9, False, "unknown reason code 0x09"),
    ],
)
def test_describe_reason(code: int, mqtt5: bool, name: str) -> None:
    assert describe_reason(code, mqtt5=mqtt5) == name


def test_refusal_errors_cover_every_kind() -> None:
    assert set(REFUSAL_ERRORS) == set(FailureKind)
    assert REFUSAL_ERRORS[P] is PermanentRefusal
    assert REFUSAL_ERRORS[R] is Redirected
    assert REFUSAL_ERRORS[T] is TransientRefusal
    assert REFUSAL_ERRORS[B] is HubBusy and issubclass(HubBusy, TransientRefusal)

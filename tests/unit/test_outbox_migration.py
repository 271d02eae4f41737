"""An outbox file left on a device by an earlier release opens, migrated in place, losing nothing.

``tests/fixtures/outbox-schema-1.sqlite`` was written by the schema-1 code
itself (see ``tests/fixtures/README.md``): seqs 4-8 unacknowledged, 1-3
acknowledged and deleted. Every test works on a copy. A schema newer than this
code reads, or rows it cannot trust, are refused and left byte-for-byte alone.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import sqlite3
from pathlib import Path

import pytest

from device_sdk.adapters import sqlite_file
from device_sdk.adapters.sqlite_outbox import SCHEMA_VERSION, SqliteOutbox
from device_sdk.errors import OutboxCorrupt, OutboxStorageError
from device_sdk.outbox import URGENT

FIXTURE = Path(__file__).parent.parent / "fixtures" / "outbox-schema-1.sqlite"
# What the schema-1 code left in the fixture: (seq, message_id, topic, payload, qos).
SCHEMA_1_ROWS = [
    (4, "01M8Y2FESTSCGK6ZXH04X2JEM6", "sensors/1", b"reading-3", 1),
    (5, "01M8Y2FESV0K1ZSD5NA5PKT4RV", "sensors/0", b"reading-4", 0),
    (6, "01M8Y2FESV0K1ZSD5NA5PKT4RW", "sensors/1", b"reading-5", 1),
    (7, "01M8Y2FESV0K1ZSD5NA5PKT4RX", "sensors/0", b"reading-6", 0),
    (8, "01M8Y2FESWJD4783JN8PA3P1SP", "sensors/1", b"reading-7", 1),
]


def user_version(path: Path) -> int:
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


def columns(path: Path) -> list[str]:
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return [row[1] for row in db.execute("PRAGMA table_info(outbox)")]
    finally:
        db.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def open_outbox(path: Path) -> SqliteOutbox:
    return SqliteOutbox(path, max_messages=1000, max_bytes=1_000_000)


@pytest.fixture
def schema_1(tmp_path: Path) -> Path:
    path = tmp_path / "outbox.sqlite"
    shutil.copyfile(FIXTURE, path)
    path.chmod(0o600)
    assert user_version(path) == 1  # the fixture is what the old code wrote
    return path


def test_a_schema_1_outbox_is_migrated_in_place_and_loses_nothing(
    schema_1: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="device_sdk")
    outbox = open_outbox(schema_1)
    try:
        recovered = outbox.take_unsent(100)
        assert [(m.seq, m.message_id, m.topic, m.payload, m.qos) for m in recovered] == (
            SCHEMA_1_ROWS
        )
        defaults = {(m.retain, m.properties, m.expires_at, m.priority) for m in recovered}
        assert defaults == {(False, None, None, 0)}
        assert outbox.depth() == 5
        # The migration kept outbox_state: seqs and ids go on after the newest issued.
        newer = outbox.put("t", b"new", 1, priority=URGENT, ttl=60)
        assert newer.seq == 9 and newer.message_id > SCHEMA_1_ROWS[-1][1]
    finally:
        outbox.close()
    assert "migrated" in caplog.text and "schema 1 to 2" in caplog.text
    assert user_version(schema_1) == SCHEMA_VERSION == 2
    assert columns(schema_1)[-4:] == ["retain", "properties", "expires_at", "priority"]


def test_opening_a_migrated_outbox_again_changes_nothing(
    schema_1: Path, caplog: pytest.LogCaptureFixture
) -> None:
    open_outbox(schema_1).close()
    before = digest(schema_1)
    caplog.set_level(logging.INFO, logger="device_sdk")
    outbox = open_outbox(schema_1)
    try:
        assert [m.seq for m in outbox.take_unsent(100)] == [row[0] for row in SCHEMA_1_ROWS]
    finally:
        outbox.close()
    assert "migrated" not in caplog.text
    assert user_version(schema_1) == 2
    assert digest(schema_1) == before


def test_a_migration_that_fails_half_way_leaves_schema_1_whole(
    schema_1: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = digest(schema_1)
    # The last step fails, after the first columns were added in the same transaction.
    failing = (*sqlite_file._ADDED_IN_2, "ALTER TABLE no_such_table ADD COLUMN x INTEGER")
    monkeypatch.setattr(sqlite_file, "_ADDED_IN_2", failing)
    with pytest.raises(OutboxStorageError):
        open_outbox(schema_1)
    assert user_version(schema_1) == 1
    assert columns(schema_1) == ["seq", "message_id", "topic", "payload", "qos"]
    assert digest(schema_1) == before  # rolled back: not a byte changed
    monkeypatch.undo()
    outbox = open_outbox(schema_1)  # and the next open migrates it
    try:
        assert outbox.depth() == 5
    finally:
        outbox.close()
    assert user_version(schema_1) == 2


def set_user_version(path: Path, version: int) -> None:
    db = sqlite3.connect(path)
    try:
        db.execute(f"PRAGMA user_version = {version}")
    finally:
        db.close()


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, 1000])
def test_a_newer_schema_is_refused_and_never_overwritten(tmp_path: Path, version: int) -> None:
    path = tmp_path / "outbox.sqlite"
    outbox = open_outbox(path)
    outbox.put("t", b"kept", 1)
    outbox.close()
    set_user_version(path, version)
    before = digest(path)
    with pytest.raises(OutboxCorrupt, match=rf"newer device_sdk \(outbox schema {version};"):
        open_outbox(path)
    assert digest(path) == before
    assert [p.name for p in tmp_path.iterdir()] == ["outbox.sqlite"]


def corrupt_rows(path: Path, sql: str) -> None:
    outbox = open_outbox(path)
    outbox.put("t", b"x", 1)
    outbox.close()
    db = sqlite3.connect(path)
    try:
        db.execute(sql)
        db.commit()
    finally:
        db.close()


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE outbox SET priority = 10",
        "UPDATE outbox SET priority = -1",
        "UPDATE outbox SET retain = 2",
        "UPDATE outbox SET expires_at = 'soon'",
        "UPDATE outbox SET properties = x'00'",
        "UPDATE outbox SET properties = '{not json'",
        "UPDATE outbox SET properties = '{\"up\": 5}'",
    ],
)
def test_schema_2_rows_it_cannot_trust_are_refused_untouched(tmp_path: Path, sql: str) -> None:
    path = tmp_path / "outbox.sqlite"
    corrupt_rows(path, sql)
    before = digest(path)
    with pytest.raises(OutboxCorrupt, match="left untouched"):
        open_outbox(path)
    assert digest(path) == before


def test_a_schema_1_file_with_schema_2_columns_is_refused(schema_1: Path) -> None:
    """A version number that does not match the table is damage, not something to migrate."""
    db = sqlite3.connect(schema_1)
    try:
        db.execute("ALTER TABLE outbox ADD COLUMN retain INTEGER NOT NULL DEFAULT 0")
        db.commit()
    finally:
        db.close()
    before = digest(schema_1)
    with pytest.raises(OutboxCorrupt, match="no valid outbox table"):
        open_outbox(schema_1)
    assert digest(schema_1) == before

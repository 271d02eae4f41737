"""The SQLite outbox's file: creating it, checking it before trusting it, opening it.

A file is inspected with plain reads and a connection that cannot write before
anything is written to it, so a corrupt or foreign file is reported
(:class:`~device_sdk.errors.OutboxCorrupt`) and never modified, and storage
failures become :class:`~device_sdk.errors.OutboxStorageError` with the reason.

The files are private: only the user the device runs as may read queued
telemetry. A new outbox is created 0600 whatever the umask, and a missing
folder 0700; SQLite gives its ``-wal`` and ``-shm`` files the database file's
mode. An existing outbox that others may read is made private at open (see
``_make_private`` for why it is tightened rather than only warned about).

The schema is versioned with ``PRAGMA user_version``. Version 1 held topic,
payload and QoS; version 2 adds retain, properties (``PublishProperties``
JSON, NULL for none), expires_at (wall clock, NULL for never) and priority. A
version-1 file left on a device by an earlier release is migrated in place
when it is opened for writing, in one transaction (``migrate``): columns
added with defaults that mean what version 1 meant, so nothing is lost and a
crash half-way leaves version 1 as it was. A newer version than this code
reads is refused as :class:`~device_sdk.errors.OutboxCorrupt`, untouched.
No index besides the primary key: the file is read once, at open, in seq
order, and every later ordering (priority, expiry) is done in memory, so an
index would only add cost to every ``put()``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from device_sdk.errors import (
    OutboxCorrupt,
    OutboxStorageError,
)
from device_sdk.outbox import HIGHEST_PRIORITY, ROUTINE

log = logging.getLogger("device_sdk")

Synchronous = Literal["FULL", "NORMAL"]

APPLICATION_ID = 0x44534B4F  # "DSKO": PRAGMA application_id, set when the file is created
SCHEMA_VERSION = 2  # PRAGMA user_version; 1: before retain, properties, expiry, priority

_SQLITE_MAGIC = b"SQLite format 3\x00"
_HEADER_SIZE = 100
_USER_VERSION_AT = 60  # offsets in the SQLite file header (big-endian 32-bit)
_APPLICATION_ID_AT = 68
# Another outbox on the same file holds an exclusive lock for as long as it is
# open; a process that is just exiting releases it within moments.
_LOCK_TIMEOUT = 0.25
_PRIVATE_FILE = 0o600
_PRIVATE_FOLDER = 0o700
_SIDE_FILES = ("-wal", "-shm")  # SQLite's write-ahead log and its shared-memory index
# Named in every error about where the outbox lives: the two ways out.
_PATH_VARIABLE = "DEVICE_SDK_OUTBOX_PATH"  # the profile key outbox.path, from the environment

# What version 2 added to version 1's outbox table; the defaults are what version 1 meant.
_ADDED_IN_2 = (
    "ALTER TABLE outbox ADD COLUMN retain INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE outbox ADD COLUMN properties TEXT",
    "ALTER TABLE outbox ADD COLUMN expires_at REAL",
    "ALTER TABLE outbox ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",
)
_SCHEMA = (
    "CREATE TABLE outbox ("
    " seq INTEGER PRIMARY KEY, message_id TEXT NOT NULL, topic TEXT NOT NULL,"
    " payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL DEFAULT 0,"
    " properties TEXT, expires_at REAL, priority INTEGER NOT NULL DEFAULT 0)",
    # The newest seq and id ever issued, so both keep increasing across a restart
    # even when every message had been acknowledged and deleted.
    "CREATE TABLE outbox_state ("
    " singleton INTEGER PRIMARY KEY CHECK (singleton = 1),"
    " last_seq INTEGER NOT NULL, last_message_id TEXT NOT NULL)",
    "INSERT INTO outbox_state VALUES (1, 0, '')",
)
_COLUMNS_1 = ("seq", "message_id", "topic", "payload", "qos")
_COLUMNS_2 = (*_COLUMNS_1, "retain", "properties", "expires_at", "priority")
_STATE_COLUMNS = ("singleton", "last_seq", "last_message_id")
_ID_PATTERN = "[0-7]" + "[0-9A-HJKMNP-TV-Z]" * 25  # GLOB for a canonical message id
_BAD_ROWS_1 = (
    "SELECT count(*) FROM outbox WHERE typeof(seq) != 'integer'"
    f" OR typeof(message_id) != 'text' OR message_id NOT GLOB '{_ID_PATTERN}'"
    " OR typeof(topic) != 'text'"
    " OR typeof(payload) != 'blob' OR qos NOT IN (0, 1)"
)
# Priority's range is the outbox's (ROUTINE..HIGHEST_PRIORITY); properties' JSON
# is checked when the rows are loaded.
_BAD_ROWS_2 = (
    _BAD_ROWS_1 + " OR typeof(retain) != 'integer' OR retain NOT IN (0, 1)"
    " OR typeof(properties) NOT IN ('null', 'text')"
    " OR typeof(expires_at) NOT IN ('null', 'real', 'integer')"
    f" OR typeof(priority) != 'integer' OR priority NOT BETWEEN {ROUTINE} AND {HIGHEST_PRIORITY}"
)
_GOOD_STATE = (
    "SELECT count(*) FROM outbox_state WHERE singleton = 1 AND typeof(last_seq) = 'integer'"
    f" AND (last_message_id = '' OR last_message_id GLOB '{_ID_PATTERN}')"
)


def open_outbox_file(path: Path, synchronous: Synchronous) -> sqlite3.Connection:
    """Open, or create, the outbox at ``path`` for writing, once it is known to be ours.

    Raises :class:`OutboxCorrupt` (file untouched) or :class:`OutboxStorageError`.
    """
    with open_errors(path):
        if not path.exists():
            _ensure_folder(path.parent)
            _create(path)
        _check_header(path)
        _check_writable(path)
        _inspect_read_only(path)
        _make_private(path)  # before the writer opens: a new -wal takes the file's mode
        db = _connect_for_writing(path, synchronous)
        try:
            migrate(db, path)
        except BaseException:
            db.close()
            raise
        return db


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring a version-1 outbox to the current schema, in place, in one transaction.

    Called with the writer's exclusive lock, so the version read here is the
    one changed. Why in place and not by copying: the file may be most of a
    small SD card, and the rows themselves do not change, only gain columns.
    A crash before COMMIT leaves version 1 whole, to be migrated next time.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            db.execute("COMMIT")
            return
        if version != 1:  # the checks before opening let only 1 and 2 through
            raise OutboxCorrupt(f"{path} has outbox schema {version}, which cannot be migrated")
        for statement in _ADDED_IN_2:
            db.execute(statement)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        rollback_quietly(db)
        raise
    log.info("outbox: migrated %s from schema 1 to %d", path, SCHEMA_VERSION)


def _ways_out(folder: Path) -> str:
    return (
        f"create {folder} as a folder owned by the user the device runs as, mode 0700 "
        f"(systemd: StateDirectory=), or give the outbox a path in a writable folder "
        f"({_PATH_VARIABLE}=/path/outbox.sqlite, or outbox.path in the profile)"
    )


def _ensure_folder(folder: Path) -> None:
    """Create the outbox's missing folder, private (0700): only the last level of it.

    That is what systemd's ``StateDirectory=`` does for ``/var/lib/<name>``, so a
    profile's default path works on a fresh machine. Why only one level: a
    typo higher up (``/var/lbi/device-sdk/``) must fail here, naming the path,
    rather than grow a tree of folders that nothing else will ever look in.
    """
    if folder.is_dir():
        return
    try:
        os.mkdir(folder, _PRIVATE_FOLDER)
    except FileExistsError:
        raise OutboxStorageError(
            f"cannot create the outbox in {folder}: it exists and is not a folder; "
            + _ways_out(folder)
        ) from None
    except OSError as exc:
        why = failure_reason(exc)
        if exc.errno == errno.ENOENT:
            why = f"{folder.parent} does not exist either (only the last folder is created)"
        elif exc.errno == errno.ENOTDIR:
            why = f"{folder.parent} is not a folder"
        raise OutboxStorageError(
            f"cannot create the outbox's folder {folder}: {why}; " + _ways_out(folder)
        ) from exc
    _fsync(folder.parent)  # the new folder's entry survives power loss, with what it will hold
    log.info("outbox: created the folder %s (mode 0700)", folder)


def _create(path: Path) -> None:
    """Build a new outbox beside ``path`` and link it into place in one step.

    Why not create it in place: a crash half-way would leave an empty or partial
    file that the next open must report as damaged. Built aside, ``path`` is
    either absent or a complete outbox.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.new")
    try:
        # Created here, 0600, before SQLite opens it: SQLite would create it 0644
        # less the umask, and gives its -journal and -wal files the same mode.
        try:
            os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _PRIVATE_FILE))
        except OSError as exc:
            raise OutboxStorageError(
                f"cannot create the outbox {path}: {failure_reason(exc)}; " + _ways_out(path.parent)
            ) from exc
        db = sqlite3.connect(temporary, isolation_level=None)
        try:
            db.execute("BEGIN")
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            for statement in _SCHEMA:
                db.execute(statement)
            db.execute("COMMIT")
            db.execute("PRAGMA journal_mode = WAL")  # persistent: recorded in the header
        finally:
            db.close()
        _fsync(temporary)
        _link_into_place(temporary, path)
        _fsync(path.parent)
    finally:
        for leftover in ("", "-journal", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{temporary}{leftover}")


def _link_into_place(temporary: Path, path: Path) -> None:
    try:
        os.link(temporary, path)  # fails if path appeared meanwhile: never replaces a file
    except FileExistsError:
        return  # another process created it first; the checks that follow judge it
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        # No hard links (FAT on an SD card): rename, after a last look for a file.
        if not path.exists():
            os.rename(temporary, path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_header(path: Path) -> None:
    """Read the SQLite header with plain file I/O, so a foreign file is never opened by SQLite."""
    with open(path, "rb") as file:
        header = file.read(_HEADER_SIZE)
    if len(header) < _HEADER_SIZE or not header.startswith(_SQLITE_MAGIC):
        what = "an empty file" if not header else "no SQLite header"
        raise OutboxCorrupt(f"{path} is not an SQLite database ({what}); it was left untouched")
    application_id = int.from_bytes(header[_APPLICATION_ID_AT : _APPLICATION_ID_AT + 4], "big")
    if application_id != APPLICATION_ID:
        raise OutboxCorrupt(
            f"{path} is an SQLite database but not a device_sdk outbox "
            f"(application_id {application_id:#x}); it was left untouched"
        )
    _check_version(path, int.from_bytes(header[_USER_VERSION_AT : _USER_VERSION_AT + 4], "big"))


def _check_version(path: Path, version: int) -> None:
    if version > SCHEMA_VERSION:
        raise OutboxCorrupt(
            f"{path} was written by a newer device_sdk (outbox schema {version}; this "
            f"version reads {SCHEMA_VERSION}); it was left untouched"
        )
    if version < 1:
        raise OutboxCorrupt(f"{path} is an incomplete outbox (schema 0); it was left untouched")


def _check_writable(path: Path) -> None:
    """Fail at open, with the OS's reason, rather than at the first ``put()``.

    SQLite quietly opens a file it cannot write read-only; opening it for
    writing ourselves (without writing) gets the real errno, e.g. EROFS.
    """
    try:
        os.close(os.open(path, os.O_RDWR))
    except OSError as exc:
        raise OutboxStorageError(
            f"the outbox {path} cannot be written: {failure_reason(exc)}"
        ) from exc
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise OutboxStorageError(
            f"the outbox's directory {path.parent} is not writable (SQLite keeps its "
            "write-ahead log beside the file)"
        )


def _make_private(path: Path) -> None:
    """Take the group and other permissions off the outbox and its side files.

    Why tighten, not only warn: queued telemetry belongs to the device, the
    outbox's files are promised to be private, and a file others can read was
    most likely created by an earlier version or under a lax umask, so a
    warning alone would leave every such device exposed until someone acts.
    Nothing loses by it: an open outbox holds its file exclusively, so no other
    process can share it. Only bits are removed (a read-only file stays
    read-only). A file this user does not own cannot be changed: a warning
    names it and the outbox opens all the same.
    """
    for file in (path, *(Path(f"{path}{side}") for side in _SIDE_FILES)):
        try:
            mode = stat.S_IMODE(os.stat(file).st_mode)
        except FileNotFoundError:
            continue
        if not mode & 0o077:
            continue
        try:
            os.chmod(file, mode & 0o700)
        except OSError as exc:
            log.warning(
                "outbox: %s can be read by other users (mode %04o) and cannot be made private: %s",
                file,
                mode,
                failure_reason(exc),
            )
        else:
            log.warning(
                "outbox: %s could be read by other users (mode %04o); it is now %04o",
                file,
                mode,
                mode & 0o700,
            )


def _inspect_read_only(path: Path) -> None:
    """Check structure and contents through a connection that cannot write the file.

    Without a write-ahead log (the last run closed cleanly) the file alone is
    the whole database, and ``immutable=1`` reads it with no locks and no side
    files. After a crash the log holds the newest commits, so it must be read
    too: ``mode=ro`` does that, through a shared-memory index it may create.
    """
    has_log = Path(f"{path}-wal").exists()
    uri = f"{path.resolve().as_uri()}?{'mode=ro' if has_log else 'immutable=1'}"
    db = sqlite3.connect(uri, uri=True, timeout=_LOCK_TIMEOUT)
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        _check_version(path, version)
        verdict = db.execute("PRAGMA quick_check(1)").fetchone()[0]
        if verdict != "ok":
            raise OutboxCorrupt(f"{path} is damaged ({verdict}); it was left untouched")
        columns = _COLUMNS_1 if version == 1 else _COLUMNS_2
        for table, expected in (("outbox", columns), ("outbox_state", _STATE_COLUMNS)):
            found = tuple(row[1] for row in db.execute(f"PRAGMA table_info({table})"))
            if found != expected:
                raise OutboxCorrupt(f"{path} has no valid {table} table; it was left untouched")
        bad_rows = _BAD_ROWS_1 if version == 1 else _BAD_ROWS_2
        bad = db.execute(bad_rows).fetchone()[0] + 1 - db.execute(_GOOD_STATE).fetchone()[0]
        if bad:
            raise OutboxCorrupt(f"{path} holds {bad} malformed rows; it was left untouched")
    finally:
        db.close()


def _connect_for_writing(path: Path, synchronous: Synchronous) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=_LOCK_TIMEOUT)
    try:
        # Exclusive: a second outbox on this file (another process, or a restart
        # that overlaps the old one) fails at open instead of sending the same
        # messages twice under different seqs. It also spares the shared-memory index.
        db.execute("PRAGMA locking_mode = EXCLUSIVE")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise OutboxStorageError(f"the outbox {path} cannot use WAL mode (got {mode!r})")
        db.execute(f"PRAGMA synchronous = {synchronous}")
        db.execute("BEGIN IMMEDIATE")  # takes the lock now, and proves the file writable
        db.execute("COMMIT")
    except BaseException:
        db.close()
        raise
    return db


@contextlib.contextmanager
def open_errors(path: Path) -> Iterator[None]:
    """Translate sqlite3 and OS errors at open into the SDK's two outbox errors."""
    try:
        yield
    except sqlite3.Error as exc:
        if _primary_code(exc) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            raise OutboxCorrupt(f"{path} is damaged ({exc}); it was left untouched") from exc
        raise OutboxStorageError(f"cannot open the outbox {path}: {failure_reason(exc)}") from exc
    except OSError as exc:
        raise OutboxStorageError(f"cannot open the outbox {path}: {failure_reason(exc)}") from exc


def storage_failed(path: Path, cause: BaseException) -> OutboxStorageError:
    return OutboxStorageError(
        f"the outbox {path} could not store the message: {failure_reason(cause)}; it was not "
        "accepted, and messages accepted earlier are intact"
    )


_SQLITE_REASONS = {
    sqlite3.SQLITE_FULL: "the disk is full",
    sqlite3.SQLITE_IOERR: "I/O error (disk full, file size limit or failing storage)",
    sqlite3.SQLITE_READONLY: "the file or its file system is read-only",
    sqlite3.SQLITE_PERM: "permission denied",
    sqlite3.SQLITE_CANTOPEN: "the file or its directory cannot be opened",
    sqlite3.SQLITE_BUSY: "another outbox has the file open (in this or another process)",
    sqlite3.SQLITE_LOCKED: "another outbox has the file open (in this or another process)",
    sqlite3.SQLITE_CORRUPT: "the file is damaged",
}
_OS_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EFBIG: "the file size limit is reached",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "no such file or directory",
}


def failure_reason(exc: BaseException) -> str:
    """A short, human reason for a storage failure, with the underlying code."""
    if isinstance(exc, sqlite3.Error):
        name = getattr(exc, "sqlite_errorname", "SQLITE_ERROR")
        reason = _SQLITE_REASONS.get(_primary_code(exc))
        return f"{reason} ({name}: {exc})" if reason else f"{name}: {exc}"
    if isinstance(exc, OSError) and exc.errno is not None:
        reason = _OS_REASONS.get(exc.errno, exc.strerror or "OS error")
        return f"{reason} ({errno.errorcode.get(exc.errno, exc.errno)}: {exc})"
    return f"{type(exc).__name__}: {exc}"


def _primary_code(exc: sqlite3.Error) -> int:
    code: int = getattr(exc, "sqlite_errorcode", -1)
    return code & 0xFF if code >= 0 else code


def rollback_quietly(db: sqlite3.Connection) -> None:
    # SQLite rolls back by itself after most I/O errors; this covers the others.
    with contextlib.suppress(sqlite3.Error):
        if db.in_transaction:
            db.execute("ROLLBACK")

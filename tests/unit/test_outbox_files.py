"""The durable outbox's files on disk: private whatever the umask, and a folder made for them.

Queued telemetry must not be readable by other local users: the outbox, its
write-ahead log and its shared-memory index are 0600, a folder the outbox
creates is 0700, and an existing outbox that others could read is made private
at open. A missing folder is created one level deep only; anything else is an
``OutboxStorageError`` that names the path and the two ways out.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from device_sdk.adapters.sqlite_outbox import SqliteOutbox
from device_sdk.errors import OutboxStorageError
from device_sdk.profiles import env_variable

SIDE_FILES = ("-wal", "-shm")

# Leaves an outbox as a crash would: its write-ahead log still beside it.
CRASH_AFTER_A_PUT = """
import os, sys
from device_sdk.adapters.sqlite_outbox import SqliteOutbox
SqliteOutbox(sys.argv[1], max_messages=10, max_bytes=1000).put("t", b"kept", 1)
os._exit(0)
"""


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, under which files are born readable by everyone (0644)."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def outbox_files(path: Path) -> dict[str, int]:
    """The outbox and whichever side files exist, by name, with their modes."""
    candidates = [path, *(Path(f"{path}{side}") for side in SIDE_FILES)]
    return {file.name: mode(file) for file in candidates if file.exists()}


def open_outbox(path: Path) -> SqliteOutbox:
    return SqliteOutbox(path, max_messages=10, max_bytes=1000)


def crash_after_a_put(path: Path) -> None:
    subprocess.run([sys.executable, "-c", CRASH_AFTER_A_PUT, str(path)], check=True, timeout=30)


@pytest.fixture(scope="module")
def crashed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An outbox as two crashes left it, made under umask 022: the file, its log, its index.

    Made once (each crash is a child process): tests copy its files.
    """
    path = tmp_path_factory.mktemp("crashed") / "o.db"
    previous = os.umask(0o022)
    try:
        crash_after_a_put(path)
        open_outbox(path).close()  # reading the log after a crash makes the -shm index
        crash_after_a_put(path)
    finally:
        os.umask(previous)
    return path


def copy_of(crashed: Path, folder: Path) -> Path:
    for name in outbox_files(crashed):
        shutil.copy(crashed.parent / name, folder / name)
    return folder / crashed.name


@pytest.mark.usefixtures("umask_022")
def test_a_new_outbox_and_its_log_are_born_private_under_umask_022(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "o.db"
    with caplog.at_level(logging.WARNING, logger="device_sdk"):
        outbox = open_outbox(path)
    try:
        outbox.put("t", b"secret", 1)
        assert outbox_files(path) == {"o.db": 0o600, "o.db-wal": 0o600}
    finally:
        outbox.close()
    assert [p.name for p in tmp_path.iterdir()] == ["o.db"]  # no temporary left behind
    assert "other users" not in caplog.text  # born 0600, not tightened after the fact


@pytest.mark.usefixtures("umask_022")
def test_all_three_files_stay_private_across_crashes_and_reopens(
    crashed: Path, tmp_path: Path
) -> None:
    assert outbox_files(crashed) == {"o.db": 0o600, "o.db-wal": 0o600, "o.db-shm": 0o600}
    path = copy_of(crashed, tmp_path)
    outbox = open_outbox(path)
    try:
        outbox.put("t", b"after", 1)
        assert outbox_files(path) == {"o.db": 0o600, "o.db-wal": 0o600, "o.db-shm": 0o600}
    finally:
        outbox.close()


@pytest.mark.parametrize("loose", [0o644, 0o640, 0o604])
def test_an_outbox_others_can_read_is_made_private_before_the_writer_opens(
    crashed: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, loose: int
) -> None:
    path = copy_of(crashed, tmp_path)
    for name in outbox_files(path):
        (tmp_path / name).chmod(loose)
    with caplog.at_level(logging.WARNING, logger="device_sdk"):
        outbox = open_outbox(path)
    try:
        assert outbox_files(path) == {"o.db": 0o600, "o.db-wal": 0o600, "o.db-shm": 0o600}
        assert [m.payload for m in outbox.take_unsent(10)] == [b"kept", b"kept"]
        outbox.put("t", b"after", 1)
    finally:
        outbox.close()
    for name in ("o.db", "o.db-wal", "o.db-shm"):
        told = f"{tmp_path / name} could be read by other users (mode {loose:04o}); it is now 0600"
        assert told in caplog.text


def test_a_private_outbox_is_left_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "o.db"
    open_outbox(path).close()
    with caplog.at_level(logging.WARNING, logger="device_sdk"):
        open_outbox(path).close()
    assert mode(path) == 0o600
    assert "other users" not in caplog.text


def test_an_outbox_that_cannot_be_made_private_is_warned_about_and_still_opens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "o.db"
    open_outbox(path).close()
    path.chmod(0o644)

    def not_the_owner(target: object, new_mode: int) -> None:
        raise PermissionError(1, "Operation not permitted", str(target))

    monkeypatch.setattr(os, "chmod", not_the_owner)  # as for a file another user owns
    with caplog.at_level(logging.WARNING, logger="device_sdk"):
        outbox = open_outbox(path)
    try:
        assert outbox.put("t", b"still accepted", 1).seq == 1
    finally:
        outbox.close()
    assert f"{path} can be read by other users (mode 0644) and cannot be made private" in (
        caplog.text
    )


@pytest.mark.usefixtures("umask_022")
def test_a_missing_folder_is_created_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "o.db"
    outbox = open_outbox(path)
    try:
        outbox.put("t", b"x", 1)
    finally:
        outbox.close()
    assert mode(path.parent) == 0o700
    assert mode(path) == 0o600


def test_only_the_last_folder_is_created_so_a_typo_fails_naming_the_ways_out(
    tmp_path: Path,
) -> None:
    path = tmp_path / "typo" / "state" / "o.db"
    with pytest.raises(OutboxStorageError) as caught:
        open_outbox(path)
    message = str(caught.value)
    assert f"cannot create the outbox's folder {path.parent}" in message
    assert f"{tmp_path / 'typo'} does not exist either" in message
    assert f"create {path.parent} as a folder" in message
    assert env_variable("outbox.path") in message
    assert list(tmp_path.iterdir()) == []  # no junk folders


@pytest.mark.parametrize("depth", [1, 2])
def test_a_folder_that_is_a_file_is_a_clear_error_and_the_file_is_untouched(
    tmp_path: Path, depth: int
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"not a folder")
    path = blocker / "o.db" if depth == 1 else blocker / "state" / "o.db"
    with pytest.raises(OutboxStorageError) as caught:
        open_outbox(path)
    message = str(caught.value)
    assert "is not a folder" in message
    assert str(blocker) in message
    assert env_variable("outbox.path") in message
    assert blocker.read_bytes() == b"not a folder"
    assert [p.name for p in tmp_path.iterdir()] == ["blocker"]

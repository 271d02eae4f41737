"""What every benchmark reports the same way: the machine, and the ``--json [PATH]`` option.

``--json`` alone prints the JSON document instead of the tables; ``--json PATH``
writes it to PATH and the tables are printed too; without it, only the tables.
A benchmark adds the option with :func:`add_json_option`, prints its header
unless :func:`json_only`, and ends with :func:`emit`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import device_sdk

JSON_STDOUT = "-"  # the value of a bare --json


# -- the machine ------------------------------------------------------------------------------


def machine_info(*, paho: bool = True, git: bool = True, mosquitto: bool = True) -> dict[str, Any]:
    """Date, platform, CPU, Python and the versions that matter to the numbers.

    ``paho``: paho-mqtt's version. ``git``: where device_sdk comes from as its git
    commit and uncommitted files (``device_sdk_source``); without it, only the path
    of the imported package (``device_sdk_path``). ``mosquitto``: ``mosquitto -h``'s
    first line.
    """
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    if paho:
        info["paho_mqtt"] = importlib.metadata.version("paho-mqtt")
    info["device_sdk"] = importlib.metadata.version("device_sdk")
    if git:
        info["device_sdk_source"] = _source_revision()
    else:
        info["device_sdk_path"] = str(Path(device_sdk.__file__).resolve().parent)
    if mosquitto:
        info["mosquitto"] = _mosquitto_version()
    return info


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _source_revision() -> str:
    """Where the imported device_sdk comes from: its git commit and uncommitted files."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(device_sdk.__file__)))
    try:
        head = _git(root, "rev-parse", "--short", "HEAD").strip()
        changed = _git(root, "status", "--porcelain", "--", "device_sdk").splitlines()
    except (OSError, subprocess.SubprocessError):
        return f"{root}, not a git checkout"
    if not changed:
        return f"{root} at {head}"
    return f"{root} at {head} + uncommitted changes in {', '.join(ln[3:] for ln in changed)}"


def _git(root: str, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", root, *args], capture_output=True, text=True, timeout=5.0, check=True
    )
    return done.stdout


def _mosquitto_version() -> str:
    # Imported here: a benchmark that asks for no mosquitto version need not load the testbed.
    from device_sdk.testbed import find_mosquitto

    binary = find_mosquitto()
    if binary is None:
        return "not installed"
    try:
        done = subprocess.run(
            [binary, "-h"], capture_output=True, text=True, timeout=5.0, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    first = (done.stdout or done.stderr).splitlines()
    return first[0].strip() if first else "unknown"


# -- --json [PATH] ----------------------------------------------------------------------------


def add_json_option(parser: argparse.ArgumentParser, *, one_table: bool = False) -> None:
    """``--json [PATH]``; ``one_table`` words its help for a benchmark that prints one table."""
    noun, verb = ("table", "is") if one_table else ("tables", "are")
    parser.add_argument(
        "--json",
        nargs="?",
        const=JSON_STDOUT,
        metavar="PATH",
        help=f"machine-readable results: alone, printed instead of the {noun}; "
        f"with PATH, written there and the {noun} {verb} printed too",
    )


def json_only(json_arg: str | None) -> bool:
    """Whether ``--json`` came alone: JSON on stdout and nothing else (no header, no tables)."""
    return json_arg == JSON_STDOUT


def emit(
    tables: Callable[[], str],
    document: Callable[[], dict[str, Any]],
    json_arg: str | None,
) -> None:
    """Print the tables, the JSON document, or write the document and print the tables.

    ``json_arg`` is the parsed ``--json``: None, :data:`JSON_STDOUT` or a path. Each
    of ``tables`` and ``document`` is called only when its output is wanted.
    """
    if json_arg is not None:
        text = json.dumps(document(), indent=2)
        if json_only(json_arg):
            print(text)
        else:
            Path(json_arg).write_text(text + "\n", encoding="utf-8")
    if not json_only(json_arg):
        print(tables())

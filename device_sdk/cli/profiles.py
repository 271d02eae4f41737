"""``device-sdk profile check|show`` and ``device-sdk status``.

::

    device-sdk profile check [NAME_OR_PATH ...] [--profile-dir DIR]
    device-sdk profile show NAME_OR_PATH [--json] [--set KEY=VALUE] [--no-env] [--profile-dir DIR]
    device-sdk status PATH [--json] [--max-age SECONDS]

``profile check`` validates files as they are, without the environment (with
no names, every profile in the search path); it prints one line per profile
and exits 1 when any is invalid. ``profile show`` prints the resolved values
and where each came from, environment variables included. ``status`` reads a
running client's status file (see :mod:`device_sdk.status`); with ``--max-age``
it exits 1 when the file is older, which suits health checks.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from device_sdk.errors import ConfigError, DeviceSDKError
from device_sdk.profiles import (
    Profile,
    available_profiles,
    default_search_path,
    env_variable,
    load_profile,
    parse_setting,
)
from device_sdk.profiles.schema import SCHEMA, SECTIONS, toml_literal
from device_sdk.status import StatusReport, read_status

__all__ = ["add_profile_subcommands", "run"]

_KEYS_HINT = "hint: firmware_profiles/README.md lists every key and what it allows"
_PROFILE_HINT = "hint: give a profile name found in --profile-dir DIR, or a path to a .toml file"
_STATUS_HINT = "hint: is the client running, with a StatusWriter writing this file?"


def add_profile_subcommands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add ``profile {check,show}`` and ``status`` to a ``device-sdk`` command parser."""
    profile = subparsers.add_parser("profile", help="check and show firmware profiles")
    commands = profile.add_subparsers(dest="profile_command", required=True)
    check = commands.add_parser("check", help="validate profiles (exit 1 if any is invalid)")
    check.add_argument("profiles", nargs="*", help="names or .toml paths (default: all)")
    show = commands.add_parser("show", help="the resolved values and where each came from")
    show.add_argument("profile", help="a profile name or a .toml path")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override one value"
    )
    show.add_argument("--no-env", action="store_true", help="ignore DEVICE_SDK_* variables")
    for parser in (check, show):
        parser.add_argument(
            "--profile-dir",
            action="append",
            type=Path,
            metavar="DIR",
            help="where to look for profiles (repeatable; default: the profiles shipped "
            "with the package, or the checkout's firmware_profiles/)",
        )
    status = subparsers.add_parser("status", help="read a running client's status file")
    status.add_argument("path", type=Path, help="the status JSON file")
    status.add_argument("--json", action="store_true", help="print the file's JSON")
    status.add_argument(
        "--max-age", type=float, metavar="SECONDS", help="exit 1 if the file is older"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``profile`` or ``status``. Errors are one line and a hint on stderr (exit 1);
    with ``args.debug`` they are raised instead."""
    try:
        if args.command == "status":
            return _status(args.path, as_json=args.json, max_age=args.max_age)
        if args.profile_command == "check":
            return _check(args.profiles, _search_path(args))
        return _show(args)
    except DeviceSDKError as exc:
        if getattr(args, "debug", False):
            raise
        _error(str(exc), _hint_for(exc, args.command))
        return 1


def _search_path(args: argparse.Namespace) -> tuple[Path, ...]:
    return tuple(args.profile_dir) if args.profile_dir else default_search_path()


def _hint_for(exc: DeviceSDKError, command: str) -> str:
    if command == "status":
        return _STATUS_HINT
    if isinstance(exc, ConfigError) and exc.field == "profile":
        return _PROFILE_HINT
    return _KEYS_HINT


def _error(message: str, hint: str) -> None:
    print(f"device-sdk: error: {message}", file=sys.stderr)
    print(hint, file=sys.stderr)


# --------------------------------------------------------------------------- profile check


def _check(names: list[str], search_path: tuple[Path, ...]) -> int:
    targets: list[str | Path] = list(names) or list(available_profiles(search_path).values())
    if not targets:
        where = ", ".join(map(str, search_path)) or "no profile folder"
        _error(f"no profiles found in {where}", _PROFILE_HINT)
        return 1
    failures = 0
    for target in targets:
        try:
            profile = load_profile(target, search_path=search_path, env={})
        except ConfigError as exc:
            failures += 1
            print(f"error  {exc}", file=sys.stderr)
        else:
            print(f"ok     {profile.name}  ({profile.source})")
    if failures:
        print(_KEYS_HINT, file=sys.stderr)
    return 1 if failures else 0


# --------------------------------------------------------------------------- profile show


def _show(args: argparse.Namespace) -> int:
    overrides = dict(parse_setting(text) for text in args.set)
    profile = load_profile(
        args.profile,
        search_path=_search_path(args),
        env={} if args.no_env else None,
        overrides=overrides,
    )
    print(json.dumps(profile_dict(profile), indent=2) if args.json else profile_text(profile))
    return 0


def profile_dict(profile: Profile) -> dict[str, Any]:
    """The resolved profile as JSON-ready data: every key's value, origin and variable."""
    values = {
        dotted: {
            "value": list(value) if isinstance(value, tuple) else value,
            "origin": profile.origins[dotted],
            "env": env_variable(dotted),
        }
        for dotted, value in profile.values.items()
    }
    return {
        "name": profile.name,
        "source": profile.source,
        "chain": list(profile.chain),
        "description": profile.description,
        "values": values,
    }


def profile_text(profile: Profile) -> str:
    """The resolved profile as TOML, each value commented with its origin."""
    lines = [f"# profile {profile.name}: {profile.description or '(no description)'}"]
    lines += [f"# file: {file}" for file in reversed(profile.chain)]
    width = max(len(f"{d.split('.', 1)[1]} = {toml_literal(v)}") for d, v in profile.values.items())
    for section in SECTIONS:
        lines += ["", f"[{section}]"]
        for dotted in (d for d in SCHEMA if d.startswith(f"{section}.")):
            assignment = f"{dotted.split('.', 1)[1]} = {toml_literal(profile.values[dotted])}"
            lines.append(f"{assignment:<{width}}  # {_short_origin(profile, dotted)}")
    return "\n".join(lines)


def _short_origin(profile: Profile, dotted: str) -> str:
    """A file origin by its name (the header lists the full paths); others as they are."""
    origin = profile.origins[dotted]
    return Path(origin).name if origin in profile.chain else origin


# --------------------------------------------------------------------------- status


def _status(path: Path, *, as_json: bool, max_age: float | None) -> int:
    report = read_status(path)
    if as_json:
        print(path.read_text(encoding="utf-8").rstrip())
    else:
        print(status_text(report, path))
    age = report.age()
    if max_age is not None and age > max_age:
        _error(
            f"{path} was written {age:.1f} s ago, more than --max-age {max_age:g} s", _STATUS_HINT
        )
        return 1
    return 0


def status_text(report: StatusReport, path: Path) -> str:
    """A few human lines: where the client is, its outbox, its counters, its last recovery."""
    m = report.metrics
    hub = f"{m.current_hub} (connected)" if m.current_hub else "none (not connected)"
    lines = [
        f"status file {path}: written {report.age():.1f} s ago by pid {report.pid}",
        f"hub: {hub}",
        f"outbox: {m.queue_depth} waiting, {m.dropped} dropped",
        f"messages: {m.published} published, {m.acknowledged} acknowledged",
        f"connects: {m.attempts} attempts, {m.connects} connects, {m.disconnects} disconnects, "
        f"{m.failovers} failovers, {m.failbacks} failbacks, {m.dns_queries} DNS queries",
        f"concierge: {m.concierge_updates} updates, {m.concierge_rejections} rejections",
        f"last recovery: {_seconds(m.last_recovery_seconds)}, last reconnect: "
        f"{_seconds(m.last_reconnect_seconds)}, ack deadline: {_seconds(m.ack_deadline_seconds)}",
    ]
    lines += [f"{key}: {value}" for key, value in sorted(report.extra.items())]
    return "\n".join(lines)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"

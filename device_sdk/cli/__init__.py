"""The ``device-sdk`` command."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

from device_sdk.cli import profiles as cli_profiles
from device_sdk.cli import run as cli_run
from device_sdk.concierge import cli as concierge_cli
from device_sdk.errors import DeviceSDKError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="device-sdk", description="Keep devices connected through outages and failovers."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    commands = parser.add_subparsers(dest="command", required=True)
    drill = commands.add_parser(
        "drill", help="break the primary hub on a local testbed and time the recovery"
    )
    drill.add_argument(
        "--scenario",
        choices=(
            "crash",
            "dns-flip",
            "hang",
            "concierge",
            "failback",
            "token-expiry",
            "dps",
            "port-blocked",
            "region-loss",
            "all",
        ),
        default="all",
        help="crash: SIGKILL the primary; dns-flip: move its FQDN to the other broker, "
        "then kill it; hang: SIGSTOP it; concierge: an operator switches the active hub; "
        "failback: kill the primary, bring it back, watch the device return; "
        "token-expiry: an IoT Hub device renews its SAS token, then its hub is away "
        "for longer than a token lives; dps: the operator moves a DPS device to "
        "another hub in DPS as its hub dies, and it re-provisions; port-blocked: a "
        "firewall blackholes 8883 and the device moves to wss:443, then back; region-loss: "
        "a region's hub, concierge replica and etcd member die at once (default: all)",
    )
    drill.add_argument("--rate", type=float, default=20.0, help="QoS 1 messages per second")
    drill.add_argument("--no-tls", action="store_true", help="plain MQTT instead of TLS")
    drill.add_argument("--json", action="store_true", help="print the reports as JSON")
    concierge_cli.add_subcommands(commands)
    cli_profiles.add_profile_subcommands(commands)
    cli_run.add_device_subcommands(commands)
    return parser


def _drill(args: argparse.Namespace) -> int:
    from device_sdk.cli.drill import SCENARIOS, format_report, run_drill

    scenarios = SCENARIOS if args.scenario == "all" else (args.scenario,)
    progress = (lambda _t: None) if args.json else (lambda text: print(f"... {text}", flush=True))
    reports = [
        run_drill(s, rate=args.rate, tls=not args.no_tls, progress=progress) for s in scenarios
    ]
    if args.json:
        print(json.dumps([r.as_dict() for r in reports], indent=2))
    else:
        print("\n\n".join(format_report(r) for r in reports))
    return 0 if all(r.ok for r in reports) else 1


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "drill": _drill,
    "concierge": concierge_cli.run,
    "profile": cli_profiles.run,
    "status": cli_profiles.run,
    "run": cli_run.run_device,
    "publish": cli_run.publish_once,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.ERROR,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        return _COMMANDS[args.command](args)
    except DeviceSDKError as exc:
        if args.debug:
            raise
        print(f"device-sdk: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("hint: run again with --debug for details", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `device-sdk ... | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0

"""Command line: `danesync run|check|tlsa|sync|status`.

The only place that turns errors into exit statuses: 0 ok, 1 a lineage is
invalid or a step failed, 2 usage error, 75 (EX_TEMPFAIL) another danesync
holds the state directory, 78 (EX_CONFIG) configuration error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Sequence

from danesync import __version__
from danesync.config import config_path, is_lineage_name, lineage_name_problem, load_config
from danesync.errors import ConfigError, DanesyncError
from danesync.lock import LockHeld

EX_USAGE = 2
EX_TEMPFAIL = 75
EX_CONFIG = 78


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="danesync",
        description="Deploy certbot's certificates into Postfix without breaking DANE.",
    )
    parser.add_argument("--version", action="version", version=f"danesync {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help_text, description=help_text)
        command.add_argument(
            "-c",
            "--config",
            metavar="FILE",
            help="configuration file (default: $DANESYNC_CONFIG or /etc/danesync/danesync.toml)",
        )
        return command

    run = add("run", "run the daemon in the foreground")
    run.add_argument("--log-format", choices=["auto", "json", "console", "journal"], default="auto")
    check = add("check", "validate the config and each lineage; change nothing")
    check.add_argument("lineages", nargs="*", metavar="LINEAGE")
    tlsa = add("tlsa", "print the TLSA records each lineage needs, in zone-file syntax")
    tlsa.add_argument("lineages", nargs="*", metavar="LINEAGE")
    add("sync", "one reconcile pass, then exit")
    status = add("status", "what is deployed, published and pending")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0) and EX_USAGE
    bad = [name for name in getattr(args, "lineages", []) if not is_lineage_name(name)]
    if bad:
        print(f"danesync: {lineage_name_problem(bad[0])}", file=sys.stderr)
        return EX_USAGE
    path = config_path(args.config)
    try:
        config = load_config(path)
    except ConfigError as error:
        print(f"danesync: {error}", file=sys.stderr)
        return EX_CONFIG
    now = dt.datetime.now(dt.UTC)
    try:
        if args.command == "check":
            from danesync.commands import run_check

            return run_check(config, args.lineages, now)
        if args.command == "tlsa":
            from danesync.commands import run_tlsa

            return run_tlsa(config, args.lineages, now)
        if args.command == "sync":
            from danesync.service import run_sync

            return run_sync(config)
        if args.command == "status":
            from danesync.status import run_status

            return run_status(config, as_json=args.json)
        from danesync.loop import run_daemon

        return run_daemon(config, log_format=args.log_format)
    except ConfigError as error:
        print(f"danesync: {error}", file=sys.stderr)
        return EX_CONFIG
    except LockHeld as error:
        print(f"danesync: {error}", file=sys.stderr)
        return EX_TEMPFAIL
    except DanesyncError as error:
        print(f"danesync: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

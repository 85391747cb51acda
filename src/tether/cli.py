"""The `tether` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence

from tether import __version__
from tether._settings import parse_duration


def _milliseconds(text: str) -> float:
    """An argparse type: a positive whole number of milliseconds, returned in seconds."""
    if not text.isascii() or not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number of ms, got {text!r}")
    return int(text) / 1000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tether", description="Every piece of work stays tied to its caller's deadline."
    )
    parser.add_argument("--version", action="version", version=f"tether {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="show a time budget flowing through nested calls, then through the gateway, a "
        "FastAPI and a grpc.aio service down to PostgreSQL",
    )
    demo.add_argument(
        "--budget-ms",
        type=_milliseconds,
        default=0.3,
        metavar="MS",
        help="the request's budget in milliseconds (default: 300)",
    )
    demo.add_argument(
        "--no-wait",
        action="store_true",
        help="stop the chain after the examples instead of waiting for Ctrl-C "
        "(the default when standard input is not a terminal)",
    )
    gateway = commands.add_parser("gateway", help="run the API gateway (or --check its config)")
    gateway.add_argument("config", metavar="FILE", help="the gateway's YAML configuration")
    gateway.add_argument(
        "--check",
        action="store_true",
        help="validate FILE, report every mistake with its line, and exit (0: valid, 1: not)",
    )
    gateway.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="processes sharing the listening port (SO_REUSEPORT); default 1",
    )
    pg = commands.add_parser("pg", help="look at a PostgreSQL server")
    pg_commands = pg.add_subparsers(dest="pg_command", required=True, metavar="PG_COMMAND")
    activity = pg_commands.add_parser(
        "activity", help="statements running longer than a threshold, with their request ids"
    )
    activity.add_argument(
        "--dsn",
        default=os.environ.get("TETHER_PG_DSN"),
        help="the server to look at (default: $TETHER_PG_DSN)",
    )
    activity.add_argument(
        "--older-than",
        type=_duration,
        default=0.5,
        metavar="DURATION",
        help="only statements running longer than this (250ms, 2s, 1m; default 500ms)",
    )
    activity.add_argument("--json", action="store_true", help="one JSON object per statement")
    return parser


def _positive_int(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 0 < int(text) <= 256:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to 256, got {text!r}")
    return int(text)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _pg_activity(args: argparse.Namespace) -> int:
    from tether.errors import UpstreamUnavailable
    from tether.postgres.activity import format_table, long_running

    if not args.dsn:
        print("tether pg activity: give --dsn or set TETHER_PG_DSN", file=sys.stderr)
        return 2
    try:
        statements = asyncio.run(long_running(args.dsn, args.older_than))
    except (UpstreamUnavailable, ValueError) as exc:
        print(f"tether pg activity: {exc}", file=sys.stderr)
        return 1
    if args.json:
        for s in statements:
            print(
                json.dumps(
                    {
                        "pid": s.pid,
                        "running_ms": round(s.running * 1000),
                        "state": s.state,
                        "request_id": s.request_id,
                        "application_name": s.application_name,
                        "query": s.query,
                    }
                )
            )
    else:
        print(format_table(statements))
    return 0


def _gateway(args: argparse.Namespace) -> int:
    from tether.gateway.config import ConfigError, load

    try:
        config = load(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    from tether.gateway.auth import AuthSetupError
    from tether.gateway.server import check_startable, run

    try:
        check_startable(config)
    except AuthSetupError as exc:
        print(f"{args.config}: {exc}", file=sys.stderr)
        return 1
    if args.check:
        services = ", ".join(f"{s.name} ({'/'.join(s.versions)})" for s in config.services.values())
        print(
            f"{args.config}: valid; listen {config.listen}, admin {config.admin_listen}, "
            f"zone {config.zone}, services: {services}"
        )
        return 0
    try:
        return run(config, workers=args.workers)
    except OSError as exc:
        print(
            f"tether gateway: cannot listen on {config.listen} or admin {config.admin_listen}: "
            f"{exc}",
            file=sys.stderr,
        )
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "pg":
        return _pg_activity(args)
    if args.command == "gateway":
        return _gateway(args)
    if args.command == "demo":
        from tether.demo import run_demo

        try:
            asyncio.run(run_demo(args.budget_ms, wait=not args.no_wait and sys.stdin.isatty()))
        except KeyboardInterrupt:
            return 130
        return 0
    return 2  # unreachable: argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())

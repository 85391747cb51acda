"""The `tether` command."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from tether import __version__


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
        "demo", help="show a time budget flowing through nested calls, shrinking as it goes"
    )
    demo.add_argument(
        "--budget-ms",
        type=_milliseconds,
        default=0.3,
        metavar="MS",
        help="the request's budget in milliseconds (default: 300)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from tether.demo import run_demo

        try:
            asyncio.run(run_demo(args.budget_ms))
        except KeyboardInterrupt:
            return 130
        return 0
    return 2  # unreachable: argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())

"""The ``pitchey-trace`` command.

    pitchey-trace logpush setup  --config logpush.toml   # buckets + lifecycle rules, idempotent
    pitchey-trace logpush verify --config logpush.toml   # pass/fail table; exit 1 on failure

Adding a command: write ``def _add_<name>(sub)`` that calls ``sub.add_parser(...)`` and sets
``func=<handler>`` with ``set_defaults``; the handler takes the parsed ``argparse.Namespace``
and returns the exit code. Then append the function to :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pitchey_trace.exceptions import PitcheyTraceError

__all__ = ["COMMANDS", "build_parser", "main"]

Subparsers = Any  # argparse's _SubParsersAction is private; its type is not worth importing


def _logpush(args: argparse.Namespace) -> int:
    from pitchey_trace import logpush_config as lc

    cfg = lc.load_config(args.config)
    client = lc.client_for(cfg)
    rows = lc.setup(cfg, client) if args.action == "setup" else lc.verify(cfg, client)
    sys.stdout.write(lc.format_table(rows))
    return 0 if all(r.ok for r in rows) else 1


def _add_logpush(sub: Subparsers) -> None:
    p = sub.add_parser(
        "logpush",
        help="S3/R2 archive buckets: retention setup and verification",
        description="Manage the buckets the LogpushExporter writes to (config format: docs/exporters.md).",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (
        ("setup", "create missing buckets and put one expiration rule per dataset prefix (idempotent)"),
        ("verify", "check buckets, expiration rules and a write/read/delete round trip"),
    ):
        a = actions.add_parser(action, help=text, description=text)
        a.add_argument("--config", "-c", required=True, metavar="FILE", help="logpush config (TOML or .json)")
        a.set_defaults(func=_logpush)


#: Functions that register the sub-commands (see the module docstring).
COMMANDS: list[Callable[[Subparsers], None]] = [_add_logpush]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered command."""
    from pitchey_trace import __version__

    parser = argparse.ArgumentParser(prog="pitchey-trace", description="pitchey-trace command line tools")
    parser.add_argument("--version", action="version", version=f"pitchey-trace {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMANDS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (2 for usage or configuration errors)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except (PitcheyTraceError, ImportError) as exc:
        sys.stderr.write(f"pitchey-trace: error: {exc}\n")
        return 2
    return code


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

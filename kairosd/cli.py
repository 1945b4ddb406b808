"""The `kairosd` command line: one subcommand per module in `kairosd.commands`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from kairosd.logs import FORMATS
from kairosd.logs import configure as configure_logs

# subcommand -> module in kairosd.commands exposing `HELP: str`, `add_arguments(parser)` and `run(args) -> int`.
COMMANDS: dict[str, str] = {
    "serve": "serve",
    "check-config": "check_config",
    "worker": "worker",
    "triton": "triton",
    "emulated": "emulated",
    "frontend": "frontend",
    "plan": "plan",
    "simulate": "simulate",
    "profile": "profile",
    "fleet": "fleet",
    "build-models": "build_models",
}


LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


def _log_options(p: argparse.ArgumentParser, default: object) -> None:
    p.add_argument("--log-level", default=default, choices=LOG_LEVELS)
    p.add_argument("--log-format", default=default, choices=list(FORMATS),
                   help="text lines, or one JSON object per line (ts, level, logger, msg and the message's key=value "
                        "pairs); secrets from the environment are redacted in both")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kairosd", description=__doc__)
    parser.add_argument("--log-level", default="INFO", choices=LOG_LEVELS)
    parser.add_argument("--log-format", default="text", choices=list(FORMATS),
                        help="text lines, or one JSON object per line (also accepted after the command)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(f"kairosd.commands.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"kairosd.commands.{module_name}":
                raise
            continue
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        _log_options(p, argparse.SUPPRESS)  # `kairosd serve --log-format json` works too
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logs(args.log_level, args.log_format)
    from kairosd.errors import KairosError

    try:
        return int(args._run(args) or 0)
    except KairosError as exc:
        print(f"kairosd {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

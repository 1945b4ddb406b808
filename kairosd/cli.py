"""The `kairosd` command line: one subcommand per module in `kairosd.commands`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# subcommand -> module in kairosd.commands exposing `HELP: str`, `add_arguments(parser)` and `run(args) -> int`.
COMMANDS: dict[str, str] = {
    "serve": "serve",
    "worker": "worker",
    "triton": "triton",
    "emulated": "emulated",
    "plan": "plan",
    "simulate": "simulate",
    "profile": "profile",
    "fleet": "fleet",
    "build-models": "build_models",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kairosd", description=__doc__)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(f"kairosd.commands.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"kairosd.commands.{module_name}":
                raise
            continue
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from kairosd.errors import KairosError

    try:
        return int(args._run(args) or 0)
    except KairosError as exc:
        print(f"kairosd {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

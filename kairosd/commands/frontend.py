"""`kairosd frontend`: one of the daemon's front-end processes (started by `kairosd serve` when
`[server] workers` > 1; not meant to be run by hand)."""

from __future__ import annotations

import argparse

HELP = "a front-end process of a running kairosd serve ([server] workers > 1; started by it)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="the daemon's TOML config")
    p.add_argument("--dispatcher", required=True, help="the dispatcher's abstract Unix socket name")
    p.add_argument("--index", type=int, required=True, help="this front end's index (1..workers-1)")


def run(args: argparse.Namespace) -> int:
    from kairosd.frontproc import main

    return main(args.config, args.dispatcher, args.index)

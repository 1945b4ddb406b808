"""`kairosd serve`: run the daemon on a config until SIGTERM."""

from __future__ import annotations

import argparse

HELP = "serve KServe v2 gRPC/HTTP in front of the fleet described by a TOML config"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="configs/local.toml", help="TOML config (default: %(default)s)")
    p.add_argument("--drain-timeout-s", type=float, default=30.0, help="time to answer queued queries on SIGTERM")


def run(args: argparse.Namespace) -> int:
    import uvloop

    from kairosd import config as config_mod
    from kairosd.daemon import Daemon, run_until_signal

    cfg = config_mod.load(args.config)

    async def main() -> None:
        await run_until_signal(Daemon(cfg), args.drain_timeout_s)

    uvloop.run(main())
    return 0

"""`kairosd serve`: run the daemon on a config until SIGTERM (SIGHUP reloads it; systemd notified if asked)."""

from __future__ import annotations

import argparse

HELP = "serve KServe v2 gRPC/HTTP in front of the fleet described by a TOML config"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="configs/local.toml", help="TOML config (default: %(default)s)")
    p.add_argument("--drain-timeout-s", type=float, default=None,
                   help="time to answer queued queries on SIGTERM (default: [server] drain_timeout_s)")


def run(args: argparse.Namespace) -> int:
    import uvloop

    from kairosd.config import load_checked
    from kairosd.daemon import Daemon, run_until_signal
    from kairosd.notify import Notifier

    checked = load_checked(args.config)  # every check of `kairosd check-config`, before anything starts
    notifier = Notifier.from_environ()  # and NOTIFY_SOCKET/WATCHDOG_* are not passed on to local instances

    async def main() -> None:
        await run_until_signal(Daemon(checked, notifier), args.drain_timeout_s)

    try:
        uvloop.run(main())
    finally:
        notifier.close()
    return 0

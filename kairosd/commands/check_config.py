"""`kairosd check-config FILE`: every check the daemon runs at start and at reload, without starting it."""

from __future__ import annotations

import argparse

HELP = ("check a config file (keys, ranges, references, repository, profiles, TLS and token files); exit 0 if "
        "valid, 2 otherwise")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="TOML config to check, e.g. /etc/kairosd/kairosd.toml")


def summary(path: str) -> str:
    """One line describing a valid config; raises ConfigError naming the key when it is not."""
    from kairosd.config import load_checked
    from kairosd.server.access import describe, load_access

    r = load_checked(path)
    c = r.config
    s = c.server
    access = describe(load_access(c))  # reads the TLS and token files as the daemon does at start
    if c.autoscaler.enabled:
        a = c.autoscaler
        fleet = (f"autoscaler {a.provider} over {len(c.types)} types, budget {a.budget_usd_per_hour:g} $/h, "
                 f"objective {a.objective} ({a.selector})")
    else:
        fleet = f"static fleet of {sum(c.fleet.values())} instances ({', '.join(f'{n}×{t}' for t, n in c.fleet.items() if n)})"
    if c.endpoints:
        fleet += f" + {len(c.endpoints)} endpoints"
    models = ", ".join(f"{m} {q * 1e3:g} ms" for m, q in c.qos_s.items())
    metrics = f"metrics/admin {s.metrics_host}:{s.metrics_port}" if s.metrics_port else "no metrics"
    return (f"{path}: ok: models {models}; policy {c.scheduler.policy}; {fleet}; "
            f"grpc {s.host}:{s.grpc_port} http :{s.http_port} {metrics}; {access}")


def run(args: argparse.Namespace) -> int:
    print(summary(args.file))  # a ConfigError reaches kairosd.cli: printed with the key, exit status 2
    return 0

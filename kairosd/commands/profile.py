"""`kairosd profile`: measure latency profiles of every instance type in a config: per model, a CSV of each
(type, batch)'s mean and p99 and one of its timed queries (`<model>.samples.csv`, each type's tail for
the planner)."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

HELP = "measure latency profiles (model × instance type × batch) against live local instances"
# `kairosd.profiler.REFINE_ROUNDS`, named here so that the parser does not import the profiler's gRPC stack
# (tests/unit/test_profile_samples.py checks that the two agree)
DEFAULT_REFINE_ROUNDS = 5
log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="configs/local.toml")
    p.add_argument("--out", default=None, help="output directory (default: the config's models.profiles)")
    p.add_argument("--batches", default=None,
                   help="comma-separated batch sizes (default: 1,8,32,...,1024); each model is also timed at its "
                        "max_batch_size and at none above it")
    p.add_argument("--reps", type=int, default=100,
                   help="queries per (model, type, batch) (default: %(default)s; the planner reads each type's tail "
                        "from them, and the p99 of a few dozen queries is about their slowest)")
    p.add_argument("--refine-rounds", type=int, default=DEFAULT_REFINE_ROUNDS,
                   help="rounds of timing the batch midway between two timed batches whose p99s lie on either side of "
                        "the model's QoS target, where the planner reads which batches a type serves in time "
                        f"(default: {DEFAULT_REFINE_ROUNDS}; 0: the batches alone)")
    p.add_argument("--types", default=None, help="comma-separated instance types (default: all in [types])")


def run(args: argparse.Namespace) -> int:
    from kairosd import config as config_mod
    from kairosd.autoscale.types import AutoscaleParams
    from kairosd.errors import ConfigError
    from kairosd.fleet import Fleet, static_target
    from kairosd.profiler import DEFAULT_BATCHES, monotone, points_of, profile_batches, time_profile
    from kairosd.profiles import SAMPLES_SUFFIX, ProfilePoint, ProfileTable, write_csv, write_samples_csv
    from kairosd.providers.local import LocalProvider
    from kairosd.registry import Registry

    cfg = config_mod.load(args.config)
    types = args.types.split(",") if args.types else list(cfg.types)
    asked = [int(b) for b in args.batches.split(",")] if args.batches else list(DEFAULT_BATCHES)
    rounds = args.refine_rounds
    if rounds < 0:
        raise ConfigError(f"--refine-rounds must be at least 0, got {rounds}")
    if args.reps < 1:
        raise ConfigError(f"--reps must be at least 1, got {args.reps}")
    out = Path(args.out) if args.out else cfg.profiles_dir
    models = sorted(cfg.qos_s)
    specs = config_mod.served_models(cfg)
    unbatched = sorted(m for m in models if specs[m].max_batch_size < 1)
    if unbatched:
        raise ConfigError(f"models {unbatched} have max_batch_size 0 (no batch dimension): kairosd profile times "
                          "batched models; give them a max_batch_size in their config.pbtxt")
    batches = {m: profile_batches(specs[m].max_batch_size, asked) for m in models}
    for m in models if args.batches else ():  # the default batches stop at each model's own largest silently
        above = sorted(set(asked) - set(batches[m]))
        if above:
            log.warning("%s: batches %s are past its max_batch_size, %d, and are not timed", m, above,
                        specs[m].max_batch_size)
    # a placeholder table so the fleet can index types; measured values replace it
    placeholder = ProfileTable.build({m: [ProfilePoint(t, 1, 1.0, 1.0) for t in types] for m in models})

    async def main() -> dict[str, dict[str, dict[int, np.ndarray]]]:
        """Per model, per type: each batch's timed queries."""
        timed: dict[str, dict[str, dict[int, np.ndarray]]] = {m: {} for m in models}
        for t in types:  # one type at a time: instances don't compete for the cores while measured
            provider = LocalProvider({t: cfg.types[t]}, str(cfg.model_repository))
            fleet = Fleet(Registry(), placeholder, [provider], static_target({t: 1}), cfg.types[t].price_usd_per_hour,
                          AutoscaleParams(), models=models, slots={t: cfg.types[t].slots},
                          max_message_bytes=cfg.server.max_request_bytes)
            await fleet.start()
            try:
                inst = next(iter(fleet.registry))
                for m in models:
                    timed[m][t] = await time_profile(inst.client, m, batches[m], args.reps, cfg.qos_s[m], rounds)
                    for p in points_of(t, timed[m][t]):
                        print(f"{m:8s} {t:12s} batch {p.batch:5d}  mean {p.mean_s * 1e3:8.2f} ms  p99 {p.p99_s * 1e3:8.2f} ms")
            finally:
                await fleet.stop()
        return timed

    for m, by_type in asyncio.run(main()).items():
        write_csv(out / f"{m}.csv", monotone([p for t, by_batch in by_type.items() for p in points_of(t, by_batch)]))
        write_samples_csv(out / f"{m}{SAMPLES_SUFFIX}", by_type)
        print(f"wrote {out / f'{m}.csv'} and {out / f'{m}{SAMPLES_SUFFIX}'}")
    return 0

"""`kairosd simulate`: run one fleet and one dispatch policy in the simulator; print throughput and latency."""

from __future__ import annotations

import argparse
import csv
import logging
from typing import Any

import numpy as np

from kairosd.errors import ConfigError

HELP = "simulate a fleet with a dispatch policy: throughput and latency percentiles (or the max QPS within QoS)"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model (e.g. ncf, rm2, wnd, mtwnd, dien)")
    parser.add_argument("--config", required=True, help="fleet, e.g. g4dn.xlarge=1,r5n.large=13")
    parser.add_argument("--policy", default="kairos", help="dispatch policy (default: %(default)s)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="policy parameter, repeatable (e.g. tail=false, threshold=300, large_types=g4dn.xlarge)")
    parser.add_argument("--rate", type=float, help="offered QPS; without it, find the max QPS with p99 <= QoS")
    parser.add_argument("--queries", type=int, default=5000, help="queries per run (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mix",
                        help="batch-size distribution: kairos, lognormal, or a CSV file with a batch column, one row "
                        "per query (default: the one a --data workload's synth.json names, else kairos, as kairosd plan)")
    parser.add_argument("--trace", help="CSV with columns arrival_s,batch to replay instead of Poisson arrivals and --mix")
    parser.add_argument("--noise", choices=("samples", "profile", "none", "lognormal"), default=None,
                        help="service-time noise: the measured samples (the Kairos data's), the profile's (the timed "
                             "queries of `kairosd profile` where recorded, else each batch's log-normal of the "
                             "profile's mean and p99), none, or one log-normal of --cv for all "
                             "(default: samples with the Kairos data, profile with --profiles)")
    parser.add_argument("--cv", type=float, default=0.1, help="coefficient of variation of --noise lognormal")
    parser.add_argument("--qos-ms", type=float, help="QoS target in ms (default: the target a --data workload's "
                        "synth.json gives, else the Kairos target of the model)")
    parser.add_argument("--data", help="Kairos profile data directory")
    parser.add_argument("--profiles", help="our own profile CSV directory instead of the Kairos data")
    parser.add_argument("--catalogue", help="instance-type catalogue TOML (slots per type, prices)")
    parser.add_argument("--hop-ms", type=float, default=0.0,
                        help="the live path's hop per query: from the grant to the answer's arrival at the head beyond "
                             "the service (mean; e.g. a daemon's kairos_head_hop_seconds); the head pipelines as the "
                             "daemon does, so it holds the instance only where no query can be sent ahead")
    parser.add_argument("--tick-ms", type=float, default=5.0,
                        help="the daemon's scheduler.tick_ms: a slot takes its next query within the hop + the tick")
    parser.add_argument("--no-pipeline", dest="pipeline", action="store_false",
                        help="the daemon's scheduler.pipeline = false: the hop holds the instance")
    parser.add_argument("--hop-sd-ms", type=float, default=0.0, help="its standard deviation (log-normal)")
    parser.add_argument("--client-ms", type=float, default=0.0,
                        help="the client's own way to the head and back: latency only (p99 + it must be within QoS)")


def parse_config(text: str) -> dict[str, int]:
    """'a=1,b=2' → {'a': 1, 'b': 2}."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, count = part.partition("=")
        if not sep or not count.strip().isdigit():
            raise ConfigError(f"--config: {part!r} must be TYPE=COUNT, e.g. g4dn.xlarge=2")
        out[name.strip()] = out.get(name.strip(), 0) + int(count)
    if not any(out.values()):
        raise ConfigError("--config: the fleet has no instance")
    return out


def parse_params(items: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs with booleans, numbers and comma lists understood."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--param {item!r} must be KEY=VALUE")
        value: Any = raw
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            for cast in (int, float):
                try:
                    value = cast(raw)
                    break
                except ValueError:
                    continue
            else:
                if "," in raw:
                    value = [v for v in raw.split(",") if v]
        out[key.strip()] = value
    return out


def read_trace(path: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        t = np.array([float(r["arrival_s"]) for r in rows])
        b = np.array([int(r["batch"]) for r in rows])
    except FileNotFoundError:
        raise ConfigError(f"--trace: {path} does not exist") from None
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"--trace: {path} needs columns arrival_s,batch ({exc})") from None
    return t, b


def run(args: argparse.Namespace) -> int:
    from kairosd import synth, workload
    from kairosd.catalogue import catalogue_of_prices, load_catalogue
    from kairosd.dispatch import feasibility_on_p99, make_policy
    from kairosd.planner import BoundModel, batch_pmf, config_cost, upper_bound
    from kairosd.planner.tails import profile_service
    from kairosd.profiles import ProfileTable
    from kairosd.sim import (
        PathModel,
        ServiceModel,
        fleet_columns,
        max_qps,
        poisson_stream,
        simulate,
        trace_stream,
    )

    try:
        fleet = parse_config(args.config)
        params = parse_params(args.param)
        path = PathModel(hop_mean_s=args.hop_ms / 1e3, hop_sd_s=args.hop_sd_ms / 1e3, client_s=args.client_ms / 1e3,
                         seed=args.seed + 2, pipeline_tick_s=args.tick_ms / 1e3 if args.pipeline else None)
        if args.profiles:
            profiles = ProfileTable.load_dir(args.profiles)
            samples = None
        else:
            wl = workload.load_kairos(args.data, models=[args.model])
            profiles, samples = wl.profiles, wl.samples
        profiles.model_index(args.model)
        types = list(fleet)
        counts = [fleet[t] for t in types]
        catalogue = load_catalogue(args.catalogue)
        if args.catalogue is None and args.data is not None and not args.profiles:
            # a workload's own instance.json prices its types (as `kairosd plan --data` plans them)
            catalogue = catalogue_of_prices(wl.types, wl.prices_usd_per_hour, f"{args.data}/instance.json",
                                            known=catalogue)
        known = set(catalogue.names)
        slots = [catalogue.get(t).slots if t in known else 1 for t in types]
        prices = [catalogue.get(t).price_usd_per_hour if t in known else float("nan") for t in types]
        cols = fleet_columns(profiles, types, counts, slots)
        # a workload that describes itself (`kairosd.synth.write_workload`): its QoS target and mix for its model
        described = synth.describe(args.data) if args.data is not None and not args.profiles else None
        own = described if described is not None and described.model == args.model else None
        if args.qos_ms is not None:
            qos_s = args.qos_ms / 1e3
        elif own is not None:
            qos_s = own.qos_s
        elif args.model in workload.QOS_MS:
            qos_s = workload.QOS_MS[args.model] / 1e3
        else:
            raise ConfigError(f"--qos-ms is required for model {args.model!r}")
        if args.mix is None:
            args.mix = own.mix if own is not None else "kairos"
        workload.check_mix(args.mix, profiles.largest_measured_batch(args.model))
        rng = np.random.default_rng(args.seed)
        if args.trace:
            times, batches = read_trace(args.trace)
            stream = trace_stream(times, batches, args.seed)
            native_rate = (len(times) - 1) / (times[-1] - times[0]) if times[-1] > times[0] else None
        else:
            stream = poisson_stream(workload.sample_batches(args.mix, args.queries, rng), args.seed + 1)
            native_rate = None
        noise = args.noise or ("samples" if samples is not None else "profile")
        if noise == "samples":
            if samples is None:
                raise ConfigError("--noise samples needs the Kairos data; with --profiles use --noise profile, none "
                                  "or lognormal")
            service = ServiceModel("samples", samples.relative(args.model, profiles.types), workload.GRID_STEP)
        elif noise == "profile":
            service = profile_service(profiles, args.model, qos_s)
        else:
            service = ServiceModel(noise, cv=args.cv)
        factory = lambda: make_policy(args.policy, profiles, **params)
        factory()  # refuse unknown policies and parameters before simulating
        pmf = batch_pmf(stream.batches, profiles.max_batch)
        bm = BoundModel.from_profiles(profiles, args.model, types, pmf, qos_s, tail=feasibility_on_p99(args.policy, params))
        ub = float(upper_bound(np.array([counts]), bm)[0])
        svc = service.times(profiles, args.model, stream)
        rate = args.rate if args.rate is not None else native_rate
        found = None
        if rate is None:
            found = max_qps(profiles, args.model, cols, factory, qos_s=qos_s, stream=stream, svc=svc, ub_qps=ub, path=path)
            rate = found.qps
            if rate <= 0:
                light_qps, light_ok = found.probes[0]
                why = "" if light_ok else f": it misses it already at a light load, {light_qps:.1f} qps"
                print(f"no rate meets p99 <= {qos_s * 1e3:g} ms with this fleet and policy{why} (upper bound {ub:.1f} qps)")
                return 1
        res = simulate(profiles, args.model, cols, factory(), rate, qos_s=qos_s, stream=stream, svc=svc, abort=False,
                       path=path)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    cost = float(config_cost(np.array([counts]), prices)[0])
    label = " + ".join(f"{c}×{t}" for t, c in zip(types, counts, strict=True) if c)
    print(f"fleet {label} ({cost:.3f} $/h), model {args.model}, QoS {qos_s * 1e3:g} ms, policy {args.policy}"
          + (f" {params}" if params else "") + f", {res.n_queries} queries ({res.n_measured} measured)"
          + ("" if path.empty else f"; live path: hop {args.hop_ms:g} ± {args.hop_sd_ms:g} ms, client {args.client_ms:g} ms, "
             + (f"pipelined (tick {args.tick_ms:g} ms)" if args.pipeline else "not pipelined")))
    if found is not None:
        print(f"max QPS with p99 <= QoS: {found.qps:.1f} (upper bound {ub:.1f}; {len(found.probes)} runs, {found.wall_s:.1f} s)")
    ms = lambda x: f"{x * 1e3:.2f} ms" if np.isfinite(x) else "inf"
    print(f"offered {res.offered_qps:.1f} qps, served {res.served_qps:.1f} qps; latency mean {ms(res.mean_s)}, "
          f"p50 {ms(res.p50_s)}, p95 {ms(res.p95_s)}, p99 {ms(res.p99_s)}; "
          f"{res.violations} over QoS ({100.0 * res.violations / res.n_measured:.2f}%): {'OK' if res.ok else 'FAILS QoS'}")
    return 0 if res.ok else 1

"""`kairosd plan`: rank the fleets a budget allows by their throughput bound and select one."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np

from kairosd.errors import ConfigError

if TYPE_CHECKING:
    from kairosd.planner import BoundModel, Candidates, Selection
    from kairosd.sim import SeedsEvaluator, SimEvaluator, SimSetup

HELP = "rank instance configurations under an hourly budget (Kairos upper bound) and select one"

log = logging.getLogger(__name__)

SELECTOR_NAMES = ("kairos", "kairos_paper", "kairos_plus", "homogeneous", "exhaustive")
# the i-th simulated stream is drawn from seed --seed + i·STREAM_SEED_STEP (a stream takes two seeds: its
# batches and its arrivals)
STREAM_SEED_STEP = 10
# draws of the batch mix the estimate is taken on (`workload.mix_pmf`)
MIX_DRAWS = 200_000
# kairos_plus: seconds of walking within which it simulates (`--time-limit`): no fleet whose simulation,
# as long as the longest so far, would end past it; a plan then takes about this long, or as long as its
# first fleet's simulation when that alone is longer
PLUS_TIME_LIMIT_S = 60.0


class ProgressBar:
    """A one-line text progress bar on stderr (only when stderr is a terminal, unless forced)."""

    def __init__(self, label: str, stream: TextIO | None = None, *, force: bool = False, width: int = 30) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = force or self.stream.isatty()
        self.width = width
        self.t0 = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        filled = int(self.width * done / total)
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / done * (total - done) if done else 0.0
        self.stream.write(
            f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} {elapsed:5.0f}s eta {eta:4.0f}s"
        )
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--budget", type=float, required=True, help="hourly budget in USD")
    parser.add_argument("--model", required=True, help="model to plan for (e.g. ncf, rm2, wnd, mtwnd, dien)")
    parser.add_argument("--qos-ms", type=float,
                        help="QoS target in ms (default: the --config's target for the model, else the Kairos one)")
    parser.add_argument("--config", help="a daemon config (e.g. configs/local.toml): plan over its [types] (prices, slots) "
                        "with its latency profiles and QoS targets, instead of --catalogue and --profiles")
    parser.add_argument(
        "--selector", choices=SELECTOR_NAMES, default="kairos_plus",
        help="kairos: the highest queue-aware estimate (ties: the higher bound), no evaluation; kairos_paper: centre "
        "of the top 10 by the paper's bound; kairos_plus: walk kairos's order simulating and pruning, on at most 10%% "
        "of the configurations; homogeneous; exhaustive (default: %(default)s)",
    )
    parser.add_argument("--top-k", type=int, default=10,
                        help="kairos_paper selector: size of the top cluster (default: %(default)s)")
    parser.add_argument("--catalogue", help="instance-type catalogue TOML (default: with --data, the data's "
                        "instance.json names and prices, a type configs/instance_types.toml lists keeping its slots "
                        "there; else configs/instance_types.toml)")
    parser.add_argument("--types", help="comma-separated instance types to consider (default: catalogue types with a profile)")
    parser.add_argument("--no-caps", action="store_true",
                        help="ignore the workload's instance limits (instance.json's max_num), which a plan keeps by default")
    parser.add_argument("--data", help="Kairos profile data directory (default: $KAIROSD_KAIROS_DATA, else the "
                        "repository's data/kairos_profiles, else ../shared/data/kairos_profiles)")
    parser.add_argument("--profiles", help="use our own profile CSVs (`kairosd profile` output dir) instead of the Kairos data")
    parser.add_argument("--mix", default=None,
                        help="batch-size mix: kairos, lognormal, or a CSV file with a batch column, one row per query "
                        "(e.g. a request log; its batches drawn as observed) (default: the one a --data workload's "
                        "synth.json names, else kairos)")
    parser.add_argument(
        "--feasibility", choices=("p99", "mean"), default=None,
        help="judge QoS per batch on the p99 or the mean latency, in the bound and the dispatcher (default: as "
        "--config's dispatcher does, scheduler.policy_params.tail; without --config, p99)",
    )
    parser.add_argument("--all-configs", action="store_true", help="keep non-maximal configurations too")
    parser.add_argument("--top", type=int, default=15, help="rows of the ranked table (default: %(default)s)")
    parser.add_argument("--no-eval", action="store_true", help="do not simulate the chosen configuration (kairos selector)")
    parser.add_argument("--policy", default=None,
                        help="dispatch policy the simulator evaluates with (default: --config's scheduler.policy with its "
                        "policy_params, --feasibility setting kairos's tail; without --config, kairos)")
    parser.add_argument("--queries", type=int, default=6000,
                        help="queries per simulated run (default: %(default)s, as the planner benchmark validates Kairos+)")
    parser.add_argument("--streams", type=int, default=3,
                        help="simulated streams (arrivals, batches and service noise drawn from seeds --seed, --seed + "
                        f"{STREAM_SEED_STEP}, ...): a fleet's simulated QPS is its mean over them, every fleet is run "
                        "on the same streams, and Kairos+ replaces its best fleet so far only with one that is better "
                        "on every stream; with heavy tails one stream's max QPS moves 15-30%% between seeds "
                        "(default: %(default)s)")
    parser.add_argument("--p99-window", type=int, default=None,
                        help="queries over which the p99 is read: the kairos estimate allows 1%% of them over QoS less "
                        "one binomial standard deviation of a window's share (0: an endless stream, the full 1%%) "
                        "(default: 5000, kairosd.planner.P99_WINDOW_QUERIES)")
    parser.add_argument("--time-limit", type=float, default=PLUS_TIME_LIMIT_S,
                        help="kairos_plus: simulate no fleet whose simulation (as long as the longest so far) would end "
                        "past this many seconds of walking, and choose the best simulated so far; the first fleet is "
                        "always simulated (0: no limit) (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="processes for the ranking and the simulations "
                        "(default: all usable cores)")
    parser.add_argument("--plot", help="write a cost-vs-throughput figure to this file (needs matplotlib)")


@dataclass(frozen=True)
class PlanInputs:
    """Resolved inputs of a plan: profile table, types and prices, QoS, the bound model, a sim setup."""

    types: tuple[str, ...]
    prices: np.ndarray
    qos_s: float
    model: BoundModel  # on the population mix (`--mix`): what `kairos` ranks by
    bound: BoundModel  # on the simulated streams' batches: what Kairos+ prunes by
    setups: tuple[SimSetup, ...]  # every stream (`--streams`)
    stream: Callable[[int], SimSetup]  # the i-th stream's setup, for streams added later
    tails: str  # where each type's tail comes from, as the header says it
    caps: tuple[int, ...] | None = None  # per type, the most instances the workload's instance.json allows (max_num)

    @property
    def setup(self) -> SimSetup:
        """The first stream's setup."""
        return self.setups[0]


def resolve(args: argparse.Namespace) -> PlanInputs:
    """Load catalogue, profiles and workload as the arguments say (shared with the benchmarks' style)."""
    from kairosd import config as config_mod
    from kairosd import synth, workload
    from kairosd.catalogue import catalogue_from_config, catalogue_of_prices, load_catalogue
    from kairosd.planner import batch_pmf
    from kairosd.planner.enumeration import UNCAPPED
    from kairosd.planner.tails import profile_service, profile_tails, tailed_model, workload_tails
    from kairosd.profiles import ProfileTable
    from kairosd.sim import SimSetup, poisson_stream

    config_qos_s: dict[str, float] = {}
    config_params: dict[str, object] = {}
    wl = None
    if args.config:
        if args.catalogue or args.profiles:
            raise ConfigError("--config brings its own instance types and profiles: drop --catalogue and --profiles")
        cfg = config_mod.load(args.config)
        if args.feasibility is None:
            args.feasibility = "p99" if config_mod.planning_tail(cfg) else "mean"
        if args.policy is None or args.policy == cfg.scheduler.policy:
            args.policy, config_params = cfg.scheduler.policy, config_mod.dispatch_params(cfg)
        catalogue, config_qos_s = catalogue_from_config(cfg), dict(cfg.qos_s)
        profiles = ProfileTable.load_dir(cfg.profiles_dir)
    elif args.profiles:
        catalogue = load_catalogue(args.catalogue)
        profiles = ProfileTable.load_dir(args.profiles)
    else:
        catalogue = load_catalogue(args.catalogue)
        wl = workload.load_kairos(args.data, models=[args.model])
        profiles = wl.profiles
        if args.catalogue is None and (args.data is not None or not set(catalogue.names) & set(wl.types)):
            # a workload's own instance.json names its types and their prices (the catalogue's same-named types
            # lend their slots); with the authors' data, the two agree
            catalogue = catalogue_of_prices(wl.types, wl.prices_usd_per_hour, f"{args.data or 'the data'}/instance.json",
                                            known=catalogue)
        described = synth.describe(args.data) if args.data is not None else None
        if described is not None:
            # a workload that describes itself (`kairosd.synth.write_workload`): its QoS target and mix
            config_qos_s = {described.model: described.qos_s}
            args.mix = args.mix or described.mix
    if args.mix is None:
        args.mix = "kairos"
    workload.check_mix(args.mix, profiles.largest_measured_batch(args.model))
    if args.feasibility is None:
        args.feasibility = "p99"
    if args.policy is None:
        args.policy = "kairos"
    tail = args.feasibility == "p99"
    profiles.model_index(args.model)
    if args.types:
        types = tuple(t.strip() for t in args.types.split(",") if t.strip())
        for t in types:
            profiles.type_index(t)
    else:
        types = tuple(t for t in catalogue.names if t in profiles.types)
    if not types:
        raise ConfigError(f"no catalogue type has a latency profile; profiled types: {list(profiles.types)}")
    cat = catalogue.subset(types)
    if args.qos_ms is not None:
        qos_s = args.qos_ms / 1e3
    elif args.model in config_qos_s:
        qos_s = config_qos_s[args.model]
    elif args.model in workload.QOS_MS:
        qos_s = workload.QOS_MS[args.model] / 1e3
    else:
        raise ConfigError(f"--qos-ms is required for model {args.model!r} (no default QoS target)")
    # the config's dispatcher as it runs (its policy_params), with the feasibility the plan judges QoS on
    policy_params = {**config_params, "tail": tail} if args.policy == "kairos" else dict(config_params)
    if args.streams < 1:
        raise ConfigError(f"--streams must be at least 1, got {args.streams}")
    slots = tuple(t.slots for t in cat.types)

    # over a profile, every query's service time is drawn as the estimate reads the profile's tails: the
    # timed queries `kairosd profile` recorded, else its batch's log-normal of the mean and p99 (a workload's
    # streams draw its own samples: `workload.sim_setup`)
    service = profile_service(profiles, args.model, qos_s) if wl is None else None

    def stream(i: int) -> SimSetup:
        """The i-th simulated stream's setup (seed --seed + i·STREAM_SEED_STEP)."""
        seed = args.seed + i * STREAM_SEED_STEP
        if wl is not None:
            return replace(workload.sim_setup(wl, args.model, types=types, policy=args.policy,
                                              policy_params=policy_params, n_queries=args.queries, seed=seed,
                                              mix=args.mix, qos_s=qos_s), slots=slots)
        assert service is not None
        batches = workload.sample_batches(args.mix, args.queries, np.random.default_rng(seed))
        return SimSetup(profiles, args.model, types, args.policy, policy_params, qos_s, poisson_stream(batches, seed + 1),
                        service, slots)

    setups = tuple(stream(i) for i in range(args.streams))
    # each type's tail as the simulator draws it (the measured samples, or the profile's log-normals):
    # its probability of missing QoS without waiting, its service variability and distribution
    tails = workload_tails(wl, args.model, types, qos_s) if wl is not None else profile_tails(profiles, args.model, types, qos_s)
    # the estimate and score on the mix itself (the planner's input); the bound also on the very batches the
    # simulator evaluates (the first --streams streams), so that Kairos+ prunes soundly against its
    # evaluator: a short stream's batches can let a fleet run above the population mix's bound
    def model_on(pmf: np.ndarray) -> BoundModel:
        return tailed_model(profiles, args.model, types, pmf, qos_s, tails, tail=tail)

    population = workload.mix_pmf(args.mix, profiles.max_batch, n=MIX_DRAWS, seed=args.seed)
    streams = batch_pmf(np.concatenate([s.stream.batches for s in setups]), profiles.max_batch)
    source = ("the measured samples" if wl is not None
              else "the profile's timed queries (kairosd profile; each batch's log-normal of the mean and p99 for a "
                   "type without them)" if profiles.samples.get(args.model)
              else "each batch's log-normal of the profile's mean and p99 (kairosd.planner.tails)")
    caps = None
    if wl is not None and wl.max_counts is not None and not args.no_caps:
        limit = dict(zip(wl.types, wl.max_counts, strict=True))
        if any(t in limit for t in types):
            caps = tuple(limit.get(t, UNCAPPED) for t in types)
    return PlanInputs(types, cat.prices(), qos_s, model_on(population), model_on(streams), setups, stream, source, caps)


def format_table(cands: Candidates, rows: np.ndarray, evaluated: dict[tuple[int, ...], float], chosen: np.ndarray | None) -> str:
    """The ranked table: rank, counts per type, $/h, upper bound, queue-aware estimate (when computed; "-"
    where `kairos` did not need it), evaluated QPS (when known)."""
    types = cands.types
    est = cands.est_qps
    head = ["rank"] + list(types) + ["$/h", "UB qps"] + (["est qps"] if est is not None else []) + ["sim qps", ""]
    lines = []
    for rank, r in enumerate(rows, 1):
        cfg = cands.configs[r]
        key = tuple(int(x) for x in cfg)
        q = evaluated.get(key)
        mark = "<- chosen" if chosen is not None and np.array_equal(cfg, chosen) else ""
        lines.append([str(rank)] + [str(int(c)) for c in cfg] + [f"{cands.cost_usd_per_hour[r]:.3f}", f"{cands.ub_qps[r]:.1f}"]
                     + ([f"{est[r]:.1f}" if np.isfinite(est[r]) else "-"] if est is not None else [])
                     + [f"{q:.1f}" if q is not None else "-", mark])
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
    return "\n".join([fmt(head)] + [fmt(line) for line in lines])


def plot(path: str, cands: Candidates, evaluated: dict[tuple[int, ...], float], chosen: np.ndarray, title: str) -> None:
    """Cost vs throughput of every configuration (bound; simulated where known), the chosen one marked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'kairosd[plot]'") from None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(cands.cost_usd_per_hour, cands.ub_qps, s=10, c="0.7", label="upper bound (every maximal configuration)")
    if evaluated:
        keys = np.array(list(evaluated.keys()))
        cost = keys @ cands.prices_usd_per_hour
        ax.scatter(cost, list(evaluated.values()), s=14, c="tab:blue", label="simulated max QPS (p99 ≤ QoS)")
    i = cands.row_of(chosen)
    assert i is not None  # the choice is one of the candidates
    ax.scatter([cands.cost_usd_per_hour[i]], [evaluated.get(tuple(int(x) for x in chosen), cands.ub_qps[i])],
               marker="*", s=220, c="tab:red", label="chosen: " + cands.label(i), zorder=5)
    ax.set_xlabel("cost ($/h)")
    ax.set_ylabel("queries per second")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _bound_of(bm: BoundModel, config: np.ndarray) -> float:
    """The upper bound of one configuration (it seeds each max-QPS search)."""
    from kairosd.planner import upper_bound

    return float(upper_bound(np.asarray(config)[None, :], bm)[0])


class _Logged:
    """Logs each single evaluation (Kairos+ walks the ranking one configuration at a time); offers what
    the evaluator offers (`many`, `below`, and `values` per stream when there are several)."""

    def __init__(self, evaluator: SimEvaluator | SeedsEvaluator, cands: Candidates) -> None:
        from kairosd.sim import SeedsEvaluator

        self.evaluator = evaluator
        self.cands = cands
        self.count = 0
        self.below = evaluator.below
        if isinstance(evaluator, SeedsEvaluator):  # max QPS per stream, and more streams on demand
            self.values = evaluator.values
            self.add_streams = evaluator.add_streams

    def __call__(self, config: np.ndarray) -> float:
        t0 = time.perf_counter()
        qps = self.evaluator(config)
        self.count += 1
        log.info("evaluation %d: %s -> %.1f qps (%.1f s)", self.count, self.cands.label(config), qps, time.perf_counter() - t0)
        return qps

    def many(self, configs: np.ndarray) -> np.ndarray:
        return self.evaluator.many(configs)


def plus_outcome(sel: Selection, time_limit_s: float) -> str:
    """How Kairos+'s walk ended, in one line: every other fleet pruned, its simulation budget spent, or
    its time limit reached."""
    if sel.exact:
        return "kairos_plus: exact: every other fleet was pruned by its bound or by a simulated one"
    if sel.timed_out:
        return (f"kairos_plus: stopped at --time-limit {time_limit_s:g} s with fleets left to simulate: the best "
                f"simulated so far (its walk puts the likeliest best first); raise --time-limit to walk further")
    return "kairos_plus: its simulation budget spent; the fleets left are the less likely to be best (kairos order)"


def evaluated_qps(evaluator: SimEvaluator | SeedsEvaluator) -> dict[tuple[int, ...], float]:
    """Every configuration simulated, with its (mean) max QPS."""
    from kairosd.sim import SeedsEvaluator

    if isinstance(evaluator, SeedsEvaluator):
        return evaluator.known_means()
    return {k: v.qps for k, v in evaluator.cache.items()}


def run(args: argparse.Namespace) -> int:
    from kairosd.planner import (
        CLOSE_SCORE,
        P99_WINDOW_QUERIES,
        QUEUE_SHRINK,
        close_contenders,
        kairos_order,
        lazy_estimate,
        make_candidates,
        select,
    )
    from kairosd.sim import SeedsEvaluator, SimEvaluator, usable_cores

    try:
        inp = resolve(args)
        t0 = time.perf_counter()
        workers = args.workers if args.workers > 0 else usable_cores()
        window = P99_WINDOW_QUERIES if args.p99_window is None else args.p99_window
        if window < 0:
            raise ConfigError(f"--p99-window must be >= 0 (0: an endless stream), got {window}")
        # kairos needs the estimate only where the bound reaches the close contenders' scores; Kairos+ starts
        # from there and estimates what its walk comes to (`select_kairos_plus`'s `estimate`), and alone prunes
        # by the bound on the simulated streams' batches
        cands = make_candidates(inp.model, inp.prices, args.budget, maximal_only=not args.all_configs, max_counts=inp.caps,
                                window_queries=window or None,
                                prune_within=CLOSE_SCORE if args.selector in ("kairos", "kairos_plus") else None,
                                evaluated_on=inp.bound if args.selector == "kairos_plus" else None,
                                workers=workers)
        rank_s = time.perf_counter() - t0
        if len(cands) == 0:
            cheapest = int(np.argmin(inp.prices))
            raise ConfigError(f"no configuration of {list(inp.types)} fits a budget of {args.budget} $/h; the cheapest "
                              f"type, {inp.types[cheapest]}, costs {inp.prices[cheapest]} $/h: raise --budget")
        bm = inp.model
        if not (cands.ub_qps > 0).any():
            best = int(np.argmax(bm.coverage))
            raise ConfigError(
                f"no configuration can keep p99 <= {inp.qos_s * 1e3:g} ms: the type that serves most of the mix within "
                f"QoS, {bm.types[best]}, covers {100 * bm.coverage[best]:.1f}% of queries (up to batch "
                f"{bm.threshold_batch[best]}); at least 99% is needed. Add a faster type, or relax --qos-ms"
            )
        bound = partial(_bound_of, inp.bound)
        progress = ProgressBar(f"simulating ({args.selector})")
        evaluator: SimEvaluator | SeedsEvaluator
        if len(inp.setups) > 1:
            # Kairos+ adds streams, up to three times as many, where the first ones do not order two fleets
            evaluator = SeedsEvaluator(inp.setups, bound=bound, workers=workers, more=inp.stream,
                                       max_streams=3 * len(inp.setups), progress=progress, guess=cands.search_start)
        else:
            evaluator = SimEvaluator(inp.setup, bound=bound, workers=workers, progress=progress,
                                     guess=cands.search_start)
        use_eval = not (args.selector in ("kairos", "kairos_paper") and args.no_eval)
        params: dict[str, object] = {"bm": bm} if args.selector == "homogeneous" else {}
        if args.selector == "kairos_paper":
            params["top_k"] = args.top_k
        if args.selector == "kairos_plus":
            if args.time_limit < 0:
                raise ConfigError(f"--time-limit must be >= 0 seconds (0: no limit), got {args.time_limit}")
            params["time_limit_s"] = args.time_limit or None
            params["estimate"] = lazy_estimate(bm, cands, window or None)
        sel = select(args.selector, cands, _Logged(evaluator, cands) if use_eval else None, **params)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    evaluated = evaluated_qps(evaluator)
    by_score = args.selector in ("kairos", "kairos_plus") and cands.est_qps is not None
    order = kairos_order(cands) if by_score else cands.ranked()
    print(
        f"model {args.model}, QoS {inp.qos_s * 1e3:g} ms (judged on {args.feasibility}), batch mix {args.mix}, "
        f"budget {args.budget:g} $/h{', instances capped by instance.json (max_num)' if inp.caps else ''}, "
        f"{len(cands)} {'configurations' if args.all_configs else 'maximal configurations'} "
        f"ranked in {rank_s * 1e3:.1f} ms "
        f"({f'by the kairos score, est^{1 - QUEUE_SHRINK:g} x UB^{QUEUE_SHRINK:g}' if by_score else 'by upper bound'}); "
        f"service-time tails: {inp.tails}"
    )
    if cands.est_qps is not None and np.isnan(cands.est_qps).any():
        asked = int(np.count_nonzero(np.isfinite(cands.est_qps) & (cands.ub_qps > 0)))
        print(f"estimated {asked} of them: the others serve nothing or have an upper bound (which no estimate or "
              f"score exceeds) below {1 - CLOSE_SCORE:.0%} of the best score")
    print(format_table(cands, order[: args.top], evaluated, sel.config))
    qps = f"{sel.qps:.1f} qps" if sel.qps is not None else "not evaluated"
    if sel.qps is not None and len(inp.setups) > 1:
        qps += f" (mean of {len(inp.setups)} streams of {args.queries} queries)"
    print(
        f"\n{args.selector}: {cands.label(sel.config)}  cost {float(sel.config @ cands.prices_usd_per_hour):.3f} $/h  "
        f"UB {sel.ub_qps:.1f} qps  simulated {qps}  evaluations {sel.n_evals} "
        f"({100.0 * sel.n_evals / len(cands):.1f}% of {len(cands)})"
    )
    if sel.selector == "kairos_plus":
        print(plus_outcome(sel, args.time_limit))
    if args.selector == "kairos" and cands.est_qps is not None:
        row = cands.row_of(sel.config)
        assert row is not None  # the choice is one of the candidates
        close = close_contenders(cands, row)
        if len(close):
            shown = "; ".join(cands.label(int(r)) for r in close[:3]) + ("; ..." if len(close) > 3 else "")
            print(f"{len(close)} other fleet(s) score within {CLOSE_SCORE:.0%} of this choice ({shown}): the estimate "
                  f"errs by about that much between close fleets, so `--selector kairos_plus`, which simulates "
                  f"them, may choose better")
    if args.plot:
        try:
            plot(args.plot, cands, evaluated, sel.config, f"{args.model}: {args.selector} under {args.budget:g} $/h")
        except ConfigError as exc:
            log.error("%s", exc)
            return 2
        print(f"wrote {args.plot}")
    return 0

"""Planner robustness benchmark: the selectors on synthetic workloads they were never tuned on, against
the exhaustive optimum judged on several streams.

Workloads: `kairosd.synth.synth_workload(seed)` for the held-out seeds 1000, 1001, … (types derived from
the authors' measured samples by scale factors, batch tilt and heavy tails; perturbed prices; fleets
with and without a GPU-like type; drawn QoS targets and budgets). Per workload:
  * the planner's inputs: the batch mix's population pmf (drawn apart from every simulated stream)
    and each type's tail from the samples (`kairosd.planner.tails.tails_from_relative`: its probability
    of missing QoS, service variability and distribution); `--planner-tails profile` gives the planner
    only the profile's mean and p99 (each batch's log-normal of them, `lognormal_tails`), `none` neither
    (the tables alone); `measured-samples` and `measured-profile` give it what `kairosd profile` measures
    (`profiled_samples`: its default batches, or every `--profiled-step`-th, timed 100 times each, then the
    midpoints where the p99 crosses QoS, `--profiled-refine-rounds`): the tables from those queries alone,
    and the tails from the timed queries or from those tables' mean and p99 (`profile_tails`, as `kairosd
    plan --profiles` and the autoscaler plan with and without a samples file);
  * the judge: every maximal configuration (and every homogeneous fleet) simulated on `--judge-seeds`
    streams of `--queries` queries (Poisson arrivals, the workload's mix, measured-sample noise, Kairos
    dispatch), max QPS at p99 ≤ QoS by `max_qps` (below a light load it misses, typically 0); a
    fleet's judged value is the mean over the streams, its spread (max − min)/mean; the streams are the
    same for every fleet (common random numbers). Then every fleet judged within `--refine-within` (10%)
    of the best, and every selector's choice, is simulated on `--refine-seeds` (7) more streams, and a
    fleet's judged value is its mean over all its streams: the best of some 30 fleets each valued on 3
    streams is biased upwards (the winner's curse), and two close fleets swap places between stream
    sets; the extra streams go where that decides a ratio. When one of those fleets fails QoS at every
    rate on some of its streams and serves on others (a tail whose no-wait misses alone sit near the 1%
    budget), they all get `--fragile-seeds` (50) more: such a fleet's value is a mixture that ten
    streams fix only to within some 12%. The optimum is the fleet of highest judged value;
  * the selectors: `kairos` (one shot, no evaluation), `kairos_paper`, `homogeneous` (the best
    single-type fleet by the judge) and `kairos_plus`, which evaluates on streams of its own (seeds
    apart from the judge's, `--plus-seeds` of them, `--queries` each, the same streams for every
    fleet). Each choice is scored by the judge: ratio = judged value / optimum's; "within spread" =
    its judged value ≥ the optimum's lowest value over the judge's streams.
Seeds are drawn from `--first-seed` on until `--workloads` of them can be judged; a workload no fleet
within its budget can serve is recorded under "degenerate" and skipped.
Kairos+'s cost is counted as the configurations it simulated: searched for their max QPS, or tested
at one rate (`below`) and dropped, or both; the searches and the tests are also reported apart.
Prints per workload and a summary (min / median ratio per selector, Kairos+'s simulated share of the
configurations, wall time per plan), writes bench/results/planner_robust.json. Simulation results
(judge and Kairos+) are kept in `--cache` (JSON lines), so an interrupted run resumes where it stopped;
a Kairos+ wall time measured on cached evaluations is marked `from_cache` (`--plus-fresh`: Kairos+
simulates afresh while the judge reads the cache).

    python bench/planner_robust.py [--workloads 30] [--judge-seeds 3] [--queries 4000] [--workers 2]
    python bench/planner_robust.py --quick      # 2 small workloads, 2 × 1,000 queries: a minute of CPU
    python bench/planner_robust.py --rescore bench/results/planner_robust_3000.json [more.json ...]
    python bench/planner_robust.py --refine bench/results/planner_robust_3000.json [more.json ...]

`--refine FILE...` brings a file judged on its first streams only up to the refined judge: each workload's
contenders (as above, with the choice `kairos` makes now) are simulated on the extra streams (and the
fragile ones' streams where one of them fails at every rate on a stream), their
recorded values extended, the optimum, every ratio and the summary recomputed, and the file rewritten.

`--rescore FILE...` simulates nothing: it rebuilds each recorded workload's candidates with the
planner as it is now, lets `kairos` choose again and scores the choice by the judged values recorded
in FILE (every maximal configuration's per-stream values are in its rows), beside the choice FILE
recorded; it also walks `kairos_plus` with the judge's recorded values as its evaluator (a proxy:
the real Kairos+ evaluates on streams of its own) to show how far its walk goes. Seconds per file.
With `--plus-simulate`, Kairos+ runs for real instead of the proxy: it simulates on its own streams
(FILE's plus seeds and queries, through `--cache`) and its choice is scored by FILE's judge; minutes. It
then also prints Kairos+'s wall time per plan (candidates and walk) over the workloads it simulated afresh.
It ends with a summary per distinct seed over all the files (a seed scored by the last file given that
holds it: `kairos`'s min / median / mean, how many below 0.98 and which below 0.95) and of the queue-aware
estimate's error, log(estimate/judged) over the fleets judged within 20% of their optimum, and of its
order: the pairs of fleets judged within 15% of their optimum and more than 5% apart that `kairos`'s
score puts the wrong way round (`misordered_pairs`), a measure of the ranking over many more
comparisons than the workloads' choices.
Every FILE is read first, and a file that is not one of this benchmark's results (e.g. a --rescore
output, which `bench/results/planner_robust*.json` also matches) is refused before any is rescored.
With `--out`, the rescore writes that summary (`per_seed`) and every file's summary and per-workload rows
there (choices, ratios, the estimate's errors, Kairos+'s share and wall time per plan, `plus_wall_s` null
where it read the cache).

`--light-check FILE...` brings a file judged by a max-QPS search without its light-load run up to
`max_qps` as it is: every recorded (fleet, stream) value above 0 gets one run at the light load on its
stream, a fleet that misses QoS there is valued on that stream by `max_qps` (below the light load,
typically 0), and the optimum, every ratio and the summary are recomputed; the file is rewritten with
the (fleet, stream) pairs so valued and their values (a workload's `judge.light_failed`). The recorded
choices stay as they were: `--rescore --plus-simulate` runs Kairos+ again with the search as it is.

`--dispatch paper` simulates the Kairos paper's dispatch rule alone (the oldest 2n queries over the
instances, no later slots, no holds, no tiers, QoS feasibility on the mean latency) for the judge and
Kairos+ alike, and the planner judges feasibility on the mean as `kairosd plan --feasibility mean` does:
the selectors measured on a dispatcher the queue-aware estimate does not model. A results file records
its rule; `--rescore` and `--refine` use the file's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from results_file import RESULTS, write_results  # bench/results_file.py

from kairosd import synth, workload
from kairosd.dispatch import feasibility_on_p99
from kairosd.planner import (
    BoundModel,
    Candidates,
    homogeneous_configs,
    kairos_score,
    make_candidates,
    select_homogeneous,
    select_kairos,
    select_kairos_paper,
    select_kairos_plus,
    type_dominance,
    upper_bound,
)
from kairosd.planner.tails import Tails, profile_tails, tailed_model, workload_tails
from kairosd.profiler import DEFAULT_BATCHES, REFINE_ROUNDS, monotone, next_round, points_of, profile_batches
from kairosd.profiles import ProfileTable, sample_cells
from kairosd.sim import (
    LIGHT_LOAD_SHARE,
    MaxQps,
    SeedsEvaluator,
    SimSetup,
    evaluate_config,
    fails_at,
    light_load,
)

JUDGE_SEED = 100  # judge stream s uses seed JUDGE_SEED + 10·s
PLUS_SEED = 500  # Kairos+'s own streams: PLUS_SEED + 10·s
PLANNER_MIX_SEED = 7  # the planner's population pmf of the batch mix
REFINE_WITHIN = 0.10  # fleets judged within this share of the best get the extra streams
REFINE_SEEDS = 7
FRAGILE_SEEDS = 50  # more streams for every contender when one of them fails QoS at every rate on some stream
SELECTORS = ("kairos", "kairos_plus", "kairos_paper", "homogeneous")
# what the cached max QPS were found with: 2, `max_qps`'s search with its light-load run first; 3, with the
# backlog read on dispatch times; 4, the dispatcher's hold on forced matches that miss QoS on the mean only
CACHE_VERSION = 4
# the simulator's dispatch rule, by `--dispatch` name: kairosd's Kairos matching as the daemon runs it,
# or the paper's rule alone (the oldest 2n queries, no later slots, no holds, no tiers, feasibility on
# the mean latency), a dispatcher the queue-aware estimate does not model
DISPATCH_RULES: dict[str, dict[str, object]] = {
    "kairos": {},
    "paper": {"lookahead": 0, "hold": False, "tiers": False, "tail": False},
}
DISPATCH = "kairos"  # set once from `--dispatch` (`main`), read by `setups`
# what the planner knows of each type's service-time tail (`--planner-tails`): the measured samples (the
# authors' layout), the log-normals of the profile's mean and p99 alone (`kairosd.planner.tails.lognormal_tails`),
# nothing (the mean and p99 tables alone), or what `kairosd profile` measures (`measured-*`, below)
PLANNER_TAILS = ("samples", "profile", "none", "measured-samples", "measured-profile")
# `--planner-tails measured-*`: what `kairosd profile` measures of each type, its default batches (or every
# `--profiled-step`-th) timed `PROFILED_REPS` times each (drawn from the workload's samples as the simulator
# draws service times): the tables from those alone, and the tails from the timed queries or from the
# tables' mean and p99
PROFILED_REPS = 100
PROFILED_SEED = 11
PROFILED_STEP = 0  # set once from `--profiled-step` (`main`): 0, `kairosd profile`'s default batches
PROFILED_REFINE = REFINE_ROUNDS  # set once from `--profiled-refine-rounds` (`main`), as `kairosd profile --refine-rounds`
TAILS = "samples"  # set once from `--planner-tails` (`main`), read by `planner_model`


def planner_model(sw: synth.SynthWorkload) -> BoundModel:
    """What the planner knows: profiles, the mix's population pmf, per-type miss probabilities,
    service-time variability and quantiles from the samples; QoS feasibility judged on p99 or on the mean
    as the simulated dispatch rule judges it (`DISPATCH`, as `kairosd plan --feasibility` is told)."""
    wl = sw.workload
    pmf = workload.mix_pmf(sw.mix, wl.profiles.max_batch, n=200_000, seed=PLANNER_MIX_SEED)
    tail = feasibility_on_p99("kairos", DISPATCH_RULES[DISPATCH])
    t: Tails | None = None
    if TAILS.startswith("measured-"):
        # what `kairosd profile` gives a user: the tables from the timed queries at its batches alone
        timed = profiled_samples(wl, sw.model, wl.types, qos_s=sw.qos_s)
        points = [p for ty, by_batch in zip(wl.types, timed, strict=True) for p in points_of(ty, by_batch)]
        prof = ProfileTable.build({sw.model: monotone(points)}, max_batch=wl.profiles.max_batch)
        if TAILS == "measured-samples":
            prof = replace(prof, samples={sw.model: dict(zip(wl.types, timed, strict=True))})
        return tailed_model(prof, sw.model, wl.types, pmf, sw.qos_s, profile_tails(prof, sw.model, wl.types, sw.qos_s),
                            tail=tail)
    if TAILS == "profile":
        t = profile_tails(wl.profiles, sw.model, wl.types, sw.qos_s)
    elif TAILS == "samples":
        t = workload_tails(wl, sw.model, wl.types, sw.qos_s)
    return tailed_model(wl.profiles, sw.model, wl.types, pmf, sw.qos_s, t, tail=tail)


def profiled_samples(wl: workload.KairosWorkload, model: str, types: tuple[str, ...],
                     reps: int | None = None, seed: int = PROFILED_SEED,
                     step: int | None = None, qos_s: float | None = None,
                     refine: int | None = None) -> list[dict[int, np.ndarray]]:
    """Per type, the service times `kairosd profile` would record: each of its default batches (with `step`
    > 0, batch 1 and every `step`-th; default `PROFILED_STEP`) up to the workload's largest batch and that
    batch itself (`profile_batches`, as for a model whose max_batch_size it is) timed `reps` times (default
    `PROFILED_REPS`), each a draw of the workload's samples for that batch (the profile mean times a
    relative sample of the batch's cell, as the simulator's "samples" noise draws them); then, given `qos_s`,
    up to `refine` rounds (default `PROFILED_REFINE`) of the midpoints where a type's p99 crosses it
    (`next_round`, as `kairosd profile`'s `time_profile`), drawn after every type's batches."""
    rng = np.random.default_rng(seed)
    rel = wl.samples.relative(model, types)  # [type, cell, k]
    mean = wl.profiles.mean_s[wl.profiles.model_index(model)][[wl.profiles.type_index(t) for t in types]]
    step = PROFILED_STEP if step is None else step
    reps = PROFILED_REPS if reps is None else reps
    grid = sorted({1, *range(step, wl.profiles.max_batch + 1, step)}) if step else DEFAULT_BATCHES
    batches = profile_batches(wl.profiles.max_batch, grid)
    refine = PROFILED_REFINE if refine is None else refine

    def draw(k: int, at: list[int]) -> dict[int, np.ndarray]:
        cells = sample_cells(np.array(at), workload.GRID_STEP, rel.shape[1])
        return {b: mean[k, b] * rel[k, c, rng.integers(0, rel.shape[2], reps)] for b, c in zip(at, cells, strict=True)}

    timed = [draw(k, batches) for k in range(len(types))]
    for k in range(len(types) if qos_s is not None else 0):
        for _ in range(refine):
            more = next_round(timed[k], qos_s, len(batches))
            if not more:
                break
            timed[k].update(draw(k, more))
    return [dict(sorted(t.items())) for t in timed]


def stream_seeds(base: int, n: int, start: int = 0) -> list[int]:
    """Streams `start` … `start + n − 1` of a family: stream s uses seed `base` + 10·s."""
    return [base + 10 * s for s in range(start, start + n)]


def setups(sw: synth.SynthWorkload, seeds: list[int], queries: int) -> tuple[SimSetup, ...]:
    """The simulated streams `seeds`, dispatched by the rule `--dispatch` names (`DISPATCH`)."""
    return tuple(workload.sim_setup(sw.workload, sw.model, n_queries=queries, seed=s, mix=sw.mix,
                                    policy_params=DISPATCH_RULES[DISPATCH]) for s in seeds)


def plus_seeds_of(seeds: list[int], n: int) -> list[int]:
    """The seeds of Kairos+'s first `n` streams: `seeds`, then its family's next ones (`PLUS_SEED`)."""
    return (seeds + stream_seeds(PLUS_SEED, n - len(seeds), len(seeds)))[:n]


def plus_evaluator(sw: synth.SynthWorkload, seeds: list[int], queries: int, bound: Callable[[np.ndarray], float],
                   workers: int, cands: Candidates) -> SeedsEvaluator:
    """Kairos+'s evaluator: streams of its own on `seeds` (apart from the judge's), up to three times as
    many (`plus_seeds_of`) when it adds streams to tell two fleets apart; each search starts at the
    candidates' `kairos_score` (`Candidates.search_start`)."""
    return SeedsEvaluator(setups(sw, seeds, queries), bound=bound, workers=workers,
                          more=lambda i: setups(sw, plus_seeds_of(seeds, i + 1)[i:], queries)[0],
                          max_streams=3 * len(seeds), guess=cands.search_start)


def cached_runs(ev: SeedsEvaluator) -> int:
    """How many (configuration, stream) results `ev` holds (e.g. read from the cache before a plan)."""
    return sum(len(c) for c in ev.caches)


def candidates_of(seed: int, max_configs: int) -> tuple[synth.SynthWorkload, BoundModel, Candidates]:
    """A workload, the planner's model of it and its candidates (as `bench_workload` builds them)."""
    sw = synth.synth_workload(seed, max_configs=max_configs)
    bm = planner_model(sw)
    return sw, bm, make_candidates(bm, sw.workload.prices_usd_per_hour, sw.budget_usd_per_hour)


def contenders(vals: dict[tuple[int, ...], np.ndarray], within: float) -> list[tuple[int, ...]]:
    """The fleets whose judged mean is within `within` of the best (the best included)."""
    best = max(float(v.mean()) for v in vals.values())
    return [c for c, v in vals.items() if float(v.mean()) >= (1.0 - within) * best]


def add_streams(sw: synth.SynthWorkload, seed: int, vals: dict[tuple[int, ...], np.ndarray], configs: list[tuple[int, ...]],
                seeds: list[int], n_before: int, queries: int, bound: Callable[[np.ndarray], float], workers: int,
                cache: Cache) -> int:
    """In place on `vals`: each of `configs` valued on its first `n_before` streams and then on `seeds`
    (max QPS per stream), simulating only the configurations that lack them; returns how many those were."""
    todo = [c for c in configs if len(vals[c]) < n_before + len(seeds)]
    if not todo or not seeds:
        return 0
    ev = SeedsEvaluator(setups(sw, seeds, queries), bound=bound, workers=workers)
    cache.fill(ev, seed, seeds, queries)
    ev.many(np.array(todo))
    cache.save(ev, seed, seeds, queries)
    for c in todo:
        vals[c] = np.concatenate([vals[c][:n_before], [cc[c].qps for cc in ev.caches]])
    return len(todo)


def fragile_values(sw: synth.SynthWorkload, seed: int, vals: dict[tuple[int, ...], np.ndarray], want: list[tuple[int, ...]],
                   n_before: int, queries: int, args: argparse.Namespace, bound: Callable[[np.ndarray], float],
                   cache: Cache) -> bool:
    """The judge's last refinement, in place on `vals`: when a contender in `want` fails QoS at every rate on
    some of its first `n_before` streams and serves on others, every contender gets `args.fragile_seeds`
    more streams. Such a fleet's value is a mixture (0 with the chance that a stream's no-wait misses
    alone exceed the p99 target's 1%), whose mean ten streams fix only to within some 12%; the same
    streams for every contender keep the comparison paired. Returns whether streams were added."""
    if args.fragile_seeds <= 0 or not any(np.any(vals[c][:n_before] == 0) and vals[c][:n_before].mean() > 0 for c in want):
        return False
    add_streams(sw, seed, vals, want, stream_seeds(JUDGE_SEED, args.fragile_seeds, n_before), n_before, queries, bound,
                args.workers, cache)
    return True


class Cache:
    """Judge results on disk, one JSON line per (dispatch rule, workload seed, stream seed, queries,
    configuration); `fill` and `save` use the rule the run simulates (`DISPATCH`; a line without "d" is
    the default rule's). A line carries the search's version "v" (`CACHE_VERSION`); lines of another
    version are not read (a search or a dispatcher of another version values fleets differently: e.g. a search
    without the light-load run can value a fleet that misses QoS at a light load at a rate it keeps only
    under heavy load)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.rows: dict[tuple[str, int, int, int, tuple[int, ...]], MaxQps] = {}
        if path is not None and path.is_file():
            stale = 0
            for line in path.read_text().splitlines():
                r = json.loads(line)
                if r.get("v", 1) != CACHE_VERSION:
                    stale += 1
                    continue
                key = (r.get("d", "kairos"), r["w"], r["s"], r["q"], tuple(r["c"]))
                self.rows[key] = MaxQps(r["qps"], (), bool(r["x"]), r["t"])
            if stale:
                print(f"{path}: {stale} results of an earlier max-QPS search not read", file=sys.stderr)

    def fill(self, ev: SeedsEvaluator, w: int, seeds: list[int], queries: int) -> None:
        for cache, s in zip(ev.caches, seeds, strict=True):
            for (d2, w2, s2, q2, c), res in self.rows.items():
                if (d2, w2, s2, q2) == (DISPATCH, w, s, queries):
                    cache[c] = res

    def save(self, ev: SeedsEvaluator, w: int, seeds: list[int], queries: int) -> None:
        if self.path is None:
            return
        new = []
        for cache, s in zip(ev.caches, seeds, strict=True):
            for c, res in cache.items():
                key = (DISPATCH, w, s, queries, c)
                if key not in self.rows:
                    self.rows[key] = res
                    new.append({"w": w, "s": s, "q": queries, "c": list(c), "qps": res.qps, "x": res.exceeds_bound,
                                "t": res.wall_s, "v": CACHE_VERSION, **({} if DISPATCH == "kairos" else {"d": DISPATCH})})
        if new:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.writelines(json.dumps(r) + "\n" for r in new)


def _key(c: np.ndarray) -> tuple[int, ...]:
    return tuple(int(x) for x in c)


def dominance(sw: synth.SynthWorkload) -> np.ndarray:
    """Kairos+'s type dominance for the workload's model (`type_dominance` on its means and samples)."""
    wl = sw.workload
    ti = [wl.profiles.type_index(t) for t in wl.types]
    mean = wl.profiles.mean_s[wl.profiles.model_index(sw.model)][ti]
    return type_dominance(mean, wl.samples.relative(sw.model, wl.types), workload.GRID_STEP)


def bound_of(bm: BoundModel) -> Callable[[np.ndarray], float]:
    """One configuration's `upper_bound` (the evaluators' bound check)."""
    return lambda x: float(upper_bound(np.asarray(x)[None, :], bm)[0])


def bench_workload(seed: int, args: argparse.Namespace, cache: Cache) -> dict[str, Any]:
    sw = synth.synth_workload(seed, max_configs=args.max_configs)
    wl = sw.workload
    t0 = time.perf_counter()
    bm = planner_model(sw)
    cands = make_candidates(bm, wl.prices_usd_per_hour, sw.budget_usd_per_hour)
    k = select_kairos(cands)
    kairos_s = time.perf_counter() - t0
    paper = select_kairos_paper(cands)
    bound = bound_of(bm)

    t1 = time.perf_counter()
    plus_seeds = stream_seeds(PLUS_SEED, args.plus_seeds)
    plus_queries = args.plus_queries or args.queries
    plus_ev = plus_evaluator(sw, plus_seeds, plus_queries, bound, args.workers, cands)
    if not args.plus_fresh:
        cache.fill(plus_ev, seed, plus_seeds, plus_queries)
    cached = cached_runs(plus_ev)
    kp = select_kairos_plus(cands, plus_ev, dominates=dominance(sw))
    plus_s = kairos_s + time.perf_counter() - t1
    plus_cached = cached > 0  # wall time of a resumed run is not a plan's
    cache.save(plus_ev, seed, plus_seeds_of(plus_seeds, len(plus_ev.setups)), plus_queries)

    judge_seeds = stream_seeds(JUDGE_SEED, args.judge_seeds)
    judge = SeedsEvaluator(setups(sw, judge_seeds, args.queries), bound=bound, workers=args.workers)
    cache.fill(judge, seed, judge_seeds, args.queries)
    homo = homogeneous_configs(cands)
    everything = np.unique(np.vstack([cands.configs, homo]), axis=0)
    t2 = time.perf_counter()
    judge.many(everything)
    judge_s = time.perf_counter() - t2
    cache.save(judge, seed, judge_seeds, args.queries)
    ho = select_homogeneous(cands, judge, bm)

    vals = {(_key(c)): np.array([cc[_key(c)].qps for cc in judge.caches]) for c in everything}
    t3 = time.perf_counter()
    refined = list(dict.fromkeys(contenders(vals, args.refine_within) + [_key(x.config) for x in (k, paper, ho, kp)]))
    add_streams(sw, seed, vals, refined, stream_seeds(JUDGE_SEED, args.refine_seeds, args.judge_seeds), args.judge_seeds,
                args.queries, bound, args.workers, cache)
    fragile = fragile_values(sw, seed, vals, refined, args.judge_seeds + args.refine_seeds, args.queries, args, bound, cache)
    judge_s += time.perf_counter() - t3
    means = np.array([vals[_key(c)].mean() for c in cands.configs])
    best = int(np.argmax(means))
    opt = cands.configs[best]
    opt_vals = vals[_key(opt)]
    if opt_vals.mean() <= 0:  # no fleet the budget buys serves this workload within QoS: nothing to judge
        return {"seed": seed, "model": sw.model, "qos_ms": sw.qos_s * 1e3, "budget_usd_per_hour": sw.budget_usd_per_hour,
                "configs_maximal": len(cands), "degenerate": "no configuration within the budget serves any rate within QoS"}

    def score(config: np.ndarray) -> dict[str, Any]:
        return {"config": cands.label(config), **judged(config.tolist(), vals[_key(config)], opt_vals)}

    spreads = [float((v.max() - v.min()) / v.mean()) for v in vals.values() if v.mean() > 0]
    sims = means
    ub_over_sim = cands.ub_qps[sims > 0] / sims[sims > 0]
    row = {
        "seed": seed, "model": sw.model, "mix": sw.mix, "qos_ms": sw.qos_s * 1e3, "budget_usd_per_hour": sw.budget_usd_per_hour,
        "types": [{"name": t.name, "parent": t.parent, "inference_scale": t.inference_scale, "load_scale": t.load_scale,
                   "batch_exponent": t.batch_exponent, "tail_share": t.tail_share, "tail_factor": t.tail_factor,
                   "price_usd_per_hour": t.price_usd_per_hour} for t in sw.types],
        "gpu": any(t.parent == synth.GPU_PARENT for t in sw.types),
        "configs_maximal": len(cands),
        "optimum": optimum_entry(cands.label(opt), opt.tolist(), opt_vals),
        "kairos": {**score(k.config), "plan_wall_s": kairos_s},
        "kairos_paper": score(paper.config),
        "homogeneous": score(ho.config),
        "kairos_plus": {**score(kp.config), "evaluations": kp.n_evals, "share_of_configs": kp.n_evals / len(cands),
                        "checks": kp.n_checks, "checks_share_of_configs": kp.n_checks / len(cands),
                        "configs_simulated": kp.n_configs, "simulated_share_of_configs": kp.n_configs / len(cands),
                        "exact": kp.exact, "plan_wall_s": plus_s, "own_qps": kp.qps, "own_streams": len(plus_ev.setups),
                        "from_cache": plus_cached},
        "judge": {"spread_median": float(np.median(spreads)), "spread_max": float(max(spreads)), "wall_s": judge_s,
                  "refined": [list(c) for c in refined], "fragile": fragile,
                  "sims_above_bound": int(np.count_nonzero(sims > cands.ub_qps * (1 + 1e-9))),
                  "ub_over_sim_median": float(np.median(ub_over_sim)) if len(ub_over_sim) else float("nan")},
        "configs": [{"counts": c.tolist(), "ub_qps": float(u), "est_qps": float(e), "qps": float(q),
                     "per_stream": vals[_key(c)].tolist()}
                    for c, u, e, q in zip(cands.configs, cands.ub_qps, _est(cands), means, strict=True)],
    }
    return row


def _est(c: Candidates) -> np.ndarray:
    return c.est_qps if c.est_qps is not None else np.full(len(c), np.nan)


class RecordedEvaluator:
    """An evaluator that answers from a results file's judged values (per stream) instead of simulating."""

    def __init__(self, configs: list[dict[str, Any]]) -> None:
        self.vals = {tuple(c["counts"]): np.asarray(c["per_stream"], dtype=float) for c in configs}

    def __call__(self, config: np.ndarray) -> float:
        return float(self.vals[_key(config)].mean())

    def values(self, config: np.ndarray) -> np.ndarray:
        return self.vals[_key(config)]


def results_file(path: Path) -> bool:
    """Whether `path` holds a results file of this benchmark (its settings and per-workload rows), not,
    e.g., a --rescore output."""
    data = json.loads(path.read_text())
    return isinstance(data, dict) and "settings" in data and "rows" in data


def use_dispatch(data: dict[str, Any]) -> None:
    """Simulate and plan under the dispatch rule a results file was judged with (its settings' "dispatch")."""
    global DISPATCH
    rule = str(data["settings"].get("dispatch", "kairos"))
    DISPATCH = "kairos" if rule.startswith("kairos") else rule
    if DISPATCH not in DISPATCH_RULES:
        raise SystemExit(f"unknown dispatch rule {rule!r} in the results file; known: {sorted(DISPATCH_RULES)}")


def estimate_errors(cands: Candidates, judged: np.ndarray, opt: float, within: float = 0.2) -> list[float]:
    """log(estimate/judged) of the fleets judged within `within` of the optimum `opt` (`judged[i]`: row i's
    judged value; the estimate and the judged value both above 0): how far the queue-aware estimate is off
    where the choice is made."""
    est = _est(cands)
    keep = (judged > 0) & (est > 0) & (judged >= (1.0 - within) * opt)
    return [float(x) for x in np.log(est[keep] / judged[keep])]


def misordered_pairs(cands: Candidates, judged: np.ndarray, opt: float, within: float = 0.15,
                     apart: float = 0.05) -> tuple[int, int]:
    """(misordered, pairs): among the fleets judged within `within` of the optimum `opt` (`judged[i]`: row
    i's judged value; score above 0),
    the ordered pairs (a, b) with a judged more than `apart` above b, and how many of them `kairos_score`
    ranks b above a. E.g. judged 100, 97 and 90 with scores 95, 99 and 80: one pair 100/90 ordered
    right, one 97/90 ordered right, 100/97 not counted (3% apart): (0, 2)."""
    if cands.est_qps is None:
        return 0, 0
    score = kairos_score(cands.est_qps, cands.ub_qps)
    keep = (judged >= (1.0 - within) * opt) & (score > 0)
    j, s = judged[keep], score[keep]
    apart_pairs = j[:, None] > (1.0 + apart) * j[None, :]
    return int((apart_pairs & (s[:, None] < s[None, :])).sum()), int(apart_pairs.sum())


def rows_by_seed(files: Iterable[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The rows of results files (or of `rescore_file`'s results) by seed, a seed taken from the last file
    that holds it."""
    return {int(r["seed"]): r for f in files for r in f["rows"]}


def per_seed_summary(files: list[dict[str, Any]]) -> dict[str, Any]:
    """`kairos`'s ratio per distinct workload over rescored files (`rescore_file`'s results), a seed scored by
    the last file given that holds it: how many, min, median, mean, how many below 0.98, which below 0.95
    ([seed, ratio], lowest first), the estimate's errors over those workloads' fleets within 20% of
    their optimum (`estimate_errors`: how many, median, 5th and 95th percentiles), and the pairs of fleets
    the score puts the wrong way round (`misordered_pairs`: misordered, pairs)."""
    by_seed = rows_by_seed(files)
    if not by_seed:
        raise SystemExit("no workload to summarise")
    ratios = {s: float(r["new"]) for s, r in by_seed.items()}
    errs = np.array([e for r in by_seed.values() for e in r.get("est_log_err", [])])
    v = list(ratios.values())
    return {"n": len(v), "min": min(v), "median": statistics.median(v), "mean": statistics.mean(v),
            "below_0.98": sum(x < 0.98 for x in v),
            "below_0.95": [[s, x] for x, s in sorted((x, s) for s, x in ratios.items() if x < 0.95)],
            "est_log_err": ([len(errs), float(np.median(errs)), float(np.percentile(errs, 5)), float(np.percentile(errs, 95))]
                            if len(errs) else [0, None, None, None]),
            "misordered_pairs": [sum(int(r.get("misordered", (0, 0))[i]) for r in by_seed.values()) for i in (0, 1)]}


def rescore_file(path: Path, args: argparse.Namespace, cache: Cache) -> dict[str, Any]:
    """`kairos` (and the proxy `kairos_plus` walk) chosen again on every workload of a results file,
    scored by its recorded judged values; prints one line per workload whose choice or ratio changed
    and a summary line (see the module docstring)."""
    data = json.loads(path.read_text())
    use_dispatch(data)
    max_configs = int(data["settings"]["max_configs"])
    rows = []
    for r in data["rows"]:
        t0 = time.perf_counter()
        sw, bm, cands = candidates_of(int(r["seed"]), max_configs)
        plan_s = time.perf_counter() - t0  # the candidates and their bounds and estimates: part of every plan
        ev = RecordedEvaluator(r["configs"])
        if set(ev.vals) != {_key(c) for c in cands.configs}:
            raise SystemExit(f"{path}: workload {r['seed']}: the candidates differ from the recorded ones")
        opt = float(r["optimum"]["qps"])
        k = select_kairos(cands)
        dominates = dominance(sw)
        if args.plus_simulate:
            st = data["settings"]
            plus_seeds = [int(x) for x in st["plus_seeds"]]
            plus_queries = int(st.get("plus_queries_per_run", st["queries_per_run"]))
            plus_ev = plus_evaluator(sw, plus_seeds, plus_queries, bound_of(bm), args.workers, cands)
            cache.fill(plus_ev, int(r["seed"]), plus_seeds, plus_queries)
            cached = cached_runs(plus_ev)
            t0 = time.perf_counter()
            kp = select_kairos_plus(cands, plus_ev, dominates=dominates)
            # a plan's wall time, unless evaluations were read from the cache
            plus_wall = None if cached else plan_s + time.perf_counter() - t0
            cache.save(plus_ev, int(r["seed"]), plus_seeds_of(plus_seeds, len(plus_ev.setups)), plus_queries)
        else:
            kp = select_kairos_plus(cands, ev, dominates=dominates)
            plus_wall = None
        new = ev(k.config) / opt
        old = float(r["kairos"]["ratio"])
        row = {"seed": r["seed"], "model": r["model"], "old": old, "new": new, "config": cands.label(k.config),
               "plus_proxy": ev(kp.config) / opt, "plus_proxy_share": kp.n_configs / len(cands)}
        row["plus_recorded"] = float(r["kairos_plus"]["ratio"])
        row["plus_config"] = cands.label(kp.config)
        row["plus_within"] = bool(judged(kp.config.tolist(), ev.values(kp.config),
                                         np.asarray(r["optimum"]["per_stream"], dtype=float))["within_spread"])
        row["plus_wall_s"] = plus_wall
        judged_rows = np.array([float(ev(c)) for c in cands.configs])
        row["est_log_err"] = estimate_errors(cands, judged_rows, opt)
        row["misordered"] = list(misordered_pairs(cands, judged_rows, opt))
        rows.append(row)
        if abs(new - old) > 1e-9:
            print(f"  {r['seed']:5d} {r['model']:6} kairos {old:.3f} -> {new:.3f}  now {row['config']}"
                  f" (recorded {r['kairos']['config']}; optimum {r['optimum']['config']})")
        if args.plus_simulate and abs(row["plus_proxy"] - row["plus_recorded"]) > 1e-9:
            print(f"  {r['seed']:5d} {r['model']:6} kairos_plus {row['plus_recorded']:.3f} -> {row['plus_proxy']:.3f}"
                  f"  now {cands.label(kp.config)} (recorded {r['kairos_plus']['config']})")

    def summ(key: str) -> tuple[float, float, int]:
        x = [row[key] for row in rows]
        return min(x), statistics.median(x), sum(v < 0.95 for v in x)

    out: dict[str, Any] = {
        "file": str(path), "n": len(rows), "recorded": summ("old"), "now": summ("new"),
        "plus_proxy": summ("plus_proxy"), "plus_recorded": summ("plus_recorded"),
        "plus_proxy_share": (statistics.median(r["plus_proxy_share"] for r in rows), max(r["plus_proxy_share"] for r in rows)),
        "plus_not_within": [int(r["seed"]) for r in rows if not r["plus_within"]], "rows": rows,
    }
    print(f"{path.name:36} n={len(rows)}  kairos recorded min {out['recorded'][0]:.3f} median {out['recorded'][1]:.3f} "
          f"<0.95 {out['recorded'][2]}  |  now min {out['now'][0]:.3f} median {out['now'][1]:.3f} <0.95 {out['now'][2]}"
          f"  |  kairos_plus ({'simulated on its streams' if args.plus_simulate else 'proxy, judge values'}) "
          f"min {out['plus_proxy'][0]:.3f} median {out['plus_proxy'][1]:.3f} <0.95 {out['plus_proxy'][2]} "
          f"(recorded min {out['plus_recorded'][0]:.3f} <0.95 {out['plus_recorded'][2]}), "
          f"not within the optimum's spread {len(out['plus_not_within'])} {out['plus_not_within']}, "
          f"simulated share median {100 * out['plus_proxy_share'][0]:.1f}% max {100 * out['plus_proxy_share'][1]:.1f}%",
          flush=True)
    timed = [r for r in rows if r["plus_wall_s"] is not None]
    walls = [float(r["plus_wall_s"]) for r in timed]
    if walls:
        slowest = timed[int(np.argmax(walls))]
        out["plus_wall_s"] = (statistics.median(walls), max(walls), len(walls))
        print(f"{'':36} kairos_plus wall time per plan (simulated afresh, {len(walls)} of {len(rows)} workloads): "
              f"median {statistics.median(walls):.1f} s, max {max(walls):.1f} s (workload {slowest['seed']})", flush=True)
    return out


def print_row(r: dict[str, Any]) -> None:
    kp = r["kairos_plus"]
    print(f"{r['seed']:5d} {r['model']:6} {'gpu' if r['gpu'] else 'cpu':4} {len(r['types']):2d} {r['qos_ms']:7.1f} "
          f"{r['budget_usd_per_hour']:5.2f} {r['configs_maximal']:4d} {r['optimum']['config'][:44]:44} "
          f"{r['optimum']['qps']:8.1f} {r['optimum']['spread']:5.2f} "
          f"{r['kairos']['ratio']:6.3f} {kp['ratio']:6.3f} {kp['configs_simulated']:4d} "
          f"{100 * kp['simulated_share_of_configs']:5.1f} "
          f"{kp['plan_wall_s']:6.1f} {r['kairos_paper']['ratio']:6.3f} {r['homogeneous']['ratio']:6.3f}", flush=True)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Min / median ratio per selector, Kairos+'s cost and wall time, the judge's spread."""

    def stats(name: str) -> dict[str, float]:
        x = [r[name]["ratio"] for r in rows]
        return {"min": min(x), "median": statistics.median(x), "below_0.95": sum(v < 0.95 for v in x),
                "within_spread": sum(r[name]["within_spread"] for r in rows)}

    summary: dict[str, Any] = {s: stats(s) for s in SELECTORS}
    shares = [r["kairos_plus"]["share_of_configs"] for r in rows]
    walls = [r["kairos_plus"]["plan_wall_s"] for r in rows]
    checks = [r["kairos_plus"]["checks_share_of_configs"] for r in rows]
    simulated = [r["kairos_plus"]["simulated_share_of_configs"] for r in rows]
    summary["kairos_plus"].update({"share_median": statistics.median(shares), "share_max": max(shares),
                                   "checks_share_median": statistics.median(checks), "checks_share_max": max(checks),
                                   "simulated_share_median": statistics.median(simulated),
                                   "simulated_share_max": max(simulated),
                                   "exact": sum(r["kairos_plus"]["exact"] for r in rows),
                                   "plan_wall_s_median": statistics.median(walls), "plan_wall_s_max": max(walls)})
    summary["kairos"]["plan_wall_s_max"] = max(r["kairos"]["plan_wall_s"] for r in rows)
    summary["judge_spread_median"] = statistics.median(r["judge"]["spread_median"] for r in rows)
    summary["optimum_spread_median"] = statistics.median(r["optimum"]["spread"] for r in rows)
    summary["sims_above_bound"] = sum(r["judge"]["sims_above_bound"] for r in rows)
    return summary


def print_summary(summary: dict[str, Any], n: int, workers: int) -> None:
    print()
    for s in SELECTORS:
        d = summary[s]
        print(f"{s:13} ratio to the judged optimum: min {d['min']:.3f}, median {d['median']:.3f}, "
              f"< 0.95 in {d['below_0.95']}/{n}, within the optimum's spread in {d['within_spread']}/{n}")
    d = summary["kairos_plus"]
    print(f"kairos_plus configurations simulated (searched or checked at one rate): median "
          f"{100 * d['simulated_share_median']:.1f}%, max {100 * d['simulated_share_max']:.1f}% of the maximal "
          f"configurations (max-QPS searches median {100 * d['share_median']:.1f}%, max {100 * d['share_max']:.1f}%; "
          f"single-rate checks median {100 * d['checks_share_median']:.1f}%, max {100 * d['checks_share_max']:.1f}%); "
          f"walk ended by pruning (exact) in {d['exact']}/{n};"
          f" wall per plan median {d['plan_wall_s_median']:.1f} s, max {d['plan_wall_s_max']:.1f} s "
          f"({workers} process(es)); kairos plan ≤ {summary['kairos']['plan_wall_s_max']:.2f} s")
    print(f"judge: median run-to-run spread {summary['judge_spread_median']:.3f} over fleets "
          f"({summary['optimum_spread_median']:.3f} for the optimum); "
          f"fleets judged above upper_bound: {summary['sims_above_bound']}")


def optimum_entry(label: str, counts: list[int], v: np.ndarray) -> dict[str, Any]:
    """The judged optimum's entry: its values on every stream, their mean and spread (max − min)/mean."""
    return {"config": label, "counts": counts, "qps": float(v.mean()), "per_stream": v.tolist(),
            "spread": float((v.max() - v.min()) / v.mean()) if v.mean() > 0 else 0.0}


def judged(counts: list[int], v: np.ndarray, opt: np.ndarray) -> dict[str, Any]:
    """A fleet's judged entry (as `bench_workload`'s `score`) from its values on every stream."""
    return {"counts": counts, "qps": float(v.mean()), "ratio": float(v.mean() / opt.mean()),
            "within_spread": bool(v.mean() >= opt.min()), "per_stream": v.tolist()}


def recorded_values(r: dict[str, Any]) -> dict[tuple[int, ...], np.ndarray]:
    """A results row's per-stream values of every fleet it records: its configurations and the selectors' choices."""
    vals = {tuple(c["counts"]): np.asarray(c["per_stream"], dtype=float) for c in r["configs"]}
    for name in SELECTORS:
        vals.setdefault(tuple(r[name]["counts"]), np.asarray(r[name]["per_stream"], dtype=float))
    return vals


def apply_values(r: dict[str, Any], vals: dict[tuple[int, ...], np.ndarray], cands: Candidates) -> None:
    """In place on a results row: every configuration's per-stream values and mean from `vals`, then the
    optimum and every selector's judged entry recomputed from them."""
    for c in r["configs"]:
        v = vals[tuple(c["counts"])]
        c["per_stream"], c["qps"] = v.tolist(), float(v.mean())
    best = max(r["configs"], key=lambda c: c["qps"])
    opt = vals[tuple(best["counts"])]
    r["optimum"] = optimum_entry(cands.label(np.array(best["counts"])), best["counts"], opt)
    for name in SELECTORS:
        r[name].update(judged(r[name]["counts"], vals[tuple(r[name]["counts"])], opt))


def refine_file(path: Path, args: argparse.Namespace, cache: Cache) -> None:
    """`--refine`: the refined judge on a file's workloads (see the module docstring); rewrites the file."""
    data = json.loads(path.read_text())
    use_dispatch(data)
    st = data["settings"]
    n_first, queries = len(st["judge_seeds"]), int(st["queries_per_run"])
    seeds = stream_seeds(JUDGE_SEED, args.refine_seeds, n_first)
    max_configs = int(st["max_configs"])
    for r in data["rows"]:
        sw, bm, cands = candidates_of(int(r["seed"]), max_configs)
        vals = recorded_values(r)
        first = {c: v[:n_first] for c, v in vals.items()}
        want = list(dict.fromkeys(contenders(first, args.refine_within) + [tuple(r[n]["counts"]) for n in SELECTORS]
                                  + [_key(select_kairos(cands).config)]))
        added = add_streams(sw, int(r["seed"]), vals, want, seeds, n_first, queries, bound_of(bm), args.workers, cache)
        r["judge"]["fragile"] = fragile_values(sw, int(r["seed"]), vals, want, n_first + len(seeds), queries, args,
                                               bound_of(bm), cache)
        apply_values(r, vals, cands)
        r["judge"]["refined"] = [list(c) for c in want]
        print(f"{r['seed']:5d} {r['model']:6} refined {added:2d} fleets; optimum {r['optimum']['config']}"
              f" {r['optimum']['qps']:.1f}; kairos {r['kairos']['ratio']:.3f}, kairos_plus {r['kairos_plus']['ratio']:.3f}",
              flush=True)
    st["refine"] = {"seeds": seeds, "within": args.refine_within}
    st["fragile"] = {"seeds": stream_seeds(JUDGE_SEED, args.fragile_seeds, n_first + len(seeds))}
    data["summary"] = summarize(data["rows"])
    print(path.name)
    print_summary(data["summary"], len(data["rows"]), args.workers)
    write_results(data, path)


def _light_values(task: tuple[str, int, int, int, int, list[tuple[int, ...]]]) -> list[float | None]:
    """One stream of one workload (dispatch rule, workload seed, max configurations, stream seed, queries)
    and fleets: for each, None when it meets the p99 target at `max_qps`'s light load on that stream,
    else its max QPS there (`max_qps` then searches below the light load only). A worker's job."""
    global DISPATCH
    rule, seed, max_configs, stream_seed, queries, fleets = task
    DISPATCH = rule
    sw = synth.synth_workload(seed, max_configs=max_configs)
    setup = setups(sw, [stream_seed], queries)[0]
    svc = setup.service.times(setup.profiles, setup.model, setup.stream)
    out: list[float | None] = []
    for c in fleets:
        fails = fails_at(setup, c, light_load(setup, c, svc), svc)
        out.append(evaluate_config(setup, c, None, svc).qps if fails else None)
    return out


def light_check_file(path: Path, args: argparse.Namespace) -> None:
    """`--light-check`: a file judged by a max-QPS search without the light-load run brought up to
    `max_qps` as it is: every recorded (fleet, stream) value above 0 gets one run at the light load on
    its stream; a fleet that misses the p99 target there is valued on that stream by `max_qps` (which
    then searches below the light load only, typically 0), and the optimum, every ratio and the summary
    are recomputed; rewrites the file. The values of fleets that pass are what the search with the
    light run finds too (its later runs are the same)."""
    data = json.loads(path.read_text())
    use_dispatch(data)
    st = data["settings"]
    if st.get("light_check"):
        print(f"{path.name}: already light-checked")
        return
    queries, max_configs = int(st["queries_per_run"]), int(st["max_configs"])
    tasks, where = [], []
    for ri, r in enumerate(data["rows"]):
        fleets = recorded_values(r)
        n_streams = max(len(v) for v in fleets.values())
        for i, stream_seed in enumerate(stream_seeds(JUDGE_SEED, n_streams)):
            todo = [c for c, v in fleets.items() if i < len(v) and v[i] > 0]
            if todo:
                tasks.append((DISPATCH, int(r["seed"]), max_configs, stream_seed, queries, todo))
                where.append((ri, i))
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max(1, args.workers)) as pool:
        results = list(pool.map(_light_values, tasks, chunksize=4))
    failed: dict[int, list[tuple[tuple[int, ...], int, float]]] = {}
    for (ri, i), task, values in zip(where, tasks, results, strict=True):
        failed.setdefault(ri, []).extend((c, i, v) for c, v in zip(task[5], values, strict=True) if v is not None)
    runs = sum(len(t[5]) for t in tasks)
    for ri, r in enumerate(data["rows"]):
        light_failed = failed.get(ri, [])
        vals = recorded_values(r)
        for c, i, v in light_failed:
            vals[c][i] = v
        old_opt = r["optimum"]["config"]
        apply_values(r, vals, candidates_of(int(r["seed"]), max_configs)[2])
        r["judge"]["light_failed"] = [[list(c), i, v] for c, i, v in light_failed]
        if light_failed:
            fleets_hit = sorted({c for c, _, _ in light_failed})
            print(f"{r['seed']:5d} {r['model']:6} {len(light_failed)} (fleet, stream) values failed the light load on"
                  f" {len(fleets_hit)} fleets;"
                  f" optimum {old_opt} -> {r['optimum']['config']}; kairos {r['kairos']['ratio']:.3f},"
                  f" kairos_plus {r['kairos_plus']['ratio']:.3f}", flush=True)
    changed = [v for f in failed.values() for _, _, v in f]
    st["light_check"] = {"share_of_capacity": LIGHT_LOAD_SHARE, "runs": runs, "values_failed": len(changed),
                         "values_to_zero": sum(v == 0 for v in changed), "wall_s": time.perf_counter() - t0}
    data["summary"] = summarize(data["rows"])
    print(f"{path.name}: {runs} light-load runs, {len(changed)} values failed the light load"
          f" ({st['light_check']['values_to_zero']} now 0), {st['light_check']['wall_s']:.0f} s")
    print_summary(data["summary"], len(data["rows"]), args.workers)
    write_results(data, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", type=int, default=30)
    ap.add_argument("--first-seed", type=int, default=synth.HELDOUT_SEEDS[0])
    ap.add_argument("--judge-seeds", type=int, default=3)
    ap.add_argument("--plus-seeds", type=int, default=3)
    ap.add_argument("--refine-seeds", type=int, default=REFINE_SEEDS,
                    help="extra judge streams for the fleets within --refine-within of the best and the choices")
    ap.add_argument("--refine-within", type=float, default=REFINE_WITHIN)
    ap.add_argument("--fragile-seeds", type=int, default=FRAGILE_SEEDS,
                    help="more judge streams for every contender of a workload where one fails QoS at every rate on "
                         "some stream (0: none)")
    ap.add_argument("--refine", nargs="+", default=None, metavar="FILE",
                    help="bring FILE's judge up to the refined one (extra streams for its contenders); rewrites FILE")
    ap.add_argument("--queries", type=int, default=4000)
    ap.add_argument("--plus-queries", type=int, default=0,
                    help="queries per Kairos+ evaluation stream (default: --queries)")
    ap.add_argument("--max-configs", type=int, default=synth.MAX_CONFIGS)
    ap.add_argument("--workers", type=int, default=max(1, len(os.sched_getaffinity(0))))
    ap.add_argument("--cache", default="/tmp/kairosd-planner-robust-cache.jsonl")
    ap.add_argument("--plus-fresh", action="store_true",
                    help="Kairos+ simulates afresh (its wall time is then a plan's), the judge still reads the cache")
    ap.add_argument("--quick", action="store_true",
                    help="2 workloads of ≤ 20 configurations, 2 streams × 1,000 queries, 1 process (out: /tmp)")
    ap.add_argument("--out", default=None,
                    help="results file (with --rescore: every file's summary and rows, Kairos+'s wall time per plan "
                         "where it simulated afresh; none written without it)")
    ap.add_argument("--rescore", nargs="+", default=None, metavar="FILE",
                    help="simulate nothing: choose again on FILE's workloads and score by its judged values")
    ap.add_argument("--dispatch", choices=sorted(DISPATCH_RULES), default="kairos",
                    help="the simulator's dispatch rule, for the judge and Kairos+ alike (paper: the Kairos paper's rule "
                         "alone, which the planner's estimate does not model; the planner then judges QoS "
                         "feasibility on the mean, as it does for that rule); a file records it, and --rescore "
                         "and --refine use the file's")
    ap.add_argument("--planner-tails", choices=PLANNER_TAILS, default="samples",
                    help="what the planner knows of each type's tail: the measured samples (default), the log-normals "
                         "of the profile's mean and p99 alone, nothing, or what `kairosd profile` measures (its "
                         "default batches timed 100 times each: the tables from those, and the tails from the timed "
                         "queries, measured-samples, or from the tables' mean and p99, measured-profile)")
    ap.add_argument("--profiled-step", type=int, default=0,
                    help="with --planner-tails measured-*: time batch 1 and every N-th batch instead of "
                         "`kairosd profile`'s default batches")
    ap.add_argument("--profiled-reps", type=int, default=100,
                    help="with --planner-tails measured-*: queries timed per batch (default: %(default)s, as "
                         "`kairosd profile --reps`)")
    ap.add_argument("--profiled-refine-rounds", type=int, default=REFINE_ROUNDS,
                    help="with --planner-tails measured-*: rounds of timing the midpoints where a type's p99 crosses "
                         "QoS (default: %(default)s, as `kairosd profile --refine-rounds`)")
    ap.add_argument("--plus-simulate", action="store_true",
                    help="with --rescore: Kairos+ simulates on its own streams instead of reading the judge's values")
    ap.add_argument("--light-check", nargs="+", default=None, metavar="FILE",
                    help="value 0 every recorded (fleet, stream) that misses the p99 target at max_qps's light load "
                         "(FILE judged by a search without that run); rewrites FILE")
    args = ap.parse_args()
    global DISPATCH, TAILS, PROFILED_STEP, PROFILED_REPS, PROFILED_REFINE
    DISPATCH, TAILS, PROFILED_STEP, PROFILED_REPS = args.dispatch, args.planner_tails, args.profiled_step, args.profiled_reps
    PROFILED_REFINE = args.profiled_refine_rounds
    if PROFILED_REFINE < 0:
        ap.error(f"--profiled-refine-rounds must be at least 0, got {PROFILED_REFINE}")
    if args.light_check:
        for f in args.light_check:
            light_check_file(Path(f), args)
        return 0
    if args.refine:
        refine_cache = Cache(Path(args.cache) if args.cache else None)
        for f in args.refine:
            refine_file(Path(f), args, refine_cache)
        return 0
    if args.rescore:
        not_results = [f for f in args.rescore if not results_file(Path(f))]
        if not_results:  # refused before any is rescored: a rescore of many files takes half an hour
            raise SystemExit(f"not results files of bench/planner_robust.py (no settings or rows; e.g. a --rescore "
                             f"output): {', '.join(not_results)}; pass the workloads' results, e.g. "
                             f"$(ls bench/results/planner_robust*.json | grep -v rescore)")
        rescore_cache = Cache(Path(args.cache) if args.cache else None)
        files = [rescore_file(Path(f), args, rescore_cache) for f in args.rescore]
        summary = per_seed_summary(files)
        err = summary["est_log_err"]
        print(f"per seed over the {len(files)} file(s) (a seed scored by the last file given that holds it): "
              f"{summary['n']} workloads, kairos now min {summary['min']:.3f} median {summary['median']:.3f} "
              f"mean {summary['mean']:.4f}, below 0.98 on {summary['below_0.98']}, below 0.95 on "
              f"{len(summary['below_0.95'])}: " + ", ".join(f"{s} {x:.3f}" for s, x in summary["below_0.95"]))
        if err[0]:
            print(f"log(estimate/judged) over the {err[0]} fleets judged within 20% of their optimum: median "
                  f"{err[1]:+.3f}, 5th-95th percentiles {err[2]:+.3f} to {err[3]:+.3f}")
        bad, pairs = summary["misordered_pairs"]
        if pairs:
            print(f"pairs of fleets judged within 15% of their optimum and over 5% apart that kairos's score puts the "
                  f"wrong way round: {bad} of {pairs} ({100 * bad / pairs:.2f}%)")
        if args.out:
            Path(args.out).write_text(json.dumps({"plus_simulate": bool(args.plus_simulate), "workers": args.workers,
                                                  "planner_tails": TAILS, "profiled_step": PROFILED_STEP,
                                                  "profiled_reps": PROFILED_REPS, "profiled_refine_rounds": PROFILED_REFINE,
                                                  "per_seed": summary, "files": files}, indent=1) + "\n")
            print(f"wrote {args.out}")
        return 0
    if args.quick:
        args.workloads, args.judge_seeds, args.queries, args.max_configs, args.workers = 2, 2, 1000, 20, 1
        args.refine_seeds = 2
    default_out = Path("/tmp/planner_robust_quick.json") if args.quick else RESULTS / "planner_robust.json"
    out = Path(args.out) if args.out else default_out
    cache = Cache(Path(args.cache) if args.cache else None)
    if args.first_seed in synth.TUNING_SEEDS:
        print("note: seeds from the tuning range, not held out", file=sys.stderr)
    t_start = time.perf_counter()
    print(f"{'seed':>5} {'model':6} {'kind':4} {'#T':>2} {'QoS ms':>7} {'$/h':>5} {'cfgs':>4} {'optimum (judged)':44} "
          f"{'opt qps':>8} {'sprd':>5} {'kairos':>6} {'k+':>6} {'k+sim':>4} {'%k+':>5} {'k+ s':>6} {'paper':>6} {'homog':>6}")
    rows: list[dict[str, Any]] = []
    degenerate: list[dict[str, Any]] = []
    seeds: list[int] = []
    seed = args.first_seed
    while len(rows) < args.workloads and len(seeds) < 2 * args.workloads:  # drawn until enough can be judged
        seeds.append(seed)
        r = bench_workload(seed, args, cache)
        seed += 1
        if "degenerate" in r:
            print(f"{r['seed']:5d} {r['model']:6} skipped: {r['degenerate']}", flush=True)
            degenerate.append(r)
            continue
        print_row(r)
        rows.append(r)

    summary = summarize(rows)
    print_summary(summary, len(rows), args.workers)
    total = time.perf_counter() - t_start
    if degenerate:
        print(f"skipped {len(degenerate)} workload(s) no fleet within the budget can serve: "
              f"{[r['seed'] for r in degenerate]}")
    print(f"total {total:.0f} s")
    write_results({
        "benchmark": "planner_robust",
        "host": {"python": platform.python_version(), "cpus": len(os.sched_getaffinity(0)), "workers": args.workers},
        "settings": {"workload_seeds": seeds, "judge_seeds": stream_seeds(JUDGE_SEED, args.judge_seeds),
                     "plus_seeds": stream_seeds(PLUS_SEED, args.plus_seeds), "queries_per_run": args.queries,
                     "plus_queries_per_run": args.plus_queries or args.queries,
                     "max_configs": args.max_configs, "planner_mix": f"population pmf (200,000 draws, seed {PLANNER_MIX_SEED})",
                     "noise": "measured (synthetic) samples", "criterion": "p99 <= QoS",
                     "planner_tails": TAILS, "profiled_step": PROFILED_STEP, "profiled_reps": PROFILED_REPS,
                     "profiled_refine_rounds": PROFILED_REFINE,
                     "dispatch": "kairos (tail=True)" if args.dispatch == "kairos" else args.dispatch,
                     "dispatch_params": DISPATCH_RULES[args.dispatch],
                     "quick": args.quick,
                     "refine": {"seeds": stream_seeds(JUDGE_SEED, args.refine_seeds, args.judge_seeds),
                                "within": args.refine_within},
                     "fragile": {"seeds": stream_seeds(JUDGE_SEED, args.fragile_seeds,
                                                       args.judge_seeds + args.refine_seeds)}},
        "rows": rows, "degenerate": degenerate, "summary": summary, "total_s": total,
    }, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

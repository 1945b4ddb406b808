"""The autoscaler's "min_cost" plans, one-shot and refined by simulation, judged on streams of their own.

    python bench/autoscale_mincost.py bench/results/planner_robust_8824.json ... [--workers 2] [--out FILE]

Per workload of the planner benchmark's files (a seed taken from the last file given that holds it, built
with that file's `max_configs` and dispatch rule) and per load R = `--loads` × the recorded optimum's
judged max QPS, as the autoscaler plans with `autoscaler.objective = "min_cost"` and the default
headroom h (1.2):
  * baseline, the one-shot plan: `plan_fleet(objective="min_cost")`, the cheapest fleet whose estimate
    covers h·R (each type's tail from the measured samples);
  * the refined plan: `kairosd.autoscale.refine.refine` on the daemon's job with `objective = "min_cost"`
    (`kairosd.autoscale.cover`: configurations in cost order, each tested by one run at h·R on each of
    the walk's streams, drawn from the samples' `SIM_QUANTILES` quantiles), in this process, one core.
Both are judged on `--judge-streams` streams of the workload's measured samples, seeds apart from the
walk's: whether the fleet serves R (the observed load: a fleet that does not misses QoS in production)
and h·R on every judge stream (one run at the rate per stream, `below_max_qps`), its max QPS over R (the
mean over the judge streams, `max_qps`), and its cost against the judge's cheapest cover of h·R (the
same cost-ordered walk on the judge's streams, over every configuration whose bound reaches 0.9·h·R).
Printed: the rows where either plan misses R or h·R or differs from the judge's cost, then per plan how
many miss R and h·R, their max QPS over R, the cost over the judge's cheapest (median, mean, min, max)
and the walk's seconds. `--out` writes every row and the summary as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import planner_robust  # bench/planner_robust.py
from results_file import write_results

from kairosd import synth, workload
from kairosd.autoscale.cover import cover_order, first_cover
from kairosd.autoscale.refine import RefineJob, refine
from kairosd.dispatch import feasibility_on_p99
from kairosd.planner import enumerate_configs, upper_bound
from kairosd.planner.demand import ModelDemand
from kairosd.planner.enumeration import _micro
from kairosd.planner.joint import DEFAULT_HEADROOM, plan_fleet
from kairosd.planner.tails import SIM_QUANTILES, workload_tails
from kairosd.sim import SeedsEvaluator, SimSetup, below_max_qps

JUDGE_SEED = 900  # judge stream s uses seed JUDGE_SEED + 10·s (the walk's are the job's own, from 0)
JUDGE_BOUND_SHARE = 0.9  # the judge tests every fleet whose bound reaches this share of h·R (a stream may pass the bound)
LOADS = (0.3, 0.6)
JUDGE_QUERIES = 6000  # per judge stream, as bench/planner_robust.py's judge is run (--queries 6000)


def serves(setups: tuple[SimSetup, ...], config: np.ndarray, rate_qps: float) -> bool:
    """Whether `config` keeps QoS at `rate_qps` on every one of `setups` (one run each, and perhaps one at
    the light load, as `max_qps` values a fleet)."""
    key = tuple(int(x) for x in config)
    return all(not below_max_qps(s, key, rate_qps) for s in setups)


def plan_load(task: tuple[int, int, str, float, float, int]) -> dict[str, Any]:
    """The one-shot and the refined min_cost plans of one workload at one load, judged."""
    seed, max_configs, dispatch, optimum_qps, load, judge_streams = task
    planner_robust.DISPATCH = dispatch
    sw = synth.synth_workload(seed, max_configs=max_configs)
    wl = sw.workload
    params = dict(planner_robust.DISPATCH_RULES[dispatch])
    tail = feasibility_on_p99("kairos", params)
    pmf = workload.mix_pmf(sw.mix, wl.profiles.max_batch, n=200_000, seed=planner_robust.PLANNER_MIX_SEED)
    rate = load * optimum_qps
    h = DEFAULT_HEADROOM
    demand = (ModelDemand(sw.model, rate, pmf),)
    tails = workload_tails(wl, sw.model, wl.types, sw.qos_s)
    t0 = time.perf_counter()
    plan = plan_fleet(wl.profiles, wl.types, wl.prices_usd_per_hour, sw.budget_usd_per_hour, list(demand),
                      {sw.model: sw.qos_s}, tails={sw.model: tails}, tail=tail, objective="min_cost", headroom=h)
    plan_s = time.perf_counter() - t0
    every = workload_tails(wl, sw.model, wl.profiles.types, sw.qos_s)
    job = RefineJob(wl.profiles, demand, (sw.qos_s,), (every,), tuple(wl.types), tuple(wl.prices_usd_per_hour), None,
                    sw.budget_usd_per_hour, tail, "kairos", params, objective="min_cost", headroom=h,
                    draws=(workload_tails(wl, sw.model, wl.profiles.types, sw.qos_s, SIM_QUANTILES).quantiles,))
    refined = refine(job)
    prices = np.asarray(wl.prices_usd_per_hour, dtype=float)
    one_shot = np.array([plan.counts[t] for t in wl.types])
    ref = np.array([refined.counts[t] for t in wl.types])
    judge = planner_robust.setups(sw, planner_robust.stream_seeds(JUDGE_SEED, judge_streams), JUDGE_QUERIES)
    configs = enumerate_configs(prices, sw.budget_usd_per_hour, maximal_only=False)
    cost = configs @ _micro(prices)
    ub = upper_bound(configs, planner_robust.planner_model(sw))
    cheapest = first_cover(cover_order(cost, ub, JUDGE_BOUND_SHARE * h * rate),
                           lambda r: serves(judge, configs[r], h * rate), None)
    best_cost = float(configs[cheapest.row] @ prices) if cheapest.row >= 0 else None

    bm = planner_robust.planner_model(sw)
    searches = SeedsEvaluator(judge, bound=lambda c: float(upper_bound(np.asarray(c)[None, :], bm)[0]), workers=1)

    def judged(config: np.ndarray) -> dict[str, Any]:
        c = float(config @ prices)
        per_stream = searches.values(config) / rate
        return {"counts": [int(x) for x in config], "cost": c, "serves_load": serves(judge, config, rate),
                "multiple": float(per_stream.mean()), "multiple_min": float(per_stream.min()),
                "serves_headroom": serves(judge, config, h * rate),
                "cost_over_cheapest": None if best_cost is None else c / best_cost}

    return {"seed": seed, "model": sw.model, "load": load, "rate_qps": rate, "types": list(wl.types),
            "one_shot": judged(one_shot), "one_shot_s": plan_s, "refined": judged(ref), "walk_s": refined.seconds,
            "tested": refined.n_evals, "candidates": refined.n_configs, "refined_reason_fallback": bool(refined.why),
            "judge_cheapest": None if cheapest.row < 0 else [int(x) for x in configs[cheapest.row]],
            "judge_cheapest_cost": best_cost, "judge_tested": cheapest.tested}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def of(name: str) -> dict[str, Any]:
        ratio = np.array([r[name]["cost_over_cheapest"] for r in rows if r[name]["cost_over_cheapest"] is not None])
        mult = np.array([r[name]["multiple"] for r in rows])
        return {"misses_load": int(sum(not r[name]["serves_load"] for r in rows)),
                "multiple": {"median": float(np.median(mult)), "min": float(mult.min()),
                             "below_1": int((mult < 1).sum()), "below_headroom": int((mult < DEFAULT_HEADROOM).sum())},
                "misses_headroom": int(sum(not r[name]["serves_headroom"] for r in rows)),
                "cost_over_cheapest": {"median": float(np.median(ratio)), "mean": float(ratio.mean()),
                                       "max": float(ratio.max()), "min": float(ratio.min()),
                                       "above_1": int((ratio > 1 + 1e-9).sum()), "below_1": int((ratio < 1 - 1e-9).sum())}}

    walk = np.array([r["walk_s"] for r in rows])
    tested = np.array([r["tested"] for r in rows])
    return {"plans": len(rows), "one_shot": of("one_shot"), "refined": of("refined"),
            "changed": int(sum(r["one_shot"]["counts"] != r["refined"]["counts"] for r in rows)),
            "walk_s": {"median": float(np.median(walk)), "max": float(walk.max())},
            "tested": {"median": float(np.median(tested)), "max": int(tested.max())},
            "fallbacks": int(sum(r["refined_reason_fallback"] for r in rows))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", help="bench/planner_robust.py results (their recorded optimum)")
    ap.add_argument("--loads", type=float, nargs="+", default=list(LOADS),
                    help="observed loads as shares of the optimum's max QPS (default: %(default)s)")
    ap.add_argument("--judge-streams", type=int, default=5, help="judge streams per plan (default: %(default)s)")
    ap.add_argument("--workers", type=int, default=2, help="plans made at a time (default: %(default)s)")
    ap.add_argument("--out", help="write the rows and the summary as JSON here")
    args = ap.parse_args(argv)
    tasks: dict[tuple[int, float], tuple[int, int, str, float, float, int]] = {}
    for p in args.files:
        data = json.loads(Path(p).read_text())
        planner_robust.use_dispatch(data)
        for r in data["rows"]:
            opt = float(r["optimum"]["qps"])
            if opt <= 0:
                continue
            for load in args.loads:
                tasks[(int(r["seed"]), load)] = (int(r["seed"]), int(data["settings"]["max_configs"]),
                                                 planner_robust.DISPATCH, opt, load, args.judge_streams)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        rows = list(pool.map(plan_load, [tasks[k] for k in sorted(tasks)]))
    wall = time.perf_counter() - t0

    def mark(j: dict[str, Any]) -> str:
        return ("" if j["serves_load"] else " MISSES LOAD") + ("" if j["serves_headroom"] else " misses h")

    print(f"{'seed':>6} {'model':>6} {'load':>5} {'one-shot $/h':>13} {'refined $/h':>12} {'cheapest':>9}  notes")
    for r in rows:
        one, ref = r["one_shot"], r["refined"]
        best = r["judge_cheapest_cost"]
        if mark(one) or mark(ref) or best is None or abs(one["cost"] - best) > 1e-9 or abs(ref["cost"] - best) > 1e-9:
            print(f"{r['seed']:>6} {r['model']:>6} {r['load']:>5.2f} {one['cost']:>13.4f} {ref['cost']:>12.4f} "
                  f"{best if best is not None else float('nan'):>9.4f}  one-shot ×{one['multiple']:.2f}{mark(one)}; "
                  f"refined ×{ref['multiple']:.2f}{mark(ref)}")
    s = summarize(rows)
    print(f"\n{s['plans']} plans ({wall:.0f} s on {args.workers} processes), judged on {args.judge_streams} streams each")
    for name in ("one_shot", "refined"):
        x = s[name]
        c = x["cost_over_cheapest"]
        print(f"  {name:>9}: misses the load on {x['misses_load']}, the headroom on {x['misses_headroom']}; cost / the "
              f"judge's cheapest cover: median {c['median']:.3f}, mean {c['mean']:.3f}, min {c['min']:.3f}, max "
              f"{c['max']:.3f} (dearer on {c['above_1']}, cheaper on {c['below_1']})")
        m = x["multiple"]
        print(f"  {'':>9}  judged max QPS / load (mean over the streams): median {m['median']:.3f}, min {m['min']:.3f}, "
              f"below 1 on {m['below_1']}, below {DEFAULT_HEADROOM:g} on {m['below_headroom']}")
    print(f"  the walk changed {s['changed']} plans; median {s['walk_s']['median']:.2f} s (max {s['walk_s']['max']:.2f}), "
          f"{s['tested']['median']:.0f} fleets tested (max {s['tested']['max']}); nothing covered in simulation on "
          f"{s['fallbacks']}")
    if args.out:
        write_results({"benchmark": "autoscale_mincost", "files": args.files, "loads": args.loads,
                       "judge_streams": args.judge_streams, "headroom": DEFAULT_HEADROOM, "workers": args.workers,
                       "wall_s": wall, "rows": rows, "summary": s}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The autoscaler's "min_cost" plans for two models, one-shot and refined by simulation, judged on fresh streams.

    python bench/autoscale_mincost_joint.py [--pairs ncf+rm2,...] [--shares 0.25 0.5 0.75] [--budget 5]
                                            [--loads 0.3 0.6] [--workers 2] [--out FILE]

Per workload (a pair of the Kairos authors' models, the first model's share of the rate, the Kairos batch
mix for both, the authors' `max_num` caps, `--budget`) and per load: the total rate is `--loads` × the
multiple of 100 q/s that the one-shot "max_throughput" plan estimates the budget buys (so that the
headroom can be covered). As the autoscaler plans with `objective = "min_cost"` and headroom h = 1.2:
  * baseline, the one-shot plan: `plan_fleet(objective="min_cost")` (shared or partitioned by the
    estimate, each type's tail from the measured samples);
  * the refined plan: `kairosd.autoscale.refine.refine` with `objective = "min_cost"`
    (`kairosd.autoscale.cover`: the partition's cheapest parts and the shared fleets in cost order, each
    tested at h × the rates on the walk's streams), in this process, one core.
Both are judged by bench/autoscale_joint.py's judge (`judge`: the plan's largest multiple of the demand at
which every model keeps its QoS, three fresh streams of the measured samples, shared or part by part),
taken as a multiple of the load. Printed: a row per plan, then per plan kind how many are judged below the
load and below h, the least multiple, and the cost of refined over one-shot. `--out` writes JSON.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np
from autoscale_joint import POLICY, POLICY_PARAMS, RATE_QPS, _demand, _describe, _wl, judge  # bench/autoscale_joint.py
from results_file import RESULTS, write_results

from kairosd.autoscale.refine import RefineJob, refine, refined_plan
from kairosd.planner.joint import DEFAULT_HEADROOM, plan_fleet
from kairosd.planner.tails import SIM_QUANTILES, workload_tails

LOADS = (0.3, 0.6)


def task(args: tuple[tuple[str, str], float, float, float]) -> dict[str, Any]:
    """One workload at one load: the one-shot and the refined min_cost plans, judged."""
    models, share, budget, load = args
    wl = _wl()
    tails = {m: workload_tails(wl, m, wl.types, wl.qos_s[m]) for m in models}
    at_100 = _demand(models, share)
    most = plan_fleet(wl.profiles, wl.types, wl.prices_usd_per_hour, budget, at_100, wl.qos_s, tails=tails,
                      max_counts=wl.max_counts)
    scale = load * most.multiple
    demand = [replace(d, rate_qps=d.rate_qps * scale) for d in at_100]
    h = DEFAULT_HEADROOM
    t0 = time.perf_counter()
    plan = plan_fleet(wl.profiles, wl.types, wl.prices_usd_per_hour, budget, demand, wl.qos_s, tails=tails,
                      max_counts=wl.max_counts, objective="min_cost", headroom=h)
    plan_s = time.perf_counter() - t0
    every = tuple(workload_tails(wl, m, wl.profiles.types, wl.qos_s[m]) for m in models)
    draws = tuple(workload_tails(wl, m, wl.profiles.types, wl.qos_s[m], SIM_QUANTILES).quantiles for m in models)
    job = RefineJob(wl.profiles, tuple(demand), tuple(wl.qos_s[m] for m in models), every, tuple(wl.types),
                    tuple(wl.prices_usd_per_hour), tuple(wl.max_counts), budget, True, POLICY, POLICY_PARAMS,
                    one_shot_partitioned=plan.partitioned, objective="min_cost", headroom=h, draws=draws)
    refined = refine(job)
    prices = dict(zip(wl.types, wl.prices_usd_per_hour, strict=True))
    ref_plan = refined_plan(plan, refined, job.total_rate_qps, prices)
    one = judge(models, share, plan) / scale  # the judge's multiple of 100 q/s, as a multiple of the load
    ref = one if ref_plan.pools == plan.pools else judge(models, share, ref_plan) / scale

    def entry(p: Any, judged: np.ndarray) -> dict[str, Any]:
        return {"kind": "partitioned" if p.partitioned else "shared", "fleet": _describe(p, models), "pools": p.pools,
                "cost": p.cost_usd_per_hour, "judged": judged.tolist(), "multiple": float(judged.mean())}

    return {"models": list(models), "share": share, "budget_usd_per_hour": budget, "load": load,
            "rate_qps": RATE_QPS * scale, "one_shot": {**entry(plan, one), "plan_s": plan_s},
            "refined": {**entry(ref_plan, ref), "walk_s": refined.seconds, "tested": refined.n_evals,
                        "reason": ref_plan.reason},
            "changed": ref_plan.pools != plan.pools}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def of(name: str) -> dict[str, Any]:
        m = np.array([r[name]["multiple"] for r in rows])
        return {"below_load": int((m < 1).sum()), "below_headroom": int((m < DEFAULT_HEADROOM).sum()),
                "min_multiple": float(m.min()), "median_multiple": float(np.median(m)),
                "partitioned": int(sum(r[name]["kind"] == "partitioned" for r in rows))}

    cost = np.array([r["refined"]["cost"] / r["one_shot"]["cost"] for r in rows])
    walk = np.array([r["refined"]["walk_s"] for r in rows])
    return {"plans": len(rows), "one_shot": of("one_shot"), "refined": of("refined"),
            "changed": int(sum(r["changed"] for r in rows)),
            "cost_refined_over_one_shot": {"geometric_mean": float(np.exp(np.log(cost).mean())), "min": float(cost.min()),
                                           "max": float(cost.max()), "cheaper": int((cost < 1 - 1e-9).sum()),
                                           "dearer": int((cost > 1 + 1e-9).sum())},
            "walk_s": {"median": float(np.median(walk)), "max": float(walk.max())}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default=None, help="comma-separated a+b (default: every pair of the authors' models)")
    ap.add_argument("--shares", type=float, nargs="+", default=[0.25, 0.5, 0.75],
                    help="the first model's share of the rate (default: %(default)s)")
    ap.add_argument("--budget", type=float, default=5.0, help="$/h (default: %(default)s)")
    ap.add_argument("--loads", type=float, nargs="+", default=list(LOADS),
                    help="loads as shares of what the budget buys by the max_throughput estimate (default: %(default)s)")
    ap.add_argument("--workers", type=int, default=2, help="plans at a time (default: %(default)s)")
    ap.add_argument("--out", default=str(RESULTS / "autoscale_mincost_joint.json"))
    args = ap.parse_args(argv)
    models = _wl().profiles.models
    pairs = ([tuple(p.split("+")) for p in args.pairs.split(",")] if args.pairs
             else list(itertools.combinations(models, 2)))
    tasks = [((str(a), str(b)), s, args.budget, x) for (a, b) in pairs for s in args.shares for x in args.loads]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        rows = list(pool.map(task, tasks))
    wall = time.perf_counter() - t0
    print(f"{'pair':>11} {'share':>5} {'load':>4} {'rate':>6} {'one-shot $/h':>13} {'×load':>6} {'refined $/h':>12} "
          f"{'×load':>6} {'walk s':>6}  refined fleet")
    for r in rows:
        one, ref = r["one_shot"], r["refined"]
        print(f"{'+'.join(r['models']):>11} {r['share']:>5.2f} {r['load']:>4.1f} {r['rate_qps']:>6.1f} {one['cost']:>13.4f} "
              f"{one['multiple']:>6.2f} {ref['cost']:>12.4f} {ref['multiple']:>6.2f} {ref['walk_s']:>6.1f}  {ref['fleet']}")
    s = summarize(rows)
    print(f"\n{s['plans']} plans ({wall:.0f} s on {args.workers} processes), judged multiple of the load:")
    for name in ("one_shot", "refined"):
        x = s[name]
        print(f"  {name:>9}: below 1 on {x['below_load']}, below {DEFAULT_HEADROOM:g} on {x['below_headroom']}, min "
              f"{x['min_multiple']:.3f}, median {x['median_multiple']:.3f}; partitioned {x['partitioned']}")
    c = s["cost_refined_over_one_shot"]
    print(f"  refined / one-shot cost: geometric mean {c['geometric_mean']:.3f} (min {c['min']:.3f}, max {c['max']:.3f}; "
          f"cheaper on {c['cheaper']}, dearer on {c['dearer']}); the walk changed {s['changed']}, median "
          f"{s['walk_s']['median']:.1f} s (max {s['walk_s']['max']:.1f})")
    write_results({"benchmark": "autoscale_mincost_joint", "settings": {
        "pairs": ["+".join(p) for p in pairs], "shares": args.shares, "budget": args.budget, "loads": args.loads,
        "headroom": DEFAULT_HEADROOM}, "workers": args.workers, "wall_s": wall, "rows": rows, "summary": s}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the autoscaler's Kairos+ walk gives back over its one-shot plan, judged on the planner benchmark's
workloads (the judged values bench/planner_robust.py recorded: no judge run here).

    python bench/autoscale_plan.py bench/results/planner_robust_8632.json ... [--workers 2] [--out FILE]

Per workload (a seed taken from the last file given that holds it, built with that file's `max_configs`
and judged under its dispatch rule), as the autoscaler plans for it with `autoscaler.objective =
"max_throughput"` and the workload's mix observed:
  * baseline, the one-shot plan: `plan_fleet` (for one model, `select_kairos`), each type's tail from
    the measured samples (what an emulated type's cells give the daemon);
  * the refined plan: `kairosd.autoscale.refine.refine`, the walk `autoscaler.selector = "kairos_plus"`
    runs in its child process (its own three streams, each service drawn from the samples'
    `SIM_QUANTILES` quantiles, as the daemon draws an emulated type's cells; one core, the default time
    limit), measured here in-process, `--workers` workloads at a time.
Both are scored by the recorded judge: a fleet's judged mean over the optimum's, and whether it is
within the optimum's judged spread (at least the optimum's lowest stream). Printed: the workloads on
which either plan is below 0.95, and the summary: min / median of each, how many below 0.95 and
within the spread, the walk's seconds and share of configurations simulated, and the mean ratio of
refined to one-shot. `--out` writes every row and the summary as JSON.
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
from kairosd.autoscale.refine import PLUS_TIME_LIMIT_S, RefineJob, refine
from kairosd.dispatch import feasibility_on_p99
from kairosd.planner.demand import ModelDemand
from kairosd.planner.joint import plan_fleet
from kairosd.planner.tails import SIM_QUANTILES, workload_tails

RATE_QPS = 100.0  # the observed rate (a single-model max_throughput plan does not depend on it)


def plan_both(task: tuple[int, int, str], time_limit_s: float) -> dict[str, Any]:
    """The one-shot and the refined plan of workload `seed` (`task`: seed, its file's `max_configs` and
    dispatch rule), as the autoscaler makes them."""
    seed, max_configs, dispatch = task
    sw = synth.synth_workload(seed, max_configs=max_configs)
    wl = sw.workload
    params = dict(planner_robust.DISPATCH_RULES[dispatch])
    tail = feasibility_on_p99("kairos", params)
    pmf = workload.mix_pmf(sw.mix, wl.profiles.max_batch, n=200_000, seed=planner_robust.PLANNER_MIX_SEED)
    demand = (ModelDemand(sw.model, RATE_QPS, pmf),)
    tails = workload_tails(wl, sw.model, wl.types, sw.qos_s)
    t0 = time.perf_counter()
    plan = plan_fleet(wl.profiles, wl.types, wl.prices_usd_per_hour, sw.budget_usd_per_hour, list(demand),
                      {sw.model: sw.qos_s}, tails={sw.model: tails}, tail=tail)
    plan_s = time.perf_counter() - t0
    every = workload_tails(wl, sw.model, wl.profiles.types, sw.qos_s)
    job = RefineJob(wl.profiles, demand, (sw.qos_s,), (every,), tuple(wl.types), tuple(wl.prices_usd_per_hour), None,
                    sw.budget_usd_per_hour, tail, "kairos", params, time_limit_s=time_limit_s,
                    draws=(workload_tails(wl, sw.model, wl.profiles.types, sw.qos_s, SIM_QUANTILES).quantiles,))
    refined = refine(job)
    return {"seed": seed, "model": sw.model, "types": list(wl.types),
            "one_shot": [int(plan.counts[t]) for t in wl.types], "one_shot_s": plan_s,
            "refined": [int(refined.counts[t]) for t in wl.types], "walk_s": refined.seconds,
            "n_evals": refined.n_evals, "n_configs": refined.n_configs, "exact": refined.exact}


def score(r: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """`plan_both`'s result `r` judged by the recorded results row of its workload."""
    vals = planner_robust.recorded_values(row)
    opt = np.asarray(row["optimum"]["per_stream"], dtype=float)
    out = dict(r)
    for name in ("one_shot", "refined"):
        v = vals.get(tuple(r[name]))
        if v is None:
            out[name + "_judged"] = None
            continue
        out[name + "_judged"] = {"qps": float(v.mean()), "ratio": float(v.mean() / opt.mean()),
                                 "within_spread": bool(v.mean() >= opt.min())}
    out["recorded_kairos_agrees"] = list(row["kairos"]["counts"]) == r["one_shot"]
    out["optimum"] = row["optimum"]["config"]
    return out


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    judged = [r for r in rows if r["one_shot_judged"] and r["refined_judged"]]
    one = np.array([r["one_shot_judged"]["ratio"] for r in judged])
    ref = np.array([r["refined_judged"]["ratio"] for r in judged])
    share = np.array([r["n_evals"] / r["n_configs"] for r in judged])
    walk = np.array([r["walk_s"] for r in judged])

    def stats(x: np.ndarray, key: str) -> dict[str, Any]:
        return {"min": float(x.min()), "median": float(np.median(x)), "mean": float(x.mean()),
                "below_0_95": int((x < 0.95).sum()),
                "within_spread": int(sum(r[key]["within_spread"] for r in judged))}

    return {"workloads": len(rows), "judged": len(judged), "one_shot": stats(one, "one_shot_judged"),
            "refined": stats(ref, "refined_judged"), "refined_over_one_shot_mean": float(np.mean(ref / one)),
            "changed": int(sum(r["one_shot"] != r["refined"] for r in judged)),
            "walk_s": {"median": float(np.median(walk)), "max": float(walk.max())},
            "simulated_share": {"median": float(np.median(share)), "max": float(share.max())},
            "recorded_kairos_agrees": int(sum(r["recorded_kairos_agrees"] for r in judged))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", help="bench/planner_robust.py results (their recorded judge)")
    ap.add_argument("--workers", type=int, default=2, help="workloads planned at a time (default: %(default)s)")
    ap.add_argument("--time-limit", type=float, default=PLUS_TIME_LIMIT_S,
                    help="the walk's seconds, as autoscaler.plus_time_limit_s (default: %(default)s)")
    ap.add_argument("--out", help="write the rows and the summary as JSON here")
    args = ap.parse_args(argv)
    rows_by_seed: dict[int, dict[str, Any]] = {}
    tasks: dict[int, tuple[int, int, str]] = {}
    for p in args.files:  # a seed taken from the last file that holds it, planned as that file's workloads were
        data = json.loads(Path(p).read_text())
        planner_robust.use_dispatch(data)
        for r in data["rows"]:
            rows_by_seed[int(r["seed"])] = r
            tasks[int(r["seed"])] = (int(r["seed"]), int(data["settings"]["max_configs"]), planner_robust.DISPATCH)
    seeds = sorted(s for s, r in rows_by_seed.items() if max(c["qps"] for c in r["configs"]) > 0)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        planned = list(pool.map(plan_both, [tasks[s] for s in seeds], [args.time_limit] * len(seeds)))
    rows = [score(r, rows_by_seed[r["seed"]]) for r in planned]
    wall = time.perf_counter() - t0
    print(f"{'seed':>6} {'model':>6} {'one-shot':>9} {'refined':>8} {'evals':>7} {'walk s':>7}  refined fleet")
    for r in rows:
        one, ref = r["one_shot_judged"], r["refined_judged"]
        if one is None or ref is None or min(one["ratio"], ref["ratio"]) < 0.95:
            label = " + ".join(f"{n}×{t.split('.')[0]}" for n, t in zip(r["refined"], r["types"], strict=True) if n)
            print(f"{r['seed']:>6} {r['model']:>6} {one['ratio'] if one else float('nan'):>9.3f} "
                  f"{ref['ratio'] if ref else float('nan'):>8.3f} {r['n_evals']:>3}/{r['n_configs']:<3} "
                  f"{r['walk_s']:>7.1f}  {label}")
    s = summarize(rows)
    print(f"\n{s['judged']} workloads judged ({s['workloads']} planned, {wall:.0f} s on {args.workers} processes)")
    for name in ("one_shot", "refined"):
        x = s[name]
        print(f"  {name:>9}: min {x['min']:.3f}  median {x['median']:.3f}  mean {x['mean']:.4f}  "
              f"below 0.95 on {x['below_0_95']}  within the optimum's spread on {x['within_spread']}")
    print(f"  refined / one-shot (mean ratio): {s['refined_over_one_shot_mean']:.4f}; the walk changed the plan on "
          f"{s['changed']}")
    print(f"  walk: median {s['walk_s']['median']:.1f} s, max {s['walk_s']['max']:.1f} s; simulated share median "
          f"{100 * s['simulated_share']['median']:.1f}%, max {100 * s['simulated_share']['max']:.1f}%")
    print(f"  the one-shot plan is the recorded kairos choice on {s['recorded_kairos_agrees']} of {s['judged']}")
    if args.out:
        write_results({"benchmark": "autoscale_plan", "files": args.files, "time_limit_s": args.time_limit,
                       "workers": args.workers, "wall_s": wall, "rows": rows, "summary": s}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the autoscaler's Kairos+ walk gives back over its one-shot plan when two models share the load:
pairs of the Kairos authors' models (their profiles, measured samples, QoS targets, prices and instance
limits), planned as the autoscaler plans them and judged by simulation on streams the walk never saw.

    python bench/autoscale_joint.py [--pairs ncf+rm2,...] [--shares 0.25 0.5 0.75] [--budgets 2.5 5]
                                    [--workers 2] [--time-limit 30] [--out bench/results/autoscale_joint.json]

Per workload (a pair, the first model's share of the rate, a budget; the Kairos batch mix for both
models; the authors' `max_num` caps), with `autoscaler.objective = "max_throughput"`:
  * baseline, the one-shot plan: `plan_fleet`, shared or partitioned by the joint estimate, each type's
    tail from the measured samples;
  * the refined plan: `kairosd.autoscale.refine.refine`, the walk `autoscaler.selector = "kairos_plus"`
    runs in its child process (the partitions simulated part by part, then the shared fleets, on its
    own three streams, each service drawn from the samples' `SIM_QUANTILES` quantiles; one core; the time
    limit);
  * the judge: each plan's largest multiple of the demand vector at which every model's p99 is within
    its QoS, simulated with the measured samples on `JUDGE_STREAMS` fresh streams of `JUDGE_QUERIES`
    queries (seeds the walk does not use), the Kairos dispatcher: a shared fleet by `max_multiple`, a
    partitioned one part by part (`max_multiple_partitioned`); the mean over the streams.
Printed: a row per workload (each plan's kind and judged multiple, the ratio refined / one-shot, the
walk's seconds) and the summary: the ratio's min / median / geometric mean, how often the walk changed
the plan and its kind, how often it is worse by more than the judge's stream spread. `--out` writes
every row and the summary as JSON.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
from results_file import RESULTS, write_results  # bench/results_file.py

from kairosd import workload
from kairosd.autoscale.refine import PLUS_TIME_LIMIT_S, RefineJob, refine
from kairosd.dispatch import make_policy
from kairosd.planner import upper_bound
from kairosd.planner.demand import ModelDemand
from kairosd.planner.joint import FleetPlan, JointModel, plan_fleet
from kairosd.planner.tails import SIM_QUANTILES, tailed_model, workload_tails
from kairosd.sim import ServiceModel, fleet_columns, max_multiple, max_multiple_partitioned, poisson_mix_stream

POLICY = "kairos"
POLICY_PARAMS: dict[str, Any] = {"tail": True}
RATE_QPS = 100.0  # the observed total rate (a max-throughput plan depends on the shares, not on it)
JUDGE_STREAMS = 3
JUDGE_QUERIES = 6000
JUDGE_SEED = 50_000  # the judge's streams: JUDGE_SEED + 97·i (the walk's are 0, 10, 20, ...)
MIX_SEED = 7


@functools.lru_cache(maxsize=2)
def _wl() -> workload.KairosWorkload:
    return workload.load_kairos()


def _demand(models: tuple[str, str], share: float) -> list[ModelDemand]:
    wl = _wl()
    pmf = workload.mix_pmf("kairos", wl.profiles.max_batch, n=200_000, seed=MIX_SEED)
    return [ModelDemand(models[0], share * RATE_QPS, pmf), ModelDemand(models[1], (1.0 - share) * RATE_QPS, pmf)]


def judge(models: tuple[str, str], share: float, plan: FleetPlan) -> np.ndarray:
    """The plan's multiple of the demand vector on each of the judge's streams."""
    wl = _wl()
    demand = _demand(models, share)
    rates = [d.rate_qps for d in demand]
    qos = [wl.qos_s[m] for m in models]
    services = [ServiceModel("samples", wl.samples.relative(m, wl.profiles.types), workload.GRID_STEP) for m in models]
    factory = lambda: make_policy(POLICY, wl.profiles, **POLICY_PARAMS)
    bms = [tailed_model(wl.profiles, d.model, wl.types, d.batch_pmf, wl.qos_s[d.model],
                        workload_tails(wl, d.model, wl.types, wl.qos_s[d.model])) for d in demand]
    out = []
    for i in range(JUDGE_STREAMS):
        seed = JUDGE_SEED + 97 * i
        batches = [workload.sample_batches("kairos", JUDGE_QUERIES, np.random.default_rng([seed, g]))
                   for g in range(len(models))]
        stream = poisson_mix_stream(batches, rates, seed)
        if plan.partitioned:
            parts = [np.array([plan.pinned(m).get(t, 0) for t in wl.types]) for m in models]
            ubs: list[float | None] = [float(upper_bound(p[None, :], bms[g])[0]) for g, p in enumerate(parts)]
            res = max_multiple_partitioned(wl.profiles, list(models), [fleet_columns(wl.profiles, wl.types, p)
                                                                      for p in parts],
                                           factory, qos_s=qos, stream=stream, services=services, ub_qps=ubs)
            out.append(res.multiple)
        else:
            counts = np.array([plan.counts[t] for t in wl.types])
            jm = JointModel.build(bms, demand)
            ub = float(jm.bound_qps(counts[None, :])[0]) / sum(rates)
            res_m = max_multiple(wl.profiles, list(models), fleet_columns(wl.profiles, wl.types, counts), factory,
                                 qos_s=qos, stream=stream, services=services, ub_multiple=ub)
            out.append(res_m.multiple)
    return np.array(out)


def _describe(plan: FleetPlan, models: tuple[str, str]) -> str:
    if plan.partitioned:
        return " | ".join(f"{m}: " + _label(plan.pinned(m)) for m in models)
    return _label(plan.counts)


def _label(counts: dict[str, int]) -> str:
    return " + ".join(f"{n}×{t.split('.')[0]}" for t, n in counts.items() if n) or "(none)"


def task(args: tuple[tuple[str, str], float, float, float]) -> dict[str, Any]:
    """One workload: the one-shot plan, the refined plan, both judged."""
    from kairosd.autoscale.refine import refined_plan

    models, share, budget, time_limit_s = args
    wl = _wl()
    demand = _demand(models, share)
    tails = {m: workload_tails(wl, m, wl.types, wl.qos_s[m]) for m in models}
    t0 = time.perf_counter()
    plan = plan_fleet(wl.profiles, wl.types, wl.prices_usd_per_hour, budget, demand, wl.qos_s, tails=tails,
                      max_counts=wl.max_counts)
    plan_s = time.perf_counter() - t0
    every = tuple(workload_tails(wl, m, wl.profiles.types, wl.qos_s[m]) for m in models)
    job = RefineJob(wl.profiles, tuple(demand), tuple(wl.qos_s[m] for m in models), every, tuple(wl.types),
                    tuple(wl.prices_usd_per_hour), tuple(wl.max_counts), budget, True, POLICY, POLICY_PARAMS,
                    time_limit_s=time_limit_s, one_shot_partitioned=plan.partitioned,
                    draws=tuple(workload_tails(wl, m, wl.profiles.types, wl.qos_s[m], SIM_QUANTILES).quantiles for m in models))
    refined = refine(job)
    prices = dict(zip(wl.types, wl.prices_usd_per_hour, strict=True))
    ref_plan = refined_plan(plan, refined, job.total_rate_qps, prices)
    one = judge(models, share, plan)
    ref = one if (ref_plan.pools == plan.pools) else judge(models, share, ref_plan)
    return {"models": list(models), "share": share, "budget_usd_per_hour": budget,
            "one_shot": {"kind": "partitioned" if plan.partitioned else "shared", "fleet": _describe(plan, models),
                         "pools": plan.pools, "estimate": plan.multiple, "judged": one.tolist(),
                         "plan_s": plan_s},
            "refined": {"kind": "partitioned" if ref_plan.partitioned else "shared", "fleet": _describe(ref_plan, models),
                        "pools": ref_plan.pools, "walk_multiple": ref_plan.multiple, "judged": ref.tolist(),
                        "walk_s": refined.seconds, "n_evals": refined.n_evals, "n_configs": refined.n_configs,
                        "reason": ref_plan.reason},
            "changed": ref_plan.pools != plan.pools,
            "ratio": float(ref.mean() / one.mean()) if one.mean() > 0 else (1.0 if ref.mean() == 0 else float("inf"))}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ratio = np.array([r["ratio"] for r in rows])
    finite = ratio[np.isfinite(ratio)]
    worse = [r for r in rows if r["ratio"] < 1.0]
    beyond = [r for r in worse if np.mean(r["refined"]["judged"]) < np.min(r["one_shot"]["judged"])]
    return {"workloads": len(rows), "ratio": {"min": float(finite.min()), "median": float(np.median(finite)),
                                              "geometric_mean": float(np.exp(np.log(np.maximum(finite, 1e-9)).mean())),
                                              "max": float(finite.max()), "infinite": int((~np.isfinite(ratio)).sum())},
            "changed": int(sum(r["changed"] for r in rows)),
            "kind_changed": int(sum(r["one_shot"]["kind"] != r["refined"]["kind"] for r in rows)),
            "better": int((ratio > 1.0).sum()), "worse": len(worse),
            "worse_beyond_one_shot_spread": len(beyond),
            "one_shot_partitioned": int(sum(r["one_shot"]["kind"] == "partitioned" for r in rows)),
            "refined_partitioned": int(sum(r["refined"]["kind"] == "partitioned" for r in rows)),
            "walk_s": {"median": float(np.median([r["refined"]["walk_s"] for r in rows])),
                       "max": float(max(r["refined"]["walk_s"] for r in rows))}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default=None, help="comma-separated a+b (default: every pair of the authors' models)")
    ap.add_argument("--shares", type=float, nargs="+", default=[0.25, 0.5, 0.75],
                    help="the first model's share of the rate (default: %(default)s)")
    ap.add_argument("--budgets", type=float, nargs="+", default=[2.5, 5.0], help="$/h (default: %(default)s)")
    ap.add_argument("--workers", type=int, default=2, help="workloads at a time (default: %(default)s)")
    ap.add_argument("--time-limit", type=float, default=PLUS_TIME_LIMIT_S,
                    help="the walk's seconds, as autoscaler.plus_time_limit_s (default: %(default)s)")
    ap.add_argument("--out", default=str(RESULTS / "autoscale_joint.json"))
    args = ap.parse_args(argv)
    models = _wl().profiles.models
    pairs = ([tuple(p.split("+")) for p in args.pairs.split(",")] if args.pairs
             else list(itertools.combinations(models, 2)))
    tasks = [((str(a), str(b)), s, b_, args.time_limit) for (a, b) in pairs for s in args.shares for b_ in args.budgets]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        rows = list(pool.map(task, tasks))
    wall = time.perf_counter() - t0
    print(f"{'pair':>11} {'share':>5} {'$/h':>4} {'one-shot':>20} {'refined':>20} {'ratio':>6} {'walk s':>6}  refined fleet")
    for r in rows:
        one, ref = r["one_shot"], r["refined"]
        print(f"{'+'.join(r['models']):>11} {r['share']:>5.2f} {r['budget_usd_per_hour']:>4g} "
              f"{one['kind'][:5]:>6} {np.mean(one['judged']):>13.1f} {ref['kind'][:5]:>6} {np.mean(ref['judged']):>13.1f} "
              f"{r['ratio']:>6.3f} {ref['walk_s']:>6.1f}  {ref['fleet']}")
    s = summarize(rows)
    x = s["ratio"]
    print(f"\n{s['workloads']} workloads ({wall:.0f} s on {args.workers} processes); judged multiple refined / one-shot: "
          f"min {x['min']:.3f}  median {x['median']:.3f}  geometric mean {x['geometric_mean']:.3f}  max {x['max']:.3f}"
          + (f"  (one-shot 0 on {x['infinite']})" if x["infinite"] else ""))
    print(f"  the walk changed the plan on {s['changed']} ({s['kind_changed']} between shared and partitioned): better on "
          f"{s['better']}, worse on {s['worse']} ({s['worse_beyond_one_shot_spread']} below the one-shot plan's lowest stream)")
    print(f"  partitioned: one-shot {s['one_shot_partitioned']}, refined {s['refined_partitioned']}; walk median "
          f"{s['walk_s']['median']:.1f} s, max {s['walk_s']['max']:.1f} s")
    write_results({"benchmark": "autoscale_joint", "settings": {
        "pairs": ["+".join(p) for p in pairs], "shares": args.shares, "budgets": args.budgets,
        "time_limit_s": args.time_limit, "rate_qps": RATE_QPS, "mix": "kairos", "caps": "instance.json max_num",
        "judge": {"streams": JUDGE_STREAMS, "queries": JUDGE_QUERIES, "seed": JUDGE_SEED, "noise": "measured samples",
                  "dispatch": f"{POLICY} {POLICY_PARAMS}"}}, "workers": args.workers, "wall_s": wall, "rows": rows,
        "summary": s}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

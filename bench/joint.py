"""Joint plan benchmark on the Kairos authors' data: the fleet planned for two models together (shared
by both, or partitioned: each instance pinned to one model) against two fleets planned one model at a
time on the best split of the budget.

For each pair of models sharing a budget at a demand ratio (default 3:1), one Poisson stream carries
both models' queries (each query for the first model with probability 3/4), batches from the Kairos
mix, service noise from the measured samples, Kairos dispatch (p99 feasibility):
  (a) joint: `plan_fleet` (max_throughput) chooses the fleet for the demand vector, shared or
      partitioned. Shared: the simulator runs both models on it, and `max_multiple` finds the largest
      total rate of the 3:1 mix at which every model's p99 is within its QoS. Partitioned: each
      model's part serves that model's queries of the stream (`max_multiple_partitioned`). λ_joint;
  (b) split: for every split of the budget in `--step` $/h, `select_kairos` plans each model's own
      fleet on its part; each fleet is simulated with its own model's queries — the same queries,
      at the same times, with the same noise (common random numbers) — and the pair serves
      λ(split) = min over the two models of (max rate of its fleet / its share of the mix);
      λ_split is the best split's (chosen by simulation);
  (c) for information: `plan_fleet(partition=False)`'s shared fleet, simulated shared (λ_shared), and
      with `--exhaustive`, every maximal configuration simulated shared.
The planner gets, in every arm, what the daemon would observe: each model's batch mix on the stream
and each type's probability of missing QoS from the samples. λ is a total rate (queries/s of the
mix). Prints a table and writes bench/results/joint.json.

    python bench/joint.py [--pairs wnd+mtwnd,ncf+dien,rm2+wnd] [--ratio 3] [--budget 2.5] [--step 0.1]
                          [--queries 2000] [--seed 0] [--workers 2]
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from results_file import RESULTS, write_results  # bench/results_file.py

from kairosd import workload
from kairosd.dispatch import make_policy
from kairosd.errors import ConfigError
from kairosd.planner import (
    BoundModel,
    JointModel,
    ModelDemand,
    batch_pmf,
    enumerate_configs,
    make_candidates,
    plan_fleet,
    select_kairos,
    upper_bound,
)
from kairosd.planner.tails import Tails, tailed_model, workload_tails
from kairosd.sim import (
    MixStream,
    ServiceModel,
    SimSetup,
    evaluate_config,
    fleet_columns,
    max_multiple,
    max_multiple_partitioned,
    poisson_mix_stream,
    simulate,
    simulate_mix,
)

POLICY = "kairos"
POLICY_PARAMS: dict[str, Any] = {"tail": True}


@dataclass(frozen=True)
class PairInputs:
    """One pair's workload: the mixed stream, each model's service noise, part stream and planner inputs."""

    models: tuple[str, str]
    rates_qps: tuple[float, float]
    stream: MixStream
    services: tuple[ServiceModel, ServiceModel]
    demand: tuple[ModelDemand, ModelDemand]
    tails: dict[str, Tails]
    bound_models: tuple[BoundModel, BoundModel]


@functools.lru_cache(maxsize=8)
def _wl() -> workload.KairosWorkload:
    return workload.load_kairos()


@functools.lru_cache(maxsize=8)
def pair_inputs(models: tuple[str, str], ratio: float, n_queries: int, seed: int) -> PairInputs:
    """Deterministic in its arguments (each worker process rebuilds the same inputs)."""
    wl = _wl()
    rates = (ratio / (1.0 + ratio), 1.0 / (1.0 + ratio))  # total 1 q/s: a multiple is a total rate
    batches = workload.kairos_batch_mix(n_queries, np.random.default_rng(seed))
    stream = poisson_mix_stream(batches, rates, seed + 1)
    services = tuple(ServiceModel("samples", wl.samples.relative(m, wl.profiles.types), workload.GRID_STEP) for m in models)
    demand: list[ModelDemand] = []
    tails: dict[str, Tails] = {}
    bms: list[BoundModel] = []
    for g, m in enumerate(models):
        pmf = batch_pmf(stream.part(g).batches, wl.profiles.max_batch)
        tails[m] = workload_tails(wl, m, wl.types, wl.qos_s[m])
        demand.append(ModelDemand(m, rates[g], pmf))
        bms.append(tailed_model(wl.profiles, m, wl.types, pmf, wl.qos_s[m], tails[m]))
    return PairInputs(models, rates, stream, (services[0], services[1]), (demand[0], demand[1]), tails, (bms[0], bms[1]))


def _label(types: tuple[str, ...], counts: tuple[int, ...]) -> str:
    return " + ".join(f"{c}×{t}" for c, t in zip(counts, types, strict=True) if c) or "(none)"


# ---------------------------------------------------------------------------------------------- tasks


def joint_task(models: tuple[str, str], ratio: float, n_queries: int, seed: int, budget: float,
               partition: bool = True) -> dict[str, Any]:
    """Arm (a): plan the fleet (shared or partitioned, as `plan_fleet` chooses; shared only without
    `partition`), find its max multiple and the per-model p99 there. A partitioned fleet: each model's
    part serves that model's part of the stream (`max_multiple_partitioned`), as a fleet of the split arm does."""
    wl = _wl()
    inp = pair_inputs(models, ratio, n_queries, seed)
    t0 = time.perf_counter()
    plan = plan_fleet(wl.profiles, wl.types, wl.prices_usd_per_hour, budget, list(inp.demand), wl.qos_s, tails=inp.tails,
                      partition=partition)
    plan_s = time.perf_counter() - t0
    counts = tuple(plan.counts[t] for t in wl.types)
    qos = [wl.qos_s[m] for m in models]
    factory = lambda: make_policy(POLICY, wl.profiles, **POLICY_PARAMS)
    out: dict[str, Any] = {
        "kind": "partitioned" if plan.partitioned else "shared", "pools": plan.pools, "counts": counts,
        "cost_usd_per_hour": plan.cost_usd_per_hour, "plan_estimate": plan.multiple, "plan_bound": plan.bound_multiple,
        "reason": plan.reason, "plan_s": plan_s,
    }
    if plan.partitioned:
        parts = [tuple(plan.pinned(m).get(t, 0) for t in wl.types) for m in models]
        ubs = [float(upper_bound(np.asarray(c)[None, :], inp.bound_models[g])[0]) for g, c in enumerate(parts)]
        cols = [fleet_columns(wl.profiles, wl.types, c) for c in parts]
        pres = max_multiple_partitioned(wl.profiles, list(models), cols, factory, qos_s=qos, stream=inp.stream,
                                        services=list(inp.services), ub_qps=ubs)
        p99, viol, meas = {}, {}, {}
        for g, m in enumerate(models):
            rate = pres.multiple * inp.rates_qps[g]
            at = (simulate(wl.profiles, m, cols[g], factory(), rate, qos_s=qos[g], stream=inp.stream.part(g),
                           service=inp.services[g]) if rate > 0 else None)
            p99[m] = at.p99_s * 1e3 if at else None
            viol[m] = at.violations if at else None
            meas[m] = at.n_measured if at else None
        out.update({
            "config": " | ".join(f"{m}: {_label(wl.types, c)}" for m, c in zip(models, parts, strict=True)),
            "parts": {m: list(c) for m, c in zip(models, parts, strict=True)},
            "multiple": pres.multiple, "per_model_multiple": dict(zip(models, pres.per_model, strict=True)),
            "exceeds_bound": pres.exceeds_bound, "sim_s": pres.wall_s,
            "probes": sum(len(r.probes) for r in pres.searches if r is not None),
            "p99_ms_at_multiple": p99, "violations_at_multiple": viol, "measured_at_multiple": meas,
        })
        return out
    cols_shared = fleet_columns(wl.profiles, wl.types, counts)
    res = max_multiple(wl.profiles, list(models), cols_shared, factory, qos_s=qos, stream=inp.stream,
                       services=list(inp.services), ub_multiple=plan.bound_multiple)
    at_mix = (simulate_mix(wl.profiles, list(models), cols_shared, factory(), res.multiple, qos_s=qos, stream=inp.stream,
                           services=list(inp.services)) if res.multiple > 0 else None)
    out.update({
        "config": _label(wl.types, counts), "multiple": res.multiple, "exceeds_bound": res.exceeds_bound,
        "sim_s": res.wall_s, "probes": len(res.probes),
        "p99_ms_at_multiple": {m: (at_mix.p99_s[g] * 1e3 if at_mix else None) for g, m in enumerate(models)},
        "violations_at_multiple": {m: (at_mix.violations[g] if at_mix else None) for g, m in enumerate(models)},
        "measured_at_multiple": {m: (at_mix.n_measured[g] if at_mix else None) for g, m in enumerate(models)},
    })
    return out


def mix_task(models: tuple[str, str], ratio: float, n_queries: int, seed: int, counts: tuple[int, ...]) -> dict[str, Any]:
    """One configuration shared by both models (the exhaustive sweep): its max multiple and joint bound."""
    wl = _wl()
    inp = pair_inputs(models, ratio, n_queries, seed)
    jm = JointModel.build(list(inp.bound_models), list(inp.demand))
    ub = float(jm.bound_qps(np.asarray(counts)[None, :])[0]) / jm.total_rate_qps
    est = float(jm.estimate_qps(np.asarray(counts)[None, :])[0]) / jm.total_rate_qps
    cols = fleet_columns(wl.profiles, wl.types, counts)
    factory = lambda: make_policy(POLICY, wl.profiles, **POLICY_PARAMS)
    res = max_multiple(wl.profiles, list(models), cols, factory, qos_s=[wl.qos_s[m] for m in models], stream=inp.stream,
                       services=list(inp.services), ub_multiple=ub)
    return {"counts": list(counts), "config": _label(wl.types, counts), "multiple": res.multiple, "bound": ub,
            "estimate": est, "exceeds_bound": res.exceeds_bound, "sim_s": res.wall_s}


def single_task(models: tuple[str, str], ratio: float, n_queries: int, seed: int, g: int,
                counts: tuple[int, ...]) -> dict[str, Any]:
    """Arm (b), one fleet: model g's max rate on its own fleet, on its part of the stream."""
    wl = _wl()
    inp = pair_inputs(models, ratio, n_queries, seed)
    model = models[g]
    setup = SimSetup(wl.profiles, model, wl.types, POLICY, POLICY_PARAMS, wl.qos_s[model], inp.stream.part(g),
                     inp.services[g])
    ub = float(upper_bound(np.asarray(counts)[None, :], inp.bound_models[g])[0])
    res = evaluate_config(setup, counts, ub)
    return {"qps": res.qps, "ub_qps": ub, "exceeds_bound": res.exceeds_bound, "sim_s": res.wall_s}


TASKS = {"joint": joint_task, "single": single_task, "mix": mix_task}


def _run(task: tuple[str, tuple[Any, ...]]) -> dict[str, Any]:
    kind, params = task
    return TASKS[kind](*params)


# ---------------------------------------------------------------------------------------------- main


def split_plans(inp: PairInputs, budget: float, step: float) -> list[dict[str, Any]]:
    """Each model's `select_kairos` fleet on its share of every budget split (None when nothing fits)."""
    wl = _wl()
    out = []
    n = int(round(budget / step))
    for i in range(1, n):
        shares = (round(i * step, 6), round(budget - i * step, 6))
        fleets: list[tuple[int, ...] | None] = []
        for g in range(2):
            try:
                cands = make_candidates(inp.bound_models[g], wl.prices_usd_per_hour, shares[g])
                fleets.append(tuple(int(x) for x in select_kairos(cands).config) if len(cands) else None)
            except ConfigError:
                fleets.append(None)
        out.append({"budgets": shares, "fleets": fleets})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", default="wnd+mtwnd,ncf+dien,rm2+wnd")
    ap.add_argument("--ratio", type=float, default=3.0, help="demand of the first model over the second's")
    ap.add_argument("--budget", type=float, default=2.5)
    ap.add_argument("--step", type=float, default=0.1, help="budget split step, $/h")
    ap.add_argument("--queries", type=int, default=2000, help="queries per run (both models together)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=max(1, len(os.sched_getaffinity(0))))
    ap.add_argument("--exhaustive", default="rm2+wnd",
                    help="pairs whose every maximal configuration is also simulated shared (the best joint fleet); '' for none")
    ap.add_argument("--out", default=str(RESULTS / "joint.json"))
    args = ap.parse_args()
    t_start = time.perf_counter()
    cpu_start = time.process_time()
    wl = _wl()
    pairs = [tuple(p.split("+")) for p in args.pairs.split(",") if p]
    for p in pairs:
        if len(p) != 2 or any(m not in wl.qos_s for m in p):
            raise SystemExit(f"--pairs: each pair is two models joined by '+', from {list(wl.qos_s)}; got {'+'.join(p)}")
    common = (args.ratio, args.queries, args.seed)
    splits: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    tasks: list[tuple[str, tuple[Any, ...]]] = []
    singles: dict[tuple[tuple[str, ...], int, tuple[int, ...]], int] = {}
    joints: dict[tuple[str, ...], int] = {}
    shared_only: dict[tuple[str, ...], int] = {}
    for p in pairs:
        models = (p[0], p[1])
        joints[p] = len(tasks)
        tasks.append(("joint", (models, *common, args.budget)))
        shared_only[p] = len(tasks)
        tasks.append(("joint", (models, *common, args.budget, False)))
        splits[p] = split_plans(pair_inputs(models, *common), args.budget, args.step)
        for s in splits[p]:
            for g, fleet in enumerate(s["fleets"]):
                if fleet is not None and (p, g, fleet) not in singles:
                    singles[(p, g, fleet)] = len(tasks)
                    tasks.append(("single", (models, *common, g, fleet)))
    exhaustive = [tuple(p.split("+")) for p in args.exhaustive.split(",") if p]
    sweeps: dict[tuple[str, ...], list[int]] = {}
    for p in exhaustive:
        sweeps[p] = []
        for c in enumerate_configs(wl.prices_usd_per_hour, args.budget):
            sweeps[p].append(len(tasks))
            tasks.append(("mix", ((p[0], p[1]), *common, tuple(int(x) for x in c))))
    print(f"{len(pairs)} pairs: {len(tasks)} fleets to simulate "
          f"({args.workers} processes)", file=sys.stderr)
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            results = list(pool.map(_run, tasks, chunksize=1))
    else:
        results = [_run(t) for t in tasks]

    rows = []
    for p in pairs:
        joint = results[joints[p]]
        shared = results[shared_only[p]]
        inp = pair_inputs((p[0], p[1]), *common)
        sweep = []
        for s in splits[p]:
            per_model = []
            for g, fleet in enumerate(s["fleets"]):
                r = results[singles[(p, g, fleet)]] if fleet is not None else {"qps": 0.0, "ub_qps": 0.0, "exceeds_bound": False}
                per_model.append({"model": p[g], "budget_usd_per_hour": s["budgets"][g],
                                  "counts": list(fleet) if fleet is not None else None,
                                  "config": _label(wl.types, fleet) if fleet is not None else "(none fits)",
                                  "qps": r["qps"], "ub_qps": r["ub_qps"], "exceeds_bound": r["exceeds_bound"],
                                  "multiple": r["qps"] / inp.rates_qps[g]})
            sweep.append({"budgets": list(s["budgets"]), "models": per_model,
                          "multiple": min(m["multiple"] for m in per_model)})
        best = max(range(len(sweep)), key=lambda i: (sweep[i]["multiple"], -i))
        lam_split = sweep[best]["multiple"]
        ex = None
        if p in sweeps:
            sims = [results[i] for i in sweeps[p]]
            top = max(sims, key=lambda r: r["multiple"])
            rank = 1 + sum(r["multiple"] > joint["multiple"] for r in sims)
            ex = {"best": top, "plan_rank": rank, "configs": sims}
        rows.append({
            "pair": "+".join(p), "exhaustive": ex, "rates_qps": list(inp.rates_qps), "qos_ms": {m: wl.qos_s[m] * 1e3 for m in p},
            "joint": {k: (list(v) if isinstance(v, tuple) else v) for k, v in joint.items()},
            "shared_plan": {k: (list(v) if isinstance(v, tuple) else v) for k, v in shared.items()},
            "split_best": sweep[best], "split_sweep": sweep,
            "lambda_joint": joint["multiple"], "lambda_split": lam_split,
            "ratio": joint["multiple"] / lam_split if lam_split > 0 else float("inf"),
        })

    print(f"\nJoint plan vs two fleets planned apart, Kairos data: types {', '.join(wl.types)}; budget {args.budget} $/h; "
          f"demand {args.ratio:g}:1; one Poisson stream of {args.queries} queries (both models; the split arm serves each "
          f"model's part of it); Kairos dispatch (p99 feasibility), measured-sample noise; λ = total q/s of the mix at "
          f"which every model's p99 <= its QoS")
    hdr = (f"{'pair':10} {'kind':11} {'joint fleet':56} {'$/h':>5} {'λ_joint':>8} {'p99/QoS':>9} {'best split $/h':>14} "
           f"{'split fleets':58} {'λ_split':>8} {'ratio':>6} {'λ_shared':>8}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        j, s = r["joint"], r["split_best"]
        p99 = "/".join(f"{(j['p99_ms_at_multiple'][m] or float('nan')) / r['qos_ms'][m]:.2f}" for m in r["pair"].split("+"))
        fleets = " | ".join(m["config"] for m in s["models"])
        print(f"{r['pair']:10} {j['kind']:11} {j['config']:56} {j['cost_usd_per_hour']:5.2f} {r['lambda_joint']:8.1f} "
              f"{p99:>9} {s['budgets'][0]:>6.1f} + {s['budgets'][1]:<5.1f} {fleets:58} {r['lambda_split']:8.1f} "
              f"{r['ratio']:6.3f} {r['shared_plan']['multiple']:8.1f}")
    print("kind: plan_fleet's choice (partitioned: each instance pinned to one model; its fleet shown per model); "
          "p99/QoS: each model's p99 over its QoS at λ_joint (≤ 1: within QoS); split fleets: first model | second "
          "model; λ_shared: plan_fleet's shared fleet (partition=False), simulated shared")
    for r in rows:
        print(f"{r['pair']}: estimate λ {r['joint']['plan_estimate']:.1f} (simulated {r['lambda_joint']:.1f}); "
              f"shared-only plan {r['shared_plan']['config']} estimate {r['shared_plan']['plan_estimate']:.1f} "
              f"(simulated {r['shared_plan']['multiple']:.1f}); {r['joint']['reason']}")
    for r in rows:
        if r["exhaustive"]:
            ex = r["exhaustive"]
            print(f"{r['pair']}: every one of the {len(ex['configs'])} maximal configurations shared by both models: best "
                  f"{ex['best']['config']} λ {ex['best']['multiple']:.1f} (bound {ex['best']['bound']:.1f}); λ_joint "
                  f"ranks {ex['plan_rank']} among them; shared / best split {ex['best']['multiple'] / r['lambda_split']:.3f}")
    above = [(r["pair"], "joint") for r in rows if r["joint"]["exceeds_bound"]]
    above += [(r["pair"], "shared plan") for r in rows if r["shared_plan"]["exceeds_bound"]]
    above += [(r["pair"], "shared " + c["config"]) for r in rows if r["exhaustive"] for c in r["exhaustive"]["configs"]
              if c["exceeds_bound"]]
    above += [(r["pair"], m["model"]) for r in rows for s in r["split_sweep"] for m in s["models"] if m["exceeds_bound"]]
    print(f"simulated rates above their planner bound: {len(above)}" + (f" {above}" if above else ""))
    wall = time.perf_counter() - t_start
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time() - cpu_start + children.ru_utime + children.ru_stime
    print(f"total wall {wall:.0f} s ({args.workers} processes), {cpu:.0f} s CPU")
    out = {
        "benchmark": "joint",
        "host": {"python": platform.python_version(), "cpus": len(os.sched_getaffinity(0)), "workers": args.workers},
        "settings": {"pairs": ["+".join(p) for p in pairs], "ratio": args.ratio, "budget_usd_per_hour": args.budget,
                     "split_step_usd_per_hour": args.step, "queries_per_run": args.queries, "seed": args.seed,
                     "mix": "kairos", "noise": "measured samples", "dispatch": "kairos (tail=True)",
                     "criterion": "every model's p99 <= its QoS",
                     "joint_selector": "plan_fleet max_throughput (shared or partitioned)",
                     "split_selector": "select_kairos per model", "exhaustive": ["+".join(p) for p in exhaustive]},
        "rows": rows,
        "summary": {"ratio_min": min(r["ratio"] for r in rows), "ratios": {r["pair"]: r["ratio"] for r in rows},
                    "kinds": {r["pair"]: r["joint"]["kind"] for r in rows},
                    "sim_above_bound": len(above)},
        "wall_s": wall,
        "cpu_s": cpu,
    }
    write_results(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

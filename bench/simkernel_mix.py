"""The simulator's compiled loop for several models (`kairosd/simkernel.py`'s `run_mix`) against its
Python loop (`sim._run_mix` with `KairosPolicy`): the autoscaler's Kairos+ walk over shared fleets
values a fleet by `max_multiple` on each of its streams (`kairosd.autoscale.refine.MixEvaluator`); this
runs those searches both ways in one run, on the fleets the walk visits first.

The job is the one tests/unit/test_refine.py's `test_several_models_walk_the_shared_fleets_from_the_joint_plans_choice`
builds: configs/emulated.toml (the authors' four types, emulated) planned for max throughput with
Kairos+, dlrm at 40 q/s and ncf (5 ms QoS) at 4 q/s with the authors' batch mix, at each of
`--budgets` $/h; the fleets are the first `--fleets` of the shared candidates in the `kairos`
selector's order, each searched on the job's streams (`--streams` of `--queries` queries, the walk's
service noise and bound) as the walk searches them. Every search must give the same multiple and the
same probes (multiple, verdict) both ways. Each fleet is timed `--repeats` times each way, the two ways
in turn; the table gives the medians and their ratio. The compiled loop is compiled (or loaded from its
cache) before the timing starts.

    python bench/simkernel_mix.py [--budgets 1.0,2.5] [--fleets 3] [--streams 3] [--queries 6000] [--repeats 3]

Prints the table and the median ratio over the fleets, writes bench/results/simkernel_mix.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from results_file import RESULTS, write_results  # bench/results_file.py

from kairosd import config, sim, simkernel, workload
from kairosd.autoscale.refine import MixEvaluator, RefineJob, _several_models
from kairosd.autoscale.target import refine_jobs
from kairosd.daemon import load_profiles
from kairosd.dispatch import make_policy
from kairosd.planner.demand import ModelDemand
from kairosd.planner.selectors import kairos_order

REPO = Path(__file__).resolve().parents[1]
DEMAND_QPS = (("dlrm", 40.0), ("ncf", 4.0))

Search = tuple[float, tuple[tuple[float, bool], ...]]


def job_for(budget_usd_per_hour: float, streams: int, queries: int) -> tuple[RefineJob, list[str]]:
    """The Kairos+ job for `DEMAND_QPS` on configs/emulated.toml at `budget_usd_per_hour`, and its types."""
    cfg = config.load(REPO / "configs" / "emulated.toml")
    a = dataclasses.replace(cfg.autoscaler, budget_usd_per_hour=budget_usd_per_hour, objective="max_throughput",
                            selector="kairos_plus")
    cfg = dataclasses.replace(cfg, autoscaler=a)
    profiles = load_profiles(cfg)
    pmf = workload.mix_pmf("kairos", profiles.max_batch, n=200_000)
    demand = [ModelDemand(m, rate, pmf) for m, rate in DEMAND_QPS]
    types = [t for t in cfg.types if t in profiles.types]
    job = dataclasses.replace(refine_jobs(cfg, profiles, types)(demand, frozenset()), queries=queries, streams=streams)
    return job, types


def searches(job: RefineJob, evaluator: MixEvaluator, fleet: tuple[int, ...], compiled: bool) -> tuple[float, list[Search]]:
    """The fleet's `max_multiple` search on every stream of `evaluator`, as `MixEvaluator.values` runs it,
    one way: (wall seconds, (multiple, probes) per stream)."""
    simkernel.ENABLED = compiled
    try:
        cols = sim.fleet_columns(job.profiles, job.types, fleet, job.slots)
        factory = lambda: make_policy(job.policy, job.profiles, **dict(job.policy_params))
        out: list[Search] = []
        t0 = time.perf_counter()
        for stream, svc in zip(evaluator.streams, evaluator.svc, strict=True):
            res = sim.max_multiple(job.profiles, evaluator.models, cols, factory, qos_s=evaluator.qos_s, stream=stream,
                                   svc=svc, ub_multiple=evaluator.bound(np.asarray(fleet)) / float(stream.total_rate_qps))
            out.append((res.multiple, res.probes))
        return time.perf_counter() - t0, out
    finally:
        simkernel.ENABLED = True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", default="1.0,2.5")
    ap.add_argument("--fleets", type=int, default=3)
    ap.add_argument("--streams", type=int, default=3)
    ap.add_argument("--queries", type=int, default=6000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "simkernel_mix.json"))
    args = ap.parse_args()
    if not simkernel.ENABLED:
        print("the compiled loop is switched off (KAIROSD_SIM_KERNEL=0) or numba is missing", file=sys.stderr)
        return 2
    rows: list[dict[str, Any]] = []
    warm = True
    print(f"{'$/h':>4} {'fleet':22} {'cols':>4} {'probes':>6} {'python s':>9} {'compiled s':>10} {'ratio':>6}  same")
    for budget in (float(b) for b in args.budgets.split(",")):
        job, types = job_for(budget, args.streams, args.queries)
        if job.policy != "kairos":
            print(f"the config's dispatcher is {job.policy!r}, not kairos: nothing to compare", file=sys.stderr)
            return 2
        cands, evaluator = _several_models(job, [0, 1])
        assert isinstance(evaluator, MixEvaluator)
        fleets = [tuple(int(x) for x in cands.configs[i]) for i in kairos_order(cands)[:args.fleets]]
        if warm:  # compile (or load) the loop outside the timing
            searches(job, evaluator, fleets[0], compiled=True)
            warm = False
        for fleet in fleets:
            t_py: list[float] = []
            t_c: list[float] = []
            same = True
            for _ in range(args.repeats):
                tp, res_py = searches(job, evaluator, fleet, compiled=False)
                tc, res_c = searches(job, evaluator, fleet, compiled=True)
                t_py.append(tp)
                t_c.append(tc)
                same &= res_py == res_c
            py, c = statistics.median(t_py), statistics.median(t_c)
            n_cols = len(sim.fleet_columns(job.profiles, job.types, fleet, job.slots))
            probes = sum(len(p) for _, p in res_c)
            name = " ".join(f"{n}×{t.split('.')[0]}" for t, n in zip(types, fleet, strict=True) if n)
            rows.append({"budget_usd_per_hour": budget, "fleet": dict(zip(types, fleet, strict=True)), "columns": n_cols,
                         "streams": args.streams, "queries": args.queries, "probes": probes,
                         "multiples": [m for m, _ in res_c], "python_s": t_py, "compiled_s": t_c,
                         "python_median_s": py, "compiled_median_s": c, "ratio": py / c, "identical": same})
            print(f"{budget:4.1f} {name:22} {n_cols:4d} {probes:6d} {py:9.2f} {c:10.3f} {py / c:6.1f}  "
                  f"{'yes' if same else 'NO'}", flush=True)
    ratio = statistics.median(r["ratio"] for r in rows)
    identical = all(r["identical"] for r in rows)
    print(f"\ncompiled mix loop: median {ratio:.1f}x faster than the Python loop over {len(rows)} fleets "
          f"(medians of {args.repeats} runs each way); identical results: {'all' if identical else 'NOT all'}")
    write_results({"settings": vars(args), "machine": platform.platform(), "demand_qps": dict(DEMAND_QPS),
                   "rows": rows, "summary": {"median_ratio": ratio, "identical": identical}}, Path(args.out))
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())

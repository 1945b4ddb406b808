"""The `kairos` choice at budgets that buy large fleets: every maximal configuration estimated (the
baseline) against the estimate only where it can decide (`make_candidates(prune_within=CLOSE_SCORE)`,
`kairosd.planner.pruning`), in one run. Both must choose the same fleet and name the same close
contenders; the table gives the configurations, the rows estimated, each way's wall time and the ratio.

Workloads: the Kairos authors' profiles and AWS prices (the four types of `kairosd plan`), the models'
QoS targets and the authors' batch mix, at hourly budgets from a few dollars (hundreds of maximal
configurations) to tens (hundreds of thousands). The time is `make_candidates` alone (enumeration,
bounds, estimates), as `kairosd plan --selector kairos` spends it before choosing, with each type's tail
from the authors' samples as `kairosd plan` gives it.

A second table does the same for the autoscaler's plan (`plan_fleet`, `prune` on and off) for two models
at once (rm2 at 100 q/s and ncf at 2,000 q/s, the authors' mix), both objectives: the shared fleet and
the partitioned one (each instance pinned to a model) are both planned, the latter over every
configuration within the budget, maximal or not, with each type's tail from the profile's mean and p99
(`profile_tails`) as the autoscaler gives it. Both ways must give the same plan.

    python bench/plan_scale.py [--models ncf,rm2] [--budgets 2.5,5,10,20,40] [--joint-budgets 2.5,5,10] [--repeats 3]

Prints the tables and the median ratio (full time / pruned time) over each table's rows, writes
bench/results/plan_scale.json.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from results_file import RESULTS, write_results  # bench/results_file.py

from kairosd import workload
from kairosd.planner import CLOSE_SCORE, BoundModel, Candidates, close_contenders, make_candidates, select_kairos
from kairosd.planner.demand import ModelDemand
from kairosd.planner.joint import FleetPlan, plan_fleet
from kairosd.planner.tails import profile_tails, tailed_model, workload_tails


def timed(bm: BoundModel, prices: np.ndarray, budget: float, prune: float | None, repeats: int) -> tuple[float, Candidates]:
    """The median wall time of `repeats` calls of make_candidates, and the last call's candidates."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        cands = make_candidates(bm, prices, budget, prune_within=prune)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), cands


def choice(cands: Candidates) -> tuple[list[int], list[int]]:
    """The `kairos` choice and its close contenders (rows, sorted)."""
    config = select_kairos(cands).config
    row = cands.row_of(config)
    assert row is not None
    return config.tolist(), sorted(close_contenders(cands, row).tolist())


def joint_rows(wl: workload.KairosWorkload, pmf: np.ndarray, budgets: list[float]) -> list[dict[str, Any]]:
    """The plan_fleet table: per budget and objective, each way's wall time, and whether the plans agree."""
    demand = [ModelDemand("rm2", 100.0, pmf), ModelDemand("ncf", 2000.0, pmf)]
    tails = {d.model: profile_tails(wl.profiles, d.model, wl.types, wl.qos_s[d.model]) for d in demand}
    rows: list[dict[str, Any]] = []
    print(f"\n{'objective':14} {'$/h':>5} {'full s':>8} {'pruned s':>8} {'ratio':>6}  same  plan")
    for budget in budgets:
        for objective in ("max_throughput", "min_cost"):
            plans: list[FleetPlan] = []
            times = []
            for prune in (True, False):
                t0 = time.perf_counter()
                plans.append(plan_fleet(wl.profiles, wl.types, wl.prices_usd_per_hour, budget, demand, wl.qos_s,
                                        objective=objective, prune=prune, tails=tails))
                times.append(time.perf_counter() - t0)
            same = plans[0] == plans[1]
            rows.append({"objective": objective, "budget_usd_per_hour": budget, "full_s": times[1], "pruned_s": times[0],
                         "ratio": times[1] / times[0], "same_plan": same, "pools": plans[0].pools})
            print(f"{objective:14} {budget:5g} {times[1]:8.2f} {times[0]:8.2f} {times[1] / times[0]:6.1f}  "
                  f"{'yes' if same else 'NO':4}  {plans[0].pools}", flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="ncf,rm2")
    ap.add_argument("--budgets", default="2.5,5,10,20,40")
    ap.add_argument("--joint-budgets", default="2.5,5,10")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per way (the full one once above 10,000 configurations)")
    ap.add_argument("--out", default=str(RESULTS / "plan_scale.json"))
    args = ap.parse_args()
    wl = workload.load_kairos()
    pmf = workload.mix_pmf("kairos", wl.profiles.max_batch, n=200_000)
    prices = np.asarray(wl.prices_usd_per_hour, dtype=float)
    rows: list[dict[str, Any]] = []
    print(f"{'model':6} {'$/h':>5} {'configs':>8} {'estimated':>9} {'full s':>8} {'pruned s':>8} {'ratio':>6}  same")
    for model in args.models.split(","):
        tails = workload_tails(wl, model, wl.types, wl.qos_s[model])
        bm = tailed_model(wl.profiles, model, wl.types, pmf, wl.qos_s[model], tails)
        for budget in (float(b) for b in args.budgets.split(",")):
            t_p, pruned = timed(bm, prices, budget, CLOSE_SCORE, args.repeats)
            t_f, full = timed(bm, prices, budget, None, args.repeats if len(pruned) <= 10_000 else 1)
            assert pruned.est_qps is not None
            estimated = int(np.count_nonzero(np.isfinite(pruned.est_qps) & (pruned.ub_qps > 0)))
            same = choice(full) == choice(pruned)
            rows.append({"model": model, "budget_usd_per_hour": budget, "configs": len(full), "estimated": estimated,
                         "full_s": t_f, "pruned_s": t_p, "ratio": t_f / t_p, "same_choice": same,
                         "choice": choice(pruned)[0]})
            print(f"{model:6} {budget:5g} {len(full):8d} {estimated:9d} {t_f:8.2f} {t_p:8.2f} {t_f / t_p:6.1f}  "
                  f"{'yes' if same else 'NO'}", flush=True)
    joint = joint_rows(wl, pmf, [float(b) for b in args.joint_budgets.split(",")])
    ratio = statistics.median(r["ratio"] for r in rows)
    joint_ratio = statistics.median(r["ratio"] for r in joint)
    same_all = all(r["same_choice"] for r in rows) and all(r["same_plan"] for r in joint)
    print(f"\npruned estimate: median {ratio:.1f}x faster than every configuration estimated over {len(rows)} kairos "
          f"rows, {joint_ratio:.1f}x over {len(joint)} plan_fleet rows; same choices, contenders and plans: "
          f"{'all' if same_all else 'NOT all'}")
    write_results({"settings": vars(args), "machine": platform.platform(), "rows": rows, "joint_rows": joint,
                   "summary": {"median_ratio": ratio, "joint_median_ratio": joint_ratio, "same": same_all}},
                  Path(args.out))
    return 0 if same_all else 1


if __name__ == "__main__":
    raise SystemExit(main())

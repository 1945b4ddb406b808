"""The simulator's compiled loop (`kairosd/simkernel.py`) against its Python loop (`sim._run` with
`KairosPolicy`): the same max-QPS searches run both ways in one run. Every search must give the same
answer and the same probes (rate, verdict) both ways; the table gives each way's wall time and the
ratio, per workload and rule (kairosd's matching, and the paper's rule alone).

Fleets: the first `--fleets` of each synthetic workload's candidates in the `kairos` selector's order
(the fleets Kairos+ searches first), each searched on `--streams` streams of `--queries` queries from
the upper bound, as Kairos+ does (bench/planner_robust.py's setups: measured-sample noise, the
workload's mix). The compiled loop is compiled (or loaded from its cache) before the timing starts.

    python bench/sim_speed.py [--seeds 8012,5021,6004] [--fleets 3] [--streams 2] [--queries 6000]

Prints the table and the overall ratio (Python time / compiled time, medians over the rows), writes
bench/results/sim_speed.json.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import planner_robust as pr  # bench/planner_robust.py
from results_file import RESULTS, write_results  # bench/results_file.py

from kairosd import sim, simkernel
from kairosd.planner.selectors import kairos_order


def searches(setups: tuple[sim.SimSetup, ...], fleets: list[tuple[int, ...]], ub: Any,
             compiled: bool) -> tuple[float, list[tuple[float, tuple[tuple[float, bool], ...]]], int]:
    """Every fleet's max-QPS search on every stream, one way: (wall seconds, (qps, probes) per search,
    runs)."""
    simkernel.ENABLED = compiled
    try:
        t0 = time.perf_counter()
        out = []
        for setup in setups:
            svc = sim._svc_for(setup)
            for fleet in fleets:
                res = sim.evaluate_config(setup, fleet, ub(np.array(fleet)), svc=svc)
                out.append((res.qps, res.probes))
        return time.perf_counter() - t0, out, sum(len(p) for _, p in out)
    finally:
        simkernel.ENABLED = True


def warm_up() -> None:
    """Compile (or load) the loop outside the timing."""
    sw, _, cands = pr.candidates_of(8012, 30)
    setup = pr.setups(sw, [1], 300)[0]
    sim.evaluate_config(setup, tuple(int(x) for x in cands.configs[0]), None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="8012,5021,6004")
    ap.add_argument("--fleets", type=int, default=3)
    ap.add_argument("--streams", type=int, default=2)
    ap.add_argument("--queries", type=int, default=6000)
    ap.add_argument("--max-configs", type=int, default=80)
    ap.add_argument("--out", default=str(RESULTS / "sim_speed.json"))
    args = ap.parse_args()
    if not simkernel.ENABLED:
        print("the compiled loop is switched off (KAIROSD_SIM_KERNEL=0) or numba is missing", file=sys.stderr)
        return 2
    warm_up()
    rows: list[dict[str, Any]] = []
    print(f"{'seed':>5} {'model':6} {'rule':6} {'fleets':>6} {'runs':>5} {'python s':>9} {'compiled s':>10} {'ratio':>6}  same")
    for seed in (int(s) for s in args.seeds.split(",")):
        for rule in ("kairos", "paper"):
            pr.DISPATCH = rule
            sw, bm, cands = pr.candidates_of(seed, args.max_configs)
            fleets = [tuple(int(x) for x in cands.configs[i]) for i in kairos_order(cands)[:args.fleets]]
            setups = pr.setups(sw, pr.stream_seeds(pr.PLUS_SEED, args.streams), args.queries)
            ub = pr.bound_of(bm)
            t_py, res_py, runs = searches(setups, fleets, ub, compiled=False)
            t_c, res_c, _ = searches(setups, fleets, ub, compiled=True)
            same = res_py == res_c
            rows.append({"seed": seed, "model": sw.model, "rule": rule, "fleets": [list(f) for f in fleets],
                         "streams": args.streams, "runs": runs, "python_s": t_py, "compiled_s": t_c,
                         "ratio": t_py / t_c, "identical": same})
            print(f"{seed:5d} {sw.model:6} {rule:6} {len(fleets):6d} {runs:5d} {t_py:9.2f} {t_c:10.3f} {t_py / t_c:6.1f}  "
                  f"{'yes' if same else 'NO'}", flush=True)
    ratio = statistics.median(r["ratio"] for r in rows)
    identical = all(r["identical"] for r in rows)
    print(f"\ncompiled loop: median {ratio:.1f}x faster than the Python loop over {len(rows)} rows; "
          f"identical results: {'all' if identical else 'NOT all'}")
    write_results({"settings": vars(args), "machine": platform.platform(), "rows": rows,
                   "summary": {"median_ratio": ratio, "identical": identical}}, Path(args.out))
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())

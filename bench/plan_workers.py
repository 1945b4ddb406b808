"""A plan's ranking over many instance types, serial against the bound's dual vectors on worker processes
(`make_candidates(workers=…)`, `kairosd.planner.parallel`), in one run. Both must give the same bounds,
estimates and choice; the table gives the configurations, the subsets of types present, each way's
median wall time and the ratio.

Workload: a user's own catalogue of many types, in the authors' layout, read by `kairosd plan --data`:
the types of the synthetic workloads (`kairosd.synth`) of one model, seeds from --first-seed up, until
there are --types of them, in one directory, with the first workload's QoS target and mix. The budgets
are multiples of the dearest type's price. The time is `make_candidates` as `kairosd plan --selector
kairos` calls it (the estimate where it can decide), each call on a fresh bound model (no dual vector
cached).

    python bench/plan_workers.py [--types 10] [--model rm2] [--budgets 3,4] [--workers 2] [--repeats 3]

Prints the table and the median ratio (serial time / parallel time), writes bench/results/plan_workers.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from results_file import RESULTS, write_results  # bench/results_file.py

from kairosd import synth
from kairosd.commands import plan as plan_cmd
from kairosd.planner import CLOSE_SCORE, Candidates, make_candidates, select_kairos
from kairosd.planner.bounds import config_masks
from kairosd.workload import INSTANCE_FILE, SAMPLES_FILE, SUMMARY_FILE

FILES = (SAMPLES_FILE, SUMMARY_FILE)


def many_types(model: str, n_types: int, first_seed: int, directory: Path) -> Path:
    """The types of the synthetic workloads of `model` from `first_seed` up, `n_types` of them, written in
    the authors' layout under `directory` (the first workload's synth.json: its QoS target and mix)."""
    types: list[str] = []
    prices: list[float] = []
    rows: dict[str, list[list[str]]] = {f: [] for f in FILES}
    header: dict[str, list[str]] = {}
    seed = first_seed
    while len(types) < n_types:
        sw = synth.synth_workload(seed)
        seed += 1
        if sw.model != model:
            continue
        part = synth.write_workload(sw, directory / f"s{sw.seed}")
        if not types:
            (directory / synth.META_FILE).write_text((part / synth.META_FILE).read_text())
        inst = json.loads((part / INSTANCE_FILE).read_text())
        take = inst["ins_types"][: n_types - len(types)]
        types += take
        prices += inst["price"][: len(take)]
        for f in FILES:
            with (part / f).open() as fh:
                reader = csv.reader(fh)
                header[f] = next(reader)
                rows[f] += [r for r in reader if r[1] in take]
    for f in FILES:
        with (directory / f).open("w", newline="") as fh:
            csv.writer(fh).writerows([header[f], *rows[f]])
    (directory / INSTANCE_FILE).write_text(json.dumps({"ins_types": types, "price": prices}))
    return directory


def timed(args: argparse.Namespace, budget: float, workers: int, repeats: int) -> tuple[float, Candidates]:
    """The median wall time of `repeats` rankings, each on a fresh bound model, and the last candidates."""
    times, cands = [], None
    for _ in range(repeats):
        inp = plan_cmd.resolve(args)  # a fresh bound model: no dual vector cached
        t0 = time.perf_counter()
        cands = make_candidates(inp.model, inp.prices, budget, max_counts=inp.caps, prune_within=CLOSE_SCORE,
                                workers=workers)
        times.append(time.perf_counter() - t0)
    assert cands is not None
    return statistics.median(times), cands


def same(a: Candidates, b: Candidates) -> bool:
    est_a, est_b = a.est_qps, b.est_qps
    assert est_a is not None and est_b is not None
    return (np.array_equal(a.configs, b.configs) and np.array_equal(a.ub_qps, b.ub_qps)
            and np.array_equal(est_a, est_b, equal_nan=True)
            and np.array_equal(select_kairos(a).config, select_kairos(b).config))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", type=int, default=10)
    ap.add_argument("--model", default="rm2")
    ap.add_argument("--first-seed", type=int, default=9001)
    ap.add_argument("--budgets", default="3,4", help="multiples of the dearest type's price")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "plan_workers.json"))
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = many_types(args.model, args.types, args.first_seed, Path(tmp))
        prices = json.loads((data / INSTANCE_FILE).read_text())["price"]
        print(f"{args.types} types of {args.model} (synthetic seeds from {args.first_seed}), prices {min(prices):.3f}–"
              f"{max(prices):.3f} $/h; {args.workers} workers; median of {args.repeats}")
        print(f"{'budget $/h':>10} {'configs':>8} {'subsets':>8} {'serial s':>9} {'workers s':>10} {'ratio':>6} same")
        for multiple in (float(x) for x in args.budgets.split(",")):
            budget = round(multiple * max(prices), 4)
            plan_args = argparse.ArgumentParser()
            plan_cmd.add_arguments(plan_args)
            ns = plan_args.parse_args(["--data", str(data), "--model", args.model, "--budget", str(budget)])
            serial_s, serial = timed(ns, budget, 1, args.repeats)
            parallel_s, parallel = timed(ns, budget, args.workers, args.repeats)
            row = {"budget_usd_per_hour": budget, "configs": len(serial),
                   "subsets": len(np.unique(config_masks(serial.configs, len(serial.types)))),
                   "serial_s": serial_s, "parallel_s": parallel_s, "ratio": serial_s / parallel_s,
                   "same": same(serial, parallel)}
            rows.append(row)
            print(f"{budget:>10.3f} {row['configs']:>8} {row['subsets']:>8} {serial_s:>9.1f} {parallel_s:>10.1f} "
                  f"{row['ratio']:>6.2f} {'yes' if row['same'] else 'NO'}", flush=True)
    ratio = statistics.median(r["ratio"] for r in rows)
    same_all = all(r["same"] for r in rows)
    print(f"median ratio (serial / {args.workers} workers): {ratio:.2f}; same results: {'yes' if same_all else 'NO'}")
    write_results({"settings": vars(args), "machine": platform.platform(), "rows": rows,
                   "summary": {"median_ratio": ratio, "same": same_all}}, Path(args.out))
    return 0 if same_all else 1


if __name__ == "__main__":
    raise SystemExit(main())

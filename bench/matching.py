"""Matching-speed benchmark: one scheduling tick of the Kairos dispatcher at growing fleet sizes.

A tick is one call of the dispatch policy on a snapshot (m waiting queries × n instances, half of
them busy), cost matrix included. Three ways to do it, timed in the same run:

- `kairos`: the daemon's default (the oldest min(m, n) queries over n instances × 2 slots: lookahead)
- `window`: the paper's rules over the oldest min(m, 2n) queries × n instances (lookahead off)
- `unbounded` (the baseline): every waiting query × n instances, the matching as the paper states it

Snapshots use the Kairos authors' WND profiles and batch mix (realistic costs: many ties, which is
what makes `linear_sum_assignment` slow), instance types drawn at random from the 4 AWS types.
Prints a table (best of 7 repeats, µs per tick and per executed match) and the unbounded/kairos
ratio. Then the ticks as they come in operation: the simulator runs a 58-instance WND fleet
(2 g4dn.xlarge + 56 r5n.large) at 50%, 90% and 100% of its max QPS and times every dispatch call
(the queue a tick sees is short below saturation): tick p50/p99/max and the dispatch time per query,
for `kairos` and for `window` (the paper's rules) in the same run. Writes bench/results/matching.json.

    python bench/matching.py [--sim-queries 20000]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import timeit
from collections.abc import Callable
from typing import Any

import numpy as np
from results_file import RESULTS, write_results  # bench/results_file.py
from scipy.optimize import linear_sum_assignment

from kairosd import workload
from kairosd.dispatch import Assignment, KairosPolicy, Snapshot
from kairosd.sim import evaluate_config, fleet_columns, simulate

SIZES = ((1, 14), (28, 14), (64, 32), (128, 64), (512, 64), (1024, 256), (4096, 256))


def snapshot(wl: workload.KairosWorkload, m: int, n: int, rng: np.random.Generator) -> Snapshot:
    p = wl.profiles
    busy = rng.random(n) < 0.5
    return Snapshot(
        q_model=np.full(m, p.model_index("wnd"), dtype=np.intp),
        q_batch=workload.kairos_batch_mix(m, rng),
        q_waited_s=np.sort(rng.random(m) * 0.01)[::-1],
        q_qos_s=np.full(m, wl.qos_s["wnd"]),
        i_type=rng.integers(0, len(p.types), n),
        i_busy_s=np.where(busy, rng.random(n) * 0.01, 0.0),
        i_free=~busy,
    )


def unbounded(policy: KairosPolicy) -> Callable[[Snapshot], Assignment]:
    """The baseline: all m waiting queries × n instances in one matching, matches to free instances kept."""
    def tick(snap: Snapshot) -> Assignment:
        r, c = linear_sum_assignment(policy.cost_matrix(snap, snap.m))
        keep = snap.i_free[c]
        return Assignment(r[keep], c[keep])
    return tick


def best_us(fn: Callable[[], Any], budget_s: float = 0.3) -> float:
    """Best of 7 repeats, each repeat as many calls as fit in ~budget_s / 7."""
    t0 = timeit.timeit(fn, number=1)
    number = max(1, int(budget_s / 7 / max(t0, 1e-6)))
    return min(timeit.repeat(fn, number=number, repeat=7)) / number * 1e6


class TimedPolicy:
    """A policy that records how long each call took and how many queries it saw."""

    def __init__(self, policy: Callable[[Snapshot], Assignment]) -> None:
        self.policy = policy
        self.seconds: list[float] = []
        self.waiting: list[int] = []

    def __call__(self, snap: Snapshot) -> Assignment:
        t0 = time.perf_counter()
        out = self.policy(snap)
        self.seconds.append(time.perf_counter() - t0)
        self.waiting.append(snap.m)
        return out


def ticks_in_operation(wl: workload.KairosWorkload, n_queries: int) -> list[dict[str, Any]]:
    """Every dispatch call of simulated runs of a 58-instance WND fleet at 50/90/100% of its max QPS."""
    model, config = "wnd", (2, 0, 56, 0)
    setup = workload.sim_setup(wl, model, n_queries=n_queries, seed=0)
    max_q = evaluate_config(setup, config, None).qps
    cols = fleet_columns(setup.profiles, setup.types, config, setup.slots)
    out = []
    print(f"\nTicks in operation: {model} on {sum(config)} instances ({config}), max {max_q:.0f} q/s at p99 <= QoS, "
          f"{n_queries} queries per run")
    hdr = (f"{'load':>5} {'policy':>7} {'rounds':>7} {'waiting p50/p99/max':>20} {'tick us p50':>12} {'p99':>6} "
           f"{'max':>7} {'us/query':>9}")
    print(hdr)
    print("-" * len(hdr))
    for frac in (0.5, 0.9, 1.0):
        for name, params in (("kairos", {}), ("window", {"lookahead": 0, "hold": False, "tiers": False})):
            pol = TimedPolicy(KairosPolicy(setup.profiles, **params))
            simulate(setup.profiles, model, cols, pol, max_q * frac, qos_s=setup.qos_s, stream=setup.stream,
                     service=setup.service,
                     abort=False)
            t = np.array(pol.seconds) * 1e6
            w = np.array(pol.waiting)
            row = {"load": frac, "policy": name, "rounds": len(t), "waiting_p50": float(np.median(w)),
                   "waiting_p99": float(np.quantile(w, 0.99)), "waiting_max": int(w.max()),
                   "tick_us_p50": float(np.median(t)), "tick_us_p99": float(np.quantile(t, 0.99)),
                   "tick_us_max": float(t.max()), "us_per_query": float(t.sum() / n_queries)}
            out.append(row)
            print(f"{frac:5.0%} {name:>7} {len(t):7d} {f'{np.median(w):.0f}/{np.quantile(w, 0.99):.0f}/{w.max()}':>20} "
                  f"{row['tick_us_p50']:12.0f} {row['tick_us_p99']:6.0f} {row['tick_us_max']:7.0f} {row['us_per_query']:9.1f}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(RESULTS / "matching.json"))
    ap.add_argument("--sim-queries", type=int, default=20000)
    args = ap.parse_args()
    wl = workload.load_kairos()
    rng = np.random.default_rng(0)
    ways: dict[str, Callable[[Snapshot], Assignment]] = {
        "kairos": KairosPolicy(wl.profiles),
        "window": KairosPolicy(wl.profiles, lookahead=0, hold=False, tiers=False),
        "unbounded": unbounded(KairosPolicy(wl.profiles, lookahead=0, hold=False, tiers=False)),
    }
    rows: list[dict[str, Any]] = []
    print("One Kairos matching tick (cost matrix + linear_sum_assignment), WND profiles, half the instances busy")
    hdr = (f"{'m x n':>11} " + " ".join(f"{w + ' us':>13}" for w in ways)
           + f" {'kairos us/match':>16} {'unbounded/kairos':>17}")
    print(hdr)
    print("-" * len(hdr))
    for m, n in SIZES:
        snap = snapshot(wl, m, n, rng)
        us = {w: best_us(lambda f=f, snap=snap: f(snap)) for w, f in ways.items()}
        matched = max(1, len(ways["kairos"](snap)))
        row = {"m": m, "n": n, "us": us, "kairos_matches": matched, "kairos_us_per_match": us["kairos"] / matched,
               "unbounded_over_kairos": us["unbounded"] / us["kairos"]}
        rows.append(row)
        print(f"{f'{m} x {n}':>11} " + " ".join(f"{us[w]:13.0f}" for w in ways)
              + f" {row['kairos_us_per_match']:16.1f} {row['unbounded_over_kairos']:17.2f}")
    operation = ticks_in_operation(wl, args.sim_queries)
    out = {"benchmark": "matching", "host": {"python": platform.python_version(), "cpus": len(os.sched_getaffinity(0)),
                                             "loadavg": os.getloadavg()},
           "rows": rows, "ticks_in_operation": operation}
    write_results(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

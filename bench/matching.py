"""Matching-speed benchmark: one scheduling tick of the Kairos dispatcher at growing fleet sizes.

A tick is one call of the dispatch policy on a snapshot (m waiting queries × n instances, half of
them busy), cost matrix included. Three ways to do it, timed in the same run:

- `kairos`: the daemon's default (the oldest min(m, n) queries over n instances × 2 slots: lookahead)
- `window`: the paper's rules over the oldest min(m, 2n) queries × n instances (lookahead off)
- `unbounded` (the baseline): every waiting query × n instances, the matching as the paper states it

Snapshots use the Kairos authors' WND profiles and batch mix (realistic costs: many ties, which is
what makes `linear_sum_assignment` slow), instance types drawn at random from the 4 AWS types.
Prints a table (best of 7 repeats, µs per tick and per executed match) and the unbounded/kairos
ratio, writes bench/results/matching.json.

    python bench/matching.py
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import timeit
from collections.abc import Callable
from typing import Any

import numpy as np
from results_file import RESULTS, write_results  # bench/results_file.py
from scipy.optimize import linear_sum_assignment

from kairosd import workload
from kairosd.dispatch import Assignment, KairosPolicy, Snapshot

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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(RESULTS / "matching.json"))
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
    out = {"benchmark": "matching", "host": {"python": platform.python_version(), "cpus": len(os.sched_getaffinity(0)),
                                             "loadavg": os.getloadavg()},
           "rows": rows}
    write_results(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How accurate a one-shot estimate must be for `kairos` to reach 0.95 of the optimum on every workload,
from the judged values that bench/planner_robust.py recorded (no simulation: seconds).

    python bench/selection_noise.py bench/results/planner_robust_*.json [--record bench/results/planner_robust_rescore_all.json]

Per distinct workload (a seed taken from the last file given that holds it):
  * a selector that knows every fleet's judged rate up to an independent log-normal error of deviation σ
    (`--sigmas`, `--draws` draws, seeded): the share of workloads on which its choice is judged below
    0.95 (and 0.98) of the optimum, and the chance that `--workloads` workloads all reach 0.95 (the
    issue's done-when over a held-out set);
  * the baseline, the judge's own noise: among the fleets judged on at least ten streams, the one with
    the best mean over five of them, scored by the other five against the best mean there (both halves);
  * with `--record` (`planner_robust.py --rescore ... --out`'s file): `kairos`'s own share below 0.95 with
    the current planner, and the σ at which the error model fails as often (interpolated).
`--out FILE` writes all of it as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import planner_robust  # bench/planner_robust.py

SIGMAS = (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08)
SPLIT_STREAMS = 10  # fleets judged on at least this many streams take part in the split-half baseline


def workloads(paths: list[str]) -> dict[int, dict[str, Any]]:
    """The results rows by seed, the last file given winning; workloads no fleet can serve left out."""
    rows = planner_robust.rows_by_seed(json.loads(Path(p).read_text()) for p in paths)
    return {s: r for s, r in rows.items() if max(c["qps"] for c in r["configs"]) > 0}


def with_error(judged: list[np.ndarray], sigma: float, draws: int, seed: int) -> np.ndarray:
    """Per workload, the share of `draws` choices by judged rate × exp(σ·z) judged below 0.95 and 0.98 of
    the optimum: [workload, 2]."""
    rng = np.random.default_rng(seed)
    out = np.zeros((len(judged), 2))
    for i, j in enumerate(judged):
        est = j[None, :] * np.exp(sigma * rng.standard_normal((draws, len(j))))
        ratio = j[est.argmax(axis=1)] / j.max()
        out[i] = (ratio < 0.95).mean(), (ratio < 0.98).mean()
    return out


def split_half(rows: list[dict[str, Any]]) -> list[float]:
    """The judge's own noise: per workload and half, the ratio on the other half of the fleet chosen by one
    half of the streams (fleets with at least `SPLIT_STREAMS` streams, two or more of them)."""
    ratios = []
    for r in rows:
        v = np.array([c["per_stream"][:SPLIT_STREAMS] for c in r["configs"] if len(c["per_stream"]) >= SPLIT_STREAMS])
        if len(v) < 2 or v.max() <= 0:
            continue
        half = SPLIT_STREAMS // 2
        for a, b in ((slice(0, half), slice(half, None)), (slice(half, None), slice(0, half))):
            ref = v[:, b].mean(axis=1)
            ratios.append(float(ref[v[:, a].mean(axis=1).argmax()] / ref.max()))
    return ratios


def recorded_share(path: str, seeds: set[int]) -> tuple[int, int]:
    """(how many below 0.95, how many) of `kairos`'s ratios with the current planner over `seeds`, from a
    `planner_robust.py --rescore --out` file (`planner_robust.per_seed_summary` of its files' rows)."""
    files = [{"rows": [r for r in f["rows"] if int(r["seed"]) in seeds]}
             for f in json.loads(Path(path).read_text())["files"]]
    summary = planner_robust.per_seed_summary(files)
    return len(summary["below_0.95"]), int(summary["n"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="bench/planner_robust.py results files")
    ap.add_argument("--sigmas", default=",".join(f"{s:g}" for s in SIGMAS))
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--workloads", type=int, default=30, help="the size of a held-out set (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--record", help="a planner_robust.py --rescore --out file: kairos's own record")
    ap.add_argument("--out")
    args = ap.parse_args()
    rows = workloads(args.files)
    if not rows:
        raise SystemExit("no servable workload in the files given")
    judged = [np.array([c["qps"] for c in r["configs"]], dtype=float) for r in rows.values()]
    sigmas = [float(s) for s in args.sigmas.split(",")]
    table = []
    print(f"{len(rows)} workloads; a choice by judged rate x exp(sigma*z), {args.draws} draws each")
    print(f"{'sigma':>6} {'< 0.95':>8} {'< 0.98':>8}  all {args.workloads} >= 0.95")
    for k, sigma in enumerate(sigmas):
        share = with_error(judged, sigma, args.draws, args.seed + k).mean(axis=0)
        every = float((1.0 - share[0]) ** args.workloads)
        table.append({"sigma": sigma, "below_0.95": float(share[0]), "below_0.98": float(share[1]), "all_pass": every})
        print(f"{sigma:6.3f} {100 * share[0]:7.2f}% {100 * share[1]:7.2f}%  {every:.2f}")
    halves = split_half(list(rows.values()))
    base = {"choices": len(halves), "below_0.95": sum(r < 0.95 for r in halves), "below_0.98": sum(r < 0.98 for r in halves)}
    if halves:
        print(f"baseline, the judge's own noise (best of {SPLIT_STREAMS // 2} streams scored on the other "
              f"{SPLIT_STREAMS - SPLIT_STREAMS // 2}): below 0.95 in {base['below_0.95']} of {base['choices']} choices "
              f"({100 * base['below_0.95'] / base['choices']:.2f}%), below 0.98 in {base['below_0.98']}")
    out: dict[str, Any] = {"workloads": len(rows), "draws": args.draws, "held_out": args.workloads, "sigmas": table,
                           "judge_split_half": base}
    if args.record:
        below, n = recorded_share(args.record, set(rows))
        share = below / n if n else 0.0
        xs = [t["below_0.95"] for t in table]
        matched = float(np.interp(share, xs, sigmas)) if xs == sorted(xs) else None
        out["kairos"] = {"below_0.95": below, "n": n, "matched_sigma": matched}
        line = f"kairos with the current planner: below 0.95 on {below} of {n} ({100 * share:.2f}%"
        if base["below_0.95"]:
            line += f", {share / (base['below_0.95'] / base['choices']):.1f}x the baseline's share"
        print(line + (f"), as often as the error model at sigma {matched:.3f}" if matched is not None else ")"))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

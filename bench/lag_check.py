"""Bring a `bench/planner_robust.py` results file up to the simulator's backlog check as it is.

A simulated run fails when the fleet does not keep up (`kairosd.sim.simulate`'s `lagging`): the service
handed out exceeds the instances' time, or a query still waits for an instance `LAG_QOS` × QoS after the
last arrival. The files of `bench/results/` were judged with a backlog read on the last *completion*
instead, so one slow query near the end of a stream (a large batch that only a slow type was free for:
a single miss) failed the run at every rate where it ended more than 2 QoS after the last arrival, and
the fleet's max QPS on that stream collapsed (on 5006's 6 × cpu0 + 1 × cpu1, 20.7 q/s on one stream of
ten, 44–51 on the others).

The check re-searches only the (fleet, stream) values that this could have changed, which the stream
alone tells: the fleet holds a type on which some query's service exceeds (`LAG_QOS` − 1) × QoS plus
its arrival's distance from the stream's last arrival at the fleet's upper bound (`screen`). A value the
old check cost then needed a query that ended past 2 QoS after the last arrival though none waited that
long; the screen assumes that the slow query itself waited at most one QoS for its instance. Only the
fleets that matter are re-searched: those judged within `--within` (15%) of the workload's optimum, and
the selectors' recorded choices (a value only rises under the new check, so a fleet further below would
need its flagged streams to rise by more than that on average). Each search starts where the judge's
usually did, at the fleet's mean over its recorded streams, and its value replaces the recorded one only
where one of its passing runs ended more than `LAG_QOS` × QoS after the last arrival: elsewhere the old
check would have taken the same path, and the recorded value stands.

The optimum, every ratio and the summary are then recomputed; the recorded choices stay as they were
(`planner_robust.py --rescore --plus-simulate` plans afresh). The file records the values that changed
(a workload's `judge.lag_changed`: fleet, stream, old, new) and `settings.lag_check`.

    python bench/lag_check.py bench/results/planner_robust_5000.json [more.json ...] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import planner_robust as pr  # bench/planner_robust.py
from results_file import write_results  # bench/results_file.py

from kairosd import synth
from kairosd.sim import LAG_QOS, SimSetup, evaluate_config

WITHIN = 0.15
WAIT_QOS = 1.0  # the screen's allowance for the slow query's own wait, in QoS

Pair = tuple[tuple[int, ...], float]  # a fleet and where its search starts


def screen(setup: SimSetup, svc: np.ndarray, to_last: np.ndarray, config: tuple[int, ...], ub_qps: float) -> bool:
    """Whether the old backlog check could have failed `config` on this stream where the new one passes:
    a type of the fleet on which some query takes longer than (`LAG_QOS` − `WAIT_QOS`) × QoS plus the
    time from its arrival to the last one at `ub_qps` (the highest rate a search tries; `to_last`: that
    time at 1 q/s, per query)."""
    types = [t for t, n in enumerate(config) if n > 0]
    if not types or ub_qps <= 0:
        return False
    threshold = (LAG_QOS - WAIT_QOS) * setup.qos_s + to_last / ub_qps
    return bool(np.any(svc[:, types] > threshold[:, None]))


def search(setup: SimSetup, svc: np.ndarray, config: tuple[int, ...], ub_qps: float, start: float) -> float | None:
    """`config`'s max QPS on this stream when the old backlog check would have changed its search from
    `start`, else None. The old check failed every run the new one fails, and a passing run that ended
    more than `LAG_QOS` × QoS after the last arrival (`SimResult.end_s`): the two searches take the same
    path, and find the same rate, unless a passing run of the new one ended so."""
    late: list[bool] = []
    found = evaluate_config(setup, config, ub_qps, svc, start,
                            observe=lambda run: late.append(run.ok and run.end_s > LAG_QOS * setup.qos_s))
    return found.qps if any(late) else None


def _values(task: tuple[str, int, int, int, int, list[Pair]]) -> list[tuple[bool, float | None]]:
    """One stream of one workload (dispatch rule, workload seed, max configurations, stream seed, queries)
    and fleets with their search starts: for each fleet, whether `screen` flags it, and its max QPS there
    when the old backlog check would have found another (`search`), else None. A worker's job."""
    rule, seed, max_configs, stream_seed, queries, fleets = task
    pr.DISPATCH = rule
    sw = synth.synth_workload(seed, max_configs=max_configs)
    bound = pr.bound_of(pr.planner_model(sw))
    setup = pr.setups(sw, [stream_seed], queries)[0]
    svc = setup.service.times(setup.profiles, setup.model, setup.stream)
    gaps = setup.stream.gaps
    to_last = np.cumsum(gaps[::-1])[::-1] - gaps
    out: list[tuple[bool, float | None]] = []
    for c, start in fleets:
        ub = float(bound(np.array(c)))
        flagged = screen(setup, svc, to_last, c, ub)
        out.append((flagged, search(setup, svc, c, ub, start) if flagged else None))
    return out


def relevant(r: dict[str, Any], within: float) -> dict[tuple[int, ...], np.ndarray]:
    """A row's fleets judged within `within` of its optimum, and the selectors' choices, with their values."""
    vals = pr.recorded_values(r)
    best = max(float(v.mean()) for v in vals.values())
    chosen = {tuple(r[name]["counts"]) for name in pr.SELECTORS}
    return {c: v for c, v in vals.items() if c in chosen or float(v.mean()) >= (1.0 - within) * best}


def check_file(path: Path, workers: int, within: float) -> None:
    """Re-search a file's flagged values (see the module docstring); rewrites the file."""
    data = json.loads(path.read_text())
    pr.use_dispatch(data)
    st = data["settings"]
    if st.get("lag_check"):
        print(f"{path.name}: already lag-checked")
        return
    queries, max_configs = int(st["queries_per_run"]), int(st["max_configs"])
    tasks, where = [], []
    for ri, r in enumerate(data["rows"]):
        fleets = relevant(r, within)
        n_streams = max(len(v) for v in fleets.values())
        for i, stream_seed in enumerate(pr.stream_seeds(pr.JUDGE_SEED, n_streams)):
            todo = [(c, float(v.mean())) for c, v in fleets.items() if i < len(v) and v.mean() > 0]
            if todo:
                tasks.append((pr.DISPATCH, int(r["seed"]), max_configs, stream_seed, queries, todo))
                where.append((ri, i))
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max(1, workers)) as pool:
        results = list(pool.map(_values, tasks, chunksize=2))
    searched = sum(flagged for values in results for flagged, _ in values)
    changed: dict[int, list[tuple[tuple[int, ...], int, float, float]]] = {}
    recorded = [pr.recorded_values(r) for r in data["rows"]]
    for (ri, i), task, values in zip(where, tasks, results, strict=True):
        for (c, _), (_, v) in zip(task[5], values, strict=True):
            if v is not None and v != recorded[ri][c][i]:
                changed.setdefault(ri, []).append((c, i, float(recorded[ri][c][i]), v))
    for ri, r in enumerate(data["rows"]):
        vals = recorded[ri]
        for c, i, _, v in changed.get(ri, []):
            vals[c][i] = v
        old_opt, old_k = r["optimum"]["config"], r["kairos"]["ratio"]
        pr.apply_values(r, vals, pr.candidates_of(int(r["seed"]), max_configs)[2])
        r["judge"]["lag_changed"] = [[list(c), i, o, v] for c, i, o, v in changed.get(ri, [])]
        if changed.get(ri):
            print(f"{r['seed']:5d} {r['model']:6} {len(changed[ri])} values changed; optimum {old_opt} -> "
                  f"{r['optimum']['config']}; kairos {old_k:.3f} -> {r['kairos']['ratio']:.3f}", flush=True)
    moved = [v - o for f in changed.values() for _, _, o, v in f]
    st["lag_check"] = {"lag_qos": LAG_QOS, "wait_qos": WAIT_QOS, "within": within, "searched": searched,
                       "values_changed": len(moved), "values_up": sum(d > 0 for d in moved),
                       "wall_s": time.perf_counter() - t0}
    data["summary"] = pr.summarize(data["rows"])
    print(f"{path.name}: {searched} values re-searched, {len(moved)} changed ({st['lag_check']['values_up']} up),"
          f" {st['lag_check']['wall_s']:.0f} s")
    pr.print_summary(data["summary"], len(data["rows"]), workers)
    write_results(data, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", metavar="FILE")
    ap.add_argument("--workers", type=int, default=max(1, len(os.sched_getaffinity(0))))
    ap.add_argument("--within", type=float, default=WITHIN)
    args = ap.parse_args()
    for f in args.files:
        check_file(Path(f), args.workers, args.within)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

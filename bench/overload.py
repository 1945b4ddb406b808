"""Overload drill: an emulated fleet at 1× and 3× its measured capacity, with and without admission control.

The done-when of admission control: at `--multiple` (3) × the fleet's max QPS for `--duration` (30) s,
open loop, every query gets an answer or an explicit refusal; the admitted queries keep p99 within
QoS; goodput (answers within QoS per second) is ≥ 0.9 of the max QPS; the daemon's RSS stays within
50 MB of its level at 1×.

Fleet: `--fleet` emulated instances (the Kairos AWS types) serving dlrm timed as the authors' rm2 (QoS
350 ms), under the Kairos dispatcher, reconciled as in bench/live.py. Load: bench/openloop.py's load
generator in its own process (grpc.aio, pre-serialized requests, Poisson arrivals on a timerfd, the
authors' batch mix); each query carries a deadline of 10 × QoS as its grpc-timeout header, the client
waits 1 s past it, and each query's outcome is recorded: answered (within QoS or late; outputs
checked), refused (RESOURCE_EXHAUSTED), another explicit error (by status code), wrong, or lost.
Steps:
  1. max QPS: with `admission = "off"`, bisection from the simulator's figure for the same fleet, policy
     and stream (bench/live.py's rule: p99 at the client after a 10% warm-up ≤ QoS, no error, no backlog);
  2. the load generator's own ceiling against a no-op instance at 1× and 2× the overload rate (bench/live.py);
  3. for each `--modes` (default "off" then "qos"): a fresh daemon with that `scheduler.admission`, 1× max
     QPS for `--duration` s, then `--multiple`× for `--duration` s, the daemon's RSS sampled (/proc) every
     0.25 s; its RSS level at 1× is the median over the second half of the 1× run. With `--repeats`, the
     overload run is repeated on the same daemon and the median of each figure is judged.
Prints a table per mode and run, the checks, and the ratios (goodput / max QPS per mode; goodput with
admission / without). Writes bench/results/overload.json.

    python bench/overload.py [--fleet g4dn.xlarge=2,r5n.large=6] [--duration 30] [--multiple 3] [--modes off,qos]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from live import loadgen_ceiling  # noqa: E402  (bench/live.py)
from openloop import Daemon, RssSampler, live_max, step  # noqa: E402  (bench/openloop.py)
from results_file import RESULTS, write_results  # noqa: E402  (bench/results_file.py)

SERVED, MODEL = "dlrm", "rm2"
MB = 1024 * 1024
RSS_LIMIT_MB = 50.0
GOODPUT_FLOOR = 0.9
GRACE_S = 1.0


def parse_fleet(text: str) -> dict[str, int]:
    out = {}
    for part in filter(None, text.split(",")):
        name, _, count = part.partition("=")
        out[name.strip()] = int(count)
    return out


def start(workdir: Path, fleet: dict[str, int], qos_ms: float, margin_ms: float, admission: str,
          scheduler_extra: str) -> Daemon:
    sub = workdir / f"admission-{admission}"
    sub.mkdir(exist_ok=True)
    extra = f'admission = "{admission}"\n{scheduler_extra}'
    return Daemon(sub, SERVED, MODEL, qos_ms, fleet, "kairos", {}, margin_ms, scheduler_extra=extra,
                  name=f"overload-{admission}")


def run(d: Daemon, rate: float, duration_s: float, qos_s: float, seed: int, label: str,
        dump: Path | None = None) -> dict[str, Any]:
    """One open-loop run at `rate` for `duration_s` with per-query outcomes and the daemon's RSS (`dump`:
    where the load generator saves per-query detail, .npz)."""
    from kairosd import workload

    n = max(1, round(rate * duration_s))
    stream = workload.sim_setup(workload.load_kairos(), MODEL, n_queries=n, seed=seed).stream
    print(f"  {label}: {rate:.1f} q/s for {duration_s:g} s ({n} queries)", flush=True)
    rss0 = d.rss_bytes()
    with RssSampler(d.pid) as rss:
        extra: dict[str, Any] = {"outcomes": True, "qos_s": qos_s, "grace_s": GRACE_S}
        if dump is not None:
            extra["dump"] = str(dump)
        r = step(d, SERVED, rate, stream, qos_s, extra)
    r["rss_before_mb"] = rss0 / MB
    r["rss_max_mb"] = rss.max_bytes() / MB
    r["rss_level_mb"] = rss.median_bytes(after_s=duration_s / 2) / MB
    r["rss_samples"] = len(rss.samples)
    o = r["outcomes"]
    print(f"    sent {o['sent']} ok {o['ok']} (within QoS {o['ok_within_qos']}, late {o['ok_late']}) refused "
          f"{o['refused']} other errors {o['other_errors']} lost {o['lost']} wrong {o['wrong']}; admitted p99 "
          f"{_f(o['admitted_p99_ms'])} ms; goodput {o['goodput_qps']:.1f} q/s; RSS level {r['rss_level_mb']:.1f} max "
          f"{r['rss_max_mb']:.1f} MB", flush=True)
    return r


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The repeats of one overload run as one: the median of each figure, except lost and wrong (summed:
    one lost query in any repeat counts) and RSS (the maximum over the repeats)."""
    if len(runs) == 1:
        return runs[0]

    def med(values: list[Any]) -> float | None:
        v = [x for x in values if x is not None]
        return float(statistics.median(v)) if v else None

    outs = [r["outcomes"] for r in runs]
    o: dict[str, Any] = {k: med([x[k] for x in outs]) for k in outs[0] if k != "by_outcome"}
    for k in ("lost", "wrong"):
        o[k] = sum(x[k] for x in outs)
    for k in ("sent", "ok", "ok_within_qos", "ok_late", "refused", "other_errors"):
        o[k] = round(o[k])
    codes = sorted({c for x in outs for c in x["by_outcome"]})
    o["by_outcome"] = {c: round(statistics.median(x["by_outcome"].get(c, 0) for x in outs)) for c in codes}
    merged: dict[str, Any] = {k: med([r[k] for r in runs]) for k in ("offered_qps", "head_cpu", "loadgen_cpu",
                                                                       "rss_level_mb")}
    merged["rss_max_mb"] = max(r["rss_max_mb"] for r in runs)
    merged["outcomes"] = o
    merged["repeats"] = len(runs)
    return merged


def _f(x: float | None, fmt: str = ".1f") -> str:
    return format(x, fmt) if x is not None and math.isfinite(x) else "-"


def judge(mode: dict[str, Any], max_qps: float, qos_ms: float) -> dict[str, Any]:
    """The done-when's four properties for one mode's overload run."""
    o = mode["over"]["outcomes"]
    rss_diff = mode["over"]["rss_max_mb"] - mode["one"]["rss_level_mb"]
    p99 = o["admitted_p99_ms"]
    return {
        "every_query_answered_or_refused": o["lost"] == 0 and o["wrong"] == 0,
        "admitted_p99_within_qos": p99 is not None and p99 <= qos_ms,
        "goodput_over_max_qps": o["goodput_qps"] / max_qps if max_qps else None,
        "goodput_at_least_0.9": max_qps > 0 and o["goodput_qps"] >= GOODPUT_FLOOR * max_qps,
        "rss_over_1x_mb": rss_diff,
        "rss_within_50mb": rss_diff <= RSS_LIMIT_MB,
    }


def print_tables(out: dict[str, Any]) -> None:
    qos_ms = out["qos_ms"]
    max_qps = out["max_qps"]
    print(f"\nOverload: {out['fleet']} (emulated; dlrm timed as rm2, QoS {qos_ms:g} ms); max QPS at p99 ≤ QoS "
          f"{max_qps:.1f} (simulator {out['sim_qps']:.1f}); {out['settings']['duration_s']:g} s per run; deadline "
          f"{out['deadline_s']:g} s + {GRACE_S:g} s grace; load average {out['host']['loadavg_start'][0]:.2f} at start")
    hdr = (f"{'admission':9} {'load':>9} {'q/s':>6} {'sent':>6} {'in QoS':>6} {'late':>6} {'refused':>7} {'other':>6} "
           f"{'lost':>5} {'wrong':>5} {'p50 ms':>7} {'p99 ms':>7} {'goodput':>7} {'RSS MB':>7} {'head':>5} {'lg':>5}")
    print(hdr)
    print("-" * len(hdr))
    mult = f"{out['settings']['multiple']:g}x"
    for name, mode in out["modes"].items():
        rows = [(mode["one"], "1x")]
        if len(mode["over_runs"]) > 1:
            rows += [(r, f"{mult}#{k + 1}") for k, r in enumerate(mode["over_runs"])]
            rows.append((mode["over"], f"{mult} median"))
        else:
            rows.append((mode["over"], mult))
        for r, label in rows:
            rss = r["rss_level_mb"] if label == "1x" else r["rss_max_mb"]
            o = r["outcomes"]
            print(f"{name:9} {label:>9} {r['offered_qps']:6.1f} {o['sent']:6d} {o['ok_within_qos']:6d} {o['ok_late']:6d} "
                  f"{o['refused']:7d} {o['other_errors']:6d} {o['lost']:5d} {o['wrong']:5d} {_f(o['admitted_p50_ms']):>7} "
                  f"{_f(o['admitted_p99_ms']):>7} {o['goodput_qps']:7.1f} {rss:7.1f} {r['head_cpu']:5.2f} "
                  f"{r['loadgen_cpu']:5.2f}")
        other = {k: v for k, v in mode["over"]["outcomes"]["by_outcome"].items() if k not in ("OK", "RESOURCE_EXHAUSTED")}
        if other:
            print(f"{'':9} {'':>9} other outcomes at overload ({'median' if len(mode['over_runs']) > 1 else 'run'}): "
                  f"{other}")
    print("(RSS: the level over the 1x run's second half; the maximum during the overload runs. Median row: the "
          "median of each column over the repeats, lost and wrong summed, RSS the maximum)")
    print("\nDone-when checks at overload:")
    for name, mode in out["modes"].items():
        j = mode["checks"]
        print(f"  admission {name:5}: answered or refused {'yes' if j['every_query_answered_or_refused'] else 'NO'}; "
              f"admitted p99 ≤ QoS {'yes' if j['admitted_p99_within_qos'] else 'NO'}; goodput / max QPS "
              f"{_f(j['goodput_over_max_qps'], '.3f')} ({'≥' if j['goodput_at_least_0.9'] else '<'} 0.9); RSS "
              f"+{j['rss_over_1x_mb']:.1f} MB over 1x ({'≤' if j['rss_within_50mb'] else '>'} 50)")
    modes = out["modes"]
    if "qos" in modes and "off" in modes:
        g_on = modes["qos"]["over"]["outcomes"]["goodput_qps"]
        g_off = modes["off"]["over"]["outcomes"]["goodput_qps"]
        ratio = g_on / g_off if g_off else math.inf
        out["goodput_admission_over_off"] = ratio
        print(f"\nratio: goodput with admission / without, at overload: {g_on:.1f} / {g_off:.1f} = {_f(ratio, '.2f')}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fleet", default="g4dn.xlarge=2,r5n.large=6")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of each 1x and overload run")
    ap.add_argument("--multiple", type=float, default=3.0, help="overload = this × max QPS")
    ap.add_argument("--modes", default="off,qos", help="scheduler.admission values to run (the first is the baseline)")
    ap.add_argument("--scheduler", default="", help="more [scheduler] TOML lines for every daemon")
    ap.add_argument("--margin-ms", type=float, default=1.0)
    ap.add_argument("--bisect-queries", type=int, default=1500, help="queries per bisection step")
    ap.add_argument("--max-steps", type=int, default=6)
    ap.add_argument("--rel-tol", type=float, default=0.03)
    ap.add_argument("--max-qps", type=float, default=0.0, help="skip the bisection: use this max QPS")
    ap.add_argument("--skip-ceiling", action="store_true", help="no load generator ceiling runs")
    ap.add_argument("--repeats", type=int, default=1, help="overload runs per mode (their medians are judged)")
    ap.add_argument("--dump-dir", default="", help="save each run's per-query detail here (.npz)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "overload.json"))
    args = ap.parse_args()

    from kairosd import workload
    from kairosd.sim import evaluate_config

    t_start = time.monotonic()
    fleet = parse_fleet(args.fleet)
    wl = workload.load_kairos()
    qos_s = wl.qos_s[MODEL]
    qos_ms = qos_s * 1e3
    modes = [m for m in args.modes.split(",") if m]
    workdir = Path(tempfile.mkdtemp(prefix="kairosd-overload-"))
    label = " + ".join(f"{n}×{t}" for t, n in fleet.items() if n)
    out: dict[str, Any] = {
        "benchmark": "overload",
        "command": " ".join(["python", *sys.argv]),
        "host": {"python": platform.python_version(), "cpus": len(os.sched_getaffinity(0)),
                 "loadavg_start": os.getloadavg()},
        "settings": {"duration_s": args.duration, "multiple": args.multiple, "modes": modes, "seed": args.seed,
                     "repeats": args.repeats,
                     # the head's backend transport (kairosd.backends.client: unset = its default, the stream)
                     "KAIROSD_BACKEND_STREAM": os.environ.get("KAIROSD_BACKEND_STREAM"),
                     "scheduler_extra": args.scheduler, "margin_ms": args.margin_ms,
                     "bisect_queries": args.bisect_queries, "rel_tol": args.rel_tol,
                     "criterion": "max QPS: p99 at the client (after a 10% warm-up) <= QoS, no error, last answer "
                                  "within 2 QoS of the last arrival, admission off"},
        "fleet": label, "counts": fleet, "qos_ms": qos_ms, "deadline_s": max(10 * qos_s, 2.0), "modes": {},
    }
    print(f"overload drill: {label}, rm2 QoS {qos_ms:g} ms; load average {os.getloadavg()[0]:.2f}", flush=True)
    key = [fleet.get(t, 0) for t in wl.types]
    setup = workload.sim_setup(wl, MODEL, n_queries=args.bisect_queries, seed=args.seed)
    setup = replace(setup, policy="kairos", policy_params={"margin_s": args.margin_ms / 1e3})
    out["sim_qps"] = sim_qps = float(evaluate_config(setup, key, None).qps)
    print(f"simulator max QPS {sim_qps:.1f}", flush=True)

    daemons: dict[str, Daemon] = {}
    steps: list[dict[str, Any]] = []
    try:
        if args.max_qps > 0:
            max_qps = args.max_qps
        else:
            print("max QPS (admission off):", flush=True)
            daemons["off"] = start(workdir, fleet, qos_ms, args.margin_ms, "off", args.scheduler)
            max_qps, steps = live_max(daemons["off"], SERVED, sim_qps, setup.stream, qos_s, args.rel_tol,
                                      args.max_steps, 0.1 * sim_qps)
        out["max_qps"], out["max_qps_steps"] = max_qps, steps
        if max_qps <= 0:
            raise SystemExit("no rate passed: no max QPS to overload")
        print(f"max QPS {max_qps:.1f} (simulator {sim_qps:.1f})", flush=True)
        write_results(out, args.out)
        if not args.skip_ceiling:
            print("load generator ceiling (no-op instance):", flush=True)
            rates = [args.multiple * max_qps, 2 * args.multiple * max_qps]
            out["loadgen_ceiling"] = loadgen_ceiling(workdir, rates, round(args.duration * max_qps), "grpc")
        for mode in modes:
            print(f"admission = {mode!r}:", flush=True)
            d = daemons.pop(mode, None) or start(workdir, fleet, qos_ms, args.margin_ms, mode, args.scheduler)
            try:
                dump = Path(args.dump_dir) if args.dump_dir else None
                if dump is not None:
                    dump.mkdir(parents=True, exist_ok=True)
                res: dict[str, Any] = {"one": run(d, max_qps, args.duration, qos_s, args.seed + 1, "1x",
                                                  dump / f"{mode}-1x.npz" if dump else None)}
                res["over_runs"] = [run(d, args.multiple * max_qps, args.duration, qos_s, args.seed + 2 + k,
                                        f"{args.multiple:g}x #{k + 1}", dump / f"{mode}-over-{k + 1}.npz" if dump else None)
                                    for k in range(args.repeats)]
                res["over"] = median_run(res["over_runs"])
            finally:
                d.stop()
            res["checks"] = judge(res, max_qps, qos_ms)
            out["modes"][mode] = res
            write_results(out, args.out)  # after each mode: a partial run keeps what it measured
    finally:
        for d in daemons.values():
            d.stop()
    out["host"]["loadavg_end"] = os.getloadavg()
    out["total_s"] = time.monotonic() - t_start
    print_tables(out)
    print(f"total {out['total_s']:.0f} s")
    write_results(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

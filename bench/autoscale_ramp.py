"""The autoscaler under a load ramp: `kairosd serve --config configs/autoscale.toml` (local provider,
objective min_cost) driven by an open-loop gRPC client whose rate rises, then falls.

Each query is one dlrm request whose batch is drawn from the config's prior mix (log-normal, median
`prior_batch_median`); arrivals are Poisson at the phase's rate. Every `--sample-s` the fleet is read
from the daemon's /kairos/fleet (instances by type and state, committed $/h, budget, target). At the
end: every query sent is accounted for (answered with a result, or with an explicit error, by status),
the committed cost's maximum against the budget, and a timeline table. Writes
bench/results/autoscale_ramp.json and, with matplotlib, bench/results/autoscale_ramp.png.

    python bench/autoscale_ramp.py [--phases 20:20,30:120,40:280,30:120,40:20] [--tail-s 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from proxy import wait_http  # noqa: E402  (bench/proxy.py)
from results_file import RESULTS, write_results  # noqa: E402  (bench/results_file.py)

from kairosd.backends.process import ChildProcess, free_port  # noqa: E402
from kairosd.modelgen import example_inputs  # noqa: E402


def write_config(src: Path, dst: Path) -> dict[str, int]:
    """`src` with free front-end ports and absolute repository paths."""
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    text = src.read_text()
    for key, port in (("http_port", ports["http"]), ("grpc_port", ports["grpc"]), ("metrics_port", ports["metrics"])):
        text = re.sub(rf"^{key} = \d+", f"{key} = {port}", text, flags=re.M)
    text = text.replace('repository = "model_repository"', f'repository = "{REPO / "model_repository"}"')
    text = text.replace('profiles = "profiles/local"', f'profiles = "{REPO / "profiles" / "local"}"')
    dst.write_text(text)
    return ports


def fleet_status(admin: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://{admin}/kairos/fleet", timeout=2) as r:
            data: dict[str, Any] = json.loads(r.read())
            return data
    except OSError:
        return None


def batch_pool(median: float, n: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(b) for b in np.clip(np.ceil(rng.lognormal(np.log(median), 0.75, n)), 1, 1024)]


async def drive(grpc_url: str, phases: list[tuple[float, float]], median: float, seed: int) -> list[dict[str, Any]]:
    """Open-loop Poisson arrivals per phase (seconds, q/s); one record per query sent."""
    import tritonclient.grpc.aio as grpcaio
    from tritonclient.utils import InferenceServerException, np_to_triton_dtype

    client = grpcaio.InferenceServerClient(grpc_url)
    sizes = sorted(set(batch_pool(median, 64, seed)))
    inputs: dict[int, list[Any]] = {}
    for b in sizes:
        built = []
        for name, arr in example_inputs("dlrm", b, seed=b).items():
            t = grpcaio.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
            t.set_data_from_numpy(arr)
            built.append(t)
        inputs[b] = built
    rng = np.random.default_rng(seed + 1)
    records: list[dict[str, Any]] = []
    tasks: list[asyncio.Task[None]] = []
    t0 = time.monotonic()

    async def one(rec: dict[str, Any]) -> None:
        start = time.monotonic()
        try:
            await client.infer("dlrm", inputs[rec["batch"]], client_timeout=20)
            rec["outcome"] = "ok"
        except InferenceServerException as exc:
            rec["outcome"] = str(exc.status() or "error")
        except Exception as exc:  # noqa: BLE001 - counted by kind
            rec["outcome"] = type(exc).__name__
        rec["latency_s"] = time.monotonic() - start

    phase_start = 0.0
    for duration, rate in phases:
        t = phase_start
        while True:
            t += float(rng.exponential(1.0 / rate))
            if t >= phase_start + duration:
                break
            delay = t0 + t - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            rec = {"t_s": round(time.monotonic() - t0, 4), "batch": int(rng.choice(sizes)), "outcome": None}
            records.append(rec)
            tasks.append(asyncio.get_running_loop().create_task(one(rec)))
        phase_start += duration
    await asyncio.gather(*tasks)
    await client.close()
    return records


async def sample(admin: str, stop: asyncio.Event, every_s: float, t0: float, out: list[dict[str, Any]]) -> None:
    while not stop.is_set():
        st = await asyncio.to_thread(fleet_status, admin)
        if st is not None:
            by: Counter[str] = Counter()
            for i in st["instances"]:
                by[f"{i['type']}:{i['state']}"] += 1
            out.append({"t_s": round(time.monotonic() - t0, 3), "committed_usd_per_hour": st["committed_usd_per_hour"],
                        "budget_usd_per_hour": st["budget_usd_per_hour"], "members": dict(by),
                        "target": st["target"], "observed": st["observed"]})
        try:
            await asyncio.wait_for(stop.wait(), every_s)
        except TimeoutError:
            pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "configs" / "autoscale.toml"))
    p.add_argument("--phases", default="20:20,30:120,40:280,30:120,40:20", help="seconds:q/s,...")
    p.add_argument("--tail-s", type=float, default=30.0, help="idle time after the last phase (scale-in)")
    p.add_argument("--sample-s", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "autoscale_ramp.json"))
    args = p.parse_args()
    phases = [(float(d), float(r)) for d, r in (x.split(":") for x in args.phases.split(","))]
    import tomllib

    cfg = tomllib.loads(Path(args.config).read_text())
    median = float(cfg["autoscaler"].get("prior_batch_median", 8.0))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "autoscale.toml"
        ports = write_config(Path(args.config), path)
        http, grpc_url = f"127.0.0.1:{ports['http']}", f"127.0.0.1:{ports['grpc']}"
        admin = f"127.0.0.1:{ports['metrics']}"
        daemon = ChildProcess([sys.executable, "-m", "kairosd", "serve", "--config", str(path)], name="kairosd-ramp",
                              log_path=Path(tmp) / "kairosd.log").start()
        try:
            wait_http(http, 120)

            async def run() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
                samples: list[dict[str, Any]] = []
                stop = asyncio.Event()
                t0 = time.monotonic()
                sampler = asyncio.create_task(sample(admin, stop, args.sample_s, t0, samples))
                records = await drive(grpc_url, phases, median, args.seed)
                await asyncio.sleep(args.tail_s)
                stop.set()
                await sampler
                return records, samples

            records, samples = asyncio.run(run())
            log_lines = (Path(tmp) / "kairosd.log").read_text().splitlines()
        finally:
            code = daemon.stop(30)
    actions = [ln.split(" kairosd.fleet: ", 1)[1] for ln in log_lines
               if " kairosd.fleet: " in ln and any(k in ln for k in ("launch type=", "drain instance=", "terminate instance="))]
    outcomes = Counter(r["outcome"] for r in records)
    lat_ok = np.array([r["latency_s"] for r in records if r["outcome"] == "ok"]) * 1e3
    max_committed = max(s["committed_usd_per_hour"] for s in samples)
    budget = samples[0]["budget_usd_per_hour"]
    head = ("t (s)", 6), ("offered q/s", 11), ("answered q/s", 12), ("observed", 9), ("committed $/h", 13), ("budget", 7)
    print("\n" + " ".join(f"{h:>{w}s}" for h, w in head) + "  fleet")
    bins = np.arange(0, max(s["t_s"] for s in samples) + 5, 5.0)
    for lo in bins:
        sent = [r for r in records if lo <= r["t_s"] < lo + 5]
        ok = sum(r["outcome"] == "ok" for r in sent)
        snap = [s for s in samples if lo <= s["t_s"] < lo + 5]
        if not snap:
            continue
        last = snap[-1]
        fleet = ", ".join(f"{n}×{k}" for k, n in sorted(last["members"].items()))
        obs = sum(o["rate_qps"] for o in last["observed"])
        print(f"{lo:6.0f} {len(sent) / 5:11.1f} {ok / 5:12.1f} {obs:9.1f} {max(s['committed_usd_per_hour'] for s in snap):13.3f} "
              f"{budget:7.2f}  {fleet}")
    lost = sum(r["outcome"] is None for r in records)
    print(f"\nqueries sent {len(records)}; outcomes {dict(outcomes)}; lost (no answer) {lost}")
    if len(lat_ok):
        print(f"answered ok: p50 {np.percentile(lat_ok, 50):.1f} ms, p99 {np.percentile(lat_ok, 99):.1f} ms")
    print(f"committed $/h: max {max_committed:.3f} of budget {budget:.3f} over {len(samples)} samples; "
          f"ratio max/budget {max_committed / budget:.3f}; daemon exit code {code}")
    print(f"fleet actions: {len(actions)}")
    for a in actions:
        print("  " + a)
    result = {"phases": phases, "tail_s": args.tail_s, "config": Path(args.config).name, "sent": len(records),
              "outcomes": dict(outcomes), "lost": lost, "budget_usd_per_hour": budget,
              "max_committed_usd_per_hour": max_committed, "daemon_exit_code": code,
              "latency_ok_ms": ({"p50": float(np.percentile(lat_ok, 50)), "p99": float(np.percentile(lat_ok, 99))}
                                if len(lat_ok) else {}),
              "actions": actions, "samples": samples,
              "sent_per_s": np.bincount(np.array([int(r["t_s"]) for r in records])).tolist()}
    out = write_results(result, args.out)
    plot(result, out.with_suffix(".png"))


def plot(result: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -e '.[plot]'): no plot")
        return
    samples = result["samples"]
    t = [s["t_s"] for s in samples]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    ax1.plot(range(len(result["sent_per_s"])), result["sent_per_s"], label="offered (q/s, per second)", lw=0.8)
    ax1.plot(t, [sum(o["rate_qps"] for o in s["observed"]) for s in samples], label="observed by kairosd (window)")
    ax1.set_ylabel("load (q/s)")
    ax1.legend(loc="upper right")
    keys = sorted({k for s in samples for k in s["members"]})
    ax2.stackplot(t, [[s["members"].get(k, 0) for s in samples] for k in keys], labels=keys, step="post")
    ax2.plot(t, [sum(s["target"].values()) for s in samples], "k--", label="target (instances)", drawstyle="steps-post")
    ax2.set_ylabel("instances")
    ax2.legend(loc="upper right", fontsize=7)
    ax3.plot(t, [s["committed_usd_per_hour"] for s in samples], label="committed $/h", drawstyle="steps-post")
    ax3.plot(t, [s["budget_usd_per_hour"] for s in samples], "r--", label="budget $/h")
    ax3.set_ylabel("$/h")
    ax3.set_xlabel("time (s)")
    ax3.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Proxy overhead: tritonclient straight to a backend vs through a bare Python pass-through vs through kairosd.

One real Triton (PyTriton, serving the repository's models) is the backend. For each protocol (gRPC,
HTTP) and concurrency (1, 8, 64) a closed-loop tritonclient load (bench/loadgen.py, its own process)
measures p50/p99 latency and throughput; the proxies' CPU seconds per 1,000 queries come from
/proc/<pid>/stat. Each cell is repeated (the three targets taking turns within each repeat) and the
median reported. Writes bench/results/proxy.json.

    python bench/proxy.py [--duration-s 3] [--repeats 3] [--model ncf --batch 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from results_file import write_results  # noqa: E402  (bench/results_file.py)

from kairosd.backends.process import ChildProcess, free_port, kairosd_argv, wait_ready_sync  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def wait_http(url: str, timeout_s: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready")


def load(protocol: str, url: str, conc: int, args: argparse.Namespace) -> dict:
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "loadgen.py"), "--protocol", protocol, "--url", url,
         "--model", args.model, "--batch", str(args.batch), "--concurrency", str(conc),
         "--duration-s", str(args.duration_s)],
        capture_output=True, text=True, check=True, cwd=REPO,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def kairosd_config(
    path: Path, grpc_port: int, http_port: int, backend_grpc: str, backend_http: str, policy: str = "kairos"
) -> None:
    path.write_text(f"""
[server]
host = "127.0.0.1"
http_port = {http_port}
grpc_port = {grpc_port}
metrics_port = 0
[scheduler]
policy = "{policy}"
[models]
repository = "{REPO / 'model_repository'}"
profiles = "{REPO / 'profiles' / 'local'}"
[models.qos_ms]
dlrm = 60.0
ncf = 30.0
[types.triton]
backend = "triton"
slots = 64      # the proxies forward up to 64 queries at once; so may kairosd
[[fleet.endpoints]]
type = "triton"
address = "{backend_grpc}"
http_address = "{backend_http}"
""")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration-s", type=float, default=3.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--concurrency", default="1,8,64")
    p.add_argument("--protocols", default="grpc,http")
    p.add_argument("--policy", default="kairos", help="kairosd's dispatch policy")
    p.add_argument("--model", default="ncf")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "proxy.json"))
    args = p.parse_args()
    concs = [int(c) for c in args.concurrency.split(",")]

    ports = {k: free_port() for k in ["tg", "th", "tm", "bg", "bh", "kg", "kh"]}
    tmp = Path(tempfile.mkdtemp(prefix="kairosd-bench-"))
    children: list[ChildProcess] = []
    try:
        triton = ChildProcess(kairosd_argv("triton", "--model-repository", str(REPO / "model_repository"),
                                           "--grpc-port", str(ports["tg"]), "--http-port", str(ports["th"]),
                                           "--metrics-port", str(ports["tm"]), "--threads", "1"), name="triton").start()
        children.append(triton)
        wait_ready_sync(f"127.0.0.1:{ports['tg']}", 180, triton)
        backend = {"grpc": f"127.0.0.1:{ports['tg']}", "http": f"127.0.0.1:{ports['th']}"}
        bare_g = ChildProcess([sys.executable, str(REPO / "bench" / "bare_proxy.py"), "grpc", "--listen",
                               f"127.0.0.1:{ports['bg']}", "--backend", backend["grpc"]], name="bare-grpc").start()
        bare_h = ChildProcess([sys.executable, str(REPO / "bench" / "bare_proxy.py"), "http", "--listen",
                               f"127.0.0.1:{ports['bh']}", "--backend", backend["http"]], name="bare-http").start()
        children += [bare_g, bare_h]
        kairosd_config(tmp / "bench.toml", ports["kg"], ports["kh"], backend["grpc"], backend["http"], args.policy)
        kd = ChildProcess(kairosd_argv("serve", "--config", str(tmp / "bench.toml")), name="kairosd").start()
        children.append(kd)
        wait_ready_sync(f"127.0.0.1:{ports['bg']}", 30, bare_g)
        wait_ready_sync(f"127.0.0.1:{ports['kg']}", 60, kd)
        wait_http(f"127.0.0.1:{ports['bh']}", 30)
        targets = {
            "grpc": {"direct": (backend["grpc"], None), "bare": (f"127.0.0.1:{ports['bg']}", bare_g),
                     "kairosd": (f"127.0.0.1:{ports['kg']}", kd)},
            "http": {"direct": (backend["http"], None), "bare": (f"127.0.0.1:{ports['bh']}", bare_h),
                     "kairosd": (f"127.0.0.1:{ports['kh']}", kd)},
        }
        targets = {k: v for k, v in targets.items() if k in args.protocols.split(",")}
        results = []
        for protocol, tg in targets.items():
            for conc in concs:
                # the targets take turns within each repeat, so a change in the machine's background
                # load during a cell affects all three alike rather than whichever ran at that moment
                runs: dict[str, list[dict]] = {name: [] for name in tg}
                for _ in range(args.repeats):
                    for name, (url, proc) in tg.items():
                        c0 = cpu_s(proc.pid) if proc else 0.0
                        r = load(protocol, url, conc, args)
                        c1 = cpu_s(proc.pid) if proc else 0.0
                        # CPU over the whole run (warm-up included) divided by the measured queries
                        # plus the warm-up ones, estimated at the same rate
                        total_q = r["n"] * (1 + 0.5 / args.duration_s)
                        r["cpu_ms_per_query"] = (c1 - c0) / total_q * 1e3 if proc and total_q else None
                        runs[name].append(r)
                for name, rs in runs.items():
                    med = {k: statistics.median([x[k] for x in rs]) if rs[0][k] is not None else None
                           for k in ("qps", "p50_ms", "p99_ms", "cpu_ms_per_query")}
                    med["errors"] = sum(x["errors"] for x in rs)
                    results.append({"protocol": protocol, "concurrency": conc, "target": name, **med, "runs": rs})
                    print(f"{protocol:4s} c={conc:<3d} {name:8s} p50 {med['p50_ms']:7.2f} ms  p99 {med['p99_ms']:7.2f} ms  "
                          f"{med['qps']:8.0f} q/s  cpu "
                          + (f"{med['cpu_ms_per_query']:.3f} ms/q" if med["cpu_ms_per_query"] is not None else "-"),
                          flush=True)
    finally:
        for c in reversed(children):
            c.stop(10)

    def cell(protocol: str, conc: int, target: str) -> dict:
        return next(r for r in results if r["protocol"] == protocol and r["concurrency"] == conc and r["target"] == target)

    print("\nMedians of", args.repeats, "runs;", f"model {args.model} batch {args.batch}; CPU = proxy process only\n")
    print("added p50 = proxy p50 - direct p50: of the medians, and paired (median over repeats of the per-repeat difference)")
    print(f"{'proto':5s} {'conc':>4s} | {'direct p50':>10s} {'bare +p50':>9s} {'kairosd +p50':>12s} {'ratio':>5s} | "
          f"{'paired: bare':>12s} {'kairosd':>7s} {'ratio':>5s} | "
          f"{'bare cpu/1kq':>12s} {'kairosd cpu/1kq':>15s} {'ratio':>5s} | "
          f"{'direct q/s':>10s} {'bare q/s':>8s} {'kairosd q/s':>11s}")
    summary = []
    for protocol in targets:
        for conc in concs:
            d, b, k = cell(protocol, conc, "direct"), cell(protocol, conc, "bare"), cell(protocol, conc, "kairosd")
            add_b, add_k = b["p50_ms"] - d["p50_ms"], k["p50_ms"] - d["p50_ms"]
            cpu_b, cpu_k = b["cpu_ms_per_query"], k["cpu_ms_per_query"]
            # paired: each repeat's proxy p50 minus the direct p50 of the same repeat (they ran back to
            # back), then the median over repeats; robust to background load that drifts between repeats
            pair_b = statistics.median(x["p50_ms"] - y["p50_ms"] for x, y in zip(b["runs"], d["runs"], strict=True))
            pair_k = statistics.median(x["p50_ms"] - y["p50_ms"] for x, y in zip(k["runs"], d["runs"], strict=True))
            row = {"protocol": protocol, "concurrency": conc, "added_p50_ms_bare": add_b, "added_p50_ms_kairosd": add_k,
                   "added_p50_ratio": add_k / add_b if add_b > 0 else None,
                   "added_p50_ms_bare_paired": pair_b, "added_p50_ms_kairosd_paired": pair_k,
                   "added_p50_ratio_paired": pair_k / pair_b if pair_b > 0 else None,
                   "cpu_s_per_1000q_bare": cpu_b, "cpu_s_per_1000q_kairosd": cpu_k,
                   "cpu_ratio": cpu_k / cpu_b if cpu_b else None,
                   "qps_direct": d["qps"], "qps_bare": b["qps"], "qps_kairosd": k["qps"]}
            summary.append(row)
            ratio_p50 = f"{row['added_p50_ratio']:.2f}" if row["added_p50_ratio"] is not None else "  n/a"
            ratio_pair = f"{row['added_p50_ratio_paired']:.2f}" if row["added_p50_ratio_paired"] is not None else "  n/a"
            print(f"{protocol:5s} {conc:4d} | {d['p50_ms']:8.2f}ms {add_b:7.2f}ms {add_k:10.2f}ms {ratio_p50:>5s} | "
                  f"{pair_b:7.2f}ms {pair_k:7.2f}ms {ratio_pair:>5s} | "
                  f"{cpu_b:10.3f} s {cpu_k:13.3f} s {row['cpu_ratio']:5.2f} | {d['qps']:10.0f} {b['qps']:8.0f} {k['qps']:11.0f}")
    write_results({"args": vars(args), "cells": results, "summary": summary}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

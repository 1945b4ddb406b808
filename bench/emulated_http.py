"""An emulated instance's HTTP endpoint: the lean infer path against aiohttp serving every request, in one run.

One `kairosd emulated` host with one instance (`--type`, the repository's dlrm timed as `--model`) takes
the model's stream (the authors' batch mix, Poisson arrivals at `--rate`) from the native load generator
(bench/native: pre-serialized KServe v2 REST requests on keep-alive HTTP/1.1), once with infer requests
on the lean path (`kairosd/backends/emulated_http.py`, the default) and once with
`KAIROSD_EMULATED_LEAN_HTTP=0` (aiohttp for every request: the baseline), the two taking turns
`--repeats` times. Per run: the host's CPU per query (utime + stime of the process over the step /
queries answered), and the client's way to the instance and back beyond the service (the generator's
send to the instance's arrival stamp, and its done stamp to the whole answer at the generator), p50 and
p99. Medians over the repeats; the ratio lean / aiohttp. Writes bench/results/emulated_http.json.

    python bench/emulated_http.py [--rate 200] [--queries 4000] [--repeats 3] [--type g4dn.xlarge] [--model wnd]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from openloop import cpu_s, run_loadgen  # noqa: E402  (bench/openloop.py; puts kairosd on the path)
from results_file import RESULTS, write_results  # noqa: E402  (bench/results_file.py)

from kairosd.backends.emulated_http import LEAN_ENV  # noqa: E402
from kairosd.backends.process import ChildProcess, free_port, kairosd_argv, wait_ready_sync  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PATHS = {"lean": "1", "aiohttp": "0"}


def one_run(path: str, args: argparse.Namespace, stream: Any) -> dict[str, Any]:
    grpc_port, http_port = free_port(), free_port()
    argv = kairosd_argv("emulated", "--model-repository", str(REPO / "model_repository"), "--data", "kairos",
                        "--models", f"dlrm={args.model}", "--instance", f"{args.type}:{grpc_port}:{http_port}")
    host = ChildProcess(argv, name=f"emulated-{path}", env={**os.environ, LEAN_ENV: PATHS[path]}).start()
    try:
        wait_ready_sync(f"127.0.0.1:{grpc_port}", 60, host)
        assert host.pid is not None
        c0, t0 = cpu_s(host.pid), time.monotonic()
        r = run_loadgen({"url": f"127.0.0.1:{grpc_port}", "http_url": f"127.0.0.1:{http_port}", "model": "dlrm",
                         "batches": stream.batches.tolist(), "gaps": stream.gaps.tolist(), "rate_qps": args.rate,
                         "timeout_s": 5.0, "generator": "native", "protocol": "http"})
        c1, t1 = cpu_s(host.pid), time.monotonic()
    finally:
        host.stop(10)
    answered = r["n"] - r["errors"]
    split = r["split"]
    out = {"path": path, "n": r["n"], "errors": r["errors"], "host_cpu_ms_per_query": (c1 - c0) / answered * 1e3,
           "host_cores": (c1 - c0) / (t1 - t0),
           "to_instance_p50_ms": split["to_instance"]["p50_ms"], "to_instance_p99_ms": split["to_instance"]["p99_ms"],
           "back_p50_ms": split["back_to_client"]["p50_ms"], "back_p99_ms": split["back_to_client"]["p99_ms"]}
    print(f"  {path:8} cpu {out['host_cpu_ms_per_query']:.3f} ms/query ({out['host_cores']:.2f} cores), way there "
          f"p50 {out['to_instance_p50_ms']:.3f} p99 {out['to_instance_p99_ms']:.3f} ms, back p50 {out['back_p50_ms']:.3f} "
          f"p99 {out['back_p99_ms']:.3f} ms, errors {out['errors']}", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=200.0, help="offered load, q/s")
    ap.add_argument("--queries", type=int, default=4000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--type", default="g4dn.xlarge", help="the emulated instance type")
    ap.add_argument("--model", default="wnd", help="the Kairos profile model that times the repository's dlrm")
    ap.add_argument("--out", default=str(RESULTS / "emulated_http.json"))
    args = ap.parse_args()
    if args.repeats < 1 or args.queries < 100 or args.rate <= 0:
        ap.error("--repeats ≥ 1, --queries ≥ 100 and --rate > 0")
    from kairosd import workload

    stream = workload.sim_setup(workload.load_kairos(), args.model, n_queries=args.queries, seed=0).stream
    runs: list[dict[str, Any]] = []
    for i in range(args.repeats):
        print(f"repeat {i + 1}", flush=True)
        for path in (PATHS if i % 2 == 0 else reversed(list(PATHS))):
            runs.append(one_run(path, args, stream))
    keys = ("host_cpu_ms_per_query", "to_instance_p50_ms", "to_instance_p99_ms", "back_p50_ms", "back_p99_ms")
    median = {p: {k: float(np.median([r[k] for r in runs if r["path"] == p])) for k in keys} for p in PATHS}
    ratio = {k: median["lean"][k] / median["aiohttp"][k] for k in keys}
    print(f"\n{args.type} emulating {args.model}, {args.rate:g} q/s, {args.queries} queries, medians of {args.repeats}")
    print(f"{'':24} {'lean':>9} {'aiohttp':>9} {'ratio':>7}")
    for k in keys:
        print(f"{k:24} {median['lean'][k]:9.3f} {median['aiohttp'][k]:9.3f} {ratio[k]:7.3f}")
    write_results({"benchmark": "emulated_http", "settings": vars(args), "runs": runs, "median": median,
                   "lean_over_aiohttp": ratio, "errors": sum(r["errors"] for r in runs)}, args.out)
    return 1 if any(r["errors"] for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())

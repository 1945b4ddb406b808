"""Live Kairos at the paper's scale on one machine: the daemon on emulated instances against its simulator.

For each Kairos model, the fleet `kairosd plan` chooses at the budget (selector "kairos" on the authors'
data) runs as emulated instances (the four AWS types, service times drawn from the authors' samples;
by default all in one `kairosd emulated --instance ...` host process, given to the daemon as
`[[fleet.endpoints]]`; `--process-per-instance`: one process each, as the local provider starts them)
behind a real `kairosd serve`; the repository's dlrm is timed as the model (ncf as ncf). An open-loop
load generator in its own process (by default the C program of bench/native: pre-serialized KServe v2
REST requests on keep-alive HTTP/1.1 connections; `--generator python`: bench/openloop.py's client, also
over gRPC with `--protocol grpc`; Poisson arrivals on a timerfd, the authors' batch mix; exactly the
stream the simulator evaluates) bisects for the highest rate whose
end-to-end p99 at the client, over the queries after a 10% warm-up, stays within QoS, with no error and
no backlog (as the simulator judges a run); the bisection runs `--repeats` times on the same daemon and
the median is reported (a step's p99 near the limit is noisy, and a bisection stops at its first
failed step). The same for the best threshold policy and for fcfs (bisected once: `--repeat-policies`).
The policies bisected `--repeats` times are measured side by side (`--paired`, the default): their
daemons are all started, each followed by its light steps (below), and their bisections take turns,
the policies forward in even rounds and backward in odd ones (Kairos, threshold, threshold, Kairos, ...),
so that the machine's speed, which drifts over minutes and hours, weighs on each policy alike. Beside
Kairos over threshold (the ratio of the medians), the ratio within each pair of runs is recorded (run i
over run i, "kairos_over_threshold_live_runs"); each policy records whether its runs took turns
("paired", "paired_with"), and each run's place in the turns and its start ("run_schedule").
`--no-paired`: every policy alone on its daemon, one after the other. The other policies (fcfs) are
measured alone afterwards.
The threshold is the one tuned in the simulator (bench/results/dispatch.json when its fleet is this
one, else a sweep on this stream), then tuned live (`--live-thresholds`) before the measured
bisections: the tuned threshold's daemon is bisected once, and so are the thresholds the simulator on
the live path (below) serves most with, each on a daemon of its own; the one that served most is the
threshold whose `--repeats` bisections take turns with Kairos's and are reported.
Beside each: the simulator's max QPS for the same fleet, policy, stream and query count, and the ratio;
and the simulator on the live path ("sim@path", `--no-path` to skip): a light step first measures the
path (the head's hop to the instance and back, and the client's own way to the head:
`kairosd.sim.PathModel`, pipelining as the daemon does), and the simulator is run with it and the
daemon's own margin, and
with each margin of `PATH_MARGINS_MS` (the best one is recorded). For Kairos a direct step follows
the light one: the same stream from the same load generator straight to one instance (no head), whose
way there and back is what the instance and the generator add alone; the simulator is run again on the
head's share of the path (1 − direct / through, medians; "on_head_path"): what the fleet serves when
only the head's path is left.
Per step: the head's CPU (/proc/PID/stat), the instances' and the load generator's, the machine's and
the hypervisor's steal; a step during which steal took more than `--max-steal` cores is measured
again (the VM's neighbours are not what is measured), and so is a step during which processes outside the
benchmark used more than `--max-others` cores. Per group of policies measured together (or
policy measured alone), before its daemons start and after they stop, the machine's speed
(`openloop.cpu_speed_ms`: a fixed Python loop, its fastest of nine timings, "cpu_speed_ms"): the same
code runs up to a quarter slower in some hours than in others with no steal. Also: the load
generator's own ceiling against a no-op instance (with the native generator, also both generators
against the C no-op target of bench/native/noop.c), the emulation's fidelity at low load on a
16-instance fleet (per type, direct and through kairosd; from h2load over gRPC and over HTTP) beside
the emulated servers' own floor per protocol (h2load against a no-op service), and the timer's precision.
Writes bench/results/live.json.

    python bench/live.py [--models rm2,dien,mtwnd,wnd,ncf] [--policies kairos,threshold,fcfs] [--queries 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from head import H2LOAD_GRPC, grpc_frame  # noqa: E402  (bench/head.py)
from openloop import (  # noqa: E402  (bench/openloop.py)
    INFER_PATH,
    TYPES,
    Daemon,
    cpu_s,
    cpu_speed_ms,
    http_request,
    live_max,
    request_body,
    run_loadgen,
    step,
)
from results_file import RESULTS, write_results  # noqa: E402  (bench/results_file.py)

from kairosd.backends.process import ChildProcess, free_port, kairosd_argv, wait_ready_sync  # noqa: E402

# --------------------------------------------------------------------------------------------------
# Fidelity and timer


async def _fidelity_loop(url: str, model: str, batch: int, n: int, out: list[tuple[str, float, float]]) -> None:
    import grpc
    from tritonclient.grpc import service_pb2 as pb

    from kairosd.backends.emulated import SERVICE_PARAM, TYPE_PARAM

    body = request_body(model, batch)
    async with grpc.aio.insecure_channel(url) as channel:
        call = channel.unary_unary(INFER_PATH)
        await call(body)
        for _ in range(n):
            t0 = time.perf_counter()
            reply = await call(body)
            lat = time.perf_counter() - t0
            params = pb.ModelInferResponse.FromString(reply).parameters
            out.append((params[TYPE_PARAM].string_param, lat, params[SERVICE_PARAM].int64_param / 1e6))


def _h2load_latencies_ms(url: str, body: bytes, n: int, workdir: Path,
                         http: tuple[str, dict[str, str]] | None = None) -> np.ndarray:
    """`n` infer calls, one at a time on one connection, from h2load (a native client): each call's time
    from request to the end of its response, ms (`--log-file`); every response must be HTTP 200. gRPC
    ModelInfer over HTTP/2 (`body`: a serialized ModelInferRequest), or with `http` = (path, headers) a
    KServe v2 REST infer over HTTP/1.1 (`body` as sent)."""
    import subprocess

    framed = workdir / "h2load-body.bin"
    framed.write_bytes(body if http else grpc_frame(body))
    log = workdir / "h2load-log.tsv"
    log.unlink(missing_ok=True)  # h2load appends to its log file
    if http:
        path, headers = http
        opts = ["--h1", *(x for k, v in headers.items() for x in ("-H", f"{k}: {v}"))]
        target = f"http://{url}{path}"
    else:
        opts, target = list(H2LOAD_GRPC), f"http://{url}{INFER_PATH}"
    subprocess.run(["h2load", "-n", str(n + 1), "-c", "1", "-m", "1", "-t", "1", "-d", str(framed), *opts,
                    "--log-file", str(log), target], capture_output=True, text=True, check=True)
    rows = [line.split("\t") for line in log.read_text().splitlines() if line.count("\t") >= 2]
    if len(rows) < n + 1 or any(r[1] != "200" for r in rows):
        raise RuntimeError(f"h2load against {url}: {len(rows)} answers of {n + 1}, statuses {sorted({r[1] for r in rows})}")
    rows.sort(key=lambda r: int(r[0]))
    return np.array([int(r[2]) for r in rows[1:]], dtype=float) / 1e3  # the first call opens the connection


def _within(got: float, lo: float, hi: float) -> bool:
    """Whether `got` is within 5% (or 0.5 ms) of the range [lo, hi] of profile quantiles (ms)."""
    return lo - max(0.05 * lo, 0.5) <= got <= hi + max(0.05 * hi, 0.5)


def profile_range_ms(cells: Any, batch: int, q: float, n: int) -> tuple[float, float]:
    """The profile's quantiles (ms) that `n` draws can show as their q-quantile: those at q ± 2·√(q(1−q)/n),
    two standard deviations of the share of draws at or below a point. Where one of the cell's samples
    holds about 1 − q of the mass (99 samples: the largest, for p99), the q-quantile of a finite
    measurement is that sample or the one below it, about as often."""
    d = 2.0 * math.sqrt(q * (1.0 - q) / max(n, 1))
    return cells.quantile_s(batch, max(q - d, 0.0)) * 1e3, cells.quantile_s(batch, min(q + d, 1.0)) * 1e3


def _h2load_one_query(protocol: str, url: str, served: str, batch: int, n: int, workdir: Path) -> np.ndarray:
    """`_h2load_latencies_ms` for `n` calls of `served` at `batch` over `protocol` ("grpc": ModelInfer over
    HTTP/2; "http": KServe v2 REST over HTTP/1.1) to `url`."""
    if protocol == "grpc":
        return _h2load_latencies_ms(url, request_body(served, batch), n, workdir)
    path, headers, body = http_request(served, batch)
    return _h2load_latencies_ms(url, body, n, workdir, (path, headers))


def _against_profile(lat_ms: np.ndarray, cells: Any, batch: int, floor_ms: float | None = None) -> dict[str, Any]:
    """The client's p50 and p99 (ms) beside the profile's, and whether each is within 5% or 0.5 ms of the
    profile's quantiles a sample this size can show (`profile_range_ms`); with `floor_ms` (the same client's
    median call to a no-op service over the same protocol: `protocol_floor`), also the service time the
    client measures, its latency less that floor, against them."""
    row: dict[str, Any] = {}
    for q in (50, 99):
        prof = cells.quantile_s(batch, q / 100) * 1e3
        lo, hi = profile_range_ms(cells, batch, q / 100, len(lat_ms))
        got = float(np.percentile(lat_ms, q))
        row[f"p{q}_client_ms"], row[f"p{q}_profile_ms"], row[f"p{q}_profile_range_ms"] = got, prof, [lo, hi]
        row[f"p{q}_within"] = _within(got, lo, hi)
        if floor_ms is not None:
            service = float(np.percentile(lat_ms - floor_ms, q))
            row[f"p{q}_service_ms"], row[f"p{q}_service_within"] = service, _within(service, lo, hi)
    return row


def _native_rows(addr: dict[str, str], http_addr: dict[str, str], served: str, model: str, batch: int,
                 budget_s: float, workdir: Path, floor: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Per type and protocol, at low load (one call at a time, the rest of the fleet idle): the client's
    p50/p99 from a native client against the profile's, with as many calls as fit in `budget_s` (at
    least 200): gRPC over HTTP/2 (`direct_h2load`) and KServe v2 REST over HTTP/1.1 (`direct_h2load_http`);
    and the service time the client measures, its latency less the protocol's median no-op call (`floor`,
    from `protocol_floor`)."""
    from kairosd.emulation import load_cells

    rows = []
    for where, proto, urls in (("direct_h2load", "grpc", addr), ("direct_h2load_http", "http", http_addr)):
        for t in TYPES:
            cells = load_cells(t, "kairos", {served: model})[served]
            mean_ms = cells.quantile_s(batch, 0.5) * 1e3
            n = int(min(2000, max(200, budget_s * 1e3 / max(mean_ms, 0.05))))
            lat = _h2load_one_query(proto, urls[t], served, batch, n, workdir)
            floor_ms = floor[proto]["p50_ms"]
            row = {"model": model, "batch": batch, "where": where, "type": t, "n": len(lat), "floor_ms": floor_ms,
                   **_against_profile(lat, cells, batch, floor_ms)}
            rows.append(row)
            print(f"  fidelity {model} b{batch} {where:18} {t:12} p50 {row['p50_client_ms']:7.2f} (profile "
                  f"{row['p50_profile_ms']:7.2f}) p99 {row['p99_client_ms']:7.2f} (profile "
                  f"{row['p99_profile_ms']:7.2f}) n {len(lat)} within {row['p50_within'] and row['p99_within']}; "
                  f"less the floor {floor_ms:.2f} ms: p50 {row['p50_service_ms']:7.2f} p99 {row['p99_service_ms']:7.2f} "
                  f"within {row['p50_service_within'] and row['p99_service_within']}", flush=True)
    return rows


async def _fidelity_all(urls: list[str], model: str, batch: int, n: int, out: list[tuple[str, float, float]]) -> None:
    await asyncio.gather(*(_fidelity_loop(u, model, batch, n, out) for u in urls))


def fidelity(workdir: Path, queries: int, native_budget_s: float = 20.0) -> dict[str, Any]:
    """At low load on a 16-instance fleet (the rm2 plan + one c5n and one t3; round robin): per type,
    client p50/p99 against the profile's and against the service times drawn for these very queries,
    from the Python gRPC client (direct and through kairosd), and from h2load (direct, one call at a
    time: the emulation's own fidelity, without a Python client's overhead); first, what the emulated
    servers add per protocol with no service at all (`protocol_floor`)."""
    from kairosd.emulation import load_cells

    fleet = {"g4dn.xlarge": 1, "c5n.2xlarge": 1, "r5n.large": 13, "t3.xlarge": 1}
    out: dict[str, Any] = {"fleet": fleet, "instances": sum(fleet.values()), "rows": [], "protocol_floor": {}}
    for served, model, batch in (("dlrm", "rm2", 200), ("ncf", "ncf", 100)):
        sub = workdir / f"fid-{model}"
        sub.mkdir(exist_ok=True)
        d = Daemon(sub, served, model, 1000.0, fleet, "round_robin", {})
        try:
            addr: dict[str, str] = {}
            http_addr: dict[str, str] = {}
            for i in d.fleet()["instances"]:
                addr.setdefault(i["type"], i["address"])
                http_addr.setdefault(i["type"], i["http_address"])
            floor = out["protocol_floor"][model] = protocol_floor(sub, served, batch)
            out["rows"] += _native_rows(addr, http_addr, served, model, batch, native_budget_s, sub, floor)
            for where in ("direct", "kairosd"):
                samples: list[tuple[str, float, float]] = []
                urls = [addr[t] for t in TYPES] if where == "direct" else [d.url] * len(TYPES)

                asyncio.run(_fidelity_all(urls, served, batch, queries, samples))
                for t in TYPES:
                    cells = load_cells(t, "kairos", {served: model})[served]
                    lat = np.array([s[1] for s in samples if s[0] == t]) * 1e3
                    drawn = np.array([s[2] for s in samples if s[0] == t]) * 1e3
                    if len(lat) == 0:
                        continue
                    row = {"model": model, "batch": batch, "where": where, "type": t, "n": len(lat),
                           **_against_profile(lat, cells, batch)}
                    for q in (50, 99):
                        row[f"p{q}_drawn_ms"] = float(np.percentile(drawn, q))
                    row["excess_p50_ms"] = float(np.percentile(lat - drawn, 50))
                    row["excess_p99_ms"] = float(np.percentile(lat - drawn, 99))
                    out["rows"].append(row)
                    print(f"  fidelity {model} b{batch} {where:7} {t:12} p50 {row['p50_client_ms']:7.2f} "
                          f"(profile {row['p50_profile_ms']:7.2f}) p99 {row['p99_client_ms']:7.2f} (profile "
                          f"{row['p99_profile_ms']:7.2f}) excess p50 {row['excess_p50_ms']:.2f} "
                          f"p99 {row['excess_p99_ms']:.2f} ms",
                          flush=True)
        finally:
            d.stop()
    return out


async def _timer_errors(kind: str, n: int, lo_s: float, hi_s: float) -> list[float]:
    from kairosd.backends.emulated import PreciseTimer

    timer = PreciseTimer(asyncio.get_running_loop())
    rng = np.random.default_rng(0)
    errs = []
    for _ in range(n):
        d = float(rng.uniform(lo_s, hi_s))
        s = time.monotonic()
        if kind == "timerfd":
            await timer.sleep_until(s + d)
        else:
            await asyncio.sleep(d)
        errs.append(time.monotonic() - s - d)
    timer.close()
    return errs


def timer_precision() -> list[dict[str, Any]]:
    """Overshoot of a wait for 0.3-5 ms: the timerfd timer vs asyncio.sleep, on uvloop and on asyncio's loop."""
    import uvloop

    rows = []
    for loop_name, runner in (("uvloop", uvloop.run), ("asyncio", asyncio.run)):
        for kind in ("timerfd", "sleep"):
            e = np.array(runner(_timer_errors(kind, 300, 0.0003, 0.005))) * 1e6
            rows.append({"loop": loop_name, "timer": kind, "p50_us": float(np.percentile(e, 50)),
                         "p99_us": float(np.percentile(e, 99)), "min_us": float(e.min()), "max_us": float(e.max())})
            print(f"  timer {loop_name:7} {kind:8} overshoot p50 {rows[-1]['p50_us']:7.0f} us p99 {rows[-1]['p99_us']:7.0f} "
                  f"us min {rows[-1]['min_us']:7.0f} max {rows[-1]['max_us']:7.0f}", flush=True)
    return rows


@contextmanager
def noop_instance(workdir: Path) -> Iterator[tuple[int, int, int]]:
    """One emulated instance whose service takes ~0 (a profile CSV of 1 ns) and 100,000 slots, serving ncf
    and dlrm as the profile model `noop`: its gRPC and HTTP ports and its pid, while the context lasts."""
    prof = workdir / "noop"
    prof.mkdir(exist_ok=True)
    (prof / "noop.csv").write_text("instance_type,batch,mean_s,p99_s\nnoop,1000,1e-9,1e-9\n")
    port, http_port = free_port(), free_port()
    child = ChildProcess(kairosd_argv("emulated", "--model-repository", str(REPO / "model_repository"), "--emulate",
                                      "noop", "--data", str(prof), "--models", "ncf=noop,dlrm=noop", "--port", str(port),
                                      "--http-port", str(http_port), "--slots", "100000"), name="noop").start()
    try:
        wait_ready_sync(f"127.0.0.1:{port}", 60, child)
        assert child.pid is not None
        yield port, http_port, child.pid
    finally:
        child.stop(10)


def protocol_floor(workdir: Path, served: str, batch: int, n: int = 2000) -> dict[str, dict[str, float]]:
    """What the emulated instance's servers add to a query alone: h2load, one call at a time, against the
    no-op instance (`noop_instance`), `served` at `batch`, over gRPC and over HTTP: p50/p99 ms per protocol."""
    out: dict[str, dict[str, float]] = {}
    with noop_instance(workdir) as (port, http_port, _):
        for proto, p in (("grpc", port), ("http", http_port)):
            lat = _h2load_one_query(proto, f"127.0.0.1:{p}", served, batch, n, workdir)
            out[proto] = {"p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)), "n": len(lat)}
            print(f"  the emulated server's floor over {proto} (no-op service, h2load, {served} b{batch}): p50 "
                  f"{out[proto]['p50_ms']:.2f} p99 {out[proto]['p99_ms']:.2f} ms", flush=True)
    return out


def loadgen_ceiling(workdir: Path, rates: list[float], n: int, protocol: str,
                    generator: str = "python") -> list[dict[str, Any]]:
    """The load generator (`generator`: "python" or "native") against a no-op target (`noop_instance`), sent
    ncf batch-100 queries (the smallest) at `rates` over `protocol`."""
    rows = []
    with noop_instance(workdir) as (port, http_port, child_pid):
        for rate in rates:
            c0, t0 = cpu_s(child_pid), time.monotonic()
            r = run_loadgen({"url": f"127.0.0.1:{port}", "http_url": f"127.0.0.1:{http_port}", "protocol": protocol,
                             "model": "ncf", "batches": [100] * n,
                             "gaps": np.random.default_rng(0).exponential(1.0, n).tolist(), "rate_qps": rate,
                             "timeout_s": 10.0, "generator": generator})
            r["target_cpu"] = (cpu_s(child_pid) - c0) / (time.monotonic() - t0)
            rows.append(r)
            print(f"  {generator} loadgen vs no-op: offered {rate:7.0f} sent {r['sent_qps']:7.0f} q/s, p50 {r['p50_ms']:.2f} p99 "
                  f"{r['p99_ms']:.2f} ms, loadgen cpu {r['loadgen_cpu']:.2f}, target cpu {r['target_cpu']:.2f}, "
                  f"errors {r['errors']}", flush=True)
    return rows


# --------------------------------------------------------------------------------------------------


def plan_fleet(model: str, budget: float) -> tuple[dict[str, int], float]:
    """The fleet `kairosd plan --budget B --model M --selector kairos --no-eval` chooses, and its bound."""
    from kairosd.commands import plan
    from kairosd.planner import make_candidates, select

    parser = argparse.ArgumentParser()
    plan.add_arguments(parser)
    inp = plan.resolve(parser.parse_args(["--budget", str(budget), "--model", model, "--selector", "kairos",
                                          "--no-eval"]))
    cands = make_candidates(inp.model, inp.prices, budget, max_counts=inp.caps)
    sel = select("kairos", cands, None)
    return {t: int(c) for t, c in zip(inp.types, sel.config, strict=True)}, float(sel.ub_qps)


# the thresholds the simulator sweeps (`best_threshold`, `thresholds_on_path`)
THRESHOLD_GRID = tuple(range(50, 1001, 50))


def best_threshold(wl: Any, model: str, counts: dict[str, int], setup: Any, ub: float) -> tuple[int, str]:
    from kairosd.sim import evaluate_config

    path = RESULTS / "dispatch.json"
    if path.is_file():
        for row in json.loads(path.read_text()).get("rows", []):
            if row["model"] == model and row["counts"] == [counts[t] for t in wl.types]:
                return int(row["threshold_best"]), "bench/results/dispatch.json (tuned on other seeds)"
    key = tuple(counts[t] for t in wl.types)
    sweep = {t: evaluate_config(replace(setup, policy="threshold", policy_params={"threshold": t}), key, ub).qps
             for t in THRESHOLD_GRID}
    return max(sweep, key=lambda t: sweep[t]), "simulator sweep 50..1000 step 50 on this stream"


# the light step that measures the live path: this share of the simulator's rate, this many queries
PATH_STEP_SHARE = 0.15
PATH_STEP_QUERIES = 400
Z99 = 2.3263478740408408  # the standard normal's 99th percentile
# the Kairos matching's margins the simulator tries on the live path (ms)
PATH_MARGINS_MS = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0)


def path_of(light: dict[str, Any], seed: int) -> Any:
    """The live path (`kairosd.sim.PathModel`) from a light step, where queries hardly wait. The client's
    latency beyond the instance's service is taken as log-normal, its spread fitted on its p50 and p99
    (σ = ln(p99 / p50) / z99: one stalled query in a short step moves a standard deviation far more
    than a percentile); the hop has the head's measured mean (answered − sent − the instance's service)
    and the same relative spread, and the client's own way is what the latency keeps beyond the hop on
    average. The head pipelines as the daemon's scheduler does with its default tick (`pipeline = true`,
    `tick_ms`), so the hop holds the instance only where a query cannot be sent ahead."""
    from kairosd.config import SchedulerConfig
    from kairosd.sim import PathModel

    hop_ms = max(float(light.get("hop_mean_ms") or 0.0), 0.0)
    p50, p99 = float(light.get("excess_p50_ms") or 0.0), float(light.get("excess_p99_ms") or 0.0)
    cv, excess_mean = 0.0, p50
    if hop_ms > 0 and p50 > 0 and p99 > p50:
        sigma = math.log(p99 / p50) / Z99
        cv = math.sqrt(math.expm1(sigma * sigma))
        excess_mean = p50 * math.exp(sigma * sigma / 2)
    return PathModel(hop_mean_s=hop_ms / 1e3, hop_sd_s=cv * hop_ms / 1e3, client_s=max(excess_mean - hop_ms, 0.0) / 1e3,
                     seed=seed, pipeline_tick_s=SchedulerConfig().tick_ms / 1e3)


def kairos_by_margin(setup: Any, key: tuple[int, ...], ub: float, path: Any, margin_ms: float) -> dict[float, float]:
    """Kairos's max QPS in the simulator on `path`, by matching margin (ms): `margin_ms` and each of
    `PATH_MARGINS_MS`."""
    from kairosd.sim import evaluate_config

    return {m: evaluate_config(replace(setup, policy="kairos", policy_params={"margin_s": m / 1e3}, path=path),
                               key, ub).qps
            for m in sorted({margin_ms, *PATH_MARGINS_MS})}


def on_path(setup: Any, policy: str, params: dict[str, Any], key: tuple[int, ...], ub: float, light: dict[str, Any],
            margin_ms: float, live: float, seed: int) -> dict[str, Any]:
    """The simulator on the live path measured by `light`: max QPS with the daemon's margin `margin_ms`
    (kairos) and, for kairos, with each margin of `PATH_MARGINS_MS`."""
    from kairosd.sim import evaluate_config

    path = path_of(light, seed)
    by_margin = (kairos_by_margin(setup, key, ub, path, margin_ms) if policy == "kairos" else
                 {margin_ms: evaluate_config(replace(setup, policy=policy, policy_params=params, path=path), key, ub).qps})
    sim_path = by_margin[margin_ms]
    best_margin = max(by_margin, key=lambda m: by_margin[m])
    print(f"  {policy}: the simulator on the live path (hop {path.hop_mean_s * 1e3:.2f} ± {path.hop_sd_s * 1e3:.2f} ms, "
          f"client {path.client_s * 1e3:.2f} ms, margin {margin_ms:.2f} ms): {sim_path:.1f} q/s"
          + (f"; best margin there {best_margin:g} ms ({by_margin[best_margin]:.1f} q/s)" if policy == "kairos" else ""),
          flush=True)
    return {"hop_mean_ms": path.hop_mean_s * 1e3, "hop_sd_ms": path.hop_sd_s * 1e3, "client_ms": path.client_s * 1e3,
            "pipeline_tick_ms": None if path.pipeline_tick_s is None else path.pipeline_tick_s * 1e3,
            "daemon_margin_ms": margin_ms, "sim_qps": sim_path, "live_over_sim": live / sim_path if sim_path else None,
            "sim_qps_by_margin_ms": {f"{m:g}": q for m, q in by_margin.items()}, "best_margin_ms": best_margin,
            "light_step": light}


# the direct step beside the light one: the same stream straight to one instance, this busy (its share
# of one slot), at most this long or this many queries
DIRECT_BUSY = 0.15
DIRECT_WALL_S = 20.0
DIRECT_MIN_QUERIES = 50


def direct_step(d: Daemon, served: str, stream: Any, qos_s: float, service_mean_ms: float,
                spec_extra: dict[str, Any]) -> dict[str, Any] | None:
    """The light step's stream sent by the same load generator straight to one instance of the fleet's
    most numerous type, with no head between them: the path the instance and the load generator make
    alone (their CPU and one round trip through the kernel), recorded with its type and address."""
    ready = [i for i in d.fleet()["instances"] if i["state"] == "ready" and i.get("http_address")]
    if not ready or service_mean_ms <= 0:
        return None
    [(most, _)] = Counter(i["type"] for i in ready).most_common(1)
    inst = next(i for i in ready if i["type"] == most)
    rate = DIRECT_BUSY / (service_mean_ms / 1e3)
    n = int(min(len(stream.gaps), max(DIRECT_MIN_QUERIES, DIRECT_WALL_S * rate)))
    r = run_loadgen({"url": inst["address"], "http_url": inst["http_address"], "model": served,
                     "batches": stream.batches[:n].tolist(), "gaps": stream.gaps[:n].tolist(), "rate_qps": rate,
                     "timeout_s": max(10 * qos_s, 2.0), **spec_extra})
    r.update(type=inst["type"], address=inst["address"])
    split = r.get("split", {})
    print(f"    direct to one {inst['type']} at {rate:.1f} q/s ({r['n']} queries, errors {r['errors']}): "
          + ", ".join(f"{k} p50 {v['p50_ms']:.2f} p99 {v['p99_ms']:.2f} ms" for k, v in split.items()), flush=True)
    return r


def head_share(light: dict[str, Any], direct: dict[str, Any] | None) -> float | None:
    """The head's share of the live path: 1 − (the direct path's way to the instance and back, p50) / (the
    light step's latency beyond the service, p50). None without both."""
    if not direct or direct.get("errors"):
        return None
    split = direct.get("split", {})
    through = float(light.get("excess_p50_ms") or 0.0)
    if through <= 0 or "to_instance" not in split or "back_to_client" not in split:
        return None
    alone = split["to_instance"]["p50_ms"] + split["back_to_client"]["p50_ms"]
    return min(max(1.0 - alone / through, 0.0), 1.0)


def head_path(light: dict[str, Any], share: float) -> dict[str, Any]:
    """The light step's path scaled to the head's share (hop, median and p99 beyond the service alike):
    what the path would be with an instance and a load generator that cost nothing."""
    return {**light, "hop_mean_ms": float(light.get("hop_mean_ms") or 0.0) * share,
            "excess_p50_ms": float(light.get("excess_p50_ms") or 0.0) * share,
            "excess_p99_ms": float(light.get("excess_p99_ms") or 0.0) * share}


def on_head_path(setup: Any, key: tuple[int, ...], ub: float, light: dict[str, Any], direct: dict[str, Any] | None,
                 margin_ms: float, live: float, sim_qps: float, seed: int) -> dict[str, Any] | None:
    """Kairos in the simulator on the head's share of the live path (`head_path`), at the daemon's margin
    and each of `PATH_MARGINS_MS`, the best recorded: the most the fleet serves when the head's path is
    all there is. None when the direct step is missing."""
    share = head_share(light, direct)
    if share is None:
        return None
    path = path_of(head_path(light, share), seed)
    by_margin = kairos_by_margin(setup, key, ub, path, margin_ms)
    best = max(by_margin, key=lambda m: by_margin[m])
    print(f"  kairos: the simulator on the head's share ({share:.2f}) of the path: {by_margin[best]:.1f} q/s at "
          f"margin {best:g} ms ({by_margin[best] / sim_qps if sim_qps else math.nan:.3f} of the simulator)", flush=True)
    return {"share": share, "hop_mean_ms": path.hop_mean_s * 1e3, "client_ms": path.client_s * 1e3,
            "sim_qps": by_margin[best], "best_margin_ms": best, "over_sim": by_margin[best] / sim_qps if sim_qps else None,
            "live_over_it": live / by_margin[best] if by_margin[best] else None,
            "sim_qps_by_margin_ms": {f"{m:g}": q for m, q in by_margin.items()}, "direct_step": direct}


def thresholds_on_path(setup: Any, key: tuple[int, ...], ub: float, light: dict[str, Any], tuned: int, n: int,
                       seed: int) -> list[tuple[int, float]]:
    """The `n` thresholds other than `tuned` that the simulator on the live path (measured by `light`) serves
    most with, best first, with their max QPS there: the live path adds a few ms to every query, which can
    move the best threshold away from the one tuned without it."""
    from kairosd.sim import evaluate_config

    path = path_of(light, seed)
    by_t = {t: evaluate_config(replace(setup, policy="threshold", policy_params={"threshold": t}, path=path), key, ub).qps
            for t in THRESHOLD_GRID if t != tuned}
    return sorted(by_t.items(), key=lambda kv: (-kv[1], kv[0]))[:max(n, 0)]


def screen_thresholds(start: Callable[..., Daemon], tuned: tuple[int, Run], candidates: list[tuple[int, float]],
                      bisect: Callable[[Daemon], Run]) -> tuple[int, list[dict[str, Any]]]:
    """The live best threshold: the tuned one's bisection (`tuned` = its threshold and run) beside one
    bisection of each of `candidates` (threshold, simulated QPS on the live path), each on a daemon of its
    own (`start(params, name=...)`). Returns the threshold whose bisection served most (the tuned one on a
    tie) and one record per threshold, the tuned one's first."""
    records: list[dict[str, Any]] = [{"threshold": tuned[0], "tuned": True, "screen_qps": tuned[1][0],
                                      "screen_steps": tuned[1][1]}]
    for t, sim_path in candidates:
        d = start({"threshold": t}, name=f"threshold-{t}")
        try:
            qps, steps = bisect(d)
        finally:
            d.stop()
        records.append({"threshold": t, "sim_qps_on_path": sim_path, "screen_qps": qps, "screen_steps": steps})
        print(f"  threshold {t}: simulator on the live path {sim_path:.1f} q/s, live (one bisection) {qps:.1f} q/s",
              flush=True)
    best = max(records, key=lambda r: r["screen_qps"])  # the first of the highest: the tuned one on a tie
    each = ", ".join(f"{r['threshold']} {r['screen_qps']:.1f}" for r in records)
    print(f"  threshold {best['threshold']} measured (one bisection each: {each} q/s)", flush=True)
    return int(best["threshold"]), records


def resimulate_paths(args: argparse.Namespace) -> int:
    """`--path-only`: the simulator on the live path again for every row and policy of `--out`, from the
    light steps and the margins recorded there (no daemon started)."""
    from kairosd import workload

    path = Path(args.out)
    data = json.loads(path.read_text())
    wl = workload.load_kairos()
    for row in data.get("rows", []):
        setup = workload.sim_setup(wl, row["model"], n_queries=args.queries, seed=args.seed)
        key = tuple(int(row["counts"][t]) for t in wl.types)
        print(row["model"], flush=True)
        for policy, v in row["policies"].items():
            old = v.get("on_live_path")
            if not old:
                continue
            params: dict[str, Any] = {"threshold": row["threshold"]} if policy == "threshold" else {}
            v["on_live_path"] = on_path(setup, policy, params, key, row["ub_qps"], old["light_step"],
                                        old["daemon_margin_ms"], v["live_qps"], args.seed + 7)
            head = v.get("on_head_path")
            if policy == "kairos" and head:
                v["on_head_path"] = on_head_path(setup, key, row["ub_qps"], old["light_step"], head["direct_step"],
                                                 old["daemon_margin_ms"], v["live_qps"], v["sim_qps"], args.seed + 7)
    write_results(data, path)
    return 0


# --------------------------------------------------------------------------------------------------
# One model's policies: measured in groups, the bisections of a group's policies taking turns

Run = tuple[float, list[dict[str, Any]]]  # one bisection: the highest passing rate (q/s) and its steps


def measurement_groups(policies: Sequence[str], together: Sequence[str], paired: bool) -> list[tuple[str, ...]]:
    """The groups `policies` are measured in, in order. With `paired`, the policies also in `together`
    form one group, in the place of the first of them; every other policy is a group of its own, as is
    every policy without `paired`. E.g. (kairos, threshold, fcfs) with (kairos, threshold) together:
    [(kairos, threshold), (fcfs,)]."""
    if len(set(policies)) != len(policies):
        raise ValueError(f"a policy is listed more than once: {', '.join(policies)}")
    joint = tuple(p for p in policies if p in together) if paired else ()
    groups: list[tuple[str, ...]] = []
    for p in policies:
        if p not in joint:
            groups.append((p,))
        elif p == joint[0]:
            groups.append(joint)
    return groups


def alternating_order(policies: Sequence[str], repeats: int) -> list[str]:
    """The order of the bisections of policies measured together, `repeats` each: the policies forward in
    even rounds and backward in odd ones (A B B A A B ...), so that a drift of the machine's speed over
    the rounds weighs on each alike; with an even `repeats` every policy's mean place in the order is
    the same (A at 0, 3; B at 1, 2). One policy: its `repeats` bisections."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, not {repeats}")
    if not policies:
        raise ValueError("no policy to order")
    if len(set(policies)) != len(policies):
        raise ValueError(f"a policy is listed more than once: {', '.join(policies)}")
    order: list[str] = []
    for i in range(repeats):
        order += policies if i % 2 == 0 else list(reversed(policies))
    return order


def per_run_ratios(num_qps: Sequence[float], den_qps: Sequence[float]) -> list[float | None]:
    """Run i of one policy over run i of another (None where the other's is 0): the ratio within each
    pair of bisections that ran side by side."""
    if len(num_qps) != len(den_qps):
        raise ValueError(f"runs to pair differ in number: {len(num_qps)} and {len(den_qps)}")
    return [n / d if d else None for n, d in zip(num_qps, den_qps, strict=True)]


@dataclass(frozen=True)
class TimedRun:
    """One bisection of a policy in its group: its place in the group's order (0: first), its start (s
    after the group's first bisection started), its duration (s) and its result."""

    order: int
    start_s: float
    wall_s: float
    run: Run


def run_in_turn(order: Sequence[str], bisect: Mapping[str, Callable[[], Run]],
                clock: Callable[[], float] = time.monotonic) -> dict[str, list[TimedRun]]:
    """The bisections of `order` one after the other (`bisect[policy]()` each), timed on `clock`; per
    policy, its bisections in the order they ran."""
    missing = sorted(set(order) - set(bisect))
    if missing:
        raise ValueError(f"no bisection given for {', '.join(missing)} (given: {', '.join(bisect)})")
    totals = Counter(order)
    done: dict[str, list[TimedRun]] = {p: [] for p in totals}
    if len(totals) > 1:
        print(f"  bisections in turn: {' '.join(order)}", flush=True)
    t0 = clock()
    for k, policy in enumerate(order):
        runs = done[policy]
        print(f"  [{k + 1}/{len(order)}] {policy}: bisection {len(runs) + 1} of {totals[policy]}", flush=True)
        start = clock()
        result = bisect[policy]()
        runs.append(TimedRun(order=k, start_s=start - t0, wall_s=clock() - start, run=result))
    return done


@dataclass(frozen=True)
class ModelSetup:
    """What every policy of one model is measured on: the fleet, the QoS, the stream and the simulator's
    set-up, the simulator-tuned threshold."""

    model: str
    served: str
    counts: dict[str, int]
    key: tuple[int, ...]  # the counts in the workload's type order, as the simulator takes them
    qos_s: float
    ub: float
    setup: Any  # kairosd.sim.SimSetup
    threshold: int
    threshold_source: str


@dataclass
class PolicyBench:
    """One policy of a model under measurement: its settings and simulator figure, how its daemons start
    and are bisected, and what its daemon measured."""

    policy: str
    params: dict[str, Any]
    sim_qps: float
    start: Callable[..., Daemon]  # a daemon of this policy, given its policy params (and a name)
    bisect: Callable[[Daemon], Run]
    path_step: dict[str, Any] | None = None  # the light step on its daemon (`--path`)
    direct: dict[str, Any] | None = None  # Kairos's direct step beside it
    busy_s: float = 0.0  # the time its daemon's start and light steps took


def model_setup(args: argparse.Namespace, wl: Any, model: str) -> ModelSetup:
    """The fleet `kairosd plan` chooses for `model` at the budget, its stream and its tuned threshold."""
    from kairosd import workload

    counts, ub = plan_fleet(model, args.budget)
    counts = {t: counts.get(t, 0) for t in wl.types}
    setup = workload.sim_setup(wl, model, n_queries=args.queries, seed=args.seed)
    key = tuple(counts[t] for t in wl.types)
    threshold, source = best_threshold(wl, model, counts, setup, ub)
    ms = ModelSetup(model=model, served="ncf" if model == "ncf" else "dlrm", counts=counts, key=key,
                    qos_s=wl.qos_s[model], ub=ub, setup=setup, threshold=threshold, threshold_source=source)
    print(f"{model}: {fleet_label(counts)} (QoS {ms.qos_s * 1e3:g} ms), threshold {threshold}", flush=True)
    return ms


def fleet_label(counts: dict[str, int]) -> str:
    return " + ".join(f"{c}×{t}" for t, c in counts.items() if c)


def policies_of(args: argparse.Namespace, model: str) -> list[str]:
    """The policies measured on `model`: `--policies`, only Kairos on ncf unless `--ncf-all-policies`."""
    return [p for p in args.policies.split(",") if p and (model != "ncf" or p == "kairos" or args.ncf_all_policies)]


def policy_bench(args: argparse.Namespace, ms: ModelSetup, policy: str, workdir: Path) -> PolicyBench:
    """The policy's params, the simulator's max QPS for it on the model's fleet and stream, and how its
    daemons start (in a directory of its own under `workdir`) and are bisected."""
    from kairosd.sim import evaluate_config

    params: dict[str, Any] = {"threshold": ms.threshold} if policy == "threshold" else {}
    # the daemon reserves scheduler.margin_ms in the Kairos matching (policy param margin_s): so does the simulator
    sim_params = {**params, "margin_s": args.margin_ms / 1e3} if policy == "kairos" else params
    sim = evaluate_config(replace(ms.setup, policy=policy, policy_params=sim_params), ms.key, ms.ub)
    sub = workdir / f"{ms.model}-{policy}"
    sub.mkdir(exist_ok=True)
    start = partial(Daemon, sub, ms.served, ms.model, ms.qos_s * 1e3, ms.counts, policy, margin_ms=args.margin_ms,
                    scheduler_extra="\n".join([f'admission = "{args.admission}"', *args.scheduler]), hosted=args.hosted)
    bisect = partial(live_max, served=ms.served, sim_qps=sim.qps, stream=ms.setup.stream, qos_s=ms.qos_s,
                     rel_tol=args.rel_tol, max_steps=args.max_steps, light_qps=0.1 * ms.ub, protocol=args.protocol,
                     generator=args.generator, max_steal=args.max_steal, max_others=args.max_others)
    return PolicyBench(policy=policy, params=params, sim_qps=sim.qps, start=start, bisect=bisect)


def start_policy(args: argparse.Namespace, ms: ModelSetup, pb: PolicyBench, speed_before: float) -> Daemon:
    """Start the policy's daemon, then its light steps (`light_steps`); the daemon."""
    t0 = time.monotonic()
    d = pb.start(pb.params)
    print(f"  {pb.policy}: simulator {pb.sim_qps:.1f} q/s (the machine's speed loop: {speed_before:.2f} ms)", flush=True)
    if args.path and pb.sim_qps > 0:
        light_steps(args, ms, pb, d)
    pb.busy_s += time.monotonic() - t0
    return d


def light_steps(args: argparse.Namespace, ms: ModelSetup, pb: PolicyBench, d: Daemon) -> None:
    """The light step that measures the live path (`pb.path_step`) and, for Kairos, the direct step beside
    it (`pb.direct`)."""
    print("  the live path, at a light load:", flush=True)
    stream = ms.setup.stream
    part = replace(stream, gaps=stream.gaps[:PATH_STEP_QUERIES], batches=stream.batches[:PATH_STEP_QUERIES],
                   noise_u=stream.noise_u[:PATH_STEP_QUERIES])
    spec = {"protocol": args.protocol, "generator": args.generator}
    pb.path_step = step(d, ms.served, PATH_STEP_SHARE * pb.sim_qps, part, ms.qos_s, spec)
    if pb.policy == "kairos":
        pb.direct = direct_step(d, ms.served, part, ms.qos_s, float(pb.path_step.get("service_mean_ms") or 0.0), spec)


def measure_group(args: argparse.Namespace, ms: ModelSetup, group: Sequence[str], repeats: int,
                  workdir: Path) -> dict[str, dict[str, Any]]:
    """The policies of `group` measured together: the machine's speed, every daemon started (each followed
    by its light steps), their `repeats` bisections each in `alternating_order`, the daemons stopped, the
    machine's speed again; then each policy's record (`policy_record`). A group of one policy is that
    policy measured alone."""
    benches = [policy_bench(args, ms, p, workdir) for p in group]
    speed_before = cpu_speed_ms()  # the machine idle: its speed this hour
    screened: dict[str, list[dict[str, Any]] | None] = {}
    with ExitStack() as daemons:
        bisect: dict[str, Callable[[], Run]] = {}
        for pb in benches:
            d = start_policy(args, ms, pb, speed_before)
            daemons.callback(d.stop)
            best, screened[pb.policy] = live_threshold(args, ms, pb, d)
            if best is not None:
                daemons.callback(best.stop)
                d = best
            bisect[pb.policy] = partial(pb.bisect, d)
        # a bisection ends at the first failed step, and a step's p99 over a few thousand queries is
        # itself noisy near the limit: repeated on the same daemon, the median is what is reported
        timed = run_in_turn(alternating_order(group, repeats), bisect)
    speed = {"before": speed_before, "after": cpu_speed_ms()}
    return {pb.policy: policy_record(args, ms, pb, timed[pb.policy], speed, [p for p in group if p != pb.policy],
                                     screened[pb.policy])
            for pb in benches}


def median_qps(runs: Sequence[Run]) -> float:
    return float(np.median([r[0] for r in runs]))


def live_threshold(args: argparse.Namespace, ms: ModelSetup, pb: PolicyBench, d: Daemon,
                   ) -> tuple[Daemon | None, list[dict[str, Any]] | None]:
    """The threshold policy's best threshold live (`--live-thresholds`), found before its measured
    bisections: the tuned threshold's daemon `d` bisected once, and the thresholds the simulator on the live
    path proposes, once each on a daemon of their own (`screen_thresholds`). When another threshold served
    most, `pb.params` becomes it and its daemon is started (returned, to be measured and stopped by the
    caller; `d` is stopped). Returns that daemon (None: `d` stays) and the screening's records (None when
    there was none)."""
    if pb.policy != "threshold" or pb.path_step is None or args.live_thresholds <= 0:
        return None, None
    t0 = time.monotonic()
    tuned = int(pb.params["threshold"])
    candidates = thresholds_on_path(ms.setup, ms.key, ms.ub, pb.path_step, tuned, args.live_thresholds, args.seed + 7)
    found, screened = screen_thresholds(pb.start, (tuned, pb.bisect(d)), candidates, pb.bisect)
    best = None
    if found != tuned:
        d.stop()
        pb.params = {"threshold": found}
        best = pb.start(pb.params, name=f"threshold-{found}-measured")
    pb.busy_s += time.monotonic() - t0
    return best, screened


def policy_record(args: argparse.Namespace, ms: ModelSetup, pb: PolicyBench, timed: list[TimedRun],
                  speed: dict[str, float], paired_with: list[str],
                  screened: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The policy's entry of the model's row, from its bisections (`timed`) and light steps: the threshold
    screening's records (`screened`, `live_threshold`), the median, the CPU figures of a run at the median,
    the simulator on the live path.
    `paired`: the runs reported are the ones that took turns with those of `paired_with`; `wall_s`: the
    time spent on this policy alone (not on the others' bisections between its own)."""
    t0 = time.monotonic()
    runs = [t.run for t in timed]
    live_runs = [r[0] for r in runs]
    live = median_qps(runs)
    steps = [s for _, run_steps in runs for s in run_steps]
    median_run = min(runs, key=lambda r: abs(r[0] - live))[1]  # the CPU figures: a run at the median
    best = max((s for s in median_run if s["ok"]), key=lambda s: s["offered_qps"], default=None)
    on_live_path: dict[str, Any] | None = None
    on_head: dict[str, Any] | None = None
    if pb.path_step is not None:
        # the daemon's own margin where it served best (its reserve follows the measured hop)
        margin_ms = float((best or steps[-1]).get("margin_end_ms", args.margin_ms)) if pb.policy == "kairos" else 0.0
        on_live_path = on_path(ms.setup, pb.policy, pb.params, ms.key, ms.ub, pb.path_step, margin_ms, live, args.seed + 7)
        if pb.policy == "kairos":
            on_head = on_head_path(ms.setup, ms.key, ms.ub, pb.path_step, pb.direct, margin_ms, live, pb.sim_qps,
                                   args.seed + 7)
    sim = pb.sim_qps
    print(f"  {pb.policy}: live {live:.1f} q/s (median of {', '.join(f'{x:.1f}' for x in live_runs)}), simulator "
          f"{sim:.1f} q/s, ratio {live / sim if sim else float('nan'):.3f}", flush=True)
    return {
        "sim_qps": sim, "live_qps": live, "live_over_sim": live / sim if sim else None,
        "live_qps_runs": live_runs, "params": pb.params, "thresholds_screened": screened,
        "on_live_path": on_live_path, "on_head_path": on_head,
        "head_cpu_at_live": best["head_cpu"] if best else None,
        "loadgen_cpu_at_live": best["loadgen_cpu"] if best else None,
        "instances_cpu_at_live": best["instances_cpu"] if best else None,
        "steps": steps, "wall_s": pb.busy_s + sum(t.wall_s for t in timed) + time.monotonic() - t0,
        "cpu_speed_ms": speed,
        "paired": bool(paired_with), "paired_with": paired_with,
        "run_schedule": [{"order": t.order, "start_s": t.start_s, "wall_s": t.wall_s, "qps": t.run[0]} for t in timed],
    }


def kairos_over_threshold(policies: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Kairos's live and simulated max QPS over the threshold policy's, and, when their runs took turns,
    the ratio within each pair of runs (`kairos_over_threshold_live_runs`). Empty without both figures."""
    k, thr = policies.get("kairos"), policies.get("threshold")
    if k is None or thr is None or not thr["live_qps"] or not thr["sim_qps"]:
        return {}
    out: dict[str, Any] = {"kairos_over_threshold_live": k["live_qps"] / thr["live_qps"],
                           "kairos_over_threshold_sim": k["sim_qps"] / thr["sim_qps"]}
    if k["paired"] and thr["paired"] and "threshold" in k["paired_with"]:
        out["kairos_over_threshold_live_runs"] = per_run_ratios(k["live_qps_runs"], thr["live_qps_runs"])
    return out


def measure_model(args: argparse.Namespace, wl: Any, model: str, workdir: Path) -> dict[str, Any]:
    """One model's row: its fleet, then each group of policies (`measurement_groups`) measured in turn."""
    ms = model_setup(args, wl, model)
    row: dict[str, Any] = {"model": model, "served_as": ms.served, "fleet": fleet_label(ms.counts), "counts": ms.counts,
                           "instances": sum(ms.counts.values()), "qos_ms": ms.qos_s * 1e3, "ub_qps": ms.ub,
                           "threshold": ms.threshold, "threshold_source": ms.threshold_source, "policies": {}}
    together = [p for p in args.repeat_policies.split(",") if p]
    for group in measurement_groups(policies_of(args, model), together, args.paired):
        repeats = args.repeats if all(p in together for p in group) else 1
        row["policies"].update(measure_group(args, ms, group, repeats, workdir))
    row.update(kairos_over_threshold(row["policies"]))
    return row


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """The final table: per model and policy, the simulator's max QPS, the live one and their ratios."""
    print(f"\nLive max QPS (p99 at the client <= QoS, {args.queries} queries per step) vs the simulator, same fleet, "
          f"policy and stream; budget {args.budget} $/h")
    hdr = (f"{'model':6} {'fleet':28} {'policy':10} {'sim':>8} {'live':>8} {'live/sim':>8} {'sim@path':>8} "
           f"{'live/it':>8} {'head cpu':>8} {'loadgen':>8}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        for p, v in r["policies"].items():
            hc = f"{v['head_cpu_at_live']:.2f}" if v["head_cpu_at_live"] is not None else "-"
            lc = f"{v['loadgen_cpu_at_live']:.2f}" if v["loadgen_cpu_at_live"] is not None else "-"
            ratio = f"{v['live_over_sim']:.3f}" if v["live_over_sim"] is not None else "-"
            op = v.get("on_live_path") or {}
            sp = f"{op['sim_qps']:.1f}" if op else "-"
            rp = f"{op['live_over_sim']:.3f}" if op and op.get("live_over_sim") is not None else "-"
            print(f"{r['model']:6} {r['fleet']:28} {p:10} {v['sim_qps']:8.1f} {v['live_qps']:8.1f} {ratio:>8} {sp:>8} "
                  f"{rp:>8} {hc:>8} {lc:>8}")
            oh = v.get("on_head_path")
            if oh:
                print(f"{'':6} {'':28} {'':10} the head's share {oh['share']:.2f} of the path: simulator "
                      f"{oh['sim_qps']:.1f} q/s ({oh['over_sim']:.3f} of the path-less one)")
        if "kairos_over_threshold_live" in r:
            print(f"{'':6} {'':28} K/thr: live {r['kairos_over_threshold_live']:.3f}, sim {r['kairos_over_threshold_sim']:.3f}")
        if r.get("kairos_over_threshold_live_runs"):
            runs = ", ".join("-" if x is None else f"{x:.3f}" for x in r["kairos_over_threshold_live_runs"])
            print(f"{'':6} {'':28} K/thr live per pair of runs: {runs}")


def main_bench(args: argparse.Namespace) -> int:
    """The benchmark: the extras (unless `--skip-extras`), then each model's row (`measure_model`), the
    results written after each; the final table."""
    from kairosd import workload

    t_start = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="kairosd-live-"))
    wl = workload.load_kairos()
    out: dict[str, Any] = {
        "benchmark": "live",
        "host": {"python": platform.python_version(), "cpus": len(os.sched_getaffinity(0)),
                 "loadavg_start": os.getloadavg()},
        "settings": {"budget_usd_per_hour": args.budget, "queries_per_step": args.queries, "seed": args.seed,
                     "repeats": args.repeats, "repeat_policies": args.repeat_policies, "paired": args.paired,
                     "margin_ms": args.margin_ms,
                     "criterion": "p99 at the client (after a 10% warm-up) <= QoS, no error, last answer within 2 QoS "
                                  "of the last arrival", "rel_tol": args.rel_tol, "selector": "kairos",
                     "protocol": args.protocol, "generator": args.generator, "hosted": args.hosted,
                     "scheduler": args.scheduler},
    }
    if args.path_only:
        return resimulate_paths(args)
    if args.fidelity_only:
        path = Path(args.out)
        data = json.loads(path.read_text()) if path.is_file() else {"benchmark": "live"}
        print("fidelity", flush=True)
        data["fidelity"] = fidelity(workdir, args.fidelity_queries)
        write_results(data, path)
        return 0
    if not args.skip_extras:
        print("timer precision", flush=True)
        out["timer"] = timer_precision()
        print("load generator ceiling", flush=True)
        out["loadgen_ceiling"] = loadgen_ceiling(workdir, [1000, 2000, 4000, 7000], args.queries, args.protocol,
                                                 args.generator)
        if args.generator == "native":  # the emulated no-op saturates first: each generator against the C one
            from native_loadgen import native_ceiling

            out["loadgen_ceiling_native_noop"] = native_ceiling([5000, 10000, 15000, 20000, 30000], 20000,
                                                                ["python", "native"])
        print("fidelity", flush=True)
        out["fidelity"] = fidelity(workdir, args.fidelity_queries)
    rows = []
    for model in [m for m in args.models.split(",") if m]:
        rows.append(measure_model(args, wl, model, workdir))
        out["rows"] = rows
        write_results(out, args.out)  # after each model: a partial run keeps what it measured
    print_table(rows, args)
    out["total_s"] = time.monotonic() - t_start
    out["host"]["loadavg_end"] = os.getloadavg()
    print(f"total {out['total_s']:.0f} s")
    write_results(out, args.out)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=2.5)
    ap.add_argument("--models", default="rm2,dien,mtwnd,wnd,ncf")
    ap.add_argument("--policies", default="kairos,threshold,fcfs")
    ap.add_argument("--queries", type=int, default=2000, help="queries per live step and per simulated run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rel-tol", type=float, default=0.025, help="bisection stops at this fraction of the sim's QPS")
    ap.add_argument("--max-steps", type=int, default=7)
    ap.add_argument("--repeats", type=int, default=4, help="bisections per model and policy on the same daemon; "
                    "live max QPS is their median; even, the turns of paired policies are balanced (A B B A: each "
                    "policy's mean place the same) (default: %(default)s)")
    ap.add_argument("--repeat-policies", default="kairos,threshold",
                    help="the policies bisected --repeats times; the others once (fcfs's steps take a minute or more "
                    "at its rates) (default: %(default)s)")
    ap.add_argument("--paired", action=argparse.BooleanOptionalAction, default=True,
                    help="the --repeat-policies among --policies measured side by side: their daemons all started, "
                    "their bisections taking turns forward and backward (A B B A A B ...), so that the machine's "
                    "speed drifting weighs on each alike; --no-paired: each policy alone, one after the other "
                    "(default: paired)")
    ap.add_argument("--margin-ms", type=float, default=1.0, help="scheduler.margin_ms of the daemon, and the Kairos "
                    "policy's margin in the simulator (default: the daemon's default, %(default)s)")
    ap.add_argument("--admission", default="off", choices=("off", "qos", "deadline"),
                    help="scheduler.admission of the daemon: off by default, since the simulator refuses nothing "
                         "and a refusal counts as an error")
    ap.add_argument("--protocol", default="http", choices=("grpc", "http"),
                    help="the load generator's protocol to kairosd, and so kairosd's to the instances (default: "
                         "%(default)s, the one that costs the head and the generator least CPU per query)")
    ap.add_argument("--generator", default="native", choices=("python", "native"),
                    help="the open-loop load generator, also in the ceiling run: bench/openloop.py's Python client "
                         "or the C program of bench/native (HTTP only; compiled on first use) (default: %(default)s)")
    ap.add_argument("--process-per-instance", dest="hosted", action="store_false",
                    help="one process per emulated instance, as the local provider starts them (default: all the "
                         "fleet's instances in one emulated host process, kairosd emulated --instance ...)")
    ap.add_argument("--scheduler", action="append", default=[], metavar="KEY = VALUE",
                    help="a TOML line for the daemon's [scheduler] table (repeatable), e.g. 'pipeline = false'")
    ap.add_argument("--no-path", dest="path", action="store_false",
                    help="no light step measuring the live path, and no simulation on it (the 'sim@path' column: the "
                         "simulator given the path measured at a light load, with the daemon's own margin, and the "
                         "margin that serves most there)")
    ap.add_argument("--path-only", action="store_true",
                    help="only the simulator on the live path again, from the light steps recorded in --out")
    ap.add_argument("--max-steal", type=float, default=0.1,
                    help="a bisection step during which the VM lost more than this many cores to the hypervisor's "
                         "steal is measured again (after a pause, up to 4 times in all); negative: never "
                         "(default: %(default)s)")
    ap.add_argument("--max-others", type=float, default=0.3,
                    help="a bisection step during which processes other than the benchmark's (daemon, instances, "
                    "load generator) used more than this many cores is measured again, like a stolen one; negative: "
                    "never (default: %(default)s)")
    ap.add_argument("--live-thresholds", type=int, default=2,
                    help="the threshold policy's best threshold live: before its measured bisections, the tuned "
                    "threshold and this many others (those the simulator on the live path serves most with) are "
                    "bisected once each, and the one that served most is measured (0: the tuned threshold only) "
                    "(default: %(default)s)")
    ap.add_argument("--fidelity-queries", type=int, default=40)
    ap.add_argument("--ncf-all-policies", action="store_true", help="also threshold and fcfs on ncf (head-limited)")
    ap.add_argument("--skip-extras", action="store_true", help="no timer, load generator ceiling or fidelity runs")
    ap.add_argument("--fidelity-only", action="store_true",
                    help="only the fidelity runs, replacing that entry of --out (about two minutes)")
    ap.add_argument("--out", default=str(RESULTS / "live.json"))
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    if args.generator == "native" and args.protocol != "http":
        ap.error("--generator native speaks HTTP only (--protocol http)")
    if args.max_steal < 0:
        args.max_steal = None
    if args.max_others < 0:
        args.max_others = None
    return main_bench(args)


if __name__ == "__main__":
    sys.exit(main())

"""Live Kairos at the paper's scale on one machine: the daemon on emulated instances against its simulator.

For each Kairos model, the fleet `kairosd plan` chooses at the budget (selector "kairos" on the authors'
data) runs as `kairosd emulated` instances (the four AWS types, service times drawn from the authors'
samples) behind a real `kairosd serve`; the repository's dlrm is timed as the model (ncf as ncf). An
open-loop load generator in its own process (`python bench/live.py loadgen`: grpc.aio, pre-serialized
requests, Poisson arrivals on a timerfd, the authors' batch mix; exactly the stream the simulator
evaluates) bisects for the highest rate whose end-to-end p99 at the client, over the queries after a 10%
warm-up, stays within QoS, with no error and no backlog (as the simulator judges a run). The same for
the best threshold policy (from bench/results/dispatch.json when its fleet is this one, else a sweep in
the simulator) and for fcfs. Beside each: the simulator's max QPS for the same fleet, policy, stream and
query count, and the ratio. Per step: the head's CPU (/proc/PID/stat), the instances' and the load
generator's. Also: the load generator's own ceiling against a no-op instance, the emulation's fidelity
at low load on a 16-instance fleet (per type, direct and through kairosd), and the timer's precision.
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
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from results_file import RESULTS, write_results  # noqa: E402  (bench/results_file.py)

from kairosd.backends.process import ChildProcess, free_port, kairosd_argv, wait_ready_sync  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
TYPES = ("g4dn.xlarge", "c5n.2xlarge", "r5n.large", "t3.xlarge")
INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"
WARMUP_FRACTION = 0.1  # as the simulator
LAG_QOS = 2.0  # as the simulator: the last answer may lag the last arrival by at most this many QoS


def cpu_s(pid: int) -> float:
    """utime + stime of a process (/proc/PID/stat fields 14 and 15), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu() -> tuple[float, float, float]:
    """(CPU pressure: µs some task waited for a CPU, /proc/pressure/cpu "some total"; busy and total jiffies
    of all cores, /proc/stat) — deltas over a step give the share of time the machine was short of CPU."""
    psi = 0.0
    try:
        for line in Path("/proc/pressure/cpu").read_text().splitlines():
            if line.startswith("some"):
                psi = float(line.rsplit("total=", 1)[1])
    except OSError:
        pass
    v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = v[3] + v[4]
    return psi, float(sum(v) - idle), float(sum(v))


def children_of(pid: int) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                fields = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


# --------------------------------------------------------------------------------------------------
# The load generator (its own process)


def request_body(model: str, batch: int) -> bytes:
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.utils import np_to_triton_dtype

    from kairosd.modelgen import example_inputs

    request = pb.ModelInferRequest(model_name=model)
    for name, arr in example_inputs(model, batch, seed=0).items():
        request.inputs.add(name=name, datatype=np_to_triton_dtype(arr.dtype), shape=arr.shape)
        request.raw_input_contents.append(arr.tobytes())
    return request.SerializeToString()


async def loadgen(spec: dict[str, Any]) -> dict[str, Any]:
    """Send `spec["batches"][i]` at time cumsum(gaps)[i] / rate (open loop); latency from the scheduled
    arrival to the answer."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb

    from kairosd.backends.emulated import ARRIVED_PARAM, DONE_PARAM, SERVICE_PARAM, TYPE_PARAM, PreciseTimer

    batches = np.asarray(spec["batches"], dtype=np.int64)
    n = len(batches)
    bodies = {int(b): request_body(spec["model"], int(b)) for b in np.unique(batches)}
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    channels = [grpc.aio.insecure_channel(spec["url"], options=options) for _ in range(spec.get("channels", 4))]
    calls = [c.unary_unary(INFER_PATH) for c in channels]
    for call in calls:
        await call(bodies[int(batches[0])], timeout=30)
    timer = PreciseTimer(asyncio.get_running_loop())
    timeout = float(spec["timeout_s"])
    latency = np.full(n, math.inf)
    late = np.zeros(n)
    errors = 0
    done_at = 0.0

    service = np.full(n, math.nan)
    served_by: list[str] = [""] * n
    # per query, monotonic seconds: sent, reached the instance, service ended there, answer received
    sent, arrived, ended, received = (np.full(n, math.nan) for _ in range(4))

    async def one(i: int, at: float) -> None:
        nonlocal errors, done_at
        try:
            sent[i] = time.monotonic()
            reply = await calls[i % len(calls)](bodies[int(batches[i])], timeout=timeout)
            t = time.monotonic()
            latency[i] = t - at
            done_at = max(done_at, t)
            received[i] = t
            params = pb.ModelInferResponse.FromString(reply).parameters
            service[i] = params[SERVICE_PARAM].int64_param / 1e6
            served_by[i] = params[TYPE_PARAM].string_param
            arrived[i] = params[ARRIVED_PARAM].int64_param / 1e9
            ended[i] = params[DONE_PARAM].int64_param / 1e9
        except grpc.aio.AioRpcError:
            errors += 1

    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.monotonic() + 0.05
    arrivals = start + np.cumsum(np.asarray(spec["gaps"], dtype=float)) / float(spec["rate_qps"])
    tasks = []
    for i in range(n):
        at = float(arrivals[i])
        await timer.sleep_until(at)
        late[i] = time.monotonic() - at
        tasks.append(asyncio.ensure_future(one(i, at)))
        if late[i] > 1e-3:
            await asyncio.sleep(0)  # behind schedule: let the sends and answers run before the next one
    sent_s = time.monotonic() - start
    await asyncio.gather(*tasks)
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    for c in channels:
        await c.close()
    timer.close()
    if spec.get("dump"):  # per-query detail for a post-mortem
        np.savez(spec["dump"], arrivals=arrivals - start, latency=latency, service=service, batches=batches,
                 late=late, served_by=np.array(served_by), sent=sent - start, arrived=arrived - start,
                 ended=ended - start, received=received - start)
    first = int(n * WARMUP_FRACTION)
    measured = latency[first:]
    wall = time.monotonic() - start
    # latency beyond the service the instance gave: waiting (in kairosd or at the instance) + every hop
    excess = (latency - service)[first:]
    excess = excess[np.isfinite(excess)]
    by_type = {t: int(sum(1 for x in served_by[first:] if x == t)) for t in sorted(set(served_by[first:])) if t}
    # the latency split by where it was spent: the load generator's lateness, client → head → instance
    # (front end, kairosd's queue, the send), at the instance beyond the service drawn (slot wait, timer),
    # instance → head → client
    parts = {"to_instance": arrived - sent, "at_instance_beyond_service": ended - arrived - service,
             "back_to_client": received - ended}
    split = {}
    for name, v in parts.items():
        v = v[first:][np.isfinite(v[first:])] * 1e3
        if len(v):
            split[name] = {"p50_ms": float(np.percentile(v, 50)), "p99_ms": float(np.percentile(v, 99))}
    return {
        "split": split,
        "service_mean_ms": float(np.nanmean(service)) * 1e3 if np.isfinite(service).any() else None,
        "excess_p50_ms": float(np.percentile(excess, 50)) * 1e3 if len(excess) else None,
        "excess_p99_ms": float(np.percentile(excess, 99)) * 1e3 if len(excess) else None,
        "served_by": by_type,
        "n": n, "errors": errors, "offered_qps": float(spec["rate_qps"]), "sent_qps": n / sent_s,
        "p50_ms": float(np.percentile(measured, 50, method="higher")) * 1e3,
        "p99_ms": float(np.percentile(measured, 99, method="higher")) * 1e3,
        "lag_s": (done_at - float(arrivals[-1])) if done_at else math.inf,
        "send_late_p99_ms": float(np.percentile(late, 99)) * 1e3,
        "loadgen_cpu": (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) / wall,
        "wall_s": wall,
    }


def run_loadgen(spec: dict[str, Any]) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    try:
        out = subprocess.run([sys.executable, __file__, "loadgen", f.name], capture_output=True, text=True, check=True)
    finally:
        os.unlink(f.name)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# --------------------------------------------------------------------------------------------------
# Fleets


def write_profiles(directory: Path, served: str, model: str) -> None:
    from kairosd import workload
    from kairosd.profiles import ProfilePoint, write_csv

    p = workload.load_profiles(models=[model])
    b = p.measured_batches[model]
    write_csv(directory / f"{served}.csv", [ProfilePoint(t, int(x), float(p.mean_s[0, ti, x]), float(p.p99_s[0, ti, x]))
                                           for ti, t in enumerate(p.types) for x in b])


def write_config(path: Path, served: str, model: str, qos_ms: float, fleet: dict[str, int], policy: str,
                 params: dict[str, Any], margin_ms: float = 1.0) -> dict[str, int]:
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    prices = {"g4dn.xlarge": 0.526, "c5n.2xlarge": 0.432, "r5n.large": 0.149, "t3.xlarge": 0.1664}
    types = "\n".join(f'[types."{t}"]\nbackend = "emulated"\nemulate = "{t}"\nprice_usd_per_hour = {prices[t]}\n'
                      for t in TYPES)
    pp = "\n".join(f"{k} = {v}" for k, v in params.items())
    path.write_text(f"""
[server]
host = "127.0.0.1"
http_port = {ports['http']}
grpc_port = {ports['grpc']}
metrics_port = {ports['metrics']}
[scheduler]
policy = "{policy}"
margin_ms = {margin_ms}
[scheduler.policy_params]
{pp}
[models]
repository = "{REPO / 'model_repository'}"
profiles = "{path.parent / 'profiles'}"
[models.qos_ms]
{served} = {qos_ms}
[emulation]
models = {{ {served} = "{model}" }}
{types}
[fleet.static]
{chr(10).join(f'"{t}" = {n}' for t, n in fleet.items() if n)}
""")
    return ports


class Daemon:
    def __init__(self, workdir: Path, served: str, model: str, qos_ms: float, fleet: dict[str, int], policy: str,
                 params: dict[str, Any], margin_ms: float = 1.0) -> None:
        (workdir / "profiles").mkdir(exist_ok=True)
        write_profiles(workdir / "profiles", served, model)
        path = workdir / f"{model}-{policy}.toml"
        for attempt in range(3):
            # an instance's port, free when the provider chose it, can be taken before the instance binds it
            # (other processes on this machine start servers too); the static fleet then fails to start
            self.ports = write_config(path, served, model, qos_ms, fleet, policy, params, margin_ms)
            self.child = ChildProcess(kairosd_argv("serve", "--config", str(path)), name="kairosd-serve").start()
            self.url = f"127.0.0.1:{self.ports['grpc']}"
            try:
                wait_ready_sync(self.url, 120, self.child)
                self._wait_instances(sum(fleet.values()))
                break
            except Exception as exc:
                self.child.stop(10)
                if attempt == 2:
                    raise
                print(f"    daemon start failed ({str(exc).splitlines()[0][:120]}); again", flush=True)
        assert self.child.pid is not None
        self.pid = self.child.pid

    def fleet(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['http']}/kairos/fleet", timeout=5) as r:
            data: dict[str, Any] = json.loads(r.read())
            return data

    def _wait_instances(self, n: int) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if sum(1 for i in self.fleet()["instances"] if i["state"] == "ready") >= n:
                return
            time.sleep(0.2)
        raise RuntimeError(f"fewer than {n} instances ready: {self.fleet()['instances']}")

    def metric_sums(self) -> dict[str, float]:
        """Sums and counts of the head's histograms (all labels added): queue wait, service as the head
        sees it (send to answer), end-to-end latency, dispatch call."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['metrics']}/metrics", timeout=5) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            for name in ("kairos_queue_wait_seconds", "kairos_service_seconds", "kairos_query_latency_seconds",
                         "kairos_dispatch_seconds"):
                for suffix in ("_sum", "_count"):
                    if line.startswith(name + suffix):
                        out[name + suffix] = out.get(name + suffix, 0.0) + float(line.rsplit(" ", 1)[1])
        return out

    def cpu(self) -> tuple[float, float]:
        """(head CPU s, the instances' CPU s)."""
        return cpu_s(self.pid), sum(cpu_s(p) for p in children_of(self.pid))

    def stop(self) -> None:
        self.child.stop(20)


# --------------------------------------------------------------------------------------------------
# Search


def _mean_ms(m0: dict[str, float], m1: dict[str, float], name: str) -> float | None:
    n = m1.get(name + "_count", 0.0) - m0.get(name + "_count", 0.0)
    return (m1.get(name + "_sum", 0.0) - m0.get(name + "_sum", 0.0)) / n * 1e3 if n > 0 else None


def step(d: Daemon, served: str, rate: float, stream: Any, qos_s: float) -> dict[str, Any]:
    m0 = d.metric_sums()
    h0, i0 = d.cpu()
    p0, b0, a0 = machine_cpu()
    t0 = time.monotonic()
    r = run_loadgen({"url": d.url, "model": served, "batches": stream.batches.tolist(), "gaps": stream.gaps.tolist(),
                     "rate_qps": rate, "timeout_s": max(10 * qos_s, 2.0)})
    wall = time.monotonic() - t0
    h1, i1 = d.cpu()
    r["head_cpu"] = (h1 - h0) / wall
    r["instances_cpu"] = (i1 - i0) / wall
    p1, b1, a1 = machine_cpu()
    ncpu = os.cpu_count() or 1
    r["machine_busy_cores"] = (b1 - b0) / (a1 - a0) * ncpu if a1 > a0 else None
    r["cpu_pressure"] = (p1 - p0) / 1e6 / wall  # share of the step some runnable task waited for a core
    if r["machine_busy_cores"] is not None:  # what processes other than this benchmark's used
        r["other_cpu"] = r["machine_busy_cores"] - r["head_cpu"] - r["instances_cpu"] - r["loadgen_cpu"]
    m1 = d.metric_sums()
    # means over the step (warm-up included): the wait in kairosd's queue, and send-to-answer at the head
    # minus the service the instances gave (the hop head → instance → head)
    r["head_wait_mean_ms"] = _mean_ms(m0, m1, "kairos_queue_wait_seconds")
    r["head_service_mean_ms"] = _mean_ms(m0, m1, "kairos_service_seconds")
    r["dispatch_mean_us"] = (_mean_ms(m0, m1, "kairos_dispatch_seconds") or 0.0) * 1e3
    if r["head_service_mean_ms"] is not None and r.get("service_mean_ms") is not None:
        r["hop_mean_ms"] = r["head_service_mean_ms"] - r["service_mean_ms"]
    r["ok"] = bool(r["errors"] == 0 and r["p99_ms"] <= qos_s * 1e3 and r["lag_s"] <= LAG_QOS * qos_s)
    print(f"    {rate:8.1f} q/s: p99 {r['p99_ms']:8.2f} ms (QoS {qos_s * 1e3:g}) errors {r['errors']} "
          f"{'ok' if r['ok'] else 'FAIL'}  head cpu {r['head_cpu']:.2f} instances {r['instances_cpu']:.2f} "
          f"loadgen {r['loadgen_cpu']:.2f} sent {r['sent_qps']:.0f} q/s late p99 {r['send_late_p99_ms']:.2f} ms "
          f"beyond service p50 {r['excess_p50_ms'] or math.nan:.2f} p99 {r['excess_p99_ms'] or math.nan:.2f} ms; "
          f"head: wait {r['head_wait_mean_ms'] or math.nan:.2f} hop {r.get('hop_mean_ms', math.nan):.2f} ms mean, "
          f"dispatch {r['dispatch_mean_us']:.0f} us; machine busy {r['machine_busy_cores'] or math.nan:.2f} cores "
          f"(others {r.get('other_cpu', math.nan):.2f}), cpu pressure {r['cpu_pressure']:.2f}", flush=True)
    return r


def live_max(d: Daemon, served: str, sim_qps: float, stream: Any, qos_s: float, rel_tol: float,
             max_steps: int, light_qps: float) -> tuple[float, list[dict[str, Any]]]:
    """Bracket around the simulator's figure (×1.05 up, then ×0.9 and ×0.85 steps down), then bisect to
    `rel_tol`; when the simulator's figure is 0, one probe at `light_qps`."""
    steps: list[dict[str, Any]] = []

    def ok(rate: float) -> bool:
        r = step(d, served, rate, stream, qos_s)
        steps.append(r)
        return bool(r["ok"])

    lo, hi = 0.0, math.inf
    if sim_qps <= 0:  # the simulator finds no passing rate (fcfs on a fleet with slow types): check a light load
        ok(light_qps)
        return (light_qps if steps[-1]["ok"] else 0.0), steps
    if ok(sim_qps):
        lo = sim_qps
        rate = sim_qps * 1.05
        while len(steps) < max_steps and ok(rate):
            lo, rate = rate, rate * 1.05
        hi = rate
    else:
        hi = sim_qps
        rate = sim_qps * 0.9
        while len(steps) < max_steps:
            if ok(rate):
                lo = rate
                break
            hi, rate = rate, rate * 0.85
    while len(steps) < max_steps and hi - lo > rel_tol * sim_qps and lo > 0:
        mid = 0.5 * (lo + hi)
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo, steps


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


async def _fidelity_all(urls: list[str], model: str, batch: int, n: int, out: list[tuple[str, float, float]]) -> None:
    await asyncio.gather(*(_fidelity_loop(u, model, batch, n, out) for u in urls))


def fidelity(workdir: Path, queries: int) -> dict[str, Any]:
    """At low load on a 16-instance fleet (the rm2 plan + one c5n and one t3; round robin): per type,
    client p50/p99 against the profile's and against the service times drawn for these very queries."""
    from kairosd.emulation import load_cells

    fleet = {"g4dn.xlarge": 1, "c5n.2xlarge": 1, "r5n.large": 13, "t3.xlarge": 1}
    out: dict[str, Any] = {"fleet": fleet, "instances": sum(fleet.values()), "rows": []}
    for served, model, batch in (("dlrm", "rm2", 200), ("ncf", "ncf", 100)):
        sub = workdir / f"fid-{model}"
        sub.mkdir(exist_ok=True)
        d = Daemon(sub, served, model, 1000.0, fleet, "round_robin", {})
        try:
            addr = {}
            for i in d.fleet()["instances"]:
                addr.setdefault(i["type"], i["address"])
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
                    row: dict[str, Any] = {"model": model, "batch": batch, "where": where, "type": t, "n": len(lat)}
                    for q in (50, 99):
                        prof = cells.quantile_s(batch, q / 100) * 1e3
                        got = float(np.percentile(lat, q))
                        row[f"p{q}_client_ms"], row[f"p{q}_profile_ms"] = got, prof
                        row[f"p{q}_drawn_ms"] = float(np.percentile(drawn, q))
                        row[f"p{q}_within"] = abs(got - prof) <= max(0.05 * prof, 0.5)
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


def loadgen_ceiling(workdir: Path, rates: list[float], n: int) -> list[dict[str, Any]]:
    """The load generator against a no-op target: one emulated instance whose service takes ~0 (a profile
    CSV of 1 ns) and 100,000 slots, sent ncf batch-100 queries (the smallest) at `rates`."""
    prof = workdir / "noop"
    prof.mkdir(exist_ok=True)
    (prof / "noop.csv").write_text("instance_type,batch,mean_s,p99_s\nnoop,1000,1e-9,1e-9\n")
    port = free_port()
    child = ChildProcess(kairosd_argv("emulated", "--model-repository", str(REPO / "model_repository"), "--emulate",
                                      "noop", "--data", str(prof), "--models", "ncf=noop", "--port", str(port),
                                      "--slots", "100000"), name="noop").start()
    rows = []
    try:
        wait_ready_sync(f"127.0.0.1:{port}", 60, child)
        assert child.pid is not None
        for rate in rates:
            c0, t0 = cpu_s(child.pid), time.monotonic()
            r = run_loadgen({"url": f"127.0.0.1:{port}", "model": "ncf", "batches": [100] * n,
                             "gaps": np.random.default_rng(0).exponential(1.0, n).tolist(), "rate_qps": rate,
                             "timeout_s": 10.0})
            r["target_cpu"] = (cpu_s(child.pid) - c0) / (time.monotonic() - t0)
            rows.append(r)
            print(f"  loadgen vs no-op: offered {rate:7.0f} sent {r['sent_qps']:7.0f} q/s, p50 {r['p50_ms']:.2f} p99 "
                  f"{r['p99_ms']:.2f} ms, loadgen cpu {r['loadgen_cpu']:.2f}, target cpu {r['target_cpu']:.2f}, "
                  f"errors {r['errors']}", flush=True)
    finally:
        child.stop(10)
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
    cands = make_candidates(inp.bound, inp.prices, budget)
    sel = select("kairos", cands, None)
    return {t: int(c) for t, c in zip(inp.types, sel.config, strict=True)}, float(sel.ub_qps)


def best_threshold(wl: Any, model: str, counts: dict[str, int], setup: Any, ub: float) -> tuple[int, str]:
    from kairosd.sim import evaluate_config

    path = RESULTS / "dispatch.json"
    if path.is_file():
        for row in json.loads(path.read_text()).get("rows", []):
            if row["model"] == model and row["counts"] == [counts[t] for t in wl.types]:
                return int(row["threshold_best"]), "bench/results/dispatch.json (tuned on other seeds)"
    key = tuple(counts[t] for t in wl.types)
    sweep = {t: evaluate_config(replace(setup, policy="threshold", policy_params={"threshold": t}), key, ub).qps
             for t in range(50, 1001, 50)}
    return max(sweep, key=lambda t: sweep[t]), "simulator sweep 50..1000 step 50 on this stream"


def main_bench(args: argparse.Namespace) -> int:
    from kairosd import workload
    from kairosd.sim import evaluate_config

    t_start = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="kairosd-live-"))
    wl = workload.load_kairos()
    out: dict[str, Any] = {
        "benchmark": "live",
        "host": {"python": platform.python_version(), "cpus": len(os.sched_getaffinity(0)),
                 "loadavg_start": os.getloadavg()},
        "settings": {"budget_usd_per_hour": args.budget, "queries_per_step": args.queries, "seed": args.seed,
                     "margin_ms": args.margin_ms,
                     "criterion": "p99 at the client (after a 10% warm-up) <= QoS, no error, last answer within 2 QoS "
                                  "of the last arrival", "rel_tol": args.rel_tol, "selector": "kairos"},
    }
    if not args.skip_extras:
        print("timer precision", flush=True)
        out["timer"] = timer_precision()
        print("load generator ceiling", flush=True)
        out["loadgen_ceiling"] = loadgen_ceiling(workdir, [1000, 2000, 4000, 7000], args.queries)
        print("fidelity", flush=True)
        out["fidelity"] = fidelity(workdir, args.fidelity_queries)
    rows = []
    for model in [m for m in args.models.split(",") if m]:
        served = "ncf" if model == "ncf" else "dlrm"
        counts, ub = plan_fleet(model, args.budget)
        counts = {t: counts.get(t, 0) for t in wl.types}
        key = tuple(counts[t] for t in wl.types)
        qos_s = wl.qos_s[model]
        setup = workload.sim_setup(wl, model, n_queries=args.queries, seed=args.seed)
        threshold, threshold_source = best_threshold(wl, model, counts, setup, ub)
        label = " + ".join(f"{c}×{t}" for t, c in counts.items() if c)
        print(f"{model}: {label} (QoS {qos_s * 1e3:g} ms), threshold {threshold}", flush=True)
        row: dict[str, Any] = {"model": model, "served_as": served, "fleet": label, "counts": counts,
                               "instances": sum(counts.values()), "qos_ms": qos_s * 1e3, "ub_qps": ub,
                               "threshold": threshold, "threshold_source": threshold_source, "policies": {}}
        for policy in [p for p in args.policies.split(",") if p]:
            if model == "ncf" and policy != "kairos" and not args.ncf_all_policies:
                continue
            params: dict[str, Any] = {"threshold": threshold} if policy == "threshold" else {}
            # the daemon reserves scheduler.margin_ms in the Kairos matching (policy param margin_s): so does the simulator
            sim_params = {**params, "margin_s": args.margin_ms / 1e3} if policy == "kairos" else params
            sim = evaluate_config(replace(setup, policy=policy, policy_params=sim_params), key, ub)
            sub = workdir / f"{model}-{policy}"
            sub.mkdir(exist_ok=True)
            t0 = time.monotonic()
            d = Daemon(sub, served, model, qos_s * 1e3, counts, policy, params, args.margin_ms)
            try:
                print(f"  {policy}: simulator {sim.qps:.1f} q/s", flush=True)
                light = 0.1 * ub
                live, steps = live_max(d, served, sim.qps, setup.stream, qos_s, args.rel_tol, args.max_steps, light)
            finally:
                d.stop()
            best = max((s for s in steps if s["ok"]), key=lambda s: s["offered_qps"], default=None)
            row["policies"][policy] = {
                "sim_qps": sim.qps, "live_qps": live, "live_over_sim": live / sim.qps if sim.qps else None,
                "head_cpu_at_live": best["head_cpu"] if best else None,
                "loadgen_cpu_at_live": best["loadgen_cpu"] if best else None,
                "instances_cpu_at_live": best["instances_cpu"] if best else None,
                "steps": steps, "wall_s": time.monotonic() - t0,
            }
            print(f"  {policy}: live {live:.1f} q/s, simulator {sim.qps:.1f} q/s, ratio "
                  f"{live / sim.qps if sim.qps else float('nan'):.3f}", flush=True)
        pol = row["policies"]
        if "kairos" in pol and "threshold" in pol and pol["threshold"]["live_qps"] and pol["threshold"]["sim_qps"]:
            row["kairos_over_threshold_live"] = pol["kairos"]["live_qps"] / pol["threshold"]["live_qps"]
            row["kairos_over_threshold_sim"] = pol["kairos"]["sim_qps"] / pol["threshold"]["sim_qps"]
        rows.append(row)
        out["rows"] = rows
        write_results(out, args.out)  # after each model: a partial run keeps what it measured

    print(f"\nLive max QPS (p99 at the client <= QoS, {args.queries} queries per step) vs the simulator, same fleet, "
          f"policy and stream; budget {args.budget} $/h")
    hdr = f"{'model':6} {'fleet':28} {'policy':10} {'sim':>8} {'live':>8} {'live/sim':>8} {'head cpu':>8} {'loadgen':>8}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        for p, v in r["policies"].items():
            hc = f"{v['head_cpu_at_live']:.2f}" if v["head_cpu_at_live"] is not None else "-"
            lc = f"{v['loadgen_cpu_at_live']:.2f}" if v["loadgen_cpu_at_live"] is not None else "-"
            ratio = f"{v['live_over_sim']:.3f}" if v["live_over_sim"] is not None else "-"
            print(f"{r['model']:6} {r['fleet']:28} {p:10} {v['sim_qps']:8.1f} {v['live_qps']:8.1f} {ratio:>8} {hc:>8} {lc:>8}")
        if "kairos_over_threshold_live" in r:
            print(f"{'':6} {'':28} K/thr: live {r['kairos_over_threshold_live']:.3f}, sim {r['kairos_over_threshold_sim']:.3f}")
    out["total_s"] = time.monotonic() - t_start
    out["host"]["loadavg_end"] = os.getloadavg()
    print(f"total {out['total_s']:.0f} s")
    write_results(out, args.out)
    return 0


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "loadgen":
        import uvloop

        spec = json.loads(Path(sys.argv[2]).read_text())
        print(json.dumps(uvloop.run(loadgen(spec))), flush=True)
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=2.5)
    ap.add_argument("--models", default="rm2,dien,mtwnd,wnd,ncf")
    ap.add_argument("--policies", default="kairos,threshold,fcfs")
    ap.add_argument("--queries", type=int, default=2000, help="queries per live step and per simulated run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rel-tol", type=float, default=0.025, help="bisection stops at this fraction of the sim's QPS")
    ap.add_argument("--max-steps", type=int, default=7)
    ap.add_argument("--margin-ms", type=float, default=1.0, help="scheduler.margin_ms of the daemon, and the Kairos "
                    "policy's margin in the simulator (default: the daemon's default, %(default)s)")
    ap.add_argument("--fidelity-queries", type=int, default=40)
    ap.add_argument("--ncf-all-policies", action="store_true", help="also threshold and fcfs on ncf (head-limited)")
    ap.add_argument("--skip-extras", action="store_true", help="no timer, load generator ceiling or fidelity runs")
    ap.add_argument("--out", default=str(RESULTS / "live.json"))
    return main_bench(ap.parse_args())


if __name__ == "__main__":
    sys.exit(main())

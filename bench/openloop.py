"""Open-loop load against a live `kairosd serve` on emulated instances: the load generator, the daemon, CPU.

The load generator runs in its own process (`python bench/openloop.py loadgen SPEC.json`, started by
`run_loadgen`): grpc.aio, pre-serialized KServe v2 requests, arrivals at `cumsum(gaps) / rate` kept by a
timerfd (open loop: a slow answer never delays the next send). By default every answer's latency is
taken and an RPC error is counted; with `spec["outcomes"]` each query also gets an outcome — "OK",
"WRONG" (an answer whose model name or output shapes are not the request's), the gRPC status name of an
explicit error (e.g. "RESOURCE_EXHAUSTED"), or "LOST" (no answer by its deadline + `grace_s`, or an
exception that is not a status) — and its deadline travels as the `grpc-timeout` header while the client
itself waits `grace_s` longer, so an answer the daemon sends at the deadline is still seen.
`Daemon` starts `kairosd serve` with a generated config over an emulated fleet; `step` runs one load
step against it with the head's, the instances' and the machine's CPU; `live_max` bisects for the
highest rate whose client p99 stays within QoS. Used by bench/live.py and bench/overload.py.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kairosd.backends.emulated import ARRIVED_PARAM, DONE_PARAM, SERVICE_PARAM, TYPE_PARAM  # noqa: E402
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
    v = _cpu_jiffies()
    idle = v[3] + v[4]
    return psi, float(sum(v) - idle), float(sum(v))


def steal_jiffies() -> tuple[float, float]:
    """(steal, total) jiffies of all cores (/proc/stat): time a virtual CPU was ready to run but the
    hypervisor ran something else — counted as busy by `machine_cpu`, yet no process here used it."""
    v = _cpu_jiffies()
    return float(v[7] if len(v) > 7 else 0), float(sum(v))


# the machine's speed as a fixed pure-Python loop takes it: on this VM the same code runs up to a quarter
# slower in some hours than in others with no steal to show for it
SPEED_LOOP = 1_000_000


def cpu_speed_ms(repeats: int = 9) -> float:
    """Wall milliseconds of `SPEED_LOOP` integer additions in a Python loop, the fastest of `repeats`
    (the fastest: another process's burst slows single timings, the VM's slow hours slow them all):
    lower is faster."""
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        total = 0
        for i in range(SPEED_LOOP):
            total += i
        times.append((time.perf_counter() - t0) * 1e3)
    return min(times)


def _cpu_jiffies() -> list[int]:
    """The all-cores `cpu` line of /proc/stat: user, nice, system, idle, iowait, irq, softirq, steal, ..."""
    return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (/proc/PID/status VmRSS), bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class RssSampler:
    """Samples a process's RSS every `period_s` on a thread while in its `with` block: `samples` holds
    (seconds since the start, bytes)."""

    def __init__(self, pid: int, period_s: float = 0.25) -> None:
        self.pid = pid
        self.period_s = period_s
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0 = time.monotonic()
        while True:
            try:
                self.samples.append((time.monotonic() - t0, rss_bytes(self.pid)))
            except OSError:
                return
            if self._stop.wait(self.period_s):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def max_bytes(self) -> int:
        return max((b for _, b in self.samples), default=0)

    def median_bytes(self, after_s: float = 0.0) -> int:
        """The median of the samples taken `after_s` or later (all of them when none is)."""
        later = [b for t, b in self.samples if t >= after_s] or [b for _, b in self.samples]
        return int(np.median(later)) if later else 0


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


def http_request(model: str, batch: int) -> tuple[str, dict[str, str], bytes]:
    """The same query as `request_body` for the KServe v2 REST front end: (path, headers, body), the body a
    JSON header, then the inputs as binary tensors; outputs asked as binary too (Triton's binary-tensor
    extension)."""
    from tritonclient.utils import np_to_triton_dtype

    from kairosd.modelgen import example_inputs

    inputs = example_inputs(model, batch, seed=0)
    header = json.dumps({
        "inputs": [{"name": name, "datatype": np_to_triton_dtype(arr.dtype), "shape": list(arr.shape),
                    "parameters": {"binary_data_size": arr.nbytes}} for name, arr in inputs.items()],
        "parameters": {"binary_data_output": True},
    }).encode()
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}
    return f"/v2/models/{model}/infer", headers, b"".join([header, *(arr.tobytes() for arr in inputs.values())])


def _served_grpc(params: Any) -> tuple[str, int, int, int]:
    """From an emulated instance's ModelInferResponse parameters: (type, service µs, arrived ns, done ns)."""
    return (params[TYPE_PARAM].string_param, params[SERVICE_PARAM].int64_param, params[ARRIVED_PARAM].int64_param,
            params[DONE_PARAM].int64_param)


def _served_http(body: bytes, headers: dict[str, str]) -> tuple[str, int, int, int]:
    """The same from an HTTP infer reply, whose JSON header carries the response parameters."""
    length = int(headers.get("inference-header-content-length", len(body)))
    params = json.loads(body[:length]).get("parameters", {})
    return params[TYPE_PARAM], params[SERVICE_PARAM], params[ARRIVED_PARAM], params[DONE_PARAM]


def where_spent(latency: np.ndarray, service: np.ndarray, served_by: list[str], sent: np.ndarray,
                arrived: np.ndarray, ended: np.ndarray, received: np.ndarray, first: int) -> dict[str, Any]:
    """Over the queries from `first` on: the latency split by where it was spent, p50 and p99 in ms
    (client → head → instance: front end, kairosd's queue, the send; at the instance beyond the service
    drawn: slot wait, timer; instance → head → client), the mean service, the latency beyond the service
    (waiting in kairosd or at the instance, and every hop; p50, p99) and the queries per serving type.
    Times in seconds on one monotonic clock."""
    parts = {"to_instance": arrived - sent, "at_instance_beyond_service": ended - arrived - service,
             "back_to_client": received - ended}
    split = {}
    for name, v in parts.items():
        v = v[first:][np.isfinite(v[first:])] * 1e3
        if len(v):
            split[name] = {"p50_ms": float(np.percentile(v, 50)), "p99_ms": float(np.percentile(v, 99))}
    excess = (latency - service)[first:]
    excess = excess[np.isfinite(excess)]
    return {
        "split": split,
        "service_mean_ms": float(np.nanmean(service)) * 1e3 if np.isfinite(service).any() else None,
        "excess_p50_ms": float(np.percentile(excess, 50)) * 1e3 if len(excess) else None,
        "excess_p99_ms": float(np.percentile(excess, 99)) * 1e3 if len(excess) else None,
        "served_by": dict(sorted(Counter(t for t in served_by[first:] if t).items())),
    }


async def loadgen(spec: dict[str, Any]) -> dict[str, Any]:
    """Send `spec["batches"][i]` at time cumsum(gaps)[i] / rate (open loop); latency from the scheduled
    arrival to the answer. With `spec["outcomes"]`, also each query's outcome (module docstring) and
    their summary (`outcome_summary`). `spec["protocol"]`: "grpc" (4 channels to `url`, default) or
    "http" (keep-alive HTTP/1.1 connections to `http_url`, as many as queries in flight)."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb

    from kairosd.backends.emulated import PreciseTimer

    batches = np.asarray(spec["batches"], dtype=np.int64)
    n = len(batches)
    bodies = {int(b): request_body(spec["model"], int(b)) for b in np.unique(batches)}
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    http = spec.get("protocol", "grpc") == "http"
    channels = [] if http else [grpc.aio.insecure_channel(spec["url"], options=options)
                                for _ in range(spec.get("channels", 4))]
    calls = [c.unary_unary(INFER_PATH) for c in channels]
    outcomes = bool(spec.get("outcomes"))
    if http and outcomes:
        raise ValueError("outcomes are checked on gRPC only")
    if http:
        from kairosd.backends.http_wire import HttpWireError, HttpWirePool

        pool = HttpWirePool(spec["http_url"])
        http_bodies = {int(b): http_request(spec["model"], int(b)) for b in np.unique(batches)}
        reply = await pool.post(*http_bodies[int(batches[0])], 30)
        if reply.status != 200:
            raise RuntimeError(f"HTTP {reply.status} from {spec['http_url']}: {reply.body[:300]!r}")
    for call in calls:
        try:
            await call(bodies[int(batches[0])], timeout=30)
        except grpc.aio.AioRpcError:
            if not outcomes:  # an overloaded daemon may refuse a first query: counted with the others
                raise
    loop = asyncio.get_running_loop()
    timer = PreciseTimer(loop)
    timeout = float(spec["timeout_s"])
    grace = float(spec.get("grace_s", 1.0))
    # the deadline as the gRPC header (grpc-timeout, milliseconds) with no client-side deadline: the
    # client waits `grace` longer itself, then cancels and counts the query lost
    deadline_md = (("grpc-timeout", f"{max(1, round(timeout * 1e3))}m"),)
    outcome: list[str] = [""] * n
    check = ResponseCheck(spec["model"]) if outcomes else None
    latency = np.full(n, math.inf)
    late = np.zeros(n)
    errors = 0
    done_at = 0.0

    service = np.full(n, math.nan)
    served_by: list[str] = [""] * n
    # per query, monotonic seconds: sent, reached the instance, service ended there, answer received
    sent, arrived, ended, received = (np.full(n, math.nan) for _ in range(4))

    def answered(i: int, at: float) -> None:
        """Query i's answer is in: its latency from its scheduled arrival `at`."""
        nonlocal done_at
        t = time.monotonic()
        latency[i] = t - at
        done_at = max(done_at, t)
        received[i] = t

    def served(i: int, how: tuple[str, int, int, int]) -> None:
        """The type that served query i, the service it drew (µs), when it reached and left the instance (ns)."""
        served_by[i], service_us, arrived_ns, done_ns = how
        service[i], arrived[i], ended[i] = service_us / 1e6, arrived_ns / 1e9, done_ns / 1e9

    async def one(i: int, at: float) -> None:
        nonlocal errors
        try:
            sent[i] = time.monotonic()
            reply = await calls[i % len(calls)](bodies[int(batches[i])], timeout=timeout)
            answered(i, at)
            served(i, _served_grpc(pb.ModelInferResponse.FromString(reply).parameters))
        except grpc.aio.AioRpcError:
            errors += 1

    async def one_http(i: int, at: float) -> None:
        nonlocal errors
        try:
            sent[i] = time.monotonic()
            reply = await pool.post(*http_bodies[int(batches[i])], timeout)
        except (HttpWireError, TimeoutError):
            errors += 1
            return
        if reply.status != 200:
            errors += 1
            return
        answered(i, at)
        served(i, _served_http(reply.body, reply.headers))

    async def one_outcome(i: int, at: float) -> None:
        nonlocal errors
        assert check is not None
        sent[i] = time.monotonic()
        call = calls[i % len(calls)](bodies[int(batches[i])], metadata=deadline_md)
        gave_up = loop.call_later(timeout + grace, call.cancel)
        try:
            reply = await call
        except asyncio.CancelledError:
            if not call.cancelled():
                raise
            outcome[i] = "LOST"  # no answer by the deadline + grace
            return
        except grpc.aio.AioRpcError as exc:
            errors += 1
            latency[i] = time.monotonic() - at
            outcome[i] = exc.code().name
            return
        except Exception:  # noqa: BLE001 - anything that is not a status is a lost query
            outcome[i] = "LOST"
            return
        finally:
            gave_up.cancel()
        answered(i, at)
        response = pb.ModelInferResponse.FromString(reply)
        outcome[i] = "OK" if check.ok(response, int(batches[i])) else "WRONG"
        served(i, _served_grpc(response.parameters))

    send = one_outcome if outcomes else one_http if http else one
    # no garbage collection while queries are sent and answered: a collection of the per-query objects
    # would pause the generator for milliseconds in the middle of the measurement
    gc.collect()
    gc.freeze()
    gc.disable()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.monotonic() + 0.05
    arrivals = start + np.cumsum(np.asarray(spec["gaps"], dtype=float)) / float(spec["rate_qps"])
    tasks = []
    for i in range(n):
        at = float(arrivals[i])
        await timer.sleep_until(at)
        late[i] = time.monotonic() - at
        tasks.append(asyncio.ensure_future(send(i, at)))
        if late[i] > 1e-3:
            await asyncio.sleep(0)  # behind schedule: let the sends and answers run before the next one
    sent_s = time.monotonic() - start
    # only the queries still in flight: a gather over every task would hold the loop for milliseconds
    # while the last answers arrive, and delay them
    await asyncio.gather(*(t for t in tasks if not t.done()))
    gc.enable()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    for c in channels:
        await c.close()
    if http:
        pool.close()
    timer.close()
    if spec.get("dump"):  # per-query detail for a post-mortem
        more = {"outcome": np.array(outcome)} if outcomes else {}
        np.savez(spec["dump"], arrivals=arrivals - start, latency=latency, service=service, batches=batches,
                 late=late, served_by=np.array(served_by), sent=sent - start, arrived=arrived - start,
                 ended=ended - start, received=received - start, **more)
    first = int(n * WARMUP_FRACTION)
    measured = latency[first:]
    if outcomes:  # explicit errors have a latency too: p50/p99 stay over the answers (inf: none)
        has_answer = np.array([o in ("OK", "WRONG") for o in outcome])
        measured = np.where(has_answer, latency, math.inf)[first:]
    wall = time.monotonic() - start
    extra: dict[str, Any] = {}
    if outcomes:
        extra["outcomes"] = outcome_summary(outcome, latency, float(spec["qos_s"]), n / float(spec["rate_qps"]), late)
    return {
        **extra,
        **where_spent(latency, service, served_by, sent, arrived, ended, received, first),
        "n": n, "errors": errors, "offered_qps": float(spec["rate_qps"]), "sent_qps": n / sent_s,
        "p50_ms": float(np.percentile(measured, 50, method="higher")) * 1e3,
        "p99_ms": float(np.percentile(measured, 99, method="higher")) * 1e3,
        "lag_s": (done_at - float(arrivals[-1])) if done_at else math.inf,
        "send_late_p99_ms": float(np.percentile(late, 99)) * 1e3,
        "loadgen_cpu": (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) / wall,
        "wall_s": wall,
    }


class ResponseCheck:
    """Whether an answer is the request's: its model name, and each output's name, datatype, shape
    `[batch, *dims]` (-1 dims as the emulated instance fills them: 1) and byte length, from config.pbtxt."""

    def __init__(self, model: str) -> None:
        from kairosd.repository import load_repository

        self.model = model
        self.spec = load_repository(REPO / "model_repository", only=[model])[model]

    def ok(self, response: Any, batch: int) -> bool:
        if response.model_name != self.model or len(response.outputs) != len(self.spec.outputs):
            return False
        if len(response.raw_output_contents) != len(response.outputs):
            return False
        for out, raw in zip(response.outputs, response.raw_output_contents, strict=True):
            t = self.spec.output(out.name)
            if t is None or out.datatype != t.datatype:
                return False
            shape = [batch, *(1 if d == -1 else d for d in t.dims)]
            if list(out.shape) != shape or len(raw) != int(np.prod(shape)) * t.np_dtype.itemsize:
                return False
        return True


def outcome_summary(outcome: list[str], latency: np.ndarray, qos_s: float, span_s: float,
                    late: np.ndarray | None = None) -> dict[str, Any]:
    """Counts by outcome over every query (no warm-up left out), answers within QoS and late, the
    latency of the answered (admitted) queries and of the explicit errors, and goodput: answers within
    QoS per second of the arrival schedule's span. The latencies run from each query's scheduled
    arrival; with `late` (how late each was sent) also from its send (`*_sent_*`): what a client that
    sent it then saw, without the generator's own lateness."""
    counts: dict[str, int] = {}
    for o in outcome:
        counts[o] = counts.get(o, 0) + 1
    ok = np.array([o == "OK" for o in outcome])
    err = np.array([o not in ("OK", "WRONG", "LOST") for o in outcome])
    lat_ok = latency[ok] * 1e3
    lat_err = latency[err] * 1e3
    within = int(np.sum(lat_ok <= qos_s * 1e3))

    def pct(v: np.ndarray, q: float) -> float | None:
        return float(np.percentile(v, q, method="higher")) if len(v) else None

    refused = counts.get("RESOURCE_EXHAUSTED", 0)
    sent: dict[str, float | None] = {}
    if late is not None:
        from_send = (latency - late) * 1e3
        sent = {"admitted_sent_p99_ms": pct(from_send[ok], 99),
                "refused_sent_p50_ms": pct(from_send[np.array([o == "RESOURCE_EXHAUSTED" for o in outcome])], 50)}
    return {
        **sent,
        "sent": len(outcome), "by_outcome": counts, "ok": int(ok.sum()), "ok_within_qos": within,
        "ok_late": int(ok.sum()) - within, "refused": refused, "wrong": counts.get("WRONG", 0),
        "lost": counts.get("LOST", 0), "other_errors": int(err.sum()) - refused,
        "admitted_p50_ms": pct(lat_ok, 50), "admitted_p99_ms": pct(lat_ok, 99),
        "error_p50_ms": pct(lat_err, 50), "error_p99_ms": pct(lat_err, 99),
        "span_s": span_s, "goodput_qps": within / span_s if span_s > 0 else 0.0,
    }


def run_loadgen(spec: dict[str, Any]) -> dict[str, Any]:
    """One load step in a process of its own: `loadgen(spec)` in Python, or with `spec["generator"]` =
    "native" the C program of bench/native (bench/native_loadgen.py; HTTP only)."""
    if spec.get("generator", "python") == "native":
        from native_loadgen import run_native  # bench/native_loadgen.py

        return run_native(spec)
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
                 params: dict[str, Any], margin_ms: float = 1.0, scheduler_extra: str = "",
                 extra_toml: str = "") -> dict[str, int]:
    """A config on free ports: `fleet` of emulated types timed by the authors' `model` samples, serving
    `served`; `scheduler_extra` (TOML lines) goes into [scheduler], `extra_toml` (tables) at the end."""
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
{scheduler_extra}
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
{extra_toml}
""")
    return ports


class Daemon:
    """`kairosd serve` on a generated config (`write_config`), started once its fleet is ready."""

    def __init__(self, workdir: Path, served: str, model: str, qos_ms: float, fleet: dict[str, int], policy: str,
                 params: dict[str, Any], margin_ms: float = 1.0, scheduler_extra: str = "",
                 extra_toml: str = "", name: str = "", hosted: bool = False) -> None:
        """`hosted`: the instances run in one `kairosd emulated --instance ...` process started here (an
        emulated host: one event loop for all), given to the daemon as `[[fleet.endpoints]]`; else the
        daemon starts one process per instance (`[fleet.static]`)."""
        (workdir / "profiles").mkdir(exist_ok=True)
        write_profiles(workdir / "profiles", served, model)
        path = workdir / f"{name or f'{model}-{policy}'}.toml"
        self.host: ChildProcess | None = None
        static, endpoints = (({}, self._start_host(served, model, fleet)) if hosted else (fleet, ""))
        try:
            self._start(path, lambda: write_config(path, served, model, qos_ms, static, policy, params, margin_ms,
                                                   scheduler_extra, extra_toml + endpoints), sum(fleet.values()))
        except BaseException:
            if self.host is not None:
                self.host.stop(10)
            raise

    def _start_host(self, served: str, model: str, fleet: dict[str, int]) -> str:
        """Start the emulated host for `fleet`; its instances as `[[fleet.endpoints]]` TOML."""
        hosted = [(t, free_port(), free_port()) for t in TYPES for _ in range(fleet.get(t, 0))]
        argv = kairosd_argv("emulated", "--model-repository", str(REPO / "model_repository"), "--data", "kairos",
                            "--models", f"{served}={model}",
                            *(x for t, g, h in hosted for x in ("--instance", f"{t}:{g}:{h}")))
        self.host = ChildProcess(argv, name="emulated-host").start()
        for _, g, _ in hosted:
            wait_ready_sync(f"127.0.0.1:{g}", 60, self.host)
        return "".join(f'\n[[fleet.endpoints]]\ntype = "{t}"\naddress = "127.0.0.1:{g}"\n'
                       f'http_address = "127.0.0.1:{h}"\n' for t, g, h in hosted)

    @classmethod
    def from_config(cls, path: Path, write: Callable[[], dict[str, int]], instances: int) -> Daemon:
        """A daemon on the config `write()` puts at `path` (returning its ports: http, grpc, metrics),
        started once `instances` instances are ready."""
        d = cls.__new__(cls)
        d.host = None
        d._start(path, write, instances)
        return d

    def _start(self, path: Path, write: Callable[[], dict[str, int]], instances: int) -> None:
        for attempt in range(3):
            # an instance's port, free when the provider chose it, can be taken before the instance binds it
            # (other processes on this machine start servers too); the static fleet then fails to start
            self.ports = write()
            self.child = ChildProcess(kairosd_argv("serve", "--config", str(path)), name="kairosd-serve").start()
            self.url = f"127.0.0.1:{self.ports['grpc']}"
            self.http_url = f"127.0.0.1:{self.ports['http']}"
            try:
                wait_ready_sync(self.url, 120, self.child)
                self._wait_instances(instances)
                break
            except Exception as exc:
                self.child.stop(10)
                if attempt == 2:
                    raise
                print(f"    daemon start failed ({str(exc).splitlines()[0][:120]}); again", flush=True)
        assert self.child.pid is not None
        self.pid = self.child.pid

    def fleet(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['metrics']}/kairos/fleet", timeout=5) as r:
            data: dict[str, Any] = json.loads(r.read())
            return data

    def _wait_instances(self, n: int) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if sum(1 for i in self.fleet()["instances"] if i["state"] == "ready") >= n:
                    return
            except OSError:  # the HTTP front end is still starting
                pass
            time.sleep(0.2)
        raise RuntimeError(f"fewer than {n} instances ready: {self.fleet()['instances']}")

    def metric_sums(self) -> dict[str, float]:
        """Sums and counts of the head's histograms (all labels added): queue wait, service as the head
        sees it (send to answer), end-to-end latency, dispatch call; the matching's margin now
        (`kairos_dispatch_margin_seconds`); the queries sent, and those pipelined (counters)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['metrics']}/metrics", timeout=5) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("kairos_dispatch_margin_seconds "):
                out["kairos_dispatch_margin_seconds"] = float(line.rsplit(" ", 1)[1])
            for counter in ("kairos_dispatch_matched_total", "kairos_dispatch_pipelined_total"):
                if line.startswith(counter + " "):
                    out[counter] = float(line.rsplit(" ", 1)[1])
            for name in ("kairos_queue_wait_seconds", "kairos_service_seconds", "kairos_query_latency_seconds",
                         "kairos_dispatch_seconds"):
                for suffix in ("_sum", "_count"):
                    if line.startswith(name + suffix):
                        out[name + suffix] = out.get(name + suffix, 0.0) + float(line.rsplit(" ", 1)[1])
        return out

    def rss_bytes(self) -> int:
        return rss_bytes(self.pid)

    def cpu(self) -> tuple[float, float]:
        """(head CPU s, the instances' CPU s)."""
        instances = [self.host.pid] if self.host is not None and self.host.pid is not None else children_of(self.pid)
        return cpu_s(self.pid), sum(cpu_s(p) for p in instances)

    def stop(self) -> None:
        self.child.stop(20)
        if self.host is not None:
            self.host.stop(20)


# --------------------------------------------------------------------------------------------------
# Search


def _mean_ms(m0: dict[str, float], m1: dict[str, float], name: str) -> float | None:
    n = m1.get(name + "_count", 0.0) - m0.get(name + "_count", 0.0)
    return (m1.get(name + "_sum", 0.0) - m0.get(name + "_sum", 0.0)) / n * 1e3 if n > 0 else None


def step(d: Daemon, served: str, rate: float, stream: Any, qos_s: float,
         spec_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """One load step of `stream` at `rate` (`spec_extra`: more load generator settings, e.g. outcomes),
    with the CPU of the head, the instances, the load generator and the machine."""
    m0 = d.metric_sums()
    h0, i0 = d.cpu()
    p0, b0, a0 = machine_cpu()
    s0, z0 = steal_jiffies()
    t0 = time.monotonic()
    r = run_loadgen({"url": d.url, "http_url": d.http_url, "model": served, "batches": stream.batches.tolist(),
                     "gaps": stream.gaps.tolist(),
                     "rate_qps": rate, "timeout_s": max(10 * qos_s, 2.0), **(spec_extra or {})})
    wall = time.monotonic() - t0
    h1, i1 = d.cpu()
    r["head_cpu"] = (h1 - h0) / wall
    r["instances_cpu"] = (i1 - i0) / wall
    p1, b1, a1 = machine_cpu()
    s1, z1 = steal_jiffies()
    ncpu = os.cpu_count() or 1
    r["machine_busy_cores"] = (b1 - b0) / (a1 - a0) * ncpu if a1 > a0 else None
    r["steal_cores"] = (s1 - s0) / (z1 - z0) * ncpu if z1 > z0 else 0.0  # virtual CPUs held back by the host
    r["cpu_pressure"] = (p1 - p0) / 1e6 / wall  # share of the step some runnable task waited for a core
    if r["machine_busy_cores"] is not None:  # what processes other than this benchmark's used (steal apart)
        r["other_cpu"] = (r["machine_busy_cores"] - r["steal_cores"] - r["head_cpu"] - r["instances_cpu"]
                          - r["loadgen_cpu"])
    m1 = d.metric_sums()
    # means over the step (warm-up included): the wait in kairosd's queue, and send-to-answer at the head
    # minus the service the instances gave (the hop head → instance → head)
    r["head_wait_mean_ms"] = _mean_ms(m0, m1, "kairos_queue_wait_seconds")
    r["head_service_mean_ms"] = _mean_ms(m0, m1, "kairos_service_seconds")
    r["dispatch_mean_us"] = (_mean_ms(m0, m1, "kairos_dispatch_seconds") or 0.0) * 1e3
    r["margin_end_ms"] = m1.get("kairos_dispatch_margin_seconds", math.nan) * 1e3  # the matching's reserve at the end
    sent = m1.get("kairos_dispatch_matched_total", 0.0) - m0.get("kairos_dispatch_matched_total", 0.0)
    r["pipelined_share"] = ((m1.get("kairos_dispatch_pipelined_total", 0.0)
                             - m0.get("kairos_dispatch_pipelined_total", 0.0)) / sent if sent else None)
    if r["head_service_mean_ms"] is not None and r.get("service_mean_ms") is not None:
        r["hop_mean_ms"] = r["head_service_mean_ms"] - r["service_mean_ms"]
    r["ok"] = bool(r["errors"] == 0 and r["p99_ms"] <= qos_s * 1e3 and r["lag_s"] <= LAG_QOS * qos_s)
    print(f"    {rate:8.1f} q/s: p99 {r['p99_ms']:8.2f} ms (QoS {qos_s * 1e3:g}) errors {r['errors']} "
          f"{'ok' if r['ok'] else 'FAIL'}  head cpu {r['head_cpu']:.2f} instances {r['instances_cpu']:.2f} "
          f"loadgen {r['loadgen_cpu']:.2f} sent {r['sent_qps']:.0f} q/s late p99 {r['send_late_p99_ms']:.2f} ms "
          f"beyond service p50 {r['excess_p50_ms'] or math.nan:.2f} p99 {r['excess_p99_ms'] or math.nan:.2f} ms; "
          f"head: wait {r['head_wait_mean_ms'] or math.nan:.2f} hop {r.get('hop_mean_ms', math.nan):.2f} ms mean, "
          f"dispatch {r['dispatch_mean_us']:.0f} us, margin {r['margin_end_ms']:.2f} ms, "
          f"pipelined {r['pipelined_share'] if r['pipelined_share'] is not None else math.nan:.2f}; "
          f"machine busy {r['machine_busy_cores'] or math.nan:.2f} cores "
          f"(others {r.get('other_cpu', math.nan):.2f}, steal {r['steal_cores']:.2f}), "
          f"cpu pressure {r['cpu_pressure']:.2f}", flush=True)
    return r


# a step during which the hypervisor held back more than `max_steal` cores, or processes outside the
# benchmark used more than `max_others`, is measured again, after this pause, at most this many times in
# all (the last measurement stands, marked `stolen` / `crowded`)
STEAL_PAUSE_S = 5.0
STEAL_ATTEMPTS = 4


def disturbance(r: dict[str, Any], max_steal: float | None, max_others: float | None) -> str | None:
    """Why step `r` measured more than the daemon (None: it did not): the VM lost more than `max_steal` cores
    to the hypervisor's steal, or processes other than the benchmark's used more than `max_others` cores."""
    if max_steal is not None and r["steal_cores"] > max_steal:
        return f"steal {r['steal_cores']:.2f} cores > {max_steal:g}"
    others = r.get("other_cpu")
    if max_others is not None and others is not None and others > max_others:
        return f"other processes {others:.2f} cores > {max_others:g}"
    return None


def step_unstolen(d: Daemon, served: str, rate: float, stream: Any, qos_s: float, spec_extra: dict[str, Any],
                  max_steal: float | None, max_others: float | None = None) -> dict[str, Any]:
    """`step`, measured again (up to `STEAL_ATTEMPTS` in all) while the step was disturbed (`disturbance`: the
    VM lost more than `max_steal` cores to steal, or other processes used more than `max_others`): such a step
    measures the hypervisor's other tenants, or the machine's other work, as much as the daemon. The step
    kept records the steal and the others' CPU of the attempts set aside (`stolen_attempts`,
    `crowded_attempts`) and whether it was disturbed itself (`stolen`, `crowded`)."""
    set_aside: list[dict[str, Any]] = []
    while True:
        r = step(d, served, rate, stream, qos_s, spec_extra)
        why = disturbance(r, max_steal, max_others)
        if why is None or len(set_aside) + 1 >= STEAL_ATTEMPTS:
            r["stolen"] = max_steal is not None and r["steal_cores"] > max_steal
            r["crowded"] = why is not None and not r["stolen"]
            r["stolen_attempts"] = [x["steal_cores"] for x in set_aside]
            r["crowded_attempts"] = [x.get("other_cpu") for x in set_aside]
            return r
        set_aside.append(r)
        print(f"    ({why}: measured again)", flush=True)
        time.sleep(STEAL_PAUSE_S)


def bracket_max(ok: Callable[[float], bool], sim_qps: float, rel_tol: float, max_steps: int,
                light_qps: float) -> float:
    """The highest rate `ok` passes, found from the simulator's figure: ×1.05 steps up while it passes;
    else ×0.9, then ×0.85 steps down until one passes or the rate falls below `light_qps` (0 then); then
    bisection to `rel_tol` × `sim_qps`. `max_steps` bounds the calls but for the way down, which takes
    as many as it needs and leaves the bisection at least two. When `sim_qps` is 0, one probe at
    `light_qps`. E.g. a daemon that passes up to 500 q/s, sim 1,000: 1,000, 900, 765, 650.3 and 552.8
    fail, 469.8 passes, then 511.3 fails and 490.5 passes: 490.5."""
    calls = 0

    def probe(rate: float) -> bool:
        nonlocal calls
        calls += 1
        return ok(rate)

    if sim_qps <= 0:  # the simulator finds no passing rate (fcfs on a fleet with slow types): check a light load
        return light_qps if probe(light_qps) else 0.0
    lo, hi = 0.0, math.inf
    if probe(sim_qps):
        lo = sim_qps
        rate = sim_qps * 1.05
        while calls < max_steps and probe(rate):
            lo, rate = rate, rate * 1.05
        hi = rate
    else:
        hi, rate = sim_qps, sim_qps * 0.9
        while rate >= light_qps:
            if probe(rate):
                lo = rate
                break
            hi, rate = rate, rate * 0.85
    limit = max(max_steps, calls + 2)
    while calls < limit and hi - lo > rel_tol * sim_qps and lo > 0:
        mid = 0.5 * (lo + hi)
        if probe(mid):
            lo = mid
        else:
            hi = mid
    return lo


def live_max(d: Daemon, served: str, sim_qps: float, stream: Any, qos_s: float, rel_tol: float,
             max_steps: int, light_qps: float, protocol: str = "grpc",
             generator: str = "python", max_steal: float | None = None,
             max_others: float | None = None) -> tuple[float, list[dict[str, Any]]]:
    """`bracket_max` of the daemon's steps (`step_unstolen`) on `stream`, and the steps. `generator`:
    "python" or "native" (`run_loadgen`). `max_steal`, `max_others` (cores): see `step_unstolen`."""
    steps: list[dict[str, Any]] = []

    def ok(rate: float) -> bool:
        r = step_unstolen(d, served, rate, stream, qos_s, {"protocol": protocol, "generator": generator}, max_steal,
                          max_others)
        steps.append(r)
        return bool(r["ok"])

    return bracket_max(ok, sim_qps, rel_tol, max_steps, light_qps), steps


def main() -> int:
    """`python bench/openloop.py loadgen SPEC.json`: one load step; its result as one JSON line."""
    if len(sys.argv) == 3 and sys.argv[1] == "loadgen":
        import uvloop

        spec = json.loads(Path(sys.argv[2]).read_text())
        print(json.dumps(uvloop.run(loadgen(spec))), flush=True)
        return 0
    print(main.__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

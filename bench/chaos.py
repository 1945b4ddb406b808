"""Chaos drill: a real client load on `kairosd serve` while its instance processes are killed, frozen and stopped.

A daemon over a local fleet — emulated instances (the Kairos AWS types, dlrm timed as the authors'
rm2; CPU-light, so 8+ fit on 2 cores) or, with `--real`, `ort-1t` ONNX Runtime workers — serves a
tritonclient grpc.aio load: `--concurrency` closed loops, or Poisson arrivals at `--rate` (open loop).
Every answer is checked: the model name, each output's name, datatype and shape `[batch, *dims]` from
config.pbtxt, and its values (zeros from an emulated instance; ONNX Runtime run here on the same inputs
for a real worker). Each query carries its deadline as the `grpc-timeout` header and the client waits
`--grace-s` longer itself, so every query ends in exactly one of: answered correctly, wrong, an explicit
error (by gRPC status code), or lost (no answer by the deadline + grace, or an exception that is not a
status). First a calm phase (`--calm-s`, no chaos: the baseline), then `--duration` seconds during which
a chaos thread, every `--interval-s` (±30%), picks a READY instance (from /kairos/fleet; its process
found among the daemon's children by its `--port`) and does the next action of `--actions` in turn:
  kill  SIGKILL: the fleet notices the exit and launches a replacement (time to a full fleet recorded)
  stop  SIGSTOP for `--stop-s`, then SIGCONT (time until the daemon has sent it a query again recorded)
  term  SIGTERM: the instance drains what it holds and exits; the fleet replaces it
Prints a table per phase (sent, correct, errors by code, wrong, lost, p50/p99/max latency of answers,
latency of errors), the events, and the chaos phase's p99 and throughput against the calm phase's.
Writes bench/results/chaos.json. Exit status 1 when any query was lost or wrong.

    python bench/chaos.py [--duration 60] [--real] [--concurrency 8 | --rate 100] [--actions kill,stop,term]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import platform
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from openloop import TYPES, Daemon, ResponseCheck, children_of, machine_cpu  # noqa: E402
from results_file import RESULTS, write_results  # noqa: E402  (bench/results_file.py)

from kairosd.backends.process import free_port  # noqa: E402

EMULATED_MODEL = ("dlrm", "rm2", 350.0)  # served model, the authors' model that times it, QoS ms
REAL_QOS_MS = {"dlrm": 25.0, "ncf": 10.0}  # configs/local.toml
# batch sizes the client sends: the authors' measured range for the emulated fleet, small for real workers
EMULATED_BATCHES = (10, 50, 100, 200, 400)
REAL_BATCHES = (1, 4, 16, 64)
ACTIONS = ("kill", "stop", "term")
OK, WRONG, LOST = "OK", "WRONG", "LOST"
TIMELINE_S = 5  # seconds per window of the printed timeline
SETTLE_S = 3.0  # load time an action needs after it (or after SIGCONT) for its effect to be seen


# --------------------------------------------------------------------------------------------------
# The daemon and its instances


def parse_fleet(text: str) -> dict[str, int]:
    """"g4dn.xlarge=2,r5n.large=6" → {type: count}."""
    out = {}
    for part in filter(None, text.split(",")):
        name, _, count = part.partition("=")
        out[name.strip()] = int(count)
    return out


def start_emulated(workdir: Path, fleet: dict[str, int], scheduler_extra: str = "") -> Daemon:
    """kairosd over emulated instances serving dlrm (timed as rm2); the fleet reconciles every second."""
    unknown = sorted(set(fleet) - set(TYPES))
    if unknown:
        raise SystemExit(f"emulated types are {list(TYPES)}; got {unknown}")
    served, model, qos_ms = EMULATED_MODEL
    return Daemon(workdir, served, model, qos_ms, fleet, "kairos", {}, scheduler_extra=scheduler_extra,
                  extra_toml="[autoscaler]\nperiod_s = 1.0", name="chaos")


def start_real(workdir: Path, workers: int, scheduler_extra: str = "") -> Daemon:
    """kairosd over `workers` ort-1t ONNX Runtime workers (configs/local.toml's type and profiles)."""
    path = workdir / "chaos-real.toml"

    def write() -> dict[str, int]:
        ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
        path.write_text(f"""
[server]
host = "127.0.0.1"
http_port = {ports['http']}
grpc_port = {ports['grpc']}
metrics_port = {ports['metrics']}
[scheduler]
policy = "kairos"
{scheduler_extra}
[models]
repository = "{REPO / 'model_repository'}"
profiles = "{REPO / 'profiles' / 'local'}"
[models.qos_ms]
{chr(10).join(f'{m} = {q}' for m, q in REAL_QOS_MS.items())}
[types.ort-1t]
backend = "onnxruntime"
threads = 1
slots = 1
price_usd_per_hour = 0.05
[fleet.static]
ort-1t = {workers}
[autoscaler]
period_s = 1.0
""")
        return ports

    return Daemon.from_config(path, write, workers)


def instance_pids(daemon_pid: int) -> dict[int, int]:
    """The daemon's instance processes: gRPC port → pid (read from each child's `--port` argument)."""
    out = {}
    for pid in children_of(daemon_pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if "--port" in argv and any(a in ("emulated", "worker", "triton") for a in argv):
            out[int(argv[argv.index("--port") + 1])] = pid
    return out


def fleet_instances(d: Daemon) -> list[dict[str, Any]]:
    """/kairos/fleet's instances (three tries: a busy daemon can reset a connection)."""
    for attempt in range(3):
        try:
            instances: list[dict[str, Any]] = d.fleet()["instances"]
            return instances
        except OSError:
            if attempt == 2:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


def ready_instances(d: Daemon) -> list[dict[str, Any]]:
    return [i for i in fleet_instances(d) if i["state"] == "ready"]


# --------------------------------------------------------------------------------------------------
# Chaos


@dataclass
class Event:
    action: str
    at_s: float  # since the chaos phase began
    instance: str
    type: str
    pid: int
    # kill/term: seconds from the signal until the fleet had as many READY instances as before (None: not
    # within the wait); stop: seconds from SIGCONT until the daemon had sent the instance a query again
    recovered_s: float | None = None
    note: str = ""


@dataclass
class Chaos:
    """The chaos thread: one action every `interval_s` (±30%), `actions` in turn, until `stop_event`."""

    daemon: Daemon
    actions: Sequence[str]
    interval_s: float
    stop_s: float
    seed: int
    events: list[Event] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop_event: threading.Event = field(default_factory=threading.Event)
    max_events: int = 0  # 0: no limit
    # time.monotonic() when the client load ends: an action is only begun if it can be seen through
    # under load (a stop: the freeze and SETTLE_S to be sent a query again; kill/term: SETTLE_S)
    load_ends_at: float = math.inf
    skipped: int = 0

    def run(self) -> None:
        rng = random.Random(self.seed)
        t0 = time.monotonic()
        frozen: set[int] = set()
        try:
            for action in itertools.cycle(self.actions):
                if self.stop_event.wait(self.interval_s * rng.uniform(0.7, 1.3)):
                    return
                if self.max_events and len(self.events) >= self.max_events:
                    return
                left = self.load_ends_at - time.monotonic()
                if left < SETTLE_S + (self.stop_s if action == "stop" else 0.0):
                    self.skipped += 1
                    continue
                self._one(action, rng, t0, frozen)
        except Exception as exc:  # noqa: BLE001 - reported with the results, never a silent end
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def _one(self, action: str, rng: random.Random, t0: float, frozen: set[int]) -> None:
        d = self.daemon
        ready = ready_instances(d)
        pids = instance_pids(d.pid)
        choices = [i for i in ready if int(i["address"].rsplit(":", 1)[1]) in pids]
        if not choices:
            self.errors.append(f"{action} at {time.monotonic() - t0:.1f} s: no READY instance with a process")
            return
        inst = rng.choice(choices)
        pid = pids[int(inst["address"].rsplit(":", 1)[1])]
        ev = Event(action, round(time.monotonic() - t0, 2), inst["id"], inst["type"], pid)
        self.events.append(ev)
        n_ready = len(ready)
        print(f"  chaos {ev.at_s:6.1f} s: {action} {inst['id']} (pid {pid})", flush=True)
        if action == "stop":
            os.kill(pid, signal.SIGSTOP)
            frozen.add(pid)
            try:
                self.stop_event.wait(self.stop_s)
            finally:
                os.kill(pid, signal.SIGCONT)
                frozen.discard(pid)
            ev.recovered_s = self._served_again(inst["id"], timeout_s=max(10.0, 3 * self.interval_s))
            if ev.recovered_s is None:
                ev.note = "not sent a query within the wait after SIGCONT"
        else:
            os.kill(pid, signal.SIGKILL if action == "kill" else signal.SIGTERM)
            ev.recovered_s = self._replaced(n_ready, inst["id"], timeout_s=60.0)
            if ev.recovered_s is None:
                ev.note = f"the fleet did not get back to {n_ready} READY instances"

    def _served_again(self, instance_id: str, timeout_s: float) -> float | None:
        """Seconds until the instance has answered a query sent after now: its served count passes what it
        had served plus what it held (None: not within `timeout_s`, or it left the fleet)."""
        t = time.monotonic()

        def counts() -> tuple[int, int] | None:
            for i in fleet_instances(self.daemon):
                if i["id"] == instance_id:
                    return int(i["served"]), int(i["in_flight"])
            return None

        first = counts()
        if first is None:
            return None
        while time.monotonic() - t < timeout_s:
            now = counts()
            if now is None:
                return None
            if now[0] > first[0] + first[1]:
                return time.monotonic() - t
            time.sleep(0.05)
        return None

    def _replaced(self, n_ready: int, instance_id: str, timeout_s: float) -> float | None:
        """Seconds until the instance is gone from READY and the fleet has `n_ready` READY again."""
        t = time.monotonic()
        while time.monotonic() - t < timeout_s:
            ready = ready_instances(self.daemon)
            if len(ready) >= n_ready and all(i["id"] != instance_id for i in ready):
                return time.monotonic() - t
            time.sleep(0.05)
        return None


# --------------------------------------------------------------------------------------------------
# The client


class Expected:
    """Inputs per batch size and a check of each answer: shape/dtype/name from config.pbtxt, and values
    (all zeros for an emulated instance; ONNX Runtime's outputs on the same inputs for a real worker)."""

    def __init__(self, model: str, batches: Sequence[int], real: bool) -> None:
        from kairosd.modelgen import example_inputs

        self.model = model
        self.shape_check = ResponseCheck(model)
        self.inputs = {b: example_inputs(model, b, seed=b) for b in batches}
        self.outputs: dict[int, dict[str, np.ndarray]] | None = None
        if real:
            import onnxruntime as ort

            sess = ort.InferenceSession(str(REPO / "model_repository" / model / "1" / "model.onnx"),
                                        providers=["CPUExecutionProvider"])
            names = [o.name for o in sess.get_outputs()]
            self.outputs = {b: dict(zip(names, sess.run(None, x), strict=True)) for b, x in self.inputs.items()}

    def ok(self, result: Any, batch: int) -> bool:
        response = result.get_response()
        if not self.shape_check.ok(response, batch):
            return False
        for out in response.outputs:
            got = result.as_numpy(out.name)
            if self.outputs is None:
                if got is None or got.any():
                    return False
            elif got is None or not np.allclose(got, self.outputs[batch][out.name], rtol=1e-4, atol=1e-5):
                return False
        return True


@dataclass
class Tally:
    outcome: list[str] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)  # per query (nan when lost)
    started_s: list[float] = field(default_factory=list)

    def add(self, outcome: str, started: float, latency: float) -> None:
        self.outcome.append(outcome)
        self.started_s.append(started)
        self.latency_s.append(latency)

    def summary(self, wall_s: float) -> dict[str, Any]:
        lat = np.array(self.latency_s) * 1e3
        out = np.array(self.outcome)
        ok = out == OK
        errs = ~np.isin(out, [OK, WRONG, LOST])
        by_code: dict[str, int] = {}
        for o in out[errs]:
            by_code[str(o)] = by_code.get(str(o), 0) + 1

        def pct(v: np.ndarray, q: float) -> float | None:
            return float(np.percentile(v, q, method="higher")) if len(v) else None

        # per window of TIMELINE_S seconds (by when each query was sent): correct answers and explicit errors
        window = np.floor(np.array(self.started_s) / TIMELINE_S).astype(int) if len(out) else np.zeros(0, int)
        timeline = [[int(w) * TIMELINE_S, int((ok & (window == w)).sum()), int((errs & (window == w)).sum())]
                    for w in range(int(window.max()) + 1 if len(window) else 0)]
        return {
            "timeline": timeline,
            "sent": len(out), "correct": int(ok.sum()), "errors": int(errs.sum()), "errors_by_code": by_code,
            "wrong": int((out == WRONG).sum()), "lost": int((out == LOST).sum()),
            "p50_ms": pct(lat[ok], 50), "p99_ms": pct(lat[ok], 99), "max_ms": pct(lat[ok], 100),
            "error_p50_ms": pct(lat[errs], 50), "error_max_ms": pct(lat[errs], 100),
            "wall_s": wall_s, "answered_qps": int(ok.sum()) / wall_s if wall_s > 0 else 0.0,
        }


async def _query(client: Any, exp: Expected, batch: int, deadline_s: float, grace_s: float) -> tuple[str, float]:
    """One query: (outcome, latency s)."""
    import tritonclient.grpc.aio as grpcaio
    from tritonclient.utils import InferenceServerException, np_to_triton_dtype

    inputs = []
    for name, arr in exp.inputs[batch].items():
        t = grpcaio.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        t.set_data_from_numpy(arr)
        inputs.append(t)
    headers = {"grpc-timeout": f"{max(1, round(deadline_s * 1e3))}m"}  # no client-side deadline: see the docstring
    t0 = time.monotonic()
    try:
        result = await asyncio.wait_for(client.infer(exp.model, inputs, headers=headers), deadline_s + grace_s)
    except TimeoutError:
        return LOST, math.nan
    except InferenceServerException as exc:
        status = exc.status()
        if not status:
            return LOST, math.nan
        return str(status).removeprefix("StatusCode."), time.monotonic() - t0
    except Exception:  # noqa: BLE001 - anything that is not a status: lost
        return LOST, math.nan
    latency = time.monotonic() - t0
    return (OK if exp.ok(result, batch) else WRONG), latency


async def client_load(url: str, exp: Expected, batches: Sequence[int], duration_s: float, *, concurrency: int,
                      rate_qps: float, deadline_s: float, grace_s: float, seed: int) -> dict[str, Any]:
    """`concurrency` closed loops (or Poisson arrivals at `rate_qps` when > 0) for `duration_s`; the tally."""
    import tritonclient.grpc.aio as grpcaio

    tally = Tally()
    rng = np.random.default_rng(seed)
    client = grpcaio.InferenceServerClient(url)
    t_start = time.monotonic()
    end = t_start + duration_s

    async def one() -> None:
        b = int(rng.choice(batches))
        started = time.monotonic() - t_start
        outcome, lat = await _query(client, exp, b, deadline_s, grace_s)
        tally.add(outcome, started, lat)

    async def loop() -> None:
        while time.monotonic() < end:
            await one()

    try:
        if rate_qps > 0:
            tasks = []
            at = time.monotonic()
            while True:
                at += float(rng.exponential(1.0 / rate_qps))
                if at >= end:
                    break
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                tasks.append(asyncio.ensure_future(one()))
            await asyncio.gather(*tasks)
        else:
            await asyncio.gather(*(loop() for _ in range(concurrency)))
    finally:
        await client.close()
    return tally.summary(time.monotonic() - t_start)


# --------------------------------------------------------------------------------------------------
# The drill


@dataclass
class DrillResult:
    calm: dict[str, Any] | None
    chaos: dict[str, Any]
    events: list[Event]
    chaos_errors: list[str]
    fleet_after: list[dict[str, Any]]


def drill(d: Daemon, exp: Expected, batches: Sequence[int], *, calm_s: float, duration_s: float, concurrency: int,
          rate_qps: float, deadline_s: float, grace_s: float, actions: Sequence[str], interval_s: float,
          stop_s: float, seed: int, max_events: int = 0,
          log: Callable[[str], None] = print) -> DrillResult:
    """A calm phase (no chaos; skipped when `calm_s` is 0), then `duration_s` under chaos; then waits
    until the chaos thread's last action has finished."""
    kw: dict[str, Any] = {"concurrency": concurrency, "rate_qps": rate_qps, "deadline_s": deadline_s,
                          "grace_s": grace_s}
    calm = None
    if calm_s > 0:
        log(f"calm phase: {calm_s:g} s")
        calm = asyncio.run(client_load(d.url, exp, batches, calm_s, seed=seed, **kw))
    chaos = Chaos(d, actions, interval_s, stop_s, seed, max_events=max_events,
                  load_ends_at=time.monotonic() + duration_s)
    thread = threading.Thread(target=chaos.run, daemon=True)
    log(f"chaos phase: {duration_s:g} s, {'/'.join(actions)} every ~{interval_s:g} s")
    thread.start()
    try:
        under = asyncio.run(client_load(d.url, exp, batches, duration_s, seed=seed + 1, **kw))
    finally:
        chaos.stop_event.set()
        thread.join()
    return DrillResult(calm, under, chaos.events, chaos.errors, fleet_instances(d))


def print_table(res: DrillResult) -> None:
    hdr = (f"{'phase':6} {'sent':>6} {'correct':>7} {'errors':>6} {'wrong':>5} {'lost':>4} {'p50 ms':>7} {'p99 ms':>7} "
           f"{'max ms':>7} {'err p50':>7} {'q/s':>6}  errors by code")
    print(hdr)
    print("-" * len(hdr))

    def f(x: float | None) -> str:
        return f"{x:7.1f}" if x is not None else f"{'-':>7}"

    for name, s in (("calm", res.calm), ("chaos", res.chaos)):
        if s is None:
            continue
        codes = ", ".join(f"{k} {v}" for k, v in sorted(s["errors_by_code"].items())) or "-"
        print(f"{name:6} {s['sent']:6d} {s['correct']:7d} {s['errors']:6d} {s['wrong']:5d} {s['lost']:4d} "
              f"{f(s['p50_ms'])} {f(s['p99_ms'])} {f(s['max_ms'])} {f(s['error_p50_ms'])} {s['answered_qps']:6.1f}  {codes}")
    for name, s in (("calm", res.calm), ("chaos", res.chaos)):
        if s is not None and s["timeline"]:
            cells = " ".join(f"{c}/{e}" for _, c, e in s["timeline"])
            print(f"{name} timeline, correct/errors per {TIMELINE_S} s: {cells}")
    print("\nchaos events:")
    for ev in res.events:
        rec = f"{ev.recovered_s:.2f} s" if ev.recovered_s is not None else "never"
        what = "served again after" if ev.action == "stop" else "full fleet again after"
        print(f"  {ev.at_s:6.1f} s {ev.action:5} {ev.instance:24} {what} {rec} {ev.note}")
    for e in res.chaos_errors:
        print(f"  chaos thread: {e}")
    counts = {a: sum(1 for e in res.events if e.action == a) for a in ACTIONS}
    print("events done: " + ", ".join(f"{a} {n}" for a, n in counts.items()))
    c, u = res.calm, res.chaos
    if c is not None and c["p99_ms"] and u["p99_ms"] and c["answered_qps"]:
        print(f"chaos / calm: p99 {u['p99_ms'] / c['p99_ms']:.2f}x, answered q/s {u['answered_qps'] / c['answered_qps']:.2f}x")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of chaos")
    ap.add_argument("--calm-s", type=float, default=10.0, help="seconds of load without chaos first (the baseline)")
    ap.add_argument("--real", action="store_true", help="ort-1t ONNX Runtime workers instead of emulated instances")
    ap.add_argument("--fleet", default="g4dn.xlarge=2,r5n.large=6", help="emulated fleet, TYPE=N,...")
    ap.add_argument("--workers", type=int, default=4, help="--real: how many ort-1t workers")
    ap.add_argument("--model", default="dlrm", help="--real: the model (dlrm or ncf); emulated: dlrm")
    ap.add_argument("--concurrency", type=int, default=8, help="closed client loops")
    ap.add_argument("--rate", type=float, default=0.0, help="open loop: Poisson arrivals at this rate (q/s)")
    ap.add_argument("--deadline-s", type=float, default=2.0, help="each query's deadline (grpc-timeout)")
    ap.add_argument("--grace-s", type=float, default=1.0, help="the client waits this long past the deadline")
    ap.add_argument("--actions", default="kill,stop,term")
    ap.add_argument("--interval-s", type=float, default=6.0, help="between chaos actions (±30%%)")
    ap.add_argument("--stop-s", type=float, default=4.0, help="SIGSTOP → SIGCONT")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scheduler", default="", help="extra [scheduler] TOML lines, e.g. 'admission = \"off\"'")
    ap.add_argument("--out", default=str(RESULTS / "chaos.json"))
    args = ap.parse_args()
    actions = [a for a in args.actions.split(",") if a]
    bad = sorted(set(actions) - set(ACTIONS))
    if bad:
        ap.error(f"--actions: unknown {bad}; allowed {list(ACTIONS)}")
    workdir = Path(tempfile.mkdtemp(prefix="kairosd-chaos-"))
    load0 = os.getloadavg()
    p0, b0, a0 = machine_cpu()
    batches: tuple[int, ...]
    if args.real:
        model, batches = args.model, REAL_BATCHES
        fleet_desc = f"{args.workers}×ort-1t (ONNX Runtime workers), {model}, QoS {REAL_QOS_MS[model]:g} ms"
        print(f"starting kairosd over {fleet_desc}", flush=True)
        d = start_real(workdir, args.workers, args.scheduler)
    else:
        fleet = parse_fleet(args.fleet)
        model, batches = EMULATED_MODEL[0], EMULATED_BATCHES
        fleet_desc = (" + ".join(f"{n}×{t}" for t, n in fleet.items()) +
                      f" (emulated), dlrm timed as rm2, QoS {EMULATED_MODEL[2]:g} ms")
        print(f"starting kairosd over {fleet_desc}", flush=True)
        d = start_emulated(workdir, fleet, args.scheduler)
    try:
        exp = Expected(model, batches, args.real)
        res = drill(d, exp, batches, calm_s=args.calm_s, duration_s=args.duration, concurrency=args.concurrency,
                    rate_qps=args.rate, deadline_s=args.deadline_s, grace_s=args.grace_s, actions=actions,
                    interval_s=args.interval_s, stop_s=args.stop_s, seed=args.seed)
    finally:
        rc = d.child.stop(20)
    p1, b1, a1 = machine_cpu()
    ncpu = os.cpu_count() or 1
    load = f"{args.concurrency} closed loops" if args.rate <= 0 else f"open loop {args.rate:g} q/s"
    print(f"\nchaos drill: {fleet_desc}; {load}; deadline {args.deadline_s:g} s + grace {args.grace_s:g} s; "
          f"load average at start {load0[0]:.2f}")
    print_table(res)
    out = {
        "benchmark": "chaos",
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "host": {"python": platform.python_version(), "cpus": len(os.sched_getaffinity(0)), "loadavg_start": load0,
                 "loadavg_end": os.getloadavg(),
                 "machine_busy_cores": (b1 - b0) / (a1 - a0) * ncpu if a1 > a0 else None,
                 "cpu_pressure": (p1 - p0) / 1e6 / max(args.calm_s + args.duration, 1e-9)},
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        # the head's backend transport (kairosd.backends.client: unset = its default, the stream)
        "KAIROSD_BACKEND_STREAM": os.environ.get("KAIROSD_BACKEND_STREAM"),
        "fleet": fleet_desc, "batches": list(batches),
        "calm": res.calm, "chaos": res.chaos, "events": [vars(e) for e in res.events],
        "chaos_thread_errors": res.chaos_errors, "fleet_after": res.fleet_after, "daemon_exit_code": rc,
        "ok": res.chaos["lost"] == 0 and res.chaos["wrong"] == 0
              and (res.calm is None or (res.calm["lost"] == 0 and res.calm["wrong"] == 0)),
    }
    write_results(out, args.out)
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

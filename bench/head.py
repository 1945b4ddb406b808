"""The head's CPU per query: native load generators through `kairosd serve` on CPU-light emulated instances,
beside the bare Python pass-through (bench/bare_proxy.py) to one of the same instances, in the same run.

Targets, per protocol: `bare` (bare_proxy.py → one emulated instance), and `kairosd serve` once per
backend transport (`http`: every query over the instance's HTTP endpoint, a gRPC query converted
(kairosd/backends/grpc_http.py, the default); `unary`: gRPC queries as one ModelInfer call each;
`stream`: gRPC queries on one ModelStreamInfer stream per instance; chosen with KAIROSD_BACKEND_HTTP
and KAIROSD_BACKEND_STREAM in the daemon's environment; HTTP queries go over HTTP in all three; `app`:
as `http`, with every REST request served by the aiohttp application, infer calls included
(KAIROSD_LEAN_HTTP=0: kairosd.server.http_lean off)). Each daemon serves ncf (batch
1) with a generous QoS and `admission = "off"` (nothing refused) from `--instances` emulated g4dn.xlarge
of `--slots` slots each. gRPC load: h2load (`--streams` concurrent streams over `--connections`
connections; body = the 5-byte gRPC prefix + a serialized ModelInferRequest). HTTP load: wrk (JSON body,
`--streams` connections). h2load and wrk judge only the HTTP status, so every kairosd run also counts
the daemon's `kairos_queries_total` by outcome before and after (anything but `completed` is an error,
as is a shortfall against the load generator's count), and every gRPC target first answers 200 queries
with ids from a Python gRPC client whose statuses and answers (model, id) are checked.

CPU: utime + stime (/proc/PID/stat) of every kairosd process that is not an instance (the daemon and its
descendants but the `kairosd emulated` ones: front-end processes included), and of the instances apart;
per query = CPU over the run / queries answered in it (no warm-up: a separate warm-up run precedes the
repeats). The targets take turns within each repeat; medians over `--repeats`.

    python bench/head.py [--duration-s 5] [--repeats 3] [--workers N] [--profile-s 10] [--grpc-rate Q]

`--grpc-rate Q` offers the gRPC load at Q q/s in all (h2load --rps) instead of as fast as the streams go,
so that CPU per query is compared at one rate (wrk has no rate: HTTP stays at full speed).

`--workers N` (N > 1) sets `[server] workers = N`; a daemon that refuses it (the key is newer than this
script may be) is started without it and the run says so. `--profile-s S` records one transport's
daemon (`--profile-transport`) with py-spy for S seconds under h2load load and writes the top functions
by self and total time to bench/results/head_profile.txt. Writes bench/results/head.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from openloop import cpu_s, machine_cpu, request_body, write_profiles  # noqa: E402  (bench/openloop.py)
from results_file import write_results  # noqa: E402  (bench/results_file.py)

from kairosd.backends.process import ChildProcess, free_port, kairosd_argv, wait_ready_sync  # noqa: E402

INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"
MODEL = "ncf"
TRANSPORT_ENV = "KAIROSD_BACKEND_STREAM"
HTTP_ENV = "KAIROSD_BACKEND_HTTP"
BUSY = "kairos_dispatcher_busy_seconds_total"
LEAN_ENV = "KAIROSD_LEAN_HTTP"
TRANSPORTS = ("http", "unary", "stream", "app")


# ---- processes ------------------------------------------------------------------------------------
def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (children, their children...)."""
    parent: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None:
                parent[int(entry.name)] = int(fields[1])
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        frontier += kids
    return out


def is_instance(pid: int) -> bool:
    cmd = _cmdline(pid)
    return " emulated " in cmd or " worker " in cmd or "triton" in cmd


class CpuMeter:
    """CPU seconds of a set of processes found anew at each reading (a process that appears between two
    readings counts from zero; one that exits loses what it used since the last reading)."""

    def __init__(self, pids: Any) -> None:
        self._pids = pids  # () -> list[int]

    def read(self) -> dict[int, float]:
        out = {}
        for p in self._pids():
            try:
                out[p] = cpu_s(p)
            except (OSError, IndexError):
                pass
        return out

    @staticmethod
    def delta(a: dict[int, float], b: dict[int, float]) -> float:
        return sum(v - a.get(p, 0.0) for p, v in b.items())


class Daemon:
    """`kairosd serve` over emulated ncf instances, with the backend transport set in its environment."""

    def __init__(self, workdir: Path, name: str, transport: str, instances: int, slots: int, workers: int) -> None:
        self.name = name
        self.workers_applied = workers > 1
        for attempt in range(3):
            self.ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
            path = workdir / f"{name}.toml"
            path.write_text(config_text(workdir, self.ports, instances, slots, workers if self.workers_applied else 1))
            env = {**os.environ, TRANSPORT_ENV: "0" if transport == "unary" else "1",
                   HTTP_ENV: "1" if transport in ("http", "app") else "0", LEAN_ENV: "0" if transport == "app" else "1"}
            self.child = ChildProcess(kairosd_argv("serve", "--config", str(path)), name=f"kairosd-{name}",
                                      env=env).start()
            try:
                wait_ready_sync(f"127.0.0.1:{self.ports['grpc']}", 120, self.child)
                self._wait_instances(instances)
                break
            except Exception as exc:
                tail = self.child.log_tail(3000)
                self.child.stop(10)
                if self.workers_applied and "workers" in tail:
                    print(f"  {name}: [server] workers = {workers} refused ({_last_line(tail)}); "
                          "started without it", flush=True)
                    self.workers_applied = False
                    continue
                if attempt == 2:
                    raise RuntimeError(f"{name}: kairosd serve did not start: {exc}\n{tail}") from exc
                print(f"  {name}: start failed ({str(exc).splitlines()[0][:120]}); again", flush=True)
        assert self.child.pid is not None
        self.pid = self.child.pid
        self.head = CpuMeter(lambda: [self.pid] + [p for p in descendants(self.pid) if not is_instance(p)])
        self.instances = CpuMeter(lambda: [p for p in descendants(self.pid) if is_instance(p)])
        self.main = CpuMeter(lambda: [self.pid])  # the dispatcher and front end 0

    def per_front(self) -> dict[str, float]:
        """kairos_frontend_queries_total by front-end process (absent with one process)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['metrics']}/metrics", timeout=5) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("kairos_frontend_queries_total{"):
                m = re.search(r'front="([^"]+)"', line)
                if m:
                    out[m.group(1)] = float(line.rsplit(" ", 1)[1])
        return out

    def fleet(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['metrics']}/kairos/fleet", timeout=5) as r:
            data: dict[str, Any] = json.loads(r.read())
        return list(data["instances"])

    def _wait_instances(self, n: int) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if sum(1 for i in self.fleet() if i["state"] == "ready") >= n:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"fewer than {n} instances ready")

    def outcomes(self) -> dict[str, float]:
        """kairos_queries_total by outcome, all models added; and under the key BUSY, the dispatcher's
        event-loop time so far (kairos_dispatcher_busy_seconds_total)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['metrics']}/metrics", timeout=5) as r:
            text = r.read().decode()
        out: dict[str, float] = collections.defaultdict(float)
        for line in text.splitlines():
            if line.startswith(BUSY + " "):
                out[BUSY] = float(line.rsplit(" ", 1)[1])
            if line.startswith("kairos_queries_total{"):
                m = re.search(r'outcome="([^"]+)"', line)
                if m:
                    out[m.group(1)] += float(line.rsplit(" ", 1)[1])
        return dict(out)

    def stop(self) -> None:
        self.child.stop(20)


def _last_line(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return lines[-1][:200] if lines else ""


def config_text(workdir: Path, ports: dict[str, int], instances: int, slots: int, workers: int) -> str:
    workers_line = f"workers = {workers}" if workers > 1 else ""
    return f"""
[server]
host = "127.0.0.1"
http_port = {ports['http']}
grpc_port = {ports['grpc']}
metrics_port = {ports['metrics']}
{workers_line}
[scheduler]
policy = "kairos"
admission = "off"
backend_timeout_min_ms = 10000.0  # the head is measured, not retries of answers late on a saturated machine
[models]
repository = "{REPO / 'model_repository'}"
profiles = "{workdir / 'profiles'}"
[models.qos_ms]
{MODEL} = 1000.0
[emulation]
models = {{ {MODEL} = "ncf" }}
[types."g4dn.xlarge"]
backend = "emulated"
emulate = "g4dn.xlarge"
slots = {slots}
price_usd_per_hour = 0.526
[fleet.static]
"g4dn.xlarge" = {instances}
"""


# ---- load generators ------------------------------------------------------------------------------
def grpc_frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message (flag byte 0, 4-byte big-endian length): a request body for h2load."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def grpc_body(path: Path) -> Path:
    path.write_bytes(grpc_frame(request_body(MODEL, 1)))
    return path


def json_body() -> str:
    import numpy as np

    from kairosd.modelgen import example_inputs

    inputs = [{"name": name, "shape": list(a.shape), "datatype": "FP32" if a.dtype == np.float32 else "INT64",
               "data": a.flatten().tolist()} for name, a in example_inputs(MODEL, 1, seed=0).items()]
    return json.dumps({"inputs": inputs})


H2LOAD_GRPC = ["-H", "content-type: application/grpc", "-H", "te: trailers"]


def h2load(url: str, body: Path, duration_s: float, streams: int, connections: int, log: Path,
           rate_qps: float = 0.0) -> dict[str, Any]:
    """h2load's gRPC load for `duration_s`: as fast as the streams go, or at `rate_qps` in all (h2load's
    --rps, per connection)."""
    per_conn = max(1, streams // connections)
    rps = [f"--rps={rate_qps / connections:g}"] if rate_qps > 0 else []
    out = subprocess.run(["h2load", "-D", f"{max(1, round(duration_s))}s", "-c", str(connections), "-m", str(per_conn), "-t", "1",
                          *rps, "-d", str(body), *H2LOAD_GRPC, "--log-file", str(log), f"http://{url}{INFER_PATH}"],
                         capture_output=True, text=True, check=True)
    text = out.stdout
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text)
    r = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, "
                  r"(\d+) timeout", text)
    if not (m and r):
        raise RuntimeError(f"cannot read h2load's output:\n{text}\n{out.stderr}")
    lat = sorted(int(line.split("\t")[2]) for line in log.read_text().splitlines() if line.count("\t") >= 2)
    return {"qps": float(m.group(1)), "done": int(r.group(3)), "succeeded": int(r.group(4)),
            "errors": int(r.group(5)) + int(r.group(6)) + int(r.group(7)),
            "p50_ms": _pct(lat, 50) / 1e3, "p99_ms": _pct(lat, 99) / 1e3}


def grpc_status_check(url: str, n: int = 200) -> dict[str, int]:
    """`n` queries (64 at a time) with ids through a Python gRPC client: how many ended with each status,
    and how many answers were wrong (another model or id than the request's)."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb

    template = pb.ModelInferRequest.FromString(request_body(MODEL, 1))
    counts: collections.Counter[str] = collections.Counter()
    with grpc.insecure_channel(url) as channel:
        call = channel.unary_unary(INFER_PATH)
        for first in range(0, n, 64):
            futures = []
            for i in range(first, min(n, first + 64)):
                template.id = f"check-{i}"
                futures.append((template.id, call.future(template.SerializeToString(), timeout=30)))
            for query_id, f in futures:
                try:
                    response = pb.ModelInferResponse.FromString(f.result())
                except grpc.RpcError as exc:
                    counts[exc.code().name] += 1
                    continue
                counts["OK" if response.id == query_id and response.model_name == MODEL else "WRONG"] += 1
    return dict(counts)


def wrk(url: str, script: Path, duration_s: float, connections: int) -> dict[str, Any]:
    out = subprocess.run(["wrk", "-t", "1", "-c", str(connections), "-d", f"{duration_s:g}s", "--latency",
                          "-s", str(script), f"http://{url}/v2/models/{MODEL}/infer"],
                         capture_output=True, text=True, check=True)
    text = out.stdout
    qps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    done = re.search(r"(\d+) requests in", text)
    if not (qps and done):
        raise RuntimeError(f"cannot read wrk's output:\n{text}\n{out.stderr}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(int(x) for x in sock.groups()) if sock else 0)
    return {"qps": float(qps.group(1)), "done": int(done.group(1)), "errors": errors,
            "p50_ms": _wrk_ms(text, "50%"), "p99_ms": _wrk_ms(text, "99%")}


def _wrk_ms(text: str, label: str) -> float:
    m = re.search(rf"^\s*{re.escape(label)}\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]


def _pct(values: list[int], q: float) -> float:
    if not values:
        return float("nan")
    return float(values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))])


# ---- profile --------------------------------------------------------------------------------------
def profile_summary(raw: str, top: int = 25) -> str:
    """Top functions by self and by total share of the samples of py-spy's collapsed stacks."""
    self_n: collections.Counter[str] = collections.Counter()
    total_n: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        self_n[_frame(frames[-1])] += n
        for f in {_frame(x) for x in frames}:
            total_n[f] += n
    lines = [f"samples: {samples}", "", f"top {top} by self time (% of samples):"]
    lines += [f"  {100 * n / samples:5.1f}%  {f}" for f, n in self_n.most_common(top)]
    lines += ["", f"top {top} by total time (% of samples with the function on the stack):"]
    lines += [f"  {100 * n / samples:5.1f}%  {f}" for f, n in total_n.most_common(top)]
    return "\n".join(lines) + "\n"


def _frame(f: str) -> str:
    """A py-spy frame "func (file.py:line)" without its line number, so a function's lines add up."""
    return re.sub(r":\d+\)$", ")", f)


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of `pid` (/proc/PID/task/TID/stat), by "name (tid)"."""
    out = {}
    for entry in os.scandir(f"/proc/{pid}/task"):
        try:
            comm = Path(entry.path, "comm").read_text().strip()
            out[f"{comm} ({entry.name})"] = cpu_s_path(Path(entry.path, "stat"))
        except OSError:
            continue
    return out


def cpu_s_path(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def record_profile(d: Daemon, body: Path, seconds: float, args: argparse.Namespace, out: Path) -> str:
    """py-spy --gil (the Python code that holds the GIL, by function) over an h2load run, and the CPU of
    each of the daemon's threads over the same run (the GIL-free native work included: grpc core's
    poller thread)."""
    raw = out.with_suffix(".raw.txt")
    spy = subprocess.Popen(["py-spy", "record", "--pid", str(d.pid), "--duration", str(int(seconds)), "--rate", "250",
                            "--gil", "--format", "raw", "-o", str(raw)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.0)
    t0, c0 = time.monotonic(), thread_cpu(d.pid)
    with tempfile.NamedTemporaryFile(suffix=".log") as log:
        load = h2load(f"127.0.0.1:{d.ports['grpc']}", body, seconds - 2, args.streams, args.connections,
                      Path(log.name))
    wall, c1 = time.monotonic() - t0, thread_cpu(d.pid)
    spy_out, _ = spy.communicate(timeout=120)
    if not raw.exists():
        raise RuntimeError(f"py-spy wrote nothing:\n{spy_out}")
    text = raw.read_text()
    if not os.environ.get("KAIROSD_KEEP_PROFILE"):
        raw.unlink()
    threads = sorted(((c1[k] - c0.get(k, 0.0), k) for k in c1), reverse=True)
    total = sum(x for x, _ in threads)
    lines = [f"CPU by thread over the h2load run ({wall:.1f} s, {load['qps']:.0f} q/s): {total / wall:.2f} cores, "
             f"{total / max(1, load['done']) * 1e3:.3f} ms per query"]
    lines += [f"  {x / wall:5.2f} cores  {100 * x / total if total else 0:5.1f}%  {k}" for x, k in threads if x > 0]
    return (f"The {d.name} daemon (pid {d.pid}) under h2load ({args.streams} streams over {args.connections} "
            f"connections, ncf batch 1): {load['qps']:.0f} q/s, {load['errors']} errors; load average "
            f"{os.getloadavg()[0]:.2f}\n\n" + "\n".join(lines) + "\n\n"
            f"py-spy record --gil --rate 250 ({int(seconds)} s): Python code holding the GIL\n" + profile_summary(text))


# ---- main -----------------------------------------------------------------------------------------
def run_one(target: str, protocol: str, url: str, head: CpuMeter, inst: CpuMeter, daemon: Daemon | None,
            args: argparse.Namespace, files: dict[str, Path]) -> dict[str, Any]:
    o0 = daemon.outcomes() if daemon is not None else None
    f0 = daemon.per_front() if daemon is not None else {}
    mm0 = daemon.main.read() if daemon is not None else {}
    h0, i0 = head.read(), inst.read()
    m0 = machine_cpu()
    t0 = time.monotonic()
    if protocol == "grpc":
        r = h2load(url, files["grpc_body"], args.duration_s, args.streams, args.connections, files["h2log"],
                   args.grpc_rate)
    else:
        r = wrk(url, files["wrk_script"], args.duration_s, args.streams)
    wall = time.monotonic() - t0
    h1, i1 = head.read(), inst.read()
    mm1 = daemon.main.read() if daemon is not None else {}
    m1 = machine_cpu()
    answered = r["done"]
    if daemon is not None and o0 is not None:
        o1 = daemon.outcomes()
        delta = {k: o1.get(k, 0.0) - o0.get(k, 0.0) for k in o1}
        busy_s = delta.pop(BUSY, None)
        r["kairos_outcomes"] = {k: int(v) for k, v in delta.items() if v}
        completed = int(delta.get("completed", 0))
        ended = int(sum(v for k, v in delta.items() if k != "completed"))  # failed, expired, refused, shed
        # the load generator's done count includes the errors it saw; a query it counted done that the
        # daemon neither completed nor ended otherwise (refused by a front end) is an error too
        unaccounted = max(0, r["done"] - completed - ended)
        r["errors"] = max(r["errors"], ended + unaccounted)
        answered = completed
        # measured in the dispatcher itself (its steps' event-loop time), beside the by-difference figure below
        if busy_s is not None and answered:
            r["dispatcher_busy_ms_per_query"] = busy_s / answered * 1e3
    r["head_cpu_ms_per_query"] = CpuMeter.delta(h0, h1) / answered * 1e3 if answered else None
    r["instances_cpu_ms_per_query"] = CpuMeter.delta(i0, i1) / answered * 1e3 if answered else None
    r["head_cpu_cores"] = CpuMeter.delta(h0, h1) / wall
    if daemon is not None and daemon.workers_applied and answered:
        # the dispatcher's own CPU, by difference: the main process also fronts the queries it received
        # (front "0"); the front-end processes' CPU per query they received prices that part
        f1 = daemon.per_front()
        fronts = {k: f1.get(k, 0.0) - f0.get(k, 0.0) for k in f1}
        main_s = CpuMeter.delta(mm0, mm1)
        others_s = CpuMeter.delta(h0, h1) - main_s
        others_q = sum(v for k, v in fronts.items() if k != "0")
        r["front_queries"] = {k: int(v) for k, v in fronts.items()}
        if others_q:
            per_front_q = others_s / others_q
            r["front_process_cpu_ms_per_query"] = per_front_q * 1e3
            r["dispatcher_cpu_ms_per_query"] = max(main_s - fronts.get("0", 0.0) * per_front_q, 0.0) / answered * 1e3
    r["machine_busy_cores"] = (m1[1] - m0[1]) / (m1[2] - m0[2]) * (os.cpu_count() or 1) if m1[2] > m0[2] else None
    print(f"  {protocol:4s} {target:7s} {r['qps']:8.0f} q/s  head {r['head_cpu_ms_per_query'] or 0:.3f} ms/q "
          f"({r['head_cpu_cores']:.2f} cores)  instances {r['instances_cpu_ms_per_query'] or 0:.3f} ms/q  "
          f"p50 {r['p50_ms']:.2f} p99 {r['p99_ms']:.2f} ms  errors {r['errors']}  "
          f"machine busy {r['machine_busy_cores'] or 0:.2f} cores", flush=True)
    return r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration-s", type=float, default=5.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--instances", type=int, default=4, help="emulated g4dn.xlarge instances behind each daemon")
    p.add_argument("--slots", type=int, default=64, help="slots of each instance")
    p.add_argument("--streams", type=int, default=64, help="concurrent gRPC streams (h2load) / HTTP connections (wrk)")
    p.add_argument("--connections", type=int, default=4, help="h2load's connections (streams are spread over them)")
    p.add_argument("--workers", default="1", help="[server] workers, a comma list (e.g. 1,2): a daemon per value "
                   "and transport")
    p.add_argument("--transports", default=",".join(TRANSPORTS))
    p.add_argument("--grpc-rate", type=float, default=0.0,
                   help="gRPC load at this many q/s in all (h2load --rps); 0: as fast as the streams go")
    p.add_argument("--protocols", default="grpc,http")
    p.add_argument("--profile-s", type=float, default=0.0, help="py-spy record the daemon for this long (0: no)")
    p.add_argument("--profile-transport", default="", help="which daemon to profile (default: the last transport)")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "head.json"))
    p.add_argument("--profile-out", default=str(REPO / "bench" / "results" / "head_profile.txt"))
    args = p.parse_args()
    for tool in ("h2load", "wrk") + (("py-spy",) if args.profile_s else ()):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (h2load: nghttp2-client, wrk: wrk, py-spy: pip)", file=sys.stderr)
            return 2
    transports = [t for t in args.transports.split(",") if t]
    if set(transports) - set(TRANSPORTS):
        print(f"--transports: each of {', '.join(TRANSPORTS)}", file=sys.stderr)
        return 2
    protocols = [x for x in args.protocols.split(",") if x]

    tmp = Path(tempfile.mkdtemp(prefix="kairosd-head-"))
    (tmp / "profiles").mkdir()
    write_profiles(tmp / "profiles", MODEL, "ncf")
    files = {"grpc_body": grpc_body(tmp / "body.grpc"), "h2log": tmp / "h2load.log", "wrk_script": tmp / "post.lua"}
    files["wrk_script"].write_text(
        f'wrk.method = "POST"\nwrk.body = {json.dumps(json_body())}\nwrk.headers["Content-Type"] = "application/json"\n')
    load_start = os.getloadavg()
    daemons: dict[str, Daemon] = {}
    bare: dict[str, ChildProcess] = {}
    try:
        workers = [int(w) for w in str(args.workers).split(",") if w]
        for t in transports:
            for w in workers:
                name = t if len(workers) == 1 else f"{t}-w{w}"
                daemons[name] = Daemon(tmp, name, t, args.instances, args.slots, w)
        first = next(iter(daemons.values()))
        backend = next(i for i in first.fleet() if i["state"] == "ready")
        backend_pid = _pid_listening(first, backend["address"])
        ports = {"grpc": free_port(), "http": free_port()}
        for proto in protocols:
            addr = backend["address"] if proto == "grpc" else backend["http_address"]
            bare[proto] = ChildProcess([sys.executable, str(REPO / "bench" / "bare_proxy.py"), proto, "--listen",
                                        f"127.0.0.1:{ports[proto]}", "--backend", addr], name=f"bare-{proto}").start()
        if "grpc" in bare:
            wait_ready_sync(f"127.0.0.1:{ports['grpc']}", 30, bare["grpc"])
        time.sleep(1.0)
        targets: dict[str, dict[str, tuple[str, CpuMeter, CpuMeter, Daemon | None]]] = {}
        for proto in protocols:
            inst_meter = CpuMeter(lambda: [backend_pid] if backend_pid else [])
            bare_pid = bare[proto].pid
            assert bare_pid is not None
            tg: dict[str, tuple[str, CpuMeter, CpuMeter, Daemon | None]] = {
                "bare": (f"127.0.0.1:{ports[proto]}", CpuMeter(lambda pid=bare_pid: [pid]), inst_meter, None)}
            for t, d in daemons.items():
                tg[t] = (f"127.0.0.1:{d.ports[proto]}", d.head, d.instances, d)
            targets[proto] = tg

        status_check: dict[str, dict[str, int]] = {}
        if "grpc" in targets:
            for name, (url, *_rest) in targets["grpc"].items():
                status_check[name] = grpc_status_check(url)
                print(f"  grpc-status counts, {name}: {status_check[name]}", flush=True)
        print("warm-up", flush=True)
        for proto, tg in targets.items():
            for url, *_rest in tg.values():
                if proto == "grpc":
                    h2load(url, files["grpc_body"], 1.0, args.streams, args.connections, files["h2log"])
                else:
                    wrk(url, files["wrk_script"], 1.0, args.streams)

        runs: dict[tuple[str, str], list[dict[str, Any]]] = collections.defaultdict(list)
        for rep in range(args.repeats):
            print(f"repeat {rep + 1}/{args.repeats}, load average {os.getloadavg()[0]:.2f}", flush=True)
            for proto, tg in targets.items():
                for name, (url, head, inst, dmn) in tg.items():
                    runs[(proto, name)].append(run_one(name, proto, url, head, inst, dmn, args, files))

        profile_text = ""
        if args.profile_s > 0:
            which = args.profile_transport or transports[-1]
            print(f"profiling the {which} daemon for {args.profile_s:g} s", flush=True)
            profile_text = record_profile(daemons[which], files["grpc_body"], args.profile_s, args,
                                          Path(args.profile_out))
    finally:
        for proxy in bare.values():
            proxy.stop(10)
        for d in daemons.values():
            d.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    cells: list[dict[str, Any]] = []
    for (proto, name), rs in runs.items():
        med: dict[str, Any] = {}
        for k in ("qps", "head_cpu_ms_per_query", "instances_cpu_ms_per_query", "p50_ms", "p99_ms",
                  "machine_busy_cores", "head_cpu_cores", "dispatcher_cpu_ms_per_query",
                  "dispatcher_busy_ms_per_query", "front_process_cpu_ms_per_query"):
            vals = [x[k] for x in rs if x.get(k) is not None]
            med[k] = statistics.median(vals) if vals else None
        med["errors"] = sum(x["errors"] for x in rs)
        cells.append({"protocol": proto, "target": name, **med, "runs": rs})
    summary = []
    print(f"\nmedians of {args.repeats}; ncf batch 1; {args.streams} streams; {args.instances} emulated g4dn.xlarge x "
          f"{args.slots} slots; head CPU = every kairosd process but the instances (bare: the proxy process)")
    print(f"{'proto':5s} {'target':9s} {'q/s':>8s} {'head ms/q':>9s} {'vs bare':>7s} {'inst ms/q':>9s} "
          f"{'p50 ms':>7s} {'p99 ms':>7s} {'errors':>6s}")
    for proto in protocols if cells else ():
        base = next(c for c in cells if c["protocol"] == proto and c["target"] == "bare")
        for cell in cells:
            if cell["protocol"] != proto:
                continue
            c = cell
            ratio = (c["head_cpu_ms_per_query"] / base["head_cpu_ms_per_query"]
                     if c["head_cpu_ms_per_query"] and base["head_cpu_ms_per_query"] else None)
            c["head_cpu_vs_bare"] = ratio
            summary.append({k: c[k] for k in ("protocol", "target", "qps", "head_cpu_ms_per_query", "head_cpu_vs_bare",
                                              "instances_cpu_ms_per_query", "p50_ms", "p99_ms", "errors",
                                              "dispatcher_cpu_ms_per_query", "dispatcher_busy_ms_per_query",
                                              "head_cpu_cores")})
            print(f"{proto:5s} {c['target']:9s} {c['qps']:8.0f} {c['head_cpu_ms_per_query'] or 0:9.3f} "
                  f"{ratio or 0:7.2f} {c['instances_cpu_ms_per_query'] or 0:9.3f} {c['p50_ms']:7.2f} "
                  f"{c['p99_ms']:7.2f} {c['errors']:6d}")
    meta: dict[str, Any] = {"command": "python bench/head.py " + " ".join(sys.argv[1:]), "args": vars(args),
            "load_average_start": load_start, "load_average_end": os.getloadavg(),
            "workers_applied": {t: d.workers_applied for t, d in daemons.items()},
            "qps_ratio_workers": _workers_ratios(cells),
            "grpc_status_check": status_check}
    for k, v in meta["qps_ratio_workers"].items():
        print(f"q/s ratio {k} over one process: {v:.2f}")
    for c in cells:
        if c.get("dispatcher_busy_ms_per_query") is not None:
            print(f"{c['protocol']} {c['target']}: dispatcher busy {c['dispatcher_busy_ms_per_query']:.4f} ms/q "
                  "(kairos_dispatcher_busy_seconds_total)")
        if c.get("dispatcher_cpu_ms_per_query") is not None:
            print(f"{c['protocol']} {c['target']}: dispatcher {c['dispatcher_cpu_ms_per_query']:.3f} ms/q, a front-end "
                  f"process {c['front_process_cpu_ms_per_query']:.3f} ms/q, head {c['head_cpu_cores']:.2f} cores")
    if cells:
        write_results({**meta, "summary": summary, "cells": cells}, args.out)
    if profile_text:
        Path(args.profile_out).write_text(profile_text)
        print(f"wrote {args.profile_out}")
    return 0


def _workers_ratios(cells: list[dict[str, Any]]) -> dict[str, float]:
    """q/s of each `<transport>-w<N>` daemon over the same transport's `-w1`, per protocol."""
    out = {}
    by = {(c["protocol"], c["target"]): c for c in cells}
    for (proto, name), c in by.items():
        if "-w" in name and not name.endswith("-w1"):
            base = by.get((proto, name.rsplit("-w", 1)[0] + "-w1"))
            if base and base["qps"]:
                out[f"{proto} {name}"] = c["qps"] / base["qps"]
    return out


def _pid_listening(d: Daemon, address: str) -> int | None:
    """The daemon's instance process serving `address` (its --port on the command line)."""
    port = address.rsplit(":", 1)[1]
    for pid in descendants(d.pid):
        if is_instance(pid) and f"--port {port} " in _cmdline(pid) + " ":
            return pid
    return None


if __name__ == "__main__":
    sys.exit(main())

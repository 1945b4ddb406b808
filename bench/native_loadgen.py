"""The native open-loop load generator (bench/native/openloop.c) behind the spec of `openloop.loadgen`.

`run_native(spec)` compiles the C program on first use (into bench/native/build/, again whenever the
source is newer than the binary), writes its input — the KServe v2 REST request of each batch size as
`openloop.http_request` builds it, as complete HTTP/1.1 bytes, and the schedule cumsum(gaps) / rate —
runs it, and returns the result dict of `openloop.loadgen` (protocol "http", no outcomes) from its
per-query records: the latency from each query's scheduled arrival to its whole answer, the service,
type and instance times from the answer's JSON header, the send lateness and the generator's CPU. Also
`errors_by_kind` (connect, closed, status, timeout, protocol, resource) and the connections it opened.

As a script (`python bench/native_loadgen.py --help`): each load generator's own ceiling against the
no-op target of bench/native/noop.c, which answers at once from C (the emulated no-op instance of
bench/live.py's `loadgen_ceiling` is itself a Python server, and the first to saturate).

`spec["spin_us"]` (default `SPIN_US`): how long before each send time the program stops sleeping on its
timerfd and busy-polls epoll instead. `spec["connections"]` (default `CONNECTIONS`): keep-alive connections
opened before the schedule (more are opened when more queries are in flight).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from openloop import WARMUP_FRACTION, http_request, run_loadgen, where_spent  # bench/openloop.py (puts kairosd on the path)

from kairosd.backends.http_wire import host_line, request_head  # noqa: E402

SOURCE = Path(__file__).resolve().parent / "native" / "openloop.c"
BUILD = SOURCE.parent / "build"
SPIN_US = 100
CONNECTIONS = 64
ERROR_KINDS = {1: "connect", 2: "closed", 3: "status", 4: "timeout", 5: "protocol", 6: "resource"}
# struct record of openloop.c
RECORD = np.dtype([("status", "<i4"), ("error", "<i4"), ("scheduled_ns", "<i8"), ("sent_ns", "<i8"),
                   ("received_ns", "<i8"), ("service_us", "<i8"), ("arrived_ns", "<i8"), ("done_ns", "<i8"),
                   ("type", "S32")])


def compiler() -> str | None:
    """The C compiler on PATH ($CC, cc or gcc), or None."""
    for name in (os.environ.get("CC"), "cc", "gcc"):
        if name and shutil.which(name):
            return name
    return None


def binary(name: str = "openloop") -> Path:
    """The compiled program bench/native/NAME.c (the generator, or "noop": the no-op target), built when
    missing or older than its source. Raises RuntimeError with the compiler's output when it fails, or
    when there is no C compiler."""
    source = SOURCE.parent / f"{name}.c"
    exe = BUILD / name
    if exe.is_file() and exe.stat().st_mtime >= source.stat().st_mtime:
        return exe
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc, gcc or $CC) to build bench/native/openloop.c")
    BUILD.mkdir(parents=True, exist_ok=True)
    tmp = BUILD / f"{name}.{os.getpid()}.tmp"
    out = subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-std=gnu11", "-o", str(tmp), str(source)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{cc} failed on {source}:\n{out.stderr}")
    tmp.replace(exe)  # atomic: a concurrent build or run sees the old binary or the new one
    return exe


def raw_request(address: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    """The complete HTTP/1.1 request, as kairosd's HttpWirePool writes it."""
    return request_head(path, host_line(address), headers, len(body)) + body


def write_input(path: Path, address: str, requests: list[bytes], offsets: np.ndarray, which: np.ndarray,
                timeout_s: float, spin_us: int, connections: int) -> None:
    """The program's input file (the format in openloop.c's header comment)."""
    host, _, port = address.rpartition(":")
    host_b = host.strip("[]").encode()
    parts = [b"KOL1", struct.pack("<I", len(host_b)), host_b,
             struct.pack("<IdIII", int(port), timeout_s, spin_us, connections, len(requests))]
    parts += [struct.pack("<I", len(r)) + r for r in requests]
    schedule = np.empty(len(offsets), dtype=[("offset", "<f8"), ("which", "<u4")])
    schedule["offset"], schedule["which"] = offsets, which
    parts += [struct.pack("<I", len(offsets)), schedule.tobytes()]
    path.write_bytes(b"".join(parts))


def run_native(spec: dict[str, Any]) -> dict[str, Any]:
    """`openloop.loadgen(spec)` by the native program (protocol "http" only, no outcomes)."""
    if spec.get("protocol", "grpc") != "http":
        raise ValueError('the native load generator speaks HTTP only: spec["protocol"] must be "http"')
    if spec.get("outcomes"):
        raise ValueError("outcomes are checked by the Python load generator over gRPC only")
    exe = binary()
    batches = np.asarray(spec["batches"], dtype=np.int64)
    sizes, which = np.unique(batches, return_inverse=True)
    address = spec["http_url"]
    requests = [raw_request(address, *http_request(spec["model"], int(b))) for b in sizes]
    offsets = np.cumsum(np.asarray(spec["gaps"], dtype=float)) / float(spec["rate_qps"])
    with tempfile.TemporaryDirectory(prefix="kairosd-native-loadgen-") as tmp:
        inp, outp = Path(tmp) / "input.bin", Path(tmp) / "records.bin"
        write_input(inp, address, requests, offsets, which, float(spec["timeout_s"]),
                    int(spec.get("spin_us", SPIN_US)), int(spec.get("connections", CONNECTIONS)))
        out = subprocess.run([str(exe), str(inp), str(outp)], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"native load generator exit {out.returncode}: {out.stderr.strip()[-2000:]}")
        run = json.loads(out.stdout.strip().splitlines()[-1])
        if run["record_bytes"] != RECORD.itemsize:
            raise RuntimeError(f"record size {run['record_bytes']} != {RECORD.itemsize}: openloop.c and this file differ")
        records = np.fromfile(outp, dtype=RECORD)
    return summarize(spec, batches, records, run)


def _seconds(ns: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Monotonic ns as seconds, NaN where not `ok` (a time the program did not record)."""
    return np.where(ok, ns / 1e9, math.nan)


def summarize(spec: dict[str, Any], batches: np.ndarray, rec: np.ndarray, run: dict[str, Any]) -> dict[str, Any]:
    """The result dict of `openloop.loadgen` from the program's records and run summary."""
    n = len(rec)
    start = run["start_ns"] / 1e9
    answered = rec["error"] == 0
    served = answered & (rec["service_us"] >= 0)
    scheduled = rec["scheduled_ns"] / 1e9
    sent = _seconds(rec["sent_ns"], rec["sent_ns"] > 0)
    received = _seconds(rec["received_ns"], answered)
    latency = np.where(answered, received - scheduled, math.inf)
    service = np.where(served, rec["service_us"] / 1e6, math.nan)
    arrived = _seconds(rec["arrived_ns"], served)
    ended = _seconds(rec["done_ns"], served)
    served_by = [t.decode() if ok else "" for t, ok in zip(rec["type"], served, strict=True)]
    late = np.nan_to_num(sent - scheduled, nan=0.0)
    if spec.get("dump"):  # per-query detail for a post-mortem, as openloop.loadgen writes it
        np.savez(spec["dump"], arrivals=scheduled - start, latency=latency, service=service, batches=batches,
                 late=late, served_by=np.array(served_by), sent=sent - start, arrived=arrived - start,
                 ended=ended - start, received=received - start)
    first = int(n * WARMUP_FRACTION)
    measured = latency[first:]
    kinds = {ERROR_KINDS.get(int(k), str(int(k))): int(c) for k, c in zip(*np.unique(rec["error"], return_counts=True),
                                                                         strict=True) if k}
    done_at = run["last_received_ns"] / 1e9
    wall = (run["end_ns"] - run["start_ns"]) / 1e9
    return {
        **where_spent(latency, service, served_by, sent, arrived, ended, received, first),
        "n": n, "errors": int((~answered).sum()), "offered_qps": float(spec["rate_qps"]),
        "sent_qps": n / ((run["sent_end_ns"] - run["start_ns"]) / 1e9),
        "p50_ms": float(np.percentile(measured, 50, method="higher")) * 1e3,
        "p99_ms": float(np.percentile(measured, 99, method="higher")) * 1e3,
        "lag_s": (done_at - float(scheduled[-1])) if run["last_received_ns"] else math.inf,
        "send_late_p99_ms": float(np.percentile(late, 99)) * 1e3,
        "loadgen_cpu": run["cpu_s"] / wall,
        "wall_s": wall,
        "generator": "native",
        "errors_by_kind": kinds,
        "connections": run["connections"],
        "retries": run["retries"],
    }


# --------------------------------------------------------------------------------------------------
# A load generator's own ceiling against the native no-op target (bench/native/noop.c)


@contextlib.contextmanager
def noop_target() -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """bench/native/noop.c listening on a free port: (its host:port, its process)."""
    from kairosd.backends.process import free_port

    port = free_port()
    proc = subprocess.Popen([str(binary("noop")), str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the no-op target did not start (exit {proc.wait(5)})")
        yield f"127.0.0.1:{port}", proc
    finally:
        proc.terminate()
        proc.wait(10)


def native_ceiling(rates: list[float], n: int, generators: list[str]) -> list[dict[str, Any]]:
    """Each generator against the native no-op target at each rate: ncf batch-100 queries (as
    live.loadgen_ceiling sends), Poisson arrivals; the target's CPU beside the generator's."""
    from openloop import cpu_s

    rows = []
    with noop_target() as (address, proc):
        for generator in generators:
            for rate in rates:
                c0, t0 = cpu_s(proc.pid), time.monotonic()
                r = run_loadgen({"url": address, "http_url": address, "protocol": "http", "generator": generator,
                                 "model": "ncf", "batches": [100] * n,
                                 "gaps": np.random.default_rng(0).exponential(1.0, n).tolist(), "rate_qps": rate,
                                 "timeout_s": 10.0})
                r["target_cpu"] = (cpu_s(proc.pid) - c0) / (time.monotonic() - t0)
                r["generator"] = generator
                rows.append(r)
                print(f"  {generator:6} vs native no-op: offered {rate:7.0f} sent {r['sent_qps']:7.0f} q/s, p50 "
                      f"{r['p50_ms']:.2f} p99 {r['p99_ms']:.2f} ms, send late p99 {r['send_late_p99_ms']:.2f} ms, "
                      f"loadgen cpu {r['loadgen_cpu']:.2f}, target cpu {r['target_cpu']:.2f}, errors {r['errors']}",
                      flush=True)
    return rows


def main() -> int:
    """`python bench/native_loadgen.py [--rates R,R,...] [--queries N] [--generators python,native] [--out F]`:
    the load generators' own ceiling against the native no-op target."""
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--rates", default="1000,2000,4000,7000,10000,15000")
    ap.add_argument("--queries", type=int, default=4000)
    ap.add_argument("--generators", default="python,native")
    ap.add_argument("--out", help="the rows as JSON")
    args = ap.parse_args()
    rows = native_ceiling([float(x) for x in args.rates.split(",")], args.queries, args.generators.split(","))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())

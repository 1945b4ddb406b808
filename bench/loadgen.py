"""Closed-loop load from tritonclient (grpc.aio or http.aio): C concurrent loops for D seconds.

Prints one JSON line: {"n": queries, "errors": e, "qps": ..., "p50_ms": ..., "p99_ms": ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import numpy as np
import uvloop
from tritonclient.utils import np_to_triton_dtype

from kairosd.modelgen import example_inputs


async def run(protocol: str, url: str, model: str, batch: int, concurrency: int, duration_s: float, warmup_s: float) -> dict:
    if protocol == "grpc":
        import tritonclient.grpc.aio as mod
    else:
        import tritonclient.http.aio as mod  # type: ignore[no-redef]
    client = mod.InferenceServerClient(url) if protocol == "grpc" else mod.InferenceServerClient(url, conn_limit=concurrency)
    arrays = example_inputs(model, batch, seed=0)
    inputs = []
    for name, arr in arrays.items():
        t = mod.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        t.set_data_from_numpy(arr)
        inputs.append(t)
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop_at = measure_from + duration_s

    async def loop() -> None:
        nonlocal errors
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            try:
                await client.infer(model, inputs)
            except Exception:  # noqa: BLE001 - counted, the load goes on
                errors += 1
                continue
            t1 = time.perf_counter()
            if t0 >= measure_from:
                latencies.append(t1 - t0)

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    await client.close()
    lat = np.array(latencies) * 1e3
    return {
        "n": len(lat),
        "errors": errors,
        "qps": len(lat) / duration_s,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--protocol", choices=["grpc", "http"], required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--model", default="ncf")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--duration-s", type=float, default=3.0)
    p.add_argument("--warmup-s", type=float, default=0.5)
    a = p.parse_args()
    result = uvloop.run(run(a.protocol, a.url, a.model, a.batch, a.concurrency, a.duration_s, a.warmup_s))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

"""The autoscaler on the local provider: a real `kairosd serve` scales a fleet of real workers out under a
burst from a real gRPC client and back in when it stops; no query is lost while instances drain and the
committed cost never exceeds the budget (sampled from /kairos/fleet throughout)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from kairosd.modelgen import example_inputs
from kairosd.providers.local import STOP_GRACE_S
from tests.integration.daemon_harness import start_daemon, wait_until, write_config
from tests.integration.test_serve import _children, grpc_inputs, reference

# bursts far past capacity on purpose (these tests are about losing nothing): admission against the
# deadline only, so every query is served or expires (tests/integration/test_backend_faults.py and
# test_overload.py test the default, admission "qos")
DEADLINE_ADMISSION = 'admission = "deadline"'

TYPES = """
[types.ort-1t]
backend = "onnxruntime"
threads = 1
price_usd_per_hour = 0.05
"""

AUTOSCALER = """
[autoscaler]
enabled = true
provider = "local"
fleet_name = "test-local"
budget_usd_per_hour = 0.15
objective = "min_cost"
headroom = 1.5
period_s = 0.5
window_s = 3.0
min_queries = 50
prior_batch_median = 256.0
up_periods = 1
down_periods = 3
max_concurrent_launches = 2
max_disruption_fraction = 0.5
"""


def fleet(admin: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{admin}/kairos/fleet", timeout=5) as r:
        data: dict[str, Any] = json.loads(r.read())
        return data


class Sampler(threading.Thread):
    """Reads /kairos/fleet every 50 ms until stopped."""

    def __init__(self, admin: str) -> None:
        super().__init__(daemon=True)
        self.admin = admin
        self.samples: list[dict[str, Any]] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.samples.append(fleet(self.admin))
            except OSError:
                pass
            time.sleep(0.05)


def ready(status: dict[str, Any]) -> int:
    return sum(i["state"] == "ready" for i in status["instances"])


def test_fleet_follows_a_burst_out_and_back_in_losing_no_query(tmp_path: Path) -> None:
    path = tmp_path / "kairosd.toml"
    ports = write_config(path, fleet={}, qos_ms={"dlrm": 25.0, "ncf": 10.0}, types_toml=TYPES, extra_toml=AUTOSCALER,
                         extra_scheduler=DEADLINE_ADMISSION)
    d = start_daemon(path, ports)
    sampler = Sampler(d.metrics_url)
    sampler.start()
    try:
        deadline = time.monotonic() + 30
        while ready(fleet(d.metrics_url)) < 1 and time.monotonic() < deadline:  # the idle fleet: one warm instance
            time.sleep(0.1)
        idle = fleet(d.metrics_url)
        assert idle["target"] == {"ort-1t": 1} and ready(idle) == 1, idle
        inputs = example_inputs("dlrm", 256, seed=3)
        expected = reference("dlrm", inputs)

        async def burst(rate_qps: float, duration_s: float) -> list[object]:
            c = grpcaio.InferenceServerClient(d.grpc_url)
            tasks = []
            t0 = time.monotonic()
            k = 0
            while time.monotonic() - t0 < duration_s:
                tasks.append(asyncio.ensure_future(c.infer("dlrm", grpc_inputs(inputs, grpcaio), client_timeout=20)))
                k += 1
                await asyncio.sleep(max(t0 + k / rate_qps - time.monotonic(), 0))
            out = await asyncio.gather(*tasks, return_exceptions=True)
            await c.close()
            return out

        async def load_then_watch() -> tuple[list[object], int]:
            load = asyncio.ensure_future(burst(250.0, 6.0))
            peak = 0
            while not load.done():
                peak = max(peak, ready(await asyncio.to_thread(fleet, d.metrics_url)))
                await asyncio.sleep(0.2)
            return await load, peak

        results, peak = asyncio.run(load_then_watch())
        assert peak >= 2, f"the fleet never grew past one ready instance: {sampler.samples[-1]}"
        # every query answered: with the model's output, or an explicit error (none expected here)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, [str(e) for e in errors[:3]]
        for r in results:
            np.testing.assert_allclose(r.as_numpy("click_probability"), expected, rtol=1e-5, atol=1e-6)  # type: ignore[union-attr]
        assert not [r for r in results if isinstance(r, InferenceServerException)]
        # no load: the target falls back to one instance after down_periods; the rest drain and stop
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline:
            st = fleet(d.metrics_url)
            if st["target"] == {"ort-1t": 1} and len(st["instances"]) == 1 and ready(st) == 1:
                break
            time.sleep(0.2)
        assert len(st["instances"]) == 1 and ready(st) == 1, st
        assert st["actions_total"].get("drain", 0) >= 1 and st["actions_total"].get("terminate", 0) >= 1, st
        # the terminated workers' processes are gone: the fleet forgets an instance when it terminates it,
        # and its process then gets the local provider's grace (SIGTERM, SIGKILL after STOP_GRACE_S) to exit
        wait_until("one instance process left", lambda: len(_children(d.child.pid)) == 1, STOP_GRACE_S + 5.0, 0.1)
        submitted = d.metric_values("kairos_queries_submitted_total")[""]
        completed = d.metric_values("kairos_queries_completed_total")[""]
        assert submitted == completed == len(results)
    finally:
        sampler.stop_event.set()
        sampler.join(5)
        d.stop()
    committed = [s["committed_usd_per_hour"] for s in sampler.samples]
    assert len(committed) > 50 and max(committed) <= 0.15 + 1e-9, max(committed)

"""/metrics and the health endpoints of a real `kairosd serve`: an autoscaled local fleet (one real
worker, so the planner's metrics exist too) under a short load from a real gRPC aio client on both
models; the Grafana dashboard's queries name only metrics that /metrics carries; a daemon whose
budget affords no instance is live but not ready, over HTTP and gRPC alike."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from prometheus_client.parser import text_string_to_metric_families

from kairosd.modelgen import example_inputs
from tests.integration.daemon_harness import REPO, RunningDaemon, start_daemon, write_config
from tests.integration.test_serve import grpc_inputs

# bursts far past capacity on purpose (these tests are about losing nothing): admission against the
# deadline only, so every query is served or expires (tests/integration/test_backend_faults.py and
# test_overload.py test the default, admission "qos")
DEADLINE_ADMISSION = 'admission = "deadline"'

QOS_MS = {"dlrm": 60.0, "ncf": 30.0}
N = {"dlrm": 120, "ncf": 180}
TYPES = """
[types.ort-1t]
backend = "onnxruntime"
threads = 1
price_usd_per_hour = 0.05
"""


def autoscaler(budget_usd_per_hour: float) -> str:
    return f"""
[autoscaler]
enabled = true
provider = "local"
fleet_name = "test-metrics-{int(time.time_ns())}"
budget_usd_per_hour = {budget_usd_per_hour}
objective = "min_cost"
period_s = 0.5
window_s = 3.0
min_queries = 50
"""


Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def scrape(d: RunningDaemon) -> Samples:
    """{sample name: {sorted label pairs: value}}, as Prometheus would read /metrics."""
    out: Samples = defaultdict(dict)
    for fam in text_string_to_metric_families(d.metrics()):
        for s in fam.samples:
            out[s.name][tuple(sorted(s.labels.items()))] = s.value
    return out


def one(samples: Samples, name: str, **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


def http_get(url: str) -> tuple[int, str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers["Content-Type"], json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], json.loads(e.read())


async def load(url: str) -> int:
    """N[model] queries per model, 16 at a time, both models interleaved; returns the errors seen."""
    client = grpcaio.InferenceServerClient(url)
    sem = asyncio.Semaphore(16)
    inputs = {m: grpc_inputs(example_inputs(m, 8, seed=1), grpcaio) for m in N}

    async def one_query(model: str) -> None:
        async with sem:
            await client.infer(model, inputs[model], client_timeout=30)

    order = [m for k in range(max(N.values())) for m in N if k < N[m]]
    try:
        results = await asyncio.gather(*(one_query(m) for m in order), return_exceptions=True)
    finally:
        await client.close()
    return sum(isinstance(r, BaseException) for r in results)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningDaemon, Samples]]:
    """A daemon after the load, and its /metrics once the load is over."""
    path = tmp_path_factory.mktemp("metrics") / "kairosd.toml"
    # a budget of one ort-1t: the fleet stays at one instance, whatever the planner makes of the load
    ports = write_config(path, fleet={}, qos_ms=QOS_MS, types_toml=TYPES, extra_toml=autoscaler(0.05),
                         extra_scheduler=DEADLINE_ADMISSION)
    d = start_daemon(path, ports, timeout_s=60)
    try:
        assert asyncio.run(load(d.grpc_url)) == 0
        yield d, scrape(d)
    finally:
        assert d.stop() == 0, d.child.log_tail()


def test_query_counts_and_histograms_match_the_load(loaded: tuple[RunningDaemon, Samples]) -> None:
    _, s = loaded
    total = sum(N.values())
    assert one(s, "kairos_queries_submitted_total") == one(s, "kairos_queries_completed_total") == total
    # every query is sent once, and once more for each retry (on a slowed host a send can pass its
    # backend deadline, `scheduler.backend_timeout_p99`, and the query is sent again)
    assert one(s, "kairos_dispatch_matched_total") == total + one(s, "kairos_queries_retried_total")
    assert 0 <= one(s, "kairos_dispatch_pipelined_total") <= total
    for model, n in N.items():
        assert one(s, "kairos_queries_total", model=model, outcome="completed") == n
        assert one(s, "kairos_queries_total", model=model, outcome="failed") == 0
        assert one(s, "kairos_queries_total", model=model, outcome="expired") == 0
        qos_s = QOS_MS[model] / 1e3
        assert one(s, "kairos_qos_seconds", model=model) == pytest.approx(qos_s)
        assert 0 <= one(s, "kairos_qos_violations_total", model=model) <= n
        for h in ("kairos_query_latency_seconds", "kairos_queue_wait_seconds", "kairos_service_seconds"):
            assert one(s, f"{h}_count", model=model) == n, h
            buckets = {dict(k)["le"]: v for k, v in s[f"{h}_bucket"].items() if dict(k)["model"] == model}
            assert str(qos_s) in buckets and buckets["+Inf"] == n, (h, buckets)
            counts = [v for _, v in sorted(buckets.items(), key=lambda kv: float(kv[0]))]
            assert counts == sorted(counts), (h, buckets)  # cumulative
        latency = one(s, "kairos_query_latency_seconds_sum", model=model)
        parts = one(s, "kairos_queue_wait_seconds_sum", model=model) + one(s, "kairos_service_seconds_sum", model=model)
        assert 0 < latency == pytest.approx(parts, rel=1e-6)
        # a violation is a latency over the target: exactly the queries above the le="QoS" bucket
        within = one(s, "kairos_query_latency_seconds_bucket", model=model, le=str(qos_s))
        assert one(s, "kairos_qos_violations_total", model=model) == n - within
    assert one(s, "kairos_instance_service_seconds_count", type="ort-1t") == total
    assert one(s, "kairos_instance_service_seconds_sum", type="ort-1t") == pytest.approx(
        sum(one(s, "kairos_service_seconds_sum", model=m) for m in N), rel=1e-6)
    served = sum(v for k, v in s["kairos_instance_queries_total"].items() if dict(k)["type"] == "ort-1t")
    assert served == total
    assert 1 <= one(s, "kairos_dispatch_seconds_count") <= one(s, "kairos_dispatch_rounds_total")
    assert 0 < one(s, "kairos_dispatch_seconds_sum") < 5
    # the dispatcher's busy time holds every policy call, and happens while some query is alive
    busy = one(s, "kairos_dispatcher_busy_seconds_total")
    alive = sum(one(s, "kairos_query_latency_seconds_sum", model=m) for m in N)
    assert one(s, "kairos_dispatch_seconds_sum") <= busy < alive
    assert one(s, "kairos_queue_depth") == 0 and one(s, "kairos_in_flight") == 0
    # start-up's objects were frozen out of the collector's way; its collections are timed by generation
    assert one(s, "kairos_gc_frozen_objects") > 10_000
    gc_counts = {dict(k)["generation"]: v for k, v in s["kairos_gc_pause_seconds_count"].items()}
    assert set(gc_counts) == {"0", "1", "2"} and gc_counts["0"] > 0


def test_fleet_cost_planner_and_instances(loaded: tuple[RunningDaemon, Samples]) -> None:
    d, _ = loaded
    deadline = time.monotonic() + 10
    while True:  # the fleet's view and the registry's agree once no reconcile is midway, and the plan
        # scraped is the one the status shows (the planner replans as the observed load moves)
        s, status = scrape(d), d.fleet()
        ready = sum(i["state"] == "ready" for i in status["instances"])
        if (sum(s["kairos_fleet_members"].values()) == len(status["instances"])
                and sum(v for k, v in s["kairos_instances"].items() if dict(k)["state"] == "ready") == ready
                and status.get("plan") is not None
                and one(s, "kairos_planner_plan_multiple") == pytest.approx(status["plan"]["multiple"])
                and one(s, "kairos_planner_plan_cost_usd_per_hour") == pytest.approx(status["plan"]["cost_usd_per_hour"])):
            break
        assert time.monotonic() < deadline, (dict(s["kairos_instances"]), status)
        time.sleep(0.2)
    assert ready == 1 and one(s, "kairos_instances", type="ort-1t", state="ready") == 1
    assert one(s, "kairos_fleet_budget_usd_per_hour") == pytest.approx(0.05)
    assert 0 < one(s, "kairos_fleet_committed_usd_per_hour") <= one(s, "kairos_fleet_budget_usd_per_hour") + 1e-9
    assert one(s, "kairos_fleet_committed_usd_per_hour") == pytest.approx(status["committed_usd_per_hour"])
    assert one(s, "kairos_fleet_actions_total", kind="launch") >= 1
    assert one(s, "kairos_fleet_instances_launched_total") >= 1
    assert one(s, "kairos_fleet_reconciles_total") >= 1
    assert one(s, "kairos_planner_plans_total") >= 1
    plan = status["plan"]
    assert one(s, "kairos_planner_plan_cost_usd_per_hour") == pytest.approx(plan["cost_usd_per_hour"])
    assert one(s, "kairos_planner_plan_cost_usd_per_hour") <= 0.05 + 1e-9
    assert one(s, "kairos_planner_plan_multiple") == pytest.approx(plan["multiple"])
    assert {dict(k)["model"] for k in s["kairos_planner_demand_queries_per_second"]} == set(N)
    assert one(s, "kairos_fleet_target_instances", type="ort-1t") == status["target"]["ort-1t"]


def test_every_dashboard_query_names_an_exposed_metric(loaded: tuple[RunningDaemon, Samples]) -> None:
    d, _ = loaded
    dashboard = json.loads((REPO / "configs" / "grafana" / "kairosd.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    variables = [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    names = {n for e in exprs + variables for n in re.findall(r"\bkairos_[a-z0-9_]+", e)}
    assert len(exprs) >= 20 and len(names) >= 20
    exposed = set(scrape(d))  # sample names: histograms as _bucket / _sum / _count, counters as _total
    assert sorted(names - exposed) == []
    panels = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("latency", "outcome", "queue depth", "in flight", "instances", "budget", "dispatch",
                  "violations", "autoscaler"):
        assert topic in panels, topic


def test_health_bodies_when_ready(loaded: tuple[RunningDaemon, Samples]) -> None:
    d, _ = loaded
    base = f"http://{d.http_url}"
    assert http_get(f"{base}/v2/health/live") == (200, "application/json", {"live": True})
    assert http_get(f"{base}/v2/health/ready") == (200, "application/json", {"ready": True})
    assert http_get(f"{base}/v2/models/ncf/ready") == (200, "application/json", {"name": "ncf", "ready": True})
    assert http_get(f"{base}/v2/models/nope/ready") == (503, "application/json", {"name": "nope", "ready": False})
    g = grpcclient.InferenceServerClient(d.grpc_url)
    assert g.is_server_ready() and g.is_model_ready("dlrm") and not g.is_model_ready("nope")


def test_not_ready_while_no_instance_serves(tmp_path: Path) -> None:
    """A budget below every type's price: the planner launches nothing, the daemon listens, and says it
    is live but not ready, with the same answer over HTTP and gRPC."""
    path = tmp_path / "kairosd.toml"
    ports = write_config(path, fleet={}, qos_ms=QOS_MS, types_toml=TYPES, extra_toml=autoscaler(0.01),
                         extra_scheduler=DEADLINE_ADMISSION)
    d = start_daemon(path, ports, timeout_s=60, wait_ready=False)
    try:
        time.sleep(1.0)  # two reconcile periods: nothing launched
        base = f"http://{d.http_url}"
        assert http_get(f"{base}/v2/health/live") == (200, "application/json", {"live": True})
        assert http_get(f"{base}/v2/health/ready") == (503, "application/json", {"ready": False})
        assert http_get(f"{base}/v2/models/dlrm/ready") == (503, "application/json", {"name": "dlrm", "ready": False})
        g = grpcclient.InferenceServerClient(d.grpc_url)
        assert g.is_server_live() and not g.is_server_ready() and not g.is_model_ready("dlrm")
        s = scrape(d)
        assert s["kairos_instances"] == {} and one(s, "kairos_fleet_committed_usd_per_hour") == 0
        assert one(s, "kairos_fleet_budget_usd_per_hour") == pytest.approx(0.01)
    finally:
        assert d.stop() == 0, d.child.log_tail()

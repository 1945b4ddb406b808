"""The query observer's histograms and counters (`kairosd.metrics.QueryMetrics`), scraped as Prometheus text."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kairosd.metrics import BUCKET_FACTORS, GcCollector, Histogram, QueryMetrics, qos_buckets_s


def samples(q: QueryMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(q)
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_buckets_are_multiples_of_the_qos_target_and_include_it() -> None:
    b = qos_buckets_s(0.025)
    assert len(b) == len(BUCKET_FACTORS) and 0.025 in b and b == tuple(sorted(b))
    assert b[0] == 0.0025 and b[-1] == 0.125


def test_histogram_le_is_inclusive_and_cumulative() -> None:
    h = Histogram([0.01, 0.02])
    for v in (0.005, 0.01, 0.015, 0.5):
        h.observe(v)
    assert h.cumulative() == [("0.01", 2), ("0.02", 3), ("+Inf", 4)]
    assert h.count == 4 and math.isclose(h.sum, 0.53)


def test_observer_counts_by_model_outcome_type_and_violation() -> None:
    q = QueryMetrics(["dlrm", "ncf"], ["a", "b"], {"dlrm": 0.06, "ncf": 0.03})
    q.completed(0, 1, 0.001, 0.01, 0.011)
    q.completed(0, 0, 0.05, 0.02, 0.07)  # over dlrm's 60 ms
    q.completed(1, 0, 0.0, 0.005, 0.005)
    q.ended(1, "expired")
    q.ended(0, "failed")
    q.matched(0.0002)
    s = samples(q)
    assert s[("kairos_queries_total", (("model", "dlrm"), ("outcome", "completed")))] == 2
    assert s[("kairos_queries_total", (("model", "dlrm"), ("outcome", "failed")))] == 1
    assert s[("kairos_queries_total", (("model", "ncf"), ("outcome", "expired")))] == 1
    assert s[("kairos_qos_violations_total", (("model", "dlrm"),))] == 1
    assert s[("kairos_qos_violations_total", (("model", "ncf"),))] == 0
    assert s[("kairos_query_latency_seconds_count", (("model", "dlrm"),))] == 2
    assert s[("kairos_query_latency_seconds_bucket", (("le", "0.06"), ("model", "dlrm")))] == 1
    assert s[("kairos_queue_wait_seconds_bucket", (("le", "0.03"), ("model", "ncf")))] == 1
    assert s[("kairos_instance_service_seconds_count", (("type", "a"),))] == 2
    assert s[("kairos_instance_service_seconds_count", (("type", "b"),))] == 1
    assert s[("kairos_dispatch_seconds_count", ())] == 1
    assert s[("kairos_qos_seconds", (("model", "ncf"),))] == 0.03



def test_violations_follow_the_schedulers_targets_across_a_reload() -> None:
    class Sched:
        qos_s = {"dlrm": 0.06, "ncf": 0.03}

    sched = Sched()
    q = QueryMetrics(["dlrm", "ncf"], ["a"], sched.qos_s, follow=sched)
    q.completed(0, 0, 0.05, 0.02, 0.07)
    sched.qos_s = {"dlrm": 0.1, "ncf": 0.03}  # a reload replaces the mapping whole
    q.completed(0, 0, 0.05, 0.02, 0.07)  # within the new target
    s = samples(q)
    assert s[("kairos_qos_violations_total", (("model", "dlrm"),))] == 1
    assert s[("kairos_qos_seconds", (("model", "dlrm"),))] == 0.1
    # the buckets stay those of the start: le="0.06" still a boundary
    assert s[("kairos_query_latency_seconds_bucket", (("le", "0.06"), ("model", "dlrm")))] == 0


def test_gc_collector_times_each_collection_by_generation() -> None:
    import gc

    collector = GcCollector()
    try:
        before = [h.count for h in collector.pauses]
        gc.collect(2)
        gc.collect(0)
        after = [h.count for h in collector.pauses]
        assert after[2] == before[2] + 1 and after[0] >= before[0] + 1
        assert collector.pauses[2].sum > 0
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        fams = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
        counts = {s.labels["generation"]: s.value for s in fams["kairos_gc_pause_seconds"].samples
                  if s.name == "kairos_gc_pause_seconds_count"}
        assert set(counts) == {"0", "1", "2"}
        assert all(counts[str(g)] >= n for g, n in enumerate(after))  # scraping may collect too
        assert fams["kairos_gc_frozen_objects"].samples[0].value == gc.get_freeze_count()
    finally:
        collector.close()
    assert collector._on_gc not in gc.callbacks

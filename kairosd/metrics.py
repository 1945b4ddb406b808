"""Prometheus metrics, read from the scheduler's counters at scrape time (no per-request cost)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from kairosd.scheduler import Scheduler


class SchedulerCollector(Collector):
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def collect(self) -> Iterator[Metric]:
        s = self.scheduler.stats
        for name, value, doc in [
            ("kairos_queries_submitted", s.submitted, "Queries accepted by the front ends"),
            ("kairos_queries_completed", s.completed, "Queries answered with a result"),
            ("kairos_queries_failed", s.failed, "Queries answered with a backend error"),
            ("kairos_queries_expired", s.expired, "Queries answered UNAVAILABLE at their deadline"),
            ("kairos_queries_retried", s.retried, "Queries requeued after an instance failed"),
            ("kairos_queries_http_forwarded", s.http_forwarded,
             "HTTP queries sent to an instance's HTTP endpoint as received (not converted to gRPC)"),
            ("kairos_qos_violations", s.qos_violations, "Completed queries whose latency exceeded QoS"),
            ("kairos_dispatch_rounds", s.rounds, "Dispatch rounds (matchings) run"),
            ("kairos_dispatch_matched", s.matched, "Queries sent by dispatch rounds (÷ rounds = queries per matching)"),
        ]:
            yield CounterMetricFamily(name, doc, value=value)
        yield GaugeMetricFamily("kairos_queue_depth", "Queries waiting", value=len(self.scheduler.waiting))
        yield GaugeMetricFamily("kairos_in_flight", "Queries at instances", value=self.scheduler.in_flight)
        served = CounterMetricFamily(
            "kairos_instance_queries", "Queries served per instance", labels=["instance", "type"]
        )
        for inst in self.scheduler.registry:
            served.add_metric([inst.id, inst.type], inst.served_total)
        yield served
        g = GaugeMetricFamily("kairos_instances", "Instances by type and state", labels=["type", "state"])
        counts: dict[tuple[str, str], int] = {}
        for inst in self.scheduler.registry:
            key = (inst.type, inst.state.value)
            counts[key] = counts.get(key, 0) + 1
        for (t, st), c in sorted(counts.items()):
            g.add_metric([t, st], c)
        yield g


def start_metrics_server(scheduler: Scheduler, host: str, port: int) -> Callable[[], None]:
    """Serve /metrics on host:port from a thread; returns the function that stops it."""
    registry = CollectorRegistry()
    registry.register(SchedulerCollector(scheduler))
    server, thread = start_http_server(port, addr=host, registry=registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop

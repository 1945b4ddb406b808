"""Prometheus metrics, read from the scheduler's counters at scrape time (no per-request cost)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from kairosd.fleet import Fleet
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


class FleetCollector(Collector):
    """The fleet and its autoscaler: cost against budget, members by type and state, target, actions."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def collect(self) -> Iterator[Metric]:
        f = self.fleet
        s = f.stats
        yield GaugeMetricFamily("kairos_fleet_committed_usd_per_hour",
                                "Hourly cost of every billed instance (launching, ready, suspect, draining, terminating)",
                                value=s.committed_usd_per_hour)
        yield GaugeMetricFamily("kairos_fleet_budget_usd_per_hour", "The budget the committed cost stays within",
                                value=f.budget_usd_per_hour)
        members = GaugeMetricFamily("kairos_fleet_members", "Billed instances by type and state", labels=["type", "state"])
        for (t, st), c in sorted(s.members.items()):  # a dict replaced whole each reconcile: safe to read here
            members.add_metric([t, st], c)
        yield members
        target = GaugeMetricFamily("kairos_fleet_target_instances", "The target count per instance type", labels=["type"])
        for t, c in sorted(s.target.items()):
            target.add_metric([t], c)
        yield target
        actions = CounterMetricFamily("kairos_fleet_actions", "Fleet actions applied, by kind", labels=["kind"])
        for kind in ("launch", "drain", "terminate"):
            actions.add_metric([kind], s.actions.get(kind, 0))
        yield actions
        yield CounterMetricFamily("kairos_fleet_instances_launched", "Instances launched", value=s.launched)
        yield CounterMetricFamily("kairos_fleet_instances_vanished",
                                  "Instances that disappeared without kairosd terminating them", value=s.vanished)
        yield CounterMetricFamily("kairos_fleet_reconciles", "Reconcile periods run", value=s.reconciles)
        yield CounterMetricFamily("kairos_fleet_reconcile_errors", "Reconcile periods that failed", value=s.reconcile_errors)
        yield GaugeMetricFamily("kairos_fleet_reconcile_duration_seconds", "Duration of the last reconcile",
                                value=s.last_reconcile_s)


def start_metrics_server(scheduler: Scheduler, host: str, port: int, fleet: Fleet | None = None) -> Callable[[], None]:
    """Serve /metrics on host:port from a thread; returns the function that stops it."""
    registry = CollectorRegistry()
    registry.register(SchedulerCollector(scheduler))
    if fleet is not None:
        registry.register(FleetCollector(fleet))
    server, thread = start_http_server(port, addr=host, registry=registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop

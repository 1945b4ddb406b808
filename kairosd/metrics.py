"""Prometheus metrics (`kairos_*`) and the admin endpoints, served by an aiohttp app on the daemon's event loop.

The app listens on `[server] metrics_host:metrics_port` (loopback by default), apart from the client
ports: GET /metrics, and GET /kairos/fleet (the fleet as `kairosd fleet status` shows it).

Two sources. The scheduler's `QueryObserver` hook feeds per-query histograms and counters as queries
end (`QueryMetrics`: a few list operations per query, no locks: everything runs on the event loop).
Gauges and totals that already live in the scheduler, the registry, the fleet and the planner are
read when Prometheus scrapes (`SchedulerCollector`, `FleetCollector`). The scrape handler runs on the
same event loop as the scheduler and the fleet, so it reads their state between two callbacks, never
in the middle of one.

Histogram buckets around each model's QoS target `T`: the upper bounds are `T × BUCKET_FACTORS`
(0.1, 0.25, 0.5, 0.75, 0.9, 1, 1.1, 1.5, 2, 5), so `le="T"` is always a bucket boundary and
`histogram_quantile` is precise where it matters (just below and above the target). Per instance
type, the service-time buckets are the union of every served model's bounds. Buckets are fixed when
the daemon starts; a reload that changes a QoS target moves the violation threshold
(`kairos_qos_violations_total`, `kairos_qos_seconds`) at once and the buckets at the next start.
"""

from __future__ import annotations

import gc
import logging
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from kairosd.fleet import Fleet
    from kairosd.scheduler import Scheduler

log = logging.getLogger(__name__)

# bucket upper bounds as multiples of a model's QoS target (see the module docstring)
BUCKET_FACTORS: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.5, 2.0, 5.0)
# one dispatch policy call: 10 µs .. 100 ms
DISPATCH_BUCKETS_S: tuple[float, ...] = (
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1,
)
OUTCOMES: tuple[str, ...] = ("completed", "failed", "expired", "refused", "shed")
# one garbage collection (the event loop stands still for it): 50 µs .. 100 ms
GC_BUCKETS_S: tuple[float, ...] = (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1)


def qos_buckets_s(qos_s: float) -> tuple[float, ...]:
    """Histogram upper bounds for a model with QoS target `qos_s`: qos_s × BUCKET_FACTORS, e.g.
    0.025 → (0.0025, 0.00625, 0.0125, 0.01875, 0.0225, 0.025, 0.0275, 0.0375, 0.05, 0.125)."""
    return tuple(sorted({round(qos_s * f, 9) for f in BUCKET_FACTORS}))


class _HasQos(Protocol):
    """What QueryMetrics follows: the scheduler's current QoS targets."""

    @property
    def qos_s(self) -> Mapping[str, float]: ...


class Histogram:
    """A histogram with fixed upper bounds, observed on one thread (the event loop): one bisect, two
    additions. Counts are per bucket here and made cumulative when scraped."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(sorted(set(bounds)))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # the first bound ≥ value: Prometheus' `le`
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for bound, c in zip(self.bounds, self.counts, strict=False):
            total += c
            out.append((floatToGoString(bound), total))
        out.append(("+Inf", total + self.counts[-1]))
        return out


class _ModelSeries:
    """Everything observed about one model's queries."""

    __slots__ = ("name", "qos_s", "latency", "wait", "service", "violations", "ended")

    def __init__(self, name: str, qos_s: float) -> None:
        self.name = name
        self.qos_s = qos_s
        bounds = qos_buckets_s(qos_s)
        self.latency = Histogram(bounds)
        self.wait = Histogram(bounds)
        self.service = Histogram(bounds)
        self.violations = 0
        self.ended = dict.fromkeys(OUTCOMES[1:], 0)  # queries that got no result, by outcome


class QueryMetrics(Collector):
    """The scheduler's `QueryObserver`: per model (by the scheduler's model index) and per instance type
    (by type index), series built once, so a query's ending costs a list index and a few bisects."""

    def __init__(self, models: Sequence[str], types: Sequence[str], qos_s: Mapping[str, float],
                 follow: _HasQos | None = None) -> None:
        # indexed like the profile table (the scheduler's model_idx / Instance.type_idx); a profiled
        # model that is not served gets the largest target's buckets and is never observed
        fallback = max(qos_s.values(), default=1.0)
        self.models = [_ModelSeries(m, qos_s.get(m, fallback)) for m in models]
        self.served = [s for s in self.models if s.name in qos_s]
        union = {b for s in self.served for b in s.latency.bounds}
        self.types = [(t, Histogram(union)) for t in types]
        self.dispatch = Histogram(DISPATCH_BUCKETS_S)
        self._qos_source: Mapping[str, float] = qos_s
        # the scheduler whose targets violations are judged against: its `qos_s` is replaced whole by a
        # reload (Scheduler.reconfigure), so an identity check per query notices the change
        self._follow = follow

    def track_qos(self, qos_s: Mapping[str, float]) -> None:
        """Judge violations against these targets from now on (the scheduler's, after a reload)."""
        self._qos_source = qos_s
        for s in self.models:
            if s.name in qos_s:
                s.qos_s = qos_s[s.name]

    # ---- QueryObserver (the hot path) ----------------------------------------------------------
    def completed(self, model_idx: int, type_idx: int, wait_s: float, service_s: float, total_s: float) -> None:
        if self._follow is not None and self._follow.qos_s is not self._qos_source:
            self.track_qos(self._follow.qos_s)
        s = self.models[model_idx]
        s.latency.observe(total_s)
        s.wait.observe(wait_s)
        s.service.observe(service_s)
        self.types[type_idx][1].observe(service_s)
        if total_s > s.qos_s:
            s.violations += 1

    def ended(self, model_idx: int, outcome: str) -> None:
        self.models[model_idx].ended[outcome] += 1

    def matched(self, duration_s: float) -> None:
        self.dispatch.observe(duration_s)

    # ---- scrape ------------------------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        if self._follow is not None and self._follow.qos_s is not self._qos_source:
            self.track_qos(self._follow.qos_s)
        queries = CounterMetricFamily("kairos_queries", "Queries that ended, by model and outcome (completed: "
                                      "answered by an instance; failed: a backend error; expired: the deadline passed; "
                                      "refused: admission control at arrival; shed: admission control while queued)",
                                      labels=["model", "outcome"])
        violations = CounterMetricFamily("kairos_qos_violations", "Completed queries whose end-to-end latency "
                                         "exceeded the model's QoS target", labels=["model"])
        qos = GaugeMetricFamily("kairos_qos_seconds", "The model's QoS target (end-to-end latency)", labels=["model"])
        hists = {
            "latency": HistogramMetricFamily("kairos_query_latency_seconds", "End-to-end latency of completed "
                                             "queries: arrival at kairosd to the instance's answer", labels=["model"]),
            "wait": HistogramMetricFamily("kairos_queue_wait_seconds", "Time a completed query waited in "
                                          "kairosd's queue before it was sent to an instance", labels=["model"]),
            "service": HistogramMetricFamily("kairos_service_seconds", "Time a completed query spent at its "
                                             "instance (sent to answered, transport included)", labels=["model"]),
        }
        for s in self.served:
            labels = [s.name]
            queries.add_metric([s.name, "completed"], s.latency.count)
            for outcome, n in s.ended.items():
                queries.add_metric([s.name, outcome], n)
            violations.add_metric(labels, s.violations)
            qos.add_metric(labels, s.qos_s)
            for key, h in (("latency", s.latency), ("wait", s.wait), ("service", s.service)):
                hists[key].add_metric(labels, h.cumulative(), h.sum)
        yield queries
        yield violations
        yield qos
        yield from hists.values()
        per_type = HistogramMetricFamily("kairos_instance_service_seconds", "Time completed queries spent at "
                                         "instances of this type (every model)", labels=["type"])
        for t, h in self.types:
            per_type.add_metric([t], h.cumulative(), h.sum)
        yield per_type
        dispatch = HistogramMetricFamily("kairos_dispatch_seconds", "Duration of one dispatch policy call "
                                         "(cost matrix and matching) in a dispatch round")
        dispatch.add_metric([], self.dispatch.cumulative(), self.dispatch.sum)
        yield dispatch


class SchedulerCollector(Collector):
    """The scheduler's totals, its queue and the registry's instances, read at scrape time."""

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
            ("kairos_queries_refused", s.refused, "Queries refused by admission control at arrival (RESOURCE_EXHAUSTED / 429)"),
            ("kairos_queries_shed", s.shed, "Queued queries answered RESOURCE_EXHAUSTED once they could no longer meet "
             "their QoS target"),
            ("kairos_backend_timeouts", s.backend_timeouts, "Sends abandoned at their backend deadline (a hung or far "
             "too slow instance); the query is retried on another instance while its deadline allows"),
            ("kairos_queries_http_forwarded", s.http_forwarded,
             "HTTP queries sent to an instance's HTTP endpoint as received (not converted to gRPC)"),
            ("kairos_dispatch_rounds", s.rounds, "Dispatch rounds that granted instance slots"),
            ("kairos_dispatch_matched", s.matched, "Queries sent by dispatch rounds (÷ rounds = queries per matching)"),
            ("kairos_dispatch_pipelined", s.pipelined, "Of the queries sent, those sent to an instance slot still "
             "busy, to wait there behind it (scheduler.pipeline)"),
            ("kairos_dispatcher_busy_seconds", self.scheduler.busy.seconds, "Event-loop time spent in the "
             "dispatcher: admission, queueing, dispatch rounds, grants and completions, and with front-end "
             "processes reading their query descriptors and writing grants (wall clock inside those steps)"),
        ]:
            yield CounterMetricFamily(name, doc, value=value)
        yield GaugeMetricFamily("kairos_queue_depth", "Queries waiting in kairosd's queue",
                                value=len(self.scheduler.waiting))
        yield GaugeMetricFamily("kairos_in_flight", "Queries granted an instance slot and not yet answered",
                                value=self.scheduler.in_flight)
        yield GaugeMetricFamily("kairos_admission_lag_seconds", "How late answers come against their admission "
                                "estimate (EWMA); admission control adds it to its estimates", value=self.scheduler.lag_s)
        yield GaugeMetricFamily("kairos_dispatch_margin_seconds", "The matching's reserve for what its latencies leave "
                                "out: margin_ms, or twice the median measured hop when larger",
                                value=float(getattr(self.scheduler.policy, "margin_s", 0.0)))
        yield GaugeMetricFamily("kairos_head_hop_seconds", "Answered minus the finish expected at the grant "
                                "(grant + mean service; EWMA): the head's own hop to an instance and back",
                                value=self.scheduler.hop_s)
        served = CounterMetricFamily("kairos_instance_queries", "Queries answered per instance",
                                     labels=["instance", "type"])
        counts: Counter[tuple[str, str]] = Counter()
        in_flight: Counter[str] = Counter()
        for inst in self.scheduler.registry:
            served.add_metric([inst.id, inst.type], inst.served_total)
            counts[(inst.type, inst.state.value)] += 1
            in_flight[inst.type] += inst.in_flight
        yield served
        g = GaugeMetricFamily("kairos_instances", "Instances in the registry by type and state", labels=["type", "state"])
        for (t, st), c in sorted(counts.items()):
            g.add_metric([t, st], c)
        yield g
        f = GaugeMetricFamily("kairos_instance_in_flight", "Queries at instances, by type", labels=["type"])
        for t, c in sorted(in_flight.items()):
            f.add_metric([t], c)
        yield f


class FleetCollector(Collector):
    """The fleet and its autoscaler: cost against budget, members by type and state, target, actions,
    and the planner's last plan when the target is planned (`kairosd.autoscale.target.PlannerTarget`)."""

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
        for (t, st), c in sorted(s.members.items()):
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
        yield from self._planner()

    def _planner(self) -> Iterator[Metric]:
        plans_made = getattr(self.fleet.target_fn, "plans_made", None)
        if plans_made is None:  # a static target: no planner
            return
        yield CounterMetricFamily("kairos_planner_plans", "Plans made (the load moved or the available types changed)",
                                  value=plans_made)
        refiner = getattr(self.fleet.target_fn, "refiner", None)
        if refiner is not None:  # autoscaler.selector = "kairos_plus": a walk refines each plan by simulation
            yield CounterMetricFamily("kairos_planner_plans_refined", "Plans whose target became the walk's "
                                      "choice (when the walk ended, or kept for a new plan of the same fleet and mix)",
                                      value=getattr(self.fleet.target_fn, "plans_refined", 0))
            yield CounterMetricFamily("kairos_planner_refine_walks", "Walks started (Kairos+ for max_throughput, "
                                      "the cheapest simulated cover for min_cost)", value=refiner.walks)
            yield CounterMetricFamily("kairos_planner_refine_failures",
                                      "Walks that gave no choice (failed or past their deadline)",
                                      value=refiner.failures)
            yield CounterMetricFamily("kairos_planner_refine_superseded",
                                      "Walks killed before they ended: a newer plan for another fleet, mix, rate "
                                      "(min_cost) or set of available types made them stale", value=refiner.superseded)
        plan = getattr(self.fleet.target_fn, "last_plan", None)
        if plan is None:
            return
        yield GaugeMetricFamily("kairos_planner_plan_cost_usd_per_hour", "Hourly cost of the last plan",
                                value=plan.cost_usd_per_hour)
        yield GaugeMetricFamily("kairos_planner_plan_multiple", "The last plan's estimated capacity as a multiple "
                                "of the demand it was planned for", value=plan.multiple)
        counts = GaugeMetricFamily("kairos_planner_plan_instances", "Instances per type in the last plan", labels=["type"])
        for t, c in sorted(plan.counts.items()):
            counts.add_metric([t], c)
        yield counts
        demand = GaugeMetricFamily("kairos_planner_demand_queries_per_second", "The query rate per model that "
                                   "the last plan was made for", labels=["model"])
        for d in getattr(self.fleet.target_fn, "last_demand", []):
            demand.add_metric([d.model], d.rate_qps)
        yield demand


class _Refusals(Protocol):
    """What FrontEndCollector reads from the authenticator (`kairosd.server.access.Authenticator`)."""

    @property
    def refused_total(self) -> Mapping[str, int]: ...


class _Gate(Protocol):
    """What FrontEndCollector reads from the HTTP connection gate (`kairosd.server.http_limits.ConnectionGate`)."""

    open: int
    refused_total: int
    header_timeouts_total: int


class FrontEndCollector(Collector):
    """Requests refused for want of a valid bearer token, per protocol, and the HTTP port's connections:
    open now, refused at server.max_connections, closed at server.header_timeout_s."""

    def __init__(self, auth: _Refusals | None, gate: _Gate | None,
                 others: Callable[[], list[dict[str, Any]]] | None = None) -> None:
        self.auth = auth
        self.gate = gate
        self.others = others  # the other front-end processes' counters (`front_end_counters`), summed in

    def collect(self) -> Iterator[Metric]:
        others = self.others() if self.others is not None else []
        if self.auth is not None:
            unauth = CounterMetricFamily("kairos_unauthenticated", "requests refused UNAUTHENTICATED / 401 (no or a "
                                         "wrong bearer token)", labels=["protocol"])
            refused = dict(self.auth.refused_total)
            for o in others:
                for protocol, n in o.get("unauthenticated", {}).items():
                    refused[protocol] = refused.get(protocol, 0) + n
            for protocol, n in sorted(refused.items()):
                unauth.add_metric([protocol], n)
            yield unauth
        if self.gate is not None:
            g = front_end_counters(None, self.gate)
            for o in others:
                for k in ("http_open", "http_refused", "header_timeouts"):
                    g[k] += o.get(k, 0)
            yield GaugeMetricFamily("kairos_http_connections_open", "client connections open on the HTTP port",
                                    value=g["http_open"])
            yield CounterMetricFamily("kairos_http_connections_refused", "HTTP connections refused (503) at "
                                      "server.max_connections", value=g["http_refused"])
            yield CounterMetricFamily("kairos_http_header_timeouts", "HTTP connections closed because request "
                                      "headers took longer than server.header_timeout_s",
                                      value=g["header_timeouts"])


def front_end_counters(auth: _Refusals | None, gate: _Gate | None) -> dict[str, Any]:
    """A front-end process's own counters, as it reports them to the dispatcher (kairosd.ipc COUNTERS)."""
    out: dict[str, Any] = {"unauthenticated": dict(auth.refused_total) if auth is not None else {}}
    if gate is not None:
        out.update(http_open=gate.open, http_refused=gate.refused_total, header_timeouts=gate.header_timeouts_total)
    else:
        out.update(http_open=0, http_refused=0, header_timeouts=0)
    return out


class FrontEndsCollector(Collector):
    """Queries submitted per front-end process (`[server] workers` > 1): front 0 is the main process,
    the others reach the dispatcher over their link (`kairosd.fronts`). How evenly SO_REUSEPORT spread
    the clients' connections shows here."""

    def __init__(self, scheduler: Scheduler, remote: Callable[[], dict[int, int]]) -> None:
        self.scheduler = scheduler
        self.remote = remote

    def collect(self) -> Iterator[Metric]:
        per = self.remote()
        fam = CounterMetricFamily("kairos_frontend_queries", "Queries submitted, by the front-end process that "
                                  "received them (0: the main process)", labels=["front"])
        fam.add_metric(["0"], self.scheduler.stats.submitted - sum(per.values()))
        for k, n in sorted(per.items()):
            fam.add_metric([str(k)], n)
        yield fam


class GcCollector(Collector):
    """The process's garbage collections, timed through `gc.callbacks`: each one holds the event loop
    (and every query in flight) for its duration. Also how many objects `kairosd.heap.settle` froze out
    of the collector's way. `close()` removes the callback."""

    def __init__(self) -> None:
        self.pauses = [Histogram(GC_BUCKETS_S) for _ in range(3)]  # by generation
        self._started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: Mapping[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses[info["generation"]].observe(time.perf_counter() - self._started)

    def close(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def collect(self) -> Iterator[Metric]:
        pauses = HistogramMetricFamily("kairos_gc_pause_seconds", "Duration of one garbage collection of the "
                                       "head's process, by the oldest generation it collected (the event loop "
                                       "stands still meanwhile)", labels=["generation"])
        for generation, h in enumerate(self.pauses):
            pauses.add_metric([str(generation)], h.cumulative(), h.sum)
        yield pauses
        yield GaugeMetricFamily("kairos_gc_frozen_objects", "Objects frozen out of garbage collection after "
                                "start-up and each reload (kairosd.heap)", value=gc.get_freeze_count())


def build_registry(scheduler: Scheduler, fleet: Fleet | None = None) -> tuple[CollectorRegistry, QueryMetrics]:
    """The collectors over the scheduler (and fleet), and the QueryMetrics to attach as its observer."""
    queries = QueryMetrics(scheduler.profiles.models, scheduler.profiles.types, scheduler.qos_s, follow=scheduler)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(queries)
    registry.register(SchedulerCollector(scheduler))
    if fleet is not None:
        registry.register(FleetCollector(fleet))
    return registry, queries


_REGISTRY_KEY = web.AppKey("kairosd_metrics_registry", CollectorRegistry)


FleetStatus = Callable[[], Mapping[str, object]]
_FLEET_STATUS_KEY: web.AppKey[FleetStatus] = web.AppKey("kairosd_fleet_status")


async def _metrics(request: web.Request) -> web.Response:
    # on the event loop: the collectors read the scheduler's and the fleet's state between callbacks
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return web.Response(body=encoder(request.app[_REGISTRY_KEY]), headers={"Content-Type": content_type})


async def _fleet_status(request: web.Request) -> web.Response:
    """kairosd's own (non-KServe) view of its fleet: instances, cost against budget, target, last plan
    (what `kairosd fleet status` prints)."""
    return web.json_response(request.app[_FLEET_STATUS_KEY]())


async def _not_found(request: web.Request) -> web.Response:
    return web.json_response({"error": f"kairosd's admin port has no endpoint {request.method} {request.path}; "
                              "it serves GET /metrics and GET /kairos/fleet"}, status=404)


def build_metrics_app(
    registry: CollectorRegistry, fleet_status: Callable[[], Mapping[str, object]] | None = None
) -> web.Application:
    """The admin application: GET /metrics, and GET /kairos/fleet when `fleet_status` is given."""
    app = web.Application()
    app[_REGISTRY_KEY] = registry
    app.router.add_get("/metrics", _metrics)
    if fleet_status is not None:
        app[_FLEET_STATUS_KEY] = fleet_status
        app.router.add_get("/kairos/fleet", _fleet_status, allow_head=False)
    app.router.add_route("*", "/{tail:.*}", _not_found)
    return app


async def start_metrics_server(
    scheduler: Scheduler, host: str, port: int, fleet: Fleet | None = None,
    fleet_status: Callable[[], Mapping[str, object]] | None = None,
    extra: Iterable[Collector] = (),
) -> Callable[[], Awaitable[None]]:
    """Attach the query observer to the scheduler and serve the admin app (/metrics, /kairos/fleet from
    `fleet_status`) on host:port from this event loop; `extra` collectors are registered beside the
    scheduler's and the fleet's. Returns the coroutine function that stops serving (and detaches the
    observer). OSError when the port cannot be bound."""
    registry, queries = build_registry(scheduler, fleet)
    for collector in extra:
        registry.register(collector)
    runner = web.AppRunner(build_metrics_app(registry, fleet_status), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_port=False).start()
    except BaseException:
        await runner.cleanup()
        raise
    scheduler.observer = queries
    log.info("metrics and admin endpoints listening on %s:%d (/metrics, /kairos/fleet)", host, port)

    async def stop() -> None:
        if scheduler.observer is queries:
            scheduler.observer = None
        await runner.cleanup()

    return stop

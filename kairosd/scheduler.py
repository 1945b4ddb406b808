"""The serving loop: a waiting queue, dispatch rounds, sends to instances, completions, deadlines.

Dispatch rounds are coalesced: an arrival or a completion only schedules a round for the next
event-loop iteration (`call_soon`), so every query that arrived in the same iteration is matched in
one `policy(snapshot)` call and the matching's cost is shared by all of them. The exception is an
arrival to an empty queue with no round pending: it is matched at once (there is nothing to share
the round with, and waiting an iteration would only add latency). A slow tick runs only
while queries wait, to answer those whose deadline passed (UNAVAILABLE, never a silent drop).
`_send` is the one place a query goes to an instance, and where a failed instance's query is
requeued for another (retry, up to `max_attempts`). It also picks the transport: an HTTP query goes
as the client's bytes to an instance with an HTTP endpoint, converted to gRPC to one without.

Admission (`kairosd.admission`, pure): at submit a query the fleet cannot serve by its target (QoS or
deadline) given the queued work ahead is refused at once (Overloaded: RESOURCE_EXHAUSTED / 429), and
the queue is bounded per model and in bytes; a queued query that can no longer make its target is
shed by the tick or the next round, not held until its deadline. Each send has a backend deadline
(a multiple of the type's profiled p99): an instance that hangs or is far too slow loses the query
to another instance and becomes SUSPECT until the fleet's probe sees it answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import grpc
import numpy as np
from tritonclient.grpc import service_pb2

from kairosd import admission
from kairosd.admission import Ahead, Capacity
from kairosd.autoscale.load import LoadWindow
from kairosd.backends.grpc_http import grpc_over_http_default, infer_over_http
from kairosd.backends.http_client import HttpForward, HttpReply
from kairosd.busy import BusyMeter
from kairosd.config import SchedulerConfig
from kairosd.dispatch import Policy, Snapshot
from kairosd.errors import BackendError, ModelNotFound, Overloaded, Unavailable
from kairosd.profiles import ProfileTable
from kairosd.registry import Instance, InstanceState, Registry
from kairosd.repository import ModelSpec
from kairosd.snapshot_cache import STATELESS_POLICIES, FreshRound, FreshRounds

log = logging.getLogger(__name__)


@dataclass(eq=False, slots=True)
class Query:
    request: service_pb2.ModelInferRequest | None  # None for an HTTP query until a gRPC-only instance needs it
    model: str
    model_idx: int
    batch: int
    qos_s: float
    arrival_s: float
    deadline_s: float
    # resolved by a dispatch round with the instance to send to (a grant), or with an error
    future: asyncio.Future[tuple[Instance, float]]
    raw: bytes | None = None  # the gRPC request's bytes as received, forwarded as they are
    http: HttpForward | None = None  # an HTTP request as received
    attempts: int = 0
    target_s: float = 0.0  # answered by then or not worth serving (kairosd.admission.target_s)
    # a query held by another front-end process: its callbacks (on_grant, on_end) and, while it is
    # sent, its grant (instance, expected finish, sent time, whether the backend deadline bounds it)
    remote: tuple[Callable[..., None], Callable[..., None]] | None = None
    grant: tuple[Instance, float, float, bool] | None = None
    tag: int = 0  # the holder's id for it (a front-end process's query id)
    eta_s: float = 0.0  # the admission estimate of its answer time (0: none, the fleet had no capacity for it)
    size: int = 0  # request bytes, counted against scheduler.max_queue_bytes while queued
    pipelined: bool = False  # its grant was a slot still busy (it waits there behind another query)


class QueryObserver(Protocol):
    """Receives every query's ending and every matching's duration (metrics). Called on the event loop,
    on the hot path: implementations keep to a few cheap operations."""

    def completed(self, model_idx: int, type_idx: int, wait_s: float, service_s: float, total_s: float) -> None:
        """A query answered by an instance: time queued (arrival → sent), at the instance, end to end."""

    def ended(self, model_idx: int, outcome: str) -> None:
        """A query that got no result: outcome "failed" (backend error), "expired" (deadline), "refused"
        (admission control, at submit) or "shed" (admission control, while queued)."""

    def matched(self, duration_s: float) -> None:
        """One dispatch policy call (cost matrix and matching) took `duration_s`."""


MARGIN_STEP_S = 2e-4  # the matching's margin follows the measured hop in steps of at least this
MARGIN_PERIOD_S = 0.25  # and is re-derived from the hop feedback at most this often


class _Retry(Exception):
    """Internal: the instance failed in a way another instance may not; requeue the query."""


# Backend failures that say the instance itself is unwell (not the query): it leaves dispatch until
# the fleet's probe sees it answer. Other retryable failures (an INTERNAL error, an HTTP 500) are
# retried elsewhere without suspecting the instance.
_SUSPECT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED,
                            grpc.StatusCode.DEADLINE_EXCEEDED})


@dataclass(slots=True)
class SchedulerStats:
    """Counters read by metrics and tests; updated where the event happens, never scanned."""

    submitted: int = 0
    completed: int = 0
    failed: int = 0
    expired: int = 0
    retried: int = 0
    refused: int = 0  # admission control, at submit
    shed: int = 0  # admission control, while queued
    backend_timeouts: int = 0  # sends abandoned at their backend deadline (hung or far too slow instance)
    http_forwarded: int = 0  # HTTP queries sent to an instance's HTTP endpoint as received
    qos_violations: int = 0
    rounds: int = 0
    matched: int = 0
    pipelined: int = 0  # of the matched, sent to a slot still busy (`scheduler.pipeline`)


class Scheduler:
    def __init__(
        self,
        registry: Registry,
        profiles: ProfileTable,
        policy: Policy,
        qos_s: Mapping[str, float],
        config: SchedulerConfig,
    ) -> None:
        self.registry = registry
        self.profiles = profiles
        self.policy = policy
        self.config = config
        self.qos_s = dict(qos_s)
        self._grpc_over_http = grpc_over_http_default()  # a gRPC query to an instance's HTTP endpoint (grpc_http)
        self.model_idx = {m: profiles.model_index(m) for m in qos_s}
        self._qos_min_s = min(qos_s.values(), default=1.0)
        # mean service seconds [model][type][batch] as nested lists: one lookup per grant, no numpy scalars
        self._mean_s: list[list[list[float]]] = profiles.mean_s.tolist()
        self._p99_s: list[list[list[float]]] = profiles.p99_s.tolist()
        self._top_batch = profiles.mean_s.shape[2] - 1
        self._policy_set()
        self.waiting: deque[Query] = deque()
        self.stats = SchedulerStats()
        # the event loop's time in the dispatcher: admission, queueing, rounds, grants, completions (and, with
        # front-end processes, reading their descriptors and writing grants: kairosd.fronts passes it on)
        self.busy = BusyMeter()
        # the steps the event loop calls back, counted whole
        self._timed_round = self.busy.timed(self._round)
        self._timed_tick = self.busy.timed(self._tick)
        self._timed_remote_granted = self.busy.timed(self._remote_granted)
        self.accepting = True
        self._refused_stopping_s = 0.0  # when the last query was refused because the scheduler stopped accepting
        self._margin_due_s = 0.0  # when the matching's margin may next follow the hop feedback (`_adapt_margin`)
        self._round_pending = False
        self._tick_handle: asyncio.TimerHandle | None = None
        self._in_flight = 0
        self._loop = asyncio.get_running_loop()
        self.clock = self._loop.time
        self.load: LoadWindow | None = None  # the autoscaler's observed-load window, when it runs
        self.observer: QueryObserver | None = None  # metrics: every query's ending, every matching's duration
        self._pinned_version = -1
        self._has_pinned = False
        # admission: the READY fleet's capacity (rebuilt when the registry changes) and what is queued
        self._capacity: Capacity | None = None
        self._capacity_version = -1
        self._queued_n = [0] * len(profiles.models)  # per profile model
        self._queued_work_s = 0.0  # fleet-seconds of queued queries (kairosd.admission)
        self._queued_bytes = 0
        self._queued_total = 0
        self._busy_until_sum = 0.0  # Σ expected finish of the queries in flight (their mean residual)
        self.feedback = admission.Feedback()  # what the admission estimate leaves out, measured on answers
        registry.on_change(self._kick)

    # ---- front-end side -------------------------------------------------------------------
    async def submit(
        self,
        request: service_pb2.ModelInferRequest | None,
        spec: ModelSpec,
        batch: int,
        timeout_s: float | None = None,
        raw: bytes | None = None,
        http: HttpForward | None = None,
    ) -> bytes | HttpReply:
        """Queue one validated query (a gRPC `request`, or an `http` one) and wait for its response:
        a serialized ModelInferResponse, or the instance's HttpReply when `http` was forwarded as it is."""
        busy = self.busy
        t0 = busy.start()
        now = self._loop.time()
        size = len(raw) if raw is not None else len(http.body) if http is not None else 0
        try:
            q = self._new_query(spec.name, batch, timeout_s, now, now, size, request, raw, http)
        except BaseException:
            busy.stop(t0)
            raise
        while True:
            work = self._queue(q)
            busy.stop(t0)
            try:
                inst, expected = await q.future  # a dispatch round granted an instance (or raised)
            except asyncio.CancelledError:
                self._release_unused_grant(q)
                raise
            finally:
                self._dequeued(q, work)
            try:
                return await self._send(inst, q, expected)
            except _Retry:
                t0 = busy.start()
                q.future = self._loop.create_future()

    def _new_query(self, model: str, batch: int, timeout_s: float | None, arrival_s: float, now: float, size: int,
                   request: service_pb2.ModelInferRequest | None = None, raw: bytes | None = None,
                   http: HttpForward | None = None) -> Query:
        """A new query, counted and admitted (raises Unavailable while stopping, ModelNotFound, Overloaded)."""
        if not self.accepting:
            self._refused_stopping_s = now
            raise Unavailable("kairosd is shutting down; retry against another replica")
        idx = self.model_idx.get(model)
        if idx is None:
            raise ModelNotFound(f"model {model!r} is not served: it has no QoS target in the config")
        cfg = self.config
        timeout = cfg.default_timeout_s if timeout_s is None else timeout_s  # the client's deadline, as sent
        if cfg.max_timeout_s > 0:
            timeout = min(timeout, cfg.max_timeout_s)
        qos = self.qos_s[model]
        q = Query(request, model, idx, batch, qos, arrival_s, arrival_s + timeout, self._loop.create_future(), raw, http)
        # the client measures from before kairosd's arrival stamp and after its answer: reserve margin_ms, or
        # the measured hop to an instance and back when larger (the client's hop to kairosd is of that kind)
        reserve = max(cfg.margin_ms / 1e3, self.feedback.hop_guard(now))
        q.target_s = admission.target_s(cfg.admission, arrival_s, q.deadline_s, qos, cfg.admission_slack, reserve)
        q.size = size
        self.stats.submitted += 1
        if self.load is not None:
            self.load.record(idx, batch, now)  # refused queries count: the autoscaler sees the offered load
        self._admit(q, now)
        return q

    def _queue(self, q: Query) -> float:
        """Put `q` in the queue (a retried one keeps its place among the oldest) and match it now if it is
        alone, else at the next round; returns the fleet-seconds it is counted for."""
        if q.attempts:
            self.waiting.appendleft(q)
        else:
            self.waiting.append(q)
        work = self._enqueued(q)
        if len(self.waiting) == 1 and not self._round_pending:
            self._round()  # alone in the queue: nothing to share a round with, match it now
        else:
            self._kick()
        return work

    # ---- queries whose bytes stay in another front-end process (kairosd.fronts) ------------------
    def remote_submit(self, model: str, batch: int, timeout_s: float | None, arrival_s: float, size: int,
                      on_grant: Callable[[Query, Instance, float], None],
                      on_end: Callable[[Query, BaseException], None]) -> Query:
        """Admit and queue a query that another front-end process holds and sends itself. When a round
        grants it a slot, `on_grant(q, instance, timeout_s)`: the front end sends it with that timeout
        and reports with `remote_done`. When it ends without a send (shed, expired, the scheduler
        closed, a final failure), `on_end(q, error)`. Raises like `submit` when it is not admitted."""
        now = self._loop.time()
        q = self._new_query(model, batch, timeout_s, min(arrival_s, now), now, size)
        q.remote = (on_grant, on_end)
        self._queue_remote(q)
        return q

    def _queue_remote(self, q: Query) -> None:
        work = self._queue(q)
        q.future.add_done_callback(partial(self._timed_remote_granted, q, work))

    def _remote_granted(self, q: Query, work: float, f: asyncio.Future[tuple[Instance, float]]) -> None:
        self._dequeued(q, work)
        if f.cancelled():  # its front end withdrew it before a grant
            return
        assert q.remote is not None
        exc = f.exception()
        if exc is not None:
            q.remote[1](q, exc)
            return
        inst, expected = f.result()
        sent_s, timeout, backend_bound = self._sending(q, inst)
        q.grant = (inst, expected, sent_s, backend_bound)
        q.remote[0](q, inst, timeout)

    def remote_done(self, q: Query, end_s: float, error: BackendError | None = None, cancelled: bool = False) -> None:
        """The front end's report on a granted query: answered (no `error`), its client gone
        (`cancelled`), or failed with `error` — then it is retried (granted again later) or ended
        (`on_end` with the client's error)."""
        grant, q.grant = q.grant, None
        if grant is None:
            return
        inst, expected, sent_s, backend_bound = grant
        self._release(inst, expected)
        if cancelled:
            return
        if error is None:
            self._completed(q, inst, sent_s, max(end_s, sent_s), expected)
            return
        assert q.remote is not None
        if self._failed(q, inst, error, backend_bound):
            q.future = self._loop.create_future()
            self._queue_remote(q)
        elif error.status is grpc.StatusCode.DEADLINE_EXCEEDED:
            q.remote[1](q, self._expired_error(q, f"instance {inst.id} did not answer in time"))
        else:
            q.remote[1](q, error)

    # ---- admission ----------------------------------------------------------------------------
    @property
    def lag_s(self) -> float:
        """How late answers come against their admission estimate (faded; `kairosd.admission.Feedback`)."""
        return self.feedback.lag(self._loop.time())

    @property
    def hop_s(self) -> float:
        """The head's hop to an instance and back beyond the profile's mean service time (faded)."""
        return self.feedback.hop(self._loop.time())

    def capacity(self) -> Capacity:
        """The READY fleet's capacity per (model, batch), rebuilt when the registry changed."""
        cap = self._capacity
        if cap is None or self._capacity_version != self.registry.version:
            self._capacity_version = self.registry.version
            cap = self._capacity = admission.capacity(
                self.profiles.mean_s,
                ((i.type_idx, i.slots, i.pinned_model) for i in self.registry if i.state is InstanceState.READY),
                self.profiles.p99_s,
            )
        return cap

    def _admit(self, q: Query, now: float) -> None:
        """Raise Overloaded when admission control refuses `q` (`kairosd.admission.admit`)."""
        cfg = self.config
        cap = self.capacity()
        b = min(q.batch, self._top_batch)
        rate = cap.rate[q.model_idx][b]
        busy = 0.0
        n = self._in_flight
        if n and n >= cap.slots:  # no free slot: the next one frees in about 2 × mean residual / (n + 1)
            busy = max(self._busy_until_sum / n - now, 0.0) * 2.0 / (n + 1)
        ahead = Ahead(self._queued_work_s, busy, self._queued_n[q.model_idx], self._queued_bytes)
        limit = admission.queue_limit(cfg.admission, cfg.max_queue, cfg.max_queue_min, rate, q.qos_s,
                                      cfg.admission_slack)
        fastest = cap.fastest_s[q.model_idx][b] + self.feedback.hop_guard(now)
        lag = self.feedback.lag(now)
        refusal = admission.admit(mode=cfg.admission, now=now, target=q.target_s, fastest_s=fastest, rate=rate,
                                  ahead=ahead, limit=limit, size=q.size, max_bytes=cfg.max_queue_bytes, lag_s=lag)
        if refusal is not None:
            self.stats.refused += 1
            self._ended(q, "refused")
            raise Overloaded(f"kairosd refused this {q.model} query: {refusal.reason}; retry after "
                             f"{refusal.retry_after_s:g} s, or send less load", refusal.retry_after_s)
        if rate > 0.0:
            q.eta_s = admission.estimate(now, ahead, fastest, lag)

    def _enqueued(self, q: Query) -> float:
        """Count `q` as queued; returns the fleet-seconds it was counted for."""
        rate = self.capacity().rate[q.model_idx][min(q.batch, self._top_batch)]
        work = 1.0 / rate if rate > 0.0 else 0.0
        self._queued_n[q.model_idx] += 1
        self._queued_total += 1
        self._queued_work_s += work
        self._queued_bytes += q.size
        return work

    def _dequeued(self, q: Query, work: float) -> None:
        """`q` left the queue: granted, shed, expired, failed or cancelled."""
        self._queued_n[q.model_idx] -= 1
        self._queued_bytes -= q.size
        self._queued_total -= 1
        self._queued_work_s = self._queued_work_s - work if self._queued_total else 0.0  # no drift once empty

    def _shed(self, q: Query, now: float, cap: Capacity) -> bool:
        """Answer `q` at once when it can no longer be served by its target (admission mode "qos" or
        "deadline"): Overloaded when the target is its QoS, UNAVAILABLE when it is its deadline."""
        if self.config.admission == admission.OFF or not cap.serves(q.model_idx):
            return False
        p99 = cap.fastest_p99_s if cap.fastest_p99_s is not None else cap.fastest_s
        fastest = p99[q.model_idx][min(q.batch, self._top_batch)] + self.feedback.hop_guard(now)
        if not admission.doomed(now, q.target_s, fastest, self.feedback.lag(now)):
            return False
        if q.target_s < q.deadline_s:
            self.stats.shed += 1
            self._ended(q, "shed")
            q.future.set_exception(Overloaded(
                f"kairosd shed this {q.model} query: after {(now - q.arrival_s) * 1e3:.3g} ms in the queue no instance "
                f"can serve it within its QoS target ({q.qos_s * 1e3:.3g} ms); retry, or send less load", 1.0))
        else:
            self.stats.expired += 1
            self._ended(q, "expired")
            q.future.set_exception(self._expired_error(q, "it can no longer be served before it"))
        return True

    def _suspect(self, inst: Instance) -> None:
        """An instance failed at the transport level: report it (READY → SUSPECT, out of dispatch); the
        fleet probes it and puts it back when it answers."""
        if self.registry.report_failure(inst.id):
            log.warning("instance %s (%s) failed; suspect, out of dispatch until it answers", inst.id, inst.address)

    def _release_unused_grant(self, q: Query) -> None:
        """The client went away after its query was granted a slot but before it was sent."""
        f = q.future
        if f.done() and not f.cancelled() and f.exception() is None:
            inst, expected = f.result()
            inst.finish_s.remove(expected)
            self._in_flight -= 1
            self._busy_until_sum -= expected
            if self.waiting:
                self._kick()

    async def _send(self, inst: Instance, q: Query, expected_finish_s: float) -> bytes | HttpReply:
        """The one place a query goes to an instance: over HTTP when the instance speaks it (a gRPC
        query converted, `grpc_http`, unless KAIROSD_BACKEND_HTTP=0), else over gRPC. Raises _Retry
        when another instance should be tried; any other failure reaches the client as a typed error."""
        sent_s, timeout, backend_bound = self._sending(q, inst)
        response: bytes | HttpReply
        try:
            http = q.http
            if http is not None and inst.http is not None:
                self.stats.http_forwarded += 1
                response = await inst.http.infer(http, timeout)
            elif http is None and inst.http is not None and self._grpc_over_http:
                assert q.request is not None
                response = await infer_over_http(inst.http, q.request, timeout)
            else:
                if q.request is None:
                    assert http is not None
                    q.request = http.to_grpc()
                response = await inst.client.infer(q.request, timeout, q.raw)
        except BackendError as exc:
            if self._failed(q, inst, exc, backend_bound):
                raise _Retry from exc
            if exc.status is grpc.StatusCode.DEADLINE_EXCEEDED:
                raise self._expired_error(q, f"instance {inst.id} did not answer in time") from None
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - never leave a client with an untyped error
            log.exception("query to %s failed unexpectedly", inst.id)
            self.stats.failed += 1
            self._ended(q, "failed")
            raise BackendError(str(exc), status=grpc.StatusCode.INTERNAL, retryable=False, instance=inst.id) from exc
        finally:
            t0 = self.busy.start()
            self._release(inst, expected_finish_s)
            self.busy.stop(t0)
        t0 = self.busy.start()
        self._completed(q, inst, sent_s, self._loop.time(), expected_finish_s)
        self.busy.stop(t0)
        return response

    def _sending(self, q: Query, inst: Instance) -> tuple[float, float, bool]:
        """A query leaves for `inst` now: (sent time, the send's timeout, whether the backend deadline
        rather than the client's bounds it). The backend deadline is a multiple of this type's p99 for
        the query, at least backend_timeout_min_ms."""
        q.attempts += 1
        sent_s = self._loop.time()
        cfg = self.config
        p99 = self._p99_s[q.model_idx][inst.type_idx][min(q.batch, self._top_batch)]
        backend_s = max(cfg.backend_timeout_p99 * p99, cfg.backend_timeout_min_ms / 1e3)
        left_s = q.deadline_s - sent_s
        return sent_s, max(min(left_s, backend_s), 0.001), backend_s < left_s

    def _release(self, inst: Instance, expected_finish_s: float) -> None:
        """A sent query is over (answered, failed or cancelled): its slot frees."""
        self._in_flight -= 1
        self._busy_until_sum = self._busy_until_sum - expected_finish_s if self._in_flight else 0.0
        inst.finish_s.remove(expected_finish_s)
        if self.waiting:  # a slot is free: match the queries that wait for one
            self._kick()

    def _failed(self, q: Query, inst: Instance, exc: BackendError, backend_bound: bool) -> bool:
        """Account for a failed send; True when the query is to be retried on another instance, else
        it ended (expired or failed, counted here) and the caller answers the client."""
        cfg = self.config
        inst.failed_total += 1
        hung = exc.status is grpc.StatusCode.DEADLINE_EXCEEDED and backend_bound
        if hung:  # the backend deadline passed, not the client's: the instance hangs or is far too slow
            self.stats.backend_timeouts += 1
            log.warning("instance %s (%s) did not answer a %s query within its backend deadline (%g × its p99, at "
                        "least %g ms)", inst.id, inst.type, q.model, cfg.backend_timeout_p99, cfg.backend_timeout_min_ms)
        retryable = exc.retryable or hung
        if retryable and exc.status in _SUSPECT_CODES:
            self._suspect(inst)
        if retryable and q.attempts < cfg.max_attempts and self._loop.time() < q.deadline_s:
            log.warning("query to %s failed (%s); retrying on another instance", inst.id, exc)
            self.stats.retried += 1
            return True
        if exc.status is grpc.StatusCode.DEADLINE_EXCEEDED:
            self.stats.expired += 1
            self._ended(q, "expired")
        else:
            self.stats.failed += 1
            self._ended(q, "failed")
        return False

    def _completed(self, q: Query, inst: Instance, sent_s: float, end_s: float, expected_finish_s: float) -> None:
        """An instance answered `q`: counters, the observer, and the admission estimates' feedback. Its
        hop is the answer's lateness against the finish expected at the grant (grant + the residual of a
        pipelined slot + the profile's mean service), so that a pipelined query's wait behind the slot it
        was sent to is not counted as hop."""
        inst.served_total += 1
        self.stats.completed += 1
        if end_s - q.arrival_s > q.qos_s:
            self.stats.qos_violations += 1
        lag = end_s - q.eta_s if q.eta_s and q.attempts == 1 else None  # a retried query's lateness is the fault's
        self.feedback.answered(end_s, lag, end_s - expected_finish_s, q.qos_s, typical=not q.pipelined)
        self._adapt_margin(end_s)
        if self.observer is not None:
            self.observer.completed(q.model_idx, inst.type_idx, sent_s - q.arrival_s, end_s - sent_s, end_s - q.arrival_s)

    def _adapt_margin(self, now: float) -> None:
        """The matching's reserve for what its latencies leave out (`margin_s` of the kairos policy):
        `admission.matching_margin` of the configured `margin_ms` and the median hop. Re-derived at most
        every `MARGIN_PERIOD_S` and changed in steps of at least 0.2 ms: the cached single-query decisions
        depend on it and are dropped when it changes, and the hop feedback moves with every answer."""
        if now < self._margin_due_s or not hasattr(self.policy, "margin_s"):
            return
        self._margin_due_s = now + MARGIN_PERIOD_S
        margin = admission.matching_margin(self.config.margin_ms / 1e3, self.feedback.hop_median(now), self._qos_min_s)
        if abs(margin - self.policy.margin_s) >= MARGIN_STEP_S:
            self.policy.margin_s = margin
            self._fresh = FreshRounds()

    def _ended(self, q: Query, outcome: str) -> None:
        if self.observer is not None:
            self.observer.ended(q.model_idx, outcome)

    def reconfigure(self, policy: Policy, qos_s: Mapping[str, float], config: SchedulerConfig) -> None:
        """Swap the reloadable settings (policy, QoS targets, scheduler settings) between dispatch rounds
        (this runs on the event loop, so no round is in progress). Queued queries keep the QoS target they
        arrived with; the caches keyed on the policy are rebuilt. The served models cannot change here."""
        if set(qos_s) != set(self.qos_s):
            raise ValueError(f"reconfigure cannot change the served models ({sorted(self.qos_s)} → {sorted(qos_s)})")
        self.policy = policy
        self.qos_s = dict(qos_s)
        self._qos_min_s = min(self.qos_s.values(), default=1.0)
        self.config = config
        self._policy_set()
        if self._tick_handle is not None:  # the tick period may have changed
            self._tick_handle.cancel()
            self._tick_handle = None
        if self.waiting:
            self._kick()

    # ---- dispatch ---------------------------------------------------------------------------
    def _policy_set(self) -> None:
        """What follows from the policy and the settings (at start and at every reconfigure): the cached
        single-query rounds start afresh; whether decisions may be cached; whether busy slots may be
        offered as sendable (`scheduler.pipeline` and `Policy.pipelines`)."""
        self._fresh = FreshRounds()
        self._stateless_policy = self.policy.name in STATELESS_POLICIES
        self._pipelines = self.config.pipeline and bool(getattr(self.policy, "pipelines", False))

    def _kick(self) -> None:
        if not self._round_pending:
            self._round_pending = True
            self._loop.call_soon(self._timed_round)

    def _columns(self, now: float, m: int, model: int | None = None
                 ) -> tuple[list[Instance], list[int], list[float], list[bool], int]:
        """Columns of the snapshot (instance, type index, busy time, whether a query matched to it is
        sent now) and the number of slots they stand for; with `model`, only the instances that serve
        it (unpinned, or pinned to it).

        A k-slot instance is k columns, but dominated ones are left out (the matching is the same):
        an instance with a free slot shows only its free slots (a busy slot of it costs more for
        every query), and at most m of them (m waiting queries use no more); an instance with no
        free slot shows its m earliest-finishing slots. Pipelining (`scheduler.pipeline`): the
        earliest of them is sendable when it is expected to finish within `_pipeline_s` — a query
        sent then reaches the instance before or about when the slot frees and waits there behind it
        (instances queue, as Triton does), so the slot does not idle for a round trip between
        queries. One such query per instance at a time.
        """
        insts: list[Instance] = []
        types: list[int] = []
        busy: list[float] = []
        free_col: list[bool] = []
        slots = 0
        window = self._pipeline_s(now)
        for inst in self.registry:
            if inst.state is not InstanceState.READY:
                continue
            if model is not None and inst.pinned_model is not None and inst.pinned_model != model:
                continue
            slots += inst.slots
            free = inst.slots - len(inst.finish_s)
            if free > 0:
                k = min(free, m)
                if k == 1:
                    insts.append(inst)
                    types.append(inst.type_idx)
                    busy.append(0.0)
                    free_col.append(True)
                else:
                    insts += [inst] * k
                    types += [inst.type_idx] * k
                    busy += [0.0] * k
                    free_col += [True] * k
            else:
                # a query sent ahead (pipelined) takes the slot its earliest finish frees
                ahead = len(inst.finish_s) - inst.slots
                frees = sorted(inst.finish_s)[ahead:][:m]
                for i, f in enumerate(frees):
                    insts.append(inst)
                    types.append(inst.type_idx)
                    busy.append(max(f - now, 1e-6))  # busy: never looks free
                    free_col.append(i == 0 and ahead == 0 and window > 0.0 and f - now <= window)
        return insts, types, busy, free_col, slots

    def _pipeline_s(self, now: float) -> float:
        """How early a query may be sent to a busy slot (`scheduler.pipeline`, policies that rank
        sendable columns by busy time + service: `Policy.pipelines`): the measured hop to an instance
        and back (mean) plus the tick. A query matched to a slot that frees later than the hop waits in
        the queue for a round, and the next one may be a tick away (rounds run on arrivals, answers and
        ticks): held until then, the slot would idle for the rest of the tick and the round trip."""
        if not self._pipelines:
            return 0.0
        return self.feedback.hop(now) + self.config.tick_ms / 1e3

    def _round(self) -> None:
        self._round_pending = False
        waiting = self.waiting
        while waiting and waiting[0].future.done():  # cancelled by its client
            waiting.popleft()
        if not waiting:
            return
        now = self._loop.time()
        if self._pinned():
            self._round_per_model(now)
            return
        insts, types, busy, free, slots = self._columns(now, len(waiting))
        n_free = sum(free)
        if not n_free:
            self._arm_tick()
            return
        if len(waiting) == 1:
            live = [waiting.popleft()]  # not done: checked above
        else:
            rows = min(len(waiting), 2 * slots)
            popped = (waiting.popleft() for _ in range(rows))
            if self.config.admission == admission.OFF:
                live = [q for q in popped if not q.future.done()]
            else:  # a query that can no longer make its target is answered now, not matched
                cap = self.capacity()
                live = [q for q in popped if not q.future.done() and not self._shed(q, now, cap)]
            if not live:
                self._kick()
                return
        fresh: FreshRound | None = None
        if len(live) == 1 and n_free == len(types) and not any(busy):
            # one query, every column free: the commonest round, cached (kairosd.snapshot_cache). The
            # decision is taken at 0 s waited and reused for a query that waited less than it holds: one
            # that arrived this very loop iteration (the loop clock still reads its arrival time), or one
            # from a front-end process, stamped there a little earlier
            q = live[0]
            fresh = self._fresh.get(q.model_idx, q.batch, q.qos_s, types)
            waited = now - q.arrival_s
            if fresh.decision is None and self._stateless_policy:
                at0 = self._decide(live, types, busy, free, now, fresh.snap)
                if at0 is not None:
                    hold = getattr(self.policy, "hold_s", None)
                    fresh.decision = at0
                    fresh.hold_s = hold(q.model_idx, q.batch, q.qos_s, types) if hold is not None else 0.0
            if fresh.decision is not None and (waited == 0.0 or waited < fresh.hold_s):
                matched, cols = fresh.decision
                unmatched = self._grant(live, insts, busy, matched, cols, now)
                waiting.extendleft(reversed(unmatched))
                if waiting:
                    self._arm_tick()
                return
            if waited != 0.0 or self._stateless_policy:  # a stateful policy decides each round afresh
                fresh = None
        decision = self._decide(live, types, busy, free, now, fresh.snap if fresh is not None else None)
        if decision is None:
            waiting.extendleft(reversed(live))
            self._arm_tick()
            return
        unmatched = self._grant(live, insts, busy, decision[0], decision[1], now)
        waiting.extendleft(reversed(unmatched))
        if waiting:
            self._arm_tick()

    def _pinned(self) -> bool:
        """Whether some READY instance serves one model only (the registry is scanned once per change)."""
        if self._pinned_version != self.registry.version:
            self._pinned_version = self.registry.version
            self._has_pinned = self.registry.has_pinned()
        return self._has_pinned

    def _round_per_model(self, now: float) -> None:
        """A fleet with pinned instances: one matching per model, over the instances that serve it
        (unpinned ones, and those pinned to it). The queue keeps arrival order."""
        cap = self.capacity()
        queued = [q for q in self.waiting if not q.future.done() and not self._shed(q, now, cap)]
        self.waiting.clear()
        groups: dict[int, list[Query]] = {}
        for q in queued:
            groups.setdefault(q.model_idx, []).append(q)
        left: list[Query] = []
        for model, qs in groups.items():
            insts, types, busy, free, slots = self._columns(now, len(qs), model)
            rows = min(len(qs), 2 * slots)
            if not any(free):
                left += qs
                continue
            decision = self._decide(qs[:rows], types, busy, free, now)
            if decision is None:
                left += qs
                continue
            left += self._grant(qs[:rows], insts, busy, decision[0], decision[1], now) + qs[rows:]
        if len(groups) > 1:
            left.sort(key=lambda q: q.arrival_s)
        self.waiting.extend(left)
        if self.waiting:
            self._arm_tick()

    def _decide(self, live: list[Query], types: list[int], busy: list[float], free: list[bool], now: float,
                snap: Snapshot | None = None) -> tuple[list[int], list[int]] | None:
        """The policy's (matched query rows, columns) for this snapshot; None when the policy failed
        (logged: the queries stay queued and the round is retried)."""
        if snap is None:
            snap = Snapshot(
                q_model=np.array([q.model_idx for q in live], dtype=np.intp),
                q_batch=np.array([q.batch for q in live], dtype=np.intp),
                q_waited_s=np.array([now - q.arrival_s for q in live]),
                q_qos_s=np.array([q.qos_s for q in live]),
                i_type=np.array(types, dtype=np.intp),
                i_busy_s=np.array(busy),
                i_free=np.array(free),
            )
        t0 = time.perf_counter()
        try:
            assignment = self.policy(snap)
        except Exception:  # noqa: BLE001 - the loop must not die of one bad round
            log.exception("dispatch policy failed; the queries stay queued and the round is retried")
            return None
        if self.observer is not None:
            self.observer.matched(time.perf_counter() - t0)
        return assignment.queries.tolist(), assignment.instances.tolist()

    def _grant(self, live: list[Query], insts: list[Instance], busy: list[float], matched: list[int],
               cols: list[int], now: float) -> list[Query]:
        """Give each matched query its instance slot (expected to finish its service after the column's
        busy time: 0 for a free slot, the residual of a pipelined one); returns the unmatched queries,
        in order."""
        self.stats.rounds += 1
        self.stats.matched += len(matched)
        mean = self._mean_s
        top = self._top_batch
        for qi, col in zip(matched, cols, strict=True):
            q, inst = live[qi], insts[col]
            q.pipelined = bool(busy[col])
            if q.pipelined:
                self.stats.pipelined += 1
            expected = now + busy[col] + mean[q.model_idx][inst.type_idx][min(q.batch, top)]
            inst.finish_s.append(expected)  # the slot is taken now, before the client task resumes
            self._in_flight += 1  # granted counts as in flight (drain waits for it)
            self._busy_until_sum += expected
            q.future.set_result((inst, expected))
        if len(matched) == len(live):
            return []
        sent = set(matched)
        return [q for i, q in enumerate(live) if i not in sent]

    # ---- deadlines and idleness ------------------------------------------------------------------
    @staticmethod
    def _expired_error(q: Query, why: str) -> Unavailable:
        return Unavailable(
            f"no instance could serve this {q.model} query within its deadline "
            f"({q.deadline_s - q.arrival_s:.3g} s; {why}): the fleet is overloaded or has no ready "
            "instance; retry later or raise the client timeout"
        )

    def _arm_tick(self) -> None:
        if self._tick_handle is None:
            self._tick_handle = self._loop.call_later(self.config.tick_ms / 1e3, self._timed_tick)

    def _tick(self) -> None:
        self._tick_handle = None
        now = self._loop.time()
        cap = self.capacity()
        keep: deque[Query] = deque()
        for q in self.waiting:
            if q.future.done():
                continue
            if q.deadline_s <= now:
                self.stats.expired += 1
                self._ended(q, "expired")
                q.future.set_exception(self._expired_error(q, "it was still queued"))
            elif not self._shed(q, now, cap):
                keep.append(q)
        if len(keep) != len(self.waiting):
            self.waiting = keep
        self._round()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def drain(self, timeout_s: float) -> bool:
        """Stop accepting; wait until every queued and in-flight query is answered. True if drained."""
        self.accepting = False
        deadline = self._loop.time() + timeout_s
        while self.waiting or self._in_flight:
            if self._loop.time() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def refusals_settle(self, quiet_s: float, bound_s: float) -> bool:
        """After `drain`: wait until no query has been refused for `quiet_s` (at most `bound_s`), so that
        requests the front ends had received but not yet handled when the drain ended are answered
        UNAVAILABLE (retryable) before the servers stop, rather than cancelled by the stop. True if quiet."""
        deadline = self._loop.time() + bound_s
        while True:
            now = self._loop.time()
            if now - self._refused_stopping_s >= quiet_s:
                return True
            if now >= deadline:
                return False
            await asyncio.sleep(min(quiet_s, deadline - now))

    def close(self) -> None:
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        for q in self.waiting:
            if not q.future.done():
                q.future.set_exception(Unavailable("kairosd stopped before this query was served"))
        self.waiting.clear()


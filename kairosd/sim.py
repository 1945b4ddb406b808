"""Discrete-event simulator of a fleet serving one model with the daemon's own dispatch policies; max QPS by bisection.

Core rule: queries arrive (Poisson or a trace, scaled to the offered rate) with pre-drawn batch sizes
and service-time noise; whenever a query waits and an instance is free, the dispatch policy — the
very function the daemon runs — sees a `Snapshot` and its `Assignment` is carried out. A rate
passes when the p99 latency (wait + service) of the measured queries (after a warm-up) is within
QoS and the fleet keeps up (the service handed out fits the instances' time, and no query still waits
for an instance 2 QoS after the last arrival).
`max_qps` bisects for the highest passing rate, below the planner's upper bound.
With `KairosPolicy` a run without the head's pipelining goes through `kairosd.simkernel`, a compiled
copy of `_run` and that policy which makes the same decisions; every other run through `_run` (or
`_run_pipelined`). Likewise a run of several models (`simulate_mix`) with `KairosPolicy` goes through
the compiled copy of `_run_mix`, every other through `_run_mix`.

Every random draw is made once per `Stream` (seeded) and reused at every rate and for every
configuration (common random numbers), so evaluations are deterministic and comparable.
"""

from __future__ import annotations

import bisect
import heapq
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kairosd import simkernel
from kairosd.dispatch import SCALAR_MAX_COLUMNS, Policy, Snapshot, make_policy
from kairosd.errors import ConfigError
from kairosd.profiles import ProfileTable, sample_cells

WARMUP_FRACTION = 0.1
PERCENTILE = 99.0
# `max_qps`'s light load, as a share of the fleet's raw capacity: a fleet must meet the target there too
LIGHT_LOAD_SHARE = 0.05
LAG_QOS = 2.0  # a run fails if a query still waits for an instance this many QoS after the last arrival
NOISES = ("none", "samples", "lognormal", "quantiles")


# --------------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class Stream:
    """The randomness of a run, independent of the offered rate.

    gaps     inter-arrival gaps with mean 1 (arrival times = cumsum(gaps) / rate): Exp(1) for Poisson,
             a trace's gaps × its mean rate otherwise
    batches  batch size of each query
    noise_u  one uniform draw per query for its service-time noise (which measured sample it gets,
             or the quantile of the log-normal factor); the same whichever instance serves it
    """

    gaps: np.ndarray
    batches: np.ndarray
    noise_u: np.ndarray

    def __len__(self) -> int:
        return len(self.batches)

    def arrivals(self, rate_qps: float) -> np.ndarray:
        return np.cumsum(self.gaps) / rate_qps


def usable_cores() -> int:
    """The cores this process may run on: the default number of worker processes for evaluations."""
    return max(1, len(os.sched_getaffinity(0)))


def poisson_stream(batches: np.ndarray, seed: int) -> Stream:
    """Poisson arrivals for the given batch sizes (draws seeded by `seed`)."""
    rng = np.random.default_rng(seed)
    n = len(batches)
    return Stream(rng.exponential(1.0, n), np.asarray(batches, dtype=np.int64), rng.random(n))


def trace_stream(arrival_times_s: np.ndarray, batches: np.ndarray, seed: int = 0) -> Stream:
    """Replay a trace: its arrival pattern, rescaled to any rate (the trace's own rate is `len / span`)."""
    t = np.asarray(arrival_times_s, dtype=float)
    if len(t) < 2 or len(t) != len(batches) or np.any(np.diff(t) < 0):
        raise ConfigError("a trace needs >= 2 sorted arrival times and one batch size per arrival")
    gaps = np.diff(t, prepend=t[0])
    gaps = gaps / gaps[1:].mean()
    return Stream(gaps, np.asarray(batches, dtype=np.int64), np.random.default_rng(seed).random(len(t)))


@dataclass(frozen=True)
class ServiceModel:
    """Service time = profile mean(type, batch) × a noise factor with mean 1.

    kind "none": the mean; "samples": the measured per-query samples of the cell the batch rounds up
    to (`relative[type, grid, k]`: samples / cell mean, types in ProfileTable order, grid batches
    `grid_step`, 2·`grid_step`, …); "lognormal": a log-normal factor with coefficient of variation `cv`,
    or, when `sigma[type, batch]` is given (e.g. `kairosd.planner.tails.profile_sigma`, the log-normal of
    each batch's profiled mean and p99), with that σ per type and batch; "quantiles": one of the equally
    likely values `quantiles[type, batch, q]` (seconds, types in ProfileTable order; e.g.
    `kairosd.planner.tails.Tails.quantiles`, the service times the planner's estimate weighs), the
    query's noise draw picking q, the same q on every type. The quantiles replace the profile mean.
    """

    kind: str = "none"
    relative: np.ndarray | None = None
    grid_step: int = 10
    cv: float = 0.0
    sigma: np.ndarray | None = None
    quantiles: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.kind not in NOISES:
            raise ConfigError(f"unknown service noise {self.kind!r}; allowed: {list(NOISES)}")
        if self.kind == "samples" and self.relative is None:
            raise ConfigError("service noise 'samples' needs the measured samples (workload.load_samples)")
        if self.kind == "quantiles" and (self.quantiles is None or np.ndim(self.quantiles) != 3):
            raise ConfigError("service noise 'quantiles' needs a [type, batch, q] table of service times "
                              "(kairosd.planner.tails.Tails.quantiles)")

    def times(self, profiles: ProfileTable, model: str, stream: Stream) -> np.ndarray:
        """Service seconds of every query on every profiled type: float[n_queries, n_types]."""
        mi = profiles.model_index(model)
        b = np.minimum(stream.batches, profiles.max_batch)
        if self.kind == "quantiles":
            table = np.asarray(self.quantiles)
            if table.shape[:2] != profiles.mean_s.shape[1:]:
                raise ConfigError(f"the service quantile table is {table.shape[:2]} [type, batch], the profiles' "
                                  f"{profiles.mean_s.shape[1:]}: build it over the same profiles")
            q = np.minimum((stream.noise_u * table.shape[2]).astype(np.intp), table.shape[2] - 1)
            return np.ascontiguousarray(table[:, b, q].T)
        mean = profiles.mean_s[mi][:, b].T  # [query, type]
        if self.kind == "none":
            return np.ascontiguousarray(mean)
        if self.kind == "lognormal":
            z = _norm_ppf(np.clip(stream.noise_u, 1e-9, 1 - 1e-9))
            if self.sigma is None:
                return mean * _lognormal_factor(self.cv, z)[:, None]
            sig = np.asarray(self.sigma)
            if sig.shape != profiles.mean_s.shape[1:]:
                raise ConfigError(f"the log-normal σ table is {sig.shape}, the profiles' [type, batch] "
                                  f"{profiles.mean_s.shape[1:]}: build it from the same profiles (profile_sigma)")
            sig = sig[:, b].T  # [query, type]
            return mean * np.exp(sig * z[:, None] - 0.5 * sig**2)
        rel = np.asarray(self.relative)
        if rel.shape[0] != len(profiles.types):
            raise ConfigError(f"sample noise covers {rel.shape[0]} types, the profiles {len(profiles.types)}")
        g = sample_cells(stream.batches, self.grid_step, rel.shape[1])
        k = np.minimum((stream.noise_u * rel.shape[2]).astype(np.intp), rel.shape[2] - 1)
        return mean * rel[:, g, k].T


def _lognormal_factor(cv: float, z: np.ndarray) -> np.ndarray:
    """Log-normal factors with mean 1 and coefficient of variation `cv`, from standard normal draws `z`."""
    sigma = math.sqrt(math.log1p(cv**2))
    return np.exp(sigma * z - sigma**2 / 2)


def _norm_ppf(u: np.ndarray) -> np.ndarray:
    from scipy.special import ndtri

    return ndtri(u)


@dataclass(frozen=True)
class PathModel:
    """The serving path around an instance's service, as a live head adds it (none by default: the
    service is all there is).

    hop_mean_s, hop_sd_s  per query, the time from the grant to the answer's arrival at the head beyond
                          the instance's service (the request's way out, the answer's way back, the
                          head's and the instance's wake-ups): log-normal with this mean and standard
                          deviation. It holds the instance (the head counts a slot busy until its answer
                          arrives) and adds to the query's latency; the dispatcher does not know it (it
                          expects the profile's mean service), as the daemon's does not.
    client_s              the client's own way to the head and back: it adds to the latency the client
                          sees and holds no instance (the rate passes when p99 + client_s ≤ QoS).
    seed                  one draw per query, the same at every rate and for every configuration
    pipeline_tick_s       None: the hop holds the instance, as a head that does not pipeline. Set: the head
                          pipelines as the daemon's scheduler does (`scheduler.pipeline`, with this tick):
                          a column whose query is expected to finish within the hop's mean + the tick may
                          take one query more, which waits at the instance behind it; a query's hop is
                          half on its way out and half on the answer's way back, and the instance is held
                          for the services alone.
    """

    hop_mean_s: float = 0.0
    hop_sd_s: float = 0.0
    client_s: float = 0.0
    seed: int = 0
    pipeline_tick_s: float | None = None

    def __post_init__(self) -> None:
        if self.hop_mean_s < 0 or self.hop_sd_s < 0 or self.client_s < 0:
            raise ConfigError(f"path times must be >= 0, got hop {self.hop_mean_s} ± {self.hop_sd_s} s, "
                              f"client {self.client_s} s")
        if self.hop_sd_s > 0 and self.hop_mean_s == 0:
            raise ConfigError("a hop with a spread needs a mean > 0")
        if self.pipeline_tick_s is not None and self.pipeline_tick_s < 0:
            raise ConfigError(f"pipeline_tick_s must be >= 0 or None, got {self.pipeline_tick_s}")

    @property
    def empty(self) -> bool:
        return self.hop_mean_s == 0 and self.client_s == 0

    def hops(self, n: int) -> np.ndarray:
        """The hop of each of `n` queries, seconds (zeros without a hop)."""
        if self.hop_mean_s == 0:
            return np.zeros(n)
        if self.hop_sd_s == 0:
            return np.full(n, self.hop_mean_s)
        z = np.random.default_rng(self.seed).standard_normal(n)
        return self.hop_mean_s * _lognormal_factor(self.hop_sd_s / self.hop_mean_s, z)


def fleet_columns(
    profiles: ProfileTable, types: Sequence[str], counts: Sequence[int], slots: Sequence[int] | None = None
) -> np.ndarray:
    """The dispatcher's columns: one per instance slot, as type indices into the ProfileTable."""
    if len(types) != len(counts):
        raise ConfigError(f"{len(counts)} counts for {len(types)} types")
    slots = [1] * len(types) if slots is None else list(slots)
    # not strict: `slots` is the caller's and its length is not checked (zip has always stopped at the shortest)
    cols = [profiles.type_index(t) for t, c, s in zip(types, counts, slots, strict=False) for _ in range(int(c) * int(s))]
    if not cols:
        raise ConfigError("the fleet has no instance")
    return np.array(cols, dtype=np.intp)


# --------------------------------------------------------------------------------------------------
# One run


@dataclass(frozen=True)
class SimResult:
    """Outcome of one run at one offered rate (latencies of the measured queries, seconds)."""

    offered_qps: float
    n_queries: int
    n_measured: int
    served_qps: float
    mean_s: float
    p50_s: float
    p95_s: float
    p99_s: float
    violations: int
    ok: bool
    aborted: bool
    lagging: bool
    policy_calls: int
    wall_s: float
    drain_s: float = 0.0  # the last query handed to an instance, after the last arrival (inf if one never was)
    end_s: float = 0.0  # the last completion, after the last arrival (inf if a query never finished)


def _late_in_queue(arr_l: list[float], queue: list[int], now: float, deadline_s: float, measure_from: int) -> int:
    """How many measured queries in `queue` (indices in arrival order) have already waited longer than
    `deadline_s`: violations whatever happens next."""
    cutoff = bisect.bisect_left(arr_l, now - deadline_s)  # queries before it arrived > deadline ago
    return max(bisect.bisect_left(queue, cutoff) - bisect.bisect_left(queue, measure_from), 0)


def _without(queue: list[int], rows: list[int]) -> list[int]:
    """`queue` less the entries at positions `rows` (the queries a round assigned)."""
    if len(rows) == 1:
        del queue[rows[0]]
        return queue
    taken = set(rows)
    return [q for k, q in enumerate(queue) if k not in taken]


def _run(
    arr: np.ndarray,
    svc: np.ndarray,
    expected: np.ndarray,
    batches: np.ndarray,
    cols: np.ndarray,
    policy: Policy,
    model_idx: int,
    qos_s: float,
    measure_from: int,
    max_violations: int,
    deadline_s: float,
) -> tuple[np.ndarray, np.ndarray, bool, int, float]:
    """The event loop. Returns (finish time per query, inf if never served; the time each was handed to
    an instance, inf if never; aborted; policy calls; instance-seconds of service handed out).

    Events are arrivals (pre-sorted) and completions (a heap). The policy is called only when a
    query waits and an instance is free, with the snapshot the daemon's scheduler builds: the
    oldest 2n waiting queries (n = columns), and for a busy instance the time until its *expected*
    finish (profile mean; at least 1 µs while it is still busy), not the true, noisy one.
    `svc[q, type]` is the true service time, `expected[q, type]` the profile mean. `qos_s` is the
    target the policy sees; a query is late past `deadline_s` (`qos_s`, less when the client's own way
    to the head takes part of QoS).
    """
    n_q, n_i = len(arr), len(cols)
    window = 2 * n_i
    arr_l: list[float] = arr.tolist()
    cols_l: list[int] = cols.tolist()
    svc_l: list[list[float]] = svc.tolist()
    expected_l: list[list[float]] = expected.tolist()
    batches_l: list[int] = batches.tolist()
    free_at = [0.0] * n_i  # true finish of each column's current query
    expect_at = [0.0] * n_i  # its expected finish, as the daemon knows it
    # a lone waiting query goes through the policy's scalar path when it has one (the same decision)
    one = getattr(policy, "one_column", None) if n_i <= SCALAR_MAX_COLUMNS else None
    n_free = n_i
    heap: list[tuple[float, int]] = []
    queue: list[int] = []
    finish = np.full(n_q, np.inf)
    start = np.full(n_q, np.inf)  # when each query was handed to an instance
    q_model = np.full(window, model_idx, dtype=np.intp)
    q_qos = np.full(window, qos_s)
    viol = 0
    calls = 0
    work = 0.0
    i = 0
    inf = math.inf
    while True:
        t_arr = arr_l[i] if i < n_q else inf
        if heap and heap[0][0] <= t_arr:
            now = heap[0][0]
            while heap and heap[0][0] <= now:
                heapq.heappop(heap)
                n_free += 1
        elif i < n_q:
            now = t_arr
            queue.append(i)
            i += 1
            if (now - arr_l[queue[0]] > deadline_s and i > measure_from
                    and viol + _late_in_queue(arr_l, queue, now, deadline_s, measure_from) > max_violations):
                return finish, start, True, calls, work
        else:
            break
        if not queue or n_free == 0:
            continue
        calls += 1
        if one is not None and len(queue) == 1:
            q = queue[0]
            busy_l = [0.0 if f <= now else max(e - now, 1e-6) for f, e in zip(free_at, expect_at, strict=True)]
            c = one(model_idx, batches_l[q], now - arr_l[q], qos_s, cols_l, busy_l)
            rows, insts = ([0], [c]) if free_at[c] <= now else ([], [])
        else:
            m = min(window, len(queue))
            qi = np.array(queue[:m], dtype=np.intp)
            free = np.array(free_at) <= now
            busy = np.where(free, 0.0, np.maximum(np.array(expect_at) - now, 1e-6))
            a = policy(Snapshot(q_model[:m], batches[qi], now - arr[qi], q_qos[:m], cols, busy, free))
            rows, insts = a.queries.tolist(), a.instances.tolist()
        if not rows:
            if not heap and i >= n_q:
                break  # nothing running, nothing arriving, and the policy serves no one: stuck for good
            continue
        for r, c in zip(rows, insts, strict=True):
            if free_at[c] > now:
                raise RuntimeError(f"policy {policy.name!r} assigned a query to busy instance {c}")
            q = queue[r]
            t = cols_l[c]
            s_qt = svc_l[q][t]
            work += s_qt
            f = now + s_qt
            free_at[c] = f
            expect_at[c] = now + expected_l[q][t]
            heapq.heappush(heap, (f, c))
            finish[q] = f
            start[q] = now
            if f - arr_l[q] > deadline_s and q >= measure_from:
                viol += 1
        n_free -= len(rows)
        queue = _without(queue, rows)
        if viol > max_violations:
            return finish, start, True, calls, work
    return finish, start, False, calls, work


def _run_pipelined(
    arr: np.ndarray,
    svc: np.ndarray,
    hops: np.ndarray,
    expected: np.ndarray,
    batches: np.ndarray,
    cols: np.ndarray,
    policy: Policy,
    model_idx: int,
    qos_s: float,
    measure_from: int,
    max_violations: int,
    deadline_s: float,
    window_s: float,
    tick_s: float,
) -> tuple[np.ndarray, np.ndarray, bool, int, float]:
    """`_run` with the live path and the daemon's pipelining: a query granted at t reaches its
    instance at t + hop/2, starts when the instance has finished the query ahead of it, and its answer
    reaches the head hop/2 after its service. The head counts a column busy until the answer arrives;
    it offers a busy column (at most one query ahead) when the query in it is expected to finish
    within `window_s`, with that expected residual as its busy time (at least 1 µs), as
    `Scheduler._columns` does. Rounds run on arrivals, answers and, while queries wait after a round,
    a tick `tick_s` later (the daemon's `tick_ms`). Returns what `_run` returns; finish times are the
    answers' arrivals, and a query is handed out when the head grants it."""
    n_q, n_i = len(arr), len(cols)
    window = 2 * n_i
    arr_l: list[float] = arr.tolist()
    cols_l: list[int] = cols.tolist()
    half: list[float] = (hops / 2.0).tolist()
    inst_end = [0.0] * n_i  # when each column's instance finishes the last query it was sent
    # each column's queries in flight (at most 2: one sent ahead) and their expected finishes, in order
    n_in = np.zeros(n_i, dtype=np.intp)
    first = np.full(n_i, math.inf)
    second = np.full(n_i, math.inf)
    heap: list[tuple[float, int]] = []
    queue: list[int] = []
    finish = np.full(n_q, np.inf)
    start = np.full(n_q, np.inf)  # when each query was handed to an instance
    q_model = np.full(window, model_idx, dtype=np.intp)
    q_qos = np.full(window, qos_s)
    viol = 0
    calls = 0
    work = 0.0
    i = 0
    inf = math.inf
    tick_at = inf  # the pending tick, if any (a heap entry with column -1)
    while True:
        t_arr = arr_l[i] if i < n_q else inf
        if heap and heap[0][0] <= t_arr:
            now = heap[0][0]
            while heap and heap[0][0] <= now:
                _, c = heapq.heappop(heap)
                if c < 0:
                    tick_at = inf
                else:
                    n_in[c] -= 1
                    first[c], second[c] = second[c], inf
        elif i < n_q:
            now = t_arr
            queue.append(i)
            i += 1
            if (now - arr_l[queue[0]] > deadline_s and i > measure_from
                    and viol + _late_in_queue(arr_l, queue, now, deadline_s, measure_from) > max_violations):
                return finish, start, True, calls, work
        else:
            break
        if not queue:
            continue
        busy = np.where(n_in > 0, np.maximum(first - now, 1e-6), 0.0)
        free = n_in == 0
        if window_s > 0.0:
            free |= (n_in == 1) & (first - now <= window_s)
        a = None
        if free.any():
            m = min(window, len(queue))
            qi = np.array(queue[:m], dtype=np.intp)
            a = policy(Snapshot(q_model[:m], batches[qi], now - arr[qi], q_qos[:m], cols, busy, free))
            calls += 1
        if a is None or len(a) < len(queue):
            if tick_at == inf and tick_s > 0.0 and (heap or i < n_q):
                tick_at = now + tick_s
                heapq.heappush(heap, (tick_at, -1))
        if a is None or len(a) == 0:
            if not heap and i >= n_q:
                break
            continue
        rows: list[int] = a.queries.tolist()
        for r, c in zip(rows, a.instances.tolist(), strict=True):
            if not free[c]:
                raise RuntimeError(f"policy {policy.name!r} assigned a query to a column it was not offered ({c})")
            q = queue[r]
            t = cols_l[c]
            s_qt = svc[q, t]
            work += s_qt
            end = max(now + half[q], inst_end[c]) + s_qt
            inst_end[c] = end
            f = end + half[q]
            if n_in[c]:
                second[c] = now + busy[c] + expected[q, t]
            else:
                first[c] = now + expected[q, t]
            n_in[c] += 1
            heapq.heappush(heap, (f, c))
            finish[q] = f
            start[q] = now
            if f - arr_l[q] > deadline_s and q >= measure_from:
                viol += 1
        queue = _without(queue, rows)
        if viol > max_violations:
            return finish, start, True, calls, work
    return finish, start, False, calls, work


def simulate(
    profiles: ProfileTable,
    model: str,
    cols: np.ndarray,
    policy: Policy,
    rate_qps: float,
    *,
    qos_s: float,
    stream: Stream,
    service: ServiceModel | None = None,
    svc: np.ndarray | None = None,
    expected: np.ndarray | None = None,
    warmup_fraction: float = WARMUP_FRACTION,
    percentile: float = PERCENTILE,
    abort: bool = True,
    path: PathModel | None = None,
) -> SimResult:
    """Run `stream` at `rate_qps` on the fleet `cols` (see `fleet_columns`) with `policy`.

    `svc` (true service seconds [query, type]) and `expected` (the profile means the dispatcher
    believes) may be passed precomputed; otherwise `service` (default: no noise) computes them. With
    `abort`, the run stops as soon as more queries than the percentile allows have missed QoS (the rate
    has failed whatever happens next). `path`: the live path's hop and the client's way (`PathModel`;
    latencies are then as the client sees them).
    """
    if rate_qps <= 0:
        raise ConfigError(f"rate_qps must be > 0, got {rate_qps}")
    t0 = time.perf_counter()
    if svc is None:
        svc = (service or ServiceModel()).times(profiles, model, stream)
    if expected is None:
        expected = ServiceModel().times(profiles, model, stream)
    client_s = 0.0
    pipelined = path is not None and path.pipeline_tick_s is not None
    hops = np.zeros(0)
    if path is not None and not path.empty:
        hops = path.hops(len(stream))
        if not pipelined:
            svc = svc + hops[:, None]
        client_s = path.client_s
    arr = stream.arrivals(rate_qps)
    n = len(arr)
    measure_from = int(n * warmup_fraction)
    n_measured = n - measure_from
    allowed = (1.0 - percentile / 100.0) * (n_measured - 1)
    max_viol = math.floor(allowed) + 1 if abort else n + 1
    if pipelined:
        assert path is not None and path.pipeline_tick_s is not None
        if len(hops) == 0:
            hops = np.zeros(len(stream))
        finish, start, aborted, calls, work = _run_pipelined(
            arr, svc, hops, expected, stream.batches, cols, policy, profiles.model_index(model), qos_s, measure_from,
            max_viol, qos_s - client_s, path.hop_mean_s + path.pipeline_tick_s if policy.pipelines else 0.0,
            path.pipeline_tick_s)
    else:
        model_idx = profiles.model_index(model)
        rule = simkernel.rule_for(policy, model_idx)
        if rule is not None:
            finish, start, aborted, calls, work = simkernel.run(arr, svc, expected, stream.batches, cols, rule, qos_s,
                                                                measure_from, max_viol, qos_s - client_s)
        else:
            finish, start, aborted, calls, work = _run(arr, svc, expected, stream.batches, cols, policy, model_idx,
                                                       qos_s, measure_from, max_viol, qos_s - client_s)
    lat = finish[measure_from:] - arr[measure_from:] + client_s
    served = np.isfinite(lat)
    violations = int(np.count_nonzero(lat > qos_s))
    done = finish[measure_from:][served]
    span = (done.max() - arr[measure_from]) if len(done) else 0.0
    served_qps = float(len(done) / span) if span > 0 else 0.0
    # the queue grows without bound if the service handed out exceeds what the instances can give
    # while queries arrive; a finite run can still end within QoS when QoS is long against service
    # times, so this is checked on its own (utilisation > 1), besides the final backlog: queries still
    # waiting for an instance `LAG_QOS` × QoS after the last arrival. The backlog is read on when the
    # last query was handed out, not on when it finished: one slow query near the end of the stream is
    # a single miss, which the p99 counts, not a queue that fails to drain.
    overloaded = work > len(cols) * (arr[-1] - arr[0])
    drain_s = float(start.max() - arr[-1])
    lagging = bool(overloaded or (math.isfinite(drain_s) and drain_s > LAG_QOS * qos_s))
    if aborted:
        pct = [math.inf, math.inf, math.inf]
        mean = math.inf
    else:
        # nearest rank at or above: well defined when some queries were never served (inf)
        pct = [float(x) for x in np.percentile(lat, [50.0, 95.0, percentile], method="higher")]
        mean = float(lat.mean())
    ok = not aborted and not lagging and pct[2] <= qos_s
    return SimResult(
        offered_qps=float(rate_qps),
        n_queries=n,
        n_measured=n_measured,
        served_qps=served_qps,
        mean_s=mean,
        p50_s=pct[0],
        p95_s=pct[1],
        p99_s=pct[2],
        violations=violations,
        ok=ok,
        aborted=aborted,
        lagging=lagging,
        policy_calls=calls,
        wall_s=time.perf_counter() - t0,
        drain_s=drain_s,
        end_s=float(finish.max() - arr[-1]),
    )


# --------------------------------------------------------------------------------------------------
# Max QPS


def raw_capacity(svc: np.ndarray, cols: np.ndarray, path: PathModel | None = None) -> float:
    """The fleet's rate with every instance busy all the time on the stream's service times `svc`
    (the hop holds an instance unless the head pipelines); `max_qps`'s light load is
    `LIGHT_LOAD_SHARE` of it."""
    hop = path.hop_mean_s if path is not None and path.pipeline_tick_s is None else 0.0
    return float(np.sum(1.0 / (svc[:, cols].mean(axis=0) + hop)))


@dataclass(frozen=True)
class MaxQps:
    """The highest passing rate found, the probes made ((rate, ok) in order) and whether the rate at
    the upper bound itself passed (which would mean the bound does not bound this fleet). A fleet that
    misses the target at the light load (`LIGHT_LOAD_SHARE`) gets a `qps` below it, typically 0,
    whatever it passes above."""

    qps: float
    probes: tuple[tuple[float, bool], ...]
    exceeds_bound: bool
    wall_s: float


PolicyFactory = Callable[[], Policy]


def max_qps(
    profiles: ProfileTable,
    model: str,
    cols: np.ndarray,
    policy_factory: PolicyFactory,
    *,
    qos_s: float,
    stream: Stream,
    service: ServiceModel | None = None,
    svc: np.ndarray | None = None,
    ub_qps: float | None = None,
    rel_tol: float = 0.01,
    first_guess: float = 0.9,
    path: PathModel | None = None,
    observe: Callable[[SimResult], None] | None = None,
) -> MaxQps:
    """Bisect for the highest offered rate whose p99 latency is within QoS and within it at every lighter
    load the search tries.

    The first run is at a light load, `LIGHT_LOAD_SHARE` of the fleet's raw capacity. A fleet that
    misses the target there is searched below it only (bisection from 0), whatever rates above pass:
    typically 0. That happens where the dispatcher sends some queries, while the fleet is idle, to a
    cheap type that misses QoS on more than 1% of the mix, and sends them elsewhere only while that
    type is busy: the misses then fall as the load grows, and a search from the bound down would find
    a rate the fleet keeps only under heavy load, while a service below it misses its target.
    A fleet that meets the target at the light load is searched from the upper bound: a probe just
    above it (UB·(1 + rel_tol)) checks the bound (it normally fails within a few hundred queries,
    thanks to the early abort); then `first_guess`·UB (simulated throughput is typically 85-100% of
    the bound), stepping up or down by 2·rel_tol·UB, doubling the step each time, until the answer is
    bracketed (never below the light load); then bisection until the bracket is narrower than
    `rel_tol`·UB. Without a bound the fleet's raw capacity on the stream starts the search.
    A fresh policy is built for every run (policies such as round robin keep state). `path`: as in
    `simulate`. `observe`, if given, sees every run's result.
    """
    t0 = time.perf_counter()
    if svc is None:
        svc = (service or ServiceModel()).times(profiles, model, stream)
    probes: list[tuple[float, bool]] = []
    expected = ServiceModel().times(profiles, model, stream)

    def ok(rate: float) -> bool:
        run = simulate(profiles, model, cols, policy_factory(), rate, qos_s=qos_s, stream=stream, svc=svc,
                       expected=expected, path=path)
        if observe is not None:
            observe(run)
        probes.append((rate, run.ok))
        return run.ok

    def bisect(lo: float, hi: float, tol: float) -> float:
        """The highest passing rate in [lo, hi] (lo passes or is 0, hi fails), to within `tol`."""
        while hi - lo > tol:
            mid = 0.5 * (lo + hi)
            if ok(mid):
                lo = mid
            else:
                hi = mid
        return lo

    capacity = raw_capacity(svc, cols, path)
    broken = False  # set when a rate at or above the bound passes
    light = LIGHT_LOAD_SHARE * capacity
    if not ok(light):
        if ub_qps is not None and ub_qps <= 0:  # the bound agrees: no rate meets QoS
            return MaxQps(0.0, tuple(probes), False, time.perf_counter() - t0)
        # rates above a light load the fleet misses do not count: its answer, if any, lies below it
        lo = bisect(0.0, light, rel_tol * light)
        return MaxQps(lo, tuple(probes), False, time.perf_counter() - t0)
    if ub_qps is not None and ub_qps <= 0:
        # the bound says no rate meets QoS (no present type covers the mix), yet the light load passed:
        # the bound does not bound this fleet; search from its raw capacity instead
        broken, ub_qps = True, None
    scale = float(ub_qps) if ub_qps is not None else capacity
    hi = scale * (1.0 + rel_tol)
    lo = 0.0
    if ok(hi):
        broken = broken or ub_qps is not None
        lo = hi
        for _ in range(8):  # find a failing rate above
            hi *= 2.0
            if not ok(hi):
                break
            lo = hi
        else:
            return MaxQps(lo, tuple(probes), broken, time.perf_counter() - t0)
    else:
        # bracket the answer around the guess, widening the step each miss, then bisect
        step = 2.0 * rel_tol * scale
        x = first_guess * scale
        if ok(x):
            lo = x
            while lo + step < hi:
                if not ok(lo + step):
                    hi = lo + step
                    break
                lo, step = lo + step, 2.0 * step
        else:
            hi = x
            while True:
                if hi - step <= light:
                    # the steps ran out of room above the light load, which passed: bisect between them
                    lo = light if light < hi else 0.0
                    break
                if ok(hi - step):
                    lo = hi - step
                    break
                hi, step = hi - step, 2.0 * step
    return MaxQps(bisect(lo, hi, rel_tol * scale), tuple(probes), broken, time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------------
# Evaluator for the planner (cached, parallel)


@dataclass(frozen=True)
class SimSetup:
    """What an evaluation needs besides the configuration (picklable, sent once to each worker)."""

    profiles: ProfileTable
    model: str
    types: tuple[str, ...]
    policy: str
    policy_params: Mapping[str, Any]
    qos_s: float
    stream: Stream
    service: ServiceModel
    slots: tuple[int, ...] | None = None
    rel_tol: float = 0.01
    path: PathModel | None = None


_WORKER: dict[str, Any] = {}


def _svc_for(setup: SimSetup) -> np.ndarray:
    return setup.service.times(setup.profiles, setup.model, setup.stream)


def evaluate_config(setup: SimSetup, config: Sequence[int], ub_qps: float | None, svc: np.ndarray | None = None,
                    guess_qps: float | None = None, observe: Callable[[SimResult], None] | None = None) -> MaxQps:
    """Max QPS of one configuration under `setup`. `guess_qps` (e.g. its max QPS on other streams, or
    the planner's estimate) starts the search there instead of at 0.9 × the bound: the same answer
    within the search's tolerance, in fewer runs when the guess is close. `observe`: as in `max_qps`."""
    cols = fleet_columns(setup.profiles, setup.types, config, setup.slots)
    factory = lambda: make_policy(setup.policy, setup.profiles, **dict(setup.policy_params))
    first = 0.9
    if guess_qps is not None and guess_qps > 0 and ub_qps is not None and ub_qps > 0:
        first = min(1.0, float(guess_qps) / float(ub_qps))
    return max_qps(
        setup.profiles, setup.model, cols, factory, qos_s=setup.qos_s, stream=setup.stream,
        svc=svc if svc is not None else _svc_for(setup), ub_qps=ub_qps, rel_tol=setup.rel_tol, first_guess=first,
        path=setup.path, observe=observe,
    )


def fails_at(setup: SimSetup, config: Sequence[int], rate_qps: float, svc: np.ndarray | None = None) -> bool:
    """Whether one configuration misses the p99 target at `rate_qps` under `setup` (one simulated run):
    then, as `max_qps` assumes, its max QPS on this stream is below `rate_qps`."""
    cols = fleet_columns(setup.profiles, setup.types, config, setup.slots)
    svc = svc if svc is not None else _svc_for(setup)
    expected = ServiceModel().times(setup.profiles, setup.model, setup.stream)
    policy = make_policy(setup.policy, setup.profiles, **dict(setup.policy_params))
    return not simulate(setup.profiles, setup.model, cols, policy, rate_qps, qos_s=setup.qos_s, stream=setup.stream,
                        svc=svc, expected=expected, path=setup.path).ok


def light_load(setup: SimSetup, config: Sequence[int], svc: np.ndarray | None = None) -> float:
    """`max_qps`'s first rate for one configuration under `setup`: `LIGHT_LOAD_SHARE` of its raw capacity
    on the stream (`raw_capacity`)."""
    svc = svc if svc is not None else _svc_for(setup)
    return LIGHT_LOAD_SHARE * raw_capacity(svc, fleet_columns(setup.profiles, setup.types, config, setup.slots), setup.path)

def below_max_qps(setup: SimSetup, config: Sequence[int], rate_qps: float, svc: np.ndarray | None = None) -> bool:
    """Whether one configuration's max QPS on this stream (`max_qps`) is below `rate_qps`, without the
    search: one run at that rate, and when it meets the target there and the rate is above the light
    load, one at the light load (short: a light load holds few queues), since a fleet that misses the
    target at the light load is valued below it whatever it passes above (`max_qps`)."""
    svc = svc if svc is not None else _svc_for(setup)
    if fails_at(setup, config, rate_qps, svc):
        return True
    light = light_load(setup, config, svc)
    return rate_qps > light and fails_at(setup, config, light, svc)


def _worker_init(setup: SimSetup) -> None:
    _WORKER["setup"] = setup
    _WORKER["svc"] = _svc_for(setup)


def _worker_eval(task: tuple[tuple[int, ...], float | None, float | None]) -> MaxQps:
    config, ub, guess = task
    return evaluate_config(_WORKER["setup"], config, ub, _WORKER["svc"], guess)


@dataclass
class SimEvaluator:
    """The planner's evaluator: config (counts aligned with `setup.types`) → simulated max QPS.

    Results are cached by configuration; `many` evaluates a batch in `workers` processes and calls
    `progress(done, total)` as results arrive. `bound` (config → UB) seeds each bisection.
    """

    setup: SimSetup
    bound: Callable[[np.ndarray], float] | None = None
    workers: int = field(default_factory=usable_cores)
    progress: Callable[[int, int], None] | None = None
    cache: dict[tuple[int, ...], MaxQps] = field(default_factory=dict)
    guess: Callable[[np.ndarray], float | None] | None = None  # where each search starts (`evaluate_config`)
    _svc: np.ndarray | None = field(default=None, repr=False)

    def _ub(self, config: np.ndarray) -> float | None:
        return float(self.bound(config)) if self.bound is not None else None

    def _guess(self, config: np.ndarray) -> float | None:
        return self.guess(config) if self.guess is not None else None

    def result(self, config: np.ndarray) -> MaxQps:
        key = tuple(int(x) for x in config)
        if key not in self.cache:
            if self._svc is None:
                self._svc = _svc_for(self.setup)
            x = np.asarray(key)
            self.cache[key] = evaluate_config(self.setup, key, self._ub(x), self._svc, self._guess(x))
        return self.cache[key]

    def __call__(self, config: np.ndarray) -> float:
        return self.result(config).qps

    def below(self, config: np.ndarray, rate_qps: float) -> bool:
        """Whether `config`'s max QPS is below `rate_qps`, by one run at that rate and perhaps one at the
        light load (`below_max_qps`; no search; the cached result when there is one)."""
        key = tuple(int(x) for x in config)
        if key in self.cache:
            return self.cache[key].qps < rate_qps
        if self._svc is None:
            self._svc = _svc_for(self.setup)
        return below_max_qps(self.setup, key, rate_qps, self._svc)

    def many(self, configs: np.ndarray) -> np.ndarray:
        keys = [tuple(int(x) for x in c) for c in np.atleast_2d(configs)]
        todo = list(dict.fromkeys(k for k in keys if k not in self.cache))
        total, done = len(todo), 0
        if todo and (self.workers <= 1 or len(todo) == 1):
            for k in todo:
                self.result(np.asarray(k))
                done += 1
                if self.progress:
                    self.progress(done, total)
        elif todo:
            tasks = [(k, self._ub(np.asarray(k)), self._guess(np.asarray(k))) for k in todo]
            with ProcessPoolExecutor(self.workers, initializer=_worker_init, initargs=(self.setup,)) as pool:
                for k, res in zip(todo, pool.map(_worker_eval, tasks, chunksize=1), strict=True):
                    self.cache[k] = res
                    done += 1
                    if self.progress:
                        self.progress(done, total)
        return np.array([self.cache[k].qps for k in keys])


# --------------------------------------------------------------------------------------------------
# Several streams: the mean and its spread


_SEEDS_WORKER: dict[str, Any] = {}


def _seeds_worker_init(setups: tuple[SimSetup, ...]) -> None:
    _SEEDS_WORKER["setups"] = setups
    _SEEDS_WORKER["svc"] = [None] * len(setups)


def _seeds_worker_stream(i: int) -> tuple[SimSetup, np.ndarray]:
    """Stream i's setup and service times in this worker (the times drawn on first use)."""
    svc = _SEEDS_WORKER["svc"]
    if svc[i] is None:
        svc[i] = _svc_for(_SEEDS_WORKER["setups"][i])
    return _SEEDS_WORKER["setups"][i], svc[i]


def _seeds_worker_eval(task: tuple[int, tuple[int, ...], float | None, float | None]) -> MaxQps:
    i, config, ub, guess = task
    setup, svc = _seeds_worker_stream(i)
    return evaluate_config(setup, config, ub, svc, guess)


def _seeds_worker_fails(task: tuple[int, tuple[int, ...], float]) -> bool:
    i, config, rate = task
    setup, svc = _seeds_worker_stream(i)
    return below_max_qps(setup, config, rate, svc)


@dataclass
class SeedsEvaluator:
    """config → the mean of its max QPS over several streams (`setups`, typically one workload on
    different seeds), with the run-to-run spread; each stream is the same for every configuration
    (common random numbers), so differences between configurations are not stream luck.

    `spread(config)` = (max − min) / mean over the streams, e.g. 100, 90 and 110 q/s → 100 q/s,
    spread 0.2. `many` evaluates every (configuration, stream) pair not cached yet in one pool of
    `workers` processes; results are cached per stream by configuration, as `SimEvaluator` does.

    With `more` (stream index → its setup), `add_streams(n)` adds streams up to `max_streams` in all;
    every configuration is then valued on them too, evaluated when next asked for (Kairos+ adds streams
    when two fleets' per-stream values do not order them).

    A configuration's search on a stream starts at its mean max QPS over the streams it already has
    results on, or else at `guess(config)` when given (e.g. the planner's estimate; see
    `evaluate_config`). A configuration with no result yet is searched on one stream per worker first,
    and on its other streams from their mean (`many`).
    """

    setups: tuple[SimSetup, ...]
    bound: Callable[[np.ndarray], float] | None = None
    workers: int = field(default_factory=usable_cores)
    caches: list[dict[tuple[int, ...], MaxQps]] = field(default_factory=list)
    more: Callable[[int], SimSetup] | None = None
    max_streams: int = 0
    progress: Callable[[int, int], None] | None = None  # (done, total) (configuration, stream) runs of a `many`
    guess: Callable[[np.ndarray], float | None] | None = None  # where a configuration's first search starts
    _svc: dict[int, np.ndarray] = field(default_factory=dict, repr=False)  # stream → its service times (`meets`)

    def __post_init__(self) -> None:
        if not self.setups:
            raise ConfigError("SeedsEvaluator needs at least one setup")
        if not self.caches:
            self.caches = [{} for _ in self.setups]

    def add_streams(self, n: int) -> bool:
        """Add up to `n` streams (`more`), never beyond `max_streams`; whether any was added."""
        if self.more is None:
            return False
        added = [self.more(i) for i in range(len(self.setups), min(len(self.setups) + n, self.max_streams))]
        self.setups = (*self.setups, *added)
        self.caches.extend({} for _ in added)
        return bool(added)

    def results(self, config: np.ndarray) -> tuple[MaxQps, ...]:
        """The max-QPS search of `config` on every stream (evaluated on demand, in this process)."""
        self.many(np.asarray(config)[None, :], workers=1)
        key = tuple(int(x) for x in config)
        return tuple(c[key] for c in self.caches)

    def values(self, config: np.ndarray) -> np.ndarray:
        return np.array([r.qps for r in self.results(config)])

    def __call__(self, config: np.ndarray) -> float:
        return float(self.values(config).mean())

    def below(self, config: np.ndarray, rate_qps: float | Sequence[float]) -> bool:
        """Whether `config`'s max QPS is below `rate_qps` on every stream, shown by one run at that rate per
        stream and perhaps one at the light load (`below_max_qps`; no search): true when it is below on
        every stream (cached results are used as they are), and then its mean is below the rate too.
        `rate_qps` may also give one rate per stream (e.g. another fleet's value on each, so that the
        test is paired like the streams); a stream whose rate is 0 or less shows nothing, and then the
        answer is false. The runs go `workers` streams at a time, in that many processes; the first
        stream on which it is not below settles it."""
        rates = np.broadcast_to(np.asarray(rate_qps, dtype=float), (len(self.setups),))
        if np.any(rates <= 0):  # every max QPS is ≥ 0
            return False
        key = tuple(int(x) for x in config)
        todo = []
        for i, cache in enumerate(self.caches):
            if key not in cache:
                todo.append(i)
            elif cache[key].qps >= rates[i]:
                return False
        n_workers = max(1, self.workers)
        if n_workers == 1 or len(todo) <= 1:
            return all(below_max_qps(self.setups[i], key, float(rates[i])) for i in todo)
        with ProcessPoolExecutor(n_workers, initializer=_seeds_worker_init, initargs=(self.setups,)) as pool:
            for start in range(0, len(todo), n_workers):
                tasks = [(i, key, float(rates[i])) for i in todo[start : start + n_workers]]
                if not all(pool.map(_seeds_worker_fails, tasks)):
                    return False
        return True

    def meets(self, config: np.ndarray, rate_qps: float) -> bool:
        """Whether `config`'s max QPS is at least `rate_qps` on every stream: one run at that rate per
        stream and perhaps one at the light load (`below_max_qps`; no search; a cached result is used as it
        is), in this process, stopping at the first stream on which it falls short. E.g. the cheapest
        fleet that serves a target rate on every stream, tested in order of cost."""
        key = tuple(int(x) for x in config)
        for i, (setup, cache) in enumerate(zip(self.setups, self.caches, strict=True)):
            hit = cache.get(key)
            if hit is not None:
                if hit.qps < rate_qps:
                    return False
                continue
            if i not in self._svc:
                self._svc[i] = _svc_for(setup)
            if below_max_qps(setup, key, rate_qps, self._svc[i]):
                return False
        return True

    def _guess(self, key: tuple[int, ...]) -> float | None:
        """Where `key`'s search on a new stream starts: its mean over the streams it has results on, else
        `guess`."""
        known = [c[key].qps for c in self.caches if key in c]
        if known:
            return float(np.mean(known))
        return self.guess(np.asarray(key)) if self.guess is not None else None

    def known_means(self) -> dict[tuple[int, ...], float]:
        """Every configuration simulated so far, with its mean max QPS over the streams it was simulated on
        (streams added later are run only for the configurations asked for again)."""
        keys = set().union(*self.caches)
        return {k: float(np.mean([c[k].qps for c in self.caches if k in c])) for k in keys}

    def spread(self, config: np.ndarray) -> float:
        v = self.values(config)
        return float((v.max() - v.min()) / v.mean()) if v.mean() > 0 else 0.0

    def many(self, configs: np.ndarray, workers: int | None = None) -> np.ndarray:
        """Mean max QPS of each configuration (rows of `configs`). A configuration with no result yet is
        searched on its first streams (one per worker) before the others, whose searches then start at
        the first ones' mean (`_guess`)."""
        keys = [tuple(int(x) for x in c) for c in np.atleast_2d(configs)]
        n_workers = max(1, self.workers if workers is None else workers)
        pending = {k: [i for i, c in enumerate(self.caches) if k not in c] for k in dict.fromkeys(keys)}
        lead = {k: idx[:n_workers] for k, idx in pending.items()
                if len(idx) == len(self.caches) and len(idx) > n_workers}
        waves = ([(i, k) for k, idx in lead.items() for i in idx],
                 [(i, k) for k, idx in pending.items() for i in idx if i not in lead.get(k, ())])
        total, done = sum(len(w) for w in waves), 0
        for wave in waves:
            done = self._run(wave, n_workers, done, total)
        return np.array([np.mean([c[k].qps for c in self.caches]) for k in keys])

    def _run(self, pairs: list[tuple[int, tuple[int, ...]]], n_workers: int, done: int, total: int) -> int:
        """Search each (stream, configuration) pair, in `n_workers` processes; returns `done` + their number."""
        tasks = [(i, k, float(self.bound(np.asarray(k))) if self.bound is not None else None, self._guess(k))
                 for i, k in pairs]
        if tasks and (n_workers <= 1 or len(tasks) == 1):
            svc: dict[int, np.ndarray] = {}
            for i, k, ub, guess in tasks:
                if i not in svc:
                    svc[i] = _svc_for(self.setups[i])
                self.caches[i][k] = evaluate_config(self.setups[i], k, ub, svc[i], guess)
                done += 1
                if self.progress:
                    self.progress(done, total)
        elif tasks:
            with ProcessPoolExecutor(n_workers, initializer=_seeds_worker_init, initargs=(self.setups,)) as pool:
                results = pool.map(_seeds_worker_eval, tasks, chunksize=1)
                for (i, k, _, _), res in zip(tasks, results, strict=True):
                    self.caches[i][k] = res
                    done += 1
                    if self.progress:
                        self.progress(done, total)
        return done


# --------------------------------------------------------------------------------------------------
# Several models on one fleet
#
# One arrival stream carries the queries of every model: a query's model is drawn with probability
# its share of the demand vector r, so at a multiple λ model m's queries arrive as a Poisson stream of
# rate λ·r_m (thinning). Each model is judged on its own: the run passes when every model's p99
# latency is within that model's QoS and the fleet keeps up. `max_multiple` bisects for the largest
# passing λ. `MixStream.part(g)` is model g's queries alone, at the same times, batches and noise: the
# same model served by a fleet of its own, with common random numbers.


@dataclass(frozen=True)
class MixStream:
    """The queries of several models in one stream.

    stream     gaps (mean 1 at total rate 1), batches and noise of every query, in arrival order
    group      int[n]: which entry of `rates_qps` (which model) each query is for
    rates_qps  the demand vector r: at multiple λ the stream offers λ·Σr queries/s, λ·r_g of group g
    """

    stream: Stream
    group: np.ndarray
    rates_qps: np.ndarray

    def __len__(self) -> int:
        return len(self.stream)

    @property
    def total_rate_qps(self) -> float:
        return float(np.sum(self.rates_qps))

    def arrivals(self, multiple: float) -> np.ndarray:
        return self.stream.arrivals(multiple * self.total_rate_qps)

    def part(self, g: int) -> Stream:
        """Group g's queries alone: at rate λ·r_g they arrive at the times they have in this stream at
        multiple λ (gaps rescaled by the share r_g/Σr), with the same batches and noise."""
        idx = np.flatnonzero(self.group == g)
        t = np.cumsum(self.stream.gaps)[idx]
        share = float(self.rates_qps[g]) / self.total_rate_qps
        return Stream(np.diff(t, prepend=0.0) * share, self.stream.batches[idx], self.stream.noise_u[idx])


def poisson_mix_stream(batches: np.ndarray | Sequence[np.ndarray], rates_qps: Sequence[float], seed: int) -> MixStream:
    """Poisson arrivals of len(batches) queries (draws as `poisson_stream(batches, seed)`), each for group
    g with probability r_g/Σr (a separate draw seeded by `seed`). `batches`: one array for every group,
    or one array per group, each as long as the stream (query i of group g has batch `batches[g][i]`)."""
    rates = np.asarray(rates_qps, dtype=float)
    if len(rates) == 0 or (rates < 0).any() or rates.sum() <= 0:
        raise ConfigError(f"rates_qps must be >= 0 with a positive sum, got {rates.tolist()}")
    per_group = not isinstance(batches, np.ndarray)
    first = np.asarray(batches[0] if per_group else batches, dtype=np.int64)
    n = len(first)
    group = np.random.default_rng([seed, len(rates)]).choice(len(rates), size=n, p=rates / rates.sum())
    if per_group:
        table = np.stack([np.asarray(b, dtype=np.int64) for b in batches])
        if table.shape != (len(rates), n):
            raise ConfigError(f"batches: one array of {n} per group ({len(rates)} groups), got shape {table.shape}")
        chosen = table[group, np.arange(n)]
    else:
        chosen = first
    return MixStream(poisson_stream(chosen, seed), group.astype(np.intp), rates)


def mix_service_times(
    profiles: ProfileTable, models: Sequence[str], services: Sequence[ServiceModel] | None, stream: MixStream
) -> np.ndarray:
    """Service seconds of every query on every profiled type, float[n, types]: query i of group g as
    `services[g]` draws it for `models[g]` (default: no noise, the profile means)."""
    svc = np.empty((len(stream), len(profiles.types)))
    for g, model in enumerate(models):
        idx = np.flatnonzero(stream.group == g)
        sub = Stream(stream.stream.gaps[idx], stream.stream.batches[idx], stream.stream.noise_u[idx])
        svc[idx] = (services[g] if services is not None else ServiceModel()).times(profiles, model, sub)
    return svc


@dataclass(frozen=True)
class MixResult:
    """Outcome of one run of several models at one multiple (per-group tuples in demand order)."""

    offered_multiple: float
    offered_qps: float
    n_queries: int
    n_measured: tuple[int, ...]
    p99_s: tuple[float, ...]
    violations: tuple[int, ...]
    ok: bool
    aborted: bool
    lagging: bool
    policy_calls: int
    wall_s: float


def _run_mix(
    arr: np.ndarray,
    svc: np.ndarray,
    expected: np.ndarray,
    batches: np.ndarray,
    cols: np.ndarray,
    policy: Policy,
    group: np.ndarray,
    group_model: np.ndarray,
    group_qos_s: np.ndarray,
    measure_from: int,
    max_violations: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, bool, int, float]:
    """`_run` with a group per query (`group[q]`), each group its model (`group_model[g]`, a ProfileTable
    index) and QoS (`group_qos_s[g]`), and misses counted, and the run aborted, per group
    (`max_violations[g]`)."""
    n_q, n_i = len(arr), len(cols)
    window = 2 * n_i
    arr_l: list[float] = arr.tolist()
    cols_l: list[int] = cols.tolist()
    group_l: list[int] = group.tolist()
    group_qos: list[float] = group_qos_s.tolist()
    n_groups = len(group_qos)
    q_model = group_model[group]
    q_qos = group_qos_s[group]
    min_qos = min(group_qos)
    free_at = np.zeros(n_i)
    expect_at = np.zeros(n_i)
    n_free = n_i
    heap: list[tuple[float, int]] = []
    queue: list[int] = []
    waiting: list[list[int]] = [[] for _ in range(n_groups)]  # each group's queued queries, in order
    finish = np.full(n_q, np.inf)
    start = np.full(n_q, np.inf)  # when each query was handed to an instance
    viol = [0] * n_groups
    cap: list[int] = [int(x) for x in max_violations]
    calls = 0
    work = 0.0
    i = 0
    inf = math.inf
    while True:
        t_arr = arr_l[i] if i < n_q else inf
        if heap and heap[0][0] <= t_arr:
            now = heap[0][0]
            while heap and heap[0][0] <= now:
                heapq.heappop(heap)
                n_free += 1
        elif i < n_q:
            now = t_arr
            queue.append(i)
            waiting[group_l[i]].append(i)
            i += 1
            if now - arr_l[queue[0]] > min_qos and i > measure_from:
                # measured queries already waiting longer than their QoS are violations whatever happens next
                for g in range(n_groups):
                    cutoff = bisect.bisect_left(arr_l, now - group_qos[g])
                    late = bisect.bisect_left(waiting[g], cutoff) - bisect.bisect_left(waiting[g], measure_from)
                    if viol[g] + max(late, 0) > cap[g]:
                        return finish, start, True, calls, work
        else:
            break
        if not queue or n_free == 0:
            continue
        m = min(window, len(queue))
        qi = np.array(queue[:m], dtype=np.intp)
        free = free_at <= now
        busy = np.where(free, 0.0, np.maximum(expect_at - now, 1e-6))
        snap = Snapshot(q_model[qi], batches[qi], now - arr[qi], q_qos[qi], cols, busy, free)
        a = policy(snap)
        calls += 1
        if len(a) == 0:
            if not heap and i >= n_q:
                break
            continue
        rows: list[int] = a.queries.tolist()
        for r, c in zip(rows, a.instances.tolist(), strict=True):
            if free_at[c] > now:
                raise RuntimeError(f"policy {policy.name!r} assigned a query to busy instance {c}")
            q = queue[r]
            t = cols_l[c]
            s_qt = svc[q, t]
            work += s_qt
            f = now + s_qt
            free_at[c] = f
            expect_at[c] = now + expected[q, t]
            heapq.heappush(heap, (f, c))
            finish[q] = f
            start[q] = now
            g = group_l[q]
            waiting[g].remove(q)
            if f - arr_l[q] > group_qos[g] and q >= measure_from:
                viol[g] += 1
                if viol[g] > cap[g]:
                    return finish, start, True, calls, work
        n_free -= len(rows)
        queue = _without(queue, rows)
    return finish, start, False, calls, work


def simulate_mix(
    profiles: ProfileTable,
    models: Sequence[str],
    cols: np.ndarray,
    policy: Policy,
    multiple: float,
    *,
    qos_s: Sequence[float],
    stream: MixStream,
    services: Sequence[ServiceModel] | None = None,
    svc: np.ndarray | None = None,
    expected: np.ndarray | None = None,
    warmup_fraction: float = WARMUP_FRACTION,
    percentile: float = PERCENTILE,
    abort: bool = True,
) -> MixResult:
    """Run `stream` at `multiple` × its demand vector on the fleet `cols`: group g's queries are for
    `models[g]` with QoS `qos_s[g]`. Passes when every group's p99 (nearest rank at or above, over its
    measured queries) is within its QoS, and the fleet keeps up: the service handed out fits the
    instances' time, and no group's last query is handed to an instance more than `LAG_QOS` × its QoS
    after the last arrival. `svc`/`expected` as in `simulate` (default: `mix_service_times` with `services` / no noise);
    with `abort`, the run stops once any group has more misses than its percentile allows."""
    if multiple <= 0:
        raise ConfigError(f"multiple must be > 0, got {multiple}")
    n_groups = len(stream.rates_qps)
    if len(models) != n_groups or len(qos_s) != n_groups:
        raise ConfigError(f"{len(models)} models and {len(qos_s)} QoS targets for {n_groups} demand groups")
    t0 = time.perf_counter()
    if svc is None:
        svc = mix_service_times(profiles, models, services, stream)
    if expected is None:
        expected = mix_service_times(profiles, models, None, stream)
    arr = stream.arrivals(multiple)
    n = len(arr)
    group = stream.group
    measure_from = int(n * warmup_fraction)
    measured = group[measure_from:]
    n_measured = np.bincount(measured, minlength=n_groups)
    allowed = (1.0 - percentile / 100.0) * (n_measured - 1)
    max_viol = np.floor(allowed).astype(np.int64) + 1 if abort else np.full(n_groups, n + 1)
    model_idx = np.array([profiles.model_index(m) for m in models], dtype=np.intp)
    qos = np.asarray(qos_s, dtype=float)
    rule = simkernel.mix_rule_for(policy, model_idx)
    if rule is not None:
        finish, start, aborted, calls, work = simkernel.run_mix(arr, svc, expected, stream.stream.batches, cols, rule,
                                                                group, qos, measure_from, max_viol)
    else:
        finish, start, aborted, calls, work = _run_mix(arr, svc, expected, stream.stream.batches, cols, policy, group,
                                                       model_idx, qos, measure_from, max_viol)
    lat = finish[measure_from:] - arr[measure_from:]
    violations = tuple(int(np.count_nonzero(lat[measured == g] > qos[g])) for g in range(n_groups))
    overloaded = work > len(cols) * (arr[-1] - arr[0])
    lag = False
    if np.isfinite(start).all():  # the backlog, as `simulate` reads it
        lag = any(start[group == g].max() - arr[-1] > LAG_QOS * qos[g] for g in range(n_groups) if np.any(group == g))
    lagging = bool(overloaded or lag)
    p99 = tuple(
        math.inf if aborted or n_measured[g] == 0 else float(np.percentile(lat[measured == g], percentile, method="higher"))
        for g in range(n_groups)
    )
    ok = not aborted and not lagging and all(p99[g] <= qos[g] for g in range(n_groups) if n_measured[g] > 0)
    return MixResult(
        offered_multiple=float(multiple),
        offered_qps=float(multiple * stream.total_rate_qps),
        n_queries=n,
        n_measured=tuple(int(x) for x in n_measured),
        p99_s=p99,
        violations=violations,
        ok=ok,
        aborted=aborted,
        lagging=lagging,
        policy_calls=calls,
        wall_s=time.perf_counter() - t0,
    )


@dataclass(frozen=True)
class MaxMultiple:
    """The largest passing multiple of the demand vector found, the probes made ((multiple, ok) in
    order) and whether a multiple at or above the bound passed (the bound does not bound this fleet)."""

    multiple: float
    probes: tuple[tuple[float, bool], ...]
    exceeds_bound: bool
    wall_s: float


def max_multiple(
    profiles: ProfileTable,
    models: Sequence[str],
    cols: np.ndarray,
    policy_factory: PolicyFactory,
    *,
    qos_s: Sequence[float],
    stream: MixStream,
    services: Sequence[ServiceModel] | None = None,
    svc: np.ndarray | None = None,
    ub_multiple: float | None = None,
    rel_tol: float = 0.01,
    first_guess: float = 0.9,
) -> MaxMultiple:
    """Bisect for the largest multiple λ of the demand vector at which every model's p99 is within its
    QoS (`simulate_mix`). Search: a probe at UB·(1 + rel_tol) checks the bound (doubling upwards while it
    passes), then `first_guess`·UB, then bisection until the bracket is narrower than `rel_tol`·UB.
    Without a bound (or a zero one) the fleet's raw capacity on the stream, as a multiple, sets the
    scale. A fresh policy is built for every run."""
    t0 = time.perf_counter()
    if svc is None:
        svc = mix_service_times(profiles, models, services, stream)
    expected = mix_service_times(profiles, models, None, stream)
    probes: list[tuple[float, bool]] = []

    def ok(x: float) -> bool:
        r = simulate_mix(profiles, models, cols, policy_factory(), x, qos_s=qos_s, stream=stream, svc=svc,
                         expected=expected).ok
        probes.append((x, r))
        return r

    per_query = svc[:, cols].mean(axis=0)  # each instance's mean service time over the mix
    capacity = float(np.sum(1.0 / per_query)) / stream.total_rate_qps
    have_bound = ub_multiple is not None and ub_multiple > 0
    zero_bound = ub_multiple is not None and ub_multiple <= 0  # the bound says no multiple passes
    scale = float(ub_multiple) if have_bound and ub_multiple is not None else capacity
    hi, lo = scale * (1.0 + rel_tol), 0.0
    broken = False
    if ok(hi):
        broken, lo = have_bound or zero_bound, hi
        for _ in range(8):
            hi *= 2.0
            if not ok(hi):
                break
            lo = hi
        else:
            return MaxMultiple(lo, tuple(probes), broken, time.perf_counter() - t0)
    elif ok(first_guess * scale):
        lo = first_guess * scale
    else:
        hi = first_guess * scale
    while hi - lo > rel_tol * scale:
        mid = 0.5 * (lo + hi)
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return MaxMultiple(lo, tuple(probes), broken or (zero_bound and lo > 0), time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------------
# Several models on partitioned fleets
#
# A partitioned fleet pins each instance to one model: model g's part serves only its queries. The
# part is simulated alone on `MixStream.part(g)` (the same queries at the same times as in the mix),
# so at multiple λ it is offered λ·r_g; the fleet passes λ when every part does, and its max multiple
# is the least over the models of (part's max rate / r_g).


@dataclass(frozen=True)
class PartitionedMultiple:
    """The largest multiple of the demand vector a partitioned fleet serves (the least of `per_model`),
    each model's own max multiple (inf for a model without demand; 0 for one without a part) and its
    `max_qps` search (None when not run)."""

    multiple: float
    per_model: tuple[float, ...]
    searches: tuple[MaxQps | None, ...]
    exceeds_bound: bool
    wall_s: float


def max_multiple_partitioned(
    profiles: ProfileTable,
    models: Sequence[str],
    parts: Sequence[np.ndarray | None],
    policy_factory: PolicyFactory,
    *,
    qos_s: Sequence[float],
    stream: MixStream,
    services: Sequence[ServiceModel] | None = None,
    ub_qps: Sequence[float | None] | None = None,
    rel_tol: float = 0.01,
    first_guess: float = 0.9,
) -> PartitionedMultiple:
    """Max multiple of a partitioned fleet: `parts[g]` (fleet columns, see `fleet_columns`; None or empty
    for none) serves `models[g]` alone on `stream.part(g)`, its max rate found by `max_qps` (bound
    `ub_qps[g]` in q/s of that model, service noise `services[g]`); λ = min over the models with demand
    of max rate / r_g. The same search on the same part stream as an evaluation of that fleet for that
    model alone (`evaluate_config` with the part stream), so the two agree exactly."""
    t0 = time.perf_counter()
    n_groups = len(stream.rates_qps)
    if len(models) != n_groups or len(parts) != n_groups or len(qos_s) != n_groups:
        raise ConfigError(f"{len(models)} models, {len(parts)} parts and {len(qos_s)} QoS targets for {n_groups} groups")
    per_model: list[float] = []
    searches: list[MaxQps | None] = []
    broken = False
    for g, model in enumerate(models):
        rate = float(stream.rates_qps[g])
        cols = parts[g]
        if rate <= 0:
            per_model.append(math.inf)
            searches.append(None)
            continue
        if cols is None or len(cols) == 0:
            per_model.append(0.0)
            searches.append(None)
            continue
        res = max_qps(profiles, model, cols, policy_factory, qos_s=qos_s[g], stream=stream.part(g),
                      service=services[g] if services is not None else None,
                      ub_qps=ub_qps[g] if ub_qps is not None else None, rel_tol=rel_tol, first_guess=first_guess)
        per_model.append(res.qps / rate)
        searches.append(res)
        broken |= res.exceeds_bound
    return PartitionedMultiple(min(per_model), tuple(per_model), tuple(searches), broken, time.perf_counter() - t0)

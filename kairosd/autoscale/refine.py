"""Kairos+ for the autoscaler: a "max_throughput" plan refined by simulation.

The autoscaler's plan (`kairosd.planner.plan_fleet`) is one-shot: the fleet of best queue-aware
estimate (for one model, `select_kairos`), and that estimate errs by a few percent between close
fleets. With `autoscaler.selector = "kairos_plus"` (the default), a "max_throughput" plan for observed
demand is then refined as `kairosd plan` chooses by default: Kairos+ walks the configurations in the
`kairos` order from the one-shot choice, simulating each one still alive on `PLUS_STREAMS` streams of
the observed load and pruning by bound (`kairosd.planner.select_kairos_plus`), so that its choice is
never below the one-shot fleet on its own simulation. When one model has demand, the walk is
`kairosd plan`'s on it, over the fleets that can also serve every other served model; when several
do, it first simulates the partitioned fleets (`partition_walk`: each instance pinned to one model,
each part on its model's queries of the walk's streams), then walks the shared fleets that serve
every model, ranked as `plan_fleet` ranks them, each valued at the largest multiple of the observed
rates at which every model keeps its QoS (`MixEvaluator`); the kind (shared or partitioned) the
one-shot plan chose stands unless the other serves at least as much on every stream and more on
average (`_prefer_partition`). A "min_cost" plan is refined by its own walk
(`kairosd.autoscale.cover`: the cheapest fleet that serves the headroom in simulation); a plan for
no observed demand stays one-shot.

The simulator draws each query's service time from the distributions the estimate weighs (an
emulated type's cells, else the profile's log-normal of mean and p99), as `SIM_QUANTILES` equally
likely values per type and batch (`RefineJob.draws`; the estimate's tables hold `QUANTILES`), and
dispatches with the configured policy. The walk runs in a child interpreter (`refine_isolated`), on one core at
most, so that the daemon's event loop keeps its interpreter lock, and in the background
(`BackgroundRefiner`): the reconcile acts on the one-shot plan at once and on the refined one when the
walk ends, and a newer plan kills a walk made stale. A walk that fails or runs past its deadline
leaves the one-shot plan (logged).
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from kairosd.errors import ConfigError, KairosError
from kairosd.planner.demand import ModelDemand
from kairosd.planner.joint import DEFAULT_HEADROOM, FleetPlan
from kairosd.planner.tails import Tails
from kairosd.pools import pool_name
from kairosd.profiles import ProfileTable

if TYPE_CHECKING:
    from kairosd.planner import Candidates
    from kairosd.planner.bounds import BoundModel
    from kairosd.planner.joint import JointModel
    from kairosd.planner.selectors import Evaluator
    from kairosd.sim import MixStream, SeedsEvaluator, ServiceModel, Stream

log = logging.getLogger(__name__)

PLUS_QUERIES = 6000  # queries per simulated stream, as `kairosd plan` and bench/planner_robust.py run Kairos+
PLUS_STREAMS = 3  # streams each fleet is simulated on (common random numbers across fleets); up to 3× on duels
PLUS_TIME_LIMIT_S = 30.0  # seconds of walking: no fleet is simulated past them (the first always is)
STREAM_SEED_STEP = 10  # the i-th stream draws from seed + i·STREAM_SEED_STEP (its batches and its arrivals)
START_GRACE_S = 30.0  # on top of the time limit: the child's start (imports) and its last simulation
PARENT_POLL_S = 0.5  # how often the child checks that the daemon that started it is alive
PMF_TOLERANCE = 0.05  # a walk is kept for a new plan while every batch pmf is within this total variation
SHARE_TOLERANCE = 0.05  # ... and every model's share of the total rate within this of the walk's
PART_ROUNDS = 3  # partitions simulated at most with several models: the one-shot one and its re-plans
SCALE_FLOOR = 0.05  # a part that serves nothing in simulation scales its model's estimates by this
MIN_WALK_S = 1.0  # the shared walk's time limit when the partitions took the job's: it simulates its first fleet


class RefineError(KairosError):
    """The Kairos+ walk gave no choice (it failed, or ran past its deadline): the one-shot plan stands."""


@dataclass(frozen=True)
class RefineJob:
    """What the walk needs (picklable: it is sent to the child process).

    `demand`: every served model's observed rate and batch mix, as the one-shot plan was made for;
    `qos_s` and `tails` per model in that order, `tails` over every profiled type (`profiles.types`
    order): the service times the simulator draws; `types`, `prices`, `max_counts`: the planned types
    (0 for an unavailable one); `policy`, `policy_params`, `slots`: the dispatcher as configured."""

    profiles: ProfileTable
    demand: tuple[ModelDemand, ...]
    qos_s: tuple[float, ...]
    tails: tuple[Tails, ...]
    types: tuple[str, ...]
    prices: tuple[float, ...]
    max_counts: tuple[int, ...] | None  # None: every type available
    budget_usd_per_hour: float
    tail: bool
    policy: str
    policy_params: Mapping[str, Any] = field(default_factory=dict)
    slots: tuple[int, ...] | None = None
    queries: int = PLUS_QUERIES
    streams: int = PLUS_STREAMS
    seed: int = 0
    time_limit_s: float = PLUS_TIME_LIMIT_S
    one_shot_partitioned: bool = False  # the one-shot plan pins instances to models (the kind the walk must beat)
    objective: str = "max_throughput"  # or "min_cost": the cheapest fleet serving headroom × the rates (`cover`)
    headroom: float = DEFAULT_HEADROOM  # min_cost: the multiple of the observed rates to serve
    # per model, the service times the simulator draws ([type, batch, q] over `profiles.types`, equally likely
    # values: `SIM_QUANTILES` of them where `tails` has `QUANTILES`); None: `tails`' quantiles
    draws: tuple[np.ndarray, ...] | None = None

    def __post_init__(self) -> None:
        # the draws are kept in float32: half the pickle the walk's child is sent; `service` widens them
        if self.draws is not None:
            object.__setattr__(self, "draws", tuple(np.asarray(d, dtype=np.float32) for d in self.draws))

    @property
    def total_rate_qps(self) -> float:
        return float(sum(d.rate_qps for d in self.demand))

    @property
    def caps(self) -> list[int] | None:
        """`max_counts` as the enumeration takes it."""
        return None if self.max_counts is None else list(self.max_counts)

    def service(self, g: int) -> ServiceModel:
        """What the simulator draws model g's service times from (`draws`, else `tails`' quantiles)."""
        from kairosd.sim import ServiceModel

        if self.draws is None:
            return ServiceModel("quantiles", quantiles=self.tails[g].quantiles)
        return ServiceModel("quantiles", quantiles=np.asarray(self.draws[g], dtype=np.float64))

    def planned_tails(self, g: int) -> Tails:
        """Model g's tables on the planned types."""
        rows = [self.profiles.type_index(t) for t in self.types]
        t = self.tails[g]
        return Tails(t.miss[rows], t.cv2[rows], t.quantiles[rows])


@dataclass(frozen=True)
class Refined:
    """Kairos+'s choice: counts per planned type, its simulated max QPS (mean over the streams; the total
    over the models at the largest multiple of their observed rates it serves), its bound, the
    configurations simulated out of all, whether the walk proved it the optimum (`exact`), and the
    walk's seconds. `parts`: for a partitioned choice, the instances per type pinned to each model
    (`counts` is their sum; `n_evals` counts the parts and the shared configurations simulated);
    `note`: with several models, what the other kind of fleet (shared or partitioned) was worth in
    simulation."""

    counts: dict[str, int]
    qps: float
    ub_qps: float
    n_evals: int
    n_configs: int
    exact: bool
    seconds: float
    parts: dict[str, dict[str, int]] | None = None
    note: str = ""
    objective: str = "max_throughput"  # "min_cost": the cheapest simulated cover (`kairosd.autoscale.cover`)
    why: str = ""  # put before the reason (e.g. a min_cost walk that nothing covers gives the max_throughput choice)


@dataclass(frozen=True)
class PartChoice:
    """The best partition simulated (`partition_walk`): the instances per type pinned to each model
    (index into the job's demand), its multiple λ (the least over the models with demand of the part's
    simulated max QPS over the model's observed rate; the mean over the streams), its bound's, the partitions
    and parts simulated, and the multiple per stream."""

    parts: dict[int, np.ndarray]
    multiple: float
    bound_multiple: float
    n_partitions: int
    n_parts: int
    per_stream: tuple[float, ...] = ()  # the multiple on each of the walk's streams


def refine(job: RefineJob) -> Refined:
    """Kairos+ over `job`'s configurations, in this process (`refine_isolated` runs it in a child): with one
    model with demand, on its `make_candidates` and `SeedsEvaluator`, as `kairosd plan` walks (the
    configurations that cannot serve another served model left out, when some can); with several, on
    the shared configurations that can serve every model, ranked as `plan_fleet` ranks them (the joint
    estimate and bound), each valued by the simulator's max multiple of the observed rates (`MixEvaluator`)."""
    from kairosd.planner import select_kairos_plus

    if job.objective == "min_cost":
        from kairosd.autoscale.cover import cheapest_cover

        return cheapest_cover(job)
    t0 = time.perf_counter()
    live = [g for g, d in enumerate(job.demand) if d.rate_qps > 0]
    if not live:
        raise RefineError("no model has observed demand: a max-throughput walk needs the mix to simulate")
    part = None
    mix: MixEvaluator | None = None
    evaluator: Evaluator
    estimate: Callable[[np.ndarray], np.ndarray] | None = None
    if len(live) > 1:
        streams = _mix_streams(job, live)
        part = partition_walk(job, live, streams, (t0 + job.time_limit_s) if job.time_limit_s else None)
        cands, mix = _several_models(job, live, streams)
        evaluator = mix
    else:
        cands, evaluator, estimate = _one_model(job, live[0])
    if len(cands) == 0 and part is None:
        raise RefineError(f"no configuration of {list(job.types)} fits {job.budget_usd_per_hour} $/h")
    sel = None
    if len(cands):
        left = job.time_limit_s - (time.perf_counter() - t0) if job.time_limit_s else None
        sel = select_kairos_plus(cands, evaluator, time_limit_s=None if left is None else max(left, MIN_WALK_S),
                                 estimate=estimate)
    if (sel is None or sel.qps is None) and part is None:
        raise RefineError("Kairos+ simulated no configuration")
    total = job.total_rate_qps
    shared_vals = None if mix is None or sel is None or sel.qps is None else mix.values(sel.config) / total
    pinned = part is not None and (shared_vals is None or _prefer_partition(job, part, shared_vals))
    if part is not None and pinned:
        n_shared = 0 if sel is None else sel.n_evals
        shared = ("no shared fleet" if sel is None or sel.qps is None else
                  f"the best shared fleet {_label(_counts(job, sel.config))} at {sel.qps:.1f} q/s simulated, "
                  f"{n_shared} of {len(cands)} shared configurations simulated")
        total_counts = sum(part.parts.values(), np.zeros(len(job.types), dtype=np.int64))
        return Refined(_counts(job, total_counts), part.multiple * total, part.bound_multiple * total,
                       part.n_parts + n_shared, len(cands), False, time.perf_counter() - t0,
                       parts={job.demand[m].model: _counts(job, c) for m, c in sorted(part.parts.items())},
                       note=f"partitioned: partitions simulated {part.n_partitions}; {shared}")
    assert sel is not None and sel.qps is not None
    note = "" if len(live) == 1 else ("; no partition serves every model" if part is None else
                                      f"; the best partition simulated serves {part.multiple * total:.1f} q/s")
    return Refined(_counts(job, sel.config), float(sel.qps), float(sel.ub_qps), sel.n_evals, len(cands), sel.exact,
                   time.perf_counter() - t0, note=note)


def _prefer_partition(job: RefineJob, part: PartChoice, shared: np.ndarray) -> bool:
    """Whether the partition is the plan rather than the best shared fleet, both valued on the same streams
    (multiples per stream): the kind the one-shot plan chose stands unless the other serves at least as
    much on every stream and more on average (Kairos+'s rule against a lucky stream)."""
    pinned = np.asarray(part.per_stream)
    if job.one_shot_partitioned:
        return not (bool((shared >= pinned).all()) and float(shared.mean()) > float(pinned.mean()))
    return bool((pinned >= shared).all()) and float(pinned.mean()) > float(shared.mean())


def _counts(job: RefineJob, config: np.ndarray) -> dict[str, int]:
    return {t: int(n) for t, n in zip(job.types, config, strict=True)}


def partition_walk(job: RefineJob, live: Sequence[int], streams: Sequence[MixStream],
                   deadline: float | None = None) -> PartChoice | None:
    """The partitioned fleets for the models `live` (those with demand, two or more), valued by simulation
    on the walk's mix `streams` (`_mix_streams`, group i for model live[i]): `plan_fleet`'s partition
    first (`best_partition`), each part simulated on its model's part of each stream (its max QPS,
    `_model_evaluator`), the partition worth, per stream, the least over the models of part QPS /
    observed rate (`max_multiple_partitioned`'s rule; the mean over the streams); then, up to
    `PART_ROUNDS` partitions in all and until `deadline` (perf_counter), the partition planned again with
    each model's estimates scaled by how far its part's simulation put it from its estimate, until one
    repeats. The best simulated; None when no partition serves every model with demand. E.g. a part
    estimated at 80 q/s that serves 60 in simulation scales its model's estimates by 0.75, and the
    budget moves to it."""
    from kairosd.planner import upper_bound
    from kairosd.planner.joint import best_partition

    joint = _joint(job)
    rates = [d.rate_qps for d in job.demand]
    evaluators = {g: _model_evaluator(job, g, [ms.part(i) for ms in streams])[1] for i, g in enumerate(live)}
    scale = {g: 1.0 for g in live}
    seen: set[tuple[tuple[int, ...], ...]] = set()
    parts_simulated: set[tuple[int, tuple[int, ...]]] = set()
    best: PartChoice | None = None
    for _ in range(PART_ROUNDS):
        part = best_partition(joint, rates, job.prices, job.budget_usd_per_hour, job.caps, scale=scale)
        if part is None:
            break
        key = tuple(tuple(int(x) for x in part.parts[m]) for m in sorted(part.parts))
        if key in seen:
            break
        seen.add(key)
        values = {g: evaluators[g].values(part.parts[g]) for g in live}  # each part's max QPS per stream
        per_stream = np.min([values[g] / rates[g] for g in live], axis=0)
        qps = {g: float(values[g].mean()) for g in live}
        parts_simulated.update((g, tuple(int(x) for x in part.parts[g])) for g in live)
        lam = float(per_stream.mean())
        if best is None or lam > best.multiple:
            ub = min(float(upper_bound(part.parts[g][None, :], joint.models[g])[0]) / rates[g] for g in live)
            best = PartChoice(part.parts, lam, ub, 0, 0, tuple(float(x) for x in per_stream))
        if deadline is not None and time.perf_counter() >= deadline:
            break
        scale = {g: scale[g] * max(qps[g], SCALE_FLOOR * part.est_qps[g]) / part.est_qps[g] for g in live}
    return None if best is None else replace(best, n_partitions=len(seen), n_parts=len(parts_simulated))


def _batches(pmf: np.ndarray, n: int, seed: int) -> np.ndarray:
    p = np.asarray(pmf, dtype=float)
    return np.maximum(np.random.default_rng(seed).choice(len(p), size=n, p=p / p.sum()), 1)


def _one_model(job: RefineJob, g: int) -> tuple[Candidates, Evaluator, Callable[[np.ndarray], np.ndarray]]:
    """Model g alone has demand: `kairosd plan`'s walk on it (the compiled single-model simulator), over
    the configurations that can also serve every other model (when any can), as `plan_fleet` keeps them;
    estimated where the bound reaches near the best score, and further as the walk comes to them (the
    third value, `select_kairos_plus`'s `estimate`)."""
    from kairosd.planner import CLOSE_SCORE, lazy_estimate, make_candidates

    on_streams, evaluator = _model_evaluator(job, g)
    d = job.demand[g]
    bm = _model_on(job, g, d.batch_pmf)
    cands = make_candidates(bm, job.prices, job.budget_usd_per_hour, max_counts=job.caps, evaluated_on=on_streams,
                            prune_within=CLOSE_SCORE)
    if len(job.demand) > 1 and len(cands):
        serve_all = _joint(job).servable(cands.configs).all(axis=1)
        if serve_all.any():
            cands = _rows(cands, np.flatnonzero(serve_all))
    return cands, replace(evaluator, guess=cands.search_start), lazy_estimate(bm, cands)


def _model_on(job: RefineJob, g: int, pmf: np.ndarray) -> BoundModel:
    """Model g's bound model on the planned types for the batch mix `pmf`."""
    from kairosd.planner.tails import tailed_model

    return tailed_model(job.profiles, job.demand[g].model, job.types, pmf, job.qos_s[g], job.planned_tails(g),
                        tail=job.tail)


def _model_evaluator(job: RefineJob, g: int, streams: Sequence[Stream] | None = None) -> tuple[BoundModel, SeedsEvaluator]:
    """Model g's queries alone: the bound model on the batches of the simulated streams, and the evaluator
    of a fleet's max QPS on them (the compiled single-model simulator, bounded by that model's
    `upper_bound`). The streams: `streams` when given (e.g. model g's part of the walk's mix streams),
    else `job.streams` of its own at its observed mix, with more to add for Kairos+'s duels."""
    from kairosd.planner import batch_pmf, upper_bound
    from kairosd.sim import SeedsEvaluator, SimSetup, poisson_stream

    d, qos = job.demand[g], job.qos_s[g]
    service = job.service(g)

    def setup(stream: Stream) -> SimSetup:
        return SimSetup(job.profiles, d.model, job.types, job.policy, dict(job.policy_params), qos, stream, service,
                        job.slots)

    def own(i: int) -> SimSetup:
        seed = job.seed + i * STREAM_SEED_STEP
        return setup(poisson_stream(_batches(d.batch_pmf, job.queries, seed), seed + 1))

    setups = tuple(setup(st) for st in streams) if streams is not None else tuple(own(i) for i in range(job.streams))
    on_streams = _model_on(job, g, batch_pmf(np.concatenate([s.stream.batches for s in setups]), job.profiles.max_batch))
    bound = lambda config: float(upper_bound(np.asarray(config)[None, :], on_streams)[0])
    if streams is not None:
        return on_streams, SeedsEvaluator(setups, bound=bound, workers=1)
    return on_streams, SeedsEvaluator(setups, bound=bound, more=own, max_streams=3 * job.streams, workers=1)


def _mix_streams(job: RefineJob, live: Sequence[int]) -> list[MixStream]:
    """The walk's `job.streams` streams of the models `live` (those with demand; group i is model live[i])
    at their observed rates and mixes."""
    from kairosd.sim import poisson_mix_stream

    return [poisson_mix_stream([_batches(job.demand[g].batch_pmf, job.queries, job.seed + i * STREAM_SEED_STEP + g)
                                for g in live], [job.demand[g].rate_qps for g in live],
                               job.seed + i * STREAM_SEED_STEP + len(job.demand))
            for i in range(job.streams)]


def _several_models(job: RefineJob, live: Sequence[int],
                    streams: Sequence[MixStream] | None = None) -> tuple[Candidates, MixEvaluator]:
    """The models `live` have demand: the shared fleets that serve every model, valued by `MixEvaluator` on
    `streams` of those models' queries (default `_mix_streams`; a model without demand sends none)."""
    from kairosd.planner import Candidates, config_cost, enumerate_configs

    joint = _joint(job)
    prices = np.asarray(job.prices, dtype=float)
    configs = enumerate_configs(prices, job.budget_usd_per_hour, maximal_only=True, max_counts=job.caps)
    if len(configs):
        serve_all = joint.servable(configs).all(axis=1)
        configs = configs[serve_all] if serve_all.any() else configs
    ub = joint.bound_qps(configs)
    est = joint.estimate_qps(configs, ub)
    cands = Candidates(job.types, prices, job.budget_usd_per_hour, configs, config_cost(configs, prices), ub, est)
    services = [job.service(g) for g in live]
    streams = _mix_streams(job, live) if streams is None else streams
    bound = lambda config: float(joint.bound_qps(np.asarray(config)[None, :])[0])
    evaluator = MixEvaluator(job, [job.demand[g].model for g in live], [job.qos_s[g] for g in live], services,
                             streams, bound)
    return cands, evaluator


def _joint(job: RefineJob) -> JointModel:
    """The joint model of every served model's demand, as `plan_fleet` builds it."""
    from kairosd.planner.joint import JointModel
    from kairosd.planner.tails import tailed_model

    models = [tailed_model(job.profiles, d.model, job.types, d.batch_pmf, q, job.planned_tails(g), tail=job.tail)
              for g, (d, q) in enumerate(zip(job.demand, job.qos_s, strict=True))]
    return JointModel.build(models, list(job.demand))


def _rows(cands: Candidates, rows: np.ndarray) -> Candidates:
    """The candidates `rows` alone (every per-configuration array taken at them)."""
    def at(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[rows]

    return replace(cands, configs=cands.configs[rows], cost_usd_per_hour=cands.cost_usd_per_hour[rows],
                   ub_qps=cands.ub_qps[rows], est_qps=at(cands.est_qps), paper_qps=at(cands.paper_qps),
                   idle_miss=at(cands.idle_miss), prune_ub_qps=at(cands.prune_ub_qps))


class MixEvaluator:
    """config → its max QPS over several models: the observed rates' total times the largest multiple of
    them at which every model's p99 is within its QoS (`kairosd.sim.max_multiple`), the mean over the
    streams (each the same for every configuration); `values(config)` per stream, for Kairos+'s noise rule."""

    def __init__(self, job: RefineJob, models: Sequence[str], qos_s: Sequence[float], services: Sequence[ServiceModel],
                 streams: Sequence[MixStream], bound: Callable[[np.ndarray], float]) -> None:
        from kairosd.sim import mix_service_times

        self.job, self.models, self.qos_s, self.streams, self.bound = job, list(models), list(qos_s), list(streams), bound
        self.svc = [mix_service_times(job.profiles, self.models, list(services), s) for s in self.streams]
        self._expected: list[np.ndarray] | None = None  # each stream's services without noise (`meets`)
        self.cache: dict[tuple[int, ...], np.ndarray] = {}

    def values(self, config: np.ndarray) -> np.ndarray:
        from kairosd.dispatch import make_policy
        from kairosd.sim import fleet_columns, max_multiple

        key = tuple(int(x) for x in config)
        if key not in self.cache:
            job = self.job
            cols = fleet_columns(job.profiles, job.types, key, job.slots)
            factory = lambda: make_policy(job.policy, job.profiles, **dict(job.policy_params))
            out = []
            for stream, svc in zip(self.streams, self.svc, strict=True):
                total = float(stream.total_rate_qps)
                res = max_multiple(job.profiles, self.models, cols, factory, qos_s=self.qos_s, stream=stream, svc=svc,
                                   ub_multiple=self.bound(np.asarray(key)) / total)
                out.append(res.multiple * total)
            self.cache[key] = np.array(out)
        return self.cache[key]

    def __call__(self, config: np.ndarray) -> float:
        return float(self.values(config).mean())

    def meets(self, config: np.ndarray, multiple: float) -> bool:
        """Whether `config` keeps every model's QoS at `multiple` × the observed rates on every stream: one
        run per stream (`simulate_mix`; a cached search's result is used as it is), stopping at the first
        stream on which it does not."""
        from kairosd.dispatch import make_policy
        from kairosd.sim import fleet_columns, mix_service_times, simulate_mix

        key = tuple(int(x) for x in config)
        if key in self.cache:
            return bool((self.cache[key] >= multiple * np.array([s.total_rate_qps for s in self.streams])).all())
        job = self.job
        if self._expected is None:
            self._expected = [mix_service_times(job.profiles, self.models, None, s) for s in self.streams]
        cols = fleet_columns(job.profiles, job.types, key, job.slots)
        for stream, svc, expected in zip(self.streams, self.svc, self._expected, strict=True):
            policy = make_policy(job.policy, job.profiles, **dict(job.policy_params))
            if not simulate_mix(job.profiles, self.models, cols, policy, multiple, qos_s=self.qos_s, stream=stream,
                                svc=svc, expected=expected).ok:
                return False
        return True


def refine_isolated(job: RefineJob, timeout_s: float | None = None,
                    on_start: Callable[[subprocess.Popen[bytes]], None] | None = None) -> Refined:
    """`refine(job)` in a child interpreter (`python -m kairosd.autoscale.refine`: the job pickled on its
    stdin, the choice on its stdout; nothing of the daemon's threads, sockets or main module is
    inherited), killed after `timeout_s` (default: the job's time limit plus `START_GRACE_S`). `on_start`
    is given the child as soon as it runs (e.g. to kill a walk made stale). Raises RefineError when the
    child fails, dies (killed included) or runs past the deadline. The child also exits when its parent
    dies."""
    limit = job.time_limit_s + START_GRACE_S if timeout_s is None else timeout_s
    proc = subprocess.Popen([sys.executable, "-m", "kairosd.autoscale.refine", str(os.getpid())],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if on_start is not None:
        on_start(proc)
    try:
        out, err = proc.communicate(pickle.dumps(job), timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RefineError(f"the Kairos+ walk ran past {limit:g} s and was stopped") from None
    finally:
        if proc.poll() is None:  # interrupted while waiting: leave no walk behind
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        raise RefineError(f"the Kairos+ walk failed: {tail[0]}")
    refined = pickle.loads(out)
    if not isinstance(refined, Refined):
        raise RefineError(f"the Kairos+ process answered {type(refined).__name__}, not a choice")
    return refined


class BackgroundRefiner:
    """Kairos+ walks for the autoscaler's target, one at a time, each in a child interpreter waited on by
    a thread of its own, so that the reconcile goes on with the one-shot plan meanwhile.

    `start(demand, unavailable, plan)` is given each new one-shot `plan` and returns the plan to act on
    now. It refines (`applies`) a plan for observed demand with a non-empty fleet. A "max_throughput"
    plan for the same fleet, available types and mix as the walk under way or done (`same_mix`: every
    batch pmf within `PMF_TOLERANCE` in total variation, every model's share of the rate within
    `SHARE_TOLERANCE`; the rate itself does not change a max-throughput choice) keeps that walk: its
    choice when it has one (its multiple taken at the new rate), else `plan`. Any other plan, a
    "min_cost" one included (its choice is for its rates), kills the walk and, when it applies, begins
    one. `take()` returns the refined plan once, when the walk has ended with a
    choice (None before that, after a failure, and after it was taken); `close()` kills a running
    walk. A failed walk is logged, the one-shot plan stands, and the same mix is not walked again."""

    def __init__(self, make_job: Callable[[Sequence[ModelDemand], frozenset[str]], RefineJob],
                 prices: Mapping[str, float], objective: str) -> None:
        self.make_job = make_job
        self.prices = dict(prices)
        self.objective = objective
        self._lock = threading.Lock()
        self._generation = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._active = False  # a walk is under way (from `start` until its result is in)
        self._walk_for: tuple[tuple[tuple[str, int], ...], frozenset[str], tuple[ModelDemand, ...]] | None = None
        self._chosen: tuple[FleetPlan, Refined] | None = None  # the walk's one-shot plan and choice
        self._ready = False  # the choice is in and not taken yet
        self._rate_qps = 0.0  # the newest demand's total rate, at which a choice's multiple is taken
        self.walks = 0  # walks started
        self.failures = 0  # walks that gave no choice (killed ones not counted)
        self.superseded = 0  # walks killed before they ended: a newer plan (fleet, mix or availability) made them stale

    def applies(self, demand: Sequence[ModelDemand], plan: FleetPlan) -> bool:
        """Whether a walk refines this plan: some observed demand and a non-empty fleet ("max_throughput":
        Kairos+; "min_cost": the cheapest simulated cover, `kairosd.autoscale.cover`)."""
        return sum(d.rate_qps for d in demand) > 0 and plan.cost_usd_per_hour > 0

    def start(self, demand: Sequence[ModelDemand], unavailable: frozenset[str], plan: FleetPlan) -> FleetPlan:
        """The plan to act on now for the new one-shot `plan` (see the class); begins a walk when needed."""
        applies = self.applies(demand, plan)
        key = (tuple(sorted(plan.counts.items())), unavailable)
        total = float(sum(d.rate_qps for d in demand))
        with self._lock:
            if applies and self.objective == "max_throughput" and self._walk_for is not None \
                    and self._walk_for[:2] == key and same_mix(self._walk_for[2], demand):
                self._rate_qps = total
                if self._chosen is not None:
                    self._ready = False
                    return self._plan_at(total)
                return plan  # the walk for this mix goes on (or gave no choice)
            self._generation += 1
            generation = self._generation
            self._walk_for, self._chosen, self._ready = None, None, False
            if self._active:
                self.superseded += 1
            self._kill_locked()
        if not applies:
            return plan
        job = replace(self.make_job(demand, unavailable), one_shot_partitioned=plan.partitioned)
        with self._lock:
            if generation != self._generation:
                return plan
            self._active, self._walk_for, self._rate_qps = True, (*key, tuple(demand)), total
        self.walks += 1
        threading.Thread(target=self._walk, args=(generation, job, plan), name="kairosd-plan-refine",
                         daemon=True).start()
        return plan

    def refine_now(self, demand: Sequence[ModelDemand], unavailable: frozenset[str], plan: FleetPlan) -> FleetPlan:
        """The refined `plan`, walked in this process and waited for (a dry run: `kairosd fleet plan`); `plan`
        itself when the walk does not apply. Raises KairosError when the walk gives no choice."""
        if not self.applies(demand, plan):
            return plan
        job = replace(self.make_job(demand, unavailable), one_shot_partitioned=plan.partitioned)
        return refined_plan(plan, refine(job), job.total_rate_qps, self.prices)

    def _plan_at(self, rate_qps: float) -> FleetPlan:
        assert self._chosen is not None
        one_shot, refined = self._chosen
        return refined_plan(one_shot, refined, rate_qps, self.prices)

    def _walk(self, generation: int, job: RefineJob, plan: FleetPlan) -> None:
        def started(proc: subprocess.Popen[bytes]) -> None:
            with self._lock:
                if generation == self._generation:
                    self._proc = proc
                else:  # a newer plan came while this one started
                    proc.kill()

        try:
            refined = refine_isolated(job, on_start=started)
            refined_plan(plan, refined, job.total_rate_qps, self.prices)  # refuses a choice of unknown types
        except Exception as exc:  # noqa: BLE001 - whatever ends a walk without a choice leaves the one-shot plan
            with self._lock:
                current = generation == self._generation
                if current:
                    self._proc, self._active = None, False
            if current:
                self.failures += 1
                log.warning("plan: %s; the one-shot kairos plan stands", exc)
            return
        with self._lock:
            if generation == self._generation:
                self._proc, self._active, self._chosen, self._ready = None, False, (plan, refined), True

    def take(self) -> FleetPlan | None:
        """The refined plan for the newest one-shot plan, once it is ready (then None again)."""
        with self._lock:
            if not self._ready:
                return None
            self._ready = False
            return self._plan_at(self._rate_qps)

    @property
    def running(self) -> bool:
        """Whether a walk is under way (its result not in yet)."""
        with self._lock:
            return self._active

    def close(self) -> None:
        """Kill a running walk; its result is dropped."""
        with self._lock:
            self._generation += 1
            self._walk_for, self._chosen, self._ready = None, None, False
            self._kill_locked()

    def _kill_locked(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self._proc, self._active = None, False


def same_mix(a: Sequence[ModelDemand], b: Sequence[ModelDemand], pmf_tolerance: float = PMF_TOLERANCE,
             share_tolerance: float = SHARE_TOLERANCE) -> bool:
    """Whether two demands ask the same of a max-throughput plan: the same models, each batch pmf within
    `pmf_tolerance` in total variation, each model's share of the total rate within `share_tolerance`
    (a model with demand in one and none in the other differs). E.g. one model at 40 and at 60 q/s with
    the same mix: the same."""
    if [d.model for d in a] != [d.model for d in b]:
        return False
    ta, tb = sum(d.rate_qps for d in a), sum(d.rate_qps for d in b)
    for x, y in zip(a, b, strict=True):
        if (x.rate_qps > 0) != (y.rate_qps > 0):
            return False
        if ta > 0 and tb > 0 and abs(x.rate_qps / ta - y.rate_qps / tb) > share_tolerance:
            return False
        if x.mix_distance(y) > pmf_tolerance:
            return False
    return True


def _watch_parent(parent_pid: int) -> None:
    """Exit this child as soon as the process that started it is gone (its walk is then no one's)."""
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_S)
    os._exit(3)


def _main() -> int:
    """The child: a pickled RefineJob on stdin, the pickled Refined on stdout (errors on stderr, exit 1);
    argv[1], when given, the parent's pid, whose exit ends the child too."""
    if len(sys.argv) > 1:
        threading.Thread(target=_watch_parent, args=(int(sys.argv[1]),), daemon=True).start()
    job = pickle.load(sys.stdin.buffer)
    try:
        refined = refine(job)
    except KairosError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(pickle.dumps(refined))
    return 0


def refined_plan(plan: FleetPlan, refined: Refined, rate_qps: float, prices: Mapping[str, float]) -> FleetPlan:
    """The one-shot `plan` with Kairos+'s fleet: counts (every type of the plan, 0 where unchosen), cost,
    its simulated max QPS and bound as multiples of the observed rate, and why."""
    counts = {t: refined.counts.get(t, 0) for t in plan.counts}
    unknown = set(refined.counts) - set(plan.counts)
    if unknown:
        raise ConfigError(f"Kairos+ chose types the plan does not have: {sorted(unknown)}")
    cost = float(sum(n * prices[t] for t, n in counts.items()))
    pools = ({} if refined.parts is None else
             {pool_name(t, m): n for m, part in refined.parts.items() for t, n in part.items() if n})
    same = counts == plan.counts and (pools or {t: n for t, n in counts.items() if n}) == plan.pools
    pinned = None if refined.parts is None else " | ".join(f"{m}: {_label(part)}" for m, part in refined.parts.items())
    if refined.objective == "min_cost":
        head = (f"min_cost: kairos_plus (the cheapest fleet that serves the headroom on every simulated stream, "
                f"{refined.n_evals} of {refined.n_configs} candidates tested in cost order in {refined.seconds:.1f} s"
                f"{refined.note}): {pinned or _label(counts)}")
    elif pinned is not None:
        head = f"max_throughput: kairos_plus ({refined.note}; {refined.seconds:.1f} s): partitioned, {pinned}"
    else:
        how = "exact: every other fleet pruned" if refined.exact else "best of those simulated"
        head = (f"max_throughput: kairos_plus ({how}; {refined.n_evals} of {refined.n_configs} configurations "
                f"simulated in {refined.seconds:.1f} s{refined.note}): {_label(counts)}")
    one_shot = " | ".join(f"{m}: {_label(plan.pinned(m))}" for m in plan.pinned_models()) or _label(plan.counts)
    reason = (f"{refined.why}{head} at {refined.qps:.1f} q/s simulated; "
              + ("the same as the one-shot choice" if same else f"the one-shot choice was {one_shot}"))
    multiple = refined.qps / rate_qps if rate_qps > 0 else plan.multiple
    bound = refined.ub_qps / rate_qps if rate_qps > 0 else plan.bound_multiple
    return replace(plan, counts=counts, cost_usd_per_hour=cost, multiple=multiple, bound_multiple=bound,
                   reason=reason, pools=pools, partitioned=refined.parts is not None)


def _label(counts: Mapping[str, int]) -> str:
    return " + ".join(f"{n} × {t}" for t, n in counts.items() if n) or "no instance"


if __name__ == "__main__":
    # run as the module's own name, so that what is pickled names kairosd.autoscale.refine, not __main__
    from kairosd.autoscale.refine import _main as main

    sys.exit(main())

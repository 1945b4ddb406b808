"""The autoscaler's "min_cost" plan refined by simulation: the cheapest fleet the simulator shows serving
the observed rates × headroom.

The one-shot "min_cost" plan (`kairosd.planner.plan_fleet`) is the cheapest configuration whose
queue-aware estimate covers the observed rates × `autoscaler.headroom`. That estimate errs by several
percent either way between fleets, so the plan may fall short of the headroom, or cost more than a
fleet that covers it. With `autoscaler.selector = "kairos_plus"` the walk (`cheapest_cover`) tests the
configurations within the budget and caps (maximal or not) in order of cost, cheapest first, each only
where its fluid bound reaches the target (no dispatcher serves more than the bound), by one run at the
target on each of the walk's streams (`SeedsEvaluator.meets`, `MixEvaluator.meets`): the first that
meets the target on every stream is the cheapest cover the simulation shows. The walk runs on
`COVER_STREAMS_FACTOR` times the streams Kairos+ compares fleets on (nine by default), since the first
fleet to pass is the one among those tested most likely to have passed on lucky streams. A run at one
rate is a fraction of a max-QPS search, so the walk can test every cheaper candidate.

One model with demand: its configurations (those that can also serve every other served model, when
some can) on its own streams at the observed mix. Several: the shared configurations on the walk's mix
streams at `headroom` times the observed rates, and the partitions: each model's cheapest part covering
headroom·r_m on its part of the same streams, plus the keep-warm parts of the served models without
demand (`keep_warm_parts`); when the cheapest parts do not fit the budget and caps together, the
cheapest combination that fits of each model's first `PART_COVERS` covering parts
(`cheapest_fitting`). The partition is the plan when it fits the budget and caps and costs less than
the cheapest shared cover (at the same cost, the kind the one-shot plan chose).

When nothing within the budget covers the target in simulation, the plan is the max_throughput walk's
choice, as the one-shot plan falls back to the max_throughput choice when no estimate covers it. A
walk that reaches its time limit before a cover gives no choice: the one-shot plan stands.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from kairosd.autoscale.refine import (
    MIN_WALK_S,
    MixEvaluator,
    Refined,
    RefineError,
    RefineJob,
    _counts,
    _joint,
    _label,
    _mix_streams,
    _model_evaluator,
    refine,
)
from kairosd.planner.enumeration import MICRO_USD, UNCAPPED, _micro

if TYPE_CHECKING:
    from kairosd.sim import SeedsEvaluator

# with several models, each model's first parts that serve its headroom, of which the cheapest that fit the
# budget and caps together are the partition, when the cheapest parts alone do not fit
PART_COVERS = 8
# a cover is shown on this many times the streams Kairos+ compares fleets on: the first fleet in order of
# cost to meet the target is, of all those tested, the one most likely to have met it on lucky streams
COVER_STREAMS_FACTOR = 3


@dataclass(frozen=True)
class Covers:
    """A cost-ordered walk's outcome: the first rows that meet the target, in the walk's order, the rows
    tested, the candidates (those whose bound reaches the target), and whether the walk stopped at its
    deadline."""

    rows: tuple[int, ...]
    tested: int
    candidates: int
    timed_out: bool

    @property
    def row(self) -> int:
        """The first row that meets the target (−1: none did)."""
        return self.rows[0] if self.rows else -1


def cover_order(cost_micro: np.ndarray, ub: np.ndarray, target: float) -> np.ndarray:
    """The rows whose bound reaches `target`, cheapest first (ties: the higher bound, then the row): the
    order in which the first to meet the target in simulation is the cheapest that does."""
    rows = np.flatnonzero(ub >= target)
    return rows[np.lexsort((rows, -ub[rows], cost_micro[rows]))]


def first_cover(rows: np.ndarray, meets: Callable[[int], bool], deadline: float | None) -> Covers:
    """The first of `rows` for which `meets(row)` (`covers` with k = 1)."""
    return covers(rows, meets, deadline, 1)


def covers(rows: np.ndarray, meets: Callable[[int], bool], deadline: float | None, k: int) -> Covers:
    """The first `k` of `rows` for which `meets(row)`, tested in order until `deadline` (perf_counter; the first
    row is always tested)."""
    found: list[int] = []
    for i, r in enumerate(rows):
        if i and deadline is not None and time.perf_counter() >= deadline:
            return Covers(tuple(found), i, len(rows), True)
        if meets(int(r)):
            found.append(int(r))
            if len(found) == k:
                return Covers(tuple(found), i + 1, len(rows), False)
    return Covers(tuple(found), len(rows), len(rows), False)


def cheapest_fitting(options: Sequence[Sequence[int]], cost: np.ndarray, configs: np.ndarray, budget_micro: int,
                     caps: np.ndarray) -> tuple[int, ...] | None:
    """One row per model from its `options` (rows of `configs`) whose parts together cost at most
    `budget_micro` and use at most `caps` of each type, the cheapest such (ties: the earliest options);
    None when none fits. E.g. two models whose cheapest parts need 16 and 2 of a type capped at 17: the
    next cheapest part of one of them."""
    best: tuple[int, ...] | None = None
    best_cost = 0
    for combo in itertools.product(*options):
        c = int(cost[list(combo)].sum())
        if c > budget_micro or (best is not None and c >= best_cost):
            continue
        if bool((configs[list(combo)].sum(axis=0) <= caps).all()):
            best, best_cost = tuple(combo), c
    return best


def cheapest_cover(job: RefineJob) -> Refined:
    """The cheapest fleet that serves `job.headroom` × the observed rates on every one of the walk's streams
    (module docstring), in this process."""
    from kairosd.planner import enumerate_configs

    t0 = time.perf_counter()
    live = [g for g, d in enumerate(job.demand) if d.rate_qps > 0]
    if not live:
        raise RefineError("no model has observed demand: a min_cost walk needs the load to cover")
    walk = replace(job, streams=COVER_STREAMS_FACTOR * job.streams)
    deadline = t0 + job.time_limit_s if job.time_limit_s else None
    prices = np.asarray(job.prices, dtype=float)
    configs = enumerate_configs(prices, job.budget_usd_per_hour, maximal_only=False, max_counts=job.caps)
    if len(configs) == 0:
        raise RefineError(f"no configuration of {list(job.types)} fits {job.budget_usd_per_hour} $/h")
    cost = configs @ _micro(prices)
    if len(live) == 1:
        found = _one_model_cover(walk, live[0], configs, cost, deadline)
    else:
        found = _several_models_cover(walk, live, configs, cost, deadline)
    if found is not None:
        return replace(found, seconds=time.perf_counter() - t0)
    # nothing within the budget covers the target in simulation: the most the budget buys, by Kairos+'s walk
    left = max(MIN_WALK_S, job.time_limit_s - (time.perf_counter() - t0)) if job.time_limit_s else job.time_limit_s
    best = refine(replace(job, objective="max_throughput", time_limit_s=left))
    return replace(best, seconds=time.perf_counter() - t0,
                   why=f"min_cost: no configuration within {job.budget_usd_per_hour:g} $/h serves {job.headroom:g}× "
                       f"the observed rates in simulation, so the most it buys; ")


def _meets_at(ev: SeedsEvaluator, configs: np.ndarray, rate_qps: float, row: int) -> bool:
    return ev.meets(configs[row], rate_qps)


def _timed_out(cover: Covers, what: str) -> None:
    if cover.timed_out:
        raise RefineError(f"the min_cost walk reached its time limit after {cover.tested} of {cover.candidates} "
                          f"{what} tested, none serving the headroom")


def _one_model_cover(job: RefineJob, g: int, configs: np.ndarray, cost: np.ndarray,
                     deadline: float | None) -> Refined | None:
    from kairosd.planner import upper_bound

    if len(job.demand) > 1:
        serve_all = _joint(job).servable(configs).all(axis=1)
        if serve_all.any():
            configs, cost = configs[serve_all], cost[serve_all]
    bm, ev = _model_evaluator(job, g)
    target = job.headroom * job.demand[g].rate_qps
    ub = upper_bound(configs, bm)
    cover = first_cover(cover_order(cost, ub, target), lambda r: ev.meets(configs[r], target), deadline)
    _timed_out(cover, "configurations")
    if cover.row < 0:
        return None
    config = configs[cover.row]
    return Refined(_counts(job, config), ev(config), float(ub[cover.row]), cover.tested, cover.candidates, True, 0.0,
                   objective="min_cost")


def _several_models_cover(job: RefineJob, live: Sequence[int], configs: np.ndarray, cost: np.ndarray,
                          deadline: float | None) -> Refined | None:
    from kairosd.planner import upper_bound
    from kairosd.planner.joint import keep_warm_parts

    joint = _joint(job)
    streams = _mix_streams(job, live)
    rates = np.array([d.rate_qps for d in job.demand], dtype=float)
    total = job.total_rate_qps
    # the partition: each model's cheapest part on its part of the streams, beside the keep-warm parts
    caps = np.full(len(job.types), UNCAPPED, dtype=np.int64) if job.caps is None else np.asarray(job.caps)
    warm = keep_warm_parts(joint, configs, cost, rates, int(_micro(job.budget_usd_per_hour)), caps)
    parts: dict[int, int] = {}
    tested = candidates = 0
    walks: dict[int, tuple[np.ndarray, Callable[[int], bool]]] = {}
    evaluators: dict[int, SeedsEvaluator] = {}
    options: dict[int, tuple[int, ...]] = {}
    for i, g in enumerate(live):
        if warm.unserved:  # a served model without demand that no part left can keep warm
            break
        bm, evaluators[g] = _model_evaluator(job, g, [ms.part(i) for ms in streams])
        target = job.headroom * rates[g]
        order = cover_order(cost, upper_bound(configs, bm), target)
        walks[g] = (order, partial(_meets_at, evaluators[g], configs, target))
        found = covers(*walks[g], deadline, 1)
        tested, candidates = tested + found.tested, candidates + found.candidates
        _timed_out(found, f"parts for {job.demand[g].model}")
        if not found.rows:
            break
        options[g] = found.rows
    chosen = (cheapest_fitting([options[g] for g in live], cost, configs, warm.budget_micro, warm.caps)
              if len(options) == len(live) else None)
    if chosen is None and len(options) == len(live):  # the cheapest parts do not fit together: the next ones too
        for g in live:
            order, meets = walks[g]  # the walk goes on past its first cover, already tested
            after = int(np.flatnonzero(order == options[g][0])[0]) + 1
            found = covers(order[after:], meets, deadline, PART_COVERS - 1)
            tested += found.tested
            options[g] += found.rows
        chosen = cheapest_fitting([options[g] for g in live], cost, configs, warm.budget_micro, warm.caps)
    fits = chosen is not None
    if chosen is not None:
        parts = dict(zip(live, chosen, strict=True))
    values = {g: evaluators[g].values(configs[r]) / rates[g] for g, r in parts.items()}
    pinned = {**parts, **warm.rows}
    part_cost = int(cost[list(pinned.values())].sum())
    part_counts = configs[list(pinned.values())].sum(axis=0)
    # the shared fleets, no dearer than the partition (at its cost only when the one-shot plan is shared)
    serve_all = joint.servable(configs).all(axis=1)
    pool = np.flatnonzero(serve_all) if serve_all.any() else np.arange(len(configs))
    if fits:
        dearer = cost[pool] >= part_cost if job.one_shot_partitioned else cost[pool] > part_cost
        pool = pool[~dearer]
    services = [job.service(g) for g in live]
    bound = lambda config: float(joint.bound_qps(np.asarray(config)[None, :])[0])
    mix = MixEvaluator(job, [job.demand[g].model for g in live], [job.qos_s[g] for g in live], services, streams, bound)
    ub = joint.bound_qps(configs[pool])
    order = cover_order(cost[pool], ub, job.headroom * total)
    shared = first_cover(order, lambda r: mix.meets(configs[pool[r]], job.headroom), deadline)
    tested, candidates = tested + shared.tested, candidates + shared.candidates
    if not fits:
        _timed_out(shared, "shared configurations")
    if shared.row >= 0:
        config = configs[pool[shared.row]]
        other = (f"; the cheapest partition that serves it costs {part_cost / MICRO_USD:.4g} $/h" if fits
                 else "; no partition serves it within the budget")
        return Refined(_counts(job, config), mix(config), float(ub[shared.row]), tested, candidates, True, 0.0,
                       note=other, objective="min_cost")
    if not fits:
        return None
    per_stream = np.min([values[g] for g in parts], axis=0)
    bound_multiple = min(float(upper_bound(configs[r][None, :], joint.models[g])[0]) / rates[g] for g, r in parts.items())
    why = ("the shared walk reached its time limit" if shared.timed_out else "no cheaper shared fleet serves it")
    parts_by_model = {job.demand[m].model: _counts(job, configs[r]) for m, r in sorted(pinned.items())}
    return Refined(_counts(job, part_counts), float(per_stream.mean()) * total, bound_multiple * total, tested, candidates,
                   not shared.timed_out, 0.0, parts=parts_by_model,
                   note=f"; partitioned: {why} ({_label(_counts(job, part_counts))} costs {part_cost / MICRO_USD:.4g} $/h)",
                   objective="min_cost")

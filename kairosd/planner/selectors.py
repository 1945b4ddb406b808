"""Candidates (configurations with their bounds) and the selectors that choose one, by name."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from kairosd.errors import ConfigError
from kairosd.planner.bounds import BoundModel, proportional_bound, upper_bound
from kairosd.planner.enumeration import _micro, config_cost, enumerate_configs
from kairosd.planner.parallel import prefill_duals
from kairosd.planner.pruning import kairos_estimates
from kairosd.planner.queueing import P99_WINDOW_QUERIES, QUEUE_EPS, idle_miss, planning_eps, queue_estimate

TOP_K = 10
# kairos selector: configurations whose queue-aware estimate is within this share of the best
# estimate count as tied with it ("queue-safe"); among them the highest fluid bound wins (see
# `select_kairos`). 0: the estimate ranks alone, the bound breaks only exact ties
QUEUE_TOLERANCE = 0.0
# kairos selector: the share of the estimate's queueing discount (log upper_bound − log estimate) that
# its ranking gives back, `kairos_score`. Chosen on the 90 workloads of the tuning sets (seeds 0–29,
# 1000–1031, 2000–2029): the estimate's error grows with that discount (see `kairos_score`)
QUEUE_SHRINK = 0.25
# kairos selector: fleets whose score is within this share of the chosen one's are its close contenders
# (`close_contenders`); the estimate's error between fleets of one workload is of this order
# (docs/planner_log.md), so among them the one-shot choice is not reliably the best
CLOSE_SCORE = 0.05
# Kairos+ on candidates estimated in part: when its walk needs more estimates, it also estimates the live rows whose
# bound is within this share below the next score, so that one call serves several steps of the walk
PLUS_ESTIMATE_AHEAD = 0.05
# kairos_plus: the share of the configurations it may simulate (searched or tested at one rate)
PLUS_BUDGET_SHARE = 0.10
# kairos_plus: past its budget, at most this many more configurations while its estimate proves
# unreliable on the workload (`plus_stretch`)
PLUS_STRETCH = 2
# kairos_plus with an evaluator that can add streams: when neither of two fleets is at least as good as
# the other on every stream and the newer one's mean is within this share of the best's, this many
# streams are added (as often as the evaluator allows) and the means over all of them decide
DUEL_WITHIN = 0.10
DUEL_STREAMS = 3
# kairos_plus: its one-run check before a search tests each stream at the incumbent's value there moved
# this share of the way to the incumbent's mean (`_check_rates`)
CHECK_SHRINK = 0.1
# kairos_plus: when that check does not rule a fleet out, a second one this share of the way
CHECK_SHRINK_WIDE = 0.7
# kairos_plus: a fleet whose idle dispatch already misses QoS on at least this share of the p99 target's
# ε (`Candidates.idle_miss`) is valued on every stream its evaluator can add before it is compared
FRAGILE_IDLE = 0.5


@dataclass(frozen=True)
class Candidates:
    """Configurations to choose from (rows of `configs`, counts aligned with `types`) and their bounds."""

    types: tuple[str, ...]
    prices_usd_per_hour: np.ndarray
    budget_usd_per_hour: float
    configs: np.ndarray
    cost_usd_per_hour: np.ndarray
    ub_qps: np.ndarray  # `upper_bound`: ranks, and prunes Kairos+ (unless `prune_ub_qps` is given)
    est_qps: np.ndarray | None = None  # queue-aware estimate (`queue_estimate`), when computed; NaN: not estimated
    paper_qps: np.ndarray | None = None  # `proportional_bound` (the paper's formula), ranks `kairos_paper`
    idle_miss: np.ndarray | None = None  # `idle_miss`: the share the idle fleet misses QoS on, when computed
    # `upper_bound` on the evaluator's own batches where they are not the mix `ub_qps` is taken on (a few
    # simulated streams against the population mix): Kairos+ prunes by it, so that it bounds what it prunes
    prune_ub_qps: np.ndarray | None = None

    @property
    def pruning_bound(self) -> np.ndarray:
        """The bound Kairos+ prunes by: `prune_ub_qps` when given, else `ub_qps`."""
        return self.ub_qps if self.prune_ub_qps is None else self.prune_ub_qps

    def fragile(self, row: int, eps: float = QUEUE_EPS) -> bool:
        """Whether the fleet's idle dispatch already misses QoS on `FRAGILE_IDLE` of the p99 target's ε or
        more: its p99 over a finite stream then depends on how many of those rare misses the stream
        holds (e.g. 0.78% of the mix against ε = 1%: a 6,000-query stream passes at no rate about one
        time in five), so a few streams can value it far above its mean."""
        return self.idle_miss is not None and bool(self.idle_miss[row] >= FRAGILE_IDLE * eps)

    def __len__(self) -> int:
        return len(self.configs)

    def row_of(self, config: np.ndarray) -> int | None:
        """The row of `config` (counts aligned with `types`) among the candidates; None when it is not one."""
        rows = np.flatnonzero(np.all(self.configs == np.asarray(config)[None, :], axis=1))
        return int(rows[0]) if len(rows) else None

    def search_start(self, config: np.ndarray) -> float | None:
        """Where an evaluator's max-QPS search of `config` (counts aligned with `types`) starts
        (`SeedsEvaluator.guess`): its `kairos_score`, the rate `kairos` ranks it at. The score sits closer
        to simulated rates than the estimate, which is biased low, so the search brackets the answer in
        fewer runs. None when `config` is not one of the candidates or has no estimate."""
        row = self.row_of(config)
        if self.est_qps is None or row is None or not np.isfinite(self.est_qps[row]):
            return None
        return float(kairos_score(self.est_qps[row:row + 1], self.ub_qps[row:row + 1])[0])

    def ranked(self) -> np.ndarray:
        """Row indices by upper bound, high to low (ties: cheaper first, then enumeration order)."""
        return np.lexsort((np.arange(len(self.configs)), self.cost_usd_per_hour, -self.ub_qps))

    def ranked_by_estimate(self) -> np.ndarray:
        """Row indices by queue-aware estimate, high to low (ties: higher bound, cheaper, enumeration order)."""
        if self.est_qps is None:
            raise ConfigError("these candidates carry no queue-aware estimate (make_candidates(..., estimate=True))")
        return np.lexsort((np.arange(len(self.configs)), self.cost_usd_per_hour, -self.ub_qps, -self.est_qps))

    def ranked_by_paper_bound(self) -> np.ndarray:
        """Row indices by the paper's proportional bound, high to low (ties: cheaper, enumeration order);
        by `ub_qps` when the candidates do not carry it."""
        key = self.paper_qps if self.paper_qps is not None else self.ub_qps
        return np.lexsort((np.arange(len(self.configs)), self.cost_usd_per_hour, -key))

    def label(self, row: int | np.ndarray) -> str:
        counts = self.configs[row] if np.ndim(row) == 0 else np.asarray(row)
        return " + ".join(f"{int(c)}×{t}" for c, t in zip(counts, self.types, strict=False) if c) or "(empty)"


def make_candidates(
    bm: BoundModel,
    prices_usd_per_hour: Sequence[float] | np.ndarray,
    budget_usd_per_hour: float,
    *,
    maximal_only: bool = True,
    max_counts: Sequence[int] | None = None,
    estimate: bool = True,
    window_queries: int | None = P99_WINDOW_QUERIES,
    prune_within: float | None = None,
    evaluated_on: BoundModel | None = None,
    workers: int = 1,
) -> Candidates:
    """Enumerate within the budget and bound every configuration (types = `bm.types`); with `estimate`,
    also the queue-aware estimate (`queue_estimate`) that the `kairos` selector ranks by, at the share of
    misses a p99 read over windows of `window_queries` queries allows (`planning_eps`). With
    `prune_within`, only the configurations whose bound reaches (1 − prune_within) times the best
    `kairos_score` are estimated (`kairos_estimates`), the others NaN: enough for `select_kairos` at a
    tolerance ≤ prune_within and for `close_contenders` within it, not for Kairos+'s walk, which orders
    every configuration by its estimate. `evaluated_on`: the same model on the batches an evaluator
    runs (e.g. the simulated streams' own mix), whose bound Kairos+ prunes by (`prune_ub_qps`). `workers`:
    forked processes for the bound's dual vectors (`planner.parallel`: the same results as serial; for a
    command-line plan, not beside a daemon's event loop)."""
    prices = np.asarray(prices_usd_per_hour, dtype=float)
    if len(prices) != len(bm.types):
        raise ConfigError(f"{len(prices)} prices for {len(bm.types)} types")
    configs = enumerate_configs(prices, budget_usd_per_hour, maximal_only=maximal_only, max_counts=max_counts)
    prefill_duals(bm, configs, workers)
    ub = upper_bound(configs, bm)
    idle = idle_miss(configs, bm) if estimate and len(configs) else None
    est = None
    if idle is not None:
        estimator = _estimator(bm, configs, idle, window_queries)
        est = estimator(np.arange(len(configs))) if prune_within is None else kairos_estimates(
            ub, estimator, kairos_score, within=prune_within)
    prune_ub = None
    if evaluated_on is not None:
        prefill_duals(evaluated_on, configs, workers)
        prune_ub = upper_bound(configs, evaluated_on)
    return Candidates(bm.types, prices, float(budget_usd_per_hour), configs, config_cost(configs, prices),
                      ub, est, proportional_bound(configs, bm), idle, prune_ub)


def lazy_estimate(bm: BoundModel, cands: Candidates, window_queries: int | None = P99_WINDOW_QUERIES
                  ) -> Callable[[np.ndarray], np.ndarray]:
    """The queue-aware estimate of rows of `cands` as `make_candidates(bm, …, window_queries=…)` makes it: what
    `select_kairos_plus(estimate=…)` estimates the rows that `make_candidates(prune_within=…)` left out with."""
    return _estimator(bm, cands.configs, cands.idle_miss, window_queries)


def _estimator(bm: BoundModel, configs: np.ndarray, idle: np.ndarray | None,
               window_queries: int | None) -> Callable[[np.ndarray], np.ndarray]:
    """rows → `queue_estimate` of those rows of `configs` at the planning share of misses (`planning_eps`)."""
    eps = planning_eps(QUEUE_EPS, window_queries)

    def estimate(rows: np.ndarray) -> np.ndarray:
        return np.asarray(queue_estimate(configs[rows], bm, eps=eps, idle=None if idle is None else idle[rows]),
                          dtype=float)

    return estimate


def rank(cands: Candidates) -> Candidates:
    """The same candidates, reordered by upper bound high to low (see `Candidates.ranked`)."""
    order = cands.ranked()
    return Candidates(cands.types, cands.prices_usd_per_hour, cands.budget_usd_per_hour, cands.configs[order],
                      cands.cost_usd_per_hour[order], cands.ub_qps[order],
                      cands.est_qps[order] if cands.est_qps is not None else None,
                      cands.paper_qps[order] if cands.paper_qps is not None else None,
                      cands.idle_miss[order] if cands.idle_miss is not None else None,
                      cands.prune_ub_qps[order] if cands.prune_ub_qps is not None else None)


class Evaluator(Protocol):
    """Measures a configuration's QPS at p99 ≤ QoS (simulated or live). May also offer
    `many(configs) -> np.ndarray` to evaluate a batch at once (e.g. in parallel)."""

    def __call__(self, config: np.ndarray) -> float: ...


@dataclass(frozen=True)
class Selection:
    """A selector's choice: the configuration (counts per type), its bound, its evaluated QPS when
    known, and the evaluations it cost (`evaluated`: (counts, qps) in the order they were made)."""

    selector: str
    config: np.ndarray
    ub_qps: float
    qps: float | None
    n_evals: int
    evaluated: tuple[tuple[tuple[int, ...], float], ...] = field(default=())
    n_checks: int = 0  # Kairos+: single-rate tests (each before a search, or ruling one out instead)
    n_configs: int = 0  # Kairos+: distinct configurations simulated (searched, tested, or both)
    exact: bool = True  # Kairos+: the walk ended with every other configuration pruned (not by its budget)
    timed_out: bool = False  # Kairos+: the walk stopped at its time limit, with configurations left to try


def _key(config: np.ndarray) -> tuple[int, ...]:
    return tuple(int(x) for x in config)


def _evaluate_many(evaluator: Evaluator, configs: np.ndarray) -> np.ndarray:
    many = getattr(evaluator, "many", None)
    if callable(many):
        return np.asarray(many(configs), dtype=float)
    return np.array([float(evaluator(c)) for c in configs])


def select_kairos_paper(cands: Candidates, evaluator: Evaluator | None = None, *, top_k: int = TOP_K) -> Selection:
    """The paper's Kairos: the top-k configurations by the paper's bound (`proportional_bound`, per-type
    thresholds), then the one closest (Euclidean, in counts) to their centre.

    Why the paper's formula rather than `upper_bound`: this selector is the paper's rule (the planner
    benchmark ranks the two about equally, bench/results/planner.json), while the true bound's top 10
    can hold edge fleets such as rm2's 1×c5n.2xlarge + 13×r5n.large, feasible in the fluid model (c5n
    covers nearly all of the mix) yet failing p99 at every simulated rate."""
    if len(cands) == 0:
        raise ConfigError("no configuration fits the budget")
    top = cands.ranked_by_paper_bound()[: max(1, top_k)]
    pts = cands.configs[top].astype(float)
    centre = pts.mean(axis=0)
    best = int(top[int(np.argmin(((pts - centre) ** 2).sum(axis=1)))])  # argmin: first in rank order on ties
    config = cands.configs[best]
    qps = float(evaluator(config)) if evaluator is not None else None
    evaluated = ((_key(config), qps),) if qps is not None else ()
    return Selection("kairos_paper", config, float(cands.ub_qps[best]), qps, len(evaluated), evaluated)


def select_kairos(cands: Candidates, evaluator: Evaluator | None = None, *, tolerance: float = QUEUE_TOLERANCE,
                  shrink: float = QUEUE_SHRINK) -> Selection:
    """Kairos, queue-aware (no online exploration): the configuration with the highest score, the
    queue-aware estimate (`queue_estimate` at the planning share `planning_eps`) with a share `shrink`
    (a quarter) of its queueing discount given back (`kairos_score`, `QUEUE_SHRINK`; ties: higher
    estimate, higher fluid bound, cheaper; `kairos_order`). With `tolerance` > 0, every configuration
    whose score is within that share of the best counts as tied with it ("queue-safe"), and the
    highest fluid bound (`upper_bound`, `ub_qps`) among them wins.

    Why the estimate: the fluid bound ignores queueing, so it overrates fleets whose base pool queues
    (e.g. one g4dn.xlarge for mtwnd/dien, which the estimate and the simulator both put near half
    the bound) and, with heavy tails, can be several times what any fleet serves; the estimate
    models the Kairos dispatcher's routing and the waits. Why not the estimate alone: its waits are
    approximate tails whose error grows with the discount they make, so a fleet far below its bound
    is more often underrated than one close to it (`kairos_score`).
    """
    if len(cands) == 0:
        raise ConfigError("no configuration fits the budget")
    if cands.est_qps is None:
        raise ConfigError(
            "selector 'kairos' needs candidates with the queue-aware estimate (make_candidates(..., estimate=True))"
        )
    best = int(kairos_order(cands, tolerance=tolerance, shrink=shrink)[0])
    config = cands.configs[best]
    qps = float(evaluator(config)) if evaluator is not None else None
    evaluated = ((_key(config), qps),) if qps is not None else ()
    return Selection("kairos", config, float(cands.ub_qps[best]), qps, len(evaluated), evaluated)


def up_sets(dominates: np.ndarray) -> np.ndarray:
    """The up-closed sets of types (bool[m, K]) of the preorder `dominates[a, b]` ("an instance of a
    serves every query at least as well as one of b"): sets U such that b ∈ U and a dominates b imply
    a ∈ U. E.g. a dominates b among 2 types: {a} and {a, b} ({b} alone is not up-closed)."""
    dom = np.asarray(dominates, dtype=bool)
    k = len(dom)
    sets = (np.arange(1, 1 << k)[:, None] >> np.arange(k)[None, :]) & 1
    sets = sets.astype(bool)
    # U is up-closed iff no b in U is dominated by an a outside U
    closed = ~np.any(~sets[:, :, None] & sets[:, None, :] & dom[None, :, :], axis=(1, 2))  # [set, a, b]
    return sets[closed]


def dominated_by(configs: np.ndarray, x: np.ndarray, dominates: np.ndarray) -> np.ndarray:
    """Rows y of `configs` whose every instance can be matched to a distinct instance of `x` of a
    dominating (or the same) type: Σ_{k∈U} y_k ≤ Σ_{k∈U} x_k for every up-closed set U (Hall's
    condition). Sub-configurations are the case of the identity preorder. E.g. with type 0 dominating
    type 1: (0, 2) ≼ (1, 1) ≼ (2, 0), and (2, 0) ⋠ (1, 1)."""
    u = up_sets(dominates).astype(np.int64)
    return np.all(np.asarray(configs, dtype=np.int64) @ u.T <= (np.asarray(x, dtype=np.int64) @ u.T)[None, :], axis=1)


def kairos_score(est: np.ndarray, ub: np.ndarray, shrink: float = QUEUE_SHRINK) -> np.ndarray:
    """What `kairos` ranks by: the queue-aware estimate with a share `shrink` of its queueing discount
    given back, est^(1 − shrink)·ub^shrink (0 where the estimate is 0). E.g. est 100, ub 160, shrink 0.25:
    100·1.6^0.25 = 112.5.

    Why: the estimate's queue model overstates the waits more, the more it discounts from the fluid
    bound (its shared-pool and priority waits are exponential tails of approximate decay, and an error
    in the decay grows with the wait it scales), so between two fleets of close estimates the one
    further below its bound is the more often underrated. Over the fleets judged within 20% of their
    optimum, log(judged/estimate) grows with log(ub/estimate) by 0.18 on the tuning sets and 0.30 on the
    held-out ones (bench/planner_robust.py's files)."""
    est = np.asarray(est, dtype=float)
    ub = np.asarray(ub, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = est * np.power(np.where(est > 0, ub / est, 1.0), shrink)
    return np.where(est > 0, score, 0.0)


def kairos_order(cands: Candidates, *, tolerance: float = QUEUE_TOLERANCE, shrink: float = QUEUE_SHRINK) -> np.ndarray:
    """Row indices in the `kairos` selector's order: the queue-safe configurations (score within
    `tolerance` of the best) by upper bound high to low, then the others by score high to low
    (`kairos_score`, the estimate with a share `shrink` of its queueing discount given back; ties:
    higher estimate, higher bound, cheaper, enumeration order). Its first row is `select_kairos`'s choice."""
    if cands.est_qps is None:
        raise ConfigError("these candidates carry no queue-aware estimate (make_candidates(..., estimate=True))")
    return kairos_rank(cands.est_qps, cands.ub_qps, cands.cost_usd_per_hour, tolerance=tolerance, shrink=shrink)


def close_contenders(cands: Candidates, row: int, within: float = CLOSE_SCORE, *,
                     shrink: float = QUEUE_SHRINK) -> np.ndarray:
    """The rows other than `row` whose `kairos_score` is at least (1 − `within`) times `row`'s, in the
    `kairos` selector's order: the fleets a one-shot choice of `row` cannot tell from it, given the
    estimate's error (`CLOSE_SCORE`). E.g. scores 100 (`row`), 97 and 94, within 0.05: the 97 one."""
    order = kairos_order(cands, shrink=shrink)  # refuses candidates without the estimate
    assert cands.est_qps is not None
    score = kairos_score(cands.est_qps, cands.ub_qps, shrink)
    close = (score[order] >= (1.0 - within) * score[row]) & (order != row) & (score[order] > 0)
    return order[close]


def queue_safe(score: np.ndarray, tolerance: float) -> np.ndarray:
    """Which rows' score (`kairos_score`) is within `tolerance` of the best: the queue-safe ones."""
    return score >= (1.0 - tolerance) * score.max(initial=0.0)


def kairos_rank(est: np.ndarray, ub: np.ndarray, cost: np.ndarray, *, tolerance: float = QUEUE_TOLERANCE,
                shrink: float = QUEUE_SHRINK) -> np.ndarray:
    """`kairos_order` on bare arrays (estimate, bound and cost per row): the queue-safe rows by bound high
    to low, then the others by score high to low; ties: higher estimate, higher bound, cheaper, row order.
    The joint planner ranks by it too (`plan_fleet`)."""
    score = kairos_score(est, ub, shrink)
    safe = queue_safe(score, tolerance)
    first = -np.where(safe, ub, -np.inf)
    second = -np.where(safe, np.inf, score)
    return np.lexsort((np.arange(len(est)), cost, -ub, -est, second, first))


def plus_stretch(n_configs: int, budget_share: float, extra: int = PLUS_STRETCH) -> int:
    """How many configurations Kairos+ may simulate out of `n_configs` when its estimate proves unreliable
    on the workload (see `select_kairos_plus`): `plus_limit` and up to `extra` more, within twice the
    share (⌊2·share·N⌋). Each one more is a max-QPS search, so `extra` bounds what the stretch adds to
    a plan's wall time. E.g. share 0.1: N = 9 → 1, N = 22 → 4, N = 30 → 5, N = 65 → 8."""
    limit = plus_limit(n_configs, budget_share)
    return max(limit, min(_configs_in_share(n_configs, 2.0 * budget_share), limit + extra))


def estimate_error(known: Mapping[int, float], est: np.ndarray) -> float:
    """The largest relative error, |QPS/estimate − 1|, of the queue-aware estimate `est` over the evaluated
    rows `known` (row → evaluated QPS) with a positive estimate; 0 when there is none. E.g. a fleet
    estimated at 1,895 q/s that serves 1,755 and one estimated at 1,734 that serves 1,712: 0.074."""
    errs = [abs(q / float(est[r]) - 1.0) for r, q in known.items() if est[r] > 0]
    return max(errs, default=0.0)


def plus_limit(n_configs: int, budget_share: float) -> int:
    """How many configurations Kairos+ may simulate out of `n_configs`: ⌊share·N⌋, at least one, and at
    least two while two stay within twice the share (N ≥ 10 at 10 %): one evaluation alone cannot
    overrule the one-shot choice, the second fleet in the walk is its only check. E.g. share 0.1:
    N = 9 → 1, N = 18 → 2, N = 29 → 2, N = 30 → 3."""
    return max(1, _configs_in_share(n_configs, budget_share), min(2, _configs_in_share(n_configs, 2.0 * budget_share)))


def _configs_in_share(n_configs: int, share: float) -> int:
    """⌊share·N⌋, robust to the rounding of share·N (0.1·30 = 3)."""
    return int(np.floor(share * n_configs + 1e-9))


def select_kairos_plus(cands: Candidates, evaluator: Evaluator | None = None, *, order: str = "kairos",
                       dominates: np.ndarray | None = None, budget_share: float | None = PLUS_BUDGET_SHARE,
                       tolerance: float = QUEUE_TOLERANCE, time_limit_s: float | None = None,
                       clock: Callable[[], float] = time.monotonic,
                       estimate: Callable[[np.ndarray], np.ndarray] | None = None) -> Selection:
    """Kairos+ (Algorithm 1, with an evaluation budget): walk the configurations in `order`, evaluate
    each one still alive, keep the best; after each evaluation drop every configuration whose bound is
    ≤ the best QPS so far, and every sub-configuration (all counts ≤) of the evaluated one. The walk
    simulates at most `budget_share` of the configurations (`plus_limit`; `None`: no limit), and a few
    more within twice that (`plus_stretch`) when the estimate proves unreliable on the workload: in the
    orders `kairos` and `estimate`, past its budget the walk goes on to the next fleet while that
    fleet's estimate, raised by the largest relative error the estimate made on the fleets evaluated
    so far (`estimate_error`), reaches the best QPS so far. E.g. a first fleet estimated at 1,895 q/s that
    serves 1,755 puts the estimate 7.4% off, and a fleet estimated at 1,680 may still serve more than
    1,755; where the estimate was right on the fleets it was checked on, the walk stops at its budget.

    Exactness: the pruning rules are exact if the bound really bounds the evaluator and adding
    instances never lowers QPS (`upper_bound` bounds the fluid model of every dispatcher). When the
    walk ends because every configuration left is pruned, the choice is the evaluator's optimum and
    `Selection.exact` is true. The fluid bound ignores queueing, so with heavy tails or few base
    instances it can be far above what any fleet achieves and prune little; the budget then ends the
    walk, `exact` is false, and the choice is the best of the configurations most likely to be
    best: with `order="kairos"` (`kairos_order`), the one-shot `kairos` choice first, then the
    queue-safe configurations by bound, then the others by estimate. So Kairos+ never returns a
    fleet that its own evaluation puts below `kairos`'s choice.

    Noise: when the evaluator also offers `values(config) -> per-stream QPS` (several simulated
    streams, the same for every configuration, e.g. `kairosd.sim.SeedsEvaluator`), a configuration
    replaces the best so far only if it is at least as good on every stream and better on average;
    otherwise the one earlier in the walk stays (pruning uses the highest mean known). When the
    evaluator also offers `add_streams(n) -> bool` and the streams do not order the two (each is
    better on some) while the newer one's mean is within `DUEL_WITHIN` of the best's, `DUEL_STREAMS`
    streams are added at a time until they do or the evaluator has no more; once any were added in
    the walk, the higher mean over all the streams wins. A fleet that fails QoS on some streams (a
    tail near the 1% budget) and shines on others is then judged on enough of them. A fleet whose
    idle dispatch already misses QoS on half the p99 target's ε or more (`Candidates.fragile`; its
    first streams may all be lucky ones) is valued on every stream the evaluator can add as soon as
    it is evaluated, and so is every fleet after it.

    Two further prunings, each under the same assumptions as the sub-configuration rule:
      * `dominates[a, b]` (bool[K, K], e.g. `type_dominance`): type a serves every batch at least as
        fast at every quantile as type b. A configuration whose instances all match distinct instances
        of an evaluated one of dominating or equal types (`dominated_by`) is dropped.
      * when the evaluator offers `below(config, rate) -> bool` (one run at `rate` instead of a max-QPS
        search), a configuration is first tested at the best QPS so far: if it misses the p99 target
        there, its QPS is below the best and it is dropped without a search (`Selection.n_checks`
        counts these tests; a tested configuration counts against the budget like a searched one).
        With per-stream values (`values`), the test is paired: stream by stream at about the
        incumbent's value on that stream (`_check_rates`; `below` then takes one rate per stream), at
        rates whose mean is the incumbent's, and when that does not rule it out, at rates nearer the
        incumbent's mean. A configuration that misses the target on every stream at such rates is
        below the incumbent on average, so it could neither replace it nor raise the best mean; the
        streams' own differences (one stream lets every fleet serve 10% more than another) then do
        not hide a fleet that is a few percent worse.

    `order="bound"` walks by upper bound (the paper's walk, with `budget_share=None` exactly its
    Algorithm 1), `order="estimate"` by the queue-aware estimate; pruning uses only the true bound
    in every order: `Candidates.pruning_bound`, the bound on the evaluator's own batches when the
    candidates carry it.

    `time_limit_s`: the walk simulates no further configuration once the time since it began (by
    `clock`) plus the longest any configuration has taken so far would pass the limit, and returns the
    best so far with `Selection.timed_out` set (and `exact` false); the first configuration is always
    simulated. Large fleets take long to simulate: the walk's order puts the likeliest best first, so
    what a limit cuts is the least likely to win.

    Candidates estimated only in part (NaN: `make_candidates(prune_within=…)`) are walked as if every one were
    estimated, given `estimate` (rows → their queue-aware estimates) with `order="kairos"`: when the walk comes
    to a configuration whose score is no higher than the bound of some live configuration not yet estimated
    (a score is at most its bound), those are estimated (and those within `PLUS_ESTIMATE_AHEAD` below it;
    filled into `cands.est_qps` in place, as the evaluator's search start reads them) and the rest of the
    walk is ordered again. E.g. a budget that buys tens of thousands of configurations, of which the walk
    reaches the first few."""
    if evaluator is None:
        raise ConfigError("selector 'kairos_plus' needs an evaluator (the simulator or a live measurement)")
    if len(cands) == 0:
        raise ConfigError("no configuration fits the budget")
    if order not in ("kairos", "estimate", "bound"):
        raise ConfigError(f"kairos_plus order must be 'kairos', 'estimate' or 'bound', got {order!r}")
    if budget_share is not None and not 0.0 < budget_share <= 1.0:
        raise ConfigError(f"kairos_plus budget_share must be in (0, 1] or None, got {budget_share}")
    if time_limit_s is not None and not time_limit_s > 0.0:
        raise ConfigError(f"kairos_plus time_limit_s must be > 0 or None, got {time_limit_s}")
    started = clock()
    if order == "kairos" and cands.est_qps is not None:
        walk = kairos_order(cands, tolerance=tolerance)
    elif order == "estimate" and cands.est_qps is not None:
        walk = cands.ranked_by_estimate()
    else:
        walk = cands.ranked()
    limit = len(cands) if budget_share is None else plus_limit(len(cands), budget_share)
    # past `limit`, the walk goes on (up to `stretch`) while the estimate's own error says the next
    # fleet may beat the best so far
    est = cands.est_qps if order != "bound" else None
    stretch = limit if budget_share is None or est is None else plus_stretch(len(cands), budget_share)
    below = getattr(evaluator, "below", None)
    per_stream = getattr(evaluator, "values", None)
    add_streams = getattr(evaluator, "add_streams", None)
    # an evaluator that values each stream and can add streams (e.g. `SeedsEvaluator`)
    extend: tuple[Callable[[np.ndarray], np.ndarray], Callable[[int], bool]] | None = (
        (per_stream, add_streams) if callable(per_stream) and callable(add_streams) else None)
    dom = np.eye(len(cands.types), dtype=bool) if dominates is None else np.asarray(dominates, dtype=bool)
    alive = np.ones(len(cands), dtype=bool)
    best_qps, best_row, checks, simulated, top_qps = 0.0, -1, 0, 0, 0.0
    best_vec: np.ndarray | None = None
    extended = False  # streams were added during the walk
    evaluated: list[tuple[tuple[int, ...], float]] = []
    known: dict[int, float] = {}  # evaluated rows: their mean QPS, over the streams they were last valued on
    timed_out = False
    longest = 0.0  # the longest a configuration has taken to simulate (test and search) so far
    previous: float | None = None  # when the last simulated configuration began
    lazy = order == "kairos" and est is not None and estimate is not None and bool(np.isnan(est).any())
    passed = np.zeros(len(cands), dtype=bool)  # rows the walk has come to
    queue = list(walk)
    i = 0
    while i < len(queue):
        row = queue[i]
        i += 1
        if lazy and est is not None and estimate is not None:
            # the live rows not yet estimated that could come before this one (a score is at most its bound)
            floor = 0.0 if np.isnan(est[row]) else float(kairos_score(est[row:row + 1], cands.ub_qps[row:row + 1])[0])
            todo = np.flatnonzero(np.isnan(est) & alive & (cands.ub_qps >= (1.0 - PLUS_ESTIMATE_AHEAD) * floor))
            if len(todo):
                est[todo] = estimate(todo)
                queue = [int(r) for r in kairos_order(cands, tolerance=tolerance) if not passed[r]]
                row, i = queue[0], 1
        passed[row] = True
        if not alive[row]:
            continue
        if simulated >= limit and best_qps > 0 and (
                simulated >= stretch or est is None or est[row] * (1.0 + estimate_error(known, est)) < top_qps):
            break
        now = clock()
        if previous is not None:
            longest = max(longest, now - previous)
        if best_row >= 0 and time_limit_s is not None and now - started + longest > time_limit_s:
            timed_out = True
            break
        previous = now
        simulated += 1
        x = cands.configs[row]
        alive[row] = False
        if best_row >= 0 and top_qps > 0 and callable(below):
            checks += 1
            incumbent = per_stream(cands.configs[best_row]) if callable(per_stream) else None
            if any(below(x, rate) for rate in _check_rates(incumbent, top_qps)):
                continue
        # a fragile fleet gets every stream before it is evaluated; the incumbent is run on the new
        # streams in the same batch
        fresh = extend is not None and cands.fragile(int(row)) and _add_every_stream(extend[1])
        extended |= fresh
        batch = np.stack([x, cands.configs[best_row]]) if fresh and best_row >= 0 else x[None, :]
        qps = float(_evaluate_many(evaluator, batch)[0])
        vec = np.asarray(per_stream(x), dtype=float) if callable(per_stream) else None
        if vec is not None and best_vec is not None and extend is not None:
            if fresh:
                best_vec = np.asarray(extend[0](cands.configs[best_row]), dtype=float)
            vec, best_vec, added = _duel(*extend, lambda b: _evaluate_many(evaluator, b), x, cands.configs[best_row],
                                         vec, best_vec)
            extended |= added
            qps, best_qps = float(vec.mean()), float(best_vec.mean())
            known[best_row] = best_qps
        evaluated.append((_key(x), qps))
        known[int(row)] = qps
        # a fleet later in the walk replaces the incumbent only when it is better on every stream
        # (paired: the streams are the same for every fleet); a higher mean from some streams alone
        # is within the evaluation's noise, and the walk's order breaks the tie, unless streams were
        # added in this walk (to tell two fleets apart, or to value a fragile one): their means decide
        clearly = (extended or vec is None or best_vec is None or len(vec) != len(best_vec)
                   or bool(np.all(vec >= best_vec)))
        if best_row < 0 or (qps > best_qps and clearly):
            best_qps, best_row, best_vec = qps, int(row), vec
        top_qps = max(known.values())
        alive &= cands.pruning_bound > top_qps
        alive &= ~dominated_by(cands.configs, x, dom)
    return Selection("kairos_plus", cands.configs[best_row], float(cands.ub_qps[best_row]), best_qps, len(evaluated),
                     tuple(evaluated), checks, simulated, exact=not alive.any(), timed_out=timed_out)


def _check_rates(incumbent: np.ndarray | None, top_qps: float) -> list[float | np.ndarray]:
    """The rates Kairos+ tests a fleet at before it searches it, one test after the other until one
    shows it below (`select_kairos_plus`): without per-stream values the best mean so far; with them,
    the incumbent's value on each stream moved `CHECK_SHRINK` of the way to its mean, then
    `CHECK_SHRINK_WIDE` of the way. The rates' mean is the incumbent's each time, so a fleet below
    them on every stream is below the incumbent on average. The first test is close to paired: it
    drops a fleet a few percent below the incumbent on every stream, which a test at the mean misses
    on a stream that lets every fleet serve more; the shrink keeps one stream on which every fleet
    does badly (a heavy tail that stream draws often) from deciding it, where a fleet as bad as the
    incumbent, within the search's tolerance, would pass. The second drops a fleet far below the
    incumbent on most streams and far above it on the one the incumbent fails on. E.g. 244, 247 and
    21 q/s (mean 170.7): 236.7, 239.4 and 36.0, then 192.7, 193.6 and 125.8."""
    if incumbent is None:
        return [top_qps]
    v = np.asarray(incumbent, dtype=float)
    return [v + share * (float(v.mean()) - v) for share in (CHECK_SHRINK, CHECK_SHRINK_WIDE)]


def _add_every_stream(add_streams: Callable[[int], bool]) -> bool:
    """Add every stream the evaluator can (for a fragile fleet, `Candidates.fragile`); whether any was."""
    added = False
    while add_streams(DUEL_STREAMS):
        added = True
    return added


def _duel(per_stream: Callable[[np.ndarray], np.ndarray], add_streams: Callable[[int], bool],
          evaluate: Callable[[np.ndarray], np.ndarray], x: np.ndarray, best_x: np.ndarray, vec: np.ndarray,
          best_vec: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Kairos+'s comparison of `x` with the best so far under noise (see `select_kairos_plus`): while
    neither is at least as good on every stream and `x`'s mean is within `DUEL_WITHIN` of the best's,
    add `DUEL_STREAMS` streams and value both on every stream (`evaluate`: both at once, in one batch).
    Returns both per-stream values and whether streams were added."""
    added = False
    while (len(vec) == len(best_vec) and not (np.all(vec >= best_vec) or np.all(vec <= best_vec))
           and vec.mean() >= (1.0 - DUEL_WITHIN) * best_vec.mean() and add_streams(DUEL_STREAMS)):
        added = True
        evaluate(np.stack([x, best_x]))
        vec = np.asarray(per_stream(x), dtype=float)
        best_vec = np.asarray(per_stream(best_x), dtype=float)
    return vec, best_vec, added


def homogeneous_configs(cands: Candidates) -> np.ndarray:
    """One fleet per type: as many instances of it as the budget buys (types that fit at least once)."""
    prices = _micro(cands.prices_usd_per_hour)
    counts = int(_micro(cands.budget_usd_per_hour)) // prices
    rows = [np.where(np.arange(len(prices)) == k, counts[k], 0) for k in range(len(prices)) if counts[k] > 0]
    return np.array(rows, dtype=np.int64).reshape(-1, len(prices))


def select_homogeneous(cands: Candidates, evaluator: Evaluator | None = None, bm: BoundModel | None = None) -> Selection:
    """The best single-type fleet: evaluated when an evaluator is given, else by upper bound (needs `bm`)."""
    configs = homogeneous_configs(cands)
    if len(configs) == 0:
        raise ConfigError("no instance type fits the budget")
    if evaluator is not None:
        scores = _evaluate_many(evaluator, configs)
        evaluated = tuple((_key(c), float(q)) for c, q in zip(configs, scores, strict=True))
    elif bm is not None:
        scores, evaluated = upper_bound(configs, bm), ()
    else:
        raise ConfigError("selector 'homogeneous' needs an evaluator or a bound model")
    i = int(np.argmax(scores))
    ub = float(upper_bound(configs[i : i + 1], bm)[0]) if bm is not None else float("nan")
    return Selection("homogeneous", configs[i], ub, float(scores[i]) if evaluator is not None else None, len(evaluated),
                     evaluated)


def select_exhaustive(cands: Candidates, evaluator: Evaluator | None = None) -> Selection:
    """Evaluate every candidate; the best (first in bound order on ties). The benchmarks' ground truth."""
    if evaluator is None:
        raise ConfigError("selector 'exhaustive' needs an evaluator")
    if len(cands) == 0:
        raise ConfigError("no configuration fits the budget")
    order = cands.ranked()
    scores = _evaluate_many(evaluator, cands.configs[order])
    i = int(np.argmax(scores))
    evaluated = tuple((_key(cands.configs[r]), float(q)) for r, q in zip(order, scores, strict=True))
    row = int(order[i])
    return Selection("exhaustive", cands.configs[row], float(cands.ub_qps[row]), float(scores[i]), len(order), evaluated)


SELECTORS: dict[str, Callable[..., Selection]] = {
    "kairos": select_kairos,
    "kairos_paper": select_kairos_paper,
    "kairos_plus": select_kairos_plus,
    "homogeneous": select_homogeneous,
    "exhaustive": select_exhaustive,
}


def select(name: str, cands: Candidates, evaluator: Evaluator | None = None, **params: Any) -> Selection:
    """Run a selector by name; unknown names are refused with the allowed ones."""
    try:
        fn = SELECTORS[name]
    except KeyError:
        raise ConfigError(f"unknown selector {name!r}; allowed: {sorted(SELECTORS)}") from None
    return fn(cands, evaluator, **params)

"""Queue-aware estimates only for the configurations that can decide a choice.

The estimate is at most the bound (`queue_estimate` and `JointModel.estimate_qps` bisect in [0, bound]),
so what `kairos` ranks by, est^(1 − shrink)·ub^shrink, is at most the bound too. Three uses need the
estimate of few configurations:
  * the highest score (`kairos_estimates`): estimated in order of bound, high to low, a chunk at a time,
    every configuration after the first whose bound is below (1 − within) times the best score so far
    scores below that, so it cannot be the choice, be queue-safe at a tolerance ≤ within, or score within
    `within` of the choice;
  * the cheapest configuration whose estimate reaches a rate (`cheapest_cover_estimates`): only those
    whose bound reaches it can, estimated from the cheapest up until the first cost at which one does;
  * the running maximum of the estimate along the configurations by cost, for every rate at once (the
    partitioned plan's frontier, `frontier_estimates`): a configuration whose bound is below the best
    estimate among the cheaper ones cannot raise it.
A budget that buys large fleets has tens of thousands of maximal configurations, and only a small share of
them has a bound that high. Rows left out are NaN ("not estimated"); NaN compares false, so a NaN row
neither scores above 0 (`kairos_score`) nor covers a rate.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# configurations estimated by the first call of the estimate, each later call twice as many as the one
# before: a call has a fixed cost (its routing groups, a bisection step's loops over bands) of the order
# of a few hundred rows' estimates, so fewer, larger calls beat estimating only the rows needed
PRUNE_CHUNK = 1024

Estimate = Callable[[np.ndarray], np.ndarray]  # row indices → the estimate of those rows


def kairos_estimates(ub: np.ndarray, estimate: Estimate, score: Callable[[np.ndarray, np.ndarray], np.ndarray], *,
                     within: float, known: np.ndarray | None = None, chunk: int = PRUNE_CHUNK) -> np.ndarray:
    """The estimate of every row whose bound `ub` is at least (1 − `within`) times the best `score(est, ub)`
    among them (and of the rows below that asked in the same call), NaN for the others: rows are asked in
    the order of bound, high to low, then row order, `chunk` first, then twice as many each time, for as
    long as the next one's bound reaches (1 − `within`) times the best score so far. `known`: estimates
    already made (NaN: not yet), reused and not asked again. E.g. bounds (10, 9, 5), estimates (6, 8, 5),
    score = est, within 0.05, chunk 1: rows 0 and 1 are asked (best 8), and row 2, whose bound 5 is below
    0.95 × 8, is not."""
    if not 0.0 <= within < 1.0:
        raise ValueError(f"within must be in [0, 1), got {within}")
    ub = np.asarray(ub, dtype=float)
    est = np.full(len(ub), np.nan) if known is None else np.array(known, dtype=float)
    est[ub <= 0] = 0.0  # a row of bound 0 serves nothing: its estimate is 0 and its score too
    order = np.argsort(-ub, kind="stable")
    order = order[ub[order] > 0]
    best = 0.0
    done = ~np.isnan(est[order])
    if done.any():
        best = float(np.max(score(est[order[done]], ub[order[done]]), initial=0.0))
    i = 0
    while i < len(order) and ub[order[i]] >= (1.0 - within) * best:
        rows = order[i:i + chunk]
        rows = rows[ub[rows] >= (1.0 - within) * best]
        todo = rows[np.isnan(est[rows])]
        if len(todo):
            est[todo] = estimate(todo)
        best = max(best, float(np.max(score(est[rows], ub[rows]), initial=0.0)))
        i += chunk
        chunk *= 2
    return est


def cheapest_cover_estimates(cost: np.ndarray, ub: np.ndarray, estimate: Estimate, target: float, rows: np.ndarray, *,
                             chunk: int = PRUNE_CHUNK) -> np.ndarray:
    """The estimate of the rows among `rows` whose bound reaches `target`, from the lowest `cost` up
    (`chunk` rows first, then twice as many each time), until every row of the first cost at which one's
    estimate reaches `target` is estimated; NaN for the rows never asked. So the cheapest rows whose
    estimate reaches `target`, and their estimates, are those of the full estimate. E.g. costs (1, 2, 2, 3,
    4), bounds (5, 9, 9, 9, 9), estimates (-, 4, 7, 8, 9), target 6, chunk 1: row 0's bound is below the
    target; row 1 is asked, then rows 2 and 3; row 2 reaches the target at cost 2, so row 4 is not asked."""
    cost = np.asarray(cost)
    ub = np.asarray(ub, dtype=float)
    rows = np.asarray(rows, dtype=np.int64)
    est = np.full(len(ub), np.nan)
    cand = rows[ub[rows] >= target]
    order = cand[np.lexsort((cand, cost[cand]))]
    found: float | None = None
    i = 0
    while i < len(order) and (found is None or cost[order[i]] <= found):
        part = order[i:i + chunk]
        if found is not None:
            part = part[cost[part] <= found]
        est[part] = estimate(part)
        hit = part[est[part] >= target]
        if found is None and len(hit):
            found = float(cost[hit].min())
        i += chunk
        chunk *= 2
    return est


def frontier_estimates(cost: np.ndarray, ub: np.ndarray, estimate: Estimate, *, chunk: int = PRUNE_CHUNK) -> np.ndarray:
    """The estimate of every row that can raise the running maximum of the estimate along the rows by
    `cost` (low to high, then row order), NaN for the others: rows are asked in that order (`chunk` rows
    first, then twice as many each time), and a row is skipped when its bound is below the largest
    estimate among the rows asked before it (all of them no dearer). A skipped row's estimate is below
    that running maximum, so the cheapest row whose estimate reaches any rate is an estimated one, with
    its full estimate. E.g. costs (1, 2, 3), bounds (5, 3, 9), estimates (4, 2, 6), chunk 1: row 1's bound
    3 is below 4, so rows 0 and 2 are asked."""
    cost = np.asarray(cost)
    ub = np.asarray(ub, dtype=float)
    est = np.full(len(ub), np.nan)
    order = np.lexsort((np.arange(len(ub)), cost))
    best = -np.inf
    i = 0
    while i < len(order):
        part = order[i:i + chunk]
        part = part[ub[part] >= best]
        if len(part):
            est[part] = estimate(part)
            best = max(best, float(np.max(est[part])))
        i += chunk
        chunk *= 2
    return est

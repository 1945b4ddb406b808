"""Estimates only where they decide (`kairosd.planner.pruning`): the worked examples, and on the Kairos
authors' profiles the same choices, close contenders, cheapest covers and partitions as with every
configuration estimated, from fewer estimates."""

from __future__ import annotations

import numpy as np
import pytest

from kairosd import workload
from kairosd.planner import (
    CLOSE_SCORE,
    BoundModel,
    close_contenders,
    kairos_score,
    make_candidates,
    planning_eps,
    queue_estimate,
    select_kairos,
)
from kairosd.planner.demand import ModelDemand
from kairosd.planner.enumeration import _micro, enumerate_configs
from kairosd.planner.joint import JointModel, _max_partition, _min_cost_partition, _part_space, plan_fleet
from kairosd.planner.pruning import PRUNE_CHUNK, cheapest_cover_estimates, frontier_estimates, kairos_estimates


class Counted:
    """An estimate from a table of values that records which rows it was asked for."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = np.asarray(values, dtype=float)
        self.asked: list[int] = []

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        self.asked += [int(r) for r in rows]
        return self.values[rows]


def test_kairos_estimates_worked_example() -> None:
    est = Counted(np.array([6.0, 8.0, 5.0]))
    got = kairos_estimates(np.array([10.0, 9.0, 5.0]), est, lambda e, u: e, within=0.05, chunk=1)
    assert got[:2].tolist() == [6.0, 8.0] and np.isnan(got[2]) and est.asked == [0, 1]
    # a row of bound 0 is worth 0 without asking; rows already known are not asked again
    est = Counted(np.array([6.0, 8.0, 5.0]))
    got = kairos_estimates(np.array([10.0, 9.0, 0.0]), est, lambda e, u: e, within=0.05,
                           known=np.array([6.0, np.nan, np.nan]), chunk=1)
    assert got.tolist() == [6.0, 8.0, 0.0] and est.asked == [1]
    # no row scores above 0: every row with a bound is asked
    est = Counted(np.zeros(4))
    assert kairos_estimates(np.array([3.0, 2.0, 1.0, 4.0]), est, lambda e, u: e, within=0.0, chunk=1).tolist() == [0.0] * 4
    assert sorted(est.asked) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="within"):
        kairos_estimates(np.ones(2), est, lambda e, u: e, within=1.0)


def test_cheapest_cover_estimates_worked_example() -> None:
    est = Counted(np.array([1.0, 4.0, 7.0, 8.0, 9.0]))
    cost, ub = np.array([1, 2, 2, 3, 4]), np.array([5.0, 9.0, 9.0, 9.0, 9.0])
    got = cheapest_cover_estimates(cost, ub, est, 6.0, np.arange(5), chunk=1)
    # row 0's bound is below the target; row 1 (asked alone), then rows 2 and 3 (asked together): row 2
    # reaches the target at cost 2, so row 4 is never asked
    assert np.isnan(got[0]) and got[1:4].tolist() == [4.0, 7.0, 8.0] and np.isnan(got[4])
    assert est.asked == [1, 2, 3]
    # only the rows given are considered; none reaches the target: all of those with the bound asked
    est = Counted(np.array([1.0, 4.0, 5.0, 5.5]))
    got = cheapest_cover_estimates(np.array([1, 2, 2, 3]), np.array([5.0, 9.0, 9.0, 9.0]), est, 6.0, np.array([1, 3]))
    assert sorted(est.asked) == [1, 3] and np.isnan(got[[0, 2]]).all()


@pytest.mark.parametrize(("model", "budget"), [("ncf", 8.0), ("rm2", 8.0)])
def test_pruned_candidates_choose_as_the_full_ones(wl: workload.KairosWorkload, pmf: np.ndarray, model: str,
                                                   budget: float) -> None:
    """Same choice and close contenders; every estimate made is the full one's, and every row left out
    has a bound below (1 − CLOSE_SCORE) × the best score, so it could not be either."""
    bm = BoundModel.from_profiles(wl.profiles, model, wl.types, pmf, wl.qos_s[model])
    full = make_candidates(bm, wl.prices_usd_per_hour, budget)
    pruned = make_candidates(bm, wl.prices_usd_per_hour, budget, prune_within=CLOSE_SCORE)
    assert full.est_qps is not None and pruned.est_qps is not None
    done = np.isfinite(pruned.est_qps)
    assert len(full) > 2 * PRUNE_CHUNK and 0 < done.sum() < len(full)
    # the same estimates, up to the last bit numpy's vectorised loops may round differently by position
    np.testing.assert_allclose(pruned.est_qps[done], full.est_qps[done], rtol=1e-12)
    best = kairos_score(full.est_qps, full.ub_qps).max()
    assert (pruned.ub_qps[~done] < (1.0 - CLOSE_SCORE) * best).all()
    chosen = select_kairos(pruned).config
    assert np.array_equal(chosen, select_kairos(full).config)
    row = full.row_of(chosen)
    assert row is not None
    assert sorted(close_contenders(pruned, row).tolist()) == sorted(close_contenders(full, row).tolist())
    assert pruned.search_start(full.configs[int(np.flatnonzero(~done)[0])]) is None


def test_plan_fleet_min_cost_is_the_cheapest_cover_of_the_full_estimate(wl: workload.KairosWorkload,
                                                                        pmf: np.ndarray) -> None:
    """min_cost with one model: the cheapest configuration (maximal or not) whose estimate covers the
    rate × headroom, as a search over every configuration's estimate finds it."""
    model, budget = "rm2", 3.0
    bm = BoundModel.from_profiles(wl.profiles, model, wl.types, pmf, wl.qos_s[model])
    configs = enumerate_configs(np.asarray(wl.prices_usd_per_hour), budget, maximal_only=False)
    est = queue_estimate(configs, bm, eps=planning_eps())
    cost = configs @ _micro(np.asarray(wl.prices_usd_per_hour))
    for rate in (20.0, 60.0, 120.0):
        plan = plan_fleet(wl.profiles, wl.types, wl.prices_usd_per_hour, budget, [ModelDemand(model, rate, pmf)],
                          wl.qos_s, objective="min_cost", headroom=1.2)
        cover = np.flatnonzero(est >= 1.2 * rate)
        assert len(cover), rate
        cheapest = cover[cost[cover] == cost[cover].min()]
        want = cheapest[np.argmax(est[cheapest])]
        assert [plan.counts[t] for t in wl.types] == configs[want].tolist(), rate
        assert plan.multiple == pytest.approx(est[want] / rate)


def test_frontier_estimates_worked_example() -> None:
    est = Counted(np.array([4.0, 2.0, 6.0]))
    got = frontier_estimates(np.array([1, 2, 3]), np.array([5.0, 3.0, 9.0]), est, chunk=1)
    assert got[0] == 4.0 and np.isnan(got[1]) and got[2] == 6.0 and est.asked == [0, 2]


@pytest.mark.parametrize(("budget", "rates"), [(2.5, (100.0, 2000.0)), (3.5, (40.0, 5000.0))])
def test_partitions_from_the_frontier_estimates_are_those_of_every_estimate(
        wl: workload.KairosWorkload, pmf: np.ndarray, budget: float, rates: tuple[float, float]) -> None:
    """The partitioned plan's search (the largest λ, the budget left over, the cheapest cover) finds the
    same parts, with the same estimates, when only the rows that can raise a frontier are estimated."""
    demand = [ModelDemand("rm2", rates[0], pmf), ModelDemand("ncf", rates[1], pmf)]
    models = [BoundModel.from_profiles(wl.profiles, d.model, wl.types, pmf, wl.qos_s[d.model]) for d in demand]
    joint = JointModel.build(models, demand)
    r, prices = np.array(rates), np.asarray(wl.prices_usd_per_hour)
    caps = np.full(len(wl.types), np.iinfo(np.int64).max, dtype=np.int64)
    full = _part_space(joint, r, prices, budget, caps, prune=False)
    pruned = _part_space(joint, r, prices, budget, caps)
    assert full is not None and pruned is not None
    if len(full.configs) > 2 * PRUNE_CHUNK:  # below that every row is asked in the first two calls
        assert all(np.isnan(pruned.est_qps[m]).any() for m in (0, 1))
    for m in (0, 1):
        done = np.isfinite(pruned.est_qps[m])
        np.testing.assert_allclose(pruned.est_qps[m][done], full.est_qps[m][done], rtol=1e-12)
    best = _max_partition(full, r)
    assert best is not None and _max_partition(pruned, r) == best
    assert all(pruned.est_qps[m][row] == full.est_qps[m][row] for m, row in best.items())
    for headroom in (0.5, 1.0, 1.2):
        assert _min_cost_partition(pruned, r, headroom) == _min_cost_partition(full, r, headroom)

"""Planner: enumeration against brute force, the paper's proportional bound on hand-worked cases and
against an LP, the queue-aware estimate, and the selectors on small catalogues whose optimum is known
(the LP-dual `upper_bound` has its own file, test_planner_bound.py)."""

from __future__ import annotations

import dataclasses
import itertools
import re
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import linprog

from kairosd import workload
from kairosd.errors import ConfigError
from kairosd.planner import (
    CLOSE_SCORE,
    QUEUE_SHRINK,
    BoundModel,
    Candidates,
    authors_upper_bound,
    batch_pmf,
    close_contenders,
    config_cost,
    dominated_by,
    enumerate_configs,
    estimate_error,
    fluid_bound,
    homogeneous_configs,
    kairos_score,
    make_candidates,
    planning_eps,
    plus_limit,
    plus_stretch,
    proportional_bound,
    queue_estimate,
    select,
    select_exhaustive,
    select_homogeneous,
    select_kairos,
    select_kairos_paper,
    select_kairos_plus,
    type_dominance,
    upper_bound,
)
from kairosd.planner.bounds import TAIL_GRID
from kairosd.planner.queueing import (
    QUEUE_BISECT_STEPS,
    QUEUE_EPS,
    _capacity_split,
    _decay_x,
    _estimate_group,
    _matched_pool,
    _routing_groups,
    base_types,
    erlang_b,
    erlang_c,
    idle_miss,
    sufficient_types,
)

QOS = 0.005

REPO = Path(__file__).resolve().parents[2]


def brute_force(prices: list[float], budget: float, maximal: bool) -> set[tuple[int, ...]]:
    out = set()
    ranges = [range(int(budget / p + 1e-9) + 1) for p in prices]
    for c in itertools.product(*ranges):
        cost = sum(n * p for n, p in zip(c, prices, strict=True))
        if any(c) and cost <= budget + 1e-9 and (not maximal or budget - cost < min(prices) - 1e-9):
            out.add(c)
    return out


def two_point_model(aux_lat: tuple[float, float] = (0.002, 0.010), base_lat: tuple[float, float] = (0.001, 0.003)) -> BoundModel:
    """The docstring's worked example: half the queries batch 10, half batch 100."""
    mean = np.zeros((2, 101))
    mean[0, :] = np.interp(np.arange(101), [10, 100], base_lat)
    mean[1, :] = np.interp(np.arange(101), [10, 100], aux_lat)
    pmf = np.zeros(101)
    pmf[[10, 100]] = 0.5
    return BoundModel.build(mean, mean, pmf, QOS, ("base", "aux"))


# ---------------------------------------------------------------------------------------------- enumeration


@pytest.mark.parametrize("budget", [0.3, 1.0, 1.7, 2.5])
def test_enumeration_matches_brute_force(budget: float) -> None:
    prices = [0.526, 0.432, 0.149, 0.1664]
    for maximal in (False, True):
        got = enumerate_configs(prices, budget, maximal_only=maximal)
        assert {tuple(int(x) for x in c) for c in got} == brute_force(prices, budget, maximal)
        assert len(got) == len({tuple(c) for c in got.tolist()})
        assert np.all(config_cost(got, prices) <= budget + 1e-9)


def test_enumeration_is_exact_at_the_budget() -> None:
    # 3 × 0.1 = 0.30000000000000004 in floats; the integer micro-dollar arithmetic keeps it
    got = enumerate_configs([0.1], 0.3)
    np.testing.assert_array_equal(got, [[3]])
    assert len(enumerate_configs([0.1, 0.7], 0.7, maximal_only=False)) == 8  # (1..7, 0) and (0, 1)


def test_maximal_configurations_dominate_the_rest() -> None:
    prices = [0.526, 0.432, 0.149, 0.1664]
    every = enumerate_configs(prices, 2.5, maximal_only=False)
    maximal = enumerate_configs(prices, 2.5)
    for c in every:
        assert np.any(np.all(maximal >= c, axis=1)), c  # every config has a maximal superset
    # a maximal one has no strict superset within the budget
    for m in maximal:
        assert np.sum(np.all(every >= m, axis=1)) == 1


def test_enumeration_caps_and_errors() -> None:
    got = enumerate_configs([0.2, 0.3], 1.0, max_counts=[2, 5])
    assert got[:, 0].max() <= 2
    # with type 0 capped at 2, (2, 2) is maximal although 0.2 $/h is left
    assert (2, 2) in {tuple(c) for c in got.tolist()}
    with pytest.raises(ConfigError):
        enumerate_configs([], 1.0)
    with pytest.raises(ConfigError):
        enumerate_configs([0.1, -0.2], 1.0)
    with pytest.raises(ConfigError):
        enumerate_configs([0.1], 0.0)


# ---------------------------------------------------------------------------------------------- bound


def test_bound_model_of_the_worked_example() -> None:
    bm = two_point_model()
    np.testing.assert_array_equal(bm.threshold_batch, [100, 10])
    np.testing.assert_allclose(bm.coverage, [1.0, 0.5])
    np.testing.assert_allclose(bm.rate_qps, [1 / 0.002, 1 / 0.006])
    np.testing.assert_allclose(bm.small_rate_qps, [1 / 0.002, 1 / 0.002])
    # share of the base's busy time on the aux's small queries: 0.5·1 ms / 2 ms
    assert bm.time_share[0, 1] == pytest.approx(0.25)


@pytest.mark.parametrize(("n_base", "n_aux"), [(1, 1), (2, 1), (1, 0), (3, 5), (1, 2)])
def test_one_base_one_auxiliary_by_hand(n_base: int, n_aux: int) -> None:
    bm = two_point_model()
    q_b, q_k, s, t = 500.0, 500.0, 0.5, 0.25
    # the authors' formula: auxiliaries absorb small queries until the base, left with large ones, saturates
    expected = min(n_base * q_b + t / s * n_aux * q_k, n_base * q_b / (1 - t))
    # and directly: the base must serve all large queries (3 ms each, half the queries) ...
    assert n_base * q_b / (1 - t) == pytest.approx(n_base / (0.5 * 0.003))
    got = proportional_bound(np.array([[n_base, n_aux]]), bm)[0]
    assert got == pytest.approx(expected)
    assert proportional_bound(np.array([[1, 1]]), bm)[0] == pytest.approx(2000 / 3)
    assert proportional_bound(np.array([[2, 1]]), bm)[0] == pytest.approx(1250)


def test_no_base_means_no_rate_meets_qos() -> None:
    bm = two_point_model()
    assert proportional_bound(np.array([[0, 7]]), bm)[0] == 0.0


def test_single_auxiliary_type_equals_the_authors_bound() -> None:
    rng = np.random.default_rng(0)
    bm = _random_model(rng, n_types=2)
    configs = np.column_stack([rng.integers(1, 4, 50), rng.integers(0, 12, 50)])
    np.testing.assert_allclose(proportional_bound(configs, bm), authors_upper_bound(configs, bm, base=0))


def _random_case(rng: np.random.Generator, n_types: int) -> tuple[BoundModel, np.ndarray, np.ndarray]:
    """A fast base that covers every batch and auxiliaries that are slower on large batches:
    (bound model, latency [type, batch], batch pmf)."""
    b = np.arange(1001)
    lat = np.empty((n_types, 1001))
    lat[0] = 0.0006 + 0.002 * b / 1000
    for k in range(1, n_types):
        lat[k] = rng.uniform(0.0002, 0.0008) + rng.uniform(0.004, 0.012) * b / 1000
    batches = np.clip(rng.lognormal(np.log(180), 0.8, 20_000), 1, 1000).astype(int)
    pmf = batch_pmf(batches, 1000)
    return BoundModel.build(lat, lat, pmf, QOS, tuple(f"t{k}" for k in range(n_types))), lat, pmf


def _random_model(rng: np.random.Generator, n_types: int) -> BoundModel:
    return _random_case(rng, n_types)[0]


def _lp_bound(config: np.ndarray, bm: BoundModel) -> float:
    """The same proportional fluid model solved as an LP: max λ s.t. base busy time ≤ n_b,
    auxiliary k serves y_k ≤ n_k·Q_k queries/s spread over b ≤ B_k, no band over-served."""
    base = 0
    aux = [k for k in range(1, len(config)) if config[k] > 0 and bm.coverage[k] > 0]
    # variables: λ, y_k
    nvar = 1 + len(aux)
    c = np.zeros(nvar)
    c[0] = -1.0
    a_ub, b_ub = [], []
    # λ/Q_b − Σ y_k·(t_k/s_k)/Q_b ≤ n_b
    row = np.zeros(nvar)
    row[0] = 1 / bm.rate_qps[base]
    for i, k in enumerate(aux):
        row[1 + i] = -bm.time_share[base, k] / bm.coverage[k] / bm.rate_qps[base]
    a_ub.append(row)
    b_ub.append(config[base])
    # every band b: Σ_{k: b <= B_k} y_k·p_b/s_k ≤ λ·p_b, written per distinct threshold
    for k0 in aux:
        row = np.zeros(nvar)
        row[0] = -1.0
        for i, k in enumerate(aux):
            if bm.threshold_batch[k] >= bm.threshold_batch[k0]:
                row[1 + i] = 1 / bm.coverage[k]
        a_ub.append(row)
        b_ub.append(0.0)
    bounds = [(0, None)] + [(0, config[k] * bm.small_rate_qps[k]) for k in aux]
    res = linprog(c, A_ub=np.array(a_ub), b_ub=np.array(b_ub), bounds=bounds, method="highs")
    assert res.status == 0
    return -res.fun


def test_greedy_bound_equals_the_lp_with_several_auxiliary_thresholds() -> None:
    rng = np.random.default_rng(3)
    for _ in range(5):
        bm = _random_model(rng, n_types=4)
        assert len(set(bm.threshold_batch[1:].tolist())) > 1  # distinct thresholds
        configs = np.column_stack([rng.integers(1, 4, 40)] + [rng.integers(0, 10, 40) for _ in range(3)])
        got = proportional_bound(configs, bm)
        want = np.array([_lp_bound(c, bm) for c in configs])
        np.testing.assert_allclose(got, want, rtol=1e-7)


def test_two_auxiliaries_by_hand() -> None:
    """Base 1 ms on everything; aux A meets QoS only at batch 10 (2 ms; 9 ms above); aux B up to
    batch 50 (2 ms). Mix: 1/3 each of batch 10, 50, 100; QoS 5 ms."""
    mean = np.zeros((3, 101))
    mean[0] = 0.001
    mean[1] = np.where(np.arange(101) <= 10, 0.002, 0.009)
    mean[2] = np.where(np.arange(101) <= 50, 0.002, 0.009)
    pmf = np.zeros(101)
    pmf[[10, 50, 100]] = 1 / 3
    bm = BoundModel.build(mean, mean, pmf, QOS, ("base", "A", "B"))
    np.testing.assert_array_equal(bm.threshold_batch, [100, 10, 50])
    np.testing.assert_allclose(bm.time_share[0], [1.0, 1 / 3, 2 / 3])
    # 1 base + 1 A + 1 B. Knapsack capacity n_b·Q_b = 1000. B first (t = 2/3): 500/s at weight
    # (1 − 2/3)/(2/3) = 0.5 uses 250, adds (t/s)·500 = 500. A (t = 1/3): weight 2, value 1, takes
    # the remaining 750/2 = 375/s. λ = 1000 + 500 + 375 = 1875. Check: batch-10 queries are
    # λ/3 = 625 = A's 375 + half of B's 500; the base serves 375 batch-50 + 625 batch-100 = 1.0 s/s.
    assert proportional_bound(np.array([[1, 1, 1]]), bm)[0] == pytest.approx(1875)
    # 1 base + 3 A: A only takes batch 10 (λ/3), the base the other 2λ/3 at 1 ms → λ = 1500
    assert proportional_bound(np.array([[1, 3, 0]]), bm)[0] == pytest.approx(1500)
    # the authors' aggregate threshold credits A with batch-50 queries at E[L_A | b ≤ 50] = 5.5 ms,
    # though A takes 9 ms there: Q_a = 3/5.5 ms + 1/2 ms, UB = 1000 + (t/s)·Q_a with t/s = 1
    theirs = authors_upper_bound(np.array([[1, 3, 1]]), bm, base=0)[0]
    assert theirs == pytest.approx(1000 + 3 / 0.0055 + 500)
    assert proportional_bound(np.array([[1, 3, 1]]), bm)[0] == pytest.approx(1875)
    # letting B specialise on batch 50 (the exact fluid LP) reaches 2000 for 1 + 1 + 1:
    # A takes 500 of batch 10, B 500 of batch 50, the base the 667 batch-100 + 167 batch-10.
    assert fluid_bound(np.array([1, 1, 1]), mean, mean, pmf, QOS, slack=0.0) == pytest.approx(2000)
    # 1 + 3 + 1: the base takes batch 100 and what B leaves of batch 50: 2λ/3 − 500 ≤ 1000 → 2250
    assert fluid_bound(np.array([1, 3, 1]), mean, mean, pmf, QOS, slack=0.0) == pytest.approx(2250)


def test_the_fluid_lp_dominates_the_proportional_bound() -> None:
    rng = np.random.default_rng(5)
    for _ in range(2):
        bm, lat, pmf = _random_case(rng, n_types=4)
        configs = np.column_stack([rng.integers(1, 3, 8)] + [rng.integers(0, 8, 8) for _ in range(3)])
        for c in configs:
            assert fluid_bound(c, lat, lat, pmf, QOS) >= proportional_bound(c[None, :], bm)[0] * (1 - 1e-9)


def test_bound_grows_with_every_added_instance() -> None:
    rng = np.random.default_rng(7)
    bm = _random_model(rng, n_types=4)
    configs = rng.integers(0, 6, (200, 4))
    ub = proportional_bound(configs, bm)
    for k in range(4):
        more = configs.copy()
        more[:, k] += 1
        assert np.all(proportional_bound(more, bm) >= ub - 1e-9)


def test_base_is_derived_without_a_gpu() -> None:
    """A CPU-only catalogue: the type that covers the mix is the base, whatever it is called."""
    b = np.arange(1001)
    lat = np.stack([0.0005 + 0.004 * b / 1000, 0.0003 + 0.015 * b / 1000])  # both CPUs
    pmf = batch_pmf(np.clip(np.random.default_rng(0).lognormal(np.log(150), 0.5, 10_000), 1, 1000).astype(int), 1000)
    bm = BoundModel.build(lat, lat, pmf, QOS, ("c5.xlarge", "r5.large"))
    assert bm.coverage[0] == pytest.approx(1.0) and bm.coverage[1] < 0.99
    assert proportional_bound(np.array([[2, 3]]), bm)[0] > proportional_bound(np.array([[2, 0]]), bm)[0] > 0
    assert proportional_bound(np.array([[0, 3]]), bm)[0] == 0.0


def test_tail_rule_gives_tighter_thresholds() -> None:
    mean = np.stack([np.linspace(0.0005, 0.003, 1001), np.linspace(0.0003, 0.008, 1001)])
    p99 = mean * np.array([[1.05], [1.6]])  # the auxiliary has a slow tail
    pmf = np.full(1001, 1 / 1001)
    loose = BoundModel.build(mean, mean, pmf, QOS, ("g", "t"), tail=False)
    tight = BoundModel.build(mean, p99, pmf, QOS, ("g", "t"), tail=True)
    assert tight.threshold_batch[1] < loose.threshold_batch[1]
    cfg = np.array([[1, 6]])
    assert proportional_bound(cfg, tight)[0] < proportional_bound(cfg, loose)[0]


def _one_batch_model(lat_s: float, qos_s: float) -> BoundModel:
    """One base type, every query batch 100, deterministic service `lat_s` (mean = p99)."""
    mean = np.full((1, 101), lat_s)
    pmf = np.zeros(101)
    pmf[100] = 1.0
    return BoundModel.build(mean, mean, pmf, qos_s, ("base",))


def test_an_estimate_with_a_floor_is_the_larger_of_the_floor_and_its_own() -> None:
    """`_estimate_group` with the estimate another base gave: a floor above the group's own estimate is
    kept (one test), one below it is bisected from there up to the same value."""
    bm = _one_batch_model(0.003, 0.010)
    x = np.array([[1], [1], [2]])
    ub = upper_bound(x, bm)
    args = (bm, 0, ub, bm.band_eligible.astype(float), None, QUEUE_EPS, QUEUE_BISECT_STEPS, True)
    own = _estimate_group(x, *args)
    assert own[0] == pytest.approx(94.4, rel=0.01) and own[2] > own[0]
    floor = np.array([150.0, 10.0, 0.0])
    got = _estimate_group(x, *args, floor=floor)
    assert got[0] == 150.0
    assert got[1] == pytest.approx(own[1], rel=1e-6) and got[2] == pytest.approx(own[2], rel=1e-6)


def test_queue_estimate_worked_example() -> None:
    """The docstring's case: L = 3 ms, C_s² = 0, 1 instance: ρ·exp(−2(μ − λ)·t) = 0.01 at the cap."""
    for qos, want in ((0.005, 12.0), (0.010, 94.4), (0.020, 211.2)):
        got = queue_estimate(np.array([[1]]), _one_batch_model(0.003, qos))[0]
        assert got == pytest.approx(want, rel=0.01)
        lam, t = got, qos - 0.003
        assert lam * 0.003 * np.exp(-2 * (1 / 0.003 - lam) * t) == pytest.approx(0.01, rel=0.01)
    # two instances at QoS 5 ms: far more than twice one instance's cap
    assert queue_estimate(np.array([[2]]), _one_batch_model(0.003, 0.005))[0] == pytest.approx(147.2, rel=0.01)


def test_queue_estimate_falls_as_the_slack_shrinks_and_stays_below_the_bound() -> None:
    caps = [queue_estimate(np.array([[2]]), _one_batch_model(0.003, qos))[0] for qos in (0.030, 0.012, 0.006, 0.004, 0.0031)]
    assert all(a > b for a, b in zip(caps, caps[1:], strict=False))
    assert caps[0] == pytest.approx(2 / 0.003, rel=0.15)  # 27 ms of slack on 3 ms: near the fluid bound
    rng = np.random.default_rng(17)
    for _ in range(3):
        bm = _random_model(rng, n_types=4)
        configs = rng.integers(0, 8, (300, 4))
        est, ub = queue_estimate(configs, bm), upper_bound(configs, bm)
        assert np.all(est <= ub * (1 + 1e-12)) and np.all(est >= 0)
        assert np.all(est[ub == 0] == 0) and np.all(est[ub > 0] > 0)


def test_queue_estimate_prefers_a_second_base_over_more_auxiliaries() -> None:
    """The mtwnd/dien pattern: large queries (only the base meets QoS) with little slack. 1 base + 6
    auxiliaries has the higher fluid bound, 2 bases + 1 auxiliary the higher estimate."""
    b = np.arange(1001)
    lat = np.stack([0.004 + 0.010 * b / 1000, 0.002 + 0.050 * b / 1000])
    pmf = np.zeros(1001)
    pmf[[100, 200, 800]] = [0.5, 0.35, 0.15]
    bm = BoundModel.build(lat, lat, pmf, 0.016, ("gpu", "cpu"))
    assert bm.threshold_batch[1] == 200
    configs = np.array([[1, 6], [2, 1]])
    ub, est = proportional_bound(configs, bm), queue_estimate(configs, bm)
    # fluid: 1 base serves the 15% batch-800 queries (12 ms, 4 ms of slack) at 555/s; 2 bases + 1
    # auxiliary reach 406/s. Queueing: one base at 4 ms of slack on 12 ms services caps near 67/s
    assert ub[0] == pytest.approx(555.6, rel=1e-3) and ub[1] == pytest.approx(405.8, rel=1e-3)
    assert est[0] < 0.15 * ub[0] and est[1] > 2 * est[0]


def test_erlang_b_and_c_worked_values() -> None:
    assert erlang_b(np.array([1.0]), np.array([0.5]))[0] == pytest.approx(0.5 / 1.5)
    assert erlang_b(np.array([2.0]), np.array([1.0]))[0] == pytest.approx(0.2)
    assert erlang_c(np.array([2.0]), np.array([1.0]))[0] == pytest.approx(1 / 3)
    assert erlang_c(np.array([1.0]), np.array([0.4]))[0] == pytest.approx(0.4)
    assert erlang_c(np.array([3.0]), np.array([3.5]))[0] == 1.0  # saturated


def test_erlang_b_closed_form_is_the_recurrence() -> None:
    """The closed form (Poisson pmf over cdf) against B_k = a·B_{k−1}/(k + a·B_{k−1}) on a grid of whole
    servers and loads, from idle to far beyond the servers (where the cdf underflows and the recurrence
    is used), in any array shape."""
    c, a = np.meshgrid(np.arange(0.0, 301.0, 7.0), np.concatenate([[0.0], np.geomspace(1e-3, 5e3, 60)]))
    want = np.ones(c.shape)
    for k in range(1, 301):
        want = np.where(k <= c, a * want / (k + a * want), want)
    got = erlang_b(c, a)
    assert got.shape == c.shape and np.isfinite(got).all()
    assert np.allclose(got, want, rtol=1e-9, atol=1e-12)
    assert (got[0] == np.where(c[0] > 0, 0.0, 1.0)).all()  # no load: every server free, but for c = 0


def test_hold_is_the_wait_at_which_a_busy_auxiliary_stops_being_cheaper() -> None:
    """Kairos sends a query to a busy auxiliary k rather than an idle base j while C_k·(T + L_k) ≤ C_j·L_j:
    the hold T = (C_j·L_j − C_k·L_k)/C_k, at most k's slack (QoS − its p99), 0 where k costs more."""
    lat = np.array([[0.004, 0.004], [0.006, 0.012]])  # base, auxiliary; batches 0 and 1
    cost = np.array([[10.0 * 0.004, 10.0 * 0.004], [2.0 * 0.006, 2.0 * 0.012]])  # C_j·L_j: C = 10 and 2
    bm = BoundModel.build(lat, lat, np.array([0.5, 0.5]), 0.020, ("b", "a"), dispatch_cost=cost)
    assert bm.band_hold is not None and bm.band_p is not None
    # batch 0: (0.04 − 0.012)/2 = 14 ms ≤ slack 14 ms; batch 1: (0.04 − 0.024)/2 = 8 ms (slack 8 ms)
    # (both batches meet QoS on both types: one band, its hold the mean 11 ms)
    assert bm.band_hold[0, 1] == pytest.approx([0.011])
    assert np.all(bm.band_hold[1, 0] == 0.0)  # the base never costs less than the auxiliary
    # the estimate uses it (what overflows to the base depends on it) and stays within the bound
    rng = np.random.default_rng(5)
    for _ in range(3):
        _, lat_r, pmf_r = _random_case(rng, n_types=3)
        coef = np.array([10.0, rng.uniform(1.0, 4.0), rng.uniform(1.0, 4.0)])  # the base costs most
        m = BoundModel.build(lat_r, lat_r, pmf_r, QOS, ("t0", "t1", "t2"), dispatch_cost=coef[:, None] * lat_r)
        assert m.band_hold is not None and np.any(m.band_hold[0] > 0)
        configs = rng.integers(0, 6, (200, 3))
        held = queue_estimate(configs, m)
        none = queue_estimate(configs, dataclasses.replace(m, band_hold=np.zeros_like(m.band_hold)))
        assert np.any(np.abs(held - none) > 1e-3 * np.maximum(none, 1.0))
        assert np.all(held >= 0) and np.all(held <= upper_bound(configs, m) * (1 + 1e-12))


# ---------------------------------------------------------------------------------------------- selectors


def _cands(bm: BoundModel, prices: list[float], budget: float, maximal: bool = True) -> Candidates:
    return make_candidates(bm, prices, budget, maximal_only=maximal)


class CountingEvaluator:
    """Deterministic stand-in for the simulator: a fixed fraction (0.8–1.0, per configuration) of the
    paper's proportional bound, which is ≤ `upper_bound` (a restriction of its LP), so it never exceeds
    the bound Kairos+ prunes with, and monotone in the counts so supersets never lose."""

    def __init__(self, bm: BoundModel) -> None:
        self.bm = bm
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, config: np.ndarray) -> float:
        self.calls.append(tuple(int(x) for x in config))
        ub = proportional_bound(np.asarray(config)[None, :], self.bm)[0]
        # penalise auxiliary-heavy fleets a little (queueing on many slow instances)
        share = config[1:].sum() / max(1, config.sum())
        return float(ub * (1.0 - 0.2 * share))


def test_kairos_plus_returns_exactly_the_exhaustive_optimum() -> None:
    rng = np.random.default_rng(11)
    for trial in range(3):
        bm = _random_model(rng, n_types=4)
        prices = [0.526, 0.432, 0.149, 0.1664]
        for maximal in (True, False):
            c = _cands(bm, prices, 2.5, maximal)
            ex_eval = CountingEvaluator(bm)
            ex = select_exhaustive(c, ex_eval)
            kp_eval = CountingEvaluator(bm)
            kp = select_kairos_plus(c, kp_eval, budget_share=None)
            assert kp.qps == ex.qps
            np.testing.assert_array_equal(kp.config, ex.config)
            assert kp.n_evals == len(kp_eval.calls) < len(c)
            assert len(ex_eval.calls) == len(c)
            # never evaluates a sub-configuration of one it evaluated
            calls = np.array(kp_eval.calls)
            for i, x in enumerate(calls):
                assert not np.any(np.all(calls[:i] >= x, axis=1)), (trial, x)


def test_kairos_plus_stops_at_the_first_evaluation_when_the_bound_is_exact() -> None:
    bm = two_point_model()
    c = _cands(bm, [0.5, 0.2], 2.0)
    exact = lambda x: float(upper_bound(np.asarray(x)[None, :], bm)[0])
    kp = select_kairos_plus(c, exact, budget_share=None)
    assert kp.n_evals == 1
    assert kp.qps == pytest.approx(c.ub_qps.max())


def test_kairos_plus_on_candidates_estimated_in_part_walks_as_on_all() -> None:
    """With the estimate made only where the bound reaches near the best score (`kairos_estimates`, as
    `kairosd plan` makes it on large budgets) and `estimate` for the rest, Kairos+ estimates what its walk
    comes to and evaluates the same configurations in the same order, to the same choice, as with every
    configuration estimated; rows it never needs stay unestimated."""
    from kairosd.planner.pruning import kairos_estimates

    rng = np.random.default_rng(31)
    saved = 0
    for _ in range(4):
        bm = _random_model(rng, n_types=4)
        full = _cands(bm, [0.526, 0.432, 0.149, 0.1664], 5.0)
        assert full.est_qps is not None
        asked: list[int] = []

        def estimate(rows: np.ndarray, full: Candidates = full, asked: list[int] = asked) -> np.ndarray:
            asked.extend(int(r) for r in rows)
            assert full.est_qps is not None
            return full.est_qps[rows]

        for share in (None, 0.1):
            part = dataclasses.replace(full, est_qps=kairos_estimates(full.ub_qps, estimate, kairos_score, within=0.05,
                                                                      chunk=2))
            assert part.est_qps is not None and np.isnan(part.est_qps).any()
            ev_full, ev_part = CountingEvaluator(bm), CountingEvaluator(bm)
            a = select_kairos_plus(full, ev_full, budget_share=share)
            b = select_kairos_plus(part, ev_part, budget_share=share, estimate=estimate)
            assert ev_part.calls == ev_full.calls and b.evaluated == a.evaluated
            np.testing.assert_array_equal(b.config, a.config)
            assert (b.exact, b.n_configs) == (a.exact, a.n_configs)
            known = ~np.isnan(part.est_qps)
            np.testing.assert_array_equal(part.est_qps[known], full.est_qps[known])
            saved += int((~known).sum())
            assert len(asked) == len(set(asked))  # no row estimated twice
            asked.clear()
    assert saved > 0


def test_kairos_paper_picks_the_top10_member_nearest_their_centre() -> None:
    configs = np.array([[1, 0], [1, 1], [1, 2], [2, 0], [0, 9], [3, 3]])
    ub = np.array([10.0, 9.0, 8.0, 7.0, 6.0, 1.0])
    c = Candidates(("a", "b"), np.array([1.0, 1.0]), 10.0, configs, configs.sum(axis=1).astype(float), ub)
    # top 5 centre = (1, 2.4): nearest is (1, 2)
    sel = select_kairos_paper(c, top_k=5)
    np.testing.assert_array_equal(sel.config, [1, 2])
    assert sel.qps is None and sel.n_evals == 0
    # top 3 centre = (1, 1): itself
    np.testing.assert_array_equal(select_kairos_paper(c, top_k=3).config, [1, 1])
    one = select_kairos_paper(c, lambda x: 42.0, top_k=1)
    np.testing.assert_array_equal(one.config, [1, 0])
    assert one.qps == 42.0 and one.n_evals == 1
    # candidates that carry the paper's proportional bound are ranked by it, not by upper_bound
    paper = np.array([1.0, 2.0, 3.0, 4.0, 6.0, 5.0])
    cp = Candidates(("a", "b"), np.array([1.0, 1.0]), 10.0, configs, configs.sum(axis=1).astype(float), ub, None, paper)
    np.testing.assert_array_equal(select_kairos_paper(cp, top_k=1).config, [0, 9])
    # centre (1.5, 6): a tie, the first in rank order
    np.testing.assert_array_equal(select_kairos_paper(cp, top_k=2).config, [0, 9])


def test_kairos_score_gives_back_a_share_of_the_queueing_discount() -> None:
    """est^(1 − s)·ub^s: 100 q/s estimated under a 160 q/s bound scores 100·1.6^0.25 = 112.47 at s = 0.25;
    s = 0 is the estimate, s = 1 the bound, and an estimate of 0 stays 0."""
    est, ub = np.array([100.0, 0.0, 50.0]), np.array([160.0, 90.0, 50.0])
    np.testing.assert_allclose(kairos_score(est, ub, 0.25), [100.0 * 1.6**0.25, 0.0, 50.0])
    np.testing.assert_allclose(kairos_score(est, ub, 0.0), est)
    np.testing.assert_allclose(kairos_score(est, ub, 1.0), [160.0, 0.0, 50.0])
    assert QUEUE_SHRINK == 0.25


def test_kairos_ranks_by_score_and_a_tolerance_admits_the_highest_bound() -> None:
    configs = np.array([[1, 6], [2, 3], [2, 2], [1, 5]])
    ub = np.array([10.0, 9.0, 8.0, 9.5])
    est = np.array([5.0, 8.5, 8.6, 4.0])  # (1, 6) has the best bound but queues: estimate half of it
    c = Candidates(("g", "r"), np.array([1.0, 1.0]), 10.0, configs, configs.sum(axis=1).astype(float), ub, est)
    # the estimate alone (shrink 0) ranks (2, 2) first
    np.testing.assert_array_equal(select_kairos(c, shrink=0.0).config, [2, 2])
    # by default the score: (2, 3) 8.5·(9/8.5)^0.25 = 8.62 over (2, 2) 8.6·(8/8.6)^0.25 = 8.45; (1, 6) 5.95
    np.testing.assert_array_equal(select_kairos(c).config, [2, 3])
    # tolerance 5% on the estimate: >= 0.95·8.6 = 8.17 → (2, 3) and (2, 2) are tied; the higher bound wins
    np.testing.assert_array_equal(select_kairos(c, tolerance=0.05, shrink=0.0).config, [2, 3])
    # a loose tolerance admits (1, 6) again
    np.testing.assert_array_equal(select_kairos(c, tolerance=0.5).config, [1, 6])
    # equal estimates: the higher bound breaks the tie
    tied = dataclasses.replace(c, est_qps=np.array([5.0, 8.6, 8.6, 4.0]))
    np.testing.assert_array_equal(select_kairos(tied, shrink=0.0).config, [2, 3])
    with pytest.raises(ConfigError, match="estimate"):
        select_kairos(Candidates(("g", "r"), np.array([1.0, 1.0]), 10.0, configs, configs.sum(axis=1).astype(float), ub))


def test_close_contenders_are_the_fleets_scoring_within_the_share_of_the_choice() -> None:
    """Scores 100, 97, 94 and 96.5 (each bound equal to its estimate: the score is the estimate at any shrink)
    with the choice at 100: within 5% are the 97 and the 96.5, in the selector's order; within 2% none; the
    contenders of a lower choice include fleets that score above it."""
    configs = np.array([[1, 0], [0, 2], [1, 1], [0, 3]])
    est = np.array([100.0, 97.0, 94.0, 96.5])
    c = Candidates(("g", "r"), np.array([1.0, 1.0]), 10.0, configs, configs.sum(axis=1).astype(float), est.copy(), est)
    np.testing.assert_array_equal(close_contenders(c, 0, 0.05, shrink=0.0), [1, 3])
    assert len(close_contenders(c, 0, 0.02, shrink=0.0)) == 0
    np.testing.assert_array_equal(close_contenders(c, 2, 0.05, shrink=0.0), [0, 1, 3])
    # by default the score with its shrink, and CLOSE_SCORE as the share
    np.testing.assert_array_equal(close_contenders(c, 0), close_contenders(c, 0, CLOSE_SCORE, shrink=QUEUE_SHRINK))
    with pytest.raises(ConfigError, match="estimate"):
        close_contenders(dataclasses.replace(c, est_qps=None), 0)


def _two_batch_means(slower: float) -> tuple[np.ndarray, np.ndarray]:
    """Two types over batches 0..100 (type 0 from 0.5 to 6 ms, type 1 `slower` times that), and a mix of
    70% batch 10 and 30% batch 100."""
    mean = np.zeros((2, 101))
    mean[0] = np.linspace(0.0005, 0.006, 101)
    mean[1] = mean[0] * slower
    pmf = np.zeros(101)
    pmf[10], pmf[100] = 0.7, 0.3
    return mean, pmf


def test_planning_eps_is_the_target_less_a_windows_spread() -> None:
    assert planning_eps(0.01, 5_000) == pytest.approx(0.01 - np.sqrt(0.01 * 0.99 / 5_000))
    assert planning_eps(0.01, None) == 0.01
    assert planning_eps(0.01, 10_000) > planning_eps(0.01, 1_000)
    assert planning_eps(0.01, 10) == 0.005  # never below half the target
    with pytest.raises(ConfigError, match="window"):
        planning_eps(0.01, 0)


def test_kairos_plans_a_sturdy_fleet_over_one_resting_on_a_thin_margin() -> None:
    """Type 0 misses QoS on 0.8% of its queries even idle (a heavy tail) against ε = 1%; type 1 is 20%
    slower and never misses alone. Over an endless stream three of type 0 serve more; at the share a
    5,000-query window allows (0.859%) the margin is too thin and three of type 1 serve more (and the
    one-shot choice is neither fleet of one type)."""
    mean, pmf = _two_batch_means(1.2)
    miss = np.zeros((2, 101))
    miss[0] = 0.008
    bm = BoundModel.build(mean, mean, pmf, 0.010, ("tailed", "steady"), miss=miss)
    endless = make_candidates(bm, [1.0, 1.0], 3.0, window_queries=None)
    windowed = make_candidates(bm, [1.0, 1.0], 3.0)
    tailed, steady = endless.row_of(np.array([3, 0])), endless.row_of(np.array([0, 3]))
    assert tailed is not None and steady is not None and windowed.row_of(np.array([3, 0])) == tailed
    assert endless.est_qps is not None and windowed.est_qps is not None
    assert endless.est_qps[tailed] > endless.est_qps[steady] > 0
    assert windowed.est_qps[steady] > windowed.est_qps[tailed] > 0
    np.testing.assert_array_equal(select_kairos(endless, shrink=0.0).config, [3, 0])
    assert select_kairos(windowed, shrink=0.0).config.tolist() != [3, 0]
    fleets = np.array([[3, 0], [0, 3]])
    np.testing.assert_allclose(windowed.est_qps[[3, 0]], queue_estimate(fleets, bm, eps=planning_eps()))


def test_a_type_that_alone_meets_the_target_is_tried_as_the_base() -> None:
    """Type "fast" misses QoS on 0.03% of the mix without waiting (a far tail on batch 100), "clean" is
    30% slower and never misses. `base_types` makes the one clean instance of 5 × fast + 1 × clean the
    base and the five fast ones its auxiliaries; both types alone serve all but ε of the mix, so the
    estimate also takes fast as the base and keeps the higher of the two. A fast type missing 1.5% of
    the mix is not tried: fleets with it estimate as before (here 0: the idle fleet misses too much)."""
    mean, pmf = _two_batch_means(1.3)
    eps = planning_eps()
    fleets = np.array([[5, 1], [6, 0], [0, 6]])

    def model(fast_miss: float) -> BoundModel:
        miss = np.zeros((2, 101))
        miss[0, 100] = fast_miss
        return BoundModel.build(mean, mean, pmf, 0.012, ("fast", "clean"), miss=miss)

    rare = model(0.001)
    assert rare.within_qos is not None and rare.within_qos[0] == pytest.approx(0.9997)
    np.testing.assert_array_equal(sufficient_types(rare, eps), [0, 1])
    assert base_types(fleets[:1], rare)[0] == 1
    both = queue_estimate(fleets, rare, eps=eps)
    one = queue_estimate(fleets, rare, eps=eps, other_bases=False)
    assert both[0] > 1.04 * one[0] > 0 and both[0] <= upper_bound(fleets[:1], rare)[0]
    np.testing.assert_array_equal(both[1:], one[1:])  # a fleet of one type has one base
    assert one[1] > both[0] > one[2]
    frequent = model(0.05)
    np.testing.assert_array_equal(sufficient_types(frequent, eps), [1])
    np.testing.assert_array_equal(queue_estimate(fleets, frequent, eps=eps),
                                  queue_estimate(fleets, frequent, eps=eps, other_bases=False))


def test_a_fleet_of_one_type_serves_its_queue_by_deadline() -> None:
    """Batch 10 has 6.9 ms of lead (QoS 8 ms, 1.05 ms service), batch 100 2 ms: by deadline the large
    queries go first and both miss as a query with the mean lead would, which a fleet of one type
    serves at a higher rate than first come, first served; a mixed fleet keeps the first-come tail."""
    mean, pmf = _two_batch_means(1.5)
    bm = BoundModel.build(mean, mean, pmf, 0.008, ("a", "b"))
    fifo = dataclasses.replace(bm, band_lead=None)
    alone = np.array([[2, 0], [3, 0]])
    assert np.all(queue_estimate(alone, bm) > 1.2 * queue_estimate(alone, fifo))
    assert queue_estimate(np.array([[1, 1]]), bm)[0] == queue_estimate(np.array([[1, 1]]), fifo)[0]
    # one batch: one lead, the same order either way (within the tail grid's interpolation)
    one = _one_batch_model(0.003, 0.010)
    assert queue_estimate(np.array([[2]]), one)[0] == pytest.approx(
        queue_estimate(np.array([[2]]), dataclasses.replace(one, band_lead=None))[0], rel=1e-3)


def test_a_band_no_type_meets_goes_where_the_idle_dispatcher_sends_it() -> None:
    """1% of the queries are batch 100, whose p99 misses QoS on both types: the base's mean is over QoS
    (it misses 80% of them), the auxiliary's within (20%). The dispatcher sends them to an idle
    auxiliary, so with one in the fleet the estimate counts them there, not on the base."""
    mean = np.zeros((2, 101))
    mean[0] = np.interp(np.arange(101), [10, 100], [0.0010, 0.0052])
    mean[1] = np.interp(np.arange(101), [10, 100], [0.0020, 0.0048])
    pmf = np.zeros(101)
    pmf[[10, 100]] = [0.99, 0.01]
    miss = np.zeros((2, 101))
    miss[0, 100], miss[1, 100], miss[1, 10] = 0.8, 0.2, 0.02
    bm = BoundModel.build(mean, mean * np.array([[1.0], [1.2]]), pmf, 0.005, ("base", "aux"), miss=miss,
                          dispatch_cost=mean)
    assert bm.band_eligible is not None and bm.band_pref is not None and bm.band_idle_cost is not None
    large = int(np.argmin(bm.band_p))  # the band of batch 100
    x = np.array([[2, 0], [2, 1], [3, 1]])
    np.testing.assert_array_equal(base_types(x, bm), [0, 0, 0])
    groups = _routing_groups(x, 0, bm.band_eligible, bm.band_pref[0], bm.band_idle_cost)
    by_rows = {tuple(rows.tolist()): (e, p) for rows, e, p in groups}
    assert set(by_rows) == {(0,), (1, 2)}
    e, p = by_rows[(1, 2)]
    assert e[1, large] == 1.0 and p is not None and p[1, large] == 0.0  # the auxiliary's band
    np.testing.assert_array_equal(by_rows[(0,)][0], bm.band_eligible)  # no auxiliary: the base's
    est = queue_estimate(x, bm)
    as_given = _estimate_group(x, bm, 0, upper_bound(x, bm), bm.band_eligible.astype(float), bm.band_pref[0],
                               QUEUE_EPS, QUEUE_BISECT_STEPS, True)
    assert est[0] == pytest.approx(as_given[0])
    assert est[1] > 2.0 * as_given[1] and est[1] > est[0]


def test_batches_the_idle_dispatcher_sends_to_different_types_are_different_bands() -> None:
    """Batches 60 and 100 (5% each) miss QoS on their p99 on both types, so they pass the same tests; an
    idle base is the dispatcher's cheaper choice on batch 60 and an idle auxiliary on batch 100. They
    are two bands, and the estimate counts batch 100 on the auxiliary while batch 60 stays the base's."""
    mean = np.zeros((2, 101))
    mean[0] = np.interp(np.arange(101), [10, 100], [0.0010, 0.0040])
    mean[1] = np.interp(np.arange(101), [10, 100], [0.0020, 0.0042])
    pmf = np.zeros(101)
    pmf[[10, 60, 100]] = [0.9, 0.05, 0.05]
    p99 = mean * 1.1
    p99[:, [60, 100]] = 0.006  # over the 5 ms target on both types
    miss = np.zeros((2, 101))
    miss[:, [60, 100]] = 0.02
    cost = mean.copy()
    cost[1, 60] *= 3.0  # the auxiliary costs more than the base on batch 60, less on batch 100
    cost[0, 100] *= 3.0
    bm = BoundModel.build(mean, p99, pmf, QOS, ("base", "aux"), miss=miss, dispatch_cost=cost)
    assert bm.band_p is not None and bm.band_eligible is not None and bm.band_pref is not None
    assert bm.band_idle_cost is not None and bm.band_m1 is not None
    np.testing.assert_allclose(np.sort(bm.band_p), [0.05, 0.05, 0.9])
    at_60, at_100 = (int(np.argmin(np.abs(bm.band_m1[0] / bm.band_p - mean[0, b]))) for b in (60, 100))
    assert at_60 != at_100 and not bm.band_eligible[:, [at_60, at_100]].any()
    groups = _routing_groups(np.array([[2, 1]]), 0, bm.band_eligible, bm.band_pref[0], bm.band_idle_cost)
    [(rows, e, pref)] = groups
    assert e[1, at_100] == 1.0 and pref is not None and pref[1, at_100] == 0.0  # the auxiliary's
    assert e[1, at_60] == 0.0  # the base's alone
    # one band of both batches would go wherever the band's mean cost points, for both batches
    assert queue_estimate(np.array([[2, 1]]), bm)[0] > queue_estimate(np.array([[2, 0]]), bm)[0]


def test_an_auxiliarys_misses_are_counted_on_the_queries_it_takes() -> None:
    """The auxiliary meets QoS on its p99 on batches 10 (90%) and 50 (10%) and costs the dispatcher less
    than the base on batch 10, more on batch 50: it takes batch 10 whenever one is free and batch 50 only
    while every base instance is busy. Its misses without waiting (0.5% of what it could take, either way)
    cost the fleet less on batch 50, which it seldom serves, than on batch 10, which it serves most."""
    mean = np.zeros((2, 101))
    mean[0] = np.interp(np.arange(101), [10, 100], [0.0010, 0.0030])
    mean[1] = np.interp(np.arange(101), [10, 100], [0.0015, 0.0040])
    pmf = np.zeros(101)
    pmf[[10, 50]] = [0.9, 0.1]
    cost = mean * np.array([[1.0], [0.5]])
    cost[1, 50] = 3.0 * mean[0, 50]

    def estimate(miss_at: int) -> float:
        miss = np.zeros((2, 101))
        miss[1, miss_at] = 0.05 if miss_at == 50 else 0.05 * 0.1 / 0.9
        bm = BoundModel.build(mean, mean * 1.2, pmf, QOS, ("base", "aux"), miss=miss, dispatch_cost=cost)
        assert bm.band_pref is not None
        return float(queue_estimate(np.array([[1, 2]]), bm)[0])

    assert estimate(50) > 1.01 * estimate(10)


def test_a_type_with_no_instance_leaves_the_estimate_as_it_is() -> None:
    """Batch 100 (10%) misses the base's p99 (the base misses 30% of it) and meets "a"'s and "b"'s, which
    the dispatcher ranks cheaper there. With no "b" in the fleet, the estimate is the one of a model
    without "b": an absent auxiliary turns no query away to the others."""
    mean = np.zeros((3, 101))
    mean[0] = np.interp(np.arange(101), [10, 100], [0.0010, 0.0045])
    mean[1] = mean[2] = np.interp(np.arange(101), [10, 100], [0.0020, 0.0040])
    p99 = mean * np.array([[1.2], [1.1], [1.1]])
    pmf = np.zeros(101)
    pmf[[10, 100]] = [0.9, 0.1]
    miss = np.zeros((3, 101))
    miss[0, 100], miss[1:, 100], miss[1:, 10] = 0.3, 0.01, 0.05
    cost = mean.copy()
    cost[1:, 10] *= 3.0
    cost[2, 100] *= 1.5

    def model(n: int) -> BoundModel:
        return BoundModel.build(mean[:n], p99[:n], pmf, QOS, ("base", "a", "b")[:n], miss=miss[:n],
                                dispatch_cost=cost[:n])

    x = np.array([[1, 1], [2, 1], [3, 2]])
    with_b = np.hstack([x, np.zeros((3, 1), dtype=np.int64)])
    np.testing.assert_array_equal(base_types(with_b, model(3)), [0, 0, 0])
    est = queue_estimate(with_b, model(3))
    assert np.all(est > 0)
    np.testing.assert_allclose(est, queue_estimate(x, model(2)), rtol=1e-9)


def test_kairos_plus_walking_by_estimate_stays_exact() -> None:
    rng = np.random.default_rng(13)
    for _ in range(4):
        bm = _random_model(rng, n_types=4)
        c = _cands(bm, [0.526, 0.432, 0.149, 0.1664], 2.5)
        ex = select_exhaustive(c, CountingEvaluator(bm))
        kp = select_kairos_plus(c, CountingEvaluator(bm), order="estimate", budget_share=None)
        assert kp.qps == ex.qps


def test_homogeneous_picks_the_best_single_type_fleet() -> None:
    bm = two_point_model()
    c = _cands(bm, [0.5, 0.2], 2.0)
    np.testing.assert_array_equal(homogeneous_configs(c), [[4, 0], [0, 10]])
    ev = CountingEvaluator(bm)
    sel = select_homogeneous(c, ev, bm)
    np.testing.assert_array_equal(sel.config, [4, 0])  # the auxiliary alone cannot serve large queries
    assert sel.qps == pytest.approx(2000.0) and sel.n_evals == 2
    by_bound = select_homogeneous(c, None, bm)
    np.testing.assert_array_equal(by_bound.config, [4, 0])


def test_select_by_name() -> None:
    bm = two_point_model()
    c = _cands(bm, [0.5, 0.2], 2.0)
    ev = CountingEvaluator(bm)
    assert select("exhaustive", c, ev).qps == select("kairos_plus", c, ev, budget_share=None).qps
    with pytest.raises(ConfigError, match="allowed"):
        select("random", c, ev)
    with pytest.raises(ConfigError, match="evaluator"):
        select("kairos_plus", c)


def test_rank_orders_by_bound_then_cost() -> None:
    bm = two_point_model()
    c = _cands(bm, [0.5, 0.2], 2.0, maximal=False)
    from kairosd.planner import rank

    r = rank(c)
    assert np.all(np.diff(r.ub_qps) <= 0)
    ties = r.ub_qps[:-1] == r.ub_qps[1:]
    assert np.all(np.diff(r.cost_usd_per_hour)[ties] >= 0)
    assert sorted(map(tuple, r.configs.tolist())) == sorted(map(tuple, c.configs.tolist()))


def test_plan_command_ranks_the_kairos_data(capsys: pytest.CaptureFixture[str], tmp_path: object) -> None:
    from kairosd.cli import main

    assert main(["plan", "--budget", "2.5", "--model", "wnd", "--selector", "kairos", "--no-eval", "--top", "5"]) == 0
    out = capsys.readouterr().out
    assert "125 maximal configurations" in out
    assert "by the kairos score, est^0.75 x UB^0.25" in out
    rows = lambda text: [line for line in text.splitlines() if line.split()[:2] and all(w.isdigit() for w in line.split()[:2])]
    lines = rows(out)
    assert len(lines) == 5 and lines[0].endswith("<- chosen")
    # rows in the selector's order: the score est^0.75·UB^0.25 from high to low (values printed to 0.1 q/s)
    scores = [float(line.split()[7]) ** 0.75 * float(line.split()[6]) ** 0.25 for line in lines]
    assert all(a >= b * (1 - 1e-3) for a, b in zip(scores, scores[1:], strict=False)), scores
    assert "kairos:" in out and "not evaluated" in out
    # the fleets whose score is within 5% of the choice are named, the one-shot choice among them being unsure
    close = [line for line in lines[1:] if float(line.split()[7]) ** 0.75 * float(line.split()[6]) ** 0.25 >= 0.95 * scores[0]]
    assert close and f"{len(close)} other fleet(s) score within 5% of this choice" in out
    # any other selector's table is in upper-bound order
    assert main(["plan", "--budget", "2.5", "--model", "wnd", "--selector", "kairos_paper", "--no-eval", "--top", "5"]) == 0
    out = capsys.readouterr().out
    ubs = [float(line.split()[6]) for line in rows(out)]
    assert "(by upper bound)" in out and len(ubs) == 5 and ubs == sorted(ubs, reverse=True)
    assert "score within" not in out
    assert main(["plan", "--budget", "0.1", "--model", "wnd", "--selector", "kairos", "--no-eval"]) == 2  # nothing fits
    # at 10 $/h (without the authors' instance limits, which bind there) only the configurations whose bound
    # reaches 95% of the best score are estimated; the others come last in the table, with "-" for the estimate
    assert main(["plan", "--budget", "10", "--model", "wnd", "--selector", "kairos", "--no-eval", "--top", "6000",
                 "--no-caps"]) == 0
    out = capsys.readouterr().out
    assert "5188 maximal configurations" in out
    asked = re.search(r"estimated (\d+) of them: the others serve nothing or have an upper bound", out)
    assert asked is not None and 0 < int(asked.group(1)) < 5188
    est_col = [line.split()[7] for line in rows(out)]
    assert len(est_col) == 5188 and "-" in est_col
    first_unasked = est_col.index("-")
    assert all(e == "-" for e in est_col[first_unasked:])
    best = [float(line.split()[7]) ** 0.75 * float(line.split()[6]) ** 0.25 for line in rows(out)[:1]][0]
    assert all(float(line.split()[6]) < 0.95 * best for line in rows(out)[first_unasked:] if float(line.split()[6]) > 0)
    # the p99 window: 0 plans over an endless stream, a negative one is refused
    assert main(["plan", "--budget", "2.5", "--model", "wnd", "--no-eval", "--top", "1", "--p99-window", "0"]) == 0
    capsys.readouterr()
    assert main(["plan", "--budget", "2.5", "--model", "wnd", "--no-eval", "--p99-window", "-1"]) == 2


def test_plan_command_kairos_plus_says_how_its_walk_ended(capsys: pytest.CaptureFixture[str]) -> None:
    """`kairosd plan --selector kairos_plus` says whether its walk was exact, spent its simulation budget
    or stopped at `--time-limit`; a limit the first simulation passes leaves that one fleet."""
    from kairosd.cli import main

    base = ["plan", "--budget", "2.5", "--model", "wnd", "--selector", "kairos_plus", "--queries", "1000",
            "--streams", "1", "--workers", "1", "--top", "1"]
    assert main(base) == 0
    out = capsys.readouterr().out
    found = re.search(r"kairos_plus: (.+?)  cost .* evaluations (\d+) ", out)
    assert found is not None and int(found.group(2)) >= 2, out
    assert "kairos_plus: exact" in out or "kairos_plus: its simulation budget spent" in out, out
    assert main([*base, "--time-limit", "1e-6"]) == 0
    out = capsys.readouterr().out
    first = re.search(r"kairos_plus: (.+?)  cost .* evaluations 1 ", out)
    assert first is not None, out
    assert "kairos_plus: stopped at --time-limit 1e-06 s with fleets left to simulate" in out, out
    assert main([*base, "--time-limit", "-1"]) == 2


def test_plan_without_a_gpu_type(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    from kairosd.cli import main

    cpus = "c5n.2xlarge,r5n.large,t3.xlarge"
    # 5 ms for NCF: no CPU type serves 99% of the mix within QoS, and the planner says why
    assert main(["plan", "--budget", "2.5", "--model", "ncf", "--types", cpus, "--selector", "kairos", "--no-eval"]) == 2
    import re

    covered = re.search(r"c5n\.2xlarge, covers ([\d.]+)% of queries", caplog.text)
    assert covered is not None and 90.0 < float(covered.group(1)) < 99.0
    # 8 ms and the log-normal mix: r5n.large becomes the base of a CPU-only fleet
    assert main(["plan", "--budget", "2.5", "--model", "ncf", "--types", cpus, "--qos-ms", "8", "--mix", "lognormal",
                 "--selector", "kairos", "--no-eval", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "55 maximal configurations" in out and "r5n.large" in out


def test_plan_over_a_daemon_config(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """`--config configs/local.toml`: the local types, prices, measured profiles and QoS targets; Kairos+
    evaluates in the simulator, on three streams by default, and never sees a simulated rate above the
    bound it prunes with."""
    from kairosd.cli import main

    config = str(REPO / "configs" / "local.toml")
    assert main(["plan", "--budget", "0.5", "--model", "dlrm", "--config", config, "--selector", "kairos_plus",
                 "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "QoS 25 ms" in out and "ort-1t" in out and "triton" in out
    chosen = [line for line in out.splitlines() if line.startswith("kairos_plus:")][0]
    ub = float(chosen.split("UB ")[1].split()[0])
    sim = float(chosen.split("simulated ")[1].split()[0])
    assert 0 < sim <= ub
    assert "(mean of 3 streams of 6000 queries)" in chosen  # --streams 3 and --queries 6000, the defaults
    assert main(["plan", "--budget", "0.5", "--model", "dlrm", "--config", config, "--catalogue",
                 "configs/instance_types.toml"]) == 2
    assert "drop --catalogue" in caplog.text
    assert main(["plan", "--budget", "0.5", "--model", "dlrm", "--config", config, "--streams", "0"]) == 2
    assert "--streams must be at least 1" in caplog.text


def test_queue_estimate_uses_measured_misses_for_a_heavy_tailed_base() -> None:
    """A type missing QoS on 0.5% of its queries at every batch (its p99 table misses QoS everywhere,
    coverage 0) is still a base serving 99.5% of the mix: the estimate counts the 0.5% against the 1%
    budget instead of rating every fleet 0."""
    mean = np.full((1, 101), 0.001)
    p99 = np.full((1, 101), 0.010)  # the tail: p99 over the 5 ms QoS
    pmf = np.zeros(101)
    pmf[[10, 100]] = 0.5
    miss = np.full((1, 101), 0.005)
    tailed = BoundModel.build(mean, p99, pmf, QOS, ("t",), miss=miss)
    assert tailed.coverage[0] == 0.0 and tailed.within_qos is not None and tailed.within_qos[0] == pytest.approx(0.995)
    est = queue_estimate(np.array([[2]]), tailed)[0]
    assert 0.0 < est <= upper_bound(np.array([[2]]), tailed)[0]
    # the 0/1 table alone gives this type nothing
    assert queue_estimate(np.array([[2]]), BoundModel.build(mean, p99, pmf, QOS, ("t",)))[0] == 0.0
    # more of the tail (0.9%) leaves less of the budget for waits: a lower estimate
    worse = BoundModel.build(mean, p99, pmf, QOS, ("t",), miss=np.full((1, 101), 0.009))
    assert queue_estimate(np.array([[2]]), worse)[0] < est


def test_service_variability_lowers_the_estimate() -> None:
    """`svc_cv2` (within-batch service variability, e.g. `cv2_from_samples`) raises the M/G/c second
    moment: a longer waiting tail, a lower estimate."""
    from kairosd.planner import cv2_from_samples

    rel = np.array([[[0.5, 1.0, 1.5]]])
    assert cv2_from_samples(rel, 3, 10)[0, 0] == pytest.approx(1 / 6)
    mean = np.full((1, 101), 0.003)
    pmf = np.zeros(101)
    pmf[100] = 1.0
    calm = BoundModel.build(mean, mean, pmf, 0.010, ("t",))
    noisy = BoundModel.build(mean, mean, pmf, 0.010, ("t",), svc_cv2=np.full((1, 101), 1.0))
    assert queue_estimate(np.array([[1]]), noisy)[0] < queue_estimate(np.array([[1]]), calm)[0]


def test_dominated_by_matches_instances_to_dominating_types() -> None:
    dom = np.array([[True, True], [False, True]])  # type 0 dominates type 1
    configs = np.array([[0, 2], [1, 1], [2, 0], [1, 0], [0, 3]])
    np.testing.assert_array_equal(dominated_by(configs, np.array([1, 1]), dom), [True, True, False, True, False])
    # the identity preorder: sub-configurations only
    np.testing.assert_array_equal(dominated_by(configs, np.array([1, 1]), np.eye(2, dtype=bool)),
                                  [False, True, False, True, False])
    # a = 1 ms, b = 2 ms at every batch, the same samples: a dominates b, not conversely
    mean = np.array([[0.0, 1e-3, 1e-3], [0.0, 2e-3, 2e-3]])
    rel = np.tile(np.array([0.5, 1.5]), (2, 1, 1))
    np.testing.assert_array_equal(type_dominance(mean, rel, 10), dom)


class CheckingEvaluator(CountingEvaluator):
    """CountingEvaluator with single-rate checks (`below`), counted apart."""

    def __init__(self, bm: BoundModel) -> None:
        super().__init__(bm)
        self.checked: list[tuple[int, ...]] = []

    def below(self, config: np.ndarray, rate: float) -> bool:
        self.checked.append(tuple(int(x) for x in config))
        return bool(self.value(config) < rate)

    def value(self, config: np.ndarray) -> float:
        ub = proportional_bound(np.asarray(config)[None, :], self.bm)[0]
        share = config[1:].sum() / max(1, config.sum())
        return float(ub * (1.0 - 0.2 * share))


def test_kairos_plus_checks_and_dominance_keep_the_optimum() -> None:
    rng = np.random.default_rng(17)
    for _ in range(4):
        bm = _random_model(rng, n_types=4)
        c = _cands(bm, [0.526, 0.432, 0.149, 0.1664], 2.5)
        ex = select_exhaustive(c, CountingEvaluator(bm))
        plain = select_kairos_plus(c, CountingEvaluator(bm), order="bound", budget_share=None)
        ev = CheckingEvaluator(bm)
        kp = select_kairos_plus(c, ev, order="bound", budget_share=None)
        assert kp.qps == ex.qps
        assert kp.n_evals == len(ev.calls) <= plain.n_evals and kp.n_checks == len(ev.checked)
        assert len(set(ev.calls)) == len(ev.calls)  # no configuration searched twice
        # with the identity preorder, dominance is the sub-configuration rule: the same walk
        same = select_kairos_plus(c, CountingEvaluator(bm), order="bound", budget_share=None,
                                  dominates=np.eye(4, dtype=bool))
        assert same.evaluated == plain.evaluated
    # dominance: type 0 dominates type 1 and the evaluator agrees (more of type 0 never lowers QPS)
    configs = np.array([[2, 1], [1, 2], [0, 3]])
    ub = np.array([10.0, 9.0, 8.0])
    cands = Candidates(("a", "b"), np.array([1.0, 0.5]), 2.0, configs, np.full(3, 2.0), ub)
    value = {(2, 1): 6.0, (1, 2): 5.0, (0, 3): 4.0}
    calls: list[tuple[int, ...]] = []

    def ev2(x: np.ndarray) -> float:
        calls.append(tuple(int(v) for v in x))
        return value[calls[-1]]

    sel = select_kairos_plus(cands, ev2, dominates=np.array([[True, True], [False, True]]), budget_share=None)
    np.testing.assert_array_equal(sel.config, [2, 1])
    assert calls == [(2, 1)]  # (1, 2) and (0, 3) are dominated by (2, 1), though their bounds are above 6


def _large_and_small_model(aux_large_miss: float, *, prefer_base: bool) -> BoundModel:
    """Base and auxiliary; 90% of the queries batch 10 (both meet QoS), 10% batch 100 where the base
    takes 4.5 ms of the 5 ms QoS (0.5 ms of slack) and the auxiliary's p99 misses QoS: it misses on a
    share `aux_large_miss` of them without waiting. `prefer_base`: an idle base is the dispatcher's
    first choice for every batch, else the auxiliary is for batch 10."""
    mean = np.zeros((2, 101))
    mean[0] = np.interp(np.arange(101), [10, 100], [0.0010, 0.0045])
    mean[1] = np.interp(np.arange(101), [10, 100], [0.0020, 0.0048])
    p99 = mean * np.array([[1.0], [1.2]])
    pmf = np.zeros(101)
    pmf[[10, 100]] = [0.9, 0.1]
    miss = np.zeros((2, 101))
    miss[1, 100] = aux_large_miss
    cost = mean.copy() if prefer_base else np.where(np.arange(101) <= 10, 2.0, 1.0)[None, :] * mean[::-1]
    return BoundModel.build(mean, p99, pmf, QOS, ("base", "aux"), miss=miss, dispatch_cost=cost)


def _two_fallbacks_model(cheap_misses: bool) -> BoundModel:
    """`_large_and_small_model`'s base and mix with two auxiliary types that both miss the large
    queries' p99 but are on time on the mean: "a" misses 80% of them, "b" 10%. The dispatcher ranks
    the idle "a" cheaper for the large batch when `cheap_misses`, else "b"."""
    mean = np.zeros((3, 101))
    mean[0] = np.interp(np.arange(101), [10, 100], [0.0010, 0.0045])
    mean[1] = mean[2] = np.interp(np.arange(101), [10, 100], [0.0020, 0.0048])
    p99 = mean * np.array([[1.0], [1.2], [1.2]])
    pmf = np.zeros(101)
    pmf[[10, 100]] = [0.9, 0.1]
    miss = np.zeros((3, 101))
    miss[1, 100], miss[2, 100] = 0.8, 0.1
    cost = mean * np.array([[3.0], [1.0], [2.0]]) if cheap_misses else mean * np.array([[3.0], [2.0], [1.0]])
    return BoundModel.build(mean, p99, pmf, QOS, ("base", "a", "b"), miss=miss, dispatch_cost=cost)


def test_a_diverted_query_goes_where_the_dispatcher_ranks_it_cheapest() -> None:
    """A large query late for the one base goes to the free fallback the dispatcher ranks cheapest,
    not to the one that misses least: when that is the type missing 80%, the estimate is lower; with
    no costs in the model it takes the type of fewest misses (and counts a query that finds every
    instance of it busy as late, where the costs send it on to the other type: within 2%)."""
    configs = np.array([[1, 6, 6]])  # enough auxiliaries that one of each type is mostly free
    bm = _two_fallbacks_model(True)
    assert bm.band_idle_cost is not None
    worse = queue_estimate(configs, bm, other_bases=False)[0]
    better = queue_estimate(configs, dataclasses.replace(bm, band_idle_cost=bm.band_idle_cost[[0, 2, 1]]),
                            other_bases=False)[0]
    fewest = queue_estimate(configs, dataclasses.replace(bm, band_idle_cost=None), other_bases=False)[0]
    assert 0 < worse < 0.95 * better
    assert 0.95 * fewest > worse and fewest == pytest.approx(better, rel=0.02)


def test_auxiliaries_take_every_batch_their_p99_serves_within_qos() -> None:
    """A p99 table that is not monotone in the batch (a heavy tail drawn in one cell): the threshold
    B_k stops at the first batch that misses, the dispatcher's test (and `band_eligible`) takes every
    batch that passes, and the estimate lets the auxiliary take them."""
    mean = np.zeros((2, 31))
    mean[:, [10, 20, 30]] = 0.002
    feas = mean.copy()
    feas[1, 20] = 0.009  # the auxiliary's p99 misses QoS at batch 20 only
    pmf = np.zeros(31)
    pmf[[10, 20, 30]] = 1 / 3
    bm = BoundModel.build(mean, feas, pmf, 0.005, ("base", "aux"))
    assert bm.threshold_batch[1] == 10 and bm.coverage[1] == pytest.approx(1 / 3)
    assert bm.band_small is not None and bm.band_eligible is not None and bm.band_p is not None
    assert bm.band_small[1] @ bm.band_p == pytest.approx(1 / 3)
    assert bm.band_eligible[1] @ bm.band_p == pytest.approx(2 / 3)
    configs = np.array([[1, 2]])
    by_threshold = queue_estimate(configs, dataclasses.replace(bm, band_eligible=None))[0]
    assert queue_estimate(configs, bm)[0] > by_threshold > 0


def test_auxiliaries_share_a_band_in_proportion_to_their_capacity() -> None:
    """The docstring's case: 1 instance at 20/s and 2 at 15/s on the same band take 0.4 and 0.6 of it;
    a band only one of them can take is offered to it whole, and an absent type takes nothing where a
    present one can."""
    eligible = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # [type, band]; type 0 the base
    rate = np.array([50.0, 20.0, 15.0])
    split = _capacity_split([1, 2], {1: np.array([1.0, 1.0]), 2: np.array([2.0, 0.0])}, eligible, rate, 2)
    assert split[1][0] == pytest.approx([0.4, 1.0, 0.0]) and split[2][0] == pytest.approx([0.6, 0.0, 0.0])
    assert split[1][1] == pytest.approx([1.0, 1.0, 0.0]) and split[2][1] == pytest.approx([0.0, 0.0, 0.0])


def test_a_shared_pool_waits_with_the_variability_of_every_type_it_holds() -> None:
    """1 base (1 ms) + 2 auxiliaries (2 ms) sharing every query (QoS 6 ms, p99 = 1.2 × mean): the pool's
    waiting tail takes its C_s² over the services of both types, so the auxiliary's within-batch
    variability (`svc_cv2`) lowers the estimate although the base's services are unchanged."""
    def model(cv2_aux: float) -> BoundModel:
        mean = np.zeros((2, 11))
        mean[0, 10], mean[1, 10] = 0.001, 0.002
        pmf = np.zeros(11)
        pmf[10] = 1.0
        cv2 = np.zeros((2, 11))
        cv2[1, 10] = cv2_aux
        return BoundModel.build(mean, mean * 1.2, pmf, 0.006, ("base", "aux"), svc_cv2=cv2)

    est = [queue_estimate(np.array([[1, 2]]), model(v), other_bases=False)[0] for v in (0.0, 1.0, 4.0)]
    assert est[0] > 1.2 * est[1] and est[1] > 1.5 * est[2] > 0  # 1,519, 1,163 and 607 q/s


def test_a_mixed_pool_drains_at_its_instances_summed_rates() -> None:
    """θ·QoS of the waiting tail: c/E[S] − λ for identical instances (2 instances, E[S] = 0.1 s at
    10 queries/s: 2·(20 − 10) = 20 with C_s² = 0, QoS 1 s); a pool of a 25/s and an 8/s instance
    drains at 33/s, not at 2/E[S] of the pooled mean service."""
    one = np.ones(1)
    assert _decay_x(2 * one, one, 10 * one, 0 * one, 1.0)[0] == pytest.approx(20.0)
    # 13.5/s: 6/s on the fast one (0.24 Erlangs), 7.5/s on the slow one (0.9375): E[S] = 0.0872 s
    load = np.array([6 / 25 + 7.5 / 8])
    pooled = _decay_x(2 * one, load, 13.5 * one, 0 * one, 1.0)[0]
    assert pooled == pytest.approx(2 * (2 * 13.5 / load[0] - 13.5))
    assert _decay_x(2 * one, load, 13.5 * one, 0 * one, 1.0, capacity=33 * one)[0] == pytest.approx(2 * (33 - 13.5))


def test_a_matched_queue_drains_at_the_fluid_rate_unless_its_queries_are_held() -> None:
    """`_matched_pool`: a pool of every present instance drains a queue at the fluid rate (2 instances of
    100/s on the split, fluid 250/s, λ 150/s: 250/s and 1.2 Erlangs instead of 200/s and 1.5); a pool of
    some of them keeps the split's rates; queries held for their auxiliary join the matched queue in
    the share exp(−θ·hold), so a long hold leaves the split's rates and a short one the matched ones."""
    one = np.ones(1)
    args = (2 * one, 1.5 * one, 150 * one, 200 * one, 0 * one, 0.05)
    drain, load = _matched_pool(np.array([True]), *args, 250 * one, [])
    assert (drain[0], load[0]) == pytest.approx((250.0, 1.2))
    drain, load = _matched_pool(np.array([False]), *args, 250 * one, [])
    assert (drain[0], load[0]) == pytest.approx((200.0, 1.5))
    # a fluid rate below the split's summed rates changes nothing
    assert _matched_pool(np.array([True]), *args, 180 * one, [])[0][0] == pytest.approx(200.0)
    theta = _decay_x(2 * one, 1.2 * one, 150 * one, 0 * one, 0.05, capacity=250 * one)[0] / 0.05  # 200/s
    held = 60 * one[:, None]  # 60 of the 150 queries/s held for their auxiliary, on one band
    for hold, share in ((0.0, 1.0), (0.005, np.exp(-theta * 0.005)), (0.05, np.exp(-theta * 0.05))):
        drain, load = _matched_pool(np.array([True]), *args, 250 * one, [(held, np.array([hold]))])
        assert drain[0] == pytest.approx(200.0 + share * 50.0)
        assert load[0] == pytest.approx(1.5 - share * 0.3)
    assert _matched_pool(np.array([True]), *args, 250 * one, [(held, np.array([1.0]))])[0][0] == pytest.approx(200.0)


def test_queue_estimate_counts_large_queries_diverted_to_auxiliaries() -> None:
    """A large query that would wait past its slack on the one base goes to a free auxiliary, missing
    there only on that type's no-wait miss share: with many auxiliaries, the fewer the misses, the
    higher the estimate (the auxiliaries never raise it when they miss every large query)."""
    configs = np.array([[1, 6]])
    rates = {m: queue_estimate(configs, _large_and_small_model(m, prefer_base=False))[0] for m in (0.2, 0.6, 1.0)}
    assert rates[0.2] > rates[0.6] > rates[1.0] > 0
    off = queue_estimate(configs, _large_and_small_model(0.2, prefer_base=False), diversion=False)[0]
    assert off == pytest.approx(rates[1.0])
    assert rates[0.2] <= upper_bound(configs, _large_and_small_model(0.2, prefer_base=False))[0]


def _late_batches_model(aux_miss: tuple[float, float]) -> BoundModel:
    """One base meeting QoS (5 ms) on every batch and an auxiliary whose p99 misses it on batches 90
    and 100 (one must band of the two), missing `aux_miss` of those without waiting; 80% of the queries
    batch 10, which both serve within QoS. On the base batch 100 has the least slack (1.5 ms against
    2.4 ms for batch 90), so the queries that wait past their slack are mostly batch 100."""
    mean = np.zeros((2, 101))
    mean[:, 10] = 0.0010
    mean[0, [90, 100]] = [0.0026, 0.0035]
    mean[1, [90, 100]] = [0.0040, 0.0048]
    p99 = mean.copy()
    p99[1, [90, 100]] = 0.0060
    pmf = np.zeros(101)
    pmf[[10, 90, 100]] = [0.8, 0.1, 0.1]
    miss = np.zeros((2, 101))
    miss[1, [90, 100]] = aux_miss
    return BoundModel.build(mean, p99, pmf, QOS, ("base", "aux"), miss=miss, dispatch_cost=mean * np.array([[2.0], [1.0]]))


def test_diverted_queries_miss_batch_by_batch() -> None:
    """`band_tail_div` weighs each batch's waiting tail on the base by the auxiliary's miss on that
    batch; the estimate then counts the misses of the queries diverted to the auxiliary on the batches
    that wait past their slack (the largest), not on the band's average: with the auxiliary missing 90%
    of batch 100 and 10% of batch 90 it rates lower than with the band's average miss, and the two agree
    when the auxiliary misses both alike."""
    bm = _late_batches_model((0.1, 0.9))
    assert bm.band_tail_div is not None and bm.band_tail is not None and bm.band_p is not None
    must = int(np.flatnonzero(np.isclose(bm.band_p, 0.2))[0])
    x = 8  # a point of TAIL_GRID
    slack = np.array([QOS - 0.0026, QOS - 0.0035]) / QOS
    weights = 0.1 * np.exp(-TAIL_GRID[x] * slack)
    assert bm.band_tail[0, must, x] == pytest.approx(weights.sum())
    assert bm.band_tail_div[0, 1, must, x] == pytest.approx(weights @ np.array([0.1, 0.9]))
    configs = np.array([[1, 6]])
    by_batch = queue_estimate(configs, bm)[0]
    by_band = queue_estimate(configs, dataclasses.replace(bm, band_tail_div=None))[0]
    assert 0 < by_batch < by_band
    flat = _late_batches_model((0.5, 0.5))
    flat_by_band = queue_estimate(configs, dataclasses.replace(flat, band_tail_div=None))[0]
    assert queue_estimate(configs, flat)[0] == pytest.approx(flat_by_band)


def test_queue_estimate_loads_a_base_the_dispatcher_prefers() -> None:
    """When an idle base is the dispatcher's first choice, it takes small queries whenever it is free,
    and the large ones then wait behind them: one base with six auxiliaries rates lower than when the
    auxiliaries are preferred for the small queries, and a second base helps more there."""
    one = np.array([[1, 6]])
    preferred = queue_estimate(one, _large_and_small_model(1.0, prefer_base=True))[0]
    not_preferred = queue_estimate(one, _large_and_small_model(1.0, prefer_base=False))[0]
    assert 0 < preferred < 0.8 * not_preferred
    two = queue_estimate(np.array([[2, 6]]), _large_and_small_model(1.0, prefer_base=True))[0]
    assert two > 1.5 * preferred
    # without dispatch costs the split is the fluid one, as before
    bm = _large_and_small_model(1.0, prefer_base=True)
    plain = BoundModel.build(np.asarray(bm.batch_lat_s), np.asarray(bm.batch_lat_s), np.ones(2) / 2, QOS, ("b", "a"))
    assert plain.band_pref is None


def test_an_idle_base_that_misses_the_p99_test_is_not_preferred() -> None:
    """The base costs the dispatcher less than the auxiliary on every batch (C·L), but its p99 misses QoS
    on batch 100 (30% of the queries), where it misses 2% without waiting; the auxiliary's p99 meets
    QoS there. The dispatcher ranks an idle instance by its QoS tiers first, so it sends batch 100 to a
    free auxiliary: the base is preferred on batch 10 only, and the estimate is far higher than if the
    base took batch 100 whenever it is free."""
    mean = np.zeros((2, 101))
    mean[0] = np.interp(np.arange(101), [10, 100], [0.0010, 0.0030])
    mean[1] = np.interp(np.arange(101), [10, 100], [0.0015, 0.0040])
    p99 = mean.copy()
    p99[0, 100] = 0.006
    pmf = np.zeros(101)
    pmf[[10, 100]] = [0.7, 0.3]
    miss = np.zeros((2, 101))
    miss[0, 100], miss[1, 10] = 0.02, 0.03  # the auxiliary serves less of the mix within QoS: type 0 is the base
    bm = BoundModel.build(mean, p99, pmf, QOS, ("base", "aux"), miss=miss, dispatch_cost=mean * np.array([[1.0], [2.0]]))
    assert bm.band_pref is not None and bm.band_p is not None
    np.testing.assert_array_equal(bm.band_p, [0.3, 0.7])  # bands: batch 100, batch 10
    np.testing.assert_array_equal(bm.band_pref[0][1], [0.0, 1.0])
    # and it holds a batch-100 query for a busy auxiliary as long as that one's p99 stays within QoS
    # (QoS 5 ms less its 4 ms), not only while C·L prefers it (never, here)
    assert bm.band_hold is not None
    np.testing.assert_allclose(bm.band_hold[0][1], [0.001, 0.0], atol=1e-12)
    fleet = np.array([[1, 2]])
    assert base_types(fleet, bm)[0] == 0
    by_raw_cost = queue_estimate(fleet, dataclasses.replace(bm, band_pref=np.ones_like(bm.band_pref)))[0]
    assert queue_estimate(fleet, bm)[0] > 1.5 * by_raw_cost > 0


def _tailed_base_model(aux_cheaper_on_large: bool) -> BoundModel:
    """A base whose p99 misses QoS on batch 100 (a 0.5% tail; 3 ms mean, 5 ms QoS) and a cheaper
    auxiliary that meets QoS there on the mean (4.5 ms) but misses on 30% of those queries; 90% of the
    queries batch 10, which both serve well within QoS. `aux_cheaper_on_large`: on an idle fleet the
    dispatcher ranks the auxiliary first for batch 100 (both fail the p99 test there), else the base."""
    mean = np.zeros((2, 101))
    mean[0] = np.interp(np.arange(101), [10, 100], [0.0010, 0.0030])
    mean[1] = np.interp(np.arange(101), [10, 100], [0.0015, 0.0045])
    p99 = mean * 2.0
    p99[:, :11] = mean[:, :11]
    pmf = np.zeros(101)
    pmf[[10, 100]] = [0.9, 0.1]
    miss = np.zeros((2, 101))
    miss[0, 100], miss[1, 100] = 0.005, 0.3
    cost = mean * np.array([[1.0], [0.1 if aux_cheaper_on_large else 1.0]])
    return BoundModel.build(mean, p99, pmf, QOS, ("base", "aux"), miss=miss, dispatch_cost=cost)


def test_idle_miss_follows_the_dispatchers_choice_on_an_idle_fleet() -> None:
    """Batch 100 goes to the present type the dispatcher ranks first on an idle fleet: the auxiliary
    when it is cheaper there (10% × 30% = 3% of the queries miss: no rate meets a p99 target, and the
    estimate is 0), the base otherwise (10% × 0.5%); a base alone misses 0.05%."""
    configs = np.array([[1, 1], [2, 0], [0, 2]])
    cheap = _tailed_base_model(aux_cheaper_on_large=True)
    np.testing.assert_allclose(idle_miss(configs, cheap), [0.03, 0.0005, 0.03])
    est = queue_estimate(configs, cheap)
    assert est[0] == 0.0 and est[1] > 0.0
    dear = _tailed_base_model(aux_cheaper_on_large=False)
    np.testing.assert_allclose(idle_miss(configs, dear), [0.0005, 0.0005, 0.03])
    assert queue_estimate(configs, dear)[0] > 0.0
    # without the dispatcher's costs nothing is known of its idle choice
    plain = BoundModel.build(np.asarray(cheap.batch_lat_s), np.asarray(cheap.batch_lat_s), np.ones(2) / 2, QOS, ("b", "a"))
    np.testing.assert_array_equal(idle_miss(configs, plain), np.zeros(3))


def test_kairos_plus_budget_starts_from_the_kairos_choice() -> None:
    """With a budget the walk starts at `select_kairos`'s choice, simulates at least `plus_limit`
    configurations unless it ends by pruning and at most `plus_stretch`, keeps the best evaluated, and
    says whether it was exact; it walks on past the budget while nothing evaluated serves any rate."""
    from kairosd.planner import kairos_order

    rng = np.random.default_rng(23)
    for _ in range(3):
        bm = _random_model(rng, n_types=4)
        c = _cands(bm, [0.526, 0.432, 0.149, 0.1664], 2.5)
        assert int(kairos_order(c)[0]) == int(np.flatnonzero((c.configs == select_kairos(c).config).all(axis=1))[0])
        ev = CountingEvaluator(bm)
        kp = select_kairos_plus(c, ev, budget_share=0.1)
        assert ev.calls[0] == tuple(int(x) for x in select_kairos(c).config)
        assert plus_limit(len(c), 0.1) <= plus_stretch(len(c), 0.1) <= max(plus_limit(len(c), 0.1), 0.2 * len(c))
        assert kp.n_configs == len(ev.calls) <= plus_stretch(len(c), 0.1)
        assert kp.qps == max(ev(np.array(x)) for x in set(ev.calls))
        full = select_kairos_plus(c, CountingEvaluator(bm), budget_share=None)
        assert full.exact and (kp.exact or kp.n_configs >= plus_limit(len(c), 0.1))
    configs = np.array([[2, 0], [1, 2], [0, 4]])
    cands = Candidates(("a", "b"), np.array([1.0, 0.5]), 2.0, configs, np.full(3, 2.0), np.array([10.0, 9.0, 8.0]),
                       np.array([9.0, 8.0, 7.0]))
    value = {(2, 0): 0.0, (1, 2): 0.0, (0, 4): 3.0}
    sel = select_kairos_plus(cands, lambda x: value[tuple(int(v) for v in x)], budget_share=0.1)
    np.testing.assert_array_equal(sel.config, [0, 4])
    assert sel.n_configs == 3 and sel.exact
    with pytest.raises(ConfigError, match="budget_share"):
        select_kairos_plus(cands, lambda x: 1.0, budget_share=0.0)


def test_kairos_plus_stops_at_its_time_limit_with_the_best_so_far() -> None:
    """The walk simulates no further fleet once the time so far plus the longest a fleet has taken
    would pass `time_limit_s`: it returns the best of those it simulated, says it timed out (not
    exact), and always simulates the first; without the limit the same walk goes on."""
    rng = np.random.default_rng(29)
    bm = _random_model(rng, n_types=4)
    c = _cands(bm, [0.526, 0.432, 0.149, 0.1664], 2.5)
    full_eval = CountingEvaluator(bm)
    full = select_kairos_plus(c, full_eval, budget_share=None)
    assert full.exact and not full.timed_out and len(full_eval.calls) >= 3

    class StepClock:
        """Seconds that pass only when an evaluation runs: one per evaluation."""

        def __init__(self, evaluator: CountingEvaluator) -> None:
            self.evaluator = evaluator

        def __call__(self) -> float:
            return float(len(self.evaluator.calls))

    # one second a fleet: a limit of 2.9 s leaves room for two (the third would end at 3 s), 2 s for two
    for limit, fleets in ((0.5, 1), (1.0, 1), (1.5, 1), (2.0, 2), (2.9, 2)):
        ev = CountingEvaluator(bm)
        kp = select_kairos_plus(c, ev, budget_share=None, time_limit_s=limit, clock=StepClock(ev))
        assert ev.calls == full_eval.calls[:fleets], limit
        assert kp.timed_out and not kp.exact and kp.n_evals == fleets
        assert kp.qps == max(CountingEvaluator(bm)(np.array(x)) for x in ev.calls)
    # a limit the walk never reaches changes nothing
    ev = CountingEvaluator(bm)
    kp = select_kairos_plus(c, ev, budget_share=None, time_limit_s=1e9, clock=StepClock(ev))
    assert ev.calls == full_eval.calls and kp.exact and not kp.timed_out
    with pytest.raises(ConfigError, match="time_limit_s"):
        select_kairos_plus(c, CountingEvaluator(bm), time_limit_s=0.0)


def test_plus_limit_lets_a_second_fleet_check_the_first() -> None:
    """⌊share·N⌋ and at least one; two while two stay within twice the share."""
    assert [plus_limit(n, 0.1) for n in (1, 5, 9, 10, 18, 29, 30, 45)] == [1, 1, 1, 2, 2, 2, 3, 4]
    assert plus_limit(18, 0.2) == 3 and plus_limit(4, 1.0) == 4


def test_plus_stretch_adds_at_most_two_within_twice_the_share() -> None:
    """`plus_limit` and up to `PLUS_STRETCH` (2) more, within ⌊2·share·N⌋."""
    assert [plus_stretch(n, 0.1) for n in (1, 5, 9, 10, 22, 29, 30, 45, 65)] == [1, 1, 1, 2, 4, 4, 5, 6, 8]
    assert plus_stretch(65, 0.1, extra=0) == plus_limit(65, 0.1) and plus_stretch(65, 0.1, extra=20) == 13


def test_estimate_error_is_the_largest_relative_miss_of_the_estimate() -> None:
    est = np.array([1895.0, 1734.0, 0.0])
    assert estimate_error({0: 1755.0, 1: 1712.0}, est) == pytest.approx(140.0 / 1895.0)
    assert estimate_error({1: 1900.0, 2: 50.0}, est) == pytest.approx(166.0 / 1734.0)  # no estimate: not counted
    assert estimate_error({}, est) == 0.0


def _walk_cands(est: list[float]) -> Candidates:
    """Twenty two-type fleets of 20 instances (none a sub-configuration of another), a loose bound."""
    configs = np.array([[k, 20 - k] for k in range(20)])
    return Candidates(("a", "b"), np.array([1.0, 1.0]), 20.0, configs, np.full(20, 20.0), np.full(20, 1e6),
                      np.asarray(est, dtype=float))


def test_kairos_plus_walks_past_its_budget_while_the_estimate_errs_enough() -> None:
    """Budget 10% of 20 fleets: two, and up to four while the next fleet's estimate, raised by the largest
    error the estimate made on the fleets evaluated, reaches the best QPS so far. Here the estimate
    overrates the first two (100 → 90, 95 → 80: 15.8% off) and underrates the third (85 → 95, found
    only past the budget); the fourth, at 60·1.158 < 95, is not simulated."""
    est = [100.0, 95.0, 85.0, 60.0] + [50.0 - k for k in range(16)]
    value = dict(zip(range(20), [90.0, 80.0, 95.0, 70.0] + [40.0] * 16, strict=True))
    calls: list[int] = []

    def evaluate(x: np.ndarray) -> float:
        calls.append(int(x[0]))
        return value[int(x[0])]

    sel = select_kairos_plus(_walk_cands(est), evaluate, budget_share=0.1)
    assert calls == [0, 1, 2] and sel.n_configs == 3 and not sel.exact
    np.testing.assert_array_equal(sel.config, [2, 18])
    # an estimate right on the fleets it was checked on: the walk stops at its budget
    calls.clear()
    value = dict(enumerate(est))
    sel = select_kairos_plus(_walk_cands(est), evaluate, budget_share=0.1)
    assert calls == [0, 1] and sel.qps == 100.0
    # the paper's walk by bound keeps its budget
    calls.clear()
    value = dict(zip(range(20), [90.0, 80.0, 95.0, 70.0] + [40.0] * 16, strict=True))
    select_kairos_plus(_walk_cands(est), evaluate, budget_share=0.1, order="bound")
    assert len(calls) == 2


def test_kairos_plus_switches_only_on_a_fleet_better_on_every_stream() -> None:
    """With per-stream values (common random numbers), a later fleet with a higher mean from some
    streams only does not replace the earlier one; one better on every stream does."""
    configs = np.array([[2, 0], [1, 2], [0, 4]])
    cands = Candidates(("a", "b"), np.array([1.0, 0.5]), 2.0, configs, np.full(3, 2.0), np.array([10.0, 9.0, 8.0]),
                       np.array([9.0, 8.0, 7.0]))

    class PairedEvaluator:
        def __init__(self, table: dict[tuple[int, ...], list[float]]) -> None:
            self.table = table

        def values(self, x: np.ndarray) -> np.ndarray:
            return np.array(self.table[tuple(int(v) for v in x)])

        def __call__(self, x: np.ndarray) -> float:
            return float(self.values(x).mean())

    noisy = PairedEvaluator({(2, 0): [5.0, 6.0, 7.0], (1, 2): [4.5, 7.0, 7.3], (0, 4): [1.0, 1.0, 1.0]})
    sel = select_kairos_plus(cands, noisy, budget_share=None)
    np.testing.assert_array_equal(sel.config, [2, 0])
    assert sel.qps == pytest.approx(6.0)
    clear = PairedEvaluator({(2, 0): [5.0, 6.0, 7.0], (1, 2): [5.5, 6.0, 7.3], (0, 4): [1.0, 1.0, 1.0]})
    np.testing.assert_array_equal(select_kairos_plus(cands, clear, budget_share=None).config, [1, 2])


def test_kairos_plus_checks_a_fleet_stream_by_stream_against_the_incumbent() -> None:
    """With per-stream values, the one-rate check before a search is paired: each stream at the
    incumbent's value on it, moved a tenth of the way to the incumbent's mean (`_check_rates`). A fleet
    a little below the incumbent on the streams that count is dropped without a search, though on an
    easy stream it serves more than the incumbent's mean, and on the stream where every fleet does
    badly a little more than the incumbent; then at 0.7 of the way, which rules out a fleet far below
    the incumbent on most streams; a fleet above it on one stream is searched."""
    configs = np.array([[2, 0], [1, 2], [0, 4]])
    cands = Candidates(("a", "b"), np.array([1.0, 0.5]), 2.0, configs, np.full(3, 2.0), np.array([900.0, 899.0, 898.0]),
                       np.array([9.0, 8.0, 7.0]))

    class PairedCheckingEvaluator:
        def __init__(self, table: dict[tuple[int, ...], list[float]]) -> None:
            self.table = table
            self.searched: list[tuple[int, ...]] = []
            self.rates: list[np.ndarray] = []

        def values(self, x: np.ndarray) -> np.ndarray:
            return np.array(self.table[tuple(int(v) for v in x)])

        def __call__(self, x: np.ndarray) -> float:
            self.searched.append(tuple(int(v) for v in x))
            return float(self.values(x).mean())

        def below(self, x: np.ndarray, rate: np.ndarray) -> bool:
            self.rates.append(np.asarray(rate, dtype=float))
            return bool(np.all(self.values(x) < rate))

    incumbent = [400.0, 420.0, 30.0]  # mean 283.3
    ev = PairedCheckingEvaluator({(2, 0): incumbent, (1, 2): [380.0, 400.0, 32.0], (0, 4): [410.0, 100.0, 100.0]})
    sel = select_kairos_plus(cands, ev, budget_share=None)
    np.testing.assert_array_equal(sel.config, [2, 0])
    assert ev.searched == [(2, 0), (0, 4)] and sel.n_checks == 2
    np.testing.assert_allclose(ev.rates[0], [388.333, 406.333, 55.333], atol=1e-3)
    assert ev.rates[0].mean() == pytest.approx(np.mean(incumbent))
    # far below on two streams and far above on the one the incumbent fails on: the first check passes it,
    # the second (0.7 of the way to the incumbent's mean) rules it out; the fleet above on one stream
    # passes both and is searched
    ev = PairedCheckingEvaluator({(2, 0): incumbent, (1, 2): [300.0, 310.0, 150.0], (0, 4): [410.0, 100.0, 100.0]})
    np.testing.assert_array_equal(select_kairos_plus(cands, ev, budget_share=None).config, [2, 0])
    assert ev.searched == [(2, 0), (0, 4)] and len(ev.rates) == 4
    np.testing.assert_allclose(ev.rates[1], [318.333, 324.333, 207.333], atol=1e-3)


def test_kairos_plus_adds_streams_when_they_do_not_order_two_fleets() -> None:
    """A fleet that shines on the first streams and fails QoS on later ones (a tail near the 1% budget)
    against a steady one: the streams do not order them, so streams are added (three at a time, up to
    the evaluator's nine) and the higher mean over all of them wins. Without
    more streams the walk's first fleet stays; a fleet far below the best triggers nothing."""
    configs = np.array([[2, 0], [1, 2], [0, 4]])
    cands = Candidates(("a", "b"), np.array([1.0, 0.5]), 2.0, configs, np.full(3, 2.0), np.array([900.0, 899.0, 898.0]),
                       np.array([9.0, 8.0, 7.0]))
    fragile = [410.0, 300.0, 430.0, 0.0, 420.0, 400.0, 415.0, 0.0, 425.0]
    steady = [405.0, 405.0, 400.0, 404.0, 398.0, 402.0, 401.0, 403.0, 399.0]

    class StreamsEvaluator:
        """Per-stream values from a table; `add_streams` reveals more of each row, up to nine."""

        def __init__(self, table: dict[tuple[int, ...], list[float]], streams: int = 3, extensible: bool = True) -> None:
            self.table = table
            self.streams = streams
            self.extensible = extensible
            self.added = 0

        def values(self, x: np.ndarray) -> np.ndarray:
            return np.array(self.table[tuple(int(v) for v in x)][: self.streams])

        def __call__(self, x: np.ndarray) -> float:
            return float(self.values(x).mean())

        def add_streams(self, n: int) -> bool:
            if not self.extensible or self.streams >= 9:
                return False
            self.streams, self.added = min(self.streams + n, 9), self.added + 1
            return True

    table = {(2, 0): fragile, (1, 2): steady, (0, 4): [100.0] * 9}
    ev = StreamsEvaluator(table)
    sel = select_kairos_plus(cands, ev, budget_share=None)
    np.testing.assert_array_equal(sel.config, [1, 2])
    assert ev.streams == 9 and ev.added == 2  # still not ordered at six: all nine, and the means decide
    assert sel.qps == pytest.approx(np.mean(steady))
    stuck = StreamsEvaluator(table, extensible=False)
    np.testing.assert_array_equal(select_kairos_plus(cands, stuck, budget_share=None).config, [2, 0])
    # a later fleet whose mean is far below the best's is not worth more streams
    far = StreamsEvaluator({(2, 0): [400.0, 410.0, 420.0] * 3, (1, 2): [200.0, 430.0, 100.0] * 3, (0, 4): [1.0] * 9})
    np.testing.assert_array_equal(select_kairos_plus(cands, far, budget_share=None).config, [2, 0])
    assert far.added == 0


def test_kairos_plus_values_a_fragile_fleet_on_every_stream() -> None:
    """A fleet whose idle dispatch already misses QoS on half the p99 target's ε or more is valued on
    every stream the evaluator can add as soon as it is evaluated: here its first three streams are
    its lucky ones (above the steady fleet's on each, so no duel would start) and the later ones fail
    QoS; on all nine the steady fleet's mean is higher and wins. The same fleet not marked fragile
    keeps its place; a share below half of ε marks nothing."""
    configs = np.array([[2, 0], [1, 2], [0, 4]])
    fragile = [610.0, 600.0, 605.0, 0.0, 600.0, 0.0, 590.0, 610.0, 0.0]
    steady = [470.0] * 9
    table = {(2, 0): fragile, (1, 2): steady, (0, 4): [100.0] * 9}

    class StreamsEvaluator:
        def __init__(self) -> None:
            self.streams = 3

        def values(self, x: np.ndarray) -> np.ndarray:
            return np.array(table[tuple(int(v) for v in x)][: self.streams])

        def __call__(self, x: np.ndarray) -> float:
            return float(self.values(x).mean())

        def add_streams(self, n: int) -> bool:
            if self.streams >= 9:
                return False
            self.streams = min(self.streams + n, 9)
            return True

    def cands(idle: list[float] | None) -> Candidates:
        return Candidates(("a", "b"), np.array([1.0, 0.5]), 2.0, configs, np.full(3, 2.0),
                          np.array([900.0, 899.0, 898.0]), np.array([9.0, 8.0, 7.0]), None,
                          None if idle is None else np.array(idle))

    marked = cands([0.0078, 0.001, 0.0])
    assert marked.fragile(0) and not marked.fragile(1)
    ev = StreamsEvaluator()
    sel = select_kairos_plus(marked, ev, budget_share=None)
    np.testing.assert_array_equal(sel.config, [1, 2])
    assert ev.streams == 9 and sel.qps == pytest.approx(470.0)
    for unmarked in (cands(None), cands([0.0049, 0.001, 0.0])):
        ev = StreamsEvaluator()
        np.testing.assert_array_equal(select_kairos_plus(unmarked, ev, budget_share=None).config, [2, 0])
        assert ev.streams == 3


def test_candidates_carry_the_idle_miss_share() -> None:
    """`make_candidates` records each configuration's idle-miss share (`idle_miss`), and `rank` keeps it
    aligned with the configurations."""
    from kairosd.planner import rank

    bm = _tailed_base_model(aux_cheaper_on_large=True)
    c = make_candidates(bm, [1.0, 0.4], 2.0, maximal_only=False)
    assert c.idle_miss is not None and len(c.idle_miss) == len(c) and c.idle_miss.max() > 0.0
    np.testing.assert_allclose(c.idle_miss, idle_miss(c.configs, bm))
    assert [c.fragile(i) for i in range(len(c))] == [bool(m >= 0.005) for m in c.idle_miss]
    r = rank(c)
    assert r.idle_miss is not None
    np.testing.assert_allclose(r.idle_miss, idle_miss(r.configs, bm))


def test_a_search_starts_at_the_rate_kairos_ranks_the_fleet_at() -> None:
    """`Candidates.search_start` (where Kairos+'s max-QPS searches start): each candidate's `kairos_score`,
    between its estimate and its bound; None for a configuration that is not a candidate."""
    from kairosd.planner.selectors import kairos_score

    bm = _tailed_base_model(aux_cheaper_on_large=True)
    c = make_candidates(bm, [1.0, 0.4], 2.0, maximal_only=False)
    assert c.est_qps is not None
    starts = np.array([c.search_start(x) for x in c.configs], dtype=float)
    np.testing.assert_allclose(starts, kairos_score(c.est_qps, c.ub_qps))
    live = c.est_qps > 0
    assert live.any() and np.any(starts[live] > c.est_qps[live])
    assert np.all(starts >= c.est_qps) and np.all(starts <= c.ub_qps * (1 + 1e-12))
    assert c.search_start(np.array([99, 99])) is None
    assert dataclasses.replace(c, est_qps=None).search_start(c.configs[0]) is None


def test_seeds_evaluator_adds_streams_up_to_its_limit() -> None:
    """`SeedsEvaluator.add_streams`: streams from `more`, never beyond `max_streams`; a configuration
    valued before is valued on the new streams when next asked for; `progress` hears of each run."""
    from kairosd.sim import SeedsEvaluator

    wl = workload.load_kairos()
    make = lambda i: workload.sim_setup(wl, "rm2", n_queries=300, seed=10 * i)  # noqa: E731
    calls: list[tuple[int, int]] = []
    ev = SeedsEvaluator((make(0), make(1)), workers=1, more=make, max_streams=3,
                        progress=lambda done, total: calls.append((done, total)))
    x = np.array([1, 0, 2, 0])
    first = ev.values(x)
    assert len(first) == 2 and not SeedsEvaluator((make(0),), workers=1).add_streams(1)
    assert calls == [(1, 2), (2, 2)]  # one run per stream, reported as it ends
    assert ev.add_streams(5) and len(ev.setups) == 3 and not ev.add_streams(1)
    again = ev.values(x)
    assert len(again) == 3 and again[:2].tolist() == first.tolist() and again[2] > 0
    assert calls[2:] == [(1, 1)]  # only the new stream is run


def _overflow_model() -> BoundModel:
    """Three types; 45% of the queries batch 10, 45% batch 100, 10% batch 200. The base "g" serves
    every batch, but on batch 100 its p99 is 0.2 ms over QoS (it misses 3% of them); "c" meets QoS on
    batch 100's p99 (no miss) and is the dispatcher's first choice there, and misses batch 200 on its
    mean; "t", slow and cheap, takes batch 100 on time on its mean only (it misses 30%). The
    dispatcher ranks an idle "t" below an idle "g" for batch 100 (both fail the p99 test there)."""
    mean = np.zeros((3, 201))
    for k, lat in enumerate([(0.0010, 0.0020, 0.0030), (0.0015, 0.0030, 0.0060), (0.0020, 0.0040, 0.0070)]):
        mean[k] = np.interp(np.arange(201), [10, 100, 200], lat)
    p99 = mean * 1.2
    p99[0, 100], p99[1, 100], p99[2, 100] = 0.0052, 0.0049, 0.0080
    pmf = np.zeros(201)
    pmf[[10, 100, 200]] = [0.45, 0.45, 0.10]
    miss = np.zeros((3, 201))
    miss[0, 100], miss[2, 100] = 0.03, 0.30
    miss[1:, 200] = 1.0
    cost = mean * np.array([[1.5], [0.5], [0.6]])
    return BoundModel.build(mean, p99, pmf, QOS, ("g", "c", "t"), miss=miss, dispatch_cost=cost)


def test_what_an_auxiliary_leaves_goes_to_the_cheapest_free_column_of_the_best_tier() -> None:
    """A batch-100 query that finds the one "c" busy goes to the free column the dispatcher ranks
    cheapest, "t", where it misses 30% of the time, not to the base's 3%: the estimate is far lower
    than with "t" ranked below the base (which then takes it), and below the same fleet without "t"."""
    bm = _overflow_model()
    assert bm.band_idle_cost is not None
    configs = np.array([[2, 1, 1]])
    cheap_t = queue_estimate(configs, bm)[0]
    costly_t = queue_estimate(configs, dataclasses.replace(bm, band_idle_cost=bm.band_idle_cost[[2, 1, 0]]))[0]
    assert 0 < cheap_t < 0.9 * costly_t
    assert cheap_t < 0.9 * queue_estimate(np.array([[2, 1, 0]]), bm)[0]


def test_plan_over_a_daemon_config_judges_qos_as_its_dispatcher_does(capsys: pytest.CaptureFixture[str],
                                                                      tmp_path: Path) -> None:
    """`--config` whose dispatcher judges feasibility on the mean (`tail = false`): the plan does too, unless
    `--feasibility` says otherwise; configs/local.toml's dispatcher tests the p99."""
    from kairosd.cli import main

    text = (REPO / "configs" / "local.toml").read_text()
    text = text.replace('repository = "model_repository"', f'repository = "{REPO / "model_repository"}"')
    text = text.replace('profiles = "profiles/local"', f'profiles = "{REPO / "profiles" / "local"}"')
    mean_config = tmp_path / "mean.toml"
    mean_config.write_text(text + "\n[scheduler.policy_params]\ntail = false\n")
    plan = ["plan", "--budget", "0.5", "--model", "dlrm", "--selector", "kairos", "--no-eval", "--top", "1"]
    assert main([*plan, "--config", str(mean_config)]) == 0
    assert "(judged on mean)" in capsys.readouterr().out
    assert main([*plan, "--config", str(mean_config), "--feasibility", "p99"]) == 0
    assert "(judged on p99)" in capsys.readouterr().out
    assert main([*plan, "--config", str(REPO / "configs" / "local.toml")]) == 0
    assert "(judged on p99)" in capsys.readouterr().out
    # Kairos+'s simulator dispatches as the config does: its policy_params and margin, tail as judged
    import argparse

    from kairosd.commands import plan as plan_cmd

    parser = argparse.ArgumentParser()
    plan_cmd.add_arguments(parser)
    inputs = plan_cmd.resolve(parser.parse_args([*plan[1:], "--config", str(mean_config)]))
    assert inputs.setups[0].policy == "kairos"
    assert dict(inputs.setups[0].policy_params) == {"tail": False, "margin_s": 0.001}  # local.toml: margin_ms = 1
    inputs = plan_cmd.resolve(parser.parse_args([*plan[1:], "--config", str(mean_config), "--feasibility", "p99"]))
    assert dict(inputs.setups[0].policy_params) == {"tail": True, "margin_s": 0.001}
    inputs = plan_cmd.resolve(parser.parse_args([*plan[1:], "--config", str(mean_config), "--policy", "fcfs"]))
    assert inputs.setups[0].policy == "fcfs" and dict(inputs.setups[0].policy_params) == {}


def _pool_and_fallback_model(fallback_miss: float) -> BoundModel:
    """A base and an auxiliary "a" that both meet QoS (5 ms) on their p99 for every batch, and a cheap
    type "b" whose p99 misses QoS on batch 100 (its mean 4.6 ms meets it) and which misses a share
    `fallback_miss` of those queries without waiting; half the queries batch 10, which all three serve
    within QoS. Batch 100 waits in the pool of the base and "a" (0.8 to 1 ms of slack)."""
    mean = np.zeros((3, 101))
    mean[:, 10] = [0.0008, 0.0009, 0.0010]
    mean[:, 100] = [0.0040, 0.0042, 0.0046]
    p99 = mean * np.array([[1.0], [1.0], [1.2]])
    pmf = np.zeros(101)
    pmf[[10, 100]] = [0.5, 0.5]
    miss = np.zeros((3, 101))
    miss[2, 100] = fallback_miss
    return BoundModel.build(mean, p99, pmf, QOS, ("base", "a", "b"), miss=miss, dispatch_cost=mean)


def test_a_pool_query_late_for_its_pool_goes_to_a_free_instance_of_another_type() -> None:
    """Batch 100 waits for the base and "a" only; a query that would wait past its slack there goes,
    as a must query does, to a free "b", where it misses only on b's no-wait miss share: the fewer
    those misses, the higher the estimate, and when "b" misses every such query the estimate is the
    one without diversion."""
    configs = np.array([[1, 1, 6]])
    rates = {m: queue_estimate(configs, _pool_and_fallback_model(m))[0] for m in (0.05, 0.5, 1.0)}
    assert rates[0.05] > rates[0.5] > rates[1.0] > 0
    off = queue_estimate(configs, _pool_and_fallback_model(0.05), diversion=False)[0]
    assert off == pytest.approx(rates[1.0])
    assert rates[0.05] <= upper_bound(configs, _pool_and_fallback_model(0.05))[0]

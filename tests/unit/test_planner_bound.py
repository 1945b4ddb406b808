"""Planner bounds: the LP-dual `upper_bound` on hand-worked cases (one base + one auxiliary, two
auxiliaries, a fleet whose auxiliary specialises) against the paper's `proportional_bound`, the exact
fluid LP and a simulated run; its validity and tightness on random fleets."""

from __future__ import annotations

import numpy as np
import pytest

from kairosd.dispatch import make_policy
from kairosd.errors import ConfigError
from kairosd.planner import (
    BoundModel,
    dual_denominator,
    dual_vectors,
    fluid_bound,
    fluid_solution,
    miss_from_samples,
    proportional_bound,
    upper_bound,
)
from kairosd.profiles import ProfilePoint, ProfileTable
from kairosd.sim import ServiceModel, fleet_columns, max_qps, poisson_stream

QOS = 0.005


def two_point(slack: float = 0.0) -> tuple[BoundModel, np.ndarray, np.ndarray]:
    """The docstring's worked example: half batch 10, half batch 100; base 1 ms / 3 ms, auxiliary
    2 ms / 10 ms (misses the 5 ms QoS at batch 100). (bound model, latency [type, batch], pmf)."""
    lat = np.zeros((2, 101))
    lat[0] = np.interp(np.arange(101), [10, 100], [0.001, 0.003])
    lat[1] = np.interp(np.arange(101), [10, 100], [0.002, 0.010])
    pmf = np.zeros(101)
    pmf[[10, 100]] = 0.5
    return BoundModel.build(lat, lat, pmf, QOS, ("base", "aux"), slack=slack), lat, pmf


def three_band(slack: float = 0.0) -> tuple[BoundModel, np.ndarray, np.ndarray]:
    """Two auxiliaries: base 1 ms on every batch; A meets QoS only at batch 10 (2 ms; 9 ms above);
    B up to batch 50 (2 ms). Mix: 1/3 each of batch 10, 50, 100."""
    lat = np.zeros((3, 101))
    lat[0] = 0.001
    lat[1] = np.where(np.arange(101) <= 10, 0.002, 0.009)
    lat[2] = np.where(np.arange(101) <= 50, 0.002, 0.009)
    pmf = np.zeros(101)
    pmf[[10, 50, 100]] = 1 / 3
    return BoundModel.build(lat, lat, pmf, QOS, ("base", "A", "B"), slack=slack), lat, pmf


# ---------------------------------------------------------------------------------------------- by hand


def test_one_base_one_auxiliary_by_hand() -> None:
    bm, lat, pmf = two_point()
    # 1 + 1: batch 100 only on the base: 0.5·λ·3 ms ≤ 1 s → 666.7 (the auxiliary takes all batch 10)
    # 2 + 1: the auxiliary saturates at 500 batch-10/s: 0.001·(0.5·λ − 500) + 0.0015·λ ≤ 2 → 1250
    # 1 + 0: the base alone, E[L] = 2 ms → 500; 0 + 3: the auxiliary misses QoS on half the mix → 0
    configs = np.array([[1, 1], [2, 1], [1, 0], [0, 3]])
    np.testing.assert_allclose(upper_bound(configs, bm), [2000 / 3, 1250, 500, 0])
    # the paper's formula agrees on this mix (one auxiliary, one band below its threshold)
    np.testing.assert_allclose(proportional_bound(configs, bm), [2000 / 3, 1250, 500, 0])
    # the duals of the docstring: y = (666.7, 0) and (500, 250), both with D = 1
    vec = dual_vectors(bm, 0b11)
    assert any(np.allclose(v, [2000 / 3, 0]) for v in vec)
    assert any(np.allclose(v, [500, 250]) for v in vec)
    # with ε = 0 the p99 row's dual z only forbids misses, and any large z does: D(y, z) = 1
    d = dual_denominator(vec, np.full(len(vec), 1e6), bm.batch_lat_s, bm.batch_miss, bm.batch_p, bm.slack)
    np.testing.assert_allclose(d, 1.0)
    for c in configs:
        assert upper_bound(c[None, :], bm)[0] == pytest.approx(fluid_bound(c, lat, lat, pmf, QOS, slack=0.0))


def test_the_p99_slack_lets_one_percent_of_queries_miss_qos_anywhere() -> None:
    bm, lat, pmf = two_point(slack=0.01)
    # 1 + 1: 1% of the queries (batch 100) go to the auxiliary and miss QoS: 0.49·λ·3 ms ≤ 1 s → 680.3;
    # the auxiliary is then busy 340·2 ms + 6.8·10 ms = 0.75 s of each second
    assert upper_bound(np.array([[1, 1]]), bm)[0] == pytest.approx(1 / (0.49 * 0.003))
    assert fluid_bound(np.array([1, 1]), lat, lat, pmf, QOS, slack=0.01) == pytest.approx(1 / (0.49 * 0.003))
    # 2 + 1: a batch-100 query on the saturated auxiliary (10 ms) displaces five batch-10 ones (5 ms on
    # the base) to save 3 ms of base time: the slack is worth nothing, still 1250
    assert upper_bound(np.array([[2, 1]]), bm)[0] == pytest.approx(1250)
    # the auxiliary alone: it misses QoS on 50% of the mix, far beyond 1%
    assert upper_bound(np.array([[0, 9]]), bm)[0] == 0.0


def test_two_auxiliaries_by_hand() -> None:
    bm, lat, pmf = three_band()
    # 1 + 1 + 1: A 500/s of batch 10, B 500/s of batch 50, the base the other 167 + 167 + 667 = 1000/s
    # at 1 ms → λ = 2000. Dual y = (1000, 500, 500): every batch costs 1 (1000·1 ms = 500·2 ms), D = 1.
    assert upper_bound(np.array([[1, 1, 1]]), bm)[0] == pytest.approx(2000)
    vec = dual_vectors(bm, 0b111)
    assert any(np.allclose(v, [1000, 500, 500]) for v in vec)
    # the paper's formula feeds B batch 10 and 50 alike (proportionally): 1875 (see its docstring)
    assert proportional_bound(np.array([[1, 1, 1]]), bm)[0] == pytest.approx(1875)
    # 1 + 3 + 1: the base takes batch 100 and what B leaves of batch 50: 2λ/3 − 500 ≤ 1000 → 2250
    assert upper_bound(np.array([[1, 3, 1]]), bm)[0] == pytest.approx(2250)
    # 1 + 3 + 0: A only takes batch 10 (λ/3); the base the other 2λ/3 at 1 ms → 1500
    assert upper_bound(np.array([[1, 3, 0]]), bm)[0] == pytest.approx(1500)
    for c in ([1, 1, 1], [1, 3, 1], [2, 1, 4], [1, 0, 2]):
        lp, flows = fluid_solution(np.array(c), lat, lat, pmf, QOS, slack=0.0)
        assert upper_bound(np.array([c]), bm)[0] == pytest.approx(lp)
        # the flows serve the mix and fit every type's instances
        np.testing.assert_allclose(flows.sum(axis=0)[[10, 50, 100]], lp / 3)
        assert np.all((flows * lat).sum(axis=1) <= np.array(c) + 1e-9)


def specialist_profiles() -> ProfileTable:
    """Mix: half batch 10, half batch 50. Base: 4 ms on both. Auxiliary: 1 ms on batch 10, 8 ms on
    batch 50 — both types meet the 40 ms QoS on everything; the auxiliary is 4× faster on small
    queries and 2× slower on large ones. Deterministic (p99 = mean)."""
    pts = [ProfilePoint("base", 10, 0.004, 0.004), ProfilePoint("base", 50, 0.004, 0.004),
           ProfilePoint("aux", 10, 0.001, 0.001), ProfilePoint("aux", 50, 0.008, 0.008)]
    return ProfileTable.build({"m": pts}, max_batch=50)


def test_specialisation_beats_proportional_feeding_and_the_bound_holds() -> None:
    """1 base + 1 auxiliary. Proportional feeding (the paper's model): the auxiliary covers the whole
    mix, so it serves the mix at 1/E[L_aux] = 1/4.5 ms = 222.2/s next to the base's 250/s: 472.2/s.
    Specialised: the auxiliary takes every batch-10 query (λ/2 at 1 ms) and x batch-50 ones, the
    base the other λ/2 − x at 4 ms: λ/2·1 ms + x·8 ms ≤ 1 s and (λ/2 − x)·4 ms ≤ 1 s → x = 83.3,
    λ = 666.7/s. Dual y = (444.4, 222.2): batch 10 costs min(444.4·4, 222.2·1) ms = 0.222, batch 50
    min(444.4·4, 222.2·8) ms = 1.778, D = 1, UB = 444.4 + 222.2 = 666.7. The Kairos dispatcher
    (simulated, Poisson arrivals) specialises too and exceeds the paper's formula, not the bound."""
    profiles = specialist_profiles()
    types = ("base", "aux")
    ti = [profiles.type_index(t) for t in types]
    pmf = np.zeros(51)
    pmf[[10, 50]] = 0.5
    lat = profiles.mean_s[0][ti]
    bm = BoundModel.build(lat, profiles.p99_s[0][ti], pmf, 0.040, types)
    fleet = np.array([[1, 1]])
    assert proportional_bound(fleet, bm)[0] == pytest.approx(250 + 1 / 0.0045)
    assert upper_bound(fleet, bm)[0] == pytest.approx(2000 / 3)
    assert any(np.allclose(v, [4000 / 9, 2000 / 9]) for v in dual_vectors(bm, 0b11))
    assert fluid_bound(fleet[0], lat, lat, pmf, 0.040) == pytest.approx(2000 / 3)

    batches = np.where(np.random.default_rng(0).random(3000) < 0.5, 10, 50)
    stream = poisson_stream(batches, seed=1)
    cols = fleet_columns(profiles, types, fleet[0])
    res = max_qps(profiles, "m", cols, lambda: make_policy("kairos", profiles), qos_s=0.040, stream=stream,
                  service=ServiceModel(), ub_qps=float(upper_bound(fleet, bm)[0]))
    assert not res.exceeds_bound
    assert proportional_bound(fleet, bm)[0] < res.qps <= upper_bound(fleet, bm)[0]


# ---------------------------------------------------------------------------------------------- general


def test_miss_from_samples_by_hand() -> None:
    # mean 4 ms, samples ×(0.5, 1.0, 1.5) → 2, 4, 6 ms: one of three over 5 ms; batch 0 uses cell 0 too
    mean = np.full((1, 21), 0.004)
    rel = np.array([[[0.5, 1.0, 1.5], [1.0, 1.0, 1.0]]])
    miss = miss_from_samples(mean, rel, 0.005, grid_step=10)
    np.testing.assert_allclose(miss[0, [0, 5, 10]], 1 / 3)
    np.testing.assert_allclose(miss[0, [11, 20]], 0.0)


def _random_case(
    rng: np.random.Generator, n_types: int, n_batches: int = 60
) -> tuple[BoundModel, np.ndarray, np.ndarray, np.ndarray]:
    """A base that covers the mix and auxiliaries slower on large batches, miss probabilities that
    grow with the batch: (bound model, latency, miss, pmf)."""
    b = np.arange(n_batches + 1)
    lat = np.empty((n_types, n_batches + 1))
    lat[0] = 0.0006 + 0.002 * b / n_batches
    for k in range(1, n_types):
        lat[k] = rng.uniform(0.0002, 0.0008) + rng.uniform(0.004, 0.012) * b / n_batches
    miss = np.clip((lat - 0.8 * QOS) / (0.4 * QOS), 0.0, 1.0)
    pmf = rng.dirichlet(np.ones(n_batches + 1))
    return BoundModel.build(lat, lat, pmf, QOS, tuple(f"t{k}" for k in range(n_types)), miss=miss), lat, miss, pmf


def test_the_dual_bound_is_never_below_the_lp_and_close_to_it() -> None:
    rng = np.random.default_rng(4)
    ratios = []
    for _ in range(3):
        bm, lat, miss, pmf = _random_case(rng, n_types=4)
        configs = np.column_stack([rng.integers(0, 3, 25)] + [rng.integers(0, 9, 25) for _ in range(3)])
        configs = configs[configs.any(axis=1)]
        ub = upper_bound(configs, bm)
        lp = np.array([fluid_bound(c, lat, lat, pmf, QOS, miss=miss) for c in configs])
        assert np.all(ub >= lp * (1 - 1e-7))
        assert np.all((ub > 0) == (lp > 0))
        ratios += list(ub[lp > 0] / lp[lp > 0])
    assert np.median(ratios) < 1.01
    # with 0/1 misses (QoS judged on the latency table) the paper's formula is a restriction of the LP
    hard = BoundModel.build(lat, lat, pmf, QOS, bm.types)
    assert np.all(proportional_bound(configs, hard) <= upper_bound(configs, hard) * (1 + 1e-9))


def test_bound_grows_with_every_added_instance_of_a_present_type() -> None:
    rng = np.random.default_rng(8)
    bm = _random_case(rng, n_types=3)[0]
    configs = np.column_stack([rng.integers(1, 4, 30), rng.integers(1, 8, 30), rng.integers(1, 8, 30)])
    ub = upper_bound(configs, bm)
    for k in range(3):
        more = configs.copy()
        more[:, k] += 1
        assert np.all(upper_bound(more, bm) >= ub - 1e-9)


def test_dual_vectors_are_cached_and_the_slack_is_checked() -> None:
    bm = two_point()[0]
    first = dual_vectors(bm, 0b11)
    assert dual_vectors(bm, 0b11) is first
    assert len(dual_vectors(bm, 0b10)) == 0  # the auxiliary alone cannot meet p99
    with pytest.raises(ConfigError):
        BoundModel.build(np.ones((1, 3)), np.ones((1, 3)), np.ones(3), 1.0, ("a",), slack=1.5)


def test_dual_vectors_on_worker_processes_are_the_serial_ones() -> None:
    """`prefill_duals` on 2 forked workers caches, for every subset of types present, exactly the vectors
    `dual_vectors` computes here, so the bounds are equal; a subset already cached is not computed again,
    and below MIN_PARALLEL_MASKS subsets nothing is prefilled (`upper_bound` computes them serially)."""
    from kairosd.planner.bounds import config_masks
    from kairosd.planner.parallel import MIN_PARALLEL_MASKS, prefill_duals

    rng = np.random.default_rng(11)
    serial, lat, miss, pmf = _random_case(rng, n_types=6, n_batches=30)
    parallel = BoundModel.build(lat, lat, pmf, QOS, serial.types, miss=miss)
    configs = rng.integers(0, 3, (200, 6))
    configs = configs[configs.any(axis=1)]
    masks = {int(m) for m in config_masks(configs, 6)}
    assert len(masks) >= MIN_PARALLEL_MASKS
    kept = dual_vectors(parallel, max(masks))
    prefill_duals(parallel, configs, workers=2)
    assert set(parallel._duals) == masks and parallel._duals[max(masks)] is kept
    ub = upper_bound(configs, serial)
    for m in masks:
        assert np.array_equal(parallel._duals[m], serial._duals[m]), m
    assert np.array_equal(upper_bound(configs, parallel), ub) and (ub > 0).any()
    few = BoundModel.build(lat, lat, pmf, QOS, serial.types, miss=miss)
    prefill_duals(few, configs[:3], workers=2)
    assert few._duals == {}

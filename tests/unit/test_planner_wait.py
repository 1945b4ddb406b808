"""The queue-aware estimate's waits: the miss share after a wait taken over the service time's measured
distribution (`quantiles_from_samples`, `BoundModel.build(svc_quantiles=...)`), and the priority
queue the large ("must") queries see on a base that also serves small ones (`_priority_x`)."""

from __future__ import annotations

import numpy as np
import pytest

from kairosd.planner import BoundModel, quantiles_from_samples, queue_estimate
from kairosd.planner.bounds import TAIL_GRID, _wait_miss_table, _wait_miss_weights
from kairosd.planner.queueing import _decay_x, _priority_x, _tail_weights


def _one_batch(lat_s: float) -> tuple[np.ndarray, np.ndarray]:
    """A mean table [1 type, batch 0..100] and a mix of batch 100 only."""
    mean = np.full((1, 101), lat_s)
    pmf = np.zeros(101)
    pmf[100] = 1.0
    return mean, pmf


def test_quantiles_from_samples_worked_example() -> None:
    """The docstring's case: mean 4 ms, samples ×(0.5, 1.5), two values → 2 ms and 6 ms; a batch takes
    its grid cell ⌈b/grid_step⌉ − 1."""
    mean = np.full((1, 21), 0.004)
    rel = np.array([[[0.5, 1.5], [1.0, 1.0]]])  # cell 0: batches 1..10, cell 1: 11..20
    q = quantiles_from_samples(mean, rel, grid_step=10, n=2)
    assert q.shape == (1, 21, 2)
    np.testing.assert_allclose(q[0, 10], [0.002, 0.006])
    np.testing.assert_allclose(q[0, 11], [0.004, 0.004])


def test_wait_miss_weights_average_the_slack_over_the_distribution() -> None:
    """Service 2 ms or 6 ms, QoS 5 ms: half miss alone (weight 0 at every x); the other half misses after
    an exponential wait of rate x/QoS with probability exp(−x·3/5)."""
    w = _wait_miss_weights(np.array([[[0.002, 0.006]]]), 0.005)
    np.testing.assert_allclose(w[0, 0], 0.5 * np.exp(-TAIL_GRID * 0.6))


def test_wait_miss_table_is_the_direct_average_bit_for_bit() -> None:
    """The table skips the exponentials it does not need (queries that miss QoS alone, exponents whose exp
    is 0.0) and equals, exactly, the average of 1{S ≤ QoS}·exp(−x·(T − S)⁺/QoS) over every quantile: on
    services from far below QoS (large slacks: exp underflows at the top of the grid) to above it, with
    T = QoS and with a per-batch start."""
    rng = np.random.default_rng(3)
    q = np.sort(rng.uniform(1e-7, 0.012, size=(3, 70, 8)), axis=2)
    for start in (None, rng.uniform(0.004, 0.01, size=(3, 70))):
        t = np.full((3, 70), 0.01) if start is None else start
        slack = np.maximum(t[:, :, None] - q, 0.0) / 0.01
        direct = np.where((q <= 0.01)[..., None], np.exp(-slack[..., None] * TAIL_GRID), 0.0).sum(axis=2) / 8
        table = _wait_miss_table(q, 0.01, start)
        assert np.array_equal(table, direct)
        assert (table[..., -1] == 0.0).any() and (table[..., 0] > 0).all()


def test_quantiles_at_the_feasibility_latency_give_the_default_weights() -> None:
    """A service time that is always its feasibility latency: the weights over its distribution are the
    point-slack ones."""
    mean, pmf = _one_batch(0.003)
    point = BoundModel.build(mean, mean, pmf, 0.010, ("t",))
    dist = BoundModel.build(mean, mean, pmf, 0.010, ("t",), svc_quantiles=np.full((1, 101, 4), 0.003))
    assert point.band_tail is not None and dist.band_tail is not None
    np.testing.assert_allclose(dist.band_tail, point.band_tail, rtol=1e-12)
    assert queue_estimate(np.array([[2]]), dist)[0] == pytest.approx(queue_estimate(np.array([[2]]), point)[0])


def test_a_wait_is_weighed_against_the_whole_service_distribution() -> None:
    """Services of 1.5, 3 and 4.5 ms (mean 3 ms, p99 4.5 ms), QoS 6 ms: against the p99 every query has
    1.5 ms of slack; over the distribution two thirds have 3 ms or more, so fewer waits end late and
    the estimate is higher."""
    mean, pmf = _one_batch(0.003)
    p99 = np.full((1, 101), 0.0045)
    point = BoundModel.build(mean, p99, pmf, 0.006, ("t",))
    q = np.broadcast_to(np.array([0.0015, 0.003, 0.0045]), (1, 101, 3)).copy()
    dist = BoundModel.build(mean, p99, pmf, 0.006, ("t",), svc_quantiles=q)
    configs = np.array([[1], [3]])
    est_point, est_dist = queue_estimate(configs, point), queue_estimate(configs, dist)
    assert np.all(est_dist > 1.1 * est_point)


def test_priority_tail_waits_on_the_residual_of_every_job_in_service() -> None:
    """One base: must queries of 10 ms at 30/s (0.3 Erlang), small ones of 1 ms at 500/s (0.5 Erlang).
    A must query that finds the base busy waits for the job in service — mostly a 1 ms one — then for
    the must work ahead: θ = (1 − 0.3)·2·E[S]/E[S²] over all jobs = 0.7·2·0.8/0.0035 = 320/s, against
    140/s when the residual were the must jobs' alone. With the must jobs alone it is the Allen–Cunneen
    decay of `_decay_x`."""
    qos, slack = 0.05, 0.5  # the band's slack: half of QoS
    tail = np.exp(-TAIL_GRID * slack)[None, :]
    one = np.array([1.0])
    got = _tail_weights(_priority_x(one, np.array([0.3]), np.array([0.8]), np.array([30 * 1e-4 + 500 * 1e-6]), qos), tail)
    assert got[0, 0] == pytest.approx(np.exp(-320 * qos * slack), rel=0.02)  # interpolated on TAIL_GRID
    alone = _tail_weights(_priority_x(one, np.array([0.3]), np.array([0.3]), np.array([30 * 1e-4]), qos), tail)
    assert alone[0, 0] == pytest.approx(np.exp(-140 * qos * slack), rel=0.02)
    x = _decay_x(one, np.array([0.3]), np.array([30.0]), np.array([0.0]), qos)  # 10 ms jobs, C_s² = 0
    assert x[0] == pytest.approx(140 * qos)

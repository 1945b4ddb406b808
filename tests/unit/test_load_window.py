"""The observed-load window: rates over full and partial windows, batch pmf and prior blend, clipping,
eviction of old seconds, and a fixed-size structure whatever the number of queries."""

from __future__ import annotations

import numpy as np
import pytest

from kairosd.autoscale.load import LoadWindow


def test_rate_over_a_full_window() -> None:
    w = LoadWindow(["a", "b"], max_batch=100, window_s=60.0, start_s=0.0)
    for k in range(1200 * 10):  # a: 10 qps with batch 10, b: 2 qps with batch 50, for 1200 s
        t = k * 0.1
        w.record(0, 10, t)
        if k % 5 == 0:
            w.record(1, 50, t)
    a, b = w.demand(1200.0)
    # the window is the 60 one-second buckets 1141..1200, covering 59 s up to now = 1200.0
    assert a.model == "a" and a.rate_qps == pytest.approx(10.0, rel=0.01)
    assert b.rate_qps == pytest.approx(2.0, rel=0.02)
    assert a.batch_pmf[10] == 1.0 and b.batch_pmf[50] == 1.0
    assert a.batch_pmf.shape == (101,) and a.batch_pmf.sum() == pytest.approx(1.0)


def test_partial_window_at_start() -> None:
    w = LoadWindow(["m"], max_batch=10, window_s=60.0, start_s=100.0)
    for k in range(410):  # 20 qps from 100.0 to 120.5
        w.record(0, 5, 100.0 + k * 0.05)
    (d,) = w.demand(120.5)
    assert d.rate_qps == pytest.approx(410 / 20.5)
    # without start_s, observation starts at the first record or demand
    w2 = LoadWindow(["m"], max_batch=10)
    assert w2.demand(50.0)[0].rate_qps == 0.0
    w2.record(0, 3, 52.0)
    assert w2.demand(54.0)[0].rate_qps == pytest.approx(1 / 4.0)
    # at least one second of cover: a burst right at the start is not divided by ~0
    w3 = LoadWindow(["m"], max_batch=10, start_s=10.0)
    w3.record(0, 3, 10.0)
    assert w3.demand(10.001)[0].rate_qps == 1.0


def test_prior_blend_until_min_queries() -> None:
    prior = np.zeros(11)
    prior[10] = 1.0
    w = LoadWindow(["m"], max_batch=10, prior_pmf={"m": prior}, min_queries=200, start_s=0.0)
    (d,) = w.demand(1.0)
    assert np.array_equal(d.batch_pmf, prior) and d.rate_qps == 0.0  # no query yet: the prior
    for k in range(50):
        w.record(0, 2, 1.0 + k * 0.01)
    (d,) = w.demand(2.0)
    assert d.batch_pmf[2] == pytest.approx(0.25) and d.batch_pmf[10] == pytest.approx(0.75)  # w = 50/200
    for k in range(150):
        w.record(0, 2, 2.0 + k * 0.001)
    (d,) = w.demand(3.0)
    assert d.batch_pmf[2] == pytest.approx(1.0)  # 200 queries: the observation alone


def test_no_prior_and_no_queries_is_uniform() -> None:
    w = LoadWindow(["m"], max_batch=4, start_s=0.0)
    (d,) = w.demand(5.0)
    assert d.batch_pmf.tolist() == [0.0, 0.25, 0.25, 0.25, 0.25]
    w.record(0, 3, 5.5)
    assert w.demand(6.0)[0].batch_pmf.tolist() == [0.0, 0.0, 0.0, 1.0, 0.0]  # no prior: observed alone


def test_prior_of_another_length_is_fitted() -> None:
    w = LoadWindow(["m"], max_batch=3, prior_pmf={"m": np.array([0.0, 1.0, 1.0, 1.0, 1.0, 1.0])})
    assert w.prior_pmf["m"].tolist() == pytest.approx([0.0, 0.2, 0.2, 0.6])
    with pytest.raises(ValueError, match="unknown models"):
        LoadWindow(["m"], max_batch=3, prior_pmf={"x": np.ones(4)})
    with pytest.raises(ValueError, match="not all zero"):
        LoadWindow(["m"], max_batch=3, prior_pmf={"m": np.zeros(4)})


def test_batch_sizes_are_clipped() -> None:
    w = LoadWindow(["m"], max_batch=100, start_s=0.0)
    w.record(0, 5000, 1.0)
    w.record(0, 0, 1.0)
    w.record(0, 100, 1.0)
    (d,) = w.demand(2.0)
    assert d.batch_pmf[100] == pytest.approx(2 / 3) and d.batch_pmf[1] == pytest.approx(1 / 3)
    assert d.batch_pmf[0] == 0.0


def test_old_seconds_leave_the_window() -> None:
    w = LoadWindow(["m"], max_batch=10, window_s=10.0, start_s=0.0)
    for k in range(100):  # 1 qps, batch 1, seconds 0..99
        w.record(0, 1, float(k))
    w.record(0, 7, 100.2)
    hist = w.histogram(100.5)
    assert hist.sum() == 10  # seconds 91..100
    assert w.demand(100.5)[0].rate_qps == pytest.approx(10 / 9.5)
    assert w.histogram(200.0).sum() == 0  # long idle: everything left
    assert w.demand(200.0)[0].rate_qps == 0.0
    w.record(0, 3, 200.5)  # a gap longer than the window, then new traffic
    assert w.histogram(201.0).sum() == 1 and w.histogram(201.0)[0, 3] == 1


def test_record_does_constant_work_in_a_fixed_structure() -> None:
    w = LoadWindow(["a", "b", "c"], max_batch=50, window_s=5.0, start_s=0.0)
    shapes = (w._ring.shape, len(w._cur))
    for k in range(50_000):
        w.record(k % 3, k % 60, k * 0.001)  # 50 s of traffic at 1,000 qps
    assert (w._ring.shape, len(w._cur)) == shapes == ((5, 3, 51), 3 * 51)
    assert w.histogram(49.9995).sum() == 5000  # seconds 45..49


def test_recent_rates_see_a_rise_before_the_window_does() -> None:
    """60 s window: 10 q/s for 50 s then 100 q/s for 5 s: the window's rate is ~17.3, the last 5 s's ~100."""
    w = LoadWindow(["a"], max_batch=8, window_s=60.0, start_s=0.0)
    t = 0.0
    while t < 50.0:
        w.record(0, 4, t)
        t += 0.1
    while t < 55.0:
        w.record(0, 4, t)
        t += 0.01
    window_rate = w.demand(55.0)[0].rate_qps
    recent = w.recent_rates(55.0, 5.0)[0]
    assert abs(window_rate - (500 + 500) / 55.0) < 1.0
    assert 90.0 < recent < 110.0
    assert w.recent_rates(55.0, 1000.0)[0] == pytest.approx(window_rate, rel=0.02)  # capped at the window

"""Admission control policy (kairosd.admission): capacity from the profiles, limits, refusals, shedding."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kairosd import admission
from kairosd.admission import Ahead, Feedback

# mean_s[model, type, batch]: model 0 takes 10 ms on type 0 and 40 ms on type 1 at every batch;
# model 1 takes 20 ms on type 0, 20 ms on type 1
MEAN = np.array([[[0.010] * 4, [0.040] * 4], [[0.020] * 4, [0.020] * 4]])
EMPTY = Ahead(queued_work_s=0.0, busy_residual_s=0.0, queued_model=0, queued_bytes=0)


def test_capacity_sums_slots_over_service_time() -> None:
    cap = admission.capacity(MEAN, [(0, 1, None), (1, 2, None)])
    assert cap.slots == 3
    assert cap.rate[0][1] == pytest.approx(1 / 0.010 + 2 / 0.040)  # 150 q/s
    assert cap.rate[1][1] == pytest.approx(3 / 0.020)
    assert cap.fastest_s[0][1] == pytest.approx(0.010)


def test_capacity_counts_a_pinned_instance_for_its_model_only() -> None:
    cap = admission.capacity(MEAN, [(1, 1, None), (0, 1, 1)])  # the fast type pinned to model 1
    assert cap.rate[0][0] == pytest.approx(1 / 0.040) and cap.fastest_s[0][0] == pytest.approx(0.040)
    assert cap.rate[1][0] == pytest.approx(2 / 0.020)


def test_no_ready_instance_serves_nothing_and_admits() -> None:
    cap = admission.capacity(MEAN, [])
    assert not cap.serves(0) and cap.rate[0][0] == 0.0 and math.isinf(cap.fastest_s[0][0])
    # unknown capacity: admitted (the deadline answers for it), bounded by bytes only
    assert admission.admit(mode="qos", now=0.0, target=0.05, fastest_s=math.inf, rate=0.0, ahead=EMPTY,
                           limit=10, size=10, max_bytes=100) is None


def test_queue_limit_defaults_to_capacity_times_qos_in_qos_mode() -> None:
    assert admission.queue_limit("qos", 0, 16, rate=1000.0, qos_s=0.05, slack=1.0) == 50
    assert admission.queue_limit("qos", 0, 16, rate=100.0, qos_s=0.05, slack=1.0) == 16  # at least the minimum
    assert admission.queue_limit("qos", 7, 16, rate=1000.0, qos_s=0.05, slack=1.0) == 7  # explicit wins
    assert admission.queue_limit("deadline", 0, 16, rate=1000.0, qos_s=0.05, slack=1.0) > 10**9
    assert admission.queue_limit("off", 5, 16, rate=1000.0, qos_s=0.05, slack=1.0) == 5


def test_target_is_qos_or_deadline() -> None:
    assert admission.target_s("qos", 1.0, 31.0, 0.05, 1.0) == pytest.approx(1.05)
    assert admission.target_s("qos", 1.0, 1.02, 0.05, 1.0) == pytest.approx(1.02)  # a sooner client deadline
    assert admission.target_s("qos", 1.0, 31.0, 0.05, 2.0) == pytest.approx(1.10)
    assert admission.target_s("deadline", 1.0, 31.0, 0.05, 1.0) == 31.0
    assert admission.target_s("qos", 1.0, 31.0, 0.05, 1.0, margin_s=0.001) == pytest.approx(1.049)
    assert admission.target_s("deadline", 1.0, 31.0, 0.05, 1.0, margin_s=0.001) == 31.0


def test_admit_refuses_when_the_work_ahead_passes_the_target() -> None:
    kw = dict(mode="qos", now=0.0, target=0.05, fastest_s=0.010, rate=100.0, limit=1000, size=1, max_bytes=100)
    assert admission.admit(ahead=Ahead(0.030, 0.0, 3, 0), **kw) is None  # 30 + 10 ≤ 50 ms
    r = admission.admit(ahead=Ahead(0.030, 0.015, 3, 0), **kw)  # 30 + 15 + 10 > 50 ms
    assert r is not None and "QoS target" in r.reason and r.retry_after_s == 1.0
    r = admission.admit(ahead=Ahead(2.5, 0.0, 3, 0), **kw)
    assert r is not None and r.retry_after_s == 3.0  # when the queue ahead should have drained
    kw["mode"] = "off"
    assert admission.admit(ahead=Ahead(2.5, 0.0, 3, 0), **kw) is None


def test_admit_bounds_count_and_bytes_in_every_mode() -> None:
    for mode in ("qos", "deadline", "off"):
        kw = dict(mode=mode, now=0.0, target=1e9, fastest_s=0.01, rate=100.0)
        r = admission.admit(ahead=Ahead(0.0, 0.0, 5, 0), limit=5, size=1, max_bytes=100, **kw)
        assert r is not None and "scheduler.max_queue" in r.reason
        r = admission.admit(ahead=Ahead(0.0, 0.0, 0, 90), limit=5, size=11, max_bytes=100, **kw)
        assert r is not None and "max_queue_bytes = 100" in r.reason
        assert admission.admit(ahead=Ahead(0.0, 0.0, 4, 89), limit=5, size=11, max_bytes=100, **kw) is None


def test_doomed_when_even_the_fastest_type_is_too_late() -> None:
    assert not admission.doomed(now=1.0, target=1.05, fastest_s=0.05)
    assert admission.doomed(now=1.001, target=1.05, fastest_s=0.05)


def test_feedback_averages_clips_outliers_and_fades_without_answers() -> None:
    fb = admission.Feedback()
    for k in range(50):
        fb.answered(now=k * 0.01, lag_s=0.002, hop_s=0.003, clip_s=0.025)
    now = 0.49
    # steady answers: the averages approach the samples (each 10 ms gap fades them by 1%)
    assert fb.lag(now) == pytest.approx(0.002, rel=0.15) and fb.hop(now) == pytest.approx(0.003, rel=0.15)
    assert fb.hop(now) <= fb.hop_guard(now) < fb.hop(now) + 0.001  # little spread: the guard is near the mean
    # a frozen instance's 2.5 s answer moves the averages by at most a tenth of the clip (the QoS target)
    fb.answered(now=0.5, lag_s=None, hop_s=2.5, clip_s=0.025)
    lag_before = fb.lag(0.5)
    assert fb.hop(0.5) < 0.003 + 0.1 * 0.025 and fb.lag(0.5) == pytest.approx(lag_before)
    assert fb.hop_guard(0.5) < 0.025
    # no answers for 5 s (everything refused): the corrections fade, so queries are admitted again
    assert fb.hop_guard(5.5) < 0.025 * math.exp(-4) and fb.lag(5.5) < 0.002 * math.exp(-4)


def test_an_idle_fleet_admits_even_a_query_it_expects_late() -> None:
    """Nothing queued and a slot free: a refusal would save capacity for no one, so the query is tried."""
    kw = dict(mode="qos", now=0.0, target=0.005, fastest_s=0.010, rate=100.0, limit=10, size=1, max_bytes=100)
    assert admission.admit(ahead=Ahead(0.0, 0.0, 0, 0), lag_s=0.003, **kw) is None
    assert admission.admit(ahead=Ahead(0.001, 0.0, 1, 0), **kw) is not None


def test_matching_margin_is_twice_the_hop_mean_between_the_configured_one_and_its_cap() -> None:
    """The reserve takes the hop's typical value, not its high end: a 1.2 ms hop → 2.4 ms; the configured margin
    is the floor, a quarter of the smallest QoS the ceiling; a negative hop (answers beating the
    profile's mean) leaves the configured margin."""
    assert admission.matching_margin(0.001, 0.0012, 0.025) == pytest.approx(0.0024)
    assert admission.matching_margin(0.003, 0.0012, 0.025) == pytest.approx(0.003)
    assert admission.matching_margin(0.001, 0.010, 0.025) == pytest.approx(0.25 * 0.025)
    assert admission.matching_margin(0.001, -0.002, 0.025) == pytest.approx(0.001)
    # from answers: a 2 ms hop with a 3 ms spread (service noise) gives a margin near 4 ms, while the
    # admission estimate's guard takes the high end
    rng = np.random.default_rng(0)
    fb = admission.Feedback()
    for x in 0.002 + rng.normal(0.0, 0.003, 4000):
        fb.answered(10.0, None, float(x), 1.0)
    margin = admission.matching_margin(0.001, fb.hop_median(10.0), 1.0)
    assert abs(margin - 0.004) < 0.002
    assert fb.hop_guard(10.0) > margin / 2 + 0.005


def test_the_matching_reserve_follows_the_median_hop_not_single_slow_answers() -> None:
    """A 1 ms hop with one answer in ten 20 ms late (a pipelined query behind a long service, a stall of
    the head's loop): right after a slow answer the average of the last ten is near 3 ms and its reserve
    near 6 ms, while the median's stays at 2 ms; the window forgets: 256 later answers at 3 ms make it
    6 ms; without answers it fades like the averages."""
    fb = Feedback()
    for k in range(200):
        fb.answered(now=k * 0.001, lag_s=None, hop_s=0.020 if k % 10 == 9 else 0.001, clip_s=0.025)
    now = 0.199
    assert fb.hop(now) > 0.0028
    assert admission.matching_margin(0.001, fb.hop(now), 0.025) > 0.0055
    assert fb.hop_median(now) == pytest.approx(0.001, rel=0.01)
    assert admission.matching_margin(0.001, fb.hop_median(now), 0.025) == pytest.approx(0.002, rel=0.01)
    for k in range(admission.HOP_WINDOW):
        fb.answered(now=0.2 + k * 0.001, lag_s=None, hop_s=0.003, clip_s=0.025)
    now = 0.2 + (admission.HOP_WINDOW - 1) * 0.001
    assert fb.hop_median(now) == pytest.approx(0.003, rel=0.01)
    assert fb.hop_median(now + 5.0) < 0.003 * math.exp(-4)
    assert Feedback().hop_median(1.0) == 0.0
    # an answer from a slot that was still busy when it was sent is left out of the median
    fb.answered(now=now, lag_s=None, hop_s=0.020, clip_s=0.025, typical=False)
    fb.answered(now=now, lag_s=None, hop_s=0.020, clip_s=0.025, typical=False)
    assert fb.hop_median(now) == pytest.approx(0.003, rel=0.01) and fb.hop(now) > 0.005


def test_feedback_reads_are_the_same_however_often_they_are_taken() -> None:
    """The fade is computed once per clock reading: reading the estimates before an answer at the same
    time must not change what they read after it."""
    a, b = Feedback(), Feedback()
    for fb, read in ((a, True), (b, False)):
        fb.answered(1.0, 0.010, 0.002, 0.1)
        if read:
            assert min(fb.lag(1.5), fb.hop(1.5), fb.hop_guard(1.5)) > 0
        fb.answered(1.5, 0.020, 0.004, 0.1)
    for t in (1.5, 1.7, 2.0):
        assert a.lag(t) == b.lag(t) and a.hop(t) == b.hop(t) and a.hop_guard(t) == b.hop_guard(t)
    first = 0.1 * 0.010 * math.exp(-0.5)  # the first answer's share, faded over 0.5 s (weight 0.1, 1 s fade)
    assert a.lag(1.5) == pytest.approx(first + 0.1 * (0.020 - first))  # the second one counted unfaded

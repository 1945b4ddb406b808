"""Hand-worked cases for the dispatch policies (kairosd.dispatch)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest

from kairosd.dispatch import (
    INFEASIBLE_PENALTY_QOS,
    SURE_MISS_BOUND_QOS,
    KairosPolicy,
    Snapshot,
    heterogeneity_coefficients,
    make_policy,
)
from kairosd.errors import ConfigError
from kairosd.profiles import ProfilePoint, ProfileTable

MS = 1e-3


def make_profiles(tail_factor: dict[str, float] | None = None) -> ProfileTable:
    """Two types, one model. `gpu`: 2 ms at batch 10, 20 ms at 1000. `cpu`: 4 ms at 10, 200 ms at 1000.
    p99 = mean × tail_factor[type] (1 by default)."""
    tail_factor = tail_factor or {}
    pts = []
    for t, (lo, hi) in {"gpu": (2 * MS, 20 * MS), "cpu": (4 * MS, 200 * MS)}.items():
        f = tail_factor.get(t, 1.0)
        pts += [ProfilePoint(t, 10, lo, lo * f), ProfilePoint(t, 1000, hi, hi * f)]
    return ProfileTable.build({"m": pts})


def make_snapshot(
    profiles: ProfileTable,
    batches: Sequence[int],
    types: Sequence[str],
    *,
    waited_s: Sequence[float] | None = None,
    busy_s: Sequence[float] | None = None,
    qos_s: float = 0.1,
) -> Snapshot:
    m, n = len(batches), len(types)
    busy = np.array(busy_s if busy_s is not None else [0.0] * n, dtype=float)
    return Snapshot(
        q_model=np.zeros(m, dtype=np.intp),
        q_batch=np.array(batches, dtype=np.intp),
        q_waited_s=np.array(waited_s if waited_s is not None else [0.0] * m, dtype=float),
        q_qos_s=np.full(m, qos_s),
        i_type=np.array([profiles.type_index(t) for t in types], dtype=np.intp),
        i_busy_s=busy,
        i_free=busy == 0,
    )


def random_fleet(rng: np.random.Generator, *, idle: bool, busy_share: float, busy_max_s: float
                 ) -> tuple[list[str], list[float]]:
    """1-11 columns of random types ("cpu", "gpu") and their busy times: all 0 when `idle`, else each busy
    with probability `busy_share` for U(0, `busy_max_s`) seconds."""
    n = int(rng.integers(1, 12))
    types = [str(t) for t in rng.choice(["cpu", "gpu"], n)]
    busy = [0.0] * n if idle else [float(x) * (rng.random() < busy_share) for x in rng.uniform(0, busy_max_s, n)]
    return types, busy


def test_heterogeneity_coefficient_equalises_largest_batch() -> None:
    p = make_profiles()
    c = heterogeneity_coefficients(p)
    gi, ci = p.type_index("gpu"), p.type_index("cpu")
    assert c[0, gi] == pytest.approx(1.0)
    assert c[0, ci] == pytest.approx(0.1)  # 20 ms / 200 ms
    # every type costs the same on the largest batch
    assert c[0, gi] * p.mean_s[0, gi, 1000] == pytest.approx(c[0, ci] * p.mean_s[0, ci, 1000])


def test_kairos_sends_large_query_to_gpu_and_small_to_cpu() -> None:
    p = make_profiles()
    snap = make_snapshot(p, batches=[10, 1000], types=["cpu", "gpu"], qos_s=1.0)
    a = KairosPolicy(p)(snap)
    assert sorted(a.pairs()) == [(0, 0), (1, 1)]  # small → cpu (col 0), large → gpu (col 1)


def test_kairos_prefers_higher_speedup_query_on_gpu_even_when_order_reversed() -> None:
    p = make_profiles()
    snap = make_snapshot(p, batches=[1000, 10], types=["gpu", "cpu"], qos_s=1.0)
    assert sorted(KairosPolicy(p)(snap).pairs()) == [(0, 0), (1, 1)]


def test_kairos_never_picks_infeasible_edge_when_feasible_exists() -> None:
    p = make_profiles()
    # batch 500 on the cpu takes ~102 ms > QoS 50 ms; on the gpu ~11 ms: only the gpu is feasible,
    # although the cpu edge is cheaper by coefficient (0.1 × 102 ms < 1 × 11 ms).
    snap = make_snapshot(p, batches=[500], types=["cpu", "gpu"], qos_s=0.05)
    assert KairosPolicy(p)(snap).pairs() == [(0, 1)]
    # with two queries the matching keeps both feasible: the small one fits on the cpu
    snap = make_snapshot(p, batches=[500, 10], types=["cpu", "gpu"], qos_s=0.05)
    assert sorted(KairosPolicy(p)(snap).pairs()) == [(0, 1), (1, 0)]


def test_kairos_waits_for_busy_gpu_rather_than_take_a_cpu_that_misses_qos() -> None:
    p = make_profiles()
    # the gpu is busy for 5 ms more; the big query would miss QoS (50 ms) on the free cpu, so the
    # matching assigns it to the busy gpu: nothing is sent now, the query keeps waiting.
    snap = make_snapshot(p, batches=[800], types=["cpu", "gpu"], busy_s=[0.0, 0.005], qos_s=0.05)
    assert len(KairosPolicy(p)(snap)) == 0


def test_kairos_waited_time_makes_an_edge_infeasible() -> None:
    p = make_profiles()
    # batch 100 on the cpu: 4 + 90/990·196 ≈ 21.8 ms; on the gpu ≈ 3.6 ms. QoS 30 ms.
    # Fresh: cpu is cheaper (0.1 × 21.8 < 3.6) and feasible → cpu.
    fresh = make_snapshot(p, batches=[100], types=["cpu", "gpu"], qos_s=0.03)
    assert KairosPolicy(p)(fresh).pairs() == [(0, 0)]
    # Having waited 15 ms, the cpu (15 + 21.8 > 30) is infeasible; the gpu (15 + 3.6) is not.
    waited = make_snapshot(p, batches=[100], types=["cpu", "gpu"], waited_s=[0.015], qos_s=0.03)
    assert KairosPolicy(p)(waited).pairs() == [(0, 1)]


def test_kairos_tail_feasibility_uses_p99() -> None:
    # the cpu's mean meets QoS but its p99 (3× the mean) does not
    p = make_profiles(tail_factor={"cpu": 3.0})
    snap = make_snapshot(p, batches=[100], types=["cpu", "gpu"], qos_s=0.03)
    assert KairosPolicy(p, tail=False)(snap).pairs() == [(0, 0)]
    assert KairosPolicy(p, tail=True)(snap).pairs() == [(0, 1)]


def test_kairos_expired_query_is_still_served() -> None:
    p = make_profiles()
    snap = make_snapshot(p, batches=[10], types=["cpu", "gpu"], waited_s=[0.2], qos_s=0.05)
    a = KairosPolicy(p)(snap)
    assert len(a) == 1  # infeasible everywhere, still sent
    cost = KairosPolicy(p).cost_matrix(snap, 1)
    assert (cost >= INFEASIBLE_PENALTY_QOS * 0.05).all()


def test_kairos_hold_keeps_a_forced_infeasible_match_waiting() -> None:
    p = make_profiles()
    # two batch-800 queries, QoS 50 ms: on the gpu (busy 1 ms more) each takes ~16.4 ms, on the free
    # cpu ~160 ms. The one-to-one matching must give one of them the cpu; carrying that out would be
    # a certain QoS miss, and the query can still make it on the gpu after the other one.
    snap = make_snapshot(p, batches=[800, 800], types=["cpu", "gpu"], busy_s=[0.0, 0.001], qos_s=0.05)
    assert len(KairosPolicy(p, lookahead=0, hold=False)(snap)) == 1  # the paper's rule sends one to the cpu
    assert len(KairosPolicy(p, lookahead=0)(snap)) == 0  # both wait for the gpu
    # once neither can make QoS anywhere (waited 45 ms), holding helps no one: without the sure-miss
    # bound the free cpu is used; with it (the default) the cpu's finish, 205 ms after arrival, is
    # beyond 2 QoS, so both wait for the gpu, where they finish first
    late = make_snapshot(p, batches=[800, 800], types=["cpu", "gpu"], busy_s=[0.0, 0.001], waited_s=[0.045, 0.045], qos_s=0.05)
    assert KairosPolicy(p, sure_miss="cheapest")(late).instances.tolist() == [0]
    assert len(KairosPolicy(p)(late)) == 0


def test_kairos_hold_sends_a_forced_match_that_misses_only_in_the_tail() -> None:
    # the cpu's mean meets QoS (batch 100: ~21.8 ms of 30) and its p99 (3x: ~65 ms) does not; the gpu
    # (~3.6 ms) is busy 1 ms more. Two queries, one gpu slot in the matching (lookahead 0): the second is
    # forced onto the free cpu, where it misses only in the cpu's tail, and is sent rather than wait for
    # the gpu slot the first one holds
    p = make_profiles(tail_factor={"cpu": 3.0})
    snap = make_snapshot(p, batches=[100, 100], types=["cpu", "gpu"], busy_s=[0.0, 0.001], qos_s=0.03)
    sent = KairosPolicy(p, lookahead=0)(snap)
    assert sent.instances.tolist() == [0]
    cost = KairosPolicy(p, lookahead=0).cost_matrix(snap, 2)
    penalty = INFEASIBLE_PENALTY_QOS * 0.03
    assert penalty <= cost[sent.queries[0], 0] < 1.5 * penalty  # infeasible on p99 alone
    # without tiers no edge is known to meet QoS on the mean: the forced match waits, as one missing on
    # the mean does
    assert len(KairosPolicy(p, lookahead=0, tiers=False)(snap)) == 0
    # a cpu whose mean misses QoS too (batch 200: ~41.6 ms) is a sure miss: the forced match waits
    late = make_snapshot(p, batches=[200, 200], types=["cpu", "gpu"], busy_s=[0.0, 0.001], qos_s=0.03)
    assert len(KairosPolicy(p, lookahead=0)(late)) == 0
    assert len(KairosPolicy(p, lookahead=0, hold=False)(late)) == 1


def test_kairos_lookahead_queues_queries_behind_each_other_on_the_fast_instance() -> None:
    p = make_profiles()
    # two batch-800 queries (gpu ~16.4 ms, cpu ~160 ms); the gpu is busy 1 ms more. QoS 50 ms: the
    # second can start on the gpu after the first (1 + 16.4 + 16.4 = 33.8 ms ≤ 50): with the later
    # slot it is matched there (waits), without it the matching forces it onto the cpu.
    snap = make_snapshot(p, batches=[800, 800], types=["cpu", "gpu"], busy_s=[0.0, 0.001], qos_s=0.05)
    assert len(KairosPolicy(p, lookahead=0, hold=False)(snap)) == 1
    assert len(KairosPolicy(p, hold=False)(snap)) == 0
    # QoS 30 ms: the later slot shows the second cannot make QoS behind the first (33.8 > 30); the
    # cpu misses too, and the tiers rank it first (0.1 × 160 ms < 33.8 ms), so it is served there now
    # (without the sure-miss bound: the cpu's finish, 160 ms, is beyond 2 QoS)
    snap = make_snapshot(p, batches=[800, 800], types=["cpu", "gpu"], busy_s=[0.0, 0.001], qos_s=0.03)
    assert KairosPolicy(p, hold=False, sure_miss="cheapest")(snap).instances.tolist() == [0]
    # hold is deliberately cruder: the query could still make QoS on the gpu's next slot (which its
    # twin got), so it waits one more round (until the gpu frees) before giving up on it
    assert len(KairosPolicy(p)(snap)) == 0
    with pytest.raises(ConfigError, match="lookahead"):
        make_policy("kairos", p, lookahead=-1)


def test_kairos_lost_queries_are_all_served_when_instances_are_free() -> None:
    p = make_profiles()
    snap = make_snapshot(p, batches=[10, 500], types=["cpu", "gpu"], waited_s=[0.2, 0.2], qos_s=0.05)
    assert len(KairosPolicy(p)(snap)) == 2


def test_kairos_tiers_prefer_the_instance_that_still_makes_qos_on_the_mean() -> None:
    # both types' p99 is 3× their mean. Batch 100 after 25 ms of waiting, QoS 30 ms: the gpu (mean
    # 3.6 ms, p99 10.9 ms) misses on p99 but makes it on the mean; the cpu (21.8 / 65 ms) misses on
    # both. The paper's cost ranks the cpu first (0.1 × 21.8 < 1 × 3.6); the tiers pick the gpu.
    p = make_profiles(tail_factor={"cpu": 3.0, "gpu": 3.0})
    snap = make_snapshot(p, batches=[100], types=["cpu", "gpu"], waited_s=[0.025], qos_s=0.03)
    assert KairosPolicy(p, tiers=False)(snap).pairs() == [(0, 0)]
    assert KairosPolicy(p)(snap).pairs() == [(0, 1)]
    cost = KairosPolicy(p).cost_matrix(snap, 1)[0]
    penalty = INFEASIBLE_PENALTY_QOS * 0.03
    assert penalty <= cost[1] < 2 * penalty <= cost[0]


def test_kairos_rows_bounded_to_twice_the_instances() -> None:
    p = make_profiles()
    snap = make_snapshot(p, batches=[10] * 50, types=["cpu", "gpu"], qos_s=1.0)
    a = KairosPolicy(p, lookahead=0)(snap)
    assert len(a) == 2
    assert set(a.queries.tolist()) <= set(range(4))  # only the oldest 2n rows considered
    # with later slots the window is the oldest n. Waiting for the cpu's next slot (0.1 × (4 + 4) ms)
    # is cheaper than the idle gpu (1 × 2 ms) and within QoS, so the second query waits for the cpu:
    # the gpu stays free for the large queries it is worth most on
    a = KairosPolicy(p)(snap)
    assert a.pairs() == [(0, 0)]


def test_fcfs_takes_queue_head_to_first_idle() -> None:
    p = make_profiles()
    snap = make_snapshot(p, batches=[1000, 10, 10], types=["cpu", "gpu", "cpu"], busy_s=[0.01, 0.0, 0.0])
    assert make_policy("fcfs", p)(snap).pairs() == [(0, 1), (1, 2)]


def test_fastest_free_gives_head_the_fastest_idle() -> None:
    p = make_profiles()
    snap = make_snapshot(p, batches=[10, 1000], types=["cpu", "gpu"])
    # the head (batch 10) is fastest on the gpu (2 ms < 4 ms) and takes it; the big one gets the cpu
    assert make_policy("fastest_free", p)(snap).pairs() == [(0, 1), (1, 0)]


def test_round_robin_rotates() -> None:
    p = make_profiles()
    rr = make_policy("round_robin", p)
    types = ["cpu", "gpu", "cpu"]
    assert rr(make_snapshot(p, [10], types)).pairs() == [(0, 0)]
    assert rr(make_snapshot(p, [10], types)).pairs() == [(0, 1)]
    assert rr(make_snapshot(p, [10], types)).pairs() == [(0, 2)]
    assert rr(make_snapshot(p, [10], types)).pairs() == [(0, 0)]


def test_earliest_finish_waits_for_busy_fast_instance() -> None:
    p = make_profiles()
    # big query: gpu busy 5 ms → finishes at 5 + ~16 ms; cpu free → ~160 ms. It claims the gpu and waits.
    snap = make_snapshot(p, batches=[800], types=["cpu", "gpu"], busy_s=[0.0, 0.005])
    assert len(make_policy("earliest_finish", p)(snap)) == 0
    # small query: cpu 4 ms now vs gpu 5 + 2 ms → cpu
    snap = make_snapshot(p, batches=[10], types=["cpu", "gpu"], busy_s=[0.0, 0.005])
    assert make_policy("earliest_finish", p)(snap).pairs() == [(0, 0)]


def test_threshold_splits_by_batch() -> None:
    p = make_profiles()
    pol = make_policy("threshold", p, threshold=100)
    snap = make_snapshot(p, batches=[500, 50, 20], types=["gpu", "cpu"])
    assert sorted(pol(snap).pairs()) == [(0, 0), (1, 1)]
    # the small side busy: small queries wait even though the gpu is idle
    snap = make_snapshot(p, batches=[50], types=["gpu", "cpu"], busy_s=[0.0, 0.01])
    assert len(pol(snap)) == 0


def test_threshold_large_types_explicit() -> None:
    p = make_profiles()
    pol = make_policy("threshold", p, threshold=100, large_types=["cpu"])
    snap = make_snapshot(p, batches=[500], types=["gpu", "cpu"])
    assert pol(snap).pairs() == [(0, 1)]


def _sendable(snap: Snapshot) -> Snapshot:
    """The same snapshot with every column sendable, busy ones included (the scheduler's pipelining)."""
    return Snapshot(snap.q_model, snap.q_batch, snap.q_waited_s, snap.q_qos_s, snap.i_type, snap.i_busy_s,
                    np.ones(snap.n, dtype=bool))


def test_pipelining_policies_prefer_idle_columns_and_rank_busy_ones_by_finish() -> None:
    p = make_profiles()
    # two cpus (one busy 1 ms, sendable) and an idle cpu: fcfs and fastest_free take the idle one first,
    # then the busy one; with every column idle they are unchanged (instance order, fastest type)
    snap = _sendable(make_snapshot(p, batches=[10, 10], types=["cpu", "cpu", "gpu"], busy_s=[0.001, 0.0, 0.003]))
    assert make_policy("fcfs", p)(snap).pairs() == [(0, 1), (1, 0)]
    # fastest_free: cpu idle 4 ms, cpu busy 1 + 4 = 5 ms, gpu busy 3 + 2 = 5 ms: the idle cpu, then the first of the tie
    assert make_policy("fastest_free", p)(snap).pairs() == [(0, 1), (1, 0)]
    # threshold, small side: a busy cpu that frees in 1 ms is still later than the idle one
    pol = make_policy("threshold", p, threshold=100)
    assert pol(_sendable(make_snapshot(p, batches=[10], types=["cpu", "cpu", "gpu"],
                                       busy_s=[0.001, 0.0, 0.0]))).pairs() == [(0, 1)]
    # large side: the gpu busy for 2 ms finishes a batch-1000 query at 22 ms, the idle gpu-less side is not
    # its side; with two gpus, the idle one wins over the busy one
    assert pol(_sendable(make_snapshot(p, batches=[1000], types=["gpu", "cpu"], busy_s=[0.002, 0.0]))).pairs() == [(0, 0)]
    assert pol(_sendable(make_snapshot(p, batches=[1000], types=["gpu", "gpu"], busy_s=[0.002, 0.0]))).pairs() == [(0, 1)]
    assert {name: make_policy(name, p).pipelines for name in ("kairos", "fcfs", "fastest_free", "earliest_finish",
                                                             "threshold", "round_robin")} == {
        "kairos": True, "fcfs": True, "fastest_free": True, "earliest_finish": True, "threshold": True,
        "round_robin": False}


def test_make_policy_refuses_unknown_names_and_params() -> None:
    p = make_profiles()
    with pytest.raises(ConfigError, match="allowed"):
        make_policy("nope", p)
    with pytest.raises(ConfigError, match="kairos"):
        make_policy("kairos", p, thresh=3)


def test_policies_only_assign_free_instances_and_each_once() -> None:
    p = make_profiles()
    rng = np.random.default_rng(1)
    for name in ["kairos", "fcfs", "fastest_free", "round_robin", "earliest_finish", "threshold"]:
        pol = make_policy(name, p)
        for _ in range(50):
            n, m = int(rng.integers(1, 8)), int(rng.integers(0, 20))
            types = list(rng.choice(["cpu", "gpu"], n))
            busy = np.where(rng.random(n) < 0.5, 0.0, rng.uniform(0.001, 0.05, n))
            snap = make_snapshot(p, rng.integers(1, 1000, m).tolist(), types, busy_s=busy.tolist(),
                                 waited_s=rng.uniform(0, 0.1, m).tolist())
            a = pol(snap)
            assert snap.i_free[a.instances].all(), name
            assert len(set(a.instances.tolist())) == len(a), name
            assert len(set(a.queries.tolist())) == len(a), name
            assert len(a) <= min(m, int(snap.i_free.sum())), name


def test_profile_interpolation_clamps_and_extends() -> None:
    p = make_profiles()
    gi = p.type_index("gpu")
    assert p.mean_s[0, gi, 1] == pytest.approx(2 * MS)  # below the smallest batch: clamped
    assert p.mean_s[0, gi, 505] == pytest.approx(2 * MS + 495 / 990 * 18 * MS)
    ext = ProfileTable.build({"m": [ProfilePoint("g", 10, 0.001, 0.001), ProfilePoint("g", 20, 0.002, 0.002)]}, max_batch=40)
    assert ext.mean_s[0, 0, 40] == pytest.approx(0.004)  # slope of the last two points


def test_single_query_scalar_path_matches_the_array_path() -> None:
    """The scalar loop for one query picks what the cost matrix's argmin picks, and sends it only when
    that column is free: free and busy columns, every sure-miss rule, with and without tiers."""
    p = make_profiles(tail_factor={"cpu": 1.5, "gpu": 1.2})
    policies = [KairosPolicy(p, margin_s=0.001, sure_miss=rule) for rule in ("cheapest", "finish", "bounded")]
    policies.append(KairosPolicy(p, margin_s=0.001, tiers=False))
    rng = np.random.default_rng(7)
    sent = held = 0
    for trial in range(600):
        types, busy = random_fleet(rng, idle=trial % 2 == 1, busy_share=0.6, busy_max_s=0.08)
        snap = make_snapshot(p, [int(rng.integers(1, 1000))], types, waited_s=[float(rng.uniform(0, 0.12))],
                             busy_s=busy, qos_s=float(rng.uniform(0.01, 0.1)))
        for pol in policies:
            expected = int(np.argmin(pol.cost_matrix(snap, 1)[0]))
            pairs = pol(snap).pairs()
            assert pairs == ([(0, expected)] if snap.i_free[expected] else [])
            sent, held = sent + bool(pairs), held + (not pairs)
    assert sent > 500 and held > 100  # both outcomes were exercised


def test_kairos_query_late_only_within_the_margin_goes_where_it_is_least_late() -> None:
    p = make_profiles()
    # batch 800 (gpu ~16.4 ms, cpu ~160 ms), QoS 50 ms, waited 30 ms, the gpu busy 2 ms more: on time on
    # the gpu's mean (30 + 2 + 16.4 = 48.4 ms) but not within a 5 ms margin. The margin is a reserve,
    # not a certainty: the query waits for the gpu rather than take the free cpu, a sure miss
    snap = make_snapshot(p, batches=[800], types=["cpu", "gpu"], busy_s=[0.0, 0.002], waited_s=[0.030], qos_s=0.05)
    assert len(KairosPolicy(p, margin_s=0.005)(snap)) == 0
    # without the margin tiers the cheapest column wins, as for a sure miss
    assert KairosPolicy(p, margin_s=0.005, tiers=False)(snap).instances.tolist() == [0]
    # a sure miss (late on the gpu's mean even without the margin: waited 40 ms): the cheapest column
    # (without the sure-miss bound: on the cpu it finishes 200 ms after its arrival, beyond 2 QoS)
    sure = make_snapshot(p, batches=[800], types=["cpu", "gpu"], busy_s=[0.0, 0.002], waited_s=[0.040], qos_s=0.05)
    assert KairosPolicy(p, margin_s=0.005, sure_miss="cheapest")(sure).instances.tolist() == [0]
    # both paths agree: the single free-columns query (scalar loop) and the matrix
    free = make_snapshot(p, batches=[800], types=["cpu", "gpu"], waited_s=[0.030], qos_s=0.05)
    assert KairosPolicy(p, margin_s=0.005)(free).instances.tolist() == [1]
    assert int(np.argmin(KairosPolicy(p, margin_s=0.005).cost_matrix(free, 1)[0])) == 1


@pytest.mark.parametrize("tiers", [True, False])
def test_a_one_query_decision_holds_while_no_cost_boundary_is_crossed(tiers: bool) -> None:
    """`hold_s`: for every batch, QoS and margin tried, a query that waited less than the hold gets the same
    column as at 0 s waited, on the scalar path and on the cost-matrix path; just past it, some column's
    cost has changed (the hold is a boundary, not a guess)."""
    p = make_profiles({"gpu": 1.5, "cpu": 1.2})
    types = ["gpu", "cpu", "cpu", "gpu", "cpu"]
    many = types * 8  # more columns than the scalar path takes: the cost matrix decides
    checked = 0
    for margin in (0.0, 0.001, 0.005):
        pol = KairosPolicy(p, margin_s=margin, tiers=tiers)
        for qos in (0.01, 0.03, 0.1, 0.3):
            for batch in (10, 200, 500, 1000):
                idx = [p.type_index(t) for t in types]
                hold = pol.hold_s(0, batch, qos, idx)
                for cols in (types, many):
                    at0 = pol(make_snapshot(p, [batch], cols, qos_s=qos)).instances.tolist()
                    for w in (hold / 2, hold * (1 - 1e-9)) if math.isfinite(hold) else (0.05, 1.0):
                        snap = make_snapshot(p, [batch], cols, waited_s=[w], qos_s=qos)
                        assert pol(snap).instances.tolist() == at0, (margin, qos, batch, w, hold)
                    if math.isfinite(hold):
                        c0 = pol.cost_matrix(make_snapshot(p, [batch], cols, qos_s=qos), 1)
                        past = pol.cost_matrix(make_snapshot(p, [batch], cols, waited_s=[hold + 1e-6], qos_s=qos), 1)
                        assert not np.array_equal(c0, past)
                        checked += 1
    assert checked > 20


def test_kairos_sure_miss_goes_to_the_cheapest_column_or_where_it_finishes_first() -> None:
    # batch 500 after 40 ms of waiting, QoS 40 ms: both types miss QoS on the mean. "cheapest" sends it
    # to the cpu (0.1 × its mean is less than 1 × the gpu's), "finish" to the gpu (it finishes first);
    # the same with a second query waiting (the matrix path), which either rule sends to the other column
    p = make_profiles()
    one = make_snapshot(p, batches=[500], types=["cpu", "gpu"], waited_s=[0.04], qos_s=0.04)
    assert KairosPolicy(p, sure_miss="cheapest")(one).pairs() == [(0, 0)]
    assert KairosPolicy(p, sure_miss="finish")(one).pairs() == [(0, 1)]
    two = make_snapshot(p, batches=[500, 500], types=["cpu", "gpu", "gpu"], waited_s=[0.04, 0.04],
                        busy_s=[0.0, 0.0, 0.5], qos_s=0.04)
    assert KairosPolicy(p, sure_miss="cheapest")(two).pairs()[0] == (0, 0)
    assert KairosPolicy(p, sure_miss="finish")(two).pairs()[0] == (0, 1)
    with pytest.raises(ConfigError, match="sure_miss"):
        make_policy("kairos", p, sure_miss="random")


def test_kairos_sure_miss_goes_to_the_cheapest_column_until_it_would_finish_beyond_the_bound() -> None:
    # QoS 100 ms, batch 500 (cpu 101 ms, gpu 10.9 ms on the mean): after 95 ms of waiting it misses
    # everywhere, and the cpu, cheapest, finishes it 196 ms after its arrival, within the bound of 2 QoS;
    # after 100 ms, at 201 ms, beyond it: the default rule then sends it where it finishes first
    p = make_profiles()
    qos = 0.1
    cpu_mean = float(p.mean_s[0, p.type_index("cpu"), 500])
    bound = SURE_MISS_BOUND_QOS * qos
    within, beyond = bound - cpu_mean - 0.004, bound - cpu_mean + 0.001
    pol = KairosPolicy(p)
    for cols, busy in ((["cpu", "gpu"], [0.0, 0.0]), (["cpu", "gpu"] * 20, [0.0] * 40)):  # scalar, matrix path
        for waited, expected in ((within, 0), (beyond, 1)):
            snap = make_snapshot(p, batches=[500], types=cols, waited_s=[waited], busy_s=busy, qos_s=qos)
            assert pol(snap).pairs() == [(0, expected)], (len(cols), waited)
            assert KairosPolicy(p, sure_miss="cheapest")(snap).pairs() == [(0, 0)]
    # the cpu busy for 5 ms puts the finish beyond the bound at a wait that is within it on a free cpu
    # (a second query waits: the matrix path); without the bound the busy cpu stays the cheapest column
    two = make_snapshot(p, batches=[500, 500], types=["cpu", "gpu", "gpu"], waited_s=[within, within],
                        busy_s=[0.005, 0.0, 0.5], qos_s=qos)
    assert (0, 1) in pol(two).pairs()
    assert (0, 1) not in KairosPolicy(p, sure_miss="cheapest")(two).pairs()
    # the bound is one of the boundaries the hold stops at: the batch-500 sure miss on a free cpu
    # changes its column at bound - cpu mean waited
    assert pol.hold_s(0, 500, qos, [p.type_index("cpu")]) <= bound - cpu_mean + 1e-12


def test_threshold_single_query_scalar_path_matches_the_array_path() -> None:
    """The threshold policy's scalar loop for one query picks the column its array path picks (the
    first sendable column of earliest finish on the query's side), or none, on random fleets."""
    p = make_profiles()
    rng = np.random.default_rng(11)
    sent = held = 0
    for trial in range(400):
        types, busy = random_fleet(rng, idle=trial % 2 == 1, busy_share=0.5, busy_max_s=0.05)
        n = len(types)
        snap = make_snapshot(p, [int(rng.integers(1, 1000))], types, busy_s=busy)
        if trial % 3 == 0:  # sendable busy columns too (pipelining)
            snap = Snapshot(snap.q_model, snap.q_batch, snap.q_waited_s, snap.q_qos_s, snap.i_type, snap.i_busy_s,
                            rng.random(n) < 0.7)
        pol = make_policy("threshold", p, threshold=int(rng.integers(10, 900)))
        one, many = pol(snap).pairs(), pol._many(snap).pairs()  # type: ignore[attr-defined]
        assert one == many
        sent, held = sent + bool(one), held + (not one)
    assert sent > 200 and held > 50  # both outcomes were exercised

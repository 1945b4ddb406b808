"""Simulator: queueing theory on a single server, determinism, the bound on real profiles, overload and
stuck queries, service-time noise, the snapshot the policies see, and the parallel evaluator."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from kairosd import synth, workload
from kairosd.dispatch import Assignment, FcfsPolicy, Snapshot, make_policy
from kairosd.errors import ConfigError
from kairosd.planner import BoundModel, upper_bound
from kairosd.profiles import ProfilePoint, ProfileTable
from kairosd.sim import (
    PathModel,
    SeedsEvaluator,
    ServiceModel,
    SimEvaluator,
    SimResult,
    below_max_qps,
    evaluate_config,
    fails_at,
    fleet_columns,
    max_qps,
    poisson_stream,
    simulate,
    trace_stream,
)

SERVICE_S = 0.002


def flat_table(service_s: float = SERVICE_S) -> ProfileTable:
    """One model, two types: 'fast' takes `service_s` for any batch, 'slow' twice that."""
    pts = [ProfilePoint(t, b, f * service_s, f * service_s) for t, f in (("fast", 1.0), ("slow", 2.0)) for b in (1, 1000)]
    return ProfileTable.build({"m": pts})


def test_single_server_mean_latency_matches_pollaczek_khinchine() -> None:
    """M/D/1: mean wait W = ρ·s / (2(1 − ρ)); sojourn = W + s."""
    table = flat_table()
    stream = poisson_stream(np.full(40_000, 100), seed=3)
    cols = fleet_columns(table, ["fast"], [1])
    for rho in (0.5, 0.8):
        rate = rho / SERVICE_S
        res = simulate(table, "m", cols, FcfsPolicy(table), rate, qos_s=10.0, stream=stream, abort=False)
        expected = rho * SERVICE_S / (2 * (1 - rho)) + SERVICE_S
        assert res.mean_s == pytest.approx(expected, rel=0.05)
        assert res.served_qps == pytest.approx(rate, rel=0.03)
        assert res.ok and res.violations == 0


def test_two_unequal_servers_prefer_the_fast_one() -> None:
    """At light load fastest_free sends nearly everything to the fast server; round robin does not."""
    table = flat_table()
    stream = poisson_stream(np.full(5000, 10), seed=1)
    cols = fleet_columns(table, ["fast", "slow"], [1, 1])
    fast = simulate(table, "m", cols, make_policy("fastest_free", table), 5.0, qos_s=1.0, stream=stream)
    rr = simulate(table, "m", cols, make_policy("round_robin", table), 5.0, qos_s=1.0, stream=stream)
    assert fast.mean_s < rr.mean_s
    # an arrival finds the fast server busy with probability ≈ its utilisation, 1%
    assert fast.mean_s == pytest.approx(0.99 * SERVICE_S + 0.01 * 2 * SERVICE_S, rel=0.01)
    assert rr.mean_s == pytest.approx(1.5 * SERVICE_S, rel=0.1)


def test_runs_are_deterministic_under_a_seed(wl: workload.KairosWorkload) -> None:
    setup = workload.sim_setup(wl, "wnd", n_queries=800, seed=4)
    cols = fleet_columns(wl.profiles, wl.types, [1, 0, 2, 0])
    runs = [simulate(wl.profiles, "wnd", cols, make_policy("kairos", wl.profiles), 300.0, qos_s=setup.qos_s,
                     stream=setup.stream, service=setup.service) for _ in range(2)]
    assert runs[0].p99_s == runs[1].p99_s and runs[0].policy_calls == runs[1].policy_calls
    other = workload.sim_setup(wl, "wnd", n_queries=800, seed=5)
    third = simulate(wl.profiles, "wnd", cols, make_policy("kairos", wl.profiles), 300.0, qos_s=other.qos_s,
                     stream=other.stream, service=other.service)
    assert third.p99_s != runs[0].p99_s


def test_max_qps_stays_below_the_bound_on_measured_profiles(wl: workload.KairosWorkload) -> None:
    model, cfg = "wnd", np.array([1, 0, 3, 0])
    pmf = workload.mix_pmf("kairos", wl.profiles.max_batch, n=200_000)
    bm = BoundModel.from_profiles(wl.profiles, model, wl.types, pmf, wl.qos_s[model])
    ub = float(upper_bound(cfg[None, :], bm)[0])
    setup = workload.sim_setup(wl, model, n_queries=1500, seed=1)
    res = evaluate_config(setup, cfg, ub)
    assert not res.exceeds_bound
    assert 0.5 * ub < res.qps < ub
    passed = [r for r, ok in res.probes if ok]
    failed = [r for r, ok in res.probes if not ok]
    assert res.qps == max(passed)
    # the bisection stopped with a failing rate within rel_tol·UB above the answer
    assert min(r for r in failed if r > res.qps) - res.qps <= setup.rel_tol * ub * 1.0001
    # the rate just above the bound failed: the bound held for this fleet
    assert failed[0] == pytest.approx(ub * (1 + setup.rel_tol))


def test_overload_fails_fast_and_light_load_passes(wl: workload.KairosWorkload) -> None:
    setup = workload.sim_setup(wl, "dien", n_queries=2000, seed=2)
    cols = fleet_columns(wl.profiles, wl.types, [2, 0, 4, 0])
    kw: dict[str, Any] = {"qos_s": setup.qos_s, "stream": setup.stream, "service": setup.service}
    heavy = simulate(wl.profiles, "dien", cols, make_policy("kairos", wl.profiles), 5000.0, **kw)
    assert not heavy.ok and heavy.aborted
    assert heavy.policy_calls < 800  # stopped long before the 2000 queries were through
    light = simulate(wl.profiles, "dien", cols, make_policy("kairos", wl.profiles), 50.0, **kw)
    assert light.ok and light.p99_s <= setup.qos_s and not light.lagging


def test_queries_no_instance_will_take_count_as_violations() -> None:
    table = flat_table()
    # threshold policy: batches > 100 only go to 'slow', which the fleet does not have
    policy = make_policy("threshold", table, threshold=100, large_types=["slow"])
    stream = poisson_stream(np.where(np.arange(600) % 2 == 0, 50, 500), seed=0)
    cols = fleet_columns(table, ["fast"], [2])
    res = simulate(table, "m", cols, policy, 100.0, qos_s=0.05, stream=stream)
    assert not res.ok and res.aborted
    no_abort = simulate(table, "m", cols, make_policy("threshold", table, threshold=100, large_types=["slow"]), 100.0,
                        qos_s=0.05, stream=stream, abort=False)
    assert not no_abort.ok and math.isinf(no_abort.p99_s)
    # the policy sees the oldest 2n = 4 waiting queries, like the daemon: once 4 large ones are
    # stuck at the head, the small ones behind them are never offered either (head-of-line blocking)
    assert no_abort.violations == no_abort.n_measured


@pytest.mark.parametrize("name", ["kairos", "fcfs", "fastest_free", "round_robin", "earliest_finish", "threshold"])
def test_every_dispatch_policy_runs_in_the_simulator(wl: workload.KairosWorkload, name: str) -> None:
    setup = workload.sim_setup(wl, "mtwnd", n_queries=500, seed=0)
    cols = fleet_columns(wl.profiles, wl.types, [1, 1, 2, 1])
    res = simulate(wl.profiles, "mtwnd", cols, make_policy(name, wl.profiles), 40.0, qos_s=setup.qos_s,
                   stream=setup.stream, service=setup.service, abort=False)
    assert res.n_measured == 450 and np.isfinite(res.mean_s)


class RecordingFcfs:
    """The real FCFS policy, keeping a copy of every snapshot it is shown."""

    name = "fcfs"

    def __init__(self, table: ProfileTable) -> None:
        self.inner = FcfsPolicy(table)
        self.snaps: list[Snapshot] = []

    def __call__(self, snap: Snapshot) -> Assignment:
        self.snaps.append(snap)
        return self.inner(snap)


def test_policies_see_what_the_daemon_shows_them() -> None:
    """At most 2n waiting queries; busy columns report their expected (profile) remaining time."""
    table = flat_table()
    stream = poisson_stream(np.full(3000, 100), seed=9)
    cols = fleet_columns(table, ["fast", "slow"], [1, 1])
    rec = RecordingFcfs(table)
    noisy = ServiceModel("lognormal", cv=0.5)
    simulate(table, "m", cols, rec, 600.0, qos_s=1.0, stream=stream, service=noisy, abort=False)
    assert max(s.m for s in rec.snaps) == 2 * len(cols)
    for s in rec.snaps:
        busy = ~s.i_free
        assert np.all(s.i_busy_s[s.i_free] == 0.0)
        assert np.all(s.i_busy_s[busy] >= 1e-6)
        # never more than a full expected service time ahead (2 ms on 'fast', 4 ms on 'slow')
        assert np.all(s.i_busy_s <= np.where(s.i_type == 0, SERVICE_S, 2 * SERVICE_S) + 1e-12)
        assert np.all(np.diff(s.q_waited_s) <= 1e-12)  # oldest first


def test_service_noise_from_measured_samples(wl: workload.KairosWorkload) -> None:
    p = wl.profiles
    rel = wl.samples.relative("ncf", p.types)
    stream = poisson_stream(workload.kairos_batch_mix(20_000, np.random.default_rng(0)), seed=1)
    svc = ServiceModel("samples", rel).times(p, "ncf", stream)
    mean = ServiceModel().times(p, "ncf", stream)
    np.testing.assert_allclose((svc / mean).mean(axis=0), 1.0, atol=0.01)
    q = 123
    g = stream.batches[q] // 10 - 1
    k = int(stream.noise_u[q] * rel.shape[2])
    t3 = p.type_index("t3.xlarge")
    assert svc[q, t3] == pytest.approx(p.mean_s[p.model_index("ncf"), t3, stream.batches[q]] * rel[t3, g, k])
    with pytest.raises(ConfigError):
        ServiceModel("samples")


def test_lognormal_noise_has_the_requested_spread() -> None:
    table = flat_table()
    stream = poisson_stream(np.full(50_000, 10), seed=2)
    svc = ServiceModel("lognormal", cv=0.3).times(table, "m", stream)[:, 0]
    assert svc.mean() == pytest.approx(SERVICE_S, rel=0.01)
    assert svc.std() / svc.mean() == pytest.approx(0.3, rel=0.05)


def test_trace_replay_scales_with_the_rate() -> None:
    times = np.cumsum(np.r_[0.0, np.tile([0.001, 0.003], 500)])
    st = trace_stream(times, np.full(len(times), 10))
    np.testing.assert_allclose(st.arrivals(500.0)[1:3] - st.arrivals(500.0)[0], [0.001, 0.004])
    np.testing.assert_allclose(np.diff(st.arrivals(1000.0))[:2], [0.0005, 0.0015])
    with pytest.raises(ConfigError):
        trace_stream(np.array([0.0, 2.0, 1.0]), np.ones(3))


def test_fleet_columns() -> None:
    table = flat_table()
    np.testing.assert_array_equal(fleet_columns(table, ["fast", "slow"], [2, 1], slots=[1, 3]), [0, 0, 1, 1, 1])
    with pytest.raises(ConfigError):
        fleet_columns(table, ["fast"], [0])
    with pytest.raises(ConfigError):
        fleet_columns(table, ["gpu"], [1])


def test_a_rate_above_capacity_fails_even_when_the_run_ends_within_qos() -> None:
    """One 2 ms server, QoS 1 s, 2,000 queries: at 105% of capacity the backlog after the run is only
    ~100 queries (0.2 s, within QoS and within the final-backlog check), yet the queue grows without
    bound; the run is refused because it handed out more service than the server had time for."""
    table = flat_table()
    stream = poisson_stream(np.full(2000, 10), seed=5)
    cols = fleet_columns(table, ["fast"], [1])
    over = simulate(table, "m", cols, FcfsPolicy(table), 1.05 / SERVICE_S, qos_s=1.0, stream=stream, abort=False)
    assert over.p99_s <= 1.0 and over.lagging and not over.ok
    under = simulate(table, "m", cols, FcfsPolicy(table), 0.85 / SERVICE_S, qos_s=1.0, stream=stream, abort=False)
    assert under.ok and not under.lagging


def test_one_slow_query_at_the_end_is_a_miss_but_a_backlog_at_the_end_fails_the_run() -> None:
    """One server, QoS 1 s, 2,000 queries of 2 ms. When the last query is a batch of 1,000 (3 s), it
    ends 3 s after the last arrival, past `LAG_QOS` × QoS: a single miss, and the run passes. When the
    last 12 queries (0.3 s each) arrive at once, the last of them waits 3.3 s for the server: a queue
    that has not drained 2 QoS after the last arrival, and the run fails, though its 9 misses keep the
    p99 within QoS."""
    table = ProfileTable.build({"m": [ProfilePoint("fast", 1, SERVICE_S, SERVICE_S), ProfilePoint("fast", 1000, 3.0, 3.0)]})
    cols = fleet_columns(table, ["fast"], [1])
    batches = np.ones(2000, dtype=np.int64)
    batches[-1] = 1000
    slow_last = simulate(table, "m", cols, FcfsPolicy(table), 100.0, qos_s=1.0, stream=poisson_stream(batches, seed=5),
                         abort=False)
    assert slow_last.violations == 1 and slow_last.ok and not slow_last.lagging
    assert slow_last.drain_s <= 1.0 < 2.0 < slow_last.end_s  # handed out at once, ends 3 s on
    runs: list[SimResult] = []
    found = max_qps(table, "m", cols, lambda: FcfsPolicy(table), qos_s=1.0, stream=poisson_stream(batches, seed=5),
                    ub_qps=400.0, observe=runs.append)
    assert [(r.offered_qps, r.ok) for r in runs] == list(found.probes) and found.qps > 100.0
    assert any(r.ok and r.end_s > 2.0 for r in runs)  # passing runs that the last completion alone would fail
    times = np.arange(2000) * 0.01
    times[-12:] = times[-13]
    batches = np.ones(2000, dtype=np.int64)
    batches[-12:] = 100
    burst = simulate(table, "m", cols, FcfsPolicy(table), 100.0, qos_s=1.0, stream=trace_stream(times, batches), abort=False)
    assert burst.violations == 9 and burst.p99_s <= 1.0 and burst.lagging and not burst.ok


def test_the_live_path_holds_the_instance_and_adds_to_the_latency() -> None:
    """M/D/1 again, with a fixed 1 ms hop (it holds the server: service 2 + 1 ms) and a 0.5 ms client
    way (latency only): at ρ = 0.5 of the 3 ms server the mean latency is the M/D/1 sojourn of a
    3 ms service plus 0.5 ms; a QoS that the run without the path meets by a hair is missed with it."""
    table = flat_table()
    stream = poisson_stream(np.full(40_000, 100), seed=3)
    cols = fleet_columns(table, ["fast"], [1])
    path = PathModel(hop_mean_s=0.001, client_s=0.0005)
    svc = SERVICE_S + 0.001
    rate = 0.5 / svc
    res = simulate(table, "m", cols, FcfsPolicy(table), rate, qos_s=10.0, stream=stream, abort=False, path=path)
    assert res.mean_s == pytest.approx(0.5 * svc / (2 * 0.5) + svc + 0.0005, rel=0.05)
    bare = simulate(table, "m", cols, FcfsPolicy(table), rate, qos_s=10.0, stream=stream, abort=False)
    qos = bare.p99_s * 1.01
    assert simulate(table, "m", cols, FcfsPolicy(table), rate, qos_s=qos, stream=stream).ok
    assert not simulate(table, "m", cols, FcfsPolicy(table), rate, qos_s=qos, stream=stream, path=path).ok
    # the client's way alone: the p99 the client sees is the head's plus client_s
    client = simulate(table, "m", cols, FcfsPolicy(table), rate, qos_s=10.0, stream=stream, abort=False,
                      path=PathModel(client_s=0.0005))
    assert client.p99_s == pytest.approx(bare.p99_s + 0.0005)


def test_a_pipelining_head_sends_ahead_within_hop_plus_tick_and_the_instance_queues() -> None:
    """Worked case, one 10 ms column, hop 2 ms (1 out, 1 back), tick 5 ms, window 7 ms: q0 granted at 0
    answers at 0.012 (expected finish 0.010); q1 arrives at 0.001, when the residual (9 ms) is outside
    the window, and is sent at the tick (0.006, residual 4 ms): it reaches the instance at 0.007, waits
    for q0 until 0.011, answers at 0.022. Without the tick it is sent at q0's answer (0.024), as it is
    without pipelining (window 0)."""
    from kairosd.sim import _run_pipelined

    table = flat_table(0.010)
    cols = fleet_columns(table, ["fast"], [1])
    svc = np.full((2, 2), 0.010)

    def run(window_s: float, tick_s: float) -> list[float]:
        finish, _, aborted, calls, work = _run_pipelined(
            np.array([0.0, 0.001]), svc, np.full(2, 0.002), svc, np.array([1, 1]), cols, FcfsPolicy(table), 0, 1.0, 0,
            10, 1.0, window_s, tick_s)
        assert not aborted and work == pytest.approx(0.020)
        return finish.tolist()

    assert run(0.007, 0.005) == pytest.approx([0.012, 0.022])
    assert run(0.007, 0.0) == pytest.approx([0.012, 0.024])
    assert run(0.0, 0.005) == pytest.approx([0.012, 0.024])


def test_pipelining_on_the_path_serves_more_than_holding_the_instance_for_the_hop() -> None:
    """The same 1 ms hop: held by the instance (a head that does not pipeline) it costs a third of a
    2 ms server's capacity; with pipelining the instance is held for its services alone. A policy that
    does not pipeline (round robin) gets no more from it."""
    table = flat_table()
    stream = poisson_stream(np.full(3000, 10), seed=5)
    cols = fleet_columns(table, ["fast"], [2])
    hold = PathModel(hop_mean_s=0.001, hop_sd_s=0.0005)
    pipe = PathModel(hop_mean_s=0.001, hop_sd_s=0.0005, pipeline_tick_s=0.001)

    def qps(path: PathModel, policy: str = "fcfs") -> float:
        return max_qps(table, "m", cols, lambda: make_policy(policy, table), qos_s=10 * SERVICE_S, stream=stream,
                       path=path).qps

    assert qps(pipe) > 1.15 * qps(hold)
    assert qps(pipe, "round_robin") == pytest.approx(qps(hold, "round_robin"), rel=0.05)
    with pytest.raises(ConfigError, match="pipeline_tick_s"):
        PathModel(pipeline_tick_s=-0.001)


def test_max_qps_falls_as_the_hop_grows_and_its_draws_are_log_normal() -> None:
    table = flat_table()
    stream = poisson_stream(np.full(3000, 10), seed=5)
    cols = fleet_columns(table, ["fast"], [1])
    qps = [max_qps(table, "m", cols, lambda: FcfsPolicy(table), qos_s=5 * SERVICE_S, stream=stream,
                   path=PathModel(hop_mean_s=h, hop_sd_s=h / 2)).qps for h in (0.0, 0.0005, 0.001)]
    assert qps[0] > qps[1] > qps[2] > 0
    hops = PathModel(hop_mean_s=0.0015, hop_sd_s=0.001, seed=7).hops(200_000)
    assert hops.mean() == pytest.approx(0.0015, rel=0.01)
    assert hops.std() == pytest.approx(0.001, rel=0.03)
    assert hops.min() > 0
    np.testing.assert_array_equal(hops[:10], PathModel(hop_mean_s=0.0015, hop_sd_s=0.001, seed=7).hops(10))
    with pytest.raises(ConfigError, match="needs a mean"):
        PathModel(hop_sd_s=0.001)
    with pytest.raises(ConfigError, match=">= 0"):
        PathModel(client_s=-0.001)


def test_max_qps_without_a_bound_finds_the_single_server_limit() -> None:
    table = flat_table()
    stream = poisson_stream(np.full(3000, 10), seed=5)
    cols = fleet_columns(table, ["fast"], [1])
    res = max_qps(table, "m", cols, lambda: FcfsPolicy(table), qos_s=5 * SERVICE_S, stream=stream)
    # M/D/1 with QoS = 5 s: p99 of the sojourn reaches 5 s well below saturation
    assert 0.4 / SERVICE_S < res.qps < 1.0 / SERVICE_S


def test_max_qps_bisects_below_its_last_failing_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """When every step down from the first guess fails (a fleet far below its bound), the search does
    not give up at 0: the light load it passed first bounds the bisection below the lowest failing rate."""
    import kairosd.sim as sim_mod

    class _Result:
        def __init__(self, ok: bool) -> None:
            self.ok = ok

    monkeypatch.setattr(sim_mod, "simulate", lambda *a, **k: _Result(a[4] <= 30.0))
    table = flat_table()
    stream = poisson_stream(np.full(100, 10), seed=5)
    cols = fleet_columns(table, ["fast"], [1])
    res = max_qps(table, "m", cols, lambda: FcfsPolicy(table), qos_s=1.0, stream=stream, ub_qps=60.0)
    assert res.probes[0] == (pytest.approx(sim_mod.LIGHT_LOAD_SHARE / SERVICE_S), True)  # 25/s: 5% of 500/s
    assert res.qps == pytest.approx(30.0, abs=0.6)
    monkeypatch.setattr(sim_mod, "simulate", lambda *a, **k: _Result(False))
    assert max_qps(table, "m", cols, lambda: FcfsPolicy(table), qos_s=1.0, stream=stream, ub_qps=60.0).qps == 0.0


def test_a_fleet_that_misses_qos_at_a_light_load_has_no_max_qps() -> None:
    """Under the Kairos paper's rule alone (feasibility on the mean, no tiers), an idle fleet sends some
    large batches to its cheap, heavy-tailed type, which misses QoS on more than 1% of the mix; under
    heavy load that type is busy and they go to the GPU-like type. The fleet passes at 400/s but not
    at a light load, so it has no rate at which a service keeps its target: max QPS 0, found below the
    light load (it misses the target there too, as every idle dispatch does)."""
    sw = synth.synth_workload(3003, max_configs=30)
    paper = {"lookahead": 0, "hold": False, "tiers": False, "tail": False}
    setup = workload.sim_setup(sw.workload, sw.model, n_queries=2000, seed=100, mix=sw.mix, policy_params=paper)
    fleet = [3, 1, 0, 0, 0]  # 3 × gpu0 + 1 × cpu1
    assert not fails_at(setup, fleet, 400.0)
    res = evaluate_config(setup, fleet, None)
    assert res.qps == 0.0 and not any(passed for _, passed in res.probes)
    assert all(rate <= res.probes[0][0] for rate, _ in res.probes)  # nothing searched above the light load
    # the one-run check Kairos+ makes before a search agrees: below 400/s, by a second run at the light load
    assert below_max_qps(setup, fleet, 400.0) and SimEvaluator(setup, workers=1).below(np.array(fleet), 400.0)
    # kairosd's own matching (p99 feasibility, tiers) keeps that type's tail off the large batches
    kairos = workload.sim_setup(sw.workload, sw.model, n_queries=2000, seed=100, mix=sw.mix)
    assert evaluate_config(kairos, fleet, None).qps > 400.0


def test_parallel_evaluator_matches_sequential(wl: workload.KairosWorkload) -> None:
    setup = workload.sim_setup(wl, "wnd", n_queries=500, seed=3)
    configs = np.array([[1, 0, 2, 0], [1, 1, 0, 1], [0, 0, 5, 0]])
    pmf = workload.mix_pmf("kairos", wl.profiles.max_batch, n=100_000)
    bm = BoundModel.from_profiles(wl.profiles, "wnd", wl.types, pmf, setup.qos_s)
    bound = lambda x: float(upper_bound(np.asarray(x)[None, :], bm)[0])
    seen: list[tuple[int, int]] = []
    par = SimEvaluator(setup, bound=bound, workers=2, progress=lambda d, t: seen.append((d, t)))
    seq = SimEvaluator(setup, bound=bound, workers=1)
    np.testing.assert_array_equal(par.many(configs), seq.many(configs))
    assert seen[-1] == (3, 3)
    assert par(configs[2]) == 0.0  # no type covering the mix: the bound is 0 and so is the simulation
    assert len(par.cache[(0, 0, 5, 0)].probes) == 1


def test_seeds_evaluator_is_the_mean_over_streams_with_its_spread(wl: workload.KairosWorkload) -> None:
    setups = tuple(workload.sim_setup(wl, "wnd", n_queries=400, seed=s) for s in (3, 13))
    configs = np.array([[1, 0, 2, 0], [1, 1, 0, 1]])
    pmf = workload.mix_pmf("kairos", wl.profiles.max_batch, n=100_000)
    bm = BoundModel.from_profiles(wl.profiles, "wnd", wl.types, pmf, setups[0].qos_s)
    bound = lambda x: float(upper_bound(np.asarray(x)[None, :], bm)[0])
    ev = SeedsEvaluator(setups, bound=bound, workers=2)
    per = np.array([[SimEvaluator(s, bound=bound, workers=1)(c) for s in setups] for c in configs])
    np.testing.assert_array_equal(ev.many(configs), per.mean(axis=1))
    np.testing.assert_array_equal(ev.values(configs[0]), per[0])  # cached: no new run
    assert ev(configs[1]) == per[1].mean()
    assert ev.spread(configs[0]) == pytest.approx((per[0].max() - per[0].min()) / per[0].mean())


def test_a_search_started_at_a_close_guess_finds_the_rate_in_fewer_runs(wl: workload.KairosWorkload) -> None:
    setup = workload.sim_setup(wl, "wnd", n_queries=600, seed=3)
    config = [1, 1, 0, 1]
    pmf = workload.mix_pmf("kairos", wl.profiles.max_batch, n=100_000)
    bm = BoundModel.from_profiles(wl.profiles, "wnd", wl.types, pmf, setup.qos_s)
    ub = float(upper_bound(np.array([config]), bm)[0])
    cold = evaluate_config(setup, config, ub)
    warm = evaluate_config(setup, config, ub, guess_qps=cold.qps)
    assert warm.probes[2][0] == pytest.approx(cold.qps)  # after the light load's and the bound's probes: the guess
    assert abs(warm.qps - cold.qps) <= 2 * setup.rel_tol * ub  # both within the search's tolerance
    assert len(warm.probes) < len(cold.probes)
    # a guess at or above the bound starts the search at the bound
    assert evaluate_config(setup, config, ub, guess_qps=10 * ub).probes[2][0] == pytest.approx(ub)
    guessed = SimEvaluator(setup, bound=lambda x: ub, workers=1, guess=lambda x: cold.qps)
    assert guessed.result(np.array(config)).probes == warm.probes


def test_seeds_evaluator_starts_the_later_streams_at_the_first_ones_mean(wl: workload.KairosWorkload) -> None:
    """One worker, three streams: a new configuration is searched on its first stream from `guess`, then
    on the others from that stream's result; a stream added later starts at the mean of all three (each
    search after its light-load run and the bound's probe)."""
    setups = tuple(workload.sim_setup(wl, "wnd", n_queries=500, seed=s) for s in (3, 13, 23, 33))
    config = np.array([1, 1, 0, 1])
    pmf = workload.mix_pmf("kairos", wl.profiles.max_batch, n=100_000)
    bm = BoundModel.from_profiles(wl.profiles, "wnd", wl.types, pmf, setups[0].qos_s)
    bound = lambda x: float(upper_bound(np.asarray(x)[None, :], bm)[0])
    ev = SeedsEvaluator(setups[:3], bound=bound, workers=1, guess=lambda x: 0.5 * bound(x),
                        more=lambda i: setups[i], max_streams=4)
    first, *later = ev.results(config)
    assert first.probes[2][0] == pytest.approx(0.5 * bound(config))
    assert all(r.probes[2][0] == pytest.approx(first.qps) for r in later)
    assert ev.add_streams(1)
    added = ev.results(config)[3]
    assert added.probes[2][0] == pytest.approx(np.mean([first.qps] + [r.qps for r in later]))
    assert abs(added.qps - SimEvaluator(setups[3], bound=bound, workers=1)(config)) <= 2 * setups[3].rel_tol * bound(config)


def test_seeds_evaluator_checks_a_rate_on_every_stream_in_parallel(wl: workload.KairosWorkload) -> None:
    """`below` in two processes answers as in one: true only when every stream misses the target at the rate."""
    setups = tuple(workload.sim_setup(wl, "wnd", n_queries=500, seed=s) for s in (3, 13, 23))
    config = np.array([1, 1, 0, 1])
    values = np.array([SimEvaluator(s, workers=1)(config) for s in setups])
    for rate in (0.5 * values.min(), 0.5 * (values.min() + values.max()), 1.5 * values.max()):
        one = SeedsEvaluator(setups, workers=1).below(config, rate)
        assert SeedsEvaluator(setups, workers=2).below(config, rate) == one
    assert SeedsEvaluator(setups, workers=2).below(config, 1.5 * values.max())
    assert not SeedsEvaluator(setups, workers=2).below(config, 0.5 * values.min())


def test_seeds_evaluator_checks_one_rate_per_stream(wl: workload.KairosWorkload) -> None:
    """`below` with one rate per stream: true only when every stream misses the target at its own rate;
    a stream whose rate is 0 shows nothing."""
    setups = tuple(workload.sim_setup(wl, "wnd", n_queries=500, seed=s) for s in (3, 13, 23))
    config = np.array([1, 1, 0, 1])
    values = np.array([SimEvaluator(s, workers=1)(config) for s in setups])
    assert values.min() > 0
    for workers in (1, 2):
        assert SeedsEvaluator(setups, workers=workers).below(config, 1.2 * values)
        # one stream at half its value meets the target there
        assert not SeedsEvaluator(setups, workers=workers).below(config, 1.2 * values * np.array([1.0, 0.5 / 1.2, 1.0]))
        assert not SeedsEvaluator(setups, workers=workers).below(config, 1.2 * values * np.array([1.0, 0.0, 1.0]))
    # the results a search left are used as they are, stream by stream
    ev = SeedsEvaluator(setups, workers=1)
    searched = ev.values(config)
    assert ev.below(config, searched + 1e-6) and not ev.below(config, searched)


def test_simulate_command(capsys: pytest.CaptureFixture[str]) -> None:
    from kairosd.cli import main

    args = ["simulate", "--model", "wnd", "--config", "g4dn.xlarge=1,r5n.large=2", "--queries", "800", "--mix", "kairos"]
    assert main(args + ["--rate", "100"]) == 0
    out = capsys.readouterr().out
    assert "1×g4dn.xlarge + 2×r5n.large (0.824 $/h)" in out and "OK" in out
    # far beyond what the fleet can serve: fails QoS, exit code 1
    assert main(args + ["--rate", "5000", "--policy", "fcfs"]) == 1
    assert "FAILS QoS" in capsys.readouterr().out
    assert main(args + ["--policy", "threshold", "--param", "threshold=400"]) == 0
    assert "max QPS with p99 <= QoS" in capsys.readouterr().out
    assert main(args + ["--param", "nonsense=1"]) == 2
    # the live path: the hop and the client's way lower the max QPS, the more when the hop holds the instances
    assert main(args) == 0
    bare = float(capsys.readouterr().out.split("max QPS with p99 <= QoS: ")[1].split()[0])
    assert main(args + ["--hop-ms", "0.5", "--hop-sd-ms", "0.25", "--client-ms", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "live path: hop 0.5 ± 0.25 ms, client 0.5 ms, pipelined (tick 5 ms)" in out
    pipelined = float(out.split("max QPS with p99 <= QoS: ")[1].split()[0])
    assert main(args + ["--hop-ms", "0.5", "--hop-sd-ms", "0.25", "--client-ms", "0.5", "--no-pipeline"]) == 0
    out = capsys.readouterr().out
    assert "not pipelined" in out
    assert float(out.split("max QPS with p99 <= QoS: ")[1].split()[0]) <= pipelined < bare
    assert main(args + ["--hop-ms", "-1"]) == 2
    # a fleet that misses QoS at a light load has no max QPS, and says so
    assert main(["simulate", "--model", "wnd", "--config", "r5n.large=2", "--queries", "800", "--mix", "kairos"]) == 1
    assert "it misses it already at a light load" in capsys.readouterr().out

"""Joint plan: the joint fluid bound by hand, against the exact joint LP, the single-model bound and the
simulator; `plan_fleet`'s objectives; several models on one simulated fleet."""

from __future__ import annotations

import numpy as np
import pytest

from kairosd import workload
from kairosd.dispatch import FcfsPolicy, make_policy
from kairosd.errors import ConfigError
from kairosd.planner import (
    POOL_SEP,
    QUEUE_SHRINK,
    BoundModel,
    FleetPlan,
    JointModel,
    ModelDemand,
    batch_pmf,
    enumerate_configs,
    joint_fluid_bound,
    joint_queue_estimate,
    joint_upper_bound,
    make_candidates,
    miss_from_samples,
    parse_pool,
    plan_fleet,
    planning_eps,
    pool_name,
    queue_estimate,
    select_kairos,
    upper_bound,
)
from kairosd.profiles import ProfilePoint, ProfileTable
from kairosd.sim import (
    MixStream,
    ServiceModel,
    fleet_columns,
    max_multiple,
    max_multiple_partitioned,
    max_qps,
    poisson_mix_stream,
    poisson_stream,
    simulate,
    simulate_mix,
)


def one_batch(lat_s: tuple[float, float], qos_s: float) -> tuple[BoundModel, np.ndarray]:
    """A model whose every query is batch 10, on types (big, small) with the given latencies; ε = 0."""
    lat = np.zeros((2, 11))
    lat[:, :] = np.asarray(lat_s)[:, None]
    pmf = np.zeros(11)
    pmf[10] = 1.0
    return BoundModel.build(lat, lat, pmf, qos_s, ("big", "small"), slack=0.0), pmf


def hand_case(rates: tuple[float, float] = (3.0, 1.0)) -> tuple[list[BoundModel], list[ModelDemand]]:
    """The module docstring's example: A 1 ms on big, 2 ms on small (QoS 5 ms); B 4 ms on big, 20 ms on
    small (QoS 10 ms: only big serves it)."""
    a, pa = one_batch((0.001, 0.002), 0.005)
    b, pb = one_batch((0.004, 0.020), 0.010)
    return [a, b], [ModelDemand("a", rates[0], pa), ModelDemand("b", rates[1], pb)]


# ---------------------------------------------------------------------------------------------- the bound


def test_two_types_two_models_by_hand() -> None:
    models, demand = hand_case()
    configs = np.array([[1, 1], [1, 0], [0, 1], [2, 1]])
    # 1 + 1: B on big (Λ ms), A fills big and small: 0.75·Λ = 1000 − Λ + 500 → Λ = 857.1, λ = Λ/4
    # 1 + 0: 0.75·Λ·1 ms + 0.25·Λ·4 ms = 1 s → Λ = 571.4; 0 + 1: small cannot serve B → 0
    # 2 + 1: 0.75·Λ = 2000 − Λ + 500 → Λ = 1428.6
    expected = np.array([1500 / 1.75, 1 / 0.00175, 0.0, 2500 / 1.75]) / 4
    np.testing.assert_allclose(joint_upper_bound(configs, models, demand), expected, rtol=1e-6)
    for c, x in zip(configs, expected, strict=True):
        assert joint_fluid_bound(c, models, demand) == pytest.approx(x, rel=1e-6)
    # planned apart at the 3:1 ratio: A alone on small (500/s), B alone on big (250/s) → Λ = 666.7
    split = min(upper_bound(np.array([[0, 1]]), models[0])[0] / 0.75, upper_bound(np.array([[1, 0]]), models[1])[0] / 0.25)
    assert split == pytest.approx(666.67, rel=1e-4)
    assert split < 4 * expected[0]
    # zero-rate models do not constrain; all-zero demand has no multiple
    only_a = [ModelDemand("a", 2.0, demand[0].batch_pmf), ModelDemand("b", 0.0, demand[1].batch_pmf)]
    np.testing.assert_allclose(joint_upper_bound(configs, models, only_a), upper_bound(configs, models[0]) / 2.0)
    with pytest.raises(ConfigError, match="zero"):
        joint_upper_bound(configs, models, [ModelDemand(d.model, 0.0, d.batch_pmf) for d in demand])


def _kairos_models(wl: workload.KairosWorkload, pmf: np.ndarray, names: tuple[str, ...]) -> list[BoundModel]:
    return [BoundModel.from_profiles(wl.profiles, m, wl.types, pmf, wl.qos_s[m]) for m in names]


def test_joint_bound_reduces_to_the_single_model_bound(wl: workload.KairosWorkload, pmf: np.ndarray) -> None:
    (bm,) = _kairos_models(wl, pmf, ("wnd",))
    configs = enumerate_configs(wl.prices_usd_per_hour, 2.5)
    ub = upper_bound(configs, bm)
    np.testing.assert_array_equal(joint_upper_bound(configs, [bm], [ModelDemand("wnd", 2.0, pmf)]), ub / 2.0)
    # the general (two-model) path on two copies of one model: the same fluid LP
    twin = BoundModel.from_profiles(wl.profiles, "wnd", wl.types, pmf, wl.qos_s["wnd"])
    jm = JointModel.build([bm, twin], [1.0, 3.0])
    got = jm.bound_qps(configs)
    live = ub > 0
    np.testing.assert_array_equal(got > 0, live)
    assert np.all(got[live] / ub[live] > 1 - 1e-6) and np.median(got[live] / ub[live]) < 1.01


def test_joint_bound_is_above_the_exact_lp_and_close(wl: workload.KairosWorkload, pmf: np.ndarray) -> None:
    models = _kairos_models(wl, pmf, ("ncf", "dien"))
    demand = [ModelDemand("ncf", 3.0, pmf), ModelDemand("dien", 1.0, pmf)]
    configs = enumerate_configs(wl.prices_usd_per_hour, 2.5, maximal_only=False)
    ub = joint_upper_bound(configs, models, demand)
    sample = np.random.default_rng(1).choice(len(configs), 25, replace=False)
    lp = np.array([joint_fluid_bound(configs[i], models, demand) for i in sample])
    assert np.all(ub[sample] >= lp * (1 - 1e-7))
    pos = lp > 0
    assert np.median(ub[sample][pos] / lp[pos]) < 1.01
    np.testing.assert_array_equal(ub[sample] > 0, pos)
    # more of any present type never lowers it; the estimate stays below it
    est = joint_queue_estimate(configs, models, demand)
    assert np.all(est <= ub + 1e-9)


def test_joint_bound_holds_in_simulation(wl: workload.KairosWorkload) -> None:
    """Both models on small fleets: the simulated max multiple never exceeds the joint bound."""
    names = ("wnd", "mtwnd")
    batches = workload.kairos_batch_mix(800, np.random.default_rng(3))
    stream = poisson_mix_stream(batches, [0.75, 0.25], 4)
    services = [ServiceModel("samples", wl.samples.relative(m, wl.profiles.types), workload.GRID_STEP) for m in names]
    ti = [wl.profiles.type_index(t) for t in wl.types]
    models, demand = [], []
    for g, m in enumerate(names):
        mix = batch_pmf(stream.part(g).batches, wl.profiles.max_batch)
        mean_s = wl.profiles.mean_s[wl.profiles.model_index(m)][ti]
        miss = miss_from_samples(mean_s, wl.samples.relative(m, wl.types), wl.qos_s[m], workload.GRID_STEP)
        models.append(BoundModel.from_profiles(wl.profiles, m, wl.types, mix, wl.qos_s[m], miss=miss))
        demand.append(ModelDemand(m, [0.75, 0.25][g], mix))
    factory = lambda: make_policy("kairos", wl.profiles)
    for counts in ([1, 0, 2, 0], [2, 0, 0, 1], [1, 0, 0, 0]):
        ub = float(joint_upper_bound(np.array([counts]), models, demand)[0])
        cols = fleet_columns(wl.profiles, wl.types, counts)
        res = max_multiple(wl.profiles, list(names), cols, factory, qos_s=[wl.qos_s[m] for m in names], stream=stream,
                           services=services, ub_multiple=ub)
        assert not res.exceeds_bound and res.multiple <= ub, (counts, res.multiple, ub)
        assert res.multiple > 0.3 * ub, counts


# ---------------------------------------------------------------------------------------------- plan_fleet


def test_max_throughput_with_one_model_is_select_kairos(wl: workload.KairosWorkload, pmf: np.ndarray) -> None:
    """The same choice as `select_kairos` at the default share of the discount given back, at none (the
    estimate alone) and at all of it (the bound alone), which differ on some of these."""
    by_shrink: dict[float, list[list[int]]] = {}
    for model, budget in (("wnd", 2.5), ("mtwnd", 2.5), ("ncf", 1.5), ("dien", 3.5), ("ncf", 2.5), ("mtwnd", 1.5)):
        bm = BoundModel.from_profiles(wl.profiles, model, wl.types, pmf, wl.qos_s[model])
        cands = make_candidates(bm, wl.prices_usd_per_hour, budget)
        for shrink in (QUEUE_SHRINK, 0.0, 1.0):
            want = select_kairos(cands, shrink=shrink).config
            plan = plan_fleet(wl.profiles, wl.types, wl.prices_usd_per_hour, budget, [ModelDemand(model, 100.0, pmf)],
                              wl.qos_s, shrink=shrink)
            assert [plan.counts[t] for t in wl.types] == want.tolist(), (model, shrink)
            assert plan.objective == "max_throughput" and plan.cost_usd_per_hour <= budget
            assert 0 < plan.multiple <= plan.bound_multiple
            by_shrink.setdefault(shrink, []).append(want.tolist())
    # ncf at 2.5 $/h: 1 × g4dn + 1 × c5n + 10 × r5n by the estimate alone, 1 × g4dn + 13 × r5n by the score;
    # mtwnd at 1.5 $/h: 2 × g4dn + 3 × r5n by the score, 1 × g4dn + 6 × r5n by the bound alone
    assert by_shrink[0.0] != by_shrink[QUEUE_SHRINK] != by_shrink[1.0]


def test_min_cost_scales_with_the_rate_and_respects_budget_and_availability(wl: workload.KairosWorkload,
                                                                             pmf: np.ndarray) -> None:
    plan = lambda rates, **kw: plan_fleet(wl.profiles, wl.types, wl.prices_usd_per_hour, 2.5,
                                          [ModelDemand("wnd", rates[0], pmf), ModelDemand("mtwnd", rates[1], pmf)],
                                          wl.qos_s, objective="min_cost", **kw)
    big, small = plan((600.0, 200.0)), plan((150.0, 50.0))
    assert small.cost_usd_per_hour < big.cost_usd_per_hour <= 2.5
    for p in (big, small):
        assert p.multiple >= 1.2 and p.bound_multiple >= p.multiple and "cheapest" in p.reason
    # more than the budget can serve: the max_throughput choice, said so
    over = plan((6000.0, 2000.0))
    best = plan_fleet(wl.profiles, wl.types, wl.prices_usd_per_hour, 2.5,
                      [ModelDemand("wnd", 6000.0, pmf), ModelDemand("mtwnd", 2000.0, pmf)], wl.qos_s)
    assert over.counts == best.counts and over.multiple < 1.2 and "no configuration" in over.reason
    # unavailable types get 0; a type that is not in the catalogue is ignored
    no_r5n = plan((150.0, 50.0), unavailable={"r5n.large", "p3.2xlarge"})
    assert no_r5n.counts["r5n.large"] == 0 and no_r5n.cost_usd_per_hour <= 2.5 and no_r5n.multiple >= 1.2
    assert plan((150.0, 50.0), max_counts=[5, 6, 0, 15]).counts == no_r5n.counts
    # without the GPU no type meets wnd's p99 on its large batches: the plan says so
    assert "no configuration can serve every model" in plan((150.0, 50.0), unavailable={"g4dn.xlarge"}).reason
    # zero demand: the cheapest fleet that serves every model, or none
    idle = plan((0.0, 0.0))
    assert sum(idle.counts.values()) >= 1 and idle.cost_usd_per_hour <= small.cost_usd_per_hour
    assert plan((0.0, 0.0), keep_warm=False).counts == {t: 0 for t in wl.types}
    # nothing available at all: an empty plan that says why
    none = plan((1.0, 1.0), unavailable=set(wl.types))
    assert none.counts == {t: 0 for t in wl.types} and "unavailable" in none.reason


def test_plan_fleet_refuses_bad_inputs(wl: workload.KairosWorkload, pmf: np.ndarray) -> None:
    d = [ModelDemand("wnd", 1.0, pmf)]
    args = (wl.profiles, wl.types, wl.prices_usd_per_hour, 2.5)
    with pytest.raises(ConfigError, match="max_throughput.*min_cost"):
        plan_fleet(*args, d, wl.qos_s, objective="cheapest")
    with pytest.raises(ConfigError, match="QoS"):
        plan_fleet(*args, d, {})
    with pytest.raises(ConfigError, match="once"):
        plan_fleet(*args, d + d, wl.qos_s)


def test_hand_case_plans_one_shared_fleet() -> None:
    """On the hand case the joint plan buys big + small at 1.5 $/h for both models."""
    pts = {
        "a": [ProfilePoint(t, b, s, s) for t, s in (("big", 0.001), ("small", 0.002)) for b in (1, 10)],
        "b": [ProfilePoint(t, b, s, s) for t, s in (("big", 0.004), ("small", 0.020)) for b in (1, 10)],
    }
    table = ProfileTable.build(pts, max_batch=10)
    pmf = np.zeros(11)
    pmf[10] = 1.0
    plan = plan_fleet(table, ("big", "small"), (1.0, 0.5), 1.5, [ModelDemand("a", 3.0, pmf), ModelDemand("b", 1.0, pmf)],
                      {"a": 0.005, "b": 0.010})
    assert plan.counts == {"big": 1, "small": 1}
    # λ ≤ 857.1/4 with the p99 slack of 1% a little above it
    assert plan.bound_multiple == pytest.approx(857.14 / 4, rel=0.02)


# ---------------------------------------------------------------------------------------------- simulator


def two_model_table() -> ProfileTable:
    """Models 'a' (2 ms) and 'b' (8 ms) on one type, any batch."""
    pts = {m: [ProfilePoint("cpu", b, s, s) for b in (1, 1000)] for m, s in (("a", 0.002), ("b", 0.008))}
    return ProfileTable.build(pts)


def test_mixed_stream_parts_keep_their_arrival_times() -> None:
    stream = poisson_mix_stream(np.full(3000, 10), [3.0, 1.0], seed=2)
    share = np.bincount(stream.group, minlength=2) / len(stream)
    assert share[0] == pytest.approx(0.75, abs=0.03)
    t = stream.arrivals(5.0)
    for g in range(2):
        part = stream.part(g)
        np.testing.assert_allclose(part.arrivals(5.0 * stream.rates_qps[g]), t[stream.group == g], rtol=1e-12)


def test_each_model_is_judged_on_its_own_p99() -> None:
    table = two_model_table()
    stream = poisson_mix_stream(np.full(4000, 10), [1.0, 1.0], seed=5)
    cols = fleet_columns(table, ["cpu"], [2])
    run = lambda qos, rate: simulate_mix(table, ["a", "b"], cols, FcfsPolicy(table), rate, qos_s=qos, stream=stream,
                                         abort=False)
    light = run([0.1, 0.1], 10.0)  # 20 q/s on 2 servers busy 10% of the time
    assert light.ok and light.violations == (0, 0)
    assert light.p99_s[0] < 0.1 * 0.2 and 0.008 <= light.p99_s[1] < 0.02
    assert sum(light.n_measured) == 4000 - 400
    # b's QoS below its own service time: b fails, a does not, and the run fails
    tight = run([0.1, 0.005], 10.0)
    assert not tight.ok and tight.violations[0] == 0 and tight.violations[1] == tight.n_measured[1]
    # a's p99 moves with b's load on the shared servers (2 ms alone; queued behind 8 ms services)
    busy = run([0.1, 0.1], 100.0)
    assert busy.p99_s[0] > light.p99_s[0]


def test_one_group_mix_runs_exactly_like_simulate(wl: workload.KairosWorkload) -> None:
    setup = workload.sim_setup(wl, "wnd", n_queries=600, seed=1)
    cols = fleet_columns(wl.profiles, wl.types, [1, 0, 3, 0])
    mix = MixStream(setup.stream, np.zeros(len(setup.stream), dtype=np.intp), np.array([1.0]))
    for rate in (300.0, 900.0):
        one = simulate(wl.profiles, "wnd", cols, make_policy("kairos", wl.profiles), rate, qos_s=setup.qos_s,
                       stream=setup.stream, service=setup.service)
        both = simulate_mix(wl.profiles, ["wnd"], cols, make_policy("kairos", wl.profiles), rate, qos_s=[setup.qos_s],
                            stream=mix, services=[setup.service])
        assert (one.ok, one.aborted, one.p99_s, one.policy_calls) == (both.ok, both.aborted, both.p99_s[0], both.policy_calls)
    # a plain Poisson stream labelled with one group is the same stream
    labelled = poisson_mix_stream(np.full(50, 10), [2.0], 7)
    np.testing.assert_array_equal(labelled.stream.gaps, poisson_stream(np.full(50, 10), 7).gaps)


# ---------------------------------------------------------------------------------------------- partitions


def test_pool_names_round_trip() -> None:
    assert POOL_SEP == "@"
    assert pool_name("g4dn.xlarge", None) == "g4dn.xlarge" and parse_pool("g4dn.xlarge") == ("g4dn.xlarge", None)
    assert pool_name("g4dn.xlarge", "wnd") == "g4dn.xlarge@wnd" and parse_pool("g4dn.xlarge@wnd") == ("g4dn.xlarge", "wnd")
    for t, m in (("c5n.2xlarge", "a@b"), ("cpu", "m"), ("t3.xlarge", None)):
        assert parse_pool(pool_name(t, m)) == (t, m)
    for bad in ("", "@wnd", "cpu@"):
        with pytest.raises(ConfigError):
            parse_pool(bad)
    with pytest.raises(ConfigError):
        pool_name("a@b", "wnd")
    with pytest.raises(ConfigError):
        pool_name("cpu", "")


def test_fleet_plan_pools_add_up_to_counts() -> None:
    shared = FleetPlan({"big": 2, "small": 0}, 2.0, 1.0, 1.0, "max_throughput", "r")
    assert shared.pools == {"big": 2} and not shared.partitioned and shared.pinned("a") == {}
    part = FleetPlan({"big": 2, "small": 1}, 2.5, 1.0, 1.0, "max_throughput", "r",
                     {"big@a": 1, "big@b": 1, "small@a": 1}, True)
    assert part.pinned("a") == {"big": 1, "small": 1} and part.pinned("b") == {"big": 1}
    with pytest.raises(ConfigError, match="add up"):
        FleetPlan({"big": 2}, 2.0, 1.0, 1.0, "max_throughput", "r", {"big@a": 1}, True)


def pooling_table() -> ProfileTable:
    """One type "cpu" (1 $/h); model "a" 1 ms (QoS 3 ms), "b" 50 ms (QoS 200 ms), "c" as "a": on a shared
    instance a's queries wait behind b's 50 ms services, far beyond a's 2 ms of slack."""
    pts = {m: [ProfilePoint("cpu", b, s, s) for b in (1, 10)] for m, s in (("a", 0.001), ("b", 0.050), ("c", 0.001))}
    return ProfileTable.build(pts, max_batch=10)


POOLING_QOS = {"a": 0.003, "b": 0.200, "c": 0.003}


def _batch10() -> np.ndarray:
    pmf = np.zeros(11)
    pmf[10] = 1.0
    return pmf


def _consistent(plan: FleetPlan, types: tuple[str, ...], prices: tuple[float, ...], budget: float) -> None:
    per_type: dict[str, int] = {}
    for pool, n in plan.pools.items():
        t, m = parse_pool(pool)
        assert n > 0 and (m is not None) == plan.partitioned
        per_type[t] = per_type.get(t, 0) + n
    assert per_type == {t: n for t, n in plan.counts.items() if n} and set(plan.counts) == set(types)
    assert plan.cost_usd_per_hour == pytest.approx(sum(plan.counts[t] * p for t, p in zip(types, prices, strict=True)))
    assert plan.cost_usd_per_hour <= budget + 1e-9


def test_partitioned_wins_when_pooling_hurts_a_short_slack() -> None:
    table, pmf = pooling_table(), _batch10()
    demand = [ModelDemand("a", 100.0, pmf), ModelDemand("b", 10.0, pmf)]
    for budget in (2.0, 4.0, 8.0):
        plan = plan_fleet(table, ("cpu",), (1.0,), budget, demand, POOLING_QOS)
        shared = plan_fleet(table, ("cpu",), (1.0,), budget, demand, POOLING_QOS, partition=False)
        _consistent(plan, ("cpu",), (1.0,), budget)
        assert plan.partitioned and "partitioned" in plan.reason and plan.multiple > shared.multiple
        assert plan.pinned("a")["cpu"] >= 1 and plan.pinned("b")["cpu"] >= 1 and plan.counts["cpu"] == budget
        assert 0 < plan.multiple <= plan.bound_multiple
        assert not shared.partitioned and shared.pools == {"cpu": int(budget)}
    # caps apply to the parts together
    capped = plan_fleet(table, ("cpu",), (1.0,), 8.0, demand, POOLING_QOS, max_counts=[3])
    assert capped.partitioned and capped.counts == {"cpu": 3}
    assert plan_fleet(table, ("cpu",), (1.0,), 8.0, demand, POOLING_QOS, unavailable={"cpu"}).pools == {}


def test_partition_gives_a_model_without_demand_its_cheapest_part() -> None:
    table, pmf = pooling_table(), _batch10()
    demand = [ModelDemand("a", 100.0, pmf), ModelDemand("b", 10.0, pmf), ModelDemand("c", 0.0, pmf)]
    plan = plan_fleet(table, ("cpu",), (1.0,), 5.0, demand, POOLING_QOS)
    _consistent(plan, ("cpu",), (1.0,), 5.0)
    assert plan.partitioned and plan.pinned("c") == {"cpu": 1} and plan.counts == {"cpu": 5}


def test_shared_wins_on_the_two_type_example() -> None:
    """The module docstring's example: sharing big and small beats A on small + B on big."""
    pts = {
        "a": [ProfilePoint(t, b, s, s) for t, s in (("big", 0.001), ("small", 0.002)) for b in (1, 10)],
        "b": [ProfilePoint(t, b, s, s) for t, s in (("big", 0.004), ("small", 0.020)) for b in (1, 10)],
    }
    table = ProfileTable.build(pts, max_batch=10)
    plan = plan_fleet(table, ("big", "small"), (1.0, 0.5), 1.5, [ModelDemand("a", 3.0, _batch10()),
                                                                 ModelDemand("b", 1.0, _batch10())], {"a": 0.005, "b": 0.010})
    assert not plan.partitioned and plan.pools == {"big": 1, "small": 1} and "best partition" in plan.reason


def test_kairos_partition_and_shared_choices(wl: workload.KairosWorkload, pmf: np.ndarray) -> None:
    """rm2 (40-390 ms services) beside wnd (25 ms QoS): pinned at 2.5 $/h; wnd + mtwnd: shared."""
    types, prices = wl.types, wl.prices_usd_per_hour
    rm2_wnd = [ModelDemand("rm2", 0.75, pmf), ModelDemand("wnd", 0.25, pmf)]
    plan = plan_fleet(wl.profiles, types, prices, 2.5, rm2_wnd, wl.qos_s)
    _consistent(plan, tuple(types), tuple(prices), 2.5)
    assert plan.partitioned and plan.pinned("wnd").get("g4dn.xlarge", 0) >= 1 and plan.pinned("rm2")
    parts = [np.array([plan.pinned(m).get(t, 0) for t in types]) for m in ("rm2", "wnd")]
    bms = _kairos_models(wl, pmf, ("rm2", "wnd"))
    lam = min(float(queue_estimate(c[None, :], bm, eps=planning_eps())[0]) / d.rate_qps
              for c, bm, d in zip(parts, bms, rm2_wnd, strict=True))
    assert plan.multiple == pytest.approx(lam)
    shared = plan_fleet(wl.profiles, types, prices, 2.5, rm2_wnd, wl.qos_s, partition=False)
    assert plan.multiple > shared.multiple and not shared.partitioned
    wnd_mtwnd = [ModelDemand("wnd", 0.75, pmf), ModelDemand("mtwnd", 0.25, pmf)]
    plan = plan_fleet(wl.profiles, types, prices, 2.5, wnd_mtwnd, wl.qos_s)
    assert not plan.partitioned and plan.pools == {t: n for t, n in plan.counts.items() if n}
    alone = plan_fleet(wl.profiles, types, prices, 2.5, wnd_mtwnd, wl.qos_s, partition=False)
    assert (plan.pools, plan.multiple) == (alone.pools, alone.multiple) and "best partition" in plan.reason
    # one model with demand: never partitioned
    one = plan_fleet(wl.profiles, types, prices, 2.5, [ModelDemand("rm2", 1.0, pmf), ModelDemand("wnd", 0.0, pmf)], wl.qos_s)
    assert not one.partitioned


def test_min_cost_partition() -> None:
    table, pmf = pooling_table(), _batch10()
    demand = [ModelDemand("a", 100.0, pmf), ModelDemand("b", 10.0, pmf)]
    plan = plan_fleet(table, ("cpu",), (1.0,), 8.0, demand, POOLING_QOS, objective="min_cost")
    shared = plan_fleet(table, ("cpu",), (1.0,), 8.0, demand, POOLING_QOS, objective="min_cost", partition=False)
    _consistent(plan, ("cpu",), (1.0,), 8.0)
    assert plan.partitioned and "cheapest" in plan.reason and plan.multiple >= 1.2
    assert shared.multiple >= 1.2 and plan.cost_usd_per_hour < shared.cost_usd_per_hour
    # each part is the cheapest that covers its model: one instance fewer for either misses the headroom
    for m in ("a", "b"):
        fewer = {mm: plan.pinned(mm)["cpu"] - (mm == m) for mm in ("a", "b")}
        if fewer[m] == 0:
            continue
        bm = BoundModel.from_profiles(table, m, ("cpu",), pmf, POOLING_QOS[m])
        rate = 100.0 if m == "a" else 10.0
        assert queue_estimate(np.array([[fewer[m]]]), bm)[0] < 1.2 * rate


# ---------------------------------------------------------------------------------------------- partitioned simulation


def test_partitioned_fleet_is_each_part_on_its_own_stream() -> None:
    table = two_model_table()
    stream = poisson_mix_stream(np.full(1500, 10), [3.0, 1.0], seed=9)
    one = fleet_columns(table, ["cpu"], [1])
    factory = lambda: FcfsPolicy(table)
    res = max_multiple_partitioned(table, ["a", "b"], [one, one], factory, qos_s=[0.02, 0.05], stream=stream)
    alone = [max_qps(table, m, one, factory, qos_s=q, stream=stream.part(g)).qps / stream.rates_qps[g]
             for g, (m, q) in enumerate((("a", 0.02), ("b", 0.05)))]
    assert res.per_model == pytest.approx(tuple(alone), rel=0, abs=0) and res.multiple == min(alone)
    assert res.multiple > 0 and not res.exceeds_bound
    # no part for a model with demand: λ = 0; a model without demand does not constrain
    assert max_multiple_partitioned(table, ["a", "b"], [one, None], factory, qos_s=[0.02, 0.05], stream=stream).multiple == 0
    idle = poisson_mix_stream(np.full(600, 10), [1.0, 0.0], seed=9)
    res = max_multiple_partitioned(table, ["a", "b"], [one, None], factory, qos_s=[0.02, 0.05], stream=idle)
    assert res.per_model[1] == float("inf") and res.multiple == res.per_model[0] > 0


def test_a_tight_model_on_auxiliaries_kept_busy_by_long_services() -> None:
    """Model a (1 ms on gpu, 1.5 ms on cpu, QoS 3 ms, 2 q/s) beside b (10 ms on gpu, 40 ms on cpu, QoS 400 ms,
    100 q/s) on gpu (1 $/h) and cpu (0.25 $/h): in a shared fleet a's queries need an idle instance at once,
    and b's services keep the instances busy. The joint estimate does not count them served by a share of
    the auxiliaries' time: no shared fleet is estimated above what the simulator serves, and the plan
    pins a's instances apart, which the simulator puts above the best shared fleet."""
    lat = {"a": (0.001, 0.0015), "b": (0.010, 0.040)}
    qos = {"a": 0.003, "b": 0.400}
    types, prices = ("gpu", "cpu"), (1.0, 0.25)
    table = ProfileTable.build({m: [ProfilePoint(t, b, s, s) for t, s in zip(types, lat[m], strict=True) for b in (1, 10)]
                                for m in lat}, max_batch=10)
    pmf = _batch10()
    models = []
    for m in ("a", "b"):
        cells = np.repeat(np.asarray(lat[m])[:, None], 11, axis=1)
        models.append(BoundModel.build(cells, cells, pmf, qos[m], types, slack=planning_eps()))
    demand = [ModelDemand("a", 2.0, pmf), ModelDemand("b", 100.0, pmf)]
    stream = poisson_mix_stream(np.full(20_000, 10), [2.0, 100.0], seed=3)
    factory = lambda: make_policy("kairos", table)
    shared = np.array([[1, 6], [2, 4], [2, 2], [1, 3]])
    est = joint_queue_estimate(shared, models, demand)
    served = [max_multiple(table, ["a", "b"], fleet_columns(table, types, tuple(int(x) for x in c)), factory,
                           qos_s=[qos["a"], qos["b"]], stream=stream).multiple for c in shared]
    assert np.all(est > 0) and np.all(est <= np.array(served)), (est, served)

    plan = plan_fleet(table, types, prices, 2.5, demand, qos)
    assert plan.partitioned and plan.pinned("a") and plan.pinned("b")
    parts = [fleet_columns(table, types, tuple(plan.pinned(m).get(t, 0) for t in types)) for m in ("a", "b")]
    pinned = max_multiple_partitioned(table, ["a", "b"], parts, factory, qos_s=[qos["a"], qos["b"]], stream=stream)
    assert pinned.multiple > max(served)

"""Kairos+ for the autoscaler (`kairosd.autoscale.refine`): the walk over the observed mix in a child
interpreter, the simulator drawing from the distributions the estimate weighs, and the target handing the
refined plan over once the walk ends."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kairosd import config, synth, workload
from kairosd.autoscale.load import LoadWindow
from kairosd.autoscale.refine import BackgroundRefiner, RefineError, RefineJob, refine, refine_isolated, refined_plan
from kairosd.autoscale.target import PlannerTarget, config_planner, config_refiner, lognormal_pmf
from kairosd.daemon import load_profiles
from kairosd.errors import ConfigError
from kairosd.planner import make_candidates, select_kairos
from kairosd.planner.demand import ModelDemand
from kairosd.planner.joint import FleetPlan
from kairosd.planner.tails import SIM_QUANTILES, tailed_model, workload_tails
from kairosd.sim import SeedsEvaluator, ServiceModel, SimSetup, poisson_stream

REPO = Path(__file__).resolve().parents[2]
# a held-out workload on which the one-shot kairos choice is 0.855 of the judged optimum
# (bench/results/planner_robust_8664.json)
SEED = 8671
PLANNER_MIX_SEED = 7  # bench/planner_robust.py's


def synth_job(seed: int, time_limit_s: float = 30.0) -> tuple[RefineJob, synth.SynthWorkload]:
    """The job the autoscaler makes for one synthetic workload: its types, prices, budget and QoS, the
    planner's population mix at 100 q/s, the samples' tables for every type, the Kairos dispatcher."""
    sw = synth.synth_workload(seed)
    wl = sw.workload
    pmf = workload.mix_pmf(sw.mix, wl.profiles.max_batch, n=200_000, seed=PLANNER_MIX_SEED)
    tails = workload_tails(wl, sw.model, wl.profiles.types, sw.qos_s)
    draws = workload_tails(wl, sw.model, wl.profiles.types, sw.qos_s, SIM_QUANTILES).quantiles
    job = RefineJob(wl.profiles, (ModelDemand(sw.model, 100.0, pmf),), (sw.qos_s,), (tails,), tuple(wl.types),
                    tuple(wl.prices_usd_per_hour), None, sw.budget_usd_per_hour, True, "kairos", {},
                    time_limit_s=time_limit_s, draws=(draws,))
    return job, sw


def test_quantile_service_draws_the_tables_value_picked_by_the_querys_noise() -> None:
    wl = workload.load_kairos()
    profiles = wl.profiles
    n_types, n_batches = profiles.mean_s.shape[1:]
    q = np.arange(4, dtype=float)
    table = (1.0 + np.arange(n_types)[:, None, None] + 10.0 * np.arange(n_batches)[None, :, None]) * (1.0 + q)
    stream = poisson_stream(np.array([1, 5, 5, 900]), seed=3)
    svc = ServiceModel("quantiles", quantiles=table).times(profiles, "ncf", stream)
    pick = np.minimum((stream.noise_u * 4).astype(int), 3)
    for i, b in enumerate(stream.batches):
        np.testing.assert_array_equal(svc[i], table[:, b, pick[i]])
    with pytest.raises(ConfigError, match="quantile table"):
        ServiceModel("quantiles", quantiles=table[:, :10]).times(profiles, "ncf", stream)
    with pytest.raises(ConfigError, match="needs a"):
        ServiceModel("quantiles")


def test_kairos_plus_refines_a_one_shot_choice_the_judge_puts_below_0_95() -> None:
    """On 8671 the one-shot choice (a GPU, a cpu1 and four cpu4) is 0.855 of the optimum by the planner
    benchmark's judge (other streams, the measured samples); the walk, on its own streams of the
    samples' `SIM_QUANTILES` quantiles, chooses a fleet the judge puts within 0.95, and on those streams it
    serves at least as much as the one-shot fleet."""
    job, sw = synth_job(SEED)
    wl = sw.workload
    pmf = job.demand[0].batch_pmf
    bm = tailed_model(wl.profiles, sw.model, wl.types, pmf, sw.qos_s, workload_tails(wl, sw.model, wl.types, sw.qos_s))
    one_shot = select_kairos(make_candidates(bm, wl.prices_usd_per_hour, sw.budget_usd_per_hour)).config
    refined = refine(job)
    chosen = np.array([refined.counts[t] for t in wl.types])
    assert not np.array_equal(chosen, one_shot)
    assert refined.n_evals <= max(1, int(0.2 * refined.n_configs))

    rows = json.loads((REPO / "bench" / "results" / "planner_robust_8664.json").read_text())["rows"]
    row = next(r for r in rows if r["seed"] == SEED)
    judged = {tuple(c["counts"]): float(np.mean(c["per_stream"])) for c in row["configs"]}
    best = max(judged.values())
    assert judged[tuple(int(x) for x in one_shot)] < 0.95 * best
    assert judged[tuple(int(x) for x in chosen)] >= 0.95 * best

    service = job.service(0)
    assert service.quantiles is not None and service.quantiles.shape[2] == SIM_QUANTILES
    rng = np.random.default_rng(0)
    setups = tuple(SimSetup(wl.profiles, sw.model, job.types, "kairos", {}, sw.qos_s,
                            poisson_stream(rng.choice(len(pmf), size=job.queries, p=pmf), seed), service)
                   for seed in (0, 10, 20))
    ev = SeedsEvaluator(setups, workers=1)
    assert ev(chosen) >= ev(one_shot)


def test_a_walk_that_fails_or_overruns_raises_and_leaves_no_child() -> None:
    job, _ = synth_job(SEED)
    procs: list[subprocess.Popen[bytes]] = []
    with pytest.raises(RefineError, match="failed: ConfigError: .*no-such-model"):
        refine_isolated(dataclasses.replace(job, demand=(dataclasses.replace(job.demand[0], model="no-such-model"),)),
                        on_start=procs.append)
    with pytest.raises(RefineError, match="ran past 0.3 s"):
        refine_isolated(job, timeout_s=0.3, on_start=procs.append)
    assert len(procs) == 2 and all(p.poll() is not None for p in procs)
    with pytest.raises(RefineError, match="no model has observed demand"):
        refine(dataclasses.replace(job, demand=(dataclasses.replace(job.demand[0], rate_qps=0.0),)))


def _emulated_config() -> config.Config:
    """configs/emulated.toml (the authors' four types, emulated) planned by the autoscaler for max
    throughput at 2.5 $/h with Kairos+."""
    cfg = config.load(REPO / "configs" / "emulated.toml")
    a = dataclasses.replace(cfg.autoscaler, budget_usd_per_hour=2.5, objective="max_throughput", selector="kairos_plus",
                            plus_time_limit_s=20.0)
    return dataclasses.replace(cfg, autoscaler=a)


def _two_models(budget: float, dlrm_qps: float, ncf_qps: float, ncf_qos_s: float | None = None, **job: Any
                ) -> tuple[list[str], list[ModelDemand], FleetPlan, RefineJob]:
    """The emulated types planned for dlrm and ncf (the Kairos batch mix) at `budget`: the planned types, the
    demand, the one-shot plan and the Kairos+ job the daemon makes for it (`job`: fields replaced)."""
    from kairosd.autoscale.target import refine_jobs

    cfg = _emulated_config()
    cfg = dataclasses.replace(cfg, autoscaler=dataclasses.replace(cfg.autoscaler, budget_usd_per_hour=budget))
    if ncf_qos_s is not None:
        cfg = dataclasses.replace(cfg, qos_s={**cfg.qos_s, "ncf": ncf_qos_s})
    profiles = load_profiles(cfg)
    pmf = workload.mix_pmf("kairos", profiles.max_batch, n=200_000)
    demand = [ModelDemand("dlrm", dlrm_qps, pmf), ModelDemand("ncf", ncf_qps, pmf)]
    plan = config_planner(cfg, profiles)(demand, frozenset())
    types = [t for t in cfg.types if t in profiles.types]
    return types, demand, plan, dataclasses.replace(refine_jobs(cfg, profiles, types)(demand, frozenset()), **job)


def test_the_target_is_the_one_shot_plan_until_the_walk_ends_then_the_refined_one() -> None:
    """dlrm served alone at 50 q/s: the target is the one-shot plan at once, the walk's choice once the walk
    has ended (handed over once, then reused like any plan)."""
    cfg = _emulated_config()
    profiles = load_profiles(cfg)
    assert isinstance(config_refiner(cfg, profiles), BackgroundRefiner)
    assert config_refiner(dataclasses.replace(cfg, autoscaler=dataclasses.replace(cfg.autoscaler, selector="kairos")),
                          profiles) is None
    pmf = workload.mix_pmf("kairos", profiles.max_batch, n=200_000)
    dlrm = profiles.models.index("dlrm")
    now = [20.0]
    # time enough to prove the choice even when the walk's first simulation compiles the simulator (a clean
    # install) beside other tests: the walk stops simulating once the next one could overrun the limit
    slow_first = dataclasses.replace(cfg.autoscaler, plus_time_limit_s=60.0)
    one_model = dataclasses.replace(cfg, qos_s={"dlrm": cfg.qos_s["dlrm"]}, autoscaler=slow_first)
    profiles_one = dataclasses.replace(profiles, models=("dlrm",), mean_s=profiles.mean_s[[dlrm]],
                                       p99_s=profiles.p99_s[[dlrm]])
    refiner = config_refiner(one_model, profiles_one)
    assert refiner is not None
    window = LoadWindow(("dlrm",), profiles.max_batch, window_s=20.0, prior_pmf={"dlrm": pmf}, min_queries=10**9,
                        start_s=0.0)
    for t in np.arange(0.0, 20.0, 0.02):
        window.record(0, 180, float(t))
    target = PlannerTarget(window, config_planner(one_model, profiles_one), lambda: now[0], refiner=refiner)
    one_shot = target(now[0], frozenset())
    assert refiner.walks == 1 and target.last_plan is not None and "kairos_plus" not in target.last_plan.reason
    deadline = time.monotonic() + 120.0
    while refiner.running and time.monotonic() < deadline:
        time.sleep(0.1)
    refined = target(now[0], frozenset())
    assert target.plans_refined == 1 and target.plans_made == 1 and refiner.failures == 0
    assert target.last_plan is not None and target.last_plan.reason.startswith("max_throughput: kairos_plus")
    # the paper's fleet for rm2 at 2.5 $/h, which the one-shot plan also chooses: the walk proves it
    assert refined == one_shot == {"g4dn.xlarge": 1, "r5n.large": 13}
    assert "exact" in target.last_plan.reason and target.last_plan.multiple > 1.0
    assert target(now[0], frozenset()) == refined and target.plans_refined == 1  # handed over once, then reused
    # the rate doubles with the same mix: a new one-shot plan, for which the walk's choice stands at once
    for t in np.arange(20.0, 40.0, 0.01):
        window.record(0, 180, float(t))
    now[0] = 40.0
    assert target(now[0], frozenset()) == refined and target.plans_made == 2 and refiner.walks == 1
    assert target.plans_refined == 2  # the walk's choice stands for the new plan too
    assert target.last_plan.reason.startswith("max_throughput: kairos_plus") and not refiner.running


def test_a_new_mix_kills_the_walk_made_stale_and_a_new_rate_keeps_it() -> None:
    job, _ = synth_job(SEED, time_limit_s=60.0)
    prices = dict(zip(job.types, job.prices, strict=True))
    refiner = BackgroundRefiner(lambda demand, unavailable: job, prices, "max_throughput")
    demand = list(job.demand)
    plan = FleetPlan({t: 1 for t in job.types}, sum(job.prices), 1.0, 2.0, "max_throughput", "one-shot")
    assert refiner.start(demand, frozenset(), plan) is plan and refiner.walks == 1 and refiner.running
    deadline = time.monotonic() + 10.0
    while refiner._proc is None and time.monotonic() < deadline:
        time.sleep(0.01)
    first = refiner._proc
    assert first is not None
    # the rate alone moved: the same max-throughput question, the walk goes on
    faster = [dataclasses.replace(demand[0], rate_qps=250.0)]
    assert refiner.start(faster, frozenset(), plan) is plan and refiner.walks == 1 and first.poll() is None
    # another mix: the walk is stale, killed, and a new one begins
    pmf = np.roll(demand[0].batch_pmf, 40)
    assert refiner.start([dataclasses.replace(demand[0], batch_pmf=pmf)], frozenset(), plan) is plan
    assert refiner.walks == 2 and first.wait(timeout=5.0) != 0 and refiner.superseded == 1
    refiner.close()
    assert refiner.take() is None and not refiner.running
    # a plan for no demand is returned as it is, with no walk
    assert refiner.start([dataclasses.replace(demand[0], rate_qps=0.0)], frozenset(), plan) is plan
    assert refiner.walks == 2 and not refiner.running
    # a partitioned max-throughput plan is walked like a shared one
    pinned = dataclasses.replace(plan, pools={f"{job.types[0]}@{demand[0].model}": 1}, partitioned=True,
                                 counts={t: int(t == job.types[0]) for t in job.types})
    assert refiner.start(demand, frozenset(), pinned) is pinned and refiner.walks == 3 and refiner.running
    refiner.close()
    assert not refiner.running


def test_same_mix_ignores_the_rate_and_not_the_pmf_or_the_shares() -> None:
    from kairosd.autoscale.refine import same_mix

    pmf = lognormal_pmf(32.0, 0.75, 64)
    other = lognormal_pmf(48.0, 0.75, 64)
    a = [ModelDemand("dlrm", 40.0, pmf), ModelDemand("ncf", 10.0, pmf)]
    assert same_mix(a, [ModelDemand("dlrm", 80.0, pmf), ModelDemand("ncf", 20.0, pmf)])
    assert not same_mix(a, [ModelDemand("dlrm", 40.0, pmf), ModelDemand("ncf", 20.0, pmf)])  # shares 0.8 / 0.67
    assert not same_mix(a, [ModelDemand("dlrm", 40.0, other), ModelDemand("ncf", 10.0, pmf)])
    assert not same_mix(a, [ModelDemand("dlrm", 40.0, pmf), ModelDemand("ncf", 0.0, pmf)])
    assert not same_mix(a, a[:1])


def test_selector_is_checked_and_reloadable() -> None:
    import tomllib

    from kairosd.reload import plan_reload

    base = (REPO / "configs" / "autoscale.toml").read_text()

    def parsed(extra: str) -> config.Config:
        return config.parse(tomllib.loads(base.replace('objective = "min_cost"', f'objective = "min_cost"\n{extra}')), REPO)

    with pytest.raises(ConfigError, match="autoscaler.selector = 'plus'; allowed"):
        parsed('selector = "plus"')
    with pytest.raises(ConfigError, match="plus_time_limit_s"):
        parsed("plus_time_limit_s = 0")
    old, new = parsed(""), parsed('selector = "kairos"')
    assert old.autoscaler.selector == "kairos_plus" and new.autoscaler.selector == "kairos"
    plan = plan_reload(old, new)
    assert plan.applies and plan.changed_keys == ["autoscaler.selector"]


def test_several_models_walk_the_shared_fleets_from_the_joint_plans_choice() -> None:
    """dlrm (the authors' rm2) and ncf on the emulated types at 1 $/h, 40 and 4 q/s: the one-shot joint plan
    is a shared fleet; the walk simulates both models on it (max multiple of the observed rates) and
    chooses a shared fleet that serves at least as much on the same streams."""
    from kairosd.autoscale.refine import MixEvaluator, _several_models

    types, _, plan, job = _two_models(1.0, 40.0, 4.0, queries=2000)
    assert not plan.partitioned
    refined = refine(job)
    cands, evaluator = _several_models(job, [0, 1])
    assert isinstance(evaluator, MixEvaluator) and refined.n_configs == len(cands) >= refined.n_evals >= 1
    chosen = np.array([refined.counts[t] for t in types])
    assert cands.row_of(chosen) is not None and float(chosen @ cands.prices_usd_per_hour) <= 1.0 + 1e-9
    one_shot = np.array([plan.counts[t] for t in types])
    assert evaluator(chosen) == pytest.approx(refined.qps) and evaluator(chosen) >= evaluator(one_shot)
    merged = refined_plan(plan, refined, job.total_rate_qps, dict(zip(types, job.prices, strict=True)))
    assert merged.multiple == pytest.approx(refined.qps / 44.0) and merged.reason.startswith("max_throughput: kairos_plus")


def test_one_model_with_demand_among_several_walks_its_fleets_that_serve_every_model() -> None:
    """dlrm at 50 q/s and ncf (5 ms QoS) with none: the walk is dlrm's alone, over the fleets that can also
    serve ncf, as the joint plan keeps them."""
    from kairosd.autoscale.refine import _joint, _one_model
    from kairosd.autoscale.target import refine_jobs
    from kairosd.planner import enumerate_configs

    cfg = _emulated_config()
    cfg = dataclasses.replace(cfg, autoscaler=dataclasses.replace(cfg.autoscaler, budget_usd_per_hour=1.0))
    profiles = load_profiles(cfg)
    pmf = workload.mix_pmf("kairos", profiles.max_batch, n=200_000)
    demand = [ModelDemand("dlrm", 50.0, pmf), ModelDemand("ncf", 0.0, pmf)]
    types = [t for t in cfg.types if t in profiles.types]
    job = refine_jobs(cfg, profiles, types)(demand, frozenset())
    cands, evaluator, _ = _one_model(job, 0)
    assert isinstance(evaluator, SeedsEvaluator)
    configs = enumerate_configs(np.asarray(job.prices), 1.0, maximal_only=True)
    serve_all = _joint(job).servable(configs).all(axis=1)
    assert 0 < serve_all.sum() < len(configs)  # ncf rules some fleets out
    assert sorted(map(tuple, cands.configs)) == sorted(map(tuple, configs[serve_all]))
    refined = refine(job)
    assert refined.n_configs == int(serve_all.sum())
    assert tuple(refined.counts[t] for t in types) in set(map(tuple, configs[serve_all]))


def test_a_partition_that_serves_more_in_simulation_replaces_a_shared_one_shot_plan() -> None:
    """dlrm (the authors' rm2, 350 ms) at 100 q/s and ncf (5 ms) at 2 on the emulated types at 2.5 $/h: shared,
    ncf's queries wait behind dlrm's batches, and the one-shot plan is a partition. Given a shared one-shot
    plan (2 × g4dn + 9 × r5n), the walk simulates the partition part by part and the shared fleets, and
    chooses the partition, worth what its parts serve."""
    from kairosd.autoscale.refine import _mix_streams, _model_evaluator, _several_models

    types, demand, one_shot, job = _two_models(2.5, 100.0, 2.0, queries=2000, time_limit_s=2.0)
    assert one_shot.partitioned
    prices = dict(zip(types, job.prices, strict=True))
    counts = {t: {"g4dn.xlarge": 2, "r5n.large": 9}.get(t, 0) for t in types}
    plan = FleetPlan(counts, sum(n * prices[t] for t, n in counts.items()), 1.0, 1.5, "max_throughput", "shared")
    refined = refine(job)
    assert refined.parts is not None and sorted(refined.parts) == ["dlrm", "ncf"]
    assert {t: sum(p[t] for p in refined.parts.values()) for t in types} == refined.counts
    assert sum(n * prices[t] for t, n in refined.counts.items()) <= 2.5 + 1e-9
    # the partition is worth, on each of the walk's streams, the least over the models of what its part
    # serves of that model's queries alone; the one-shot shared fleet serving both, less on every stream
    streams = _mix_streams(job, [0, 1])
    served = [_model_evaluator(job, g, [ms.part(g) for ms in streams])[1].values(
        np.array([refined.parts[d.model][t] for t in types])) / d.rate_qps for g, d in enumerate(demand)]
    assert refined.qps == pytest.approx(float(np.min(served, axis=0).mean()) * 102.0)
    _, mixed = _several_models(job, [0, 1], streams)
    shared = mixed.values(np.array([plan.counts[t] for t in types]))
    assert (shared < np.min(served, axis=0) * 102.0).all()
    merged = refined_plan(plan, refined, job.total_rate_qps, prices)
    assert merged.partitioned and merged.multiple == pytest.approx(refined.qps / 102.0)
    assert merged.pinned("ncf") == {t: n for t, n in refined.parts["ncf"].items() if n}
    assert "partitioned" in merged.reason and "the one-shot choice was" in merged.reason


def test_the_partition_search_is_the_joint_plans_and_follows_scaled_estimates() -> None:
    """ncf with a 20 ms QoS at 1,000 q/s beside dlrm at 50 (2.5 $/h): `best_partition` unscaled is the one-shot
    plan's partition; with dlrm's estimates scaled by 0.7 (its part served less in simulation than
    estimated), dlrm's part grows and ncf's shrinks, within the budget."""
    from kairosd.autoscale.refine import _joint
    from kairosd.planner.joint import best_partition

    types, demand, plan, job = _two_models(2.5, 50.0, 1000.0, ncf_qos_s=0.02)
    joint = _joint(job)
    part = best_partition(joint, [50.0, 1000.0], job.prices, 2.5, job.caps)
    assert plan.partitioned and part is not None
    for g, d in enumerate(demand):
        assert plan.pinned(d.model) == {t: int(n) for t, n in zip(types, part.parts[g], strict=True) if n}
    scaled = best_partition(joint, [50.0, 1000.0], job.prices, 2.5, job.caps, scale={0: 0.7})
    assert scaled is not None
    assert (scaled.parts[0] >= part.parts[0]).all() and scaled.parts[0].sum() > part.parts[0].sum()
    assert scaled.parts[1].sum() < part.parts[1].sum()
    assert float(sum(scaled.parts.values()) @ np.asarray(job.prices)) <= 2.5 + 1e-9


def test_the_kind_the_one_shot_plan_chose_stands_unless_the_other_serves_more_on_every_stream() -> None:
    """Shared against partitioned, valued on the same three streams: the other kind replaces the one-shot
    plan's only when it serves at least as much on every stream and more on average."""
    from kairosd.autoscale.refine import PartChoice, _prefer_partition

    job, _ = synth_job(SEED)
    part = PartChoice({0: np.array([1, 0])}, 1.1, 2.0, 1, 1, (1.0, 1.2, 1.1))
    lucky = np.array([0.9, 1.3, 1.0])  # higher on one stream only
    dominated = np.array([0.9, 1.2, 1.0])
    assert not _prefer_partition(job, part, lucky) and _prefer_partition(job, part, dominated)
    pinned = dataclasses.replace(job, one_shot_partitioned=True)
    assert _prefer_partition(pinned, part, lucky)  # the partition stands: the shared fleet wins one stream only
    assert not _prefer_partition(pinned, part, np.array([1.0, 1.25, 1.1]))
    assert _prefer_partition(pinned, part, np.array([1.0, 1.2, 1.1]))  # equal everywhere: the one-shot kind stands

"""The min_cost plan refined by simulation (`kairosd.autoscale.cover`): configurations in order of cost, each
tested at headroom × the observed rates on the walk's streams; the first to meet it on every stream is the
plan, so every cheaper candidate fails there."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from kairosd.autoscale.cover import COVER_STREAMS_FACTOR, cheapest_fitting, cover_order, first_cover
from kairosd.autoscale.refine import (
    BackgroundRefiner,
    MixEvaluator,
    RefineJob,
    _joint,
    _mix_streams,
    _model_evaluator,
    refine,
    refined_plan,
)
from kairosd.planner import enumerate_configs, upper_bound
from kairosd.planner.demand import ModelDemand
from kairosd.planner.joint import FleetPlan, plan_fleet
from kairosd.sim import ServiceModel
from tests.unit.test_refine import _two_models, synth_job

# a held-out workload (bench/results/planner_robust_8824.json, optimum 51.2 q/s) on which, at 0.6 of the
# optimum, the one-shot min_cost plan is judged to serve 1.13 × the load, short of the 1.2 headroom
SEED = 8839
RATE_QPS = 30.7


def test_cover_order_is_by_cost_then_bound_among_those_the_bound_allows() -> None:
    cost = np.array([30, 10, 20, 10, 5])
    ub = np.array([9.0, 6.0, 8.0, 7.0, 2.0])
    assert cover_order(cost, ub, 5.0).tolist() == [3, 1, 2, 0]  # row 4's bound (2) cannot reach 5
    assert cover_order(cost, ub, 10.0).tolist() == []
    tested: list[int] = []
    out = first_cover(np.array([3, 1, 2, 0]), lambda r: tested.append(r) is None and r == 2, None)
    assert (out.row, out.tested, out.candidates, out.timed_out) == (2, 3, 4, False) and tested == [3, 1, 2]
    none = first_cover(np.array([3, 1]), lambda r: False, None)
    assert (none.row, none.tested, none.timed_out) == (-1, 2, False)
    late = first_cover(np.array([3, 1, 2]), lambda r: False, time.perf_counter() - 1.0)  # the first is always tested
    assert (late.row, late.tested, late.timed_out) == (-1, 1, True)


def test_cheapest_fitting_takes_the_next_part_when_the_cheapest_ones_break_a_cap() -> None:
    configs = np.array([[1, 16], [2, 13], [1, 2], [2, 1], [0, 9]])
    cost = np.array([291, 325, 82, 110, 400])
    caps = np.array([5, 17])
    # (0, 2) needs 16 + 2 of the type capped at 17; (0, 3) costs 401, (1, 2) 407
    assert cheapest_fitting([[0, 1], [2, 3]], cost, configs, 10_000, caps) == (0, 3)
    assert cheapest_fitting([[0, 1], [2]], cost, configs, 10_000, caps) == (1, 2)
    assert cheapest_fitting([[0], [2]], cost, configs, 10_000, np.array([5, 18])) == (0, 2)
    assert cheapest_fitting([[0, 1], [2, 3]], cost, configs, 400, caps) is None  # every fitting pair costs more
    assert cheapest_fitting([[1], [2], [4]], cost, configs, 10_000, np.array([5, 24])) == (1, 2, 4)  # 13 + 2 + 9
    assert cheapest_fitting([[1], [2], [4]], cost, configs, 10_000, np.array([5, 23])) is None


def _min_cost_job(seed: int, rate_qps: float) -> RefineJob:
    job, _ = synth_job(seed)
    return dataclasses.replace(job, demand=(dataclasses.replace(job.demand[0], rate_qps=rate_qps),), objective="min_cost",
                               headroom=1.2)


def test_one_model_the_plan_is_the_cheapest_fleet_meeting_the_headroom_on_every_stream() -> None:
    job = _min_cost_job(SEED, RATE_QPS)
    refined = refine(job)
    assert refined.objective == "min_cost" and refined.parts is None and not refined.why
    types = list(job.types)
    chosen = np.array([refined.counts[t] for t in types])
    # the walk's streams: COVER_STREAMS_FACTOR × Kairos+'s
    bm, ev = _model_evaluator(dataclasses.replace(job, streams=COVER_STREAMS_FACTOR * job.streams), 0)
    assert len(ev.setups) == COVER_STREAMS_FACTOR * job.streams == 9
    target = 1.2 * RATE_QPS
    assert ev.meets(chosen, target)
    assert refined.qps == pytest.approx(ev(chosen)) and refined.qps >= target
    prices = np.asarray(job.prices)
    configs = enumerate_configs(prices, job.budget_usd_per_hour, maximal_only=False)
    ub = upper_bound(configs, bm)
    cost = configs @ prices
    cheaper = configs[(cost < chosen @ prices - 1e-9) & (ub >= target)]
    assert len(cheaper) == refined.n_evals - 1 >= 1
    assert not any(ev.meets(c, target) for c in cheaper)
    # the one-shot plan: the cheapest whose estimate covers the headroom; here the walk's fleet differs
    sw_tails = job.planned_tails(0)
    one_shot = plan_fleet(job.profiles, types, job.prices, job.budget_usd_per_hour, list(job.demand),
                          {job.demand[0].model: job.qos_s[0]}, objective="min_cost", headroom=1.2,
                          tails={job.demand[0].model: sw_tails})
    assert [one_shot.counts[t] for t in types] != chosen.tolist()
    merged = refined_plan(one_shot, refined, RATE_QPS, dict(zip(types, job.prices, strict=True)))
    assert merged.reason.startswith("min_cost: kairos_plus (the cheapest fleet that serves the headroom")
    assert merged.multiple == pytest.approx(refined.qps / RATE_QPS) and merged.objective == "min_cost"


def test_one_model_the_first_test_is_the_first_stream_to_fail() -> None:
    """`SeedsEvaluator.meets`: a fleet that serves the rate on every stream meets it, one that cannot keep
    up on the first stream does not (and the later streams are not run)."""
    job = _min_cost_job(SEED, RATE_QPS)
    _, ev = _model_evaluator(job, 0)
    big = np.array([2 if t == job.types[0] else 1 for t in job.types])
    assert not ev.meets(big, 1e6)
    assert ev._svc.keys() == {0}  # stopped at the first stream
    assert ev.meets(big, 1.0)
    assert ev._svc.keys() == {0, 1, 2}


def test_several_models_a_partition_cheaper_than_every_shared_cover() -> None:
    """dlrm at 60 and ncf at 40 q/s on the emulated types at 2.5 $/h: the cheapest shared fleets fail
    1.2 × the rates in simulation, and pinning a GPU to ncf beside a dlrm part covers them for less."""
    types, _, _, job = _two_models(2.5, 60.0, 40.0, queries=2000, objective="min_cost", headroom=1.2)
    refined = refine(job)
    assert refined.objective == "min_cost" and refined.parts is not None, refined.note
    walk = dataclasses.replace(job, streams=COVER_STREAMS_FACTOR * job.streams)
    streams = _mix_streams(walk, [0, 1])
    for i, (model, rate) in enumerate((("dlrm", 60.0), ("ncf", 40.0))):
        part = np.array([refined.parts[model].get(t, 0) for t in types])
        _, ev = _model_evaluator(walk, i, [ms.part(i) for ms in streams])
        assert ev.meets(part, 1.2 * rate)
    prices = np.asarray(job.prices)
    total = np.array([refined.counts[t] for t in types])
    configs = enumerate_configs(prices, 2.5, maximal_only=False)
    joint = _joint(job)
    services = [ServiceModel("quantiles", quantiles=job.tails[g].quantiles) for g in (0, 1)]
    mix = MixEvaluator(walk, ["dlrm", "ncf"], list(job.qos_s), services, streams,
                       lambda c: float(joint.bound_qps(np.asarray(c)[None, :])[0]))
    shared = configs[(configs @ prices <= total @ prices + 1e-9) & (joint.bound_qps(configs) >= 1.2 * 100.0)
                     & joint.servable(configs).all(axis=1)]
    assert len(shared) >= 1 and not any(mix.meets(c, 1.2) for c in shared)


def test_several_models_nothing_covers_so_the_most_the_budget_buys() -> None:
    """dlrm at 100 and ncf (5 ms) at 2 q/s at 2.5 $/h: no fleet serves 1.2 × in simulation; the plan is the
    max_throughput walk's, and its reason says why."""
    types, _, _, job = _two_models(2.5, 100.0, 2.0, queries=2000, time_limit_s=5.0, objective="min_cost")
    refined = refine(job)
    assert refined.why.startswith("min_cost: no configuration within 2.5 $/h serves 1.2× the observed rates")
    assert refined.objective == "max_throughput" and refined.qps < 1.2 * 102.0
    plan = FleetPlan({t: 1 for t in types}, float(sum(job.prices)), 1.0, 2.0, "min_cost", "one-shot")
    merged = refined_plan(plan, refined, 102.0, dict(zip(types, job.prices, strict=True)))
    assert merged.reason.startswith(refined.why + "max_throughput: kairos_plus") and merged.objective == "min_cost"


def test_a_min_cost_walk_is_for_its_rate() -> None:
    """The background refiner walks min_cost plans, and a new rate is a new walk (a max-throughput walk
    is kept for the same mix at another rate)."""
    job = _min_cost_job(SEED, RATE_QPS)
    prices = dict(zip(job.types, job.prices, strict=True))
    refiner = BackgroundRefiner(lambda demand, unavailable: dataclasses.replace(job, demand=tuple(demand)), prices,
                                "min_cost")
    plan = FleetPlan({t: 1 for t in job.types}, sum(job.prices), 1.0, 2.0, "min_cost", "one-shot")
    demand = list(job.demand)
    assert refiner.start(demand, frozenset(), plan) is plan and refiner.walks == 1
    slower = [dataclasses.replace(demand[0], rate_qps=0.5 * RATE_QPS)]
    assert refiner.start(slower, frozenset(), plan) is plan and refiner.walks == 2
    deadline = time.monotonic() + 60.0
    while refiner.running and time.monotonic() < deadline:
        time.sleep(0.05)
    taken = refiner.take()
    assert taken is not None and taken.reason.startswith("min_cost: kairos_plus")
    at_first_rate = refine(job)
    assert taken.multiple >= 1.2  # of the newer rate: its walk's choice, cheaper than the first rate's
    assert taken.cost_usd_per_hour < sum(n * prices[t] for t, n in at_first_rate.counts.items())
    assert refiner.take() is None
    refiner.close()
    assert BackgroundRefiner(lambda *a: job, prices, "min_cost").start(
        [ModelDemand(demand[0].model, 0.0, demand[0].batch_pmf)], frozenset(), plan) is plan  # no demand: no walk

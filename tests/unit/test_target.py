"""The autoscaler's target: the joint plan for the observed window, re-planned only when the load moves,
without the types the autoscaler marked unavailable, scaling out on a short rise."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kairosd import config
from kairosd.autoscale.load import LoadWindow
from kairosd.autoscale.target import PlannerTarget, config_planner, lognormal_pmf
from kairosd.daemon import load_profiles
from kairosd.fleet import PreparedTarget

REPO = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_target(rise_window_s: float = 0.0) -> tuple[PlannerTarget, LoadWindow, Clock]:
    cfg = config.load(REPO / "configs" / "autoscale.toml")
    profiles = load_profiles(cfg)
    prior = {m: lognormal_pmf(256.0, 0.75, profiles.max_batch) for m in profiles.models}
    window = LoadWindow(profiles.models, profiles.max_batch, window_s=20.0, prior_pmf=prior, min_queries=50, start_s=0.0)
    clock = Clock()
    return PlannerTarget(window, config_planner(cfg, profiles), clock, rise_window_s=rise_window_s), window, clock


def feed(window: LoadWindow, model_idx: int, rate_qps: float, t0: float, t1: float, batch: int = 256) -> None:
    for t in np.arange(t0, t1, 1.0 / rate_qps):
        window.record(model_idx, batch, float(t))


def total(counts: dict[str, int]) -> int:
    return sum(counts.values())


def test_idle_keeps_one_cheap_instance_and_more_load_wants_more() -> None:
    target, window, clock = make_target()
    assert isinstance(target, PreparedTarget)  # the reconcile plans off the event loop
    idle = target.prepare(0.0, frozenset())()
    assert idle == {"ort-1t": 1}  # min_cost with no load: the cheapest fleet that serves every model
    feed(window, 0, 300.0, 0.0, 20.0)  # dlrm is model 0 (sorted)
    clock.now = 20.0
    busy = target(clock.now, frozenset())
    assert total(busy) > 1
    assert sum(n * {"ort-1t": 0.05, "ort-2t": 0.10, "triton": 0.12}[t] for t, n in busy.items()) <= 0.30 + 1e-9


def test_a_plan_is_reused_while_the_load_holds_and_redone_when_it_moves() -> None:
    target, window, clock = make_target()
    feed(window, 0, 100.0, 0.0, 20.0)
    clock.now = 20.0
    first = target(clock.now, frozenset())
    made = target.plans_made
    feed(window, 0, 102.0, 20.0, 21.0)
    clock.now = 21.0
    assert target(clock.now, frozenset()) == first and target.plans_made == made  # within 10 %: reused
    feed(window, 0, 400.0, 21.0, 41.0)
    clock.now = 41.0
    target(clock.now, frozenset())
    assert target.plans_made == made + 1


def test_unavailable_types_are_planned_without() -> None:
    target, window, clock = make_target()
    feed(window, 0, 200.0, 0.0, 20.0)
    clock.now = 20.0
    without = target(clock.now, frozenset({"ort-1t"}))
    assert "ort-1t" not in without and total(without) >= 1


def test_a_short_rise_is_planned_for_at_once_with_rise_window() -> None:
    slow, w1, c1 = make_target(rise_window_s=0.0)
    fast, w2, c2 = make_target(rise_window_s=3.0)
    for w in (w1, w2):
        feed(w, 0, 20.0, 0.0, 17.0)
        feed(w, 0, 400.0, 17.0, 20.0)  # the last 3 s at 400 q/s
    c1.now = c2.now = 20.0
    assert total(fast(20.0, frozenset())) > total(slow(20.0, frozenset()))


def test_the_autoscaler_plans_on_the_feasibility_its_dispatcher_tests() -> None:
    """`[scheduler.policy_params] tail = false` (the dispatcher judges QoS on the mean latency): the
    autoscaler's plan is `plan_fleet`'s with feasibility on the mean, not the p99 plan."""
    import dataclasses

    from kairosd.planner.demand import ModelDemand
    from kairosd.planner.joint import plan_fleet
    from kairosd.planner.tails import profile_tails

    cfg = config.load(REPO / "configs" / "autoscale.toml")
    # an ncf target between its CPU types' mean and p99 latencies on this mix, where the two tests differ
    cfg = dataclasses.replace(cfg, qos_s={**cfg.qos_s, "ncf": 0.005})
    profiles = load_profiles(cfg)
    pmf = lognormal_pmf(64.0, 0.75, profiles.max_batch)
    demand = [ModelDemand(m, 200.0, pmf) for m in profiles.models]
    mean_cfg = dataclasses.replace(cfg, scheduler=dataclasses.replace(cfg.scheduler, policy_params={"tail": False}))
    assert config.planning_tail(cfg) and not config.planning_tail(mean_cfg)
    on_mean = config_planner(mean_cfg, profiles)(demand, frozenset())
    on_p99 = config_planner(cfg, profiles)(demand, frozenset())
    types = [t for t in cfg.types if t in profiles.types]
    prices = [cfg.types[t].price_usd_per_hour for t in types]
    a = cfg.autoscaler
    tails = {m: profile_tails(profiles, m, types, q) for m, q in cfg.qos_s.items() if m in profiles.models}
    assert on_mean == plan_fleet(profiles, types, prices, a.budget_usd_per_hour, demand, dict(cfg.qos_s),
                                 objective=a.objective, headroom=a.headroom, tail=False, tails=tails)
    assert on_mean.multiple != on_p99.multiple  # the two tests give this load different estimates


def test_an_emulated_fleet_is_planned_with_the_service_times_its_instances_draw() -> None:
    """An emulated type's tail is its instances' own cells (the authors' samples for `emulate_data =
    "kairos"`), which at every batch are the samples' tails the planner benchmark gives the planner and
    the simulator draws from, not the log-normal through the profile's mean and p99 that a profiled type
    gets."""
    import dataclasses

    from kairosd import workload
    from kairosd.autoscale.target import config_tails, emulated_cells
    from kairosd.planner.demand import ModelDemand
    from kairosd.planner.tails import profile_tails, tails_from_relative

    cfg = config.load(REPO / "configs" / "emulated.toml")
    profiles = load_profiles(cfg)
    types = [t for t in cfg.types if t in profiles.types]
    cells = emulated_cells(cfg, types)
    assert sorted(cells) == sorted(types)
    wl = workload.load_kairos()
    batches = np.arange(1, profiles.max_batch + 1)
    for served, profile_model in cfg.types[types[0]].emulate_models.items():
        qos = cfg.qos_s[served]
        drawn = config_tails(profiles, served, types, qos, cells)
        mi = wl.profiles.model_index(profile_model)
        mean = wl.profiles.mean_s[mi][[wl.profiles.type_index(t) for t in types]]
        samples = tails_from_relative(mean, wl.samples.relative(profile_model, types), qos, workload.GRID_STEP)
        np.testing.assert_allclose(drawn.quantiles[:, batches], samples.quantiles[:, batches], rtol=1e-3)
        np.testing.assert_allclose(drawn.cv2[:, batches], samples.cv2[:, batches], atol=1e-12)
        assert np.abs(drawn.miss[:, batches] - samples.miss[:, batches]).max() <= 1.5 / 99  # a sample at QoS's edge
        lognormal = profile_tails(profiles, served, types, qos)
        assert np.abs(lognormal.miss[:, batches] - samples.miss[:, batches]).max() > 0.1
    # a config without emulated types keeps every type's profile log-normal
    local = config.load(REPO / "configs" / "autoscale.toml")
    local_profiles = load_profiles(local)
    local_types = [t for t in local.types if t in local_profiles.types]
    assert emulated_cells(local, local_types) == {}
    kept = config_tails(local_profiles, "ncf", local_types, local.qos_s["ncf"], {})
    np.testing.assert_array_equal(kept.miss, profile_tails(local_profiles, "ncf", local_types, local.qos_s["ncf"]).miss)
    # and the autoscaler plans the emulated fleet: rm2 (served as dlrm) at 2.5 $/h, the paper's fleet
    cfg = dataclasses.replace(cfg, autoscaler=dataclasses.replace(cfg.autoscaler, budget_usd_per_hour=2.5))
    pmf = workload.mix_pmf("kairos", profiles.max_batch, n=200_000)
    plan = config_planner(cfg, profiles)([ModelDemand("dlrm", 50.0, pmf)], frozenset())
    assert {t: n for t, n in plan.counts.items() if n} == {"g4dn.xlarge": 1, "r5n.large": 13}

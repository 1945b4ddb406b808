"""The autoscaler's target: the joint plan (`kairosd.planner.plan_fleet`) for the load observed in the window.

Each period the window's demand (per model: rate and batch mix) is planned over the configured types
within the budget, without the types the autoscaler marked unavailable. Up quickly, down slowly: each
model's rate is the larger of the window's and the last `rise_window_s`'s, so a rise is planned for
within seconds while a fall waits until the whole window forgets the peak. A plan is reused while the
demand stays close to the one it was made for (every rate within `rate_tolerance` of it, relatively,
or both below `min_rate_qps`; every batch pmf within `pmf_tolerance` in total variation) and the
unavailable set is the same: planning runs only when the load moved. The fleet's reconcile reads the
window on the scheduler's event loop and plans on another thread (`PlannerTarget.prepare`), so that a
long plan does not hold up dispatch. With `autoscaler.selector = "kairos_plus"`, each new
"max_throughput" plan is refined by Kairos+ in the background
(`kairosd.autoscale.refine`): the target is the one-shot plan until the walk ends, then the refined
one, which is reused as the plan was.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from kairosd.autoscale.load import LoadWindow
from kairosd.autoscale.refine import BackgroundRefiner, RefineJob
from kairosd.config import Config, planning_tail
from kairosd.emulation import ServiceCells, load_cells
from kairosd.planner.demand import ModelDemand
from kairosd.planner.enumeration import UNCAPPED
from kairosd.planner.joint import FleetPlan, plan_fleet
from kairosd.planner.tails import QUANTILES, SIM_QUANTILES, Tails, profile_tails, tails_from_cells
from kairosd.profiles import ProfileTable

if TYPE_CHECKING:
    from kairosd.scheduler import Scheduler

log = logging.getLogger(__name__)

PRIOR_SIGMA = 0.75  # the prior batch mix: log-normal with the configured median and this σ
RATE_TOLERANCE = 0.1
PMF_TOLERANCE = 0.05
MIN_RATE_QPS = 0.5

Planner = Callable[[Sequence[ModelDemand], frozenset[str]], FleetPlan]


def lognormal_pmf(median: float, sigma: float, max_batch: int) -> np.ndarray:
    """P(batch = b), b = 0..max_batch, of a log-normal rounded up to integers and clipped to [1, max_batch]."""
    edges = np.arange(max_batch + 1, dtype=float)  # batch b takes the mass of (b-1, b]
    with np.errstate(divide="ignore"):
        z = (np.log(np.maximum(edges, 1e-300)) - math.log(median)) / sigma
    from scipy.special import ndtr

    cdf = ndtr(z)
    cdf[0] = 0.0
    pmf = np.zeros(max_batch + 1)
    pmf[1:] = np.diff(cdf)
    pmf[max_batch] += 1.0 - cdf[max_batch]
    return pmf / pmf.sum()


def _close(a: Sequence[ModelDemand], b: Sequence[ModelDemand], rate_tol: float, pmf_tol: float, min_rate: float) -> bool:
    if [d.model for d in a] != [d.model for d in b]:
        return False
    for x, y in zip(a, b, strict=True):
        if max(x.rate_qps, y.rate_qps) >= min_rate and abs(x.rate_qps - y.rate_qps) > rate_tol * max(x.rate_qps, y.rate_qps):
            return False
        if x.mix_distance(y) > pmf_tol:
            return False
    return True


@dataclass
class PlannerTarget:
    """A `kairosd.fleet.TargetFn`: the plan for the window's demand, plus fixed `extra` counts (static
    endpoints, which are not the planner's to choose)."""

    window: LoadWindow
    planner: Planner
    clock: Callable[[], float] = time.monotonic  # the window's clock (the scheduler's loop time)
    extra: Mapping[str, int] = field(default_factory=dict)
    rise_window_s: float = 0.0  # 0: the window's rate alone
    rate_tolerance: float = RATE_TOLERANCE
    pmf_tolerance: float = PMF_TOLERANCE
    min_rate_qps: float = MIN_RATE_QPS
    last_plan: FleetPlan | None = None
    last_demand: list[ModelDemand] = field(default_factory=list)
    plans_made: int = 0
    refiner: BackgroundRefiner | None = None  # Kairos+ after each new plan (`kairosd.autoscale.refine`)
    plans_refined: int = 0  # plans whose target became the walk's choice (when it ended, or kept for the same mix)
    _unavailable: frozenset[str] = frozenset()

    def __call__(self, now_s: float, unavailable: frozenset[str]) -> dict[str, int]:
        return self.prepare(now_s, unavailable)()

    def prepare(self, _now_s: float, unavailable: frozenset[str]) -> Callable[[], dict[str, int]]:
        """Read the window's demand now (on the scheduler's event loop, which records into it) and return
        what makes the target from it: the plan, made afresh only when the demand moved (the reconcile
        runs it off the event loop, `kairosd.fleet.PreparedTarget`)."""
        now = self.clock()
        demand = self.window.demand(now)
        if self.rise_window_s > 0:
            recent = self.window.recent_rates(now, self.rise_window_s)
            demand = [replace(d, rate_qps=max(d.rate_qps, float(r))) for d, r in zip(demand, recent, strict=True)]
        return partial(self._target, demand, unavailable)

    def _target(self, demand: list[ModelDemand], unavailable: frozenset[str]) -> dict[str, int]:
        plan = self.last_plan
        if (plan is None or unavailable != self._unavailable
                or not _close(demand, self.last_demand, self.rate_tolerance, self.pmf_tolerance, self.min_rate_qps)):
            t0 = time.perf_counter()
            plan = self.planner(demand, unavailable)
            self.plans_made += 1
            self.last_plan, self.last_demand, self._unavailable = plan, demand, unavailable
            log.info("plan target=%s cost=%.4f$/h multiple=%.2f rates=%s took=%.0fms reason=%s",
                     _fmt(plan.counts), plan.cost_usd_per_hour, plan.multiple,
                     ",".join(f"{d.model}:{d.rate_qps:.1f}" for d in demand), (time.perf_counter() - t0) * 1e3, plan.reason)
            if self.refiner is not None:
                kept = self.refiner.start(demand, unavailable, plan)
                if kept is not plan:
                    self.plans_refined += 1
                    log.info("plan target=%s: the Kairos+ choice for the same fleet and mix stands", _fmt(kept.counts))
                plan = self.last_plan = kept
        elif self.refiner is not None and (refined := self.refiner.take()) is not None:
            plan = self.last_plan = refined
            self.plans_refined += 1
            log.info("plan refined target=%s cost=%.4f$/h multiple=%.2f reason=%s", _fmt(plan.counts),
                     plan.cost_usd_per_hour, plan.multiple, plan.reason)
        pools = getattr(plan, "pools", None)  # pinned pools (`kairosd.pools`) when the plan partitions the fleet
        counts = {t: n for t, n in (pools if pools is not None else plan.counts).items() if n}
        for t, n in self.extra.items():
            counts[t] = counts.get(t, 0) + n
        return counts

    @staticmethod
    def from_config(config: Config, profiles: ProfileTable, scheduler: Scheduler | None,
                    extra: Mapping[str, int] | None = None) -> PlannerTarget:
        """The window (attached to the scheduler, which records every query into it) and the planner
        over the config's types, prices, QoS targets, budget and objective."""
        a = config.autoscaler
        prior = {m: lognormal_pmf(a.prior_batch_median, PRIOR_SIGMA, profiles.max_batch) for m in profiles.models}
        window = LoadWindow(profiles.models, profiles.max_batch, a.window_s, prior, a.min_queries)
        clock: Callable[[], float] = time.monotonic
        if scheduler is not None:
            scheduler.load = window
            clock = scheduler.clock
        planner = config_planner(config, profiles)
        return PlannerTarget(window, planner, clock, dict(extra or {}), rise_window_s=a.rise_window_s,
                             refiner=config_refiner(config, profiles))


    def reconfigured(self, config: Config, profiles: ProfileTable) -> PlannerTarget:
        """A target planning with `config`'s types, prices, QoS, budget and objective, over the same load
        window (the observed history is kept); no plan is reused from before (the next call plans), and a
        Kairos+ walk still running for the old config is killed."""
        self.close()
        return replace(self, planner=config_planner(config, profiles), rise_window_s=config.autoscaler.rise_window_s,
                       refiner=config_refiner(config, profiles), last_plan=None, last_demand=[], _unavailable=frozenset())

    def close(self) -> None:
        """Kill a Kairos+ walk still running (the daemon stops, or the config changed)."""
        if self.refiner is not None:
            self.refiner.close()


def config_planner(config: Config, profiles: ProfileTable) -> Planner:
    """plan_fleet over the config's types (those with profiles), prices, QoS, budget and objective, judging
    QoS feasibility as the configured dispatcher does (`planning_tail`)."""
    a = config.autoscaler
    tail = planning_tail(config)
    types = [t for t in config.types if t in profiles.types]
    prices = [config.types[t].price_usd_per_hour for t in types]
    qos = dict(config.qos_s)
    # each type's tail per model with a QoS target: what its instances draw when emulated, else from
    # its profile's mean and p99
    cells = emulated_cells(config, types)
    tails = {m: config_tails(profiles, m, types, q, cells) for m, q in qos.items() if m in profiles.models}

    def plan(demand: Sequence[ModelDemand], unavailable: frozenset[str]) -> FleetPlan:
        return plan_fleet(profiles, types, prices, a.budget_usd_per_hour, demand, qos, objective=a.objective,
                          headroom=a.headroom, unavailable=unavailable, tail=tail, tails=tails)

    return plan


def config_refiner(config: Config, profiles: ProfileTable) -> BackgroundRefiner | None:
    """The Kairos+ refiner of the config's plans (`autoscaler.selector = "kairos_plus"`), else None."""
    if config.autoscaler.selector != "kairos_plus":
        return None
    types = [t for t in config.types if t in profiles.types]
    prices = {t: config.types[t].price_usd_per_hour for t in types}
    return BackgroundRefiner(refine_jobs(config, profiles, types), prices, config.autoscaler.objective)


def refine_jobs(config: Config, profiles: ProfileTable,
                types: Sequence[str]) -> Callable[[Sequence[ModelDemand], frozenset[str]], RefineJob]:
    """What makes the Kairos+ job for the observed demand: the config's types, prices, budget and
    dispatcher, every profiled type's service tables per model (`config_tails`: the simulator draws
    from them), and the unavailable types capped at 0."""
    from kairosd.config import dispatch_params

    a = config.autoscaler
    tail = planning_tail(config)
    prices = tuple(config.types[t].price_usd_per_hour for t in types)
    slots = tuple(config.types[t].slots for t in types)
    cells = emulated_cells(config, types)
    every = {m: config_tails(profiles, m, profiles.types, q, cells)
             for m, q in config.qos_s.items() if m in profiles.models}
    draws = {m: config_tails(profiles, m, profiles.types, q, cells, SIM_QUANTILES).quantiles
             for m, q in config.qos_s.items() if m in profiles.models}

    def job(demand: Sequence[ModelDemand], unavailable: frozenset[str]) -> RefineJob:
        caps = tuple(0 if t in unavailable else UNCAPPED for t in types) if unavailable & set(types) else None
        return RefineJob(profiles, tuple(demand), tuple(config.qos_s[d.model] for d in demand),
                         tuple(every[d.model] for d in demand), tuple(types), prices, caps, a.budget_usd_per_hour,
                         tail, config.scheduler.policy, dispatch_params(config), slots,
                         time_limit_s=a.plus_time_limit_s, objective=a.objective, headroom=a.headroom,
                         draws=tuple(draws[d.model] for d in demand))

    return job


def emulated_cells(config: Config, types: Sequence[str]) -> dict[str, dict[str, ServiceCells]]:
    """The service cells each emulated type among `types` draws from, per served model (`load_cells` with
    the type's `emulate`, `emulate_data` and `emulate_models`, as its instances load them)."""
    return {t: load_cells(config.types[t].emulate, config.types[t].emulate_data, config.types[t].emulate_models)
            for t in types if config.types[t].backend == "emulated"}


def config_tails(profiles: ProfileTable, model: str, types: Sequence[str], qos_s: float,
                 cells: Mapping[str, Mapping[str, ServiceCells]], n: int = QUANTILES) -> Tails:
    """Each type's tail for `model`: from the cells an emulated type's instances draw its service times
    from (`cells[type][model]`, `tails_from_cells`), else from the profile's mean and p99 (`profile_tails`);
    `n` quantiles."""
    tails = profile_tails(profiles, model, types, qos_s, n)
    rows = [k for k, t in enumerate(types) if model in cells.get(t, {})]
    if not rows:
        return tails
    drawn = tails_from_cells([cells[types[k]][model] for k in rows], tails.miss.shape[1], qos_s, n)
    miss, cv2, quantiles = tails.miss.copy(), tails.cv2.copy(), tails.quantiles.copy()
    miss[rows], cv2[rows], quantiles[rows] = drawn.miss, drawn.cv2, drawn.quantiles
    return Tails(miss, cv2, quantiles)


def _fmt(counts: Mapping[str, int]) -> str:
    return "{" + ",".join(f"{t}:{n}" for t, n in sorted(counts.items()) if n) + "}"

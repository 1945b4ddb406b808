"""Configuration planner (pure): enumerate fleets within a budget, bound their throughput, select one.

Core rule (Kairos): rank every configuration the budget allows by an upper bound of the query rate it
can serve within QoS, computed from latency profiles alone (no online exploration); then either take
the centre of the top 10 (`kairos_paper`), or walk the configurations evaluating them and pruning those
whose bound cannot beat the best evaluation (`kairos_plus`, the paper's Algorithm 1, within a budget
of simulated configurations).
Two bounds: `upper_bound` bounds the rate of any dispatcher (LP duality on the fluid model, where an
auxiliary may specialise in the batches it serves best): it prunes Kairos+, so a Kairos+ walk that
ends by pruning is exact; `proportional_bound` is the paper's per-type-threshold formula, a bound only
for dispatchers that feed auxiliaries their small queries in mix proportion: it ranks `kairos_paper`.
Beyond the paper: a queue-aware estimate (`queue_estimate`: the proportional split, corrected for the
Kairos dispatcher's routing, plus an M/G/c waiting tail on the base pool) ranks fleets for the
one-shot `kairos` selector (highest estimate with a quarter of its queueing discount given back,
`kairos_score`) and orders Kairos+'s walk
(`kairos_order`: `kairos`'s choice first); pruning stays on the true bound.
The evaluator is any callable config → QPS: the simulator (`kairosd.sim.SimEvaluator`) or a live
measurement; this package never runs one by itself.

Modules: `enumeration` (configurations within the budget), `bounds` (the bounds and the exact fluid
LP), `fluid_lp` (that LP in HiGHS, re-solved per direction), `queueing` (the queue-aware estimate),
`selectors` (candidates and the selectors by name). Everything public is re-exported here.
"""

from __future__ import annotations

from kairosd.planner.bounds import (
    DUAL_LEVELS,
    DUAL_LEVELS_LARGE,
    DUAL_LP_MAX_BATCHES,
    MIN_BASE_COVERAGE,
    QOS_SLACK,
    TAIL_GRID,
    BoundModel,
    authors_upper_bound,
    batch_pmf,
    cv2_from_samples,
    dual_denominator,
    dual_vectors,
    fluid_bound,
    fluid_solution,
    miss_from_samples,
    proportional_bound,
    quantiles_from_samples,
    type_dominance,
    upper_bound,
)
from kairosd.planner.demand import ModelDemand
from kairosd.planner.enumeration import (
    MICRO_USD,
    config_cost,
    config_from_mapping,
    enumerate_configs,
)
from kairosd.planner.joint import (
    DEFAULT_HEADROOM,
    PLAN_OBJECTIVES,
    FleetPlan,
    JointModel,
    joint_fluid_bound,
    joint_queue_estimate,
    joint_upper_bound,
    plan_fleet,
)
from kairosd.planner.queueing import (
    P99_WINDOW_QUERIES,
    QUEUE_BISECT_STEPS,
    QUEUE_EPS,
    erlang_c,
    planning_eps,
    queue_estimate,
)
from kairosd.planner.selectors import (
    CLOSE_SCORE,
    PLUS_BUDGET_SHARE,
    PLUS_STRETCH,
    QUEUE_SHRINK,
    QUEUE_TOLERANCE,
    SELECTORS,
    TOP_K,
    Candidates,
    Evaluator,
    Selection,
    close_contenders,
    dominated_by,
    estimate_error,
    homogeneous_configs,
    kairos_order,
    kairos_score,
    lazy_estimate,
    make_candidates,
    plus_limit,
    plus_stretch,
    rank,
    select,
    select_exhaustive,
    select_homogeneous,
    select_kairos,
    select_kairos_paper,
    select_kairos_plus,
)
from kairosd.pools import POOL_SEP, parse_pool, pool_name  # noqa: I001 - re-exported with the planner's API

__all__ = [
    "BoundModel",
    "CLOSE_SCORE",
    "Candidates",
    "DEFAULT_HEADROOM",
    "DUAL_LEVELS",
    "DUAL_LEVELS_LARGE",
    "DUAL_LP_MAX_BATCHES",
    "Evaluator",
    "FleetPlan",
    "JointModel",
    "MICRO_USD",
    "MIN_BASE_COVERAGE",
    "ModelDemand",
    "P99_WINDOW_QUERIES",
    "PLAN_OBJECTIVES",
    "PLUS_BUDGET_SHARE",
    "PLUS_STRETCH",
    "POOL_SEP",
    "QOS_SLACK",
    "QUEUE_BISECT_STEPS",
    "QUEUE_EPS",
    "QUEUE_SHRINK",
    "QUEUE_TOLERANCE",
    "SELECTORS",
    "Selection",
    "TAIL_GRID",
    "TOP_K",
    "authors_upper_bound",
    "batch_pmf",
    "close_contenders",
    "config_cost",
    "config_from_mapping",
    "cv2_from_samples",
    "dominated_by",
    "dual_denominator",
    "dual_vectors",
    "enumerate_configs",
    "erlang_c",
    "estimate_error",
    "fluid_bound",
    "fluid_solution",
    "homogeneous_configs",
    "joint_fluid_bound",
    "joint_queue_estimate",
    "joint_upper_bound",
    "kairos_order",
    "lazy_estimate",
    "kairos_score",
    "make_candidates",
    "miss_from_samples",
    "parse_pool",
    "plan_fleet",
    "planning_eps",
    "plus_limit",
    "plus_stretch",
    "pool_name",
    "proportional_bound",
    "quantiles_from_samples",
    "queue_estimate",
    "rank",
    "select",
    "select_exhaustive",
    "select_homogeneous",
    "select_kairos",
    "select_kairos_paper",
    "select_kairos_plus",
    "type_dominance",
    "upper_bound",
]

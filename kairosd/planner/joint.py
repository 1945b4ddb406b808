"""The joint plan: one fleet serves every model, ranked for the observed demand vector of all models together.

Core rule: a configuration n is worth the largest multiple λ of the demand vector r (rate r_m of
every model m) that it serves with each model's p99 within that model's QoS. Its fluid bound is the
LP of `upper_bound` with one flow per (model, batch, type) and every type's instance time shared:
    max Λ  s.t.  Σ_k x_mkb = Λ·w_m·p_mb                     (every query of every model is served)
                 Σ_mb x_mkb·L_mk(b) ≤ n_k                   (one pool of time per type)      [dual y_k]
                 Σ_kb x_mkb·miss_mk(b) ≤ ε_m·Λ·w_m          (each model's p99 on its own)     [dual z_m]
with w = r / Σr the demand shares, Λ the total rate of the mix and λ = Λ / Σr. Weak duality, as in
`upper_bound`, weighing the rows by y ≥ 0 and z ≥ 0 and charging each batch its cheapest present type:
    n·y ≥ Λ·D(y, z),   D(y, z) = Σ_m w_m·(Σ_b p_mb·min_k∈S (y_k·L_mk(b) + z_m·miss_mk(b)) − ε_m·z_m),
so Λ ≤ n·y / D for every (y, z) with D > 0. D depends on the present types S only: per subset the
LP's optimal duals at a grid of capacity-share directions (`DUAL_LEVELS`, batches merged to
`DUAL_LP_MAX_BATCHES` groups per model) are normalised on the full mixes to D = 1, and
    Λ_max(n) = min over the subset's vectors y of n·y
bounds every dispatcher (queueing ignored) and equals the joint LP at the grid's directions. A
subset on which some model with demand cannot meet its p99 at any rate (its best present type per
batch misses QoS on more than ε_m of its mix) gets 0. With one model carrying all the demand this is
that model's `upper_bound` (the single-model vectors are used, so the two agree exactly).

Worked example (unit tests; ε = 0). Two types, each model one batch size: "big" serves model A in
1 ms and model B in 4 ms; "small" serves A in 2 ms and B in 20 ms, over B's 10 ms QoS. Demand 3:1
(w = 0.75, 0.25); 1 big + 1 small. B fits only on big: 0.25·Λ·4 ms = Λ·1 ms of big's time; A takes
the rest of big (1 ms each) and all of small (2 ms each): 0.75·Λ = (1 − Λ·1 ms)/1 ms + 1/2 ms →
Λ = 1500/1.75 = 857.1/s, λ = Λ/Σr. Dual y = (big 571.4, small 285.7): A costs min(0.571, 0.571),
B min(2.286, 5.714), so D = 0.75·0.571 + 0.25·2.286 = 1 and Λ ≤ 571.4 + 285.7 = 857.1. Two fleets
planned apart (small for A, big for B) reach min(500/0.75, 250/0.25) = 666.7/s at the 3:1 ratio.

The queue-aware estimate (`JointModel.estimate_qps`; as a multiple `joint_queue_estimate`) extends
`queue_estimate` to the mix: at a total rate Λ, model m (offered Λ·w_m) splits its queries as there —
auxiliaries, most permissive threshold first, take its small queries up to their fluid capacity, here
on w_m of each auxiliary's instances; its base type (`base_types`: the largest share within QoS) the rest. The models whose base
is the same type j share one M/G/c pool of its n_j instances: their rates, loads and second moments
add up, so a model's queries wait behind the other models' services there. An auxiliary's queries wait
too: one that finds every instance of the fleet busy waits for the first to free, and misses when that
exceeds its slack on the auxiliary. The matching routes a queue as the fluid bound routes the mix, so at
Λ the fleet's n instances carry n·Λ/Λ_max Erlangs (Erlang C of that: every instance busy) and free one
at a time at the rate Λ_max. This is what a model with a tight QoS meets where another model's long
services keep the instances busy: its queries need an idle instance at once, and a share of the
auxiliaries' time (the split above) does not give them one. Λ is admissible when every pool is
stable and, for every model, the queries that wait beyond their slack (on the pool's waiting tail, θ
from the pooled moments, or the fleet's for an auxiliary's) plus those no present type serves within
QoS are ≤ 1% of its rate.
Λ_est is the largest admissible Λ ≤ Λ_max (bisection); with one model it is `queue_estimate`. Not a bound.

`plan_fleet` chooses by objective: "max_throughput" is `select_kairos` on the joint signals (the
highest `kairos_score` of the joint estimate and bound, the joint bound breaking ties; with a
`tolerance`, the highest joint bound among the configurations whose score is within it of the best);
"min_cost" the cheapest configuration whose estimate covers the observed rates times `headroom`.

Partitioned fleets. With two or more models with demand, `plan_fleet` also plans a partitioned fleet:
each instance pinned to one model (pool f"{type}@{model}", `pool_name`), so a model's queries never
queue behind another model's services. Model m's part is worth its single-model estimate
e_m(c) = `queue_estimate` (the joint estimate with one model), and the partition
    λ_part = min_m e_m(c_m) / r_m   subject to   Σ_m cost(c_m) ≤ budget,  Σ_m c_m ≤ caps.
Per model, the cheapest part whose estimate reaches a target is a step function of the target (the
running maximum of e_m over the model's configurations sorted by cost), so for every candidate λ —
the values e_m(c)/r_m — the cheapest partition covering λ·r_m is one look-up per model; λ_part is the
largest candidate whose cheapest partition fits the budget and the caps. The budget left over goes to
the models from the lowest e_m/r_m up, each taking the part of highest estimate within its cost plus
what is left. "min_cost" takes per model the cheapest part with e_m ≥ headroom·r_m. A model listed
with zero rate gets the cheapest part that can serve it at some rate.
Worked example (the two-type example above, fluid numbers): at 1.5 $/h the best partition, A pinned to the
small instance and B to the big one, serves min(500/0.75, 250/0.25) = 666.7/s of the 3:1 mix; the
shared 1 big + 1 small 857.1/s. Pinning wins where pooling puts a model with little slack behind
another model's long services (unit tests: a 1 ms model with a 3 ms QoS beside a 50 ms one).
The plan is partitioned when its λ estimate is higher than the chosen shared configuration's
("max_throughput"), or when it covers the headroom at a lower cost ("min_cost"). Sharing is a
relaxation of partitioning in the fluid model (every partition's flows are feasible for the joint LP),
so the joint bound never prefers a partition: the choice rests on the estimates, where pooling a
model's short slack behind another model's long services can make the shared fleet worse.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import highspy
import numpy as np
import scipy.sparse as sp

from kairosd.errors import ConfigError
from kairosd.planner.bounds import (
    DUAL_LP_MAX_BATCHES,
    BoundModel,
    _merge_batches,
    _subset_directions,
    dual_denominator,
    upper_bound,
)
from kairosd.planner.demand import ModelDemand
from kairosd.planner.enumeration import MICRO_USD, _micro, config_cost, enumerate_configs
from kairosd.planner.fluid_lp import _stdout_to_devnull
from kairosd.planner.pruning import cheapest_cover_estimates, frontier_estimates, kairos_estimates
from kairosd.planner.queueing import (
    QUEUE_BISECT_STEPS,
    _tail_weights,
    base_types,
    erlang_c,
    largest_admitted,
    planning_eps,
    queue_estimate,
)
from kairosd.planner.selectors import QUEUE_SHRINK, QUEUE_TOLERANCE, kairos_rank, kairos_score, queue_safe
from kairosd.planner.tails import Tails, tailed_model
from kairosd.pools import parse_pool, pool_name
from kairosd.profiles import ProfileTable

PLAN_OBJECTIVES = ("max_throughput", "min_cost")
DEFAULT_HEADROOM = 1.2


def _tables(bm: BoundModel, sub: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The model's batch tables restricted to the types `sub`: probability [b], latency and miss [k, b]."""
    if bm.batch_p is None or bm.batch_lat_s is None or bm.batch_miss is None:
        raise ConfigError("the joint bound needs BoundModels made by BoundModel.build (batch tables)")
    return bm.batch_p, bm.batch_lat_s[list(sub)], bm.batch_miss[list(sub)]


def _servable(bm: BoundModel, sub: Sequence[int]) -> bool:
    """Whether the types `sub` can serve the model's p99 at some rate: the best of them per batch
    meets QoS on at least 1 − ε of the mix."""
    if not sub:
        return False
    p, _, miss = _tables(bm, sub)
    return bool(p @ (1.0 - miss.min(axis=0)) >= 1.0 - bm.slack - 1e-12)


class _JointLp:
    """The joint fluid LP of a subset of types (columns x[m, k, b] model-major, then Λ), re-solvable
    for any counts n from the last basis (HiGHS, as `planner.fluid_lp.FluidLp`)."""

    def __init__(self, lats: Sequence[np.ndarray], misses: Sequence[np.ndarray], ps: Sequence[np.ndarray],
                 shares: Sequence[float], slacks: Sequence[float]) -> None:
        """lats[m], misses[m]: [k, b] per model (the subset's types, the model's batches); ps[m]: [b];
        shares: w_m; slacks: ε_m."""
        k_n = lats[0].shape[0]
        rows: list[np.ndarray] = []
        cols: list[np.ndarray] = []
        vals: list[np.ndarray] = []
        col0, eq0 = 0, 0
        n_eq = sum(len(p) for p in ps)
        nv = sum(k_n * len(p) for p in ps) + 1
        lam = nv - 1
        cap0, miss0 = n_eq, n_eq + k_n
        for m, (lat, miss, p) in enumerate(zip(lats, misses, ps, strict=True)):
            nb = len(p)
            x = col0 + np.arange(k_n * nb)
            k_of, b_of = np.divmod(np.arange(k_n * nb), nb)
            rows += [eq0 + b_of, eq0 + np.arange(nb), cap0 + k_of, np.full(k_n * nb + 1, miss0 + m)]
            cols += [x, np.full(nb, lam), x, np.r_[x, lam]]
            vals += [np.ones(k_n * nb), -shares[m] * p, lat.ravel(),
                     np.r_[-(1.0 - miss).ravel(), (1.0 - slacks[m]) * shares[m]]]
            col0 += k_n * nb
            eq0 += nb
        n_rows = n_eq + k_n + len(ps)
        a = sp.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_rows, nv))
        inf = highspy.kHighsInf
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = nv, n_rows
        lp.col_cost_ = np.r_[np.zeros(nv - 1), -1.0]  # HiGHS minimises: −Λ
        lp.col_lower_, lp.col_upper_ = np.zeros(nv), np.full(nv, inf)
        lp.row_lower_ = np.r_[np.zeros(n_eq), np.full(k_n + len(ps), -inf)]
        lp.row_upper_ = np.r_[np.zeros(n_eq), np.ones(k_n), np.zeros(len(ps))]
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = a.indptr, a.indices, a.data
        with _stdout_to_devnull():
            self._h = highspy.Highs()
        self._h.setOptionValue("output_flag", False)
        self._h.setOptionValue("presolve", "off")
        self._h.passModel(lp)
        self._cap = (cap0, cap0 + k_n)
        self._miss = (miss0, miss0 + len(ps))

    def solve(self, n: np.ndarray) -> tuple[float, np.ndarray, np.ndarray] | None:
        """(Λ, y [k], z [m]) at counts n [k], or None if HiGHS finds no optimum."""
        for row, bound in zip(range(*self._cap), np.asarray(n, dtype=float).tolist(), strict=True):
            self._h.changeRowBounds(row, -highspy.kHighsInf, bound)
        self._h.run()
        if self._h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            return None
        dual = -np.asarray(self._h.getSolution().row_dual)  # HiGHS: ∂(−Λ)/∂(row bound)
        lam = -float(self._h.getInfo().objective_function_value)
        return lam, np.maximum(dual[slice(*self._cap)], 0.0), np.maximum(dual[slice(*self._miss)], 0.0)


@dataclass(frozen=True)
class JointModel:
    """The joint bound's inputs: one `BoundModel` per model (same types, same order) and the demand
    vector. A value: the dual vectors, found on first use per subset of types, are a cache. They depend
    on the demand only through the shares, so a caller ranking every period can keep one JointModel
    per quantised share vector (`JointModel.build(..., share_step=...)`) and reuse it."""

    models: tuple[BoundModel, ...]
    rates_qps: np.ndarray  # r_m ≥ 0
    shares: np.ndarray  # w = r / Σr (uniform when Σr = 0): the direction Λ is measured along
    _duals: dict[int, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    @staticmethod
    def build(models: Sequence[BoundModel], demand: Sequence[ModelDemand] | Sequence[float], *,
              share_step: float = 0.0) -> JointModel:
        """From per-model bound models and the demand (ModelDemand per model, or its rates in q/s, in the
        same order); `share_step` > 0 rounds the shares to multiples of it (renormalised), so that nearby
        demand vectors share one model and its cached vectors."""
        if not models:
            raise ConfigError("the joint plan needs at least one model")
        if len(demand) != len(models):
            raise ConfigError(f"{len(demand)} demands for {len(models)} bound models")
        types = models[0].types
        if any(bm.types != types for bm in models):
            raise ConfigError("every model's bound model must have the same types in the same order")
        rates = np.array([d.rate_qps if isinstance(d, ModelDemand) else float(d) for d in demand], dtype=float)
        if not np.all(np.isfinite(rates)) or (rates < 0).any():
            raise ConfigError(f"demand rates must be finite and >= 0, got {rates.tolist()}")
        total = rates.sum()
        shares = rates / total if total > 0 else np.full(len(rates), 1.0 / len(rates))
        if share_step > 0:
            q = np.round(shares / share_step) * share_step
            shares = q / q.sum() if q.sum() > 0 else shares
        return JointModel(tuple(models), rates, shares)

    @property
    def types(self) -> tuple[str, ...]:
        return self.models[0].types

    @property
    def total_rate_qps(self) -> float:
        return float(self.rates_qps.sum())

    def active(self) -> list[int]:
        """The models with a positive share: only they constrain Λ."""
        return [m for m in range(len(self.models)) if self.shares[m] > 0]

    def servable(self, configs: np.ndarray) -> np.ndarray:
        """bool[N, M]: whether each configuration's present types can meet each model's p99 at some rate."""
        configs = np.atleast_2d(np.asarray(configs, dtype=np.int64))
        masks = _masks(configs)
        out = np.zeros((len(configs), len(self.models)), dtype=bool)
        for mask in np.unique(masks):
            sub = _subset(int(mask), len(self.types))
            out[masks == mask] = [_servable(bm, sub) for bm in self.models]
        return out

    def dual_vectors(self, mask: int) -> np.ndarray:
        """float[v, K]: the joint dual vectors of the subset `mask` (bit k = type k present), normalised
        to D = 1 on the full mixes; empty when a model with demand cannot be served by the subset."""
        if mask in self._duals:
            return self._duals[mask]
        n_types = len(self.types)
        sub = _subset(mask, n_types)
        act = self.active()
        out = np.zeros((0, n_types))
        bms = [self.models[m] for m in act]
        if sub and all(_servable(bm, sub) for bm in bms):
            full = [_tables(bm, sub) for bm in bms]
            w = self.shares[act]
            # one instance's queries/s over the mix of all models: directions in capacity shares
            rate = 1.0 / sum(wm * (lat @ p) for wm, (p, lat, _) in zip(w, full, strict=True))
            merged = [_merge_batches(p, lat, miss, DUAL_LP_MAX_BATCHES) for p, lat, miss in full]
            lp = _JointLp([g[1] for g in merged], [g[2] for g in merged], [g[0] for g in merged], w.tolist(),
                          [bm.slack for bm in bms])
            ys, zs = [], []
            for share in _subset_directions(len(sub)):
                sol = lp.solve(share / rate)
                if sol is not None:
                    ys.append(sol[1])
                    zs.append(sol[2])
            if ys:
                y, z = np.array(ys), np.array(zs)
                d = sum(wm * dual_denominator(y, z[:, i], lat, miss, p, bm.slack)
                        for i, (wm, (p, lat, miss), bm) in enumerate(zip(w, full, bms, strict=True)))
                ok = d > 1e-12 * np.maximum(y.max(axis=1), 1.0)
                vec = np.unique(np.round(y[ok] / d[ok, None], 9), axis=0)
                out = np.zeros((len(vec), n_types))
                out[:, sub] = vec
        self._duals[mask] = out
        return out

    def bound_qps(self, configs: np.ndarray) -> np.ndarray:
        """Λ_max per configuration: the total rate of the demand mix (shares `shares`) it can serve."""
        configs = _check(configs, len(self.types))
        act = self.active()
        if len(act) == 1:
            return upper_bound(configs, self.models[act[0]])
        masks = _masks(configs)
        ub = np.zeros(len(configs))
        counts = configs.astype(float)
        for mask in np.unique(masks):
            if mask == 0:
                continue
            vec = self.dual_vectors(int(mask))
            if len(vec):
                rows = masks == mask
                ub[rows] = (counts[rows] @ vec.T).min(axis=1)
        return ub

    def estimate_qps(self, configs: np.ndarray, bound_qps: np.ndarray | None = None, *, eps: float | None = None,
                     steps: int = QUEUE_BISECT_STEPS) -> np.ndarray:
        """Λ_est per configuration: the queue-aware estimate of the mix's total rate (module docstring),
        the largest Λ in [0, Λ_max] that `_pooled_admissible` accepts, by bisection; at the share of
        misses `eps` (default: the planning share, `planning_eps`)."""
        eps = planning_eps() if eps is None else eps
        configs = _check(configs, len(self.types))
        act = self.active()
        if len(act) == 1:
            return queue_estimate(configs, self.models[act[0]], eps=eps, steps=steps)
        ub = self.bound_qps(configs) if bound_qps is None else np.asarray(bound_qps, dtype=float)
        bms = [self.models[m] for m in act]
        w = self.shares[act]
        base = np.stack([_base_types(configs, bm) for bm in bms], axis=1)  # [N, M]
        est = np.zeros(len(configs))
        combos, combo_of = np.unique(base, axis=0, return_inverse=True)
        for ci, combo in enumerate(combos):
            rows = np.flatnonzero((combo_of.ravel() == ci) & (ub > 0))
            if len(rows) == 0:
                continue
            n = configs[rows].astype(float)
            test = functools.partial(_pooled_admissible, n=n, bms=bms, shares=w, base=[int(j) for j in combo], eps=eps,
                                     bound=ub[rows])
            est[rows] = largest_admitted(test, np.zeros(len(rows)), ub[rows].copy(), steps)
        return est


def _base_types(configs: np.ndarray, bm: BoundModel) -> np.ndarray:
    """Each configuration's base type for the model, as `queue_estimate` picks it (`base_types`)."""
    return base_types(configs, bm)


def _pooled_admissible(lam: np.ndarray, n: np.ndarray, bms: Sequence[BoundModel], shares: np.ndarray,
                       base: Sequence[int], eps: float, bound: np.ndarray) -> np.ndarray:
    """Whether each total rate `lam` (rows of counts `n`) passes the joint queue test: every model m,
    offered lam·w_m, splits its queries as in `queue_estimate` on its share w_m of each auxiliary's
    capacity; the models whose base is type j share one M/G/c pool of n_j servers (their base loads,
    rates and second moments added); the pool is stable, and each model's violations — waits beyond
    its own slack on the pool's waiting tail, the queries an auxiliary takes that find every instance of
    the fleet busy (Erlang C of its n instances at n·lam/`bound` Erlangs, `bound` the joint bound Λ_max of
    each row) and wait beyond their slack there for the first to free (decay `bound`), plus the queries
    its base and auxiliaries miss QoS on without waiting (the base's band by band, `band_miss`; an
    auxiliary's at its `small_miss` share of what it takes) — stay within eps of its rate."""
    loads: dict[int, list[np.ndarray]] = {}
    per_model = []
    for bm, w_m, j in zip(bms, shares, base, strict=True):
        if (bm.band_p is None or bm.band_small is None or bm.band_m1 is None or bm.band_m2 is None
                or bm.band_tail is None or bm.band_miss is None or bm.small_miss is None):
            raise ConfigError("the joint estimate needs BoundModels made by BoundModel.build (band tables)")
        lam_m = lam * w_m
        s, t = bm.coverage, bm.time_share[j]
        r = np.repeat(lam_m[:, None], len(bm.band_p), axis=1)  # the base's rate per band
        used = np.zeros(len(lam))
        missed = np.zeros(len(lam))  # queries/s missing QoS without waiting on auxiliaries
        taken = []  # (type, rate per band) of the queries each auxiliary takes
        for k in (k for k in np.argsort(-t, kind="stable") if k != j and s[k] > 0):
            y = np.minimum(w_m * n[:, k] * bm.small_rate_qps[k], s[k] * np.maximum(lam_m - used, 0.0))
            used += y / s[k]
            missed += y * bm.small_miss[k]
            r_k = (y / s[k])[:, None] * bm.band_small[k][None, :]
            r -= r_k
            taken.append((int(k), r_k))
        r = np.maximum(r, 0.0)
        pool = loads.setdefault(j, [np.zeros(len(lam)), np.zeros(len(lam)), np.zeros(len(lam))])
        pool[0] += r @ bm.band_p  # queries/s
        pool[1] += r @ bm.band_m1[j]  # Erlangs
        pool[2] += r @ bm.band_m2[j]  # Σ rate·E[S²]
        per_model.append((bm.qos_s, bm.band_tail, missed + r @ bm.band_miss[j], lam_m, j, r, taken))
    ok = np.ones(len(lam), dtype=bool)
    theta: dict[int, np.ndarray] = {}
    wait: dict[int, np.ndarray] = {}
    for j, (lam_b, work, second) in loads.items():
        n_b = n[:, j]
        with np.errstate(divide="ignore", invalid="ignore"):
            mean_svc = np.where(lam_b > 0, work / lam_b, 0.0)
            cs2 = np.where(work > 0, second * lam_b / work**2 - 1.0, 0.0)
            theta[j] = np.where(mean_svc > 0, (n_b - work) / mean_svc, np.inf) * 2.0 / (1.0 + np.maximum(cs2, 0.0))
        wait[j] = erlang_c(n_b, work)
        ok &= work < n_b
    # what an auxiliary's query waits for when it finds every instance busy: the matching routes the
    # queue as the fluid bound routes the mix, so the fleet's n instances carry n·Λ/Λ_max Erlangs and free
    # one at a time at the rate Λ_max (each query holds an instance n/Λ_max on average)
    servers = n.sum(axis=1)
    first_free = np.asarray(bound, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        all_busy = erlang_c(servers, np.where(first_free > 0, servers * lam / first_free, np.inf))
    for qos_s, tail, no_wait, lam_m, j, r, taken in per_model:
        violating = wait[j] * (r * _tail_weights(theta[j] * qos_s, tail[j])).sum(axis=1) + no_wait
        for k, r_k in taken:
            violating += all_busy * (r_k * _tail_weights(first_free * qos_s, tail[k])).sum(axis=1)
        ok &= violating <= eps * lam_m
    return ok


def _check(configs: np.ndarray, n_types: int) -> np.ndarray:
    configs = np.atleast_2d(np.asarray(configs, dtype=np.int64))
    if configs.shape[1] != n_types:
        raise ConfigError(f"configurations have {configs.shape[1]} counts but the bound models have {n_types} types")
    return configs


def _masks(configs: np.ndarray) -> np.ndarray:
    return (configs > 0).astype(np.int64) @ (np.int64(1) << np.arange(configs.shape[1], dtype=np.int64))


def _subset(mask: int, n_types: int) -> list[int]:
    return [k for k in range(n_types) if mask >> k & 1]


def _demand_total(demand: Sequence[ModelDemand]) -> float:
    total = float(sum(d.rate_qps for d in demand))
    if total <= 0:
        raise ConfigError("the demand is zero for every model: there is no multiple of it to bound")
    return total


def joint_upper_bound(configs: np.ndarray, models: Sequence[BoundModel], demand: Sequence[ModelDemand]) -> np.ndarray:
    """λ_max per configuration (int[N, K], counts aligned with the models' types): the largest multiple λ
    of the demand vector (λ·rate_m for every model m) that the fleet can serve with every model's p99
    within its QoS, by LP duality on the joint fluid model (module docstring); ≥ the joint LP, valid for
    any dispatcher. Models with zero rate do not constrain it. Refused when every rate is zero."""
    total = _demand_total(demand)
    return JointModel.build(models, demand).bound_qps(configs) / total


def joint_queue_estimate(configs: np.ndarray, models: Sequence[BoundModel], demand: Sequence[ModelDemand]) -> np.ndarray:
    """The queue-aware estimate of λ per configuration (module docstring: each model's split as in
    `queue_estimate`, the models with the same base type queueing in one pool); not a bound."""
    total = _demand_total(demand)
    return JointModel.build(models, demand).estimate_qps(configs) / total


def joint_fluid_bound(config: np.ndarray, models: Sequence[BoundModel], demand: Sequence[ModelDemand]) -> float:
    """The joint fluid LP solved exactly for one configuration (every batch of every mix, no merging),
    as a multiple of the demand: what `joint_upper_bound` bounds from above, for validation."""
    total = _demand_total(demand)
    jm = JointModel.build(models, demand)
    config = _check(config, len(jm.types))[0]
    sub = [k for k in range(len(config)) if config[k] > 0]
    act = jm.active()
    bms = [jm.models[m] for m in act]
    if not sub or not all(_servable(bm, sub) for bm in bms):
        return 0.0
    full = [_tables(bm, sub) for bm in bms]
    lp = _JointLp([t[1] for t in full], [t[2] for t in full], [t[0] for t in full], jm.shares[act].tolist(),
                  [bm.slack for bm in bms])
    sol = lp.solve(config[sub].astype(float))
    if sol is None:
        raise RuntimeError("joint fluid LP failed")
    return sol[0] / total


# --------------------------------------------------------------------------------------------------
# The fleet plan


@dataclass(frozen=True)
class FleetPlan:
    """The fleet to run for the observed demand of every model.

    counts            instances per type (every type of the catalogue, 0 for the unused and unavailable):
                      the sum over `pools` of that type
    cost_usd_per_hour Σ count × price
    multiple          λ estimated for this fleet (queue-aware): it serves λ × the observed rates
                      (inf when the observed demand is zero and the fleet can serve every model)
    bound_multiple    the fluid bound of λ for this fleet (no dispatcher does better): the joint bound
                      for a shared fleet, the least over the models of each part's bound when partitioned
    objective         "max_throughput" | "min_cost"
    reason            why this configuration, in words (for logs and the decision record)
    pools             the instances to run by pool (`pool_name`): a type's name for instances that serve
                      every model, f"{type}@{model}" for instances pinned to one model; non-zero counts
                      only. Left empty, it is filled with the non-zero `counts` (a shared fleet)
    partitioned       whether the instances are pinned to models (every pool is f"{type}@{model}")
    """

    counts: dict[str, int]
    cost_usd_per_hour: float
    multiple: float
    bound_multiple: float
    objective: str
    reason: str
    pools: dict[str, int] = field(default_factory=dict)
    partitioned: bool = False

    def __post_init__(self) -> None:
        if not self.pools:
            object.__setattr__(self, "pools", {t: n for t, n in self.counts.items() if n})
        per_type: dict[str, int] = {}
        for pool, n in self.pools.items():
            t, _ = parse_pool(pool)
            per_type[t] = per_type.get(t, 0) + n
        if per_type != {t: n for t, n in self.counts.items() if n}:
            raise ConfigError(f"pools {self.pools} do not add up to counts {self.counts}")

    def pinned_models(self) -> list[str]:
        """The models instances are pinned to, in pool order (none for a shared fleet)."""
        return list(dict.fromkeys(m for m in (parse_pool(p)[1] for p in self.pools) if m is not None))

    def pinned(self, model: str) -> dict[str, int]:
        """Instances per type pinned to `model` (empty for a shared fleet)."""
        out: dict[str, int] = {}
        for pool, n in self.pools.items():
            t, m = parse_pool(pool)
            if m == model:
                out[t] = out.get(t, 0) + n
        return out


@dataclass(frozen=True)
class _Frontier:
    """One model's configurations by cost: `order` (configuration rows by cost, then estimate high to low,
    then row), `cost` (micro-$, in that order) and `best`, the running maximum of the estimate along it."""

    order: np.ndarray
    cost: np.ndarray
    best: np.ndarray

    @staticmethod
    def build(est_qps: np.ndarray, cost_micro: np.ndarray) -> _Frontier:
        """From every configuration's estimate (NaN: not estimated, as `frontier_estimates` leaves the rows
        that cannot raise the running maximum) and cost."""
        order = np.lexsort((np.arange(len(est_qps)), -est_qps, cost_micro))
        return _Frontier(order, cost_micro[order], np.fmax.accumulate(est_qps[order]))

    def cheapest(self, target_qps: np.ndarray) -> np.ndarray:
        """Row of the cheapest configuration whose estimate is ≥ each target (> 0), −1 when none is."""
        i = np.searchsorted(self.best, target_qps, side="left")
        return np.where(i < len(self.order), self.order[np.minimum(i, len(self.order) - 1)], -1)


@dataclass(frozen=True)
class _PartSpace:
    """What the partition search needs: every configuration within the budget and caps (not only the
    maximal ones), its cost, each model's single-model estimate and frontier (models with demand), the
    keep-warm part of each model without demand, and the budget and caps those parts leave."""

    configs: np.ndarray
    cost_micro: np.ndarray
    est_qps: dict[int, np.ndarray]
    frontiers: dict[int, _Frontier]
    fixed: dict[int, int]
    unserved: tuple[int, ...]  # models without demand that no configuration can serve
    budget_micro: int
    caps: np.ndarray
    ub_qps: dict[int, np.ndarray]  # each model's `upper_bound` of every configuration
    estimate: dict[int, Callable[[np.ndarray], np.ndarray]]  # each model's: rows → their estimates

    def estimated(self, m: int, rows: np.ndarray, above: float) -> np.ndarray:
        """Model m's estimates of `rows`, each one not yet made asked now where its bound is above `above`
        (NaN where it is not: its estimate cannot be above `above`)."""
        est = self.est_qps[m]
        todo = rows[np.isnan(est[rows]) & (self.ub_qps[m][rows] > above)]
        if len(todo):
            est[todo] = self.estimate[m](todo)
        return est[rows]


def _part_space(joint: JointModel, rates: np.ndarray, prices: np.ndarray, budget_usd_per_hour: float,
                caps: np.ndarray, *, prune: bool = True, scale: Mapping[int, float] | None = None) -> _PartSpace | None:
    """The partition search's inputs (None when no configuration fits the budget and caps); `scale[m]`
    multiplies model m's estimates and bounds (default 1)."""
    configs = enumerate_configs(prices, budget_usd_per_hour, maximal_only=False, max_counts=caps.tolist())
    if len(configs) == 0:
        return None
    cost = configs @ _micro(prices)
    act = [m for m in range(len(rates)) if rates[m] > 0]
    s = {m: 1.0 if scale is None else float(scale.get(m, 1.0)) for m in act}
    ub = {m: s[m] * upper_bound(configs, joint.models[m]) for m in act}
    estimate: dict[int, Callable[[np.ndarray], np.ndarray]] = {
        m: partial(_estimate_rows, configs, joint.models[m], s[m]) for m in act}
    # the estimate where it can raise the frontier (`frontier_estimates`), NaN elsewhere; `_max_partition`
    # asks more where the budget left over needs them
    est = {m: (frontier_estimates(cost, ub[m], estimate[m]) if prune else estimate[m](np.arange(len(configs))))
           for m in act}
    warm = keep_warm_parts(joint, configs, cost, rates, int(_micro(budget_usd_per_hour)), caps)
    frontiers = {m: _Frontier.build(e, cost) for m, e in est.items()}
    return _PartSpace(configs, cost, est, frontiers, warm.rows, warm.unserved, warm.budget_micro, warm.caps, ub,
                      estimate)


@dataclass(frozen=True)
class KeepWarm:
    """The keep-warm parts of a partitioned fleet (`keep_warm_parts`): `rows[m]`, the part (a row of the
    configurations) pinned to model m without demand; `unserved`, those models no configuration left
    serves; what budget (micro-$) and caps per type the parts leave."""

    rows: dict[int, int]
    unserved: tuple[int, ...]
    budget_micro: int
    caps: np.ndarray


def keep_warm_parts(joint: JointModel, configs: np.ndarray, cost_micro: np.ndarray, rates: np.ndarray,
                    budget_micro: int, caps: np.ndarray) -> KeepWarm:
    """For each model without demand (rates[m] ≤ 0), in model order, the cheapest of `configs` that can serve
    it within what the earlier parts leave of the budget and `caps` (first on ties: enumeration order),
    so that a partitioned fleet answers its first queries without a launch."""
    budget = int(budget_micro)
    left = np.asarray(caps, dtype=np.int64).copy()
    fixed: dict[int, int] = {}
    unserved: list[int] = []
    idle = [m for m in range(len(rates)) if rates[m] <= 0]
    if idle:
        serve = joint.servable(configs)
        for m in idle:
            ok = np.flatnonzero(serve[:, m] & (cost_micro <= budget) & (configs <= left[None, :]).all(axis=1))
            if len(ok) == 0:
                unserved.append(m)
                continue
            row = int(ok[np.argmin(cost_micro[ok])])
            fixed[m] = row
            budget -= int(cost_micro[row])
            left = left - configs[row]
    return KeepWarm(fixed, tuple(unserved), budget, left)


def _estimate_rows(configs: np.ndarray, bm: BoundModel, scale: float, rows: np.ndarray) -> np.ndarray:
    """The single-model estimate (`queue_estimate` at the planning share) of `configs[rows]`, times `scale`."""
    return scale * queue_estimate(configs[rows], bm, eps=planning_eps())


def _fits(space: _PartSpace, rows: np.ndarray) -> np.ndarray:
    """Whether each column of `rows` ([models, candidates], −1: none) is a partition within the budget
    and caps that the fixed parts leave."""
    have = (rows >= 0).all(axis=0)
    r = np.where(rows >= 0, rows, 0)
    cost = space.cost_micro[r].sum(axis=0)
    counts = space.configs[r].sum(axis=0)  # [candidates, types]
    return have & (cost <= space.budget_micro) & (counts <= space.caps[None, :]).all(axis=1)


def _max_partition(space: _PartSpace, rates: np.ndarray) -> dict[int, int] | None:
    """The partition of the highest λ_part (module docstring): for each candidate λ (each e_m(c)/r_m) the
    cheapest part per model covering λ·r_m; the largest λ that fits; then the budget left over, from the
    model of lowest e_m/r_m up, each taking the part of highest estimate within its cost plus what is left
    (ties: cheaper, enumeration order). None when no partition serves every model with demand."""
    act = sorted(space.est_qps)
    lam = np.unique(np.concatenate([space.est_qps[m][space.est_qps[m] > 0] / rates[m] for m in act]))
    if len(lam) == 0:
        return None
    # (1 − 1e-12): the candidate λ·r_m recomputed from e/r must still reach e itself
    rows = np.stack([space.frontiers[m].cheapest(lam * rates[m] * (1.0 - 1e-12)) for m in act])
    ok = np.flatnonzero(_fits(space, rows))
    if len(ok) == 0:
        return None
    chosen = {m: int(rows[i, ok[-1]]) for i, m in enumerate(act)}
    budget_left = space.budget_micro - int(sum(space.cost_micro[r] for r in chosen.values()))
    used = sum((space.configs[r] for r in chosen.values()), np.zeros(space.configs.shape[1], dtype=np.int64))
    for m in sorted(act, key=lambda m: (space.est_qps[m][chosen[m]] / rates[m], m)):
        cur = chosen[m]
        others = used - space.configs[cur]
        room = budget_left + int(space.cost_micro[cur])
        fit = np.flatnonzero((space.cost_micro <= room) & (space.configs <= (space.caps - others)[None, :]).all(axis=1))
        est = space.estimated(m, fit, float(space.est_qps[m][cur]))
        best = int(fit[np.lexsort((fit, space.cost_micro[fit], -est))[0]])
        if space.est_qps[m][best] > space.est_qps[m][cur]:
            chosen[m] = best
            budget_left = room - int(space.cost_micro[best])
            used = others + space.configs[best]
    return chosen


@dataclass(frozen=True)
class Partition:
    """A partitioned fleet: `parts[m]`, the instances per type pinned to model m (the models with demand
    and the keep-warm parts of those without); `est_qps[m]`, the (scaled) estimate of each part of a
    model with demand."""

    parts: dict[int, np.ndarray]
    est_qps: dict[int, float]


def best_partition(joint: JointModel, rates: Sequence[float], prices: Sequence[float], budget_usd_per_hour: float,
                   caps: Sequence[int] | None = None, *, scale: Mapping[int, float] | None = None) -> Partition | None:
    """The partition of the highest λ_part (module docstring) that `plan_fleet` plans for `rates` (one per
    model of `joint`), with model m's single-model estimates (and bounds) multiplied by `scale[m]`
    (default 1: `plan_fleet`'s own); None when no partition serves every model with demand within the
    budget and caps (None: uncapped)."""
    r = np.asarray(rates, dtype=float)
    p = np.asarray(prices, dtype=float)
    c = (np.full(len(p), np.iinfo(np.int64).max, dtype=np.int64) if caps is None
         else np.asarray(caps, dtype=np.int64).copy())
    space = _part_space(joint, r, p, budget_usd_per_hour, c, scale=scale)
    chosen = None if space is None else _max_partition(space, r)
    if space is None or chosen is None:
        return None
    return Partition({m: space.configs[row].copy() for m, row in {**space.fixed, **chosen}.items()},
                     {m: float(space.est_qps[m][row]) for m, row in chosen.items()})


def _min_cost_partition(space: _PartSpace, rates: np.ndarray, headroom: float) -> dict[int, int] | None:
    """Per model with demand the cheapest part whose estimate covers headroom·r_m; None when one has none
    or together they exceed the budget or caps."""
    act = sorted(space.est_qps)
    rows = np.array([[int(space.frontiers[m].cheapest(np.array([headroom * rates[m]]))[0])] for m in act])
    if not _fits(space, rows)[0]:
        return None
    return {m: int(rows[i, 0]) for i, m in enumerate(act)}


def _partition_plan(space: _PartSpace, chosen: Mapping[int, int], joint: JointModel, names: Sequence[str],
                    rates: np.ndarray, types: Sequence[str], prices: np.ndarray, objective: str,
                    reason: str) -> FleetPlan:
    """The FleetPlan of a partition: model m's part `chosen[m]` (rows of `space.configs`) plus the
    keep-warm parts of the models without demand, each pinned to its model."""
    rows = {**space.fixed, **chosen}
    pools: dict[str, int] = {}
    total = np.zeros(len(types), dtype=np.int64)
    for m in sorted(rows):
        c = space.configs[rows[m]]
        total += c
        pools.update({pool_name(t, names[m]): int(n) for t, n in zip(types, c, strict=True) if n})
    multiple = min(float(space.est_qps[m][r] / rates[m]) for m, r in chosen.items())
    bound = min(float(upper_bound(space.configs[r][None, :], joint.models[m])[0] / rates[m]) for m, r in chosen.items())
    counts = {t: int(n) for t, n in zip(types, total, strict=True)}
    return FleetPlan(counts, float(config_cost(total, prices)), multiple, bound, objective, reason, pools, True)


def _parts_label(space: _PartSpace, chosen: Mapping[int, int], names: Sequence[str], types: Sequence[str]) -> str:
    rows = {**space.fixed, **chosen}
    return " | ".join(f"{names[m]}: {_label(types, space.configs[rows[m]])}" for m in sorted(rows))


def _label(types: Sequence[str], config: np.ndarray) -> str:
    return " + ".join(f"{int(c)}×{t}" for c, t in zip(config, types, strict=True) if c) or "(empty)"


def plan_fleet(
    profiles: ProfileTable,
    types: Sequence[str],
    prices_usd_per_hour: Sequence[float],
    budget_usd_per_hour: float,
    demand: Sequence[ModelDemand],
    qos_s: Mapping[str, float],
    *,
    objective: str = "max_throughput",
    headroom: float = DEFAULT_HEADROOM,
    unavailable: Collection[str] = (),
    max_counts: Sequence[int] | None = None,
    tails: Mapping[str, Tails] | None = None,
    tail: bool = True,
    tolerance: float = QUEUE_TOLERANCE,
    shrink: float = QUEUE_SHRINK,
    keep_warm: bool = True,
    joint: JointModel | None = None,
    partition: bool = True,
    prune: bool = True,
) -> FleetPlan:
    """Choose one fleet (counts of `types` at `prices_usd_per_hour`, cost ≤ the budget) for the observed
    `demand` of every model, each judged against its `qos_s[model]`; no online exploration.

    objective "max_throughput" (Kairos for the mix): among the maximal configurations, those whose score
        (`kairos_score`: the joint queue-aware estimate with a share `shrink` of its discount from the
        joint bound given back) is within `tolerance` of the best (default 0: the best alone) are
        queue-safe; the one with the highest joint bound wins (ties: higher estimate, cheaper,
        enumeration order). With one model this is `select_kairos` on `make_candidates` of that model.
    objective "min_cost": the cheapest configuration (maximal or not) whose estimate serves the observed
        rates × `headroom` (λ_est ≥ headroom; ties: higher estimate, higher bound, enumeration order).
        If none within the budget does, the "max_throughput" choice (the reason says so). With zero
        observed demand for every model: the cheapest configuration that can serve every model within
        its QoS (`keep_warm`, so that the first queries after an idle spell need no launch), or the
        empty fleet when `keep_warm` is False.
    Both objectives consider only configurations that can serve every listed model at some rate (a model
    with zero rate included), when any can. Types in `unavailable` get count 0 (names not in `types` are
    ignored); `max_counts` caps each type. `tails[model]` (`kairosd.planner.tails`, types as `types`): each type's
    probability of missing QoS without waiting, service variability and distribution, from measured
    samples or from the profile's mean and p99 (`profile_tails`); default: the p99 (`tail`) or mean table
    against QoS, every query served at that latency. `joint`: a JointModel of these models and demand to reuse (its cached duals);
    by default one is built. Unknown objectives are refused with the allowed ones.

    With `partition` and two or more models with demand, the best partitioned fleet (module docstring:
    each part planned for its model alone by its single-model estimate, the parts within the budget and
    `max_counts` together) is the plan instead when "max_throughput": its estimated λ is higher than
    that of every shared configuration considered; "min_cost": it covers the headroom and costs less
    than the cheapest shared configuration that does (or none does). When neither kind covers the
    headroom, the "max_throughput" choice between the two. The reason names the kind and both estimates.

    With `prune` (default) only the configurations that can decide the plan are estimated
    (`kairosd.planner.pruning`); the plan is the one of every configuration estimated (`prune=False`,
    the baseline of bench/plan_scale.py).
    """
    if objective not in PLAN_OBJECTIVES:
        raise ConfigError(f"unknown plan objective {objective!r}; allowed: {list(PLAN_OBJECTIVES)}")
    if not math.isfinite(headroom) or headroom <= 0:
        raise ConfigError(f"headroom must be a number > 0, got {headroom}")
    if not demand:
        raise ConfigError("plan_fleet needs the demand of at least one model")
    names = [d.model for d in demand]
    if len(set(names)) != len(names):
        raise ConfigError(f"each model may appear once in the demand, got {names}")
    no_qos = [m for m in names if m not in qos_s]
    if no_qos:
        raise ConfigError(f"no QoS target for models {no_qos}; known: {sorted(qos_s)}")
    types = tuple(types)
    prices = np.asarray(prices_usd_per_hour, dtype=float)
    if len(prices) != len(types):
        raise ConfigError(f"{len(prices)} prices for {len(types)} types")
    caps = (np.full(len(types), np.iinfo(np.int64).max, dtype=np.int64) if max_counts is None
            else np.asarray(max_counts, dtype=np.int64).copy())
    if caps.shape != (len(types),):
        raise ConfigError("max_counts must give one count per type")
    off = [k for k, t in enumerate(types) if t in set(unavailable)]
    caps[off] = 0
    if joint is None:
        given = {} if tails is None else tails
        models = [tailed_model(profiles, d.model, types, d.batch_pmf, qos_s[d.model], given.get(d.model), tail=tail)
                  for d in demand]
        joint = JointModel.build(models, demand)
    elif joint.types != types or len(joint.models) != len(demand):
        raise ConfigError("the joint model given does not match these types and models")
    total = float(sum(d.rate_qps for d in demand))
    rates = np.array([d.rate_qps for d in demand], dtype=float)
    zero = lambda reason: FleetPlan({t: 0 for t in types}, 0.0, 0.0, 0.0, objective, reason)

    configs = enumerate_configs(prices, budget_usd_per_hour, maximal_only=objective == "max_throughput",
                                max_counts=caps.tolist())
    if objective == "min_cost" and total <= 0 and not keep_warm:
        return FleetPlan({t: 0 for t in types}, 0.0, math.inf, math.inf, objective,
                         "min_cost: no observed demand and keep_warm is off: the empty fleet")
    if len(configs) == 0:
        why = f" ({', '.join(types[k] for k in off)} unavailable)" if off else ""
        return zero(f"{objective}: no configuration fits the budget {budget_usd_per_hour} $/h{why}")
    serve_all = joint.servable(configs).all(axis=1)
    pool = np.flatnonzero(serve_all) if serve_all.any() else np.arange(len(configs))
    cost_micro = configs @ _micro(prices)
    ub = joint.bound_qps(configs)
    # the estimate where it can decide the plan (`kairosd.planner.pruning`), NaN elsewhere
    estimate = lambda rows: joint.estimate_qps(configs[rows], ub[rows])
    score_of = lambda e, u: kairos_score(e, u, shrink)
    est = np.full(len(configs), np.nan)
    if not prune:
        est = estimate(np.arange(len(configs)))
    elif objective == "max_throughput":
        est[pool] = kairos_estimates(ub[pool], lambda rows: estimate(pool[rows]), score_of, within=tolerance)
    elif total > 0:  # min_cost with no demand needs no estimate
        est = cheapest_cover_estimates(cost_micro, ub, estimate, headroom * total, pool)
    space = (_part_space(joint, rates, prices, budget_usd_per_hour, caps, prune=prune)
             if partition and np.count_nonzero(rates > 0) >= 2 else None)

    def plan(row: int, reason: str) -> FleetPlan:
        if total > 0:
            multiple, bound = float(est[row] / total), float(ub[row] / total)
        else:
            multiple = bound = math.inf if serve_all[row] else 0.0
        counts = {t: int(c) for t, c in zip(types, configs[row], strict=True)}
        return FleetPlan(counts, float(config_cost(configs[row], prices)), multiple, bound, objective, reason)

    def partitioned(chosen: Mapping[int, int], reason: str) -> FleetPlan:
        assert space is not None
        unserved = "".join(f"; {names[m]} (no demand) has no part: no configuration serves it" for m in space.unserved)
        return _partition_plan(space, chosen, joint, names, rates, types, prices, objective,
                               f"{reason}: {_parts_label(space, chosen, names, types)}{unserved}")

    note = "" if serve_all.any() else "; no configuration can serve every model within QoS"
    if objective == "min_cost" and total <= 0:
        order = np.lexsort((pool, -ub[pool], cost_micro[pool]))
        row = int(pool[order[0]])
        return plan(row, f"min_cost: no observed demand; the cheapest fleet that serves every model: "
                         f"{_label(types, configs[row])}{note}")
    if objective == "min_cost":
        cover = pool[est[pool] >= headroom * total]
        part = _min_cost_partition(space, rates, headroom) if space is not None else None
        part_cost = 0
        why = "" if space is None else "; shared: no partition covers them within the budget"
        if space is not None and part is not None:
            part_cost = int(sum(space.cost_micro[r] for r in {**space.fixed, **part}.values()))
            why = f"; shared: the cheapest partition that covers them costs {part_cost / MICRO_USD:.4g} $/h"
        if len(cover):
            order = np.lexsort((cover, -ub[cover], -est[cover], cost_micro[cover]))
            row = int(cover[order[0]])
            if part is not None and part_cost < cost_micro[row]:
                return partitioned(part, f"min_cost: partitioned (each instance pinned to one model), the cheapest "
                                         f"fleet whose estimate serves {headroom:g}× the observed rates, "
                                         f"{part_cost / MICRO_USD:.4g} $/h against {cost_micro[row] / MICRO_USD:.4g} $/h shared")
            return plan(row, f"min_cost: the cheapest of {len(cover)} configurations whose estimate serves "
                             f"{headroom:g}× the observed rates: {_label(types, configs[row])}{note}{why}")
        if part is not None:
            return partitioned(part, f"min_cost: partitioned (each instance pinned to one model), the cheapest fleet "
                                     f"whose estimate serves {headroom:g}× the observed rates (no shared one does)")
        # none covers: the best the budget buys, among the maximal configurations
        maximal_rows = _maximal(configs[pool], prices, budget_usd_per_hour, caps)
        pool = pool[maximal_rows]
        est[pool] = kairos_estimates(ub[pool], lambda rows: estimate(pool[rows]), score_of, within=tolerance,
                                     known=est[pool])
        note = f"; no configuration within {budget_usd_per_hour} $/h serves {headroom:g}× the observed rates" + note
    row = int(pool[kairos_rank(est[pool], ub[pool], cost_micro[pool], tolerance=tolerance, shrink=shrink)[0]])
    why = ""
    if space is not None and total > 0:
        part = _max_partition(space, rates)
        shared_best = float(est[row] / total)
        if part is None:
            why = "; shared: no partition serves every model within the budget"
        else:
            part_lam = min(float(space.est_qps[m][r] / rates[m]) for m, r in part.items())
            if part_lam > shared_best:
                return partitioned(part, f"max_throughput: partitioned (each instance pinned to one model): estimate "
                                         f"λ {part_lam:.4g} above the chosen shared configuration's {shared_best:.4g}{note}")
            why = (f"; shared: the best partition's estimate λ {part_lam:.4g} is not above the chosen shared"
                   f" one's {shared_best:.4g}")
    if tolerance > 0:
        n_safe = int(queue_safe(kairos_score(est[pool], ub[pool], shrink), tolerance).sum())
        how = f"the highest joint bound among {n_safe} queue-safe configurations (score within {tolerance:.0%} of the best)"
    else:
        how = "the highest score (joint estimate, kairos_score)"
    return plan(row, f"max_throughput: {how}: {_label(types, configs[row])}{note}{why}")


def _maximal(configs: np.ndarray, prices: np.ndarray, budget_usd_per_hour: float, caps: np.ndarray) -> np.ndarray:
    """Rows to which no further instance fits (budget and caps), as `enumerate_configs(maximal_only=True)` keeps."""
    price = _micro(prices)
    remaining = int(_micro(budget_usd_per_hour)) - configs @ price
    fits = (remaining[:, None] >= price[None, :]) & (configs < caps[None, :])
    return ~fits.any(axis=1)

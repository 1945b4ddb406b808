"""The queue-aware estimate of a fleet's rate (M/G/c waiting tail on the pool that alone serves large
queries, with the Kairos dispatcher's preference for an idle base and its diversion of late base
queries to free auxiliaries), used to screen fleets for the one-shot `kairos` selector and to order
the Kairos+ walk."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy.special import gammaincc, gammaln

from kairosd.errors import ConfigError
from kairosd.planner.bounds import TAIL_GRID, BoundModel, upper_bound

# queue-aware estimate: share of queries allowed over QoS (a p99 target), bisection steps (to 2^-24 of
# the bound: far finer than the 10% within which `kairos` compares estimates)
QUEUE_EPS = 0.01
QUEUE_BISECT_STEPS = 24
# rounds of the base/auxiliary split when the base is the dispatcher's first choice for some queries
PREF_ROUNDS = 6
# the p99 target is judged over windows of this many queries (`planning_eps`)
P99_WINDOW_QUERIES = 5_000
# `erlang_b` takes the closed form while P(N ≤ c) is above this (far from underflow), else the recurrence
ERLANG_B_MIN_CDF = 1e-250


def planning_eps(eps: float = QUEUE_EPS, window_queries: int | None = P99_WINDOW_QUERIES) -> float:
    """The share of queries over QoS a plan allows: the p99 target's ε less one standard deviation of the
    share a window of `window_queries` queries shows, √(ε(1 − ε)/N) (`None`: ε itself).

    Why: the estimate values a fleet over an endless stream, but a p99 is read over a finite window, in
    which the misses are a count with that spread (ε = 1%, N = 5,000: 50 ± 7 misses). A fleet whose rate
    rests on a margin thinner than that — e.g. one whose idle dispatch already misses QoS on 0.78% of
    the queries — keeps its p99 over some windows and fails it over others at every rate, while a fleet
    with the same estimate and a wide margin does not. E.g. ε = 1%, N = 5,000 → 0.859%."""
    if window_queries is None:
        return eps
    if window_queries < 1:
        raise ConfigError(f"the p99 window must hold at least one query, got {window_queries}")
    return max(eps - float(np.sqrt(eps * (1.0 - eps) / window_queries)), 0.5 * eps)


def erlang_b(servers: np.ndarray, load: np.ndarray) -> np.ndarray:
    """P(all busy) seen by an arrival in M/M/c/c (c = `servers`, whole instances, a = `load` Erlangs),
    vectorised: the share of an offered stream that overflows a pool with no queue. B = P(N = c)/P(N ≤ c)
    for N Poisson of mean a (the pmf from log-gamma, the cdf the regularised incomplete gamma Q(c + 1, a));
    where that cdf underflows (a far above c), the recurrence B_0 = 1, B_k = a·B_{k−1}/(k + a·B_{k−1}).
    E.g. c = 1: B = a/(1 + a); c = 2, a = 1: B = 0.2."""
    c, a = np.broadcast_arrays(np.floor(np.asarray(servers, dtype=float)), np.asarray(load, dtype=float))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        log_pmf = np.where(c > 0, c * np.log(a) - a - gammaln(c + 1.0), -a)
        cdf = gammaincc(c + 1.0, a)
        b = np.where(cdf > ERLANG_B_MIN_CDF, np.exp(log_pmf) / cdf, 1.0)
    far = cdf <= ERLANG_B_MIN_CDF
    if far.any():
        cf, af = c[far], a[far]
        bf = np.ones(len(cf))
        for k in range(1, int(np.max(cf)) + 1):
            bf = np.where(k <= cf, af * bf / (k + af * bf), bf)
        b[far] = bf
    return b


def erlang_c(servers: np.ndarray, load: np.ndarray) -> np.ndarray:
    """P(wait > 0) in M/M/c with c = `servers` and offered load a = `load` Erlangs (1 when a ≥ c), vectorised.

    From Erlang B (`erlang_b`): C = B/(1 − ρ(1 − B)), ρ = a/c.
    E.g. c = 1: C = ρ; c = 2, a = 1: B = 0.2, C = 0.2/(1 − 0.5·0.8) = 1/3.
    """
    c = np.asarray(servers, dtype=float)
    a = np.asarray(load, dtype=float)
    b = erlang_b(c, a)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(c > 0, a / c, np.inf)
        out = b / (1.0 - rho * (1.0 - b))
    return np.where(rho < 1.0, out, 1.0)


def base_types(configs: np.ndarray, bm: BoundModel) -> np.ndarray:
    """Each configuration's base type: the present type that serves the largest share of the mix within
    QoS without waiting (`bm.within_qos`, from the measured miss probabilities; `coverage` when absent),
    ties by the highest rate. A type with a heavy tail on 0.5% of its queries, whose p99 table misses
    QoS everywhere, still serves 99.5% of the mix within QoS and can be the base."""
    configs = np.atleast_2d(np.asarray(configs, dtype=np.int64))
    n_types = len(bm.types)
    share = bm.within_qos if bm.within_qos is not None else bm.coverage
    order_key = np.lexsort((-bm.rate_qps, -np.round(share, 12)))
    rank_of = np.empty(n_types, dtype=np.int64)
    rank_of[order_key] = np.arange(n_types)
    return order_key[np.minimum(np.where(configs > 0, rank_of[None, :], n_types).min(axis=1), n_types - 1)]


def idle_miss(configs: np.ndarray, bm: BoundModel) -> np.ndarray:
    """Each configuration's share of queries that miss QoS when every instance is idle: batch b goes to
    the present type the dispatcher ranks cheapest on an idle instance (`bm.batch_idle_cost`) and
    misses there with its no-wait probability (`bm.batch_miss`); Σ_b p_b·miss_choice(b)(b). Zeros when
    `bm` does not model the dispatcher's costs. Vectorised over the distinct sets of present types.

    A fleet whose idle share exceeds the p99 target's ε misses it at low rates whatever its capacity:
    e.g. a fleet whose cheapest idle column for the large batches is a type that takes them on its
    mean latency but misses QoS on 40% of them."""
    configs = np.atleast_2d(np.asarray(configs, dtype=np.int64))
    out = np.zeros(len(configs))
    cost, miss, p = bm.batch_idle_cost, bm.batch_miss, bm.batch_p
    if cost is None or miss is None or p is None:
        return out
    present = configs > 0
    masks, inverse = np.unique(present, axis=0, return_inverse=True)
    cols = np.arange(cost.shape[1])
    for m, row in enumerate(masks):
        types = np.flatnonzero(row)
        if len(types) == 0:
            out[inverse.ravel() == m] = 1.0
            continue
        choice = types[np.argmin(cost[types], axis=0)]
        out[inverse.ravel() == m] = float(p @ miss[choice, cols])
    return out


def queue_estimate(configs: np.ndarray, bm: BoundModel, *, eps: float = QUEUE_EPS, steps: int = QUEUE_BISECT_STEPS,
                   diversion: bool = True, idle: np.ndarray | None = None, other_bases: bool = True) -> np.ndarray:
    """A queue-aware estimate of each configuration's QPS at p99 ≤ QoS (≤ `upper_bound`), vectorised.

    Not a bound (never prune with it): a ranking signal for one-shot selection. The base is the present
    type serving the largest share of the mix within QoS (`base_types`), or, where the estimate is higher
    with it, any other present type that alone serves all but `eps` of the mix within QoS without
    waiting (`sufficient_types`: the estimate is the best of those routings; `other_bases=False`: the
    `base_types` one alone). Auxiliaries take the queries offered to them among those they are eligible
    for (`bm.band_eligible`: their p99 within QoS, batch by batch, as the dispatcher tests it), a band
    that several of them can take split among them in proportion to their capacity (`_capacity_split`),
    and the base the rest. The split and the waits follow the Kairos dispatcher, each part only when
    `bm` carries what it needs:
      * a band on which no present type meets QoS on its p99 is not the base's alone: the dispatcher
        sends it to the present type it ranks cheapest on an idle instance (`bm.band_idle_cost`, e.g. a
        type whose mean is within QoS over a base whose mean is not), and when that is an auxiliary, the
        band is taken as that auxiliary's (`_routing_groups`).
      * preference (`bm.band_pref`, from the dispatcher's idle edge costs): on the small queries for
        which an idle base costs less than an idle auxiliary, the base takes them whenever one of its
        instances is free, and the auxiliary gets them only while every base instance is busy
        (probability C(c, a), which depends on the split: iterated, damped, `PREF_ROUNDS` times from
        "auxiliaries take all").
      * overflow: of what is offered to auxiliary k (load a_k = offered/Q_k on n_k instances), the
        share that finds every instance of k busy (Erlang B) goes to the base when a base instance
        is free, unless the dispatcher holds it for k (`bm.band_hold`: the wait at which a busy k
        stops being cheaper than an idle base, C_k·(T + L_k) ≤ C_b·L_b, at most k's slack): then only
        what would wait longer than the hold, B·exp(−(n_k − a_k)·Q_k·hold). The rest stays with k, up
        to its capacity n_k·Q_k. What k leaves loads the base, but misses where the dispatcher sends
        it: a free instance of a type it ranks cheaper than the base on the band (`bm.band_idle_cost`)
        when there is one — on a band whose p99 the base misses, a cheap type that takes it on its mean
        and misses far more often — else the base (`_overflow_misses`).
      * priority: bands no present auxiliary can take ("must" queries) wait for the base alone; the
        base takes the other bands' queries only when free, so a must query waits when every base
        instance is busy (Erlang C of the whole base load) and its wait drains at the capacity the
        must load leaves (the decay θ below from the must load only).
      * deadline order (a fleet of the base type alone, with `bm.band_lead`): the matching gives a free
        instance to the waiting query that its p99 test would make late first (the others' later slots
        stay feasible), i.e. it serves the queue by deadline, arrival + lead (QoS less the feasibility
        latency). Deadline order shifts each query's wait by its lead less the mean lead d̄ of the
        queries served, so all of them miss about as often as a query with the mean lead would under
        first come, first served: P(miss) = P(W > d̄ + L99(b) − S) instead of P(W > QoS − S)
        (`bm.band_tail_edf`, times exp(−θ·d̄)), on the bands whose p99 the base meets; a query whose
        p99 misses QoS even without waiting is left for last (the matching's penalty ranks it after
        every feasible one) and keeps the first-come tail. With auxiliaries the first-come order is
        kept: a must query that its lead no longer covers is then diverted to a free auxiliary rather
        than served ahead (the diversion below), as the simulator shows it.
      * diversion (`diversion=True`): a must query whose wait would exceed its slack is sent to an
        auxiliary if one is free: to the type the dispatcher ranks cheapest on an idle instance for its
        band (`bm.band_idle_cost`, the band's mean of `batch_idle_cost`), the next one while every
        instance of that type is busy (Erlang C of its load y_k/Q_k), and so on (without the costs:
        the type of fewest misses). It then misses QoS with that type's no-wait miss probability,
        batch by batch (`bm.band_tail_div`: the queries that wait past their slack are the batches of
        least slack, the largest, which the other type misses most often; without it, the type's
        miss share of the band), and with probability 1 when every instance of every other type is
        busy.
      * shared queue: every other query (the auxiliaries', and the base's share of bands an auxiliary
        can take) waits in the queue of all present instances eligible on its band — c = n_b + Σ n_k,
        load = the base's plus those auxiliaries' — and misses when that wait exceeds the base's slack
        (a query late for its auxiliary goes to a free base), unless it is diverted as a must query is
        (with `diversion`): to a free instance of a type outside the pool, the one the dispatcher ranks
        cheapest on an idle instance for its band first, missing there with that type's no-wait miss
        share of the band (e.g. a cheap type whose p99 misses QoS on the band and whose mean meets it, so
        that it misses a few percent of those queries). With a queue the matching routes the
        waiting queries as the fluid bound routes the mix, so a pool of every present instance drains
        at `upper_bound` (less the must load) where that beats the split's rates, except for the
        queries the dispatcher holds for a busy auxiliary (`_matched_pool`).
    Rule: λ is admissible when the base pool is stable and the queries that miss QoS are ≤ ε·λ
    (ε = 1%, the p99 target); a configuration whose idle fleet already misses more than ε (`idle_miss`,
    or `idle` when the caller has it) gets 0. Misses: those that miss without waiting — on the base
    Σ_b λ_b(b)·miss_b(b), on auxiliary k the same over the queries it takes, band by band (from the
    measured samples, or 0/1 from the feasibility table) — and queries whose wait exceeds their slack,
    with the M/G/c waiting tail (Erlang C, Allen–Cunneen scaled)
        P(W > t) ≈ C(c, a)·exp(−θ·t),   θ = (Σ_i μ_i − λ)·2/(1 + C_s²),
    λ the pool's arrival rate, Σ_i μ_i the rate at which its instances drain the queue while all are
    busy (each instance's service rate on the queries it serves: c·μ for c base instances with
    1/μ = E[S] their mean service time; in a shared pool a slow auxiliary adds its own rate, not the
    pool's mean; a pool of every present instance, the fluid rate of `_matched_pool`), a the pool's load in
    Erlangs,
    C_s² the squared coefficient of variation of that service time (across batches, and within a batch
    when `bm` has the samples' `svc_cv2`; in a shared pool, over every query its instances serve, each on
    the type that serves it), t = QoS − L_b(b) per batch (the feasibility latency where it
    meets QoS, else the mean), counted on the queries that do not miss anyway. With the 0/1 table, a
    base covering 99.1% of the mix leaves 0.1% for waits. The estimate is the largest such λ in
    [0, UB] (`upper_bound`), by bisection (vectorised over configurations; the exp-sums are tabulated
    per band of equal eligibility on a θ grid at `BoundModel.build`, so one step is
    O(configurations × bands × instances)).

    Worked example (unit tests): one base type, every query batch 100, L = 3 ms (deterministic:
    C_s² = 0), QoS 5 ms → slack t = 2 ms, 1 instance (C = ρ = λ·3 ms, θ = 2·(333.3 − λ)/s):
    ρ·exp(−2·(333.3 − λ)·0.002) ≤ 0.01 holds up to λ ≈ 12.0/s (ρ = 0.036, exp(−1.285) = 0.277),
    against the fluid bound's 333.3/s: with 2 ms of slack on a 3 ms service, almost any wait is a
    violation. QoS 10 ms (t = 7 ms): λ ≈ 94/s; QoS 20 ms (t = 17 ms): λ ≈ 211/s; 2 instances at QoS
    5 ms: λ ≈ 147/s (Erlang C is far below ρ, and θ counts both servers).
    """
    configs = np.atleast_2d(np.asarray(configs, dtype=np.int64))
    ub = upper_bound(configs, bm)
    base = base_types(configs, bm)
    est = _estimate_by_base(configs, bm, base, ub, eps, steps, diversion)
    for t in sufficient_types(bm, eps) if other_bases else ():
        rows = np.flatnonzero((configs[:, t] > 0) & (base != t))
        if len(rows):
            est[rows] = _estimate_by_base(configs[rows], bm, np.full(len(rows), t), ub[rows], eps, steps, diversion,
                                          floor=est[rows])
    if idle is None:
        idle = idle_miss(configs, bm)
    return np.where(idle > eps, 0.0, est)


def sufficient_types(bm: BoundModel, eps: float) -> np.ndarray:
    """The types that could serve the whole mix alone within the share `eps` of misses without waiting
    (`bm.within_qos`, else `coverage`, at least 1 − eps): each one present is a base `queue_estimate`
    tries beside the one `base_types` picks.

    Why: the base is the estimate's device, not the dispatcher's; the matching serves the waiting queries
    on whichever free instance costs it least, so a fleet of two such types is served at least as well as
    the better of the two routings that take either one as the base. A fleet's choice of base by the
    largest share within QoS turns on differences far below ε (e.g. one type whose rare far tail leaves
    0.03% of the mix over QoS), and taking the smaller type as the base makes five instances of the other
    its auxiliaries. A type that misses more than ε alone is left out: as the base it leans on routing the
    estimate models only roughly, and it overrates such fleets."""
    share = bm.within_qos if bm.within_qos is not None else bm.coverage
    return np.flatnonzero(np.asarray(share) >= 1.0 - eps)


def _estimate_by_base(configs: np.ndarray, bm: BoundModel, base: np.ndarray, ub: np.ndarray, eps: float, steps: int,
                      diversion: bool, floor: np.ndarray | None = None) -> np.ndarray:
    """`queue_estimate` before the idle test, each configuration taken with the base type `base[i]`; with
    `floor`, the larger of that and `floor[i]` (`_estimate_group`)."""
    est = np.zeros(len(configs)) if floor is None else np.array(floor, dtype=float)
    band_small_all = _band_tables(bm)[5]
    for j in np.unique(base):
        rows_j = np.flatnonzero((base == j) & (ub > 0))
        if len(rows_j) == 0:
            continue
        pref_j = bm.band_pref[j] if bm.band_pref is not None else None
        for group, band_small, pref in _routing_groups(configs[rows_j], int(j), band_small_all, pref_j, bm.band_idle_cost):
            rows = rows_j[group]
            est[rows] = _estimate_group(configs[rows], bm, int(j), ub[rows], band_small, pref, eps, steps, diversion,
                                        floor=None if floor is None else est[rows])
    return est


def _band_tables(bm: BoundModel) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`bm`'s band tables the estimate needs: (band_p, band_m1, band_m2, band_tail, band_miss, eligibility
    [type, band]: `band_eligible`, else `band_small`); refused when `bm` was not made by `BoundModel.build`."""
    eligible = bm.band_eligible if bm.band_eligible is not None else bm.band_small
    if (bm.band_p is None or bm.band_m1 is None or bm.band_m2 is None or bm.band_tail is None or bm.band_miss is None
            or eligible is None):
        raise ConfigError("queue_estimate needs a BoundModel made by BoundModel.build (band tables)")
    return bm.band_p, bm.band_m1, bm.band_m2, bm.band_tail, bm.band_miss, eligible


def _routing_groups(configs: np.ndarray, j: int, eligible: np.ndarray, pref: np.ndarray | None,
                    idle_cost: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """The configurations of base type `j` in groups (row indices into `configs`), each with the
    eligibility and preference tables `queue_estimate` routes its queries by. A band on which no present
    type meets QoS on its p99 is sent by the dispatcher to the present type it ranks cheapest on an
    idle instance (`idle_cost`, its tiers: e.g. a type whose mean is within QoS over one whose mean is
    not); when that is an auxiliary k, the band counts as k's (`eligible[k, g]` set, `pref[k, g]` 0: an
    idle base does not take it first), and when it is the base, it stays a band only the base serves.
    Without the costs (`idle_cost` None): one group of every row, with the tables as given."""
    if idle_cost is None:
        return [(np.arange(len(configs)), eligible, pref)]
    present = configs > 0
    nobody = (present.astype(float) @ (eligible > 0).astype(float)) == 0  # [row, band]
    choice = np.where(present[:, :, None], idle_cost[None, :, :], np.inf).argmin(axis=1)  # [row, band]
    owner = np.where(nobody & (choice != j), choice, -1)
    keys, inverse = np.unique(owner, axis=0, return_inverse=True)
    groups = []
    for i, key in enumerate(keys):
        e = np.array(eligible, dtype=float)
        p = None if pref is None else np.array(pref, dtype=float)
        for g in np.flatnonzero(key >= 0):
            e[key[g], g] = 1.0
            if p is not None:
                p[key[g], g] = 0.0
        groups.append((np.flatnonzero(inverse.ravel() == i), e, p))
    return groups


def _estimate_group(configs: np.ndarray, bm: BoundModel, j: int, ub: np.ndarray, band_small: np.ndarray,
                    pref: np.ndarray | None, eps: float, steps: int, diversion: bool,
                    floor: np.ndarray | None = None) -> np.ndarray:
    """`queue_estimate` for configurations of base type `j` that route their queries by the same
    eligibility `band_small` [type, band] and preference `pref` [type, band] (`_routing_groups`).

    With `floor` (an estimate the caller already has for each configuration, e.g. with another base),
    the larger of the two: a configuration whose test fails at its floor keeps the floor after that one
    test, and the others are bisected on [floor, ub] alone, so that a second base costs one test where it
    does not raise the estimate. Where the test is monotone in the rate, the same as the larger of the
    two bisections from 0; where it is not, the highest admitted rate the halving finds above the floor."""
    if floor is not None:
        above = _group_test(configs, bm, j, ub, band_small, pref, eps, diversion)(floor)
        out = np.array(floor, dtype=float)
        rows = np.flatnonzero(above)
        if len(rows):
            test = _group_test(configs[rows], bm, j, ub[rows], band_small, pref, eps, diversion)
            out[rows] = largest_admitted(test, floor[rows], ub[rows].copy(), steps)
        return out
    return largest_admitted(_group_test(configs, bm, j, ub, band_small, pref, eps, diversion),
                            np.zeros(len(configs)), ub.copy(), steps)


def largest_admitted(test: Callable[[np.ndarray], np.ndarray], lo: np.ndarray, hi: np.ndarray,
                     steps: int) -> np.ndarray:
    """The largest rate in [lo, hi] that `test` admits, per configuration, by `steps` halvings (`lo`
    taken as admitted)."""
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        ok = test(mid)
        lo = np.where(ok, mid, lo)
        hi = np.where(ok, hi, mid)
    return lo


def _group_test(configs: np.ndarray, bm: BoundModel, j: int, ub: np.ndarray, band_small: np.ndarray,
                pref: np.ndarray | None, eps: float, diversion: bool) -> Callable[[np.ndarray], np.ndarray]:
    """`_admissible` for these configurations of base type `j` and routing tables, as a function of the
    rate alone (one rate per configuration)."""
    band_p, band_m1, band_m2, band_tail, band_miss, _ = _band_tables(bm)
    n_types = len(bm.types)
    qos = bm.qos_s
    # what each type may take (the bands it is eligible on): its share of the mix s_k and its rate Q_k on
    # those queries (one instance)
    share = band_small @ band_p
    with np.errstate(divide="ignore", invalid="ignore"):
        small_rate = np.where(share > 0, share / (band_small * band_m1).sum(axis=1), 0.0)
    n = configs.astype(float)
    n_b = n[:, j]
    aux = [k for k in range(n_types) if k != j and share[k] > 0 and small_rate[k] > 0]
    aux_n = {k: n[:, k] for k in aux}
    p_g, m1, m2, tail = band_p, band_m1[j], band_m2[j], band_tail[j]
    with np.errstate(divide="ignore", invalid="ignore"):
        band_miss_share = np.where(band_p > 0, band_miss / band_p, 1.0)  # [type, band]
    divert = {k: (n[:, k], band_miss_share[k]) for k in range(n_types) if k != j and diversion}
    alone = n.sum(axis=1) == n_b  # no instance of another type: the base's queue in deadline order

    def test(lam: np.ndarray) -> np.ndarray:
        return _admissible(lam, j=j, n_b=n_b, aux=aux, aux_n=aux_n, band_small=band_small,
                           p_g=p_g, m1=m1, m2=m2, tail=tail, miss_all=band_miss,
                           small_rate=small_rate, qos=qos, eps=eps, divert=divert, pref=pref,
                           divert_cost=bm.band_idle_cost, hold=bm.band_hold[j] if bm.band_hold is not None else None,
                           alone=alone, lead=bm.band_lead[j] if bm.band_lead is not None else None,
                           tail_edf=bm.band_tail_edf[j] if bm.band_tail_edf is not None else None,
                           tail_div=bm.band_tail_div[j] if bm.band_tail_div is not None else None,
                           m1_all=band_m1, m2_all=band_m2, fluid=ub)
    return test


def _admissible(
    lam: np.ndarray, *, j: int, n_b: np.ndarray, aux: Sequence[int], aux_n: Mapping[int, np.ndarray],
    band_small: np.ndarray, p_g: np.ndarray, m1: np.ndarray, m2: np.ndarray, tail: np.ndarray,
    miss_all: np.ndarray, small_rate: np.ndarray, qos: float, eps: float, m1_all: np.ndarray, m2_all: np.ndarray,
    divert: Mapping[int, tuple[np.ndarray, np.ndarray]] | None = None,
    pref: np.ndarray | None = None, hold: np.ndarray | None = None, rounds: int = PREF_ROUNDS,
    divert_cost: np.ndarray | None = None, alone: np.ndarray | None = None, lead: np.ndarray | None = None,
    tail_edf: np.ndarray | None = None, tail_div: np.ndarray | None = None, fluid: np.ndarray | None = None,
) -> np.ndarray:
    """`queue_estimate`'s test for the configurations whose base type is `j`: whether each rate in `lam`
    keeps the base below saturation and the misses within eps·lam (names as in `queue_estimate`;
    `miss_all[k, g]` = Σ_b∈g p_b·miss_k(b) for every type k (`bm.band_miss`; what an auxiliary misses
    without waiting is counted band by band on the queries it takes, and `miss_all[j]` is the base's),
    `aux_n[k]` the instances of auxiliary k per configuration, `hold[k, g]` how long the dispatcher
    lets a band-g query wait for a busy k rather than take an idle base; `alone` marks the
    configurations of the base type only, whose queue is served in deadline order with the leads
    `lead[g]` and tail weights `tail_edf[g]`, `bm.band_lead` and `bm.band_tail_edf` of type j;
    `tail_div[k, g]` the tail weights of type j's band-g queries times k's miss, `bm.band_tail_div` of j;
    `m1_all`, `m2_all` [type, band] every type's `band_m1`, `band_m2`: a shared pool's service variability
    over the queries each of its types serves)."""
    # per-band rate multiplier r_g: the base serves p_g·r_g queries/s of band g. An auxiliary takes
    # the small queries of a band on which an idle base costs the dispatcher more (1 − pref), and the
    # others only while every base instance is busy; that probability (Erlang C of the base's load)
    # depends on what the auxiliaries leave, so the split is iterated from "auxiliaries take all"
    miss_g = miss_all[j]
    busy_b = np.ones(len(lam))
    split = _capacity_split(aux, aux_n, band_small, small_rate, len(lam))
    for _ in range(max(1, rounds) if pref is not None else 1):
        r = np.repeat(lam[:, None], len(p_g), axis=1)
        aux_miss = np.zeros(len(lam))
        aux_rate: dict[int, np.ndarray] = {}  # y_k, queries/s
        aux_load: dict[int, np.ndarray] = {}  # y_k/Q_k, Erlangs
        aux_mult: dict[int, np.ndarray] = {}  # per-band rate multipliers, like r
        aux_over: dict[int, np.ndarray] = {}  # what k is offered and does not take, queries/s per band
        for k in aux:
            feed = split[k] * (1.0 if pref is None else 1.0 - pref[k][None, :] * (1.0 - busy_b[:, None]))
            s_k = feed @ p_g  # the share of the mix the auxiliary is offered
            offered = s_k * lam
            a_k = offered / small_rate[k]
            # what finds every instance of k busy goes to a free base (Erlang B, times the chance that
            # a base instance is free), unless the dispatcher holds it for k: then only what would wait
            # longer than the hold; the rest waits for k, up to k's capacity
            over = erlang_b(aux_n[k], a_k) * (1.0 - busy_b)
            if hold is not None:
                with np.errstate(divide="ignore", invalid="ignore"):
                    h_k = np.where(s_k > 0, (feed * hold[k][None, :]) @ p_g / s_k, 0.0)
                over = over * np.exp(-np.maximum(aux_n[k] - a_k, 0.0) * small_rate[k] * h_k)
            with np.errstate(divide="ignore", invalid="ignore"):
                y = np.where(s_k > 0, np.minimum(offered * (1.0 - over), aux_n[k] * small_rate[k]), 0.0)
                taken = np.where(s_k > 0, y / s_k, 0.0)
            # only a present auxiliary turns queries away (with none, they are the base's to begin with)
            aux_over[k] = np.where(aux_n[k] > 0, lam - taken, 0.0)[:, None] * feed * p_g[None, :]
            mult = taken[:, None] * feed
            aux_miss += mult @ miss_all[k]  # band by band, on what k takes
            r -= mult
            aux_rate[k], aux_load[k], aux_mult[k] = y, y / small_rate[k], mult
        r = np.maximum(r, 0.0)
        work = r @ m1  # offered load a (Erlangs)
        busy_b = 0.5 * (busy_b + erlang_c(n_b, work))  # damped: the undamped split can alternate
    lam_b = r @ p_g
    with np.errstate(divide="ignore", invalid="ignore"):
        base_rate = np.where(work > 0, lam_b / work, p_g.sum() / m1.sum())  # one base instance's rate on its share
        cs2 = np.where(work > 0, (r @ m2) * lam_b / work**2 - 1.0, 0.0)
    # bands no present auxiliary can take ("must") wait for the base alone. The base takes the others
    # only when free (the matching gives a free base to a query that only it can serve first), so the
    # must queries see a priority queue: every base instance busy (Erlang C of the whole base load),
    # then a wait that drains at the capacity the must load leaves
    must = np.ones_like(r, dtype=bool)
    for k in aux:
        must &= ~((aux_n[k][:, None] > 0) & (band_small[k][None, :] > 0))
    r_must = np.where(must, r, 0.0)
    x_must = _priority_x(n_b, r_must @ m1, work, r @ m2, qos)
    tail_must = _tail_weights(x_must, tail)
    if alone is not None and lead is not None and tail_edf is not None and np.any(alone):
        # the queries the base's p99 test admits are served by deadline, their weights counted from the
        # mean lead on; the others (their p99 over QoS even without waiting) are left for last, as the
        # matching's penalty ranks them
        timely = band_small[j] > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            mean_lead = np.where(r_must @ (p_g * timely) > 0, (r_must @ lead) / (r_must @ (p_g * timely)), 0.0)
        by_deadline = np.exp(-x_must * mean_lead)[:, None] * _tail_weights(x_must, tail_edf)
        tail_must = np.where(alone[:, None] & timely[None, :], by_deadline, tail_must)
    # a must query that would wait past its slack goes to an auxiliary instead when one is free
    # there: it then misses QoS with that type's no-wait miss share of its band (1 when none is free)
    # (the dispatcher's choice among the free ones: the type of least idle cost on the band,
    # `divert_cost`, the next one when every instance of it is busy; without costs, the type of
    # fewest misses)
    late = np.ones_like(r)
    wait_b = erlang_c(n_b, work)  # every base instance busy
    if divert and divert_cost is not None:
        busy = {k: np.where(n_k > 0, erlang_c(n_k, aux_load.get(k, np.zeros(len(lam)))), 1.0)
                for k, (n_k, _) in divert.items()}
        for g in range(r.shape[1]):
            order = sorted(divert, key=lambda k: float(divert_cost[k, g]))
            if tail_div is None:
                missed, none_free = _first_free(order, busy, {k: divert[k][1][g] for k in order}, len(lam))
                late[:, g] = missed + none_free
                continue
            # batch by batch: the late queries are the batches of least slack, which the type they are
            # diverted to misses most often (`bm.band_tail_div`); `late` as a share of the tail weight
            late_w, none_free = _first_free(order, busy, {k: np.interp(x_must, TAIL_GRID, tail_div[k, g]) for k in order},
                                            len(lam))
            base_w = tail_must[:, g]
            with np.errstate(divide="ignore", invalid="ignore"):
                late[:, g] = np.where(base_w > 0, late_w / base_w + none_free, 1.0)
    else:
        for k, (n_k, share_k) in (divert or {}).items():
            busy_k = erlang_c(n_k, aux_load.get(k, np.zeros(len(lam))))
            late = np.minimum(late, np.where(n_k[:, None] > 0,
                                             share_k[None, :] + (1.0 - share_k[None, :]) * busy_k[:, None], 1.0))
    violating = wait_b * (r_must * tail_must * late).sum(axis=1) + r @ miss_g + aux_miss
    if divert and divert_cost is not None:
        violating = violating + _overflow_misses(aux_over, j=j, busy={**busy, j: wait_b},
                                                 share={k: d[1] for k, d in divert.items()},
                                                 divert_cost=divert_cost, p_g=p_g, miss_g=miss_g)
    # the other queries (the auxiliaries', and the base's share of bands an auxiliary can take) wait in
    # the queue shared by every present instance eligible on their band, and miss when that wait
    # exceeds the base's slack (a query late for its auxiliary goes to a free base)
    shared = np.where(must, 0.0, r) + sum(aux_mult.values(), np.zeros_like(r))
    pools: dict[tuple[int, ...], list[int]] = {}  # bands by the auxiliaries eligible on them
    for g in np.flatnonzero(np.any(shared > 0, axis=0)):
        pools.setdefault(tuple(k for k in aux if band_small[k][g] > 0), []).append(int(g))
    n_all = n_b + sum((aux_n[k] for k in aux), np.zeros(len(lam)))  # every present instance
    fluid_left = fluid - r_must @ p_g if fluid is not None else None  # what the must queries leave of it
    for eligible, bands in pools.items():
        c_p = n_b + sum((aux_n[k] for k in eligible), np.zeros(len(lam)))
        a_p = work + sum((aux_load[k] for k in eligible), np.zeros(len(lam)))
        rate_p = lam_b + sum((aux_rate[k] for k in eligible), np.zeros(len(lam)))
        drain_p = n_b * base_rate + sum((aux_n[k] * small_rate[k] for k in eligible), np.zeros(len(lam)))
        # the pool's service variability: every query its instances serve, each on its own type (a
        # heavy-tailed or slow auxiliary lengthens the pool's waits as its services do)
        first = work + sum((aux_mult[k] @ m1_all[k] for k in eligible), np.zeros(len(lam)))
        second = r @ m2 + sum((aux_mult[k] @ m2_all[k] for k in eligible), np.zeros(len(lam)))
        with np.errstate(divide="ignore", invalid="ignore"):
            cs2_p = np.where(first > 0, second * rate_p / first**2 - 1.0, cs2)
        if fluid_left is not None:
            drain_p, a_p = _matched_pool(c_p >= n_all, c_p, a_p, rate_p, drain_p, cs2_p, qos, fluid_left,
                                         [(aux_mult[k][:, bands], hold[k][bands]) for k in eligible]
                                         if hold is not None else [])
        x = _decay_x(c_p, a_p, rate_p, cs2_p, qos, capacity=drain_p)
        busy_p = erlang_c(c_p, a_p)
        for g in bands:
            wait_g = np.where(a_p < c_p, busy_p * np.interp(x, TAIL_GRID, tail[g]), p_g[g])
            if divert and divert_cost is not None:
                # a query that would wait past its slack for the pool goes to a free instance of another
                # type, as a must query does: the one the dispatcher ranks cheapest on an idle instance
                # for its band, the next one while every instance of that type is busy; it misses there
                # with that type's no-wait miss share of the band, and for certain when none is free
                order = sorted((k for k in divert if k not in eligible), key=lambda k: float(divert_cost[k, g]))
                missed, none_free = _first_free(order, busy, {k: divert[k][1][g] for k in order}, len(lam))
                wait_g = wait_g * (missed + none_free)
            violating = violating + shared[:, g] * wait_g
    return (work < n_b) & (violating <= eps * lam)


def _matched_pool(every: np.ndarray, servers: np.ndarray, load: np.ndarray, rate: np.ndarray, drain: np.ndarray,
                  cs2: np.ndarray, qos: float, fluid: np.ndarray,
                  held: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """A shared pool's drain rate and load (Erlangs) while a queue waits, per configuration.

    With a queue, the matching gives each instance that frees the waiting query it serves cheapest,
    not the query the split would have sent it; the queue is then routed as the fluid bound routes the
    mix, so a pool of every present instance (`every`) drains it at `fluid` (`upper_bound` less the
    must queries the base serves first) where that is above the split's summed rates `drain`, and
    holds λ·c/fluid Erlangs rather than the split's `load`. A query the dispatcher holds for a busy
    auxiliary (`held`: per auxiliary, its rate per band in the pool and the hold per band) waits for
    that type and joins the matched queue only once its hold is over: with probability exp(−θ·hold)
    under the matched queue's waiting tail (θ from `_decay_x`). The pool's drain and load are the
    matched ones weighted by the share w of its auxiliaries' queries so released (w = 1 when nothing is
    held), and the split's weighted by 1 − w. E.g. 2 instances of 100/s each on the split, fluid
    250/s, nothing held, λ 150/s: drain 250/s and load 1.2 Erlangs instead of 200/s and 1.5."""
    drain_f = np.where(every, np.maximum(drain, fluid), drain)
    with np.errstate(divide="ignore", invalid="ignore"):
        load_f = np.where(every & (drain_f > 0), np.minimum(load, servers * rate / drain_f), load)
    held_rate = sum((h_rate.sum(axis=1) for h_rate, _ in held), np.zeros(len(rate)))
    if not np.any(held_rate > 0):
        return drain_f, load_f
    theta = (_decay_x(servers, load_f, rate, cs2, qos, capacity=drain_f) / qos)[:, None]
    released = sum(((h_rate * np.exp(-theta * hold[None, :])).sum(axis=1) for h_rate, hold in held), np.zeros(len(rate)))
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(held_rate > 0, released / held_rate, 1.0)
    return w * drain_f + (1.0 - w) * drain, w * load_f + (1.0 - w) * load


def _capacity_split(aux: Sequence[int], aux_n: Mapping[int, np.ndarray], band_small: np.ndarray,
                    small_rate: np.ndarray, n: int) -> dict[int, np.ndarray]:
    """Each auxiliary's share of every band it is eligible on [configuration, band]: a band that several
    present auxiliaries can take is split among them in proportion to their capacity n_k·Q_k (the
    instances that free first take the next query, and a type's instances free at its rate); a band
    with one eligible auxiliary is offered to it whole. E.g. 1 instance at 20/s and 2 at 15/s on the
    same band: 0.4 and 0.6 of it."""
    cap = {k: (aux_n[k] * small_rate[k])[:, None] * (band_small[k][None, :] > 0) for k in aux}
    total = sum(cap.values(), np.zeros((n, band_small.shape[1])))
    with np.errstate(divide="ignore", invalid="ignore"):
        return {k: band_small[k][None, :] * np.where(total > 0, cap[k] / total, 1.0) for k in aux}


def _first_free(order: Sequence[int], busy: Mapping[int, np.ndarray], miss: Mapping[int, float | np.ndarray],
                n: int) -> tuple[np.ndarray, np.ndarray]:
    """A query sent to the first type of `order` with a free instance (`busy[t]`: the probability that
    every instance of t is busy, per configuration) and missing QoS there with `miss[t]` (a share, or
    one per configuration): its expected miss share over those types, and the probability that every
    instance of every one is busy."""
    missed = np.zeros(n)
    none_free = np.ones(n)
    for t in order:
        missed += none_free * (1.0 - busy[t]) * miss[t]
        none_free = none_free * busy[t]
    return missed, none_free


def _overflow_misses(
    aux_over: Mapping[int, np.ndarray], *, j: int, busy: Mapping[int, np.ndarray], share: Mapping[int, np.ndarray],
    divert_cost: np.ndarray, p_g: np.ndarray, miss_g: np.ndarray,
) -> np.ndarray:
    """The misses `_admissible` adds for the queries an auxiliary k is offered but does not take, beyond
    what the base's no-wait miss share counts for them: the dispatcher sends such a query to the free
    instance it ranks cheapest on the band (`divert_cost`: the Kairos tiers, then C·L), among the present
    types other than k, the next type while every instance of one is busy (Erlang C of its load; the
    base's whole load for the base), and it misses there with that type's no-wait miss share of the
    band; with every instance busy, it waits for the base (its share). Where the base meets QoS on the
    band's p99 it is the dispatcher's choice or one as good; where it does not, the cheapest column of
    the same tier can be a type that misses QoS far more often (e.g. a slow, cheap CPU type that takes a
    band on its mean latency while a GPU type is only a few ms over on its p99). `busy[t]`: every
    instance of type t busy (the base j included); `share[t][g]`: type t's no-wait miss share of band
    g (the other types). Per configuration."""
    n = len(busy[j])
    out = np.zeros(n)
    if not aux_over:
        return out
    with np.errstate(divide="ignore", invalid="ignore"):
        base_share = np.where(p_g > 0, miss_g / p_g, 0.0)
    for k, over in aux_over.items():
        for g in np.flatnonzero(np.any(over > 0, axis=0)):
            order = sorted((t for t in share if t != k and divert_cost[t, g] < divert_cost[j, g]),
                           key=lambda t: float(divert_cost[t, g]))
            expected, none_free = _first_free(order, busy, {t: share[t][g] for t in order}, n)
            expected += none_free * base_share[g]
            out += over[:, g] * (expected - base_share[g])
    return out


def _priority_x(servers: np.ndarray, load_high: np.ndarray, load_all: np.ndarray, second_all: np.ndarray,
                qos: float) -> np.ndarray:
    """θ·QoS on `TAIL_GRID` for the high-priority class of a non-preemptive priority queue on `servers`
    instances, per configuration. A query that finds every instance busy waits for the first one to
    finish (the residual of the jobs in service, of every class: E[R] = E[S²]/(2·E[S]·c) over all the
    jobs the pool serves), then for the high-priority work queued ahead of it, which stretches the wait
    by 1/(1 − a_high/c) (Cobham's formula); the conditional wait is taken exponential with that
    mean: θ = (c − a_high)·2·E[S]/E[S²]. `load_*` in Erlangs (Σ rate·E[S]), `second_all` = Σ rate·E[S²]."""
    with np.errstate(divide="ignore", invalid="ignore"):
        theta = np.where(second_all > 0, (servers - load_high) * 2.0 * load_all / second_all, np.inf)
    return np.clip(np.maximum(theta, 0.0) * qos, 0.0, TAIL_GRID[-1])


def _tail_weights(x: np.ndarray, tail: np.ndarray) -> np.ndarray:
    """Each band's waiting-tail weights `tail[g]` interpolated at the decay `x` (θ·QoS per configuration):
    [configuration, band]."""
    return np.stack([np.interp(x, TAIL_GRID, tail[g]) for g in range(len(tail))], axis=1)


def _decay_x(servers: np.ndarray, load: np.ndarray, rate: np.ndarray, cs2: np.ndarray, qos: float,
             capacity: np.ndarray | None = None) -> np.ndarray:
    """θ·QoS on `TAIL_GRID`, θ = (capacity − λ)·2/(1 + C_s²) the M/G/c waiting tail's decay of `servers` serving
    `load` Erlangs at λ = `rate` queries/s, per configuration. `capacity` is the rate at which the pool
    drains its queue while every instance is busy (Σ instances × each one's service rate); by default
    c/E[S] with E[S] = load/rate, exact for identical instances (θ ∞ with no load)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_svc = np.where(rate > 0, load / rate, 0.0)
        cap = np.where(mean_svc > 0, servers / mean_svc, np.inf) if capacity is None else capacity
        theta = np.where(mean_svc > 0, cap - rate, np.inf) * 2.0 / (1.0 + np.maximum(cs2, 0.0))
    return np.clip(theta * qos, 0.0, TAIL_GRID[-1])

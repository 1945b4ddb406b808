"""Throughput bounds of a configuration from latency profiles alone: the LP-dual fluid bound
(`upper_bound`, valid for any dispatcher), the paper's proportional formula, the authors' code, the exact LP."""

from __future__ import annotations

import functools
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from kairosd.errors import ConfigError
from kairosd.planner.fluid_lp import FluidLp
from kairosd.profiles import ProfileTable, sample_cells

# θ·QoS grid on which the waiting-tail weights are tabulated (θ = decay rate of P(W > t))
TAIL_GRID = np.concatenate([[0.0], np.geomspace(1e-3, 1e4, 400)])
# A p99 target tolerates 1% of queries over QoS: a base type must serve at least this share of the
# mix within QoS, otherwise no configuration built on it can meet the target at any rate.
MIN_BASE_COVERAGE = 0.99
# The same 1% in the fluid model: the share of queries that may miss QoS, and so may be served by any type.
QOS_SLACK = 1.0 - MIN_BASE_COVERAGE
# Dual bound (`upper_bound`): the capacity-share levels whose combinations are the directions at which
# the fluid LP of a subset of m present types is solved for its optimal dual vector (by m; larger
# subsets get coarser grids, since their number of directions grows as levels^m).
DUAL_LEVELS: dict[int, tuple[float, ...]] = {2: (1, 2, 4, 8, 16, 32, 64), 3: (1, 4, 16), 4: (1, 4, 16)}
DUAL_LEVELS_LARGE: tuple[float, ...] = (1, 8)
# The LPs that find the dual vectors merge consecutive batches of the mix into at most this many
# groups (each vector is then normalised on the full mix, so it stays a valid bound): an LP's cost
# grows with types × batches, and a mix with 1,000 distinct batch sizes would take seconds per subset.
DUAL_LP_MAX_BATCHES = 100
# batches per block when the waiting-tail weights are taken over service-time quantiles (memory bound)
WAIT_MISS_CHUNK = 64
EXP_UNDERFLOW = -746.0  # exp(x) is 0.0 in float64 below this
# `_wait_miss_weights` results kept, most recently used last (a model's tables and its deadline-order ones)
WAIT_MISS_CACHE = 4
_WAIT_MISS_SEEN: OrderedDict[tuple[tuple[int, ...], float, bool, bytes], np.ndarray] = OrderedDict()
_WAIT_MISS_LOCK = threading.Lock()


def batch_pmf(batches: np.ndarray, max_batch: int) -> np.ndarray:
    """The mix's probability of each batch size 0..max_batch, from samples (larger ones clamped)."""
    b = np.clip(np.asarray(batches, dtype=np.int64), 0, max_batch)
    if len(b) == 0:
        raise ConfigError("batch_pmf: no batch samples")
    return np.bincount(b, minlength=max_batch + 1) / len(b)


@dataclass(frozen=True)
class BoundModel:
    """Per-type inputs of the throughput bound for one model, QoS target and batch mix.

    threshold_batch[k]  B_k: the last batch of the mix below which every batch meets QoS on type k
                        (−1 when even the smallest does not)
    coverage[k]         s_k = P(b ≤ B_k): the share of queries type k can serve within QoS
    rate_qps[k]         1/E[L_k(b)] over the whole mix (one instance, all queries)
    small_rate_qps[k]   Q_k = 1/E[L_k(b) | b ≤ B_k] (one instance, only the queries it can take)
    time_share[j, k]    t_jk: the share of a type-j instance's busy time spent on queries b ≤ B_k
    band_*              inputs of `queue_estimate` (see there): the mix's batches grouped into bands of
                        equal eligibility (which types meet QoS on them) and, with `dispatch_cost`, of
                        equal order of the types by the dispatcher's cost on an idle instance
                        (`batch_idle_cost`), so that among any present types a band has one idle
                        choice, as each of its batches has; per band its probability
                        `band_p[g]`, membership `band_small[k, g]` (b ≤ B_k) and `band_eligible[k, g]`
                        (L_k(b) at p99 within QoS, batch by batch, as the dispatcher tests it: it also
                        holds batches above B_k where the p99 table is not monotone), and per base type j the
                        moments `band_m1[j, g]` = Σ p_b·L_j(b), `band_m2[j, g]` = Σ p_b·L_j(b)² and
                        the waiting-tail weights `band_tail[j, g, x]` = Σ p_b·(1 − miss_j(b))·exp(−x·slack_j(b)/QoS)
                        on the grid `TAIL_GRID` of x (slack = QoS − feasibility latency where that is
                        within QoS, else QoS − mean latency, ≥ 0: a type with a heavy tail misses on
                        the tail's share and waits against its typical latency; with `svc_quantiles`,
                        Σ p_b·E[1{S ≤ QoS}·exp(−x·(QoS − S)/QoS)] over the service time S's
                        distribution, `_wait_miss_weights`), and the no-wait
                        misses `band_miss[j, g]` = Σ p_b·miss_j(b)
    within_qos          w_k = Σ_b p_b·(1 − miss_k(b)): the share of the mix type k serves within QoS
                        without waiting (= coverage when miss is the 0/1 feasibility table)
    small_miss          the share of type k's small queries (b ≤ B_k) it misses QoS on without waiting
    batch_*             inputs of `upper_bound`, per batch of the mix's support: its probability
                        `batch_p[b]`, mean latency `batch_lat_s[k, b]` and `batch_miss[k, b]`, the
                        probability that one query of that batch served on type k misses QoS even
                        without waiting (0/1 from the feasibility table unless measured samples give it)
    slack               ε, the share of queries allowed to miss QoS (1% for a p99 target)
    band_pref           [j, k, g]: the share of band g (by probability) on which an idle type-j instance
                        costs the dispatcher no more than an idle type-k one (`batch_idle_cost`: its
                        tiers, then `dispatch_cost`), so that it takes those queries whenever it is
                        free (None: not modelled)
    band_hold           [j, k, g]: how long the dispatcher lets a band-g query wait for a busy type-k
                        instance rather than send it to an idle type-j one (C_k·(T + L_k) ≤ C_j·L_j on
                        `batch_idle_cost`, tiers included, at most k's slack QoS − its feasibility
                        latency; 0 where k costs more), averaged over the band by probability (None:
                        not modelled)
    batch_idle_cost     [type, support batch]: the dispatcher's cost of sending a query of that batch to
                        an idle instance of the type, as it ranks them (Kairos tiers: +1 per QoS test
                        failed without waiting, on p99 then on the mean, times a penalty above every
                        C_j·L_j(b)), so that the idle fleet's choice for batch b is the present type of
                        least cost, the first in type order on ties (None: not modelled)
    band_idle_cost      [type, band]: `batch_idle_cost` averaged over each band by probability (None:
                        not modelled)
    band_lead           [j, g]: Σ p_b·lead_j(b) over the band, lead = (QoS − feasibility latency)/QoS
                        where that is within QoS, else 0: how long the dispatcher's p99 test lets a
                        query wait on type j, in QoS units (the order of the base's queue, `queue_estimate`)
    band_tail_edf       [j, g, x]: the waiting-tail weights of `band_tail` measured from that lead
                        instead of from QoS: Σ p_b·E[1{S ≤ QoS}·exp(−x·max(L99_j(b) − S, 0)/QoS)] (with
                        `svc_quantiles`; without, Σ p_b·(1 − miss_j(b)): every query served at its p99)
    band_tail_div       [j, k, g, x]: the waiting-tail weights of `band_tail` (base j) times type k's no-wait
                        miss probability, batch by batch: Σ p_b·w_j(b, x)·miss_k(b). The queries that wait
                        past their slack on j are the batches of least slack, which are also the ones
                        another type misses most often, so the misses of the queries the dispatcher
                        diverts from j to k are this, not the band's tail weight times k's band average
    """

    types: tuple[str, ...]
    qos_s: float
    tail: bool
    threshold_batch: np.ndarray
    coverage: np.ndarray
    rate_qps: np.ndarray
    small_rate_qps: np.ndarray
    time_share: np.ndarray
    band_p: np.ndarray | None = None
    band_small: np.ndarray | None = None
    band_eligible: np.ndarray | None = None
    band_m1: np.ndarray | None = None
    band_m2: np.ndarray | None = None
    band_tail: np.ndarray | None = None
    band_miss: np.ndarray | None = None
    within_qos: np.ndarray | None = None
    small_miss: np.ndarray | None = None
    svc_cv2: np.ndarray | None = None
    batch_p: np.ndarray | None = None
    batch_lat_s: np.ndarray | None = None
    batch_miss: np.ndarray | None = None
    slack: float = QOS_SLACK
    band_pref: np.ndarray | None = None
    band_hold: np.ndarray | None = None
    band_idle_cost: np.ndarray | None = None
    batch_idle_cost: np.ndarray | None = None
    band_lead: np.ndarray | None = None
    band_tail_edf: np.ndarray | None = None
    band_tail_div: np.ndarray | None = None
    # dual vectors of `upper_bound`, by subset mask of present types; filled on first use (a cache:
    # the vectors are a function of the fields above, so the model stays a value)
    _duals: dict[int, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    @staticmethod
    def build(
        mean_s: np.ndarray,
        feasibility_s: np.ndarray,
        pmf: np.ndarray,
        qos_s: float,
        types: Sequence[str],
        *,
        tail: bool = True,
        miss: np.ndarray | None = None,
        slack: float = QOS_SLACK,
        svc_cv2: np.ndarray | None = None,
        dispatch_cost: np.ndarray | None = None,
        svc_quantiles: np.ndarray | None = None,
    ) -> BoundModel:
        """From latency tables `[type, batch]`: `mean_s` sets the rates, `feasibility_s` (mean or p99) the
        thresholds; `miss[type, batch]` (e.g. `miss_from_samples`) the probability that a query misses
        QoS on a type without waiting, for `upper_bound` and `queue_estimate` (default: feasibility_s >
        QoS, as 0/1); `svc_cv2[type, batch]` (e.g. `cv2_from_samples`) the squared coefficient of
        variation of one query's service time, for the estimate's M/G/c second moment (default 0);
        `dispatch_cost[type, batch]` the dispatcher's cost of sending a query to an idle instance of
        the type (Kairos: C_j·L_j(b)), for the estimate's `band_pref` (default: not modelled);
        `svc_quantiles[type, batch, q]` (e.g. `quantiles_from_samples`) one query's service time as
        equally likely values, for the estimate's waiting-tail weights (default: the feasibility
        latency as every query's, see `band_tail`)."""
        mean_s = np.asarray(mean_s, dtype=float)
        feas = np.asarray(feasibility_s, dtype=float)
        nb = min(mean_s.shape[1], len(pmf))
        mean_s, feas, pmf = mean_s[:, :nb], feas[:, :nb], np.asarray(pmf, dtype=float)[:nb]
        if not 0.0 <= slack < 1.0:
            raise ConfigError(f"slack must be in [0, 1), got {slack}")
        miss = (feas > qos_s).astype(float) if miss is None else np.clip(np.asarray(miss, dtype=float)[:, :nb], 0.0, 1.0)
        if miss.shape != mean_s.shape:
            raise ConfigError(f"miss must be [type, batch] like the latency tables, got {miss.shape} for {mean_s.shape}")
        if len(pmf) == 0 or pmf.sum() <= 0:
            raise ConfigError("the batch mix is empty")
        pmf = pmf / pmf.sum()
        support = pmf > 0
        bad = (feas > qos_s) & support[None, :]
        first_bad = np.where(bad.any(axis=1), bad.argmax(axis=1), nb)  # batches < first_bad are all within QoS
        small = np.arange(nb)[None, :] < first_bad[:, None]  # [k, b]: b is a small query for type k
        support_idx = np.flatnonzero(support)
        threshold = np.array([support_idx[support_idx < fb].max(initial=-1) for fb in first_bad])
        coverage = (small * pmf).sum(axis=1)
        work = mean_s * pmf  # expected busy time contributions, [type, batch]
        e_all = work.sum(axis=1)
        small_work = work @ small.T.astype(float)  # [j, k]: E[L_j; b <= B_k] (unnormalised)
        with np.errstate(divide="ignore", invalid="ignore"):
            small_rate = np.where(coverage > 0, coverage / np.diag(small_work), 0.0)
        # the dispatcher's own test, batch by batch: p99 within QoS without waiting. It differs from
        # b ≤ B_k where a p99 table drawn from heavy-tailed samples is not monotone in the batch
        eligible = feas <= qos_s  # [k, b]
        # bands: support batches with the same pattern across types, of both `small` and `eligible`, and
        # with the dispatcher's costs the same order of the types on an idle instance: two batches that
        # pass the same tests but go to different types on an idle fleet (e.g. where a heavy tail puts a
        # p99 over QoS on one batch and not on its neighbour) are routed apart
        n_types = len(mean_s)
        feas_s, mean_sup, miss_s = feas[:, support_idx], mean_s[:, support_idx], miss[:, support_idx]
        pattern = np.concatenate([small[:, support_idx], eligible[:, support_idx]]).T  # [support batch, 2·type]
        idle_cost = None  # [type, support batch], the Kairos tiers included
        if dispatch_cost is not None:
            dc = np.asarray(dispatch_cost, dtype=float)[:, :nb][:, support_idx]
            tier = (feas_s > qos_s).astype(np.int64) + (mean_sup > qos_s)
            idle_cost = dc + tier * (2.0 * float(np.max(np.abs(dc), initial=0.0)) + 1.0)
            rank = np.argsort(np.argsort(idle_cost, axis=0, kind="stable"), axis=0, kind="stable")  # [type, batch]
            pattern = np.concatenate([pattern.astype(np.int64), rank.T], axis=1)
        keys, band_of = np.unique(pattern, axis=0, return_inverse=True)
        band_of = band_of.ravel()
        n_bands = len(keys)
        p_s = pmf[support_idx]
        band_p = np.bincount(band_of, weights=p_s, minlength=n_bands)
        m1 = np.stack([np.bincount(band_of, weights=p_s * mean_s[j, support_idx], minlength=n_bands)
                       for j in range(len(mean_s))])
        cv2 = np.zeros_like(mean_s) if svc_cv2 is None else np.maximum(np.asarray(svc_cv2, dtype=float)[:, :nb], 0.0)
        m2 = np.stack([np.bincount(band_of, weights=p_s * mean_s[j, support_idx] ** 2 * (1.0 + cv2[j, support_idx]),
                                   minlength=n_bands) for j in range(len(mean_s))])
        # a query that misses QoS without waiting (share miss) is counted in `band_miss`, so only the
        # others carry waiting-tail weight; [type, batch, x]
        if svc_quantiles is None:
            typical = np.where(feas_s <= qos_s, feas_s, mean_sup)
            slack_x = np.maximum(qos_s - typical, 0.0) / qos_s  # [type, support batch], in QoS units
            tail_w = (p_s * (1.0 - miss_s))[:, :, None] * np.exp(-slack_x[:, :, None] * TAIL_GRID[None, None, :])
        else:  # the same weight over the service time's distribution: no query misses alone but S > QoS
            quantiles = np.asarray(svc_quantiles, dtype=float)[:, :nb]
            tail_w = p_s[None, :, None] * _wait_miss_weights(quantiles, qos_s)[:, support_idx]
        # the same from the lead the p99 test leaves (`band_lead`): a query served at its feasibility
        # latency has no slack beyond it, one served faster has the difference
        lead = np.where(feas_s <= qos_s, qos_s - feas_s, 0.0) / qos_s
        if svc_quantiles is None:
            edf_w = np.repeat((p_s * (1.0 - miss_s))[:, :, None], len(TAIL_GRID), axis=2)
        else:
            edf_w = p_s[None, :, None] * _wait_miss_weights(quantiles, qos_s, start_s=np.minimum(feas, qos_s))[:, support_idx]
        band_tail, band_tail_edf = (np.stack([np.stack([w[j, band_of == g].sum(axis=0) for g in range(n_bands)])
                                              for j in range(len(mean_s))]) for w in (tail_w, edf_w))
        band_lead = np.stack([np.bincount(band_of, weights=p_s * lead[j], minlength=n_bands) for j in range(len(mean_s))])
        in_band = (band_of[:, None] == np.arange(n_bands)[None, :]).astype(float)  # [support batch, band]
        band_tail_div = np.einsum("jbx,kb,bg->jkgx", tail_w, miss_s, in_band, optimize=True)
        band_miss = np.stack([np.bincount(band_of, weights=p_s * miss_s[j], minlength=n_bands) for j in range(len(mean_s))])
        within = (1.0 - miss_s) @ p_s
        band_pref = band_hold = band_idle_cost = None
        if idle_cost is not None:

            def band_mean(x: np.ndarray) -> np.ndarray:
                """[j, k, support batch] → [j, k, band]: the probability-weighted mean over each band."""
                sums = np.stack([np.stack([np.bincount(band_of, weights=p_s * x[j, k], minlength=n_bands)
                                           for k in range(x.shape[1])]) for j in range(x.shape[0])])
                with np.errstate(divide="ignore", invalid="ignore"):
                    return np.where(band_p > 0, sums / band_p, 0.0)

            # by the dispatcher's ranking, tiers included: an idle type whose p99 misses QoS on a batch is not
            # its first choice over one whose p99 meets it, however cheap
            band_pref = band_mean(idle_cost[:, None, :] <= idle_cost[None, :, :] * (1.0 + 1e-9))
            band_idle_cost = band_mean(idle_cost[None])[0]
            # how long the dispatcher lets a query wait for a busy type-k instance rather than take an
            # idle type-j one: C_k·(T + L_k) ≤ C_j·L_j, i.e. T ≤ (C_j·L_j − C_k·L_k)·L_k/(C_k·L_k), with
            # each side's tiers (an idle j whose p99 misses QoS costs more than any k within it), and no
            # longer than k's slack (QoS − its feasibility latency)
            with np.errstate(divide="ignore", invalid="ignore"):
                gap = (idle_cost[:, None, :] - idle_cost[None, :, :]) * mean_sup[None, :, :]  # [j, k, support batch]
                hold = np.where(idle_cost[None, :, :] > 0, gap / idle_cost[None, :, :], 0.0)
            band_hold = band_mean(np.clip(hold, 0.0, np.maximum(qos_s - feas_s, 0.0)[None, :, :]))
        with np.errstate(divide="ignore", invalid="ignore"):
            small_miss = np.where(coverage > 0, (miss * small * pmf).sum(axis=1) / coverage, 0.0)
        return BoundModel(
            types=tuple(types),
            qos_s=float(qos_s),
            tail=tail,
            threshold_batch=threshold,
            coverage=coverage,
            rate_qps=1.0 / e_all,
            small_rate_qps=small_rate,
            time_share=small_work / e_all[:, None],
            band_p=band_p,
            band_small=np.ascontiguousarray(keys[:, :n_types].T, dtype=bool),
            band_eligible=np.ascontiguousarray(keys[:, n_types:2 * n_types].T, dtype=bool),
            band_m1=m1,
            band_m2=m2,
            band_tail=band_tail,
            band_miss=band_miss,
            within_qos=within,
            small_miss=small_miss,
            svc_cv2=None if svc_cv2 is None else cv2,
            batch_p=p_s / p_s.sum(),
            batch_lat_s=mean_s[:, support_idx],
            batch_miss=miss[:, support_idx],
            slack=float(slack),
            band_pref=band_pref,
            band_hold=band_hold,
            batch_idle_cost=idle_cost,
            band_idle_cost=band_idle_cost,
            band_lead=band_lead,
            band_tail_edf=band_tail_edf,
            band_tail_div=band_tail_div,
        )

    @staticmethod
    def from_profiles(
        profiles: ProfileTable,
        model: str,
        types: Sequence[str],
        pmf: np.ndarray,
        qos_s: float,
        *,
        tail: bool = True,
        miss: np.ndarray | None = None,
        slack: float = QOS_SLACK,
        svc_cv2: np.ndarray | None = None,
        dispatch: bool = True,
        svc_quantiles: np.ndarray | None = None,
    ) -> BoundModel:
        """Bound inputs for `types` (in this order) from a ProfileTable; `tail` judges QoS on p99, else mean;
        with `dispatch`, the Kairos dispatcher's idle edge costs C_j·L_j(b) (`heterogeneity_coefficients`)."""
        from kairosd.dispatch import heterogeneity_coefficients

        mi = profiles.model_index(model)
        ti = [profiles.type_index(t) for t in types]
        mean = profiles.mean_s[mi][ti]
        feas = profiles.p99_s[mi][ti] if tail else mean
        cost = heterogeneity_coefficients(profiles)[mi][ti][:, None] * mean if dispatch else None
        return BoundModel.build(mean, feas, pmf, qos_s, types, tail=tail, miss=miss, slack=slack, svc_cv2=svc_cv2,
                                dispatch_cost=cost, svc_quantiles=svc_quantiles)


def _wait_miss_weights(quantiles_s: np.ndarray, qos_s: float, start_s: np.ndarray | None = None) -> np.ndarray:
    """E[1{S ≤ QoS}·exp(−x·(T − S)⁺/QoS)] per [type, batch, x of `TAIL_GRID`], S one query's service time
    given as equally likely values `quantiles_s[type, batch, q]` and T = QoS, or `start_s[type, batch]`:
    the share of a batch's queries that meet QoS alone and miss it after an exponential wait of rate
    x/QoS (P(W > w) = exp(−x·w/QoS)) counted beyond T − S (with T = QoS, the wait that makes it late).
    The last few results are kept (`WAIT_MISS_CACHE`, by the inputs' contents): a planner that rebuilds
    its models for each new load (the autoscaler) asks for the same tables each time."""
    start = None if start_s is None else np.ascontiguousarray(start_s, dtype=float)
    q = np.ascontiguousarray(quantiles_s, dtype=float)
    digest = hashlib.blake2b(q.tobytes(), digest_size=16)
    if start is not None:
        digest.update(start.tobytes())
    key = (q.shape, float(qos_s), start is None, digest.digest())
    with _WAIT_MISS_LOCK:  # the autoscaler plans on a worker thread
        hit = _WAIT_MISS_SEEN.get(key)
        if hit is not None:
            _WAIT_MISS_SEEN.move_to_end(key)
            return hit
    table = _wait_miss_table(q, float(qos_s), start)
    table.setflags(write=False)
    with _WAIT_MISS_LOCK:
        _WAIT_MISS_SEEN[key] = table
        while len(_WAIT_MISS_SEEN) > WAIT_MISS_CACHE:
            _WAIT_MISS_SEEN.popitem(last=False)
    return table


def _wait_miss_table(quantiles_s: np.ndarray, qos_s: float, start_s: np.ndarray | None) -> np.ndarray:
    """`_wait_miss_weights`, computed."""
    n_types, n_batches, n_q = quantiles_s.shape
    out = np.zeros((n_types, n_batches, len(TAIL_GRID)))
    meets = quantiles_s <= qos_s
    start = np.full((n_types, n_batches), qos_s) if start_s is None else np.asarray(start_s, dtype=float)
    slack = np.maximum(start[:, :, None] - quantiles_s, 0.0) / qos_s  # in QoS units
    for lo in range(0, n_batches, WAIT_MISS_CHUNK):
        x = -slack[:, lo:lo + WAIT_MISS_CHUNK, :, None] * TAIL_GRID
        # exp only where it counts: a query that meets QoS, at an exponent above the one whose exp is 0.0
        e = np.zeros(x.shape)
        np.exp(x, out=e, where=meets[:, lo:lo + WAIT_MISS_CHUNK, :, None] & (x >= EXP_UNDERFLOW))
        out[:, lo:lo + WAIT_MISS_CHUNK] = e.sum(axis=2) / n_q
    return out


def quantiles_from_samples(mean_s: np.ndarray, relative: np.ndarray, grid_step: int, n: int = 32) -> np.ndarray:
    """One query's service time per [type, batch 0..B−1, q] as `n` equally likely values (the mid-quantiles of
    the profile mean times the measured relative samples of the batch's grid cell, cell ⌈b/grid_step⌉ − 1 as
    `miss_from_samples`). E.g. mean 4 ms, samples ×(0.5, 1.5), n = 2 → 2 ms, 6 ms."""
    mean_s = np.asarray(mean_s, dtype=float)
    rel = np.asarray(relative, dtype=float)
    g = sample_cells(np.arange(mean_s.shape[1]), grid_step, rel.shape[1])
    q = np.quantile(rel, (np.arange(n) + 0.5) / n, axis=2, method="inverted_cdf")  # [q, type, grid]
    return mean_s[:, :, None] * np.moveaxis(q, 0, 2)[:, g, :]


def miss_from_samples(mean_s: np.ndarray, relative: np.ndarray, qos_s: float, grid_step: int) -> np.ndarray:
    """P(service > QoS) per [type, batch 0..B−1] when a query's service time is the profile mean times a
    measured relative sample (`relative[type, grid, k]`, mean 1; batch b uses grid cell ⌈b/grid_step⌉ − 1),
    as the simulator's "samples" noise draws it. E.g. mean 4 ms, samples ×(0.5, 1.0, 1.5), QoS 5 ms → 1/3."""
    mean_s = np.asarray(mean_s, dtype=float)
    rel = np.asarray(relative, dtype=float)
    g = sample_cells(np.arange(mean_s.shape[1]), grid_step, rel.shape[1])
    return (mean_s[:, :, None] * rel[:, g, :] > qos_s).mean(axis=2)


def type_dominance(mean_s: np.ndarray, relative: np.ndarray, grid_step: int) -> np.ndarray:
    """dominates[a, b]: type a's service time is at most type b's at every batch and every quantile of
    the measured samples (mean_s[type, batch] × sorted relative samples of the batch's grid cell, cell
    ⌈b/grid_step⌉ − 1 as in `miss_from_samples`; batch 0 ignored). A preorder (reflexive, transitive).
    E.g. a = 1 ms, b = 2 ms on every batch, samples ×(0.5, 1.5) for both: a dominates b, not conversely."""
    mean_s = np.asarray(mean_s, dtype=float)
    rel = np.sort(np.asarray(relative, dtype=float), axis=2)
    nb = mean_s.shape[1]
    g = sample_cells(np.arange(1, nb), grid_step, rel.shape[1])
    q = rel[:, g, :] * mean_s[:, 1:, None]  # [type, batch, quantile]
    return np.all(q[:, None] <= q[None, :] * (1.0 + 1e-12), axis=(2, 3))


def cv2_from_samples(relative: np.ndarray, n_batches: int, grid_step: int) -> np.ndarray:
    """The squared coefficient of variation of one query's service time per [type, batch 0..n−1] when
    it is the profile mean times a measured relative sample (`relative[type, grid, k]`, mean 1; batch
    b uses grid cell ⌈b/grid_step⌉ − 1, as `miss_from_samples`). E.g. samples ×(0.5, 1.0, 1.5) → 1/6."""
    rel = np.asarray(relative, dtype=float)
    g = sample_cells(np.arange(n_batches), grid_step, rel.shape[1])
    return rel.var(axis=2)[:, g] / rel.mean(axis=2)[:, g] ** 2


def proportional_bound(configs: np.ndarray, bm: BoundModel) -> np.ndarray:
    """The paper's QPS_max with per-type thresholds, for dispatchers that feed every auxiliary its small
    queries in mix proportion (int[N, K] counts aligned with `bm.types`), vectorised.

    What it bounds: fleets whose dispatcher gives auxiliary k a sample of the queries b ≤ B_k in
    their mix proportions (the paper's model). It does NOT bound the Kairos dispatcher, which lets a
    type specialise in the batches it serves best: the simulated rate can exceed it (the planner
    benchmark, bench/results/planner.json, counts how often). There the exact LP's split has the base
    concentrate on the large batches while the auxiliaries take the medium ones they still serve
    within QoS, which proportional feeding forbids. The bound that ranks and prunes is `upper_bound`; this one
    is kept as the formula of the paper's item.

    Derivation (fluid model: queueing ignored, a stable fleet must fit the offered work into its
    instances' time). The base j of a configuration is its type with the largest coverage (ties:
    the fastest), i.e. the type that can serve the large queries. Auxiliary k serves only queries
    b ≤ B_k and, as in the paper, in their mix proportions: it takes y_k ≤ n_k·Q_k queries/s.
    For an offered rate λ with n_b base instances (rate Q_b = 1/E[L_b] each):
      * base busy time: λ·E[L_b] − Σ_k y_k·E[L_b | b ≤ B_k] ≤ n_b, and E[L_b | b ≤ B_k] = t_k/(s_k·Q_b),
        hence λ ≤ n_b·Q_b + Σ_k (t_k/s_k)·y_k;
      * the auxiliaries cannot take more small queries than arrive: in the band of the smallest
        batches (which every auxiliary can take) Σ_k y_k/s_k ≤ λ.
    Substituting λ, the auxiliaries' rates must satisfy Σ_k ((1 − t_k)/s_k)·y_k ≤ n_b·Q_b and λ grows
    by (t_k/s_k)·y_k: a fractional knapsack whose best order is by t_k/(1 − t_k), i.e. the most
    permissive threshold first. Filling it greedily gives the bound. With one auxiliary this is the
    authors' UB = min(n_b·Q_b + (t/s)·Q_a, n_b·Q_b/(1 − t)); unlike their code, each auxiliary keeps
    its own threshold instead of all taking the most permissive one (which credits r5n.large or
    t3.xlarge with queries they cannot serve within QoS).

    Worked example (the unit tests' case). Mix: half the queries batch 10, half batch 100; QoS 5 ms.
    Base: L(10) = 1 ms, L(100) = 3 ms → E[L_b] = 2 ms, Q_b = 500/s. Auxiliary: L(10) = 2 ms,
    L(100) = 10 ms → B = 10, s = 0.5, Q_k = 1/2 ms = 500/s, t = 0.5·1/2 = 0.25.
    1 base + 1 aux: min(500 + 0.5·500, 500/0.75) = min(750, 666.7) = 666.7/s: the base is the
    bottleneck (it must serve the 333 large queries/s at 3 ms each).
    2 base + 1 aux: min(1000 + 250, 1333) = 1250/s: the auxiliary saturates at 500 small/s; the
    base serves 125 small (1 ms) + 625 large (3 ms) = 2.0 s of work per second on 2 instances.
    Two auxiliaries (tests: base 1 ms; A meets QoS only at batch 10, B up to 50, both 2 ms; mix
    1/3 each of 10, 50, 100): 1 + 1 + 1 gives 1875/s — B first (t = 2/3, weight 0.5) adds 500, A
    (t = 1/3, weight 2) the remaining capacity 750/2 = 375 — where the authors' aggregate
    threshold would credit A with batch-50 queries it cannot serve within QoS.
    Configurations whose base covers less than 99% of the mix (a p99 target cannot hold) get 0.
    """
    configs = np.atleast_2d(np.asarray(configs, dtype=np.int64))
    n_types = len(bm.types)
    if configs.shape[1] != n_types:
        raise ConfigError(f"configurations have {configs.shape[1]} counts but the bound model has {n_types} types")
    present = configs > 0
    # base: the present type with the largest coverage, ties broken by the highest rate
    order_key = np.lexsort((-bm.rate_qps, -bm.coverage))  # best candidate first
    rank_of = np.empty(n_types, dtype=np.int64)
    rank_of[order_key] = np.arange(n_types)
    score = np.where(present, rank_of[None, :], n_types)
    base = order_key[np.minimum(score.min(axis=1), n_types - 1)]
    ub = np.zeros(len(configs))
    for j in range(n_types):
        rows = np.flatnonzero((base == j) & present.any(axis=1))
        if len(rows) == 0 or bm.coverage[j] < MIN_BASE_COVERAGE:
            continue
        n = configs[rows].astype(float)
        capacity = n[:, j] * bm.rate_qps[j]  # knapsack capacity: n_b·Q_b
        lam = capacity.copy()
        t = bm.time_share[j]
        s = bm.coverage
        aux = [k for k in np.argsort(-t, kind="stable") if k != j and s[k] > 0]
        used = np.zeros(len(rows))
        for k in aux:
            y_max = n[:, k] * bm.small_rate_qps[k]
            weight = (1.0 - min(t[k], 1.0)) / s[k]
            value = t[k] / s[k]
            if weight <= 1e-12:
                frac = np.ones(len(rows))
            else:
                with np.errstate(divide="ignore", invalid="ignore"):
                    frac = np.clip((capacity - used) / (weight * y_max), 0.0, 1.0)
                frac = np.where(y_max > 0, frac, 0.0)
            used += frac * y_max * weight
            lam += frac * y_max * value
        ub[rows] = lam
    return ub


@functools.lru_cache(maxsize=16)
def _subset_directions(m: int) -> np.ndarray:
    """Capacity shares (rows sum to 1) at which the LP of an m-type subset is solved: every combination
    of `DUAL_LEVELS[m]` (or `DUAL_LEVELS_LARGE`) per type, normalised, duplicates removed; in
    nearest-neighbour order, so that each re-solve starts from the basis of a close direction (a third
    fewer simplex iterations than grid order on the NCF data). Read-only."""
    if m == 1:
        return np.ones((1, 1))
    levels = np.asarray(DUAL_LEVELS.get(m, DUAL_LEVELS_LARGE), dtype=float)
    grid = np.array(np.meshgrid(*([levels] * m), indexing="ij")).reshape(m, -1).T
    grid /= grid.sum(axis=1, keepdims=True)
    grid = np.unique(np.round(grid, 12), axis=0)
    order, left = [0], np.ones(len(grid), dtype=bool)
    left[0] = False
    while left.any():
        dist = np.where(left, np.abs(grid - grid[order[-1]]).sum(axis=1), np.inf)
        nxt = int(np.argmin(dist))
        order.append(nxt)
        left[nxt] = False
    out = grid[order]
    out.setflags(write=False)
    return out


def dual_denominator(
    y: np.ndarray, z: np.ndarray, lat_s: np.ndarray, miss: np.ndarray, p: np.ndarray, slack: float
) -> np.ndarray:
    """D(y, z) = Σ_b p_b·min_k (y_k·L_k(b) + z·miss_k(b)) − ε·z for rows of y [v, m] and z [v] (see `upper_bound`)."""
    cost = y[:, :, None] * lat_s[None, :, :] + z[:, None, None] * miss[None, :, :]
    return cost.min(axis=1) @ p - slack * z


def _fluid_lp(n: np.ndarray, lat_s: np.ndarray, miss: np.ndarray, p: np.ndarray,
              slack: float) -> tuple[float, np.ndarray, float, np.ndarray] | None:
    """max λ of the fluid LP for counts n [m] (see `upper_bound`), its optimal duals and flows
    (λ, y [m], z, x [m, batch] queries/s), by HiGHS."""
    from scipy.optimize import linprog

    m, nb = lat_s.shape
    nv = m * nb + 1  # x[k, b] row-major, then λ
    a_eq = np.zeros((nb, nv))
    a_eq[np.tile(np.arange(nb), m), np.arange(m * nb)] = 1.0
    a_eq[:, -1] = -p
    a_ub = np.zeros((m + 1, nv))
    a_ub[np.repeat(np.arange(m), nb), np.arange(m * nb)] = lat_s.ravel()
    a_ub[m, :-1] = -(1.0 - miss).ravel()
    a_ub[m, -1] = 1.0 - slack
    cost = np.zeros(nv)
    cost[-1] = -1.0
    res = linprog(cost, A_ub=a_ub, b_ub=np.r_[np.asarray(n, dtype=float), 0.0], A_eq=a_eq, b_eq=np.zeros(nb),
                  bounds=(0, None), method="highs")
    if res.status != 0:
        return None
    dual = -np.asarray(res.ineqlin.marginals)  # ∂λ/∂(right-hand side) ≥ 0
    return float(-res.fun), np.maximum(dual[:m], 0.0), max(float(dual[m]), 0.0), np.asarray(res.x[:-1]).reshape(m, nb)


def _merge_batches(p: np.ndarray, lat_s: np.ndarray, miss: np.ndarray, groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At most `groups` groups of consecutive batches: probability, and probability-weighted mean latency and miss."""
    nb = len(p)
    if nb <= groups:
        return p, lat_s, miss
    g = np.arange(nb) * groups // nb
    gp = np.bincount(g, weights=p, minlength=groups)
    keep = gp > 0
    merge = lambda t: np.stack([np.bincount(g, weights=p * row, minlength=groups) for row in t])[:, keep] / gp[keep]
    return gp[keep], merge(lat_s), merge(miss)


def dual_vectors(bm: BoundModel, mask: int) -> np.ndarray:
    """The dual vectors of `upper_bound` for the subset of types in bit mask `mask`: float[v, K], zero
    outside the subset, each normalised so that D = 1 (no vector when the subset cannot meet the p99
    target at any rate). Computed on first use and cached on `bm`."""
    if mask in bm._duals:
        return bm._duals[mask]
    if bm.batch_p is None or bm.batch_lat_s is None or bm.batch_miss is None:
        raise ConfigError("upper_bound needs a BoundModel made by BoundModel.build (batch tables)")
    n_types = len(bm.types)
    sub = [k for k in range(n_types) if mask >> k & 1]
    p, lat, miss = bm.batch_p, bm.batch_lat_s[sub], bm.batch_miss[sub]
    out = np.zeros((0, n_types))
    # λ > 0 is feasible iff the best type per batch meets QoS on ≥ 1 − ε of the mix
    if sub and p @ (1.0 - miss.min(axis=0)) >= 1.0 - bm.slack - 1e-12:
        rate = 1.0 / (lat @ p)  # one instance's queries/s over the whole mix: directions in capacity shares
        g_p, g_lat, g_miss = _merge_batches(p, lat, miss, DUAL_LP_MAX_BATCHES)
        ys, zs = [], []
        lp = FluidLp(g_lat, g_miss, g_p, bm.slack)
        for share in _subset_directions(len(sub)):
            sol = lp.solve(share / rate)
            if sol is not None:
                ys.append(sol[1])
                zs.append(sol[2])
        if ys:
            y, z = np.array(ys), np.array(zs)
            d = dual_denominator(y, z, lat, miss, p, bm.slack)
            ok = d > 1e-12 * np.maximum(y.max(axis=1), 1.0)
            vec = np.unique(np.round(y[ok] / d[ok, None], 9), axis=0)
            out = np.zeros((len(vec), n_types))
            out[:, sub] = vec
    bm._duals[mask] = out
    return out


def config_masks(configs: np.ndarray, n_types: int) -> np.ndarray:
    """The subset of types present in each configuration (int[N, K] counts) as a bit mask (bit k: type k)."""
    return (np.asarray(configs) > 0).astype(np.int64) @ (np.int64(1) << np.arange(n_types, dtype=np.int64))


def upper_bound(configs: np.ndarray, bm: BoundModel) -> np.ndarray:
    """QPS_max of each configuration (int[N, K] counts aligned with `bm.types`): an upper bound of the
    rate any dispatcher can serve with p99 ≤ QoS, by LP duality; vectorised (one product and a min).

    The fluid LP (queueing ignored: a fleet that keeps up must fit the offered work into its
    instances' time). Offered rate λ, batch b with probability p_b; x_kb queries/s of batch b go to
    type k, which takes L_k(b) seconds (mean latency) each and misses QoS on a share miss_k(b) of
    them even without waiting (0/1 from the p99 table, or measured from samples); n_k instances:
        max λ  s.t.  Σ_k x_kb = λ·p_b                (every query is served somewhere)
                     Σ_b x_kb·L_k(b) ≤ n_k           (no type busier than its instances)   [dual y_k ≥ 0]
                     Σ_kb x_kb·miss_k(b) ≤ ε·λ       (p99: at most ε = 1% miss QoS)          [dual z ≥ 0]
    Any type may serve any batch — also one it misses QoS on, within the ε budget — and an auxiliary
    may specialise in the batches it serves best, as the Kairos dispatcher lets it.
    Weak duality: for any y, z ≥ 0 and a feasible (x, λ), weigh the capacity rows by y and the p99
    row by z and add them:
        n·y ≥ Σ_kb x_kb·y_k·L_k(b) ≥ Σ_kb x_kb·y_k·L_k(b) + z·(Σ_kb x_kb·miss_k(b) − ε·λ)
            = Σ_b Σ_k x_kb·(y_k·L_k(b) + z·miss_k(b)) − ε·λ·z ≥ Σ_b λ·p_b·min_k (y_k·L_k(b) + z·miss_k(b)) − ε·λ·z
    (the last step: batch b's flow λ·p_b costs at least its cheapest present type), so
    λ ≤ n·y / D(y, z) with D(y, z) = Σ_b p_b·min_k∈S (y_k·L_k(b) + z·miss_k(b)) − ε·z, S the present
    types. D depends on S only, so per subset S the duals are normalised to D = 1 and
        UB(n) = min over the subset's vectors y of n·y,
    always ≥ the LP optimum, and equal to it at every direction whose optimal dual is in the set. The
    set: the LP's optimal duals (HiGHS) at a grid of capacity-share directions of S (`DUAL_LEVELS`),
    computed once per subset (`dual_vectors`). A subset whose best type per batch meets QoS on less
    than 1 − ε of the mix gets 0 (no rate meets the target). The bound is exact w.r.t. the fluid
    model, not w.r.t. queueing; how close it comes to the exact LP, and whether a simulated rate ever
    exceeds it, is measured by the planner benchmark (bench/planner.py, README). The vectors are
    computed once per model (HiGHS re-solves, `planner.fluid_lp`).

    Worked example (unit tests). Mix: half batch 10, half batch 100; QoS 5 ms; base L = 1 ms, 3 ms;
    auxiliary L = 2 ms, 10 ms (misses QoS at 100). With ε = 0 (no slack):
      * 1 base + 1 aux: batch 100 only on the base: 0.5·λ·3 ms ≤ 1 s → λ ≤ 666.7; the auxiliary can
        take all batch-10 queries (333/s·2 ms = 0.67 s). Dual y = (666.7, 0): D = 0.5·min(y_b·1 ms,
        0) + 0.5·y_b·3 ms = 1, UB = 1·666.7 + 1·0 = 666.7.
      * 2 base + 1 aux: the auxiliary saturates at 500 batch-10/s; the base serves the other 0.5·λ −
        500 batch 10 and all batch 100: 0.001·(0.5·λ − 500) + 0.0015·λ ≤ 2 → λ = 1250. Dual
        y = (500, 250): min(500·1 ms, 250·2 ms) = 0.5 for batch 10, 500·3 ms = 1.5 for batch 100 →
        D = 1, UB = 2·500 + 250 = 1250 (the proportional bound agrees here).
      * With ε = 1%, 1 + 1: 1% of the queries (batch 100) may go to the auxiliary and miss QoS:
        0.49·λ·3 ms ≤ 1 s → λ = 680.3. Dual y = (680.3, 0), z = 3 ms·680.3: batch 100 costs
        min(y_b·3 ms, z) = 2.041, D = 0.5·0 + 0.5·2.041 − 0.01·2.041 = 1 → UB = 680.3.
    Specialisation (two auxiliaries, tests: base 1 ms on all; A meets QoS only at batch 10, B up to
    50, both 2 ms there; mix 1/3 each of 10, 50, 100; ε = 0): 1 + 1 + 1 serves 2000/s — A 500 of
    batch 10, B 500 of batch 50, the base 167 + 167 + 667 = 1000 at 1 ms — where the proportional
    bound gives 1875 (B fed batch 10 and 50 alike). Dual y = (1000, 500, 500): every batch costs
    1 (= 1000·1 ms = 500·2 ms), D = 1, UB = 1000 + 500 + 500 = 2000.
    """
    configs = np.atleast_2d(np.asarray(configs, dtype=np.int64))
    n_types = len(bm.types)
    if configs.shape[1] != n_types:
        raise ConfigError(f"configurations have {configs.shape[1]} counts but the bound model has {n_types} types")
    masks = config_masks(configs, n_types)
    ub = np.zeros(len(configs))
    counts = configs.astype(float)
    for mask in np.unique(masks):
        if mask == 0:
            continue
        vec = dual_vectors(bm, int(mask))
        if len(vec):
            rows = masks == mask
            ub[rows] = (counts[rows] @ vec.T).min(axis=1)
    return ub


def fluid_bound(config: np.ndarray, mean_s: np.ndarray, feasibility_s: np.ndarray, pmf: np.ndarray, qos_s: float,
                *, miss: np.ndarray | None = None, slack: float = QOS_SLACK) -> float:
    return fluid_solution(config, mean_s, feasibility_s, pmf, qos_s, miss=miss, slack=slack)[0]


def fluid_solution(config: np.ndarray, mean_s: np.ndarray, feasibility_s: np.ndarray, pmf: np.ndarray, qos_s: float,
                   *, miss: np.ndarray | None = None, slack: float = QOS_SLACK) -> tuple[float, np.ndarray]:
    """The fluid LP of `upper_bound` solved exactly for one configuration (scipy HiGHS), for validation.

    max λ s.t. every batch b of the mix is served at rate λ·p_b (Σ_k x_kb = λ·p_b), no type is busy
    more than its instances allow (Σ_b x_kb·L_k(b) ≤ n_k, L = `mean_s`) and at most a share `slack`
    of the queries miss QoS (Σ_kb x_kb·miss_k(b) ≤ slack·λ, miss = feasibility_s > QoS as 0/1 unless
    `miss` gives the probabilities). An auxiliary may specialise in the batches it serves best, so
    this bounds every dispatcher (queueing ignored). `upper_bound` is ≥ this, equal at the directions
    its dual vectors were taken from; one LP per configuration is too slow to rank with.
    `fluid_solution` also returns the optimal flows x[type, batch 0..B−1] (queries/s; 0 for absent types).
    """
    config = np.asarray(config, dtype=np.int64)
    pmf = np.asarray(pmf, dtype=float)
    mean_s = np.asarray(mean_s, dtype=float)
    nb = min(len(pmf), mean_s.shape[1])
    support = np.flatnonzero(pmf[:nb] > 0)
    p = pmf[support] / pmf[support].sum()
    present = np.flatnonzero(config > 0)
    flows = np.zeros((len(config), nb))
    if len(present) == 0:
        return 0.0, flows
    mis = (
        (np.asarray(feasibility_s, dtype=float)[:, :nb] > qos_s).astype(float) if miss is None
        else np.asarray(miss, dtype=float)[:, :nb]
    )
    lat, mis = mean_s[present][:, support], mis[present][:, support]
    if p @ (1.0 - mis.min(axis=0)) < 1.0 - slack - 1e-12:
        return 0.0, flows
    sol = _fluid_lp(config[present].astype(float), lat, mis, p, slack)
    if sol is None:
        raise RuntimeError("fluid bound LP failed")
    flows[np.ix_(present, support)] = sol[3]
    return sol[0], flows


def authors_upper_bound(configs: np.ndarray, bm: BoundModel, base: int) -> np.ndarray:
    """The authors' code (kairos_resource_allocator.py), for comparison: a fixed base type, and every
    auxiliary present approximated by the most permissive threshold among them (s, t of that one)."""
    configs = np.atleast_2d(np.asarray(configs, dtype=np.int64))
    ub = np.zeros(len(configs))
    for i, c in enumerate(configs):
        if c[base] == 0:
            continue
        q_b = c[base] * bm.rate_qps[base]
        present = [k for k in range(len(bm.types)) if k != base and c[k] > 0 and bm.coverage[k] > 0]
        if not present:
            ub[i] = q_b
            continue
        agg = max(present, key=lambda k: bm.coverage[k])
        s, t = bm.coverage[agg], bm.time_share[base, agg]
        # all_batch[B_agg]: 1/E[L_k | b <= B_agg] = s / E[L_k; b <= B_agg] = s·rate_k / t_k(agg)
        q_a = sum(c[k] * s * bm.rate_qps[k] / bm.time_share[k, agg] for k in present)
        ub[i] = min(q_b + t / s * q_a, q_b / (1 - t)) if t < 1 else q_b + q_a
    return ub

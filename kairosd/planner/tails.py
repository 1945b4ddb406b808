"""Service-time tails for planning: what the queue-aware estimate needs of each type's latency
distribution, from measured per-query samples or, without them, from a profile's mean and p99.

The estimate reads three tables per [type, batch] (`BoundModel.from_profiles`): the probability of
missing QoS without waiting (`miss`), the squared coefficient of variation of one query's service
time (`cv2`), and the service time as equally likely values (`quantiles`), against which it weighs a
wait. The Kairos authors' data carries 99 samples per (type, model, cell of 10 batches), and an
emulated instance draws its service times from such cells (`tails_from_cells`); a profile
measured with `kairosd profile` carries a mean and a p99 per batch, and the timed queries at each
measured batch (`ProfileTable.samples`, `tails_from_batch_samples`: the shape of the distribution there,
scaled to the profile mean at every batch). A profile without them, e.g. one written by hand, has its
mean and p99 alone: `profile_sigma`
gives each batch the log-normal whose mean and p99 are the profile's (the simulator draws the same,
`ServiceModel("lognormal", sigma=...)`), and `lognormal_tails` its tables: it keeps what the p99 says of a
heavy tail (a type whose p99 is three times its mean misses a tight QoS target far more often than
one whose p99 is near its mean), where the mean and p99 tables alone count a batch as always met or
always missed and weigh every wait against the p99, as though every query took that long.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr, ndtri

from kairosd.emulation import ServiceCells, sample_cell
from kairosd.errors import ConfigError
from kairosd.planner.bounds import BoundModel, cv2_from_samples, miss_from_samples, quantiles_from_samples
from kairosd.profiles import ProfileTable
from kairosd.sim import ServiceModel
from kairosd.workload import GRID_STEP, KairosWorkload

# a service time's equally likely values in `Tails.quantiles` (as `quantiles_from_samples`)
QUANTILES = 32
# ... in the tables a simulation draws from (`kairosd.autoscale.refine`): its cost does not grow with them,
# and a far tail of 1% of the services needs more than `QUANTILES` values to be drawn at its own weight
SIM_QUANTILES = 256
Z99 = float(ndtri(0.99))
# the largest p99/mean a log-normal reaches (its p99/mean peaks at σ = z99): exp(z99²/2) ≈ 15
MAX_P99_RATIO = math.exp(Z99**2 / 2)


@dataclass(frozen=True)
class Tails:
    """Per [type, batch 0..B]: `miss` P(service > QoS), `cv2` the service time's squared coefficient
    of variation, `quantiles[type, batch, q]` the service time as equally likely values (seconds)."""

    miss: np.ndarray
    cv2: np.ndarray
    quantiles: np.ndarray


def tails_from_relative(mean_s: np.ndarray, relative: np.ndarray, qos_s: float, grid_step: int,
                        n: int = QUANTILES) -> Tails:
    """The tables from relative samples (`relative[type, grid cell, k]`, mean 1; batch b uses cell
    ⌈b/grid_step⌉ − 1, as the simulator's "samples" noise draws them) around the profile means
    `mean_s[type, batch]`."""
    mean_s = np.asarray(mean_s, dtype=float)
    return Tails(miss_from_samples(mean_s, relative, qos_s, grid_step),
                 cv2_from_samples(relative, mean_s.shape[1], grid_step),
                 quantiles_from_samples(mean_s, relative, grid_step, n))


def workload_tails(wl: KairosWorkload, model: str, types: Sequence[str], qos_s: float, n: int = QUANTILES) -> Tails:
    """`Tails` for `types` (in this order) of `model` from a workload in the authors' layout: its measured
    samples around its profile means (`tails_from_relative`), as the simulator's "samples" noise draws them;
    `n` quantiles."""
    ti = [wl.profiles.type_index(t) for t in types]
    mean = wl.profiles.mean_s[wl.profiles.model_index(model)][ti]
    return tails_from_relative(mean, wl.samples.relative(model, types), qos_s, GRID_STEP, n)


def tails_from_cells(cells: Sequence[ServiceCells], n_batches: int, qos_s: float, n: int = QUANTILES) -> Tails:
    """The tables of the service times emulated instances draw (`emulation.ServiceCells`, one per type in
    this order): a query of batch b (0..n_batches−1) takes one of its cell's samples
    (`ServiceCells.grid_index`), equally likely, times the cell's scale at b (`ServiceCells.scale`); the
    quantiles are the cell's `n` mid-quantiles, scaled. E.g. a cell (2, 4, 6, 8 ms) at scale 1,
    QoS 5 ms: miss 0.5, cv² 0.2."""
    mids = (np.arange(n) + 0.5) / n
    batches = np.arange(n_batches)
    miss = np.empty((len(cells), n_batches))
    cv2 = np.empty((len(cells), n_batches))
    quantiles = np.empty((len(cells), n_batches, n))
    for k, c in enumerate(cells):
        samples = np.asarray(c.samples_s, dtype=float)
        cell = c.grid_indices(batches)
        scale = c.scales_at(batches)[:, None]
        miss[k] = (samples[cell] * scale > qos_s).mean(axis=1)
        cv2[k] = (samples.var(axis=1) / samples.mean(axis=1) ** 2)[cell]
        quantiles[k] = np.quantile(samples, mids, axis=1, method="inverted_cdf").T[cell] * scale
    return Tails(miss, cv2, quantiles)


def tails_from_batch_samples(mean_s: np.ndarray, samples_s: Sequence[Mapping[int, np.ndarray]], qos_s: float,
                             n: int = QUANTILES, fallback: Tails | None = None) -> Tails:
    """The tables from service times measured at a few batches (`samples_s[type]`: batch → seconds, as
    `kairosd profile` records them) around the profile means `mean_s[type, batch 0..B]`: batch b takes
    the measured batch nearest it on a log scale (batch 0 as batch 1), its samples divided by their own
    mean (the shape of that batch's distribution) and times the profile mean at b. A type with no samples
    takes its rows of `fallback` (refused without one). E.g. samples (2, 4, 6, 8 ms) at batch 8, profile
    mean 10 ms at batch 10, QoS 12 ms: the service times 4, 8, 12 and 16 ms, miss 0.25, cv² 0.2."""
    mean = np.asarray(mean_s, dtype=float)
    n_types, n_batches = mean.shape
    if len(samples_s) != n_types:
        raise ConfigError(f"samples for {len(samples_s)} types, profile means for {n_types}")
    miss = np.empty((n_types, n_batches))
    cv2 = np.empty((n_types, n_batches))
    quantiles = np.empty((n_types, n_batches, n))
    log_b = np.log(np.maximum(np.arange(n_batches), 1))
    for k, by_batch in enumerate(samples_s):
        measured = sorted(b for b, v in by_batch.items() if len(v) and float(np.mean(v)) > 0)
        if not measured:
            if fallback is None:
                raise ConfigError(f"type #{k} has no measured samples and no fallback tail")
            miss[k], cv2[k], quantiles[k] = fallback.miss[k], fallback.cv2[k], fallback.quantiles[k]
            continue
        rel = [np.asarray(by_batch[b], dtype=float) / float(np.mean(by_batch[b])) for b in measured]
        nearest = np.abs(log_b[:, None] - np.log(np.maximum(measured, 1))[None, :]).argmin(axis=1)
        for i, r in enumerate(rel):
            at = nearest == i
            svc = mean[k, at][:, None] * r[None, :]
            miss[k, at] = (svc > qos_s).mean(axis=1)
            cv2[k, at] = r.var()
            quantiles[k, at] = mean[k, at][:, None] * sample_cell(r, 1.0, n)[None, :]
    return Tails(miss, cv2, quantiles)


def profile_sigma(mean_s: np.ndarray, p99_s: np.ndarray) -> np.ndarray:
    """σ[type, batch] of the log-normal whose p99/mean is the profile's at each batch (`mean_s`, `p99_s`:
    [type, batch]): exp(σ·z99 − σ²/2) = p99/mean gives σ = z99 − √(z99² − 2·ln(p99/mean)). A p99 at or
    below the mean gives σ = 0 (every query at the mean), a ratio past `MAX_P99_RATIO`, which no
    log-normal reaches, σ = z99 (the widest p99). E.g. p99 = 2 × mean: σ = 0.32, and 2.3% of the queries
    take more than 1.8 × the mean."""
    mean = np.asarray(mean_s, dtype=float)
    p99 = np.asarray(p99_s, dtype=float)
    if mean.shape != p99.shape:
        raise ConfigError(f"the mean and p99 tables differ in shape: {mean.shape} and {p99.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(mean > 0, p99 / mean, 1.0)
    ratio = np.clip(np.nan_to_num(ratio, nan=1.0), 1.0, MAX_P99_RATIO)
    return Z99 - np.sqrt(np.maximum(Z99**2 - 2.0 * np.log(ratio), 0.0))


def lognormal_tails(mean_s: np.ndarray, sigma: np.ndarray, qos_s: float, n: int = QUANTILES) -> Tails:
    """The tables of log-normal service times with means `mean_s[type, batch]` and σ `sigma[type, batch]`,
    in closed form: miss = P(S > QoS), cv² = exp(σ²) − 1, and `n` mid-quantiles (as `quantiles_from_samples`)."""
    mean = np.asarray(mean_s, dtype=float)
    sig = np.asarray(sigma, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        # ln S = ln mean − σ²/2 + σ·Z: S > QoS ⇔ Z > (ln(QoS/mean) + σ²/2)/σ
        z_qos = (np.log(qos_s / np.maximum(mean, 1e-300)) + 0.5 * sig**2) / sig
    miss = np.where(sig > 0, ndtr(-np.nan_to_num(z_qos, nan=np.inf)), (mean > qos_s).astype(float))
    z = ndtri((np.arange(n) + 0.5) / n)
    quantiles = mean[:, :, None] * np.exp(sig[:, :, None] * z[None, None, :] - 0.5 * sig[:, :, None] ** 2)
    return Tails(miss, np.expm1(sig**2), quantiles)


def profile_tails(profiles: ProfileTable, model: str, types: Sequence[str], qos_s: float, n: int = QUANTILES) -> Tails:
    """`Tails` for `types` (in this order) of `model` from the profile: the timed queries `kairosd profile`
    recorded (`profiles.samples`, `tails_from_batch_samples`) for the types that have them, else the
    log-normal of the profile's mean and p99 (`profile_sigma`); `n` quantiles."""
    mi = profiles.model_index(model)
    ti = [profiles.type_index(t) for t in types]
    mean, p99 = profiles.mean_s[mi][ti], profiles.p99_s[mi][ti]
    tails = lognormal_tails(mean, profile_sigma(mean, p99), qos_s, n)
    measured = profiles.samples.get(model, {})
    if not any(measured.get(t) for t in types):
        return tails
    return tails_from_batch_samples(mean, [measured.get(t, {}) for t in types], qos_s, n, fallback=tails)


def profile_service(profiles: ProfileTable, model: str, qos_s: float) -> ServiceModel:
    """The service times a simulation of `model` over `profiles` draws, as `profile_tails` reads them: the
    timed queries where `kairosd profile` recorded them (`ServiceModel("quantiles")`, `SIM_QUANTILES`
    values per batch, log-normal rows for the types without them), else each batch's log-normal of the
    profile's mean and p99 (`profile_sigma`)."""
    if profiles.samples.get(model):
        return ServiceModel("quantiles",
                            quantiles=profile_tails(profiles, model, profiles.types, qos_s, SIM_QUANTILES).quantiles)
    mi = profiles.model_index(model)
    return ServiceModel("lognormal", sigma=profile_sigma(profiles.mean_s[mi], profiles.p99_s[mi]))


def tailed_model(profiles: ProfileTable, model: str, types: Sequence[str], pmf: np.ndarray, qos_s: float,
                 tails: Tails | None, *, tail: bool = True) -> BoundModel:
    """`BoundModel.from_profiles` of `model` over `types` with each type's `tails` (None: no tail modelled,
    the tables alone)."""
    if tails is None:
        return BoundModel.from_profiles(profiles, model, types, pmf, qos_s, tail=tail)
    return BoundModel.from_profiles(profiles, model, types, pmf, qos_s, tail=tail, miss=tails.miss, svc_cv2=tails.cv2,
                                    svc_quantiles=tails.quantiles)

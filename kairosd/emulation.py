"""Service-time tables for emulated instances: what one instance of a measured type takes per query.

Core rule: a query of batch `b` for a served model is timed as its profile model on the emulated type:
one of the samples of `b`'s cell (the smallest measured batch ≥ `b`, else the largest), drawn uniformly
at random, times the cells' mean interpolated at `b` over that cell's mean (`ServiceCells.scale`: 1 on
a measured batch and outside the measured range). So an emulated instance serves every batch as the
simulator draws it: the profile's interpolated mean times a relative sample of the batch's cell.

Two sources of samples (`emulate_data`):
- `"kairos"`: the Kairos authors' raw measurements (`kairosd.workload.load_samples`: total = inference +
  load, the largest of each cell dropped), exactly the samples the simulator draws its noise from;
  grid 10, 20, ..., 1000.
- a directory of `kairosd profile` CSVs (`<profile model>.csv`: instance_type, batch, mean_s, p99_s):
  each measured batch becomes a cell of `LOGNORMAL_POINTS` quantiles of its timed queries where
  `<profile model>.samples.csv` records them (`sample_cell`), else of the log-normal with that mean
  and p99. With z = Φ⁻¹(0.99) ≈ 2.326 and r = ln(p99 / mean), σ solves zσ − σ²/2 = r, i.e.
  σ = z − √(z² − 2r) (σ = z when r > z²/2, the most skewed the fit allows; σ = 0 when p99 ≤ mean), and
  μ = ln(mean) − σ²/2. Example: mean 10 ms, p99 12 ms → r = 0.182, σ = 0.080, samples ~ 10 ms ± 0.8 ms.
  The grid is the measured batches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kairosd.errors import ConfigError

KAIROS_DATA = "kairos"
LOGNORMAL_POINTS = 200  # samples per cell fitted to a profile CSV's mean and p99


@dataclass(frozen=True)
class ServiceCells:
    """One (type, profile model): `samples_s[grid, k]`, the k-th service-time sample at batch `batches[grid]`."""

    profile_model: str
    batches: np.ndarray  # int, ascending
    samples_s: np.ndarray  # float[len(batches), k]
    # per batch 0..batches[-1] (a batch beyond it as the last): its cell (`grid_index`) and the scale of
    # that cell's samples there (`scales`), so that a query's draw is two lookups
    cell: np.ndarray = field(init=False, repr=False, compare=False)
    scale: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cell", _cells_of(self.batches, np.arange(int(self.batches[-1]) + 1)))
        object.__setattr__(self, "scale", scales(self.batches, self.samples_s))

    def _row(self, batch: int) -> int:
        return min(max(int(batch), 0), len(self.cell) - 1)

    def _rows(self, batches: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(batches, dtype=np.int64), 0, len(self.cell) - 1)

    def grid_index(self, batch: int) -> int:
        """The cell a query of `batch` is timed at: the smallest measured batch ≥ `batch`, else the largest."""
        return int(self.cell[self._row(batch)])

    def grid_indices(self, batches: np.ndarray) -> np.ndarray:
        """`grid_index` of every one of `batches`."""
        return self.cell[self._rows(batches)]

    def scale_at(self, batch: int) -> float:
        """What the cell's samples are multiplied by at `batch` (`scales`)."""
        return float(self.scale[self._row(batch)])

    def scales_at(self, batches: np.ndarray) -> np.ndarray:
        """`scale_at` of every one of `batches`."""
        return self.scale[self._rows(batches)]

    def draw(self, batch: int, rng: np.random.Generator) -> float:
        """One service time (seconds) for a query of `batch`."""
        row = self._row(batch)
        cell = self.samples_s[self.cell[row]]
        return float(cell[int(rng.integers(len(cell)))]) * float(self.scale[row])

    def quantile_s(self, batch: int, q: float) -> float:
        """The `q`-quantile (0..1) of the service time at `batch`: of the distribution `draw` samples from
        (the cell's samples, equally likely, scaled), i.e. the smallest sample with a share ≥ q at or below
        it, which is what a long measurement finds. E.g. 99 samples: the 0.99-quantile is the largest (98
        of 99 at or below the second largest are 98.99%), where interpolating between the samples gives a
        point between the two largest."""
        cell = self.samples_s[self.grid_index(batch)]
        return float(np.quantile(cell, q, method="inverted_cdf")) * self.scale_at(batch)


def scales(batches: np.ndarray, samples_s: np.ndarray) -> np.ndarray:
    """Per batch 0..batches[-1]: the cells' means interpolated linearly at the batch (clamped outside the
    measured range, as `profiles` interpolates a profile) over the mean of the batch's cell. E.g. cells at
    batches 10 and 20 with means 5 and 10 ms: batch 15 is timed from the batch-20 cell × 0.75 (7.5 ms on
    average), batch 20 × 1, batch 5 from the batch-10 cell × 1."""
    batches = np.asarray(batches, dtype=np.int64)
    means = np.asarray(samples_s, dtype=float).mean(axis=1)
    b = np.arange(int(batches[-1]) + 1)
    return np.interp(b, batches, means) / means[_cells_of(batches, b)]


def _cells_of(grid: np.ndarray, batches: np.ndarray) -> np.ndarray:
    """The cell of each of `batches` on the measured batches `grid` (ascending): the smallest measured
    batch ≥ it, else the largest."""
    return np.minimum(np.searchsorted(grid, batches, side="left"), len(grid) - 1)


def lognormal_cell(mean_s: float, p99_s: float, points: int = LOGNORMAL_POINTS) -> np.ndarray:
    """`points` evenly spaced quantiles ((k + ½) / points) of the log-normal with this mean and 99th
    percentile (σ: `planner.tails.profile_sigma`, the one the planner and the simulator fit), ascending."""
    from scipy.special import ndtri

    from kairosd.planner.tails import profile_sigma  # here: the planner's tails import this module

    if mean_s <= 0:
        raise ConfigError(f"a profile mean must be > 0 to fit a service distribution, got {mean_s}")
    sigma = float(profile_sigma(np.array([mean_s]), np.array([p99_s]))[0])
    mu = math.log(mean_s) - sigma * sigma / 2.0
    z = ndtri((np.arange(points) + 0.5) / points)
    return np.exp(mu + sigma * z)


def _kairos_cells(emulate: str, profile_models: set[str]) -> dict[str, ServiceCells]:
    from kairosd import workload

    samples = workload.load_samples()
    if emulate not in samples.types:
        raise ConfigError(f"emulate = {emulate!r}: the Kairos data has no such instance type; it has {list(samples.types)}")
    out = {}
    for pm in sorted(profile_models):
        if pm not in samples.models:
            raise ConfigError(f"profile model {pm!r} is not in the Kairos data; it has {list(samples.models)}")
        s = samples.samples_s[samples.models.index(pm), samples.types.index(emulate)]
        out[pm] = ServiceCells(pm, np.asarray(samples.batches, dtype=np.int64), np.array(s))
    return out


def sample_cell(samples_s: np.ndarray, mean_s: float, points: int = LOGNORMAL_POINTS) -> np.ndarray:
    """`points` evenly spaced quantiles ((k + ½) / points) of timed queries' seconds, scaled to the mean
    `mean_s` (a profile row's, which `kairosd profile` may raise above its queries' own to keep the means
    monotone in the batch), ascending."""
    times = np.asarray(samples_s, dtype=float)
    if mean_s <= 0 or len(times) == 0 or times.mean() <= 0:
        raise ConfigError(f"timed queries and a profile mean above 0 are needed for a service distribution, got {mean_s}")
    mids = (np.arange(points) + 0.5) / points
    return np.quantile(times, mids, method="inverted_cdf") * (mean_s / times.mean())


def _csv_cells(emulate: str, directory: Path, profile_models: set[str]) -> dict[str, ServiceCells]:
    """Cells from a `kairosd profile` directory: at each of the type's profiled batches, its timed queries
    (`<model>.samples.csv`, `sample_cell`) where recorded, else the log-normal of the row's mean and p99."""
    from kairosd.profiles import SAMPLES_SUFFIX, read_csv, read_samples_csv

    out = {}
    for pm in sorted(profile_models):
        path = directory / f"{pm}.csv"
        rows = sorted((p for p in read_csv(path) if p.instance_type == emulate), key=lambda p: p.batch)
        if not rows:
            have = sorted({p.instance_type for p in read_csv(path)})
            raise ConfigError(f"{path}: no rows for instance type {emulate!r} (emulate); it has {have}")
        samples_path = directory / f"{pm}{SAMPLES_SUFFIX}"
        timed = read_samples_csv(samples_path).get(emulate, {}) if samples_path.exists() else {}
        cells = np.stack([sample_cell(timed[p.batch], p.mean_s) if p.batch in timed else lognormal_cell(p.mean_s, p.p99_s)
                          for p in rows])
        out[pm] = ServiceCells(pm, np.array([p.batch for p in rows], dtype=np.int64), cells)
    return out


def load_cells(emulate: str, data: str | Path, models: Mapping[str, str]) -> dict[str, ServiceCells]:
    """Service cells per served model: `models` maps each served model to its profile model, `data` is
    "kairos" or a directory of profile CSVs. Raises ConfigError naming what is missing."""
    if not models:
        raise ConfigError("an emulated instance needs [emulation] models: which profile model times each served model")
    profile_models = set(models.values())
    if str(data) == KAIROS_DATA:
        by_profile = _kairos_cells(emulate, profile_models)
    else:
        directory = Path(data)
        if not directory.is_dir():
            raise ConfigError(f"emulate_data = {str(data)!r}: not \"kairos\" and not a directory of profile CSVs")
        by_profile = _csv_cells(emulate, directory, profile_models)
    return {served: by_profile[pm] for served, pm in models.items()}


def parse_model_map(text: str) -> dict[str, str]:
    """`"dlrm=rm2,ncf=ncf"` → {"dlrm": "rm2", "ncf": "ncf"} (the command line's form of [emulation] models)."""
    out: dict[str, str] = {}
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        served, sep, profile = item.partition("=")
        if not sep or not served.strip() or not profile.strip():
            raise ConfigError(f"--models: {item!r} must be SERVED=PROFILE, e.g. dlrm=rm2")
        out[served.strip()] = profile.strip()
    return out

"""Latency profiles: L[type, model](b) tables loaded from CSV, interpolated into dense lookup arrays.

A profile row is (instance_type, batch, mean_s, p99_s): the mean and the 99th-percentile seconds one
instance of `instance_type` takes to serve a query of `batch` samples. Between measured batches the
latency is linear; below the smallest measured batch it is clamped to that batch's latency (a query
never gets cheaper than the smallest measured one); above the largest it is extended with the slope
of the last two measured points.

Beside `<model>.csv`, `kairosd profile` writes `<model>.samples.csv`: every timed query's seconds, a row
per (instance_type, batch) with the times space-separated (`SAMPLES_FIELDS`). The planner reads each
type's tail from them (`kairosd.planner.tails.profile_tails`): the shape of the distribution at the
measured batches, where the mean and p99 alone leave it to a log-normal.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from kairosd.errors import ConfigError

CSV_FIELDS = ("instance_type", "batch", "mean_s", "p99_s")
SAMPLES_FIELDS = ("instance_type", "batch", "samples_s")
SAMPLES_SUFFIX = ".samples.csv"
# one model's timed queries: per type, batch → seconds
Samples = Mapping[str, Mapping[int, np.ndarray]]


@dataclass(frozen=True, slots=True)
class ProfilePoint:
    instance_type: str
    batch: int
    mean_s: float
    p99_s: float


def _rows(path: Path, fields: Sequence[str], what: str) -> list[dict[str, str]]:
    """The rows of a CSV whose header holds `fields` (`what` names the file in the error when it is absent)."""
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = set(fields) - set(reader.fieldnames or ())
            if missing:
                raise ConfigError(f"{path}: missing columns {sorted(missing)}; the header must be {','.join(fields)}")
            return list(reader)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist; measure it with `kairosd profile`") from None


def read_csv(path: str | Path) -> list[ProfilePoint]:
    """Read one model's profile CSV (header: instance_type,batch,mean_s,p99_s)."""
    path = Path(path)
    rows = _rows(path, CSV_FIELDS, "latency profile")
    try:
        points = [ProfilePoint(r["instance_type"], int(r["batch"]), float(r["mean_s"]), float(r["p99_s"])) for r in rows]
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}; batch must be an integer and mean_s/p99_s numbers") from None
    if not points:
        raise ConfigError(f"{path}: no rows")
    return points


def write_csv(path: str | Path, points: Iterable[ProfilePoint]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_FIELDS)
        for p in sorted(points, key=lambda p: (p.instance_type, p.batch)):
            w.writerow([p.instance_type, p.batch, f"{p.mean_s:.9g}", f"{p.p99_s:.9g}"])


def read_samples_csv(path: str | Path) -> dict[str, dict[int, np.ndarray]]:
    """Read one model's timed queries (header: instance_type,batch,samples_s; samples_s space-separated
    seconds, each above 0): type → batch → seconds."""
    path = Path(path)
    out: dict[str, dict[int, np.ndarray]] = {}
    try:
        for r in _rows(path, SAMPLES_FIELDS, "latency samples file"):
            times = np.array([float(x) for x in r["samples_s"].split()], dtype=float)
            if len(times) == 0 or not np.all(np.isfinite(times)) or np.any(times <= 0):
                raise ValueError(f"the samples of {r['instance_type']} at batch {r['batch']} must be seconds above 0")
            out.setdefault(r["instance_type"], {})[int(r["batch"])] = times
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}; batch must be an integer and samples_s space-separated seconds") from None
    return out


def write_samples_csv(path: str | Path, samples: Samples) -> None:
    """Write one model's timed queries (type → batch → seconds), as `read_samples_csv` reads them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(SAMPLES_FIELDS)
        for t in sorted(samples):
            for b in sorted(samples[t]):
                w.writerow([t, b, " ".join(f"{x:.9g}" for x in np.asarray(samples[t][b], dtype=float))])


def _interpolate(batches: np.ndarray, values: np.ndarray, upto: int) -> np.ndarray:
    """Values at every batch 0..upto (index = batch) from measured (batches, values)."""
    order = np.argsort(batches)
    b, v = batches[order].astype(float), values[order].astype(float)
    grid = np.arange(upto + 1, dtype=float)
    out = np.interp(grid, b, v)  # clamps outside [b0, b_last]
    if len(b) >= 2 and upto > b[-1]:
        slope = max((v[-1] - v[-2]) / (b[-1] - b[-2]), 0.0)
        above = grid > b[-1]
        out[above] = v[-1] + slope * (grid[above] - b[-1])
    return out


@dataclass(frozen=True)
class ProfileTable:
    """Dense latency lookup: `mean_s[model, type, batch]` and `p99_s[...]` for batch 0..max_batch.

    Indexing by integer arrays keeps the dispatcher free of Python loops:
    `table.mean_s[q_model[:, None], i_type[None, :], q_batch[:, None]]` is the (queries × instances)
    service-time matrix.
    """

    models: tuple[str, ...]
    types: tuple[str, ...]
    mean_s: np.ndarray
    p99_s: np.ndarray
    measured_batches: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    # per model, the timed queries of `kairosd profile` (`read_samples_csv`), where measured
    samples: Mapping[str, Samples] = field(default_factory=dict, compare=False)

    @property
    def max_batch(self) -> int:
        return self.mean_s.shape[2] - 1

    def model_index(self, model: str) -> int:
        try:
            return self.models.index(model)
        except ValueError:
            raise ConfigError(f"no latency profile for model {model!r}; profiled models: {list(self.models)}") from None

    def type_index(self, instance_type: str) -> int:
        try:
            return self.types.index(instance_type)
        except ValueError:
            raise ConfigError(
                f"no latency profile for instance type {instance_type!r}; profiled types: {list(self.types)}"
            ) from None

    def largest_measured_batch(self, model: str) -> int:
        return max(self.measured_batches.get(model, (self.max_batch,)))

    @staticmethod
    def build(points_by_model: Mapping[str, Sequence[ProfilePoint]], max_batch: int | None = None) -> ProfileTable:
        """Interpolate measured points into a table. Every model must be profiled on the same types."""
        models = tuple(points_by_model)
        if not models:
            raise ConfigError("no latency profiles given")
        types = tuple(sorted({p.instance_type for p in points_by_model[models[0]]}))
        measured = {m: tuple(sorted({p.batch for p in pts})) for m, pts in points_by_model.items()}
        upto = max_batch if max_batch is not None else max(max(b) for b in measured.values())
        mean = np.zeros((len(models), len(types), upto + 1))
        p99 = np.zeros_like(mean)
        for mi, model in enumerate(models):
            pts = points_by_model[model]
            got = {p.instance_type for p in pts}
            if got != set(types):
                raise ConfigError(
                    f"profile of model {model!r} covers types {sorted(got)} but {models[0]!r} covers {list(types)}; "
                    "profile every model on the same instance types"
                )
            for ti, t in enumerate(types):
                rows = [p for p in pts if p.instance_type == t]
                b = np.array([p.batch for p in rows])
                mean[mi, ti] = _interpolate(b, np.array([p.mean_s for p in rows]), upto)
                p99[mi, ti] = _interpolate(b, np.array([max(p.p99_s, p.mean_s) for p in rows]), upto)
        mean.setflags(write=False)
        p99.setflags(write=False)
        return ProfileTable(models, types, mean, p99, measured)

    @staticmethod
    def load_dir(directory: str | Path, models: Sequence[str] | None = None, max_batch: int | None = None) -> ProfileTable:
        """Load `<directory>/<model>.csv` for each model (all profile CSVs in the directory when `models` is
        None), with `<model>.samples.csv` where it exists (`samples`; types the profile lacks refused)."""
        directory = Path(directory)
        names = list(models) if models is not None else sorted(
            p.stem for p in directory.glob("*.csv") if not p.name.endswith(SAMPLES_SUFFIX))
        if not names:
            raise ConfigError(f"no profile CSVs in {directory}; measure them with `kairosd profile`")
        table = ProfileTable.build({m: read_csv(directory / f"{m}.csv") for m in names}, max_batch=max_batch)
        samples = {m: read_samples_csv(directory / f"{m}{SAMPLES_SUFFIX}") for m in names
                   if (directory / f"{m}{SAMPLES_SUFFIX}").exists()}
        for m, by_type in samples.items():
            unknown = sorted(set(by_type) - set(table.types))
            if unknown:
                raise ConfigError(f"{directory / f'{m}{SAMPLES_SUFFIX}'}: types {unknown} have no profile in "
                                  f"{m}.csv; profiled types: {list(table.types)}")
        return replace(table, samples=samples) if samples else table


def sample_cells(batches: np.ndarray, grid_step: int, n_cells: int) -> np.ndarray:
    """The grid cell of measured samples each batch is timed at: ⌈b/grid_step⌉ − 1, clipped to the grid
    (batch 0 and batches past the last cell take the nearest one). E.g. step 10: batches 1–10 → cell 0,
    11–20 → cell 1, as the simulator's "samples" noise draws them."""
    return np.clip(np.ceil(np.asarray(batches) / grid_step).astype(np.intp) - 1, 0, n_cells - 1)

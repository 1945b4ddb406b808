"""The Kairos authors' measured workload (latency profiles, per-sample noise, QoS, batch mix) and batch samplers.

The data stays where it is (`../shared/data/kairos_profiles/`, or `$KAIROSD_KAIROS_DATA`); this module
only reads it. Files used (see the data's README):
- `latency_summary.csv`: per (model, instance, batch) the total (inference + load) latency statistics
  after dropping each cell's largest sample; `total_mean_ms` and `total_p99_ms` become the
  ProfileTable's `mean_s` and `p99_s`.
- `latency_samples.csv`: the 100 raw samples per cell; total = inference_ms + load_ms, paired element
  by element, the largest dropped (as upstream does). The simulator draws service-time noise from them.
- `instance.json`: the authors' types, prices and their 2.5 $/h budget.
The QoS targets are not in the files: the README infers them (they reproduce every `vio_batch` of
`allocator_profile.json` with the median latency), so they are constants here.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kairosd.errors import ConfigError
from kairosd.profiles import ProfilePoint, ProfileTable

if TYPE_CHECKING:
    from kairosd.sim import SimSetup

log = logging.getLogger(__name__)

ENV_VAR = "KAIROSD_KAIROS_DATA"
MODELS: tuple[str, ...] = ("ncf", "rm2", "wnd", "mtwnd", "dien")
QOS_MS: dict[str, float] = {"ncf": 5.0, "rm2": 350.0, "wnd": 25.0, "mtwnd": 25.0, "dien": 35.0}
GRID_STEP = 10  # measured batches are 10, 20, ..., 1000; upstream rounds a batch up to this step
SUMMARY_FILE = "latency_summary.csv"
SAMPLES_FILE = "latency_samples.csv"
INSTANCE_FILE = "instance.json"


def default_data_dir() -> Path:
    """`$KAIROSD_KAIROS_DATA`, else the copy in the repository (`data/kairos_profiles`, the
    authors' files unchanged, MIT), else `../shared/data/kairos_profiles` next to the repository."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parent.parent
    bundled = repo / "data" / "kairos_profiles"
    if (bundled / SUMMARY_FILE).exists():
        return bundled
    return repo.parent / "shared" / "data" / "kairos_profiles"


def _data_file(data_dir: str | Path | None, name: str) -> Path:
    directory = Path(data_dir) if data_dir is not None else default_data_dir()
    path = directory / name
    if not path.is_file():
        if data_dir is not None:
            raise ConfigError(f"{path} not found: a workload in the Kairos authors' layout holds {SUMMARY_FILE}, "
                              f"{SAMPLES_FILE} and {INSTANCE_FILE}")
        raise ConfigError(
            f"Kairos profile data: {path} not found; set {ENV_VAR} to the directory holding "
            f"{SUMMARY_FILE}, {SAMPLES_FILE} and {INSTANCE_FILE} (default: ../shared/data/kairos_profiles)"
        )
    return path


@dataclass(frozen=True)
class LatencySamples:
    """Measured total latencies: `samples_s[model, type, grid, k]` at batch `batches[grid]` (largest sample dropped)."""

    models: tuple[str, ...]
    types: tuple[str, ...]
    batches: np.ndarray
    samples_s: np.ndarray

    def grid_index(self, batch: np.ndarray) -> np.ndarray:
        """The measured batch a query of `batch` is looked up at: rounded up to the grid, clamped to it."""
        step = int(self.batches[1] - self.batches[0]) if len(self.batches) > 1 else 1
        g = np.ceil(np.asarray(batch) / step).astype(np.intp) - int(self.batches[0] // step)
        return np.clip(g, 0, len(self.batches) - 1)

    def relative(self, model: str, types: Sequence[str]) -> np.ndarray:
        """Samples divided by their cell mean, `[type, grid, k]`: multiplicative noise with mean 1."""
        mi = self.models.index(model)
        ti = [self.types.index(t) for t in types]
        s = self.samples_s[mi][ti]
        return s / s.mean(axis=2, keepdims=True)


@dataclass(frozen=True)
class KairosWorkload:
    """Everything the authors measured, ready for the planner and the simulator."""

    profiles: ProfileTable
    samples: LatencySamples
    qos_s: dict[str, float]
    types: tuple[str, ...]
    prices_usd_per_hour: tuple[float, ...]
    max_counts: tuple[int, ...] | None  # instance.json's max_num (None: no cap)
    budget_usd_per_hour: float | None  # instance.json's cost (None: not given)


@functools.lru_cache(maxsize=4)
def _read_summary(path: Path) -> tuple[tuple[str, str, int, float, float], ...]:
    rows = []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        need = {"model", "instance", "batch_size", "total_mean_ms", "total_p99_ms"}
        missing = need - set(reader.fieldnames or ())
        if missing:
            raise ConfigError(f"{path}: missing columns {sorted(missing)}")
        for r in reader:
            try:
                rows.append((r["model"], r["instance"], int(r["batch_size"]), float(r["total_mean_ms"]),
                             float(r["total_p99_ms"])))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{path}, line {reader.line_num}: {exc}") from None
    if not rows:
        raise ConfigError(f"{path}: no latency rows")
    return tuple(rows)


def load_profiles(data_dir: str | Path | None = None, models: Sequence[str] | None = None) -> ProfileTable:
    """A ProfileTable (seconds) from `latency_summary.csv`: mean and p99 of the total latency per cell."""
    path = _data_file(data_dir, SUMMARY_FILE)
    rows = _read_summary(path)
    present = tuple(dict.fromkeys(r[0] for r in rows))
    wanted = tuple(models) if models is not None else present
    unknown = [m for m in wanted if m not in present]
    if unknown:
        raise ConfigError(f"{path}: no rows for models {unknown}; present: {list(present)}")
    points: dict[str, list[ProfilePoint]] = {m: [] for m in wanted}
    for model, inst, batch, mean_ms, p99_ms in rows:
        if model in points:
            points[model].append(ProfilePoint(inst, batch, mean_ms / 1e3, p99_ms / 1e3))
    return ProfileTable.build(points)


@functools.lru_cache(maxsize=8)
def _read_samples(path: Path, models: tuple[str, ...] | None = None) -> LatencySamples:
    cells = _read_cells(path)
    if models is not None:
        cells = {k: v for k, v in cells.items() if k[0] in models}
    if not cells:
        raise ConfigError(f"{path}: no samples" + ("" if models is None else f" of models {list(models)}"))
    return regrid_samples(path, cells)


@functools.lru_cache(maxsize=2)
def _read_cells(path: Path) -> dict[tuple[str, str, int], list[float]]:
    """Every sample's latency (ms) of `path`, per (model, instance, batch); read once per file (cached: do not
    modify)."""
    cells: dict[tuple[str, str, int], list[float]] = {}
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        # a sample's latency: inference_ms + load_ms (the authors' columns), else one total_ms column
        parts = ("inference_ms", "load_ms") if {"inference_ms", "load_ms"} <= set(header) else ("total_ms",)
        try:
            im, ii, ib = (header.index(k) for k in ("model", "instance", "batch_size"))
            cols = [header.index(k) for k in parts]
        except ValueError:
            raise ConfigError(f"{path}: header must contain model,instance,batch_size and inference_ms,load_ms "
                              "(or total_ms)") from None
        for r in reader:
            try:
                cells.setdefault((r[im], r[ii], int(r[ib])), []).append(sum(float(r[c]) for c in cols))
            except (IndexError, ValueError) as exc:
                raise ConfigError(f"{path}, line {reader.line_num}: {exc}") from None
    return cells


def regrid_samples(path: Path, cells: dict[tuple[str, str, int], list[float]]) -> LatencySamples:
    """`LatencySamples` on the grid GRID_STEP, 2·GRID_STEP, … up to the largest measured batch, from the cells
    measured per (model, instance, batch), each cell's largest sample dropped (as upstream does).

    Each (model, instance) is read on its own batches, as the simulator rounds a query's batch up to the grid:
    grid batch g takes the samples of the measured batches in (g − GRID_STEP, g]; with several there (a finer
    grid, e.g. every batch), their samples relative to their own mean, pooled, at the level of the largest;
    with none (a coarser or uneven grid, e.g. 1, 8, 64, 512, or a missing cell), the samples of the first
    measured batch above g (the last one past them). So the authors' grid (10, 20, …, 1000) is kept as it is.
    Cells of different sizes are each cut to the smallest size by evenly spaced order statistics. `path`
    names the file in errors."""
    models = tuple(dict.fromkeys(k[0] for k in cells))
    types = tuple(sorted({k[1] for k in cells}))
    small = [k for k, v in cells.items() if len(v) < 2]
    if small:
        raise ConfigError(f"{path}: every (model, instance, batch) cell needs at least 2 samples; "
                          f"{len(small)} do not, e.g. {small[0]}")
    measured: dict[tuple[str, str], dict[int, np.ndarray]] = {}
    for (m, t, b), vals in cells.items():
        v = np.array(vals) / 1e3
        measured.setdefault((m, t), {})[b] = np.delete(v, v.argmax())
    missing = [(m, t) for m in models for t in types if (m, t) not in measured]
    if missing:
        raise ConfigError(f"{path}: no samples for (model, instance) {missing}; measure every model on every instance")
    top = max(k[2] for k in cells)
    batches = np.arange(1, -(-top // GRID_STEP) + 1) * GRID_STEP
    grid: dict[tuple[str, str], list[np.ndarray]] = {}
    for key, by_batch in measured.items():
        have = np.array(sorted(by_batch))
        cols = []
        for g in batches:
            inside = have[(have > g - GRID_STEP) & (have <= g)]
            if len(inside) == 1:
                cols.append(by_batch[int(inside[0])])
            elif len(inside) > 1:
                level = float(by_batch[int(inside[-1])].mean())
                cols.append(np.concatenate([by_batch[int(b)] / by_batch[int(b)].mean() for b in inside]) * level)
            else:
                cols.append(by_batch[int(have[min(int(np.searchsorted(have, g)), len(have) - 1)])])
        grid[key] = cols
    n = min(len(c) for cols in grid.values() for c in cols)
    out = np.empty((len(models), len(types), len(batches), n))
    for (m, t), cols in grid.items():
        out[models.index(m), types.index(t)] = np.stack(
            [c if len(c) == n else np.sort(c)[((np.arange(n) + 0.5) * len(c) / n).astype(np.intp)] for c in cols])
    out.setflags(write=False)
    return LatencySamples(models, types, batches, out)


def load_samples(data_dir: str | Path | None = None, models: Sequence[str] | None = None) -> LatencySamples:
    """The raw per-query samples (seconds) from `latency_samples.csv`, largest of each cell dropped (of
    `models` alone when given)."""
    return _read_samples(_data_file(data_dir, SAMPLES_FILE), None if models is None else tuple(models))


def load_kairos(data_dir: str | Path | None = None, *, with_samples: bool = True,
                models: Sequence[str] | None = None) -> KairosWorkload:
    """Profiles, samples, QoS targets and the authors' fleet limits (`instance.json`: `ins_types` and `price`,
    optionally `max_num` and `cost`). `qos_s` holds the paper's target of every model it knows; a model of
    the user's own needs one from elsewhere (`--qos-ms`, a `synth.json`). Types that `instance.json` lists
    without latency rows are left out, with a warning; profiled types it does not list are warned of (they
    have no price). `models`: those models alone (e.g. the one a plan is for), so that others measured on
    other types do not get in the way."""
    profiles = load_profiles(data_dir, models)
    samples = (load_samples(data_dir, models) if with_samples
               else LatencySamples((), (), np.zeros(0), np.zeros((0, 0, 0, 0))))
    if with_samples:
        unsampled = [(m, t) for m in profiles.models for t in profiles.types
                     if m not in samples.models or t not in samples.types]
        if unsampled:
            raise ConfigError(f"{_data_file(data_dir, SAMPLES_FILE)}: no samples for (model, instance) {unsampled}, "
                              f"which {SUMMARY_FILE} profiles")
    path = _data_file(data_dir, INSTANCE_FILE)
    try:
        inst = json.loads(path.read_text())
        types = tuple(str(t) for t in inst["ins_types"])
        prices = tuple(float(p) for p in inst["price"])
        max_counts = tuple(int(c) for c in inst["max_num"]) if "max_num" in inst else None
        budget = float(inst["cost"]) if "cost" in inst else None
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path}: expected keys ins_types and price, optionally max_num and cost ({exc})") from None
    if len(prices) != len(types) or (max_counts is not None and len(max_counts) != len(types)):
        raise ConfigError(f"{path}: ins_types, price and max_num must be lists of the same length")
    unprofiled = [t for t in types if t not in profiles.types]
    if unprofiled:
        log.warning("%s lists %s with no rows in %s%s: they are not planned", path, unprofiled, SUMMARY_FILE,
                    "" if models is None else f" for {list(models)}")
        keep = [i for i, t in enumerate(types) if t in profiles.types]
        types, prices = tuple(types[i] for i in keep), tuple(prices[i] for i in keep)
        max_counts = None if max_counts is None else tuple(max_counts[i] for i in keep)
    unpriced = [t for t in profiles.types if t not in types]
    if unpriced:
        log.warning("%s has latency rows for %s, which %s does not list: they have no price there", SUMMARY_FILE,
                    unpriced, path)
    qos = {m: QOS_MS[m] / 1e3 for m in profiles.models if m in QOS_MS}
    return KairosWorkload(profiles, samples, qos, types, prices, max_counts, budget)


# the largest batch either named mix draws (`kairos_batch_mix`: 999 rounded up to 10; `lognormal_batches`' default)
NAMED_MIX_MAX_BATCH = 1000


def kairos_batch_mix(n: int, rng: np.random.Generator, round_to: int = GRID_STEP) -> np.ndarray:
    """The authors' query batch sizes (their `random_samp`, vectorised), rounded up to `round_to`.

    Start from lognormal(μ=5.1, σ=0.2) (median e^5.1 ≈ 164), draw r ∈ {1..99}: r ≤ 8 → U{1..99};
    r ≤ 30 → U{200..599}; r ≤ 35 → U{600..999}; otherwise keep the lognormal value if it is in
    [100, 200], else U{190..199}. Mean ≈ 243, median ≈ 180 after rounding up to 10.
    """
    logn = rng.lognormal(5.1, 0.2, n)
    r = rng.integers(1, 100, n)
    small, mid, large, fill = (rng.integers(lo, hi, n) for lo, hi in ((1, 100), (200, 600), (600, 1000), (190, 200)))
    keep = np.where((logn > 200) | (logn < 100), fill, logn)
    raw = np.where(r <= 8, small, np.where(r <= 30, mid, np.where(r <= 35, large, keep)))
    return (np.ceil(raw / round_to) * round_to).astype(np.int64)


def lognormal_batches(
    n: int,
    rng: np.random.Generator,
    *,
    median: float = 180.0,
    sigma: float = 0.75,
    max_batch: int = NAMED_MIX_MAX_BATCH,
    round_to: int = 1,
) -> np.ndarray:
    """Log-normal batch sizes (production recommendation traffic is log-normal), clipped to [1, max_batch].

    The defaults (median 180, σ 0.75 → mean 180·e^(σ²/2) ≈ 238) resemble the Kairos mix's centre
    with a smooth tail instead of its uniform bands.
    """
    if median <= 0 or sigma < 0 or max_batch < 1 or round_to < 1:
        raise ConfigError("lognormal_batches: median > 0, sigma >= 0, max_batch >= 1 and round_to >= 1 are required")
    raw = np.clip(rng.lognormal(math.log(median), sigma, n), 1, max_batch)
    return np.clip(np.ceil(raw / round_to) * round_to, round_to, max_batch).astype(np.int64)


BATCH_MIXES = ("kairos", "lognormal")


def sample_batches(mix: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw `n` batch sizes from a mix: one named in `BATCH_MIXES`, or a CSV file of observed batches
    (`mix_file_batches`), drawn from its rows with replacement."""
    if mix == "kairos":
        return kairos_batch_mix(n, rng)
    if mix == "lognormal":
        return lognormal_batches(n, rng)
    return rng.choice(mix_file_batches(mix), size=n)


def mix_pmf(mix: str, max_batch: int, *, n: int = 1_000_000, seed: int = 0) -> np.ndarray:
    """P(batch = b) for b = 0..max_batch (the planner's input): estimated from `n` draws of a named mix, or
    the share of each batch among a mix file's rows."""
    from kairosd.planner import batch_pmf

    if mix not in BATCH_MIXES:
        return batch_pmf(mix_file_batches(mix), max_batch)
    return batch_pmf(sample_batches(mix, n, np.random.default_rng(seed)), max_batch)


@functools.lru_cache(maxsize=4)
def mix_file_batches(path: str) -> np.ndarray:
    """The batch sizes of a mix file: a CSV with a `batch` column, one row per query (a request log, or the
    `arrival_s,batch` trace `kairosd simulate --trace` replays); each at least 1."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if "batch" not in (reader.fieldnames or ()):
                raise ConfigError(f"{path}: a batch mix file needs a 'batch' column, one row per query")
            out = []
            for r in reader:
                try:
                    out.append(int(r["batch"]))
                except (TypeError, ValueError) as exc:
                    raise ConfigError(f"{path}, line {reader.line_num}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"batch mix {path!r}: allowed are {list(BATCH_MIXES)} or a readable CSV file ({exc.strerror})"
                          ) from None
    b = np.array(out, dtype=np.int64)
    if len(b) == 0:
        raise ConfigError(f"{path}: no batches")
    if b.min() < 1:
        raise ConfigError(f"{path}: batch sizes must be at least 1, found {int(b.min())}")
    b.setflags(write=False)
    return b


def check_mix(mix: str, max_batch: int) -> None:
    """Refuse a mix whose batches exceed the model's largest profiled batch `max_batch`
    (`ProfileTable.largest_measured_batch`): a mix file's largest row, a named mix's `NAMED_MIX_MAX_BATCH`.
    The planner would otherwise count those queries as the largest profiled batch (`batch_pmf` clamps
    them), and plan a lighter mix than the one served."""
    top = NAMED_MIX_MAX_BATCH if mix in BATCH_MIXES else int(mix_file_batches(mix).max())
    if top > max_batch:
        raise ConfigError(f"{mix}: batches up to {top}, beyond the largest profiled batch, {max_batch}: profile "
                          "larger batches (kairosd profile times each model's max_batch_size), or plan a mix file "
                          "within them (--mix FILE.csv)")


def sim_setup(
    wl: KairosWorkload,
    model: str,
    *,
    types: Sequence[str] | None = None,
    policy: str = "kairos",
    policy_params: dict[str, object] | None = None,
    n_queries: int = 2000,
    seed: int = 0,
    mix: str = "kairos",
    noise: str = "samples",
    rel_tol: float = 0.01,
    qos_s: float | None = None,
) -> SimSetup:
    """A simulator setup on the authors' data: Poisson arrivals, `mix` batches, measured-sample noise; QoS
    `qos_s`, else the model's in `wl.qos_s`."""
    from kairosd.sim import ServiceModel, SimSetup, poisson_stream

    if model not in wl.profiles.models:
        raise ConfigError(f"unknown model {model!r}; the data has {list(wl.profiles.models)}")
    if qos_s is None and model not in wl.qos_s:
        raise ConfigError(f"no QoS target for model {model!r}: give one (e.g. --qos-ms)")
    rng = np.random.default_rng(seed)
    stream = poisson_stream(sample_batches(mix, n_queries, rng), seed + 1)
    if noise == "samples":
        service = ServiceModel("samples", wl.samples.relative(model, wl.profiles.types), GRID_STEP)
    else:
        service = ServiceModel(noise, cv=0.1 if noise == "lognormal" else 0.0)
    return SimSetup(
        profiles=wl.profiles,
        model=model,
        types=tuple(types) if types is not None else wl.types,
        policy=policy,
        policy_params=dict(policy_params or {}),
        qos_s=wl.qos_s[model] if qos_s is None else qos_s,
        stream=stream,
        service=service,
        rel_tol=rel_tol,
    )

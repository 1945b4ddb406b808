"""Synthetic planning workloads in the Kairos authors' format, derived from their measured samples (pure, seeded).

Core rule: a workload is one of the authors' models served by 3-5 instance types, each derived from
one measured type (the "parent") by transforming every measured sample of that model on the parent:
    inference' = inference × a × (b / 200)^γ,   load' = load × c × (b / 200)^γ
(a, c: scale factors on inference and data-loading time; γ: a batch-dependent factor that tilts the
latency curve around the mix's centre, batch 200), then a heavy tail: each sample independently,
with probability `tail_share`, becomes `tail_factor` × its cell's median total (inference and load
scaled alike). Example: a parent cell with median 4 ms, a = 1.5, c = 1, γ = 0 and tail factor 5
keeps most samples near 1.5× their inference time plus the same load time, and puts about
tail_share of them at ≈ 5 × the new median. Prices: the parent's price × (a·c)^(−1/2) × a
log-normal perturbation (σ 0.25), so a faster derived type costs more, but not in proportion.
About 60% of the workloads include one type derived from the GPU type (g4dn.xlarge), the others are
CPU-only fleets. At least one type has no tail. The batch mix is the authors' (`kairos`) or the
log-normal one. The QoS target is the model's target from the data × U(0.7, 1.6), raised when no
type meets it at p99 on 99.5% of the mix (to 1.05 × the p99 latency at which the best type does);
the budget is the dearest price × U(2, 5), lowered by 10% steps until at most `max_configs` maximal
configurations fit.

Two forms, the same numbers: `synth_workload(seed)` returns a `SynthWorkload` in memory (its
`workload` a `KairosWorkload` with one model and the synthetic types); `write_workload(sw, dir)`
writes `latency_summary.csv`, `latency_samples.csv` and `instance.json` as the authors lay them out
(loadable by `kairosd.workload.load_kairos(dir)`, which keeps the model's name and so its paper QoS
target) plus `synth.json` with the drawn QoS target, budget, mix and the per-type recipe;
`load_workload(dir)` reads both back into a `SynthWorkload`.

Seeds: `TUNING_SEEDS` are for developing the planner; `HELDOUT_SEEDS` (disjoint) are what
`bench/planner_robust.py` judges on.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kairosd.errors import ConfigError
from kairosd.profiles import ProfilePoint, ProfileTable
from kairosd.workload import (
    INSTANCE_FILE,
    QOS_MS,
    SAMPLES_FILE,
    SUMMARY_FILE,
    KairosWorkload,
    LatencySamples,
    default_data_dir,
    load_kairos,
    mix_pmf,
)

TUNING_SEEDS = range(0, 1000)
HELDOUT_SEEDS = range(1000, 2000)
GPU_PARENT = "g4dn.xlarge"
CPU_PARENTS = ("c5n.2xlarge", "r5n.large", "t3.xlarge")
PARENT_PRICES = {"g4dn.xlarge": 0.526, "c5n.2xlarge": 0.432, "r5n.large": 0.149, "t3.xlarge": 0.1664}
MIXES = ("kairos", "lognormal")
REF_BATCH = 200  # the batch around which γ tilts the latency curve
MAX_CONFIGS = 80
META_FILE = "synth.json"
MIN_BEST_COVERAGE = 0.995  # the best type must meet QoS at p99 on this share of the mix


@dataclass(frozen=True)
class SynthType:
    """How one synthetic type derives from a measured one (see the module docstring)."""

    name: str
    parent: str
    inference_scale: float
    load_scale: float
    batch_exponent: float
    tail_share: float
    tail_factor: float
    price_usd_per_hour: float


@dataclass(frozen=True)
class SynthWorkload:
    """One synthetic planning problem: serve `model` (the parent model's name) on `types` within
    `budget_usd_per_hour` with p99 ≤ `qos_s`, batches drawn from `mix`. `workload` carries the
    profiles, samples, prices and this QoS target (as `workload.qos_s[model]`)."""

    seed: int
    model: str
    qos_s: float
    budget_usd_per_hour: float
    mix: str
    types: tuple[SynthType, ...]
    workload: KairosWorkload
    inference_ms: np.ndarray = dataclasses.field(compare=False, repr=False)  # [type in `types` order, grid, k]
    load_ms: np.ndarray = dataclasses.field(compare=False, repr=False)


@dataclass(frozen=True)
class _Raw:
    """Measured samples of every cell, inference and load apart: `[model, type, grid, k]` in ms."""

    models: tuple[str, ...]
    types: tuple[str, ...]
    batches: np.ndarray
    inference_ms: np.ndarray
    load_ms: np.ndarray


@functools.lru_cache(maxsize=2)
def _read_raw(path: Path) -> _Raw:
    cells: dict[tuple[str, str, int], list[tuple[int, float, float]]] = {}
    with path.open(newline="") as f:
        for r in csv.DictReader(f):
            cells.setdefault((r["model"], r["instance"], int(r["batch_size"])), []).append(
                (int(r["sample_idx"]), float(r["inference_ms"]), float(r["load_ms"])))
    models = tuple(dict.fromkeys(k[0] for k in cells))
    types = tuple(sorted({k[1] for k in cells}))
    batches = np.array(sorted({k[2] for k in cells}))
    n = len(next(iter(cells.values())))
    inf = np.empty((len(models), len(types), len(batches), n))
    load = np.empty_like(inf)
    bidx = {int(b): i for i, b in enumerate(batches)}
    for (m, t, b), rows in cells.items():
        rows.sort()
        idx = (models.index(m), types.index(t), bidx[b])
        inf[idx] = [r[1] for r in rows]
        load[idx] = [r[2] for r in rows]
    return _Raw(models, types, batches, inf, load)


def read_raw(data_dir: str | Path | None = None) -> _Raw:
    """The authors' samples with inference and load time apart (cached per path)."""
    directory = Path(data_dir) if data_dir is not None else default_data_dir()
    path = directory / SAMPLES_FILE
    if not path.is_file():
        raise ConfigError(f"synthetic workloads need the authors' samples: {path} not found")
    return _read_raw(path)


def _transform(raw: _Raw, model: str, t: SynthType, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Inference and load samples [grid, k] (ms) of synthetic type `t` (module docstring's rule)."""
    mi, pi = raw.models.index(model), raw.types.index(t.parent)
    tilt = (raw.batches / REF_BATCH) ** t.batch_exponent
    inf = raw.inference_ms[mi, pi] * t.inference_scale * tilt[:, None]
    load = raw.load_ms[mi, pi] * t.load_scale * tilt[:, None]
    if t.tail_share > 0:
        total = inf + load
        hit = rng.random(total.shape) < t.tail_share
        factor = np.where(hit, t.tail_factor * np.median(total, axis=1, keepdims=True) / total, 1.0)
        inf, load = inf * factor, load * factor
    return inf, load


def _drop_max(total: np.ndarray) -> np.ndarray:
    """Each row without its largest sample, as the authors' code and `kairosd.workload` drop it."""
    keep = np.ones(total.shape, dtype=bool)
    keep[np.arange(len(total)), total.argmax(axis=1)] = False
    return total[keep].reshape(total.shape[0], total.shape[1] - 1)


def _assemble(model: str, names: tuple[str, ...], batches: np.ndarray, inf: np.ndarray, load: np.ndarray,
              prices: tuple[float, ...], budget: float, qos_s: float) -> KairosWorkload:
    """A KairosWorkload from samples [type, grid, k] (ms) as `load_kairos` would read them from files."""
    order = sorted(range(len(names)), key=lambda i: names[i])  # the loader sorts types by name
    kept = np.stack([_drop_max(inf[i] + load[i]) for i in order]) / 1e3  # [type, grid, k-1] seconds
    points = [ProfilePoint(names[i], int(b), float(kept[o, g].mean()), float(np.percentile(kept[o, g], 99)))
              for o, i in enumerate(order) for g, b in enumerate(batches)]
    profiles = ProfileTable.build({model: points})
    kept.setflags(write=False)
    samples = LatencySamples((model,), tuple(names[i] for i in order), np.asarray(batches), kept[None])
    return KairosWorkload(profiles, samples, {model: float(qos_s)}, names, prices, (1000,) * len(names), float(budget))


def _coverage_qos(wl: KairosWorkload, model: str, pmf: np.ndarray, share: float) -> float:
    """The lowest QoS at which some type's p99 is within QoS on `share` of the mix (by batch order)."""
    p99 = wl.profiles.p99_s[wl.profiles.model_index(model)][:, : len(pmf)]
    p = pmf[: p99.shape[1]]
    best = math.inf
    for row in p99:
        need = np.maximum.accumulate(row)  # QoS must cover every batch up to the share's quantile
        cdf = np.cumsum(p)
        q = int(np.searchsorted(cdf, share - 1e-12))
        best = min(best, float(need[min(q, len(need) - 1)]))
    return best


def synth_workload(seed: int, *, data_dir: str | Path | None = None, max_configs: int = MAX_CONFIGS) -> SynthWorkload:
    """The synthetic workload of `seed` (module docstring): the same seed gives the same workload."""
    from kairosd.planner import enumerate_configs

    raw = read_raw(data_dir)
    rng = np.random.default_rng([seed, 17])
    model = str(rng.choice(raw.models))
    gpu = bool(rng.random() < 0.6)
    n_cpu = int(rng.integers(2, 5)) if gpu else int(rng.integers(3, 6))
    parents = ([GPU_PARENT] if gpu else []) + [str(p) for p in rng.choice(CPU_PARENTS, size=n_cpu)]
    tailed = rng.random(len(parents)) < 0.4
    if tailed.all():
        tailed[int(rng.integers(len(parents)))] = False
    specs = []
    for i, parent in enumerate(parents):
        a = float(np.exp(rng.uniform(math.log(0.5), math.log(2.0))))
        c = float(np.exp(rng.uniform(math.log(0.5), math.log(2.0))))
        gamma = float(rng.uniform(-0.25, 0.25))
        share = float(rng.uniform(0.003, 0.03)) if tailed[i] else 0.0
        factor = float(rng.uniform(2.0, 6.0)) if tailed[i] else 1.0
        price = PARENT_PRICES[parent] * (a * c) ** -0.5 * float(np.exp(rng.normal(0.0, 0.25)))
        kind = "gpu" if parent == GPU_PARENT else "cpu"
        specs.append(SynthType(f"{kind}{i}.s{seed}", parent, a, c, gamma, share, factor, round(price, 4)))
    mix = str(rng.choice(MIXES, p=[0.7, 0.3]))
    tails = [_transform(raw, model, t, np.random.default_rng([seed, 29, i])) for i, t in enumerate(specs)]
    inf = np.stack([x[0] for x in tails])
    load = np.stack([x[1] for x in tails])
    names = tuple(t.name for t in specs)
    prices = tuple(t.price_usd_per_hour for t in specs)
    wl = _assemble(model, names, raw.batches, inf, load, prices, 1.0, 1.0)
    pmf = mix_pmf(mix, wl.profiles.max_batch, n=200_000, seed=0)
    qos_s = QOS_MS[model] / 1e3 * float(rng.uniform(0.7, 1.6))
    floor = _coverage_qos(wl, model, pmf, MIN_BEST_COVERAGE)
    if floor > qos_s:
        qos_s = 1.05 * floor
    budget = max(prices) * float(rng.uniform(2.0, 5.0))
    while len(enumerate_configs(prices, budget)) > max_configs:
        budget *= 0.9
    budget = round(budget, 4)
    wl = dataclasses.replace(wl, qos_s={model: round(qos_s, 6)}, budget_usd_per_hour=budget)
    return SynthWorkload(seed, model, round(qos_s, 6), budget, mix, tuple(specs), wl, inf, load)


def write_workload(sw: SynthWorkload, directory: str | Path) -> Path:
    """Write `sw` in the authors' layout (+ `synth.json`) under `directory` (created); returns it.
    Samples are written with 6 decimals of a millisecond."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    inf, load = sw.inference_ms, sw.load_ms
    batches = sw.workload.samples.batches
    names = tuple(t.name for t in sw.types)
    with (out / SAMPLES_FILE).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "instance", "batch_size", "sample_idx", "inference_ms", "load_ms"])
        for i, name in enumerate(names):
            for g, b in enumerate(batches):
                for k in range(inf.shape[2]):
                    w.writerow([sw.model, name, int(b), k, f"{inf[i, g, k]:.6f}", f"{load[i, g, k]:.6f}"])
    with (out / SUMMARY_FILE).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "instance", "batch_size", "n_used", "total_mean_ms", "total_median_ms", "total_p99_ms",
                    "total_min_ms", "total_max_ms", "inference_mean_ms", "load_mean_ms", "dropped_max_total_ms"])
        for i, name in enumerate(names):
            for g, b in enumerate(batches):
                tot = np.round(inf[i, g], 6) + np.round(load[i, g], 6)
                top = int(tot.argmax())
                kept = np.delete(tot, top)
                w.writerow([sw.model, name, int(b), len(kept), f"{kept.mean():.6f}", f"{np.median(kept):.6f}",
                            f"{np.percentile(kept, 99):.6f}", f"{kept.min():.6f}", f"{kept.max():.6f}",
                            f"{np.delete(inf[i, g], top).mean():.6f}", f"{np.delete(load[i, g], top).mean():.6f}",
                            f"{tot[top]:.6f}"])
    instance: dict[str, object] = {"ins_types": list(names)}
    if sw.workload.max_counts is not None:
        instance["max_num"] = list(sw.workload.max_counts)
    instance.update(price=list(sw.workload.prices_usd_per_hour), cost=sw.budget_usd_per_hour)
    (out / INSTANCE_FILE).write_text(json.dumps(instance, indent=1))
    (out / META_FILE).write_text(json.dumps({
        "seed": sw.seed, "model": sw.model, "qos_ms": sw.qos_s * 1e3, "budget_usd_per_hour": sw.budget_usd_per_hour,
        "mix": sw.mix, "types": [dataclasses.asdict(t) for t in sw.types]}, indent=1))
    return out


@dataclasses.dataclass(frozen=True)
class Description:
    """What a workload directory's `synth.json` says of it: its model, QoS target and batch mix, and the
    rest of the file (seed, budget, types) as read."""

    model: str
    qos_s: float
    mix: str
    meta: dict[str, Any]


def describe(directory: str | Path) -> Description | None:
    """The description `write_workload` leaves in `directory` (`synth.json`), None when it has none; a file
    without a model, QoS target and known mix is refused, naming it."""
    path = Path(directory) / META_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
        out = Description(str(meta["model"]), float(meta["qos_ms"]) / 1e3, str(meta["mix"]), meta)
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: not a synthetic workload's description ({exc}); remove it or fix it") from None
    if out.mix not in MIXES:
        raise ConfigError(f"{path}: unknown batch mix {out.mix!r}; allowed: {', '.join(MIXES)}")
    return out


def load_workload(directory: str | Path) -> SynthWorkload:
    """A workload written by `write_workload`: `load_kairos(directory)` with the drawn QoS from `synth.json`."""
    directory = Path(directory)
    d = describe(directory)
    if d is None:
        raise ConfigError(f"{directory / META_FILE}: no synthetic workload's description there")
    meta, model, qos_s = d.meta, d.model, d.qos_s
    try:
        types = tuple(SynthType(**t) for t in meta["types"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{directory / META_FILE}: not a synthetic workload's description ({exc})") from None
    wl = load_kairos(directory)
    wl = dataclasses.replace(wl, qos_s={model: qos_s})
    inf, load = _read_pairs(directory / SAMPLES_FILE, model, tuple(t.name for t in types))
    return SynthWorkload(int(meta["seed"]), model, qos_s, float(meta["budget_usd_per_hour"]), d.mix, types, wl,
                         inf, load)


def _read_pairs(path: Path, model: str, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    raw = _read_raw(path)
    idx = [raw.types.index(n) for n in names]
    mi = raw.models.index(model)
    return raw.inference_ms[mi][idx], raw.load_ms[mi][idx]

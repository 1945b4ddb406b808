"""The observed-load window: per model, the query arrival rate and batch-size pmf of the last `window_s`.

Core rule. Queries are counted in one-second buckets, each a histogram model × batch (batch clipped to
1..max_batch). The window is the B = ceil(window_s) buckets ending with the current second, so it
covers from lo = max(start, floor(now) − B + 1) to now: rate_qps = queries in those buckets /
max(now − lo, 1 s). The pmf is the window's histogram normalised, blended with the prior while the
window holds fewer than `min_queries` queries of the model: pmf = w·observed + (1 − w)·prior with
w = n / min_queries. E.g. window_s 60, the daemon started 20.5 s ago and saw 410 queries of a model:
rate = 410 / 20.5 = 20 qps; with min_queries 200 the pmf is the observed one (w = 1).

`record` is called on every query: it touches one Python list cell (the current second's histogram) and,
once per second, folds that second into a fixed ring of B numpy histograms, overwriting the second that
left the window. Memory is B × models × (max_batch + 1) counts whatever the rate. Times are seconds on
the caller's clock (monotonic, ≥ 0); rates are queries per second.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from kairosd.planner.demand import ModelDemand


def _fit_pmf(p: np.ndarray, max_batch: int) -> np.ndarray:
    """`p` on 0..max_batch (mass above max_batch moved onto it), normalised."""
    p = np.asarray(p, dtype=np.float64).ravel()
    if p.size == 0 or np.any(p < 0) or not np.isfinite(p).all() or p.sum() <= 0:
        raise ValueError("LoadWindow: a prior pmf must be finite, non-negative and not all zero")
    out = np.zeros(max_batch + 1)
    n = min(p.size, max_batch + 1)
    out[:n] = p[:n]
    out[max_batch] += p[max_batch + 1 :].sum()
    return out / out.sum()


class LoadWindow:
    """Per-model arrival counts and batch histograms over the last `window_s` seconds (see the module doc)."""

    def __init__(
        self,
        models: Sequence[str],
        max_batch: int,
        window_s: float = 60.0,
        prior_pmf: Mapping[str, np.ndarray] | None = None,
        min_queries: int = 200,
        start_s: float | None = None,  # when observation began; default: the first record() or demand()
    ) -> None:
        if not models or max_batch < 1 or not window_s > 0 or min_queries < 0:
            raise ValueError("LoadWindow: at least one model, max_batch >= 1, window_s > 0 and min_queries >= 0 are required")
        unknown = sorted(set(prior_pmf or {}) - set(models))
        if unknown:
            raise ValueError(f"LoadWindow: prior pmf for unknown models {unknown}; models: {list(models)}")
        self.models = tuple(models)
        self.max_batch = max_batch
        self.window_s = float(window_s)
        self.min_queries = min_queries
        self.prior_pmf = {m: _fit_pmf(p, max_batch) for m, p in (prior_pmf or {}).items()}
        self.buckets = math.ceil(window_s)
        self._stride = max_batch + 1
        self._ring = np.zeros((self.buckets, len(self.models), self._stride), dtype=np.int64)
        self._ring_sec = np.full(self.buckets, np.iinfo(np.int64).min, dtype=np.int64)  # the second each slot holds
        self._cur: list[int] = [0] * (len(self.models) * self._stride)  # the current second, flat model × batch
        self._cur_sec = -1  # the current second (-1: nothing recorded yet)
        self._start_s = start_s

    def record(self, model_idx: int, batch: int, now_s: float) -> None:
        """Count one query of `self.models[model_idx]` with `batch` samples arriving at `now_s`. O(1)."""
        sec = int(now_s)
        if sec > self._cur_sec:
            self._advance(sec, now_s)
        if batch > self.max_batch:
            batch = self.max_batch
        elif batch < 1:
            batch = 1
        self._cur[model_idx * self._stride + batch] += 1

    def _advance(self, sec: int, now_s: float) -> None:
        """Fold the current second into the ring (overwriting the slot's old second) and start `sec`."""
        if self._start_s is None:
            self._start_s = now_s
        if self._cur_sec >= 0:
            slot = self._cur_sec % self.buckets
            self._ring[slot] = np.asarray(self._cur, dtype=np.int64).reshape(len(self.models), self._stride)
            self._ring_sec[slot] = self._cur_sec
            self._cur = [0] * len(self._cur)
        self._cur_sec = sec

    def histogram(self, now_s: float) -> np.ndarray:
        """Queries per model × batch size (0..max_batch) in the window ending at `now_s`."""
        return self._last_seconds(now_s, self.buckets)

    def _last_seconds(self, now_s: float, k: int) -> np.ndarray:
        """Queries per model × batch size in the `k` seconds (buckets) ending with the one of `now_s`."""
        sec = int(now_s)
        first = sec - k + 1
        live = (self._ring_sec >= first) & (self._ring_sec <= sec)
        hist = self._ring[live].sum(axis=0) if live.any() else np.zeros((len(self.models), self._stride), dtype=np.int64)
        if first <= self._cur_sec <= sec:
            hist = hist + np.asarray(self._cur, dtype=np.int64).reshape(len(self.models), self._stride)
        return hist

    def covered_s(self, now_s: float) -> float:
        """The seconds the window covers at `now_s`: from max(start, its first bucket) to now, at least 1."""
        if self._start_s is None:
            self._start_s = now_s
        lo = max(self._start_s, float(int(now_s) - self.buckets + 1))
        return max(now_s - lo, 1.0)

    def recent_rates(self, now_s: float, seconds: float) -> np.ndarray:
        """Per model, the arrival rate (queries/s) over the last `seconds` (at most the window, at
        least 1 s, and no further back than the start)."""
        if self._start_s is None:
            self._start_s = now_s
        k = min(max(math.ceil(seconds), 1), self.buckets)
        counts = self._last_seconds(now_s, k).sum(axis=1)
        span_s = max(now_s - max(self._start_s, float(int(now_s) - k + 1)), 1.0)
        return np.asarray(counts, dtype=float) / span_s

    def demand(self, now_s: float) -> list[ModelDemand]:
        """Per model, in `models` order: the arrival rate (queries/s) and the batch pmf of the window.
        A model with no queries in the window and no prior gets a uniform pmf over 1..max_batch."""
        hist = self.histogram(now_s)
        span_s = self.covered_s(now_s)
        out: list[ModelDemand] = []
        for i, model in enumerate(self.models):
            n = int(hist[i].sum())
            prior = self.prior_pmf.get(model)
            if prior is None:
                prior = np.zeros(self._stride)
                prior[1:] = 1.0 / self.max_batch
            if n == 0:
                pmf = prior.copy()
            else:
                w = 1.0 if n >= self.min_queries or model not in self.prior_pmf else n / self.min_queries
                pmf = w * (hist[i] / n) + (1.0 - w) * prior
            out.append(ModelDemand(model, n / span_s, pmf))
        return out

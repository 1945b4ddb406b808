"""The bound's dual vectors (`bounds.dual_vectors`, HiGHS solves per subset of types present) computed
on forked worker processes, one subset at a time: with many types they are most of a plan's ranking.
Each subset's vectors are a pure function of the BoundModel, so a worker computes exactly what the
parent would and sends back only arrays.

The queue-aware estimate stays serial: it is vectorised over the configurations of a base type, with a
cost per bisection step that a split of the rows would pay once per worker.

The workers are forked: they inherit the model without pickling it. Fork is for a command-line plan
(`kairosd plan`); a daemon's planner, which runs beside an event loop and its threads, stays serial
(`workers` 1)."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from kairosd.planner.bounds import BoundModel, config_masks, dual_vectors

# below this many subsets a pool's start costs more than it saves
MIN_PARALLEL_MASKS = 16
# pieces per worker, so that a worker that drew the large subsets does not hold the others up
PIECES_PER_WORKER = 8

_MODEL: BoundModel | None = None


def _set_model(bm: BoundModel) -> None:
    global _MODEL
    _MODEL = bm


def _duals_of(masks: list[int]) -> list[np.ndarray]:
    assert _MODEL is not None  # set by the pool's initializer
    return [dual_vectors(_MODEL, m) for m in masks]


def prefill_duals(bm: BoundModel, configs: np.ndarray, workers: int) -> None:
    """Compute the dual vectors of every subset of types present in `configs` that `bm` has not cached yet,
    on `workers` forked processes, and cache them on `bm` (`upper_bound` then only reads them). Serial
    (nothing done here: `upper_bound` computes them as it needs them) with fewer than MIN_PARALLEL_MASKS
    subsets or one worker."""
    if workers <= 1:
        return
    masks = [int(m) for m in np.unique(config_masks(configs, len(bm.types))) if m and int(m) not in bm._duals]
    if len(masks) < MIN_PARALLEL_MASKS:
        return
    # the subsets of most types first (their LPs take longest), dealt round robin so each piece has some
    masks.sort(key=lambda m: -bin(m).count("1"))
    n_pieces = min(len(masks), workers * PIECES_PER_WORKER)
    pieces = [masks[i::n_pieces] for i in range(n_pieces)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=_set_model,
                             initargs=(bm,)) as pool:
        for piece, vectors in zip(pieces, pool.map(_duals_of, pieces), strict=True):
            bm._duals.update(zip(piece, vectors, strict=True))

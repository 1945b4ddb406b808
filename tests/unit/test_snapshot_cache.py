"""Cached snapshots of a fresh query against free columns: equal to a fresh build, reused, read-only, bounded."""

from __future__ import annotations

import numpy as np
import pytest

from kairosd.snapshot_cache import FreshQuerySnapshots


def test_equal_to_a_fresh_build_and_reused() -> None:
    cache = FreshQuerySnapshots()
    snap = cache.get(1, 7, 0.03, [2, 0, 2])
    assert snap.q_model.tolist() == [1] and snap.q_batch.tolist() == [7]
    assert snap.q_waited_s.tolist() == [0.0] and snap.q_qos_s.tolist() == [0.03]
    assert snap.i_type.tolist() == [2, 0, 2] and snap.i_type.dtype == np.intp
    assert snap.i_busy_s.tolist() == [0.0] * 3 and snap.i_free.tolist() == [True] * 3
    assert cache.get(1, 7, 0.03, [2, 0, 2]) is snap
    assert cache.get(1, 8, 0.03, [2, 0, 2]) is not snap and len(cache) == 2


def test_arrays_are_read_only() -> None:
    snap = FreshQuerySnapshots().get(0, 1, 0.01, [0])
    with pytest.raises(ValueError):
        snap.i_free[0] = False


def test_bounded() -> None:
    cache = FreshQuerySnapshots(limit=4)
    for b in range(10):
        cache.get(0, b, 0.01, [0])
    assert len(cache) <= 4

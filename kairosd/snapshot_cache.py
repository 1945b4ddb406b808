"""Snapshots of the most common dispatch round, built once and reused.

Below saturation almost every round matches one query that arrived in this very loop iteration
(it has waited 0 s) against instances that are all free: the same model, the same few batch sizes,
the same columns, round after round. Building its seven small arrays anew costs more than the
matching itself (numpy's per-call overhead, paid cache-cold between network events), so such a
snapshot is looked up by (model, batch, column types) instead. Its arrays are read-only: a policy
reads its snapshot, never writes it.
"""

from __future__ import annotations

import numpy as np

from kairosd.dispatch import Snapshot


def _read_only(values: list[float] | list[int] | list[bool], dtype: type) -> np.ndarray:
    a = np.array(values, dtype=dtype)
    a.flags.writeable = False
    return a


class FreshQuerySnapshots:
    """`get(model_idx, batch, qos_s, types)`: the snapshot of one query that has waited 0 s against
    free columns of `types`. Bounded: cleared when it holds `limit` snapshots."""

    def __init__(self, limit: int = 4096) -> None:
        self._snapshots: dict[tuple[int, int, tuple[int, ...]], Snapshot] = {}
        self._limit = limit

    def get(self, model_idx: int, batch: int, qos_s: float, types: list[int]) -> Snapshot:
        key = (model_idx, batch, tuple(types))
        snap = self._snapshots.get(key)
        if snap is None:
            if len(self._snapshots) >= self._limit:
                self._snapshots.clear()
            n = len(types)
            snap = self._snapshots[key] = Snapshot(
                q_model=_read_only([model_idx], np.intp),
                q_batch=_read_only([batch], np.intp),
                q_waited_s=_read_only([0.0], np.float64),
                q_qos_s=_read_only([qos_s], np.float64),
                i_type=_read_only(types, np.intp),
                i_busy_s=_read_only([0.0] * n, np.float64),
                i_free=_read_only([True] * n, np.bool_),
            )
        return snap

    def __len__(self) -> int:
        return len(self._snapshots)

"""The most common dispatch round, built once and reused: its snapshot and, for a stateless policy,
its decision.

Below saturation almost every round matches one query that arrived in this very loop iteration
(it has waited 0 s) against instances that are all free: the same model, the same few batch sizes,
the same columns, round after round. Building its seven small arrays anew and running the policy on
them costs more than everything else kairosd does for the query (numpy's per-call overhead, paid
cache-cold between network events: ~25 µs for the Kairos policy alone), so such a round is looked up
by (model, batch, column types) instead. The arrays are read-only (a policy reads its snapshot, never
writes it); the decision is reused only for policies whose answer depends on the snapshot alone
(`STATELESS_POLICIES`; round robin keeps a cursor, so it is asked every time).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kairosd.dispatch import Snapshot

# Policies whose assignment is a function of the snapshot alone (no state kept between calls).
# tests/unit/test_snapshot_cache.py checks each of them, and that every policy is classified here.
STATELESS_POLICIES = frozenset({"kairos", "fcfs", "fastest_free", "earliest_finish", "threshold"})
STATEFUL_POLICIES = frozenset({"round_robin"})


def _read_only(values: list[float] | list[int] | list[bool], dtype: type) -> np.ndarray:
    a: np.ndarray = np.array(values, dtype=dtype)
    a.flags.writeable = False
    return a


@dataclass(slots=True)
class FreshRound:
    """A one-query round's snapshot, and the policy's decision as (rows, columns) once known."""

    snap: Snapshot
    decision: tuple[list[int], list[int]] | None = None
    hold_s: float = 0.0  # the decision also holds for a query that waited less than this (the policy's `hold_s`)


class FreshRounds:
    """`get(model_idx, batch, qos_s, types)`: the round of one query that has waited 0 s against free
    columns of `types`. Bounded: cleared when it holds `limit` rounds."""

    def __init__(self, limit: int = 4096) -> None:
        self._rounds: dict[tuple[int, int, tuple[int, ...]], FreshRound] = {}
        self._limit = limit

    def get(self, model_idx: int, batch: int, qos_s: float, types: list[int]) -> FreshRound:
        key = (model_idx, batch, tuple(types))
        fresh = self._rounds.get(key)
        if fresh is None:
            if len(self._rounds) >= self._limit:
                self._rounds.clear()
            n = len(types)
            fresh = self._rounds[key] = FreshRound(Snapshot(
                q_model=_read_only([model_idx], np.intp),
                q_batch=_read_only([batch], np.intp),
                q_waited_s=_read_only([0.0], np.float64),
                q_qos_s=_read_only([qos_s], np.float64),
                i_type=_read_only(types, np.intp),
                i_busy_s=_read_only([0.0] * n, np.float64),
                i_free=_read_only([True] * n, np.bool_),
            ))
        return fresh

    def __len__(self) -> int:
        return len(self._rounds)

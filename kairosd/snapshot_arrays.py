"""Read-only numpy arrays reused across dispatch rounds for the snapshot parts that repeat.

Below saturation almost every round matches one query against free instances: the same model, the
same few batch sizes, the same columns. Building its seven small arrays anew costs more than the
matching itself (numpy's per-call overhead, paid cache-cold between network events), so they are
looked up by value instead. Arrays are made read-only: a policy may read its snapshot, never write it.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class ArrayCache:
    """`array(values, dtype)` → a read-only array equal to `np.array(values, dtype)`, built once per
    distinct (dtype, values). Bounded: cleared when it holds `limit` arrays."""

    def __init__(self, limit: int = 4096) -> None:
        self._arrays: dict[tuple[Any, tuple[Any, ...]], np.ndarray] = {}
        self._limit = limit

    def array(self, values: tuple[Any, ...], dtype: Any) -> np.ndarray:
        key = (dtype, values)
        a = self._arrays.get(key)
        if a is None:
            if len(self._arrays) >= self._limit:
                self._arrays.clear()
            a = np.array(values, dtype=dtype)
            a.flags.writeable = False
            self._arrays[key] = a
        return a

    def __len__(self) -> int:
        return len(self._arrays)

"""Observed demand per model: the arrival rate and the batch-size distribution the planner plans for."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ModelDemand:
    """One model's load: `rate_qps` queries per second whose batch sizes follow `batch_pmf`
    (P(batch = b) for b = 0..max_batch, summing to 1; index 0 is unused and 0)."""

    model: str
    rate_qps: float
    batch_pmf: np.ndarray

    def mix_distance(self, other: ModelDemand) -> float:
        """Total variation distance between the two batch pmfs (0: the same mix, 1: disjoint)."""
        return 0.5 * float(np.abs(np.asarray(self.batch_pmf) - np.asarray(other.batch_pmf)).sum())

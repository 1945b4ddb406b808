"""Fixtures shared by the unit tests: the Kairos authors' workload (profiles, prices, QoS targets, samples)
and its batch mix, loaded once per test file."""

from __future__ import annotations

import numpy as np
import pytest

from kairosd import workload


@pytest.fixture(scope="module")
def wl() -> workload.KairosWorkload:
    return workload.load_kairos()


@pytest.fixture(scope="module")
def pmf(wl: workload.KairosWorkload) -> np.ndarray:
    """The authors' batch mix as a pmf over batch sizes (200,000 draws)."""
    return workload.mix_pmf("kairos", wl.profiles.max_batch, n=200_000)

"""FluidLp (HiGHS, re-solved from the last basis) against a fresh `linprog` solve of the same LP, and
on the planner docstring's worked example."""

from __future__ import annotations

import numpy as np
import pytest

from kairosd.planner.bounds import _fluid_lp
from kairosd.planner.fluid_lp import FluidLp


def test_worked_example_one_base_one_auxiliary() -> None:
    # half batch 10, half batch 100; base 1 ms / 3 ms; auxiliary 2 ms / 10 ms, missing QoS at 100
    lat = np.array([[0.001, 0.003], [0.002, 0.010]])
    miss = np.array([[0.0, 0.0], [0.0, 1.0]])
    p = np.array([0.5, 0.5])
    lp = FluidLp(lat, miss, p, slack=0.0)
    lam, y, _ = lp.solve(np.array([1.0, 1.0])) or pytest.fail("no optimum")
    assert lam == pytest.approx(2000 / 3)  # batch 100 only on the base: 0.5·λ·3 ms ≤ 1 s
    np.testing.assert_allclose(y, [2000 / 3, 0], atol=1e-6)
    lam, y, _ = lp.solve(np.array([2.0, 1.0])) or pytest.fail("no optimum")  # re-solved, same model
    assert lam == pytest.approx(1250)
    np.testing.assert_allclose(y, [500, 250], atol=1e-6)
    # with 1% slack, 1% of the queries (batch 100) may miss QoS on the auxiliary: 0.49·λ·3 ms ≤ 1 s
    lam, _, z = FluidLp(lat, miss, p, slack=0.01).solve(np.array([1.0, 1.0])) or pytest.fail("no optimum")
    assert lam == pytest.approx(1000 / (0.49 * 3))
    assert z > 0


@pytest.mark.parametrize("seed", range(5))
def test_re_solves_equal_fresh_linprog_solves(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m, nb = int(rng.integers(2, 5)), int(rng.integers(5, 40))
    lat = np.sort(rng.uniform(0.001, 0.05, (m, nb)), axis=1)
    miss = (lat > 0.03).astype(float)
    p = rng.dirichlet(np.ones(nb))
    lp = FluidLp(lat, miss, p, slack=0.01)
    for _ in range(10):
        n = rng.integers(0, 6, m).astype(float)
        got, want = lp.solve(n), _fluid_lp(n, lat, miss, p, 0.01)
        assert got is not None and want is not None
        assert got[0] == pytest.approx(want[0], rel=1e-9, abs=1e-9)
        # strong duality (the dual objective is n·y: the other rows have right-hand side 0)
        assert got[0] == pytest.approx(float(n @ got[1]), rel=1e-7, abs=1e-7)

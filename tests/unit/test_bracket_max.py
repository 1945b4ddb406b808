"""The live benchmarks' search for the highest passing rate (`bench/openloop.bracket_max`), on daemons
that pass up to a known rate."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from openloop import bracket_max  # noqa: E402  (bench/openloop.py)


def search(limit: float, sim: float, max_steps: int = 7, light: float = 100.0) -> tuple[float, list[float]]:
    probed: list[float] = []

    def ok(rate: float) -> bool:
        probed.append(rate)
        return rate <= limit

    return bracket_max(ok, sim, 0.025, max_steps, light), probed


@pytest.mark.parametrize("limit", [1089.0, 950.0, 612.0, 490.0, 131.0])
def test_finds_the_limit_within_the_tolerance(limit: float) -> None:
    found, probed = search(limit, 1000.0)
    assert found <= limit < found + 0.025 * 1000.0 + 1e-9, (found, probed)


def test_goes_down_past_max_steps_to_a_passing_rate() -> None:
    found, probed = search(131.0, 1000.0)
    assert len(probed) > 7  # the way down takes what it needs, the bisection two more
    assert probed[:3] == pytest.approx([1000.0, 900.0, 765.0])
    assert 106.0 < found <= 131.0


def test_nothing_passes_above_the_light_rate() -> None:
    found, probed = search(50.0, 1000.0)
    assert found == 0.0 and min(probed) >= 100.0


def test_a_simulator_at_zero_probes_the_light_rate_once() -> None:
    assert search(150.0, 0.0) == (100.0, [100.0])
    assert search(50.0, 0.0) == (0.0, [100.0])


def test_a_step_is_disturbed_by_steal_or_by_other_processes() -> None:
    from openloop import disturbance

    calm = {"steal_cores": 0.01, "other_cpu": 0.05}
    assert disturbance(calm, 0.1, 0.3) is None
    assert "steal 0.20" in str(disturbance({**calm, "steal_cores": 0.2}, 0.1, 0.3))
    assert "other processes 1.13" in str(disturbance({**calm, "other_cpu": 1.13}, 0.1, 0.3))
    # None: not checked; a step without the machine's figures is not judged crowded
    assert disturbance({**calm, "steal_cores": 0.2, "other_cpu": 1.13}, None, None) is None
    assert disturbance({"steal_cores": 0.0, "other_cpu": None}, 0.1, 0.3) is None

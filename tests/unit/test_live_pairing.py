"""The live benchmark's pairing (bench/live.py): which policies are measured together, the order their
bisections take turns in, and the ratio within each pair of runs."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from live import (  # noqa: E402  (bench/live.py)
    Run,
    alternating_order,
    kairos_over_threshold,
    measurement_groups,
    per_run_ratios,
    run_in_turn,
)

POLICIES = ["kairos", "threshold", "fcfs"]
TOGETHER = ["kairos", "threshold"]


def test_two_policies_take_turns_forward_then_backward() -> None:
    assert alternating_order(["kairos", "threshold"], 4) == ["kairos", "threshold", "threshold", "kairos",
                                                             "kairos", "threshold", "threshold", "kairos"]


def test_an_even_number_of_rounds_gives_every_policy_the_same_mean_place() -> None:
    order = alternating_order(["a", "b", "c"], 6)
    places = {p: [i for i, q in enumerate(order) if q == p] for p in "abc"}
    assert {p: len(v) for p, v in places.items()} == {"a": 6, "b": 6, "c": 6}
    assert len({sum(v) / len(v) for v in places.values()}) == 1


def test_one_policy_or_one_round() -> None:
    assert alternating_order(["fcfs"], 3) == ["fcfs"] * 3
    assert alternating_order(["kairos", "threshold"], 1) == ["kairos", "threshold"]


@pytest.mark.parametrize(("policies", "repeats", "message"), [
    (["kairos"], 0, "at least 1"),
    ([], 2, "no policy"),
    (["kairos", "kairos"], 2, "more than once"),
])
def test_order_refuses_what_it_cannot_order(policies: list[str], repeats: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        alternating_order(policies, repeats)


def test_paired_groups_the_repeated_policies_where_the_first_of_them_is() -> None:
    assert measurement_groups(POLICIES, TOGETHER, True) == [("kairos", "threshold"), ("fcfs",)]
    assert measurement_groups(["fcfs", "threshold", "kairos"], TOGETHER, True) == [("fcfs",), ("threshold", "kairos")]


def test_not_paired_measures_each_policy_alone() -> None:
    assert measurement_groups(POLICIES, TOGETHER, False) == [("kairos",), ("threshold",), ("fcfs",)]


def test_a_single_repeated_policy_is_measured_alone() -> None:
    assert measurement_groups(["kairos", "fcfs"], TOGETHER, True) == [("kairos",), ("fcfs",)]


def test_groups_refuse_a_policy_listed_twice() -> None:
    with pytest.raises(ValueError, match="more than once"):
        measurement_groups(["kairos", "threshold", "kairos"], TOGETHER, True)


def test_per_run_ratios() -> None:
    assert per_run_ratios([110.0, 90.0], [100.0, 0.0]) == [pytest.approx(1.1), None]
    with pytest.raises(ValueError, match="differ in number"):
        per_run_ratios([1.0], [1.0, 2.0])


def fake_bisect(policy: str, log: list[str], qps: list[float]) -> Callable[[], Run]:
    def bisect() -> Run:
        log.append(policy)
        return qps[len([p for p in log if p == policy]) - 1], [{"policy": policy}]
    return bisect


def test_run_in_turn_runs_the_order_and_times_each_run() -> None:
    log: list[str] = []
    ticks = iter(range(100))
    bisect = {"kairos": fake_bisect("kairos", log, [500.0, 510.0]),
              "threshold": fake_bisect("threshold", log, [450.0, 470.0])}
    done = run_in_turn(alternating_order(["kairos", "threshold"], 2), bisect, clock=lambda: float(next(ticks)))
    assert log == ["kairos", "threshold", "threshold", "kairos"]
    assert [t.order for t in done["kairos"]] == [0, 3]
    assert [t.order for t in done["threshold"]] == [1, 2]
    assert [t.run[0] for t in done["kairos"]] == [500.0, 510.0]
    # the clock: 0 at the group's start, then a start and an end tick per run
    assert [(t.start_s, t.wall_s) for t in done["kairos"]] == [(1.0, 1.0), (7.0, 1.0)]


def test_run_in_turn_refuses_a_policy_without_a_bisection() -> None:
    with pytest.raises(ValueError, match="no bisection given for threshold"):
        run_in_turn(["kairos", "threshold"], {"kairos": lambda: (1.0, [])})


def record(live: float, sim: float, runs: list[float], paired_with: list[str]) -> dict[str, Any]:
    return {"live_qps": live, "sim_qps": sim, "live_qps_runs": runs, "paired": bool(paired_with),
            "paired_with": paired_with}


def test_ratio_per_pair_of_runs_when_the_runs_took_turns() -> None:
    got = kairos_over_threshold({"kairos": record(505.0, 600.0, [500.0, 510.0], ["threshold"]),
                                 "threshold": record(460.0, 500.0, [450.0, 470.0], ["kairos"])})
    assert got["kairos_over_threshold_live"] == pytest.approx(505.0 / 460.0)
    assert got["kairos_over_threshold_sim"] == pytest.approx(1.2)
    assert got["kairos_over_threshold_live_runs"] == pytest.approx([500.0 / 450.0, 510.0 / 470.0])


def test_no_ratio_per_pair_when_measured_one_after_the_other() -> None:
    got = kairos_over_threshold({"kairos": record(505.0, 600.0, [500.0, 510.0], []),
                                 "threshold": record(460.0, 500.0, [450.0, 470.0], [])})
    assert "kairos_over_threshold_live_runs" not in got
    assert kairos_over_threshold({"kairos": record(505.0, 600.0, [500.0], [])}) == {}

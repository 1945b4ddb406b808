"""The timed queries beside a profile (`<model>.samples.csv`): written, read back, and attached to the
table `ProfileTable.load_dir` loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kairosd.commands import profile as profile_command
from kairosd.errors import ConfigError
from kairosd.profiler import DEFAULT_BATCHES, REFINE_ROUNDS, crossing_midpoints, profile_batches, refine_batches
from kairosd.profiles import (
    SAMPLES_SUFFIX,
    ProfilePoint,
    ProfileTable,
    read_samples_csv,
    write_csv,
    write_samples_csv,
)


def _profile(directory: Path, types: tuple[str, ...] = ("a", "b")) -> None:
    write_csv(directory / "m.csv", [ProfilePoint(t, b, 0.002 * b, 0.003 * b) for t in types for b in (1, 8)])


def test_samples_round_trip_and_attach_to_the_loaded_table(tmp_path: Path) -> None:
    _profile(tmp_path)
    timed = {"a": {1: np.array([0.0021, 0.0019, 0.0030]), 8: np.array([0.016, 0.017])}}
    write_samples_csv(tmp_path / f"m{SAMPLES_SUFFIX}", timed)
    back = read_samples_csv(tmp_path / f"m{SAMPLES_SUFFIX}")
    assert set(back) == {"a"} and set(back["a"]) == {1, 8}
    np.testing.assert_allclose(back["a"][1], timed["a"][1])
    table = ProfileTable.load_dir(tmp_path)
    assert table.models == ("m",)  # the samples file is not a model's profile
    np.testing.assert_allclose(table.samples["m"]["a"][8], [0.016, 0.017])
    assert "b" not in table.samples["m"]


def test_a_profile_without_samples_loads_as_before(tmp_path: Path) -> None:
    _profile(tmp_path)
    assert ProfileTable.load_dir(tmp_path).samples == {}


@pytest.mark.parametrize(("row", "says"), [
    ("c,1,0.002 0.003", "types ['c'] have no profile"),
    ("a,1,0.002 -0.001", "seconds above 0"),
    ("a,1,", "seconds above 0"),
    ("a,one,0.002", "batch must be an integer"),
])
def test_bad_samples_are_refused_with_what_to_fix(tmp_path: Path, row: str, says: str) -> None:
    _profile(tmp_path)
    (tmp_path / f"m{SAMPLES_SUFFIX}").write_text(f"instance_type,batch,samples_s\n{row}\n")
    with pytest.raises(ConfigError, match=says.replace("[", r"\[").replace("]", r"\]")):
        ProfileTable.load_dir(tmp_path)


def test_a_samples_file_without_its_header_is_refused(tmp_path: Path) -> None:
    _profile(tmp_path)
    (tmp_path / f"m{SAMPLES_SUFFIX}").write_text("type,batch,times\na,1,0.002\n")
    with pytest.raises(ConfigError, match="the header must be instance_type,batch,samples_s"):
        ProfileTable.load_dir(tmp_path)


def test_a_profile_times_the_models_largest_batch_and_none_above_it() -> None:
    assert profile_batches(1000) == [1, 8, 32, 64, 128, 256, 512, 1000]
    assert profile_batches(1024) == list(DEFAULT_BATCHES)
    assert profile_batches(1) == [1]
    assert profile_batches(100, [4, 1, 200]) == [1, 4, 100]
    with pytest.raises(ConfigError, match="at least 1"):
        profile_batches(0)
    with pytest.raises(ConfigError, match="batch sizes must be at least 1"):
        profile_batches(1024, [0, 8])
    # the CLI's default rounds, named apart so that its parser does not import the profiler
    assert profile_command.DEFAULT_REFINE_ROUNDS == REFINE_ROUNDS


def test_the_largest_batch_timed_keeps_a_superlinear_latency_from_being_extrapolated_under() -> None:
    """Latency 0.02 ms · b^1.3: timed up to 512 only, batch 1000 is extrapolated on the 256–512 slope to
    141.9 ms against 158.9 ms; timed at 1000 as well, it is the measured value."""
    def points(batches: list[int]) -> list[ProfilePoint]:
        return [ProfilePoint("a", b, 2e-5 * b**1.3, 2e-5 * b**1.3) for b in batches]

    short = ProfileTable.build({"m": points([1, 8, 32, 64, 128, 256, 512])}, max_batch=1000)
    full = ProfileTable.build({"m": points(profile_batches(1000))}, max_batch=1000)
    assert short.mean_s[0, 0, 1000] == pytest.approx(0.1419, rel=0.01)
    assert full.mean_s[0, 0, 1000] == pytest.approx(2e-5 * 1000**1.3, rel=1e-9)


def test_the_profile_is_refined_where_the_p99_crosses_qos() -> None:
    """p99 (ms) 2, 3, 4, 9, 12 at 1, 8, 256, 512, 1024 against QoS 6 ms: the one crossing is 256–512, so 384
    is timed next; with 384 at 5 ms, 448; a gap of `resolution` or less is left alone, as are pairs on one side."""
    p99 = {1: 0.002, 8: 0.003, 256: 0.004, 512: 0.009, 1024: 0.012}
    assert crossing_midpoints(p99, 0.006) == [384]
    assert crossing_midpoints({**p99, 384: 0.005}, 0.006) == [448]
    assert crossing_midpoints({256: 0.004, 260: 0.009}, 0.006, resolution=8) == []
    assert crossing_midpoints(p99, 0.020) == [] and crossing_midpoints(p99, 0.001) == []
    # a p99 that is not monotone in the batch (a slow query at 32): every crossing is refined
    assert crossing_midpoints({1: 0.002, 32: 0.007, 256: 0.004, 512: 0.009}, 0.006) == [16, 144, 384]
    # at most `max_added` in all, the lowest first: where the type first stops serving the mix in time
    scattered = {1: 0.002, 32: 0.007, 256: 0.004, 512: 0.009}
    assert refine_batches(scattered, 0.006, added=2, max_added=4) == [16, 144]
    assert refine_batches(scattered, 0.006, added=4, max_added=4) == []

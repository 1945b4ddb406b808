"""The timed queries beside a profile (`<model>.samples.csv`): written, read back, and attached to the
table `ProfileTable.load_dir` loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kairosd.errors import ConfigError
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

"""Catalogue: the shipped TOML, its prices against the authors' data, and errors that name the key."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kairosd.catalogue import (
    BACKENDS,
    DEFAULT_PATH,
    Catalogue,
    load_catalogue,
    parse_catalogue,
)
from kairosd.errors import ConfigError
from kairosd.workload import default_data_dir


def _type(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {"price_usd_per_hour": 0.5, "gpu": False, "backend": "onnxruntime", "slots": 1}
    base.update(kw)
    return base


def test_shipped_catalogue_loads_and_states_region_and_date() -> None:
    cat = load_catalogue()
    assert DEFAULT_PATH.is_file()
    assert cat.region == "us-east-1"
    assert len(cat.prices_as_of) == 10 and cat.prices_as_of[4] == "-"
    assert len(set(cat.names)) == len(cat.names) >= 4
    for t in cat.types:
        assert t.price_usd_per_hour > 0 and t.slots >= 1 and t.backend in BACKENDS
        assert (t.backend == "triton") == t.gpu


def test_kairos_types_priced_as_in_the_authors_data() -> None:
    inst = json.loads((default_data_dir() / "instance.json").read_text())
    cat = load_catalogue().subset(inst["ins_types"])
    assert cat.names == tuple(inst["ins_types"])
    np.testing.assert_allclose(cat.prices(), inst["price"])
    assert [t.gpu for t in cat.types] == [t.startswith("g") for t in inst["ins_types"]]


def test_every_price_in_the_authors_price_list_matches() -> None:
    cat = load_catalogue()
    rows = (default_data_dir() / "price.csv").read_text().split()[1:]
    for row in rows:
        name, price = row.split(",")
        assert cat.get(name).price_usd_per_hour == pytest.approx(float(price))


def test_defaults_follow_gpu() -> None:
    cat = parse_catalogue({"types": {"g": {"price_usd_per_hour": 1, "gpu": True}, "c": {"price_usd_per_hour": 0.25}}})
    assert cat.get("g").backend == "triton" and cat.get("c").backend == "onnxruntime"
    assert cat.get("g").slots == 1
    assert isinstance(cat.get("g").price_usd_per_hour, float)


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (_type(price_usd_per_hour=-1), "price_usd_per_hour"),
        (_type(price_usd_per_hour="cheap"), "price_usd_per_hour"),
        (_type(price_usd_per_hour=True), "price_usd_per_hour"),
        (_type(backend="tensorrt"), "backend"),
        (_type(slots=0), "slots"),
        (_type(gpu="yes"), "gpu"),
        (_type(cores=4), "cores"),
    ],
)
def test_errors_name_the_key(raw: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_catalogue({"types": {"x.large": raw}}, "cat.toml")
    assert needle in str(err.value) and "x.large" in str(err.value) and "cat.toml" in str(err.value)


def test_structure_errors() -> None:
    with pytest.raises(ConfigError, match="types"):
        parse_catalogue({"region": "us-east-1"})
    with pytest.raises(ConfigError, match="unknown top-level"):
        parse_catalogue({"types": {"a": _type()}, "currency": "EUR"})
    with pytest.raises(ConfigError, match="not in the catalogue"):
        load_catalogue().get("z9.mega")


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_catalogue(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[types.a\nprice = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_catalogue(bad)


def test_subset_keeps_requested_order(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[types.a]\nprice_usd_per_hour = 0.1\n[types.b]\nprice_usd_per_hour = 0.2\ngpu = true\n')
    cat = load_catalogue(path)
    assert isinstance(cat, Catalogue)
    sub = cat.subset(["b", "a"])
    assert sub.names == ("b", "a")
    np.testing.assert_allclose(sub.prices(), [0.2, 0.1])

"""Instance-type catalogue: name, on-demand $/h, GPU or not, backend kind and slots, loaded from TOML."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kairosd.errors import ConfigError

if TYPE_CHECKING:
    from kairosd.config import Config

BACKENDS: tuple[str, ...] = ("triton", "onnxruntime")
DEFAULT_PATH = Path(__file__).resolve().parent.parent / "configs" / "instance_types.toml"
_TYPE_KEYS = frozenset({"price_usd_per_hour", "gpu", "backend", "slots"})


@dataclass(frozen=True, slots=True)
class InstanceType:
    """One kind of machine: `slots` is how many queries one instance serves at once."""

    name: str
    price_usd_per_hour: float
    gpu: bool
    backend: str
    slots: int = 1


@dataclass(frozen=True)
class Catalogue:
    """The instance types the planner may choose from, in file order."""

    types: tuple[InstanceType, ...]
    region: str = ""
    prices_as_of: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.types)

    def get(self, name: str) -> InstanceType:
        for t in self.types:
            if t.name == name:
                return t
        raise ConfigError(f"instance type {name!r} is not in the catalogue; known: {list(self.names)}")

    def subset(self, names: Sequence[str]) -> Catalogue:
        """The catalogue restricted to `names`, in that order."""
        return Catalogue(tuple(self.get(n) for n in names), self.region, self.prices_as_of)

    def prices(self) -> np.ndarray:
        return np.array([t.price_usd_per_hour for t in self.types], dtype=float)


def _type_from(name: str, raw: Any, source: str) -> InstanceType:
    key = f"{source}: types.{name!r}"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key} must be a table with keys {sorted(_TYPE_KEYS)}")
    unknown = set(raw) - _TYPE_KEYS
    if unknown:
        raise ConfigError(f"{key}: unknown keys {sorted(unknown)}; allowed: {sorted(_TYPE_KEYS)}")
    price = raw.get("price_usd_per_hour")
    if isinstance(price, bool) or not isinstance(price, (int, float)) or not price > 0:
        raise ConfigError(f"{key}.price_usd_per_hour must be a number > 0, got {price!r}")
    gpu = raw.get("gpu", False)
    if not isinstance(gpu, bool):
        raise ConfigError(f"{key}.gpu must be true or false, got {gpu!r}")
    backend = raw.get("backend", "triton" if gpu else "onnxruntime")
    if backend not in BACKENDS:
        raise ConfigError(f"{key}.backend must be one of {list(BACKENDS)}, got {backend!r}")
    slots = raw.get("slots", 1)
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
        raise ConfigError(f"{key}.slots must be an integer >= 1, got {slots!r}")
    return InstanceType(name, float(price), gpu, backend, slots)


def parse_catalogue(data: Mapping[str, Any], source: str = "<catalogue>") -> Catalogue:
    """Build a catalogue from parsed TOML (`region`, `prices_as_of`, `[types."NAME"]` tables)."""
    unknown = set(data) - {"region", "prices_as_of", "types"}
    if unknown:
        raise ConfigError(f"{source}: unknown top-level keys {sorted(unknown)}; allowed: region, prices_as_of, types")
    raw_types = data.get("types")
    if not isinstance(raw_types, Mapping) or not raw_types:
        raise ConfigError(f"{source}: `types` must hold at least one [types.\"NAME\"] table")
    region, as_of = data.get("region", ""), data.get("prices_as_of", "")
    if not isinstance(region, str) or not isinstance(as_of, str):
        raise ConfigError(f"{source}: region and prices_as_of must be strings")
    return Catalogue(tuple(_type_from(n, r, source) for n, r in raw_types.items()), region, as_of)


def catalogue_from_config(cfg: Config) -> Catalogue:
    """The instance types of a daemon config (`[types.NAME]`) as a catalogue the planner can rank;
    every type needs a price > 0."""
    types = []
    for t in cfg.types.values():
        if not t.price_usd_per_hour > 0:
            raise ConfigError(f"{cfg.path}: types.{t.name}.price_usd_per_hour must be > 0 to plan with it "
                              f"(got {t.price_usd_per_hour})")
        types.append(InstanceType(t.name, t.price_usd_per_hour, t.backend == "triton", t.backend, t.slots))
    return Catalogue(tuple(types))


def catalogue_of_prices(names: Sequence[str], prices_usd_per_hour: Sequence[float], source: str,
                        known: Catalogue | None = None) -> Catalogue:
    """Types known by name and price (e.g. the authors' `instance.json`, which a workload in their layout
    carries): what planning needs. A type `known` lists keeps its GPU flag, backend and slots there, at the
    price given here; any other serves one query at a time on the onnxruntime backend."""
    if len(names) != len(prices_usd_per_hour):
        raise ConfigError(f"{source}: {len(prices_usd_per_hour)} prices for {len(names)} instance types")
    bad = [n for n, p in zip(names, prices_usd_per_hour, strict=True) if not p > 0]
    if bad:
        raise ConfigError(f"{source}: instance types {bad} need a price > 0 to plan with them")
    listed = {} if known is None else {t.name: t for t in known.types}

    def one(name: str, price: float) -> InstanceType:
        if name in listed:
            return replace(listed[name], price_usd_per_hour=float(price))
        return InstanceType(name, float(price), False, "onnxruntime", 1)

    return Catalogue(tuple(one(n, p) for n, p in zip(names, prices_usd_per_hour, strict=True)))


def load_catalogue(path: str | Path | None = None) -> Catalogue:
    """Load `configs/instance_types.toml` (or `path`); every error names the file and the key."""
    path = Path(path) if path is not None else DEFAULT_PATH
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"instance-type catalogue {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_catalogue(data, str(path))

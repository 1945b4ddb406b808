"""Pools: the unit a fleet target counts. A pool is an instance type serving every model (`"g4dn.xlarge"`),
or a type pinned to one model (`"g4dn.xlarge@wnd"`): the dispatcher sends a pinned instance only its
model's queries. The planner chooses pinned pools when sharing instances across models would cost QoS."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from kairosd.errors import ConfigError
from kairosd.providers.base import Offering

POOL_SEP = "@"


def pool_name(type_name: str, model: str | None) -> str:
    """The pool of instances of `type_name`: shared by every model (`model` None, the type's name) or
    pinned to `model` (f"{type}@{model}", e.g. "g4dn.xlarge@wnd")."""
    if not type_name or POOL_SEP in type_name:
        raise ConfigError(f"an instance type name must be non-empty and without {POOL_SEP!r}, got {type_name!r}")
    if model is None:
        return type_name
    if not model:
        raise ConfigError(f"a pinned pool needs a model name, got {model!r} for {type_name!r}")
    return f"{type_name}{POOL_SEP}{model}"


def parse_pool(pool: str) -> tuple[str, str | None]:
    """(type, model) of a pool name: model None for a shared pool; the inverse of `pool_name` (the type
    ends at the first `POOL_SEP`)."""
    type_name, sep, model = pool.partition(POOL_SEP)
    if not type_name or (sep and not model):
        raise ConfigError(f"pool names are TYPE or TYPE{POOL_SEP}MODEL, got {pool!r}")
    return type_name, (model if sep else None)


def pool_offerings(offerings: Mapping[str, Offering], pools: Iterable[str]) -> dict[str, Offering]:
    """`offerings` by type, plus each pinned pool of `pools` offered as its type (same price and
    availability), so decisions over pools can look every pool up."""
    out = dict(offerings)
    for pool in pools:
        instance_type, model = parse_pool(pool)
        if model is not None and instance_type in out:
            out[pool] = replace(out[instance_type], type=pool)
    return out

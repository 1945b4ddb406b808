"""Pools: the unit a fleet target counts. A pool is an instance type serving every model (`"g4dn.xlarge"`),
or a type pinned to one model (`"g4dn.xlarge@wnd"`): the dispatcher sends a pinned instance only its
model's queries. The planner chooses pinned pools when sharing instances across models would cost QoS."""

from __future__ import annotations

POOL_SEP = "@"


def pool_name(instance_type: str, model: str | None = None) -> str:
    """`type` for a shared pool, `type@model` for one pinned to `model`."""
    return instance_type if model is None else f"{instance_type}{POOL_SEP}{model}"


def parse_pool(pool: str) -> tuple[str, str | None]:
    """(instance type, pinned model or None): the inverse of `pool_name`."""
    instance_type, sep, model = pool.partition(POOL_SEP)
    return instance_type, (model if sep else None)

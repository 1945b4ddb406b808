"""Configurations within a budget: enumerate them (vectorised, dominated ones pruned), price them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from kairosd.errors import ConfigError

MICRO_USD = 1_000_000  # prices are compared in integer micro-dollars so that cost <= budget is exact
UNCAPPED = int(np.iinfo(np.int64).max)  # a count cap that caps nothing: the budget alone bounds the type


def _micro(x: Sequence[float] | np.ndarray | float) -> np.ndarray:
    return np.rint(np.asarray(x, dtype=float) * MICRO_USD).astype(np.int64)


def enumerate_configs(
    prices_usd_per_hour: Sequence[float] | np.ndarray,
    budget_usd_per_hour: float,
    *,
    maximal_only: bool = True,
    max_counts: Sequence[int] | None = None,
) -> np.ndarray:
    """Every count vector (int[N, K], K = len(prices)) with 0 < cost ≤ budget, lexicographic order.

    Vectorised: one numpy step per *type* (each partial configuration is repeated once per count the
    remaining budget allows for the next type), never a Python loop per configuration.
    `maximal_only` keeps the configurations to which no further instance fits (remaining budget <
    the cheapest price): adding an instance never lowers throughput, so every other configuration
    is dominated by a maximal superset. `max_counts` caps each type's count (e.g. capacity limits).
    """
    price = _micro(prices_usd_per_hour)
    if price.ndim != 1 or len(price) == 0 or (price <= 0).any():
        raise ConfigError("prices_usd_per_hour must be a non-empty list of positive prices")
    budget = int(_micro(budget_usd_per_hour))
    if budget <= 0:
        raise ConfigError(f"budget_usd_per_hour must be > 0, got {budget_usd_per_hour}")
    caps = np.full(len(price), UNCAPPED) if max_counts is None else np.asarray(max_counts, dtype=np.int64)
    if caps.shape != price.shape or (caps < 0).any():
        raise ConfigError("max_counts must give one count >= 0 per type")
    configs = np.zeros((1, 0), dtype=np.int64)
    remaining = np.array([budget], dtype=np.int64)
    for k in range(len(price)):
        options = np.minimum(remaining // price[k], caps[k]) + 1  # counts 0..max for each partial row
        rows = np.repeat(np.arange(len(configs)), options)
        starts = np.repeat(np.cumsum(options) - options, options)
        count = np.arange(len(rows), dtype=np.int64) - starts
        configs = np.column_stack([configs[rows], count])
        remaining = remaining[rows] - count * price[k]
    keep = configs.any(axis=1)
    if maximal_only:
        # no type with spare capacity fits into the remaining budget
        fits = (remaining[:, None] >= price[None, :]) & (configs < caps[None, :])
        keep &= ~fits.any(axis=1)
    return configs[keep]


def config_cost(configs: np.ndarray, prices_usd_per_hour: Sequence[float] | np.ndarray) -> np.ndarray:
    """$/h of each configuration."""
    return np.asarray(configs, dtype=float) @ np.asarray(prices_usd_per_hour, dtype=float)


def config_from_mapping(types: Sequence[str], counts: Mapping[str, int]) -> np.ndarray:
    """Counts aligned with `types` from {type: count}; unknown types are refused."""
    unknown = set(counts) - set(types)
    if unknown:
        raise ConfigError(f"unknown instance types {sorted(unknown)}; known: {list(types)}")
    return np.array([int(counts.get(t, 0)) for t in types], dtype=np.int64)

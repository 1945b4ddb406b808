"""What a reload (SIGHUP) may change: the diff of two configs, each changed key classified.

Core rule. Both configs are flattened to dotted keys (`scheduler.tick_ms`, `models.qos_ms.dlrm`,
`types.ort-1t.price_usd_per_hour`, ...); a key whose value differs is *reloadable* when it matches
one of `RELOADABLE` (the settings the scheduler and the fleet swap between rounds: QoS targets, the
policy and its parameters, timeouts, the autoscaler's budget, objective, periods and decide
parameters, prices), otherwise it needs a restart and the whole reload is refused. E.g. changing
`models.qos_ms.dlrm` 25 → 40 and `autoscaler.budget_usd_per_hour` 0.3 → 0.2 is applied; adding
`server.grpc_port` 8001 → 9001 to the same file refuses all three. Adding or removing a served model
or an instance type needs a restart (the front ends, the profiles and the providers are built for
them). One key depends on its values: `server.token_file` may move to another file live, but turning
authentication on or off (to or from "") needs a restart, as the front ends are built with or without
the token check. Pure: no I/O (the daemon re-reads the token file itself on every reload).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from kairosd.config import Config

# keys a reload applies live (fnmatch patterns over the flattened keys)
RELOADABLE: tuple[str, ...] = (
    "server.drain_timeout_s",
    "server.token_file",  # between two files only (see _applies_live)
    "server.auth_health",
    "scheduler.*",  # policy, policy_params.*, tick_ms, margin_ms, default_timeout_s, max_attempts
    "models.qos_ms.*",
    "types.*.price_usd_per_hour",
    "autoscaler.budget_usd_per_hour",
    "autoscaler.objective",
    "autoscaler.headroom",
    "autoscaler.selector",
    "autoscaler.plus_time_limit_s",
    "autoscaler.period_s",
    "autoscaler.rise_window_s",
    "autoscaler.up_periods",
    "autoscaler.down_periods",
    "autoscaler.max_concurrent_launches",
    "autoscaler.max_disruption_fraction",
    "autoscaler.startup_grace_s",
    "autoscaler.suspect_grace_s",
    "autoscaler.drain_timeout_s",
    "autoscaler.unavailable_s",
    "autoscaler.terminate_on_stop",
)

# keys whose values are not shown in logs (tables parsed by providers may carry anything)
_OPAQUE_PREFIXES = ("provider.",)


@dataclass(frozen=True)
class Change:
    key: str
    old: Any
    new: Any

    def __str__(self) -> str:
        if self.key.startswith(_OPAQUE_PREFIXES):
            return f"{self.key} (changed)"
        return f"{self.key}: {_show(self.old)} → {_show(self.new)}"


@dataclass(frozen=True)
class Reload:
    """The changed keys a reload applies and those that need a restart (any of these refuses the reload)."""

    changed: list[Change] = field(default_factory=list)
    refused: list[Change] = field(default_factory=list)

    @property
    def applies(self) -> bool:
        """True when the new settings can be swapped in (nothing needs a restart)."""
        return not self.refused

    @property
    def changed_keys(self) -> list[str]:
        return [c.key for c in self.changed]

    @property
    def refused_keys(self) -> list[str]:
        return [c.key for c in self.refused]


_ABSENT = object()


def _show(v: Any) -> str:
    if v is _ABSENT:
        return "(absent)"
    if isinstance(v, float):
        return f"{v:g}"
    return repr(v) if isinstance(v, str) else str(v)


def reloadable(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in RELOADABLE)


def _applies_live(key: str, old: Any, new: Any) -> bool:
    if key == "server.token_file":
        return bool(old) and bool(new)  # another token file: yes; authentication on or off: restart
    return reloadable(key)


def plan_reload(old: Config, new: Config) -> Reload:
    """Every key whose value differs between `old` and `new`, classified reloadable or restart-only."""
    a, b = dict(flatten(old)), dict(flatten(new))
    changed: list[Change] = []
    refused: list[Change] = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, _ABSENT), b.get(key, _ABSENT)
        if va == vb:
            continue
        change = Change(key, va, vb)
        (changed if _applies_live(key, va, vb) else refused).append(change)
    return Reload(changed, refused)


def flatten(config: Config) -> Iterator[tuple[str, Any]]:
    """(dotted key, value) for every setting of `config`. A served model or an instance type that is
    added or removed appears as its own key (`models.qos_ms`, `types.NAME`), which needs a restart."""
    yield from _dataclass("server", config.server)
    for f in fields(config.scheduler):
        value = getattr(config.scheduler, f.name)
        if f.name == "policy_params":
            yield from _mapping("scheduler.policy_params", value)
        else:
            yield f"scheduler.{f.name}", value
    yield "models.repository", str(config.model_repository)
    yield "models.profiles", str(config.profiles_dir)
    yield "models.qos_ms", tuple(sorted(config.qos_s))  # the served model set
    for m, q in config.qos_s.items():
        yield f"models.qos_ms.{m}", round(q * 1e3, 9)
    yield "types", tuple(sorted(config.types))  # the defined type set
    for name, t in config.types.items():
        for f in fields(t):
            if f.name != "name":
                value = getattr(t, f.name)
                yield f"types.{name}.{f.name}", dict(value) if isinstance(value, Mapping) else value
    yield "fleet.static", tuple(sorted((t, n) for t, n in config.fleet.items() if n))
    yield "fleet.endpoints", tuple(config.endpoints)
    yield from _dataclass("autoscaler", config.autoscaler)
    yield from _mapping("provider", config.provider_raw)


def _dataclass(prefix: str, obj: Any) -> Iterator[tuple[str, Any]]:
    for f in fields(obj):
        yield f"{prefix}.{f.name}", getattr(obj, f.name)


def _mapping(prefix: str, m: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    for k, v in m.items():
        if isinstance(v, Mapping):
            yield from _mapping(f"{prefix}.{k}", v)
        else:
            yield f"{prefix}.{k}", v

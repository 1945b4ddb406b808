"""Daemon configuration: TOML (tomllib) parsed into frozen dataclasses; every error names the key.

All defaults live here, in the dataclass fields; `configs/local.toml` shows every key.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from kairosd.errors import ConfigError

BACKENDS = ("onnxruntime", "triton")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_request_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    policy: str = "kairos"
    # parameters passed to the policy (e.g. threshold = 200 for "threshold"); kairos takes tail, margin_s,
    # lookahead, hold and tiers (see kairosd.dispatch)
    policy_params: Mapping[str, Any] = field(default_factory=dict)
    # how often waiting queries are checked against their deadlines while any wait
    tick_ms: float = 5.0
    # time reserved for kairosd's own overhead when judging whether an edge meets QoS
    margin_ms: float = 1.0
    # a request whose client set no deadline is answered UNAVAILABLE after this long in kairosd
    default_timeout_s: float = 30.0
    # how many instances a query may be tried on when an instance fails (connection errors only)
    max_attempts: int = 3


@dataclass(frozen=True, slots=True)
class InstanceTypeConfig:
    name: str
    backend: str  # "onnxruntime" (kairosd worker) or "triton"
    price_usd_per_hour: float = 0.0
    threads: int = 1
    slots: int = 1  # queries one instance serves at once


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """A backend server already running (`[[fleet.endpoints]]`): its KServe v2 gRPC address and, when
    it also speaks KServe v2 HTTP/REST (a Triton does), that address: HTTP queries are then forwarded
    to it as bytes instead of being converted to gRPC."""

    type: str
    address: str  # "host:port" of its gRPC endpoint
    http_address: str | None = None  # "host:port" of its HTTP endpoint, if any


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig
    scheduler: SchedulerConfig
    model_repository: Path
    profiles_dir: Path
    qos_s: Mapping[str, float]
    types: Mapping[str, InstanceTypeConfig]
    fleet: Mapping[str, int]  # static fleet: instance type → count, started as local processes
    endpoints: tuple[EndpointConfig, ...] = ()  # servers already running
    path: Path | None = None


def _section(raw: Mapping[str, Any], key: str, cls: type, prefix: str) -> Any:
    data = raw.get(key, {})
    if not isinstance(data, dict):
        raise ConfigError(f"[{prefix}{key}] must be a table")
    allowed = {f.name: f for f in fields(cls)}
    out = {}
    for k, v in data.items():
        if k not in allowed:
            raise ConfigError(f"unknown key {prefix}{key}.{k}; allowed: {sorted(allowed)}")
        out[k] = _coerce(v, allowed[k].type, f"{prefix}{key}.{k}")
    return cls(**out)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    ann = str(annotation)
    if ann == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} = {value!r}: must be an integer")
        if value < 0:
            raise ConfigError(f"{key} = {value!r}: must be ≥ 0")
    elif ann == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} = {value!r}: must be a number")
        if value < 0:
            raise ConfigError(f"{key} = {value!r}: must be ≥ 0")
        value = float(value)
    elif ann == "str" and not isinstance(value, str):
        raise ConfigError(f"{key} = {value!r}: must be a string")
    return value


def _endpoint(ep: Any, i: int, types: Mapping[str, InstanceTypeConfig]) -> EndpointConfig:
    key = f"fleet.endpoints[{i}]"
    if not isinstance(ep, dict) or not {"type", "address"} <= set(ep) or not set(ep) <= {"type", "address", "http_address"}:
        raise ConfigError(
            f"{key} must be a table with 'type', 'address' (gRPC host:port) and optionally 'http_address' (host:port)"
        )
    if ep["type"] not in types:
        raise ConfigError(f"{key}.type = {ep['type']!r}: unknown; defined types: {sorted(types)}")
    for k in ("address", "http_address"):
        if k in ep and (not isinstance(ep[k], str) or ":" not in ep[k]):
            raise ConfigError(f"{key}.{k} = {ep[k]!r}: must be a string 'host:port'")
    return EndpointConfig(str(ep["type"]), ep["address"], ep.get("http_address"))


def parse(raw: Mapping[str, Any], base_dir: Path, path: Path | None = None) -> Config:
    """Build a Config from parsed TOML; relative paths are relative to `base_dir`."""
    known = {"server", "scheduler", "models", "types", "fleet"}
    for k in raw:
        if k not in known:
            raise ConfigError(f"unknown section [{k}]; allowed: {sorted(known)}")
    server = _section(raw, "server", ServerConfig, "")
    scheduler = _section(raw, "scheduler", SchedulerConfig, "")
    from kairosd.dispatch import POLICIES  # policies are chosen by name; refuse unknown ones now

    if scheduler.policy not in POLICIES:
        raise ConfigError(f"scheduler.policy = {scheduler.policy!r}: allowed: {sorted(POLICIES)}")

    models = raw.get("models", {})
    repo = base_dir / str(models.get("repository", "model_repository"))
    profiles_dir = base_dir / str(models.get("profiles", "profiles/local"))
    qos_raw = models.get("qos_ms", {})
    if not isinstance(qos_raw, dict) or not qos_raw:
        raise ConfigError("[models.qos_ms] must give each served model's QoS target in ms, e.g. dlrm = 50")
    qos_s = {m: _coerce(v, "float", f"models.qos_ms.{m}") / 1e3 for m, v in qos_raw.items()}
    for m, q in qos_s.items():
        if q <= 0:
            raise ConfigError(f"models.qos_ms.{m} must be > 0")

    types: dict[str, InstanceTypeConfig] = {}
    for name, t in raw.get("types", {}).items():
        if not isinstance(t, dict):
            raise ConfigError(f"[types.{name}] must be a table")
        allowed = {f.name: f for f in fields(InstanceTypeConfig) if f.name != "name"}
        for k in t:
            if k not in allowed:
                raise ConfigError(f"unknown key types.{name}.{k}; allowed: {sorted(allowed)}")
        kw = {k: _coerce(v, allowed[k].type, f"types.{name}.{k}") for k, v in t.items()}
        if "backend" not in kw:
            raise ConfigError(f"types.{name}.backend is required; allowed: {list(BACKENDS)}")
        if kw["backend"] not in BACKENDS:
            raise ConfigError(f"types.{name}.backend = {kw['backend']!r}; allowed: {list(BACKENDS)}")
        it = InstanceTypeConfig(name=name, **kw)
        if it.slots < 1 or it.threads < 1:
            raise ConfigError(f"types.{name}: slots and threads must be ≥ 1")
        types[name] = it

    fleet_raw = raw.get("fleet", {})
    static = fleet_raw.get("static", {}) if isinstance(fleet_raw, dict) else None
    if not isinstance(static, dict):
        raise ConfigError("[fleet.static] must map instance type names to counts")
    for k in fleet_raw:
        if k not in ("static", "endpoints"):
            raise ConfigError(f"unknown key fleet.{k}; allowed: ['endpoints', 'static']")
    endpoints = []
    for i, ep in enumerate(fleet_raw.get("endpoints", [])):
        endpoints.append(_endpoint(ep, i, types))
    fleet = {}
    for name, count in static.items():
        if name not in types:
            raise ConfigError(f"fleet.static.{name}: unknown instance type; defined types: {sorted(types)}")
        fleet[name] = _coerce(count, "int", f"fleet.static.{name}")
    if sum(fleet.values()) == 0 and not endpoints:
        raise ConfigError("the fleet is empty: give a type a count ≥ 1 in [fleet.static] or list [[fleet.endpoints]]")
    return Config(server, scheduler, repo, profiles_dir, qos_s, types, fleet, tuple(endpoints), path)


def load(path: str | Path) -> Config:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    # paths in the config are relative to the repository root when the file lives in configs/
    base = path.resolve().parent
    if base.name == "configs":
        base = base.parent
    return parse(raw, base, path)

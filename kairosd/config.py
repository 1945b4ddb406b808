"""Daemon configuration: TOML (tomllib) parsed into frozen dataclasses; every error names the key.

All defaults live here, in the dataclass fields; `configs/local.toml` shows every key. Checks run in
two layers, both at start, at reload and in `kairosd check-config`: `parse` refuses unknown keys (with
the nearest valid name), wrong types, values out of range and names that refer to nothing in the file;
`resolve` then checks what the file points at (the model repository holds every served model, every
instance type has a latency profile, the policy accepts its parameters). Every error names the key,
the value and what is allowed.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kairosd.errors import ConfigError

if TYPE_CHECKING:
    from kairosd.dispatch import Policy
    from kairosd.profiles import ProfileTable
    from kairosd.repository import ModelSpec

BACKENDS = ("onnxruntime", "triton", "emulated")
PROVIDERS = ("local", "ec2")
OBJECTIVES = ("max_throughput", "min_cost")
SELECTORS = ("kairos", "kairos_plus")  # autoscaler.selector: max_throughput plans one-shot, or refined by Kairos+
ADMISSION_MODES = ("qos", "deadline", "off")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002  # 0: no /metrics
    max_request_bytes: int = 64 * 1024 * 1024
    # on SIGTERM: how long queued and in-flight queries get to be answered before the rest are UNAVAILABLE
    drain_timeout_s: float = 30.0
    # processes that terminate client connections on the client ports (SO_REUSEPORT), each sending its
    # queries' bytes to the instances itself, under the one dispatcher of the main process (kairosd.fronts)
    workers: int = 1
    # /metrics and kairosd's admin endpoints (/kairos/fleet) listen here; loopback: this machine only
    metrics_host: str = "127.0.0.1"
    # TLS on the client ports (gRPC and HTTP): PEM certificate chain and key; both "" = plaintext
    tls_cert: str = ""
    tls_key: str = ""
    # mutual TLS: PEM CA bundle; clients must present a certificate it signed ("" = no client certificates)
    tls_client_ca: str = ""
    # bearer tokens, one per line ("#" comments); "" = no authentication. gRPC `authorization` metadata,
    # HTTP `Authorization` header: "Bearer <token>"; a missing or wrong token is UNAUTHENTICATED / 401
    token_file: str = ""
    # with token_file: whether the health endpoints (live, ready, model ready) need the token too
    auth_health: bool = False
    # client connections open at once on each client port; beyond it new ones wait or are refused. With
    # several front-end processes each takes an equal share (rounded up)
    max_connections: int = 4096
    # gRPC: concurrent streams (queries in flight) per HTTP/2 connection; 0: no limit. grpc refuses calls
    # beyond a limit (UNAVAILABLE, not retried by the client) rather than queue them; admission control
    # and max_connections bound the work instead
    max_concurrent_streams: int = 0
    # HTTP: the request line and each header at most this many bytes (gRPC: all metadata together)
    max_header_bytes: int = 16384
    # a client must send a request's headers within header_timeout_s and its body within body_timeout_s
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    # an idle keep-alive connection is closed after this long
    idle_timeout_s: float = 75.0


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    policy: str = "kairos"
    # parameters passed to the policy (e.g. threshold = 200 for "threshold"); kairos takes tail, margin_s,
    # lookahead, hold, tiers and sure_miss (see kairosd.dispatch)
    policy_params: Mapping[str, Any] = field(default_factory=dict)
    # how often waiting queries are checked against their deadlines while any wait
    tick_ms: float = 5.0
    # time reserved for kairosd's own overhead when judging whether an edge meets QoS
    margin_ms: float = 1.0
    # send a query to a busy instance slot that is expected to free within the measured hop to an
    # instance and back, so that it waits there (instances queue) instead of the slot idling for a round
    # trip between queries; one such query per instance at a time (kairos policy only)
    pipeline: bool = True
    # the deadline of a query whose client set none (gRPC deadline, KServe `timeout` parameter): answered
    # UNAVAILABLE after this long in kairosd. A client's own deadline is honoured as sent
    default_timeout_s: float = 30.0
    # a server-side maximum on every query's deadline, the client's included; 0: none
    max_timeout_s: float = 0.0
    # how many instances a query may be tried on when an instance fails, hangs or is too slow
    max_attempts: int = 3
    # admission control at submit (kairosd.admission): "qos" refuses a query whose estimated completion
    # (queue ahead, fleet capacity, its own service time) is past its QoS target × admission_slack or
    # its deadline, and sheds a queued one that can no longer meet them; "deadline" refuses and sheds
    # against the deadline only; "off" queues everything (bounded by max_queue_bytes only)
    admission: str = "qos"
    admission_slack: float = 1.0
    # queries waiting per model: at most this many; 0: with admission "qos", the fleet's capacity × QoS
    # target × admission_slack (at least max_queue_min), else no count limit
    max_queue: int = 0
    max_queue_min: int = 16
    # bytes of request bodies waiting, all models together
    max_queue_bytes: int = 512 * 1024 * 1024
    # a query sent to an instance is abandoned after backend_timeout_p99 × that type's profiled p99 for it
    # (at least backend_timeout_min_ms: a loaded head or instance stalls for tens of ms without being sick),
    # then retried on another instance while its deadline allows
    backend_timeout_p99: float = 4.0
    backend_timeout_min_ms: float = 200.0


@dataclass(frozen=True, slots=True)
class InstanceTypeConfig:
    name: str
    backend: str  # "onnxruntime" (kairosd worker), "triton" or "emulated" (kairosd emulated)
    price_usd_per_hour: float = 0.0
    threads: int = 1
    slots: int = 1  # queries one instance serves at once
    # backend = "emulated" only: the measured type whose service times the instance takes (e.g.
    # "g4dn.xlarge"), and where its samples come from: "kairos" (the Kairos authors' data) or a
    # directory of `kairosd profile` CSVs (a log-normal fitted to each mean and p99; kairosd.emulation)
    emulate: str = ""
    emulate_data: str = ""
    # served model → profile model that times it; from [emulation] models (not a [types.*] key)
    emulate_models: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """A backend server already running (`[[fleet.endpoints]]`): its KServe v2 gRPC address and, when
    it also speaks KServe v2 HTTP/REST (a Triton does), that address: HTTP queries are then forwarded
    to it as bytes instead of being converted to gRPC."""

    type: str
    address: str  # "host:port" of its gRPC endpoint
    http_address: str | None = None  # "host:port" of its HTTP endpoint, if any


@dataclass(frozen=True, slots=True)
class AutoscalerConfig:
    """`[autoscaler]`: the reconcile loop that builds the fleet the planner ranks best for the observed
    load. Off: the fleet is `[fleet.static]` (kept: an instance that dies is replaced)."""

    enabled: bool = False
    provider: str = "local"  # "local" (child processes) | "ec2" (boto3; settings in [provider.ec2])
    fleet_name: str = "kairosd"  # the kairos:fleet tag: instances with it are this daemon's, adopted on restart
    budget_usd_per_hour: float = 0.0  # committed cost (every billed instance) never exceeds it; required
    objective: str = "max_throughput"  # or "min_cost": the cheapest fleet covering the load × headroom
    headroom: float = 1.2  # min_cost: plan for this multiple of the observed rate
    # "kairos_plus" refines the one-shot plan by simulation in a child process (kairosd.autoscale.refine;
    # min_cost: the cheapest fleet serving the headroom in simulation, kairosd.autoscale.cover), "kairos" keeps it
    selector: str = "kairos_plus"
    plus_time_limit_s: float = 30.0  # kairos_plus: seconds of walking; past them the best simulated wins
    period_s: float = 5.0  # one reconcile (list, plan, decide, act) per period
    window_s: float = 60.0  # observed load: arrival rate and batch mix over this sliding window
    rise_window_s: float = 5.0  # a rate over this short window also counts when higher (scale out fast); 0: off
    min_queries: int = 200  # below this many queries in the window, the batch mix leans on the prior
    prior_batch_median: float = 8.0  # the prior batch mix: log-normal with this median (σ 0.75)
    up_periods: int = 1  # a larger target is acted on after holding this many consecutive periods
    down_periods: int = 6  # a smaller one after this many
    max_concurrent_launches: int = 4
    max_disruption_fraction: float = 0.25  # of the managed fleet draining or terminating at once (≥ 1)
    startup_grace_s: float = 300.0  # not ready by then: terminated, its type unavailable for unavailable_s
    suspect_grace_s: float = 60.0  # suspect (failing) longer than this: drained and terminated
    drain_timeout_s: float = 30.0  # draining longer than this: terminated with queries in flight
    unavailable_s: float = 600.0
    terminate_on_stop: bool = True  # stop the provider's instances when the daemon stops (local: always)


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
    autoscaler: AutoscalerConfig = field(default_factory=AutoscalerConfig)
    provider_raw: Mapping[str, Any] = field(default_factory=dict)  # [provider.*] tables, parsed by each provider


def unknown_key(where: str, name: str, allowed: Collection[str], kind: str = "key") -> ConfigError:
    """ConfigError for `where.name` not being one of `allowed`, naming the nearest valid name if any:
    "unknown key scheduler.tick; did you mean tick_ms? allowed: [...]"."""
    full = f"{where}.{name}" if where else name
    shown = f"[{full}]" if kind == "section" else full
    near = difflib.get_close_matches(name, list(allowed), n=1, cutoff=0.6)
    if not near and len(name) >= 3:  # a prefix of a longer name: "tick" for "tick_ms"
        near = [a for a in sorted(allowed) if a.startswith(name) or name.startswith(a)][:1]
    hint = f"; did you mean {near[0]}?" if near else ";"
    return ConfigError(f"unknown {kind} {shown}{hint} allowed: {sorted(allowed)}")


def _section(raw: Mapping[str, Any], key: str, cls: type, prefix: str) -> Any:
    data = raw.get(key, {})
    if not isinstance(data, dict):
        raise ConfigError(f"[{prefix}{key}] = {data!r}: must be a table")
    allowed = {f.name: f for f in fields(cls)}
    out = {}
    for k, v in data.items():
        if k not in allowed:
            raise unknown_key(f"{prefix}{key}", k, allowed)
        out[k] = _coerce(v, allowed[k].type, f"{prefix}{key}.{k}")
    return cls(**out)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    ann = str(annotation)
    if ann == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{key} = {value!r}: must be true or false")
    elif ann == "int":
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
    elif ann.startswith("Mapping") and not isinstance(value, dict):
        raise ConfigError(f"{key} = {value!r}: must be a table")
    return value


def _positive(key: str, value: float, allowed: str = "> 0") -> None:
    if not value > 0:
        raise ConfigError(f"{key} = {value!r}: must be {allowed}")


def _check_server(s: ServerConfig) -> None:
    if not s.host:
        raise ConfigError("server.host = '': must be an address to listen on, e.g. \"127.0.0.1\" or \"0.0.0.0\"")
    for key, port, lo in (("grpc_port", s.grpc_port, 1), ("http_port", s.http_port, 1), ("metrics_port", s.metrics_port, 0)):
        if not lo <= port <= 65535:
            allowed = "1..65535" if lo else "0..65535 (0: no /metrics)"
            raise ConfigError(f"server.{key} = {port}: must be in {allowed}")
    seen: dict[int, str] = {}
    for key, port in (("grpc_port", s.grpc_port), ("http_port", s.http_port), ("metrics_port", s.metrics_port)):
        if port and port in seen:
            raise ConfigError(f"server.{key} = {port}: already server.{seen[port]}; the ports must be distinct")
        seen[port] = key
    _positive("server.max_request_bytes", s.max_request_bytes, "> 0 (bytes)")
    if not s.metrics_host:
        raise ConfigError("server.metrics_host = '': must be an address, e.g. \"127.0.0.1\" (this machine only)")
    if bool(s.tls_cert) != bool(s.tls_key):
        raise ConfigError(f"server.tls_cert = {s.tls_cert!r}, server.tls_key = {s.tls_key!r}: give both (PEM "
                          "certificate chain and its private key) or neither")
    if s.tls_client_ca and not s.tls_cert:
        raise ConfigError(f"server.tls_client_ca = {s.tls_client_ca!r} needs server.tls_cert and server.tls_key: "
                          "mutual TLS runs over TLS")
    if s.workers < 1:
        raise ConfigError(f"server.workers = {s.workers}: must be ≥ 1 (front-end processes; 1: the main process only)")
    for key in ("max_connections", "max_header_bytes"):
        if getattr(s, key) < 1:
            raise ConfigError(f"server.{key} = {getattr(s, key)}: must be ≥ 1")
    for key in ("header_timeout_s", "body_timeout_s", "idle_timeout_s"):
        _positive(f"server.{key}", getattr(s, key), "> 0 (seconds)")


def _check_scheduler(c: SchedulerConfig) -> None:
    from kairosd.dispatch import POLICIES  # policies are chosen by name; refuse unknown ones now

    if c.policy not in POLICIES:
        near = difflib.get_close_matches(c.policy, list(POLICIES), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"scheduler.policy = {c.policy!r}: unknown policy{hint} allowed: {sorted(POLICIES)}")
    _positive("scheduler.tick_ms", c.tick_ms, "> 0 (ms between deadline checks)")
    _positive("scheduler.default_timeout_s", c.default_timeout_s, "> 0 (seconds)")
    if c.max_attempts < 1:
        raise ConfigError(f"scheduler.max_attempts = {c.max_attempts}: must be ≥ 1 (1: never retry on another instance)")
    if c.admission not in ADMISSION_MODES:
        raise ConfigError(f"scheduler.admission = {c.admission!r}; allowed: {list(ADMISSION_MODES)}")
    _positive("scheduler.admission_slack", c.admission_slack, "> 0 (a multiple of the QoS target)")
    _positive("scheduler.max_queue_bytes", c.max_queue_bytes, "> 0 (bytes)")
    if c.max_queue_min < 1:
        raise ConfigError(f"scheduler.max_queue_min = {c.max_queue_min}: must be ≥ 1")
    if c.backend_timeout_p99 < 1:
        raise ConfigError(f"scheduler.backend_timeout_p99 = {c.backend_timeout_p99}: must be ≥ 1 (a multiple of "
                          "the type's profiled p99)")
    _positive("scheduler.backend_timeout_min_ms", c.backend_timeout_min_ms, "> 0 (ms)")
    tail = c.policy_params.get("tail", True)
    if c.policy == "kairos" and not isinstance(tail, bool):
        raise ConfigError(f"scheduler.policy_params.tail = {tail!r}: must be true (feasibility on the p99 latency) "
                          "or false (on the mean)")


def _endpoint(ep: Any, i: int, types: Mapping[str, InstanceTypeConfig]) -> EndpointConfig:
    key = f"fleet.endpoints[{i}]"
    if isinstance(ep, dict):
        for k in ep:
            if k not in ("type", "address", "http_address"):
                raise unknown_key(key, k, ("type", "address", "http_address"))
    if not isinstance(ep, dict) or not {"type", "address"} <= set(ep):
        raise ConfigError(
            f"{key} must be a table with 'type', 'address' (gRPC host:port) and optionally 'http_address' (host:port)"
        )
    if ep["type"] not in types:
        raise ConfigError(f"{key}.type = {ep['type']!r}: unknown instance type; defined types: {sorted(types)}")
    for k in ("address", "http_address"):
        if k in ep and (not isinstance(ep[k], str) or ":" not in ep[k]):
            raise ConfigError(f"{key}.{k} = {ep[k]!r}: must be a string 'host:port'")
    return EndpointConfig(str(ep["type"]), ep["address"], ep.get("http_address"))


def parse(raw: Mapping[str, Any], base_dir: Path, path: Path | None = None) -> Config:
    """Build a Config from parsed TOML; relative paths are relative to `base_dir`."""
    known = {"server", "scheduler", "models", "types", "fleet", "autoscaler", "provider", "emulation"}
    for k in raw:
        if k not in known:
            raise unknown_key("", k, known, kind="section")
    server = _section(raw, "server", ServerConfig, "")
    _check_server(server)
    scheduler = _section(raw, "scheduler", SchedulerConfig, "")
    _check_scheduler(scheduler)

    models = raw.get("models", {})
    if not isinstance(models, dict):
        raise ConfigError(f"[models] = {models!r}: must be a table with repository, profiles and [models.qos_ms]")
    for k in models:
        if k not in ("repository", "profiles", "qos_ms"):
            raise unknown_key("models", k, ("repository", "profiles", "qos_ms"))
    repo = base_dir / str(_coerce(models.get("repository", "model_repository"), "str", "models.repository"))
    profiles_dir = base_dir / str(_coerce(models.get("profiles", "profiles/local"), "str", "models.profiles"))
    qos_raw = models.get("qos_ms", {})
    if not isinstance(qos_raw, dict) or not qos_raw:
        raise ConfigError(f"models.qos_ms = {qos_raw!r}: [models.qos_ms] must give each served model's QoS target "
                          "in ms, e.g. dlrm = 50")
    qos_s = {m: _coerce(v, "float", f"models.qos_ms.{m}") / 1e3 for m, v in qos_raw.items()}
    for m, q in qos_s.items():
        _positive(f"models.qos_ms.{m}", q * 1e3, "> 0 (ms)")

    emulation = _emulation_models(raw, qos_s)
    types: dict[str, InstanceTypeConfig] = {}
    for name, t in raw.get("types", {}).items():
        if not isinstance(t, dict):
            raise ConfigError(f"[types.{name}] must be a table")
        allowed = {f.name: f for f in fields(InstanceTypeConfig) if f.name not in ("name", "emulate_models")}
        for k in t:
            if k not in allowed:
                raise unknown_key(f"types.{name}", k, allowed)
        kw = {k: _coerce(v, allowed[k].type, f"types.{name}.{k}") for k, v in t.items()}
        if "backend" not in kw:
            raise ConfigError(f"types.{name}.backend is required; allowed: {list(BACKENDS)}")
        if kw["backend"] not in BACKENDS:
            raise ConfigError(f"types.{name}.backend = {kw['backend']!r}; allowed: {list(BACKENDS)}")
        it = InstanceTypeConfig(name=name, **kw)
        for k, v in (("slots", it.slots), ("threads", it.threads)):
            if v < 1:
                raise ConfigError(f"types.{name}.{k} = {v}: must be ≥ 1")
        if it.backend == "emulated" or it.emulate or it.emulate_data:
            it = _emulated(it, emulation, sorted(qos_s), base_dir)
        types[name] = it

    fleet_raw = raw.get("fleet", {})
    static = fleet_raw.get("static", {}) if isinstance(fleet_raw, dict) else None
    if not isinstance(static, dict):
        raise ConfigError(f"fleet.static = {static!r}: [fleet.static] must map instance type names to counts")
    for k in fleet_raw:
        if k not in ("static", "endpoints"):
            raise unknown_key("fleet", k, ("endpoints", "static"))
    endpoints = []
    for i, ep in enumerate(fleet_raw.get("endpoints", [])):
        endpoints.append(_endpoint(ep, i, types))
    fleet = {}
    for name, count in static.items():
        if name not in types:
            near = difflib.get_close_matches(name, list(types), n=1)
            hint = f"did you mean {near[0]}? " if near else ""
            raise ConfigError(f"fleet.static.{name} = {count!r}: unknown instance type; {hint}defined types: {sorted(types)}")
        fleet[name] = _coerce(count, "int", f"fleet.static.{name}")
    autoscaler = _autoscaler(raw, types)
    if autoscaler.enabled and sum(fleet.values()):
        raise ConfigError("[fleet.static] and [autoscaler] enabled = true exclude each other: the autoscaler "
                          "chooses the counts; remove [fleet.static] or set enabled = false")
    if not autoscaler.enabled and sum(fleet.values()) == 0 and not endpoints:
        raise ConfigError("the fleet is empty: give a type a count ≥ 1 in [fleet.static], list [[fleet.endpoints]], "
                          "or turn on [autoscaler]")
    provider_raw = raw.get("provider", {})
    if not isinstance(provider_raw, dict):
        raise ConfigError("[provider] must be a table of provider tables, e.g. [provider.ec2]")
    for k in provider_raw:
        if k != "ec2":
            raise unknown_key("provider", k, ("ec2",), kind="section")
    if autoscaler.enabled and autoscaler.provider == "ec2":
        if "ec2" not in provider_raw:
            raise ConfigError("[autoscaler] provider = \"ec2\" needs a [provider.ec2] section (region, per-type AMI...): "
                              "see configs/aws.toml")
    if "ec2" in provider_raw:
        from kairosd.providers.ec2_config import parse_ec2  # validated at load, like everything else

        parse_ec2(provider_raw["ec2"], types, base_dir=base_dir)
    return Config(server, scheduler, repo, profiles_dir, qos_s, types, fleet, tuple(endpoints), path, autoscaler,
                  provider_raw)


def _emulation_models(raw: Mapping[str, Any], qos_s: Mapping[str, float]) -> dict[str, str]:
    """`[emulation] models = {served = "profile model"}`: which profile model times each served model."""
    section = raw.get("emulation", {})
    if not isinstance(section, dict):
        raise ConfigError("[emulation] must be a table, e.g. models = {dlrm = \"rm2\", ncf = \"ncf\"}")
    for k in section:
        if k != "models":
            raise unknown_key("emulation", k, ("models",))
    models = section.get("models", {})
    if not isinstance(models, dict) or not all(isinstance(v, str) and v for v in models.values()):
        raise ConfigError("emulation.models must map served models to profile model names, "
                          "e.g. {dlrm = \"rm2\", ncf = \"ncf\"}")
    unknown = sorted(set(models) - set(qos_s))
    if unknown:
        raise ConfigError(f"emulation.models names {unknown}, which [models.qos_ms] does not serve ({sorted(qos_s)})")
    return dict(models)


def _emulated(t: InstanceTypeConfig, models: Mapping[str, str], served: list[str], base_dir: Path) -> InstanceTypeConfig:
    """Check an emulated type's keys and its data (the type and every profile model must be in it)."""
    key = f"types.{t.name}"
    if t.backend != "emulated":
        bad = "emulate" if t.emulate else "emulate_data"
        raise ConfigError(f"{key}.{bad} is only allowed with backend = \"emulated\" (backend is {t.backend!r})")
    if not t.emulate:
        raise ConfigError(f"{key}.emulate is required with backend = \"emulated\": the measured type it stands "
                          "for, e.g. \"g4dn.xlarge\"")
    missing = [m for m in served if m not in models]
    if missing:
        raise ConfigError(f"{key} is emulated: [emulation] models must say which profile model times each served "
                          f"model; {missing} missing, e.g. models = {{dlrm = \"rm2\", ncf = \"ncf\"}}")
    data = t.emulate_data or "kairos"
    if data != "kairos":
        path = Path(data)
        data = str(path if path.is_absolute() else base_dir / path)
    from kairosd.emulation import load_cells  # the data is read now: a typo fails at load, not at launch

    try:
        load_cells(t.emulate, data, models)
    except ConfigError as exc:
        raise ConfigError(f"{key} (emulate = {t.emulate!r}, emulate_data = {t.emulate_data or 'kairos'!r}): {exc}") from None
    return replace(t, emulate_data=data, emulate_models=dict(models))


def _autoscaler(raw: Mapping[str, Any], types: Mapping[str, InstanceTypeConfig]) -> AutoscalerConfig:
    a = _section(raw, "autoscaler", AutoscalerConfig, "")
    if a.provider not in PROVIDERS:
        raise ConfigError(f"autoscaler.provider = {a.provider!r}; allowed: {list(PROVIDERS)}")
    if a.objective not in OBJECTIVES:
        raise ConfigError(f"autoscaler.objective = {a.objective!r}; allowed: {list(OBJECTIVES)}")
    if a.selector not in SELECTORS:
        raise ConfigError(f"autoscaler.selector = {a.selector!r}; allowed: {list(SELECTORS)}")
    if not a.plus_time_limit_s > 0:
        raise ConfigError(f"autoscaler.plus_time_limit_s = {a.plus_time_limit_s}: must be > 0 (seconds of the "
                          "Kairos+ walk)")
    if a.enabled and a.budget_usd_per_hour <= 0:
        raise ConfigError(f"autoscaler.budget_usd_per_hour = {a.budget_usd_per_hour}: must be > 0 when the autoscaler "
                          "is enabled (the committed $/h of the fleet never exceeds it)")
    _positive("autoscaler.period_s", a.period_s, "> 0 (seconds between reconciles)")
    _positive("autoscaler.window_s", a.window_s, "> 0 (seconds of observed load)")
    if a.headroom < 1.0:
        raise ConfigError(f"autoscaler.headroom = {a.headroom}: must be ≥ 1 (plan for at least the observed rate)")
    if not 0 < a.max_disruption_fraction <= 1:
        raise ConfigError(f"autoscaler.max_disruption_fraction = {a.max_disruption_fraction}: must be in (0, 1]")
    for k in ("up_periods", "down_periods", "max_concurrent_launches"):
        if getattr(a, k) < 1:
            raise ConfigError(f"autoscaler.{k} = {getattr(a, k)}: must be ≥ 1")
    if a.prior_batch_median < 1:
        raise ConfigError(f"autoscaler.prior_batch_median = {a.prior_batch_median}: must be ≥ 1")
    if a.enabled and not types:
        raise ConfigError("the autoscaler needs instance types to choose from: define [types.*]")
    return a


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


@dataclass(frozen=True)
class Resolved:
    """A config with what it points at, checked: the served models' specs (exactly the models with a QoS
    target), the latency table covering every instance type the fleet may run, and the dispatch policy."""

    config: Config
    repository: Mapping[str, ModelSpec]
    profiles: ProfileTable
    policy: Policy


def load_profiles(config: Config) -> ProfileTable:
    """The latency table for the served models, checked to cover every instance type of the fleet."""
    from kairosd.profiles import ProfileTable

    try:
        profiles = ProfileTable.load_dir(config.profiles_dir, models=sorted(config.qos_s))
    except (ConfigError, OSError) as exc:
        raise ConfigError(f"models.profiles = {str(config.profiles_dir)!r}: {exc}; it must hold <model>.csv for every "
                          "served model (measure them with `kairosd profile`)") from None
    wanted = list(config.types) if config.autoscaler.enabled else list(config.fleet)
    wanted += [ep.type for ep in config.endpoints]
    missing = sorted({t for t in wanted if t not in profiles.types})
    if missing:
        raise ConfigError(
            f"types {missing}: no latency profile in models.profiles = {str(config.profiles_dir)!r} (profiled: "
            f"{list(profiles.types)}); measure them with `kairosd profile --config {config.path}` or remove them"
        )
    return profiles


def planning_tail(config: Config) -> bool:
    """Whether the planner judges QoS feasibility per batch on the p99 latency (True) or on the mean, as the
    configured dispatcher tests it: the kairos policy's `tail` parameter (default p99). A plan made on the
    other test than the dispatcher's can pick a fleet the dispatcher cannot run within QoS (a type whose
    mean meets QoS and whose tail does not takes queries under a mean test). `feasibility_on_p99` of the
    `[scheduler]` policy."""
    from kairosd.dispatch import feasibility_on_p99

    return feasibility_on_p99(config.scheduler.policy, config.scheduler.policy_params)


def dispatch_params(config: Config) -> dict[str, Any]:
    """The parameters `[scheduler]` gives its dispatch policy (`scheduler.policy_params`; kairos: margin_s
    from margin_ms), as `build_policy` and the planner's simulator pass them."""
    params = dict(config.scheduler.policy_params)
    if config.scheduler.policy == "kairos":
        params.setdefault("margin_s", config.scheduler.margin_ms / 1e3)
    return params


def build_policy(config: Config, profiles: ProfileTable) -> Policy:
    """The dispatch policy `[scheduler]` names, with its parameters (`dispatch_params`)."""
    from kairosd.dispatch import make_policy

    params = dispatch_params(config)
    try:
        return make_policy(config.scheduler.policy, profiles, **params)
    except ConfigError as exc:
        raise ConfigError(f"scheduler.policy_params = {dict(config.scheduler.policy_params)!r}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"scheduler.policy_params = {dict(config.scheduler.policy_params)!r}: not accepted by "
                          f"policy {config.scheduler.policy!r}: {exc}") from None


def served_models(config: Config) -> dict[str, ModelSpec]:
    """The repository's specs of the served models: exactly those with a QoS target. Raises ConfigError
    naming the key when the repository does not load or lacks one of them."""
    from kairosd.repository import load_repository

    try:
        repo = load_repository(config.model_repository)
    except ConfigError as exc:
        raise ConfigError(f"models.repository = {str(config.model_repository)!r}: {exc}") from None
    unknown = sorted(set(config.qos_s) - set(repo))
    if unknown:
        raise ConfigError(f"models.qos_ms names {unknown}, which models.repository = {str(config.model_repository)!r} "
                          f"does not hold (it has {sorted(repo)}); add the model there or remove its QoS target")
    return {name: repo[name] for name in sorted(config.qos_s)}


def resolve(config: Config) -> Resolved:
    """Check what the config refers to outside the file (reads the repository and the profiles): every
    served model is in models.repository, every instance type the fleet may run has a latency profile,
    the policy accepts its parameters. Raises ConfigError naming the key."""
    served = served_models(config)
    profiles = load_profiles(config)
    return Resolved(config, served, profiles, build_policy(config, profiles))


def load_checked(path: str | Path) -> Resolved:
    """`load` then `resolve`: every check `kairosd check-config` runs (and the daemon, at start and reload)."""
    return resolve(load(path))


OFF_WORDS = ("0", "false", "no")


def env_switch(name: str, off: Collection[str] = OFF_WORDS) -> bool:
    """An on-by-default switch in the environment (the `KAIROSD_*` transport and path switches): off when
    the variable, stripped and lower-cased, is one of `off`; on when unset or anything else."""
    return os.environ.get(name, "").strip().lower() not in off

"""The daemon: config → repository, profiles, policy → registry + local fleet → scheduler → front ends.

Start-up and shutdown are ordered: the fleet becomes ready before the front ends listen; on stop the
front ends refuse new requests, queued and in-flight queries are answered, then the fleet stops.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping

import grpc
from aiohttp import web
from tritonclient.grpc import service_pb2

from kairosd.backends.http_client import HttpForward, HttpReply
from kairosd.config import Config
from kairosd.dispatch import make_policy
from kairosd.errors import ConfigError, PortInUse
from kairosd.fleet import Fleet
from kairosd.fleet_setup import build_fleet
from kairosd.health import is_ready, model_ready
from kairosd.metrics import start_metrics_server
from kairosd.profiles import ProfileTable
from kairosd.registry import InstanceState, Registry
from kairosd.repository import ModelSpec, load_repository
from kairosd.scheduler import Scheduler
from kairosd.server.grpc_frontend import start_grpc_server
from kairosd.server.http_frontend import start_http_server

log = logging.getLogger(__name__)


def load_profiles(config: Config) -> ProfileTable:
    """The latency table for the served models, checked to cover every instance type of the fleet."""
    profiles = ProfileTable.load_dir(config.profiles_dir, models=sorted(config.qos_s))
    wanted = list(config.types) if config.autoscaler.enabled else list(config.fleet)
    wanted += [ep.type for ep in config.endpoints]
    missing = sorted({t for t in wanted if t not in profiles.types})
    if missing:
        raise ConfigError(
            f"instance types {missing} have no latency profile in {config.profiles_dir} (profiled: "
            f"{list(profiles.types)}); measure them with `kairosd profile --config {config.path}`"
        )
    return profiles


class Daemon:
    """Implements `kairosd.service.InferenceService` on top of the scheduler."""

    def __init__(self, config: Config) -> None:
        self.config = config
        repo = load_repository(config.model_repository)
        unknown = sorted(set(config.qos_s) - set(repo))
        if unknown:
            raise ConfigError(f"models.qos_ms names {unknown}, which are not in {config.model_repository} ({sorted(repo)})")
        # serve exactly the models that have a QoS target
        self._repository = {name: repo[name] for name in sorted(config.qos_s)}
        self.profiles = load_profiles(config)
        params = dict(config.scheduler.policy_params)
        if config.scheduler.policy == "kairos":
            params.setdefault("margin_s", config.scheduler.margin_ms / 1e3)
        self.policy = make_policy(config.scheduler.policy, self.profiles, **params)
        self.registry = Registry()
        self.scheduler: Scheduler | None = None
        self.fleet: Fleet | None = None
        self._grpc: grpc.aio.Server | None = None
        self._http: web.AppRunner | None = None
        self._stop_metrics: Callable[[], Awaitable[None]] | None = None
        self._started = False

    # ---- InferenceService -----------------------------------------------------------------
    @property
    def repository(self) -> Mapping[str, ModelSpec]:
        return self._repository

    def is_live(self) -> bool:
        return True

    def _serving(self) -> bool:
        return self._started and self.scheduler is not None and self.scheduler.accepting

    def is_ready(self) -> bool:
        """Front ends listen and every served model has a READY instance (`kairosd.health`)."""
        return self.scheduler is not None and is_ready(self.registry, self.scheduler.model_idx, self._serving())

    def model_ready(self, name: str) -> bool:
        return self.scheduler is not None and model_ready(self.registry, self.scheduler.model_idx, self._serving(), name)

    def fleet_status(self) -> dict[str, object]:
        """The fleet as `kairosd fleet status` shows it (served on HTTP at /kairos/fleet)."""
        from kairosd.fleet_status import fleet_status

        return fleet_status(self.fleet, self.config) if self.fleet is not None else {}

    async def infer(
        self, request: service_pb2.ModelInferRequest, spec: ModelSpec, batch: int, timeout_s: float | None = None,
        raw: bytes | None = None,
    ) -> bytes:
        assert self.scheduler is not None
        response = await self.scheduler.submit(request, spec, batch, timeout_s, raw)
        assert isinstance(response, bytes)  # a gRPC query is answered over gRPC
        return response

    async def infer_http(
        self, forward: HttpForward, spec: ModelSpec, batch: int, timeout_s: float | None = None
    ) -> HttpReply | bytes:
        assert self.scheduler is not None
        return await self.scheduler.submit(None, spec, batch, timeout_s, http=forward)

    # ---- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.config
        s = cfg.server
        # before the fleet: a taken port should fail in a second, not after every instance started
        ensure_ports_free(s.host, {"server.grpc_port": s.grpc_port, "server.http_port": s.http_port,
                                   "server.metrics_port": s.metrics_port})
        self.scheduler = Scheduler(self.registry, self.profiles, self.policy, cfg.qos_s, cfg.scheduler)
        self.fleet = build_fleet(cfg, self.registry, self.profiles, self.scheduler)
        # a static fleet is ready before the front ends listen; an autoscaled one grows while they do
        await self.fleet.start(wait_ready_timeout_s=None if cfg.autoscaler.enabled else 180.0)
        try:
            self._grpc = await start_grpc_server(self, s.host, s.grpc_port, s.max_request_bytes)
            self._http = await start_http_server(self, s.host, s.http_port, s.max_request_bytes)
            if s.metrics_port:
                self._stop_metrics = await start_metrics_server(self.scheduler, s.host, s.metrics_port, self.fleet)
        except OSError as exc:  # taken between the check above and now
            raise PortInUse(f"cannot listen on {s.host}: {exc}; free the port or change it in [server]") from exc
        self._started = True
        log.info(
            "kairosd ready grpc=%s:%d http=%s:%d metrics=%s:%d policy=%s instances=%d models=%s",
            s.host, s.grpc_port, s.host, s.http_port, s.host, s.metrics_port, cfg.scheduler.policy,
            len(self.registry.ready()), ",".join(self._repository),
        )

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Refuse new requests, answer every queued and in-flight one (up to the timeout), stop the fleet."""
        if self.scheduler is not None:
            drained = await self.scheduler.drain(drain_timeout_s)
            if not drained:
                log.warning("drain timed out after %.1f s; answering the rest UNAVAILABLE", drain_timeout_s)
            self.scheduler.close()
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
        if self._http is not None:
            await self._http.cleanup()
        if self._stop_metrics is not None:
            await self._stop_metrics()
        if self.fleet is not None:
            await self.fleet.stop()
        log.info("kairosd stopped")


def ensure_ports_free(host: str, ports: dict[str, int]) -> None:
    """Raise PortInUse naming the config key of the first port (non-zero) that cannot be bound on `host`."""
    for key, port in ports.items():
        if not port:
            continue
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind: TIME_WAIT is no conflict
            try:
                sock.bind((host, port))
            except OSError as exc:
                raise PortInUse(f"{key} = {port}: cannot listen on {host}:{port} ({exc.strerror}); "
                                f"stop what holds it (`ss -ltnp 'sport = :{port}'`) or set another {key}") from None


async def run_until_signal(daemon: Daemon, drain_timeout_s: float = 30.0) -> None:
    """Start, serve until SIGTERM/SIGINT, then stop in order. A second signal exits at once."""
    import signal

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = 0

    def on_signal(sig: signal.Signals) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            log.warning("second %s: exiting without draining", sig.name)
            raise SystemExit(1)
        log.info("%s received: draining", sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await daemon.start()
        await stop.wait()
    finally:
        await daemon.stop(drain_timeout_s)


__all__ = ["Daemon", "InstanceState", "load_profiles", "run_until_signal"]

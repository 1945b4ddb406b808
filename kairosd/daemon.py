"""The daemon: config → repository, profiles, policy → registry + fleet → scheduler → front ends.

Start-up is one ordered stack of components (`contextlib.AsyncExitStack`), undone in reverse on stop:
access files (TLS material, tokens: read and checked before anything starts) → watchdog →
scheduler → fleet (ready before the front ends listen, when static) → gRPC → HTTP → /metrics and the
admin endpoints (on `metrics_host`, loopback by default) → drain. Stopping therefore first refuses
new queries and answers every queued and in-flight one (up to `[server] drain_timeout_s`, then
UNAVAILABLE), then closes the front ends, then stops the fleet (local instances exit), and the
watchdog pings until the end. systemd hears READY=1 once the
front ends listen, RELOADING=1/READY=1 around a reload (SIGHUP) and STOPPING=1 at shutdown
(`kairosd.notify`). A reload reads and checks the file off the event loop, classifies the changes
(`kairosd.reload`) and swaps the reloadable settings between dispatch rounds, or changes nothing; it
also re-reads `server.token_file` (new tokens replace the old ones at once, an unreadable or empty
file fails the reload).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING

import grpc
from aiohttp import web
from tritonclient.grpc import service_pb2

from kairosd import heap
from kairosd.backends.http_client import HttpForward, HttpReply
from kairosd.backends.process import reserve_ports
from kairosd.config import Config, Resolved, build_policy, load_checked, load_profiles, resolve
from kairosd.errors import ConfigError, PortInUse
from kairosd.fleet import Fleet
from kairosd.fleet_setup import build_fleet, reconfigure_fleet
from kairosd.fronts import FrontEndPool
from kairosd.health import is_ready, model_ready
from kairosd.metrics import FrontEndCollector, FrontEndsCollector, GcCollector, start_metrics_server
from kairosd.notify import Notifier
from kairosd.registry import InstanceState, Registry
from kairosd.reload import Reload, plan_reload
from kairosd.repository import ModelSpec
from kairosd.scheduler import Scheduler
from kairosd.server.access import Access, GrpcAuthInterceptor, describe, load_access, read_tokens
from kairosd.server.grpc_frontend import GrpcLimits, start_grpc_server
from kairosd.server.http_frontend import start_http_server
from kairosd.server.http_limits import ConnectionGate, HttpLimits

if TYPE_CHECKING:
    from kairosd.dispatch import Policy

log = logging.getLogger(__name__)
# after a drain: the front ends keep refusing until no request came for REFUSALS_QUIET_S (at most
# REFUSALS_BOUND_S), then stop
REFUSALS_QUIET_S = 0.05
REFUSALS_BOUND_S = 1.0


class Daemon:
    """Implements `kairosd.service.InferenceService` on top of the scheduler."""

    def __init__(self, config: Config | Resolved, notifier: Notifier | None = None) -> None:
        """`config` is checked here (`kairosd.config.resolve`) unless it comes resolved already."""
        resolved = config if isinstance(config, Resolved) else resolve(config)
        self.config = resolved.config
        self._repository = dict(resolved.repository)
        self.profiles = resolved.profiles
        self.policy = resolved.policy
        self.notifier = notifier if notifier is not None else Notifier(None)
        self.registry = Registry()
        self.scheduler: Scheduler | None = None
        self.fleet: Fleet | None = None
        self._grpc: grpc.aio.Server | None = None
        self._http: web.AppRunner | None = None
        self._access = Access(None, None)
        self._stack: contextlib.AsyncExitStack | None = None
        self._drain_timeout_s = self.config.server.drain_timeout_s
        self._reload_lock = asyncio.Lock()
        self._started = False
        self.reloads_applied = 0
        self.fronts: FrontEndPool | None = None  # the front-end processes ([server] workers > 1)

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

    def _front_state(self) -> dict[str, object]:
        """What the front-end processes answer for health."""
        return {"accepting": self._serving(), "ready": [m for m in sorted(self.config.qos_s) if self.model_ready(m)]}

    def fleet_status(self) -> dict[str, object]:
        """The fleet as `kairosd fleet status` shows it (served at /kairos/fleet on the metrics port)."""
        from kairosd.fleet_status import fleet_status

        if self.fleet is None:
            return {}
        return {**fleet_status(self.fleet, self.config),
                "qos_ms": {m: round(q * 1e3, 6) for m, q in self.config.qos_s.items()},
                "policy": self.config.scheduler.policy, "reloads_applied": self.reloads_applied}

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
        """Start every component in order; a failure (or cancellation) undoes what started, in reverse."""
        stack = contextlib.AsyncExitStack()
        try:
            await self._start(stack)
        except BaseException:
            self._started = False
            await stack.aclose()
            raise
        self._stack = stack

    async def _start(self, stack: contextlib.AsyncExitStack) -> None:
        cfg = self.config
        s = cfg.server
        log.info("starting pid=%d config=%s models=%s policy=%s", os.getpid(), cfg.path, ",".join(self._repository),
                 cfg.scheduler.policy)
        self.notifier.status("starting")
        # TLS material and tokens first: a bad file should fail in a second, naming the key and path
        access = self._access = await asyncio.to_thread(load_access, cfg)
        # the watchdog pings through start-up and shutdown: the first component in, the last out
        watchdog = asyncio.get_running_loop().create_task(self.notifier.watchdog_loop(), name="sd-watchdog")
        stack.push_async_callback(_cancel, watchdog)
        # before the fleet: a taken port should fail in a second, not after every instance started
        ensure_ports_free(s.host, {"server.grpc_port": s.grpc_port, "server.http_port": s.http_port})
        ensure_ports_free(s.metrics_host, {"server.metrics_port": s.metrics_port})
        # local instances pick free ports while these are still unbound: never one of these
        reserve_ports((s.grpc_port, s.http_port, s.metrics_port))
        scheduler = self.scheduler = Scheduler(self.registry, self.profiles, self.policy, cfg.qos_s, cfg.scheduler)
        stack.callback(scheduler.close)  # whatever is still queued at the very end: UNAVAILABLE
        fleet = self.fleet = build_fleet(cfg, self.registry, self.profiles, scheduler)
        stack.push_async_callback(fleet.stop)  # also after a partial start: launched instances stop
        self.notifier.status("starting the fleet")
        # a static fleet is ready before the front ends listen; an autoscaled one grows while they do
        await fleet.start(wait_ready_timeout_s=None if cfg.autoscaler.enabled else 180.0)
        http_limits = HttpLimits.from_server(s)
        gate = ConnectionGate(http_limits.max_connections)
        host = s.host
        shared = s.workers > 1  # the client ports are shared with the front-end processes (SO_REUSEPORT)
        try:
            self._grpc = await start_grpc_server(
                self, s.host, s.grpc_port, s.max_request_bytes, limits=GrpcLimits.from_server(s),
                credentials=access.tls.grpc_credentials() if access.tls else None,
                interceptors=[GrpcAuthInterceptor(access.auth)] if access.auth else (), reuse_port=shared,
            )
            stack.push_async_callback(self._grpc.stop, 1.0)
            self._http = await start_http_server(
                self, s.host, s.http_port, s.max_request_bytes, limits=http_limits, gate=gate,
                ssl_context=access.tls.ssl_context() if access.tls else None, auth=access.auth, reuse_port=shared,
            )
            stack.push_async_callback(self._http.cleanup)
            if shared:  # started below, once /metrics and the admin endpoints listen
                self.fronts = FrontEndPool(cfg, scheduler, self.registry, self._front_state)
                stack.push_async_callback(self.fronts.stop)
            if s.metrics_port:
                host = s.metrics_host
                gc_pauses = GcCollector()
                stack.callback(gc_pauses.close)
                stack.push_async_callback(await start_metrics_server(
                    scheduler, s.metrics_host, s.metrics_port, fleet, fleet_status=self.fleet_status,
                    extra=[gc_pauses, FrontEndCollector(access.auth, gate, self.fronts.counters if self.fronts else None)]
                    + ([FrontEndsCollector(scheduler, self.fronts.submitted)] if self.fronts is not None else []),
                ))
        except OSError as exc:  # taken between the check above and now
            raise PortInUse(f"cannot listen on {host}: {exc}; free the port or change it in [server]") from exc
        if self.fronts is not None:
            self.notifier.status("starting the front-end processes")
            await self.fronts.start()
        stack.push_async_callback(self._drain)  # the first step of stopping
        self._started = True
        if self.fronts is not None:
            self.fronts.push()
        log.info(
            "ready grpc=%s:%d http=%s:%d metrics=%s:%d access=\"%s\" policy=%s instances=%d models=%s",
            s.host, s.grpc_port, s.host, s.http_port, s.metrics_host, s.metrics_port, describe(access),
            cfg.scheduler.policy, len(self.registry.ready()), ",".join(self._repository),
        )
        self.notifier.ready(self._status())

    def _status(self) -> str:
        s = self.config.server
        return (f"serving {','.join(self._repository)} on grpc {s.host}:{s.grpc_port} http {s.host}:{s.http_port}; "
                f"{len(self.registry.ready())} instances ready")

    async def _drain(self) -> None:
        """Refuse new queries; answer every queued and in-flight one within the drain timeout, the rest UNAVAILABLE."""
        if self.scheduler is None:
            return
        self._started = False
        if self.fronts is not None:
            self.fronts.push()  # the front-end processes report not ready and refuse new queries
        timeout_s = self._drain_timeout_s
        log.info("draining queued=%d in_flight=%d timeout_s=%g", len(self.scheduler.waiting), self.scheduler.in_flight,
                 timeout_s)
        if not await self.scheduler.drain(timeout_s):
            log.warning("drain timed out after %g s; answering the rest UNAVAILABLE queued=%d in_flight=%d", timeout_s,
                        len(self.scheduler.waiting), self.scheduler.in_flight)
        self.scheduler.close()
        # requests already received but not yet handled (a burst on a busy machine) are refused UNAVAILABLE
        # before the gRPC server stops: its stop would cancel them (CANCELLED, which clients do not retry)
        if not await self.scheduler.refusals_settle(REFUSALS_QUIET_S, REFUSALS_BOUND_S):
            log.warning("requests still arriving %g s after the drain; stopping the front ends anyway", REFUSALS_BOUND_S)

    async def stop(self, drain_timeout_s: float | None = None) -> None:
        """Undo the start-up stack in reverse: drain (up to `drain_timeout_s`, default `[server]
        drain_timeout_s`), close the front ends, stop the fleet. Idempotent."""
        self._drain_timeout_s = self.config.server.drain_timeout_s if drain_timeout_s is None else drain_timeout_s
        stack, self._stack = self._stack, None
        if stack is None:
            return
        self.notifier.stopping()
        log.info("stopping drain_timeout_s=%g", self._drain_timeout_s)
        await stack.aclose()
        log.info("stopped")

    # ---- reload -------------------------------------------------------------------------------
    async def reload(self) -> Reload | None:
        """Re-read the config file and apply what may change live; None when the file is invalid.

        The file is read and every check run off the event loop; a change that needs a restart refuses
        the whole reload (one log line naming the keys) and an invalid file changes nothing. systemd
        hears RELOADING=1 first and READY=1 when the reload is over, whatever its outcome."""
        async with self._reload_lock:
            self.notifier.reloading()
            result = await self._reload()
            if result is not None and result.applies and self.fronts is not None:
                for pid in self.fronts.pids:  # they re-read the token file too
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGHUP)
            self.notifier.ready(self._status())
            return result

    async def _reload(self) -> Reload | None:
        path = self.config.path
        if path is None:
            log.error("reload failed: the daemon was started from a Config without a file; nothing to re-read")
            return None
        try:
            new = await asyncio.to_thread(load_checked, path)
        except ConfigError as exc:
            log.error("reload failed path=%s: %s; keeping the current settings", path, exc)
            return None
        plan = plan_reload(self.config, new.config)
        if not plan.applies:
            log.warning("reload refused path=%s: needs a restart: %s; keeping the current settings (restart kairosd "
                        "to apply them)", path, "; ".join(str(c) for c in plan.refused))
            return plan
        # the token file is re-read on every reload, whether or not its path changed
        tokens: tuple[str, ...] | None = None
        if new.config.server.token_file:
            try:
                tokens = await asyncio.to_thread(read_tokens, new.config)
            except ConfigError as exc:
                log.error("reload failed path=%s: %s; keeping the current settings and tokens", path, exc)
                return None
        if not plan.changed:
            self._swap_tokens(tokens, new.config)
            log.info("reload applied path=%s changed=none", path)
            return plan
        # the running latency table stays (models.profiles needs a restart): the policy is rebuilt over it
        try:
            policy = await asyncio.to_thread(build_policy, new.config, self.profiles)
        except ConfigError as exc:
            log.error("reload failed path=%s: %s; keeping the current settings", path, exc)
            return None
        self._apply(new.config, policy)
        self._swap_tokens(tokens, new.config)
        if self.fleet is not None:
            await reconfigure_fleet(self.fleet, new.config, self.profiles)
        self.reloads_applied += 1
        log.info("reload applied path=%s changed=%s", path, ",".join(plan.changed_keys))
        for c in plan.changed:
            log.info("reload set %s", c)
        return plan

    def _swap_tokens(self, tokens: tuple[str, ...] | None, config: Config) -> None:
        """New tokens (and auth_health) for both front ends, from their next request on."""
        auth = self._access.auth
        if auth is None or tokens is None:  # turning authentication on or off needs a restart (kairosd.reload)
            return
        auth.replace(tokens, config.server.auth_health)
        log.info("reload read server.token_file tokens=%d auth_health=%s", len(tokens), config.server.auth_health)

    def _apply(self, config: Config, policy: Policy) -> None:
        """Swap the scheduler's settings (between dispatch rounds: this runs on the event loop) and the
        daemon's config object."""
        if self.scheduler is not None:
            self.scheduler.reconfigure(policy, config.qos_s, config.scheduler)
        self.policy = policy
        self.config = config


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


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


async def run_until_signal(daemon: Daemon, drain_timeout_s: float | None = None) -> None:
    """Start, serve until SIGTERM/SIGINT (reloading on SIGHUP), then stop in order. A second SIGTERM or
    SIGINT exits at once. A stop signal during start-up cancels it (what started is stopped)."""

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reload_wanted = asyncio.Event()
    signals = 0

    def on_stop(sig: signal.Signals) -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            log.warning("second %s: exiting without draining", sig.name)
            raise SystemExit(1)
        log.info("stop requested signal=%s", sig.name)
        stop.set()

    def on_hup() -> None:
        log.info("reload requested signal=SIGHUP path=%s", daemon.config.path)
        reload_wanted.set()

    async def reloader() -> None:
        while True:  # signals that arrive during a reload coalesce into one more reload
            await reload_wanted.wait()
            reload_wanted.clear()
            try:
                await daemon.reload()
            except Exception:  # noqa: BLE001 - a failed reload must not stop the daemon
                log.exception("reload failed; keeping the current settings")
            heap.settle("reload")

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop, sig)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    reload_task: asyncio.Task[None] | None = None
    stopped = loop.create_task(stop.wait())
    try:
        start = loop.create_task(daemon.start())
        await asyncio.wait({start, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not start.done():  # stopped while starting: what started is undone by start() itself
            log.info("stop requested while starting: cancelling the start-up")
            daemon.notifier.stopping()
            await _cancel(start)
            return
        start.result()
        heap.settle("start-up")
        reload_task = loop.create_task(reloader())
        await stop.wait()
    finally:
        stopped.cancel()
        if reload_task is not None:
            await _cancel(reload_task)
        await daemon.stop(drain_timeout_s)
        loop.remove_signal_handler(signal.SIGHUP)


__all__ = ["Daemon", "InstanceState", "load_profiles", "run_until_signal"]

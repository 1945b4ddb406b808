"""The local provider (the embedded default): one child process per instance on this machine.

Types with `backend = "onnxruntime"` run `kairosd worker`, `backend = "triton"` a real Triton
(PyTriton), `backend = "emulated"` `kairosd emulated` (gRPC and HTTP, timed by a measured profile).
Each child gets free ports and arms a parent-death signal, so a crashed or SIGKILLed daemon leaves
no instance behind: after a restart the local fleet starts empty and nothing leaks.
Ids are `local-<type>-<n>` with `n` counting up for the provider's life (never reused). A launch
token maps to the ids it started, so a retried launch starts only what is missing. `terminate`
answers at once: the instance is listed `shutting-down` until its process has stopped (SIGTERM,
the instance drains, then SIGKILL after the grace), then `terminated` in one more listing.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from kairosd.backends.process import ChildProcess, free_port, kairosd_argv
from kairosd.config import InstanceTypeConfig
from kairosd.providers.base import (
    FLEET_TAG,
    TOKEN_TAG,
    TYPE_TAG,
    NotLaunchable,
    Offering,
    ProviderInstance,
    ProviderState,
)

log = logging.getLogger(__name__)

STOP_GRACE_S = 15.0  # SIGTERM → SIGKILL for a terminated local instance


def instance_argv(t: InstanceTypeConfig, model_repository: str, port: int, http_port: int | None,
                  host: str = "127.0.0.1") -> list[str]:
    """The command line that runs one local instance of type `t` on `port` (and `http_port`: Triton, emulated)."""
    if t.backend == "emulated":
        models = ",".join(f"{served}={profile}" for served, profile in t.emulate_models.items())
        return kairosd_argv("emulated", "--model-repository", model_repository, "--host", host, "--port", str(port),
                            "--http-port", str(http_port if http_port is not None else free_port()),
                            "--emulate", t.emulate, "--data", t.emulate_data or "kairos", "--models", models,
                            "--slots", str(t.slots))
    if t.backend == "onnxruntime":
        return kairosd_argv("worker", "--model-repository", model_repository, "--host", host,
                            "--port", str(port), "--threads", str(t.threads))
    return kairosd_argv("triton", "--model-repository", model_repository, "--grpc-port", str(port),
                        "--http-port", str(http_port if http_port is not None else free_port()),
                        "--metrics-port", str(free_port()), "--threads", str(t.threads))


@dataclass
class _Local:
    info: ProviderInstance
    child: ChildProcess
    stopping: asyncio.Task[int | None] | None = None
    listed_terminated: bool = False


@dataclass
class LocalProvider:
    """Implements `kairosd.providers.base.Provider` with child processes."""

    types: Mapping[str, InstanceTypeConfig]
    model_repository: str
    fleet_name: str = "kairosd"
    name: str = "local"
    managed: bool = True
    _instances: dict[str, _Local] = field(default_factory=dict)
    _by_token: dict[str, list[str]] = field(default_factory=dict)
    _seq: itertools.count[int] = field(default_factory=lambda: itertools.count())

    async def offerings(self) -> list[Offering]:
        return [Offering(t.name, t.price_usd_per_hour, True) for t in self.types.values()]

    def _live(self, instance_id: str) -> bool:
        local = self._instances.get(instance_id)
        return local is not None and local.stopping is None and local.child.running

    async def launch(self, instance_type: str, count: int, token: str,
                     tags: Mapping[str, str] | None = None) -> list[ProviderInstance]:
        t = self.types.get(instance_type)
        if t is None:
            raise NotLaunchable(f"the local provider has no instance type {instance_type!r}; defined: {sorted(self.types)}")
        ids = [i for i in self._by_token.get(token, []) if self._live(i)]
        for _ in range(max(count - len(ids), 0)):
            k = next(self._seq)
            instance_id = f"local-{instance_type}-{k}"
            port = free_port()
            http_port = free_port() if t.backend in ("triton", "emulated") else None
            child = ChildProcess(instance_argv(t, self.model_repository, port, http_port), name=instance_id).start()
            info = ProviderInstance(
                id=instance_id, type=instance_type, state=ProviderState.RUNNING, address=f"127.0.0.1:{port}",
                http_address=f"127.0.0.1:{http_port}" if http_port is not None else None,
                launched_at_s=time.time(), price_usd_per_hour=t.price_usd_per_hour,
                tags={**(tags or {}), FLEET_TAG: self.fleet_name, TYPE_TAG: instance_type, TOKEN_TAG: token},
            )
            self._instances[instance_id] = _Local(info, child)
            ids.append(instance_id)
            log.info("launched instance=%s type=%s address=%s pid=%s", instance_id, instance_type, info.address, child.pid)
        self._by_token[token] = ids
        return [self._instances[i].info for i in ids[:count]]

    async def terminate(self, ids: Sequence[str]) -> None:
        for instance_id in ids:
            local = self._instances.get(instance_id)
            if local is None or local.stopping is not None:
                continue  # gone, or already stopping: done
            local.stopping = asyncio.get_running_loop().create_task(local.child.stop_async(STOP_GRACE_S))

    async def list(self) -> list[ProviderInstance]:
        out = []
        for instance_id, local in list(self._instances.items()):
            if local.stopping is not None and not local.stopping.done():
                state = ProviderState.SHUTTING_DOWN
            elif local.stopping is not None or not local.child.running:
                state = ProviderState.TERMINATED
            else:
                state = ProviderState.RUNNING
            if state is ProviderState.TERMINATED:
                if local.listed_terminated:  # listed terminated once: forget it
                    del self._instances[instance_id]
                    continue
                local.listed_terminated = True
                if local.stopping is None:
                    log.warning("instance=%s exited on its own (code %s); its output:\n%s", instance_id,
                                local.child.returncode, local.child.log_tail(2000))
            out.append(replace(local.info, state=state))
        return out

    def log_tail(self, instance_id: str, max_chars: int = 4000) -> str:
        local = self._instances.get(instance_id)
        return local.child.log_tail(max_chars) if local is not None else ""

    async def close(self) -> None:
        """Stop every child (local instances do not outlive the daemon) and wait for them."""
        await self.terminate(list(self._instances))
        tasks = [local.stopping for local in self._instances.values() if local.stopping is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._instances.clear()

"""The static local fleet: one child process per instance (kairosd worker or a real Triton), started
with the daemon, registered READY once it answers ServerReady, drained and stopped on shutdown."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from kairosd.backends.client import BackendClient
from kairosd.backends.http_client import HttpBackendClient
from kairosd.backends.process import ChildProcess, free_port, kairosd_argv, wait_ready
from kairosd.config import Config, InstanceTypeConfig
from kairosd.errors import Unavailable
from kairosd.profiles import ProfileTable
from kairosd.registry import Instance, InstanceState, Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    instance_id: str
    type: InstanceTypeConfig
    port: int  # KServe v2 gRPC
    http_port: int | None = None  # KServe v2 HTTP, for the instances that open one (Triton)


def instance_argv(spec: LaunchSpec, model_repository: str, host: str = "127.0.0.1") -> list[str]:
    """The command line that runs one local instance of `spec.type`."""
    t = spec.type
    if t.backend == "onnxruntime":
        return kairosd_argv("worker", "--model-repository", model_repository, "--host", host,
                            "--port", str(spec.port), "--threads", str(t.threads))
    http_port = spec.http_port if spec.http_port is not None else free_port()
    return kairosd_argv("triton", "--model-repository", model_repository, "--grpc-port", str(spec.port),
                        "--http-port", str(http_port), "--metrics-port", str(free_port()),
                        "--threads", str(t.threads))


async def _model_ready(inst: Instance, model: str) -> bool:
    try:
        return bool(await inst.client.control.is_model_ready(model, client_timeout=2.0))
    except Exception:  # noqa: BLE001 - not reachable yet means not ready
        return False


class LocalFleet:
    def __init__(self, config: Config, registry: Registry, profiles: ProfileTable) -> None:
        self.config = config
        self.registry = registry
        self.profiles = profiles
        self.children: dict[str, ChildProcess] = {}

    def plan(self) -> list[LaunchSpec]:
        specs = []
        for type_name, count in self.config.fleet.items():
            t = self.config.types[type_name]
            for k in range(count):
                http_port = free_port() if t.backend == "triton" else None
                specs.append(LaunchSpec(f"{type_name}-{k}", t, free_port(), http_port))
        return specs

    async def start(self, ready_timeout_s: float = 180.0) -> None:
        """Launch every instance and wait until all are READY (raises Unavailable naming the laggard)."""
        launches = []
        for spec in self.plan():
            child = ChildProcess(instance_argv(spec, str(self.config.model_repository)), name=spec.instance_id).start()
            self.children[spec.instance_id] = child
            address = f"127.0.0.1:{spec.port}"
            http = f"127.0.0.1:{spec.http_port}" if spec.http_port is not None else None
            inst = self._register(spec.instance_id, spec.type, address, http)
            log.info("launching instance=%s type=%s address=%s pid=%s", inst.id, inst.type, address, child.pid)
            launches.append(self._await_ready(inst, child, ready_timeout_s))
        for k, ep in enumerate(self.config.endpoints):
            inst = self._register(f"{ep.type}-ep{k}", self.config.types[ep.type], ep.address, ep.http_address)
            log.info("adding endpoint instance=%s type=%s address=%s http=%s", inst.id, ep.type, ep.address,
                     ep.http_address)
            launches.append(self._await_ready(inst, None, ready_timeout_s))
        await asyncio.gather(*launches)

    def _register(self, instance_id: str, t: InstanceTypeConfig, address: str, http_address: str | None) -> Instance:
        inst = Instance(
            id=instance_id,
            type=t.name,
            type_idx=self.profiles.type_index(t.name),
            address=address,
            slots=t.slots,
            client=BackendClient(address, self.config.server.max_request_bytes),
            http=HttpBackendClient(http_address) if http_address is not None else None,
        )
        self.registry.add(inst)  # LAUNCHING until it answers ServerReady and ModelReady
        return inst

    async def _await_ready(self, inst: Instance, child: ChildProcess | None, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        await wait_ready(inst.address, timeout_s, child)
        # a Triton with explicit model control is ServerReady before its models load: wait for each
        for model in self.config.qos_s:
            while not await _model_ready(inst, model):
                if (child is not None and child.returncode is not None) or loop.time() > deadline:
                    output = f"; its output:\n{child.log_tail()}" if child is not None else ""
                    raise Unavailable(
                        f"instance {inst.id} ({inst.address}) never had model {model!r} ready within "
                        f"{timeout_s:.0f} s{output}"
                    )
                await asyncio.sleep(0.05)
        self.registry.set_state(inst.id, InstanceState.READY)
        log.info("instance ready instance=%s type=%s", inst.id, inst.type)

    async def stop(self, drain_timeout_s: float = 10.0) -> None:
        """Drain every instance (no new queries; wait for in-flight ones), then stop its process."""
        for inst in list(self.registry):
            if inst.state is InstanceState.READY:
                self.registry.set_state(inst.id, InstanceState.DRAINING)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout_s
        while any(i.in_flight for i in self.registry) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for inst in list(self.registry):
            await inst.client.close()
            if inst.http is not None:
                inst.http.close()
            self.registry.set_state(inst.id, InstanceState.GONE)
        await asyncio.gather(*(c.stop_async(grace_s=15.0) for c in self.children.values()))
        log.info("fleet stopped instances=%d", len(self.children))
        self.children.clear()

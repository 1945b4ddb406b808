"""The fleet reconciler over the real local provider: pinned pools become instances that serve only their
model; a worker killed behind the fleet's back is replaced with a new id; stop leaves no process; a long
plan runs off the event loop."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable

from tritonclient.grpc import service_pb2

from kairosd.autoscale.types import AutoscaleParams
from kairosd.config import InstanceTypeConfig, SchedulerConfig
from kairosd.dispatch import KairosPolicy
from kairosd.fleet import Fleet, PreparedTarget, static_target
from kairosd.modelgen import example_inputs
from kairosd.profiler import build_request
from kairosd.profiles import ProfileTable
from kairosd.providers.base import POOL_TAG
from kairosd.providers.local import LocalProvider
from kairosd.registry import InstanceState, Registry
from kairosd.repository import load_repository
from kairosd.scheduler import Scheduler
from tests.integration.daemon_harness import REPO

QOS = {"dlrm": 0.06, "ncf": 0.03}
ORT = InstanceTypeConfig("ort-1t", "onnxruntime", price_usd_per_hour=0.05)


async def test_pinned_pools_through_the_local_provider() -> None:
    profiles = ProfileTable.load_dir(REPO / "profiles" / "local", models=sorted(QOS))
    registry = Registry()
    provider = LocalProvider({"ort-1t": ORT}, str(REPO / "model_repository"), fleet_name="t")
    target = {"ort-1t@dlrm": 1, "ort-1t@ncf": 1}
    fleet = Fleet(registry, profiles, [provider], static_target(target), 0.10, AutoscaleParams(),
                  models=sorted(QOS), fleet_name="t", period_s=0.3)
    sched = Scheduler(registry, profiles, KairosPolicy(profiles), QOS, SchedulerConfig(tick_ms=2.0, admission="deadline"))
    try:
        await fleet.start(wait_ready_timeout_s=60)
        by_pool = {i.pool: i for i in registry}
        assert set(by_pool) == set(target) and all(i.state is InstanceState.READY for i in registry)
        assert by_pool["ort-1t@dlrm"].pinned_model == profiles.model_index("dlrm")
        assert {p.tags[POOL_TAG] for p in await provider.list()} == set(target)  # the pool is a provider tag
        repo = load_repository(REPO / "model_repository")
        reqs = [("dlrm" if k % 2 else "ncf", k) for k in range(40)]
        out = await asyncio.gather(*(sched.submit(build_request(m, example_inputs(m, 4, seed=k), request_id=str(k)),
                                                  repo[m], 4) for m, k in reqs))
        assert [service_pb2.ModelInferResponse.FromString(o).model_name for o in out] == [m for m, _ in reqs]
        assert by_pool["ort-1t@dlrm"].served_total == 20 and by_pool["ort-1t@ncf"].served_total == 20
        # killed behind the fleet's back: replaced in its pool, with a new id, within two periods (+ start-up)
        victim = by_pool["ort-1t@ncf"]
        pid = next(local.child.pid for i, local in provider._instances.items() if i == victim.id)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        for _ in range(300):
            await asyncio.sleep(0.1)
            pools = {i.pool: i for i in registry if i.state is InstanceState.READY}
            if "ort-1t@ncf" in pools and pools["ort-1t@ncf"].id != victim.id:
                break
        assert pools["ort-1t@ncf"].id != victim.id and fleet.stats.vanished == 1
        assert fleet.committed_usd_per_hour() <= 0.10 + 1e-9
    finally:
        children = [local.child for local in provider._instances.values()]
        sched.close()
        await fleet.stop()
    assert children and not any(c.running for c in children)  # stop terminated every local instance
    assert len(registry) == 0


async def test_an_instance_dying_during_start_up_is_replaced() -> None:
    """The first worker is SIGKILLed as soon as it is launched (as when another process takes its port):
    start() replaces it and returns with the target READY; the dead one is not in the registry."""
    profiles = ProfileTable.load_dir(REPO / "profiles" / "local", models=sorted(QOS))
    registry = Registry()
    provider = LocalProvider({"ort-1t": ORT}, str(REPO / "model_repository"), fleet_name="t")
    fleet = Fleet(registry, profiles, [provider], static_target({"ort-1t": 2}), 0.10, AutoscaleParams(),
                  models=sorted(QOS), fleet_name="t", period_s=0.3)
    start = asyncio.ensure_future(fleet.start(wait_ready_timeout_s=60))
    while not provider._instances:
        await asyncio.sleep(0.001)
    first_id, first = next(iter(provider._instances.items()))
    assert first.child.pid is not None
    os.kill(first.child.pid, signal.SIGKILL)
    try:
        await start
        ready = [i for i in registry if i.state is InstanceState.READY]
        assert len(ready) == 2 and first_id not in {i.id for i in ready}
        assert fleet.stats.launched == 3
    finally:
        children = [local.child for local in provider._instances.values()]
        await fleet.stop()
    assert not any(c.running for c in children)


class SlowTarget:
    """A `PreparedTarget` whose work (as planning a large fleet can) takes `work_s` of the thread it runs
    on, and which records the threads its two halves ran on."""

    def __init__(self, work_s: float) -> None:
        self.work_s = work_s
        self.prepared_on: int | None = None
        self.worked_on: int | None = None

    def prepare(self, now_s: float, unavailable: frozenset[str]) -> Callable[[], dict[str, int]]:
        self.prepared_on = threading.get_ident()

        def work() -> dict[str, int]:
            self.worked_on = threading.get_ident()
            time.sleep(self.work_s)
            return {}

        return work

    def __call__(self, now_s: float, unavailable: frozenset[str]) -> dict[str, int]:
        return self.prepare(now_s, unavailable)()


async def test_a_long_plan_does_not_stall_the_event_loop() -> None:
    """The reconcile reads the load on the event loop and plans on another thread: a task ticking every
    10 ms keeps ticking while a 0.6 s plan runs (the scheduler's dispatch runs on that loop too)."""
    profiles = ProfileTable.load_dir(REPO / "profiles" / "local", models=sorted(QOS))
    target = SlowTarget(0.6)
    assert isinstance(target, PreparedTarget) and not isinstance(static_target({}), PreparedTarget)
    provider = LocalProvider({"ort-1t": ORT}, str(REPO / "model_repository"), fleet_name="t")
    fleet = Fleet(Registry(), profiles, [provider], target, 0.10, AutoscaleParams(), models=sorted(QOS), fleet_name="t")
    gaps: list[float] = []
    done = False

    async def heartbeat() -> None:
        while not done:
            t0 = time.monotonic()
            await asyncio.sleep(0.01)
            gaps.append(time.monotonic() - t0)

    beat = asyncio.ensure_future(heartbeat())
    t0 = time.monotonic()
    await fleet.reconcile_once()
    took = time.monotonic() - t0
    done = True
    await beat
    assert took >= 0.6 and fleet.stats.target == {}
    assert target.prepared_on == threading.get_ident() and target.worked_on != threading.get_ident()
    assert len(gaps) >= 20 and max(gaps) < 0.3, max(gaps)
    await fleet.stop()

"""The scheduler shell against a real worker process: drain, cancellation, a failing policy round."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import pytest
from tritonclient.grpc import service_pb2

from kairosd.backends.client import BackendClient
from kairosd.backends.process import ChildProcess, free_port, kairosd_argv, wait_ready
from kairosd.config import SchedulerConfig
from kairosd.dispatch import Assignment, KairosPolicy, Snapshot, ThresholdPolicy, make_policy
from kairosd.errors import Unavailable
from kairosd.modelgen import example_inputs
from kairosd.profiler import build_request
from kairosd.profiles import ProfileTable
from kairosd.registry import Instance, InstanceState, Registry
from kairosd.repository import load_repository
from kairosd.scheduler import Scheduler
from tests.integration.daemon_harness import REPO

QOS = {"dlrm": 0.06, "ncf": 0.03}
# bursts far past the QoS targets on purpose: admission "deadline" serves them all (30 s default deadline)


class FailsOncePolicy:
    """The Kairos policy, except that its first round raises (a bug in a policy must not lose queries)."""

    name = "fails_once"

    def __init__(self, profiles: ProfileTable) -> None:
        self.inner = KairosPolicy(profiles)
        self.calls = 0

    def __call__(self, snap: Snapshot) -> Assignment:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("injected policy failure")
        return self.inner(snap)


@pytest.fixture
async def worker_instance() -> AsyncIterator[tuple[Registry, ProfileTable]]:
    port = free_port()
    child = ChildProcess(kairosd_argv("worker", "--model-repository", str(REPO / "model_repository"),
                                      "--port", str(port)), name="worker").start()
    try:
        await wait_ready(f"127.0.0.1:{port}", 30, child)
        profiles = ProfileTable.load_dir(REPO / "profiles" / "local", models=sorted(QOS))
        registry = Registry()
        inst = Instance("w0", "ort-1t", profiles.type_index("ort-1t"), f"127.0.0.1:{port}", 1,
                        BackendClient(f"127.0.0.1:{port}"), state=InstanceState.READY)
        registry.add(inst)
        yield registry, profiles
        await inst.client.close()
    finally:
        await child.stop_async(5)


def _request(seed: int) -> tuple[object, int]:
    inputs = example_inputs("ncf", 4, seed=seed)
    return build_request("ncf", inputs, request_id=str(seed)), 4


async def test_failing_policy_round_loses_no_query(worker_instance: tuple[Registry, ProfileTable]) -> None:
    registry, profiles = worker_instance
    policy = FailsOncePolicy(profiles)
    sched = Scheduler(registry, profiles, policy, QOS, SchedulerConfig(tick_ms=2.0, admission="deadline"))
    spec = load_repository(REPO / "model_repository")["ncf"]
    results = await asyncio.gather(*(sched.submit(*_req_spec(i, spec)) for i in range(20)))
    assert len(results) == 20 and policy.calls > 1
    assert sched.stats.completed == 20 and not sched.waiting and sched.in_flight == 0


def _req_spec(i: int, spec: object) -> tuple:
    req, batch = _request(i)
    return req, spec, batch


async def test_drain_waits_for_every_queued_and_granted_query(worker_instance: tuple[Registry, ProfileTable]) -> None:
    registry, profiles = worker_instance
    sched = Scheduler(registry, profiles, KairosPolicy(profiles), QOS, SchedulerConfig(admission="deadline"))
    spec = load_repository(REPO / "model_repository")["ncf"]
    tasks = [asyncio.ensure_future(sched.submit(*_req_spec(i, spec))) for i in range(30)]
    await asyncio.sleep(0)  # all 30 submitted: one granted, the rest queued on the 1-slot instance
    assert await sched.drain(timeout_s=30)
    assert all(t.done() and not t.exception() for t in tasks)
    assert sched.stats.completed == 30
    with pytest.raises(Unavailable, match="shutting down"):
        await sched.submit(*_req_spec(99, spec))


async def test_refusals_settle_waits_for_a_quiet_spell_after_the_drain(
        worker_instance: tuple[Registry, ProfileTable]) -> None:
    """After a drain, refusals keep the wait open until none came for the quiet spell; with no refusal at
    all it returns at once; a steady stream of refusals is cut at the bound."""
    registry, profiles = worker_instance
    sched = Scheduler(registry, profiles, KairosPolicy(profiles), QOS, SchedulerConfig(admission="deadline"))
    spec = load_repository(REPO / "model_repository")["ncf"]
    assert await sched.drain(timeout_s=1)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await sched.refusals_settle(0.05, 1.0)
    assert loop.time() - t0 < 0.01  # nothing was refused

    async def refuse_every(period_s: float, n: int) -> int:
        refused = 0
        for i in range(n):
            with pytest.raises(Unavailable, match="shutting down"):
                await sched.submit(*_req_spec(i, spec))
            refused += 1
            await asyncio.sleep(period_s)
        return refused

    stream = asyncio.ensure_future(refuse_every(0.01, 15))  # refusals for about 0.15 s
    await asyncio.sleep(0)
    t0 = loop.time()
    assert await sched.refusals_settle(0.05, 1.0)
    assert loop.time() - t0 >= 0.15 + 0.05 - 0.02 and await stream == 15
    stream = asyncio.ensure_future(refuse_every(0.01, 100))  # about 1 s of refusals: longer than the bound
    await asyncio.sleep(0)
    t0 = loop.time()
    assert not await sched.refusals_settle(0.05, 0.3)
    assert 0.3 <= loop.time() - t0 < 0.8
    stream.cancel()


class CountingKairos(KairosPolicy):
    """The Kairos policy, counting its calls."""

    calls = 0

    def __call__(self, snap: Snapshot) -> Assignment:
        self.calls += 1
        return super().__call__(snap)


async def _remote_query(sched: Scheduler, waited_s: float) -> None:
    """One ncf batch-4 query from a front-end process that stamped it `waited_s` ago: granted, then done."""
    loop = asyncio.get_running_loop()
    granted: asyncio.Future[Instance] = loop.create_future()
    q = sched.remote_submit("ncf", 4, None, loop.time() - waited_s, 100,
                            lambda q, inst, t: granted.set_result(inst), lambda q, exc: granted.set_exception(exc))
    await granted
    sched.remote_done(q, loop.time())


async def test_a_remote_query_stamped_a_little_earlier_reuses_the_cached_decision(
        worker_instance: tuple[Registry, ProfileTable]) -> None:
    """A query from a front-end process carries that process's arrival stamp, a little before the
    dispatcher sees it: while it waited less than the decision's hold, its one-query round reuses the
    decision cached at 0 s waited; one that waited longer gets a policy call."""
    registry, profiles = worker_instance
    # a long QoS target, so that the decision's hold (about the target less the margin and the service)
    # dwarfs the time a slowed host takes from a query's stamp to its round, which also counts as waited
    qos = {**QOS, "ncf": 1.0}
    # a margin above its cap (a quarter of the smallest QoS): the hop feedback never changes it, nor the cache
    policy = CountingKairos(profiles, margin_s=0.020)
    sched = Scheduler(registry, profiles, policy, qos, SchedulerConfig(admission="deadline", margin_ms=20.0))
    spec = load_repository(REPO / "model_repository")["ncf"]
    await sched.submit(*_req_spec(0, spec))  # a local query, 0 s waited: its decision is cached
    assert policy.calls == 1
    hold = policy.hold_s(profiles.model_index("ncf"), 4, qos["ncf"], [profiles.type_index("ort-1t")])
    assert 0.5 < hold < qos["ncf"]

    for _ in range(5):
        await _remote_query(sched, hold / 4)
    assert policy.calls == 1 and sched.stats.completed == 6
    await _remote_query(sched, hold * 1.5)
    assert policy.calls == 2


class CountingThreshold(ThresholdPolicy):
    """The threshold policy, counting its calls."""

    calls = 0

    def __call__(self, snap: Snapshot) -> Assignment:
        self.calls += 1
        return super().__call__(snap)


async def test_a_wait_blind_policy_reuses_its_cached_decision_at_any_wait(
        worker_instance: tuple[Registry, ProfileTable]) -> None:
    """The threshold policy's decision does not depend on a query's wait: a remote query's one-query
    round reuses the decision cached at 0 s waited however long it waited."""
    registry, profiles = worker_instance
    policy = CountingThreshold(profiles, threshold=0, large_types=["ort-1t"])  # every query to the worker
    # admission off: a query that waited half its QoS is matched, not shed as late
    sched = Scheduler(registry, profiles, policy, QOS, SchedulerConfig(admission="off"))
    spec = load_repository(REPO / "model_repository")["ncf"]
    await sched.submit(*_req_spec(0, spec))
    assert policy.calls == 1
    assert policy.hold_s(profiles.model_index("ncf"), 4, QOS["ncf"], [0]) == math.inf
    for waited_s in (0.0005, 0.002, QOS["ncf"] / 2):
        await _remote_query(sched, waited_s)
    assert policy.calls == 1 and sched.stats.completed == 4


async def test_cancelled_clients_release_their_slots(worker_instance: tuple[Registry, ProfileTable]) -> None:
    registry, profiles = worker_instance
    sched = Scheduler(registry, profiles, KairosPolicy(profiles), QOS, SchedulerConfig(admission="deadline"))
    spec = load_repository(REPO / "model_repository")["ncf"]
    tasks = [asyncio.ensure_future(sched.submit(*_req_spec(i, spec))) for i in range(10)]
    await asyncio.sleep(0)
    for t in tasks[::2]:
        t.cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(isinstance(d, asyncio.CancelledError) for d in done) >= 1
    inst = next(iter(registry))
    assert inst.finish_s == [] and sched.in_flight == 0  # no slot leaked
    # and the instance still serves
    out = service_pb2.ModelInferResponse.FromString(await sched.submit(*_req_spec(123, spec)))
    assert out.id == "123" and out.outputs[0].name == "score"


@pytest.fixture
async def two_workers() -> AsyncIterator[tuple[Registry, ProfileTable, list[Instance]]]:
    ports = [free_port(), free_port()]
    children = [ChildProcess(kairosd_argv("worker", "--model-repository", str(REPO / "model_repository"),
                                          "--port", str(p)), name=f"worker{k}").start() for k, p in enumerate(ports)]
    try:
        for p, c in zip(ports, children, strict=True):
            await wait_ready(f"127.0.0.1:{p}", 30, c)
        profiles = ProfileTable.load_dir(REPO / "profiles" / "local", models=sorted(QOS))
        registry = Registry()
        insts = [Instance(f"w{k}", "ort-1t", profiles.type_index("ort-1t"), f"127.0.0.1:{p}", 1,
                          BackendClient(f"127.0.0.1:{p}"), state=InstanceState.READY) for k, p in enumerate(ports)]
        for inst in insts:
            registry.add(inst)
        yield registry, profiles, insts
        for inst in insts:
            await inst.client.close()
    finally:
        await asyncio.gather(*(c.stop_async(5) for c in children))


async def test_pinned_instances_serve_only_their_model(two_workers: tuple[Registry, ProfileTable, list[Instance]]) -> None:
    """w0 pinned to dlrm, w1 to ncf: 40 queries of each model, interleaved, each answered by its model's instance."""
    registry, profiles, (w0, w1) = two_workers
    w0.pinned_model, w1.pinned_model = profiles.model_index("dlrm"), profiles.model_index("ncf")
    w0.pool, w1.pool = "ort-1t@dlrm", "ort-1t@ncf"
    registry.set_state(w0.id, InstanceState.READY)  # a state change: the scheduler re-reads the pins
    sched = Scheduler(registry, profiles, KairosPolicy(profiles), QOS, SchedulerConfig(tick_ms=2.0, admission="deadline"))
    repo = load_repository(REPO / "model_repository")

    def req(model: str, i: int) -> tuple[object, object, int]:
        batch = 8
        return build_request(model, example_inputs(model, batch, seed=i), request_id=f"{model}{i}"), repo[model], batch

    tasks = [sched.submit(*req("dlrm" if i % 2 else "ncf", i)) for i in range(80)]
    out = [service_pb2.ModelInferResponse.FromString(r) for r in await asyncio.gather(*tasks)]
    assert [o.model_name for o in out] == ["dlrm" if i % 2 else "ncf" for i in range(80)]
    assert w0.served_total == 40 and w1.served_total == 40
    assert sched.stats.completed == 80 and not sched.waiting and sched.in_flight == 0
    # unpinned again: both serve both models
    w0.pinned_model = w1.pinned_model = None
    registry.set_state(w1.id, InstanceState.READY)
    await asyncio.gather(*(sched.submit(*req("ncf", i)) for i in range(40)))
    assert w0.served_total > 40 and w1.served_total > 40


async def test_a_query_whose_client_went_away_is_never_sent(worker_instance: tuple[Registry, ProfileTable]) -> None:
    """Queries queued while no instance is in dispatch, cancelled by their clients: they leave the
    queue and nothing is sent once the instance is back; a later query is served normally."""
    registry, profiles = worker_instance
    inst = next(iter(registry))
    sched = Scheduler(registry, profiles, KairosPolicy(profiles), QOS, SchedulerConfig(admission="deadline"))
    spec = load_repository(REPO / "model_repository")["ncf"]
    assert registry.report_failure(inst.id)  # SUSPECT: out of dispatch, the queries wait
    try:
        tasks = [asyncio.ensure_future(sched.submit(*_req_spec(i, spec))) for i in range(8)]
        await asyncio.sleep(0.05)
        assert len(sched.waiting) == 8
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        registry.set_state(inst.id, InstanceState.READY)
    await asyncio.sleep(0.05)  # rounds run on the change: the cancelled queries are dropped, not sent
    assert not sched.waiting and sched.in_flight == 0
    assert inst.served_total == 0 and inst.failed_total == 0 and sched.stats.matched == 0
    out = service_pb2.ModelInferResponse.FromString(await sched.submit(*_req_spec(7, spec)))
    assert out.id == "7" and inst.served_total == 1 and sched.stats.matched == 1


async def _max_in_flight(sched: Scheduler, inst: Instance, n: int, spec: object) -> int:
    """Submit `n` queries at once; the most queries `inst` held at any moment (its slot + sent ahead)."""
    most = 0
    done = False

    async def watch() -> None:
        nonlocal most
        while not done:
            most = max(most, len(inst.finish_s))
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    results = await asyncio.gather(*(sched.submit(*_req_spec(i, spec)) for i in range(n)))
    done = True
    await watcher
    assert len(results) == n and sched.stats.completed == n and sched.in_flight == 0 and not inst.finish_s
    return most


@pytest.mark.parametrize("policy", ["kairos", "fcfs"])
async def test_pipelining_sends_one_query_ahead_to_a_busy_slot(worker_instance: tuple[Registry, ProfileTable],
                                                               policy: str) -> None:
    registry, profiles = worker_instance
    inst = next(iter(registry))
    spec = load_repository(REPO / "model_repository")["ncf"]
    # one 1-slot instance, a burst of 60 queries: the next query is sent while the slot is still busy
    # (2 held at once), never more than one ahead; a slot is sendable within the measured hop + the tick
    # of its expected finish
    on = Scheduler(registry, profiles, make_policy(policy, profiles), QOS,
                   SchedulerConfig(tick_ms=2.0, admission="deadline"))
    now = asyncio.get_running_loop().time()
    for _ in range(100):  # the hop as measured on a slower network (20 ms)
        on.feedback.answered(now, None, 0.02, 1.0)
    assert on.hop_s > 0.015
    assert on._pipeline_s(now) == pytest.approx(on.feedback.hop(now) + 0.002)
    assert await _max_in_flight(on, inst, 60, spec) == 2
    off = Scheduler(registry, profiles, make_policy(policy, profiles), QOS,
                    SchedulerConfig(tick_ms=2.0, admission="deadline", pipeline=False))
    assert off._pipeline_s(now) == 0.0
    assert await _max_in_flight(off, inst, 60, spec) == 1
    # a policy that does not rank sendable columns by busy time (round robin) is never offered a busy slot
    rr = Scheduler(registry, profiles, make_policy("round_robin", profiles), QOS,
                   SchedulerConfig(tick_ms=2.0, admission="deadline"))
    assert rr._pipeline_s(now) == 0.0
    assert await _max_in_flight(rr, inst, 60, spec) == 1

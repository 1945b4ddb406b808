"""`[server] workers = 2`: a real `kairosd serve` with one front-end process beside the main one, both on
the client ports (SO_REUSEPORT), one dispatcher. Emulated r5n.large instances (CPU-light) serve ncf.

- queries over many connections (gRPC and HTTP) are spread over both processes, every answer right;
- health from either process; a SIGTERM answers every held query; a killed front-end process loses
  only its own connections and the main process keeps serving.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from kairosd.modelgen import example_inputs
from tests.integration.daemon_harness import RunningDaemon, children, start_daemon
from tests.integration.test_backend_faults import inputs
from tests.integration.test_backend_faults import write as write_emulated

# a connection per channel, so that SO_REUSEPORT can spread them
LOCAL_POOL = [("grpc.use_local_subchannel_pool", 1)]


def write(path: Path, n: int = 3) -> dict[str, int]:
    return write_emulated(path, n, server="workers = 2")


def front_pids(d: RunningDaemon) -> list[int]:
    return [pid for pid, argv in children(d.child.pid or 0).items() if b"frontend" in argv]


def per_front(d: RunningDaemon) -> dict[str, float]:
    return {k.split('"')[1]: v for k, v in d.metric_values("kairos_frontend_queries_total").items()}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    path = tmp_path_factory.mktemp("workers") / "kairosd.toml"
    d = start_daemon(path, write(path), timeout_s=60)
    yield d
    assert d.stop() == 0, d.child.log_tail()


async def _many_channels(url: str, channels: int, per_channel: int) -> list[object]:
    out: list[object] = []
    clients = [grpcaio.InferenceServerClient(url, channel_args=LOCAL_POOL) for _ in range(channels)]
    try:
        for k, c in enumerate(clients):
            rs = await asyncio.gather(*(c.infer("ncf", inputs(4), request_id=f"{k}-{i}") for i in range(per_channel)),
                                      return_exceptions=True)
            out += rs
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    return out


def test_queries_over_many_connections_reach_both_processes(daemon: RunningDaemon) -> None:
    assert len(front_pids(daemon)) == 1
    before = per_front(daemon)
    results = asyncio.run(_many_channels(daemon.grpc_url, 16, 10))
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    ids = sorted(r.get_response().id for r in results)  # type: ignore[union-attr]
    assert ids == sorted(f"{k}-{i}" for k in range(16) for i in range(10))  # each answer to its own query
    h = httpclient.InferenceServerClient(daemon.http_url)
    ins = []
    for name, arr in example_inputs("ncf", 4, seed=1).items():
        t = httpclient.InferInput(name, list(arr.shape), "INT64")
        t.set_data_from_numpy(arr)
        ins.append(t)
    for _ in range(20):
        h = httpclient.InferenceServerClient(daemon.http_url)  # a new connection each time
        assert h.infer("ncf", ins).as_numpy("score").shape == (4, 1)
        assert h.is_server_ready() and h.is_model_ready("ncf")
        h.close()
    after = per_front(daemon)
    got = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert sum(got.values()) == 180, got
    assert got.get("0", 0) > 0 and got.get("1", 0) > 0, got  # 36 connections: both processes got some


@pytest.mark.alone  # SIGTERM must find queries held: the load must keep pace with the signal
def test_sigterm_answers_every_held_query_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "kairosd.toml"
    d = start_daemon(path, write(path, n=1), timeout_s=60)
    stopped: list[int | None] = []

    async def load() -> list[object]:
        clients = [grpcaio.InferenceServerClient(d.grpc_url, channel_args=LOCAL_POOL) for _ in range(8)]
        big = inputs(960)  # 6.5 ms each on the one instance: 160 queries outlast the SIGTERM below
        try:
            calls = [c.infer("ncf", big, client_timeout=30) for c in clients for _ in range(20)]
            tasks = [asyncio.ensure_future(x) for x in calls]
            await asyncio.sleep(0.3)
            stopped.append(await asyncio.to_thread(d.stop))
            return await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await asyncio.gather(*(c.close() for c in clients))

    results = asyncio.run(load())
    assert stopped == [0], d.child.log_tail()
    ok = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, InferenceServerException)
               and r.status() in ("StatusCode.RESOURCE_EXHAUSTED", "StatusCode.UNAVAILABLE")]
    # every query answered: a result, or an explicit refusal (admission, or arriving once the drain began)
    assert len(ok) + len(refused) == len(results), [str(r) for r in results if isinstance(r, BaseException)][:3]
    assert ok


def test_a_killed_front_end_process_leaves_the_main_one_serving(tmp_path: Path) -> None:
    path = tmp_path / "kairosd.toml"
    d = start_daemon(path, write(path), timeout_s=60)
    try:
        (pid,) = front_pids(d)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while "went away" not in d.child.log_tail(20_000) and time.monotonic() < deadline:
            time.sleep(0.05)  # the dispatcher saw its link close: the process and its listening sockets are gone
        assert "front-end process 1 went away" in d.child.log_tail(20_000)
        results = asyncio.run(_many_channels(d.grpc_url, 8, 5))
        errors = [str(r) for r in results if isinstance(r, BaseException)]
        assert not errors, errors[:2]
        assert d.metric_values("kairos_in_flight")[""] == 0
    finally:
        assert d.stop() == 0, d.child.log_tail()

"""Backend faults and deadlines against a real `kairosd serve` over emulated instances (CPU-light
KServe v2 servers that answer after the profiled ncf service time on r5n.large):

- a SIGSTOPped instance under 32-way load: every query is answered (a result or an explicit error)
  within its deadline; the instance's queries go to the others after their backend deadline, it turns
  suspect, and after SIGCONT the fleet's probe brings it back and it serves again;
- a client deadline longer than `default_timeout_s` is honoured as sent; `max_timeout_s` caps it;
- default admission (QoS): a burst far past capacity is refused RESOURCE_EXHAUSTED at once instead of
  queuing, and what is admitted is answered within the QoS target.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from kairosd.backends.process import free_port
from kairosd.modelgen import example_inputs
from tests.integration.daemon_harness import REPO, RunningDaemon, children, start_daemon, workers_toml

pytestmark = pytest.mark.alone  # latencies and deadlines under load: see tests/conftest.py

QOS_MS = 100.0
CLIENT_TIMEOUT_S = 3.0


def write(path: Path, n: int, scheduler: str = "", server: str = "") -> dict[str, int]:
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    path.write_text(f"""
[server]
host = "127.0.0.1"
http_port = {ports['http']}
grpc_port = {ports['grpc']}
metrics_port = {ports['metrics']}
{server or workers_toml()}
[scheduler]
policy = "kairos"
{scheduler}
[models]
repository = "{REPO / 'model_repository'}"
profiles = "{REPO / 'profiles' / 'aws'}"
[models.qos_ms]
ncf = {QOS_MS}
[emulation]
models = {{ ncf = "ncf" }}
[types."r5n.large"]
backend = "emulated"
emulate = "r5n.large"
price_usd_per_hour = 0.1
[fleet.static]
"r5n.large" = {n}
""")
    return ports


def instance_pids(daemon_pid: int) -> dict[str, int]:
    """{"127.0.0.1:port": pid} of the daemon's emulated instances (its children, by their --port)."""
    return {f"127.0.0.1:{argv[argv.index(b'--port') + 1].decode()}": pid
            for pid, argv in children(daemon_pid).items() if b"emulated" in argv and b"--port" in argv}


def inputs(batch: int) -> list[grpcaio.InferInput]:
    out = []
    for name, arr in example_inputs("ncf", batch, seed=0).items():
        t = grpcaio.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        t.set_data_from_numpy(arr)
        out.append(t)
    return out


def by_address(d: RunningDaemon) -> dict[str, dict]:
    return {i["address"]: i for i in d.fleet()["instances"]}


@pytest.fixture(scope="module")
def fleet3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    path = tmp_path_factory.mktemp("faults") / "kairosd.toml"
    d = start_daemon(path, write(path, 3), timeout_s=60)
    yield d
    assert d.stop() == 0, d.child.log_tail()


def test_sigstopped_instance_under_32_way_load(fleet3: RunningDaemon) -> None:
    d = fleet3
    pids = instance_pids(d.child.pid or 0)
    assert len(pids) == 3, pids
    victim = sorted(pids)[0]
    outcomes: list[tuple[str, float]] = []  # (status or "ok", seconds)

    async def load(stop_at: float) -> None:
        client = grpcaio.InferenceServerClient(d.grpc_url)
        ins = inputs(8)

        async def loop() -> None:
            while time.monotonic() < stop_at:
                t0 = time.monotonic()
                try:
                    r = await client.infer("ncf", ins, client_timeout=CLIENT_TIMEOUT_S)
                    assert r.as_numpy("score").shape[0] == 8
                    outcomes.append(("ok", time.monotonic() - t0))
                except InferenceServerException as e:
                    outcomes.append((str(e.status()), time.monotonic() - t0))
                    await asyncio.sleep(0.01)

        try:
            await asyncio.gather(*(loop() for _ in range(32)))
        finally:
            await client.close()

    async def chaos() -> None:
        # 1.5 s of load, 2.5 s frozen, 1 s of load after SIGCONT (then `more` below: it serves again)
        t_end = time.monotonic() + 5.0
        task = asyncio.ensure_future(load(t_end))
        await asyncio.sleep(1.5)
        os.kill(pids[victim], signal.SIGSTOP)
        try:
            await asyncio.sleep(1.0)
            state = (await asyncio.to_thread(by_address, d))[victim]["state"]
            assert state == "suspect", state  # out of dispatch while it hangs
            await asyncio.sleep(1.5)
        finally:
            os.kill(pids[victim], signal.SIGCONT)
        await task

    served_before = by_address(d)[victim]["served"]
    asyncio.run(chaos())
    ok = [t for s, t in outcomes if s == "ok"]
    errors = [s for s, _ in outcomes if s != "ok"]
    assert len(ok) > 500, (len(ok), errors[:5])
    # every query answered within its deadline (and a scheduling grace), and none silently lost
    assert max(t for _, t in outcomes) < CLIENT_TIMEOUT_S + 0.5
    # the only errors are admission's explicit refusals; in a closed loop a refused client asks again at
    # once, so refusals are counted many times over while the frozen instance costs the fleet a third
    assert set(errors) <= {"StatusCode.RESOURCE_EXHAUSTED"}, set(errors)
    assert len(errors) < 0.25 * len(outcomes), (len(errors), len(outcomes))
    assert "within its backend deadline" in d.child.log_tail(200_000)  # abandoned there, not at 3 s

    # back after SIGCONT: READY again, and it serves
    deadline = time.monotonic() + 10
    while by_address(d)[victim]["state"] != "ready" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert by_address(d)[victim]["state"] == "ready"
    served_mid = by_address(d)[victim]["served"]

    async def more() -> None:
        client = grpcaio.InferenceServerClient(d.grpc_url)

        async def answered() -> None:
            # a refusal is admission's answer to lateness it measured (a stall of the whole machine beside
            # this test lifts its guard for a second): the client asks again, as the chaos phase's does
            for _ in range(20):
                try:
                    await client.infer("ncf", inputs(8))
                    return
                except InferenceServerException as e:
                    if str(e.status()) != "StatusCode.RESOURCE_EXHAUSTED":
                        raise
                    await asyncio.sleep(0.2)
            raise AssertionError("refused for 4 s after the instance came back")

        try:
            for _ in range(4):
                await asyncio.gather(*(answered() for _ in range(6)))
        finally:
            await client.close()

    asyncio.run(more())
    assert by_address(d)[victim]["served"] > served_mid >= served_before


def test_client_deadline_honoured_as_sent_and_capped_by_max_timeout(tmp_path: Path) -> None:
    """default_timeout_s = 0.2 applies only to queries without a deadline; a client deadline of 5 s
    outlives a 1 s stall of the whole fleet; max_timeout_s = 0.5 caps every deadline."""

    def stall_and_query(d: RunningDaemon, client_timeout: float | None) -> tuple[str, float]:
        pids = list(instance_pids(d.child.pid or 0).values())

        async def go() -> tuple[str, float]:
            client = grpcaio.InferenceServerClient(d.grpc_url)
            for p in pids:
                os.kill(p, signal.SIGSTOP)
            t0 = time.monotonic()
            resume = asyncio.get_running_loop().call_later(1.0, lambda: [os.kill(p, signal.SIGCONT) for p in pids])
            try:
                await client.infer("ncf", inputs(4), client_timeout=client_timeout)
                return "ok", time.monotonic() - t0
            except InferenceServerException as e:
                return str(e.status()), time.monotonic() - t0
            finally:
                await asyncio.sleep(max(0.0, 1.1 - (time.monotonic() - t0)))
                resume.cancel()
                for p in pids:
                    os.kill(p, signal.SIGCONT)
                await client.close()

        return asyncio.run(go())

    def wait_all_ready(d: RunningDaemon) -> None:
        deadline = time.monotonic() + 10
        while any(i["state"] != "ready" for i in by_address(d).values()) and time.monotonic() < deadline:
            time.sleep(0.1)

    # one instance, so its stall leaves nothing else to retry on: the query waits (queued, the instance
    # suspect) until the probe sees it again; admission by deadline so a long wait is allowed
    path = tmp_path / "kairosd.toml"
    d = start_daemon(path, write(path, 1, 'default_timeout_s = 0.2\nadmission = "deadline"\nmax_attempts = 5'),
                     timeout_s=60)
    try:
        status, took = stall_and_query(d, None)
        assert status == "StatusCode.UNAVAILABLE" and took < 0.6, (status, took)
        wait_all_ready(d)
        status, took = stall_and_query(d, 5.0)
        assert status == "ok" and 0.9 < took < 4.0, (status, took)
    finally:
        assert d.stop() == 0, d.child.log_tail()

    path = tmp_path / "capped.toml"
    d = start_daemon(path, write(path, 1, 'max_timeout_s = 0.5\nadmission = "deadline"\nmax_attempts = 5'),
                     timeout_s=60)
    try:
        status, took = stall_and_query(d, 5.0)
        assert status == "StatusCode.UNAVAILABLE" and 0.4 < took < 0.9, (status, took)
    finally:
        assert d.stop() == 0, d.child.log_tail()


def test_burst_past_capacity_is_refused_at_once_and_admitted_ones_meet_qos(fleet3: RunningDaemon) -> None:
    """600 queries at once at batch 960 (6.5 ms each: three instances serve about 45 within 100 ms): those
    the fleet cannot serve in time are refused RESOURCE_EXHAUSTED at once, none waits to fail, the admitted
    meet the QoS. How many are admitted is the host's: the client issues the 600 calls over a span that its
    speed sets (tens of ms here, a second on a slowed CI host, when the fleet serves some 450 of them in
    time); the QoS checks below are what catches an admission that lets too many in."""
    d = fleet3

    async def burst() -> list[tuple[str, float]]:
        client = grpcaio.InferenceServerClient(d.grpc_url)
        ins = inputs(960)

        async def one() -> tuple[str, float]:
            t0 = time.monotonic()
            try:
                await client.infer("ncf", ins, client_timeout=10.0)
                return "ok", time.monotonic() - t0
            except InferenceServerException as e:
                return str(e.status()), time.monotonic() - t0

        try:
            return await asyncio.gather(*(one() for _ in range(600)))
        finally:
            await client.close()

    def counts() -> tuple[float, float, float]:
        done = d.metric_values("kairos_queries_total").get('{model="ncf",outcome="completed"}', 0.0)
        within = d.metric_values("kairos_query_latency_seconds_bucket").get('{le="0.15",model="ncf"}', 0.0)
        return done, d.metric_values("kairos_qos_violations_total").get('{model="ncf"}', 0.0), within

    def turned_away() -> float:
        # refused at arrival, or shed from the queue once it could no longer meet the QoS
        return d.metric_values("kairos_queries_refused_total").get("", 0.0) + \
            d.metric_values("kairos_queries_shed_total").get("", 0.0)

    done0, late0, within0 = counts()
    away0, expired0 = turned_away(), d.metric_values("kairos_queries_expired_total").get("", 0.0)
    results = asyncio.run(burst())
    ok = [t for s, t in results if s == "ok"]
    # the counters can trail the last answers by a moment (with several front-end processes, a front end
    # answers its client before its report reaches the dispatcher): read them once every answer is
    # counted, or after a second, for the assertion to show what is missing
    settle = time.monotonic() + 1.0
    done1, late1, within1 = counts()
    while done1 - done0 < len(ok) and time.monotonic() < settle:
        time.sleep(0.02)
        done1, late1, within1 = counts()
    refused = [t for s, t in results if s == "StatusCode.RESOURCE_EXHAUSTED"]
    assert len(ok) + len(refused) == 600, {s for s, _ in results}
    assert ok and refused, (len(ok), len(refused))
    # refused by kairosd's admission (or shed within the QoS), none at the 10 s deadline: the daemon's
    # counts say which; the client's own times include its issuing of the 600 calls (over 2 s on a
    # slowed host), so they are held only to well inside the deadline
    assert turned_away() - away0 == len(refused), (turned_away() - away0, len(refused))
    assert d.metric_values("kairos_queries_expired_total").get("", 0.0) == expired0
    assert max(refused) < 5.0, max(refused)
    # admitted: answered within the QoS target as kairosd measures it (arrival to answer; the client's
    # own time to issue 600 calls on these 2 cores is not the daemon's). 600 requests parsed at once
    # delay the head's own hops, which admission learns within the burst: a few percent end late, by
    # little (bench/overload.py measures the sustained case). Some 30–70 are admitted on this machine, a
    # few hundred on a slowed host: up to 3 of them may be late while admission learns, or a share
    # consistent with 6% of them (the count's binomial spread, two standard deviations: 66 admitted allow 7)
    assert done1 - done0 == len(ok)
    n_ok = len(ok)
    assert late1 - late0 <= max(3.0, 0.06 * n_ok + 2.0 * math.sqrt(0.06 * 0.94 * n_ok)), (late1 - late0, n_ok)
    # late by little: at most 2% of the admitted past 1.5 × QoS, one at least (a clean-clone CI run once
    # admitted 150 and saw 2 of them there, in the burst's first moments)
    assert len(ok) - (within1 - within0) <= max(1.0, 0.02 * n_ok), (len(ok) - (within1 - within0), n_ok)


def test_a_query_whose_http_client_went_away_is_never_sent(tmp_path: Path) -> None:
    """The only instance stopped: an HTTP query is sent, abandoned at its backend deadline and queued
    again (no other instance); its client closes the connection; after SIGCONT nothing more is sent."""
    path = tmp_path / "kairosd.toml"
    d = start_daemon(path, write(path, 1, 'admission = "deadline"\nmax_attempts = 5'), timeout_s=60)
    try:
        pid = next(iter(instance_pids(d.child.pid or 0).values()))
        matched0 = d.metric_values("kairos_dispatch_matched_total")[""]
        body = json.dumps({"inputs": [{"name": n, "shape": [2, 1], "datatype": "INT64", "data": [[1], [2]]}
                                      for n in ("user_id", "item_id")]}).encode()
        host, port = d.http_url.split(":")
        os.kill(pid, signal.SIGSTOP)
        try:
            with socket.create_connection((host, int(port)), timeout=5) as sock:
                sock.sendall(b"POST /v2/models/ncf/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
                time.sleep(0.5)  # sent once, abandoned at the 200 ms backend deadline, queued again
                assert d.metric_values("kairos_queue_depth")[""] == 1
            time.sleep(0.3)  # the client is gone: its query leaves the queue
            assert d.metric_values("kairos_queue_depth")[""] == 0
        finally:
            os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 10
        while any(i["state"] != "ready" for i in by_address(d).values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.2)
        assert d.metric_values("kairos_dispatch_matched_total")[""] == matched0 + 1  # the first send only
        assert d.metric_values("kairos_in_flight")[""] == 0
    finally:
        assert d.stop() == 0, d.child.log_tail()

"""The stream transport of BackendClient (one ModelStreamInfer stream per instance) against a real `kairosd
emulated` and a real `kairosd worker` (and PyTriton's Triton): 200 queries in flight on one stream with their ids back, a query's
deadline or cancellation leaving the others and the stream alone, a model error failing its query only, and
an instance killed mid-stream failing every query on it UNAVAILABLE (retryable) and served again on restart."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from kairosd.backends.client import BackendClient
from kairosd.backends.process import ChildProcess, free_port, wait_ready_sync
from kairosd.errors import BackendError
from kairosd.modelgen import example_inputs
from tests.integration.test_worker import REPOSITORY, Worker, start_worker


def request(model: str, batch: int, query_id: str = "") -> service_pb2.ModelInferRequest:
    r = service_pb2.ModelInferRequest(model_name=model, id=query_id)
    for name, arr in example_inputs(model, batch, seed=1).items():
        r.inputs.add(name=name, datatype="FP32" if arr.dtype == np.float32 else "INT64", shape=arr.shape)
        r.raw_input_contents.append(arr.tobytes())
    return r


def start_emulated(port: int) -> ChildProcess:
    # g4dn.xlarge as timed by the Kairos samples: ncf batch 1 well under 1 ms, rm2 batch 1000 ~0.2 s
    child = ChildProcess([sys.executable, "-m", "kairosd", "emulated", "--model-repository", str(REPOSITORY),
                          "--emulate", "g4dn.xlarge", "--models", "dlrm=rm2,ncf=ncf", "--port", str(port),
                          "--slots", "256", "--seed", "1"], name="emulated").start()
    try:
        wait_ready_sync(f"127.0.0.1:{port}", 30, child)
    except BaseException:
        child.stop()
        raise
    return child


@pytest.fixture(scope="module")
def emulated() -> Iterator[str]:
    port = free_port()
    child = start_emulated(port)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        assert child.stop(10) == 0, child.log_tail()


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    w = start_worker("--threads", "1")
    try:
        yield w
    finally:
        w.child.stop()


@pytest.fixture(params=["emulated", "worker"])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "emulated":
        return str(request.getfixturevalue("emulated"))
    return str(request.getfixturevalue("worker").url)


def response_of(raw: bytes) -> service_pb2.ModelInferResponse:
    return service_pb2.ModelInferResponse.FromString(raw)


async def test_200_in_flight_on_one_stream_keep_their_ids(url: str) -> None:
    client = BackendClient(url, stream=True)
    try:
        ids = [f"query-{i}" for i in range(199)] + [""]  # "" too: an empty id comes back empty
        requests = [request("ncf", 1 + i % 4, query_id) for i, query_id in enumerate(ids)]
        # half as the client's raw bytes (forwarded as they are), half serialized by the client
        answers = await asyncio.gather(*(client.infer(r, 30.0, r.SerializeToString() if i % 2 else None)
                                         for i, r in enumerate(requests)))
        stream = client._stream
        for r, raw in zip(requests, answers, strict=True):
            response = response_of(raw)
            assert response.id == r.id and response.model_name == "ncf"
            assert list(response.outputs[0].shape) == [r.inputs[0].shape[0], 1]
        assert stream is not None and not stream.broken and not stream.pending
        await client.infer(requests[0], 30.0)
        assert client._stream is stream  # one stream carried every query
    finally:
        await client.close()


async def test_a_deadline_fails_its_query_only(emulated: str, worker: Worker) -> None:
    # rm2 batch 1000 takes ~0.2 s on the emulated g4dn, dlrm batch 1024 tens of ms on the worker
    for url, slow in ((emulated, request("dlrm", 1000, "slow")), (worker.url, request("dlrm", 1024, "slow"))):
        client = BackendClient(url, stream=True)
        try:
            fast = [request("ncf", 1, f"fast-{i}") for i in range(20)]
            results = await asyncio.gather(client.infer(slow, 0.002), *(client.infer(r, 30.0) for r in fast),
                                           return_exceptions=True)
            error = results[0]
            assert isinstance(error, BackendError), error
            assert error.status is grpc.StatusCode.DEADLINE_EXCEEDED and not error.retryable
            assert [response_of(x).id for x in results[1:]] == [r.id for r in fast]  # type: ignore[arg-type]
            stream = client._stream
            assert stream is not None and not stream.broken
            await asyncio.sleep(0.4)  # the late answer arrives and is dropped
            assert response_of(await client.infer(fast[0], 30.0)).id == "fast-0"
            assert client._stream is stream and not stream.pending
        finally:
            await client.close()


async def test_cancellation_leaves_the_stream_alone(emulated: str) -> None:
    client = BackendClient(emulated, stream=True)
    try:
        slow = asyncio.ensure_future(client.infer(request("dlrm", 1000, "slow"), 30.0))
        others = [asyncio.ensure_future(client.infer(request("ncf", 1, f"q{i}"), 30.0)) for i in range(10)]
        await asyncio.sleep(0.02)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        assert [response_of(x).id for x in await asyncio.gather(*others)] == [f"q{i}" for i in range(10)]
        stream = client._stream
        assert stream is not None and not stream.broken and not stream.pending
        await asyncio.sleep(0.3)  # the cancelled query's answer arrives and is dropped
        assert response_of(await client.infer(request("ncf", 1, "after"), 30.0)).id == "after"
        assert client._stream is stream
    finally:
        await client.close()


async def test_a_model_error_fails_its_query_only(url: str) -> None:
    client = BackendClient(url, stream=True)
    try:
        bad = request("ncf", 2, "bad")
        bad.inputs[0].shape[:] = [2, 7]  # the worker's (and the front end's) validation refuses it
        good = [request("ncf", 1, f"good-{i}") for i in range(10)]
        results = await asyncio.gather(client.infer(bad, 30.0), *(client.infer(r, 30.0) for r in good),
                                       return_exceptions=True)
        error = results[0]
        assert isinstance(error, BackendError), error
        assert error.status is grpc.StatusCode.INVALID_ARGUMENT and not error.retryable
        assert "user_id" in str(error)
        assert [response_of(x).id for x in results[1:]] == [r.id for r in good]  # type: ignore[arg-type]
        unknown = request("ncf", 1, "unknown")
        unknown.model_name = "nope"
        with pytest.raises(BackendError) as e:
            await client.infer(unknown, 30.0)
        assert e.value.status is grpc.StatusCode.NOT_FOUND and not e.value.retryable
        assert client._stream is not None and not client._stream.broken
    finally:
        await client.close()


async def test_an_instance_killed_mid_stream_then_restarted() -> None:
    port = free_port()
    child = await asyncio.to_thread(start_emulated, port)
    client = BackendClient(f"127.0.0.1:{port}", stream=True)
    try:
        assert response_of(await client.infer(request("ncf", 1, "before"), 30.0)).id == "before"
        first = client._stream
        in_flight = [asyncio.ensure_future(client.infer(request("dlrm", 1000, f"q{i}"), 30.0)) for i in range(5)]
        await asyncio.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        results = await asyncio.wait_for(asyncio.gather(*in_flight, return_exceptions=True), 10)
        for error in results:
            assert isinstance(error, BackendError), error
            assert error.status is grpc.StatusCode.UNAVAILABLE and error.retryable
        assert first is not None and first.broken
        child.wait(5)
        child = await asyncio.to_thread(start_emulated, port)
        # the channel reconnects with its backoff; until then a query fails UNAVAILABLE and the next
        # query opens a new stream
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while True:
            try:
                answer = await client.infer(request("ncf", 1, "after"), 5.0)
                break
            except BackendError as exc:
                assert exc.status is grpc.StatusCode.UNAVAILABLE and exc.retryable
                assert loop.time() < deadline, "not served again within 10 s of the restart"
                await asyncio.sleep(0.1)
        assert response_of(answer).id == "after"
        assert client._stream is not first and client._stream is not None and not client._stream.broken
    finally:
        await client.close()
        child.stop(10)


async def test_an_instance_without_modelstreaminfer_gets_unary_calls() -> None:
    """kairosd's front end refuses ModelStreamInfer (UNIMPLEMENTED): the client goes unary for that instance."""
    from kairosd.backends.emulated import EmulatedInstance
    from kairosd.emulation import load_cells
    from kairosd.repository import load_repository
    from kairosd.server.grpc_frontend import start_grpc_server

    specs = load_repository(REPOSITORY, only=["ncf"])
    instance = EmulatedInstance(specs, load_cells("g4dn.xlarge", "kairos", {"ncf": "ncf"}), "g4dn.xlarge", slots=8)
    port = free_port()
    server = await start_grpc_server(instance, "127.0.0.1", port, 1 << 26)
    client = BackendClient(f"127.0.0.1:{port}", stream=True)
    try:
        answers = await asyncio.gather(*(client.infer(request("ncf", 1, f"x{i}"), 30.0) for i in range(5)))
        assert [response_of(a).id for a in answers] == [f"x{i}" for i in range(5)]
        assert client.stream is False
        assert response_of(await client.infer(request("ncf", 1, "y"), 30.0)).id == "y"
    finally:
        await client.close()
        await server.stop(0)
        instance.close()


@pytest.mark.triton
async def test_triton_serves_the_stream() -> None:
    """PyTriton's Triton: ids kept over one stream; its in-stream errors (message only) classified."""
    from kairosd.backends.process import kairosd_argv

    g, h, m = free_port(), free_port(), free_port()
    child = ChildProcess(kairosd_argv("triton", "--model-repository", str(REPOSITORY), "--grpc-port", str(g),
                                      "--http-port", str(h), "--metrics-port", str(m), "--threads", "1"),
                         name="triton").start()
    client = BackendClient(f"127.0.0.1:{g}", stream=True)
    try:
        await asyncio.to_thread(wait_ready_sync, f"127.0.0.1:{g}", 120, child)
        requests = [request("ncf", 1 + i % 3, f"t{i}") for i in range(50)]
        answers = await asyncio.gather(*(client.infer(r, 30.0, r.SerializeToString()) for r in requests))
        assert [response_of(a).id for a in answers] == [r.id for r in requests]
        bad = request("ncf", 2, "bad")
        bad.inputs[0].shape[:] = [2, 7]
        with pytest.raises(BackendError) as e:
            await client.infer(bad, 30.0)
        assert e.value.status is grpc.StatusCode.INVALID_ARGUMENT and not e.value.retryable
        assert "request id: bad]" in str(e.value)
        unknown = request("ncf", 1, "unknown")
        unknown.model_name = "nope"
        with pytest.raises(BackendError) as e:
            await client.infer(unknown, 30.0)
        assert e.value.status is grpc.StatusCode.NOT_FOUND
        assert client.stream and client._stream is not None and not client._stream.broken
    finally:
        await client.close()
        await asyncio.to_thread(child.stop, 30)


def test_queries_abandoned_at_their_deadline_leave_the_instance_queue() -> None:
    """A stream has no per-query cancel: each query carries its deadline as the KServe `timeout`
    parameter, and the instance drops it once that passed. One slot, rm2 batch 200 (55 ms each on
    g4dn): 30 queries abandoned at 0.1 s must not make the next query wait out their 1.6 s of service."""
    port = free_port()
    child = ChildProcess([sys.executable, "-m", "kairosd", "emulated", "--model-repository", str(REPOSITORY),
                          "--emulate", "g4dn.xlarge", "--models", "dlrm=rm2,ncf=ncf", "--port", str(port),
                          "--slots", "1", "--seed", "1"], name="emulated-1slot").start()
    try:
        wait_ready_sync(f"127.0.0.1:{port}", 30, child)

        async def go() -> float:
            client = BackendClient(f"127.0.0.1:{port}", stream=True)
            try:
                abandoned = await asyncio.gather(*(client.infer(request("dlrm", 200, f"a{i}"), 0.1) for i in range(30)),
                                                 return_exceptions=True)
                codes = {e.status for e in abandoned if isinstance(e, BackendError)}
                assert codes == {grpc.StatusCode.DEADLINE_EXCEEDED}, abandoned[:3]
                t0 = asyncio.get_running_loop().time()
                out = service_pb2.ModelInferResponse.FromString(await client.infer(request("dlrm", 200, "next"), 5.0))
                assert out.id == "next"
                return asyncio.get_running_loop().time() - t0
            finally:
                await client.close()

        took = asyncio.run(go())
        assert took < 0.5, f"the next query waited {took:.2f} s behind abandoned ones"
    finally:
        child.stop(5)

"""The ONNX Runtime worker as a subprocess on a real socket: ONNX Runtime's answers, Triton's errors, clean stop."""

# The `check_*` helpers are shared with tests/integration/test_triton_local.py, which runs them against a real Triton.

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from kairosd.backends.process import ChildProcess, free_port, kairosd_argv, wait_ready_sync
from kairosd.modelgen import NCF_USERS, example_inputs
from kairosd.repository import NP_TO_DTYPE, ModelSpec, load_repository

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
MODELS = ("dlrm", "ncf")
START_TIMEOUT_S = 60.0


# ---------------------------------------------------------------- helpers shared with test_triton_local.py


def reference_sessions() -> dict[str, ort.InferenceSession]:
    """In-process ONNX Runtime sessions: the ground truth every backend must reproduce."""
    return {
        name: ort.InferenceSession(str(spec.onnx_path), providers=["CPUExecutionProvider"])
        for name, spec in load_repository(REPOSITORY).items()
    }


def grpc_inputs(arrays: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
    inputs = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), NP_TO_DTYPE[array.dtype])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def check_outputs_match_onnxruntime(
    client: grpcclient.InferenceServerClient, sessions: dict[str, ort.InferenceSession], model: str, batch: int
) -> None:
    arrays = example_inputs(model, batch, seed=batch)
    result = client.infer(model, grpc_inputs(arrays))
    session = sessions[model]
    expected = session.run(None, arrays)
    for out, want in zip(session.get_outputs(), expected, strict=True):
        got = result.as_numpy(out.name)
        assert got is not None and got.shape == want.shape == (batch, 1) and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def check_requested_outputs_and_id(client: grpcclient.InferenceServerClient) -> None:
    result = client.infer(
        "dlrm",
        grpc_inputs(example_inputs("dlrm", 3)),
        outputs=[grpcclient.InferRequestedOutput("click_probability")],
        request_id="query-42",
    )
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("dlrm", "1", "query-42")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [("click_probability", "FP32", [3, 1])]
    assert len(response.raw_output_contents) == 1 and len(response.raw_output_contents[0]) == 3 * 4


Call = Callable[[grpcclient.InferenceServerClient], object]


def _infer(model: str, arrays: dict[str, np.ndarray], **kw: object) -> Call:
    return lambda c: c.infer(model, grpc_inputs(arrays), **kw)


_X = example_inputs("dlrm", 4, seed=1)
# (id, call, gRPC status, words the message must contain): the wording is Triton's own.
ERROR_CASES: list[tuple[str, Call, str, str]] = [
    ("unknown-model-infer", _infer("nope", _X), "NOT_FOUND", "Request for unknown model: 'nope' is not found"),
    ("unknown-model-metadata", lambda c: c.get_model_metadata("nope"), "NOT_FOUND", "unknown model: 'nope'"),
    ("unknown-model-config", lambda c: c.get_model_config("nope"), "NOT_FOUND", "unknown model: 'nope'"),
    ("unknown-version", lambda c: c.get_model_metadata("dlrm", "2"), "NOT_FOUND", "'dlrm' version 2 is not found"),
    (
        "wrong-input-name",
        _infer("dlrm", {"dense": _X["dense_features"], "sparse_ids": _X["sparse_ids"]}),
        "INVALID_ARGUMENT",
        "unexpected inference input 'dense' for model 'dlrm'",
    ),
    (
        "missing-input",
        _infer("dlrm", {"dense_features": _X["dense_features"]}),
        "INVALID_ARGUMENT",
        "missing required input(s) ['sparse_ids']",
    ),
    (
        "wrong-dtype",
        _infer("dlrm", {"dense_features": _X["dense_features"], "sparse_ids": _X["sparse_ids"].astype(np.int32)}),
        "INVALID_ARGUMENT",
        "inference input 'sparse_ids' data-type is 'INT32', but model 'dlrm' expects 'INT64'",
    ),
    (
        "wrong-shape",
        _infer("dlrm", {"dense_features": _X["dense_features"][:, :12].copy(), "sparse_ids": _X["sparse_ids"]}),
        "INVALID_ARGUMENT",
        "unexpected shape for input 'dense_features' for model 'dlrm'. Expected [-1,13], got [4,12]",
    ),
    (
        "batch-mismatch",
        _infer("dlrm", {"dense_features": _X["dense_features"][:3].copy(), "sparse_ids": _X["sparse_ids"]}),
        "INVALID_ARGUMENT",
        "batch size",
    ),
    (
        "batch-too-big",
        _infer("ncf", example_inputs("ncf", 1025)),
        "INVALID_ARGUMENT",
        "inference request batch-size must be <= 1024 for 'ncf'",
    ),
    (
        "unknown-output",
        _infer("dlrm", _X, outputs=[grpcclient.InferRequestedOutput("nope")]),
        "INVALID_ARGUMENT",
        "unexpected inference output 'nope' for model 'dlrm'",
    ),
]


def check_error(client: grpcclient.InferenceServerClient, call: Callable[..., object], status: str, words: str) -> None:
    with pytest.raises(InferenceServerException) as info:
        call(client)
    assert info.value.status() == f"StatusCode.{status}", info.value
    assert words in info.value.message()


def check_metadata(client: grpcclient.InferenceServerClient, spec: ModelSpec) -> None:
    """Names, datatypes and shapes as the repository declares them (the platform is each backend's own)."""
    md = client.get_model_metadata(spec.name)
    want = spec.metadata_pb()
    assert (md.name, list(md.versions)) == (spec.name, [spec.version])
    assert md.inputs == want.inputs and md.outputs == want.outputs


def check_config(client: grpcclient.InferenceServerClient, spec: ModelSpec) -> None:
    """The parts of the config a client relies on: batching limit, no dynamic batching, tensor names/types/dims."""
    config = client.get_model_config(spec.name).config
    assert (config.name, config.max_batch_size) == (spec.name, spec.max_batch_size)
    assert not config.HasField("dynamic_batching")  # one request is one query
    for got, want in ((config.input, spec.config.input), (config.output, spec.config.output)):
        assert [(t.name, t.data_type, list(t.dims)) for t in got] == [(t.name, t.data_type, list(t.dims)) for t in want]


def check_health(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert all(client.is_model_ready(m) for m in MODELS)
    assert not client.is_model_ready("nope")


# ---------------------------------------------------------------- the worker


@dataclass
class Worker:
    child: ChildProcess
    url: str


def start_worker(*args: str) -> Worker:
    port = free_port()
    argv = kairosd_argv("worker", "--model-repository", str(REPOSITORY), "--port", str(port), *args)
    child = ChildProcess(argv, name="worker").start()
    try:
        wait_ready_sync(f"127.0.0.1:{port}", START_TIMEOUT_S, child)
    except BaseException:
        child.stop()
        raise
    return Worker(child, f"127.0.0.1:{port}")


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    w = start_worker("--threads", "1")
    try:
        yield w
    finally:
        w.child.stop()


@pytest.fixture(scope="module")
def client(worker: Worker) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(worker.url)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def sessions() -> dict[str, ort.InferenceSession]:
    return reference_sessions()


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("batch", [1, 100, 1024])
def test_outputs_match_onnxruntime(
    client: grpcclient.InferenceServerClient, sessions: dict[str, ort.InferenceSession], model: str, batch: int
) -> None:
    check_outputs_match_onnxruntime(client, sessions, model, batch)


def test_requested_outputs_and_id_are_echoed(client: grpcclient.InferenceServerClient) -> None:
    check_requested_outputs_and_id(client)


@pytest.mark.parametrize(("case", "call", "status", "words"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_errors_carry_tritons_codes(
    client: grpcclient.InferenceServerClient, case: str, call: Callable[..., object], status: str, words: str
) -> None:
    check_error(client, call, status, words)


def test_an_id_out_of_range_is_invalid_argument(client: grpcclient.InferenceServerClient) -> None:
    arrays = example_inputs("ncf", 2)
    arrays["user_id"][1, 0] = NCF_USERS
    check_error(client, _infer("ncf", arrays), "INVALID_ARGUMENT", "out of data bounds")
    check_outputs_match_onnxruntime(client, reference_sessions(), "ncf", 2)  # the worker is fine afterwards


def test_metadata_config_and_health(client: grpcclient.InferenceServerClient) -> None:
    repo = load_repository(REPOSITORY)
    for spec in repo.values():
        check_metadata(client, spec)
        check_config(client, spec)
        assert client.get_model_metadata(spec.name).platform == "onnxruntime_onnx"
        assert client.get_model_config(spec.name).config == spec.config
    check_health(client)
    assert client.get_server_metadata().name == "kairosd-worker"


def test_typed_contents_are_accepted_like_raw_bytes(worker: Worker, sessions: dict[str, ort.InferenceSession]) -> None:
    arrays = example_inputs("ncf", 5, seed=9)
    request = service_pb2.ModelInferRequest(model_name="ncf", id="typed")
    for name, array in arrays.items():
        tensor = request.inputs.add(name=name, datatype="INT64", shape=array.shape)
        tensor.contents.int64_contents.extend(array.ravel().tolist())
    with grpc.insecure_channel(worker.url) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
        request.inputs[0].contents.int64_contents.pop()
        with pytest.raises(grpc.RpcError) as info:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    got = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(5, 1)
    np.testing.assert_allclose(got, sessions["ncf"].run(None, arrays)[0], rtol=1e-5, atol=1e-6)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "got 4 int64_contents, expected 5" in str(info.value.details())


async def test_concurrent_queries_are_each_answered_correctly(
    worker: Worker, sessions: dict[str, ort.InferenceSession]
) -> None:
    queries = [(MODELS[i % 2], 1 + 37 * i) for i in range(24)]
    async with aioclient.InferenceServerClient(worker.url) as client:
        calls = [
            client.infer(m, grpc_inputs(example_inputs(m, b, seed=b)), request_id=str(i))
            for i, (m, b) in enumerate(queries)
        ]
        results = await asyncio.gather(*calls)
    for i, ((model, batch), result) in enumerate(zip(queries, results, strict=True)):
        assert result.get_response().id == str(i)
        out = sessions[model].get_outputs()[0].name
        want = sessions[model].run(None, example_inputs(model, batch, seed=batch))[0]
        np.testing.assert_allclose(result.as_numpy(out), want, rtol=1e-5, atol=1e-6)


async def test_sigterm_drains_accepted_queries_refuses_new_ones_and_exits_0() -> None:
    w = await asyncio.to_thread(start_worker, "--models", "dlrm", "--threads", "2", "--grace-s", "10")
    try:
        arrays = example_inputs("dlrm", 1024)
        async with aioclient.InferenceServerClient(w.url) as client:
            assert await client.is_model_ready("dlrm") and not await client.is_model_ready("ncf")
            with pytest.raises(InferenceServerException, match="unknown model: 'ncf'"):
                await client.infer("ncf", grpc_inputs(example_inputs("ncf", 1)))
            in_flight = [asyncio.ensure_future(client.infer("dlrm", grpc_inputs(arrays))) for _ in range(40)]
            finished_at: list[float] = []
            for future in in_flight:
                future.add_done_callback(lambda _: finished_at.append(time.monotonic()))
            await asyncio.sleep(0.05)  # the requests are on the server; 40 x batch 1024 take a few 100 ms
            started = time.monotonic()
            code = await w.child.stop_async(grace_s=30)
            stop_s = time.monotonic() - started
            results = await asyncio.gather(*in_flight, return_exceptions=True)
    finally:
        w.child.stop()
    assert code == 0, w.child.log_tail()
    # Queries the worker had accepted finish; ones arriving after SIGTERM are refused as UNAVAILABLE (retryable).
    refused = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(r, InferenceServerException) and r.status() == "StatusCode.UNAVAILABLE" for r in refused), [
        str(r) for r in refused
    ]
    assert len(refused) < len(results)
    assert max(finished_at) > started  # some queries were still running when SIGTERM came
    assert "SIGTERM: draining" in w.child.log_tail() and "stopped" in w.child.log_tail()
    assert stop_s < 10, stop_s
    assert w.child.leftover_pids == []


async def test_a_second_sigterm_stops_at_once() -> None:
    w = await asyncio.to_thread(start_worker, "--models", "dlrm", "--grace-s", "60")
    try:
        arrays = example_inputs("dlrm", 1024)
        async with aioclient.InferenceServerClient(w.url) as client:
            queued = [asyncio.ensure_future(client.infer("dlrm", grpc_inputs(arrays))) for _ in range(300)]
            await asyncio.sleep(0.3)  # ~300 x 10 ms of work queued on the worker
            w.child.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            started = time.monotonic()
            w.child.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(w.child.wait, 30)
            stopped_s = time.monotonic() - started
            results = await asyncio.gather(*queued, return_exceptions=True)
    finally:
        w.child.stop()
    assert code == 0, w.child.log_tail()
    assert stopped_s < 2.0, stopped_s
    assert "SIGTERM again: stopping now" in w.child.log_tail(10_000_000)
    assert any(isinstance(r, BaseException) for r in results)  # the grace period was cut short


def test_a_taken_port_fails_fast_with_exit_1(worker: Worker) -> None:
    port = worker.url.rsplit(":", 1)[1]
    child = ChildProcess(kairosd_argv("worker", "--model-repository", str(REPOSITORY), "--port", port), name="worker2")
    child.start()
    try:
        child.wait(START_TIMEOUT_S)
    finally:
        child.stop()
    assert child.returncode == 1
    assert "cannot listen on 127.0.0.1:" + port in child.log_tail()


def test_a_bad_repository_exits_1_naming_it(tmp_path: Path) -> None:
    child = ChildProcess(kairosd_argv("worker", "--model-repository", str(tmp_path / "nowhere"), "--port", "0"))
    child.start()
    try:
        child.wait(START_TIMEOUT_S)
    finally:
        child.stop()
    assert child.returncode == 1
    assert "nowhere: not a directory" in child.log_tail()

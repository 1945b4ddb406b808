"""Both front ends on real sockets, driven by UNCHANGED tritonclient code, over a real ONNX Runtime service."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcclient_aio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpclient_aio
from aiohttp import web
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from kairosd.backends.http_client import HttpForward
from kairosd.backends.process import free_port
from kairosd.errors import Unavailable
from kairosd.modelgen import example_inputs
from kairosd.repository import NP_TO_DTYPE, ModelSpec, load_repository
from kairosd.server.grpc_frontend import start_grpc_server
from kairosd.server.http_frontend import start_http_server

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
MAX_BODY_BYTES = 256 * 1024  # dlrm at batch 1024 is ~120 KB; batch 8192 is over
UNAVAILABLE_ID = "please-be-unavailable"  # the test service raises Unavailable for this request id


class OrtService:
    """A real InferenceService: runs each model in-process with ONNX Runtime, answers with raw outputs."""

    def __init__(self, repository: Mapping[str, ModelSpec]) -> None:
        self._repository = dict(repository)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.sessions = {
            name: ort.InferenceSession(str(spec.onnx_path), options, providers=["CPUExecutionProvider"])
            for name, spec in self._repository.items()
        }
        self.timeouts: list[float | None] = []

    @property
    def repository(self) -> Mapping[str, ModelSpec]:
        return self._repository

    def is_live(self) -> bool:
        return True

    def is_ready(self) -> bool:
        return True

    def model_ready(self, name: str) -> bool:
        return name in self._repository

    async def infer(
        self, request: service_pb2.ModelInferRequest, spec: ModelSpec, batch: int, timeout_s: float | None = None,
        raw: bytes | None = None,
    ) -> bytes:
        if raw is not None:  # the front end forwards the exact bytes it validated
            assert service_pb2.ModelInferRequest.FromString(raw) == request
        self.timeouts.append(timeout_s)
        if request.id == UNAVAILABLE_ID:
            raise Unavailable(f"no instance can serve model '{spec.name}' before the deadline")
        feeds = {
            t.name: np.frombuffer(raw, dtype=spec.input(t.name).np_dtype).reshape(t.shape)  # type: ignore[union-attr]
            for t, raw in zip(request.inputs, request.raw_input_contents, strict=True)
        }
        assert all(int(a.shape[0]) == batch for a in feeds.values())
        names = [o.name for o in request.outputs] or [o.name for o in spec.outputs]
        results = self.sessions[spec.name].run(names, feeds)
        response = service_pb2.ModelInferResponse(model_name=spec.name, model_version=spec.version, id=request.id)
        for name, arr in zip(names, results, strict=True):
            response.outputs.add(name=name, datatype=NP_TO_DTYPE[arr.dtype], shape=arr.shape)
            response.raw_output_contents.append(np.ascontiguousarray(arr).tobytes())
        return response.SerializeToString()

    async def infer_http(
        self, forward: HttpForward, spec: ModelSpec, batch: int, timeout_s: float | None = None
    ) -> bytes:
        """Like an instance with no HTTP endpoint: the request converted to gRPC, the answer rendered back."""
        return await self.infer(forward.to_grpc(), spec, batch, timeout_s)


class Servers:
    """Both front ends on one event loop in a background thread, so sync clients can block freely."""

    def __init__(self) -> None:
        self.service = OrtService(load_repository(REPOSITORY))
        self.grpc_port = free_port()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._grpc: grpc.aio.Server | None = None
        self._http: web.AppRunner | None = None
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=30)

    async def _start(self) -> None:
        self._grpc = await start_grpc_server(self.service, "127.0.0.1", self.grpc_port, MAX_BODY_BYTES)
        self._http = await start_http_server(self.service, "127.0.0.1", 0, MAX_BODY_BYTES)
        self.http_port = self._http.addresses[0][1]

    async def _stop(self) -> None:
        assert self._grpc is not None and self._http is not None
        await self._grpc.stop(grace=None)
        await self._http.cleanup()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def reference(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self.service.sessions[model]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, inputs), strict=True))


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    s = Servers()
    yield s
    s.close()


# ---------------------------------------------------------------- helpers building tritonclient inputs


def grpc_inputs(arrays: dict[str, np.ndarray], module: Any = grpcclient) -> list[Any]:
    out = []
    for name, arr in arrays.items():
        i = module.InferInput(name, list(arr.shape), NP_TO_DTYPE[arr.dtype])
        i.set_data_from_numpy(arr)
        out.append(i)
    return out


def http_inputs(arrays: dict[str, np.ndarray], binary: bool = True, module: Any = httpclient) -> list[Any]:
    out = []
    for name, arr in arrays.items():
        i = module.InferInput(name, list(arr.shape), NP_TO_DTYPE[arr.dtype])
        i.set_data_from_numpy(arr, binary_data=binary)
        out.append(i)
    return out


def assert_outputs(result: Any, expected: dict[str, np.ndarray]) -> None:
    for name, want in expected.items():
        got = result.as_numpy(name)
        assert got is not None, f"output {name} missing"
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- gRPC (sync)


def test_grpc_health_metadata_config_index(servers: Servers) -> None:
    client = grpcclient.InferenceServerClient(servers.grpc_url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("dlrm") and client.is_model_ready("ncf", "1")
    assert not client.is_model_ready("nope") and not client.is_model_ready("dlrm", "7")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "kairosd" and "binary_tensor_data" in meta["extensions"]
    model = client.get_model_metadata("dlrm", as_json=True)
    assert model["name"] == "dlrm" and model["versions"] == ["1"]
    assert {t["name"]: t["shape"] for t in model["inputs"]} == {"dense_features": ["-1", "13"], "sparse_ids": ["-1", "8"]}
    config = client.get_model_config("ncf").config
    assert config.name == "ncf" and config.max_batch_size == 1024
    index = client.get_model_repository_index(as_json=True)["models"]
    assert [(m["name"], m["state"]) for m in index] == [("dlrm", "READY"), ("ncf", "READY")]
    client.close()


@pytest.mark.parametrize(("model", "batch"), [("dlrm", 1), ("dlrm", 64), ("ncf", 16)])
def test_grpc_infer_matches_onnxruntime(servers: Servers, model: str, batch: int) -> None:
    arrays = example_inputs(model, batch, seed=batch)
    with grpcclient.InferenceServerClient(servers.grpc_url) as client:
        result = client.infer(model, grpc_inputs(arrays), client_timeout=10.0)
    assert_outputs(result, servers.reference(model, arrays))
    assert result.get_response().model_name == model
    timeout_s = servers.service.timeouts[-1]
    # the client's deadline reached the service (grpc-timeout is rounded up on the wire: allow slack)
    assert timeout_s is not None and 5.0 < timeout_s <= 10.5


def test_grpc_requested_output_and_no_deadline(servers: Servers) -> None:
    arrays = example_inputs("ncf", 4)
    with grpcclient.InferenceServerClient(servers.grpc_url) as client:
        result = client.infer("ncf", grpc_inputs(arrays), outputs=[grpcclient.InferRequestedOutput("score")], request_id="r1")
    assert result.get_response().id == "r1"
    assert_outputs(result, servers.reference("ncf", arrays))
    assert servers.service.timeouts[-1] is None


def test_grpc_typed_contents_are_accepted(servers: Servers) -> None:
    arrays = example_inputs("dlrm", 3)
    request = service_pb2.ModelInferRequest(model_name="dlrm")
    dense = request.inputs.add(name="dense_features", datatype="FP32", shape=[3, 13])
    dense.contents.fp32_contents.extend(arrays["dense_features"].ravel().tolist())
    sparse = request.inputs.add(name="sparse_ids", datatype="INT64", shape=[3, 8])
    sparse.contents.int64_contents.extend(arrays["sparse_ids"].ravel().tolist())
    with grpc.insecure_channel(servers.grpc_url) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    got = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(response.outputs[0].shape)
    np.testing.assert_allclose(got, servers.reference("dlrm", arrays)["click_probability"], rtol=1e-6)


def grpc_error(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


def test_grpc_errors(servers: Servers) -> None:
    client = grpcclient.InferenceServerClient(servers.grpc_url)
    arrays = example_inputs("dlrm", 2)

    e = grpc_error(lambda: client.infer("nope", grpc_inputs(arrays)))
    assert e.status() == "StatusCode.NOT_FOUND" and "'nope'" in e.message()
    e = grpc_error(lambda: client.get_model_metadata("nope"))
    assert e.status() == "StatusCode.NOT_FOUND"
    e = grpc_error(lambda: client.get_model_config("dlrm", "3"))
    assert e.status() == "StatusCode.NOT_FOUND" and "version 3" in e.message()

    renamed = {"dense": arrays["dense_features"], "sparse_ids": arrays["sparse_ids"]}
    e = grpc_error(lambda: client.infer("dlrm", grpc_inputs(renamed)))
    assert e.status() == "StatusCode.INVALID_ARGUMENT" and "'dense'" in e.message()

    wrong_dtype = {**arrays, "dense_features": arrays["dense_features"].astype(np.float64)}
    e = grpc_error(lambda: client.infer("dlrm", grpc_inputs(wrong_dtype)))
    assert e.status() == "StatusCode.INVALID_ARGUMENT" and "'dense_features'" in e.message() and "FP64" in e.message()

    wrong_shape = {**arrays, "sparse_ids": arrays["sparse_ids"][:, :7].copy()}
    e = grpc_error(lambda: client.infer("dlrm", grpc_inputs(wrong_shape)))
    assert e.status() == "StatusCode.INVALID_ARGUMENT" and "'sparse_ids'" in e.message()

    e = grpc_error(lambda: client.infer("dlrm", grpc_inputs(arrays), outputs=[grpcclient.InferRequestedOutput("logit")]))
    assert e.status() == "StatusCode.INVALID_ARGUMENT" and "'logit'" in e.message()

    e = grpc_error(lambda: client.infer("dlrm", grpc_inputs(example_inputs("dlrm", 8192))))
    assert e.status() == "StatusCode.RESOURCE_EXHAUSTED"

    e = grpc_error(lambda: client.infer("dlrm", grpc_inputs(arrays), request_id=UNAVAILABLE_ID))
    assert e.status() == "StatusCode.UNAVAILABLE" and "no instance" in e.message()
    client.close()


def test_grpc_stream_infer_is_unimplemented_with_reason(servers: Servers) -> None:
    with grpc.insecure_channel(servers.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.ModelStreamInfer(iter([service_pb2.ModelInferRequest(model_name="dlrm")]), timeout=10))
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED and "ModelStreamInfer" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelStatistics(service_pb2.ModelStatisticsRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED and "statistics" in info.value.details()


# ---------------------------------------------------------------- gRPC (aio)


async def test_grpc_aio(servers: Servers) -> None:
    async with grpcclient_aio.InferenceServerClient(servers.grpc_url) as client:
        assert await client.is_server_live() and await client.is_model_ready("ncf")
        assert (await client.get_model_metadata("ncf")).name == "ncf"
        arrays = example_inputs("dlrm", 32, seed=7)
        results = await asyncio.gather(*(client.infer("dlrm", grpc_inputs(arrays, grpcclient_aio)) for _ in range(4)))
        for result in results:
            assert_outputs(result, servers.reference("dlrm", arrays))
        with pytest.raises(InferenceServerException) as info:
            await client.infer("nope", grpc_inputs(arrays, grpcclient_aio))
        assert info.value.status() == "StatusCode.NOT_FOUND"


async def test_grpc_aio_burst_is_not_cancelled_by_grpc_core(servers: Servers) -> None:
    """2,500 concurrent calls on one connection: above grpc core's default pending-request limits
    (1,000 soft / 3,000 hard), which would CANCEL a share of them without a message."""
    arrays = example_inputs("ncf", 1)
    async with grpcclient_aio.InferenceServerClient(servers.grpc_url) as client:
        results = await asyncio.gather(
            *(client.infer("ncf", grpc_inputs(arrays, grpcclient_aio), request_id=str(i)) for i in range(2500)),
            return_exceptions=True,
        )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, f"{len(errors)} failed, e.g. {errors[0]!r}"
    assert [r.get_response().id for r in results] == [str(i) for i in range(2500)]  # type: ignore[union-attr]


# ---------------------------------------------------------------- HTTP (sync)


def test_http_health_metadata_config_index(servers: Servers) -> None:
    client = httpclient.InferenceServerClient(servers.http_url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("dlrm") and client.is_model_ready("dlrm", "1")
    assert not client.is_model_ready("nope") and not client.is_model_ready("dlrm", "2")
    meta = client.get_server_metadata()
    assert meta["name"] == "kairosd" and "binary_tensor_data" in meta["extensions"]
    model = client.get_model_metadata("ncf", "1")
    assert model["name"] == "ncf" and [t["shape"] for t in model["inputs"]] == [[-1, 1], [-1, 1]]
    assert client.get_model_config("dlrm")["max_batch_size"] == 1024
    assert client.get_model_repository_index() == [
        {"name": "dlrm", "version": "1", "state": "READY"},
        {"name": "ncf", "version": "1", "state": "READY"},
    ]
    client.close()


@pytest.mark.parametrize(("binary_in", "binary_out"), [(True, None), (False, None), (True, False), (False, True)])
def test_http_infer_matches_onnxruntime(servers: Servers, binary_in: bool, binary_out: bool | None) -> None:
    """binary_out None: no outputs named, so tritonclient asks for all outputs in binary (its default)."""
    arrays = example_inputs("dlrm", 16, seed=3)
    outputs = None if binary_out is None else [httpclient.InferRequestedOutput("click_probability", binary_data=binary_out)]
    client = httpclient.InferenceServerClient(servers.http_url)
    result = client.infer("dlrm", http_inputs(arrays, binary_in), outputs=outputs, request_id="abc")
    client.close()
    assert_outputs(result, servers.reference("dlrm", arrays))
    response = result.get_response()
    assert response["id"] == "abc" and response["model_name"] == "dlrm" and response["model_version"] == "1"
    is_binary = "parameters" in response["outputs"][0]
    assert is_binary == (binary_out is not False)


def test_http_versioned_infer_and_timeout_parameter(servers: Servers) -> None:
    arrays = example_inputs("ncf", 5)
    with httpclient.InferenceServerClient(servers.http_url) as client:
        result = client.infer("ncf", http_inputs(arrays), model_version="1", timeout=2_000_000)
    assert_outputs(result, servers.reference("ncf", arrays))
    assert servers.service.timeouts[-1] == pytest.approx(2.0)


def test_http_compressed_request_and_response(servers: Servers) -> None:
    arrays = example_inputs("dlrm", 8)
    with httpclient.InferenceServerClient(servers.http_url) as client:
        result = client.infer(
            "dlrm", http_inputs(arrays), request_compression_algorithm="gzip", response_compression_algorithm="deflate"
        )
    assert_outputs(result, servers.reference("dlrm", arrays))


def http_error(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


def test_http_errors(servers: Servers) -> None:
    client = httpclient.InferenceServerClient(servers.http_url)
    arrays = example_inputs("dlrm", 2)

    e = http_error(lambda: client.infer("nope", http_inputs(arrays)))
    assert e.status() == "404" and "'nope'" in e.message()
    assert http_error(lambda: client.get_model_metadata("nope")).status() == "404"
    assert http_error(lambda: client.get_model_config("dlrm", "9")).status() == "404"

    renamed = {"dense": arrays["dense_features"], "sparse_ids": arrays["sparse_ids"]}
    e = http_error(lambda: client.infer("dlrm", http_inputs(renamed, binary=False)))
    assert e.status() == "400" and "'dense'" in e.message()

    wrong_dtype = {**arrays, "sparse_ids": arrays["sparse_ids"].astype(np.int32)}
    e = http_error(lambda: client.infer("dlrm", http_inputs(wrong_dtype)))
    assert e.status() == "400" and "'sparse_ids'" in e.message() and "INT32" in e.message()

    wrong_shape = {**arrays, "dense_features": arrays["dense_features"].reshape(1, 26)}
    e = http_error(lambda: client.infer("dlrm", http_inputs(wrong_shape)))
    assert e.status() == "400" and "'dense_features'" in e.message()

    e = http_error(lambda: client.infer("dlrm", http_inputs(example_inputs("dlrm", 8192))))
    assert e.status() == "413" and str(MAX_BODY_BYTES) in e.message()

    e = http_error(lambda: client.infer("dlrm", http_inputs(arrays), request_id=UNAVAILABLE_ID))
    assert e.status() == "503" and "no instance" in e.message()
    client.close()


BINARY_HEADER = (
    b'{"inputs":[{"name":"dense_features","datatype":"FP32","shape":[1,13],"parameters":{"binary_data_size":52}}]}'
)


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        (b'{"inputs": [', {}, "malformed JSON"),
        (b"[1, 2]", {}, "must be a JSON object"),
        (b'{"inputs": [{"name": "dense_features", "datatype": "FP32", "shape": [1, 13]}]}', {}, "'dense_features': no 'data'"),
        (
            b'{"inputs": [{"name": "dense_features", "datatype": "FP32", "shape": [1, 13], "data": [1, 2]}]}',
            {},
            "'dense_features': 2 elements in data",
        ),
        (BINARY_HEADER + bytes(40), {"Inference-Header-Content-Length": str(len(BINARY_HEADER))}, "52 exceeds the 40 bytes"),
        (b'{"inputs": []}' + bytes(8), {"Inference-Header-Content-Length": "14"}, "8 bytes of binary data"),
        (b'{"inputs": []}', {"Inference-Header-Content-Length": "99"}, "Inference-Header-Content-Length is 99"),
    ],
    ids=["truncated-json", "not-object", "no-data", "wrong-count", "short-binary", "unclaimed-binary", "header-too-long"],
)
def test_http_malformed_bodies_are_400(servers: Servers, body: bytes, headers: dict[str, str], message: str) -> None:
    status, response_headers, payload = post(f"http://{servers.http_url}/v2/models/dlrm/infer", body, headers)
    assert status == 400
    assert response_headers["Content-Type"].startswith("application/json")
    assert message in json.loads(payload)["error"]


def test_http_unknown_endpoint_is_json_404(servers: Servers) -> None:
    status, _, payload = post(f"http://{servers.http_url}/v2/nothing/here", b"{}")
    assert status == 404 and "no endpoint" in json.loads(payload)["error"]


def test_http_json_response_is_not_compressed_by_default(servers: Servers) -> None:
    body = json.dumps({"inputs": [
        {"name": "user_id", "datatype": "INT64", "shape": [2, 1], "data": [[1], [2]]},
        {"name": "item_id", "datatype": "INT64", "shape": [2, 1], "data": [3, 4]},
    ]}).encode()
    status, headers, payload = post(
        f"http://{servers.http_url}/v2/models/ncf/infer", body, {"Accept-Encoding": "gzip, deflate, br"}
    )
    assert status == 200 and "Content-Encoding" not in headers
    assert headers["Content-Type"].startswith("application/json") and "Inference-Header-Content-Length" not in headers
    doc = json.loads(payload)
    expected = servers.reference("ncf", {"user_id": np.array([[1], [2]]), "item_id": np.array([[3], [4]])})["score"]
    assert doc["outputs"][0]["shape"] == [2, 1]
    np.testing.assert_allclose(doc["outputs"][0]["data"], expected.ravel(), rtol=1e-6)


# ---------------------------------------------------------------- HTTP (aio)


async def test_http_aio(servers: Servers) -> None:
    client = httpclient_aio.InferenceServerClient(servers.http_url)
    try:
        assert await client.is_server_live() and await client.is_model_ready("dlrm")
        assert (await client.get_model_metadata("dlrm"))["name"] == "dlrm"
        arrays = example_inputs("dlrm", 10, seed=11)
        binary, as_json = await asyncio.gather(
            client.infer("dlrm", http_inputs(arrays, True, httpclient_aio)),
            client.infer(
                "dlrm",
                http_inputs(arrays, False, httpclient_aio),
                outputs=[httpclient_aio.InferRequestedOutput("click_probability", binary_data=False)],
            ),
        )
        assert_outputs(binary, servers.reference("dlrm", arrays))
        assert_outputs(as_json, servers.reference("dlrm", arrays))
        assert "data" in as_json.get_output("click_probability")
        with pytest.raises(InferenceServerException) as info:
            await client.infer("dlrm", http_inputs(arrays, True, httpclient_aio), request_id=UNAVAILABLE_ID)
        assert info.value.status() == "503"
    finally:
        await client.close()

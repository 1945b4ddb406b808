"""HTTP queries forwarded as bytes: a real `kairosd serve` in front of a real Triton given as a
`[[fleet.endpoints]]` with its HTTP address; outputs equal ONNX Runtime's, the instance's errors come
back as the instance sent them, bad inputs are refused by kairosd before the instance sees them,
and a dead HTTP endpoint is retried like a dead gRPC one."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from kairosd.backends.process import ChildProcess, free_port, kairosd_argv, wait_ready_sync
from kairosd.modelgen import NCF_USERS, example_inputs
from tests.integration.daemon_harness import REPO, RunningDaemon, start_daemon, write_config

pytestmark = pytest.mark.triton

MODELS = ("dlrm", "ncf")
OUTPUT = {"dlrm": "click_probability", "ncf": "score"}
_sessions: dict[str, ort.InferenceSession] = {}


def reference(model: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
    if model not in _sessions:
        _sessions[model] = ort.InferenceSession(str(REPO / "model_repository" / model / "1" / "model.onnx"))
    return _sessions[model].run([OUTPUT[model]], inputs)[0]


@dataclass
class Triton:
    child: ChildProcess
    grpc_url: str
    http_url: str


@pytest.fixture(scope="module")
def triton() -> Iterator[Triton]:
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    child = ChildProcess(kairosd_argv(
        "triton", "--model-repository", str(REPO / "model_repository"), "--grpc-port", str(grpc_port),
        "--http-port", str(http_port), "--metrics-port", str(metrics_port), "--threads", "1",
    ), name="triton").start()  # fmt: skip
    try:
        wait_ready_sync(f"127.0.0.1:{grpc_port}", 120.0, child)
        yield Triton(child, f"127.0.0.1:{grpc_port}", f"127.0.0.1:{http_port}")
    finally:
        child.stop(30.0)


def _daemon(tmp: Path, grpc_address: str, http_address: str, extra_scheduler: str = "") -> RunningDaemon:
    path = tmp / "kairosd.toml"
    endpoint = f'[[fleet.endpoints]]\ntype = "triton"\naddress = "{grpc_address}"\nhttp_address = "{http_address}"\n'
    ports = write_config(path, fleet={}, endpoints_toml=endpoint, extra_scheduler=extra_scheduler)
    return start_daemon(path, ports)


@pytest.fixture(scope="module")
def daemon(triton: Triton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    d = _daemon(tmp_path_factory.mktemp("forward"), triton.grpc_url, triton.http_url)
    yield d
    assert d.stop() == 0, d.child.log_tail()


def http_inputs(inputs: dict[str, np.ndarray], binary: bool, mod: Any = httpclient) -> list[Any]:
    out = []
    for name, arr in inputs.items():
        t = mod.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        t.set_data_from_numpy(arr, binary_data=binary)
        out.append(t)
    return out


def forwarded(d: RunningDaemon) -> float:
    return d.metric_values("kairos_queries_http_forwarded_total").get("", 0.0)


def post(url: str, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(("binary_in", "binary_out"), [(True, True), (False, False), (True, False), (False, True)])
def test_sync_client_outputs_equal_onnxruntime(daemon: RunningDaemon, model: str, binary_in: bool, binary_out: bool) -> None:
    before = forwarded(daemon)
    client = httpclient.InferenceServerClient(daemon.http_url)
    try:
        for seed, batch in enumerate((1, 37)):
            inputs = example_inputs(model, batch, seed=seed)
            outputs = [httpclient.InferRequestedOutput(OUTPUT[model], binary_data=binary_out)]
            result = client.infer(model, http_inputs(inputs, binary_in), outputs=outputs, request_id=f"r{seed}")
            np.testing.assert_allclose(result.as_numpy(OUTPUT[model]), reference(model, inputs), rtol=1e-5, atol=1e-6)
            response = result.get_response()
            assert response["id"] == f"r{seed}"
            assert ("parameters" in response["outputs"][0]) == binary_out
    finally:
        client.close()
    # both went to Triton's HTTP endpoint as they were (a front-end process reports it within moments)
    deadline = time.monotonic() + 2
    while forwarded(daemon) - before < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert forwarded(daemon) - before == 2


async def test_aio_client_outputs_equal_onnxruntime(daemon: RunningDaemon) -> None:
    client = httpaio.InferenceServerClient(daemon.http_url)
    try:
        for model in MODELS:
            inputs = example_inputs(model, 64, seed=5)
            expected = reference(model, inputs)
            binary = await client.infer(model, http_inputs(inputs, True, httpaio))
            as_json = await client.infer(
                model, http_inputs(inputs, False, httpaio),
                outputs=[httpaio.InferRequestedOutput(OUTPUT[model], binary_data=False)],
            )
            np.testing.assert_allclose(binary.as_numpy(OUTPUT[model]), expected, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(as_json.as_numpy(OUTPUT[model]), expected, rtol=1e-5, atol=1e-6)
    finally:
        await client.close()


def test_compressed_response_passes_through(daemon: RunningDaemon) -> None:
    inputs = example_inputs("dlrm", 8, seed=2)
    with httpclient.InferenceServerClient(daemon.http_url) as client:
        result = client.infer(
            "dlrm", http_inputs(inputs, True), request_compression_algorithm="gzip",
            response_compression_algorithm="gzip",
        )
    np.testing.assert_allclose(result.as_numpy("click_probability"), reference("dlrm", inputs), rtol=1e-5, atol=1e-6)


def test_an_instance_error_comes_back_with_its_status_and_body(daemon: RunningDaemon, triton: Triton) -> None:
    """A user id out of range passes kairosd's checks (shape and dtype are right) and fails in the
    model: the client gets exactly what Triton answers."""
    body = json.dumps({"inputs": [
        {"name": "user_id", "datatype": "INT64", "shape": [1, 1], "data": [NCF_USERS]},
        {"name": "item_id", "datatype": "INT64", "shape": [1, 1], "data": [1]},
    ]}).encode()
    direct = post(f"http://{triton.http_url}/v2/models/ncf/infer", body)
    through = post(f"http://{daemon.http_url}/v2/models/ncf/infer", body)
    assert direct[0] >= 400 and "out of data bounds" in json.loads(direct[1])["error"]
    assert through == direct


def _triton_requests(triton: Triton, model: str) -> int:
    with httpclient.InferenceServerClient(triton.http_url) as c:
        stats = c.get_inference_statistics(model)["model_stats"][0]
    return int(stats["inference_count"]) + int(stats["inference_stats"]["fail"]["count"])


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda x: {**x, "sparse_ids": x["sparse_ids"].astype(np.int32)}, "input 'sparse_ids' of model 'dlrm': datatype INT32"),
        (lambda x: {**x, "dense_features": x["dense_features"][:, :12].copy()}, "input 'dense_features' of model 'dlrm': shape"),
        (lambda x: {"dense": x["dense_features"], "sparse_ids": x["sparse_ids"]}, "unexpected inference input 'dense'"),
    ],
    ids=["dtype", "shape", "name"],
)
def test_a_bad_input_is_refused_by_kairosd_before_the_instance(
    daemon: RunningDaemon, triton: Triton, change: Any, words: str
) -> None:
    before = _triton_requests(triton, "dlrm"), forwarded(daemon)
    client = httpclient.InferenceServerClient(daemon.http_url)
    try:
        with pytest.raises(InferenceServerException) as e:
            client.infer("dlrm", http_inputs(change(example_inputs("dlrm", 3)), True))
    finally:
        client.close()
    assert e.value.status() == "400" and words in e.value.message(), e.value.message()
    assert (_triton_requests(triton, "dlrm"), forwarded(daemon)) == before


def test_a_dead_http_endpoint_is_retried_then_answered_503(triton: Triton, tmp_path: Path) -> None:
    """The instance's gRPC side answers (so it is READY) but nothing listens on its HTTP address:
    each forward fails at connect, is retried (the instance leaves dispatch until it answers
    ServerReady), and after max_attempts the client gets 503 naming the instance."""
    dead = f"127.0.0.1:{free_port()}"
    d = _daemon(tmp_path, triton.grpc_url, dead, extra_scheduler="max_attempts = 2\ndefault_timeout_s = 10.0")
    try:
        with httpclient.InferenceServerClient(d.http_url, network_timeout=30) as client:
            with pytest.raises(InferenceServerException) as e:
                client.infer("ncf", http_inputs(example_inputs("ncf", 2), True))
        assert e.value.status() == "503" and dead in e.value.message(), e.value.message()
        assert d.metric_values("kairos_queries_retried_total")[""] == 1
    finally:
        assert d.stop() == 0, d.child.log_tail()

"""The gRPC client to an instance, against a real worker, with either transport (unary calls or one stream):
answers pass through as bytes; a query with no answer within its deadline fails DEADLINE_EXCEEDED (not
retryable) and the client stays usable."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from kairosd.backends.client import BackendClient
from kairosd.errors import BackendError
from kairosd.modelgen import example_inputs
from tests.integration.test_worker import Worker, start_worker


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    w = start_worker("--threads", "1")
    try:
        yield w
    finally:
        w.child.stop()


def request(batch: int) -> service_pb2.ModelInferRequest:
    r = service_pb2.ModelInferRequest(model_name="dlrm")
    for name, arr in example_inputs("dlrm", batch, seed=1).items():
        r.inputs.add(name=name, datatype="FP32" if arr.dtype == np.float32 else "INT64", shape=arr.shape)
        r.raw_input_contents.append(arr.tobytes())
    return r


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_deadline_then_a_normal_answer(worker: Worker, stream: bool) -> None:
    client = BackendClient(worker.url, stream=stream)
    try:
        big = request(1024)
        with pytest.raises(BackendError) as e:
            await client.infer(big, 0.0005, big.SerializeToString())
        assert e.value.status is grpc.StatusCode.DEADLINE_EXCEEDED and not e.value.retryable
        assert "DEADLINE_EXCEEDED" in str(e.value) and worker.url in str(e.value)
        raw = await client.infer(request(4), 30.0)
        response = service_pb2.ModelInferResponse.FromString(raw)
        assert response.model_name == "dlrm" and list(response.outputs[0].shape) == [4, 1]
    finally:
        await client.close()

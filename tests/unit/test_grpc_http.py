"""A gRPC infer request through an instance's HTTP endpoint: the HTTP body kairosd builds parses back
(with kairosd's own HTTP front-end parser) to the same request, and an instance's HTTP reply (as
kairosd's own renderer writes Triton's) becomes the ModelInferResponse the client would have had."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb

from kairosd.backends.grpc_http import from_http, grpc_over_http_default, to_http
from kairosd.backends.http_client import HttpReply
from kairosd.errors import BackendError
from kairosd.repository import load_repository
from kairosd.server.http_infer import header_length, parse_header, render, to_grpc
from kairosd.server.tensors import serialize_bytes

REPO = Path(__file__).resolve().parents[2]
# render and to_grpc read only the spec's name and version
SPEC = dataclasses.replace(load_repository(REPO / "model_repository", only=["ncf"])["ncf"], name="m", version="1")


def _request() -> pb.ModelInferRequest:
    r = pb.ModelInferRequest(model_name="m", model_version="1", id="q-7")
    r.parameters["priority"].int64_param = 2
    r.parameters["tag"].string_param = "x"
    a = r.inputs.add(name="a", datatype="FP32", shape=[2, 3])
    a.parameters["note"].bool_param = True
    r.inputs.add(name="s", datatype="BYTES", shape=[2, 1])
    r.raw_input_contents.extend([np.arange(6, dtype=np.float32).tobytes(), serialize_bytes([b"hi", b"there"])])
    out = r.outputs.add(name="y")
    out.parameters["classification"].int64_param = 2
    return r


def test_request_round_trips_through_the_http_body() -> None:
    req = _request()
    fwd = to_http(req)
    assert fwd.path == "/v2/models/m/versions/1/infer"
    assert fwd.headers["Content-Type"] == "application/octet-stream"
    header = parse_header(fwd.body, header_length(fwd.headers["Inference-Header-Content-Length"], len(fwd.body)))
    assert header.doc["parameters"]["binary_data_output"] is True
    assert header.binary == {"y": True}  # every output asked for as binary data
    assert [(t.name, t.datatype, t.shape, t.nbytes) for t in header.inputs] == [
        ("a", "FP32", [2, 3], 24), ("s", "BYTES", [2, 1], len(req.raw_input_contents[1]))]
    back = to_grpc(header, fwd.body, SPEC, "1")
    assert back == req
    assert fwd.to_grpc() is req


def test_unversioned_request_and_model_names_are_quoted() -> None:
    req = pb.ModelInferRequest(model_name="a b/c")
    req.inputs.add(name="x", datatype="INT64", shape=[1])
    req.raw_input_contents.append(np.int64(5).tobytes())
    assert to_http(req).path == "/v2/models/a%20b%2Fc/infer"


def _response() -> pb.ModelInferResponse:
    r = pb.ModelInferResponse(model_name="m", model_version="1", id="q-7")
    r.parameters["emulated_type"].string_param = "t3.xlarge"
    r.parameters["emulated_service_us"].int64_param = 1234
    r.parameters["ratio"].double_param = 0.5
    r.parameters["flag"].bool_param = False
    r.outputs.add(name="y", datatype="FP32", shape=[2, 1])
    r.outputs.add(name="s", datatype="BYTES", shape=[1])
    r.raw_output_contents.extend([np.array([0.25, -1.0], dtype=np.float32).tobytes(), serialize_bytes([b"ok"])])
    return r


@pytest.mark.parametrize("binary", [True, False, {"y": True, "s": False}])
def test_reply_becomes_the_grpc_response(binary: bool | dict[str, bool]) -> None:
    """Binary outputs are taken as they are, JSON `data` converted: the same response either way."""
    resp = _response()
    web = render(resp, SPEC, binary, None)
    headers = {k: v for k, v in web.headers.items() if k in ("Content-Type", "Inference-Header-Content-Length")}
    assert web.body is not None
    out = pb.ModelInferResponse.FromString(from_http(HttpReply(200, bytes(web.body), headers), "inst-1"))
    assert out == resp


def test_an_unreadable_reply_is_an_internal_error_not_retried() -> None:
    for body, headers in ((b"not json", {}), (b"[1, 2]", {}), (b'{"outputs": [{"name": "y"}]}', {}),
                          (b'{"outputs": []}', {"Inference-Header-Content-Length": "99"}),
                          (b'{"outputs": [{"name": "y", "datatype": "FP32", "shape": [1], '
                           b'"parameters": {"binary_data_size": 8}}]}', {})):
        with pytest.raises(BackendError) as e:
            from_http(HttpReply(200, body, headers), "inst-1")
        assert e.value.retryable is False and "inst-1" in str(e.value) and "unreadable" in str(e.value)


def test_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAIROSD_BACKEND_HTTP", raising=False)
    assert grpc_over_http_default()
    for off in ("0", "false", "No "):
        monkeypatch.setenv("KAIROSD_BACKEND_HTTP", off)
        assert not grpc_over_http_default()

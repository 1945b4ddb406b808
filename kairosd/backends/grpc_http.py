"""A gRPC infer request sent over an instance's HTTP/REST endpoint, and the reply as a ModelInferResponse.

Both ends speak KServe v2; the hop from kairosd to an instance is kairosd's choice. A keep-alive
HTTP/1.1 POST through `http_wire` costs the head a fraction of a grpc.aio call's CPU, so a gRPC
client's query goes to an instance that has an HTTP endpoint as Triton's binary-tensor body: a JSON
header (inputs with `binary_data_size`, every output asked for as binary data, the request's id and
parameters), then the raw input tensors as the validated request holds them. The reply's JSON header
and binary outputs become the ModelInferResponse the client would have had from the instance over
gRPC: model name and version, id, parameters, and each output's name, datatype, shape, parameters and
raw contents (an output the instance sent as JSON `data` is converted). `KAIROSD_BACKEND_HTTP=0` in
the environment keeps gRPC queries on gRPC.
"""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import quote

import grpc
import rapidjson
from tritonclient.grpc import service_pb2 as pb

from kairosd.backends.http_client import HttpBackendClient, HttpForward, HttpReply
from kairosd.config import env_switch
from kairosd.errors import BackendError, InvalidInput
from kairosd.server.http_infer import HEADER_LENGTH, header_length, param_value, set_param
from kairosd.server.tensors import json_to_raw

HTTP_ENV = "KAIROSD_BACKEND_HTTP"


def grpc_over_http_default() -> bool:
    """Whether a gRPC query goes to an instance's HTTP endpoint when it has one (the default), not when
    KAIROSD_BACKEND_HTTP is 0/false/no."""
    return env_switch(HTTP_ENV)


def _params(params: Any) -> dict[str, Any]:
    if not params:  # most tensors and requests carry none: skip the map's iteration
        return {}
    return {k: v for k, p in params.items() if (v := param_value(p)) is not None}


@functools.lru_cache(maxsize=1024)
def _infer_path(model: str, version: str) -> str:
    name = quote(model, safe="")
    return f"/v2/models/{name}/versions/{quote(version, safe='')}/infer" if version else f"/v2/models/{name}/infer"


def to_http(request: pb.ModelInferRequest) -> HttpForward:
    """The request as an HTTP binary-tensor body for `/v2/models/<m>[/versions/<v>]/infer`. The request
    was validated: every input's data is in `raw_input_contents`, in input order."""
    raws = list(request.raw_input_contents)  # one bytes object per tensor, used twice below
    inputs = []
    for i, t in enumerate(request.inputs):
        params = _params(t.parameters)
        params["binary_data_size"] = len(raws[i])
        inputs.append({"name": t.name, "datatype": t.datatype, "shape": list(t.shape), "parameters": params})
    params = _params(request.parameters)
    params["binary_data_output"] = True
    doc: dict[str, Any] = {"inputs": inputs, "parameters": params}
    if request.id:
        doc["id"] = request.id
    if request.outputs:
        doc["outputs"] = [{"name": o.name, "parameters": {**_params(o.parameters), "binary_data": True}}
                          for o in request.outputs]
    header = rapidjson.dumps(doc).encode()
    path = _infer_path(request.model_name, request.model_version)
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header)),
               "Accept-Encoding": "identity"}
    return HttpForward(path, b"".join([header, *raws]), headers, lambda: request)


async def infer_over_http(client: HttpBackendClient, request: pb.ModelInferRequest, timeout_s: float) -> bytes:
    """Send one validated gRPC query to the instance's HTTP endpoint; the serialized ModelInferResponse.
    Raises BackendError as `HttpBackendClient.infer` does (an error status: InstanceHttpError)."""
    return from_http(await client.infer(to_http(request), timeout_s), client.address)


def from_http(reply: HttpReply, instance: str) -> bytes:
    """The instance's 200 reply as a serialized ModelInferResponse. Raises BackendError (INTERNAL, not
    retried) when the reply is not a KServe v2 infer response."""
    try:
        return _response(reply).SerializeToString()
    except (InvalidInput, ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
        raise BackendError(f"instance {instance}: unreadable HTTP infer reply: {e}", status=grpc.StatusCode.INTERNAL,
                           retryable=False, instance=instance) from None


def _response(reply: HttpReply) -> pb.ModelInferResponse:
    body = reply.body
    end = header_length(reply.headers.get(HEADER_LENGTH), len(body))
    doc = rapidjson.loads(body[:end])
    out = pb.ModelInferResponse(model_name=str(doc.get("model_name", "")), model_version=str(doc.get("model_version", "")))
    if doc.get("id"):
        out.id = str(doc["id"])
    for key, value in (doc.get("parameters") or {}).items():
        set_param(out.parameters[key], value)
    offset = end
    raws: list[bytes] = []
    for item in doc.get("outputs") or ():
        name, datatype, shape = item["name"], item["datatype"], item["shape"]
        tensor = out.outputs.add(name=name, datatype=datatype, shape=shape)
        params = item.get("parameters") or {}
        for key, value in params.items():
            if key != "binary_data_size":
                set_param(tensor.parameters[key], value)
        size = params.get("binary_data_size")
        if size is not None:
            if type(size) is not int or not 0 <= size <= len(body) - offset:
                raise ValueError(f"output {name!r}: binary_data_size {size} exceeds the reply")
            raws.append(body[offset:offset + size])
            offset += size
        else:
            raws.append(json_to_raw(item["data"], datatype, shape, name))
    out.raw_output_contents.extend(raws)
    return out

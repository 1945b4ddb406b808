"""An HTTP/REST infer request: its JSON header parsed (never its binary tensors), converted to a
`ModelInferRequest` only for an instance without HTTP, and a `ModelInferResponse` rendered back to
Triton's JSON (+ binary tensors) for the client. The body layout is Triton's binary-tensor extension:
a JSON header of `Inference-Header-Content-Length` bytes, then each binary tensor in input order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import rapidjson
from aiohttp import web
from tritonclient.grpc import service_pb2 as pb

from kairosd.errors import InvalidInput
from kairosd.repository import ModelSpec
from kairosd.server.tensors import contents_to_raw, json_to_raw, raw_to_json

HEADER_LENGTH = "Inference-Header-Content-Length"
_JSON = "application/json"
_OCTET = "application/octet-stream"


@dataclass(slots=True)
class InputHeader:
    """One input as the JSON header describes it. Its data is `nbytes` at `offset` in the body
    (binary), or `raw`: its JSON `data`, converted (the slow, rarely used path)."""

    name: str
    datatype: str
    shape: list[int]
    nbytes: int
    offset: int
    raw: bytes | None
    parameters: dict[str, Any]


@dataclass(slots=True)
class InferHeader:
    doc: dict[str, Any]  # the JSON header as parsed
    inputs: list[InputHeader]
    outputs: list[str]  # the outputs the request names (empty: all)
    binary: dict[str, bool] | bool  # which outputs the client wants as binary data (a map when it names them)
    timeout_s: float | None  # the request's `timeout` parameter (Triton's is in µs), if any


def loads(data: bytes) -> Any:
    try:
        return rapidjson.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidInput(f"malformed JSON in request body: {e}") from None


def header_length(value: str | None, body_len: int) -> int:
    """The JSON header's length from `Inference-Header-Content-Length` (the whole body when absent)."""
    if value is None:
        return body_len
    try:
        n = int(value)
    except ValueError:
        raise InvalidInput(f"{HEADER_LENGTH} must be an integer, got {value!r}") from None
    if not 0 < n <= body_len:
        raise InvalidInput(f"{HEADER_LENGTH} is {n} but the body has {body_len} bytes")
    return n


def parse_header(body: bytes, header: int) -> InferHeader:
    """Parse and check the structure of the JSON header; binary tensors are located, not read.
    Raises InvalidInput naming the offending input."""
    doc = loads(body[:header] if header != len(body) else body)
    if not isinstance(doc, dict):
        raise InvalidInput("inference request must be a JSON object")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput("request 'parameters' must be a JSON object")
    default_binary = bool(params.get("binary_data_output", False))
    timeout_s: float | None = None
    for key, value in params.items():
        _check_param(value, f"request parameter '{key}'")
        if key == "timeout" and isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            timeout_s = value / 1e6  # Triton's request timeout is in microseconds

    items = doc.get("inputs")
    if not isinstance(items, list):
        raise InvalidInput("inference request needs an 'inputs' list")
    offset, end = header, len(body)
    inputs: list[InputHeader] = []
    for item in items:
        if not isinstance(item, dict):
            raise InvalidInput("each entry of 'inputs' must be a JSON object")
        name = item.get("name")
        datatype = item.get("datatype")
        shape = item.get("shape")
        if not isinstance(name, str):
            raise InvalidInput("an input has no 'name'")
        if not isinstance(datatype, str):
            raise InvalidInput(f"input '{name}': missing 'datatype'")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise InvalidInput(f"input '{name}': 'shape' must be a list of non-negative integers")
        iparams = item.get("parameters") or {}
        if not isinstance(iparams, dict):
            raise InvalidInput(f"input '{name}': 'parameters' must be a JSON object")
        for key, value in iparams.items():
            if key.startswith("shared_memory"):
                raise InvalidInput(f"input '{name}': shared-memory tensors are not supported by kairosd")
            _check_param(value, f"input '{name}' parameter '{key}'")
        size = iparams.get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0:
                raise InvalidInput(f"input '{name}': binary_data_size must be a non-negative integer")
            if offset + size > end:
                raise InvalidInput(
                    f"input '{name}': binary_data_size {size} exceeds the {end - offset} bytes left in the body"
                )
            inputs.append(InputHeader(name, datatype, shape, size, offset, None, iparams))
            offset += size
        elif "data" in item:
            raw = json_to_raw(item["data"], datatype, shape, name)
            inputs.append(InputHeader(name, datatype, shape, len(raw), -1, raw, iparams))
        else:
            raise InvalidInput(f"input '{name}': no 'data' and no parameters.binary_data_size")
    if offset != end:
        raise InvalidInput(
            f"{end - offset} bytes of binary data in the body are not claimed by any input's binary_data_size"
        )

    binary: dict[str, bool] | bool = default_binary
    names: list[str] = []
    outputs = doc.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list):
            raise InvalidInput("request 'outputs' must be a list")
        binary = {}
        for item in outputs:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise InvalidInput("each entry of 'outputs' must be an object with a 'name'")
            oname = item["name"]
            oparams = item.get("parameters") or {}
            if not isinstance(oparams, dict):
                raise InvalidInput(f"output '{oname}': 'parameters' must be a JSON object")
            for key, value in oparams.items():
                if key.startswith("shared_memory"):
                    raise InvalidInput(f"output '{oname}': shared-memory tensors are not supported by kairosd")
                _check_param(value, f"output '{oname}' parameter '{key}'")
            binary[oname] = bool(oparams.get("binary_data", default_binary))
            names.append(oname)
    return InferHeader(doc, inputs, names, binary, timeout_s)


def _check_param(value: Any, what: str) -> None:
    if not isinstance(value, (bool, int, float, str)):
        raise InvalidInput(f"{what} must be a boolean, number or string")


def _set_param(param: pb.InferParameter, value: Any) -> None:
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    else:
        param.string_param = value


def to_grpc(header: InferHeader, body: bytes, spec: ModelSpec, version: str) -> pb.ModelInferRequest:
    """The same request as a ModelInferRequest with raw inputs (for an instance that speaks only gRPC).
    The header was parsed and validated before: this cannot fail."""
    doc = header.doc
    out = pb.ModelInferRequest(model_name=spec.name, model_version=version)
    rid = doc.get("id")
    if rid is not None:
        out.id = str(rid)
    for key, value in (doc.get("parameters") or {}).items():
        if key != "binary_data_output":
            _set_param(out.parameters[key], value)
    view = memoryview(body)
    raws: list[bytes] = []
    for t in header.inputs:
        tensor = out.inputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        for key, value in t.parameters.items():
            if key != "binary_data_size":
                _set_param(tensor.parameters[key], value)
        raws.append(t.raw if t.raw is not None else bytes(view[t.offset:t.offset + t.nbytes]))
    out.raw_input_contents.extend(raws)
    for item in doc.get("outputs") or ():
        requested = out.outputs.add(name=item["name"])
        for key, value in (item.get("parameters") or {}).items():
            if key != "binary_data":
                _set_param(requested.parameters[key], value)
    return out


def render(
    response: pb.ModelInferResponse, spec: ModelSpec, binary: dict[str, bool] | bool, coding: str | None
) -> web.Response:
    """ModelInferResponse → Triton's JSON (+ binary tensors after a header of Inference-Header-Content-Length)."""
    raws = response.raw_output_contents
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for i, t in enumerate(response.outputs):
        raw = raws[i] if i < len(raws) else contents_to_raw(t.contents, t.datatype, t.shape, t.name)
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        as_binary = binary if isinstance(binary, bool) else binary.get(t.name, False)
        if as_binary:
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = raw_to_json(raw, t.datatype, t.name)
        outputs.append(entry)
    doc: dict[str, Any] = {
        "model_name": response.model_name or spec.name,
        "model_version": response.model_version or spec.version,
        "outputs": outputs,
    }
    if response.id:
        doc["id"] = response.id
    header = rapidjson.dumps(doc).encode()
    if blobs:
        body = b"".join([header, *blobs])
        resp = web.Response(body=body, content_type=_OCTET, headers={HEADER_LENGTH: str(len(header))})
    else:
        resp = web.Response(body=header, content_type=_JSON)
    if coding is not None:
        resp.enable_compression(web.ContentCoding(coding))
    return resp

"""An HTTP/REST infer request: its JSON header parsed (never its binary tensors), converted to a
`ModelInferRequest` only for an instance without HTTP, and a `ModelInferResponse` rendered back to
Triton's JSON (+ binary tensors) for the client. The body layout is Triton's binary-tensor extension:
a JSON header of `Inference-Header-Content-Length` bytes, then each binary tensor in input order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import rapidjson
from aiohttp import web
from tritonclient.grpc import service_pb2 as pb

from kairosd.backends.http_client import HttpForward
from kairosd.errors import InvalidInput
from kairosd.repository import ModelSpec
from kairosd.server.http_head import HEADER_LENGTH
from kairosd.server.tensors import contents_to_raw, count_bytes, element_count, json_to_raw, raw_to_json
from kairosd.server.validate import shorten

_JSON = "application/json"
_OCTET = "application/octet-stream"
# Parameters travel on to gRPC-only instances as InferParameter, whose integers are int64.
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


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
    elements: int | None = None  # BYTES: the elements its data holds (length prefixes counted); else None


@dataclass(slots=True)
class InferHeader:
    doc: dict[str, Any]  # the JSON header as parsed
    inputs: list[InputHeader]
    outputs: list[str]  # the outputs the request names (empty: all)
    binary: dict[str, bool] | bool  # which outputs the client wants as binary data (a map when it names them)
    timeout_s: float | None  # the request's `timeout` parameter (Triton's is in µs), if any


def loads(data: bytes) -> Any:
    """The JSON document in `data`; InvalidInput when it is not UTF-8 JSON or nests deeper than the
    parser allows (python-rapidjson stops at ~1,000 levels with RecursionError)."""
    try:
        return rapidjson.loads(data)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidInput(f"malformed JSON in request body: {e}") from None


def header_length(value: str | None, body_len: int) -> int:
    """The JSON header's length from `Inference-Header-Content-Length` (the whole body when absent)."""
    if value is None:
        return body_len
    digits = value.strip()
    # ASCII digits only: int() would also take "+5", "1_0" and non-ASCII digits
    if not (digits.isascii() and digits.isdigit()):
        raise InvalidInput(f"{HEADER_LENGTH} must be a decimal integer of bytes, got {shorten(repr(value))}")
    n = int(digits) if len(digits) <= 20 else body_len + 1
    if not 0 < n <= body_len:
        raise InvalidInput(
            f"{HEADER_LENGTH} is {shorten(digits)} but the body has {body_len} bytes; "
            "it must be the JSON header's length, between 1 and the body's length"
        )
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
        _check_param(value, f"request parameter '{shorten(key)}'")
        if key == "timeout" and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise InvalidInput(f"request parameter 'timeout' is {value}; give a finite number of microseconds")
            if value > 0:
                timeout_s = value / 1e6  # Triton's request timeout is in microseconds
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise InvalidInput(f"request 'id' must be a string, got {type(rid).__name__}")

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
            raise InvalidInput("each input needs a string 'name'")
        what = f"input '{shorten(name)}'"
        if not isinstance(datatype, str):
            raise InvalidInput(f"{what}: missing 'datatype'")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise InvalidInput(f"{what}: 'shape' must be a list of non-negative integers")
        iparams = item.get("parameters") or {}
        if not isinstance(iparams, dict):
            raise InvalidInput(f"{what}: 'parameters' must be a JSON object")
        for key, value in iparams.items():
            if key.startswith("shared_memory"):
                raise InvalidInput(f"{what}: shared-memory tensors are not supported by kairosd")
            _check_param(value, f"{what} parameter '{shorten(key)}'")
        size = iparams.get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0:
                raise InvalidInput(f"{what}: binary_data_size must be a non-negative integer")
            if offset + size > end:
                raise InvalidInput(
                    f"{what}: binary_data_size {shorten(size)} exceeds the {end - offset} bytes left in the body"
                )
            elements = count_bytes(memoryview(body)[offset:offset + size], what) if datatype == "BYTES" else None
            inputs.append(InputHeader(name, datatype, shape, size, offset, None, iparams, elements))
            offset += size
        elif "data" in item:
            raw = json_to_raw(item["data"], datatype, shape, shorten(name))
            elements = element_count(shape) if datatype == "BYTES" else None  # json_to_raw checked the count
            inputs.append(InputHeader(name, datatype, shape, len(raw), -1, raw, iparams, elements))
        else:
            raise InvalidInput(f"{what}: no 'data' and no parameters.binary_data_size")
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
            owhat = f"output '{shorten(oname)}'"
            if not isinstance(oparams, dict):
                raise InvalidInput(f"{owhat}: 'parameters' must be a JSON object")
            for key, value in oparams.items():
                if key.startswith("shared_memory"):
                    raise InvalidInput(f"{owhat}: shared-memory tensors are not supported by kairosd")
                _check_param(value, f"{owhat} parameter '{shorten(key)}'")
            binary[oname] = bool(oparams.get("binary_data", default_binary))
            names.append(oname)
    return InferHeader(doc, inputs, names, binary, timeout_s)


def _check_param(value: Any, what: str) -> None:
    if not isinstance(value, (bool, int, float, str)):
        raise InvalidInput(f"{what} must be a boolean, number or string")
    if type(value) is int and not _INT64_MIN <= value <= _INT64_MAX:
        raise InvalidInput(f"{what} is {shorten(value)}: integer parameters must fit in int64")


def set_param(param: pb.InferParameter, value: Any) -> None:
    """A JSON parameter value into an InferParameter: bool, int64 (uint64 above the int64 range), double
    or string. TypeError for any other value."""
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        if value <= _INT64_MAX:
            param.int64_param = value
        else:
            param.uint64_param = value
    elif isinstance(value, float):
        param.double_param = value
    else:
        param.string_param = value


def param_value(param: pb.InferParameter) -> Any:
    """An InferParameter's value as JSON (None when unset)."""
    kind = param.WhichOneof("parameter_choice")
    return None if kind is None else getattr(param, kind)


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
            set_param(out.parameters[key], value)
    view = memoryview(body)
    raws: list[bytes] = []
    for t in header.inputs:
        tensor = out.inputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        for key, value in t.parameters.items():
            if key != "binary_data_size":
                set_param(tensor.parameters[key], value)
        raws.append(t.raw if t.raw is not None else bytes(view[t.offset:t.offset + t.nbytes]))
    out.raw_input_contents.extend(raws)
    for item in doc.get("outputs") or ():
        requested = out.outputs.add(name=item["name"])
        for key, value in (item.get("parameters") or {}).items():
            if key != "binary_data":
                set_param(requested.parameters[key], value)
    return out


def render_body(
    response: pb.ModelInferResponse, spec: ModelSpec, binary: dict[str, bool] | bool
) -> tuple[bytes, int | None]:
    """ModelInferResponse → Triton's JSON body, and the JSON header's length when binary tensors follow
    it (the `Inference-Header-Content-Length`; None for a JSON-only body)."""
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
    if response.parameters:  # as Triton renders them: {"name": value}
        doc["parameters"] = {k: param_value(v) for k, v in response.parameters.items()}
    header = rapidjson.dumps(doc).encode()
    if blobs:
        return b"".join([header, *blobs]), len(header)
    return header, None


def render(
    response: pb.ModelInferResponse, spec: ModelSpec, binary: dict[str, bool] | bool, coding: str | None
) -> web.Response:
    """ModelInferResponse → Triton's JSON (+ binary tensors after a header of Inference-Header-Content-Length)."""
    body, header_len = render_body(response, spec, binary)
    if header_len is not None:
        resp = web.Response(body=body, content_type=_OCTET, headers={HEADER_LENGTH: str(header_len)})
    else:
        resp = web.Response(body=body, content_type=_JSON)
    if coding is not None:
        resp.enable_compression(web.ContentCoding(coding))
    return resp


def http_forward(spec: ModelSpec, version: str, header: InferHeader, body: bytes,
                 request_header: Callable[[str], str | None], coding: str | None) -> HttpForward:
    """A validated infer call as it goes on to an instance: the body as received with its `Content-Type`
    and `Inference-Header-Content-Length` (`request_header(name)`: the client's value or None), the answer
    asked for as identity unless the client asked for `coding`; converted to a `ModelInferRequest`
    (`to_grpc`) only when an instance without HTTP is chosen."""
    headers = {"Accept-Encoding": coding or "identity"}
    for name in ("Content-Type", HEADER_LENGTH):
        value = request_header(name)
        if value is not None:
            headers[name] = value
    path = f"/v2/models/{spec.name}/versions/{version}/infer" if version else f"/v2/models/{spec.name}/infer"
    return HttpForward(path, body, headers, partial(to_grpc, header, body, spec, version))

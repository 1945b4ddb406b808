"""KServe v2 REST front end (aiohttp) with Triton's binary-tensor extension, as tritonclient.http speaks it."""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

import rapidjson
from aiohttp import hdrs, web
from tritonclient.grpc import service_pb2 as pb

import kairosd
from kairosd.errors import InvalidInput, KairosError, RequestTooLarge
from kairosd.server.grpc_frontend import EXTENSIONS, SERVER_NAME
from kairosd.server.tensors import contents_to_raw, json_to_raw, raw_to_json
from kairosd.server.validate import resolve_model, validate_request
from kairosd.service import InferenceService

log = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
_SERVICE_KEY = web.AppKey("kairosd_service", InferenceService)
_MAX_BODY_KEY = web.AppKey("kairosd_max_body_bytes", int)
_JSON = "application/json"
_OCTET = "application/octet-stream"
_EMPTY = b""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=rapidjson.dumps(obj).encode(), status=status, content_type=_JSON)


def _error(status: int, message: str) -> web.Response:
    return _json_response({"error": message}, status)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes Triton's `{"error": "..."}` body with the error's HTTP status."""
    try:
        return await handler(request)
    except KairosError as e:
        return _error(e.http_status, str(e))
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[_MAX_BODY_KEY]
        return _error(413, f"request body exceeds the limit of {limit} bytes (kairosd max_body_bytes)")
    except web.HTTPException as e:
        if e.status >= 400:
            return _error(e.status, e.reason if not e.text or e.text.startswith(f"{e.status}:") else e.text)
        raise
    except Exception as e:
        log.exception("HTTP %s %s failed", request.method, request.path)
        return _error(500, f"kairosd internal error: {type(e).__name__}: {e}")


def _service(request: web.Request) -> InferenceService:
    return request.app[_SERVICE_KEY]


def _status_only(ok: bool) -> web.Response:
    # Triton answers health/readiness with an empty body: 200 when true, 400 when false.
    return web.Response(status=200 if ok else 400)


async def _live(request: web.Request) -> web.Response:
    return _status_only(_service(request).is_live())


async def _ready(request: web.Request) -> web.Response:
    return _status_only(_service(request).is_ready())


async def _server_metadata(request: web.Request) -> web.Response:
    return _json_response({"name": SERVER_NAME, "version": kairosd.__version__, "extensions": list(EXTENSIONS)})


def _spec(request: web.Request) -> Any:
    info = request.match_info
    return resolve_model(_service(request).repository, info["model"], info.get("version", ""))


async def _model_ready(request: web.Request) -> web.Response:
    service = _service(request)
    info = request.match_info
    spec = service.repository.get(info["model"])
    version = info.get("version", "")
    return _status_only(spec is not None and version in ("", spec.version) and service.model_ready(spec.name))


async def _model_metadata(request: web.Request) -> web.Response:
    return _json_response(_spec(request).metadata_json())


async def _model_config(request: web.Request) -> web.Response:
    return _json_response(_spec(request).config_json())


async def _repository_index(request: web.Request) -> web.Response:
    body = await _read_body(request)
    ready_only = False
    if body.strip():
        params = _loads(body)
        if not isinstance(params, dict):
            raise InvalidInput("repository index request must be a JSON object")
        ready_only = bool(params.get("ready", False))
    service = _service(request)
    index = []
    for name, spec in sorted(service.repository.items()):
        ready = service.model_ready(name)
        if ready_only and not ready:
            continue
        entry = {"name": name, "version": spec.version, "state": "READY" if ready else "UNAVAILABLE"}
        if not ready:
            entry["reason"] = "no ready instance serves this model"
        index.append(entry)
    return _json_response(index)


async def _infer(request: web.Request) -> web.Response:
    spec = _spec(request)
    body = await _read_body(request)
    header = _header_length(request, len(body))
    infer_request, binary_outputs, timeout_s = _parse_infer(body, header, spec, request.match_info.get("version", ""))
    batch = validate_request(infer_request, spec)
    raw = await _service(request).infer(infer_request, spec, batch, timeout_s)
    response = pb.ModelInferResponse.FromString(raw)
    return _render(response, spec, binary_outputs, _response_coding(request))


async def _not_found(request: web.Request) -> web.Response:
    return _error(404, f"kairosd has no endpoint {request.method} {request.path}")


async def _read_body(request: web.Request) -> bytes:
    limit = request.app[_MAX_BODY_KEY]
    if request.content_length is not None and request.content_length > limit:
        raise RequestTooLarge(
            f"request body of {request.content_length} bytes exceeds the limit of {limit} bytes "
            "(kairosd max_body_bytes)"
        )
    return await request.read()


def _header_length(request: web.Request, body_len: int) -> int:
    value = request.headers.get(HEADER_LENGTH)
    if value is None:
        return body_len
    try:
        n = int(value)
    except ValueError:
        raise InvalidInput(f"{HEADER_LENGTH} must be an integer, got {value!r}") from None
    if not 0 < n <= body_len:
        raise InvalidInput(f"{HEADER_LENGTH} is {n} but the body has {body_len} bytes")
    return n


def _loads(data: bytes) -> Any:
    try:
        return rapidjson.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidInput(f"malformed JSON in request body: {e}") from None


def _parse_infer(
    body: bytes, header: int, spec: Any, version: str
) -> tuple[pb.ModelInferRequest, dict[str, bool] | bool, float | None]:
    """JSON header (+ binary tensors) → (ModelInferRequest with raw inputs, which outputs go binary, timeout_s).

    The second item is a per-output map when the request names its outputs, else one flag for all.
    """
    doc = _loads(body[:header] if header != len(body) else body)
    if not isinstance(doc, dict):
        raise InvalidInput("inference request must be a JSON object")
    out = pb.ModelInferRequest(model_name=spec.name, model_version=version)
    rid = doc.get("id")
    if rid is not None:
        out.id = str(rid)
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput("request 'parameters' must be a JSON object")
    default_binary = bool(params.get("binary_data_output", False))
    timeout_s: float | None = None
    for key, value in params.items():
        if key == "binary_data_output":
            continue
        if key == "timeout" and isinstance(value, (int, float)) and value > 0:
            timeout_s = value / 1e6  # Triton's request timeout is in microseconds
        _set_param(out.parameters[key], value, f"request parameter '{key}'")

    inputs = doc.get("inputs")
    if not isinstance(inputs, list):
        raise InvalidInput("inference request needs an 'inputs' list")
    view = memoryview(body)
    offset, end = header, len(body)
    raws: list[bytes] = []
    for item in inputs:
        if not isinstance(item, dict):
            raise InvalidInput("each entry of 'inputs' must be a JSON object")
        name = item.get("name")
        datatype = item.get("datatype")
        shape = item.get("shape")
        if not isinstance(name, str):
            raise InvalidInput("an input has no 'name'")
        if not isinstance(datatype, str):
            raise InvalidInput(f"input '{name}': missing 'datatype'")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise InvalidInput(f"input '{name}': 'shape' must be a list of non-negative integers")
        tensor = out.inputs.add(name=name, datatype=datatype, shape=shape)
        iparams = item.get("parameters") or {}
        size = iparams.get("binary_data_size") if isinstance(iparams, dict) else None
        if size is not None:
            if not isinstance(size, int) or size < 0:
                raise InvalidInput(f"input '{name}': binary_data_size must be a non-negative integer")
            if offset + size > end:
                raise InvalidInput(
                    f"input '{name}': binary_data_size {size} exceeds the {end - offset} bytes left in the body"
                )
            raws.append(bytes(view[offset:offset + size]))
            offset += size
        elif "data" in item:
            raws.append(json_to_raw(item["data"], datatype, shape, name))
        else:
            raise InvalidInput(f"input '{name}': no 'data' and no parameters.binary_data_size")
        for key, value in iparams.items():
            if key.startswith("shared_memory"):
                raise InvalidInput(f"input '{name}': shared-memory tensors are not supported by kairosd")
            if key != "binary_data_size":
                _set_param(tensor.parameters[key], value, f"input '{name}' parameter '{key}'")
    if offset != end:
        raise InvalidInput(
            f"{end - offset} bytes of binary data in the body are not claimed by any input's binary_data_size"
        )
    out.raw_input_contents.extend(raws)

    binary: dict[str, bool] | bool = default_binary
    outputs = doc.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list):
            raise InvalidInput("request 'outputs' must be a list")
        binary = {}
        for item in outputs:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise InvalidInput("each entry of 'outputs' must be an object with a 'name'")
            oname = item["name"]
            requested = out.outputs.add(name=oname)
            oparams = item.get("parameters") or {}
            binary[oname] = bool(oparams.get("binary_data", default_binary))
            for key, value in oparams.items():
                if key.startswith("shared_memory"):
                    raise InvalidInput(f"output '{oname}': shared-memory tensors are not supported by kairosd")
                if key != "binary_data":
                    _set_param(requested.parameters[key], value, f"output '{oname}' parameter '{key}'")
    return out, binary, timeout_s


def _set_param(param: pb.InferParameter, value: Any, what: str) -> None:
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    elif isinstance(value, str):
        param.string_param = value
    else:
        raise InvalidInput(f"{what} must be a boolean, number or string")


def _render(
    response: pb.ModelInferResponse, spec: Any, binary: dict[str, bool] | bool, coding: str | None
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


def _response_coding(request: web.Request) -> str | None:
    """Compress only on an explicit request for ONE coding (tritonclient's `response_compression_algorithm`
    sends exactly `gzip` or `deflate`); the generic lists HTTP libraries add by default are ignored."""
    accept = request.headers.get(hdrs.ACCEPT_ENCODING)
    if accept is None:
        return None
    accept = accept.strip().lower()
    return accept if accept in ("gzip", "deflate") else None


def build_http_app(service: InferenceService, max_body_bytes: int) -> web.Application:
    """The KServe v2 REST application; bodies over `max_body_bytes` get 413."""
    app = web.Application(client_max_size=max_body_bytes, middlewares=[_errors])
    app[_SERVICE_KEY] = service
    app[_MAX_BODY_KEY] = max_body_bytes
    r = app.router
    r.add_get("/v2/health/live", _live, allow_head=False)
    r.add_get("/v2/health/ready", _ready, allow_head=False)
    r.add_get("/v2", _server_metadata, allow_head=False)
    r.add_post("/v2/repository/index", _repository_index)
    for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        r.add_get(base, _model_metadata, allow_head=False)
        r.add_get(base + "/ready", _model_ready, allow_head=False)
        r.add_get(base + "/config", _model_config, allow_head=False)
        r.add_post(base + "/infer", _infer)
    r.add_route("*", "/{tail:.*}", _not_found)
    return app


async def start_http_server(service: InferenceService, host: str, port: int, max_body_bytes: int) -> web.AppRunner:
    """Bind and start the REST front end; `runner.addresses` tells the bound port (useful with port 0)."""
    runner = web.AppRunner(build_http_app(service, max_body_bytes), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=False)
    await site.start()
    log.info("HTTP front end listening on %s:%s", host, port)
    return runner

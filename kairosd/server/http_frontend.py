"""KServe v2 REST front end (aiohttp) with Triton's binary-tensor extension, as tritonclient.http speaks it."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import rapidjson
from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware
from aiohttp.web_protocol import RequestPayloadError
from tritonclient.grpc import service_pb2 as pb

import kairosd
from kairosd.backends.http_client import HttpReply, InstanceHttpError
from kairosd.errors import InvalidInput, KairosError, Overloaded, RequestTooLarge, Unauthenticated
from kairosd.server.access import WWW_AUTHENTICATE, Authenticator
from kairosd.server.grpc_frontend import EXTENSIONS, SERVER_NAME
from kairosd.server.http_head import retry_after
from kairosd.server.http_infer import HEADER_LENGTH, header_length, http_forward, loads, parse_header, render
from kairosd.server.http_lean import LeanSettings, lean_http_default
from kairosd.server.http_limits import ConnectionGate, GuardedSite, HttpLimits, guarded_protocol
from kairosd.server.validate import resolve_model, validate_header
from kairosd.service import InferenceService

log = logging.getLogger(__name__)

_SERVICE_KEY = web.AppKey("kairosd_service", InferenceService)
_MAX_BODY_KEY = web.AppKey("kairosd_max_body_bytes", int)
_METADATA_KEY = web.AppKey("kairosd_server_metadata", bytes)
_AUTH_KEY = web.AppKey("kairosd_authenticator", Authenticator)
_BODY_TIMEOUT_KEY = web.AppKey("kairosd_body_timeout_s", float)
_JSON = "application/json"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=rapidjson.dumps(obj).encode(), status=status, content_type=_JSON)


def _error(status: int, message: str) -> web.Response:
    return _json_response({"error": message}, status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes Triton's `{"error": "..."}` body with the error's HTTP status."""
    try:
        return await handler(request)
    except KairosError as e:
        response = _error(e.http_status, str(e))
        if isinstance(e, Unauthenticated):
            response.headers[hdrs.WWW_AUTHENTICATE] = WWW_AUTHENTICATE
        elif isinstance(e, Overloaded):
            response.headers[hdrs.RETRY_AFTER] = str(retry_after(e.retry_after_s))
        return response
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


@web.middleware
async def _connection(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tells the connection's guard (`http_limits`) that a request's headers are complete."""
    guard = guarded_protocol(request)
    if guard is None:
        return await handler(request)
    guard.request_started()
    try:
        return await handler(request)
    finally:
        guard.request_ended()


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer-token check (`kairosd.server.access`); the health endpoints are open unless auth_health."""
    health = request.match_info.handler in _HEALTH_HANDLERS
    request.app[_AUTH_KEY].check(request.headers.get(hdrs.AUTHORIZATION), health, "http")
    return await handler(request)


def _service(request: web.Request) -> InferenceService:
    return request.app[_SERVICE_KEY]


def _health(key: str, ok: bool, **extra: str) -> web.Response:
    # as KServe's own servers answer: a JSON body (`{"live": true}`, `{"ready": false}`, ...) with 200
    # when true, 503 when false (Triton's empty body breaks the clients that read it)
    return _json_response({**extra, key: ok}, 200 if ok else 503)


async def _live(request: web.Request) -> web.Response:
    return _health("live", _service(request).is_live())


async def _ready(request: web.Request) -> web.Response:
    return _health("ready", _service(request).is_ready())


async def _server_metadata(request: web.Request) -> web.Response:
    return web.Response(body=request.app[_METADATA_KEY], content_type=_JSON)


def _spec(request: web.Request) -> Any:
    info = request.match_info
    return resolve_model(_service(request).repository, info["model"], info.get("version", ""))


async def _model_ready(request: web.Request) -> web.Response:
    service = _service(request)
    info = request.match_info
    spec = service.repository.get(info["model"])
    version = info.get("version", "")
    ok = spec is not None and version in ("", spec.version) and service.model_ready(spec.name)
    return _health("ready", ok, name=info["model"])


async def _model_metadata(request: web.Request) -> web.Response:
    return _json_response(_spec(request).metadata_json())


async def _model_config(request: web.Request) -> web.Response:
    return _json_response(_spec(request).config_json())


async def _repository_index(request: web.Request) -> web.Response:
    body = await _read_body(request)
    ready_only = False
    if body.strip():
        params = loads(body)
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
    """Validate the JSON header, then forward the body as it is (to an instance with HTTP) or converted
    (to one with gRPC only); an instance's HTTP reply goes back as it is."""
    spec = _spec(request)
    body = await _read_body(request)
    headers = request.headers
    header = parse_header(body, header_length(headers.get(HEADER_LENGTH), len(body)))
    batch = validate_header(header.inputs, header.outputs, spec)
    coding = _response_coding(request)
    forward = http_forward(spec, request.match_info.get("version", ""), header, body, headers.get, coding)
    try:
        result = await _service(request).infer_http(forward, spec, batch, header.timeout_s)
    except InstanceHttpError as e:
        result = e.reply
    if isinstance(result, HttpReply):
        return web.Response(body=result.body, status=result.status, headers=result.headers)
    return render(pb.ModelInferResponse.FromString(result), spec, header.binary, coding)


async def _not_found(request: web.Request) -> web.Response:
    return _error(404, f"kairosd has no endpoint {request.method} {request.path}")


async def _read_body(request: web.Request) -> bytes:
    limit = request.app[_MAX_BODY_KEY]
    if request.content_length is not None and request.content_length > limit:
        raise RequestTooLarge(
            f"request body of {request.content_length} bytes exceeds the limit of {limit} bytes "
            "(kairosd max_body_bytes)"
        )
    timeout_s = request.app.get(_BODY_TIMEOUT_KEY)
    try:
        if timeout_s is None or request.content.is_eof():  # the whole body already arrived
            return await request.read()
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except RequestPayloadError as e:  # a Content-Encoding aiohttp cannot decode, a broken chunked body
        raise InvalidInput(
            f"request body cannot be read: {e}; send it uncompressed or as valid gzip / deflate "
            "(Content-Encoding)"
        ) from None
    except TimeoutError:
        raise web.HTTPRequestTimeout(
            text=f"request body not received within {timeout_s:g} s (kairosd server.body_timeout_s)",
            headers={hdrs.CONNECTION: "close"},
        ) from None


def _response_coding(request: web.Request) -> str | None:
    """Compress only on an explicit request for ONE coding (tritonclient's `response_compression_algorithm`
    sends exactly `gzip` or `deflate`); the generic lists HTTP libraries add by default are ignored."""
    accept = request.headers.get(hdrs.ACCEPT_ENCODING)
    if accept is None:
        return None
    accept = accept.strip().lower()
    return accept if accept in ("gzip", "deflate") else None


def build_http_app(
    service: InferenceService, max_body_bytes: int,
    server_name: str = SERVER_NAME, extensions: tuple[str, ...] = EXTENSIONS,
    *, auth: Authenticator | None = None, body_timeout_s: float | None = None,
) -> web.Application:
    """The KServe v2 REST application; bodies over `max_body_bytes` get 413, bodies not received within
    `body_timeout_s` 408. `server_name` and `extensions` are what `GET /v2` reports. With `auth`, every
    endpoint but the health ones (unless `auth.auth_health`) needs a bearer token (401)."""
    middlewares: list[Middleware] = [_connection, error_middleware]
    if auth is not None:
        middlewares.append(_authenticate)
    app = web.Application(client_max_size=max_body_bytes, middlewares=middlewares)
    app[_SERVICE_KEY] = service
    app[_MAX_BODY_KEY] = max_body_bytes
    if auth is not None:
        app[_AUTH_KEY] = auth
    if body_timeout_s is not None:
        app[_BODY_TIMEOUT_KEY] = body_timeout_s
    app[_METADATA_KEY] = rapidjson.dumps(
        {"name": server_name, "version": kairosd.__version__, "extensions": list(extensions)}
    ).encode()
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


# open without a token unless server.auth_health
_HEALTH_HANDLERS: frozenset[Handler] = frozenset({_live, _ready, _model_ready})


async def http_runner(
    service: InferenceService, max_body_bytes: int,
    server_name: str = SERVER_NAME, extensions: tuple[str, ...] = EXTENSIONS,
    *, limits: HttpLimits | None = None, auth: Authenticator | None = None,
) -> web.AppRunner:
    """The REST application set up to serve, listening nowhere yet: `runner.server` makes a protocol
    per connection (a site binds it, or another server hands it connections)."""
    app = build_http_app(service, max_body_bytes, server_name, extensions, auth=auth,
                         body_timeout_s=limits.body_timeout_s if limits is not None else None)
    kwargs = limits.handler_kwargs() if limits is not None else {}
    runner = web.AppRunner(app, access_log=None, handle_signals=False, **kwargs)
    await runner.setup()
    return runner


async def start_http_server(
    service: InferenceService, host: str, port: int, max_body_bytes: int,
    server_name: str = SERVER_NAME, extensions: tuple[str, ...] = EXTENSIONS,
    *, limits: HttpLimits | None = None, ssl_context: ssl.SSLContext | None = None,
    auth: Authenticator | None = None, gate: ConnectionGate | None = None, reuse_port: bool = False,
) -> web.AppRunner:
    """Bind and start the REST front end; `runner.addresses` tells the bound port (useful with port 0).

    With `limits` (the daemon's client port), connections are counted against `limits.max_connections`
    (at `gate`, whose counters /metrics reads) and headers, bodies and idle connections are timed
    (`kairosd.server.http_limits`) and plain infer calls take the lean path (`kairosd.server.http_lean`);
    without, aiohttp serves every request with its defaults (instances behind kairosd).
    `ssl_context` serves HTTPS; `auth` checks bearer tokens. `reuse_port`: the port is shared with
    kairosd's other front-end processes (SO_REUSEPORT)."""
    runner = await http_runner(service, max_body_bytes, server_name, extensions, limits=limits, auth=auth)
    try:
        if limits is not None:
            lean = LeanSettings(service, max_body_bytes, auth, limits) if lean_http_default() else None
            site: web.TCPSite = GuardedSite(runner, host, port, limits, gate or ConnectionGate(limits.max_connections),
                                            ssl_context=ssl_context, reuse_port=reuse_port, lean=lean)
        else:
            site = web.TCPSite(runner, host, port, reuse_port=reuse_port, ssl_context=ssl_context)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info("HTTP front end listening on %s:%s%s", host, port, " (TLS)" if ssl_context is not None else "")
    return runner


"""KServe v2 gRPC front end (`inference.GRPCInferenceService`); ModelInfer responses pass through as raw bytes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias

import grpc
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2 as pb

import kairosd
from kairosd.errors import InvalidInput, KairosError
from kairosd.server.validate import resolve_model, validate_request
from kairosd.service import InferenceService

if TYPE_CHECKING:
    from kairosd.config import ServerConfig

log = logging.getLogger(__name__)
Ctx: TypeAlias = grpc.aio.ServicerContext

SERVICE_NAME = "inference.GRPCInferenceService"
SERVER_NAME = "kairosd"
# KServe/Triton protocol extensions this front end implements.
EXTENSIONS: tuple[str, ...] = ("binary_tensor_data", "model_configuration")

# Methods of the service that kairosd answers with UNIMPLEMENTED and a reason.
_UNSUPPORTED: dict[str, str] = {
    "ModelStatistics": "kairosd does not report per-model statistics; scrape its Prometheus metrics instead",
    "RepositoryModelLoad": "kairosd serves a fixed repository; models cannot be loaded at run time",
    "RepositoryModelUnload": "kairosd serves a fixed repository; models cannot be unloaded at run time",
    "SystemSharedMemoryStatus": "kairosd does not support shared-memory tensors",
    "SystemSharedMemoryRegister": "kairosd does not support shared-memory tensors",
    "SystemSharedMemoryUnregister": "kairosd does not support shared-memory tensors",
    "CudaSharedMemoryStatus": "kairosd does not support shared-memory tensors",
    "CudaSharedMemoryRegister": "kairosd does not support shared-memory tensors",
    "CudaSharedMemoryUnregister": "kairosd does not support shared-memory tensors",
    "TraceSetting": "kairosd does not support Triton trace settings",
    "LogSettings": "kairosd does not support Triton log settings",
}
# grpc core cancels calls (CANCELLED, no message) that wait unclaimed by the application beyond
# grpc.server.max_pending_requests (1000 by default: random early drop) and ..._hard_limit (3000: all
# dropped): a burst of 2000 concurrent queries on a busy loop loses ~10% of them. Admission control is
# the scheduler's job (UNAVAILABLE with a reason), so the core's silent limit is lifted well above it.
MAX_PENDING_RPCS = 1 << 20
_STREAM_UNSUPPORTED = "kairosd does not implement ModelStreamInfer (streaming / decoupled models); use ModelInfer"


@dataclass(frozen=True, slots=True)
class GrpcLimits:
    """The `[server]` limits as grpc core channel arguments on the server."""

    max_connections: int = 4096
    max_concurrent_streams: int = 0  # 0: no limit
    max_header_bytes: int = 16384
    header_timeout_s: float = 10.0
    idle_timeout_s: float = 75.0

    @classmethod
    def from_server(cls, s: ServerConfig) -> GrpcLimits:
        return cls(-(-s.max_connections // s.workers), s.max_concurrent_streams, s.max_header_bytes, s.header_timeout_s,
                   s.idle_timeout_s)

    def options(self) -> list[tuple[str, int]]:
        streams = [("grpc.max_concurrent_streams", self.max_concurrent_streams)] if self.max_concurrent_streams else []
        return [
            # accepted connections beyond it are closed at once by grpc core (its connection quota)
            ("grpc.max_allowed_incoming_connections", self.max_connections),
            # HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS (when set): grpc refuses part of a client's calls beyond
            # it on one connection (RST_STREAM REFUSED_STREAM) rather than queue them all
            *streams,
            # request metadata (headers) larger than this is refused RESOURCE_EXHAUSTED; soft and hard
            # limits equal, so the refusal is deterministic
            ("grpc.max_metadata_size", self.max_header_bytes),
            ("grpc.absolute_max_metadata_size", self.max_header_bytes),
            # TLS handshake and the client's HTTP/2 preface and SETTINGS within the header timeout
            ("grpc.server_handshake_timeout_ms", max(1, round(self.header_timeout_s * 1e3))),
            # a connection with no call in flight for this long gets GOAWAY
            ("grpc.max_connection_idle_ms", max(1, round(self.idle_timeout_s * 1e3))),
        ]


def client_timeout_s(request: pb.ModelInferRequest, time_remaining: float | None) -> float | None:
    """The query's deadline from now, in seconds: the smaller of the gRPC deadline (`time_remaining`) and
    the KServe `timeout` request parameter (µs, as Triton reads it; 0 = none), None when neither is set.
    E.g. a 2 s gRPC deadline and timeout = 500000 → 0.5."""
    if "timeout" not in request.parameters:
        return time_remaining
    param = request.parameters["timeout"]
    kind = param.WhichOneof("parameter_choice")
    if kind not in ("int64_param", "uint64_param"):
        raise InvalidInput(f"request parameter 'timeout' must be an integer (microseconds), got {kind or 'no value'}")
    us = getattr(param, kind)
    if us < 0:
        raise InvalidInput(f"request parameter 'timeout' = {us}: must be ≥ 0 microseconds (0: no timeout)")
    if us == 0:
        return time_remaining
    timeout_s = us / 1e6
    return timeout_s if time_remaining is None else min(timeout_s, time_remaining)


class _Handlers:
    """The RPC implementations; each is registered below with its (de)serializers."""

    def __init__(self, service: InferenceService, server_name: str, extensions: tuple[str, ...]) -> None:
        self._service = service
        self._server_name = server_name
        self._extensions = extensions

    async def server_live(self, request: pb.ServerLiveRequest, context: Ctx) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._service.is_live())

    async def server_ready(self, request: pb.ServerReadyRequest, context: Ctx) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._service.is_ready())

    async def server_metadata(
        self, request: pb.ServerMetadataRequest, context: Ctx
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=self._server_name, version=kairosd.__version__, extensions=self._extensions)

    async def model_ready(self, request: pb.ModelReadyRequest, context: Ctx) -> pb.ModelReadyResponse:
        # Like Triton: an unknown model (or version) is simply not ready.
        spec = self._service.repository.get(request.name)
        ok = spec is not None and request.version in ("", spec.version) and self._service.model_ready(request.name)
        return pb.ModelReadyResponse(ready=ok)

    async def model_metadata(
        self, request: pb.ModelMetadataRequest, context: Ctx
    ) -> pb.ModelMetadataResponse:
        try:
            return resolve_model(self._service.repository, request.name, request.version).metadata_pb()
        except KairosError as e:
            await _abort(context, e)

    async def model_config(self, request: pb.ModelConfigRequest, context: Ctx) -> pb.ModelConfigResponse:
        try:
            return resolve_model(self._service.repository, request.name, request.version).config_pb()
        except KairosError as e:
            await _abort(context, e)

    async def repository_index(
        self, request: pb.RepositoryIndexRequest, context: Ctx
    ) -> pb.RepositoryIndexResponse:
        response = pb.RepositoryIndexResponse()
        for name, spec in sorted(self._service.repository.items()):
            ready = self._service.model_ready(name)
            if request.ready and not ready:
                continue
            response.models.add(name=name, version=spec.version, state="READY" if ready else "UNAVAILABLE",
                                reason="" if ready else "no ready instance serves this model")
        return response

    async def model_infer(self, raw: bytes, context: Ctx) -> bytes:
        service = self._service
        request = pb.ModelInferRequest()
        try:
            try:
                request.ParseFromString(raw)
            except DecodeError:
                raise InvalidInput("ModelInferRequest is not a valid protobuf message") from None
            # typed `contents` are rewritten into raw_input_contents by validation: then the
            # received bytes no longer describe the request and are not forwarded
            forward = raw if len(request.raw_input_contents) == len(request.inputs) else None
            timeout_s = client_timeout_s(request, context.time_remaining())
            spec = resolve_model(service.repository, request.model_name, request.model_version)
            batch = validate_request(request, spec)
            return await service.infer(request, spec, batch, timeout_s, raw=forward)
        except KairosError as e:
            await _abort(context, e)
        except Exception as e:  # a bug, not the client's fault: keep the message, log the trace
            log.exception("ModelInfer for model %r failed", request.model_name)
            await context.abort(grpc.StatusCode.INTERNAL, f"kairosd internal error: {type(e).__name__}: {e}")
            raise AssertionError("unreachable") from e  # context.abort raises

    async def model_stream_infer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Ctx
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, _STREAM_UNSUPPORTED)
        yield pb.ModelStreamInferResponse()  # unreachable; makes this an async generator


async def _abort(context: Ctx, error: KairosError) -> NoReturn:
    await context.abort(error.grpc_code, str(error))
    raise AssertionError("unreachable")  # context.abort raises


def _unsupported(reason: str) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    async def handler(request: Any, context: Ctx) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, reason)

    return handler


def _identity(data: bytes) -> bytes:
    return data


def _unary(fn: Callable[..., Awaitable[Any]], request_type: Any, response_type: Any | None) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(
        fn,
        request_deserializer=request_type.FromString if request_type is not None else _identity,
        response_serializer=response_type.SerializeToString if response_type is not None else None,
    )


def build_generic_handler(
    service: InferenceService, server_name: str = SERVER_NAME, extensions: tuple[str, ...] = EXTENSIONS
) -> grpc.GenericRpcHandler:
    """The service's method table. ModelInfer returns the backend's bytes with no serializer (no re-encoding).
    `server_name` and `extensions` are what ServerMetadata reports."""
    h = _Handlers(service, server_name, extensions)
    methods: dict[str, grpc.RpcMethodHandler] = {
        "ServerLive": _unary(h.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
        "ServerReady": _unary(h.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
        "ServerMetadata": _unary(h.server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
        "ModelReady": _unary(h.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
        "ModelMetadata": _unary(h.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
        "ModelConfig": _unary(h.model_config, pb.ModelConfigRequest, pb.ModelConfigResponse),
        "RepositoryIndex": _unary(h.repository_index, pb.RepositoryIndexRequest, pb.RepositoryIndexResponse),
        "ModelInfer": _unary(h.model_infer, None, None),  # bytes in: parsed here, forwarded as received
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
            h.model_stream_infer,
            request_deserializer=pb.ModelInferRequest.FromString,
            response_serializer=pb.ModelStreamInferResponse.SerializeToString,
        ),
    }
    for name, reason in _UNSUPPORTED.items():
        methods[name] = _unary(_unsupported(reason), None, None)
    return grpc.method_handlers_generic_handler(SERVICE_NAME, methods)


async def start_grpc_server(
    service: InferenceService, host: str, port: int, max_message_bytes: int,
    server_name: str = SERVER_NAME, extensions: tuple[str, ...] = EXTENSIONS,
    *, limits: GrpcLimits | None = None, credentials: grpc.ServerCredentials | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (), reuse_port: bool = False,
) -> grpc.aio.Server:
    """Bind and start the gRPC front end; messages over `max_message_bytes` fail with RESOURCE_EXHAUSTED.
    `limits` (the daemon's client port) adds connection, stream, metadata and timeout limits;
    `credentials` serves TLS; `interceptors` run before every method (the bearer-token check).
    `reuse_port`: the port is shared with kairosd's other front-end processes (SO_REUSEPORT: the
    kernel spreads connections over them); without it a port in use is an error."""
    options: list[tuple[str, int]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.server.max_pending_requests", MAX_PENDING_RPCS),
        ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_RPCS),
    ]
    if limits is not None:
        options += limits.options()
    server = grpc.aio.server(
        handlers=[build_generic_handler(service, server_name, extensions)],
        interceptors=list(interceptors) or None,
        options=options,
        maximum_concurrent_rpcs=None,
    )
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if credentials is not None:
        bound = server.add_secure_port(address, credentials)
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"gRPC front end cannot bind {address}")
    await server.start()
    log.info("gRPC front end listening on %s%s", address, " (TLS)" if credentials is not None else "")
    return server

"""The contract between the front ends and the daemon: what a front end may ask of the serving core."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from tritonclient.grpc import service_pb2

if TYPE_CHECKING:
    from kairosd.backends.http_client import HttpForward, HttpReply
    from kairosd.repository import ModelSpec


class InferenceService(Protocol):
    """Implemented by the scheduler-backed daemon (and by small real services in tests).

    The front ends parse and validate a request, compute its batch size, then await `infer` (gRPC)
    or `infer_http` (HTTP/REST).
    Errors are `kairosd.errors.KairosError` subclasses; the front ends map them to gRPC / HTTP codes.
    """

    @property
    def repository(self) -> Mapping[str, ModelSpec]: ...

    def is_live(self) -> bool: ...

    def is_ready(self) -> bool: ...

    def model_ready(self, name: str) -> bool: ...

    async def infer(
        self,
        request: service_pb2.ModelInferRequest,
        spec: ModelSpec,
        batch: int,
        timeout_s: float | None = None,
        raw: bytes | None = None,
    ) -> bytes:
        """Serve one validated query; return the backend's serialized `ModelInferResponse`
        (raw tensor bytes pass through untouched). `timeout_s`: the client's deadline, if any.
        `raw`: the request exactly as received, when it is what `request` serializes to (the
        backend is then sent these bytes rather than a re-serialization)."""
        ...

    async def infer_http(
        self, forward: HttpForward, spec: ModelSpec, batch: int, timeout_s: float | None = None
    ) -> HttpReply | bytes:
        """Serve one validated HTTP query: the instance's `HttpReply` when it was forwarded to an
        instance's HTTP endpoint as it is, else the serialized `ModelInferResponse` of the gRPC request
        `forward.to_grpc()` builds. An error status from the instance raises `InstanceHttpError`."""
        ...

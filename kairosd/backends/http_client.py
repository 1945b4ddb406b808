"""The HTTP/REST client to one instance: an HTTP infer request is forwarded as bytes, the reply returned as bytes.

Nothing is parsed or re-encoded: the client's body and the headers that describe it go to the
instance's `/v2/models/<m>[/versions/<v>]/infer`, and the instance's status, body and headers come
back as they are, over keep-alive connections (`http_wire`). Transport failures become a retryable
`BackendError` (UNAVAILABLE), as they do on gRPC; an error status from the instance becomes
`InstanceHttpError`, which carries the instance's reply to the client.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import grpc
from tritonclient.grpc import service_pb2

from kairosd.backends.http_wire import HttpWireError, HttpWirePool
from kairosd.errors import BackendError

# Reply headers that describe the body (wire name, name returned); the rest is the connection's business.
REPLY_HEADERS = (
    ("content-type", "Content-Type"),
    ("inference-header-content-length", "Inference-Header-Content-Length"),
    ("content-encoding", "Content-Encoding"),
)

# The instance's HTTP status → the gRPC status kairosd's counters and retry logic speak.
_GRPC_OF_HTTP: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,  # retryable, as gRPC UNAVAILABLE is
}


@dataclass(frozen=True, slots=True)
class HttpForward:
    """One HTTP infer request as the client sent it, ready to forward.

    `to_grpc` builds the same request as a `ModelInferRequest`, for an instance that has no HTTP
    endpoint; it is called at most when such an instance is chosen (validation happened before)."""

    path: str  # "/v2/models/<m>[/versions/<v>]/infer"
    body: bytes
    headers: dict[str, str]  # Content-Type, Inference-Header-Content-Length, Accept-Encoding
    to_grpc: Callable[[], service_pb2.ModelInferRequest]


@dataclass(frozen=True, slots=True)
class HttpReply:
    """An instance's answer, as it sent it."""

    status: int
    body: bytes
    headers: Mapping[str, str]


class InstanceHttpError(BackendError):
    """The instance answered with an error status; `reply` (its status, body and headers) goes back
    to the HTTP client unchanged."""

    def __init__(self, reply: HttpReply, instance: str) -> None:
        status = _GRPC_OF_HTTP.get(reply.status, grpc.StatusCode.INTERNAL)
        message = reply.body[:500].decode("utf-8", errors="replace")
        super().__init__(
            f"instance {instance}: HTTP {reply.status}: {message}",
            status=status,
            retryable=reply.status >= 500 and status is not grpc.StatusCode.UNIMPLEMENTED,  # as RETRYABLE
            instance=instance,
        )
        self.reply = reply
        self.http_status = reply.status


class HttpBackendClient:
    """Forwards HTTP infer requests to one instance's HTTP endpoint (`host:port`)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._pool = HttpWirePool(address)

    async def infer(self, forward: HttpForward, timeout_s: float) -> HttpReply:
        """Send one request's bytes; return the instance's 200 reply. Raises BackendError
        (InstanceHttpError for an error status)."""
        try:
            r = await self._pool.post(forward.path, forward.headers, forward.body, timeout_s)
        except TimeoutError:
            raise BackendError(
                f"instance {self.address}: DEADLINE_EXCEEDED: no HTTP reply within {timeout_s:.3g} s",
                status=grpc.StatusCode.DEADLINE_EXCEEDED, retryable=False, instance=self.address,
            ) from None
        except HttpWireError as exc:
            raise BackendError(
                f"instance {self.address}: UNAVAILABLE: {exc}",
                status=grpc.StatusCode.UNAVAILABLE, retryable=True, instance=self.address,
            ) from None
        h = r.headers
        reply = HttpReply(r.status, r.body, {name: h[wire] for wire, name in REPLY_HEADERS if wire in h})
        if r.status != 200:
            raise InstanceHttpError(reply, self.address)
        return reply

    def close(self) -> None:
        self._pool.close()

"""Typed errors: one type per boundary, each carrying the KServe status it maps to and what to do."""

from __future__ import annotations

import grpc


class KairosError(Exception):
    """Base of every error kairosd raises on purpose.

    `grpc_code` and `http_status` say how the front ends report it; the message says what to do.
    """

    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    http_status: int = 500


class ConfigError(KairosError):
    """A configuration value is missing or not allowed; the message names the key and the allowed values."""


class PortInUse(KairosError):
    """A front-end port cannot be bound; the message names the config key to change."""


class ModelNotFound(KairosError):
    grpc_code = grpc.StatusCode.NOT_FOUND
    http_status = 404


class InvalidInput(KairosError):
    """The request names a wrong input, dtype or shape, or its body is malformed."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400


class RequestTooLarge(KairosError):
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 413


class Unavailable(KairosError):
    """No instance can serve the request before its deadline (or the daemon is shutting down)."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    http_status = 503


class DeadlineExceeded(KairosError):
    """An instance dropped a query whose `timeout` parameter passed before it was served."""

    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 504


class Overloaded(KairosError):
    """Admission control refused (or shed) the query: it could not be served within its QoS target or
    deadline given the queue ahead of it and the fleet's capacity. `retry_after_s` is when the queue
    ahead is expected to have drained (HTTP `Retry-After`)."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unauthenticated(KairosError):
    """The request carries no bearer token, or one that is not in `server.token_file`."""

    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401


class BackendError(KairosError):
    """An instance failed a query. `status` is the backend's gRPC status; `retryable` says whether
    another instance may be tried (connection failures are, model errors are not)."""

    def __init__(self, message: str, status: grpc.StatusCode, retryable: bool, instance: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.instance = instance
        self.grpc_code = status if status != grpc.StatusCode.OK else grpc.StatusCode.INTERNAL
        self.http_status = _HTTP_OF_GRPC.get(self.grpc_code, 500)


_HTTP_OF_GRPC: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.UNIMPLEMENTED: 501,
}

"""The client to one instance: KServe v2 gRPC, channel reused, tensors passed through as bytes.

Control calls (health, metadata) go through `tritonclient.grpc.aio`; ModelInfer goes through a
unary-unary call on a channel of our own whose response deserializer is the identity, so the
backend's serialized `ModelInferResponse` reaches the client without being parsed and rebuilt.
A query's deadline is kept by an event-loop timer that cancels the call, not by a gRPC deadline:
grpc core's per-call deadline timer costs more CPU than the whole scheduling of a query.
"""

from __future__ import annotations

import asyncio

import grpc
import tritonclient.grpc.aio as grpcclient
from tritonclient.grpc import service_pb2

from kairosd.errors import BackendError

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"

# Failures where another instance may succeed: the instance is gone, overloaded, cut off, or failed
# with a server error (INTERNAL, UNKNOWN: HTTP 5xx). A model error (INVALID_ARGUMENT, NOT_FOUND...)
# would fail the same way anywhere and is returned as it is.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED,
                       grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
    ]


class _Deadline:
    """Cancels a call when its deadline passes, and remembers that it did."""

    __slots__ = ("call", "expired", "handle")

    def __init__(self, call: grpc.aio.UnaryUnaryCall) -> None:
        self.call = call
        self.expired = False
        self.handle: asyncio.TimerHandle

    def expire(self) -> None:
        self.expired = True
        self.call.cancel()


class BackendClient:
    def __init__(self, address: str, max_message_bytes: int = 64 * 1024 * 1024) -> None:
        self.address = address
        self._channel = grpc.aio.insecure_channel(address, options=channel_options(max_message_bytes))
        self._infer = self._channel.unary_unary(
            MODEL_INFER, request_serializer=service_pb2.ModelInferRequest.SerializeToString, response_deserializer=None
        )
        self._infer_raw = self._channel.unary_unary(MODEL_INFER, request_serializer=None, response_deserializer=None)
        self._control: grpcclient.InferenceServerClient | None = None

    @property
    def control(self) -> grpcclient.InferenceServerClient:
        if self._control is None:
            self._control = grpcclient.InferenceServerClient(self.address)
        return self._control

    async def infer(
        self, request: service_pb2.ModelInferRequest, timeout_s: float | None, raw: bytes | None = None
    ) -> bytes:
        """Send one query (its `raw` bytes when given); return the serialized ModelInferResponse.
        Raises BackendError (DEADLINE_EXCEEDED when no answer came within `timeout_s`)."""
        call = self._infer_raw(raw) if raw is not None else self._infer(request)
        timer = None
        if timeout_s is not None:
            timer = _Deadline(call)
            timer.handle = asyncio.get_running_loop().call_later(timeout_s, timer.expire)
        try:
            return await call
        except asyncio.CancelledError:
            if timer is None or not timer.expired:
                raise
            raise BackendError(
                f"instance {self.address}: DEADLINE_EXCEEDED: no answer within {timeout_s:.3g} s",
                status=grpc.StatusCode.DEADLINE_EXCEEDED, retryable=False, instance=self.address,
            ) from None
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            raise BackendError(
                f"instance {self.address}: {code.name}: {exc.details()}",
                status=code,
                retryable=code in RETRYABLE,
                instance=self.address,
            ) from None
        finally:
            if timer is not None:
                timer.handle.cancel()

    async def ready(self, timeout_s: float = 2.0) -> bool:
        try:
            return bool(await self.control.is_server_ready(client_timeout=timeout_s))
        except Exception:  # noqa: BLE001 - any failure means "not ready"
            return False

    async def close(self) -> None:
        await self._channel.close()
        if self._control is not None:
            await self._control.close()

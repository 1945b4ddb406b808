"""ModelStreamInfer on the wire: the protobuf helpers of the stream client (a request's id replaced
without parsing the request, a stream error's status) and the instance side's serving loop.

An instance answers each request on the stream as soon as it is done (completion order, not arrival
order), with the request's `id` in its ModelInferResponse; a failed request is answered with
`error_message`, a ModelInferResponse carrying only the id and the gRPC status name (STATUS_PARAM),
and the stream stays open.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc
from tritonclient.grpc import service_pb2

log = logging.getLogger(__name__)

MODEL_STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
# A string parameter of a stream error's ModelInferResponse naming the gRPC status the unary call would
# have ended with (e.g. "INVALID_ARGUMENT"); kairosd's instances set it, Triton does not (see
# `stream_error_status` for how Triton's errors are classified).
STATUS_PARAM = "kairosd_grpc_status"

# protobuf wire: a field's key is (number << 3) | wire type (2: length-delimited); `id` is field 3 of
# ModelInferRequest; ModelStreamInferResponse is error_message = 1, infer_response = 2
_ID_KEY = b"\x1a"
_ERROR_KEY = b"\x0a"
_RESPONSE_KEY = b"\x12"


def varint(n: int) -> bytes:
    """`n` ≥ 0 as a protobuf base-128 varint, e.g. 300 → b"\\xac\\x02"."""
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def with_id(request: bytes, wire_id: bytes) -> bytes:
    """A serialized ModelInferRequest whose `id` is `wire_id` (appended: the last value of a field wins)."""
    return request + _ID_KEY + varint(len(wire_id)) + wire_id


_PARAMS_KEY = b"\x22"  # ModelInferRequest.parameters = 4 (a map: each entry a message of key = 1, value = 2)
_TIMEOUT_ENTRY_KEY = b"\x0a\x07timeout\x12"  # the entry's key "timeout", then the InferParameter value's key
_INT64_PARAM_KEY = b"\x10"  # InferParameter.int64_param = 2 (varint)


def with_timeout(request: bytes, timeout_s: float) -> bytes:
    """A serialized ModelInferRequest whose KServe `timeout` parameter (µs, as Triton reads it) is
    `timeout_s` (appended: a later map entry with the same key wins). An instance that honours it
    drops the query once it has waited that long, so a query its client abandoned does not hold the
    instance's queue."""
    value = _INT64_PARAM_KEY + varint(max(1, round(timeout_s * 1e6)))
    entry = _TIMEOUT_ENTRY_KEY + varint(len(value)) + value
    return request + _PARAMS_KEY + varint(len(entry)) + entry


def timeout_of(request: service_pb2.ModelInferRequest) -> float | None:
    """The request's `timeout` parameter in seconds (None when absent or not positive)."""
    if "timeout" not in request.parameters:
        return None
    p = request.parameters["timeout"]
    us = p.int64_param or p.uint64_param
    return us / 1e6 if us > 0 else None


def stream_response(response: bytes, error: str = "") -> bytes:
    """A serialized ModelStreamInferResponse around a serialized ModelInferResponse (and an error)."""
    out = _RESPONSE_KEY + varint(len(response)) + response
    if error:
        message = error.encode()
        out = _ERROR_KEY + varint(len(message)) + message + out
    return out


def stream_error_status(message: str, response: service_pb2.ModelInferResponse) -> grpc.StatusCode:
    """The status of a stream error: the one a kairosd instance names in STATUS_PARAM; for Triton
    (which sends only the message), NOT_FOUND for an unknown model, UNAVAILABLE for a model or server
    that is not ready or is stopping, INVALID_ARGUMENT otherwise (a request the model refuses)."""
    params = response.parameters
    if STATUS_PARAM in params:
        code = getattr(grpc.StatusCode, params[STATUS_PARAM].string_param, None)
        if isinstance(code, grpc.StatusCode):
            return code
    text = message.lower()
    if "unknown model" in text or "is not found" in text:
        return grpc.StatusCode.NOT_FOUND
    if "not ready" in text or "unavailable" in text or "shutting down" in text or "exiting" in text:
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INVALID_ARGUMENT


def error_response(query_id: str, code: grpc.StatusCode) -> service_pb2.ModelInferResponse:
    """The ModelInferResponse of a stream error: the request's id and the status name."""
    response = service_pb2.ModelInferResponse(id=query_id)
    response.parameters[STATUS_PARAM].string_param = code.name
    return response


Req = TypeVar("Req")
Resp = TypeVar("Resp")


async def serve_stream(
    requests: AsyncIterator[Req], write: Callable[[Resp], Awaitable[None]], answer: Callable[[Req], Awaitable[Resp]],
) -> None:
    """Answer every request of one stream call: each in its own task, each answer written (one write at
    a time) when it is ready. `answer` must not raise: it returns a stream response, an error included.
    Ends when the client has closed its side and every answer is written; cancelled with the call."""
    done: asyncio.Queue[Resp | None] = asyncio.Queue()
    tasks: set[asyncio.Task[None]] = set()

    async def one(request: Req) -> None:
        done.put_nowait(await answer(request))

    async def read() -> None:
        try:
            async for request in requests:
                task = asyncio.ensure_future(one(request))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            while tasks:
                await asyncio.wait(list(tasks))
        finally:
            done.put_nowait(None)

    reader = asyncio.ensure_future(read())
    try:
        while (message := await done.get()) is not None:
            await write(message)
        await reader  # its exception, if it failed, ends the call
    finally:
        reader.cancel()
        for task in list(tasks):
            task.cancel()

"""ModelStreamInfer on the wire: the protobuf helpers the stream client uses (replace a query's id,
split an answer, find and restore its id without parsing it) and the instance side's serving loop.

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

# protobuf wire: a field's key is (number << 3) | wire type; ids are field 3 (length-delimited) of both
# ModelInferRequest and ModelInferResponse; ModelStreamInferResponse is error_message = 1, infer_response = 2
_ID_KEY = b"\x1a"
_ERROR_KEY = b"\x0a"
_RESPONSE_KEY = b"\x12"
_ERROR_FIELD = 1
_RESPONSE_FIELD = 2


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


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    b = buf[pos]
    if b < 0x80:
        return b, pos + 1
    value = b & 0x7F
    shift = 7
    pos += 1
    while True:
        b = buf[pos]
        value |= (b & 0x7F) << shift
        pos += 1
        if b < 0x80:
            return value, pos
        shift += 7


def _skip(buf: bytes, pos: int, wire_type: int) -> int:
    """The position after a field's value of `wire_type` starting at `pos`."""
    if wire_type == 2:
        n, pos = _read_varint(buf, pos)
        return pos + n
    if wire_type == 0:
        return _read_varint(buf, pos)[1]
    if wire_type == 1:
        return pos + 8
    if wire_type == 5:
        return pos + 4
    raise ValueError(f"unsupported protobuf wire type {wire_type}")


def with_id(request: bytes, wire_id: bytes) -> bytes:
    """A serialized ModelInferRequest whose `id` is `wire_id` (appended: the last value of a field wins)."""
    return request + _ID_KEY + varint(len(wire_id)) + wire_id


def split_stream_response(buf: bytes) -> tuple[bytes, bytes]:
    """(error_message, infer_response) of a serialized ModelStreamInferResponse, both as bytes (b"" when
    absent). Its answer's fields are not parsed."""
    error = response = b""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _read_varint(buf, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == 2 and field in (_ERROR_FIELD, _RESPONSE_FIELD):
            n, pos = _read_varint(buf, pos)
            value = buf[pos:pos + n]
            pos += n
            if field == _RESPONSE_FIELD:
                # a message field given twice merges; an answer arrives as one field in practice
                response = value if not response else response + value
            else:
                error = value
        else:
            pos = _skip(buf, pos, wire_type)
    return error, response


def find_id(response: bytes) -> tuple[int, int, bytes] | None:
    """Where the `id` field of a serialized ModelInferResponse is: (start of its key, end of its value,
    the value), its last occurrence (the one that counts); None when it has none."""
    found = None
    pos, end = 0, len(response)
    while pos < end:
        start = pos
        key, pos = _read_varint(response, pos)
        if key == 0x1A:  # field 3, length-delimited
            n, pos = _read_varint(response, pos)
            found = (start, pos + n, response[pos:pos + n])
            pos += n
        else:
            pos = _skip(response, pos, key & 7)
    return found


def replace_id(response: bytes, start: int, end: int, query_id: bytes) -> bytes:
    """`response` with the id field at [start, end) replaced by `query_id` (removed when empty: proto3's
    default)."""
    field = _ID_KEY + varint(len(query_id)) + query_id if query_id else b""
    return response[:start] + field + response[end:]


def stream_response(response: bytes, error: str = "") -> bytes:
    """A serialized ModelStreamInferResponse around a serialized ModelInferResponse (and an error)."""
    out = _RESPONSE_KEY + varint(len(response)) + response
    if error:
        message = error.encode()
        out = _ERROR_KEY + varint(len(message)) + message + out
    return out


def stream_error_status(message: str, response: bytes) -> grpc.StatusCode:
    """The status of a stream error: the one a kairosd instance names in STATUS_PARAM; for
    Triton (which sends only the message), NOT_FOUND for an unknown model, UNAVAILABLE for a model or
    server that is not ready or is stopping, INVALID_ARGUMENT otherwise (a request the model refuses)."""
    if response:
        try:
            params = service_pb2.ModelInferResponse.FromString(response).parameters
        except Exception:  # noqa: BLE001 - an unreadable answer leaves the message to classify
            params = None
        if params is not None and STATUS_PARAM in params:
            name = params[STATUS_PARAM].string_param
            code = getattr(grpc.StatusCode, name, None)
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

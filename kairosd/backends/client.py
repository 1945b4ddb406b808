"""The client to one instance: KServe v2 gRPC, channel reused, tensors passed through as bytes.

Control calls (health, metadata) go through `tritonclient.grpc.aio`; queries go on a channel of our
own with identity (de)serializers, so the backend's serialized `ModelInferResponse` reaches the
client without being parsed and rebuilt. Two transports for queries:

- unary: one ModelInfer call per query.
- stream: one long-lived bidirectional ModelStreamInfer call per instance carries every query. A
  query's `id` on the wire is replaced by a stream-unique one (a protobuf string field appended to
  the serialized request overrides the earlier one: the last value of a field wins), answers are
  matched to queries by that id, and the query's own id is set back in the answer (parsed and
  re-serialized by upb: cheaper than walking the wire format in Python to patch the id's bytes, at
  every batch size measured, 89 bytes to 4 kB). An error comes back
  inside the stream (`error_message`, with the id) and fails that query only; a broken stream fails
  every query on it with UNAVAILABLE (retryable) and the next query opens a new one. One writer task
  does every write (grpc aio cancels the whole call when a task awaiting a write is cancelled), one
  reader task every read.

A query's deadline is kept by an event-loop timer, not by a gRPC deadline: grpc core's per-call
deadline timer costs more CPU than the whole scheduling of a query (and a stream has no per-message
deadline). The stream is the default transport; `KAIROSD_BACKEND_STREAM=0` in the environment makes it unary.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

import grpc
import tritonclient.grpc.aio as grpcclient
from tritonclient.grpc import service_pb2

from kairosd.backends.streaming import MODEL_STREAM_INFER, stream_error_status, with_id, with_timeout
from kairosd.config import OFF_WORDS, env_switch
from kairosd.errors import BackendError

log = logging.getLogger(__name__)

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM_ENV = "KAIROSD_BACKEND_STREAM"
# a new stream carries one query until its first answer or this long (see _Stream._write)
PROBATION_S = 0.05

# Failures where another instance may succeed: the instance is gone, overloaded, cut off, or failed
# with a server error (INTERNAL, UNKNOWN: HTTP 5xx). A model error (INVALID_ARGUMENT, NOT_FOUND...)
# would fail the same way anywhere and is returned as it is.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED,
                       grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})


def stream_default() -> bool:
    """The transport a client uses when not told: the stream (it costs the head less CPU per query), unary
    when KAIROSD_BACKEND_STREAM is 0/false/no/unary."""
    return env_switch(STREAM_ENV, (*OFF_WORDS, "unary"))


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
    ]


# ---- unary ------------------------------------------------------------------------------------------
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


# ---- stream -----------------------------------------------------------------------------------------
class _Unsupported(Exception):
    """Internal: the instance does not serve ModelStreamInfer (UNIMPLEMENTED); the query goes unary."""


class _Pending:
    """A query written (or about to be) on a stream: its caller's future and its own id."""

    __slots__ = ("future", "query_id")

    def __init__(self, future: asyncio.Future[bytes], query_id: str) -> None:
        self.future = future
        self.query_id = query_id


class _Stream:
    """One open ModelStreamInfer call: queries in `outbox` written in order by the writer task,
    answers matched to `pending` by wire id in the reader task. Once broken, it stays broken."""

    def __init__(self, channel: grpc.aio.Channel, address: str) -> None:
        self.address = address
        self.call = channel.stream_stream(MODEL_STREAM_INFER, request_serializer=None, response_deserializer=None)()
        self.pending: dict[str, _Pending] = {}
        self.outbox: deque[tuple[str, bytes]] = deque()  # (wire id, request bytes)
        self.broken = False
        self._seq = 0
        self._loop = asyncio.get_running_loop()
        self._wake: asyncio.Future[None] | None = None
        self._answered: asyncio.Future[None] = self._loop.create_future()  # the first answer came
        self._reader = self._loop.create_task(self._read())
        self._writer = self._loop.create_task(self._write())

    def submit(self, request: bytes, query_id: str) -> tuple[str, asyncio.Future[bytes]]:
        """Queue one query; its wire id and the future its answer (or BackendError) resolves."""
        self._seq += 1
        wire_id = f"k{self._seq:x}"
        fut: asyncio.Future[bytes] = self._loop.create_future()
        self.pending[wire_id] = _Pending(fut, query_id)
        self.outbox.append((wire_id, with_id(request, wire_id.encode())))
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)
        return wire_id, fut

    def forget(self, wire_id: str) -> None:
        """The query's caller gave up (deadline, cancellation): its answer, if any comes, is dropped, and
        it is not written if it still waits in the outbox."""
        self.pending.pop(wire_id, None)

    async def _write(self) -> None:
        outbox, pending, call = self.outbox, self.pending, self.call
        try:
            # One query, then nothing more until the first answer or PROBATION_S: a server without
            # ModelStreamInfer ends the call UNIMPLEMENTED at once, and a write racing that ending would fail
            # with a status of its own (INTERNAL) and hide it.
            probation = True
            while probation:
                while outbox:
                    wire_id, data = outbox.popleft()
                    if wire_id in pending:
                        await call.write(data)
                        await asyncio.wait([self._answered], timeout=PROBATION_S)
                        probation = False
                        break
                else:
                    self._wake = self._loop.create_future()
                    await self._wake
                    self._wake = None
            while True:
                while outbox:
                    wire_id, data = outbox.popleft()
                    if wire_id in pending:
                        await call.write(data)
                self._wake = self._loop.create_future()
                await self._wake
                self._wake = None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the call ended (AioRpcError, InvalidStateError)
            # a write on an ended call fails with a status of its own (INTERNAL); the call's is the one that counts
            try:
                code: grpc.StatusCode | None = await asyncio.wait_for(self.call.code(), 1.0)
                why = f"{code.name if code else '?'}: {await self.call.details()}"
            except (TimeoutError, grpc.aio.AioRpcError, asyncio.InvalidStateError):
                code, why = None, f"write failed: {type(exc).__name__}: {exc}"
            self._break(why, code)

    async def _read(self) -> None:
        call, pending = self.call, self.pending
        try:
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:
                    code = await call.code()
                    details = await call.details()
                    self._break(f"the stream ended: {code.name}: {details}", code)
                    return
                if not self._answered.done():
                    self._answered.set_result(None)
                self._answer(message, pending)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:
            self._break(f"{exc.code().name}: {exc.details()}", exc.code())
        except Exception as exc:  # noqa: BLE001 - a malformed answer breaks the stream, not the loop
            log.exception("stream to %s: unreadable answer", self.address)
            self._break(f"unreadable answer: {type(exc).__name__}: {exc}", grpc.StatusCode.INTERNAL)

    def _answer(self, message: bytes, pending: dict[str, _Pending]) -> None:
        stream_response = service_pb2.ModelStreamInferResponse.FromString(message)
        response = stream_response.infer_response
        p = pending.pop(response.id, None)
        if p is None or p.future.done():
            return  # its caller gave up (deadline, cancellation), or an answer without a known id
        error = stream_response.error_message
        if error:
            code = stream_error_status(error, response)
            error = error.replace(f"request id: {response.id}]", f"request id: {p.query_id}]")  # Triton names it
            p.future.set_exception(BackendError(f"instance {self.address}: {code.name}: {error}", status=code,
                                                retryable=code in RETRYABLE, instance=self.address))
        else:
            response.id = p.query_id
            p.future.set_result(response.SerializeToString())

    def _break(self, why: str, code: grpc.StatusCode | None) -> None:
        if self.broken:
            return
        self.broken = True
        if code is grpc.StatusCode.UNIMPLEMENTED:
            error: Exception = _Unsupported(why)
        else:
            error = BackendError(f"instance {self.address}: UNAVAILABLE: stream broken: {why}",
                                 status=grpc.StatusCode.UNAVAILABLE, retryable=True, instance=self.address)
        for p in self.pending.values():
            if not p.future.done():
                p.future.set_exception(error)
        self.pending.clear()
        self.outbox.clear()
        self.call.cancel()
        current = asyncio.current_task()
        for task in (self._reader, self._writer):
            if task is not current:
                task.cancel()

    async def close(self) -> None:
        self._break("the client closed", None)
        await asyncio.gather(self._reader, self._writer, return_exceptions=True)


class BackendClient:
    def __init__(self, address: str, max_message_bytes: int = 64 * 1024 * 1024, stream: bool | None = None) -> None:
        """`stream`: queries on one ModelStreamInfer stream (True) or one ModelInfer call each (False);
        None: `stream_default()`. An instance that does not serve ModelStreamInfer gets unary calls."""
        self.address = address
        self.stream = stream_default() if stream is None else stream
        self._channel = grpc.aio.insecure_channel(address, options=channel_options(max_message_bytes))
        self._infer = self._channel.unary_unary(
            MODEL_INFER, request_serializer=service_pb2.ModelInferRequest.SerializeToString, response_deserializer=None
        )
        self._infer_raw = self._channel.unary_unary(MODEL_INFER, request_serializer=None, response_deserializer=None)
        self._stream: _Stream | None = None
        self._control: grpcclient.InferenceServerClient | None = None

    @property
    def control(self) -> grpcclient.InferenceServerClient:
        if self._control is None:
            self._control = grpcclient.InferenceServerClient(self.address)
        return self._control

    async def infer(
        self, request: service_pb2.ModelInferRequest, timeout_s: float | None, raw: bytes | None = None
    ) -> bytes:
        """Send one query (its `raw` bytes when given); return the serialized ModelInferResponse, carrying
        the request's id. Raises BackendError (DEADLINE_EXCEEDED when no answer came within `timeout_s`)."""
        if self.stream:
            return await self._infer_stream(request, timeout_s, raw)
        return await self._infer_unary(request, timeout_s, raw)

    async def _infer_unary(
        self, request: service_pb2.ModelInferRequest, timeout_s: float | None, raw: bytes | None
    ) -> bytes:
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
            raise self._deadline_error(timeout_s) from None
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

    async def _infer_stream(
        self, request: service_pb2.ModelInferRequest, timeout_s: float | None, raw: bytes | None
    ) -> bytes:
        stream = self._stream
        if stream is None or stream.broken:
            stream = self._stream = _Stream(self._channel, self.address)
        loop = asyncio.get_running_loop()
        started = loop.time()
        data = raw if raw is not None else request.SerializeToString()
        if timeout_s is not None:  # the instance drops it once its deadline passed (no per-query cancel on a stream)
            data = with_timeout(data, timeout_s)
        wire_id, fut = stream.submit(data, request.id)
        timer = loop.call_later(timeout_s, _expire, fut) if timeout_s is not None else None
        try:
            return await fut
        except _DeadlinePassed:
            raise self._deadline_error(timeout_s) from None
        except _Unsupported:
            log.warning("instance %s does not serve ModelStreamInfer; its queries go as ModelInfer calls",
                        self.address)
            self.stream = False
            left = None if timeout_s is None else max(timeout_s - (loop.time() - started), 0.0)
            return await self._infer_unary(request, left, raw)
        finally:
            stream.forget(wire_id)
            if timer is not None:
                timer.cancel()

    def _deadline_error(self, timeout_s: float | None) -> BackendError:
        return BackendError(
            f"instance {self.address}: DEADLINE_EXCEEDED: no answer within {timeout_s or 0.0:.3g} s",
            status=grpc.StatusCode.DEADLINE_EXCEEDED, retryable=False, instance=self.address,
        )

    async def ready(self, timeout_s: float = 2.0) -> bool:
        try:
            return bool(await self.control.is_server_ready(client_timeout=timeout_s))
        except Exception:  # noqa: BLE001 - any failure means "not ready"
            return False

    async def close(self) -> None:
        if self._stream is not None:
            await self._stream.close()
            self._stream = None
        await self._channel.close()
        if self._control is not None:
            await self._control.close()


class _DeadlinePassed(Exception):
    """Internal: a stream query's deadline timer fired before its answer came."""


def _expire(fut: asyncio.Future[bytes]) -> None:
    if not fut.done():
        fut.set_exception(_DeadlinePassed())

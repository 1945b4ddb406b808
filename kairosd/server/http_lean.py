"""The lean path of kairosd's REST client port: plain infer calls served on an asyncio protocol, every
other request by the aiohttp application (`kairosd.server.http_frontend`).

Why: per request, aiohttp builds a request object, routes it, runs the middlewares, reads the body
through a stream and writes the answer through a stream writer; on the head that machinery costs
about as much CPU as the query's own work (validation, the Kairos matching, the forward), on the
event loop every query's latency waits on. The lean path does what an infer call needs and what the
application does for it: parse the head (`kairosd.server.http_head`: which calls qualify), read the
body by its Content-Length, check the bearer token, parse and validate the JSON header, submit the
query, and write the instance's answer back as it came (or the rendered `ModelInferResponse` of an
instance without HTTP); a `KairosError` becomes the same `{"error": ...}` answer with the same status
and `WWW-Authenticate` / `Retry-After` headers.

One connection: `LeanInferProtocol` sits inside the connection's guard (`http_limits.GuardedProtocol`:
connection count, header timeout), telling it when a request's head is complete and when its answer
is written. It applies the body timeout (408 and close) and the idle timeout of `HttpLimits` itself.
Requests are answered in order, one at a time (pipelined ones wait in the buffer; reading pauses
while the buffer holds more than a request's largest size). The first request that is not a plain
infer call hands the connection to aiohttp for good, with that request's bytes. A client that
closes its connection (or its sending side) cancels its query, as the application's handler
cancellation does.

`KAIROSD_LEAN_HTTP=0` serves every request on the application (bench/head.py measures both).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import TYPE_CHECKING

from tritonclient.grpc import service_pb2 as pb

from kairosd.backends.http_client import HttpReply, InstanceHttpError
from kairosd.config import env_switch
from kairosd.errors import KairosError, Overloaded, Unauthenticated
from kairosd.server.access import WWW_AUTHENTICATE, Authenticator
from kairosd.server.http_head import (
    InferHead,
    LeanConnection,
    error_reply,
    infer_reply,
    parse_head,
    reply_bytes,
    retry_after,
)
from kairosd.server.http_infer import header_length, http_forward, parse_header, render_body
from kairosd.server.validate import resolve_model, validate_header

if TYPE_CHECKING:
    from kairosd.server.http_limits import GuardedProtocol, HttpLimits
    from kairosd.service import InferenceService

log = logging.getLogger(__name__)

LEAN_ENV = "KAIROSD_LEAN_HTTP"
_OCTET = "application/octet-stream"


def lean_http_default() -> bool:
    """Whether the client port serves infer calls on the lean path (the default), not when
    KAIROSD_LEAN_HTTP is 0/false/no."""
    return env_switch(LEAN_ENV)


@dataclass(frozen=True, slots=True)
class LeanSettings:
    """What the lean path needs of the front end: the service, the body limit, the token check, the limits."""

    service: InferenceService
    max_body_bytes: int
    auth: Authenticator | None
    limits: HttpLimits


class _DateHeader:
    """The `Date` header line, formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._line = ""

    def line(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = f"Date: {formatdate(now, usegmt=True)}\r\n"
        return self._line


_DATE = _DateHeader()


def _error(e: KairosError) -> bytes:
    extra = _DATE.line()
    if isinstance(e, Unauthenticated):
        extra += f"WWW-Authenticate: {WWW_AUTHENTICATE}\r\n"
    elif isinstance(e, Overloaded):
        extra += f"Retry-After: {retry_after(e.retry_after_s)}\r\n"
    return error_reply(e.http_status, str(e), extra)


def _instance_reply(reply: HttpReply) -> bytes:
    """An instance's answer as it sent it (its Content-Type, Inference-Header-Content-Length and
    Content-Encoding)."""
    headers = reply.headers
    extra = _DATE.line() + "".join(f"{k}: {v}\r\n" for k, v in headers.items() if k != "Content-Type")
    return reply_bytes(reply.status, headers.get("Content-Type", _OCTET), reply.body, extra)


class LeanInferProtocol(LeanConnection):
    """One client connection (see the module's docstring); `full` makes the application's protocol
    the connection is handed to, `bind` gives it its guard."""

    def __init__(self, settings: LeanSettings, full: Callable[[], asyncio.Protocol]) -> None:
        super().__init__()
        self._settings = settings
        self._full_factory = full
        self._full: asyncio.Protocol | None = None
        self._guard: GuardedProtocol | None = None
        self._head: InferHead | None = None  # parsed, its body not all in yet
        self._body_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._last_active = 0.0
        self._write_paused = False
        self._read_paused = False

    def bind(self, guard: GuardedProtocol) -> None:
        self._guard = guard

    # ---- asyncio.Protocol (from the guard) ---------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        self._last_active = loop.time()
        self._idle_timer = loop.call_later(self._settings.limits.idle_timeout_s, self._idle_check)

    def data_received(self, data: bytes) -> None:
        if self._full is not None:
            self._full.data_received(data)
            return
        self._buf += data
        if self._serving is not None:
            s = self._settings
            if len(self._buf) > s.max_body_bytes + s.limits.max_header_bytes and self._transport is not None:
                self._read_paused = True
                self._transport.pause_reading()
            return
        self._next()

    def eof_received(self) -> bool | None:
        if self._full is not None:
            return self._full.eof_received()
        return None  # the transport closes: a client that closed its side cancels its query, as on the application

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        self._transport = None
        if self._full is not None:
            self._full.connection_lost(exc)
        elif self._serving is not None:
            self._serving.cancel()  # the client is gone: its query leaves the queue

    def pause_writing(self) -> None:
        if self._full is not None:
            self._full.pause_writing()
        self._write_paused = True

    def resume_writing(self) -> None:
        if self._full is not None:
            self._full.resume_writing()
            return
        self._write_paused = False
        if self._serving is None:
            self._next()

    # ---- requests ----------------------------------------------------------------------------------
    def _next(self) -> None:
        """Start the next buffered request: its body awaited, served, or handed to the application."""
        transport = self._transport
        if transport is None or self._write_paused or not self._buf:
            return
        head = self._head
        if head is None:
            parsed = parse_head(self._buf, self._settings.max_body_bytes, self._settings.limits.max_header_bytes)
            if parsed is None:
                return
            if parsed is False:
                self._hand_over(transport)
                return
            assert isinstance(parsed, InferHead)
            head = self._head = parsed
            if self._guard is not None:
                self._guard.request_started()
        if not head.complete(self._buf):
            if self._body_timer is None:
                self._body_timer = asyncio.get_running_loop().call_later(self._settings.limits.body_timeout_s,
                                                                         self._body_expired)
            return
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._head = None
        body = head.take_body(self._buf)
        if self._read_paused:
            self._read_paused = False
            transport.resume_reading()
        self._start(head, body)

    def _written(self) -> None:
        self._last_active = asyncio.get_running_loop().time()
        if self._guard is not None:
            self._guard.request_ended()

    async def _answer(self, head: InferHead, body: bytes) -> bytes:
        s = self._settings
        try:
            if s.auth is not None:
                s.auth.check(head.headers.get("authorization"), False, "http")
            spec = resolve_model(s.service.repository, head.model, head.version)
            headers = head.headers
            header = parse_header(body, header_length(headers.get("inference-header-content-length"), len(body)))
            batch = validate_header(header.inputs, header.outputs, spec)
            forward = http_forward(spec, head.version, header, body, lambda name: headers.get(name.lower()), None)
            try:
                result = await s.service.infer_http(forward, spec, batch, header.timeout_s)
            except InstanceHttpError as e:
                result = e.reply
        except KairosError as e:
            return _error(e)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a bug fails this request, as the application's middleware does
            log.exception("HTTP POST %s failed", f"/v2/models/{head.model}/infer")
            message = f"kairosd internal error: {type(e).__name__}: {e}"
            return error_reply(500, message, _DATE.line())
        if isinstance(result, HttpReply):
            return _instance_reply(result)
        out, out_header_len = render_body(pb.ModelInferResponse.FromString(result), spec, header.binary)
        return infer_reply(out, out_header_len, _DATE.line())

    # ---- the application takes over -----------------------------------------------------------------
    def _hand_over(self, transport: asyncio.Transport) -> None:
        """This connection and its buffered bytes go to the application, for good."""
        self._cancel_timers()
        full = self._full = self._full_factory()
        full.connection_made(transport)
        if self._write_paused:
            full.pause_writing()
        if self._read_paused:
            self._read_paused = False
            transport.resume_reading()
        data = bytes(self._buf)
        self._buf.clear()
        full.data_received(data)

    # ---- timers ------------------------------------------------------------------------------------
    def _cancel_timers(self) -> None:
        for timer in (self._body_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._body_timer = self._idle_timer = None

    def _body_expired(self) -> None:
        self._body_timer = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        timeout = self._settings.limits.body_timeout_s
        log.info("HTTP connection closed: request body not complete within %g s (server.body_timeout_s)", timeout)
        message = f"request body not received within {timeout:g} s (kairosd server.body_timeout_s)"
        transport.write(error_reply(408, message, f"{_DATE.line()}Connection: close\r\n"))
        transport.close()

    def _idle_check(self) -> None:
        """Close a connection that has been idle (no request in progress) for the idle timeout."""
        self._idle_timer = None
        transport = self._transport
        if transport is None or self._full is not None:
            return
        loop = asyncio.get_running_loop()
        idle = self._settings.limits.idle_timeout_s
        due = self._last_active + idle
        if self._serving is None and self._head is None and not self._buf and loop.time() >= due:
            transport.close()
            return
        self._idle_timer = loop.call_at(max(due, loop.time() + 0.1 * idle), self._idle_check)

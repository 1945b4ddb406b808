"""Front-end limits on the HTTP port: connections at once, header size, header / body / idle timeouts.

aiohttp enforces the size limits (`max_line_size`, `max_field_size`: 400 beyond them) and the idle
keep-alive timeout itself. What it lacks is done by wrapping each connection's protocol
(`GuardedProtocol`, made by `GuardedSite`, the TCP site the front end listens with):

- `max_connections`: a connection accepted beyond it is answered `503` with `Connection: close` and
  closed (after a short lingering read) before aiohttp sees it, so the ones already open keep being served;
- `header_timeout_s`: from the moment a connection opens, or the first byte of a following request
  arrives, the request line and headers must be complete within it, otherwise the connection is
  answered `408` (first request) or closed (a following one). A TLS handshake gets the same time
  (`ssl_handshake_timeout`), before the connection counts;
- `body_timeout_s` is applied where the front end reads a body (`http_frontend._read_body`: 408).

The wrapper learns that a request's headers are complete from the front end's outermost middleware
(`request_started` / `request_ended`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web

from kairosd.config import ServerConfig
from kairosd.server.http_head import error_reply
from kairosd.server.http_lean import LeanInferProtocol, LeanSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """The `[server]` limits the HTTP front end applies (defaults as in `ServerConfig`)."""

    max_connections: int = 4096
    max_header_bytes: int = 16384
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    idle_timeout_s: float = 75.0

    @classmethod
    def from_server(cls, s: ServerConfig) -> HttpLimits:
        return cls(-(-s.max_connections // s.workers), s.max_header_bytes, s.header_timeout_s, s.body_timeout_s, s.idle_timeout_s)

    def handler_kwargs(self) -> dict[str, Any]:
        """aiohttp RequestHandler settings: size limits (request line, each header), the idle timeout, and
        handler cancellation: a client that closes its connection cancels its request, so a query still
        queued leaves the queue and is never sent."""
        return {"keepalive_timeout": self.idle_timeout_s, "max_line_size": self.max_header_bytes,
                "max_field_size": self.max_header_bytes, "handler_cancellation": True}


class ConnectionGate:
    """Connections open on one port, at most `limit`; counts refusals and header timeouts for /metrics."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self.refused_total = 0
        self.header_timeouts_total = 0

    def try_open(self) -> bool:
        if self.open >= self.limit:
            self.refused_total += 1
            return False
        self.open += 1
        return True

    def closed(self) -> None:
        self.open -= 1


class GuardedProtocol(asyncio.Protocol):
    """One connection: counts it at the gate, times its request headers, and hands everything else
    to its inner protocol unchanged (aiohttp's RequestHandler, or the lean infer path in front of it)."""

    def __init__(self, inner: asyncio.Protocol, gate: ConnectionGate, limits: HttpLimits) -> None:
        self._inner = inner
        self._gate = gate
        self._limits = limits
        self._transport: asyncio.Transport | None = None
        self._admitted = False
        self._in_request = False
        self._requests = 0
        self._timer: asyncio.TimerHandle | None = None

    # ---- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio subclasses
        self._transport = transport
        if not self._gate.try_open():
            log.warning("HTTP connection refused: %d connections open (server.max_connections)", self._gate.open)
            transport.write(error_reply(503, f"kairosd has {self._gate.limit} connections open "
                                             "(server.max_connections); retry later or reuse a keep-alive connection",
                                        "Connection: close\r\nRetry-After: 1\r\n"))
            # lingering close: what the client sends meanwhile is read and dropped, so its request does
            # not meet a closed socket (a TCP reset that could discard the 503 before the client reads it)
            if transport.can_write_eof():
                transport.write_eof()
            self._timer = asyncio.get_running_loop().call_later(min(1.0, self._limits.header_timeout_s),
                                                                transport.close)
            return
        self._admitted = True
        self._inner.connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        if not self._in_request and self._timer is None:
            self._arm()  # the first bytes of a following request on a keep-alive connection
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._admitted:
            self._inner.eof_received()
        return None  # the transport closes (a refused connection: once the client has)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._admitted:
            self._admitted = False
            self._gate.closed()
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._admitted:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._admitted:
            self._inner.resume_writing()

    # ---- from the front end's middleware ---------------------------------------------------------
    def request_started(self) -> None:
        self._in_request = True
        self._requests += 1
        self._disarm()

    def request_ended(self) -> None:
        self._in_request = False

    # ---- header timer ----------------------------------------------------------------------------
    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._limits.header_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        transport = self._transport
        if self._in_request or transport is None or transport.is_closing():
            return
        self._gate.header_timeouts_total += 1
        log.info("HTTP connection closed: request headers not complete within %g s (server.header_timeout_s)",
                 self._limits.header_timeout_s)
        if self._requests == 0:
            transport.write(error_reply(408, f"request headers not received within {self._limits.header_timeout_s:g} s "
                                             "(kairosd server.header_timeout_s)", "Connection: close\r\n"))
        transport.close()


class GuardedSite(web.TCPSite):
    """`web.TCPSite` whose connections go through `GuardedProtocol` (aiohttp's own TCPSite.start, with
    a wrapping protocol factory and the TLS handshake timeout); with `lean`, infer calls are served by
    `kairosd.server.http_lean` and the rest by the application."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, limits: HttpLimits, gate: ConnectionGate,
                 ssl_context: Any = None, reuse_port: bool = False, lean: LeanSettings | None = None) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context, reuse_port=reuse_port)
        self._limits = limits
        self._gate = gate
        self._lean = lean

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        gate, limits, lean = self._gate, self._limits, self._lean

        def factory() -> GuardedProtocol:
            if lean is None:
                return GuardedProtocol(server(), gate, limits)
            inner = LeanInferProtocol(lean, server)
            guard = GuardedProtocol(inner, gate, limits)
            inner.bind(guard)
            return guard

        self._server = await loop.create_server(
            factory, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port,
            ssl_handshake_timeout=limits.header_timeout_s if self._ssl_context is not None else None,
        )


def guarded_protocol(request: web.BaseRequest) -> GuardedProtocol | None:
    """The wrapper of the connection `request` arrived on (None when the site does not guard)."""
    transport = request.transport
    proto = transport.get_protocol() if transport is not None else None
    return proto if isinstance(proto, GuardedProtocol) else None

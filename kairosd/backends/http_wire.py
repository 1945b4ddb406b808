"""A minimal HTTP/1.1 client for forwarding request bytes to one instance: keep-alive connections,
one request per connection at a time, the reply returned as (status, headers, body).

Why not aiohttp's client: per request it builds a request object, a header multidict, a writer task,
a stream reader and timers; forwarding needs none of it — the request is one write of known bytes and
the reply a status line, a few headers and a body of known length (chunked bodies are decoded too).
"""

from __future__ import annotations

import asyncio
from typing import Any

_CRLF2 = b"\r\n\r\n"


class HttpWireError(ConnectionError):
    """The connection failed or the instance's reply was not HTTP/1.1 we can read."""


class WireReply:
    """A complete reply: status, headers (names in lower case), body (de-chunked)."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers  # lower-case names
        self.body = body


class _Connection(asyncio.Protocol):
    """One keep-alive connection; `request` sends and waits for the whole reply."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._waiter: asyncio.Future[WireReply] | None = None
        self._head: tuple[int, dict[str, str], int] | None = None  # status, headers, body start
        self.closed = False
        self.got_bytes = False  # any reply byte arrived for the request in flight

    # ---- protocol callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        w = self._waiter
        if w is not None and not w.done():
            w.set_exception(HttpWireError(f"connection closed by the instance{f': {exc}' if exc else ''}"))

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        self._buf += data
        waiter = self._waiter
        if waiter is None:  # bytes nobody asked for: the connection's state is unknown, drop it
            self.close()
            return
        try:
            reply = self._parse()
        except HttpWireError as e:
            self.close()
            if not waiter.done():
                waiter.set_exception(e)
            return
        if reply is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(reply)

    def eof_received(self) -> bool:
        return False  # close the transport

    # ---- use
    def request(self, head: bytes, body: bytes) -> asyncio.Future[WireReply]:
        self._waiter = self._loop.create_future()
        self._head = None
        self.got_bytes = False
        assert self.transport is not None
        self.transport.writelines((head, body))
        return self._waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _parse(self) -> WireReply | None:
        buf = self._buf
        if self._head is None:
            end = buf.find(_CRLF2)
            if end < 0:
                if len(buf) > 65536:
                    raise HttpWireError("reply headers exceed 64 KiB")
                return None
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
                raise HttpWireError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep:
                    raise HttpWireError(f"malformed reply header line {line[:80]!r}")
                headers[name.strip().lower()] = value.strip()
            self._head = (int(parts[1]), headers, end + 4)
        status, headers, start = self._head
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise HttpWireError(f"reply Content-Length {length[:40]!r} is not a number")
            n = int(length)
            if len(buf) - start < n:
                return None
            body = bytes(buf[start:start + n])
            del buf[:start + n]
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            decoded = _dechunk(buf, start)
            if decoded is None:
                return None
            body, used = decoded
            del buf[:used]
        elif status in (204, 304) or 100 <= status < 200:
            body = b""
            del buf[:start]
        else:
            raise HttpWireError("reply has neither Content-Length nor chunked encoding")
        if headers.get("connection", "").lower() == "close":
            self.close()
        return WireReply(status, headers, body)


def _dechunk(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    """Decode a complete chunked body starting at `pos`: (body, end offset), or None if incomplete."""
    parts: list[bytes] = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
        except ValueError:
            raise HttpWireError("malformed chunk size in reply") from None
        if size == 0:  # the last chunk: optional trailer lines, then an empty line
            end = buf.find(_CRLF2, eol)
            return (b"".join(parts), end + 4) if end >= 0 else None
        if len(buf) < eol + 2 + size + 2:
            return None
        parts.append(bytes(buf[eol + 2:eol + 2 + size]))
        pos = eol + 2 + size + 2


def host_line(address: str) -> str:
    """The part of a request head between the request line and the length, for `host:port`."""
    return f"\r\nHost: {address}\r\nContent-Length: "


def request_head(path: str, host: str, headers: dict[str, str], length: int) -> bytes:
    """A POST request's head: request line, `host` (from `host_line`) with the body's `length`, `headers`."""
    lines = [f"POST {path} HTTP/1.1{host}{length}\r\n"]
    lines += [f"{k}: {v}\r\n" for k, v in headers.items()]
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


class HttpWirePool:
    """Keep-alive connections to one `host:port`, reused last-in first-out; unbounded (the scheduler
    bounds how many requests are in flight to an instance)."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"HTTP address {address!r} is not host:port")
        self._host = host.strip("[]")
        self._port = int(port)
        self._host_line = host_line(address)
        self._idle: list[_Connection] = []

    async def post(self, path: str, headers: dict[str, str], body: bytes, timeout_s: float | None) -> WireReply:
        """POST `body` to `path` with `headers`; the whole reply (header names in lower case).
        Raises HttpWireError (connection refused, lost or unreadable reply) or TimeoutError."""
        head = request_head(path, self._host_line, headers, len(body))
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        conn = None
        while self._idle:
            c = self._idle.pop()
            if not c.closed:
                conn = c
                break
        if conn is not None:
            try:
                return await self._exchange(loop, conn, head, body, deadline)
            except HttpWireError:
                if conn.got_bytes:
                    raise
                # the instance had closed this kept-alive connection before reading the request:
                # nothing was served; send it once more on a new connection
        conn = await self._connect(loop, deadline)
        return await self._exchange(loop, conn, head, body, deadline)

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float | None) -> _Connection:
        timeout = None if deadline is None else max(deadline - loop.time(), 0.0)
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(loop), self._host, self._port), timeout
            )
        except OSError as e:
            raise HttpWireError(f"cannot connect to {self._host}:{self._port}: {e}") from None
        return conn

    async def _exchange(
        self, loop: asyncio.AbstractEventLoop, conn: _Connection, head: bytes, body: bytes, deadline: float | None
    ) -> WireReply:
        waiter = conn.request(head, body)
        timer = None if deadline is None else loop.call_at(deadline, _expire, waiter)
        try:
            reply = await waiter
        except BaseException:
            conn.close()  # a request left half-done (error, timeout, cancelled): never reuse it
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if not conn.closed:
            self._idle.append(conn)
        return reply

    def close(self) -> None:
        for c in self._idle:
            c.close()
        self._idle.clear()


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("no reply before the deadline"))

"""The request head of a KServe v2 REST infer call, parsed for the lean HTTP paths (kairosd's client port,
`kairosd.server.http_lean`; an emulated instance, `kairosd.backends.emulated_http`), and the connection
skeleton both paths share (`LeanConnection`: one query in service at a time, answers in order).

Core rule: a lean path serves only the plain infer call, `POST /v2/models/<m>[/versions/<v>]/infer
HTTP/1.1` with a `Content-Length` body and nothing that changes how the body or the connection is read
(no Transfer-Encoding, Content-Encoding or Expect, no `Connection: close`, no compressed answer asked
for, no query string or percent-escape in the path, no header repeated). Anything else takes the full
path (aiohttp), which judges and answers it exactly as for every other request.
"""

from __future__ import annotations

import asyncio
import http
import math
import re

import rapidjson

_INFER_PATH = re.compile(r"/v2/models/([^/?#%]+)(?:/versions/([^/?#%]+))?/infer")
_CRLF2 = b"\r\n\r\n"
MAX_HEAD_BYTES = 64 * 1024  # a longer head goes to the full path, which answers it
# a request with any of these headers takes the full path
_FULL_PATH_HEADERS = frozenset({"transfer-encoding", "content-encoding", "expect"})
_COMPRESSED = frozenset({"gzip", "deflate"})
HEADER_LENGTH = "Inference-Header-Content-Length"


class InferHead:
    """A plain infer call's head: the model and version from its path, its headers (names lower-cased),
    and where its body starts in the buffer and how long it is."""

    __slots__ = ("model", "version", "headers", "start", "length")

    def __init__(self, model: str, version: str, headers: dict[str, str], start: int, length: int) -> None:
        self.model = model
        self.version = version
        self.headers = headers
        self.start = start
        self.length = length

    def complete(self, buf: bytearray) -> bool:
        """Whether `buf` holds the whole body."""
        return len(buf) - self.start >= self.length

    def take_body(self, buf: bytearray) -> bytes:
        """The body, its request's bytes removed from `buf` (`complete` must hold)."""
        end = self.start + self.length
        with memoryview(buf) as view:  # one copy of the body (a bytearray slice would be a second)
            body = bytes(view[self.start:end])
        del buf[:end]
        return body


def parse_head(buf: bytearray, max_body_bytes: int, max_head_bytes: int = MAX_HEAD_BYTES) -> InferHead | bool | None:
    """The head of the first request in `buf` if a lean path serves it (nothing removed); False when it
    takes the full path; None while the head is incomplete."""
    end = buf.find(_CRLF2)
    if end < 0:
        return False if len(buf) > max_head_bytes else None
    if end > max_head_bytes:
        return False
    lines = buf[:end].decode("latin-1").split("\r\n")  # latin-1 decodes every byte
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[0] != "POST" or parts[2] != "HTTP/1.1":
        return False
    m = _INFER_PATH.fullmatch(parts[1])
    if m is None:
        return False
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        key = name.lower()
        if not sep or not name or name != name.strip() or key in headers:  # a repeated header: aiohttp judges it
            return False
        headers[key] = value.strip()
    length = headers.get("content-length", "")
    if (not (length.isascii() and length.isdigit()) or int(length) > max_body_bytes
            or not _FULL_PATH_HEADERS.isdisjoint(headers)
            or headers.get("connection", "").lower() == "close"
            or headers.get("accept-encoding", "").strip().lower() in _COMPRESSED):
        return False
    return InferHead(m.group(1), m.group(2) or "", headers, end + 4, int(length))


def reply_bytes(status: int, content_type: str, body: bytes, extra: str = "") -> bytes:
    """A complete HTTP/1.1 response: status line, Content-Type, Content-Length, `extra` header lines
    (each ending in CRLF), the body."""
    phrase = http.HTTPStatus(status).phrase
    return (f"HTTP/1.1 {status} {phrase}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"{extra}\r\n").encode("latin-1") + body


def error_reply(status: int, message: str, extra: str = "") -> bytes:
    """An error answer as kairosd's REST front end gives it: `{"error": message}` as JSON."""
    return reply_bytes(status, "application/json", rapidjson.dumps({"error": message}).encode(), extra)


def infer_reply(body: bytes, header_len: int | None, extra: str = "") -> bytes:
    """A 200 infer answer: a JSON-only body (`header_len` None), or a JSON header of `header_len` bytes
    followed by binary tensors (application/octet-stream with Inference-Header-Content-Length)."""
    if header_len is None:
        return reply_bytes(200, "application/json", body, extra)
    return reply_bytes(200, "application/octet-stream", body, f"{extra}{HEADER_LENGTH}: {header_len}\r\n")


def retry_after(seconds: float) -> int:
    """`Retry-After` in whole seconds: the ceiling, at least 1 (e.g. 0.2 → 1, 2.1 → 3)."""
    return max(1, math.ceil(seconds)) if math.isfinite(seconds) else 1


class LeanConnection(asyncio.Protocol):
    """What both lean paths' connections share: the bytes received (`_buf`), the query in service
    (`_serving`, one at a time), and answering it: the answer written, then the next buffered request.
    A subclass parses and starts requests (`_next`) and answers one (`_answer`); `_written` runs after
    an answer is written, `_settled` after the next request (if any) was started."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._serving: asyncio.Task[None] | None = None

    def _next(self) -> None:
        raise NotImplementedError

    async def _answer(self, head: InferHead, body: bytes) -> bytes:
        raise NotImplementedError

    def _written(self) -> None:
        """After an answer is written."""

    def _settled(self, transport: asyncio.Transport) -> None:
        """After an answer is written and the next buffered request started."""

    def _start(self, head: InferHead, body: bytes) -> None:
        self._serving = asyncio.get_running_loop().create_task(self._serve(head, body))

    async def _serve(self, head: InferHead, body: bytes) -> None:
        try:
            reply = await self._answer(head, body)
        except asyncio.CancelledError:
            return
        finally:
            self._serving = None
        transport = self._transport
        if transport is None:
            return
        transport.write(reply)
        self._written()
        if transport.is_closing():
            return
        if self._buf:
            self._next()
        self._settled(transport)

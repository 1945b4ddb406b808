"""An emulated instance's HTTP endpoint: infer requests on a lean asyncio protocol, every other request on
the KServe v2 REST application (`kairosd.server.http_frontend`).

Why: per request, aiohttp builds a request object, routes it, runs the middlewares and a stream writer;
in the emulated host that machinery is most of the CPU a query costs, CPU that a real instance's server
spends inside its profiled latency and the emulation spends on top of it, on every query's way and on
the cores the head needs. The lean path does what an infer request needs: find the head's end, read
the body by its Content-Length, parse and check the JSON header as the REST front end does, take the
instance's slot for the drawn service time, and write the answer (rendered once per model, batch,
outputs and binary choice; the id and the emulation's parameters spliced in).

A connection starts on the lean path. Its first request that is anything else (another method or path,
HTTP/1.0, a chunked or compressed body, `Expect`, `Connection: close`, a compressed answer asked for,
a body over the limit, a head the parser does not take) hands the connection to aiohttp for good,
with that request's bytes: every endpoint and error answers as the REST front end's. Requests on one
connection are answered in order, one at a time (HTTP/1.1 pipelining waits in the buffer).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import rapidjson
from tritonclient.grpc import service_pb2 as pb

from kairosd.config import env_switch
from kairosd.errors import KairosError
from kairosd.server.http_head import InferHead, LeanConnection, error_reply, infer_reply, parse_head
from kairosd.server.http_infer import header_length, parse_header, render_body
from kairosd.server.validate import resolve_model, validate_header

if TYPE_CHECKING:
    from kairosd.backends.emulated import EmulatedInstance
    from kairosd.repository import ModelSpec

log = logging.getLogger(__name__)

LEAN_ENV = "KAIROSD_EMULATED_LEAN_HTTP"


def lean_http_default() -> bool:
    """Whether emulated instances serve infer requests on the lean path (the default), not when
    KAIROSD_EMULATED_LEAN_HTTP is 0/false/no (then aiohttp serves every request: bench/emulated_http.py
    measures both)."""
    return env_switch(LEAN_ENV)

class Answers:
    """Rendered answers of one instance: per (model, batch, outputs, binary choice), the JSON header
    without its closing brace and the binary tensors after it."""

    def __init__(self) -> None:
        self._cache: dict[tuple[object, ...], tuple[bytes, bytes]] = {}

    def body(self, spec: ModelSpec, batch: int, names: tuple[str, ...], binary: dict[str, bool] | bool,
             pb_body: bytes, tail: bytes) -> tuple[bytes, int | None]:
        """The answer's body and header length (None: JSON only) for the response `pb_body` (zeros, no id)
        with `tail` (`"id": ..., "parameters": {...}` as JSON members) added to its header."""
        key = (spec.name, batch, names, binary if isinstance(binary, bool) else tuple(sorted(binary.items())))
        cached = self._cache.get(key)
        if cached is None:
            rendered, header_len = render_body(pb.ModelInferResponse.FromString(pb_body), spec, binary)
            header = rendered if header_len is None else rendered[:header_len]
            cached = self._cache[key] = (header[:-1], rendered[len(header):])  # header ends with "}"
        head, blobs = cached
        header = b"".join((head, b",", tail, b"}"))
        return (header + blobs, len(header)) if blobs else (header, None)


class LeanHttpProtocol(LeanConnection):
    """One connection of an emulated instance's HTTP endpoint (see the module's docstring)."""

    def __init__(self, instance: EmulatedInstance, answers: Answers, full: Callable[[], asyncio.BaseProtocol],
                 max_body_bytes: int, open_connections: set[LeanHttpProtocol]) -> None:
        super().__init__()
        self._instance = instance
        self._answers = answers
        self._full = full
        self._max_body = max_body_bytes
        self._open = open_connections
        self._eof = False  # the client half-closed: close once the query in service is answered

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._open.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._open.discard(self)
        self._transport = None
        if self._serving is not None:
            self._serving.cancel()  # the client is gone: its query leaves the slot or the queue

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._serving is None:
            self._next()

    def eof_received(self) -> bool:
        self._eof = True
        return self._serving is not None  # half-closed with a query in service: answer it, then close

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _next(self) -> None:
        transport = self._transport
        if transport is None or not self._buf:
            return
        head = parse_head(self._buf, self._max_body)
        if head is False:
            self._hand_over(transport)
            return
        if not isinstance(head, InferHead) or not head.complete(self._buf):
            return
        body = head.take_body(self._buf)
        self._start(head, body)

    def _hand_over(self, transport: asyncio.Transport) -> None:
        """This connection and its buffered bytes go to the REST application."""
        self._open.discard(self)
        self._transport = None
        protocol = self._full()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self._buf:
            assert isinstance(protocol, asyncio.Protocol)
            protocol.data_received(bytes(self._buf))
            self._buf.clear()

    def _settled(self, transport: asyncio.Transport) -> None:
        if self._serving is None and self._eof:
            transport.close()

    async def _answer(self, head: InferHead, body: bytes) -> bytes:
        arrived_ns = time.monotonic_ns()
        instance = self._instance
        try:
            spec = resolve_model(instance.repository, head.model, head.version)
            header = parse_header(body, header_length(head.headers.get("inference-header-content-length"),
                                                      len(body)))
            batch = validate_header(header.inputs, header.outputs, spec)
            names = tuple(dict.fromkeys(header.outputs))
            pb_body, service_s = await instance.serve_query(spec, batch, names)
        except KairosError as e:
            return error_reply(e.http_status, str(e))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a bug fails this request, as the REST front end's
            log.exception("HTTP POST infer for model %r failed", head.model)
            message = f"kairosd internal error: {type(e).__name__}: {e}"
            return error_reply(500, message)
        members: dict[str, object] = {}
        rid = header.doc.get("id")
        if rid:
            members["id"] = rid
        members["parameters"] = instance.answer_parameters(service_s, arrived_ns, time.monotonic_ns())
        tail = rapidjson.dumps(members).encode()[1:-1]
        out, header_len = self._answers.body(spec, batch, names, header.binary, pb_body, tail)
        return infer_reply(out, header_len)


async def start_lean_http_server(instance: EmulatedInstance, host: str, port: int, max_body_bytes: int,
                                 full: Callable[[], asyncio.BaseProtocol]) -> LeanHttpServer:
    """Listen on `host:port`: infer requests on the lean path, the rest handed to `full` (a protocol
    factory: an aiohttp runner's `server`)."""
    open_connections: set[LeanHttpProtocol] = set()
    answers = Answers()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: LeanHttpProtocol(instance, answers, full, max_body_bytes, open_connections), host, port,
        reuse_address=True,
    )
    return LeanHttpServer(server, open_connections)


class LeanHttpServer:
    """The listening socket and the connections still on the lean path."""

    def __init__(self, server: asyncio.Server, connections: set[LeanHttpProtocol]) -> None:
        self.server = server
        self._connections = connections

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening and close the lean connections (those handed over close with the application)."""
        self.server.close()
        for conn in list(self._connections):
            conn.close()
        await self.server.wait_closed()

"""The forwarding HTTP/1.1 client against a real aiohttp server on a real socket: keep-alive reuse,
chunked and Connection: close replies, a kept-alive connection the server closed, refusal, deadline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from kairosd.backends.http_wire import HttpWireError, HttpWirePool
from kairosd.backends.process import free_port


class Server:
    def __init__(self) -> None:
        self.peers: set[object] = set()  # distinct client connections seen
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.runner: web.AppRunner | None = None
        self.address = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.peers.add(request.transport)
        self.requests.append((request.path, dict(request.headers), body))
        mode = request.match_info["mode"]
        if mode == "echo":
            return web.Response(body=body[::-1], headers={"Inference-Header-Content-Length": "3"})
        if mode == "chunked":
            resp = web.StreamResponse(status=201)
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for part in (b"ab", b"", b"cde" * 1000):
                if part:
                    await resp.write(part)
            await resp.write_eof()
            return resp
        if mode == "close":
            return web.Response(body=b"bye", status=400, headers={"Connection": "close"})
        if mode == "slow":
            await asyncio.sleep(2)
            return web.Response(body=b"late")
        if mode == "hangup":  # close this connection after the reply is sent
            assert request.transport is not None
            asyncio.get_running_loop().call_later(0.05, request.transport.close)
            return web.Response(body=b"ok")
        raise web.HTTPNotFound()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{mode}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.address = f"127.0.0.1:{port}"


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    s = Server()
    await s.start()
    yield s
    assert s.runner is not None
    await s.runner.cleanup()


async def test_keep_alive_reuses_one_connection_and_sends_the_bytes_as_given(server: Server) -> None:
    pool = HttpWirePool(server.address)
    for i in range(3):
        r = await pool.post("/echo", {"Content-Type": "application/json", "X-N": str(i)}, b"0123456789", 5.0)
        assert (r.status, r.body) == (200, b"9876543210")
        assert r.headers["inference-header-content-length"] == "3"
    assert len(server.peers) == 1
    path, headers, body = server.requests[-1]
    assert (path, body, headers["X-N"], headers["Content-Type"]) == ("/echo", b"0123456789", "2", "application/json")
    pool.close()


async def test_chunked_and_connection_close_replies(server: Server) -> None:
    pool = HttpWirePool(server.address)
    r = await pool.post("/chunked", {}, b"", 5.0)
    assert (r.status, r.body) == (201, b"ab" + b"cde" * 1000)
    r = await pool.post("/close", {}, b"x", 5.0)
    assert (r.status, r.body) == (400, b"bye")
    r = await pool.post("/echo", {}, b"12", 5.0)  # a new connection: the old one was closed
    assert r.body == b"21" and len(server.peers) == 2
    pool.close()


async def test_a_kept_alive_connection_closed_by_the_server_is_replaced(server: Server) -> None:
    pool = HttpWirePool(server.address)
    assert (await pool.post("/hangup", {}, b"", 5.0)).body == b"ok"
    await asyncio.sleep(0.2)  # the server has closed the idle connection
    assert (await pool.post("/echo", {}, b"ab", 5.0)).body == b"ba"
    assert len(server.peers) == 2
    pool.close()


async def test_refused_connection_and_deadline() -> None:
    with pytest.raises(HttpWireError, match="cannot connect"):
        await HttpWirePool(f"127.0.0.1:{free_port()}").post("/echo", {}, b"", 5.0)
    s = Server()
    await s.start()
    try:
        pool = HttpWirePool(s.address)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(TimeoutError):
            await pool.post("/slow", {}, b"", 0.2)
        assert loop.time() - t0 < 1.0
        assert (await pool.post("/echo", {}, b"ok", 5.0)).body == b"ko"  # a fresh connection works
        pool.close()
    finally:
        assert s.runner is not None
        await s.runner.cleanup()

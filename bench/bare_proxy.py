"""The reference floor for a Python proxy: a minimal grpc.aio or aiohttp forwarder, bytes in, bytes out.

    python bench/bare_proxy.py grpc --listen 127.0.0.1:9001 --backend 127.0.0.1:8001
    python bench/bare_proxy.py http --listen 127.0.0.1:9000 --backend 127.0.0.1:8000

gRPC: every method of inference.GRPCInferenceService is forwarded with identity (de)serializers, so
nothing is parsed. HTTP: the body and the headers that matter are forwarded with one aiohttp client
session (Accept-Encoding: identity upstream, so the backend does not compress).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import grpc
import uvloop
from aiohttp import ClientSession, TCPConnector, web


async def serve_grpc(listen: str, backend: str) -> None:
    opts = [("grpc.max_send_message_length", 1 << 30), ("grpc.max_receive_message_length", 1 << 30)]
    channel = grpc.aio.insecure_channel(backend, options=opts)
    stubs: dict[str, Any] = {}

    class Forward(grpc.GenericRpcHandler):
        def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
            method = details.method
            stub = stubs.get(method)
            if stub is None:
                stub = stubs[method] = channel.unary_unary(method)  # identity (de)serializers

            async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
                return await stub(request)

            return grpc.unary_unary_rpc_method_handler(handler)

    server = grpc.aio.server(options=opts + [("grpc.server.max_pending_requests", 100_000),
                                             ("grpc.server.max_pending_requests_hard_limit", 100_000)])
    server.add_generic_rpc_handlers((Forward(),))
    server.add_insecure_port(listen)
    await server.start()
    print(f"bare grpc proxy {listen} -> {backend}", flush=True)
    await server.wait_for_termination()


async def serve_http(listen: str, backend: str) -> None:
    session = ClientSession(connector=TCPConnector(limit=0), auto_decompress=False)
    forward_headers = ("Content-Type", "Inference-Header-Content-Length")

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {h: request.headers[h] for h in forward_headers if h in request.headers}
        headers["Accept-Encoding"] = "identity"
        async with session.request(request.method, f"http://{backend}{request.path_qs}", data=body, headers=headers) as r:
            data = await r.read()
            out = {h: r.headers[h] for h in forward_headers if h in r.headers}
            return web.Response(body=data, status=r.status, headers=out)

    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = listen.rsplit(":", 1)
    await web.TCPSite(runner, host, int(port)).start()
    print(f"bare http proxy {listen} -> {backend}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("protocol", choices=["grpc", "http"])
    p.add_argument("--listen", required=True)
    p.add_argument("--backend", required=True)
    a = p.parse_args()
    uvloop.run(serve_grpc(a.listen, a.backend) if a.protocol == "grpc" else serve_http(a.listen, a.backend))


if __name__ == "__main__":
    main()

"""Front-end limits on a real `kairosd serve` (an emulated fleet): a slow-loris client (headers or body
trickled) is cut off while other clients are served, oversize headers and metadata are refused,
connections beyond max_connections are refused on both ports, idle keep-alive connections close,
gRPC streams beyond max_concurrent_streams on one connection behave as grpc core makes them, and the
KServe `timeout` parameter bounds a gRPC query. Plus the HTTP mapping of Overloaded (429, Retry-After)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from aiohttp import ClientSession, web
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from kairosd.errors import Overloaded
from kairosd.modelgen import example_inputs
from kairosd.server.http_frontend import error_middleware
from tests.integration.daemon_harness import RunningDaemon, start_daemon
from tests.integration.test_access import emulated_config, http_inputs

HEADER_TIMEOUT_S = 0.5
BODY_TIMEOUT_S = 0.5
IDLE_TIMEOUT_S = 1.0
MAX_CONNECTIONS = 8
MAX_STREAMS = 4
MAX_HEADER_BYTES = 2048
LIMITS = f"""
header_timeout_s = {HEADER_TIMEOUT_S}
body_timeout_s = {BODY_TIMEOUT_S}
idle_timeout_s = {IDLE_TIMEOUT_S}
max_connections = {MAX_CONNECTIONS}
max_header_bytes = {MAX_HEADER_BYTES}
max_concurrent_streams = {MAX_STREAMS}
"""
LOCAL_POOL = [("grpc.use_local_subchannel_pool", 1)]  # a connection per channel


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    config = tmp_path_factory.mktemp("limits") / "kairosd.toml"
    ports = emulated_config(config, LIMITS)
    d = start_daemon(config, ports, timeout_s=60)
    yield d
    assert d.stop() == 0, d.child.log_tail()


def connect(d: RunningDaemon) -> socket.socket:
    host, port = d.http_url.split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def grpc_inputs(batch: int) -> list[grpcclient.InferInput]:
    out = []
    for name, arr in example_inputs("dlrm", batch, seed=0).items():
        t = grpcclient.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        t.set_data_from_numpy(arr)
        out.append(t)
    return out


class Trickle(threading.Thread):
    """Sends `data` one byte every 0.1 s on a raw connection, then records what the server answered."""

    def __init__(self, d: RunningDaemon, data: bytes) -> None:
        super().__init__(daemon=True)
        self.sock = connect(d)
        self.data = data
        self.reply = b""
        self.elapsed_s = 0.0

    def run(self) -> None:
        t0 = time.monotonic()
        try:
            for i in range(len(self.data)):
                self.sock.sendall(self.data[i:i + 1])
                time.sleep(0.1)
        except OSError:
            pass  # the server closed the connection: what is expected
        try:
            self.reply = read_all(self.sock)
        except OSError:
            pass
        self.elapsed_s = time.monotonic() - t0
        self.sock.close()


@pytest.mark.parametrize("request_bytes, expect", [
    (b"GET /v2/health/live HTTP/1.1\r\nHost: kairosd\r\nX-Slow: " + b"z" * 100, b"HTTP/1.1 408"),
    (b"POST /v2/models/dlrm/infer HTTP/1.1\r\nHost: kairosd\r\nContent-Type: application/json\r\n"
     b"Content-Length: 500\r\n\r\n{\"inputs\": [" + b" " * 200, b"HTTP/1.1 408"),
], ids=["headers", "body"])
def test_slow_loris_is_cut_off_while_others_are_served(daemon: RunningDaemon, request_bytes: bytes,
                                                       expect: bytes) -> None:
    slow = Trickle(daemon, request_bytes)
    slow.start()
    client = httpclient.InferenceServerClient(daemon.http_url)
    served = 0
    while slow.is_alive() and served < 50:
        assert client.infer("dlrm", http_inputs()).as_numpy("click_probability").shape == (4, 1)
        served += 1
    client.close()
    slow.join(10)
    assert not slow.is_alive()
    assert slow.reply.startswith(expect), slow.reply[:200]
    assert b"timeout_s" in slow.reply  # names the setting
    # cut off after the timeout (0.5 s) plus scheduling slack, long before the trickle would have ended
    assert HEADER_TIMEOUT_S <= slow.elapsed_s < 3.0, slow.elapsed_s
    assert served >= 1


def test_silent_connection_is_closed_after_the_header_timeout(daemon: RunningDaemon) -> None:
    t0 = time.monotonic()  # before connecting: the server's timer starts when it accepts the connection
    sock = connect(daemon)
    reply = read_all(sock)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 408") and HEADER_TIMEOUT_S <= time.monotonic() - t0 < 3.0


def test_idle_keep_alive_connection_is_closed(daemon: RunningDaemon) -> None:
    sock = connect(daemon)
    sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: kairosd\r\n\r\n")
    first = sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 200")
    t0 = time.monotonic()
    assert read_all(sock) == b""  # closed by the server, nothing more sent
    sock.close()
    assert IDLE_TIMEOUT_S * 0.9 <= time.monotonic() - t0 < IDLE_TIMEOUT_S + 3.0


def test_oversize_header_is_refused(daemon: RunningDaemon) -> None:
    for big in (b"X-Big: " + b"a" * (MAX_HEADER_BYTES + 1) + b"\r\n",
                b""):  # and a request line over the limit
        line = b"GET /v2/health/live HTTP/1.1" if big else b"GET /v2/health/live?" + b"q" * MAX_HEADER_BYTES + b" HTTP/1.1"
        sock = connect(daemon)
        sock.sendall(line + b"\r\nHost: kairosd\r\n" + big + b"\r\n")
        reply = read_all(sock)  # answered, then closed
        sock.close()
        status = reply.split(b"\r\n", 1)[0]  # aiohttp answers its parser's errors as HTTP/1.0
        assert status in (b"HTTP/1.0 400 Bad Request", b"HTTP/1.1 400 Bad Request"), reply[:200]
        assert b"Got more than 2048 bytes" in reply
    # just under the limit is fine, and the server serves the next client
    sock = connect(daemon)
    sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: kairosd\r\nConnection: close\r\nX-Big: "
                 + b"a" * (MAX_HEADER_BYTES - 100) + b"\r\n\r\n")
    assert read_all(sock).startswith(b"HTTP/1.1 200")
    sock.close()


def test_oversize_grpc_metadata_is_refused(daemon: RunningDaemon) -> None:
    client = grpcclient.InferenceServerClient(daemon.grpc_url, channel_args=LOCAL_POOL)
    with pytest.raises(InferenceServerException) as err:
        client.is_server_live(headers={"x-big": "a" * (MAX_HEADER_BYTES + 1)}, client_timeout=10)
    assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED", err.value
    assert client.is_server_live(headers={"x-small": "a" * 100})
    client.close()


def test_http_connections_beyond_max_connections_are_refused(daemon: RunningDaemon) -> None:
    held: list[socket.socket] = []
    refused = b""
    try:
        for _ in range(MAX_CONNECTIONS + 2):
            sock = connect(daemon)
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: kairosd\r\n\r\n")
            reply = sock.recv(65536)
            if not reply.startswith(b"HTTP/1.1 200"):
                refused = reply + read_all(sock)
                sock.close()
                break
            held.append(sock)
        # every open connection counts, so at most MAX_CONNECTIONS of these were served
        assert 1 <= len(held) <= MAX_CONNECTIONS
        assert refused.startswith(b"HTTP/1.1 503") and b"server.max_connections" in refused, refused[:300]
        deadline = time.monotonic() + 2  # another front-end process's count arrives within moments
        while daemon.metric_values("kairos_http_connections_refused_total")[""] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert daemon.metric_values("kairos_http_connections_refused_total")[""] >= 1
    finally:
        for sock in held:
            sock.close()
    # once they close, new clients are served again
    deadline = time.monotonic() + 5
    client = httpclient.InferenceServerClient(daemon.http_url)
    while True:
        try:
            assert client.is_server_live()
            break
        except Exception:  # noqa: BLE001 - closing is seen by the server a moment later
            assert time.monotonic() < deadline
            time.sleep(0.05)
    client.close()


def test_grpc_connections_beyond_max_connections_are_refused(daemon: RunningDaemon) -> None:
    held: list[grpcclient.InferenceServerClient] = []
    failure: InferenceServerException | None = None
    try:
        for _ in range(MAX_CONNECTIONS + 2):
            client = grpcclient.InferenceServerClient(daemon.grpc_url, channel_args=LOCAL_POOL)
            try:
                client.is_server_live(client_timeout=5)
            except InferenceServerException as e:
                failure = e
                client.close()
                break
            held.append(client)
        assert 1 <= len(held) <= MAX_CONNECTIONS and failure is not None
        assert failure.status() in ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED"), failure
    finally:
        for c in held:
            c.close()
    deadline = time.monotonic() + 10
    while True:
        client = grpcclient.InferenceServerClient(daemon.grpc_url, channel_args=LOCAL_POOL)
        try:
            assert client.is_server_live(client_timeout=2)
            break
        except InferenceServerException:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        finally:
            client.close()


def test_grpc_streams_beyond_max_concurrent_streams(daemon: RunningDaemon) -> None:
    """grpc core advertises SETTINGS_MAX_CONCURRENT_STREAMS and refuses (RST_STREAM REFUSED_STREAM) the
    streams a connection opens beyond it; tritonclient reports UNAVAILABLE for those, and the grpc
    client does not retry them. Nothing hangs, at least the limit's worth are served, and another
    connection is not affected."""
    n = 5 * MAX_STREAMS
    inputs = {name: arr for name, arr in example_inputs("dlrm", 200, seed=0).items()}  # ~55 ms emulated

    async def burst() -> tuple[list[object], bool]:
        crowded = grpcaio.InferenceServerClient(daemon.grpc_url, channel_args=LOCAL_POOL)
        other = grpcaio.InferenceServerClient(daemon.grpc_url, channel_args=LOCAL_POOL)
        try:
            calls = [crowded.infer("dlrm", _aio_inputs(inputs), client_timeout=30) for _ in range(n)]
            results = await asyncio.gather(*calls, other.is_server_live(), return_exceptions=True)
        finally:
            await crowded.close()
            await other.close()
        return list(results[:n]), results[n] is True

    results, other_served = asyncio.run(burst())
    assert other_served
    ok = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, InferenceServerException)]
    assert len(ok) + len(refused) == n  # every call ended, with a result or an explicit status
    assert len(ok) >= MAX_STREAMS
    for r in refused:
        assert r.status() == "StatusCode.UNAVAILABLE" and "RST_STREAM" in r.message(), r


def _aio_inputs(inputs: dict[str, object]) -> list[grpcaio.InferInput]:
    out = []
    for name, arr in inputs.items():
        t = grpcaio.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))  # type: ignore[attr-defined]
        t.set_data_from_numpy(arr)
        out.append(t)
    return out


def test_kserve_timeout_parameter_bounds_a_grpc_query(daemon: RunningDaemon) -> None:
    """`timeout` (µs, as Triton reads it) is the query's deadline when it is shorter than the gRPC one."""
    client = grpcclient.InferenceServerClient(daemon.grpc_url)
    assert client.infer("dlrm", grpc_inputs(200), client_timeout=30).as_numpy("click_probability").shape == (200, 1)
    t0 = time.monotonic()
    with pytest.raises(InferenceServerException) as err:
        client.infer("dlrm", grpc_inputs(200), timeout=2000, client_timeout=30)  # 2 ms < ~55 ms of service
    assert time.monotonic() - t0 < 5.0
    assert err.value.status() in ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED"), err.value
    client.close()
    raw = grpc.insecure_channel(daemon.grpc_url)
    infer = raw.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                            request_serializer=pb.ModelInferRequest.SerializeToString,
                            response_deserializer=pb.ModelInferResponse.FromString)
    request = pb.ModelInferRequest(model_name="dlrm")
    request.parameters["timeout"].string_param = "soon"
    with pytest.raises(grpc.RpcError) as rpc:
        infer(request, timeout=10)
    assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "timeout" in (rpc.value.details() or "")
    raw.close()


# ---- Overloaded on HTTP ----------------------------------------------------------------------------


@pytest.mark.parametrize("retry_after_s, header", [(0.2, "1"), (2.1, "3"), (5.0, "5")])
def test_overloaded_is_429_with_retry_after(retry_after_s: float, header: str) -> None:
    """The front end's error middleware on a real aiohttp server, behind a handler refusing as admission does."""
    async def run() -> tuple[int, str | None, str]:
        async def refuse(request: web.Request) -> web.Response:
            raise Overloaded("the queue ahead cannot be served within the QoS target; retry later", retry_after_s)

        app = web.Application(middlewares=[error_middleware])
        app.router.add_post("/v2/models/dlrm/infer", refuse)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        try:
            async with ClientSession() as s, s.post(f"http://127.0.0.1:{port}/v2/models/dlrm/infer", data=b"{}") as r:
                return r.status, r.headers.get("Retry-After"), (await r.json())["error"]
        finally:
            await runner.cleanup()

    status, retry_after, message = asyncio.run(run())
    assert status == 429 and retry_after == header and "retry later" in message

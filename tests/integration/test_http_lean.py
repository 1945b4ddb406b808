"""The lean infer path of kairosd's REST client port (`kairosd.server.http_lean`) on a real `kairosd serve`
with one emulated instance, over raw sockets: it answers as the application path does (the same request
with a query string is handed to aiohttp), pipelined requests are answered in order and a request that is
not a plain infer call hands the connection over mid-way, and an idle connection is closed."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import numpy as np
import pytest
from tritonclient.utils import np_to_triton_dtype

from kairosd.modelgen import example_inputs
from tests.integration.daemon_harness import RunningDaemon, start_daemon
from tests.integration.test_access import emulated_config

IDLE_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    config = tmp_path_factory.mktemp("lean") / "kairosd.toml"
    ports = emulated_config(config, f"idle_timeout_s = {IDLE_TIMEOUT_S}\n")
    d = start_daemon(config, ports, timeout_s=60)
    yield d
    assert d.stop() == 0, d.child.log_tail()


def infer_bytes(batch: int, path: str = "/v2/models/dlrm/infer", header: bytes | None = None) -> bytes:
    """A KServe v2 REST infer request for dlrm at `batch`: JSON header + binary tensors, binary outputs
    (or `header` as the whole JSON body)."""
    inputs = example_inputs("dlrm", batch, seed=batch)
    if header is None:
        doc = {"inputs": [{"name": n, "datatype": np_to_triton_dtype(a.dtype), "shape": list(a.shape),
                           "parameters": {"binary_data_size": a.nbytes}} for n, a in inputs.items()],
               "parameters": {"binary_data_output": True}}
        head = json.dumps(doc).encode()
        body = head + b"".join(a.tobytes() for a in inputs.values())
        extra = f"Inference-Header-Content-Length: {len(head)}\r\nContent-Type: application/octet-stream\r\n"
    else:
        body, extra = header, "Content-Type: application/json\r\n"
    return (f"POST {path} HTTP/1.1\r\nHost: kairosd\r\nContent-Length: {len(body)}\r\n{extra}\r\n").encode() + body


class Replies:
    """HTTP/1.1 answers read off one socket in order (Content-Length bodies)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed with {len(self.buf)} bytes unread")
        self.buf += chunk

    def next(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        n = int(headers["content-length"])
        while len(self.buf) < n:
            self._fill()
        body, self.buf = self.buf[:n], self.buf[n:]
        return int(lines[0].split(" ")[1]), headers, body


def connect(d: RunningDaemon) -> socket.socket:
    host, port = d.http_url.split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def ask(d: RunningDaemon, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with connect(d) as sock:
        sock.sendall(request)
        return Replies(sock).next()


def outputs(headers: dict[str, str], body: bytes) -> list[tuple[str, str, list[int], bytes]]:
    """(name, datatype, shape, bytes) per output of a binary-output infer answer."""
    n = int(headers["inference-header-content-length"])
    doc = json.loads(body[:n])
    out, at = [], n
    for o in doc["outputs"]:
        size = o["parameters"]["binary_data_size"]
        out.append((o["name"], o["datatype"], o["shape"], body[at:at + size]))
        at += size
    assert at == len(body)
    return out


def test_lean_path_answers_as_the_application_path(daemon: RunningDaemon) -> None:
    # a query string takes the request to aiohttp's route for the same endpoint
    lean = ask(daemon, infer_bytes(3))
    app = ask(daemon, infer_bytes(3, "/v2/models/dlrm/infer?via=app"))
    for status, headers, body in (lean, app):
        assert status == 200, body[:300]
        assert headers["content-type"] == "application/octet-stream"
        assert "date" in headers
        got = outputs(headers, body)
        assert [(n, t, s) for n, t, s, _ in got] == [("click_probability", "FP32", [3, 1])]
        assert np.frombuffer(got[0][3], dtype="<f4").shape == (3,)
    assert outputs(lean[1], lean[2]) == outputs(app[1], app[2])
    assert "server" not in lean[1] and "aiohttp" in app[1]["server"]  # each path served its own
    # errors: the same status and message on both paths
    cases = [("/v2/models/nope/infer", None), ("/v2/models/dlrm/versions/7/infer", None),
             ("/v2/models/dlrm/infer", b'{"inputs": [{"name": "dense", "datatype": "FP32"'),
             ("/v2/models/dlrm/infer", b'{"inputs": [{"name": "nope", "datatype": "FP32", "shape": [1], '
                                       b'"data": [1.0]}]}')]
    for path, header in cases:
        lean_err = ask(daemon, infer_bytes(2, path, header))
        app_err = ask(daemon, infer_bytes(2, path + "?via=app", header))
        assert lean_err[0] == app_err[0] and lean_err[0] >= 400, (path, lean_err, app_err)
        assert lean_err[1]["content-type"].startswith("application/json")
        assert json.loads(lean_err[2]) == json.loads(app_err[2]), path


def test_pipelined_requests_in_order_then_handed_over(daemon: RunningDaemon) -> None:
    with connect(daemon) as sock:
        sock.sendall(infer_bytes(1) + infer_bytes(2) + infer_bytes(3)
                     + b"GET /v2/health/ready HTTP/1.1\r\nHost: kairosd\r\n\r\n" + infer_bytes(5))
        replies = Replies(sock)
        for batch in (1, 2, 3):
            status, headers, body = replies.next()
            assert status == 200 and outputs(headers, body)[0][2] == [batch, 1]
        status, _, body = replies.next()  # the application answers the health check ...
        assert status == 200 and json.loads(body) == {"ready": True}
        status, headers, body = replies.next()  # ... and every request after it on this connection
        assert status == 200 and outputs(headers, body)[0][2] == [5, 1]


def test_idle_lean_connection_is_closed(daemon: RunningDaemon) -> None:
    with connect(daemon) as sock:
        sock.sendall(infer_bytes(2))
        assert Replies(sock).next()[0] == 200
        t0 = time.monotonic()
        assert sock.recv(65536) == b""  # closed by the server, nothing more sent
        assert IDLE_TIMEOUT_S * 0.9 <= time.monotonic() - t0 < IDLE_TIMEOUT_S + 3.0


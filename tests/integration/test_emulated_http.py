"""An emulated instance's HTTP endpoint on real sockets: infer requests on the lean path answer as the REST
front end does (JSON and binary outputs, the id, the emulation's parameters, typed errors), a request the
lean path does not take hands the connection to the REST application with its bytes, pipelined
requests are answered in order, and a client that leaves frees its slot."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import np_to_triton_dtype

from kairosd.backends.emulated import (
    ARRIVED_PARAM,
    DONE_PARAM,
    MAX_MESSAGE_BYTES,
    SERVER_NAME,
    SERVICE_PARAM,
    TYPE_PARAM,
    EmulatedInstance,
)
from kairosd.backends.emulated_http import LEAN_ENV, lean_http_default, start_lean_http_server
from kairosd.emulation import load_cells
from kairosd.modelgen import example_inputs
from kairosd.repository import load_repository
from kairosd.server.http_frontend import http_runner
from tests.integration.daemon_harness import REPO

TYPE = "g4dn.xlarge"


@dataclass
class Served:
    instance: EmulatedInstance
    port: int


@asynccontextmanager
async def emulated(slots: int = 1) -> AsyncIterator[Served]:
    specs = {n: s for n, s in load_repository(str(REPO / "model_repository")).items() if n == "ncf"}
    instance = EmulatedInstance(specs, load_cells(TYPE, "kairos", {"ncf": "ncf"}), TYPE, slots=slots, seed=1)
    runner = await http_runner(instance, MAX_MESSAGE_BYTES, SERVER_NAME)
    assert runner.server is not None
    server = await start_lean_http_server(instance, "127.0.0.1", 0, MAX_MESSAGE_BYTES, runner.server)
    try:
        yield Served(instance, server.port)
    finally:
        await server.close()
        await runner.cleanup()
        instance.close()


def infer_body(batch: int, rid: str = "", binary_out: bool = False) -> tuple[bytes, dict[str, str]]:
    """A KServe v2 REST infer request for ncf: JSON inputs; the output as JSON or binary data."""
    doc: dict[str, object] = {
        "inputs": [{"name": n, "datatype": np_to_triton_dtype(a.dtype), "shape": list(a.shape),
                    "data": a.flatten().tolist()} for n, a in example_inputs("ncf", batch, seed=0).items()],
        "outputs": [{"name": "score", "parameters": {"binary_data": binary_out}}],
    }
    if rid:
        doc["id"] = rid
    return json.dumps(doc).encode(), {"Content-Type": "application/json"}


def request_bytes(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
                  version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {path} {version}", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    return status, headers, body


def check_answer(doc: dict, batch: int, rid: str) -> None:
    assert doc["model_name"] == "ncf" and doc["model_version"] == "1"
    assert doc.get("id", "") == rid
    [out] = doc["outputs"]
    assert out["name"] == "score" and out["datatype"] == "FP32" and out["shape"] == [batch, 1]
    params = doc["parameters"]
    assert params[TYPE_PARAM] == TYPE
    assert params[SERVICE_PARAM] > 0
    assert 0 < params[ARRIVED_PARAM] <= params[DONE_PARAM]
    assert params[DONE_PARAM] - params[ARRIVED_PARAM] >= params[SERVICE_PARAM] * 1000 - 200_000


def test_lean_infer_json_and_binary_answers_errors_and_pipelining() -> None:
    async def run() -> None:
        async with emulated() as s:
            reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
            body, headers = infer_body(4, rid="q-1")
            writer.write(request_bytes("POST", "/v2/models/ncf/infer", body, headers))
            status, h, reply = await read_reply(reader)
            assert status == 200 and h["content-type"] == "application/json" and "server" not in h  # the lean path
            doc = json.loads(reply)
            check_answer(doc, 4, "q-1")
            assert doc["outputs"][0]["data"] == [0.0] * 4

            # binary output: the JSON header's length, then batch × 4 bytes of zeros
            body, headers = infer_body(8, binary_out=True)
            writer.write(request_bytes("POST", "/v2/models/ncf/versions/1/infer", body, headers))
            status, h, reply = await read_reply(reader)
            n = int(h["inference-header-content-length"])
            assert status == 200 and h["content-type"] == "application/octet-stream"
            header = json.loads(reply[:n])
            check_answer(header, 8, "")
            assert header["outputs"][0]["parameters"] == {"binary_data_size": 32}
            assert reply[n:] == bytes(32)

            # typed errors as the REST front end words them, and the connection stays usable
            writer.write(request_bytes("POST", "/v2/models/nope/infer", b"{}", {}))
            status, _, reply = await read_reply(reader)
            assert status == 404 and "nope" in json.loads(reply)["error"]
            writer.write(request_bytes("POST", "/v2/models/ncf/infer", b"{not json", {}))
            status, _, reply = await read_reply(reader)
            assert status == 400 and "malformed JSON" in json.loads(reply)["error"]

            # three requests in one write: three answers, in order
            writer.write(b"".join(request_bytes("POST", "/v2/models/ncf/infer", *infer_body(b, rid=f"p{b}"))
                                  for b in (1, 2, 3)))
            for b in (1, 2, 3):
                status, _, reply = await read_reply(reader)
                assert status == 200
                check_answer(json.loads(reply), b, f"p{b}")
            writer.close()
            await writer.wait_closed()

    asyncio.run(run())


def test_other_requests_hand_the_connection_to_the_rest_application() -> None:
    async def run() -> None:
        async with emulated() as s:
            reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
            # lean first, then a GET (handed over with its bytes), then infers answered by the application
            writer.write(request_bytes("POST", "/v2/models/ncf/infer", *infer_body(2, rid="a")))
            status, lean_headers, lean = await read_reply(reader)
            assert status == 200 and "server" not in lean_headers  # aiohttp names itself; the lean path does not
            writer.write(request_bytes("GET", "/v2"))
            status, h, reply = await read_reply(reader)
            assert status == 200 and json.loads(reply)["name"] == SERVER_NAME and "server" in h
            writer.write(request_bytes("POST", "/v2/models/ncf/infer", *infer_body(2, rid="a")))
            status, h, full = await read_reply(reader)
            assert status == 200 and "server" in h
            a, b = json.loads(lean), json.loads(full)
            check_answer(a, 2, "a")
            check_answer(b, 2, "a")
            assert {k: v for k, v in a.items() if k != "parameters"} == {k: v for k, v in b.items() if k != "parameters"}
            assert a["parameters"].keys() == b["parameters"].keys()
            writer.close()
            await writer.wait_closed()

            # a compressed answer asked for, HTTP/1.0, chunked bodies: the application answers them
            for extra, version in (({"Accept-Encoding": "gzip"}, "HTTP/1.1"), ({}, "HTTP/1.0")):
                reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
                body, headers = infer_body(1)
                writer.write(request_bytes("POST", "/v2/models/ncf/infer", body, {**headers, **extra}, version))
                status, h, _ = await read_reply(reader)
                assert status == 200 and "server" in h
                assert h.get("content-encoding") == extra.get("Accept-Encoding")
                writer.close()
                await writer.wait_closed()

        # an unchanged tritonclient program (metadata, then infers on the same connections)
        async with emulated(slots=2) as s:
            def client_calls() -> None:
                c = httpclient.InferenceServerClient(f"127.0.0.1:{s.port}")
                assert c.get_server_metadata()["name"] == SERVER_NAME
                inputs = []
                for name, arr in example_inputs("ncf", 3, seed=0).items():
                    t = httpclient.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
                    t.set_data_from_numpy(arr, binary_data=True)
                    inputs.append(t)
                for binary in (True, False):
                    r = c.infer("ncf", inputs, request_id="t",
                                outputs=[httpclient.InferRequestedOutput("score", binary_data=binary)])
                    assert r.get_response()["id"] == "t"
                    np.testing.assert_array_equal(r.as_numpy("score"), np.zeros((3, 1), np.float32))
                c.close()

            await asyncio.to_thread(client_calls)

    asyncio.run(run())


def test_a_client_that_leaves_frees_its_slot() -> None:
    async def run() -> None:
        async with emulated(slots=1) as s:
            readers = []
            for _ in range(3):  # one served, two queued behind it; then all three leave
                reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
                writer.write(request_bytes("POST", "/v2/models/ncf/infer", *infer_body(1000)))
                readers.append((reader, writer))
            await asyncio.sleep(0.001)
            for _, writer in readers:
                writer.close()
            for _ in range(200):
                if s.instance.busy == 0 and s.instance.in_flight == 0:
                    break
                await asyncio.sleep(0.01)
            assert (s.instance.busy, s.instance.in_flight) == (0, 0)
            reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
            writer.write(request_bytes("POST", "/v2/models/ncf/infer", *infer_body(1)))
            status, _, _ = await read_reply(reader)
            assert status == 200
            writer.close()
            await writer.wait_closed()

    asyncio.run(run())


@pytest.mark.parametrize("raw", [b"POST /v2/models/ncf/infer HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                                 b"POST /v2/models/ncf/infer HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                                 b"POST /v2/models/ncf/infer HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}x"])
def test_requests_the_lean_path_does_not_frame_get_the_applications_answer(raw: bytes) -> None:
    async def run() -> None:
        async with emulated() as s:
            reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
            writer.write(raw)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            status = int(head.split(b" ")[1])
            assert 400 <= status < 500, head
            writer.close()

    asyncio.run(run())


def test_the_lean_path_is_the_default_and_an_environment_variable_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LEAN_ENV, raising=False)
    assert lean_http_default()
    for off in ("0", "false", "No"):
        monkeypatch.setenv(LEAN_ENV, off)
        assert not lean_http_default()
    monkeypatch.setenv(LEAN_ENV, "1")
    assert lean_http_default()

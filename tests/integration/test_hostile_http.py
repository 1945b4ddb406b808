"""Hostile input to the HTTP/REST front end over a real socket: random bodies, truncated and non-UTF-8
JSON, 10^5-deep nesting, wrong JSON types, huge / negative / zero shapes, lying binary_data_size and
Inference-Header-Content-Length, bad BYTES prefixes, unknown parameters. Every request gets a 4xx with a
JSON reason, or succeeds with ONNX Runtime's own outputs; the server keeps serving (a valid query is
checked after each property)."""

from __future__ import annotations

import http.client
import json
import socket
import zlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kairosd.server.tensors import WIRE_NP, deserialize_bytes
from tests.hostile_strategies import (
    BREAKAGES,
    HOSTILE,
    TIMEOUT_S,
    HostileServers,
    Query,
    Tensor,
    assert_close,
    broken_queries,
    build_repository,
    bytes_outputs,
    query_arrays,
    valid_queries,
)

HEADER_LENGTH = "Inference-Header-Content-Length"
Reply = tuple[int, dict[str, str], bytes]


class Client:
    """Raw HTTP/1.1 POSTs (a new connection each): any body, any header value."""

    def __init__(self, servers: HostileServers) -> None:
        self.servers = servers
        self.port = servers.http_port

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT_S)
        try:
            # values as UTF-8 bytes: http.client would encode a str as latin-1 (or refuse it)
            conn.request("POST", path, body=body, headers={k: v.encode() for k, v in (headers or {}).items()})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def raw(self, request: bytes) -> bytes:
        """One request written byte for byte (header values http.client would refuse); the whole reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT_S) as s:
            s.sendall(request)
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    servers = HostileServers(build_repository(tmp_path_factory.mktemp("hostile-http") / "models"))
    yield Client(servers)
    servers.close()


VALID = Query("ncf", [Tensor("user_id", "INT64", [2, 1], np.array([3, 9], dtype="<i8").tobytes()),
                      Tensor("item_id", "INT64", [2, 1], np.array([1, 4], dtype="<i8").tobytes())])


@pytest.fixture(autouse=True)
def still_serves(client: Client) -> Iterator[None]:
    """After each hostile batch the server answers a valid query correctly."""
    yield
    for binary in (False, True):
        path, body, headers = encode(VALID, binary=binary)
        assert judge(client, client.post(path, body, headers), VALID) == 200


# ---------------------------------------------------------------- encoding and judging


def path_of(q: Query) -> str:
    model = quote(q.model, safe="")
    return f"/v2/models/{model}/versions/{quote(q.version, safe='')}/infer" if q.version else f"/v2/models/{model}/infer"


def json_data(t: Tensor) -> list[Any] | None:
    """The tensor's data as a JSON list, or None when its bytes cannot be written as JSON values."""
    if t.datatype == "BYTES":
        try:
            return [e.decode() for e in deserialize_bytes(t.data)]
        except Exception:  # noqa: BLE001 - a bad layout or non-UTF-8 element: sent as binary
            return None
    dtype = WIRE_NP.get(t.datatype)
    if dtype is None or len(t.data) % dtype.itemsize:
        return None
    values = np.frombuffer(t.data, dtype=dtype)
    return values.tolist() if bool(np.all(np.isfinite(values))) or dtype.kind != "f" else None


def document(q: Query, binary: bool | list[bool], binary_output: bool = False) -> tuple[dict[str, Any], list[bytes]]:
    """The JSON header and the binary blobs (in input order) of `q`."""
    doc: dict[str, Any] = {"inputs": []}
    blobs: list[bytes] = []
    for i, t in enumerate(q.inputs):
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        as_binary = binary[i % len(binary)] if isinstance(binary, list) else binary
        data = None if as_binary else json_data(t)
        if data is None:
            entry["parameters"] = {"binary_data_size": len(t.data)}
            blobs.append(t.data)
        else:
            entry["data"] = data
        doc["inputs"].append(entry)
    if q.outputs is not None:
        doc["outputs"] = [{"name": n, "parameters": {"binary_data": binary_output}} for n in q.outputs]
    elif binary_output:
        doc["parameters"] = {"binary_data_output": True}
    if q.id:
        doc["id"] = q.id
    doc.setdefault("parameters", {}).update(q.parameters)
    return doc, blobs


def assemble(doc: Any, blobs: list[bytes]) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(doc, ensure_ascii=False).encode()
    if not blobs:
        return header, {"Content-Type": "application/json"}
    return header + b"".join(blobs), {HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"}


def encode(q: Query, binary: bool | list[bool] = True, binary_output: bool = False) -> tuple[str, bytes, dict[str, str]]:
    body, headers = assemble(*document(q, binary, binary_output))
    return path_of(q), body, headers


def response_arrays(headers: dict[str, str], payload: bytes) -> dict[str, np.ndarray]:
    n = int(headers.get(HEADER_LENGTH.lower(), len(payload)))
    doc = json.loads(payload[:n])
    offset = n
    out: dict[str, np.ndarray] = {}
    for o in doc["outputs"]:
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            raw = payload[offset:offset + size]
            offset += size
            if o["datatype"] == "BYTES":
                arr = np.array([e.decode() for e in deserialize_bytes(raw)], dtype=np.object_)
            else:
                arr = np.frombuffer(raw, dtype=WIRE_NP[o["datatype"]])
        elif o["datatype"] == "BYTES":
            arr = np.array(o["data"], dtype=np.object_)
        else:
            arr = np.array(o["data"], dtype=WIRE_NP[o["datatype"]])
        out[o["name"]] = arr.reshape(o["shape"])
    assert offset == len(payload), "binary outputs do not fill the body"
    return out


def judge(client: Client, reply: Reply, q: Query | None = None, must_fail: bool = False) -> int:
    """A failure must be a 4xx with a JSON reason; a success ONNX Runtime's answer to `q` as sent."""
    try:
        return _judge(client, reply, q, must_fail)
    except AssertionError:
        client.servers.settle()
        raise


def _judge(client: Client, reply: Reply, q: Query | None, must_fail: bool) -> int:
    status, headers, payload = reply
    if status != 200:
        assert 400 <= status < 500, f"{status}: {payload[:500]!r}"
        assert headers.get("content-type", "").startswith("application/json"), headers
        reason = json.loads(payload)["error"]
        assert isinstance(reason, str) and len(reason) > 10, reason
        return status
    assert not must_fail, "an invalid request succeeded"
    assert q is not None, f"unexpected success: {payload[:300]!r}"
    want = client.servers.service.run(q.model, query_arrays(q), q.outputs)
    want = {k: bytes_outputs(v) if v.dtype == np.object_ else v for k, v in want.items()}
    assert_close(response_arrays(headers, payload), want)
    return status


def post(client: Client, q: Query, binary: bool | list[bool], binary_output: bool = False, must_fail: bool = False) -> int:
    path, body, headers = encode(q, binary, binary_output)
    return judge(client, client.post(path, body, headers), q, must_fail)


# ---------------------------------------------------------------- properties


@HOSTILE
@given(q=valid_queries(), binary=st.lists(st.booleans(), min_size=1, max_size=2), binary_output=st.booleans())
def test_valid_queries_match_onnxruntime(client: Client, q: Query, binary: list[bool], binary_output: bool) -> None:
    assert post(client, q, binary, binary_output) == 200


@HOSTILE
@given(body=st.binary(max_size=300), header=st.one_of(st.none(), st.integers(-5, 400).map(str)))
def test_random_bodies(client: Client, body: bytes, header: str | None) -> None:
    judge(client, client.post("/v2/models/dlrm/infer", body, {HEADER_LENGTH: header} if header else {}), must_fail=True)


@HOSTILE
@given(q=valid_queries(), binary=st.booleans(), cut=st.floats(0, 1, exclude_max=True))
def test_truncated_bodies(client: Client, q: Query, binary: bool, cut: float) -> None:
    path, body, headers = encode(q, binary)
    judge(client, client.post(path, body[: int(len(body) * cut)], headers), must_fail=True)


@HOSTILE
@given(
    q=valid_queries(),
    bad=st.sampled_from([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\x80"]),
    where=st.floats(0, 1),
)
def test_invalid_utf8_in_json(client: Client, q: Query, bad: bytes, where: float) -> None:
    """Bytes that are not UTF-8 anywhere in the JSON header, names included."""
    doc, _ = document(q, binary=False)
    for entry in doc["inputs"]:  # all data as JSON: the body is the header
        entry.pop("parameters", None)
        entry.setdefault("data", [])
    body = json.dumps(doc).encode()
    at = int(len(body) * where)
    judge(client, client.post(path_of(q), body[:at] + bad + body[at:]), must_fail=True)


@pytest.mark.parametrize("kind", BREAKAGES)
@settings(HOSTILE, max_examples=max(10, HOSTILE.max_examples // 5))
@given(data=st.data(), binary=st.booleans())
def test_wrong_field_contents(client: Client, kind: str, data: st.DataObject, binary: bool) -> None:
    """One thing wrong in an otherwise valid query: dtype, shape, sizes, duplicate / missing / extra /
    renamed inputs, unknown or duplicate outputs, unknown model or version, BYTES prefixes, batch sizes."""
    q, sure = data.draw(broken_queries(kind))
    status = post(client, q, binary, must_fail=sure)
    if kind in ("unknown-model", "unknown-version"):
        assert status == 404


@HOSTILE
@given(
    q=valid_queries(("dlrm", "text", "pairs")),
    shape=st.lists(st.one_of(st.integers(-(2**70), 2**70), st.sampled_from([0, 2**31, 2**63, 2**64, 10**30])), max_size=6),
    binary=st.booleans(),
)
def test_hostile_shapes(client: Client, q: Query, shape: list[int], binary: bool) -> None:
    """Huge products, past int64 and past uint64, negative and zero dimensions."""
    q.inputs[0].shape = shape
    post(client, q, binary)


@HOSTILE
@given(
    q=valid_queries(),
    size=st.one_of(st.integers(-(2**70), 2**70), st.integers(-8, 600), st.floats(allow_nan=False), st.text(max_size=4),
                   st.booleans(), st.none(), st.just([1])),
)
def test_lying_binary_data_size(client: Client, q: Query, size: Any) -> None:
    doc, blobs = document(q, binary=True)
    if size == doc["inputs"][0]["parameters"]["binary_data_size"] and type(size) is int:
        size += 1
    doc["inputs"][0]["parameters"]["binary_data_size"] = size
    body, headers = assemble(doc, blobs)
    judge(client, client.post(path_of(q), body, headers), must_fail=size is not None)


@HOSTILE
@given(
    q=valid_queries(),
    binary=st.booleans(),
    lie=st.one_of(
        st.sampled_from(["-1", "0", "", " ", "abc", "+12", "1_0", "0x10", "١٢", "1e3", "12.0", "9" * 30, "99999999999999999999"]),
        st.integers(-(2**40), 2**40).map(str),
        st.integers(1, 64).map(lambda n: f"+{n}"),
        st.just("mid-utf8"),
        st.just("into-binary"),
    ),
)
def test_lying_header_length(client: Client, q: Query, binary: bool, lie: str) -> None:
    """Bigger than the body, negative, not a number, pointing inside a UTF-8 sequence or into the binary part."""
    q.id = "ünïcödé"
    doc, blobs = document(q, binary)
    header = json.dumps(doc, ensure_ascii=False).encode()
    body = header + b"".join(blobs)
    if lie == "mid-utf8":
        lie = str(header.index("ü".encode()) + 1)
    elif lie == "into-binary":
        lie = str(len(header) + 1)
    if lie == str(len(header)):
        lie = str(len(header) - 1)
    judge(client, client.post(path_of(q), body, {HEADER_LENGTH: lie}), must_fail=True)


# JSON values each datatype must refuse (BYTES takes any string, FP32 any finite number or NaN).
_JUNK_ANY: list[Any] = [None, {}, [1, 2], ["x", ["y"]]]
JUNK: dict[str, list[Any]] = {
    "FP32": [*_JUNK_ANY, "1", "", True, 1e39, -1e39],
    "INT64": [*_JUNK_ANY, "1", 1.5, 1e3, 2**63, 2**64, -(2**63) - 1, True, float("nan")],
    "BYTES": [*_JUNK_ANY, 1, 1.5, True, False],
}


@HOSTILE
@given(q=valid_queries(), which=st.integers(0, 1), pick=st.integers(0, 100), position=st.floats(0, 1, exclude_max=True))
def test_wrong_json_types_in_data(client: Client, q: Query, which: int, pick: int, position: float) -> None:
    """A value of the wrong JSON type or range (or a ragged nesting) among good ones: refused, never converted."""
    i = which % len(q.inputs)
    t = q.inputs[i]
    junk = JUNK[t.datatype]
    data = json_data(t) or []
    value = junk[pick % len(junk)]
    if data:
        data[int(len(data) * position)] = value
    else:
        data = [value]  # the shape needs no element: one is too many
    doc, _ = document(q, binary=[j != i for j in range(len(q.inputs))])
    doc["inputs"][i].pop("parameters", None)
    doc["inputs"][i]["data"] = data
    body, headers = assemble(doc, [x.data for j, x in enumerate(q.inputs) if j != i])
    judge(client, client.post(path_of(q), body, headers), must_fail=True)


@HOSTILE
@given(
    q=valid_queries(),
    where=st.sampled_from(["request", "input", "output", "top"]),
    key=st.text(max_size=12),
    value=st.one_of(st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=8), st.none(),
                    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2)),
)
def test_unknown_parameters_and_keys(client: Client, q: Query, where: str, key: str, value: Any) -> None:
    """Unknown scalar parameters are passed on (the request still succeeds); anything else is a 400."""
    if key.startswith("shared_memory") or key in ("binary_data_size", "binary_data", "binary_data_output", "timeout"):
        key = "x-" + key
    if where == "output":
        q.outputs = list(q.outputs or [o.name for o in client.servers.service.repository[q.model].outputs])
    doc, blobs = document(q, binary=True)
    if where == "top":
        doc[key if key not in ("inputs", "outputs", "parameters", "id") else "x-" + key] = value
        ok = True
    else:
        target = {"request": doc, "input": doc["inputs"][0], "output": doc.get("outputs", [{}])[0]}[where]
        target.setdefault("parameters", {})[key] = value
        ok = isinstance(value, (bool, str, float)) or type(value) is int and -(2**63) <= value < 2**63
    body, headers = assemble(doc, blobs)
    status = judge(client, client.post(path_of(q), body, headers), q, must_fail=not ok)
    assert (status == 200) == ok


DEEP = 100_000


@pytest.mark.parametrize(
    "body",
    [
        b"[" * DEEP,
        b"[" * DEEP + b"]" * DEEP,
        b'{"inputs":' + b"[" * DEEP,
        b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,2],"data":' + b"[" * DEEP + b"1" + b"]" * DEEP + b"}]}",
        b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,2],"data":' + b"[" * 500 + b"1" + b"]" * 500 + b"}]}",
        b'{"inputs":[],"parameters":{"p":' + b'{"a":' * 500 + b"1" + b"}" * 500 + b"}}",
        b'{"inputs":[{"name":"x","datatype":"BYTES","shape":[1,1],"data":' + b"[" * 900 + b'"a"' + b"]" * 900 + b"}]}",
        b'{"id":"' + b"\\ud800" + b'","inputs":[]}',
        b'{"inputs":[{"name":"\\udc80","datatype":"FP32","shape":[2],"data":[1,2]}]}',
        b'{"inputs":[],"parameters":{"timeout":1' + b"0" * 400 + b"}}",
        b'{"inputs":[],"parameters":{"timeout":Infinity}}',
        b'{"inputs":[],"id":["x"]}',
        b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,2],"data":[NaN,1]}],"parameters":{"timeout":NaN}}',
    ],
    ids=["open-brackets", "nested-arrays", "nested-inputs", "nested-data", "data-500-deep", "params-500-deep",
         "bytes-900-deep", "lone-surrogate-id", "lone-surrogate-name", "timeout-past-float", "timeout-inf",
         "id-not-string", "nan-timeout"],
)
def test_hostile_json_examples(client: Client, body: bytes) -> None:
    for model in ("pairs", "text"):
        judge(client, client.post(f"/v2/models/{model}/infer", body), must_fail=True)


def test_timeout_past_float_range_is_refused_not_crashed(client: Client) -> None:
    """An integer parameter beyond int64 used to crash the conversion to gRPC (a 500)."""
    q = Query("pairs", [Tensor("x", "FP32", [1, 2], np.array([1, 2], dtype="<f4").tobytes())])
    q.parameters = {"timeout": 10**30}
    status, _, payload = client.post(*encode(q))
    assert status == 400 and "timeout" in json.loads(payload)["error"]
    q.parameters = {"timeout": 2_000_000, "priority": 2**63 - 1}
    assert post(client, q, binary=False) == 200


def test_bytes_with_bad_length_prefixes(client: Client) -> None:
    """Binary BYTES data whose prefixes do not end at its end, or hold a different element count."""
    for shape, data in (([1, 1], b"\x05\x00\x00\x00ab"), ([1, 2], b"\x01\x00\x00\x00a"), ([1, 1], b"\x00\x00"),
                        ([1, 1], b"\x00\x00\x00\x00" * 2), ([1, 1], b"\xff\xff\xff\xff")):
        q = Query("text", [Tensor("text", "BYTES", shape, data)])
        path, body, headers = encode(q)
        status, _, payload = client.post(path, body, headers)
        reason = json.loads(payload)["error"]
        assert status == 400 and "'text'" in reason and "BYTES" in reason, (shape, data, reason)


def test_invalid_utf8_in_url_and_headers(client: Client) -> None:
    """Model names that are not UTF-8 in the path; header values that are not UTF-8 or not numbers."""
    body = encode(VALID)[1]
    for path in ("/v2/models/%ff%fe/infer", "/v2/models/%ed%a0%80/infer", "/v2/models/" + "m" * 4000 + "/infer",
                 "/v2/models/ncf/versions/%c3%28/infer"):
        status, _, payload = client.post(path, body)
        assert status == 404 and len(json.loads(payload)["error"]) < 2000, (path, payload[:200])
    for value in (b"\xe2\x82", b"\xff\xfe", b"12\x00", "١٢".encode()):
        reply = client.raw(
            b"POST /v2/models/ncf/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + HEADER_LENGTH.encode() + b": " + value + b"\r\nContent-Length: " + str(len(body)).encode()
            + b"\r\n\r\n" + body
        )
        status_line = reply.split(b"\r\n", 1)[0]
        assert status_line.split()[1].startswith(b"4"), (value, reply[:300])


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "x-unknown"])
def test_bad_content_encoding(client: Client, coding: str) -> None:
    status, headers, payload = client.post("/v2/models/ncf/infer", b"\x1f\x8b\x08garbage", {"Content-Encoding": coding})
    client.servers.settle()
    assert 400 <= status < 500 and "error" in json.loads(payload), (status, payload[:300])


def test_compressed_body_beyond_the_limit_is_413(client: Client) -> None:
    """A small deflate body that inflates past max_body_bytes (a decompression bomb)."""
    bomb = zlib.compress(b"[" + b"0," * 400_000 + b"0]", 9)
    status, _, payload = client.post("/v2/models/ncf/infer", bomb, {"Content-Encoding": "deflate"})
    assert status == 413 and "error" in json.loads(payload)
